//! A process moved out of the cgroup its policy binding covers (by anyone who can write
//! `cgroup.procs`). Decisions keep using the binding the process is pinned to, so the move
//! escapes nothing; the move itself is reported with both cgroups, and under `Kill` the
//! moved process dies at its next system call, as does a policed process that moved it. A
//! process pinned nowhere that the container runtime moves into a policed cgroup starts its
//! hand-over (`handover.rs`).
use agent_common::{MoveEvent, action, kind, mode, rule_id};
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::raw_tracepoint, programs::RawTracePointContext,
};

use crate::diag::entry_points;
use crate::{
    kill::kill_at_syscall_exit,
    maps::CGROUP_SETS,
    policy::{
        ancestor_where, cgroup_id, current_set, mark, origin, policy_set, send_sigkill, violation,
    },
    task::{config, emit, header, read_kernel, read_kernel_ptr},
};

entry_points! {
    /// `cgroup_attach_task(dst_cgrp, path, task, threadgroup)`, after the move.
    #[raw_tracepoint(tracepoint = "cgroup_attach_task")]
    fn cgroup_attach_task(ctx: RawTracePointContext) -> i32 = try_attach(&ctx);
}

fn try_attach(ctx: &RawTracePointContext) -> Result<(), i64> {
    let cfg = config().ok_or(1)?;
    if cfg.mode != mode::ENFORCE {
        return Ok(());
    }
    let k = &cfg.kernel;
    let dst = ctx.arg::<u64>(0) as *const u8;
    let task = ctx.arg::<u64>(2) as *const u8;
    let root = read_kernel_ptr(dst, k.cgroup_root).ok_or(1)?;
    // Only the cgroup v2 hierarchy, where the bindings live.
    if read_kernel::<i32>(root, k.root_hierarchy_id).ok_or(1)? != 0 {
        return Ok(());
    }
    let moved_tgid: i32 = read_kernel(task, k.task_tgid).ok_or(1)?;
    let moved_pid: i32 = read_kernel(task, k.task_pid).ok_or(1)?;
    let pinned = origin(moved_tgid as u32);
    let mover = (bpf_get_current_pid_tgid() >> 32) as u32;
    if pinned == 0 {
        crate::handover::on_move(cfg, dst, task, moved_tgid as u32, mover);
        return Ok(());
    }
    let to = cgroup_id(cfg, dst).ok_or(1)?;
    // Still inside the binding's subtree: nothing escaped.
    if ancestor_where(cfg, dst, |id| id == pinned) != 0 {
        return Ok(());
    }
    // SAFETY: the value is copied out at once.
    let Some(set) = (unsafe { CGROUP_SETS.get(pinned) }).copied() else {
        return Ok(());
    };
    let Some(ps) = policy_set(set) else {
        return Ok(());
    };
    // The strongest action of the set; a move has happened, so Deny can only alert.
    let mut strongest = ps.exec_action.max(ps.connect_action).max(ps.wx_action);
    if strongest == u32::from(action::DENY) {
        strongest = u32::from(action::ALERT);
    }
    if strongest == 0 {
        return Ok(());
    }
    let v = violation(strongest, set, rule_id::MOVED);
    if strongest == u32::from(action::KILL) {
        kill_at_syscall_exit(moved_tgid as u32);
        if mover == moved_tgid as u32 || current_set() != 0 {
            send_sigkill();
        }
    }
    let mut event = MoveEvent {
        header: header(kind::MOVE, cfg),
        from_cgroup: pinned,
        to_cgroup: to,
        moved_pid: moved_pid as u32,
        _pad: 0,
    };
    mark(&mut event.header, v);
    emit(kind::MOVE, event);
    Ok(())
}
