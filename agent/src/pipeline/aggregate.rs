//! Aggregation (`aggregation.window` in the config): identical violations (same cgroup, policy
//! rule and target) inside a window become one event. The first goes out at once, never held
//! by the window; the others are counted, and when the window closes one summary carries their
//! `count` and `firstSeen`. Counts add up: a summary's `count` is the sum of the counts of the
//! events it stands for (the kernel's own flood counts included).
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::cloudevents::{Payload, VerdictName, VigilEvent, data::Member};

/// Windows open at once; beyond this, events pass through unaggregated rather than grow the
/// agent without limit.
const MAX_OPEN: usize = 65_536;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    cgroup: u64,
    policy: String,
    rule: String,
    target: String,
}

struct Window {
    closes: Instant,
    /// Events held back since the window opened, and what they stand for.
    held: u64,
    first_seen: Option<String>,
    last: Option<Arc<VigilEvent>>,
}

pub struct Aggregator {
    window: Duration,
    open: HashMap<Key, Window>,
}

/// What makes two violations identical; `None` for what is never aggregated (observed
/// behaviour, losses).
fn key(event: &VigilEvent) -> Option<Key> {
    if event.verdict != VerdictName::Violation {
        return None;
    }
    let Payload::Behaviour(data) = &event.payload else {
        return None;
    };
    let policy = data.policy.as_ref()?;
    let target = match &data.member {
        Member::Exec(e) => format!("exec {}", e.path),
        Member::Connect(c) => format!(
            "connect {} {:?} {:?} {}",
            c.protocol,
            c.daddr,
            c.dport,
            c.hook.name()
        ),
        Member::Wx(w) => format!(
            "wx {} {} {}",
            w.syscall.name(),
            w.prot_text,
            data.process.exe.as_deref().unwrap_or(&data.process.comm)
        ),
        Member::Move(m) => format!("move {} {}", m.from_cgroup_id, m.to_cgroup_id),
    };
    Some(Key {
        cgroup: data.cgroup.id,
        policy: format!(
            "{}/{}",
            policy.namespace.as_deref().unwrap_or(""),
            policy.name
        ),
        rule: policy.rule.clone(),
        target,
    })
}

/// How many violations an event stands for.
fn weight(event: &VigilEvent) -> u64 {
    event.behaviour().and_then(|d| d.count).map_or(1, u64::from)
}

impl Aggregator {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            open: HashMap::new(),
        }
    }

    /// The event to send now, or `None` when an open window counts it instead.
    pub fn offer(&mut self, event: Arc<VigilEvent>, now: Instant) -> Option<Arc<VigilEvent>> {
        let Some(key) = key(&event) else {
            return Some(event);
        };
        if let Some(w) = self.open.get_mut(&key)
            && now < w.closes
        {
            w.held += weight(&event);
            if w.first_seen.is_none() {
                w.first_seen = Some(first_seen(&event));
            }
            w.last = Some(event);
            return None;
        }
        if self.open.len() >= MAX_OPEN && !self.open.contains_key(&key) {
            return Some(event);
        }
        self.open.insert(
            key,
            Window {
                closes: now + self.window,
                held: 0,
                first_seen: None,
                last: None,
            },
        );
        Some(event)
    }

    /// Summaries of the windows closed by `now` (all of them with `now` `None`: at shutdown).
    pub fn due(&mut self, now: Option<Instant>) -> Vec<VigilEvent> {
        let mut out = Vec::new();
        self.open.retain(|_, w| {
            if now.is_some_and(|now| now < w.closes) {
                return true;
            }
            if let Some(last) = w.last.take() {
                let mut summary = Arc::unwrap_or_clone(last);
                summary.id = crate::event::EventId::random();
                if let Payload::Behaviour(data) = &mut summary.payload {
                    data.count = Some(u32::try_from(w.held).unwrap_or(u32::MAX));
                    data.first_seen = w.first_seen.take();
                }
                out.push(summary);
            }
            false
        });
        out
    }
}

/// When the first violation an event stands for happened (RFC 3339).
fn first_seen(event: &VigilEvent) -> String {
    event
        .behaviour()
        .and_then(|d| d.first_seen.clone())
        .unwrap_or_else(|| {
            event
                .time
                .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cloudevents::{Context, violation},
        event::{Action, Body, Event, Exec, Header, Verdict},
        metadata::process::Lineage,
        policy::PolicyRef,
    };

    fn exec(path: &str, cgroup: u64, count: u32) -> Arc<VigilEvent> {
        let event = Event {
            header: Header {
                verdict: Verdict::Violation {
                    action: Action::Alert,
                    set: 1,
                    rule: 0,
                },
                boot_ns: 1_000,
                cgroup_id: cgroup,
                pid: 7,
                tid: 7,
                ppid: 1,
                uid: 0,
                gid: 0,
                comm: "x".into(),
                count,
                first_ns: 500,
                ends_burst: false,
                target: 0,
            },
            body: Body::Exec(Exec {
                exe_name: "x".into(),
                ..Exec::plain(path, Vec::new())
            }),
        };
        let policy = PolicyRef {
            kind: "ClusterRuntimePolicy".into(),
            name: "p".into(),
            namespace: None,
            rule: "spec.exec.deny[0]".into(),
            text: "prefix /tmp/".into(),
        };
        Arc::new(violation(
            &event,
            &Lineage::default(),
            &Context::host("n1", None),
            &crate::cloudevents::shared::Shared::new(policy),
            Action::Alert,
        ))
    }

    fn count(e: &VigilEvent) -> u64 {
        weight(e)
    }

    #[test]
    fn a_thousand_identical_violations_become_the_first_at_once_and_one_summary() {
        let mut agg = Aggregator::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let mut sent = Vec::new();
        for i in 0..1000 {
            // Some records already stand for several (held back by the kernel's throttle).
            let c = if i % 100 == 99 { 3 } else { 1 };
            if let Some(e) = agg.offer(exec("/tmp/evil", 9, c), t0 + Duration::from_millis(i)) {
                sent.push(e);
            }
        }
        assert_eq!(
            sent.len(),
            1,
            "only the first goes out before the window closes"
        );
        assert!(
            agg.due(Some(t0 + Duration::from_secs(5))).is_empty(),
            "still open"
        );
        let summaries = agg.due(Some(t0 + Duration::from_secs(11)));
        assert_eq!(summaries.len(), 1);
        let total: u64 =
            sent.iter().map(|e| count(e)).sum::<u64>() + summaries.iter().map(count).sum::<u64>();
        assert_eq!(total, 1000 + 10 * 2, "every violation counted once");
        let summary = summaries[0].behaviour().unwrap();
        assert!(summary.first_seen.is_some());
        assert_ne!(
            summaries[0].id, sent[0].id,
            "a summary is an event of its own"
        );
    }

    #[test]
    fn different_targets_cgroups_and_observed_events_are_not_merged() {
        let mut agg = Aggregator::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(agg.offer(exec("/tmp/a", 9, 1), t0).is_some());
        assert!(
            agg.offer(exec("/tmp/b", 9, 1), t0).is_some(),
            "another target"
        );
        assert!(
            agg.offer(exec("/tmp/a", 10, 1), t0).is_some(),
            "another cgroup"
        );
        assert!(
            agg.offer(exec("/tmp/a", 9, 1), t0).is_none(),
            "the same one"
        );
        let loss = crate::cloudevents::loss(
            "n1",
            &crate::cloudevents::LossReport::default(),
            &crate::cloudevents::LossReport::default(),
        );
        let loss = Arc::new(loss);
        assert!(agg.offer(loss.clone(), t0).is_some());
        assert!(agg.offer(loss, t0).is_some(), "losses are never held");
        // A window with nothing held back closes without a summary.
        let summaries = agg.due(None);
        assert_eq!(summaries.len(), 1);
        assert_eq!(count(&summaries[0]), 1);
    }
}
