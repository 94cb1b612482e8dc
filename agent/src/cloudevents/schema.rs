//! `docs/event.schema.json`, generated from the event types: the envelope's attributes, and
//! per `type` the shape of `data`. `vigil schema` prints it, `cargo xtask schema` writes it,
//! and a test fails when the committed file differs.
use schemars::{JsonSchema, Schema, SchemaGenerator, generate::SchemaSettings, json_schema};
use serde_json::{Value, json};

use super::{EventType, LossData, Severity, VerdictName, data::BehaviourData};
use crate::{
    behaviour::{cgroup_move::MoveData, connect::ConnectData, exec::ExecData, wx::WxData},
    event::Action,
};

/// For `skip_serializing_if`: a flag that is present only when true.
pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

/// The schema of a flag that is present only when true.
pub(crate) fn only_true(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "const": true })
}

/// The envelope: CloudEvents attributes and Vigil's extensions. `type` and `data` are added
/// by [`event_schema`], which ties each type to its data.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
#[expect(
    dead_code,
    reason = "a description of the wire format for the schema; events are built as VigilEvent"
)]
struct Envelope {
    /// CloudEvents specification version.
    #[schemars(schema_with = "spec_version")]
    specversion: String,
    /// Unique identifier of this event (a random UUID v4). Use it to de-duplicate redelivered
    /// events.
    #[schemars(length(min = 1))]
    id: String,
    /// The Vigil agent that produced the event: `/vigil/nodes/<node>`, where <node> is the
    /// Kubernetes node name (`NODE_NAME`) or, on a plain host, the host name.
    #[schemars(regex(pattern = r"^/vigil/nodes/.+"))]
    source: String,
    /// Where it happened: `namespaces/<namespace>/pods/<pod>` for a process in a pod,
    /// `hosts/<node>` for a process outside any pod and for agent-level events such as
    /// losses.
    #[schemars(regex(pattern = r"^(hosts/.+|namespaces/[^/]+/pods/.+)$"))]
    subject: String,
    /// When it happened (RFC 3339, UTC): the kernel's timestamp of the behaviour converted to
    /// wall-clock time; for loss events, when the loss was reported.
    #[schemars(extend("format" = "date-time"))]
    time: String,
    /// Media type of `data`.
    #[schemars(schema_with = "json_media_type")]
    datacontenttype: String,
    vigilverdict: VerdictName,
    vigilaction: Action,
    vigilseverity: Severity,
    /// Extension, violations only: the violated policy, as `<namespace>/<name>` for a
    /// RuntimePolicy or `<name>` for a ClusterRuntimePolicy.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", length(min = 1))]
    vigilpolicy: Option<String>,
}

fn spec_version(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "const": "1.0" })
}

fn json_media_type(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "const": "application/json" })
}

/// The schema of `data` for one type: a behaviour's shared members plus its own member and
/// no other, or the loss data.
fn data_of(ty: EventType, generator: &mut SchemaGenerator) -> Value {
    let (member, schema) = match ty {
        EventType::Exec => ("exec", generator.subschema_for::<ExecData>()),
        EventType::Connect => ("connect", generator.subschema_for::<ConnectData>()),
        EventType::Wx => ("wx", generator.subschema_for::<WxData>()),
        EventType::Cgroup => ("move", generator.subschema_for::<MoveData>()),
        EventType::Loss => return generator.subschema_for::<LossData>().to_value(),
    };
    let mut data = generator.subschema_for::<BehaviourData>().to_value();
    data["required"] = json!([member]);
    data["properties"] = json!({ member: schema });
    data["unevaluatedProperties"] = json!(false);
    data
}

/// The whole schema, as `docs/event.schema.json` holds it.
pub fn event_schema() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .for_serialize()
        .into_generator();
    let mut root = generator.root_schema_for::<Envelope>().to_value();
    let types = generator.subschema_for::<EventType>().to_value();
    let mut conditions = vec![json!({
        "if": {"properties": {"vigilverdict": {"const": "observed"}}, "required": ["vigilverdict"]},
        "then": {"properties": {"vigilaction": {"const": "none"}}}
    })];
    for ty in EventType::ALL {
        conditions.push(json!({
            "if": {"properties": {"type": {"const": ty.as_str()}}, "required": ["type"]},
            "then": {"properties": {"data": data_of(ty, &mut generator)}}
        }));
    }
    let defs = generator.take_definitions(true);
    let object = root
        .as_object_mut()
        .expect("a struct's schema is an object");
    object.insert(
        "$id".into(),
        json!("https://vigil.dev/schemas/event.schema.json"),
    );
    object.insert("title".into(), json!("Vigil event"));
    object.insert(
        "description".into(),
        json!(
            "One event emitted by Vigil: a CloudEvents 1.0 event in structured-mode JSON (one \
             JSON object per line on stdout and in files). The envelope attributes and \
             extensions are top-level members; the payload is `data`. The `type` attribute \
             selects the shape of `data`. Generated from the agent's types by `cargo xtask \
             schema`; documented for humans in docs/event-schema.md; the agent's tests \
             validate every event they see against this file."
        ),
    );
    let properties = object["properties"]
        .as_object_mut()
        .expect("the envelope has properties");
    properties.insert("type".into(), types);
    properties.insert(
        "data".into(),
        json!({"description": "The payload; its shape depends on `type`.", "type": "object"}),
    );
    let required = object["required"]
        .as_array_mut()
        .expect("the envelope has required members");
    required.extend([json!("type"), json!("data")]);
    object.insert("allOf".into(), Value::Array(conditions));
    let all_defs = object
        .entry("$defs")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("$defs is an object");
    all_defs.extend(defs);
    unwrap_descriptions(&mut root);
    root
}

/// Doc comments wrap at 100 columns; a description reads as one paragraph.
fn unwrap_descriptions(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match v {
                    Value::String(text) if key == "description" => {
                        let paragraphs: Vec<String> =
                            text.split("\n\n").map(|p| p.replace('\n', " ")).collect();
                        *text = paragraphs.join("\n\n");
                    }
                    other => unwrap_descriptions(other),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

/// [`event_schema`] as the committed file holds it: pretty JSON and a final newline.
pub fn event_schema_text() -> String {
    let mut text =
        serde_json::to_string_pretty(&event_schema()).expect("a JSON value always serializes");
    text.push('\n');
    text
}
