//! `vigil learn`: the allowlist written from what a workload actually does.
//!
//! The events of the watched workload fill a bounded [`table::LearnTable`]; the table is
//! written as a policy for review ([`write`]), or compared with a policy in force as a patch
//! that allows what it would refuse ([`diff`]). Learning on a host is [`host`].
pub mod cluster;
pub mod diff;
pub mod host;
pub mod observe;
pub mod recorder;
pub mod report;
pub mod table;
pub mod write;

use std::{path::PathBuf, time::Duration};

#[derive(Debug, thiserror::Error)]
pub enum LearnError {
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::PipelineError),
    #[error("learn: cgroup {}: {reason}", path.display())]
    Cgroup { path: PathBuf, reason: String },
    #[error("learn: starting {program}: {reason}")]
    Spawn { program: String, reason: String },
    #[error("learn: table file {}: {reason}", path.display())]
    TableFile { path: PathBuf, reason: String },
    #[error("learn: nothing to watch: give --cgroup PATH, or a command after --")]
    NothingToWatch,
    #[error("learn: the trace ended before it was ready")]
    TraceEnded,
    #[error("learn: the trace task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Write(#[from] write::WriteError),
    #[error("learn: {what}: {source}")]
    Cluster { what: String, source: kube::Error },
    #[error(
        "learn: {policy} exists in mode {mode} or for other pods: give another --name (the \
         learned policy would replace it when applied)"
    )]
    PolicyInTheWay { policy: String, mode: String },
    #[error("learn: {policy}: the API server gave it no uid, which its reports must name")]
    NoUid { policy: String },
    #[error(transparent)]
    Report(#[from] report::ReportError),
}

/// `--duration`: a number with a unit, `90s`, `10m`, `2h` (seconds without one).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit, e.g. 90s, 10m, 2h"))?;
    let seconds = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("{text:?}: the unit is s, m or h")),
    };
    if seconds == 0 {
        return Err(format!("{text:?}: a duration must be longer than zero"));
    }
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("10d").unwrap_err().contains("s, m or h"));
        assert!(parse_duration("m").is_err());
    }
}
