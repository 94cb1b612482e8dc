//! Where finished events go. One file per sink; each sink sits behind its own bounded queue
//! and worker ([`FanOut`]), so a slow or stuck sink never holds up the pipeline or another
//! sink, and whatever a full queue refuses is counted.
#[cfg(test)]
mod fake_http;
pub mod fanout;
pub mod pretty;
pub mod slack;
pub mod splunk;
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
    #[error("sink {sink}: building the HTTP client: {source}")]
    Client {
        sink: String,
        source: reqwest::Error,
    },
    #[error("sink {sink}: reading the CA bundle {path}: {reason}")]
    CaFile {
        sink: String,
        path: std::path::PathBuf,
        reason: String,
    },
    /// A refusal retrying cannot mend (a revoked webhook, a disabled token, a missing index).
    #[error("sink {sink}: {receiver} refused for good: HTTP {status}: {reason}")]
    Refused {
        sink: String,
        /// The receiver's URL, or a description when the URL is a secret (Slack's webhooks).
        receiver: String,
        status: u16,
        reason: String,
    },
    #[error("sink {sink}: {receiver} still failing after {attempts} attempts, given up: {last}")]
    GaveUp {
        sink: String,
        receiver: String,
        attempts: u32,
        last: String,
    },
    #[error("sink {sink}: URL {url}: {reason}")]
    BadUrl {
        sink: String,
        /// The URL, or a description when it is a secret (Slack's webhooks).
        url: String,
        reason: String,
    },
    #[error("sink {sink}: the token is not valid in an HTTP header")]
    BadToken { sink: String },
    #[error("sink {sink}: the sink's sender task has stopped")]
    Stopped { sink: String },
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
