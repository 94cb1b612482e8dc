//! Kills for hooks that cannot send a signal themselves (cgroup socket programs), and kills
//! the kernel would not send at once (`policy::send_sigkill`): the hook refuses the act and
//! records the process; the process is killed when the refused call returns to it, before
//! its next instruction in user space.
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
    let _ = PENDING_KILLS.insert(tgid, 1u32, u64::from(BPF_NOEXIST));
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
    let judged = crate::judged::at_return(ctx);
    match KILLS_RECORDED.get(0) {
        Some(flag) if *flag != 0 => {}
        _ => return judged,
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: only checked for presence.
    // Forgotten only once sent: a kill the kernel refuses now is tried at the next exit.
    if unsafe { PENDING_KILLS.get(tgid) }.is_some() && try_sigkill() {
        forget_pending_kill(tgid);
    }
    judged
}
