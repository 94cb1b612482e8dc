//! `RuntimePolicy` and `ClusterRuntimePolicy` as the API server and policy files carry them.
//!
//! These types are the single source of the CRDs (`cargo xtask crd` writes them from here), so
//! the schema attributes are the API server's half of validation; `validate.rs` is the agent's
//! half and checks everything again (files never pass through an API server). Patterns are
//! evaluated by Go's RE2 in the API server: no look-around, no back-references.
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "vigil.dev";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "vigil.dev/v1alpha1";

/// One path component that is neither `.` nor `..` (the kernel reports canonical paths, so a
/// rule with either could never match).
macro_rules! component {
    () => {
        r"([^/.][^/]*|\.[^/.][^/]*|\.\.[^/]+)"
    };
}

/// A port number 1-65535.
macro_rules! port {
    () => {
        r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
    };
}

/// An absolute, canonical file path (no trailing `/`).
pub const PATH_PATTERN: &str = concat!("^(/", component!(), ")+$");
/// An absolute, canonical directory prefix ending in `/` (`/` alone is every path).
pub const PREFIX_PATTERN: &str = concat!("^(/", component!(), ")*/$");
/// A cgroup v2 path relative to the cgroup root; a trailing `/` is allowed. Not empty (the
/// property test found the schema taking `""`, which the agent refuses).
pub const CGROUP_PATTERN: &str = concat!("^((/", component!(), ")+/?|/)$");
/// `443` or `8000-8080`.
pub const PORT_PATTERN: &str = concat!("^", port!(), "(-", port!(), ")?$");
/// An IPv4 CIDR with exact octets, or an IPv6 CIDR checked loosely here (hex groups and
/// colons, optionally a dotted tail); `format: cidr` and the agent parse it exactly.
pub const CIDR_PATTERN: &str = concat!(
    r"^((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}",
    r"/(3[0-2]|[12]?[0-9])",
    r"|[0-9a-fA-F:]*:[0-9a-fA-F:]*((\.[0-9]{1,3}){3})?",
    r"/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))$"
);
/// A container name (an RFC 1123 label).
pub const CONTAINER_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// The longest path the kernel accepts (`PATH_MAX` less the terminating NUL).
pub const PATH_MAX: usize = 4095;

/// A RuntimePolicy: selects pods of its own namespace.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "vigil.dev",
    version = "v1alpha1",
    kind = "RuntimePolicy",
    namespaced,
    status = "PolicyStatus",
    shortname = "rp",
    category = "vigil",
    doc = "What the selected pods may exec, connect to and map writable and executable.",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuntimePolicySpec {
    /// The pods of this namespace the policy applies to; {} selects every pod.
    pub pod_selector: LabelSelector,
    /// Only these containers of the selected pods (default: all of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1), inner(regex(pattern = CONTAINER_PATTERN), length(max = 63)))]
    pub containers: Option<Vec<String>>,
    /// Audit reports violations but never kills.
    #[serde(default)]
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecRules>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<ConnectRules>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryRules>,
}

/// A ClusterRuntimePolicy: selects pods of any namespace and/or processes outside any pod.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "vigil.dev",
    version = "v1alpha1",
    kind = "ClusterRuntimePolicy",
    status = "PolicyStatus",
    shortname = "crp",
    category = "vigil",
    doc = "What the selected pods and host processes may exec, connect to and map writable \
           and executable.",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterRuntimePolicySpec {
    /// Namespaces whose pods are selected (and match podSelector, if set); {} is every one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Pods selected in the namespaces namespaceSelector picks (every namespace without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Processes outside any pod; {} is all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_processes: Option<HostProcesses>,
    /// Only these containers of the selected pods (default: all of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1), inner(regex(pattern = CONTAINER_PATTERN), length(max = 63)))]
    pub containers: Option<Vec<String>>,
    /// Audit reports violations but never kills.
    #[serde(default)]
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecRules>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<ConnectRules>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryRules>,
}

// Our own type rather than k8s-openapi's, because that one ignores unknown keys: a typo such as
// `matchLabel` would silently select every pod.
/// A standard Kubernetes label selector; {} selects everything.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: SelectorOperator,
    /// Non-empty for In and NotIn, empty for Exists and DoesNotExist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostProcesses {
    /// Only processes under these cgroup v2 paths, e.g. /system.slice/nginx.service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1), inner(regex(pattern = CGROUP_PATTERN), length(max = PATH_MAX)))]
    pub cgroup_prefixes: Option<Vec<String>>,
    /// These cgroups hold containers that a container runtime (runc, crun) starts, as
    /// Docker's and Podman's do: the runtime's own work in a container's cgroup before the
    /// container enters its own mount namespace is not judged, as in a pod. Off (the
    /// default): everything in the cgroups is judged, whoever put it there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_runtime: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Mode {
    /// Violations are handled by each section's `action`.
    #[default]
    Enforce,
    /// Violations are reported, never killed (a dry run of `Kill`).
    Audit,
    /// Nothing is enforced or reported: every exec, connect and W^X mapping of the selected
    /// pods goes into a bounded per-node table the agent publishes as a
    /// `RuntimePolicyReport`, from which `vigil learn` writes the policy (`docs/learn.md`).
    /// The policy's own rules are not enforced while it learns.
    Learn,
}

// Ordered so that the strongest action is the largest.
/// What happens on a violation.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    JsonSchema,
)]
pub enum Action {
    /// Emit an event.
    #[default]
    Alert,
    /// Refuse the act in the kernel before it happens (EPERM; the process lives) and emit an
    /// event. Connects are refused on every kernel; execs and W^X mappings where the node
    /// runs BPF LSM, and elsewhere the process is killed after the act (the policy's status
    /// says so per node); foreign writes and 32-bit system calls are killed.
    Deny,
    /// Refuse the act where a hook runs before it (connect; exec and W^X with BPF LSM),
    /// SIGKILL the process in the kernel, and emit an event.
    Kill,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecRules {
    /// With entries: executables not matching any are violations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub allow: Option<Vec<ExecMatch>>,
    /// Violations even when also allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub deny: Option<Vec<ExecMatch>>,
    /// Deny: executing (or mapping executable) a file that did not come with the container's
    /// image is a violation, whatever its path: a file created or modified in the container's
    /// writable layer after it started, or one on a writable volume (emptyDir, tmpfs,
    /// hostPath). Decided in the kernel on the file itself; a path allow does not exempt it.
    /// Pods only: refused with hostProcesses. Default Allow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<Drift>,
    #[serde(default)]
    pub action: Action,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Drift {
    Deny,
    #[default]
    Allow,
}

// Not a Rust enum: an enum with data becomes a `oneOf`, which a structural schema does not
// allow; `minProperties`/`maxProperties` say "exactly one" instead.
/// Exactly one of path, prefix, memfd, sha256.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct ExecMatch {
    /// The executable's absolute path, e.g. /usr/sbin/nginx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = PATH_PATTERN), length(max = PATH_MAX))]
    pub path: Option<String>,
    /// Every executable under this directory; ends with /, e.g. /usr/lib/nginx/.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = PREFIX_PATTERN), length(max = PATH_MAX))]
    pub prefix: Option<String>,
    /// Executables run from a memfd (fileless execution); only true is meaningful.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // `null` as kube lists it for optional enums, so an explicit null passes as "absent".
    #[schemars(extend("enum" = [true, null]))]
    pub memfd: Option<bool>,
    /// allow only, with drift: Deny: an executable whose content has this SHA-256 digest
    /// (64 lowercase hexadecimal digits) is not drift wherever it sits, e.g. a vendored
    /// tool copied in at start-up. Path rules still apply to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub sha256: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectRules {
    /// Allow any Kubernetes Service (ClusterIP and port) and its endpoints.
    #[serde(default)]
    pub allow_services: bool,
    /// With entries (or allowServices): destinations not matching any are violations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub allow: Option<Vec<ConnectMatch>>,
    /// Violations even when also allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub deny: Option<Vec<ConnectMatch>>,
    #[serde(default)]
    pub action: Action,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectMatch {
    /// Destination network, IPv4 (10.0.0.0/8) or IPv6 (fd00::/8); host bits must be zero.
    #[schemars(regex(pattern = CIDR_PATTERN), extend("format" = "cidr"))]
    pub cidr: String,
    /// Destination ports as strings, "443" or "8000-8080"; omitted or empty: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(inner(regex(pattern = PORT_PATTERN)))]
    pub ports: Option<Vec<String>>,
    /// Omitted: TCP and UDP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemoryRules {
    /// Deny: a mapping that is writable and executable at once is a violation.
    pub write_execute: WriteExecute,
    /// Executables (absolute real paths, e.g. JIT runtimes) whose W^X mappings are allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = PATH_PATTERN), length(max = PATH_MAX)))]
    pub allow_executables: Vec<String>,
    /// Deny: writing into another process's memory is a violation (ptrace attach and
    /// pokes, process_vm_writev, opening /proc/<pid>/mem for writing). Default Allow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foreign_writes: Option<ForeignWrites>,
    /// Deny: any system call through the 32-bit entry (`int 0x80`) is a violation. That
    /// entry has calls no other hook judges (the legacy `mmap`, 32-bit `ptrace` and
    /// `process_vm_writev`); a pod of 64-bit programs never needs it. Default Allow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compat_syscalls: Option<CompatSyscalls>,
    #[serde(default)]
    pub action: Action,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum CompatSyscalls {
    Deny,
    #[default]
    Allow,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum ForeignWrites {
    Deny,
    #[default]
    Allow,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum WriteExecute {
    Deny,
    #[default]
    Allow,
}

// One entry per node rather than one set of conditions: every node's agent judges the policy
// on its own, and a list keyed by node lets each write only its entry (server-side apply, one
// field manager per node) without erasing the others' verdicts.
/// Written by the agents: each node's verdict on the policy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// One entry per node whose agent judged the policy, written by that agent only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["node"]))]
    pub nodes: Vec<NodeStatus>,
}

/// One node's agent's verdict on the policy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// The node whose agent wrote this entry.
    pub node: String,
    /// The generation of the policy this entry judges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`: True when this node enforces that generation; False (reason Invalid, the
    /// message naming every refused field) when it keeps the last good version in force.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// The first line of each generated CRD file.
pub const GENERATED_HEADER: &str =
    "# generated by cargo xtask crd; do not edit (source: agent/src/policy/crd.rs)\n";

/// The Helm chart's CRD files as `cargo xtask crd` writes them: (file name, YAML text).
pub fn crd_files() -> Result<Vec<(String, String)>, serde_yaml_ng::Error> {
    use kube::CustomResourceExt;
    [
        RuntimePolicy::crd(),
        ClusterRuntimePolicy::crd(),
        crate::learn::report::RuntimePolicyReport::crd(),
    ]
    .into_iter()
    .map(|crd| {
        let name = format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or_default());
        Ok((
            name,
            format!("{GENERATED_HEADER}{}", serde_yaml_ng::to_string(&crd)?),
        ))
    })
    .collect()
}
