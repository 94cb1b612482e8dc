//! Logging: human-readable lines on stderr (stdout belongs to events); the state file.
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

pub fn init_logging() -> Result<(), BadLogFilter> {
    let filter = log_filter(std::env::var("VIGIL_LOG").ok().as_deref())?;
    // Colours only for a person at a terminal; logs read by tools stay plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
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
}
