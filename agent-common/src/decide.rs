//! The exec decision, shared: the kernel runs it on what its LPM lookups found, and user space
//! runs the very same function on its own lookup of the same compiled entries when the kernel
//! could not key a path. One rule set, so the two cannot drift apart.
use crate::{PathRule, PolicySet, action, path_verdict, rule_id, set_flags};

/// A decision: whether it is a violation, what to do and which rule said so. A plain struct
/// rather than an `Option`: LLVM may leave an empty Option's payload undefined (even a stale
/// pointer), which the verifier then refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Violation {
    pub hit: u16,
    pub action: u16,
    pub rule: u32,
}

impl Violation {
    pub const ALLOWED: Self = Self {
        hit: 0,
        action: 0,
        rule: 0,
    };

    #[inline(always)]
    pub fn is_hit(&self) -> bool {
        self.hit != 0
    }

    /// An allowed act of `set`, reported for learning ([`crate::verdict::LEARNED`]): no hit,
    /// the set in the rule.
    #[inline(always)]
    pub fn learned(set: u32) -> Self {
        Self {
            hit: 0,
            action: 0,
            rule: rule_id::pack(set, 0),
        }
    }

    /// Allowed, and reported for learning when the set learns (`flags` of its policy set).
    #[inline(always)]
    pub fn allowed_in(set: u32, flags: u32) -> Option<Self> {
        (flags & crate::set_flags::LEARN != 0).then(|| Self::learned(set))
    }
}

#[inline(always)]
pub fn violation(action: u32, set: u32, index: u32) -> Violation {
    Violation {
        hit: 1,
        action: action as u16,
        rule: rule_id::pack(set, index),
    }
}

/// Decides an exec from the longest matches of its real path and (for scripts) its script
/// path. `keyed`: the real path fitted the kernel's keys; if not, the allowlist cannot be
/// judged in the kernel and user space decides (alert only). `drift`: the file did not come
/// with the container's image (decided on the file, so whether the path was keyed does not
/// matter); a deny rule that names the path is reported before it, an allowlist after it.
#[inline(always)]
pub fn exec(
    set: u32,
    ps: &PolicySet,
    memfd: bool,
    drift: bool,
    keyed: bool,
    exe: &PathRule,
    script: Option<&PathRule>,
) -> Violation {
    if memfd && ps.flags & set_flags::EXEC_DENY_MEMFD != 0 {
        return violation(ps.exec_action, set, ps.memfd_rule);
    }
    if exe.exec == path_verdict::DENY {
        return violation(ps.exec_action, set, exe.exec_rule.into());
    }
    if let Some(script) = script
        && script.exec == path_verdict::DENY
    {
        return violation(ps.exec_action, set, script.exec_rule.into());
    }
    if drift && ps.flags & set_flags::EXEC_DENY_DRIFT != 0 {
        return violation(ps.exec_action, set, ps.drift_rule);
    }
    if ps.flags & set_flags::EXEC_ALLOWLIST != 0 && keyed {
        // A script must be allowed as well as its interpreter.
        let script_ok = script.is_none_or(|s| s.exec == path_verdict::ALLOW);
        let exe_ok = exe.exec == path_verdict::ALLOW
            || (memfd && ps.flags & set_flags::EXEC_ALLOW_MEMFD != 0);
        if !exe_ok || !script_ok {
            return violation(ps.exec_action, set, rule_id::NOT_ALLOWED);
        }
    }
    Violation::ALLOWED
}

/// The decision for a file whose real path cannot be verified: not on any allowlist; under a
/// deny list with `Deny` or `Kill`, refused. Alert-only deny lists leave it to user space, which reads
/// /proc while the process lives.
#[inline(always)]
pub fn fail_closed(set: u32, ps: &PolicySet) -> Violation {
    if ps.flags & set_flags::EXEC_ALLOWLIST != 0 {
        return violation(ps.exec_action, set, rule_id::NOT_ALLOWED);
    }
    if action::refuses(ps.exec_action as u16) {
        return violation(ps.exec_action, set, rule_id::UNVERIFIABLE);
    }
    Violation::ALLOWED
}
