//! Reading policy files: which files a path names, the YAML documents in each, and the typed
//! CRD object in each document, with every problem reported by its field path.
use std::{
    fs,
    path::{Path, PathBuf},
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_yaml_ng::{Mapping, Value};

use super::{
    crd::{API_VERSION, ClusterRuntimePolicy, RuntimePolicy},
    error::FieldError,
    model::{Policy, PolicyKind, policy_id},
    structure, validate,
};

/// Keys a policy document may have at its top level (`status` as `kubectl get -o yaml` writes
/// it; the agent ignores it).
const TOP_LEVEL: [&str; 5] = ["apiVersion", "kind", "metadata", "spec", "status"];

/// The files `paths` name: a file as given (any extension), a directory's `*.yaml` and `*.yml`
/// files sorted by name. Not recursive, and names starting with `.` are skipped, so a mounted
/// ConfigMap (whose `..data` directory holds the real files behind symlinks) is read once.
pub fn files(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<FieldError>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let io_error = |err: std::io::Error| FieldError {
            file: Some(path.clone()),
            ..FieldError::new("", format!("cannot read: {err}"))
        };
        match fs::metadata(path) {
            Err(err) => errors.push(io_error(err)),
            Ok(meta) if !meta.is_dir() => files.push(path.clone()),
            Ok(_) => match fs::read_dir(path) {
                Err(err) => errors.push(io_error(err)),
                Ok(entries) => {
                    let mut found: Vec<PathBuf> = entries
                        .filter_map(Result::ok)
                        .map(|entry| entry.path())
                        .filter(|p| is_policy_file(p))
                        .collect();
                    found.sort();
                    files.extend(found);
                }
            },
        }
    }
    (files, errors)
}

fn is_policy_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !name.starts_with('.')
        && (name.ends_with(".yaml") || name.ends_with(".yml"))
        && fs::metadata(path).is_ok_and(|m| m.is_file())
}

/// Reads and validates one file; `Err` holds every problem in it.
pub fn file(path: &Path) -> Result<Vec<Policy>, Vec<FieldError>> {
    match fs::read_to_string(path) {
        Ok(text) => text_from(&text, Some(path)),
        Err(err) => Err(vec![FieldError {
            file: Some(path.to_owned()),
            ..FieldError::new("", format!("cannot read: {err}"))
        }]),
    }
}

/// Validates the policies in a YAML text of one or more documents (`---` between them; empty
/// documents are skipped). `source` names the file in errors and in each [`Policy`].
pub fn text_from(text: &str, source: Option<&Path>) -> Result<Vec<Policy>, Vec<FieldError>> {
    let mut policies = Vec::new();
    let mut errors = Vec::new();
    let mut last_yaml_error = None;
    for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let in_file = |err: FieldError| FieldError {
            file: source.map(Path::to_path_buf),
            document: index,
            ..err
        };
        let value = match <Value as serde::Deserialize>::deserialize(document) {
            Ok(value) => value,
            Err(err) => {
                // After a syntax error, what the parser reads as further documents can fail
                // again without a place ("EOF while parsing a value"): the first error, which
                // says where, is the one to fix.
                if err.location().is_none() && last_yaml_error.is_some() {
                    break;
                }
                // A document with e.g. a duplicate key leaves the stream usable, but after a
                // syntax error the parser repeats that error for every further "document".
                // Some syntax errors (e.g. a missing key, a duplicate key) do not say where.
                let message = match err.location() {
                    Some(at) if !err.to_string().contains(" line ") => format!(
                        "not valid YAML at line {} column {}: {err}",
                        at.line(),
                        at.column()
                    ),
                    _ => format!("not valid YAML: {err}"),
                };
                if last_yaml_error.as_ref() == Some(&message) {
                    break;
                }
                errors.push(in_file(FieldError::new("", message.clone())));
                last_yaml_error = Some(message);
                continue;
            }
        };
        if value.is_null() {
            continue;
        }
        match document_policy(&value) {
            Ok(mut policy) => {
                policy.source = source.map(Path::to_path_buf);
                policies.push(policy);
            }
            Err(errs) => errors.extend(errs.into_iter().map(in_file)),
        }
    }
    if errors.is_empty() {
        Ok(policies)
    } else {
        Err(errors)
    }
}

/// One document: checks the envelope, deserializes the typed object and validates it.
fn document_policy(value: &Value) -> Result<Policy, Vec<FieldError>> {
    let Some(map) = value.as_mapping() else {
        return Err(vec![FieldError::new(
            "",
            "a policy document is a mapping with apiVersion, kind, metadata and spec",
        )]);
    };
    let kind = envelope(map)?;
    let mut errors: Vec<FieldError> = map
        .keys()
        .filter_map(|k| {
            k.as_str()
                .map_or(Some(format!("{k:?}")), |k| Some(k.to_owned()))
        })
        .filter(|k| !TOP_LEVEL.contains(&k.as_str()))
        .map(|k| {
            FieldError::new(
                k,
                "unknown field, expected apiVersion, kind, metadata, spec or status",
            )
        })
        .collect();
    let metadata: ObjectMeta = match map.get("metadata") {
        None => ObjectMeta::default(),
        Some(v) => typed(v, "metadata").unwrap_or_else(|err| {
            errors.push(err);
            ObjectMeta::default()
        }),
    };
    let namespace = match kind {
        PolicyKind::RuntimePolicy => Some(
            metadata
                .namespace
                .as_deref()
                .unwrap_or(validate::DEFAULT_NAMESPACE),
        ),
        PolicyKind::ClusterRuntimePolicy => None,
    };
    let id = policy_id(
        kind,
        namespace,
        metadata.name.as_deref().unwrap_or("<unnamed>"),
    );
    let named = |errs: Vec<FieldError>| -> Vec<FieldError> {
        errs.into_iter()
            .map(|e| FieldError {
                policy: id.clone(),
                ..e
            })
            .collect()
    };
    let Some(spec) = map.get("spec") else {
        errors.push(FieldError::new("spec", "is required"));
        return Err(named(errors));
    };
    let structural = structure::check_spec(kind, spec);
    if !structural.is_empty() {
        errors.extend(structural);
        return Err(named(errors));
    }
    let result = match kind {
        PolicyKind::RuntimePolicy => typed(spec, "spec").map(|spec| {
            validate::runtime_policy(&RuntimePolicy {
                metadata,
                spec,
                status: None,
            })
        }),
        PolicyKind::ClusterRuntimePolicy => typed(spec, "spec").map(|spec| {
            validate::cluster_runtime_policy(&ClusterRuntimePolicy {
                metadata,
                spec,
                status: None,
            })
        }),
    };
    match result {
        Ok(Ok(policy)) if errors.is_empty() => Ok(policy),
        Ok(Ok(_)) => Err(named(errors)),
        Ok(Err(errs)) => {
            errors.extend(errs);
            Err(named(errors))
        }
        Err(err) => {
            errors.push(err);
            Err(named(errors))
        }
    }
}

/// `apiVersion` and `kind`; nothing else is worth checking when they are wrong.
fn envelope(map: &Mapping) -> Result<PolicyKind, Vec<FieldError>> {
    let mut errors = Vec::new();
    match map.get("apiVersion").map(Value::as_str) {
        Some(Some(API_VERSION)) => {}
        None => errors.push(FieldError::new(
            "apiVersion",
            format!("is required ({API_VERSION})"),
        )),
        Some(other) => errors.push(FieldError::new(
            "apiVersion",
            format!(
                "{} is not {API_VERSION}",
                other.map_or_else(|| "this".into(), |s| format!("{s:?}"))
            ),
        )),
    }
    let kind = match map.get("kind").map(Value::as_str) {
        Some(Some("RuntimePolicy")) => Some(PolicyKind::RuntimePolicy),
        Some(Some("ClusterRuntimePolicy")) => Some(PolicyKind::ClusterRuntimePolicy),
        None => {
            errors.push(FieldError::new(
                "kind",
                "is required (RuntimePolicy or ClusterRuntimePolicy)",
            ));
            None
        }
        Some(other) => {
            let shown = other.map_or_else(|| "this".into(), |s| format!("{s:?}"));
            errors.push(FieldError::new(
                "kind",
                format!("{shown} is not a policy kind (RuntimePolicy or ClusterRuntimePolicy)"),
            ));
            None
        }
    };
    match kind {
        Some(kind) if errors.is_empty() => Ok(kind),
        _ => Err(errors),
    }
}

/// Deserializes `value` as `T`, naming the failing field by its path under `root`.
fn typed<T: DeserializeOwned>(value: &Value, root: &str) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value.clone()).map_err(|err| {
        let mut field = root.to_owned();
        for segment in err.path().iter() {
            match segment {
                serde_path_to_error::Segment::Seq { index } => {
                    field.push_str(&format!("[{index}]"))
                }
                serde_path_to_error::Segment::Map { key }
                | serde_path_to_error::Segment::Enum { variant: key } => {
                    field.push('.');
                    field.push_str(key);
                }
                serde_path_to_error::Segment::Unknown => {}
            }
        }
        let (field, reason) = explain(field, &err.inner().to_string());
        FieldError::new(field, reason)
    })
}

/// Rewords serde's messages: the field a message names joins the path, and the reason says
/// what a policy author needs to know.
fn explain(mut field: String, message: &str) -> (String, String) {
    let quoted = |m: &str| m.split('`').nth(1).map(str::to_owned);
    // serde_path_to_error already has an unknown key on the path, but not a missing one.
    if let (Some(rest), Some(name)) = (message.strip_prefix("unknown field `"), quoted(message)) {
        if !field.ends_with(&format!(".{name}")) {
            field = format!("{field}.{name}");
        }
        let expected = rest.split_once(", ").map_or("", |(_, e)| e);
        return (
            field,
            format!("unknown field, {expected}")
                .trim_end_matches(", ")
                .to_owned(),
        );
    }
    if let (true, Some(name)) = (message.starts_with("missing field `"), quoted(message)) {
        return (format!("{field}.{name}"), "is required".into());
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        return (field, format!("unknown value {rest}"));
    }
    if message.starts_with("invalid type: integer") && field.contains(".ports[") {
        return (
            field,
            format!("{message}; write ports as strings, e.g. \"443\""),
        );
    }
    (field, message.to_owned())
}
