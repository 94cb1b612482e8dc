//! Policy decisions in the kernel: which set applies to the current task, and what it says
//! about an exec, a connect or a W^X mapping. Allowed behaviour never leaves the kernel.
use agent_common::{
    AddrKeyData, Config, EventHeader, MAX_CGROUP_LEVELS, MAX_PORT_RANGES, PolicySet, PortRules,
    ServiceKey, action, rule_id, set_flags,
};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_pid_tgid, generated::bpf_send_signal,
    },
    maps::lpm_trie::Key,
};

use crate::{
    maps::{CGROUP_SETS, CONNECT_ALLOW, CONNECT_DENY, POLICY_SETS, SERVICES, TASK_ORIGIN},
    task::{ancestor_helper, ancestor_id_in, config, own_cgroup, read_kernel, read_kernel_ptr},
};

const SIGKILL: u32 = 9;

pub use agent_common::decide::{Violation, exec as decide_exec, fail_closed, violation};

/// The deepest bound ancestor of the current task's cgroup: its id and its set (0, 0: none).
/// Inlined, so the branch this kernel does not take is never verified in its callers' paths.
#[inline(always)]
pub fn live_binding() -> (u64, u32) {
    if ancestor_helper() {
        // SAFETY: a plain helper call without pointer arguments.
        return deepest_bound(|level| unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) });
    }
    // The cgroup is read once; its ancestors' ids are an array in it.
    let Some(cfg) = config() else {
        return (0, 0);
    };
    let Some((cgrp, own)) = own_cgroup(cfg) else {
        return (0, 0);
    };
    deepest_bound(|level| ancestor_id_in(cfg, cgrp, own, level))
}

/// The deepest ancestor, by `id_at(level)`, that a policy set is bound to.
#[inline(always)]
fn deepest_bound(id_at: impl Fn(u32) -> u64) -> (u64, u32) {
    let mut binding = 0;
    let mut set = 0;
    for level in 0..MAX_CGROUP_LEVELS {
        let id = id_at(level);
        if id == 0 {
            break;
        }
        // SAFETY: the value is copied out at once.
        if let Some(bound) = unsafe { CGROUP_SETS.get(id) } {
            binding = id;
            set = *bound;
        }
    }
    (binding, set)
}

/// The binding the current process is pinned to (0: none).
pub fn origin(tgid: u32) -> u64 {
    // SAFETY: the value is copied out at once.
    unsafe { TASK_ORIGIN.get(tgid) }.copied().unwrap_or(0)
}

/// Pins process `tgid` to `binding` unless it is pinned already: the first policy a process
/// is under stays with it.
pub fn pin_origin(tgid: u32, binding: u64) {
    if binding != 0 {
        let _ = TASK_ORIGIN.insert(tgid, binding, u64::from(BPF_NOEXIST));
    }
}

/// The policy set that decides for the current process (0: none): the set of the binding it
/// is pinned to, even after it was moved elsewhere, else the live one (and it is pinned). A
/// process still in its container runtime's hand-over is the runtime's: no set, no pin.
pub fn current_set() -> u32 {
    set_deciding(true)
}

/// As [`current_set`], for the deepest chains of calls (`judge_mapped_file`), whose stack has
/// no room for the walk of a parent's cgroups that settles a hand-over with no verdict yet
/// (`handover.rs`): such a process is decided as the pod's this once, neither pinned nor
/// settled, and its next decision elsewhere settles it.
pub fn current_set_shallow() -> u32 {
    set_deciding(false)
}

#[inline(always)]
fn set_deciding(settle: bool) -> u32 {
    let (binding, set) = live_binding();
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let pinned = origin(tgid);
    if pinned != 0 && pinned != binding {
        // SAFETY: the value is copied out at once.
        if let Some(pinned_set) = unsafe { CGROUP_SETS.get(pinned) } {
            return *pinned_set;
        }
    }
    if pinned == 0 {
        if binding != 0
            && let Some(cfg) = crate::task::config()
        {
            let runtimes = if settle {
                crate::handover::active(cfg, tgid, binding)
            } else {
                match crate::handover::recorded(cfg, tgid) {
                    Some(runtimes) => runtimes,
                    None if crate::handover::hands_over(binding) => return set,
                    None => false,
                }
            };
            if runtimes {
                return 0;
            }
        }
        pin_origin(tgid, binding);
    }
    set
}

/// The id of `cgroup` (a `struct cgroup`).
pub fn cgroup_id(cfg: &Config, cgroup: *const u8) -> Option<u64> {
    let kn = read_kernel_ptr(cgroup, cfg.kernel.cgroup_kn)?;
    read_kernel(kn, cfg.kernel.kn_id)
}

/// The id of the deepest ancestor of `cgroup` (itself included) whose id passes `wanted`, 0:
/// none within [`MAX_CGROUP_LEVELS`] levels.
#[inline(always)]
pub fn ancestor_where(cfg: &Config, cgroup: *const u8, wanted: impl Fn(u64) -> bool) -> u64 {
    let mut cgroup = cgroup;
    for _ in 0..MAX_CGROUP_LEVELS {
        let Some(id) = cgroup_id(cfg, cgroup) else {
            break;
        };
        if wanted(id) {
            return id;
        }
        match read_kernel_ptr(cgroup, cfg.kernel.cgroup_parent) {
            Some(parent) => cgroup = parent,
            None => break,
        }
    }
    0
}

/// The deepest bound ancestor of `cgroup` (itself included), 0: none.
pub fn bound_ancestor(cfg: &Config, cgroup: *const u8) -> u64 {
    // SAFETY: only checked for presence.
    ancestor_where(cfg, cgroup, |id| unsafe { CGROUP_SETS.get(id) }.is_some())
}

/// A copy of set `set`, taken once: a program decides, refuses and kills on this one reading.
/// User space rewrites a set's slot only a grace period after the last binding pointing at it
/// was repointed (`enforce/grace.rs`); the copy makes the gate, the decision and the kill agree
/// even if a slot were rewritten under a running program, so a reading can never admit a
/// process under `Kill` and then refuse it without killing.
#[inline(always)]
pub fn policy_set(set: u32) -> Option<PolicySet> {
    if set == 0 {
        return None;
    }
    POLICY_SETS.get(set).copied()
}

/// Set `set` read in place, for a reader whose few reads of it follow one another with no
/// work between (nothing a copy would make agree better), on a call chain where the copy's
/// 40 bytes of stack do not fit: the W^X chains reach 512 bytes, the combined limit of
/// kernels before 6.13 (`ebpf::stack_depth`).
#[inline(always)]
pub fn policy_set_in_place(set: u32) -> Option<&'static PolicySet> {
    if set == 0 {
        return None;
    }
    POLICY_SETS.get(set)
}

/// Marks a record's header with a violation, or as learned when `v` is an allowed act of a
/// set that learns (nothing for a plain observation).
pub fn mark(header: &mut EventHeader, v: Violation) {
    if v.is_hit() {
        header.verdict = agent_common::verdict::VIOLATION;
        header.action = v.action;
        header.rule = v.rule;
    } else if v.rule != 0 {
        header.verdict = agent_common::verdict::LEARNED;
        header.rule = v.rule;
    }
}

/// SIGKILL to the current process, which dies before it returns to user space. When the
/// kernel will not send it now (the helper fails for a task it deems exiting or whose memory
/// is being switched, or while a deferred signal of this CPU is still in flight), the kill is
/// counted and recorded for the task's way back to user space (`kill.rs`), which tries again
/// at every system call exit until it is sent: a Kill that cannot be sent here is not dropped.
pub fn send_sigkill() {
    if !try_sigkill() {
        crate::diag::count(
            const { agent_common::probe_error::id("sigkill") },
            agent_common::probe_error::OTHER,
        );
        crate::kill::kill_at_syscall_exit((bpf_get_current_pid_tgid() >> 32) as u32);
    }
}

/// SIGKILL to the current process; false when the kernel refused to send it.
pub fn try_sigkill() -> bool {
    // SAFETY: signals the current process only.
    unsafe { bpf_send_signal(SIGKILL) == 0 }
}

/// Carries out a violation's action from a tracing hook, after the act: Kill kills, and so
/// does Deny, which only a hook before the act can carry out (fail closed). Gives the
/// violation as carried out, to be reported as such.
#[inline(always)]
pub fn enforce(violation: Violation) -> Violation {
    if violation.is_hit() && action::refuses(violation.action) {
        send_sigkill();
        return Violation {
            action: action::KILL,
            ..violation
        };
    }
    violation
}

/// Carries out the current process's exec policy on a file that could not be looked at (no
/// scratch entry to walk its path in, `scratch.rs`): as a file whose path cannot be walked,
/// so Kill kills and Deny, after the act, kills too (fail closed).
#[inline(never)]
pub fn unverifiable_now() {
    let set = current_set();
    if let Some(ps) = policy_set(set) {
        enforce(fail_closed(set, &ps));
    }
}

/// Whether a BPF LSM program refuses `v` before the act (it runs for `bit`, one of
/// [`agent_common::prevent`], and the action refuses): a tracing hook that sees the request
/// first leaves it to that program, which reports it.
pub fn prevented(cfg: &Config, bit: u32, v: Violation) -> bool {
    v.is_hit() && action::refuses(v.action) && cfg.prevent & bit != 0
}

const NO_MATCH: u32 = u32::MAX;

/// The rule index of the first range matching, or [`NO_MATCH`].
fn port_match(rules: &PortRules, port: u16, proto_bit: u16) -> u32 {
    for i in 0..MAX_PORT_RANGES {
        if i as u32 >= rules.count {
            break;
        }
        let r = &rules.ranges[i];
        if r.protocols & proto_bit != 0 && r.lo <= port && port <= r.hi {
            return r.rule.into();
        }
    }
    NO_MATCH
}

/// IPv4 as `::ffff:a.b.c.d`, so one trie serves both families.
pub fn mapped_v6(family_v4: bool, addr: &[u8; 16]) -> [u8; 16] {
    if !family_v4 {
        return *addr;
    }
    let mut out = [0u8; 16];
    out[10] = 0xff;
    out[11] = 0xff;
    out[12] = addr[0];
    out[13] = addr[1];
    out[14] = addr[2];
    out[15] = addr[3];
    out
}

/// Decides a connect to `addr` (IPv6 or mapped IPv4) and `port`.
pub fn decide_connect(
    set: u32,
    ps: &PolicySet,
    addr: &[u8; 16],
    port: u16,
    protocol: u16,
) -> Violation {
    let proto_bit = match protocol {
        6 => agent_common::proto_mask::TCP,
        17 => agent_common::proto_mask::UDP,
        _ => 0,
    };
    let mut data: AddrKeyData = [0; 20];
    data[..4].copy_from_slice(&set.to_be_bytes());
    data[4..].copy_from_slice(addr);
    let key = Key::new(160, data);
    if let Some(rules) = CONNECT_DENY.get(&key) {
        let rule = port_match(rules, port, proto_bit);
        if rule != NO_MATCH {
            return violation(ps.connect_action, set, rule);
        }
    }
    if ps.flags & set_flags::CONNECT_ALLOWLIST == 0 {
        return Violation::ALLOWED;
    }
    if let Some(rules) = CONNECT_ALLOW.get(&key)
        && port_match(rules, port, proto_bit) != NO_MATCH
    {
        return Violation::ALLOWED;
    }
    if ps.flags & set_flags::CONNECT_ALLOW_SERVICES != 0 {
        let service = ServiceKey {
            addr: *addr,
            port,
            protocol,
        };
        // SAFETY: only checked for presence.
        if unsafe { SERVICES.get(service) }.is_some() {
            return Violation::ALLOWED;
        }
    }
    violation(ps.connect_action, set, rule_id::NOT_ALLOWED)
}
