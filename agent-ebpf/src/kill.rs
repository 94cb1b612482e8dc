//! Kills for hooks that cannot send a signal themselves (cgroup socket programs), and kills
//! the kernel would not send at once (`policy::send_sigkill`): the hook refuses the act and
//! records the process; the process is killed when the refused call returns to it, before
//! its next instruction in user space.
use agent_common::pending_kill;
use aya_ebpf::{
    bindings::BPF_NOEXIST, helpers::bpf_get_current_pid_tgid, macros::raw_tracepoint,
    programs::RawTracePointContext,
};

use crate::diag::entry_points;
use crate::{
    maps::{KILLS_RECORDED, PENDING_KILLS},
    policy::try_sigkill,
};

/// Records that process `tgid` is to be killed when its current syscall returns.
pub fn kill_at_syscall_exit(tgid: u32) {
    // Recorded before the flag is raised, so a syscall exit that sees the flag finds it.
    let _ = PENDING_KILLS.insert(tgid, pending_kill::KILL, u64::from(BPF_NOEXIST));
    if let Some(flag) = KILLS_RECORDED.get_ptr_mut(0) {
        // SAFETY: a live map value; a plain store (no atomics on this target) is enough for
        // a flag that only ever goes from 0 to 1.
        unsafe { *flag = 1 };
    }
}

/// Forgets a pending kill of `tgid` (it was carried out, or the process is gone).
pub fn forget_pending_kill(tgid: u32) {
    let _ = PENDING_KILLS.remove(tgid);
}

entry_points! {
    /// `raw_syscalls/sys_exit`: every syscall of every process on its way back to user space,
    /// including 32-bit compat calls and `io_uring_enter`. Successful execs are checked for
    /// what went unjudged (`judged.rs`); otherwise, until the first kill is recorded, a call
    /// costs one array read.
    #[raw_tracepoint(tracepoint = "sys_exit")]
    fn sys_exit(ctx: RawTracePointContext) -> i32 = try_sys_exit(&ctx);
}

fn try_sys_exit(ctx: &RawTracePointContext) -> Result<(), i64> {
    // Its failure is counted once the pending kills, which do not depend on it, are done.
    // Plain codes (0: none), each taken at once: `Result`s kept across other calls and
    // combined later were read from registers or stack never written when they were `Ok`.
    let judged = match crate::judged::at_return(ctx) {
        Ok(()) => 0,
        Err(err) => err,
    };
    let opened = compat_opened(ctx);
    let failed = if judged != 0 { judged } else { opened };
    let result = || if failed == 0 { Ok(()) } else { Err(failed) };
    match KILLS_RECORDED.get(0) {
        Some(flag) if *flag != 0 => {}
        _ => return result(),
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: only checked for presence.
    // Forgotten only once sent: a kill the kernel refuses now is tried at the next exit.
    if let Some(pending) = PENDING_KILLS.get_ptr_mut(tgid) {
        // SAFETY: a live map value.
        if unsafe { *pending } == pending_kill::HELD_AT_EXEC {
            // The held exec's own return: the next call is the one made against the hold.
            // SAFETY: as above.
            unsafe { *pending = pending_kill::HELD };
        } else if try_sigkill() {
            forget_pending_kill(tgid);
        }
    }
    result()
}

/// i386 `open`, `openat` and `openat2`: no syscall tracepoint fires for the 32-bit entry, so
/// the file a 32-bit open returns is looked at here (`foreign::opened`), while some set
/// denies foreign writes. A descriptor is a small number: larger returns (addresses, counts)
/// cost one comparison. 0, or the error code of a read that failed.
#[inline(never)]
fn compat_opened(ctx: &RawTracePointContext) -> i64 {
    match try_compat_opened(ctx) {
        Ok(()) => 0,
        Err(err) => err,
    }
}

#[inline(always)]
fn try_compat_opened(ctx: &RawTracePointContext) -> Result<(), i64> {
    const NR_OPEN: u64 = 5;
    const NR_OPENAT: u64 = 295;
    const NR_OPENAT2: u64 = 437;
    const TS_COMPAT: u32 = 0x0002;
    let ret: i64 = ctx.arg(1);
    if !(0..1 << 30).contains(&ret) {
        return Ok(());
    }
    // `vigil run` only (this program's mode): while no set denies foreign writes, one array
    // read. Only a flag read as 0 skips (fail closed).
    if matches!(crate::maps::FOREIGN_WATCH.get(0), Some(0)) {
        return Ok(());
    }
    let Some(cfg) = crate::task::config() else {
        return Err(1);
    };
    // BPF LSM's `file_open` sees these opens too, before they happen.
    if cfg.prevent & agent_common::prevent::FOREIGN_OPEN != 0 {
        return Ok(());
    }
    let status: u32 =
        crate::task::read_kernel(crate::task::current_task(), cfg.kernel.thread_status).ok_or(1)?;
    if status & TS_COMPAT == 0 {
        return Ok(());
    }
    let regs = ctx.arg::<u64>(0) as *const u8;
    let nr: u64 = crate::task::read_kernel(regs, cfg.kernel.regs_orig_ax).ok_or(1)?;
    if nr != NR_OPEN && nr != NR_OPENAT && nr != NR_OPENAT2 {
        return Ok(());
    }
    crate::foreign::opened(cfg, ret)
}
