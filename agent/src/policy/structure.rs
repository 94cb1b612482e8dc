//! Checks a document's `spec` against the CRD's own structural schema before serde sees it.
//!
//! serde stops at the first unknown field or wrong type; this walk finds all of them (unknown
//! fields, wrong types, values outside an enum, missing required fields), so a file with three
//! typos gets three errors. Value constraints (patterns, lengths, exactly-one) are left to
//! `validate.rs`, whose messages say more than "does not match pattern".
use std::sync::OnceLock;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::Value as Schema;
use serde_yaml_ng::Value;

use super::{
    crd::{ClusterRuntimePolicy, RuntimePolicy},
    error::FieldError,
    model::PolicyKind,
};

/// The `spec` schema of a kind, as the CRD carries it.
fn spec_schema(kind: PolicyKind) -> &'static Schema {
    static RUNTIME: OnceLock<Schema> = OnceLock::new();
    static CLUSTER: OnceLock<Schema> = OnceLock::new();
    let (cell, crd): (_, fn() -> CustomResourceDefinition) = match kind {
        PolicyKind::RuntimePolicy => (&RUNTIME, RuntimePolicy::crd),
        PolicyKind::ClusterRuntimePolicy => (&CLUSTER, ClusterRuntimePolicy::crd),
    };
    cell.get_or_init(|| {
        let schema = crd().spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .map(serde_json::to_value)
            .and_then(Result::ok)
            .expect("the derived CRD has a schema");
        schema["properties"]["spec"].clone()
    })
}

/// Every structural problem in `spec`, with paths under `spec`.
pub fn check_spec(kind: PolicyKind, spec: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    walk(spec, spec_schema(kind), "spec", &mut errors);
    errors
}

fn walk(value: &Value, schema: &Schema, path: &str, errors: &mut Vec<FieldError>) {
    // Kubernetes treats a null as absent (or prunes it); serde does the same for optional
    // fields and says so for required ones.
    if value.is_null() {
        return;
    }
    let expected = schema.get("type").and_then(Schema::as_str);
    if let Some(expected) = expected.filter(|t| !has_type(value, t)) {
        let mut reason = format!("expected {}, found {}", article(expected), describe(value));
        if expected == "string" && path.contains(".ports[") {
            reason.push_str("; write ports as strings, e.g. \"443\"");
        }
        errors.push(FieldError::new(path, reason));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Schema::as_array) {
        let json = serde_json::to_value(value).unwrap_or(Schema::Null);
        if allowed.contains(&json) {
            return;
        }
        if json == Schema::Bool(false) && allowed.contains(&Schema::Bool(true)) {
            errors.push(FieldError::new(
                path,
                "false matches nothing; remove the rule",
            ));
        } else {
            let names: Vec<String> = allowed
                .iter()
                .filter(|v| !v.is_null())
                .map(Schema::to_string)
                .collect();
            errors.push(FieldError::new(
                path,
                format!("unknown value {json}, expected one of {}", names.join(", ")),
            ));
        }
        return;
    }
    match value {
        Value::Mapping(map) => {
            let properties = schema.get("properties").and_then(Schema::as_object);
            let additional = schema.get("additionalProperties");
            for (key, child) in map {
                let name = key
                    .as_str()
                    .map_or_else(|| format!("{key:?}"), str::to_owned);
                let child_path = format!("{path}.{name}");
                match (properties.and_then(|p| p.get(&name)), additional) {
                    (Some(child_schema), _) | (None, Some(child_schema)) => {
                        walk(child, child_schema, &child_path, errors);
                    }
                    (None, None) => {
                        let known: Vec<&str> = properties
                            .into_iter()
                            .flat_map(|p| p.keys())
                            .map(String::as_str)
                            .collect();
                        errors.push(FieldError::new(
                            child_path,
                            format!("unknown field, expected one of {}", known.join(", ")),
                        ));
                    }
                }
            }
            let required = schema.get("required").and_then(Schema::as_array);
            for name in required.into_iter().flatten().filter_map(Schema::as_str) {
                if map.get(name).is_none_or(Value::is_null) {
                    errors.push(FieldError::new(format!("{path}.{name}"), "is required"));
                }
            }
        }
        Value::Sequence(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    walk(item, item_schema, &format!("{path}[{i}]"), errors);
                }
            }
        }
        _ => {}
    }
}

fn has_type(value: &Value, expected: &str) -> bool {
    match expected {
        "object" => value.is_mapping(),
        "array" => value.is_sequence(),
        "string" => value.is_string(),
        "boolean" => value.is_bool(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        _ => true,
    }
}

fn article(schema_type: &str) -> &'static str {
    match schema_type {
        "object" => "a mapping",
        "array" => "a list",
        "string" => "a string",
        "boolean" => "true or false",
        "integer" => "an integer",
        _ => "a number",
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("{b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}
