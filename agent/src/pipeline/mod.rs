//! The stages between the ring buffer and the sinks:
//! intake (reader, decode) -> verdict -> enrich (process, cgroup, pod) -> fan-out -> sinks,
//! with loss accounting over all of them. `docs/architecture.md` draws the path.
mod aggregate;
mod carry;
pub mod cluster;
pub mod content;
mod enrich;
mod held;
mod intake;
mod learning;
mod losses;
mod pins;
mod policy_files;
pub mod run;
mod seen_pods;
mod verdict;
use std::{path::PathBuf, time::Duration};

use tokio::sync::watch;

use crate::{
    cloudevents::{self, LossReport},
    ebpf::{EbpfError, ProbeOptions, Probes, reader::ReaderError},
    event::Action,
    metadata::cgroup::{self, CgroupError},
    pipeline::cluster::ClusterLink,
    policy::PolicyRef,
    sink::{FanOut, Routed, SinkError, fanout::SINK_QUEUE_CAPACITY},
    telemetry::{
        metrics::{EventLabels, Telemetry},
        server,
    },
};

/// Records waiting between the reader and the enrich stage.
pub(crate) const QUEUE_CAPACITY: usize = 65_536;
pub(crate) const LOSS_REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// How often events held for their pod's metadata are looked up again.
pub(crate) const HELD_RECHECK: Duration = Duration::from_millis(100);
/// How often closed aggregation windows are looked for (a summary is at most this late).
pub(crate) const WINDOW_CHECK: Duration = Duration::from_millis(250);

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
    #[error(transparent)]
    State(#[from] crate::telemetry::state::StateFileError),
    #[error("starting the flood throttle's sweep thread: {0}")]
    Sweep(std::io::Error),
    #[error(transparent)]
    Serve(#[from] crate::telemetry::server::ServeError),
}

/// What every agent command takes.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Where cgroup v2 is mounted; `None`: found in /proc/self/mountinfo.
    pub cgroup_root: Option<PathBuf>,
    pub node: String,
    pub ring_buffer_bytes: Option<u32>,
    /// Forward the probes' own log to the agent's log (`--kernel-log`).
    pub kernel_log: bool,
    /// Identical violations inside this window become one event (`aggregation.window`).
    pub aggregation: Option<Duration>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (`--metrics-addr`).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Pin enforcement here so that it survives the agent (`--pin-dir`, `vigil run` only).
    pub pin_dir: Option<PathBuf>,
}

impl AgentOptions {
    pub(crate) fn root(&self) -> Result<PathBuf, PipelineError> {
        match &self.cgroup_root {
            Some(root) => Ok(cgroup::resolve_root(root)?),
            None => Ok(cgroup::detect_root()?),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TraceOptions {
    pub agent: AgentOptions,
    /// Limit to this cgroup (relative to the cgroup v2 root) and its descendants.
    pub cgroup: Option<String>,
    /// Told `true` once the probes are attached and the stages run (`vigil learn` starts its
    /// command then, so that nothing it does goes unseen).
    pub ready: Option<watch::Sender<bool>>,
}

/// What a finished trace saw.
#[derive(Debug, Clone, Default)]
pub struct TraceSummary {
    pub emitted: u64,
    pub losses: LossReport,
}

/// A verdict on an event: `None` for an observed one, else the policy and what was done.
pub(crate) type Judgement = Option<(crate::cloudevents::shared::Shared<PolicyRef>, Action)>;
/// The `Learn` policies whose tables an event goes into (none outside a learning set).
pub(crate) type Learners = Vec<crate::learn::recorder::LearnKey>;

/// What `vigil trace` and `vigil run` share: the stages, wired together. Each stage does its
/// own job; this only owns them and passes events along.
pub(crate) struct Stages {
    probes: Probes,
    intake: intake::Intake,
    enrich: enrich::Enrich,
    aggregate: Option<aggregate::Aggregator>,
    carry: carry::Carry,
    stranded: Option<tokio::sync::mpsc::Receiver<carry::Stranded>>,
    losses: losses::Losses,
    out: FanOut,
    /// The tables of the `Learn` policies in force (`vigil run`).
    pub(crate) learn: crate::learn::recorder::Recorder,
    pub(crate) telemetry: std::sync::Arc<Telemetry>,
    /// The `--metrics-addr` server, stopped with the stages.
    _server: Option<server::Server>,
}

/// Hands a finished event to the aggregator (when there is one) and on to the sinks; a
/// violation that ended its burst is remembered under its throttle key, for a count the
/// kernel holds back after it.
fn forward<'a>(
    aggregate: &'a mut Option<aggregate::Aggregator>,
    carry: &'a mut carry::Carry,
    out: &'a FanOut,
    learn: &'a mut crate::learn::recorder::Recorder,
    telemetry: &'a Telemetry,
) -> impl FnMut(
    crate::cloudevents::VigilEvent,
    Option<agent_common::ThrottleKey>,
    &[crate::learn::recorder::LearnKey],
) + 'a {
    move |event, throttle, learners| {
        if !learners.is_empty() {
            learn.record(learners, &event);
            // An act allowed while learning is for the tables alone; a violation of another
            // policy of the set goes on to the sinks as well.
            if event.verdict == crate::cloudevents::VerdictName::Observed {
                return;
            }
        }
        let event = std::sync::Arc::new(event);
        // A count stranded before this record came through goes out right after it.
        let carried = throttle
            .and_then(|key| carry.remember(key, &event))
            .map(std::sync::Arc::new);
        for event in std::iter::once(event).chain(carried) {
            let now = std::time::Instant::now();
            let event = match aggregate.as_mut() {
                Some(agg) => agg.offer(event, now),
                None => Some(event),
            };
            if let Some(event) = event {
                count(telemetry, &event);
                out.send(event);
            }
        }
    }
}

/// `vigil_events_total`, for an event handed to the sinks.
fn count(telemetry: &Telemetry, event: &crate::cloudevents::VigilEvent) {
    telemetry
        .events
        .get_or_create(&EventLabels {
            behaviour: event.ty().short(),
            verdict: event.verdict.name(),
            action: event.action.name(),
        })
        .inc();
}

impl Stages {
    /// Takes the ring buffer and loss counters from `probes`, starts the reader and the
    /// sinks' workers.
    pub(crate) async fn start(
        mut probes: Probes,
        root: PathBuf,
        sinks: Vec<Routed>,
        options: &AgentOptions,
        telemetry: std::sync::Arc<Telemetry>,
        stop: watch::Receiver<bool>,
        mut synced: watch::Receiver<bool>,
    ) -> Result<Self, PipelineError> {
        let server = match options.metrics_addr {
            Some(addr) => Some(server::serve(addr, telemetry.clone()).await?),
            None => None,
        };
        if let Some(log) = probes.take_kernel_log() {
            tokio::spawn(log.forward(stop.clone()));
        }
        let handover = probes.take_handover();
        let mut stopping = stop.clone();
        let (intake, handover_tx) =
            intake::Intake::start(probes.take_ring_buffer()?, stop, handover.is_some());
        if let (Some(handover), Some(tx)) = (handover, handover_tx) {
            // Once ready: programs attached, policies compiled, caches synced. A stop before
            // that drops the queue's second sender, or the queue would never end.
            tokio::spawn(async move {
                let generation = handover.generation;
                tokio::select! {
                    done = synced.wait_for(|done| *done) => {
                        if done.is_err() {
                            return;
                        }
                    }
                    _ = stopping.wait_for(|stop| *stop) => {
                        tracing::warn!(
                            generation,
                            "stopped before the first lists were in: the previous agent's pinned programs were not taken over"
                        );
                        return;
                    }
                }
                match handover.complete(tx).await {
                    Ok(report) if report.generations.is_empty() => {
                        tracing::info!(generation, "enforcement pinned");
                    }
                    Ok(report) => tracing::info!(
                        generation,
                        previous = ?report.generations,
                        records = report.records,
                        unreadable = ?report.unreadable,
                        silenced_before = report.silenced,
                        "took over the enforcement pinned by the previous agent"
                    ),
                    Err(err) => tracing::error!(
                        generation,
                        %err,
                        "taking over from the previous agent failed: its programs stay attached beside this agent's"
                    ),
                }
            });
        }
        let stranded =
            carry::sweep_in_background(probes.take_throttle()?).map_err(PipelineError::Sweep)?;
        let losses = losses::Losses {
            kernel: probes.take_loss_counters()?,
            reported: LossReport::default(),
        };
        let out = FanOut::start(sinks, SINK_QUEUE_CAPACITY);
        telemetry.set_sinks(out.views());
        Ok(Self {
            probes,
            intake,
            enrich: enrich::Enrich::new(root),
            aggregate: options.aggregation.map(aggregate::Aggregator::new),
            carry: carry::Carry::default(),
            stranded: Some(stranded),
            losses,
            out,
            learn: crate::learn::recorder::Recorder::default(),
            telemetry,
            _server: server,
        })
    }

    pub(crate) async fn next(&mut self) -> Option<crate::event::Event> {
        self.intake.next().await
    }

    /// Finishes `event` and hands it to the sinks (or holds it for its pod's metadata).
    pub(crate) fn dispatch(
        &mut self,
        node: &str,
        event: crate::event::Event,
        judgement: Judgement,
        learn: Learners,
        link: Option<&ClusterLink>,
    ) {
        let mut out = forward(
            &mut self.aggregate,
            &mut self.carry,
            &self.out,
            &mut self.learn,
            &self.telemetry,
        );
        self.enrich
            .dispatch(node, event, judgement, learn, link, &mut out);
    }

    pub(crate) fn has_held(&self) -> bool {
        self.enrich.has_held()
    }

    pub(crate) fn release_held(&mut self, node: &str, link: Option<&ClusterLink>) {
        let mut out = forward(
            &mut self.aggregate,
            &mut self.carry,
            &self.out,
            &mut self.learn,
            &self.telemetry,
        );
        self.enrich.release_held(node, link, &mut out, false);
    }

    /// Sends the summaries of aggregation windows that have closed (all, with `now` `None`);
    /// called every [`WINDOW_CHECK`], it is also the loop's heartbeat for `/healthz`.
    pub(crate) fn close_windows(&mut self, now: Option<std::time::Instant>) {
        self.telemetry.beat();
        if let Some(agg) = self.aggregate.as_mut() {
            for summary in agg.due(now) {
                count(&self.telemetry, &summary);
                self.out.send(summary);
            }
        }
    }

    /// Counts the kernel held back in floods that stopped, as the sweep finds them; taken
    /// once, by the loop that hands them back to [`Self::carry_held_back`].
    pub(crate) fn take_stranded(&mut self) -> tokio::sync::mpsc::Receiver<carry::Stranded> {
        self.stranded
            .take()
            .unwrap_or_else(|| tokio::sync::mpsc::channel(1).1)
    }

    /// Sends the violations standing for `stranded` counts.
    pub(crate) fn carry_held_back(&mut self, stranded: carry::Stranded) {
        let carried = self.carry.carry(stranded);
        let mut out = forward(
            &mut self.aggregate,
            &mut self.carry,
            &self.out,
            &mut self.learn,
            &self.telemetry,
        );
        for event in carried {
            out(event, None, &[]);
        }
    }

    pub(crate) fn report_losses(&mut self, node: &str) -> Result<(), PipelineError> {
        let now = self.losses.report(node, &self.intake, &self.out)?;
        self.telemetry.set_losses(&now);
        Ok(())
    }

    /// Waits for the reader, sends what is still held, reports the last losses, lets the
    /// sinks deliver everything and detaches the probes.
    pub(crate) async fn finish(
        mut self,
        node: &str,
        link: Option<&ClusterLink>,
    ) -> Result<TraceSummary, PipelineError> {
        self.intake.stopped().await?;
        {
            let mut out = forward(
                &mut self.aggregate,
                &mut self.carry,
                &self.out,
                &mut self.learn,
                &self.telemetry,
            );
            self.enrich.release_held(node, link, &mut out, true);
        }
        self.telemetry.set_ready(false);
        self.close_windows(None);
        self.losses.report(node, &self.intake, &self.out)?;
        let mut losses = self
            .losses
            .now(&self.intake, &self.out)
            .unwrap_or_else(|_| self.losses.reported.clone());
        // Past the last loss event: the summary is where these are counted.
        losses.sink_failed += self.out.close().await;
        drop(self.probes);
        Ok(TraceSummary {
            emitted: self.enrich.emitted,
            losses,
        })
    }
}

/// Runs `vigil trace` until `stop` turns true, then drains, reports losses and returns.
pub async fn trace(
    options: &TraceOptions,
    sinks: Vec<Routed>,
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
        kernel_log: common.kernel_log,
        pin: None,
    })?;
    let attached = probes.attached;
    let mut stages = Stages::start(
        probes,
        root.clone(),
        sinks,
        common,
        Telemetry::new(),
        stop,
        watch::channel(true).1,
    )
    .await?;
    tracing::info!(
        probes = attached,
        cgroup = options.cgroup.as_deref().unwrap_or("/"),
        cgroup_root = %root.display(),
        "vigil is tracing"
    );
    // In a cluster, events name their pod; the reflectors are only read here.
    let link = ClusterLink::connect(&common.node).await?;
    stages.telemetry.set_ready(true);
    if let Some(ready) = &options.ready {
        let _ = ready.send(true);
    }
    let node = common.node.as_str();
    let mut ticker = tokio::time::interval(LOSS_REPORT_INTERVAL);
    let mut held_ticker = tokio::time::interval(HELD_RECHECK);
    let mut windows = tokio::time::interval(WINDOW_CHECK);
    loop {
        tokio::select! {
            ev = stages.next() => {
                let Some(ev) = ev else { break };
                stages.dispatch(node, ev, None, Vec::new(), link.as_ref());
            }
            _ = held_ticker.tick(), if stages.has_held() => stages.release_held(node, link.as_ref()),
            _ = ticker.tick() => stages.report_losses(node)?,
            _ = windows.tick() => stages.close_windows(Some(std::time::Instant::now())),
        }
    }
    stages.finish(node, link.as_ref()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cloudevents::Context,
        event::{Body, Event, test_violation},
        metadata::{
            cluster::{PodInfo, PodLookup},
            process::Lineage,
        },
    };

    /// An exec violation in pod `i` of a thousand: its own name, UID, labels and container.
    fn in_pod(i: usize) -> cloudevents::VigilEvent {
        let event = Event {
            header: test_violation(Action::Kill, "x"),
            body: Body::Exec(crate::event::Exec::plain(&format!("/tmp/x{i}"), Vec::new())),
        };
        let pod = PodLookup::found(&PodInfo {
            namespace: format!("ns-{}", i % 7),
            name: format!("pod-{i}"),
            uid: format!("uid-{i}"),
            labels: [("app".to_string(), format!("app-{i}"))].into(),
            service_account: None,
            owner: None,
            container_id: Some(format!("c{i}")),
            container_name: Some("app".into()),
            image: Some(format!("img:{i}")),
        });
        let policy = PolicyRef {
            kind: "RuntimePolicy".into(),
            name: "p".into(),
            namespace: Some("ns-0".into()),
            rule: "spec.exec.deny[0]".into(),
            text: "prefix /tmp/".into(),
        };
        let ctx = Context {
            node: "n1".into(),
            cgroup_path: None,
            pod: Some(&pod),
        };
        cloudevents::violation(
            &event,
            &Lineage::default(),
            &ctx,
            &crate::cloudevents::shared::Shared::new(policy),
            Action::Kill,
        )
    }

    #[test]
    fn a_thousand_pods_add_no_series() {
        let telemetry = Telemetry::new();
        count(&telemetry, &in_pod(0));
        let series = |text: &str| text.lines().filter(|l| !l.starts_with('#')).count();
        let one = series(&crate::telemetry::metrics::encode(&telemetry.registry()));
        for i in 1..1000 {
            count(&telemetry, &in_pod(i));
        }
        let text = crate::telemetry::metrics::encode(&telemetry.registry());
        assert_eq!(series(&text), one, "{text}");
        assert!(
            text.lines().any(|l| l
                == "vigil_events_total{behaviour=\"exec\",verdict=\"violation\",action=\"kill\"} 1000"),
            "{text}"
        );
        for needle in ["pod-", "uid-", "app-", "/tmp/x", "img:", "ns-"] {
            assert!(!text.contains(needle), "{needle} in a label:\n{text}");
        }
    }
}
