//! Where finished events go. One file per sink; each sink sits behind its own bounded queue
//! and worker ([`FanOut`]), so a slow or stuck sink never holds up the pipeline or another
//! sink, and whatever a full queue refuses is counted.
#[cfg(test)]
mod fake_http;
pub mod fanout;
pub mod file;
pub mod http;
pub mod kube_events;
pub mod pretty;
pub mod slack;
pub mod splunk;
pub mod spool;
pub mod spooled;
pub mod stdout;
mod trust;

use std::sync::Arc;

use futures::future::BoxFuture;

pub use fanout::{FanOut, Filter, SinkStats, SinkView};

use crate::{
    cloudevents::VigilEvent,
    config::{SinkKind, SinkSpec},
};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink {sink}: writing: {source}")]
    Write {
        sink: String,
        source: std::io::Error,
    },
    #[error("sink {sink}: {reason}")]
    Kubernetes { sink: String, reason: String },
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
    #[error("sink {sink}: {source}")]
    Spool {
        sink: String,
        source: spool::SpoolError,
    },
    #[error("sink {sink}: the sink's sender task has stopped")]
    Stopped { sink: String },
    #[error("sink {sink}: {url} refused the request with HTTP {status} (not retried): {body:?}")]
    HttpRefused {
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
    HttpGaveUp {
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

impl SinkError {
    /// A refusal sending the same events again cannot change: the receiver refused them (a
    /// 4xx, a revoked webhook, a disabled token), an untrusted certificate, an event that
    /// cannot be encoded, a configuration that cannot work. Anything else may pass later.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Refused { .. }
            | Self::HttpRefused { .. }
            | Self::Tls { .. }
            | Self::Encode { .. }
            | Self::BadUrl { .. }
            | Self::BadToken { .. }
            | Self::HttpConfig { .. }
            | Self::CaFile { .. } => true,
            Self::Partly { first, .. } => first.is_permanent(),
            _ => false,
        }
    }

    /// How many of a batch of `batch` events this error leaves undelivered.
    pub fn failed_events(&self, batch: usize) -> usize {
        match self {
            Self::Partly { failed_events, .. } => *failed_events,
            _ => batch,
        }
    }
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
    /// and at shutdown). Nothing to do for a sink whose `deliver` returns once the receiver
    /// has its events.
    fn flush(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async { Ok(()) })
    }

    /// Returns once everything delivered so far has reached the receiver or been given up on
    /// and counted: what a spool waits for before it moves its cursor. `flush` for sinks whose
    /// `deliver` already waits for the receiver.
    fn settle(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        self.flush()
    }

    /// Whether a successful `deliver` only takes the events in, and the receiver acknowledges
    /// them later (a spool): then the sink measures their delivery latency itself.
    fn acknowledges_later(&self) -> bool {
        false
    }

    /// Counters the sink itself adds to (a spooled sink counts what its spool drops); the
    /// fan-out counts into these instead of its own.
    fn shared_stats(&self) -> Option<Arc<SinkStats>> {
        None
    }

    /// What the sink counts beyond what the fan-out sees (retries, refusals), for metrics.
    fn counters(&self) -> Option<Arc<dyn SinkCounters>> {
        None
    }
}

/// What a sink that talks to a receiver counts, for metrics.
pub trait SinkCounters: std::fmt::Debug + Send + Sync {
    /// Attempts repeated after a failure that may pass (a 429, a 5xx, a refused connection).
    fn retries(&self) -> u64;

    /// Events the receiver refused for good, by the receiver's reason.
    fn refusals(&self) -> Vec<(String, u64)> {
        Vec::new()
    }
}

/// `events` as CloudEvents in structured-mode JSON, one per line, appended to `buf` (a buffer
/// the sink keeps from batch to batch, so that a flood does not allocate one per batch).
pub fn json_lines(
    sink: &str,
    events: &[Arc<VigilEvent>],
    buf: &mut Vec<u8>,
) -> Result<(), SinkError> {
    buf.reserve(events.len() * 1024);
    for event in events {
        let encode = |source: Box<dyn std::error::Error + Send + Sync>| SinkError::Encode {
            sink: sink.to_string(),
            id: event.id.to_string(),
            source,
        };
        event.write_json(buf).map_err(|e| encode(Box::new(e)))?;
        buf.push(b'\n');
    }
    Ok(())
}

/// A batch buffer handed back for the next batch: emptied, and let go of when one batch made
/// it much larger than batches usually are.
pub fn reuse(mut buf: Vec<u8>) -> Vec<u8> {
    const KEEP: usize = 4 << 20;
    if buf.capacity() > KEEP {
        return Vec::new();
    }
    buf.clear();
    buf
}

/// How long a sink with a spool keeps retrying one batch before it gives up on it: the spool
/// holds what comes meanwhile, so an outage of hours loses nothing (without a spool, the
/// sink's own default applies, and its queue takes the overflow).
pub const SPOOLED_GIVE_UP: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// A sink and the filter of what it takes, as the fan-out runs them.
pub type Routed = (Box<dyn Sink>, Filter);

/// The sink a config entry describes, and its filter. `node` names the agent's node.
pub fn build(spec: &SinkSpec, node: &str) -> Result<Routed, SinkError> {
    let filter = Filter {
        min_severity: Some(spec.min_severity),
        types: spec.types.clone(),
    };
    let sink: Box<dyn Sink> = match &spec.kind {
        SinkKind::Stdout { format } => {
            use std::io::IsTerminal;
            let format = format.unwrap_or(if std::io::stdout().is_terminal() {
                stdout::Format::Pretty
            } else {
                stdout::Format::Json
            });
            Box::new(stdout::StdoutSink::new(
                Box::new(std::io::BufWriter::new(std::io::stdout())),
                format,
            ))
        }
        SinkKind::File {
            path,
            max_bytes,
            keep,
        } => Box::new(file::FileSink::new(
            spec.name.clone(),
            path.clone(),
            *max_bytes,
            *keep,
        )?),
        SinkKind::Http {
            url,
            mode,
            headers,
            ca_file,
        } => {
            let mut options = http::HttpOptions::new(url.clone(), *mode);
            options.headers = headers.clone();
            options.ca_file = ca_file.clone();
            Box::new(http::HttpSink::new(spec.name.clone(), options)?)
        }
        SinkKind::Slack {
            webhook_url,
            ca_file,
        } => {
            let mut options = slack::SlackOptions::new(webhook_url.clone());
            options.ca_file = ca_file.clone();
            if spec.spool.is_some() {
                options.retry.give_up_after = SPOOLED_GIVE_UP;
            }
            Box::new(slack::SlackSink::new(spec.name.clone(), options)?)
        }
        SinkKind::SplunkHec {
            url,
            token,
            index,
            sourcetype,
            ack,
            ca_file,
        } => {
            let mut options = splunk::SplunkOptions::new(
                url.as_str().trim_end_matches('/').to_string(),
                token.clone(),
                node.to_string(),
            );
            options.index = index.clone();
            options.sourcetype = sourcetype.clone();
            options.ack = *ack;
            options.ca_file = ca_file.clone();
            if spec.spool.is_some() {
                options.retry.give_up_after = SPOOLED_GIVE_UP;
            }
            Box::new(splunk::SplunkSink::new(spec.name.clone(), options)?)
        }
        SinkKind::KubernetesEvents => {
            let present = crate::pipeline::cluster::config_source(
                |name| std::env::var(name).ok(),
                |path| path.exists(),
            );
            if present.is_none() {
                return Err(SinkError::Kubernetes {
                    sink: spec.name.clone(),
                    reason: "kubernetes-events needs a Kubernetes configuration (in a pod, KUBECONFIG or ~/.kube/config) and none is there".into(),
                });
            }
            Box::new(kube_events::KubeEventsSink::new(
                spec.name.clone(),
                node.to_string(),
            ))
        }
    };
    let sink = match &spec.spool {
        Some(spool) => Box::new(spooled::SpooledSink::new(
            sink,
            spool.dir.clone(),
            spool.max_bytes,
        )?),
        None => sink,
    };
    Ok((sink, filter))
}
