//! Policies: the `RuntimePolicy` and `ClusterRuntimePolicy` CRD types, loading them from YAML
//! files, the agent's own validation, and the normalized model the rest of the agent uses.
//!
//! Loading is all-or-nothing: one error anywhere refuses the whole set, so the caller keeps
//! the last good set in force (DESIGN: "Bad policies are refused whole").
pub mod cluster;
pub mod crd;
mod error;
pub mod limits;
mod load;
mod model;
pub mod status;
mod structure;
mod summary;
pub mod validate;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

pub use error::{FieldError, ValueError};
pub use limits::{KERNEL_PATH_MAX, KERNEL_PORT_RANGES, UserSpaceOnly};
pub use model::*;
pub use summary::summary;

/// Loads every policy under `paths` (files, or directories of `*.yaml`/`*.yml`). `Err` holds
/// every problem found in every file, and then no policy is returned at all.
pub fn load_paths(paths: &[PathBuf]) -> Result<Vec<Policy>, Vec<FieldError>> {
    let (files, mut errors) = load::files(paths);
    let mut policies = Vec::new();
    for file in &files {
        match load::file(file) {
            Ok(found) => policies.extend(found),
            Err(errs) => errors.extend(errs),
        }
    }
    errors.extend(duplicates(&policies));
    if errors.is_empty() {
        Ok(policies)
    } else {
        Err(errors)
    }
}

/// The policy files `paths` name (files, or the `*.yaml`/`*.yml` of directories), those that
/// can be read; [`load_paths`] reports the others.
pub fn files_under(paths: &[PathBuf]) -> Vec<PathBuf> {
    load::files(paths).0
}

/// Loads the policies in one YAML text (one or more documents); `source` names it in errors.
pub fn load_str(text: &str, source: Option<&Path>) -> Result<Vec<Policy>, Vec<FieldError>> {
    let policies = load::text_from(text, source)?;
    let errors = duplicates(&policies);
    if errors.is_empty() {
        Ok(policies)
    } else {
        Err(errors)
    }
}

/// The same kind, namespace and name twice: the API server would keep only one of them, so a
/// file set that has both is ambiguous.
fn duplicates(policies: &[Policy]) -> Vec<FieldError> {
    let mut first: BTreeMap<(PolicyKind, Option<&str>, &str), &Policy> = BTreeMap::new();
    let mut errors = Vec::new();
    for p in policies {
        let key = (p.kind, p.namespace.as_deref(), p.name.as_str());
        if let Some(earlier) = first.get(&key) {
            let place = match (earlier.source(), p.source()) {
                (Some(a), Some(b)) if a == b => "an earlier document of this file".into(),
                (Some(a), _) => a.display().to_string(),
                (None, _) => "another source".into(),
            };
            errors.push(FieldError {
                file: p.source.clone(),
                document: 0,
                policy: p.id(),
                ..FieldError::new(
                    "metadata.name",
                    format!("{} is also defined in {place}", p.id()),
                )
            });
        } else {
            first.insert(key, p);
        }
    }
    errors
}

#[cfg(test)]
mod tests;

// An event's `policy`: built once per rule and shared by every event that names it.
/// Violations only: the violated policy and the rule that decided.
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[schemars(deny_unknown_fields, rename = "policy")]
pub struct PolicyRef {
    /// `RuntimePolicy` or `ClusterRuntimePolicy` (`unknown` if the policy was replaced before
    /// the event was read).
    pub kind: String,
    /// The policy's name.
    pub name: String,
    /// The namespace of a RuntimePolicy; null for a ClusterRuntimePolicy.
    pub namespace: Option<String>,
    /// Field path of the deciding rule, e.g. `spec.exec.deny[0]`; `spec.<section>.allow` when
    /// the behaviour is on no allowlist.
    pub rule: String,
    /// What the rule says, e.g. `prefix /tmp/`.
    #[serde(rename = "description")]
    pub text: String,
}
