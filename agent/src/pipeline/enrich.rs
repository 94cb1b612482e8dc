//! Enrichment: the process lineage, the cgroup path and the pod behind an event, and the
//! finished CloudEvent. An event from a pod the API server has not shown yet waits a moment
//! (bounded, see `held`) for its metadata, then goes out with what is known.
use std::{path::PathBuf, time::Duration};

use agent_common::ThrottleKey;

use super::{Judgement, Learners, held};
use crate::{
    cloudevents::{self, Context, NodeNames, VigilEvent},
    event,
    learn::recorder::LearnKey,
    metadata::{
        cgroup::{CgroupPaths, Resolved},
        cluster::PodLookup,
        process::ProcessCache,
    },
    pipeline::cluster::ClusterLink,
};

/// How long an event from a pod the store has not seen yet is held for its metadata.
const METADATA_WAIT: Duration = Duration::from_secs(2);

/// Where finished events go: with the kernel throttle's key of their record, and the
/// `Learn` policies whose tables they go into.
pub(crate) type Out<'a> = dyn FnMut(VigilEvent, Option<ThrottleKey>, &[LearnKey]) + 'a;

/// An event waiting for its pod's metadata.
struct Held {
    event: event::Event,
    judgement: Judgement,
    learn: Learners,
    cgroup: Option<Resolved>,
    until: tokio::time::Instant,
}

pub(crate) struct Enrich {
    processes: ProcessCache,
    cgroups: CgroupPaths,
    held: held::HeldQueue<Held>,
    /// The node's name as the events share it, made again only when the name changes.
    node: NodeNames,
    /// Events finished and handed to the sinks.
    pub(crate) emitted: u64,
}

impl Enrich {
    pub(crate) fn new(cgroup_root: PathBuf) -> Self {
        Self {
            processes: ProcessCache::default(),
            cgroups: CgroupPaths::new(cgroup_root),
            held: held::HeldQueue::new(held::HELD_CAPACITY),
            node: NodeNames::default(),
            emitted: 0,
        }
    }

    /// Finishes `event` into `out`, or holds it while its pod is not known yet.
    pub(crate) fn dispatch(
        &mut self,
        node: &str,
        event: event::Event,
        judgement: Judgement,
        learn: Learners,
        link: Option<&ClusterLink>,
        out: &mut Out<'_>,
    ) {
        let cgroup = self.cgroups.resolve(event.header.cgroup_id);
        let lookup = link.map(|l| l.lookup(cgroup.as_ref().and_then(|c| c.pod.as_deref())));
        if matches!(lookup, Some(PodLookup::Unknown { .. })) {
            // A pod created a moment ago: its metadata is on the way.
            let until = tokio::time::Instant::now() + METADATA_WAIT;
            let waiting = Held {
                event,
                judgement,
                learn,
                cgroup,
                until,
            };
            let Err(h) = self.held.hold(waiting) else {
                return;
            };
            // No room to wait: it goes out now, marked metadataIncomplete, never dropped.
            let overflowed = self.held.overflowed();
            if overflowed == 1 || overflowed.is_multiple_of(1000) {
                tracing::warn!(
                    overflowed,
                    capacity = held::HELD_CAPACITY,
                    "too many events waiting for their pod's metadata: sent without it"
                );
            }
            let finished = self.finish(node, &h.event, &h.judgement, h.cgroup, lookup.as_ref());
            return self.send(out, finished, h.event.carry_key(), &h.learn);
        }
        let finished = self.finish(node, &event, &judgement, cgroup, lookup.as_ref());
        self.send(out, finished, event.carry_key(), &learn);
    }

    /// Hands `event` on with the kernel throttle's key of the record it came from.
    fn send(
        &mut self,
        out: &mut Out<'_>,
        event: VigilEvent,
        throttle: Option<ThrottleKey>,
        learn: &[LearnKey],
    ) {
        // An act recorded for learning only is not an event the sinks get.
        let for_sinks = learn.is_empty() || event.verdict != cloudevents::VerdictName::Observed;
        out(event, throttle, learn);
        if for_sinks {
            self.emitted += 1;
        }
    }

    fn finish(
        &mut self,
        node: &str,
        event: &event::Event,
        judgement: &Judgement,
        cgroup: Option<Resolved>,
        pod: Option<&PodLookup>,
    ) -> VigilEvent {
        let lineage = self.processes.lineage(event);
        if *self.node.name != *node {
            self.node = node.into();
        }
        let ctx = Context {
            node: self.node.clone(),
            cgroup_path: cgroup.map(|c| c.path),
            pod,
        };
        match judgement {
            None => cloudevents::observed(event, &lineage, &ctx),
            Some((policy, action)) => {
                cloudevents::violation(event, &lineage, &ctx, policy, *action)
            }
        }
    }

    pub(crate) fn has_held(&self) -> bool {
        !self.held.is_empty()
    }

    /// Sends the held events whose pod is now known, or whose wait is over (flagged
    /// `metadataIncomplete`); with `all` (shutting down), every held event.
    pub(crate) fn release_held(
        &mut self,
        node: &str,
        link: Option<&ClusterLink>,
        out: &mut Out<'_>,
        all: bool,
    ) {
        let now = tokio::time::Instant::now();
        for h in self.held.take_all() {
            let lookup = link.map(|l| l.lookup(h.cgroup.as_ref().and_then(|c| c.pod.as_deref())));
            let wait = !all && now < h.until;
            let h = if matches!(lookup, Some(PodLookup::Unknown { .. })) && wait {
                match self.held.hold(h) {
                    Ok(()) => continue,
                    Err(h) => h,
                }
            } else {
                h
            };
            let finished = self.finish(node, &h.event, &h.judgement, h.cgroup, lookup.as_ref());
            self.send(out, finished, h.event.carry_key(), &h.learn);
        }
    }
}
