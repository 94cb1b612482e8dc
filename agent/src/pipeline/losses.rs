//! Loss accounting: every counter of what was lost on the way (kernel ring buffer, reader
//! queue, decoding, sink queues), reported as a `dev.vigil.loss.v1` event whenever it grows.
use std::sync::atomic::Ordering;

use crate::{
    cloudevents::{self, LossReport},
    ebpf::{EbpfError, LossCounters},
    pipeline::intake::Intake,
    sink::FanOut,
};

pub(crate) struct Losses {
    pub(crate) kernel: LossCounters,
    pub(crate) reported: LossReport,
}

impl Losses {
    pub(crate) fn now(&self, intake: &Intake, out: &FanOut) -> Result<LossReport, EbpfError> {
        let (spool_dropped, spool_corrupt) = out.spool_lost();
        Ok(LossReport {
            kernel: self.kernel.read()?,
            held_back: self.kernel.held_back()?,
            reader_queue_full: intake.stats.dropped.load(Ordering::Relaxed),
            undecodable: intake.undecodable,
            sink_queue_full: out.queue_full(),
            sink_failed: out.failed(),
            spool_dropped,
            spool_corrupt,
            probe_errors: self.kernel.probe_errors()?,
        })
    }

    /// Sends a loss event when anything was lost since the last report; returns the
    /// counters as they are now.
    pub(crate) fn report(
        &mut self,
        node: &str,
        intake: &Intake,
        out: &FanOut,
    ) -> Result<LossReport, EbpfError> {
        let now = self.now(intake, out)?;
        let delta = now.since(&self.reported);
        if delta.any() {
            if delta.total() > 0 {
                tracing::warn!(
                    lost = delta.total(),
                    since_start = now.total(),
                    "events lost"
                );
            }
            if !delta.probe_errors.is_empty() {
                tracing::warn!(
                    failures = ?delta.probe_errors,
                    "kernel probes gave up on events (counted per probe and reason)"
                );
            }
            if delta.held_back.total() > 0 {
                tracing::warn!(
                    held_back = delta.held_back.total(),
                    "a flood of identical violations was held back in the kernel"
                );
            }
            out.send(cloudevents::loss(node, &delta, &now));
            self.reported = now.clone();
        }
        Ok(now)
    }
}
