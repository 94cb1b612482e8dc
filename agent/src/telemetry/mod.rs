//! Logging: readable lines or JSON objects on stderr (stdout belongs to events); the state
//! file; `/metrics`, `/healthz` and `/readyz`.
pub mod metrics;
pub mod server;
pub mod state;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The Kubernetes client logs every failed retry itself; the agent reports a watch failing
/// once per outage (and its recovery), so these stay quiet unless asked for by name.
const QUIET: &str = "kube_client=off,kube_runtime=off,tower=off,hyper_util=off,rustls=off";

#[derive(Debug, thiserror::Error)]
#[error(
    "VIGIL_LOG={value:?} is not a log filter ({reason}); use a level (error, warn, info, debug, trace) or directives such as `info,vigil=debug`"
)]
pub struct BadLogFilter {
    pub value: String,
    pub reason: String,
}

/// The filter `VIGIL_LOG` asks for (`info` when unset), or why it is refused: a typo must not
/// quietly turn into another level.
pub fn log_filter(wanted: Option<&str>) -> Result<EnvFilter, BadLogFilter> {
    let wanted = wanted.unwrap_or("info");
    // tracing-subscriber's directive parser panics on some non-ASCII input (found by the
    // fuzz test: "\tª="), and a panic at start-up would hide the reason; targets, levels and
    // field names are ASCII anyway.
    if let Some(c) = wanted.chars().find(|c| !c.is_ascii()) {
        return Err(BadLogFilter {
            value: wanted.to_string(),
            reason: format!("{c:?} is not ASCII"),
        });
    }
    let directives = if wanted.contains("kube") {
        wanted.to_string()
    } else {
        format!("{wanted},{QUIET}")
    };
    EnvFilter::builder()
        .with_regex(false)
        .parse(&directives)
        .map_err(|e| BadLogFilter {
            value: wanted.to_string(),
            reason: e.to_string(),
        })
}

/// How log lines are written on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per record (coloured only at a terminal).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `message` and the record's fields at
    /// the top level, for log pipelines that index fields.
    Json,
}

/// The subscriber for `format`, writing to `writer`.
fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false);
    match format {
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .finish(),
        ),
    }
}

pub fn init_logging(format: LogFormat) -> Result<(), BadLogFilter> {
    let filter = log_filter(std::env::var("VIGIL_LOG").ok().as_deref())?;
    // Colours only for a person at a terminal; logs read by tools stay plain text.
    let ansi = std::io::stderr().is_terminal();
    // Only fails when a subscriber is set already, which nothing before this does.
    let _ =
        tracing::subscriber::set_global_default(subscriber(format, filter, std::io::stderr, ansi));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_filter_that_does_not_parse_is_refused_by_name() {
        assert!(log_filter(None).is_ok());
        assert!(log_filter(Some("debug")).is_ok());
        assert!(log_filter(Some("info,vigil=trace")).is_ok());
        let err = log_filter(Some("verbose=loud=yes")).unwrap_err();
        assert!(
            err.to_string().contains("VIGIL_LOG=\"verbose=loud=yes\""),
            "{err}"
        );
        let err = log_filter(Some("\tª=")).unwrap_err();
        assert!(err.to_string().contains("'ª' is not ASCII"), "{err}");
    }

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("captured").extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_logs_are_one_object_a_line_with_the_fields_at_the_top() {
        let out = Captured::default();
        let writer = {
            let out = out.clone();
            move || out.clone()
        };
        let filter = log_filter(Some("info")).expect("filter");
        let sub = subscriber(LogFormat::Json, filter, writer, false);
        tracing::subscriber::with_default(sub, || {
            tracing::info!(policies = 3, sink = "siem \"eu\"", "policies in force");
            tracing::debug!("filtered out");
            tracing::warn!(reason = "line\nbreak", "second");
        });
        let text = String::from_utf8(out.0.lock().expect("captured").clone()).expect("utf-8");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[0]["message"], "policies in force");
        assert_eq!(lines[0]["policies"], 3);
        assert_eq!(lines[0]["sink"], "siem \"eu\"");
        assert!(lines[0]["timestamp"].is_string(), "{}", lines[0]);
        assert_eq!(lines[1]["level"], "WARN");
        assert_eq!(lines[1]["reason"], "line\nbreak");
    }
}
