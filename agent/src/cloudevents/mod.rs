//! The CloudEvents 1.0 envelope (structured-mode JSON) around Vigil's typed event data. A
//! finished event is a [`VigilEvent`]: typed attributes and typed `data`; sinks read it as it
//! is, and [`VigilEvent::to_cloudevent`] makes the `cloudevents-sdk` event that goes on the
//! wire. `docs/event.schema.json` is generated from these types (`cargo xtask schema`).
pub mod data;
mod loss;
#[cfg(test)]
mod roundtrip;
pub mod schema;
pub mod shared;

use ::cloudevents::{Event as CloudEvent, EventBuilder, EventBuilderV10};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use self::data::{
    BehaviourData, CgroupData, ContainerData, Member, OwnerData, ParentData, PodData, ProcessData,
};
pub use self::loss::{LossData, LossReport, Losses, PerBehaviour};
use self::shared::Shared;
use crate::{
    event::{Action, Body, Event},
    metadata::cluster::{PodInfo, PodLookup},
    metadata::{clock::wall_time, process::Lineage},
    policy::PolicyRef,
};

/// What happened; selects the shape of `data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum EventType {
    #[serde(rename = "dev.vigil.exec.v1")]
    Exec,
    #[serde(rename = "dev.vigil.connect.v1")]
    Connect,
    #[serde(rename = "dev.vigil.wx.v1")]
    Wx,
    #[serde(rename = "dev.vigil.cgroup.v1")]
    Cgroup,
    #[serde(rename = "dev.vigil.loss.v1")]
    Loss,
}

impl EventType {
    pub const ALL: [Self; 5] = [
        Self::Exec,
        Self::Connect,
        Self::Wx,
        Self::Cgroup,
        Self::Loss,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Exec => "dev.vigil.exec.v1",
            Self::Connect => "dev.vigil.connect.v1",
            Self::Wx => "dev.vigil.wx.v1",
            Self::Cgroup => "dev.vigil.cgroup.v1",
            Self::Loss => "dev.vigil.loss.v1",
        }
    }

    /// The short name the readable line shows (`exec`, `connect`, `wx`, `cgroup`, `loss`).
    pub fn short(&self) -> &'static str {
        match self {
            Self::Exec => "exec",
            Self::Connect => "connect",
            Self::Wx => "wx",
            Self::Cgroup => "cgroup",
            Self::Loss => "loss",
        }
    }
}

/// Extension `vigilverdict`: `observed`: the behaviour was seen and no policy was violated
/// (everything `vigil trace` emits); `violation`: a policy forbids it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum VerdictName {
    Observed,
    Violation,
}

impl VerdictName {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Observed => "observed",
            Self::Violation => "violation",
        }
    }
}

/// Extension `vigilseverity`: how urgent the event is. Observed behaviour is `info`; loss
/// events are `warning`; violations are `high` when the act was refused or the process
/// killed, `medium` when only reported.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    Warning,
    High,
    Critical,
}

impl Severity {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::Warning => "warning",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }
}

/// The `data` of one event, typed by the event's type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Payload {
    Behaviour(Box<BehaviourData>),
    Loss(Box<LossData>),
}

/// A finished event: what every sink receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VigilEvent {
    pub id: crate::event::EventId,
    /// `/vigil/nodes/<node>`.
    pub source: Shared<str>,
    pub subject: Shared<str>,
    pub time: DateTime<Utc>,
    pub verdict: VerdictName,
    pub action: Action,
    pub severity: Severity,
    /// `<namespace>/<name>` or `<name>` of the violated policy.
    pub policy: Option<String>,
    pub payload: Payload,
}

#[derive(Debug, thiserror::Error)]
pub enum CloudEventError {
    #[error("building CloudEvent of type {ty}: {source}")]
    Build {
        ty: &'static str,
        source: ::cloudevents::event::EventBuilderError,
    },
    #[error("encoding the data of a CloudEvent of type {ty}: {source}")]
    Data {
        ty: &'static str,
        source: serde_json::Error,
    },
    /// A CloudEvent that is not one of Vigil's (read back from a spool).
    #[error("CloudEvent {id}: {field}: {reason}")]
    NotVigil {
        id: String,
        field: &'static str,
        reason: String,
    },
}

impl VigilEvent {
    pub fn ty(&self) -> EventType {
        match &self.payload {
            Payload::Loss(_) => EventType::Loss,
            Payload::Behaviour(b) => match b.member {
                Member::Exec(_) => EventType::Exec,
                Member::Connect(_) => EventType::Connect,
                Member::Wx(_) => EventType::Wx,
                Member::Move(_) => EventType::Cgroup,
            },
        }
    }

    /// The behaviour's data; `None` for a loss event.
    pub fn behaviour(&self) -> Option<&BehaviourData> {
        match &self.payload {
            Payload::Behaviour(b) => Some(b),
            Payload::Loss(_) => None,
        }
    }

    /// The event [`Self::to_cloudevent`] made, read back (from a sink's disk spool).
    pub fn from_cloudevent(ce: &CloudEvent) -> Result<Self, CloudEventError> {
        use ::cloudevents::{AttributesReader, Data, event::ExtensionValue};
        let id = ce.id().to_string();
        let not_vigil = |field: &'static str, reason: String| CloudEventError::NotVigil {
            id: id.clone(),
            field,
            reason,
        };
        let named = |field: &'static str, value: Option<String>| {
            let value = value.ok_or_else(|| not_vigil(field, "missing".into()))?;
            Ok::<_, CloudEventError>(serde_json::Value::String(value))
        };
        fn parse<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, String> {
            serde_json::from_value(value).map_err(|e| e.to_string())
        }
        let extension = |name: &str| match ce.extension(name) {
            Some(ExtensionValue::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
            None => None,
        };
        let ty: EventType =
            parse(named("type", Some(ce.ty().to_string()))?).map_err(|e| not_vigil("type", e))?;
        let data = match ce.data() {
            Some(Data::Json(value)) => value.clone(),
            Some(Data::String(text)) => {
                serde_json::from_str(text).map_err(|e| not_vigil("data", e.to_string()))?
            }
            Some(Data::Binary(bytes)) => {
                serde_json::from_slice(bytes).map_err(|e| not_vigil("data", e.to_string()))?
            }
            None => return Err(not_vigil("data", "missing".into())),
        };
        let payload = match ty {
            EventType::Loss => {
                Payload::Loss(Box::new(parse(data).map_err(|e| not_vigil("data", e))?))
            }
            _ => Payload::Behaviour(Box::new(parse(data).map_err(|e| not_vigil("data", e))?)),
        };
        let event = Self {
            source: ce.source().to_string().into(),
            subject: ce
                .subject()
                .ok_or_else(|| not_vigil("subject", "missing".into()))?
                .into(),
            time: *ce
                .time()
                .ok_or_else(|| not_vigil("time", "missing".into()))?,
            verdict: parse(named("vigilverdict", extension("vigilverdict"))?)
                .map_err(|e| not_vigil("vigilverdict", e))?,
            action: parse(named("vigilaction", extension("vigilaction"))?)
                .map_err(|e| not_vigil("vigilaction", e))?,
            severity: parse(named("vigilseverity", extension("vigilseverity"))?)
                .map_err(|e| not_vigil("vigilseverity", e))?,
            policy: extension("vigilpolicy"),
            payload,
            id: if id.len() <= crate::event::EventId::CAPACITY {
                id.as_str().into()
            } else {
                return Err(not_vigil(
                    "id",
                    format!("{} bytes, longer than any id Vigil makes", id.len()),
                ));
            },
        };
        if event.ty() != ty {
            return Err(not_vigil(
                "type",
                format!("{} with the data of {}", ty.as_str(), event.ty().as_str()),
            ));
        }
        Ok(event)
    }

    /// The event in structured-mode JSON, written straight into `out`: the same JSON object as
    /// [`Self::to_cloudevent`] serialized, without building the SDK's event and a `Value` tree
    /// of the data first (those allocations were most of a sink's cost per event).
    pub fn write_json(&self, out: &mut Vec<u8>) -> Result<(), CloudEventError> {
        let ty = self.ty().as_str();
        let structured = Structured {
            specversion: "1.0",
            id: &self.id,
            ty,
            source: &self.source,
            datacontenttype: "application/json",
            subject: &self.subject,
            time: &self.time,
            vigilverdict: self.verdict.name(),
            vigilaction: self.action.name(),
            vigilseverity: self.severity.name(),
            vigilpolicy: self.policy.as_deref(),
            data: &self.payload,
        };
        serde_json::to_writer(out, &structured)
            .map_err(|source| CloudEventError::Data { ty, source })
    }

    /// [`Self::write_json`] into a buffer of its own (one spool record, one batch element).
    pub fn to_json(&self) -> Result<Vec<u8>, CloudEventError> {
        let mut json = Vec::with_capacity(1024);
        self.write_json(&mut json)?;
        Ok(json)
    }

    /// The event as the `cloudevents-sdk` carries it (structured-mode JSON when serialized).
    pub fn to_cloudevent(&self) -> Result<CloudEvent, CloudEventError> {
        let ty = self.ty().as_str();
        let data = serde_json::to_value(&self.payload)
            .map_err(|source| CloudEventError::Data { ty, source })?;
        let mut builder = EventBuilderV10::new()
            .id(self.id.as_str())
            .source(&*self.source)
            .ty(ty)
            .subject(&*self.subject)
            .time(self.time)
            .extension("vigilverdict", self.verdict.name())
            .extension("vigilaction", self.action.name())
            .extension("vigilseverity", self.severity.name());
        if let Some(policy) = &self.policy {
            builder = builder.extension("vigilpolicy", policy.clone());
        }
        builder
            .data("application/json", data)
            .build()
            .map_err(|source| CloudEventError::Build { ty, source })
    }
}

/// A [`VigilEvent`] as the CloudEvents JSON format lays it out (attributes, extensions and
/// `data` side by side), borrowed.
#[derive(Serialize)]
struct Structured<'a> {
    specversion: &'static str,
    id: &'a str,
    #[serde(rename = "type")]
    ty: &'static str,
    source: &'a str,
    datacontenttype: &'static str,
    subject: &'a str,
    time: &'a DateTime<Utc>,
    vigilverdict: &'static str,
    vigilaction: &'static str,
    vigilseverity: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    vigilpolicy: Option<&'a str>,
    data: &'a Payload,
}

/// The node's name and the attributes every event from it derives from the name alone, made
/// once per name and shared by every event rather than formatted for each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeNames {
    pub name: Shared<str>,
    /// `/vigil/nodes/<node>`.
    pub source: Shared<str>,
    /// `hosts/<node>`: the subject of a host process's event.
    pub host_subject: Shared<str>,
}

impl From<&str> for NodeNames {
    fn from(node: &str) -> Self {
        Self {
            name: node.into(),
            source: source(node).into(),
            host_subject: host_subject(node).into(),
        }
    }
}

impl Default for NodeNames {
    fn default() -> Self {
        Self::from("")
    }
}

/// A pod's members as its events carry them (`pod`, `container`, `subject`), described once
/// per pod object and container and shared by every event from there, rather than copied
/// (labels and all) into each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodDescription {
    pub pod: Shared<PodData>,
    pub container: Shared<ContainerData>,
    /// `namespaces/<namespace>/pods/<name>`.
    pub subject: Shared<str>,
}

impl From<&PodInfo> for PodDescription {
    fn from(p: &PodInfo) -> Self {
        Self {
            pod: Shared::new(PodData {
                namespace: Some(p.namespace.clone()),
                name: Some(p.name.clone()),
                uid: p.uid.clone(),
                labels: Some(p.labels.clone()),
                service_account: Some(p.service_account.clone()),
                owner: Some(p.owner.as_ref().map(|o| OwnerData {
                    kind: o.kind.clone(),
                    name: o.name.clone(),
                })),
            }),
            container: Shared::new(ContainerData {
                id: p.container_id.clone(),
                name: Some(p.container_name.clone()),
                image: Some(p.image.clone()),
            }),
            subject: format!("namespaces/{}/pods/{}", p.namespace, p.name).into(),
        }
    }
}

/// Where an event happened, beyond the process itself.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub node: NodeNames,
    pub cgroup_path: Option<Shared<str>>,
    /// The pod, when the event came from one (and the agent knows the cluster).
    pub pod: Option<&'a PodLookup>,
}

impl Context<'_> {
    pub fn host(node: impl Into<NodeNames>, cgroup_path: Option<Shared<str>>) -> Self {
        Self {
            node: node.into(),
            cgroup_path,
            pod: None,
        }
    }
}

fn source(node: &str) -> String {
    format!("/vigil/nodes/{node}")
}

fn host_subject(node: &str) -> String {
    format!("hosts/{node}")
}

/// The behaviour's own member. Drift is said only of a pod's process: the kernel works it out
/// for every file (a host's own binaries sit on a writable root, which would make every host
/// exec "drift"), but only a container has an image to drift from.
fn member(body: &Body, in_pod: bool) -> Member {
    match body {
        Body::Exec(e) => {
            let mut data = crate::behaviour::exec::ExecData::from(e);
            if !in_pod {
                data.drift = false;
                data.origin = None;
            }
            Member::Exec(data)
        }
        Body::Connect(c) => Member::Connect(c.into()),
        Body::Wx(w) => Member::Wx(w.into()),
        Body::Move(m) => Member::Move(m.into()),
    }
}

/// An observed behaviour (`vigilverdict: observed`), as `vigil trace` emits it.
pub fn observed(event: &Event, lineage: &Lineage, ctx: &Context<'_>) -> VigilEvent {
    build(event, lineage, ctx, None)
}

/// A policy violation: `vigilverdict: violation`, what was done, and which policy and rule.
pub fn violation(
    event: &Event,
    lineage: &Lineage,
    ctx: &Context<'_>,
    policy: &Shared<PolicyRef>,
    action: Action,
) -> VigilEvent {
    build(event, lineage, ctx, Some((policy, action)))
}

fn build(
    event: &Event,
    lineage: &Lineage,
    ctx: &Context<'_>,
    judged: Option<(&Shared<PolicyRef>, Action)>,
) -> VigilEvent {
    let h = &event.header;
    let (pod, container, metadata_incomplete, subject) = match ctx.pod {
        Some(PodLookup::Found(p)) => (
            Some(p.pod.clone()),
            Some(p.container.clone()),
            false,
            p.subject.clone(),
        ),
        Some(PodLookup::Unknown { uid, container_id }) => (
            Some(Shared::new(PodData {
                namespace: None,
                name: None,
                uid: uid.clone(),
                labels: None,
                service_account: None,
                owner: None,
            })),
            Some(Shared::new(ContainerData {
                id: container_id.clone(),
                name: None,
                image: None,
            })),
            true,
            ctx.node.host_subject.clone(),
        ),
        Some(PodLookup::Host) | None => (None, None, false, ctx.node.host_subject.clone()),
    };
    let aggregated = judged.is_some() && h.count > 1;
    let data = BehaviourData {
        process: ProcessData {
            pid: h.pid,
            tid: h.tid,
            ppid: h.ppid,
            uid: h.uid,
            gid: h.gid,
            comm: h.comm,
            exe: lineage.process.exe.clone(),
            args: lineage.process.args.clone(),
        },
        parent: lineage.parent.as_ref().map(|p| ParentData {
            pid: h.ppid,
            comm: p.comm.clone(),
            exe: p.exe.clone(),
            args: p.args.clone(),
        }),
        cgroup: CgroupData {
            id: h.cgroup_id,
            path: ctx.cgroup_path.clone(),
        },
        node: ctx.node.name.clone(),
        pod,
        container,
        metadata_incomplete,
        policy: judged.map(|(p, _)| p.clone()),
        count: aggregated.then_some(h.count),
        first_seen: aggregated
            .then(|| wall_time(h.first_ns).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)),
        member: member(&event.body, ctx.pod.is_some()),
    };
    let (verdict, action, severity, policy) = match judged {
        None => (VerdictName::Observed, Action::None, Severity::Info, None),
        Some((policy, action)) => (
            VerdictName::Violation,
            action,
            if matches!(action, Action::Kill | Action::Deny) {
                Severity::High
            } else {
                Severity::Medium
            },
            Some(match &policy.namespace {
                Some(ns) => format!("{ns}/{}", policy.name),
                None => policy.name.clone(),
            }),
        ),
    };
    VigilEvent {
        id: crate::event::EventId::random(),
        source: ctx.node.source.clone(),
        subject,
        time: wall_time(h.boot_ns),
        verdict,
        action,
        severity,
        policy,
        payload: Payload::Behaviour(Box::new(data)),
    }
}

/// `dev.vigil.loss.v1`: events that were lost, so that no loss is silent.
pub fn loss(node: &str, delta: &LossReport, totals: &LossReport) -> VigilEvent {
    VigilEvent {
        id: crate::event::EventId::random(),
        source: source(node).into(),
        subject: host_subject(node).into(),
        time: Utc::now(),
        verdict: VerdictName::Observed,
        action: Action::None,
        severity: Severity::Warning,
        policy: None,
        payload: Payload::Loss(Box::new(LossData {
            node: node.to_string(),
            lost: delta.into(),
            lost_since_start: totals.into(),
        })),
    }
}
