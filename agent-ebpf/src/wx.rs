//! W^X: mappings that are, or become, writable and executable at once. Syscall tracepoints
//! carry the values, not pointers, so what is read is what the kernel acts on.
use agent_common::{
    Config, EventHeader, READ_IMPLIES_EXEC, SYSCALL_RET_OFFSET, WxEvent, WxRecord, exempt_word,
    kind, mode, set_flags, wx_reason, wx_syscall,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel_buf},
    macros::tracepoint,
    programs::TracePointContext,
};

use crate::diag::entry_points;
use crate::{
    maps::{EVENTS, EXEC_PATHS, PendingWx, TASK_EXE, WX_PENDING, ZEROES},
    path::path_key,
    policy::{Violation, mark},
    policy::{current_set_shallow, enforce, policy_set_in_place, violation},
    scratch::{self, Claim},
    task::syscall_arg,
    task::{config, current_task, header, read_kernel, selected, traced},
    throttle::{admit, lost},
};

pub const PROT_READ: u32 = 1;
pub const PROT_WRITE: u32 = 2;
pub const PROT_EXEC: u32 = 4;
const PERSONALITY_QUERY: u32 = 0xffff_ffff;
const SHM_RDONLY: u32 = 0o10000;
const SHM_EXEC: u32 = 0o100000;

entry_points! {
    #[tracepoint(category = "syscalls", name = "sys_enter_mmap")]
    fn sys_enter_mmap(ctx: TracePointContext) -> u32 = try_protection(&ctx, wx_syscall::MMAP);

    #[tracepoint(category = "syscalls", name = "sys_enter_mprotect")]
    fn sys_enter_mprotect(ctx: TracePointContext) -> u32 =
        try_protection(&ctx, wx_syscall::MPROTECT);

    #[tracepoint(category = "syscalls", name = "sys_enter_pkey_mprotect")]
    fn sys_enter_pkey_mprotect(ctx: TracePointContext) -> u32 =
        try_protection(&ctx, wx_syscall::PKEY_MPROTECT);

    #[tracepoint(category = "syscalls", name = "sys_enter_personality")]
    fn sys_enter_personality(ctx: TracePointContext) -> u32 = try_personality(&ctx);
}

/// Whether the current process's executable (recorded at exec) is in the `allowExecutables`
/// of set `set`, whose stamp is `stamp`. The answer is kept with the executable under the
/// stamp: a set's rules never change under one stamp (a set is written whole under an id no
/// binding points to, then stamped), so an allocator's or JIT's every mapping after the
/// first costs a comparison instead of a trie lookup of the path.
fn exempt(set: u32, stamp: u32) -> bool {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(exe) = TASK_EXE.get_ptr_mut(tgid) else {
        return false;
    };
    // SAFETY: a live map value; one aligned 8-byte word, read and written whole.
    let cached = unsafe { core::ptr::read_volatile(&raw const (*exe).exempt) };
    if stamp != 0 && cached & !1 == exempt_word(tgid, stamp, false) {
        return cached & 1 != 0;
    }
    // An entry of its own, not `PATH_SCRATCH`: the mapped-file judge holds that one when it
    // asks. Without room, not exempt (fail closed).
    let Ok(claim) = Claim::<scratch::LpmKey>::new() else {
        return false;
    };
    // SAFETY: a live map value, and this thread's scratch entry, which nobody else writes
    // while the claim lives.
    let (known, key) = unsafe { (&*exe, &mut *claim.entry()) };
    if !path_key(key, set, known.path.as_ptr(), known.len as usize) {
        return false;
    }
    let exempt = EXEC_PATHS.get(key).is_some_and(|rule| rule.wx_exempt != 0);
    if stamp != 0 {
        // SAFETY: as above.
        unsafe {
            core::ptr::write_volatile(&raw mut (*exe).exempt, exempt_word(tgid, stamp, exempt));
        }
    }
    exempt
}

fn read_implies_exec(cfg: &Config) -> bool {
    read_kernel::<u32>(current_task(), cfg.kernel.task_personality)
        .is_some_and(|p| p & READ_IMPLIES_EXEC != 0)
}

fn try_protection(ctx: &TracePointContext, syscall: u32) -> Result<(), i64> {
    let prot = syscall_arg(ctx, 2)? as u32;
    if prot & PROT_WRITE == 0 {
        return Ok(());
    }
    let cfg = config().ok_or(1)?;
    let mut reason = 0;
    if prot & PROT_EXEC != 0 {
        reason |= wx_reason::WRITE_EXEC;
    } else if prot & PROT_READ != 0 && read_implies_exec(cfg) {
        reason |= wx_reason::READ_IMPLIES_EXEC;
    }
    if reason == 0 || !traced(cfg) {
        return Ok(());
    }
    let Some(judged) = decide(cfg) else {
        return Ok(());
    };
    let (flags, fd, extra) = match syscall {
        wx_syscall::MMAP => (syscall_arg(ctx, 3)? as u32, syscall_arg(ctx, 4)? as i32, 0),
        wx_syscall::PKEY_MPROTECT => (0, -1, syscall_arg(ctx, 3)? as u32),
        _ => (0, -1, 0),
    };
    let addr = syscall_arg(ctx, 0)?;
    let len = syscall_arg(ctx, 1)?;
    hold(
        cfg,
        judged,
        &WxEvent {
            syscall,
            prot,
            flags,
            reason,
            addr,
            len,
            fd,
            extra,
            ..WxEvent::default()
        },
    )
}

/// Files the request of this thread until its syscall returns, where it is decided: a request
/// the kernel refuses (a bad descriptor, an unmapped range, a BPF LSM program) made no
/// mapping and is no violation of its own.
// Inlined: the record is built in place by the caller, and passing it on a frame of its own
// would cost stack that kernels before 6.13 count with the caller's.
#[inline(always)]
fn hold(cfg: &Config, judged: Violation, event: &WxEvent) -> Result<(), i64> {
    let tid = bpf_get_current_pid_tgid() as u32;
    // Filed zeroed, then filled in place: the entry is this thread's, read only by its own
    // syscall's exit and LSM hook, which come after this program.
    let filed = match ZEROES.get_ptr(0) {
        Some(zero) => {
            // SAFETY: ZERO_LEN (no fewer than a `PendingWx` has) bytes of zeroes, for which
            // every field of a `PendingWx` has a value.
            let zero = unsafe { &*zero.cast::<PendingWx>() };
            WX_PENDING.insert(tid, zero, 0).is_ok()
        }
        None => false,
    };
    let Some(pending) = WX_PENDING.get_ptr_mut(tid).filter(|_| filed) else {
        // No room to wait for the result: decide now rather than not at all.
        let judged = enforce(judged);
        report(cfg, judged, event);
        return Ok(());
    };
    // SAFETY: this thread's entry, just filed.
    let pending = unsafe { &mut *pending };
    pending.judged_hit = judged.hit;
    pending.judged_action = judged.action;
    pending.judged_rule = judged.rule;
    pending._pad = 0;
    pending.event = *event;
    Ok(())
}

/// Forgets thread `tid`'s W^X request in flight (the thread is gone).
pub fn forget_pending(tid: u32) {
    let _ = WX_PENDING.remove(tid);
}

entry_points! {
    /// One program on `sys_exit_mmap`, `sys_exit_mprotect`, `sys_exit_pkey_mprotect` and
    /// `sys_exit_shmat`: the request in flight says which call it was.
    #[tracepoint(category = "syscalls", name = "sys_exit_mmap")]
    fn sys_exit_protection(ctx: TracePointContext) -> u32 = try_returned(&ctx);
}

/// The W^X request of this thread, if one is pending: carried out and reported when the
/// kernel made the mapping (before the thread returns to user space), dropped when it
/// refused.
fn try_returned(ctx: &TracePointContext) -> Result<(), i64> {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(pending) = WX_PENDING.get_ptr(tid) else {
        return Ok(());
    };
    // SAFETY: a live map value, copied out before it is removed.
    let pending = unsafe { *pending };
    let _ = WX_PENDING.remove(tid);
    // SAFETY: every sys_exit record holds `ret` at this offset (checked at load time).
    let ret = crate::task::record_u64(ctx, SYSCALL_RET_OFFSET) as i64;
    // mmap returns an address; an error is a small negative number either way.
    if (-4095..0).contains(&ret) {
        return Ok(());
    }
    let cfg = config().ok_or(1)?;
    let judged = Violation {
        hit: pending.judged_hit,
        action: pending.judged_action,
        rule: pending.judged_rule,
    };
    // The act happened: a BPF LSM program, where there is one, did not refuse it.
    let judged = enforce(judged);
    let mut event = pending.event;
    if event.syscall == wx_syscall::MMAP || event.syscall == wx_syscall::SHMAT {
        // Where the kernel put it.
        event.addr = ret as u64;
    }
    report(cfg, judged, &event);
    Ok(())
}

/// Like [`judge`], without carrying out the action.
pub fn decide(cfg: &Config) -> Option<Violation> {
    if cfg.mode != mode::ENFORCE {
        return Some(Violation::ALLOWED);
    }
    let set = current_set_shallow();
    let ps = policy_set_in_place(set)?;
    // A gate that spares the exemption's lookups; the decision reads the three fields again,
    // together, after them (held across the lookups they would not fit the stack, see
    // `policy_set_in_place`).
    if ps.flags & set_flags::WX_DENY == 0 || exempt(set, ps.stamp) {
        return Violation::allowed_in(set, ps.flags);
    }
    let (flags, action, rule) = (ps.flags, ps.wx_action, ps.wx_rule);
    if flags & set_flags::WX_DENY == 0 {
        return Violation::allowed_in(set, flags);
    }
    Some(violation(action, set, rule))
}

/// What a W^X act of the current task amounts to: `None` when nothing is reported (no
/// policy, W^X allowed, or an exempt executable); in trace mode an observation; in enforce
/// mode a violation, whose action is carried out here.
pub fn judge(cfg: &Config) -> Option<Violation> {
    Some(enforce(decide(cfg)?))
}

/// Emits a W^X record for the current task, marked with `judged`. The record is copied
/// straight into the ring buffer, never onto the stack: kernels before 6.13 give a program
/// and the functions it calls 512 bytes of stack together, and copies did not fit (6.12
/// refused `sys_enter_mmap` at 544 bytes).
pub fn report(cfg: &Config, judged: Violation, record: &WxEvent) {
    let mut header = header(kind::WX, cfg);
    mark(&mut header, judged);
    emit(header, record);
}

/// Sends `record` under `header` with the executable recorded at exec, written straight
/// into the ring buffer: the whole record is too large for the BPF stack.
fn emit(mut header: EventHeader, record: &WxEvent) {
    if !admit(kind::WX, 0, &mut header) {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<WxRecord>(0) else {
        lost(kind::WX, 0, header.count, header.first_ns, &header);
        return;
    };
    // SAFETY: a reserved ring-buffer slot of the right size that only this program writes
    // until it is submitted.
    let slot = unsafe { &mut *entry.as_mut_ptr() };
    slot.event = *record;
    slot.event.header = header;
    slot._pad = 0;
    slot.exe_len = 0;
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(exe) = TASK_EXE.get_ptr(tgid) {
        // SAFETY: a live map value of PATH_LEN bytes, read into a slot of the same size.
        let copied = unsafe {
            let exe = &*exe;
            bpf_probe_read_kernel_buf(exe.path.as_ptr(), &mut slot.exe).map(|()| exe.len)
        };
        if let Ok(len) = copied {
            slot.exe_len = len;
        }
    }
    entry.submit(0);
}

entry_points! {
    #[tracepoint(category = "syscalls", name = "sys_enter_shmat")]
    fn sys_enter_shmat(ctx: TracePointContext) -> u32 = try_shmat(&ctx);
}

/// SysV shared memory attached executable: every attachment may write the segment.
fn try_shmat(ctx: &TracePointContext) -> Result<(), i64> {
    let shmflg = syscall_arg(ctx, 2)? as u32;
    if shmflg & SHM_EXEC == 0 {
        return Ok(());
    }
    let cfg = config().ok_or(1)?;
    if !traced(cfg) {
        return Ok(());
    }
    let Some(judged) = decide(cfg) else {
        return Ok(());
    };
    // A writable attachment is writable and executable, which `mmap_file` refuses where BPF
    // LSM runs (taking this record); a read-only one is carried out when the call returns.
    hold(
        cfg,
        judged,
        &WxEvent {
            syscall: wx_syscall::SHMAT,
            prot: PROT_READ
                | PROT_EXEC
                | if shmflg & SHM_RDONLY == 0 {
                    PROT_WRITE
                } else {
                    0
                },
            flags: shmflg,
            reason: wx_reason::SHARED_EXEC,
            addr: syscall_arg(ctx, 1)?,
            fd: -1,
            extra: syscall_arg(ctx, 0)? as u32,
            ..WxEvent::default()
        },
    )
}

fn try_personality(ctx: &TracePointContext) -> Result<(), i64> {
    let persona = syscall_arg(ctx, 0)? as u32;
    if persona == PERSONALITY_QUERY || persona & READ_IMPLIES_EXEC == 0 {
        return Ok(());
    }
    let cfg = config().ok_or(1)?;
    if !selected(cfg) {
        return Ok(());
    }
    emit(
        header(kind::WX, cfg),
        &WxEvent {
            syscall: wx_syscall::PERSONALITY,
            reason: wx_reason::READ_IMPLIES_EXEC,
            fd: -1,
            extra: persona,
            ..WxEvent::default()
        },
    );
    Ok(())
}
