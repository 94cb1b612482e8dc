//! Learning in `vigil run`: the acts the kernel reports for the sets of `Learn` policies go
//! into one bounded table per policy, which is published (and, after a restart, taken back)
//! as this node's `RuntimePolicyReport` (`report.rs`).
use std::collections::{BTreeMap, BTreeSet};

use super::table::{LearnTable, Limits};
use crate::{
    cloudevents::VigilEvent,
    policy::{Policy, PolicyKind},
};

/// The most a table may hold as JSON: a report object stays well inside the 1.5 MB the API
/// server's store takes, with room for its metadata.
const REPORT_BYTES: usize = 1 << 20;

/// A `Learn` policy, as its table is keyed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LearnKey {
    pub kind: PolicyKind,
    pub namespace: Option<String>,
    pub name: String,
}

impl LearnKey {
    pub fn of(policy: &Policy) -> Self {
        Self {
            kind: policy.kind,
            namespace: policy.namespace.clone(),
            name: policy.name.clone(),
        }
    }
}

impl std::fmt::Display for LearnKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// One policy's table, and where it stands with its report.
#[derive(Debug)]
struct Slot {
    table: LearnTable,
    /// Changed since it was last handed out for publishing.
    dirty: bool,
    /// The report kept from before (or its absence) is known and merged in: until then the
    /// table is not published, or it would overwrite what was learned before a restart.
    restored: bool,
}

/// The tables of the `Learn` policies in force on this node.
#[derive(Debug, Default)]
pub struct Recorder {
    limits: Limits,
    slots: BTreeMap<LearnKey, Slot>,
    /// Events for a policy no longer in force (its set replaced meanwhile): not kept.
    pub stale: u64,
}

impl Recorder {
    /// Takes `event` into the tables of `keys`.
    pub fn record(&mut self, keys: &[LearnKey], event: &VigilEvent) {
        for key in keys {
            match self.slots.get_mut(key) {
                Some(slot) => {
                    super::observe::record(&mut slot.table, event);
                    slot.dirty = true;
                }
                None => self.stale += 1,
            }
        }
    }

    /// The policies that learn now: a table for each new one (returned, to be restored from
    /// its report), none any more for those gone.
    pub fn follow(&mut self, learning: &BTreeSet<LearnKey>) -> Vec<LearnKey> {
        self.slots.retain(|key, _| learning.contains(key));
        let mut new = Vec::new();
        for key in learning {
            if !self.slots.contains_key(key) {
                self.slots.insert(
                    key.clone(),
                    Slot {
                        table: LearnTable::new(self.limits),
                        dirty: false,
                        restored: false,
                    },
                );
                new.push(key.clone());
            }
        }
        new
    }

    /// Merges what the report of `key` kept (`None`: there was none) into its table, which
    /// may be published from now on.
    pub fn restore(&mut self, key: &LearnKey, kept: Option<&LearnTable>) {
        if let Some(slot) = self.slots.get_mut(key) {
            if let Some(kept) = kept {
                let mut table = kept.clone();
                table.limits = self.limits;
                table.merge(&slot.table);
                slot.table = table;
                slot.dirty = true;
            }
            slot.restored = true;
        }
    }

    /// The tables changed since the last call (and restored), to publish; each made to fit
    /// a report object first.
    pub fn due(&mut self) -> Vec<(LearnKey, LearnTable)> {
        self.slots
            .iter_mut()
            .filter(|(_, slot)| slot.dirty && slot.restored)
            .map(|(key, slot)| {
                slot.dirty = false;
                if !slot.table.fit(REPORT_BYTES) {
                    tracing::warn!(policy = %key, "learning: the table does not fit a report");
                }
                (key.clone(), slot.table.clone())
            })
            .collect()
    }

    /// Marks `key`'s table as changed again (its publishing failed).
    pub fn again(&mut self, key: &LearnKey) {
        if let Some(slot) = self.slots.get_mut(key) {
            slot.dirty = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> LearnKey {
        LearnKey {
            kind: PolicyKind::RuntimePolicy,
            namespace: Some("shop".into()),
            name: name.into(),
        }
    }

    #[test]
    fn a_table_is_published_only_after_what_was_kept_is_merged_in() {
        let mut r = Recorder::default();
        let web: BTreeSet<_> = [key("web")].into();
        assert_eq!(r.follow(&web), vec![key("web")]);
        assert_eq!(r.follow(&web), Vec::<LearnKey>::new(), "already followed");
        r.slots
            .get_mut(&key("web"))
            .unwrap()
            .table
            .exec("/bin/new", None);
        r.slots.get_mut(&key("web")).unwrap().dirty = true;
        assert!(
            r.due().is_empty(),
            "not restored yet: would overwrite the kept report"
        );
        let mut kept = LearnTable::default();
        kept.exec("/bin/old", None);
        r.restore(&key("web"), Some(&kept));
        let due = r.due();
        assert_eq!(due.len(), 1);
        let paths: Vec<_> = due[0].1.executables.keys().cloned().collect();
        assert_eq!(paths, ["/bin/new", "/bin/old"]);
        assert!(r.due().is_empty(), "published once until it changes");
        r.again(&key("web"));
        assert_eq!(r.due().len(), 1, "a failed publish is tried again");
    }

    #[test]
    fn a_policy_that_stops_learning_loses_its_table_and_its_events_are_counted() {
        let mut r = Recorder::default();
        r.follow(&[key("web"), key("db")].into());
        r.follow(&[key("db")].into());
        assert_eq!(r.slots.keys().cloned().collect::<Vec<_>>(), [key("db")]);
        let event = crate::learn::observe::tests::event(crate::event::Body::Exec(
            crate::event::Exec::plain("/bin/true", Vec::new()),
        ));
        r.record(&[key("web")], &event);
        assert_eq!(r.stale, 1);
        r.restore(&key("db"), None);
        r.record(&[key("db")], &event);
        let due = r.due();
        assert!(!due[0].1.executables.is_empty());
    }
}
