//! Writes into memory that do not go through a writable mapping, the other way to run
//! injected code: into another process (`ptrace` attach, seize and write requests,
//! `process_vm_writev`, `/proc/<pid>/mem` opened for writing) or through `userfaultfd`, with
//! which the kernel fills pages (executable ones too) on the process's behalf. A
//! `memory.foreignWrites: Deny` rule makes them violations.
use agent_common::{Config, SYSCALL_RET_OFFSET, WxEvent, set_flags, wx_reason, wx_syscall};
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::diag::entry_points;
use crate::{
    file::{anonymous_file, super_block_field, task_fd_file},
    maps::FOREIGN_WATCH,
    policy::{Violation, current_set, enforce, policy_set, violation},
    task::{config, read_kernel, read_kernel_ptr, syscall_arg, traced},
    wx,
};

const PTRACE_POKETEXT: u64 = 4;
const PTRACE_POKEDATA: u64 = 5;
const PTRACE_POKEUSER: u64 = 6;
const PTRACE_SETREGS: u64 = 13;
const PTRACE_SETFPREGS: u64 = 15;
const PTRACE_ATTACH: u64 = 16;
const PTRACE_SETREGSET: u64 = 0x4205;
const PTRACE_SEIZE: u64 = 0x4206;
const PROC_SUPER_MAGIC: u64 = 0x9fa0;
const FMODE_WRITE: u32 = 0x2;

entry_points! {
    #[tracepoint(category = "syscalls", name = "sys_enter_ptrace")]
    fn sys_enter_ptrace(ctx: TracePointContext) -> u32 = try_ptrace(&ctx);

    #[tracepoint(category = "syscalls", name = "sys_enter_process_vm_writev")]
    fn sys_enter_process_vm_writev(ctx: TracePointContext) -> u32 = try_vm_writev(&ctx);

    #[tracepoint(category = "syscalls", name = "sys_enter_userfaultfd")]
    fn sys_enter_userfaultfd(ctx: TracePointContext) -> u32 = try_userfaultfd(&ctx);

    /// One program on `sys_exit_open`, `sys_exit_openat` and `sys_exit_openat2`: their records
    /// share the layout it reads.
    #[tracepoint(category = "syscalls", name = "sys_exit_openat")]
    fn sys_exit_open_mem(ctx: TracePointContext) -> u32 = try_opened(&ctx);
}

/// What a foreign write by the current task amounts to: `None` when nothing is reported; in
/// trace mode an observation; in enforce mode a violation, carried out here (a kill lands
/// before the call returns to user space).
fn judge(cfg: &Config) -> Option<Violation> {
    if cfg.mode != agent_common::mode::ENFORCE {
        return Some(Violation::ALLOWED);
    }
    let set = current_set();
    let ps = policy_set(set)?;
    if ps.flags & set_flags::FOREIGN_WRITES_DENY == 0 {
        return Violation::allowed_in(set, ps.flags);
    }
    Some(enforce(violation(ps.wx_action, set, ps.foreign_rule)))
}

fn report(cfg: &Config, syscall: u32, flags: u32, fd: i32, target: u32) {
    if !traced(cfg) {
        return;
    }
    let Some(judged) = judge(cfg) else {
        return;
    };
    wx::report(
        cfg,
        judged,
        &WxEvent {
            syscall,
            flags,
            reason: wx_reason::FOREIGN_WRITE,
            fd,
            extra: target,
            ..WxEvent::default()
        },
    );
}

fn try_ptrace(ctx: &TracePointContext) -> Result<(), i64> {
    ptrace(syscall_arg(ctx, 0)?, syscall_arg(ctx, 1)? as u32)
}

/// A `ptrace` request on `target`: attaching, seizing and writing requests are foreign
/// writes (also called from the 32-bit entry, `compat.rs`).
pub fn ptrace(request: u64, target: u32) -> Result<(), i64> {
    if !matches!(
        request,
        PTRACE_ATTACH
            | PTRACE_SEIZE
            | PTRACE_POKETEXT
            | PTRACE_POKEDATA
            | PTRACE_POKEUSER
            | PTRACE_SETREGS
            | PTRACE_SETFPREGS
            | PTRACE_SETREGSET
    ) {
        return Ok(());
    }
    let cfg = config().ok_or(1)?;
    report(cfg, wx_syscall::PTRACE, request as u32, -1, target);
    Ok(())
}

fn try_vm_writev(ctx: &TracePointContext) -> Result<(), i64> {
    vm_writev(syscall_arg(ctx, 0)? as u32)
}

/// `process_vm_writev` into `target`.
pub fn vm_writev(target: u32) -> Result<(), i64> {
    let cfg = config().ok_or(1)?;
    report(cfg, wx_syscall::PROCESS_VM_WRITEV, 0, -1, target);
    Ok(())
}

fn try_userfaultfd(ctx: &TracePointContext) -> Result<(), i64> {
    userfaultfd(syscall_arg(ctx, 0)? as u32)
}

/// A userfaultfd created with `flags`.
pub fn userfaultfd(flags: u32) -> Result<(), i64> {
    let cfg = config().ok_or(1)?;
    report(cfg, wx_syscall::USERFAULTFD, flags, -1, 0);
    Ok(())
}

/// Whether foreign writes are worth looking at: always in trace mode; in enforce mode while
/// some set denies them. Only a flag read as 0 says no: an unreadable one says yes (fail
/// closed).
pub fn watched(cfg: &Config) -> bool {
    cfg.mode != agent_common::mode::ENFORCE || !matches!(FOREIGN_WATCH.get(0), Some(0))
}

fn try_opened(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: every sys_exit record holds `ret` at this offset (checked at load time).
    let ret = crate::task::record_u64(ctx, SYSCALL_RET_OFFSET) as i64;
    if ret < 0 {
        return Ok(());
    }
    let cfg = config().ok_or(1)?;
    // Every open of every task passes here: while no set denies foreign writes, an enforcing
    // agent's `judge` has nothing to say about the file, so it is not read.
    if !watched(cfg) {
        return Ok(());
    }
    opened(cfg, ret)
}

/// Descriptor `ret`, just opened: `/proc/<pid>/mem` (any pid, this process's included) for
/// writing, or `/dev/userfaultfd` (which hands out userfaultfds)? Also called on the return of
/// an open through the 32-bit entry (`kill.rs`). Not inlined: `raw_syscalls/sys_exit` calls
/// it beside its other work.
#[inline(never)]
pub fn opened(cfg: &Config, ret: i64) -> Result<(), i64> {
    let file = task_fd_file(cfg, ret as u32).ok_or(1)?;
    if let Some((syscall, mode)) = foreign_file(cfg, file)? {
        report(cfg, syscall, mode, ret as i32, 0);
    }
    Ok(())
}

/// Whether `file`, being opened, is a means to write into memory: `/proc/<pid>/mem` for
/// writing (`PROC_MEM`) or `/dev/userfaultfd` (`USERFAULTFD`), with its `f_mode`.
#[inline(always)]
pub fn foreign_file(cfg: &Config, file: *const u8) -> Result<Option<(u32, u32)>, i64> {
    let k = &cfg.kernel;
    let mode: u32 = read_kernel(file, k.file_mode).ok_or(1)?;
    // A zeroed name, not an `Option`: the compiler read an absent one's bytes before its tag,
    // from stack 6.1's verifier had not seen written, and refused the program.
    let mut name = [0u8; 12];
    let mut named = false;
    if let Some(read) = read_kernel_ptr(file, k.file_dentry)
        .and_then(|dentry| read_kernel_ptr(dentry, k.dentry_name))
        .and_then(|name| read_kernel::<[u8; 12]>(name, 0))
    {
        name = read;
        named = true;
    }
    if name == *b"userfaultfd\0" && !anonymous_file(cfg, file) {
        return Ok(Some((wx_syscall::USERFAULTFD, mode)));
    }
    if mode & FMODE_WRITE == 0 {
        return Ok(None);
    }
    if super_block_field(cfg, file, k.sb_magic) != Some(PROC_SUPER_MAGIC) {
        return Ok(None);
    }
    // A procfs file opened for writing whose name cannot be read is judged as `mem`: fail
    // closed rather than let an unnamed write handle through unseen.
    if named && name[..4] != *b"mem\0" {
        return Ok(None);
    }
    Ok(Some((wx_syscall::PROC_MEM, mode)))
}
