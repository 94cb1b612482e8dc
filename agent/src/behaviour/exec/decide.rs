//! The exec decision in user space, for a path the kernel could not key (longer than its LPM
//! keys): the kernel's own function (`agent_common::decide::exec`) on a longest-match lookup
//! of the same compiled entries the kernel's `EXEC_PATHS` trie holds, without its key-length
//! limit.
use agent_common::{PathRule, decide};

use crate::enforce::compiled::{CompiledSet, PathEntry};

/// What the kernel's `EXEC_PATHS` lookup finds for `path`: the longest entry whose key is a
/// prefix of the path's key (the path and its NUL), or no rule.
pub fn lookup(compiled: &CompiledSet, path: &str) -> PathRule {
    let key = PathEntry {
        path: path.to_string(),
        exact: true,
    }
    .key_bytes();
    compiled
        .paths
        .iter()
        .filter(|(entry, _)| key.starts_with(&entry.key_bytes()))
        .max_by_key(|(entry, _)| entry.key_bytes().len())
        .map(|(_, rule)| *rule)
        .unwrap_or_default()
}

/// The decision on an exec of `path` (the executable's real path) and, for a script, the
/// script's path, in set `set`.
pub fn decide(
    set: u32,
    compiled: &CompiledSet,
    path: &str,
    script: Option<&str>,
    memfd: bool,
) -> decide::Violation {
    let exe = lookup(compiled, path);
    let script = script.map(|s| lookup(compiled, s));
    // Drift is always decided in the kernel, on the file: an exec it leaves undecided is
    // not drift, or its set does not deny drift.
    decide::exec(
        set,
        &compiled.set,
        memfd,
        false,
        true,
        &exe,
        script.as_ref(),
    )
}

#[cfg(test)]
mod tests {
    use agent_common::rule_id;

    use super::*;
    use crate::{enforce::compile::compile, policy::load_str};

    const POLICY: &str = r#"
apiVersion: vigil.dev/v1alpha1
kind: ClusterRuntimePolicy
metadata: {name: t}
spec:
  hostProcesses: {}
  exec:
    allow: [{prefix: /opt/app/bin/}, {path: /opt/tools/ok}, {memfd: true}]
    deny: [{prefix: /opt/app/bin/bad/}, {path: /opt/tools/evil}]
    action: Alert
"#;

    /// (path, script, memfd) -> the deciding rule's field, or None when allowed.
    const CASES: &[(&str, Option<&str>, bool, Option<&str>)] = &[
        ("/opt/app/bin/a", None, false, None),
        ("/opt/app/bin/bad/b", None, false, Some("spec.exec.deny[0]")),
        ("/opt/app/bin/bad", None, false, None),
        ("/opt/tools/ok", None, false, None),
        ("/opt/tools/ok2", None, false, Some("spec.exec.allow")),
        ("/opt/tools/o", None, false, Some("spec.exec.allow")),
        ("/opt/tools/evil", None, false, Some("spec.exec.deny[1]")),
        ("/opt/app/binx/y", None, false, Some("spec.exec.allow")),
        ("/opt/other", None, false, Some("spec.exec.allow")),
        ("/opt/app/bin/sh", Some("/opt/tools/ok"), false, None),
        (
            "/opt/app/bin/sh",
            Some("/tmp/s"),
            false,
            Some("spec.exec.allow"),
        ),
        (
            "/opt/app/bin/sh",
            Some("/opt/tools/evil"),
            false,
            Some("spec.exec.deny[1]"),
        ),
        ("/memfd:x (deleted)", None, true, None),
    ];

    #[test]
    fn a_table_of_paths_decides_like_the_rules_say() {
        let policies = load_str(POLICY, None).unwrap();
        let compiled = compile(&policies.iter().collect::<Vec<_>>());
        for (path, script, memfd, want) in CASES {
            let v = decide(7, &compiled, path, *script, *memfd);
            let got = v.is_hit().then(|| {
                let index = rule_id::index(v.rule);
                if index == rule_id::NOT_ALLOWED {
                    "spec.exec.allow".to_string()
                } else {
                    compiled.rules[index as usize].field.clone()
                }
            });
            assert_eq!(
                got.as_deref(),
                *want,
                "{path} (script {script:?}, memfd {memfd})"
            );
            if v.is_hit() {
                assert_eq!(rule_id::set(v.rule), 7);
            }
        }
    }
}
