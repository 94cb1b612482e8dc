//! Violations the kernel held back in a flood that then stopped: no later record carries
//! their count, so user space does. It remembers, per throttle key, the finished violation
//! whose record ended its window's burst (the kernel marks it: the held-back ones come after
//! that record and no other, so a flood of distinct violations, none held back, costs nothing
//! here), and when the sweep of the kernel's throttle map finds a stranded count, it sends that
//! violation again standing for the held-back ones (`count`, `firstSeen`), so that counts add
//! up to what happened. A count found before its violation's record came through (user space
//! lagging behind the ring buffer) waits for it as long as a violation is remembered; one
//! whose violation is no longer remembered stays what it already is in loss events:
//! `heldBack`. So does a count held back after a burst whose last record found the ring
//! buffer full (that loss is counted too).
//!
//! The sweep reads the whole map, a system call or two per entry, so it runs on a thread of
//! its own: the pipeline's loop only gets the stranded counts.
use std::{
    collections::{VecDeque, hash_map::Entry},
    sync::Arc,
    time::Duration,
};

use foldhash::HashMap;

use agent_common::{ThrottleKey, ThrottleState};
use tokio::{sync::mpsc, time::Instant};

use crate::{
    cloudevents::{Payload, VigilEvent},
    ebpf::throttle::ThrottleMap,
    metadata::clock::{boot_now_ns, wall_time},
};

/// How often the kernel's flood throttle is swept for counts no record carried.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// How long a violation is remembered after it went out: a stranded count is found two
/// throttle windows after its window opened, and the sweep runs every second.
const REMEMBER: Duration = Duration::from_secs(10);
/// Violations remembered at most (as many as the kernel's throttle map holds keys).
const MAX_REMEMBERED: usize = 16_384;

/// Stranded throttle entries, as the sweep found them.
pub(crate) type Stranded = Vec<(ThrottleKey, ThrottleState)>;

/// Starts the sweep of `map` on a thread of its own; it ends when the receiver is dropped.
pub(crate) fn sweep_in_background(
    mut map: ThrottleMap,
) -> std::io::Result<mpsc::Receiver<Stranded>> {
    let (tx, rx) = mpsc::channel(4);
    std::thread::Builder::new()
        .name("vigil-throttle".into())
        .spawn(move || {
            while !tx.is_closed() {
                std::thread::sleep(SWEEP_EVERY);
                match map.sweep(boot_now_ns()) {
                    Ok(stranded) if stranded.is_empty() => {}
                    Ok(stranded) => {
                        if tx.blocking_send(stranded).is_err() {
                            return;
                        }
                    }
                    Err(err) => {
                        tracing::warn!(%err, "sweeping the flood throttle failed; trying again");
                    }
                }
            }
        })?;
    Ok(rx)
}

/// The last violation of each throttle key, for at most [`REMEMBER`] and [`MAX_REMEMBERED`]
/// keys; the oldest go first, at a constant cost per violation.
#[derive(Default)]
pub(crate) struct Carry {
    /// Shared with the sinks' queues: remembering a violation copies nothing.
    last: HashMap<ThrottleKey, (Arc<VigilEvent>, Instant)>,
    /// Keys in the order they were remembered (a key again is queued again).
    order: VecDeque<(ThrottleKey, Instant)>,
    /// Stranded counts whose violation was not remembered yet, with when they were found.
    waiting: HashMap<ThrottleKey, (ThrottleState, Instant)>,
}

impl Carry {
    /// `event` (a finished violation) is the latest of throttle key `key`; returns it again
    /// standing for a stranded count of the key that was waiting for it.
    pub(crate) fn remember(
        &mut self,
        key: ThrottleKey,
        event: &Arc<VigilEvent>,
    ) -> Option<VigilEvent> {
        let now = Instant::now();
        self.last.insert(key, (Arc::clone(event), now));
        self.order.push_back((key, now));
        self.forget(now);
        let (state, _) = self.waiting.remove(&key)?;
        Some(carried(event, &state))
    }

    /// Forgets what is older than [`REMEMBER`], and the oldest beyond [`MAX_REMEMBERED`].
    fn forget(&mut self, now: Instant) {
        while let Some(&(key, at)) = self.order.front() {
            let expired = now.duration_since(at) >= REMEMBER;
            if !expired
                && self.last.len() <= MAX_REMEMBERED
                && self.order.len() <= 2 * MAX_REMEMBERED
            {
                break;
            }
            self.order.pop_front();
            // Only the entry this queue slot stands for: a key remembered again is newer.
            if let Entry::Occupied(entry) = self.last.entry(key)
                && entry.get().1 == at
            {
                entry.remove();
            }
        }
    }

    /// Forgets waiting counts older than [`REMEMBER`]: once a sweep, not once a violation (a
    /// walk of all of them).
    fn forget_waiting(&mut self, now: Instant) {
        let before = self.waiting.len();
        self.waiting
            .retain(|_, (_, found)| now.duration_since(*found) < REMEMBER);
        if self.waiting.len() < before {
            tracing::debug!(
                counts = before - self.waiting.len(),
                "held-back violations whose record never came through (in heldBack only)"
            );
        }
    }

    /// The violations standing for the `stranded` counts of floods that stopped.
    /// A count whose violation is not remembered waits for its record (see the module).
    pub(crate) fn carry(&mut self, stranded: Stranded) -> Vec<VigilEvent> {
        let now = Instant::now();
        self.forget(now);
        self.forget_waiting(now);
        let mut out = Vec::new();
        for (key, state) in stranded {
            if let Some((event, _)) = self.last.get(&key) {
                out.push(carried(event, &state));
            } else if self.waiting.len() < MAX_REMEMBERED || self.waiting.contains_key(&key) {
                let (waiting, _) = self
                    .waiting
                    .entry(key)
                    .or_insert((ThrottleState { held: 0, ..state }, now));
                if waiting.held == 0 || state.first_held < waiting.first_held {
                    waiting.first_held = state.first_held;
                }
                waiting.held += state.held;
            } else {
                tracing::debug!(
                    held = state.held,
                    pid = key.pid,
                    "held-back violations whose record is not remembered (in heldBack only)"
                );
            }
        }
        out
    }
}

/// `last` again, now standing for the `held` violations after it.
fn carried(last: &VigilEvent, state: &ThrottleState) -> VigilEvent {
    let mut event = last.clone();
    event.id = crate::event::EventId::random();
    event.time = chrono::Utc::now();
    if let Payload::Behaviour(data) = &mut event.payload {
        data.count = Some(state.held);
        data.first_seen =
            Some(wall_time(state.first_held).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true));
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cloudevents::{Context, violation},
        event::{Action, Body, Event, Exec, test_violation},
        metadata::process::Lineage,
        policy::PolicyRef,
    };

    /// A finished exec violation, as the pipeline remembers one.
    fn exec_violation() -> VigilEvent {
        violation(
            &Event {
                header: test_violation(Action::Alert, "x"),
                body: Body::Exec(Exec::plain("/tmp/x", vec![])),
            },
            &Lineage::default(),
            &Context::host("n", None),
            &crate::cloudevents::shared::Shared::new(PolicyRef {
                kind: "ClusterRuntimePolicy".into(),
                name: "p".into(),
                namespace: None,
                rule: "spec.exec.deny[0]".into(),
                text: "prefix /tmp/".into(),
            }),
            Action::Alert,
        )
    }

    #[test]
    fn the_oldest_keys_are_forgotten_first_and_a_key_seen_again_is_kept() {
        let event = Arc::new(exec_violation());
        let key = |pid: u32| ThrottleKey {
            pid,
            ..ThrottleKey::default()
        };
        let mut carry = Carry::default();
        carry.remember(key(0), &event);
        for pid in 1..(MAX_REMEMBERED as u32 + 10) {
            carry.remember(key(pid), &event);
            if pid == MAX_REMEMBERED as u32 {
                // Seen again: now among the newest.
                carry.remember(key(0), &event);
            }
        }
        assert_eq!(carry.last.len(), MAX_REMEMBERED);
        assert!(carry.last.contains_key(&key(0)));
        assert!(!carry.last.contains_key(&key(1)), "the oldest went first");
        assert!(carry.last.contains_key(&key(MAX_REMEMBERED as u32 + 9)));
        let held = ThrottleState {
            held: 3,
            ..ThrottleState::default()
        };
        assert_eq!(carry.carry(vec![(key(0), held), (key(1), held)]).len(), 1);
    }

    #[test]
    fn a_count_found_before_its_record_came_through_goes_out_with_that_record() {
        let event = Arc::new(exec_violation());
        let key = ThrottleKey {
            pid: 7,
            ..ThrottleKey::default()
        };
        let other = ThrottleKey {
            pid: 8,
            ..ThrottleKey::default()
        };
        let now = crate::metadata::clock::boot_now_ns();
        let stranded = |held, first_held| ThrottleState {
            window_start: 1,
            first_held,
            emitted: 8,
            held,
        };
        let mut carry = Carry::default();
        // Two sweeps find counts of the key before its record is read off the ring buffer.
        assert!(carry.carry(vec![(key, stranded(5, now))]).is_empty());
        assert!(
            carry
                .carry(vec![(key, stranded(7, now - 1_000))])
                .is_empty()
        );
        assert!(
            carry.remember(other, &event).is_none(),
            "another key's record carries nothing"
        );
        let carried = carry
            .remember(key, &event)
            .expect("the waiting count goes out");
        let data = carried.behaviour().expect("behaviour");
        assert_eq!(data.count, Some(12), "both counts, once");
        assert!(data.first_seen.is_some());
        assert!(
            carry.remember(key, &event).is_none(),
            "a count is carried once"
        );
    }

    #[test]
    fn a_carried_violation_is_the_last_one_again_standing_for_the_held_ones() {
        let event = Event {
            header: test_violation(Action::Alert, "x"),
            body: Body::Exec(Exec::plain("/tmp/x", vec![])),
        };
        let policy = PolicyRef {
            kind: "ClusterRuntimePolicy".into(),
            name: "p".into(),
            namespace: None,
            rule: "spec.exec.deny[0]".into(),
            text: "prefix /tmp/".into(),
        };
        let last = violation(
            &event,
            &Lineage::default(),
            &Context::host("n", None),
            &crate::cloudevents::shared::Shared::new(policy),
            Action::Alert,
        );
        let held = ThrottleState {
            window_start: 1,
            first_held: crate::metadata::clock::boot_now_ns(),
            emitted: 8,
            held: 992,
        };
        let carried = carried(&last, &held);
        assert_ne!(carried.id, last.id, "an event of its own");
        assert_eq!(carried.subject, last.subject);
        assert_eq!(carried.policy, last.policy);
        let data = carried.behaviour().expect("behaviour");
        assert_eq!(data.count, Some(992));
        let first = chrono::DateTime::parse_from_rfc3339(data.first_seen.as_deref().unwrap())
            .expect("RFC 3339");
        let age = chrono::Utc::now() - first.with_timezone(&chrono::Utc);
        assert!(age.num_seconds().abs() < 60, "first seen now, not {first}");
        assert_eq!(
            carried.behaviour().unwrap().member,
            last.behaviour().unwrap().member
        );
    }

    #[test]
    fn a_remembered_violation_is_the_sinks_own_event_not_a_copy() {
        let mut carry = Carry::default();
        let event = Arc::new(exec_violation());
        carry.remember(
            ThrottleKey {
                pid: 1,
                ..ThrottleKey::default()
            },
            &event,
        );
        let (kept, _) = carry.last.values().next().expect("remembered");
        assert!(Arc::ptr_eq(kept, &event));
    }
}
