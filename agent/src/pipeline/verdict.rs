//! The verdict step: the policy and rule behind each record, and the action taken. The kernel
//! decides nearly everything; user space names what it decided, and decides itself only an
//! exec the kernel could not key (alert only).
use crate::{
    enforce::Enforcer,
    event::{Action, Body, Event, Verdict},
    policy::PolicyRef,
};

/// The policy and action behind a record: the kernel's verdict, or user space's own for an
/// exec the kernel could not decide (alert only).
pub(super) fn judge(enforcer: &Enforcer, ev: &Event) -> Option<(PolicyRef, Action)> {
    let section = ev.body.section();
    match ev.header.verdict {
        Verdict::Violation { action, set, rule } => {
            let policy = enforcer
                .describe(set, rule, section)
                .unwrap_or_else(|| PolicyRef {
                    kind: "unknown".into(),
                    name: "unknown".into(),
                    namespace: None,
                    rule: format!("set {set} rule {rule}"),
                    text: "the policy was replaced before this event was read".into(),
                });
            Some((policy, action))
        }
        Verdict::Observed => {
            let Body::Exec(exec) = &ev.body else {
                return None;
            };
            let set = exec.undecided_set?;
            // The kernel could not walk or key the path: ask /proc while the process lives,
            // else use the path as passed, unless that too was cut short.
            let path = exec
                .exe_path
                .clone()
                .or_else(|| crate::metadata::process::proc_exe(ev.header.pid));
            let given_complete = exec.path.len() < agent_common::PATH_LEN - 1;
            let script = (exec.script && given_complete).then_some(exec.path.as_str());
            match path
                .as_deref()
                .or(given_complete.then_some(exec.path.as_str()))
            {
                Some(path) => enforcer
                    .decide_exec(set, path, script, exec.memfd)
                    .map(|p| (p, Action::Alert)),
                None => Some((
                    PolicyRef {
                        kind: "unknown".into(),
                        name: "unknown".into(),
                        namespace: None,
                        rule: "spec.exec".into(),
                        text: format!(
                            "the executable's path is longer than the {} bytes the agent reads and the process is gone: it could not be checked",
                            agent_common::PATH_LEN - 1
                        ),
                    },
                    Action::Alert,
                )),
            }
        }
    }
}
