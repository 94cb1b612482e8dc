//! One exec decision: the same table of execs goes through the kernel (a running `vigil run`,
//! real execs in the test's own cgroup, the kernel's maps and walk) and through user space
//! (the compiled policy and `behaviour::exec::decide`, which decides paths the kernel cannot
//! key), and both must name the same rule for each, or both allow it. Root only; the policy
//! is Alert and selects only the test's cgroup.
#[expect(
    dead_code,
    reason = "the helpers are shared by several test binaries; each uses a part"
)]
mod common;

use std::{os::unix::fs::PermissionsExt, path::Path};

use common::{TestCgroup, Tracer, is, root_or_skip, run_in_cgroup};
use serde_json::Value;
use vigil::{behaviour::exec::decide::decide, enforce::compile::compile, policy::load_str};

const EXEC: &str = "dev.vigil.exec.v1";

/// A copy of `from` at `dir/rel`, executable.
fn place(dir: &Path, rel: &str, from: &str) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().expect("a parent")).unwrap();
    std::fs::copy(from, &path).unwrap_or_else(|e| panic!("copying {from} to {rel}: {e}"));
}

fn script(dir: &Path, rel: &str, interpreter: &str) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().expect("a parent")).unwrap();
    std::fs::write(
        &path,
        format!("#!{}\nexit 0\n", dir.join(interpreter).display()),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The rule user space names for an exec of `exe` (and `script`): the field of the deciding
/// rule, `spec.exec.allow` when it is on no allowlist, `None` when allowed.
fn user_space(yaml: &str, exe: &str, script: Option<&str>) -> Option<String> {
    let policies = load_str(yaml, None).expect("the test policy loads");
    let compiled = compile(&policies.iter().collect::<Vec<_>>());
    let v = decide(1, &compiled, exe, script, false);
    v.is_hit().then(|| {
        let index = agent_common::rule_id::index(v.rule);
        if index == agent_common::rule_id::NOT_ALLOWED {
            "spec.exec.allow".to_string()
        } else {
            compiled.rules[index as usize].field.clone()
        }
    })
}

/// The rule of the kernel's exec violation for `pid` (not the files its loader mapped), or
/// `None` when it reported none.
fn kernel(events: &[Value], pid: u32) -> Option<String> {
    events
        .iter()
        .filter(|e| is(e, EXEC, pid))
        .find(|e| {
            let exec = &e["data"]["exec"];
            exec["mapped"] != true && exec["opened"] != true && exec["interpreted"] != true
        })
        .map(|e| {
            e["data"]["policy"]["rule"]
                .as_str()
                .expect("a violation names its rule")
                .to_string()
        })
}

/// What was run, its pid, the executable's real path, the script's path, the expected rule.
type Case = (String, u32, String, Option<String>, Option<&'static str>);

#[test]
fn the_kernel_and_user_space_decide_a_table_of_execs_alike() {
    if !root_or_skip("exec-decision") {
        return;
    }
    let cg = TestCgroup::new("decision");
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::fs::canonicalize(tmp.path()).unwrap();
    let d = dir.display();
    let spec = format!(
        "  exec:\n    allow: [{{prefix: \"{d}/bin/\"}}, {{path: \"{d}/tools/ok\"}}]\n    deny: [{{prefix: \"{d}/bin/bad/\"}}, {{path: \"{d}/tools/evil\"}}]\n    action: Alert\n"
    );
    let yaml = format!(
        "apiVersion: vigil.dev/v1alpha1\nkind: ClusterRuntimePolicy\nmetadata: {{name: decision}}\nspec:\n  hostProcesses: {{cgroupPrefixes: [\"{}\"]}}\n{spec}",
        cg.rel
    );
    // (what is run, the executable's real path, the script's path, the expected rule)
    let binaries = [
        ("bin/a", None),
        ("bin/bad/b", Some("spec.exec.deny[0]")),
        ("tools/ok", None),
        ("tools/ok2", Some("spec.exec.allow")),
        ("tools/o", Some("spec.exec.allow")),
        ("tools/evil", Some("spec.exec.deny[1]")),
        ("binx/y", Some("spec.exec.allow")),
        ("other/x", Some("spec.exec.allow")),
    ];
    for (rel, _) in binaries {
        place(&dir, rel, "/bin/true");
    }
    place(&dir, "bin/sh", "/bin/sh");
    place(&dir, "other/sh", "/bin/sh");
    script(&dir, "bin/ok.sh", "bin/sh");
    script(&dir, "bin/foreign.sh", "other/sh");
    script(&dir, "tools/evil.sh", "bin/sh");
    let scripts = [
        ("bin/ok.sh", "bin/sh", None),
        ("bin/foreign.sh", "other/sh", Some("spec.exec.allow")),
        ("tools/evil.sh", "bin/sh", Some("spec.exec.allow")),
    ];
    let file = dir.join("policy.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let tracer = Tracer::enforce(&file);

    let mut cases: Vec<Case> = Vec::new();
    for (rel, want) in binaries {
        let path = dir.join(rel);
        let (pid, status) = run_in_cgroup(&cg.dir, &path, &[]);
        assert!(status.success(), "{rel}: Alert never kills ({status})");
        cases.push((rel.into(), pid, path.display().to_string(), None, want));
    }
    for (rel, interpreter, want) in scripts {
        let path = dir.join(rel);
        let (pid, status) = run_in_cgroup(&cg.dir, &path, &[]);
        assert!(status.success(), "{rel}: Alert never kills ({status})");
        let exe = dir.join(interpreter).display().to_string();
        cases.push((rel.into(), pid, exe, Some(path.display().to_string()), want));
    }
    // The last case is a violation: once it is in, every earlier one is too.
    let (_, last_pid, ..) = cases.last().expect("cases");
    tracer.wait_for("the last case's violation", |e| is(e, EXEC, *last_pid));
    let events = tracer.stop();

    let mut violations = 0;
    for (rel, pid, exe, script, want) in &cases {
        let from_kernel = kernel(&events, *pid);
        let from_user_space = user_space(&yaml, exe, script.as_deref());
        assert_eq!(
            from_kernel, from_user_space,
            "{rel}: the kernel and user space disagree"
        );
        assert_eq!(
            from_kernel.as_deref(),
            *want,
            "{rel}: not what the rules say"
        );
        violations += usize::from(want.is_some());
    }
    // Both outcomes are exercised, so agreement is not agreement on nothing.
    assert!(
        violations >= 5 && cases.len() - violations >= 3,
        "{violations} of {}",
        cases.len()
    );
}
