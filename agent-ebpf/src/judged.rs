//! Every exec is judged, or fails closed. The kernel skips a run of a tracing program while
//! another run of the same program is held on that CPU, which a kernel that preempts kernel
//! code (lazy or full preemption, Debian's default from 6.16) lets happen whenever a task is
//! preempted inside it: an exec whose `sched_process_exec` programs were skipped would run
//! unjudged. So each program on `sched_process_exec` marks the image it judged (`EXEC_JUDGED`),
//! each is loaded twice (a second instance has a guard of its own and judges only an image the
//! first did not), and on the exec's way back to user space (`raw_syscalls/sys_exit`, a third
//! guard) an image with a part still unjudged fails closed: under Kill it dies before its
//! first instruction, under Alert it is reported as unverifiable.
use agent_common::{
    ExecEvent, NAME_LEN, WxEvent, exec_flags, kind, mode, rule_id, wx_reason, wx_syscall,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel_buf},
    macros::fexit,
    programs::{FExitContext, RawTracePointContext},
};

use crate::diag::entry_points;
use crate::{
    exec::{fill_args_from_image, remember_exe},
    maps::{EVENTS, EXEC_JUDGED, ExecMark, TASK_EXE, TRACED_EXEC_SEEN, TRACED_EXECS},
    path::real_path,
    policy::{Violation, current_set, enforce, mark, policy_set, violation},
    scratch::{self, Claim},
    task::{config, current_task, header, read_kernel, read_kernel_ptr},
    throttle::{admit, lost},
    wx,
};

pub use agent_common::judged::{EXEC, IMAGE};

/// `thread_info.status` bit: the task is in (or, after an exec, returns from) a 32-bit call.
const TS_COMPAT: u32 = 0x0002;
/// What `orig_ax` holds after a successful exec, whichever call it was: the kernel rewrites it
/// to the `execve` of the new image's ABI (`set_personality_64bit`, `_ia32`, `_x32`).
const NR_EXECVE: u64 = 59;
const NR_IA32_EXECVE: u64 = 11;
const NR_X32_EXECVE: u64 = 0x4000_0000 | 520;
/// `execveat` of each ABI, as a call enters.
const NR_EXECVEAT: u64 = 322;
const NR_IA32_EXECVEAT: u64 = 358;
const NR_X32_EXECVEAT: u64 = 0x4000_0000 | 545;

/// The current task's image: (`self_exec_id`, `start_time`). Unreadable fields read as
/// `u64::MAX` on every side alike, so a mark still pairs one exec's programs.
fn image() -> (u64, u64) {
    let Some(cfg) = config() else {
        return (u64::MAX, u64::MAX);
    };
    let task = current_task();
    (
        read_kernel(task, cfg.kernel.task_self_exec_id).unwrap_or(u64::MAX),
        read_kernel(task, cfg.kernel.task_start_time).unwrap_or(u64::MAX),
    )
}

/// Marks `part` of the current exec as judged and says whether to judge it: always for the
/// first instance of a program, for the second (`again`) only when the first did not run.
/// Not inlined: the exec program's own frame has no room for the mark.
#[inline(never)]
pub fn claim(tgid: u32, part: u32, again: bool) -> bool {
    let (image, started) = image();
    let mut by = 0;
    // SAFETY: the value is copied out at once.
    if let Some(m) = unsafe { EXEC_JUDGED.get(tgid) }
        && m.image == image
        && m.started == started
    {
        if again && m.by & part != 0 {
            return false;
        }
        by = m.by;
    }
    let mark = ExecMark {
        image,
        started,
        by: by | part,
        _pad: 0,
    };
    // A mark that cannot be written makes the exec's return fail it closed.
    let _ = EXEC_JUDGED.insert(tgid, mark, 0);
    true
}

/// Whether system call `nr` (as `raw_syscalls` gives it) is an exec of the current task's
/// ABI: 59 is a 32-bit `oldolduname` and 11 a 64-bit `munmap`, so the ABI tells them apart.
fn is_exec_call(cfg: &agent_common::Config, nr: u64, entering: bool) -> Result<bool, i64> {
    let compat_nr = nr == NR_IA32_EXECVE || (entering && nr == NR_IA32_EXECVEAT);
    let native_nr = nr == NR_EXECVE || (entering && nr == NR_EXECVEAT);
    if nr == NR_X32_EXECVE || (entering && nr == NR_X32_EXECVEAT) {
        return Ok(true);
    }
    if !compat_nr && !native_nr {
        return Ok(false);
    }
    let status: u32 = read_kernel(current_task(), cfg.kernel.thread_status).ok_or(1)?;
    Ok(if status & TS_COMPAT != 0 {
        compat_nr
    } else {
        native_nr
    })
}

/// `raw_syscalls/sys_enter`: a traced task entering an exec has its image recorded, so that
/// the exec's return is told by the image changing, whatever its tracer makes of the
/// registers meanwhile ([`entered`]).
pub fn at_entry(nr: i64) -> Result<(), i64> {
    let nr = nr as u64;
    if nr != NR_EXECVE
        && nr != NR_EXECVEAT
        && nr != NR_IA32_EXECVE
        && nr != NR_IA32_EXECVEAT
        && nr != NR_X32_EXECVE
        && nr != NR_X32_EXECVEAT
    {
        return Ok(());
    }
    let cfg = config().ok_or(1)?;
    // `bprm_check_security` records it there (`prevent::EXEC_ENTRY`). The mode first: the
    // ABI's status is read only for a call that may be an exec, under a policy.
    if cfg.mode != mode::ENFORCE
        || cfg.judges == 0
        || cfg.prevent & agent_common::prevent::EXEC_ENTRY != 0
        || !is_exec_call(cfg, nr, true)?
    {
        return Ok(());
    }
    entered(cfg)
}

/// A traced task entering an exec (at raw `sys_enter`, or at `bprm_check_security` where that
/// program reads registers) has its image recorded; the one before any new image, whichever
/// level of the exec it is recorded at.
#[inline(always)]
pub fn entered(cfg: &agent_common::Config) -> Result<(), i64> {
    // Where `bprm_execve`'s fexit checks the return, no register is read there.
    if cfg.mode != mode::ENFORCE
        || cfg.judges == 0
        || cfg.prevent & agent_common::prevent::EXEC_RETURN != 0
    {
        return Ok(());
    }
    let traced: u32 = read_kernel(current_task(), cfg.kernel.task_ptrace).ok_or(1)?;
    if traced == 0 {
        return Ok(());
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let entered = ExecMark {
        image: image().0,
        started: 0,
        by: 0,
        _pad: 0,
    };
    TRACED_EXECS.insert(tgid, entered, 0).map_err(i64::from)?;
    if let Some(flag) = TRACED_EXEC_SEEN.get_ptr_mut(0) {
        // SAFETY: a live map value; a flag that only ever goes from 0 to 1.
        unsafe { *flag = 1 };
    }
    Ok(())
}

/// Whether the current task's process entered an exec traced and has a new image since.
fn traced_exec_returned(tgid: u32) -> bool {
    // SAFETY: the value is copied out at once.
    let Some(entered) = (unsafe { TRACED_EXECS.get(tgid) }).map(|m| m.image) else {
        return false;
    };
    // Threads other than the one that exec'd keep the old image's id.
    if entered == image().0 {
        return false;
    }
    let _ = TRACED_EXECS.remove(tgid);
    true
}

/// `raw_syscalls/sys_exit`: on a successful exec's return, what its `sched_process_exec`
/// programs left unjudged fails closed here, before the new image's first instruction.
pub fn at_return(ctx: &RawTracePointContext) -> Result<(), i64> {
    let ret: i64 = ctx.arg(1);
    let traced_execs = TRACED_EXEC_SEEN.get(0).is_some_and(|seen| *seen != 0);
    if ret != 0 && !traced_execs {
        return Ok(());
    }
    let cfg = config().ok_or(1)?;
    // `bprm_execve`'s fexit program checks every exec's return there (`EXEC_RETURN`).
    if cfg.mode != mode::ENFORCE
        || cfg.judges == 0
        || cfg.prevent & agent_common::prevent::EXEC_RETURN != 0
    {
        return Ok(());
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let returned = (traced_execs && traced_exec_returned(tgid)) || {
        ret == 0 && {
            let regs = ctx.arg::<u64>(0) as *const u8;
            let nr: u64 = read_kernel(regs, cfg.kernel.regs_orig_ax).ok_or(1)?;
            is_exec_call(cfg, nr, false)?
        }
    };
    if !returned {
        return Ok(());
    }
    returned_now(cfg, tgid)
}

entry_points! {
    /// fexit of `bprm_execve`, which every exec passes (each ABI's `execve` and `execveat`,
    /// the kernel's `kernel_execve`): on success the new image's `sched_process_exec`
    /// programs have run, or were skipped, and the task has not yet left the kernel. A
    /// tracing program with a recursion guard of its own, like raw `sys_exit`, without
    /// putting every system call on the slow path.
    #[fexit(function = "bprm_execve")]
    fn bprm_execve_exit(ctx: FExitContext) -> i32 = try_bprm_execve_exit(&ctx);
}

fn try_bprm_execve_exit(ctx: &FExitContext) -> Result<(), i64> {
    let ret: i32 = ctx.ret().map_err(i64::from)?;
    if ret != 0 {
        return Ok(());
    }
    let cfg = config().ok_or(1)?;
    if cfg.mode != mode::ENFORCE
        || cfg.judges == 0
        || cfg.prevent & agent_common::prevent::EXEC_RETURN == 0
    {
        return Ok(());
    }
    returned_now(cfg, (bpf_get_current_pid_tgid() >> 32) as u32)
}

/// Process `tgid` has just returned from a successful exec: what the new image's programs
/// left unjudged fails closed.
#[inline(always)]
fn returned_now(cfg: &agent_common::Config, tgid: u32) -> Result<(), i64> {
    // The agent's own execs are not watched (`traced`).
    if tgid == cfg.agent_pid {
        return Ok(());
    }
    let (image, started) = image();
    // SAFETY: the value is copied out at once.
    let by = match unsafe { EXEC_JUDGED.get(tgid) } {
        Some(m) if m.image == image && m.started == started => m.by,
        _ => 0,
    };
    let _ = EXEC_JUDGED.remove(tgid);
    let mut unjudged = cfg.judges & !by;
    if unjudged & EXEC != 0 {
        // The image's programs then looked its exemption up by the previous image's
        // executable: their judgement does not count.
        unjudged |= cfg.judges & IMAGE;
        unjudged_exec(tgid)?;
    }
    if unjudged & IMAGE != 0 {
        unjudged_image();
    }
    Ok(())
}

/// The exec ran without its judgement: under exec rules it fails closed (killed first), and
/// the new image's executable (the kernel's own record of it, `mm->exe_file`) becomes the
/// process's for W^X exemptions. What was executed cannot be known any more (a script's own
/// file is gone from view), so no allowlist can clear it.
#[inline(never)]
fn unjudged_exec(tgid: u32) -> Result<(), i64> {
    let set = current_set();
    let v = match policy_set(set) {
        // No exec rules: nothing to fail.
        Some(ps) if ps.exec_action != 0 => {
            enforce(violation(ps.exec_action, set, rule_id::UNJUDGED))
        }
        _ => Violation::ALLOWED,
    };
    let cfg = config().ok_or(1)?;
    let k = &cfg.kernel;
    let file = read_kernel_ptr(current_task(), k.task_mm)
        .and_then(|mm| read_kernel_ptr(mm, k.mm_exe_file))
        .unwrap_or(core::ptr::null());
    let claim = Claim::<scratch::Path>::new();
    let mut flags = exec_flags::UNJUDGED | exec_flags::UNVERIFIABLE;
    let mut path = core::ptr::null();
    match claim.as_ref() {
        Ok(claim) if !file.is_null() => {
            // SAFETY: this thread's scratch entry, which nobody else writes while the claim
            // lives.
            let scratch = unsafe { &mut *claim.entry() };
            match real_path(cfg, file, scratch) {
                Some(built) if !built.forged() => {
                    remember_exe(scratch, tgid, built);
                    path = built.ptr(&scratch.path);
                }
                walked => {
                    flags |= if walked.is_some() {
                        exec_flags::USER_MOUNT
                    } else {
                        exec_flags::EXE_PATH_TRUNCATED
                    };
                    let _ = TASK_EXE.remove(tgid);
                }
            }
        }
        _ => {
            flags |= exec_flags::EXE_PATH_TRUNCATED;
            let _ = TASK_EXE.remove(tgid);
        }
    }
    if v.is_hit() {
        report(v, flags, path, file);
    }
    Ok(())
}

/// The exec record of an unjudged exec; `path` (null: unknown) is the real path of `file`
/// (null: unknown), the new image's executable.
#[inline(never)]
fn report(v: Violation, flags: u32, path: *const u8, file: *const u8) {
    let Some(cfg) = config() else {
        return;
    };
    let mut head = header(kind::EXEC, cfg);
    mark(&mut head, v);
    if !admit(kind::EXEC, 0, &mut head) {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<ExecEvent>(0) else {
        lost(kind::EXEC, 0, head.count, head.first_ns, &head);
        return;
    };
    // SAFETY: a reserved ring-buffer slot of the right size that only this program writes
    // until it is submitted.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    event.header = head;
    event.flags = flags;
    event.old_tid = event.header.tid;
    event.exe_name = [0; NAME_LEN];
    event.origin = agent_common::FileOrigin::default();
    if file.is_null() {
        event.flags |= exec_flags::EXE_UNKNOWN;
    } else {
        event.flags |= crate::exec::file_facts(cfg, file, &mut event.exe_name);
    }
    event.path[0] = 0;
    event.exe_path[0] = 0;
    if !path.is_null() {
        // SAFETY: the source has at least PATH_LEN bytes from any start.
        unsafe {
            let _ = bpf_probe_read_kernel_buf(path, &mut event.path);
            let _ = bpf_probe_read_kernel_buf(path, &mut event.exe_path);
        }
    }
    fill_args_from_image(cfg, event);
    entry.submit(0);
}

/// The new image's memory went unjudged: under `memory.writeExecute: Deny` (the executable not
/// exempt) it fails closed, whatever the kernel mapped.
#[inline(never)]
fn unjudged_image() {
    let Some(cfg) = config() else {
        return;
    };
    let Some(judged) = wx::judge(cfg) else {
        return;
    };
    if !judged.is_hit() {
        return;
    }
    wx::report(
        cfg,
        judged,
        &WxEvent {
            syscall: wx_syscall::EXEC,
            reason: wx_reason::UNJUDGED,
            fd: -1,
            ..WxEvent::default()
        },
    );
}
