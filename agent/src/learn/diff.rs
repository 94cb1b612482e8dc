//! `vigil learn --against POLICY`: what the workload did that the policy would refuse, as a
//! JSON Patch (RFC 6902) that adds it (`kubectl patch ... --type json`), so that a policy can
//! follow a new image version. What an addition cannot mend (a `deny` rule that matches, writes
//! into other processes under `foreignWrites: Deny`) is named apart, never patched away:
//! loosening a deny rule is a reviewer's decision.
use serde_json::{Value, json};

use super::{
    table::{ExecEntry, LearnTable, port_text, protocol_name},
    write::comment_text,
};
use crate::policy::{ExecRule, Policy, WriteExecute};

/// The patch and what it cannot mend.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Diff {
    /// JSON Patch operations, in order.
    pub patch: Vec<Value>,
    /// One line per thing the workload did that a rule of the policy denies outright.
    pub conflicts: Vec<String>,
    /// One line per addition, for the terminal.
    pub additions: Vec<String>,
}

impl Diff {
    /// Nothing the policy would refuse.
    pub fn is_empty(&self) -> bool {
        self.patch.is_empty() && self.conflicts.is_empty()
    }
}

/// Appends `value` to the list at `path` (`/spec/exec/allow`), creating the list with the
/// first operation when the policy has none.
struct Appender {
    path: &'static str,
    exists: bool,
}

impl Appender {
    fn push(&mut self, patch: &mut Vec<Value>, value: Value) {
        if self.exists {
            patch.push(json!({"op": "add", "path": format!("{}/-", self.path), "value": value}));
        } else {
            patch.push(json!({"op": "add", "path": self.path, "value": [value]}));
            self.exists = true;
        }
    }
}

/// What of `table` the policy `against` would refuse, and the patch that allows it.
pub fn diff(table: &LearnTable, against: &Policy) -> Diff {
    let mut d = Diff::default();
    exec(table, against, &mut d);
    connect(table, against, &mut d);
    memory(table, against, &mut d);
    d
}

fn exec(table: &LearnTable, against: &Policy, d: &mut Diff) {
    let rules = &against.spec.exec;
    // Sections are created whole when missing; an exec section without an allowlist refuses
    // nothing by path, so only deny rules matter then.
    let mut allow = Appender {
        path: "/spec/exec/allow",
        exists: !rules.allow.is_empty(),
    };
    for entry in table.exec_entries() {
        let (denied_by, allowed, value, text) = match &entry {
            ExecEntry::Path(p, _) => (
                rules.deny.iter().position(|r| r.matches(p, false)),
                rules.allow.iter().any(|r| r.matches(p, false)),
                json!({"path": p}),
                format!("exec {p}"),
            ),
            ExecEntry::Prefix(p, _, _) => (
                rules.deny.iter().position(|r| match r {
                    ExecRule::Path(q) | ExecRule::Prefix(q) => {
                        q.starts_with(p.as_str()) || p.starts_with(q.as_str())
                    }
                    _ => false,
                }),
                rules
                    .allow
                    .iter()
                    .any(|r| matches!(r, ExecRule::Prefix(q) if p.starts_with(q.as_str()))),
                json!({"prefix": p}),
                format!("exec under {p}"),
            ),
            ExecEntry::Memfd(_) => (
                rules.deny.iter().position(|r| r.matches("", true)),
                rules.allow.iter().any(|r| r.matches("", true)),
                json!({"memfd": true}),
                "exec from a memfd".into(),
            ),
        };
        if let Some(i) = denied_by {
            d.conflicts.push(format!(
                "{}: denied by spec.exec.deny[{i}] ({})",
                comment_text(&text),
                rules.deny[i]
            ));
        } else if rules.has_allowlist() && !allowed {
            d.additions.push(comment_text(&text));
            allow.push(&mut d.patch, value);
        }
    }
}

fn connect(table: &LearnTable, against: &Policy, d: &mut Diff) {
    let rules = &against.spec.connect;
    let mut allow = Appender {
        path: "/spec/connect/allow",
        exists: !rules.allow.is_empty(),
    };
    for dest in table.destinations.values() {
        let text = |range| {
            format!(
                "{} {} port {}",
                protocol_name(dest.protocol),
                dest.addr,
                port_text(range)
            )
        };
        let mut missing = Vec::new();
        for (lo, hi) in dest.port_ranges() {
            let denied = rules
                .deny
                .iter()
                .position(|r| (lo..=hi).any(|port| r.matches(dest.addr, port, dest.protocol)));
            if let Some(i) = denied {
                d.conflicts.push(format!(
                    "{}: denied by spec.connect.deny[{i}]",
                    text((lo, hi))
                ));
                continue;
            }
            let covered = (lo..=hi).all(|port| {
                rules
                    .allow
                    .iter()
                    .any(|r| r.matches(dest.addr, port, dest.protocol))
            });
            // `allowServices` may cover it in a cluster; a host learn cannot tell, so it is
            // listed, and the reviewer drops what is a Service.
            if rules.has_allowlist() && !covered {
                d.additions.push(text((lo, hi)));
                missing.push((lo, hi));
            }
        }
        if !missing.is_empty() {
            let mut value = json!({"cidr": dest.cidr(), "protocol": protocol_name(dest.protocol)});
            // A rule's ports are 1-65535; port 0 is covered by a rule without ports only.
            if missing.iter().all(|(lo, _)| *lo > 0) {
                value["ports"] = json!(missing.into_iter().map(port_text).collect::<Vec<_>>());
            }
            allow.push(&mut d.patch, value);
        }
    }
}

fn memory(table: &LearnTable, against: &Policy, d: &mut Diff) {
    let rules = &against.spec.memory;
    if rules.write_execute == WriteExecute::Deny {
        let mut allow = Appender {
            path: "/spec/memory/allowExecutables",
            exists: !rules.allow_executables.is_empty(),
        };
        for exe in table.runtimes.keys() {
            if !rules.allow_executables.contains(exe) {
                d.additions.push(comment_text(&format!("W^X by {exe}")));
                allow.push(&mut d.patch, json!(exe));
            }
        }
    }
    if rules.foreign_writes == crate::policy::ForeignWrites::Deny {
        for call in table.foreign_writes.keys() {
            d.conflicts.push(format!(
                "a write into another process ({}): denied by spec.memory.foreignWrites",
                comment_text(call)
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{self, Protocol};

    const POLICY: &str = r#"
apiVersion: vigil.dev/v1alpha1
kind: ClusterRuntimePolicy
metadata: {name: web}
spec:
  hostProcesses: {cgroupPrefixes: ["/web"]}
  exec:
    allow: [{path: /usr/bin/dash}, {prefix: /opt/app/}]
    deny: [{prefix: /tmp/}]
    action: Kill
  connect:
    allow: [{cidr: 127.0.0.1/32, ports: ["8080"], protocol: TCP}]
    action: Deny
  memory: {writeExecute: Deny, foreignWrites: Deny}
"#;

    fn load(text: &str) -> Policy {
        policy::load_str(text, None).unwrap().remove(0)
    }

    #[test]
    fn what_the_policy_would_refuse_becomes_a_patch_that_allows_it() {
        let mut t = LearnTable::default();
        t.exec("/usr/bin/dash", None);
        t.exec("/opt/app/server", None);
        t.exec("/usr/bin/curl", None);
        t.exec("/tmp/dropper", None);
        let lo = "127.0.0.1".parse().unwrap();
        t.destination(Protocol::Tcp, lo, 8080, None);
        t.destination(Protocol::Tcp, lo, 9090, None);
        t.destination(Protocol::Udp, lo, 8080, None);
        t.write_execute(Some("/usr/bin/node"), None);
        t.foreign_write("ptrace", None);
        let policy = load(POLICY);
        let d = diff(&t, &policy);
        assert_eq!(
            d.patch,
            [
                json!({"op": "add", "path": "/spec/exec/allow/-", "value": {"path": "/usr/bin/curl"}}),
                json!({"op": "add", "path": "/spec/connect/allow/-",
                       "value": {"cidr": "127.0.0.1/32", "protocol": "TCP", "ports": ["9090"]}}),
                json!({"op": "add", "path": "/spec/connect/allow/-",
                       "value": {"cidr": "127.0.0.1/32", "protocol": "UDP", "ports": ["8080"]}}),
                json!({"op": "add", "path": "/spec/memory/allowExecutables", "value": ["/usr/bin/node"]}),
            ]
        );
        assert_eq!(d.conflicts.len(), 2, "{:?}", d.conflicts);
        assert!(d.conflicts[0].contains("/tmp/dropper: denied by spec.exec.deny[0]"));
        assert!(d.conflicts[1].contains("spec.memory.foreignWrites"));

        // Applied, the patch allows everything but the conflicts.
        let mut value =
            serde_json::to_value(serde_yaml_ng::from_str::<serde_yaml_ng::Value>(POLICY).unwrap())
                .unwrap();
        let patch: json_patch::Patch = serde_json::from_value(json!(d.patch)).unwrap();
        json_patch::patch(&mut value, &patch).unwrap();
        let patched = load(&serde_yaml_ng::to_string(&value).unwrap());
        let again = diff(&t, &patched);
        assert!(again.patch.is_empty(), "{:?}", again.patch);
        assert_eq!(again.conflicts, d.conflicts);
    }

    #[test]
    fn a_policy_that_already_allows_the_workload_needs_no_patch() {
        let mut t = LearnTable::default();
        t.exec("/usr/bin/dash", None);
        t.destination(Protocol::Tcp, "127.0.0.1".parse().unwrap(), 8080, None);
        assert!(diff(&t, &load(POLICY)).is_empty());
    }
}
