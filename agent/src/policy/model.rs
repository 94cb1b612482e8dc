//! The validated policy model: both CRD kinds in one shape, with parsed values (CIDRs, port
//! ranges, exactly-one exec matches). Everything downstream (the compiler to kernel maps, the
//! user-space matchers, summaries) works on these types, never on the raw CRD structs.
use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
};

use ipnet::IpNet;
use kube::core::{Expression, Selector};

pub use super::crd::{
    Action, CompatSyscalls, ForeignWrites, LabelSelector, LabelSelectorRequirement, Mode, Protocol,
    SelectorOperator, WriteExecute,
};
use super::error::ValueError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyKind {
    RuntimePolicy,
    ClusterRuntimePolicy,
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::RuntimePolicy => "RuntimePolicy",
            Self::ClusterRuntimePolicy => "ClusterRuntimePolicy",
        })
    }
}

/// One valid policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub kind: PolicyKind,
    pub name: String,
    /// `Some` for a RuntimePolicy (defaulted to `default` like `kubectl apply`), `None` for a
    /// ClusterRuntimePolicy.
    pub namespace: Option<String>,
    /// The file it came from (`None` when it came from the API server).
    pub source: Option<PathBuf>,
    pub spec: PolicySpec,
}

impl Policy {
    /// `RuntimePolicy shop/web` or `ClusterRuntimePolicy baseline`: how logs and errors name it.
    pub fn id(&self) -> String {
        policy_id(self.kind, self.namespace.as_deref(), &self.name)
    }

    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }
}

pub(crate) fn policy_id(kind: PolicyKind, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PolicySpec {
    /// Pods the policy selects; `None`: no pods (a host-only ClusterRuntimePolicy).
    pub pods: Option<PodSelection>,
    /// Processes outside any pod; `None`: none.
    pub host: Option<HostSelection>,
    /// Only these containers of the selected pods; `None`: all of them.
    pub containers: Option<Vec<String>>,
    pub mode: Mode,
    pub exec: ExecRules,
    pub connect: ConnectRules,
    pub memory: MemoryRules,
}

impl PolicySpec {
    /// The action a violation of a section with `action` gets: Audit never kills.
    pub fn effective(&self, action: Action) -> Action {
        match self.mode {
            Mode::Enforce => action,
            // A learning policy's rules are not compiled (`enforce::compile`); named here for
            // completeness: never stronger than an alert.
            Mode::Audit | Mode::Learn => Action::Alert,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PodSelection {
    pub namespaces: NamespaceSelection,
    /// Pods within those namespaces; empty selects every pod.
    pub pods: Selector,
}

#[derive(Clone, Debug, PartialEq)]
pub enum NamespaceSelection {
    /// A RuntimePolicy's own namespace.
    Named(String),
    /// Namespaces whose labels match; empty selects every namespace.
    Matching(Selector),
}

#[derive(Clone, Debug, PartialEq)]
pub struct HostSelection {
    /// cgroup v2 paths relative to the cgroup root, without a trailing `/` (the root itself is
    /// `/`); a process is selected when its cgroup is one of them or below one. Empty: every
    /// process outside a pod.
    pub cgroup_prefixes: Vec<String>,
    /// `containerRuntime`: a container runtime starts the processes of these cgroups.
    pub container_runtime: bool,
}

impl HostSelection {
    /// Whether a host process in `cgroup` (relative to the cgroup root) is selected. Matching is
    /// by whole components: `/a/b` covers `/a/b/c`, not `/a/bc`.
    pub fn covers(&self, cgroup: &str) -> bool {
        self.cgroup_prefixes.is_empty()
            || self.cgroup_prefixes.iter().any(|prefix| {
                prefix == "/"
                    || cgroup
                        .strip_prefix(prefix.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
    }
}

// Matching is kube's (`SelectorExt::matches`); the policy keeps its own selector type only so
// that unknown keys and operators are refused with the field named.
impl From<&LabelSelector> for Selector {
    fn from(sel: &LabelSelector) -> Self {
        let labels = sel
            .match_labels
            .iter()
            .map(|(k, v)| Expression::Equal(k.clone(), v.clone()));
        let expressions = sel.match_expressions.iter().map(|req| {
            let key = req.key.clone();
            let values = || req.values.iter().cloned().collect();
            match req.operator {
                SelectorOperator::In => Expression::In(key, values()),
                SelectorOperator::NotIn => Expression::NotIn(key, values()),
                SelectorOperator::Exists => Expression::Exists(key),
                SelectorOperator::DoesNotExist => Expression::DoesNotExist(key),
            }
        });
        labels.chain(expressions).collect()
    }
}

/// `exec`: rules keep the order they were written in, so a rule's index is its position
/// (`exec.allow[1]`), which is how events name the deciding rule.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExecRules {
    /// Not empty: executables matching none of these are violations.
    pub allow: Vec<ExecRule>,
    pub deny: Vec<ExecRule>,
    /// `drift: Deny`: a file that did not come with the container's image is a violation.
    pub deny_drift: bool,
    pub action: Action,
}

impl ExecRules {
    /// Whether there is any exec rule (and so an exec action in force).
    pub fn has_rules(&self) -> bool {
        !self.allow.is_empty() || !self.deny.is_empty() || self.deny_drift
    }

    /// Whether `allow` lists places (paths, prefixes, memfd): executables elsewhere are
    /// violations. `sha256` entries alone vouch for content against drift and allow no place.
    pub fn has_allowlist(&self) -> bool {
        self.allow.iter().any(|r| !matches!(r, ExecRule::Sha256(_)))
    }

    /// The `sha256` entries of `allow`.
    pub fn digests(&self) -> impl Iterator<Item = &[u8; 32]> {
        self.allow.iter().filter_map(|r| match r {
            ExecRule::Sha256(d) => Some(d),
            _ => None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ExecRule {
    /// An exact, absolute, canonical path.
    Path(String),
    /// An absolute, canonical directory ending in `/`.
    Prefix(String),
    /// Any executable run from a memfd.
    Memfd,
    /// An executable whose content has this SHA-256 digest (allow only, against drift).
    Sha256([u8; 32]),
}

impl ExecRule {
    /// Whether this rule matches an exec of `path` (the executable's real path); `memfd`: the
    /// kernel flagged it as run from a memfd.
    pub fn matches(&self, path: &str, memfd: bool) -> bool {
        match self {
            Self::Path(p) => path == p,
            Self::Prefix(p) => path.starts_with(p.as_str()),
            Self::Memfd => memfd,
            // A digest names content, which a path does not show.
            Self::Sha256(_) => false,
        }
    }
}

impl fmt::Display for ExecRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Path(p) => write!(f, "path {p}"),
            Self::Prefix(p) => write!(f, "prefix {p}"),
            Self::Memfd => f.write_str("memfd"),
            Self::Sha256(d) => write!(f, "sha256 {}", hex(d)),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConnectRules {
    pub allow_services: bool,
    /// Not empty (or `allow_services`): destinations matching none are violations.
    pub allow: Vec<ConnectRule>,
    pub deny: Vec<ConnectRule>,
    pub action: Action,
}

impl ConnectRules {
    /// Whether this section restricts destinations to an allowlist.
    pub fn has_allowlist(&self) -> bool {
        self.allow_services || !self.allow.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConnectRule {
    /// Host bits are zero; never an IPv4-mapped IPv6 network.
    pub cidr: IpNet,
    /// Empty: every port (see [`ConnectRule::port_ranges`]).
    pub ports: Vec<PortRange>,
    /// `None`: TCP and UDP.
    pub protocol: Option<Protocol>,
}

impl ConnectRule {
    /// The ranges this rule covers: `[PortRange::ALL]` when it names no port.
    pub fn port_ranges(&self) -> Vec<PortRange> {
        if self.ports.is_empty() {
            vec![PortRange::ALL]
        } else {
            self.ports.clone()
        }
    }

    pub fn covers_protocol(&self, protocol: Protocol) -> bool {
        self.protocol.is_none_or(|p| p == protocol)
    }

    pub fn matches(&self, addr: std::net::IpAddr, port: u16, protocol: Protocol) -> bool {
        self.covers_protocol(protocol)
            && self.cidr.contains(&addr)
            && self.port_ranges().iter().any(|r| r.contains(port))
    }
}

/// An inclusive port range; a single port has `lo == hi`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    /// What a rule without ports covers. Port 0 included: a destination port of 0 is odd, not
    /// harmless, so "every port" really is every port.
    pub const ALL: Self = Self {
        lo: 0,
        hi: u16::MAX,
    };

    pub fn contains(self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl FromStr for PortRange {
    type Err = ValueError;

    /// `"443"` or `"8000-8080"`: ports 1-65535, `lo <= hi`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let port = |p: &str| -> Result<u16, ValueError> {
            // Digits only, without leading zeros: as the CRD's pattern says.
            if p.is_empty()
                || !p.bytes().all(|b| b.is_ascii_digit())
                || (p.len() > 1 && p.starts_with('0'))
            {
                return Err(ValueError::PortSyntax(s.to_owned()));
            }
            match p.parse::<u32>() {
                Ok(0) => Err(ValueError::PortZero(s.to_owned())),
                Ok(n) => u16::try_from(n).map_err(|_| ValueError::PortTooLarge(s.to_owned())),
                // Only digits, so the only failure is overflow.
                Err(_) => Err(ValueError::PortTooLarge(s.to_owned())),
            }
        };
        let (lo, hi) = match s.split_once('-') {
            Some((lo, hi)) => (port(lo)?, port(hi)?),
            None => {
                let p = port(s)?;
                (p, p)
            }
        };
        if lo > hi {
            return Err(ValueError::PortRangeReversed(s.to_owned()));
        }
        Ok(Self { lo, hi })
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemoryRules {
    /// `Allow` when the policy has no `memory` section.
    pub write_execute: WriteExecute,
    /// Real paths of executables whose W^X mappings are allowed.
    pub allow_executables: Vec<String>,
    /// `Deny`: writes into another process's memory are violations.
    pub foreign_writes: ForeignWrites,
    /// `Deny`: every system call through the 32-bit entry is a violation.
    pub compat_syscalls: CompatSyscalls,
    pub action: Action,
}

/// Lowercase hexadecimal, as policies and events write a digest.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
