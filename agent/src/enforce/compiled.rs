//! What a policy set compiles into: the kernel's set record, its path and address entries,
//! and the rule each index stands for. The behaviours' compile steps
//! (`crate::behaviour::*::compile`) fill a [`Staging`]; `super::compile` finishes it.
use std::collections::BTreeMap;

use agent_common::{PathRule, PolicySet, PortRange as KernelRange, PortRules, action};
use ipnet::IpNet;

use crate::policy::Action;

/// Which rule of which policy an index in a set stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef {
    /// Index into the set's policies.
    pub policy: usize,
    /// Field path, e.g. `spec.exec.deny[0]`.
    pub field: String,
    /// What the rule says, e.g. `prefix /tmp/`.
    pub text: String,
}

/// An `EXEC_PATHS` key before the set id is put in front: the path, and whether it is exact
/// (stored with its terminating NUL) or a directory prefix.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PathEntry {
    pub path: String,
    pub exact: bool,
}

impl PathEntry {
    /// The bytes the LPM key compares, after the set id.
    pub fn key_bytes(&self) -> Vec<u8> {
        let mut bytes = self.path.as_bytes().to_vec();
        if self.exact {
            bytes.push(0);
        }
        bytes
    }

    pub fn covers(&self, other: &PathEntry) -> bool {
        other.key_bytes().starts_with(&self.key_bytes())
    }
}

/// One policy set, compiled.
#[derive(Debug, Clone, Default)]
pub struct CompiledSet {
    pub set: PolicySet,
    pub paths: BTreeMap<PathEntry, PathRule>,
    pub connect_allow: BTreeMap<IpNet, PortRules>,
    pub connect_deny: BTreeMap<IpNet, PortRules>,
    /// Rule index -> rule. Indices are positions in this list.
    pub rules: Vec<RuleRef>,
    /// Port ranges beyond what the kernel keeps for one CIDR (logged, never silent).
    pub dropped_ranges: Vec<String>,
    /// The `exec.allow` `sha256` digests of the set's policies: content that is not drift.
    pub digests: Vec<[u8; 32]>,
}

impl CompiledSet {
    /// Gives the rule at `field` of policy `policy` its index in the set.
    pub fn rule(&mut self, policy: usize, field: String, text: String) -> u16 {
        self.rules.push(RuleRef {
            policy,
            field,
            text,
        });
        (self.rules.len() - 1) as u16
    }
}

/// What the compile steps collect over all policies of a set, before the kernel's entries
/// are worked out from it (longest-match entries carry what their covering entries say).
#[derive(Debug, Default)]
pub struct Staging {
    pub out: CompiledSet,
    pub exec_allow: Vec<(PathEntry, u16)>,
    pub exec_deny: Vec<(PathEntry, u16)>,
    pub wx_exempt: Vec<PathEntry>,
    pub allow_nets: Vec<(IpNet, KernelRange)>,
    pub deny_nets: Vec<(IpNet, KernelRange)>,
}

/// A policy action as the kernel encodes it (a larger number is a stronger action).
pub fn kernel_action(a: Action) -> u32 {
    u32::from(match a {
        Action::Alert => action::ALERT,
        Action::Deny => action::DENY,
        Action::Kill => action::KILL,
    })
}
