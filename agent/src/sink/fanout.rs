//! The fan-out: one bounded queue and one worker task per sink. `send` never waits: a full
//! queue refuses the event, and the refusal is counted per sink and reported as a loss.
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use tokio::sync::mpsc;

use super::{Sink, SinkCounters};
use crate::cloudevents::VigilEvent;

/// Events one sink may have waiting.
pub const SINK_QUEUE_CAPACITY: usize = 65_536;
/// Events handed to a sink in one call.
const BATCH: usize = 512;

/// How long closing waits for a sink to deliver what it still has.
pub const CLOSE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// What one sink's queue and worker have done since start.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Events taken into the sink's queue.
    pub queued: AtomicU64,
    pub delivered: AtomicU64,
    /// Events refused because the sink's queue was full.
    pub queue_full: AtomicU64,
    /// Events in batches the sink failed to deliver.
    pub failed: AtomicU64,
    /// Undelivered events a full disk spool dropped (its oldest).
    pub spool_dropped: AtomicU64,
    /// Damaged regions of a disk spool skipped (a write torn by a crash is one); each held at
    /// least one event.
    pub spool_corrupt: AtomicU64,
    /// Bytes a disk spool's segments take now.
    pub spool_bytes: AtomicU64,
    /// Seconds from each delivered event's kernel timestamp to its acknowledged delivery.
    pub latency: DeliveryLatency,
}

/// A histogram of delivery latencies: 1 ms to about 65 s, doubling.
#[derive(Debug, Clone)]
pub struct DeliveryLatency(pub prometheus_client::metrics::histogram::Histogram);

impl Default for DeliveryLatency {
    fn default() -> Self {
        Self(prometheus_client::metrics::histogram::Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 17),
        ))
    }
}

impl SinkStats {
    /// Counts `events` as acknowledged by the receiver now.
    pub fn acknowledged(&self, events: &[Arc<VigilEvent>]) {
        let now = chrono::Utc::now();
        for event in events {
            let took = (now - event.time).num_microseconds().unwrap_or(i64::MAX);
            // A clock stepped back makes a negative age: it counts as immediate.
            self.latency.0.observe(took.max(0) as f64 / 1e6);
        }
    }
}

/// One sink as metrics see it.
#[derive(Debug, Clone)]
pub struct SinkView {
    pub name: String,
    pub stats: Arc<SinkStats>,
    pub counters: Option<Arc<dyn SinkCounters>>,
}

/// Which events a sink takes (the config's `minSeverity` and `types`).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub min_severity: Option<crate::cloudevents::Severity>,
    /// Empty: every type.
    pub types: Vec<crate::cloudevents::EventType>,
}

impl Filter {
    pub fn wants(&self, event: &VigilEvent) -> bool {
        self.min_severity.is_none_or(|m| event.severity >= m)
            && (self.types.is_empty() || self.types.contains(&event.ty()))
    }
}

struct Queue {
    name: String,
    counters: Option<Arc<dyn SinkCounters>>,
    filter: Filter,
    tx: mpsc::Sender<Arc<VigilEvent>>,
    stats: Arc<SinkStats>,
    worker: tokio::task::JoinHandle<()>,
}

pub struct FanOut {
    queues: Vec<Queue>,
}

impl FanOut {
    /// Starts one worker per sink, each with a queue of `capacity` events and the filter of
    /// what it takes.
    pub fn start(sinks: Vec<(Box<dyn Sink>, Filter)>, capacity: usize) -> Self {
        let queues = sinks
            .into_iter()
            .map(|(sink, filter)| {
                let (tx, rx) = mpsc::channel(capacity);
                let stats = sink.shared_stats().unwrap_or_default();
                Queue {
                    name: sink.name().to_string(),
                    counters: sink.counters(),
                    filter,
                    tx,
                    stats: stats.clone(),
                    worker: tokio::spawn(work(sink, rx, stats)),
                }
            })
            .collect();
        Self { queues }
    }

    /// Hands `event` to every sink without waiting; the sinks share the one allocation.
    pub fn send(&self, event: impl Into<Arc<VigilEvent>>) {
        let event = event.into();
        for q in self.queues.iter().filter(|q| q.filter.wants(&event)) {
            if q.tx.try_send(event.clone()).is_ok() {
                q.stats.queued.fetch_add(1, Ordering::Relaxed);
            } else {
                let refused = q.stats.queue_full.fetch_add(1, Ordering::Relaxed) + 1;
                if refused == 1 || refused.is_multiple_of(1000) {
                    tracing::warn!(
                        sink = q.name,
                        refused,
                        "sink queue full: events for this sink are dropped and counted"
                    );
                }
            }
        }
    }

    /// Events refused by full queues, over all sinks, since start.
    pub fn queue_full(&self) -> u64 {
        self.queues
            .iter()
            .map(|q| q.stats.queue_full.load(Ordering::Relaxed))
            .sum()
    }

    /// Events sinks failed to deliver (gave up on), over all sinks, since start.
    pub fn failed(&self) -> u64 {
        self.queues
            .iter()
            .map(|q| q.stats.failed.load(Ordering::Relaxed))
            .sum()
    }

    /// Events disk spools dropped or skipped as damaged, over all sinks, since start.
    pub fn spool_lost(&self) -> (u64, u64) {
        self.queues.iter().fold((0, 0), |(dropped, corrupt), q| {
            (
                dropped + q.stats.spool_dropped.load(Ordering::Relaxed),
                corrupt + q.stats.spool_corrupt.load(Ordering::Relaxed),
            )
        })
    }

    /// Each sink, for metrics.
    pub fn views(&self) -> Vec<SinkView> {
        self.queues
            .iter()
            .map(|q| SinkView {
                name: q.name.clone(),
                stats: q.stats.clone(),
                counters: q.counters.clone(),
            })
            .collect()
    }

    /// Each sink's name and counters.
    pub fn stats(&self) -> Vec<(String, Arc<SinkStats>)> {
        self.queues
            .iter()
            .map(|q| (q.name.clone(), q.stats.clone()))
            .collect()
    }

    /// Closes the queues and waits until every worker has delivered what it had and flushed,
    /// at most [`CLOSE_DEADLINE`] in all; what a sink could not deliver by then is dropped,
    /// said with the count, and counted as that sink's failures. Returns how many were
    /// dropped, over all sinks.
    pub async fn close(self) -> u64 {
        let deadline = tokio::time::Instant::now() + CLOSE_DEADLINE;
        let mut dropped = 0;
        for mut q in self.queues {
            drop(q.tx);
            let why = match tokio::time::timeout_at(deadline, &mut q.worker).await {
                Ok(Ok(())) => continue,
                Ok(Err(err)) => format!("the sink's worker failed: {err}"),
                Err(_) => {
                    q.worker.abort();
                    // Settled before counting: a worker between its last delivery and the
                    // abort would otherwise be counted as not having delivered. A write
                    // already handed to a blocking thread may still land after this.
                    let _ = (&mut q.worker).await;
                    "the sink did not deliver everything within the shutdown deadline".to_owned()
                }
            };
            let s = &q.stats;
            let done = s.delivered.load(Ordering::Relaxed) + s.failed.load(Ordering::Relaxed);
            let undelivered = s.queued.load(Ordering::Relaxed).saturating_sub(done);
            s.failed.fetch_add(undelivered, Ordering::Relaxed);
            dropped += undelivered;
            tracing::error!(sink = q.name, undelivered, "{why}; the rest is dropped");
        }
        dropped
    }
}

async fn work(
    mut sink: Box<dyn Sink>,
    mut rx: mpsc::Receiver<Arc<VigilEvent>>,
    stats: Arc<SinkStats>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        match sink.deliver(&batch).await {
            Ok(()) => {
                stats
                    .delivered
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                if !sink.acknowledges_later() {
                    stats.acknowledged(&batch);
                }
            }
            Err(err) => {
                let failed = err.failed_events(batch.len());
                stats
                    .delivered
                    .fetch_add(batch.len().saturating_sub(failed) as u64, Ordering::Relaxed);
                stats.failed.fetch_add(failed as u64, Ordering::Relaxed);
                tracing::error!(%err, events = failed, "sink failed to deliver");
            }
        }
        batch.clear();
        if rx.is_empty()
            && let Err(err) = sink.flush().await
        {
            tracing::error!(%err, "sink failed to flush");
        }
    }
    if let Err(err) = sink.flush().await {
        tracing::error!(%err, "sink failed to flush");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures::future::BoxFuture;

    use super::*;
    use crate::{
        cloudevents::{LossReport, loss},
        sink::SinkError,
    };

    /// Records what it is given; blocks until `gate` opens.
    struct Recording {
        seen: Arc<Mutex<Vec<String>>>,
        gate: Arc<tokio::sync::Semaphore>,
    }

    impl Sink for Recording {
        fn name(&self) -> &str {
            "recording"
        }

        fn deliver<'a>(
            &'a mut self,
            events: &'a [Arc<VigilEvent>],
        ) -> BoxFuture<'a, Result<(), SinkError>> {
            Box::pin(async move {
                let _open = self.gate.acquire().await.expect("gate");
                let mut seen = self.seen.lock().expect("seen");
                seen.extend(events.iter().map(|e| e.id.to_string()));
                Ok(())
            })
        }
    }

    fn event() -> VigilEvent {
        loss("n1", &LossReport::default(), &LossReport::default())
    }

    #[tokio::test(start_paused = true)]
    async fn what_a_stuck_sink_still_holds_at_the_close_deadline_is_counted_as_failed() {
        let stuck_gate = Arc::new(tokio::sync::Semaphore::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let fan = FanOut::start(
            vec![(
                Box::new(Recording {
                    seen: seen.clone(),
                    gate: stuck_gate,
                }) as Box<dyn Sink>,
                Filter::default(),
            )],
            16,
        );
        for _ in 0..7 {
            fan.send(event());
        }
        let stats = fan.stats();
        let dropped = fan.close().await;
        assert_eq!(dropped, 7);
        assert_eq!(stats[0].1.failed.load(Ordering::Relaxed), 7);
        assert!(seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_stuck_sink_neither_blocks_the_sender_nor_another_sink_and_refusals_are_counted() {
        let stuck_gate = Arc::new(tokio::sync::Semaphore::new(0));
        let open_gate = Arc::new(tokio::sync::Semaphore::new(1000));
        let stuck_seen = Arc::new(Mutex::new(Vec::new()));
        let open_seen = Arc::new(Mutex::new(Vec::new()));
        let fan = FanOut::start(
            vec![
                (
                    Box::new(Recording {
                        seen: stuck_seen.clone(),
                        gate: stuck_gate.clone(),
                    }) as Box<dyn Sink>,
                    Filter::default(),
                ),
                (
                    Box::new(Recording {
                        seen: open_seen.clone(),
                        gate: open_gate,
                    }),
                    Filter::default(),
                ),
            ],
            4,
        );
        let sent: Vec<VigilEvent> = (0..20).map(|_| event()).collect();
        let ids: Vec<String> = sent.iter().map(|e| e.id.to_string()).collect();
        for (i, e) in sent.into_iter().enumerate() {
            fan.send(e);
            if i % 2 == 1 {
                // Let the open sink's worker drain between sends.
                tokio::task::yield_now().await;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        let stats = fan.stats();
        // The stuck sink holds one batch in delivery and four events in its queue at most.
        let stuck_refused = stats[0].1.queue_full.load(Ordering::Relaxed);
        assert!(
            stuck_refused >= 10,
            "refused by the stuck sink: {stuck_refused}"
        );
        stuck_gate.add_permits(1000);
        let refused_total = fan.queue_full();
        fan.close().await;
        let open = open_seen.lock().unwrap().clone();
        let stuck = stuck_seen.lock().unwrap().clone();
        assert_eq!(open, ids, "the open sink got every event, in order");
        assert_eq!(
            stuck.len() as u64 + stuck_refused,
            20,
            "the stuck sink's events were delivered or counted: {stuck:?}"
        );
        assert_eq!(refused_total, stuck_refused);
        // In order, with the refused ones missing.
        let positions: Vec<usize> = stuck
            .iter()
            .map(|id| ids.iter().position(|i| i == id).expect("a sent id"))
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    }
}
