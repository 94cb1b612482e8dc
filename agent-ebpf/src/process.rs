//! Process lifetimes, for what is keyed by process: the executable recorded at exec, the
//! policy binding and the runtime's hand-over follow a fork and go away at exit.
use agent_common::{ExePath, mode};
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};

use crate::diag::entry_points;
use crate::{
    kill::forget_pending_kill,
    maps::{EXEC_JUDGED, TASK_EXE, TASK_ORIGIN, TRACED_EXECS},
    policy::{live_binding, origin, pin_origin},
    task::{config, current_task, read_kernel, read_kernel_ptr},
};

entry_points! {
    #[raw_tracepoint(tracepoint = "sched_process_fork")]
    fn sched_process_fork(ctx: RawTracePointContext) -> i32 = try_fork(&ctx);

    #[tracepoint(category = "sched", name = "sched_process_exit")]
    fn sched_process_exit(ctx: TracePointContext) -> u32 = try_exit();
}

fn try_fork(ctx: &RawTracePointContext) -> Result<(), i64> {
    let cfg = config().ok_or(1)?;
    if cfg.mode != mode::ENFORCE {
        return Ok(());
    }
    let k = &cfg.kernel;
    let parent = ctx.arg::<u64>(0) as *const u8;
    let child = ctx.arg::<u64>(1) as *const u8;
    let child_pid: i32 = read_kernel(child, k.task_pid).ok_or(1)?;
    let child_tgid: i32 = read_kernel(child, k.task_tgid).ok_or(1)?;
    // A new thread shares its process's entry.
    if child_pid != child_tgid {
        return Ok(());
    }
    let parent_tgid: i32 = read_kernel(parent, k.task_tgid).ok_or(1)?;
    // A reused process id: nothing of the old process's hand-over carries over.
    crate::handover::forget(child_tgid as u32);
    // The child is pinned where the parent is (this runs in the parent's context), unless it
    // is still its container runtime's.
    let pinned = match origin(parent_tgid as u32) {
        0 if crate::handover::on_fork(cfg, parent_tgid as u32, child, child_tgid as u32) => 0,
        0 => live_binding().0,
        pinned => pinned,
    };
    pin_origin(child_tgid as u32, pinned);
    let Some(exe) = TASK_EXE.get_ptr(parent_tgid as u32) else {
        return Ok(());
    };
    // SAFETY: a live map value.
    let exe: &ExePath = unsafe { &*exe };
    TASK_EXE
        .insert(child_tgid as u32, exe, 0)
        .map_err(i64::from)
}

fn try_exit() -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // W^X requests wait for their result in both modes.
    crate::wx::forget_pending(pid_tgid as u32);
    let cfg = config().ok_or(1)?;
    if cfg.mode != mode::ENFORCE {
        return Ok(());
    }
    let tgid = (pid_tgid >> 32) as u32;
    // The process is gone when its last thread exits, whichever thread that is (a leader may
    // exit before the others). `signal->live` has reached 0 by then; unknown offsets keep
    // the entry (an LRU map ages it out) rather than drop an exemption early.
    let k = &cfg.kernel;
    let live = read_kernel_ptr(current_task(), k.task_signal)
        .and_then(|signal| read_kernel::<i32>(signal, k.signal_live));
    if live == Some(0) {
        let _ = TASK_EXE.remove(tgid);
        let _ = TASK_ORIGIN.remove(tgid);
        let _ = EXEC_JUDGED.remove(tgid);
        let _ = TRACED_EXECS.remove(tgid);
        forget_pending_kill(tgid);
        crate::script::forget(tgid);
        crate::handover::forget(tgid);
    }
    Ok(())
}
