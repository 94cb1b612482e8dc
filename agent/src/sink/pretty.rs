//! The readable line of an event, from its typed data:
//! `05:31:02.123 exec    bash[1234] uid=0 /usr/bin/curl curl -s x  (exe .., parent sshd[1200], cgroup /user.slice)`
use crate::cloudevents::{Payload, VerdictName, VigilEvent, data::Member};

pub fn pretty(event: &VigilEvent) -> String {
    // Paths, arguments and process names are whoever is watched's choice: nothing in them may
    // reach a terminal as a control sequence or reorder what the reader sees.
    visible(&line(event))
}

/// `text` with control characters and invisible or reordering Unicode formatting characters
/// written out as `\u{..}`, so that what a terminal shows is what the text holds.
pub fn visible(text: &str) -> String {
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
    };
    if !text.chars().any(hidden) {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if hidden(c) {
                format!("\\u{{{:x}}}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn line(event: &VigilEvent) -> String {
    let time = event.time.format("%H:%M:%S%.3f");
    let ty = event.ty().short();
    let data = match &event.payload {
        Payload::Loss(loss) => return format!("{time} {ty:<7} LOST {}", loss.lost.total),
        Payload::Behaviour(data) => data,
    };
    let what = match &data.member {
        Member::Exec(e) => e.line(),
        Member::Connect(c) => c.line(),
        Member::Wx(w) => w.line(),
        Member::Move(m) => m.line(),
    };
    let p = &data.process;
    let who = format!("{}[{}] uid={}", p.comm, p.pid, p.uid);
    let parent = data.parent.as_ref().map_or("-", |parent| &*parent.comm);
    let mut context = format!(
        "exe {}, parent {parent}[{}], cgroup {}",
        p.exe.as_deref().unwrap_or("-"),
        p.ppid,
        data.cgroup.path.as_deref().unwrap_or("-")
    );
    if let Some(pod) = &data.pod
        && let (Some(namespace), Some(name)) = (&pod.namespace, &pod.name)
    {
        let container = data
            .container
            .as_ref()
            .and_then(|c| c.name.clone().flatten())
            .unwrap_or_else(|| "-".into());
        context = format!("pod {namespace}/{name}, container {container}, {context}");
    }
    match (&data.policy, event.verdict) {
        (Some(policy), VerdictName::Violation) => {
            // A violation: what was done, then which policy and rule decided.
            let action = event.action.name().to_uppercase();
            let name = match &policy.namespace {
                Some(ns) => format!("{ns}/{}", policy.name),
                None => policy.name.clone(),
            };
            format!(
                "{time} {action:<5} {ty:<7} {who} {what}  [{} {name}: {} {}]  ({context})",
                policy.kind, policy.rule, policy.text
            )
        }
        _ => format!("{time} {ty:<7} {who} {what}  ({context})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cloudevents::{Context, violation},
        event::{Action, Body, Event, Exec},
        metadata::process::Lineage,
        policy::PolicyRef,
    };

    #[test]
    fn a_violation_reads_with_its_action_policy_and_rule() {
        let event = Event {
            header: crate::event::test_violation(Action::Kill, "evil"),
            body: Body::Exec(Exec {
                path: "/tmp/evil".into(),
                exe_path: Some("/tmp/evil".into()),
                exe_name: "evil".into(),
                args: vec!["/tmp/evil".into(), "-x".into()].into(),
                memfd: false,
                deleted: true,
                script: false,
                undecided: false,
                unverifiable: false,
                mapped: false,
                opened: false,
                interpreted: false,
                user_mount: false,
                prevented: false,
                unjudged: false,
                drift: None,
                undecided_set: None,
                content: None,
                vouched: false,
                sha256: None,
                args_truncated: false,
                args_missing: false,
            }),
        };
        let policy = PolicyRef {
            kind: "ClusterRuntimePolicy".into(),
            name: "host-baseline".into(),
            namespace: None,
            rule: "spec.exec.deny[0]".into(),
            text: "prefix /tmp/".into(),
        };
        let ce = violation(
            &event,
            &Lineage::default(),
            &Context::host("n1", Some("/".into())),
            &crate::cloudevents::shared::Shared::new(policy),
            Action::Kill,
        );
        let line = pretty(&ce);
        assert!(line.contains(" KILL  exec"), "{line}");
        assert!(line.contains("evil[42]"), "{line}");
        assert!(line.contains("/tmp/evil /tmp/evil -x [deleted]"), "{line}");
        assert!(
            line.contains("[ClusterRuntimePolicy host-baseline: spec.exec.deny[0] prefix /tmp/]"),
            "{line}"
        );
        assert!(line.ends_with("(exe -, parent -[1], cgroup /)"), "{line}");
    }

    #[test]
    fn control_sequences_and_reordering_characters_are_shown_not_obeyed() {
        let hostile = "/tmp/\u{1b}[2J\u{1b}]0;owned\u{7}x\u{202e}gpj.exe\u{9b}31m\nnext";
        let line = visible(hostile);
        assert!(
            !line.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "{line:?}"
        );
        assert_eq!(
            line,
            "/tmp/\\u{1b}[2J\\u{1b}]0;owned\\u{7}x\\u{202e}gpj.exe\\u{9b}31m\\u{a}next"
        );
        assert_eq!(visible("/usr/bin/curl"), "/usr/bin/curl");
    }
}
