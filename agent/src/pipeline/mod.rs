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

/// What every agent command takes.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub format: Format,
    /// Where cgroup v2 is mounted; `None`: found in /proc/self/mountinfo.
    pub cgroup_root: Option<PathBuf>,
    pub node: String,
    pub ring_buffer_bytes: Option<u32>,
}

impl AgentOptions {
    pub(crate) fn root(&self) -> Result<PathBuf, PipelineError> {
        match &self.cgroup_root {
            Some(root) => Ok(root.clone()),
            None => Ok(cgroup::detect_root()?),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TraceOptions {
    pub agent: AgentOptions,
    /// Limit to this cgroup (relative to the cgroup v2 root) and its descendants.
    pub cgroup: Option<String>,
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

/// What `vigil trace` and `vigil run` share: the reader task and its queue, decoding, loss
/// accounting, the process and cgroup caches, and the sink.
pub(crate) struct Stages<W: Write> {
    probes: Probes,
    rx: mpsc::Receiver<Vec<u8>>,
    reader: tokio::task::JoinHandle<Result<(), ReaderError>>,
    losses: Losses,
    pub(crate) sink: StdoutSink<W>,
    pub(crate) processes: ProcessCache,
    pub(crate) cgroups: CgroupPaths,
    pub(crate) emitted: u64,
}

impl<W: Write> Stages<W> {
    /// Takes the ring buffer and loss counters from `probes` and starts the reader.
    pub(crate) fn start(
        mut probes: Probes,
        root: PathBuf,
        format: Format,
        out: W,
        stop: watch::Receiver<bool>,
    ) -> Result<Self, PipelineError> {
        let ring = probes.take_ring_buffer()?;
        let stats = Arc::new(ReaderStats::default());
        let losses = Losses {
            kernel: probes.take_loss_counters()?,
            reader: stats.clone(),
            undecodable: 0,
            reported: LossReport::default(),
        };
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let reader = tokio::spawn(reader::run(ring, tx, stats, stop));
        Ok(Self {
            probes,
            rx,
            reader,
            losses,
            sink: StdoutSink::new(out, format),
            processes: ProcessCache::default(),
            cgroups: CgroupPaths::new(root),
            emitted: 0,
        })
    }

    /// The next decoded event; `None` once the reader has stopped and the queue is drained.
    /// Undecodable records are counted as losses.
    pub(crate) async fn next(&mut self) -> Option<event::Event> {
        loop {
            let record = self.rx.recv().await?;
            match event::decode(&record) {
                Ok(ev) => return Some(ev),
                Err(err) => {
                    self.losses.undecodable += 1;
                    tracing::debug!(%err, "undecodable record");
                }
            }
        }
    }

    pub(crate) fn emit(&mut self, event: &::cloudevents::Event) -> Result<(), PipelineError> {
        self.sink.emit(event)?;
        self.emitted += 1;
        Ok(())
    }

    /// Flushes the sink when nothing else is waiting, so output is live but batched.
    pub(crate) fn flush_if_idle(&mut self) -> Result<(), PipelineError> {
        if self.rx.is_empty() {
            self.sink.flush()?;
        }
        Ok(())
    }

    pub(crate) fn report_losses(&mut self, node: &str) -> Result<(), PipelineError> {
        self.losses.report(node, &mut self.sink)
    }

    /// Waits for the reader, reports the last losses, flushes and detaches the probes.
    pub(crate) async fn finish(mut self, node: &str) -> Result<TraceSummary, PipelineError> {
        self.reader.await??;
        self.losses.report(node, &mut self.sink)?;
        self.sink.flush()?;
        drop(self.probes);
        Ok(TraceSummary {
            emitted: self.emitted,
            losses: self.losses.now_or_reported(),
        })
    }
}

/// Runs `vigil trace` until `stop` turns true, then drains, reports losses and returns.
pub async fn trace<W: Write>(
    options: &TraceOptions,
    out: W,
    stop: watch::Receiver<bool>,
) -> Result<TraceSummary, PipelineError> {
    let common = &options.agent;
    let root = common.root()?;
    let filter = options
        .cgroup
        .as_deref()
        .map(|path| cgroup::filter_for(&root, path))
        .transpose()?;
    let probes = Probes::load(&ProbeOptions {
        mode: crate::ebpf::Mode::Trace,
        cgroup: filter,
        ring_buffer_bytes: common.ring_buffer_bytes,
        exclude_pid: std::process::id(),
    })?;
    let mut stages = Stages::start(probes, root.clone(), common.format, out, stop)?;
    tracing::info!(
        probes = crate::ebpf::PROGRAMS.len(),
        cgroup = options.cgroup.as_deref().unwrap_or("/"),
        cgroup_root = %root.display(),
        "vigil is tracing"
    );
    let mut ticker = tokio::time::interval(LOSS_REPORT_INTERVAL);
    loop {
        tokio::select! {
            ev = stages.next() => {
                let Some(ev) = ev else { break };
                let lineage = stages.processes.lineage(&ev);
                let ctx = Context::host(&common.node, stages.cgroups.path(ev.header.cgroup_id));
                let ce = cloudevents::observed(&ev, &lineage, &ctx)?;
                stages.emit(&ce)?;
                stages.flush_if_idle()?;
            }
            _ = ticker.tick() => stages.report_losses(&common.node)?,
        }
    }
    stages.finish(&common.node).await
}

impl Losses {
    pub(crate) fn now_or_reported(&self) -> LossReport {
        self.now().unwrap_or(self.reported)
    }
}
