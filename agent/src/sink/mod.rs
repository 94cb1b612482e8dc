//! Where finished events go. One file per sink; each sink sits behind its own bounded queue
//! and worker ([`FanOut`]), so a slow or stuck sink never holds up the pipeline or another
//! sink, and whatever a full queue refuses is counted.
pub mod fanout;
pub mod http;
pub mod pretty;
pub mod stdout;

use std::sync::Arc;

use futures::future::BoxFuture;

pub use fanout::{FanOut, SinkStats};

use crate::cloudevents::VigilEvent;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink {sink}: writing: {source}")]
    Write {
        sink: String,
        source: std::io::Error,
    },
    #[error("sink {sink}: encoding event {id}: {source}")]
    Encode {
        sink: String,
        id: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("sink {sink} ({url}): {reason}")]
    HttpConfig {
        sink: String,
        url: String,
        reason: String,
    },
    #[error("sink {sink}: CA bundle {}: {reason}", path.display())]
    CaFile {
        sink: String,
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("sink {sink}: {url} refused the request with HTTP {status} (not retried): {body:?}")]
    Refused {
        sink: String,
        url: String,
        status: u16,
        /// The start of the response body.
        body: String,
    },
    #[error("sink {sink}: TLS with {url} failed (not retried): {reason}")]
    Tls {
        sink: String,
        url: String,
        reason: String,
    },
    #[error("sink {sink}: gave up on {url} after {attempts} attempts in {elapsed:.1?}: {last}")]
    GaveUp {
        sink: String,
        url: String,
        attempts: u32,
        elapsed: std::time::Duration,
        /// Why the last attempt failed.
        last: String,
    },
    #[error(
        "sink {sink}: {failed_events} of {total_events} events in {failed_requests} requests not \
         delivered to {url}; the first: {first}"
    )]
    Partly {
        sink: String,
        url: String,
        failed_events: usize,
        total_events: usize,
        failed_requests: usize,
        first: Box<SinkError>,
    },
}

/// A destination for events. The fan-out calls it from the sink's own task with batches in
/// the order the pipeline finished them.
pub trait Sink: Send + 'static {
    /// The name in logs, metrics and errors.
    fn name(&self) -> &str;

    /// Delivers `events`, waiting as long as delivery takes. An error is logged and counted
    /// by the fan-out, which goes on with the next batch.
    fn deliver<'a>(
        &'a mut self,
        events: &'a [Arc<VigilEvent>],
    ) -> BoxFuture<'a, Result<(), SinkError>>;

    /// Makes everything delivered so far durable or visible (called when the queue is idle
    /// and at shutdown).
    fn flush(&mut self) -> BoxFuture<'_, Result<(), SinkError>>;
}
