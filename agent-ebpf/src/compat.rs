//! The 32-bit system call entry (`int 0x80`, which 64-bit processes may use too): syscall
//! tracepoints do not fire for compat calls, `raw_syscalls/sys_enter` does. W^X requests
//! through it are judged like their 64-bit twins (the old `mmap`, whose arguments are in the
//! caller's memory, fails closed under `writeExecute: Deny` unless it asks for W^X as read),
//! and under `compatSyscalls: Deny` any call through it is a violation. Decided at entry (a
//! compat request the kernel then refuses is still reported).
use agent_common::{Config, WxEvent, kind, mode, prevent, set_flags, wx_reason, wx_syscall};
use aya_ebpf::{
    helpers::bpf_probe_read_user_buf, macros::raw_tracepoint, programs::RawTracePointContext,
};

use crate::diag::entry_points;
use crate::{
    file::task_fd_file,
    foreign,
    maps::COMPAT_WATCH,
    maps::{FileRequest, JUDGE_FILE_RAW},
    policy::{current_set, enforce, policy_set, prevented, violation},
    scratch::{self, Claim},
    task::count_loss,
    task::{config, current_task, read_kernel, traced},
    wx::{self, PROT_EXEC, PROT_READ, PROT_WRITE},
};

/// `thread_info.status` bit: the task is in a 32-bit system call.
const TS_COMPAT: u32 = 0x0002;
/// i386 system call numbers.
const NR_PTRACE: i64 = 26;
const NR_OLD_MMAP: i64 = 90;
const NR_MPROTECT: i64 = 125;
const NR_MMAP2: i64 = 192;
const NR_PROCESS_VM_WRITEV: i64 = 348;
const NR_USERFAULTFD: i64 = 374;
const NR_PKEY_MPROTECT: i64 = 380;

entry_points! {
    #[raw_tracepoint(tracepoint = "sys_enter")]
    fn sys_enter(ctx: RawTracePointContext) -> i32 = try_sys_enter(&ctx);
}

/// Whether any policy set denies the 32-bit entry (one array read).
fn compat_watched() -> bool {
    COMPAT_WATCH.get(0).is_some_and(|v| *v != 0)
}

/// A traced exec's entry is recorded (`judged.rs`), then the 32-bit entry judged; neither
/// waits on the other's failure. A file the 32-bit entry maps executable is judged last, in
/// `judge_mapped_file_raw`, jumped to from here: a tail call must be made from the program's
/// own frame.
#[inline(always)]
fn try_sys_enter(ctx: &RawTracePointContext) -> Result<(), i64> {
    // Plain codes (0: none), each taken at once: a `Result` kept across the other calls and
    // returned later had its payload read from stack never written when it was `Ok`, which
    // 5.10's verifier refuses.
    let entry = code(crate::judged::at_entry(ctx.arg(1)));
    let args = crate::exec::at_exec_entry(ctx);
    let failed = if entry != 0 { entry } else { args };
    // Counted here, not returned: the jump below does not come back, and the verifier then
    // walks what follows once, not once per failure.
    if failed != 0 {
        crate::diag::count(
            const { agent_common::probe_error::id("sys_enter") },
            agent_common::probe_error::reason(failed),
        );
    }
    if try_compat(ctx)? {
        // SAFETY: a tail call with this program's own context.
        unsafe { JUDGE_FILE_RAW.tail_call(ctx, 0) };
        crate::mapped::jump_failed();
    }
    Ok(())
}

/// 0 for `Ok`, the error code otherwise.
#[inline(always)]
fn code(result: Result<(), i64>) -> i64 {
    match result {
        Ok(()) => 0,
        Err(err) => err,
    }
}

/// True when a file mapped executable was filed for `judge_mapped_file_raw`.
fn try_compat(ctx: &RawTracePointContext) -> Result<bool, i64> {
    let id: i64 = ctx.arg(1);
    let wx_call =
        id == NR_MMAP2 || id == NR_OLD_MMAP || id == NR_MPROTECT || id == NR_PKEY_MPROTECT;
    let foreign_call = id == NR_PTRACE || id == NR_PROCESS_VM_WRITEV || id == NR_USERFAULTFD;
    let watched = compat_watched();
    if !wx_call && !foreign_call && !watched {
        return Ok(false);
    }
    let cfg = config().ok_or(1)?;
    // Where the LSM programs report W^X, they see the 32-bit calls too.
    let wx_call = wx_call && cfg.prevent & prevent::WX_REPORTS == 0;
    // Where the LSM programs judge foreign writes by system call, the 32-bit ones too.
    let foreign_call =
        foreign_call && foreign::watched(cfg) && cfg.prevent & prevent::FOREIGN_CALLS == 0;
    if !wx_call && !foreign_call && !watched {
        return Ok(false);
    }
    let status: u32 = read_kernel(current_task(), cfg.kernel.thread_status).ok_or(1)?;
    if status & TS_COMPAT == 0 {
        return Ok(false);
    }
    if watched && compat_denied(cfg, id) {
        return Ok(false);
    }
    let regs = ctx.arg::<u64>(0) as *const u8;
    let arg = |offset: u32| -> Result<u32, i64> {
        read_kernel::<u64>(regs, offset).map(|v| v as u32).ok_or(1)
    };
    let k = &cfg.kernel;
    // The 64-bit ones are syscall tracepoints' (`foreign.rs`); their arguments are values.
    if foreign_call {
        return match id {
            NR_PTRACE => foreign::ptrace(u64::from(arg(k.regs_bx)?), arg(k.regs_cx)?),
            NR_PROCESS_VM_WRITEV => foreign::vm_writev(arg(k.regs_bx)?),
            _ => foreign::userfaultfd(arg(k.regs_bx)?),
        }
        .map(|()| false);
    }
    if !wx_call {
        return Ok(false);
    }
    // Both judged, whatever the first's failure: counted here, as the jump may not return.
    let wx = code(compat_wx(cfg, id, regs));
    if wx != 0 {
        crate::diag::count(
            const { agent_common::probe_error::id("sys_enter") },
            agent_common::probe_error::reason(wx),
        );
    }
    compat_exec_request(cfg, id, regs)
}

/// The descriptor an `old_mmap` structure that cannot be read stands for: none a process has
/// (descriptors are below `INT_MAX`).
const UNREADABLE_FD: i32 = i32::MIN;
/// What an `old_mmap` structure that cannot be read is taken to ask: an executable mapping
/// (`PROT_EXEC`, private, of [`UNREADABLE_FD`]).
const UNREADABLE_OLD_MMAP: [u8; 20] = {
    let mut f = [0u8; 20];
    f[8] = PROT_EXEC as u8;
    f[12] = 0x02;
    let fd = UNREADABLE_FD.to_le_bytes();
    f[16] = fd[0];
    f[17] = fd[1];
    f[18] = fd[2];
    f[19] = fd[3];
    f
};

/// A file mapped executable through the 32-bit entry (`mmap2`, `old_mmap`), or an area made
/// executable there (`mprotect`, `pkey_mprotect`): filed for `judge_mapped_file_raw`, which
/// judges it as the 64-bit calls' files are judged (`mapped.rs`: exec deny rules, drift,
/// memfd, shared memory). True when filed; the caller jumps. `old_mmap`'s arguments are read
/// from the caller's memory, which another thread may rewrite before the kernel copies them
/// (`compatSyscalls: Deny` closes that). The area an `mprotect` names is not looked up here:
/// it is judged as a file whose path cannot be resolved, which fails closed where the exec
/// rules refuse.
#[inline(never)]
fn compat_exec_request(cfg: &Config, id: i64, regs: *const u8) -> Result<bool, i64> {
    const MAP_ANONYMOUS: u32 = 0x20;
    if !traced(cfg) {
        return Ok(false);
    }
    let arg = |offset: u32| -> Result<u32, i64> {
        read_kernel::<u64>(regs, offset).map(|v| v as u32).ok_or(1)
    };
    let k = &cfg.kernel;
    let (syscall, prot, flags, fd, addr, len) = match id {
        NR_MMAP2 => (
            wx_syscall::MMAP2,
            arg(k.regs_dx)?,
            arg(k.regs_si)?,
            arg(k.regs_di)? as i32,
            arg(k.regs_bx)?,
            arg(k.regs_cx)?,
        ),
        NR_OLD_MMAP => {
            let mut fields = [0u8; 20];
            let at = u64::from(arg(k.regs_bx)?) as *const u8;
            // SAFETY: the helper checks the user address. Unreadable here (a page not yet
            // faulted in, which the kernel's own copy faults in), it is judged as an
            // executable mapping of a file that cannot be resolved: fail closed.
            if unsafe { bpf_probe_read_user_buf(at, &mut fields) }.is_err() {
                fields = UNREADABLE_OLD_MMAP;
            }
            let field = |i: usize| {
                u32::from_le_bytes([
                    fields[i * 4],
                    fields[i * 4 + 1],
                    fields[i * 4 + 2],
                    fields[i * 4 + 3],
                ])
            };
            (
                wx_syscall::OLD_MMAP,
                field(2),
                field(3),
                field(4) as i32,
                field(0),
                field(1),
            )
        }
        NR_PKEY_MPROTECT => (
            wx_syscall::PKEY_MPROTECT,
            arg(k.regs_dx)?,
            0,
            -1,
            arg(k.regs_bx)?,
            arg(k.regs_cx)?,
        ),
        _ => (
            wx_syscall::MPROTECT,
            arg(k.regs_dx)?,
            0,
            -1,
            arg(k.regs_bx)?,
            arg(k.regs_cx)?,
        ),
    };
    if prot & PROT_EXEC == 0 {
        return Ok(false);
    }
    let mapping = syscall == wx_syscall::MMAP2 || syscall == wx_syscall::OLD_MMAP;
    let file = if mapping {
        if flags & MAP_ANONYMOUS != 0 {
            return Ok(false);
        }
        if fd == UNREADABLE_FD {
            0
        } else {
            // No such descriptor: the kernel refuses the call (`EBADF`).
            match task_fd_file(cfg, fd as u32) {
                Some(file) => file as u64,
                None => return Ok(false),
            }
        }
    } else {
        0
    };
    crate::mapped::file_request(FileRequest {
        file,
        syscall,
        fd,
        prot: u64::from(prot),
        flags: u64::from(flags),
        addr: u64::from(addr),
        len: u64::from(len),
    })?;
    Ok(true)
}

/// A W^X request through the 32-bit entry. A function of its own: its record's frame beside
/// the foreign writes' call chain passed the 512 bytes of stack kernels before 6.13 allow.
#[inline(never)]
fn compat_wx(cfg: &Config, id: i64, regs: *const u8) -> Result<(), i64> {
    let arg = |offset: u32| -> Result<u32, i64> {
        read_kernel::<u64>(regs, offset).map(|v| v as u32).ok_or(1)
    };
    let k = &cfg.kernel;
    let old = id == NR_OLD_MMAP;
    // `old_mmap`'s arguments are a structure at ebx in the caller's memory: addr, len, prot,
    // flags, fd (and offset). Unreadable, they read as zeroes: asking for nothing.
    let mut fields = [0u8; 20];
    if old {
        let at = u64::from(arg(k.regs_bx)?) as *const u8;
        // SAFETY: the helper checks the user address; a fault leaves an error.
        if unsafe { bpf_probe_read_user_buf(at, &mut fields) }.is_err() {
            fields = [0; 20];
        }
    }
    let field = |i: usize| {
        u32::from_le_bytes([
            fields[i * 4],
            fields[i * 4 + 1],
            fields[i * 4 + 2],
            fields[i * 4 + 3],
        ])
    };
    let prot = if old { field(2) } else { arg(k.regs_dx)? };
    let mut reason = wx_reason::COMPAT;
    if prot & PROT_WRITE != 0 && prot & PROT_EXEC != 0 {
        reason |= wx_reason::WRITE_EXEC;
    } else if prot & PROT_WRITE != 0 && prot & PROT_READ != 0 && read_implies_exec(cfg) {
        reason |= wx_reason::READ_IMPLIES_EXEC;
    } else if !old {
        return Ok(());
    }
    if !traced(cfg) {
        return Ok(());
    }
    let Some(judged) = wx::decide(cfg) else {
        return Ok(());
    };
    if reason == wx_reason::COMPAT {
        // An `old_mmap` that did not ask for W^X as read: another thread can rewrite the
        // structure before the kernel copies it, and no hook here sees what the kernel made
        // of it (the BPF LSM's, where it refuses, do: it is theirs). Under a set that denies
        // W^X it fails closed.
        if !judged.is_hit() || prevented(cfg, prevent::WX, judged) {
            return Ok(());
        }
        reason |= wx_reason::UNVERIFIABLE;
    }
    // Where BPF LSM runs, `mmap_file` and `file_mprotect` refuse it before the act.
    if prevented(cfg, prevent::WX, judged) {
        return Ok(());
    }
    let judged = enforce(judged);
    let (syscall, addr, len, flags, fd, extra) = match id {
        NR_OLD_MMAP => (
            wx_syscall::OLD_MMAP,
            field(0),
            field(1),
            field(3),
            field(4) as i32,
            0,
        ),
        NR_MMAP2 => (
            wx_syscall::MMAP2,
            arg(k.regs_bx)?,
            arg(k.regs_cx)?,
            arg(k.regs_si)?,
            arg(k.regs_di)? as i32,
            0,
        ),
        NR_PKEY_MPROTECT => (
            wx_syscall::PKEY_MPROTECT,
            arg(k.regs_bx)?,
            arg(k.regs_cx)?,
            0,
            -1,
            arg(k.regs_si)?,
        ),
        _ => (
            wx_syscall::MPROTECT,
            arg(k.regs_bx)?,
            arg(k.regs_cx)?,
            0,
            -1,
            0,
        ),
    };
    // The record in map memory: on this function's frame it passed, with the calls below,
    // the 512 bytes of stack kernels before 6.13 allow. Carried out above; without room for
    // its record, the record is counted lost.
    let Ok(claim) = Claim::<scratch::Wx>::new() else {
        count_loss(kind::WX);
        return Ok(());
    };
    // SAFETY: this thread's scratch entry, which nobody else writes while the claim lives.
    let event = unsafe { &mut (*claim.entry()).event };
    event.syscall = syscall;
    event.prot = prot;
    event.flags = flags;
    event.reason = reason;
    event.addr = u64::from(addr);
    event.len = u64::from(len);
    event.fd = fd;
    event.extra = extra;
    wx::report(cfg, judged, event);
    Ok(())
}

/// A 32-bit call by a process whose set denies them: judged, carried out and reported;
/// true when it was. Not inlined: its record on `sys_enter`'s own frame made every chain of
/// calls from there pass 512 bytes of stack.
#[inline(never)]
fn compat_denied(cfg: &Config, id: i64) -> bool {
    if cfg.mode != mode::ENFORCE {
        return false;
    }
    let set = current_set();
    let Some(ps) = policy_set(set) else {
        return false;
    };
    if ps.flags & set_flags::COMPAT_DENY == 0 {
        return false;
    }
    let v = enforce(violation(ps.wx_action, set, ps.compat_rule));
    wx::report(
        cfg,
        v,
        &WxEvent {
            syscall: wx_syscall::COMPAT,
            reason: wx_reason::COMPAT,
            fd: -1,
            extra: id as u32,
            ..WxEvent::default()
        },
    );
    true
}

fn read_implies_exec(cfg: &Config) -> bool {
    read_kernel::<u32>(current_task(), cfg.kernel.task_personality)
        .is_some_and(|p| p & agent_common::READ_IMPLIES_EXEC != 0)
}
