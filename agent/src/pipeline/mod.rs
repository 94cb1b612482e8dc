//! The stages between the ring buffer and the sinks: reader -> decode -> enrich -> sink.
pub mod cluster;
pub mod run;
use std::{
    io::Write,
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokio::sync::{mpsc, watch};

use crate::{
    cloudevents::{self, Context, LossReport},
    ebpf::{
        EbpfError, LossCounters, ProbeOptions, Probes,
        reader::{self, ReaderError, ReaderStats},
    },
    event,
    metadata::{
        cgroup::{self, CgroupError, CgroupPaths},
        process::ProcessCache,
    },
    sink::stdout::{Format, SinkError, StdoutSink},
};

/// Records waiting between the reader and the enrich stage.
pub(crate) const QUEUE_CAPACITY: usize = 65_536;
const LOSS_REPORT_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Reader(#[from] ReaderError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    CloudEvent(#[from] cloudevents::CloudEventError),
    #[error("reader task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("policies refused:\n{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Policies(Vec<crate::policy::FieldError>),
    #[error(transparent)]
    Enforce(#[from] crate::enforce::EnforceError),
    #[error(
        "nothing to enforce: pass --policy, or run where a kubeconfig or in-cluster configuration is found"
    )]
    NothingToEnforce,
}

#[derive(Debug, Clone)]
pub struct TraceOptions {
    pub format: Format,
    /// Limit to this cgroup (relative to the cgroup v2 root) and its descendants.
    pub cgroup: Option<String>,
    pub cgroup_root: Option<PathBuf>,
    pub node: String,
    pub ring_buffer_bytes: Option<u32>,
}

/// What a finished trace saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceSummary {
    pub emitted: u64,
    pub losses: LossReport,
}

pub(crate) struct Losses {
    pub(crate) kernel: LossCounters,
    pub(crate) reader: Arc<ReaderStats>,
    pub(crate) undecodable: u64,
    pub(crate) reported: LossReport,
}

impl Losses {
    fn now(&self) -> Result<LossReport, EbpfError> {
        Ok(LossReport {
            kernel: self.kernel.read()?,
            reader_queue_full: self.reader.dropped.load(Ordering::Relaxed),
            undecodable: self.undecodable,
        })
    }

    /// Emits a loss event when anything was lost since the last report.
    pub(crate) fn report<W: Write>(
        &mut self,
        node: &str,
        sink: &mut StdoutSink<W>,
    ) -> Result<(), PipelineError> {
        let now = self.now()?;
        let delta = now.since(&self.reported);
        if delta.total() > 0 {
            tracing::warn!(
                lost = delta.total(),
                since_start = now.total(),
                "events lost"
            );
            sink.emit(&cloudevents::loss(node, &delta, &now)?)?;
            sink.flush()?;
            self.reported = now;
        }
        Ok(())
    }
}

/// Runs `vigil trace` until `stop` turns true, then drains, reports losses and returns.
pub async fn trace<W: Write>(
    options: &TraceOptions,
    out: W,
    stop: watch::Receiver<bool>,
) -> Result<TraceSummary, PipelineError> {
    let root = match &options.cgroup_root {
        Some(root) => root.clone(),
        None => cgroup::detect_root()?,
    };
    let filter = options
        .cgroup
        .as_deref()
        .map(|path| cgroup::filter_for(&root, path))
        .transpose()?;
    let mut probes = Probes::load(&ProbeOptions {
        mode: crate::ebpf::Mode::Trace,
        cgroup: filter,
        ring_buffer_bytes: options.ring_buffer_bytes,
        exclude_pid: std::process::id(),
    })?;
    let ring = probes.take_ring_buffer()?;
    let stats = Arc::new(ReaderStats::default());
    let mut losses = Losses {
        kernel: probes.take_loss_counters()?,
        reader: stats.clone(),
        undecodable: 0,
        reported: LossReport::default(),
    };
    let (tx, mut rx) = mpsc::channel(QUEUE_CAPACITY);
    let reader = tokio::spawn(reader::run(ring, tx, stats, stop));
    tracing::info!(
        probes = crate::ebpf::PROGRAMS.len(),
        cgroup = options.cgroup.as_deref().unwrap_or("/"),
        cgroup_root = %root.display(),
        "vigil is tracing"
    );

    let mut sink = StdoutSink::new(out, options.format);
    let mut processes = ProcessCache::default();
    let mut cgroups = CgroupPaths::new(root);
    let mut ticker = tokio::time::interval(LOSS_REPORT_INTERVAL);
    let mut emitted = 0u64;
    loop {
        tokio::select! {
            record = rx.recv() => {
                let Some(record) = record else { break };
                match event::decode(&record) {
                    Ok(ev) => {
                        let lineage = processes.lineage(&ev);
                        let ctx = Context::host(&options.node, cgroups.path(ev.header.cgroup_id));
                        sink.emit(&cloudevents::observed(&ev, &lineage, &ctx)?)?;
                        emitted += 1;
                    }
                    Err(err) => {
                        losses.undecodable += 1;
                        tracing::debug!(%err, "undecodable record");
                    }
                }
                if rx.is_empty() {
                    sink.flush()?;
                }
            }
            _ = ticker.tick() => losses.report(&options.node, &mut sink)?,
        }
    }
    reader.await??;
    losses.report(&options.node, &mut sink)?;
    sink.flush()?;
    drop(probes);
    Ok(TraceSummary {
        emitted,
        losses: losses.now_or_reported(),
    })
}

impl Losses {
    pub(crate) fn now_or_reported(&self) -> LossReport {
        self.now().unwrap_or(self.reported)
    }
}
