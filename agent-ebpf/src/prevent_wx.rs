//! W^X at BPF LSM's `mmap_file` and `file_mprotect`. The kernel calls these for every mapping
//! and protection change whatever the entry (`mmap`, `mprotect`, `pkey_mprotect`, their 32-bit
//! twins, `shmat`, the ELF loader at exec), with the protection it is about to apply,
//! `READ_IMPLIES_EXEC` already added. A refused call fails with `EPERM` and the memory stays
//! as it was (under Kill the process is killed as well).
//!
//! Where programs may read the task's registers (`prevent::WX_REPORTS`), these are the only
//! W^X hooks: they report every request, in trace mode and under every action, with the call
//! and its arguments from the registers (`calls.rs`), and SysV shared memory attached
//! executable; a mapping the ELF loader makes at exec is refused here but reported by
//! `sched_process_exec_image`. Elsewhere they only refuse, and what they let through is
//! decided again by the syscall tracepoints, which kill (fail closed).
use agent_common::{action, kind, mode, prevent, wx_reason, wx_syscall};
use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::lsm, programs::LsmContext};

use crate::{
    calls::Call,
    diag::gave_up,
    maps::WX_PENDING,
    policy::send_sigkill,
    prevent_exec::verdict,
    scratch::{self, Claim},
    task::{config, count_loss, read_kernel, traced},
    wx::{self, PROT_EXEC, PROT_READ, PROT_WRITE},
};

/// `mmap_file(struct file *file, unsigned long reqprot, unsigned long prot, unsigned long
/// flags)`; argument 4 is what the LSMs before this program decided.
#[lsm(hook = "mmap_file")]
pub fn lsm_mmap_file(ctx: LsmContext) -> i32 {
    // The hook's arguments, in order; the last is the previous programs' verdict.
    let (prior, reqprot, prot, flags): (i32, u64, u64, u64) =
        (ctx.arg(4), ctx.arg(1), ctx.arg(2), ctx.arg(3));
    if prior != 0 {
        return prior;
    }
    let request = Request {
        syscall: wx_syscall::MMAP,
        reqprot: reqprot as u32,
        prot: prot as u32,
        flags: flags as u32,
        addr: 0,
        len: 0,
    };
    match try_refuse(&request, 0) {
        Ok(refused) => verdict(refused),
        Err(err) => gave_up(
            &ctx,
            const { agent_common::probe_error::id("lsm_mmap_file") },
            err,
        ),
    }
}

/// `file_mprotect(struct vm_area_struct *vma, unsigned long reqprot, unsigned long prot)`;
/// argument 3 is what the LSMs before this program decided.
#[lsm(hook = "file_mprotect")]
pub fn lsm_file_mprotect(ctx: LsmContext) -> i32 {
    let (prior, vma, reqprot, prot): (i32, *const u8, u64, u64) =
        (ctx.arg(3), ctx.arg(0), ctx.arg(1), ctx.arg(2));
    if prior != 0 {
        return prior;
    }
    let Some(cfg) = config() else {
        return 0;
    };
    let start: u64 = read_kernel(vma, cfg.kernel.vma_start).unwrap_or(0);
    let end: u64 = read_kernel(vma, cfg.kernel.vma_end).unwrap_or(0);
    let request = Request {
        syscall: wx_syscall::MPROTECT,
        reqprot: reqprot as u32,
        prot: prot as u32,
        flags: 0,
        addr: start,
        len: end.wrapping_sub(start),
    };
    // `start`: the kernel runs this hook for each area of the range in turn.
    match try_refuse(&request, start) {
        Ok(refused) => verdict(refused),
        Err(err) => gave_up(
            &ctx,
            const { agent_common::probe_error::id("lsm_file_mprotect") },
            err,
        ),
    }
}

/// What the hook was asked, for the record when no syscall tracepoint filed the request.
struct Request {
    syscall: u32,
    reqprot: u32,
    prot: u32,
    flags: u32,
    addr: u64,
    len: u64,
}

/// Whether the mapping or protection change is refused; where these programs are the only
/// W^X hooks, reported whatever the outcome. `area` is the start of the area a protection
/// change is asked for (0 for a mapping): only the first of a range's areas reports.
fn try_refuse(request: &Request, area: u64) -> Result<bool, i64> {
    if request.prot & PROT_EXEC == 0 {
        return Ok(false);
    }
    let cfg = config().ok_or(1)?;
    let reports = cfg.prevent & prevent::WX_REPORTS != 0;
    let call = if reports {
        Call::current(cfg, request.syscall)
    } else {
        Call::unknown(cfg, request.syscall)
    };
    // SysV shared memory attached executable: every attachment may write the segment.
    let shm = call.syscall == wx_syscall::SHMAT;
    if request.prot & PROT_WRITE == 0 && !(shm && reports) {
        return Ok(false);
    }
    // The ELF loader's mappings are reported by `sched_process_exec_image`.
    let reports = reports && !call.exec;
    if !(reports || cfg.mode == mode::ENFORCE) || !traced(cfg) {
        return Ok(false);
    }
    let Some(v) = wx::decide(cfg) else {
        return Ok(false);
    };
    let refused = v.is_hit() && action::refuses(v.action);
    // Elsewhere Alert leaves the act and its report to the tracepoints.
    if !reports && !refused {
        return Ok(false);
    }
    if refused && v.action == action::KILL {
        send_sigkill();
    }
    if reports && call.known && area > call.addr {
        // A later area of a range whose first area reported the request.
        return Ok(refused);
    }
    if !reports {
        // The request as the syscall tracepoint filed it (its address, length and descriptor),
        // taken so that its exit, which sees EPERM, has nothing left to report. Records stay
        // in map memory: kernels before 6.13 give this program and its calls 512 bytes of
        // stack.
        let tid = bpf_get_current_pid_tgid() as u32;
        if let Some(pending) = WX_PENDING.get_ptr(tid) {
            // SAFETY: a live map value, read before it is removed.
            wx::report(cfg, v, unsafe { &(*pending).event });
            let _ = WX_PENDING.remove(tid);
            return Ok(true);
        }
    }
    // Carried out whatever follows: without room for its record, the record is counted lost.
    let Ok(claim) = Claim::<scratch::Wx>::new() else {
        count_loss(kind::WX);
        return Ok(refused);
    };
    // SAFETY: this thread's scratch entry, which nobody else writes while the claim lives.
    let event = unsafe { &mut (*claim.entry()).event };
    event.syscall = call.syscall;
    // What was asked for, as the tracepoints report it; `reason` says when READ_IMPLIES_EXEC
    // made it executable.
    event.prot = request.reqprot;
    event.flags = if shm { call.shmflg } else { request.flags };
    event.reason = if shm {
        wx_reason::SHARED_EXEC
    } else if request.reqprot & PROT_EXEC == 0 && request.reqprot & PROT_READ != 0 {
        wx_reason::READ_IMPLIES_EXEC
    } else {
        wx_reason::WRITE_EXEC
    };
    if call.compat {
        event.reason |= wx_reason::COMPAT;
    }
    (event.addr, event.len) = if call.known {
        (call.addr, call.len)
    } else {
        (request.addr, request.len)
    };
    event.fd = call.fd;
    event.extra = call.extra;
    wx::report(cfg, v, event);
    Ok(refused)
}
