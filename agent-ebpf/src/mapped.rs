//! Code loaded without an exec of its file: the dynamic loader run on a program
//! (`ld.so /tmp/x`), `dlopen`, `LD_PRELOAD` all map the file executable with `mmap`. Such a
//! mapping of a file the exec rules deny (or of an anonymous file under a memfd deny) is an
//! exec violation. Allowlists do not apply: every program maps its shared libraries.
//!
//! The same mapping of memory another mapping can write (an anonymous file such as a memfd,
//! or a file in `/dev/shm`) is W^X by intent, the dual-mapping pattern of JIT engines and
//! injectors alike: a W^X violation unless the executable is exempt.
use agent_common::{
    ExecEvent, PathRule, WxEvent, action, exec_flags, kind, mode, path_verdict, set_flags,
    wx_reason, wx_syscall,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel_buf},
    macros::tracepoint,
    programs::TracePointContext,
};

use crate::{
    file::{anonymous_file, task_fd_file, tmpfs_file},
    maps::{EVENTS, EXEC_PATHS, PATH_SCRATCH, TASK_EXE},
    path::{path_key, real_path},
    policy::{Violation, current_set, enforce, mark, policy_set, violation},
    task::{config, count_loss, header, syscall_arg, traced},
    throttle::admit,
    wx,
};

const PROT_EXEC: u64 = 4;
const MAP_ANONYMOUS: u64 = 0x20;

/// A second program on `sys_enter_mmap` (beside the W^X one), so each stays small.
#[tracepoint(category = "syscalls", name = "sys_enter_mmap")]
pub fn sys_enter_mmap_exec(ctx: TracePointContext) -> u32 {
    match try_mapped(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

fn try_mapped(ctx: &TracePointContext) -> Result<(), i64> {
    let prot = syscall_arg(ctx, 2)?;
    let flags = syscall_arg(ctx, 3)?;
    if prot & PROT_EXEC == 0 || flags & MAP_ANONYMOUS != 0 {
        return Ok(());
    }
    let cfg = config().ok_or(1)?;
    if !traced(cfg) {
        return Ok(());
    }
    let enforcing = cfg.mode == mode::ENFORCE;
    let set = current_set();
    let ps = policy_set(set);
    if enforcing && ps.is_none() {
        return Ok(());
    }
    let exec_rules = ps.is_some_and(|ps| ps.exec_action != 0);
    let fd = syscall_arg(ctx, 4)? as u32;
    let file = task_fd_file(cfg, fd).ok_or(1)?;
    let memfd = anonymous_file(cfg, file);
    let tmpfs = !memfd && tmpfs_file(cfg, file);
    if !exec_rules && !memfd && !tmpfs {
        return Ok(());
    }
    let scratch = PATH_SCRATCH.get_ptr_mut(0).ok_or(1)?;
    // SAFETY: the per-CPU scratch slot is ours for the duration of this program.
    let scratch = unsafe { &mut *scratch };
    let path = real_path(cfg, file, scratch);
    let shared = memfd || (tmpfs && path.is_some_and(|b| under_dev_shm(b.ptr(&scratch.path))));
    if shared {
        shared_exec(ctx, cfg, prot, flags, fd)?;
    }
    let Some(ps) = ps.filter(|_| enforcing && exec_rules) else {
        return Ok(());
    };
    let mut rule = PathRule::default();
    let verified = path.is_some_and(|b| !b.forged());
    if let Some(built) = path
        && verified
        && path_key(&mut scratch.key, set, built.ptr(&scratch.path), built.len)
        && let Some(found) = EXEC_PATHS.get(&scratch.key)
    {
        rule = *found;
    }
    let v = if memfd && ps.flags & set_flags::EXEC_DENY_MEMFD != 0 {
        violation(ps.exec_action, set, ps.memfd_rule)
    } else if rule.exec == path_verdict::DENY {
        violation(ps.exec_action, set, rule.exec_rule.into())
    } else if !verified && !memfd && ps.exec_action == u32::from(action::KILL) {
        // A file whose real path cannot be resolved, under Kill: fails closed as at exec.
        violation(ps.exec_action, set, agent_common::rule_id::UNVERIFIABLE)
    } else {
        Violation::ALLOWED
    };
    if !v.is_hit() {
        return Ok(());
    }
    enforce(v);

    let mut head = header(kind::EXEC, cfg);
    mark(&mut head, v);
    if !admit(kind::EXEC, 0, &mut head) {
        return Ok(());
    }
    let Some(mut entry) = EVENTS.reserve::<ExecEvent>(0) else {
        count_loss(kind::EXEC);
        return Ok(());
    };
    // SAFETY: a reserved ring-buffer slot of the right size that only this program writes
    // until it is submitted.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    event.header = head;
    event.flags = exec_flags::MAPPED | exec_flags::ARGS_MISSING;
    if memfd {
        event.flags |= exec_flags::MEMFD;
    }
    match path {
        None => event.flags |= exec_flags::UNVERIFIABLE | exec_flags::EXE_PATH_TRUNCATED,
        Some(built) if built.forged() => {
            event.flags |= exec_flags::UNVERIFIABLE | exec_flags::USER_MOUNT;
        }
        Some(_) => {}
    }
    event.old_tid = event.header.tid;
    event.argc = 0;
    event.args_len = 0;
    event.exe_name = [0; agent_common::NAME_LEN];
    event.path[0] = 0;
    if let Some(built) = path {
        // SAFETY: the source has at least PATH_LEN bytes from any start.
        let _ = unsafe { bpf_probe_read_kernel_buf(built.ptr(&scratch.path), &mut event.path) };
    }
    // The process's own executable, as recorded at its exec.
    event.exe_path[0] = 0;
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(exe) = TASK_EXE.get_ptr(tgid) {
        // SAFETY: a live map value of PATH_LEN bytes.
        let _ = unsafe { bpf_probe_read_kernel_buf((*exe).path.as_ptr(), &mut event.exe_path) };
    }
    entry.submit(0);
    Ok(())
}

const DEV_SHM: &[u8; 9] = b"/dev/shm/";

/// Whether a built path starts with `/dev/shm/`; byte by byte, as BPF has no `memcmp`.
fn under_dev_shm(path: *const u8) -> bool {
    let mut buf = [0u8; 9];
    // SAFETY: the helper checks the source; a built path has at least 9 readable bytes after
    // its start inside the scratch buffer.
    if unsafe { bpf_probe_read_kernel_buf(path, &mut buf) }.is_err() {
        return false;
    }
    let mut i = 0;
    while i < DEV_SHM.len() {
        if buf[i] != DEV_SHM[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Reports (and in enforce mode decides) an executable mapping of shared memory.
fn shared_exec(
    ctx: &TracePointContext,
    cfg: &agent_common::Config,
    prot: u64,
    flags: u64,
    fd: u32,
) -> Result<(), i64> {
    let Some(judged) = wx::judge(cfg) else {
        return Ok(());
    };
    wx::report(
        cfg,
        judged,
        WxEvent {
            syscall: wx_syscall::MMAP,
            prot: prot as u32,
            flags: flags as u32,
            reason: wx_reason::SHARED_EXEC,
            addr: syscall_arg(ctx, 0)?,
            len: syscall_arg(ctx, 1)?,
            fd: fd as i32,
            ..WxEvent::default()
        },
    );
    Ok(())
}
