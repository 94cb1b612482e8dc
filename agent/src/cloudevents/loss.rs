//! `dev.vigil.loss.v1`: what was lost, so that no loss is silent.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ebpf::{KernelLosses, ProbeErrors};

/// Losses since the previous report, and totals since start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LossReport {
    pub kernel: KernelLosses,
    /// Violations the kernel held back in a flood: not lost (a later record of the same
    /// violation carries their count), but reported so that a flood is never silent.
    pub held_back: KernelLosses,
    pub reader_queue_full: u64,
    pub undecodable: u64,
    /// Finished events sinks' full queues refused (summed over sinks).
    pub sink_queue_full: u64,
    /// Finished events sinks gave up delivering (summed over sinks).
    pub sink_failed: u64,
    /// Undelivered events full disk spools dropped (summed over sinks).
    pub spool_dropped: u64,
    /// Damaged regions disk spools skipped (summed over sinks).
    pub spool_corrupt: u64,
    /// Probe failures by `<probe>/<reason>`: not records lost, but events a probe may have
    /// given up on.
    pub probe_errors: ProbeErrors,
}

fn kernel_delta(now: &KernelLosses, earlier: &KernelLosses) -> KernelLosses {
    KernelLosses {
        exec: now.exec - earlier.exec,
        connect: now.connect - earlier.connect,
        wx: now.wx - earlier.wx,
        moves: now.moves - earlier.moves,
    }
}

impl LossReport {
    /// Records lost (held-back violations are not lost).
    pub fn total(&self) -> u64 {
        self.kernel.total()
            + self.reader_queue_full
            + self.undecodable
            + self.sink_queue_full
            + self.sink_failed
            + self.spool_dropped
            + self.spool_corrupt
    }

    /// Where the records of [`Self::total`] were lost, every counter named, for a log line.
    pub fn breakdown(&self) -> String {
        format!(
            "ring_buffer={} reader_queue_full={} undecodable={} sink_queue_full={} sink_failed={} spool_dropped={} spool_corrupt={}",
            self.kernel.total(),
            self.reader_queue_full,
            self.undecodable,
            self.sink_queue_full,
            self.sink_failed,
            self.spool_dropped,
            self.spool_corrupt
        )
    }

    /// Whether anything is worth a loss event: a loss, violations held back, or a probe
    /// that gave up.
    pub fn any(&self) -> bool {
        self.total() > 0 || self.held_back.total() > 0 || !self.probe_errors.is_empty()
    }

    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            kernel: kernel_delta(&self.kernel, &earlier.kernel),
            held_back: kernel_delta(&self.held_back, &earlier.held_back),
            reader_queue_full: self.reader_queue_full - earlier.reader_queue_full,
            undecodable: self.undecodable - earlier.undecodable,
            sink_queue_full: self.sink_queue_full - earlier.sink_queue_full,
            sink_failed: self.sink_failed - earlier.sink_failed,
            spool_dropped: self.spool_dropped - earlier.spool_dropped,
            spool_corrupt: self.spool_corrupt - earlier.spool_corrupt,
            probe_errors: self
                .probe_errors
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v - earlier.probe_errors.get(k).copied().unwrap_or(0),
                    )
                })
                .filter(|(_, v)| *v > 0)
                .collect(),
        }
    }
}

/// Records per behaviour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct PerBehaviour {
    /// exec records.
    pub exec: u64,
    /// connect records.
    pub connect: u64,
    /// write-execute records.
    pub wx: u64,
    /// cgroup move records.
    #[serde(rename = "move")]
    pub moves: u64,
}

impl From<&KernelLosses> for PerBehaviour {
    fn from(k: &KernelLosses) -> Self {
        Self {
            exec: k.exec,
            connect: k.connect,
            wx: k.wx,
            moves: k.moves,
        }
    }
}

/// Counts of lost records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields, rename = "losses")]
pub struct Losses {
    /// Records the kernel probes could not write because the ring buffer was full, per
    /// behaviour.
    pub ring_buffer: PerBehaviour,
    /// Not lost: identical violations (same cgroup, behaviour and rule) beyond 8 a second that
    /// the kernel held back, per behaviour. The next record of the same violation carries
    /// their number in `count`. Not part of `total`.
    pub held_back: PerBehaviour,
    /// Records dropped in the agent because its internal queue was full.
    pub reader_queue_full: u64,
    /// Records the agent could not decode.
    pub undecodable: u64,
    /// Finished events a sink's queue refused because it was full (a sink that does not keep
    /// up), summed over the sinks; each sink's own count is in the agent's log.
    pub sink_queue_full: u64,
    /// Finished events a sink gave up delivering (a receiver that refused them for good, or
    /// stayed unreachable past the sink's retries), summed over the sinks; each sink's count
    /// and the reason are in the agent's log.
    pub sink_failed: u64,
    /// Undelivered events a sink's disk spool dropped, oldest first, because it reached its
    /// `maxBytes` (a receiver down for longer than the spool holds), summed over the sinks.
    pub spool_dropped: u64,
    /// Damaged regions a sink's disk spool skipped when it read them back (a write torn by a
    /// crash or `kill -9`, a damaged disk); each held at least one event, and is counted as
    /// one. Summed over the sinks.
    pub spool_corrupt: u64,
    /// Records lost in all: `ringBuffer`, `readerQueueFull`, `undecodable`, `sinkQueueFull`,
    /// `sinkFailed`, `spoolDropped` and `spoolCorrupt` added up.
    pub total: u64,
    /// Failures of the kernel probes, by `<probe>/<reason>` (reason `read`: a value could not
    /// be read or resolved; `map`: a map refused an update or lacked an entry; `other`;
    /// `skipped`: runs of the program the kernel did not make, because another BPF program or
    /// a `bpf()` map call held that CPU, counted by kernels from 6.7), only those above zero. Not records lost, and not part of `total`: a probe that gave up may
    /// have missed an event, so each is worth a look (`vigil run --kernel-log` tells why).
    pub probe_errors: ProbeErrors,
}

impl From<&LossReport> for Losses {
    fn from(r: &LossReport) -> Self {
        Self {
            ring_buffer: (&r.kernel).into(),
            held_back: (&r.held_back).into(),
            reader_queue_full: r.reader_queue_full,
            undecodable: r.undecodable,
            sink_queue_full: r.sink_queue_full,
            sink_failed: r.sink_failed,
            spool_dropped: r.spool_dropped,
            spool_corrupt: r.spool_corrupt,
            total: r.total(),
            probe_errors: r.probe_errors.clone(),
        }
    }
}

/// dev.vigil.loss.v1: events were lost. Emitted whenever anything was lost since the previous
/// report (checked periodically and at exit), so that no loss is silent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields, rename = "lossData")]
pub struct LossData {
    /// Name of the node (or host) the agent runs on.
    #[schemars(length(min = 1))]
    pub node: String,
    /// Events lost since the previous loss event.
    pub lost: Losses,
    /// Events lost since the agent started.
    pub lost_since_start: Losses,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log's breakdown names every counter of the total, so its figures add up to it.
    #[test]
    fn the_breakdown_adds_up_to_the_total() {
        let report = LossReport {
            kernel: KernelLosses {
                exec: 1,
                connect: 2,
                wx: 3,
                moves: 4,
            },
            reader_queue_full: 20,
            undecodable: 30,
            sink_queue_full: 40,
            sink_failed: 50,
            spool_dropped: 60,
            spool_corrupt: 70,
            ..LossReport::default()
        };
        let text = report.breakdown();
        let sum: u64 = text
            .split_whitespace()
            .map(|kv| kv.split_once('=').unwrap().1.parse::<u64>().unwrap())
            .sum();
        assert_eq!(sum, report.total(), "{text}");
        assert!(
            text.starts_with("ring_buffer=10 reader_queue_full=20"),
            "{text}"
        );
    }
}
