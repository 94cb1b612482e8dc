//! Logging: human-readable lines on stderr (stdout belongs to events).
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The Kubernetes client logs every failed retry itself; the agent reports a watch failing
/// once per outage (and its recovery), so these stay quiet unless asked for by name.
const QUIET: &str = "kube_client=off,kube_runtime=off,tower=off,hyper_util=off,rustls=off";

pub fn init_logging() {
    let wanted = std::env::var("VIGIL_LOG").unwrap_or_else(|_| "info".into());
    let directives = if wanted.contains("kube") {
        wanted
    } else {
        format!("{wanted},{QUIET}")
    };
    let filter =
        EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new(format!("info,{QUIET}")));
    // Colours only for a person at a terminal; logs read by tools stay plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
