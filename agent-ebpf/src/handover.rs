//! The container runtime's hand-over. A runtime starts a container's first process outside
//! the pod, puts it into the container's cgroup (by writing `cgroup.procs`, or by cloning it
//! there with `CLONE_INTO_CGROUP`), and only then does that process enter the container's
//! own mount namespace and exec the entrypoint. In between, runc 1.1 execs itself again from
//! a memfd (its CVE-2019-5736 defence), inside the pod's cgroup: judged as the pod's, an exec
//! allowlist with `Kill` kills the runtime and the pod never starts.
//!
//! So a process that an unpoliced process (the runtime) put into a policed cgroup, while both
//! were in the same mount namespace, is the runtime's until it leaves that namespace: the
//! first exec inside the container's mount namespace (the entrypoint, every `kubectl exec`)
//! is judged as the pod's, and ends the hand-over. Everything here is the kernel's own
//! record: who moved or cloned the process, which cgroups they were in, which mount
//! namespace each task is in. Nothing a process in the pod can do starts a hand-over: a
//! policed mover or parent never hands over, and every process forked inside a pod is pinned
//! to its policy at fork (`TASK_ORIGIN`).
//!
//! The kernel fires `cgroup_attach_task` only after the move: the moved process already runs
//! in the policed cgroup, and can exec there, before the move's verdict is recorded (seen
//! once on the pure cgroup v2 node: runc's memfd re-exec landed in that window and was
//! killed). So every move into a policed cgroup leaves a verdict, the runtime's namespace or
//! [`NOT_THE_RUNTIMES`]; a process pinned nowhere in a policed cgroup with no verdict at all
//! (its move not yet recorded, or made before the agent started) is judged by its parent
//! instead: the runtime's while that parent is outside every policy and both share the
//! mount namespace, the pod's otherwise.
use agent_common::{Config, set_flags};

use crate::{
    maps::{CGROUP_SETS, HANDOVER},
    policy::{ancestor_where, bound_ancestor, live_binding, origin, policy_set},
    task::{current_task, read_kernel, read_kernel_ptr},
};

/// The verdict of a move (or a hand-over that ended): the process is not the runtime's. No
/// mount namespace is at address 0.
const NOT_THE_RUNTIMES: u64 = 0;

/// The mount namespace `task` is in (the `mnt_namespace` address), if it can be read.
fn mnt_ns(cfg: &Config, task: *const u8) -> Option<u64> {
    let nsproxy = read_kernel_ptr(task, cfg.kernel.task_nsproxy)?;
    read_kernel_ptr(nsproxy, cfg.kernel.nsproxy_mnt_ns).map(|ns| ns as u64)
}

/// Whether the current task is outside every policy: no bound cgroup above it and no
/// binding it was pinned to.
fn unpoliced(tgid: u32) -> bool {
    live_binding().0 == 0 && origin(tgid) == 0
}

/// The namespace of process `tgid` (the current task)'s hand-over, while it lasts. A process
/// that has left the namespace is marked [`NOT_THE_RUNTIMES`]: the hand-over never resumes.
fn current_handover(cfg: &Config, tgid: u32) -> Option<u64> {
    // SAFETY: the value is copied out at once.
    let ns = (unsafe { HANDOVER.get(tgid) }).copied()?;
    if ns != NOT_THE_RUNTIMES && mnt_ns(cfg, current_task()) == Some(ns) {
        return Some(ns);
    }
    if ns != NOT_THE_RUNTIMES {
        let _ = HANDOVER.insert(tgid, NOT_THE_RUNTIMES, 0);
    }
    None
}

/// Whether a container runtime starts the processes under `binding` (a bound cgroup's id):
/// a pod's binding, with or without a policy, or a host binding whose every policy says
/// `containerRuntime`. Elsewhere nothing is the runtime's: a service systemd clones into its
/// cgroup shares systemd's mount namespace for good.
pub fn hands_over(binding: u64) -> bool {
    // SAFETY: the value is copied out at once.
    match unsafe { CGROUP_SETS.get(binding) }.copied() {
        None => false,
        Some(0) => true,
        Some(set) => policy_set(set).is_some_and(|ps| ps.flags & set_flags::RUNTIME_HANDOVER != 0),
    }
}

/// Whether the recorded verdict on process `tgid` (the current task, pinned nowhere) makes it
/// its runtime's; `None`: no verdict recorded yet.
pub fn recorded(cfg: &Config, tgid: u32) -> Option<bool> {
    // SAFETY: only checked for presence.
    unsafe { HANDOVER.get(tgid) }?;
    Some(current_handover(cfg, tgid).is_some())
}

/// Whether process `tgid` (the current task, pinned nowhere, in the cgroup `binding`
/// covers) is its runtime's.
pub fn active(cfg: &Config, tgid: u32, binding: u64) -> bool {
    runtime_ns(cfg, tgid, binding).is_some()
}

/// The namespace of process `tgid` (the current task, pinned nowhere)'s hand-over: by its
/// move's verdict, or, with none recorded and `binding` (the one covering its cgroup, 0:
/// none) handing over, by its parent, which then becomes its verdict.
#[inline(always)]
fn runtime_ns(cfg: &Config, tgid: u32, binding: u64) -> Option<u64> {
    // SAFETY: only checked for presence.
    if unsafe { HANDOVER.get(tgid) }.is_some() {
        return current_handover(cfg, tgid);
    }
    if binding == 0 {
        return None;
    }
    let verdict = if hands_over(binding) {
        parent_runtime_ns(cfg, current_task()).unwrap_or(NOT_THE_RUNTIMES)
    } else {
        NOT_THE_RUNTIMES
    };
    let _ = HANDOVER.insert(tgid, verdict, 0);
    (verdict != NOT_THE_RUNTIMES).then_some(verdict)
}

/// The mount namespace `task` shares with its real parent, if that parent is outside every
/// policy (no binding pinned, no bound cgroup above it).
#[inline(always)]
fn parent_runtime_ns(cfg: &Config, task: *const u8) -> Option<u64> {
    let k = &cfg.kernel;
    let parent = read_kernel_ptr(task, k.task_real_parent)?;
    let parent_tgid: i32 = read_kernel(parent, k.task_tgid)?;
    if origin(parent_tgid as u32) != 0 {
        return None;
    }
    let cgroup = read_kernel_ptr(parent, k.task_cgroups)
        .and_then(|cset| read_kernel_ptr(cset, k.css_set_dfl_cgrp))?;
    // Inlined: this runs at the bottom of the deepest chains of calls (`current_set`).
    // SAFETY: only checked for presence.
    if ancestor_where(cfg, cgroup, |id| unsafe { CGROUP_SETS.get(id) }.is_some()) != 0 {
        return None;
    }
    let ns = mnt_ns(cfg, task)?;
    (mnt_ns(cfg, parent)? == ns).then_some(ns)
}

/// `moved` (process `moved_tgid`, pinned nowhere) was just put into cgroup `dst` by the
/// current task.
pub fn on_move(cfg: &Config, dst: *const u8, moved: *const u8, moved_tgid: u32, mover_tgid: u32) {
    let binding = bound_ancestor(cfg, dst);
    if binding == 0 {
        return;
    }
    let verdict = match (mnt_ns(cfg, moved), mnt_ns(cfg, current_task())) {
        (Some(ns), Some(mover_ns))
            if ns == mover_ns
                && mover_tgid != moved_tgid
                && unpoliced(mover_tgid)
                && hands_over(binding) =>
        {
            ns
        }
        _ => NOT_THE_RUNTIMES,
    };
    let _ = HANDOVER.insert(moved_tgid, verdict, 0);
}

/// What a fork means for the hand-over. The current task is the parent, pinned nowhere.
/// Returns whether the child is the runtime's (and so must not be pinned to the pod).
pub fn on_fork(cfg: &Config, parent_tgid: u32, child: *const u8, child_tgid: u32) -> bool {
    let child_ns = mnt_ns(cfg, child);
    let same_ns = |ns: u64| child_ns == Some(ns);
    let binding = live_binding().0;
    if let Some(ns) = runtime_ns(cfg, parent_tgid, binding) {
        // The runtime's own children stay the runtime's while they share its namespace; one
        // cloned into a namespace of its own is the container's from birth.
        return same_ns(ns) && HANDOVER.insert(child_tgid, ns, 0).is_ok();
    }
    if binding != 0 {
        return false;
    }
    // `CLONE_INTO_CGROUP`: born in a policed cgroup to a parent outside every policy.
    let born_into = read_kernel_ptr(child, cfg.kernel.task_cgroups)
        .and_then(|cset| read_kernel_ptr(cset, cfg.kernel.css_set_dfl_cgrp));
    let Some(cgroup) = born_into else {
        return false;
    };
    if !hands_over(bound_ancestor(cfg, cgroup)) {
        return false;
    }
    match mnt_ns(cfg, current_task()) {
        Some(ns) if same_ns(ns) => HANDOVER.insert(child_tgid, ns, 0).is_ok(),
        _ => false,
    }
}

/// A process id that is gone, or reused by a new process: no hand-over carries over.
pub fn forget(tgid: u32) {
    let _ = HANDOVER.remove(tgid);
}
