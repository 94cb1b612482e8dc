//! `/metrics`: the agent's counters in the Prometheus text format (prometheus-client). Most
//! values already live elsewhere (the sinks' counters, the kernel's loss maps, the state
//! file); a collector reads them at each scrape instead of keeping a second copy. Labels
//! stay bounded: behaviour, verdict, action, sink, reason, probe; never a pod, process or
//! address. `docs/operations.md` lists every metric.
use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
    },
    registry::Registry,
};

use super::state::AgentState;
use crate::{
    cloudevents::LossReport,
    ebpf::KernelLosses,
    sink::{SinkStats, SinkView},
};

/// `vigil_events_total`'s labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// `exec`, `connect`, `wx`, `cgroup` or `loss`.
    pub behaviour: &'static str,
    pub verdict: &'static str,
    pub action: &'static str,
}

/// What the agent shares with `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Default)]
pub struct Telemetry {
    /// Finished events handed to the sinks.
    pub events: Family<EventLabels, Counter>,
    losses: Mutex<LossReport>,
    sinks: Mutex<Vec<SinkView>>,
    state: Mutex<AgentState>,
    /// When the event loop last went round (Unix seconds).
    heartbeat: AtomicU64,
    /// Programs attached, policies compiled, the cluster's caches synced.
    ready: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How long the event loop may stand still before `/healthz` says it is stuck.
pub const STUCK_AFTER_S: u64 = 30;

impl Telemetry {
    /// The event loop counts as alive from here: a probe of `/healthz` in the moment between
    /// the server's start and the loop's first round must not see a stuck agent.
    pub fn new() -> Arc<Self> {
        let telemetry = Self::default();
        telemetry.beat();
        Arc::new(telemetry)
    }

    /// The registry `/metrics` encodes.
    pub fn registry(self: &Arc<Self>) -> Registry {
        let mut registry = Registry::default();
        registry.register(
            "vigil_events",
            "Finished events handed to the sinks, by behaviour, verdict and action taken",
            self.events.clone(),
        );
        registry.register_collector(Box::new(Collected(self.clone())));
        registry
    }

    pub fn set_losses(&self, report: &LossReport) {
        *lock(&self.losses) = report.clone();
    }

    pub fn set_sinks(&self, sinks: Vec<SinkView>) {
        *lock(&self.sinks) = sinks;
    }

    pub fn set_state(&self, state: &AgentState) {
        *lock(&self.state) = state.clone();
    }

    pub fn beat(&self) {
        self.heartbeat.store(unix_now(), Ordering::Relaxed);
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
        self.beat();
    }

    /// Whether the event loop went round within [`STUCK_AFTER_S`].
    pub fn alive(&self) -> bool {
        unix_now().saturating_sub(self.heartbeat.load(Ordering::Relaxed)) <= STUCK_AFTER_S
    }

    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.alive()
    }
}

/// The fan-out's counters of each sink: name, help, field.
type SinkCounter = (&'static str, &'static str, fn(&SinkStats) -> &AtomicU64);

// A table reads best one row a line.
#[rustfmt::skip]
const SINK_COUNTERS: [SinkCounter; 6] = [
    ("vigil_sink_queued", "Events taken into the sink's queue", |s| &s.queued),
    ("vigil_sink_delivered", "Events delivered (spooled: in the spool)", |s| &s.delivered),
    ("vigil_sink_queue_full", "Events the sink's full queue refused", |s| &s.queue_full),
    ("vigil_sink_failed", "Events the sink gave up delivering", |s| &s.failed),
    ("vigil_sink_spool_dropped", "Undelivered events a full spool dropped", |s| &s.spool_dropped),
    ("vigil_sink_spool_corrupt", "Damaged spool regions skipped", |s| &s.spool_corrupt),
];

/// Reads the shared values at each scrape.
#[derive(Debug)]
struct Collected(Arc<Telemetry>);

/// One metric family: its descriptor, then each labelled value.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    values: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in values {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counters<'a>(
    label: &'static str,
    values: impl IntoIterator<Item = (&'a str, u64)> + 'a,
) -> impl Iterator<Item = ([(&'static str, &'a str); 1], ConstCounter<u64>)> + 'a {
    values
        .into_iter()
        .map(move |(v, n)| ([(label, v)], ConstCounter::new(n)))
}

fn per_behaviour(k: &KernelLosses) -> [(&'static str, u64); 4] {
    [
        ("exec", k.exec),
        ("connect", k.connect),
        ("wx", k.wx),
        ("cgroup", k.moves),
    ]
}

/// A metric without labels.
type Unlabelled = Vec<(String, String)>;

fn single(value: u64) -> [(Unlabelled, ConstCounter<u64>); 1] {
    [(Unlabelled::new(), ConstCounter::new(value))]
}

impl Collector for Collected {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let t = &self.0;
        let losses = lock(&t.losses).clone();
        let e = &mut encoder;
        let counter = MetricType::Counter;
        let gauge = MetricType::Gauge;
        family(
            e,
            "vigil_kernel_ring_buffer_lost",
            "Records the probes could not write because the ring buffer was full",
            counter,
            counters("behaviour", per_behaviour(&losses.kernel)),
        )?;
        family(
            e,
            "vigil_kernel_held_back",
            "Identical violations the kernel's flood throttle held back (not lost: carried in count)",
            counter,
            counters("behaviour", per_behaviour(&losses.held_back)),
        )?;
        family(
            e,
            "vigil_reader_queue_dropped",
            "Records dropped because the agent's reader queue was full",
            counter,
            single(losses.reader_queue_full),
        )?;
        family(
            e,
            "vigil_undecodable",
            "Records the agent could not decode",
            counter,
            single(losses.undecodable),
        )?;
        family(
            e,
            "vigil_probe_errors",
            "Kernel probe failures by probe and reason (read, map, other; skipped: runs the kernel did not make)",
            counter,
            losses.probe_errors.iter().filter_map(|(k, n)| {
                let (probe, reason) = k.split_once('/')?;
                Some((
                    [("probe", probe), ("reason", reason)],
                    ConstCounter::new(*n),
                ))
            }),
        )?;

        let sinks = lock(&t.sinks).clone();
        for (name, help, field) in SINK_COUNTERS {
            let values = sinks
                .iter()
                .map(|s| (s.name.as_str(), field(&s.stats).load(Ordering::Relaxed)));
            family(e, name, help, counter, counters("sink", values))?;
        }
        family(
            e,
            "vigil_sink_spool_bytes",
            "Bytes a sink's disk spool takes",
            gauge,
            sinks.iter().map(|s| {
                (
                    [("sink", s.name.as_str())],
                    ConstGauge::new(s.stats.spool_bytes.load(Ordering::Relaxed)),
                )
            }),
        )?;
        family(
            e,
            "vigil_sink_delivery_latency_seconds",
            "From an event's kernel timestamp to the receiver's acknowledgement of it (a spooled sink: of the spool's sender)",
            MetricType::Histogram,
            sinks
                .iter()
                .map(|s| ([("sink", s.name.as_str())], s.stats.latency.0.clone())),
        )?;
        family(
            e,
            "vigil_sink_retries",
            "Delivery attempts repeated after a failure that may pass",
            counter,
            counters(
                "sink",
                sinks
                    .iter()
                    .filter_map(|s| Some((s.name.as_str(), s.counters.as_ref()?.retries()))),
            ),
        )?;
        let refusals: Vec<(String, String, u64)> = sinks
            .iter()
            .filter_map(|s| Some((s, s.counters.as_ref()?)))
            .flat_map(|(s, c)| {
                c.refusals()
                    .into_iter()
                    .map(|(reason, n)| (s.name.clone(), reason, n))
            })
            .collect();
        family(
            e,
            "vigil_sink_refusals",
            "What a receiver refused for good, by its reason (Slack: messages; Splunk HEC: events)",
            counter,
            refusals.iter().map(|(sink, reason, n)| {
                (
                    [("sink", sink.as_str()), ("reason", reason.as_str())],
                    ConstCounter::new(*n),
                )
            }),
        )?;

        let state = lock(&t.state).clone();
        let gauges = [
            ("vigil_policies", "Policies in force", state.policies as u64),
            (
                "vigil_policy_sets",
                "Policy sets in force (the unions of the policies selecting a cgroup)",
                state.sets as u64,
            ),
            (
                "vigil_policy_bindings",
                "cgroups bound to a policy set",
                state.bound.len() as u64,
            ),
            (
                "vigil_policy_bindings_waiting",
                "Binding paths whose cgroup does not exist yet",
                state.waiting.len() as u64,
            ),
            (
                "vigil_policy_map_entries",
                "Entries in the kernel's policy maps",
                state.map_entries as u64,
            ),
            (
                "vigil_resident_memory_bytes",
                "The agent's resident memory (VmRSS)",
                resident_bytes().unwrap_or(0),
            ),
        ];
        family(
            e,
            "vigil_map_entries",
            "Entries in each kernel map policies compile into, as of the last policy change",
            gauge,
            state
                .maps
                .iter()
                .map(|m| ([("map", m.map)], ConstGauge::new(m.entries as u64))),
        )?;
        family(
            e,
            "vigil_map_capacity",
            "The most entries each of those maps holds (max_entries)",
            gauge,
            state
                .maps
                .iter()
                .map(|m| ([("map", m.map)], ConstGauge::new(u64::from(m.capacity)))),
        )?;
        let reflectors = crate::metadata::cluster::reflector_states();
        family(
            e,
            "vigil_reflector_synced",
            "1 once the resource was listed in full and its watch is not failing",
            gauge,
            reflectors
                .iter()
                .map(|(r, s)| ([("resource", *r)], ConstGauge::new(i64::from(s.synced)))),
        )?;
        family(
            e,
            "vigil_reflector_last_resync_timestamp_seconds",
            "When the resource was last listed in full (Unix seconds; 0: never)",
            gauge,
            reflectors
                .iter()
                .map(|(r, s)| ([("resource", *r)], ConstGauge::new(s.last_resync))),
        )?;
        family(
            e,
            "vigil_reflector_events",
            "Changes the resource's watch delivered",
            counter,
            reflectors
                .iter()
                .map(|(r, s)| ([("resource", *r)], ConstCounter::new(s.events))),
        )?;
        family(
            e,
            "vigil_reflector_failures",
            "Failed attempts of the resource's watch (the API server unreachable, a refused verb)",
            counter,
            reflectors
                .iter()
                .map(|(r, s)| ([("resource", *r)], ConstCounter::new(s.failures))),
        )?;
        for (name, help, value) in gauges {
            family(
                e,
                name,
                help,
                gauge,
                [(Unlabelled::new(), ConstGauge::new(value))],
            )?;
        }
        family(
            e,
            "vigil_policy_refusals",
            "Policy sets from files refused whole (the last good ones stay in force)",
            counter,
            single(state.refused),
        )?;
        family(
            e,
            "vigil_policy_map_errors",
            "Kernel policy map updates that failed",
            counter,
            single(state.map_errors),
        )?;
        family(
            e,
            "vigil_policy_applied",
            "Times a policy set was put in force",
            counter,
            single(state.applied),
        )?;
        family(
            e,
            "vigil_ready",
            "1 once programs are attached, policies compiled and caches synced",
            gauge,
            [(Unlabelled::new(), ConstGauge::new(i64::from(t.ready())))],
        )
    }
}

/// `VmRSS` of this process, in bytes.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The text exposition of `registry`.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail, and the collectors only fail on a writer's error.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_each_sink_and_escapes_what_a_label_cannot_hold() {
        let telemetry = Telemetry::new();
        let stats = Arc::new(SinkStats::default());
        stats.delivered.store(5, Ordering::Relaxed);
        stats.spool_bytes.store(4096, Ordering::Relaxed);
        telemetry.set_sinks(vec![SinkView {
            name: "siem \"eu\"\nwest".into(),
            stats,
            counters: None,
        }]);
        telemetry.set_losses(&LossReport {
            reader_queue_full: 2,
            probe_errors: [("sys_exit_open_mem/read".to_string(), 3)].into(),
            ..LossReport::default()
        });
        telemetry
            .events
            .get_or_create(&EventLabels {
                behaviour: "exec",
                verdict: "violation",
                action: "kill",
            })
            .inc();
        let text = encode(&telemetry.registry());
        for line in [
            "vigil_sink_delivered_total{sink=\"siem \\\"eu\\\"\\nwest\"} 5",
            "vigil_sink_spool_bytes{sink=\"siem \\\"eu\\\"\\nwest\"} 4096",
            "vigil_reader_queue_dropped_total 2",
            "vigil_probe_errors_total{probe=\"sys_exit_open_mem\",reason=\"read\"} 3",
            "vigil_events_total{behaviour=\"exec\",verdict=\"violation\",action=\"kill\"} 1",
            "vigil_ready 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn a_new_agent_is_alive_but_unready_and_a_loop_still_past_the_limit_is_stuck() {
        let telemetry = Telemetry::new();
        assert!(telemetry.alive());
        assert!(!telemetry.ready());
        telemetry.set_ready(true);
        assert!(telemetry.ready());
        let long_ago = unix_now() - STUCK_AFTER_S - 1;
        telemetry.heartbeat.store(long_ago, Ordering::Relaxed);
        assert!(!telemetry.alive());
        assert!(!telemetry.ready());
        telemetry.beat();
        assert!(telemetry.alive());
    }
}
