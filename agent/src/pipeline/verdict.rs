//! The verdict step: the policy and rule behind each record, and the action taken. The kernel
//! decides nearly everything; user space names what it decided, and decides itself only an
//! exec the kernel could not key (alert only).
use crate::{
    cloudevents::shared::Shared,
    enforce::Enforcer,
    event::{Action, Body, Event, Verdict},
    policy::PolicyRef,
};

/// What the verdict asks of the rules in force: the [`Enforcer`]'s two questions, apart so
/// that the verdict can be tested without kernel maps.
pub(super) trait Rules {
    /// See [`Enforcer::describe`].
    fn describe(&self, set: u32, rule: u32, section: &'static str) -> Option<Shared<PolicyRef>>;
    /// See [`Enforcer::decide_exec`].
    fn decide_exec(
        &self,
        set: u32,
        path: &str,
        script: Option<&str>,
        memfd: bool,
    ) -> Option<Shared<PolicyRef>>;
}

impl Rules for Enforcer {
    fn describe(&self, set: u32, rule: u32, section: &'static str) -> Option<Shared<PolicyRef>> {
        Enforcer::describe(self, set, rule, section)
    }

    fn decide_exec(
        &self,
        set: u32,
        path: &str,
        script: Option<&str>,
        memfd: bool,
    ) -> Option<Shared<PolicyRef>> {
        Enforcer::decide_exec(self, set, path, script, memfd)
    }
}

/// The policy and action behind a record: the kernel's verdict, or user space's own for an
/// exec the kernel could not decide (alert only).
pub(super) fn judge(enforcer: &impl Rules, ev: &Event) -> Option<(Shared<PolicyRef>, Action)> {
    let section = ev.body.section();
    match ev.header.verdict {
        Verdict::Violation { action, set, rule } => {
            let policy = enforcer.describe(set, rule, section).unwrap_or_else(|| {
                Shared::new(PolicyRef {
                    kind: "unknown".into(),
                    name: "unknown".into(),
                    namespace: None,
                    rule: format!("set {set} rule {rule}"),
                    text: "the policy was replaced before this event was read".into(),
                })
            });
            Some((policy, action))
        }
        // Allowed: for the learn tables only.
        Verdict::Learned { .. } => None,
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
                    Shared::new(PolicyRef {
                        kind: "unknown".into(),
                        name: "unknown".into(),
                        namespace: None,
                        rule: "spec.exec".into(),
                        text: format!(
                            "the executable's path is longer than the {} bytes the agent reads and the process is gone: it could not be checked",
                            agent_common::PATH_LEN - 1
                        ),
                    }),
                    Action::Alert,
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::event::{Exec, Header, Wx, WxSyscall};

    /// Rules in force as a table: set 1 names every rule; set 1 denies execs under `/tmp/`.
    /// Records what user space was asked to decide.
    #[derive(Default)]
    struct Table {
        asked: RefCell<Vec<Asked>>,
    }

    /// One `decide_exec` question: set, path, script, memfd.
    type Asked = (u32, String, Option<String>, bool);

    fn named(section: &str, rule: u32) -> Shared<PolicyRef> {
        Shared::new(PolicyRef {
            kind: "ClusterRuntimePolicy".into(),
            name: "base".into(),
            namespace: None,
            rule: format!("spec.{section}[{rule}]"),
            text: "test rule".into(),
        })
    }

    impl Rules for Table {
        fn describe(
            &self,
            set: u32,
            rule: u32,
            section: &'static str,
        ) -> Option<Shared<PolicyRef>> {
            (set == 1).then(|| named(section, rule))
        }

        fn decide_exec(
            &self,
            set: u32,
            path: &str,
            script: Option<&str>,
            memfd: bool,
        ) -> Option<Shared<PolicyRef>> {
            self.asked
                .borrow_mut()
                .push((set, path.into(), script.map(Into::into), memfd));
            (set == 1 && script.unwrap_or(path).starts_with("/tmp/")).then(|| named("exec", 0))
        }
    }

    /// A pid no process has (above the kernel's limit), so /proc knows nothing of it.
    const GONE: u32 = 1 << 23;

    fn event(verdict: Verdict, body: Body) -> Event {
        Event {
            header: Header {
                verdict,
                boot_ns: 1,
                cgroup_id: 7,
                pid: GONE,
                tid: GONE,
                ppid: 1,
                uid: 0,
                gid: 0,
                comm: "test".into(),
                count: 1,
                first_ns: 0,
                ends_burst: false,
                target: 0,
            },
            body,
        }
    }

    fn exec(path: &str, exe_path: Option<&str>, undecided_set: Option<u32>) -> Body {
        Body::Exec(Exec {
            path: path.into(),
            exe_path: exe_path.map(Into::into),
            exe_name: "x".into(),
            script: false,
            undecided: undecided_set.is_some(),
            unverifiable: false,
            mapped: false,
            opened: false,
            interpreted: false,
            user_mount: false,
            prevented: false,
            unjudged: false,
            drift: None,
            undecided_set,
            content: None,
            vouched: false,
            sha256: None,
            args: vec![path.into()].into(),
            memfd: false,
            deleted: false,
            args_truncated: false,
            args_missing: false,
        })
    }

    fn wx() -> Body {
        Body::Wx(Wx {
            syscall: WxSyscall::Mmap,
            prot: 7,
            flags: 0x22,
            addr: 0x1000,
            len: 4096,
            fd: -1,
            read_implies_exec: false,
            write_exec: true,
            shared_exec: false,
            foreign_write: false,
            compat: false,
            exec_stack: false,
            unjudged: false,
            unverifiable: false,
            extra: 0,
            exe_path: None,
        })
    }

    #[test]
    fn a_kernel_violation_names_its_rule_in_the_behaviours_section_with_the_kernels_action() {
        let rules = Table::default();
        let kill = Verdict::Violation {
            action: Action::Kill,
            set: 1,
            rule: 3,
        };
        assert_eq!(
            judge(&rules, &event(kill, wx())),
            Some((named("memory", 3), Action::Kill))
        );
        // A violation is the kernel's decision: user space does not decide it again.
        let alert = Verdict::Violation {
            action: Action::Alert,
            set: 1,
            rule: 0,
        };
        let judged = judge(&rules, &event(alert, exec("/tmp/x", Some("/tmp/x"), None)));
        assert_eq!(judged, Some((named("exec", 0), Action::Alert)));
        assert!(rules.asked.borrow().is_empty());
    }

    #[test]
    fn a_violation_of_a_set_no_longer_in_force_is_still_reported() {
        let deny = Verdict::Violation {
            action: Action::Deny,
            set: 2,
            rule: 5,
        };
        let (policy, action) = judge(&Table::default(), &event(deny, wx())).unwrap();
        assert_eq!(action, Action::Deny);
        assert_eq!(
            (policy.kind.as_str(), policy.name.as_str()),
            ("unknown", "unknown")
        );
        assert_eq!(policy.rule, "set 2 rule 5");
    }

    #[test]
    fn an_observed_record_the_kernel_decided_is_no_violation() {
        let rules = Table::default();
        assert_eq!(judge(&rules, &event(Verdict::Observed, wx())), None);
        let keyed = exec("/tmp/x", Some("/tmp/x"), None);
        assert_eq!(judge(&rules, &event(Verdict::Observed, keyed)), None);
        assert!(
            rules.asked.borrow().is_empty(),
            "nothing was left to decide"
        );
    }

    #[test]
    fn an_exec_the_kernel_could_not_key_is_decided_on_its_real_path_and_only_alerts() {
        let rules = Table::default();
        // The real path recorded at exec wins over the path as passed.
        let body = exec("/usr/bin/x", Some("/tmp/real"), Some(1));
        assert_eq!(
            judge(&rules, &event(Verdict::Observed, body)),
            Some((named("exec", 0), Action::Alert))
        );
        let body = exec("/tmp/passed", Some("/usr/bin/real"), Some(1));
        assert_eq!(judge(&rules, &event(Verdict::Observed, body)), None);
        // Without it, and the process gone, the path as passed.
        let body = exec("/tmp/passed", None, Some(1));
        assert!(judge(&rules, &event(Verdict::Observed, body)).is_some());
        assert_eq!(
            *rules.asked.borrow(),
            vec![
                (1, "/tmp/real".into(), None, false),
                (1, "/usr/bin/real".into(), None, false),
                (1, "/tmp/passed".into(), None, false),
            ]
        );
    }

    #[test]
    fn a_script_is_decided_on_its_own_path_unless_that_was_cut_short() {
        let rules = Table::default();
        let script = |path: &str| {
            let Body::Exec(mut e) = exec(path, Some("/usr/bin/sh"), Some(1)) else {
                unreachable!()
            };
            e.script = true;
            event(Verdict::Observed, Body::Exec(e))
        };
        assert!(judge(&rules, &script("/tmp/s.sh")).is_some());
        let cut = format!("/tmp/{}", "d".repeat(agent_common::PATH_LEN));
        assert_eq!(
            judge(&rules, &script(&cut)),
            None,
            "decided on the interpreter"
        );
        let asked = rules.asked.borrow();
        assert_eq!(asked[0].2.as_deref(), Some("/tmp/s.sh"));
        assert_eq!(asked[1].2, None);
    }

    #[test]
    fn a_path_cut_short_of_a_process_gone_is_an_alert_that_says_so() {
        let rules = Table::default();
        let cut = format!("/tmp/{}", "d".repeat(agent_common::PATH_LEN));
        let body = exec(&cut, None, Some(1));
        let (policy, action) = judge(&rules, &event(Verdict::Observed, body)).unwrap();
        assert_eq!(action, Action::Alert);
        assert_eq!(policy.rule, "spec.exec");
        assert!(
            policy.text.contains("could not be checked"),
            "{}",
            policy.text
        );
        assert!(rules.asked.borrow().is_empty());
    }
}
