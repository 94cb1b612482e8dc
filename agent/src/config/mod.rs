//! `vigil run --config FILE`: where events go. The YAML shape is fixed by the sinks issue and
//! documented in `docs/sinks.md`. Everything is checked before the agent starts: unknown keys
//! and types, URLs, CA files, secrets (read from the files and environment variables the
//! config names, never written inline and never shown in an error); every problem is reported
//! as `file: field.path: reason`, the same style as policy errors.
mod check;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

pub use check::parse;

use crate::cloudevents::{EventType, Severity};
pub use crate::secret::Secret;

/// One problem with a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {field}: {reason}", file.display())]
pub struct ConfigError {
    pub file: PathBuf,
    /// `sinks[2].url`; `(file)` for the file as a whole.
    pub field: String,
    pub reason: String,
}

/// A checked configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub sinks: Vec<SinkSpec>,
    /// Identical violations inside this window become one event (`aggregation.window`).
    pub aggregation_window: Option<Duration>,
}

/// One sink: what every sink takes, and its own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSpec {
    pub name: String,
    /// Events less severe than this are not sent to the sink.
    pub min_severity: Severity,
    /// Only these event types are sent (all when empty).
    pub types: Vec<EventType>,
    /// What the sink has not delivered is kept on disk here (sinks that send to a receiver).
    pub spool: Option<Spool>,
    pub kind: SinkKind,
}

impl SinkSpec {
    /// Whether an event of `ty` and `severity` goes to this sink.
    pub fn wants(&self, ty: EventType, severity: Severity) -> bool {
        severity >= self.min_severity && (self.types.is_empty() || self.types.contains(&ty))
    }
}

/// How events are put into requests (CloudEvents HTTP binding, section 3); in configuration
/// `structured`, `binary` or `batch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpMode {
    /// One request per event, the whole event as JSON in the body.
    Structured,
    /// One request per event, attributes as `ce-` headers and the data as the body.
    Binary,
    /// A JSON array of structured events per request.
    Batch,
}

/// How the stdout sink writes: `json`, one CloudEvent per line; `pretty`, a readable line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Json,
    Pretty,
}

/// A disk spool that keeps undelivered events across outages and restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spool {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkKind {
    Stdout {
        /// `None`: pretty on a terminal, JSON lines otherwise.
        format: Option<Format>,
    },
    File {
        path: PathBuf,
        max_bytes: u64,
        keep: u32,
    },
    Http {
        url: url::Url,
        mode: HttpMode,
        headers: Vec<(String, String)>,
        ca_file: Option<PathBuf>,
    },
    Slack {
        webhook_url: Secret,
        ca_file: Option<PathBuf>,
    },
    SplunkHec {
        url: url::Url,
        token: Secret,
        index: Option<String>,
        sourcetype: Option<String>,
        ack: bool,
        ca_file: Option<PathBuf>,
    },
    KubernetesEvents,
}

impl SinkKind {
    /// The `type` the config names it by.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Stdout { .. } => "stdout",
            Self::File { .. } => "file",
            Self::Http { .. } => "http",
            Self::Slack { .. } => "slack",
            Self::SplunkHec { .. } => "splunk-hec",
            Self::KubernetesEvents => "kubernetes-events",
        }
    }
}

/// Reads and checks `path`; every problem found, not only the first.
pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError {
            file: path.to_path_buf(),
            field: "(file)".into(),
            reason: format!("cannot be read: {e}"),
        }]
    })?;
    parse(&text, path, &|name| std::env::var(name).ok())
}
