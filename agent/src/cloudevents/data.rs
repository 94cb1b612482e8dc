//! The `data` of a behaviour event: the members every behaviour shares (process, parent,
//! cgroup, pod, container, policy) and the behaviour's own member.
use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::shared::Shared;
use crate::behaviour::{cgroup_move::MoveData, connect::ConnectData, exec::ExecData, wx::WxData};

/// `Option<Option<T>>` members: missing is `None` (and not written), null is `Some(None)`.
mod present {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer, T: Serialize>(
        value: &Option<Option<T>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        value
            .as_ref()
            .and_then(Option::as_ref)
            .serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        deserializer: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(deserializer).map(Some)
    }
}

/// The process (thread group) that did it. Identity fields come from the kernel at the moment
/// of the behaviour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields, rename = "process")]
pub struct ProcessData {
    /// Process id (thread group id), as seen from the host's pid namespace.
    pub pid: u32,
    /// Id of the thread that did it (host pid namespace); equals pid for the main thread.
    pub tid: u32,
    /// Parent's process id (host pid namespace).
    pub ppid: u32,
    /// Real user id, as seen from the host's user namespace.
    pub uid: u32,
    /// Real group id, as seen from the host's user namespace.
    pub gid: u32,
    /// The kernel's task name (up to 15 bytes, truncated; after an exec, the executable's file
    /// name).
    pub comm: crate::event::Comm,
    /// Path of the process's executable (from /proc, else for exec events the exec path), or
    /// null when unknown: the process exited before the agent could read /proc.
    pub exe: Option<Shared<str>>,
    /// Command line as the agent knows it (empty when unknown). For exec events this is the
    /// new command line, also in `exec.args`.
    pub args: Shared<[String]>,
}

/// What the agent knows about the parent process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields, rename = "parent")]
pub struct ParentData {
    /// Parent's process id (host pid namespace); same as `process.ppid`.
    pub pid: u32,
    /// Parent's task name (up to 15 bytes).
    pub comm: Shared<str>,
    /// Path of the parent's executable, or null when unknown.
    pub exe: Option<Shared<str>>,
    /// Parent's command line (empty when unknown).
    pub args: Shared<[String]>,
}

/// The cgroup (v2) the process was in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields, rename = "cgroup")]
pub struct CgroupData {
    /// cgroup id (the inode number of its directory in the cgroup v2 file system).
    pub id: u64,
    /// Path of the cgroup relative to the cgroup v2 root (e.g. `/kubepods.slice/...`), or
    /// null when it could not be resolved (the cgroup was already removed).
    pub path: Option<Shared<str>>,
}

/// The workload owning the pod, resolved through ReplicaSet to Deployment and Job to
/// CronJob; null for a bare pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields, rename = "owner")]
pub struct OwnerData {
    pub kind: String,
    pub name: String,
}

/// The pod the process runs in (in a cluster; absent for host processes). With
/// `metadataIncomplete`, only `uid` is known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields, rename = "pod")]
pub struct PodData {
    /// The pod's namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub namespace: Option<String>,
    /// The pod's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub name: Option<String>,
    /// The pod's UID.
    pub uid: String,
    /// The pod's labels.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "BTreeMap<String, String>")]
    pub labels: Option<BTreeMap<String, String>>,
    /// The pod's ServiceAccount.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "present")]
    #[schemars(with = "Option<String>")]
    pub service_account: Option<Option<String>>,
    /// The workload owning the pod, resolved through ReplicaSet to Deployment and Job to
    /// CronJob; null for a bare pod.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "present")]
    #[schemars(with = "Option<OwnerData>")]
    pub owner: Option<Option<OwnerData>>,
}

/// The container the process runs in (absent for host processes); fields the pod's status
/// does not (yet) tell are null.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields, rename = "container")]
pub struct ContainerData {
    /// The container id (64 hex digits, without the runtime's scheme); null for the pod's own
    /// cgroup.
    pub id: Option<String>,
    /// The container's name in the pod spec.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "present")]
    #[schemars(with = "Option<String>")]
    pub name: Option<Option<String>>,
    /// The container's image, as the pod's status reports it.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "present")]
    #[schemars(with = "Option<String>")]
    pub image: Option<Option<String>>,
}

/// Violations only: the violated policy and the rule that decided; shared with the rules
/// in force, so an event names its rule without copying it.
pub type PolicyData = crate::policy::PolicyRef;

/// The behaviour's own member: exactly one, named after the behaviour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Member {
    Exec(ExecData),
    Connect(ConnectData),
    Wx(WxData),
    Move(MoveData),
}

/// The members shared by every behaviour event (exec, connect, wx, cgroup). Each type adds
/// its own member (`exec`, `connect`, `wx` or `move`) and no other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "behaviourData")]
pub struct BehaviourData {
    pub process: ProcessData,
    /// The parent process (pid `process.ppid`), or null when the agent knows nothing about it
    /// (it exited before it could be read).
    pub parent: Option<ParentData>,
    pub cgroup: CgroupData,
    /// Name of the node (or host) the agent runs on.
    #[schemars(length(min = 1))]
    pub node: Shared<str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "PodData")]
    pub pod: Option<Shared<PodData>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "ContainerData")]
    pub container: Option<Shared<ContainerData>>,
    /// Present (true) when the event came from a pod the agent's view of the API server did
    /// not know within 2 s: `pod` and `container` hold only what the cgroup tells.
    #[serde(default, skip_serializing_if = "crate::cloudevents::schema::is_false")]
    #[schemars(schema_with = "crate::cloudevents::schema::only_true")]
    pub metadata_incomplete: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "PolicyData")]
    pub policy: Option<Shared<PolicyData>>,
    /// Present when above 1: the number of identical violations (same cgroup, behaviour and
    /// rule) this event stands for, the others having been held back in the kernel during a
    /// flood (at most 8 go out per second).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "u32", range(min = 1))]
    pub count: Option<u32>,
    /// With `count`: the time of the first of the violations it stands for (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub first_seen: Option<String>,
    /// The schema adds the member per type (`cloudevents::schema`), and refuses any other.
    #[serde(flatten)]
    #[schemars(skip)]
    pub member: Member,
}
