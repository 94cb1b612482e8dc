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
use agent_common::Config;

use crate::{
    maps::HANDOVER,
    policy::{bound_ancestor, live_binding, origin},
    task::{current_task, read_kernel_ptr},
};

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

/// The namespace of process `tgid` (the current task)'s hand-over, while it lasts. An entry
/// whose process has left the namespace is removed: the hand-over never resumes.
fn current_handover(cfg: &Config, tgid: u32) -> Option<u64> {
    // SAFETY: the value is copied out at once.
    let ns = (unsafe { HANDOVER.get(tgid) }).copied()?;
    if mnt_ns(cfg, current_task()) == Some(ns) {
        return Some(ns);
    }
    let _ = HANDOVER.remove(tgid);
    None
}

/// Whether process `tgid` (the current task) is still in its runtime's hand-over.
pub fn active(cfg: &Config, tgid: u32) -> bool {
    current_handover(cfg, tgid).is_some()
}

/// `moved` (process `moved_tgid`, pinned nowhere) was just put into cgroup `dst` by the
/// current task.
pub fn on_move(cfg: &Config, dst: *const u8, moved: *const u8, moved_tgid: u32, mover_tgid: u32) {
    if mover_tgid == moved_tgid || !unpoliced(mover_tgid) || bound_ancestor(cfg, dst) == 0 {
        return;
    }
    let (Some(ns), Some(mover_ns)) = (mnt_ns(cfg, moved), mnt_ns(cfg, current_task())) else {
        return;
    };
    if ns == mover_ns {
        let _ = HANDOVER.insert(moved_tgid, ns, 0);
    }
}

/// What a fork means for the hand-over. The current task is the parent, pinned nowhere.
/// Returns whether the child is the runtime's (and so must not be pinned to the pod).
pub fn on_fork(cfg: &Config, parent_tgid: u32, child: *const u8, child_tgid: u32) -> bool {
    let child_ns = mnt_ns(cfg, child);
    let same_ns = |ns: u64| child_ns == Some(ns);
    if let Some(ns) = current_handover(cfg, parent_tgid) {
        // The runtime's own children stay the runtime's while they share its namespace; one
        // cloned into a namespace of its own is the container's from birth.
        return same_ns(ns) && HANDOVER.insert(child_tgid, ns, 0).is_ok();
    }
    if live_binding().0 != 0 {
        return false;
    }
    // `CLONE_INTO_CGROUP`: born in a policed cgroup to a parent outside every policy.
    let born_into = read_kernel_ptr(child, cfg.kernel.task_cgroups)
        .and_then(|cset| read_kernel_ptr(cset, cfg.kernel.css_set_dfl_cgrp));
    let Some(cgroup) = born_into else {
        return false;
    };
    if bound_ancestor(cfg, cgroup) == 0 {
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
