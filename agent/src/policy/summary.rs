//! One line per policy, for `vigil policy check` and the agent's log.
use std::fmt::Write as _;

use super::model::{NamespaceSelection, Policy, WriteExecute};

/// `RuntimePolicy shop/web: Enforce; selects pods app=web in namespace shop (containers nginx);
/// exec 2 allow, 2 deny, Kill; connect 1 allow + Services, 0 deny, Alert; memory ...`.
pub fn summary(policy: &Policy) -> String {
    let spec = &policy.spec;
    let mut selects = Vec::new();
    if let Some(pods) = &spec.pods {
        let what = match &pods.namespaces {
            NamespaceSelection::Named(ns) => format!("in namespace {ns}"),
            NamespaceSelection::Matching(sel) if sel.selects_all() => "in every namespace".into(),
            // kubectl's selector syntax: `app=web,tier in (a,b),!canary`.
            NamespaceSelection::Matching(sel) => format!("in namespaces {sel}"),
        };
        let pods_sel = if pods.pods.selects_all() {
            "every pod".into()
        } else {
            format!("pods {}", pods.pods)
        };
        selects.push(format!("{pods_sel} {what}"));
    }
    if let Some(host) = &spec.host {
        selects.push(if host.cgroup_prefixes.is_empty() {
            "every host process".into()
        } else {
            format!("host processes under {}", host.cgroup_prefixes.join(", "))
        });
    }
    let mut line = format!(
        "{}: {:?}; selects {}",
        policy.id(),
        spec.mode,
        selects.join(" and ")
    );
    if let Some(containers) = &spec.containers {
        let _ = write!(line, " (containers {})", containers.join(", "));
    }
    let exec = &spec.exec;
    if !exec.has_rules() {
        line.push_str("; exec: no rules");
    } else {
        let drift = match (exec.deny_drift, exec.digests().count()) {
            (false, _) => String::new(),
            (true, 0) => " + drift".into(),
            (true, n) => format!(" + drift ({n} sha256)"),
        };
        let _ = write!(
            line,
            "; exec: {} allow, {} deny{drift}, {:?}",
            exec.allow.len() - exec.digests().count(),
            exec.deny.len(),
            exec.action
        );
    }
    let connect = &spec.connect;
    if !connect.has_allowlist() && connect.deny.is_empty() {
        line.push_str("; connect: no rules");
    } else {
        let services = if connect.allow_services {
            " + Services"
        } else {
            ""
        };
        let _ = write!(
            line,
            "; connect: {} allow{services}, {} deny, {:?}",
            connect.allow.len(),
            connect.deny.len(),
            connect.action
        );
    }
    let memory = &spec.memory;
    if memory.write_execute == WriteExecute::Allow
        && memory.allow_executables.is_empty()
        && memory.foreign_writes == crate::policy::ForeignWrites::Allow
        && memory.compat_syscalls == crate::policy::CompatSyscalls::Allow
    {
        line.push_str("; memory: no rules");
    } else {
        let _ = write!(
            line,
            "; memory: writeExecute {:?}, foreignWrites {:?}, compatSyscalls {:?}, {} allowed executable{}, {:?}",
            memory.write_execute,
            memory.foreign_writes,
            memory.compat_syscalls,
            memory.allow_executables.len(),
            if memory.allow_executables.len() == 1 {
                ""
            } else {
                "s"
            },
            memory.action
        );
    }
    line
}
