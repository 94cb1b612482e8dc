//! Foreign writes by system call, refused before the act (BPF LSM) where programs may read
//! the task's registers (`prevent::FOREIGN_CALLS`): `ptrace_access_check` for a tracer's
//! attach or seize and for `process_vm_writev`, `ptrace_traceme` for a process that offers
//! itself to its parent (who may then write into it without attaching), and
//! `inode_init_security_anon` for every userfaultfd the kernel makes (the system call and
//! `/dev/userfaultfd`'s `USERFAULTFD_IOC_NEW`). Every entry reaches them, the 32-bit one
//! too; the call each came from is read from the registers (`calls.rs`), and one that cannot
//! be read is judged a foreign write (fail closed). The `sys_enter_ptrace`,
//! `sys_enter_process_vm_writev` and `sys_enter_userfaultfd` tracepoints are then not
//! attached.
use agent_common::{Config, wx_syscall};
use aya_ebpf::{macros::lsm, programs::LsmContext};

use crate::{
    diag::gave_up,
    maps::CGROUP_SETS,
    policy::origin,
    prevent_exec::verdict,
    prevent_open::refuse_foreign,
    task::{config, current_regs, current_task, read_kernel, read_kernel_ptr},
};

/// `ptrace_access_check`'s mode bit of the checks that let the caller write or control.
const PTRACE_MODE_ATTACH: u32 = 0x02;
/// `thread_info.status` bit: the task is in a 32-bit system call.
const TS_COMPAT: u32 = 0x0002;
const NR_PTRACE: u64 = 101;
const NR_PROCESS_VM_WRITEV: u64 = 311;
const NR_USERFAULTFD: u64 = 323;
const NR32_PTRACE: u64 = 26;
const NR32_PROCESS_VM_WRITEV: u64 = 348;
const NR32_USERFAULTFD: u64 = 374;
/// The x32 ABI (64-bit mode, `TS_COMPAT` clear) marks its calls with this bit and has calls
/// of its own for these two (kernels booted with `syscall.x32=y`).
const X32_SYSCALL_BIT: u64 = 0x4000_0000;
const NR_X32_PTRACE: u64 = X32_SYSCALL_BIT | 521;
const NR_X32_PROCESS_VM_WRITEV: u64 = X32_SYSCALL_BIT | 540;

/// The call the current task is in and its first argument, from its registers; `None`
/// when they cannot be read.
#[inline(always)]
fn current_call(cfg: &Config) -> Option<(u64, u64, bool)> {
    let k = &cfg.kernel;
    let regs = current_regs()?;
    let status: u32 = read_kernel(current_task(), k.thread_status)?;
    let nr = read_kernel::<u64>(regs, k.regs_orig_ax)?;
    let compat = status & TS_COMPAT != 0;
    let arg0 = if compat {
        read_kernel::<u64>(regs, k.regs_bx)? & 0xffff_ffff
    } else {
        read_kernel::<u64>(regs, k.regs_di)?
    };
    Some((nr, arg0, compat))
}

/// `ptrace_access_check(struct task_struct *child, unsigned int mode)`; argument 2 is what
/// the LSMs before this program decided.
#[lsm(hook = "ptrace_access_check")]
pub fn lsm_ptrace_access_check(ctx: LsmContext) -> i32 {
    let (child, mode, prior): (*const u8, u32, i32) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    if prior != 0 {
        return prior;
    }
    match try_access_check(child, mode) {
        Ok(refused) => verdict(refused),
        Err(err) => gave_up(
            &ctx,
            const { agent_common::probe_error::id("lsm_ptrace_access_check") },
            err,
        ),
    }
}

/// Whether the access is refused.
fn try_access_check(child: *const u8, mode: u32) -> Result<bool, i64> {
    // Reading another process's files under /proc and the like: no write.
    if mode & PTRACE_MODE_ATTACH == 0 {
        return Ok(false);
    }
    let cfg = config().ok_or(1)?;
    let target: u32 = read_kernel(child, cfg.kernel.task_tgid).unwrap_or(0);
    let (syscall, flags) = match current_call(cfg) {
        Some((nr, request, false)) if nr == NR_PTRACE => (wx_syscall::PTRACE, request as u32),
        Some((nr, request, true)) if nr == NR32_PTRACE => (wx_syscall::PTRACE, request as u32),
        Some((nr, request, false)) if nr == NR_X32_PTRACE => (wx_syscall::PTRACE, request as u32),
        Some((nr, _, false)) if nr == NR_PROCESS_VM_WRITEV || nr == NR_X32_PROCESS_VM_WRITEV => {
            (wx_syscall::PROCESS_VM_WRITEV, 0)
        }
        Some((nr, _, true)) if nr == NR32_PROCESS_VM_WRITEV => (wx_syscall::PROCESS_VM_WRITEV, 0),
        // Reading (`process_vm_readv`), and the rest that asks for this mode: `/proc/<pid>/mem`
        // is `file_open`'s, the others (`pidfd_getfd`, `perf_event_open`) write nothing.
        Some(_) => return Ok(false),
        // The call cannot be told: a write for all that can be known (fail closed).
        None => (wx_syscall::PTRACE, u32::MAX),
    };
    Ok(refuse_foreign(cfg, syscall, flags, target, 0))
}

/// `ptrace_traceme(struct task_struct *parent)`; argument 1 is the LSMs' decision so far.
#[lsm(hook = "ptrace_traceme")]
pub fn lsm_ptrace_traceme(ctx: LsmContext) -> i32 {
    let (parent, prior): (*const u8, i32) = (ctx.arg(0), ctx.arg(1));
    if prior != 0 {
        return prior;
    }
    match try_traceme(parent) {
        Ok(refused) => verdict(refused),
        Err(err) => gave_up(
            &ctx,
            const { agent_common::probe_error::id("lsm_ptrace_traceme") },
            err,
        ),
    }
}

/// `PTRACE_TRACEME` is the request 0: the caller is the one written into, by `parent`. It is
/// judged by the caller's own policy, else by the one its parent is pinned to (a parent under
/// a `foreignWrites` rule whose child left for a cgroup without one).
fn try_traceme(parent: *const u8) -> Result<bool, i64> {
    let cfg = config().ok_or(1)?;
    let target: u32 = read_kernel(parent, cfg.kernel.task_tgid).unwrap_or(0);
    let parents = match origin(target) {
        0 => 0,
        // SAFETY: the value is copied out at once.
        binding => unsafe { CGROUP_SETS.get(binding) }.copied().unwrap_or(0),
    };
    Ok(refuse_foreign(cfg, wx_syscall::PTRACE, 0, target, parents))
}

/// `inode_init_security_anon(struct inode *inode, const struct qstr *name, const struct
/// inode *context_inode)`; argument 3 is the LSMs' decision so far.
#[lsm(hook = "inode_init_security_anon")]
pub fn lsm_userfaultfd(ctx: LsmContext) -> i32 {
    let (name, prior): (*const u8, i32) = (ctx.arg(1), ctx.arg(3));
    if prior != 0 {
        return prior;
    }
    match try_anon_inode(name) {
        Ok(refused) => verdict(refused),
        Err(err) => gave_up(
            &ctx,
            const { agent_common::probe_error::id("lsm_userfaultfd") },
            err,
        ),
    }
}

/// Whether a userfaultfd is refused; other anonymous inodes (io_uring's, secret memory) pass.
fn try_anon_inode(name: *const u8) -> Result<bool, i64> {
    let cfg = config().ok_or(1)?;
    // A name that cannot be read is judged a userfaultfd (fail closed).
    let text = read_kernel_ptr(name, cfg.kernel.qstr_name)
        .and_then(|text| read_kernel::<[u8; 14]>(text, 0));
    if text.is_some_and(|text| text != *b"[userfaultfd]\0") {
        return Ok(false);
    }
    // The system call's flags; 0 for `/dev/userfaultfd`'s ioctl.
    let flags = match current_call(cfg) {
        Some((nr, flags, false)) if nr & !X32_SYSCALL_BIT == NR_USERFAULTFD => flags as u32,
        Some((nr, flags, true)) if nr == NR32_USERFAULTFD => flags as u32,
        _ => 0,
    };
    Ok(refuse_foreign(cfg, wx_syscall::USERFAULTFD, flags, 0, 0))
}
