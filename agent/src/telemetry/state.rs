//! `--state-file`: the agent's state as one JSON document, rewritten (atomically, by rename)
//! whenever it changes: what is in force, what was refused and why. For tools and tests that
//! need to know what the agent did without reading its log.
use std::path::PathBuf;

use serde::Serialize;

use crate::{
    enforce::{Applied, MapUsage},
    policy::FieldError,
};

#[derive(Debug, thiserror::Error)]
#[error("state file {path}: {source}")]
pub struct StateFileError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// A policy error as the state file shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Refusal {
    /// The file the policy came from.
    pub file: Option<String>,
    /// `RuntimePolicy shop/web`, when the document got that far.
    pub policy: String,
    pub field: String,
    pub reason: String,
}

/// What the state file holds.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AgentState {
    pub node: String,
    /// How many times a policy set was put in force (the first time included).
    pub applied: u64,
    /// Policies in force (from files and the API server).
    pub policies: usize,
    pub sets: usize,
    /// cgroup paths bound to a policy set.
    pub bound: Vec<String>,
    /// Binding paths whose cgroup does not exist yet.
    pub waiting: Vec<String>,
    /// Binding paths refused: deeper than the kernel looks for bindings.
    pub too_deep: Vec<String>,
    /// Entries in the kernel's policy maps.
    pub map_entries: usize,
    /// Each policy map's entries and capacity, as of the last time policies were applied.
    pub maps: Vec<MapUsage>,
    /// Kernel map updates that failed (see the log for which).
    pub map_errors: u64,
    /// How many times a policy set from files was refused whole.
    pub refused: u64,
    /// Why the last one was.
    pub last_refusal: Vec<Refusal>,
}

pub struct StateFile {
    path: Option<PathBuf>,
    state: AgentState,
    /// Where `/metrics` reads the state.
    telemetry: Option<std::sync::Arc<super::metrics::Telemetry>>,
}

impl StateFile {
    /// `path` `None`: the state is kept, nothing is written.
    pub fn new(path: Option<PathBuf>, node: &str) -> Self {
        Self {
            path,
            state: AgentState {
                node: node.to_string(),
                ..AgentState::default()
            },
            telemetry: None,
        }
    }

    /// Every change is also shown by `/metrics`.
    pub fn with_telemetry(mut self, telemetry: std::sync::Arc<super::metrics::Telemetry>) -> Self {
        telemetry.set_state(&self.state);
        self.telemetry = Some(telemetry);
        self
    }

    pub fn state(&self) -> &AgentState {
        &self.state
    }

    /// A policy set was put in force.
    pub fn applied(
        &mut self,
        applied: &Applied,
        maps: Vec<MapUsage>,
        map_entries: usize,
        map_errors: u64,
    ) -> Result<(), StateFileError> {
        let s = &mut self.state;
        s.applied += 1;
        s.policies = applied.policies;
        s.sets = applied.sets;
        s.bound = applied.bound.clone();
        s.waiting = applied.waiting.clone();
        s.too_deep = applied.too_deep.clone();
        s.map_entries = map_entries;
        s.maps = maps;
        s.map_errors = map_errors;
        self.write()
    }

    /// A policy set from files was refused whole.
    pub fn refused(&mut self, errors: &[FieldError]) -> Result<(), StateFileError> {
        let s = &mut self.state;
        s.refused += 1;
        s.last_refusal = errors
            .iter()
            .map(|e| Refusal {
                file: e.file.as_ref().map(|p| p.display().to_string()),
                policy: e.policy.clone(),
                field: e.field.clone(),
                reason: e.reason.clone(),
            })
            .collect();
        self.write()
    }

    fn write(&self) -> Result<(), StateFileError> {
        if let Some(t) = &self.telemetry {
            t.set_state(&self.state);
        }
        let Some(path) = &self.path else {
            return Ok(());
        };
        let err = |source| StateFileError {
            path: path.clone(),
            source,
        };
        let json = serde_json::to_vec_pretty(&self.state).map_err(|e| err(e.into()))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, json).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_follows_each_change_and_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut file = StateFile::new(Some(path.clone()), "n1");
        let applied = Applied {
            policies: 2,
            sets: 1,
            bound: vec!["/a".into()],
            waiting: vec!["/b".into()],
            too_deep: vec![],
        };
        file.applied(&applied, Vec::new(), 7, 0).unwrap();
        let read = |p: &std::path::Path| -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
        };
        let v = read(&path);
        assert_eq!(
            (
                v["applied"].as_u64(),
                v["policies"].as_u64(),
                v["mapEntries"].as_u64()
            ),
            (Some(1), Some(2), Some(7))
        );
        assert_eq!(v["bound"][0], "/a");
        file.refused(&[FieldError {
            file: None,
            document: 1,
            policy: "ClusterRuntimePolicy a".into(),
            field: "spec.exec.allow[0]".into(),
            reason: "not absolute".into(),
        }])
        .unwrap();
        let v = read(&path);
        assert_eq!(v["refused"], 1);
        assert_eq!(v["lastRefusal"][0]["field"], "spec.exec.allow[0]");
        assert_eq!(v["applied"], 1, "a refusal leaves what is in force");
        assert!(!path.with_extension("tmp").exists());
    }
}
