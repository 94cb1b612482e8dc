//! The stages between the ring buffer and the sinks: reader -> decode -> enrich -> sink.
pub mod cluster;
mod held;
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
    enforce::PolicyRef,
    event,
    event::Action,
    metadata::cluster::PodLookup,
    metadata::{
        cgroup::{self, CgroupError, CgroupPaths},
        process::ProcessCache,
    },
    pipeline::cluster::ClusterLink,
    sink::stdout::{Format, SinkError, StdoutSink},
};

/// Records waiting between the reader and the enrich stage.
pub(crate) const QUEUE_CAPACITY: usize = 65_536;
pub(crate) const LOSS_REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// How often events held for their pod's metadata are looked up again.
pub(crate) const HELD_RECHECK: Duration = Duration::from_millis(100);

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
    #[error(transparent)]
    Cluster(#[from] cluster::BrokenClusterConfig),
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
            held_back: self.kernel.held_back()?,
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
        if delta.any() {
            if delta.total() > 0 {
                tracing::warn!(
                    lost = delta.total(),
                    since_start = now.total(),
                    "events lost"
                );
            }
            if delta.held_back.total() > 0 {
                tracing::warn!(
                    held_back = delta.held_back.total(),
                    "a flood of identical violations was held back in the kernel"
                );
            }
            sink.emit(&cloudevents::loss(node, &delta, &now)?)?;
            sink.flush()?;
            self.reported = now;
        }
        Ok(())
    }
}

/// How long an event from a pod the store has not seen yet is held for its metadata.
const METADATA_WAIT: Duration = Duration::from_secs(2);

/// A verdict on an event: `None` for an observed one, else the policy and what was done.
pub(crate) type Judgement = Option<(PolicyRef, Action)>;

/// An event waiting for its pod's metadata.
struct Held {
    event: event::Event,
    judgement: Judgement,
    cgroup_path: Option<String>,
    until: tokio::time::Instant,
}

/// What `vigil trace` and `vigil run` share: the reader task and its queue, decoding, loss
/// accounting, the process, cgroup and pod lookups, and the sink.
pub(crate) struct Stages<W: Write> {
    probes: Probes,
    rx: mpsc::Receiver<Vec<u8>>,
    reader: tokio::task::JoinHandle<Result<(), ReaderError>>,
    losses: Losses,
    pub(crate) sink: StdoutSink<W>,
    pub(crate) processes: ProcessCache,
    pub(crate) cgroups: CgroupPaths,
    pub(crate) emitted: u64,
    held: held::HeldQueue<Held>,
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
            held: held::HeldQueue::new(held::HELD_CAPACITY),
        })
    }

    /// Enriches and emits `event`, or holds it while its pod is not known yet.
    pub(crate) fn dispatch(
        &mut self,
        node: &str,
        event: event::Event,
        judgement: Judgement,
        link: Option<&ClusterLink>,
    ) -> Result<(), PipelineError> {
        let cgroup_path = self.cgroups.path(event.header.cgroup_id);
        let lookup = link.map(|l| l.lookup(cgroup_path.as_deref()));
        if matches!(lookup, Some(PodLookup::Unknown { .. })) {
            // A pod created a moment ago: its metadata is on the way.
            let until = tokio::time::Instant::now() + METADATA_WAIT;
            let waiting = Held {
                event,
                judgement,
                cgroup_path,
                until,
            };
            let Err(h) = self.held.hold(waiting) else {
                return Ok(());
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
            return self.send(node, &h.event, &h.judgement, h.cgroup_path, lookup.as_ref());
        }
        self.send(node, &event, &judgement, cgroup_path, lookup.as_ref())
    }

    fn send(
        &mut self,
        node: &str,
        event: &event::Event,
        judgement: &Judgement,
        cgroup_path: Option<String>,
        pod: Option<&PodLookup>,
    ) -> Result<(), PipelineError> {
        let lineage = self.processes.lineage(event);
        let ctx = Context {
            node,
            cgroup_path,
            pod,
        };
        let ce = match judgement {
            None => cloudevents::observed(event, &lineage, &ctx)?,
            Some((policy, action)) => {
                cloudevents::violation(event, &lineage, &ctx, policy, *action)?
            }
        };
        self.emit(&ce)
    }

    pub(crate) fn has_held(&self) -> bool {
        !self.held.is_empty()
    }

    /// Emits the held events whose pod is now known, or whose wait is over (flagged
    /// `metadataIncomplete`).
    pub(crate) fn release_held(
        &mut self,
        node: &str,
        link: Option<&ClusterLink>,
    ) -> Result<(), PipelineError> {
        let now = tokio::time::Instant::now();
        for h in self.held.take_all() {
            let lookup = link.map(|l| l.lookup(h.cgroup_path.as_deref()));
            let h = if matches!(lookup, Some(PodLookup::Unknown { .. })) && now < h.until {
                match self.held.hold(h) {
                    Ok(()) => continue,
                    Err(h) => h,
                }
            } else {
                h
            };
            self.send(
                node,
                &h.event,
                &h.judgement,
                h.cgroup_path.clone(),
                lookup.as_ref(),
            )?;
        }
        self.sink.flush()?;
        Ok(())
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

    /// Waits for the reader, emits what is still held, reports the last losses, flushes and
    /// detaches the probes.
    pub(crate) async fn finish(mut self, node: &str) -> Result<TraceSummary, PipelineError> {
        (&mut self.reader).await??;
        for h in self.held.take_all() {
            self.send(node, &h.event, &h.judgement, h.cgroup_path.clone(), None)?;
        }
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
        cgroup_root: Some(root.clone()),
    })?;
    let mut stages = Stages::start(probes, root.clone(), common.format, out, stop)?;
    tracing::info!(
        probes = crate::ebpf::PROGRAMS.len(),
        cgroup = options.cgroup.as_deref().unwrap_or("/"),
        cgroup_root = %root.display(),
        "vigil is tracing"
    );
    // In a cluster, events name their pod; the reflectors are only read here.
    let link = ClusterLink::connect(&common.node).await?;
    let node = common.node.as_str();
    let mut ticker = tokio::time::interval(LOSS_REPORT_INTERVAL);
    let mut held_ticker = tokio::time::interval(HELD_RECHECK);
    loop {
        tokio::select! {
            ev = stages.next() => {
                let Some(ev) = ev else { break };
                stages.dispatch(node, ev, None, link.as_ref())?;
                stages.flush_if_idle()?;
            }
            _ = held_ticker.tick(), if stages.has_held() => stages.release_held(node, link.as_ref())?,
            _ = ticker.tick() => stages.report_losses(node)?,
        }
    }
    stages.finish(node).await
}

impl Losses {
    pub(crate) fn now_or_reported(&self) -> LossReport {
        self.now().unwrap_or(self.reported)
    }
}
