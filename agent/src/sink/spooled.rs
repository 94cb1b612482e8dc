//! A sink behind a disk spool (`spool:` in the configuration). The fan-out's worker only
//! appends events to the spool, so a receiver that is down holds back nothing but its own
//! deliveries, up to the spool's cap instead of the queue's; a sender task of its own reads
//! the spool from its cursor, hands the events to the sink, waits until the sink has
//! delivered them (`deliver`, then `flush`), and only then moves the cursor. Events are kept
//! as their structured-mode CloudEvent JSON and read back into the same typed events
//! (`VigilEvent::from_cloudevent`): what is sent after a restart is the event as it was
//! taken, with the same `id`.
use std::{
    path::PathBuf,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use ::cloudevents::Event as CloudEvent;
use futures::future::BoxFuture;
use tokio::sync::Notify;

use super::{
    Sink, SinkCounters, SinkError, SinkStats,
    spool::{Spool, SpoolError},
};
use crate::cloudevents::VigilEvent;

/// Events read from the spool for one delivery.
const READ_EVENTS: usize = 512;
const READ_BYTES: usize = 4 * 1024 * 1024;
/// How often an idle sender looks at the spool even without being told of new events.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// The pause before a batch the sink gave up on is sent again, doubling up to the most.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

pub struct SpooledSink {
    name: String,
    counters: Option<Arc<dyn SinkCounters>>,
    spool: Arc<Mutex<Spool>>,
    wake: Arc<Notify>,
    stats: Arc<SinkStats>,
    sender: tokio::task::JoinHandle<()>,
}

impl SpooledSink {
    /// Opens the spool in `dir` (taking over what an earlier run left) and starts the sender
    /// task: call it inside the Tokio runtime.
    pub fn new(inner: Box<dyn Sink>, dir: PathBuf, max_bytes: u64) -> Result<Self, SinkError> {
        let name = inner.name().to_string();
        let counters = inner.counters();
        // One set of counters: what the sink counts itself (Slack's give-ups) and the spool's.
        let stats = inner.shared_stats().unwrap_or_default();
        let (spool, recovered) =
            Spool::open(&dir, max_bytes, stats.clone()).map_err(|e| spool_error(&name, e))?;
        tracing::info!(
            sink = name,
            spool = %dir.display(),
            pending = recovered.pending,
            corrupt = recovered.corrupt,
            cursor_reset = recovered.cursor_reset,
            "spool open"
        );
        let spool = Arc::new(Mutex::new(spool));
        let wake = Arc::new(Notify::new());
        let sender = tokio::spawn(send_from_spool(
            inner,
            spool.clone(),
            wake.clone(),
            stats.clone(),
        ));
        Ok(Self {
            name,
            counters,
            spool,
            wake,
            stats,
            sender,
        })
    }
}

impl SpooledSink {
    /// Stops the sender and returns once the spool (and its directory's lock) is let go, so
    /// that it can be opened again in this process.
    pub async fn close(mut self) {
        self.sender.abort();
        let _ = (&mut self.sender).await;
        // A file operation the sender started runs to its end, holding the spool until then.
        while Arc::strong_count(&self.spool) > 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for SpooledSink {
    fn drop(&mut self) {
        // What the sender had in flight stays in the spool: the next run sends it again.
        self.sender.abort();
    }
}

fn spool_error(sink: &str, source: SpoolError) -> SinkError {
    SinkError::Spool {
        sink: sink.to_string(),
        source,
    }
}

/// Runs `f` on the spool off the async threads (it writes and syncs files).
async fn with_spool<T: Send + 'static>(
    spool: &Arc<Mutex<Spool>>,
    f: impl FnOnce(&mut Spool) -> Result<T, SpoolError> + Send + 'static,
) -> Result<T, SpoolError> {
    let spool = spool.clone();
    tokio::task::spawn_blocking(move || {
        let mut spool = spool
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut spool)
    })
    .await
    .unwrap_or_else(|join| Err(SpoolError::Task(join.to_string())))
}

async fn send_from_spool(
    mut inner: Box<dyn Sink>,
    spool: Arc<Mutex<Spool>>,
    wake: Arc<Notify>,
    stats: Arc<SinkStats>,
) {
    let name = inner.name().to_string();
    let mut retry = RETRY_FIRST;
    loop {
        let records = match with_spool(&spool, |s| s.read(READ_EVENTS, READ_BYTES)).await {
            Ok(records) => records,
            Err(err) => {
                tracing::error!(sink = name, %err, "reading the spool failed; trying again");
                tokio::time::sleep(IDLE_CHECK).await;
                continue;
            }
        };
        let Some(end) = records.last().map(|r| r.end) else {
            let _ = tokio::time::timeout(IDLE_CHECK, wake.notified()).await;
            continue;
        };
        let mut events = Vec::with_capacity(records.len());
        for record in &records {
            let read = serde_json::from_slice::<CloudEvent>(&record.bytes)
                .map_err(|e| e.to_string())
                .and_then(|ce| VigilEvent::from_cloudevent(&ce).map_err(|e| e.to_string()));
            match read {
                Ok(event) => events.push(Arc::new(event)),
                Err(err) => {
                    // Checksummed, so written so: not something a retry mends.
                    stats.spool_corrupt.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(sink = name, %err, "a spooled event does not read back; skipped and counted");
                }
            }
        }
        let delivered = match inner.deliver(&events).await {
            Ok(()) => inner.settle().await,
            Err(err) => Err(err),
        };
        match delivered {
            Ok(()) => {
                stats.acknowledged(&events);
                retry = RETRY_FIRST;
            }
            Err(err) if err.is_permanent() => {
                // Refused for good: sending it again cannot mend it.
                let failed = err.failed_events(events.len()) as u64;
                stats.failed.fetch_add(failed, Ordering::Relaxed);
                tracing::error!(sink = name, %err, events = failed, "spooled events refused for good");
                retry = RETRY_FIRST;
            }
            Err(err) => {
                // The sink gave up for now (a receiver down past its retries): the spool
                // keeps the batch, and it is sent again after a pause.
                tracing::warn!(sink = name, %err, retry_in = ?retry, "spooled events not delivered yet; kept");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
                continue;
            }
        }
        if let Err(err) = with_spool(&spool, move |s| s.commit(end)).await {
            tracing::error!(sink = name, %err, "moving the spool's cursor failed; the batch may be sent again");
        }
    }
}

impl Sink for SpooledSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver<'a>(
        &'a mut self,
        events: &'a [Arc<VigilEvent>],
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let mut records = Vec::with_capacity(events.len());
            for event in events {
                let encode = |source: Box<dyn std::error::Error + Send + Sync>| SinkError::Encode {
                    sink: self.name.clone(),
                    id: event.id.to_string(),
                    source,
                };
                records.push(event.to_json().map_err(|e| encode(Box::new(e)))?);
            }
            with_spool(&self.spool, move |s| s.append(&records))
                .await
                .map_err(|e| spool_error(&self.name, e))?;
            self.wake.notify_one();
            Ok(())
        })
    }

    // `flush` has nothing to do: every append is synced before `deliver` returns.

    fn acknowledges_later(&self) -> bool {
        true
    }

    fn shared_stats(&self) -> Option<Arc<SinkStats>> {
        Some(self.stats.clone())
    }

    fn counters(&self) -> Option<Arc<dyn super::SinkCounters>> {
        self.counters.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloudevents::{LossReport, loss};

    /// Keeps what it is given, and flushes only when told to.
    struct Recording {
        seen: Arc<Mutex<Vec<VigilEvent>>>,
        flushes: Arc<Notify>,
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
                let mut seen = self.seen.lock().expect("seen");
                seen.extend(events.iter().map(|e| (**e).clone()));
                Ok(())
            })
        }

        fn flush(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
            Box::pin(async move {
                self.flushes.notified().await;
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn any_sink_gets_the_events_as_they_were_and_the_cursor_waits_for_its_flush() {
        let dir = tempfile::tempdir().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let flushes = Arc::new(Notify::new());
        let inner = Recording {
            seen: seen.clone(),
            flushes: flushes.clone(),
        };
        let mut sink = SpooledSink::new(Box::new(inner), dir.path().into(), 1 << 20).unwrap();
        let sent: Vec<Arc<VigilEvent>> = (0..3)
            .map(|_| Arc::new(loss("n1", &LossReport::default(), &LossReport::default())))
            .collect();
        sink.deliver(&sent).await.unwrap();
        while seen.lock().unwrap().len() < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let got: Vec<VigilEvent> = seen.lock().unwrap().clone();
        let want: Vec<VigilEvent> = sent.iter().map(|e| (**e).clone()).collect();
        assert_eq!(got, want);
        // Not flushed yet: a restart now sends them again.
        sink.close().await;
        let (spool, recovered) =
            Spool::open(dir.path(), 1 << 20, Arc::new(SinkStats::default())).unwrap();
        assert_eq!(
            recovered.pending, 3,
            "at least once: unflushed is undelivered"
        );
        drop(spool);
        // Flushed: the cursor moves.
        let inner = Recording {
            seen: seen.clone(),
            flushes: flushes.clone(),
        };
        let sink = SpooledSink::new(Box::new(inner), dir.path().into(), 1 << 20).unwrap();
        while seen.lock().unwrap().len() < 6 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        flushes.notify_one();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let pending = {
                let spool = sink.spool.lock().unwrap();
                spool.pending_records().unwrap()
            };
            if pending == 0 || tokio::time::Instant::now() > deadline {
                assert_eq!(pending, 0, "the cursor moved past the flushed events");
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sink.close().await;
    }
}
