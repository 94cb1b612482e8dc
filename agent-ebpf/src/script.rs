//! Scripts decided on the file their interpreter opens. By `sched_process_exec` the kernel
//! has released the script's own file; only the name it was run by remains, and that name is
//! the caller's (`./s.sh`, `dir/../s.sh`, `/dev/fd/3/s.sh`, a symlink). The interpreter gets
//! exactly that name and opens it: the file that open returns is the script, and it is
//! decided then, by its real path, before the interpreter reads a line of it.
use agent_common::{
    Config, PATH_LEN, PendingScript, SCRIPT_NAMES, SYSCALL_RET_OFFSET, exec_flags, mode,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel_buf, bpf_probe_read_user_str_bytes},
    macros::tracepoint,
    programs::TracePointContext,
};

use crate::diag::entry_points;
use crate::{
    file::{anonymous_file, task_fd_file},
    maps::{EXEC_PATHS, SCRIPT_PENDING},
    path::{PathScratch, path_key, real_path},
    policy::{current_set, decide_exec, enforce, fail_closed, policy_set},
    scratch::{self, Claim},
    task::{config, current_task, read_kernel, read_kernel_ptr, syscall_arg_at},
};

entry_points! {
    #[tracepoint(category = "syscalls", name = "sys_enter_open")]
    fn sys_enter_open_script(ctx: TracePointContext) -> u32 = try_opening(&ctx, 0);

    /// One program on `sys_enter_openat` and `sys_enter_openat2`: the name is argument 1 of both.
    #[tracepoint(category = "syscalls", name = "sys_enter_openat")]
    fn sys_enter_openat_script(ctx: TracePointContext) -> u32 = try_opening(&ctx, 1);

    /// One program on `sys_exit_open`, `sys_exit_openat` and `sys_exit_openat2`.
    #[tracepoint(category = "syscalls", name = "sys_exit_open")]
    fn sys_exit_open_script(ctx: TracePointContext) -> u32 = try_opened(&ctx);
}

/// What became of a script the interpreter is to open.
pub enum Awaited {
    /// Every name of the chain is awaited.
    Yes,
    /// The chain is deeper than the names awaited: a level between may run unverified.
    TooDeep,
    /// It cannot be awaited (the map is full).
    Full,
}

/// Records the script of the current exec (its name in `scratch.filename`) and the names of
/// the interpreter scripts between (from the new image's arguments, which the kernel wrote
/// and nothing has run to change yet) until the interpreters open them.
pub fn await_open(cfg: &Config, scratch: &mut PathScratch, tgid: u32) -> Awaited {
    let pending = &mut scratch.pending;
    pending.opener_tid = 0;
    pending.opening = 0;
    // SAFETY: both buffers are PATH_LEN bytes.
    if unsafe { bpf_probe_read_kernel_buf(scratch.filename.as_ptr(), &mut pending.names[0]) }
        .is_err()
    {
        return Awaited::Full;
    }
    let whole = chain_names(cfg, pending);
    let pending: &PendingScript = pending;
    if SCRIPT_PENDING.insert(tgid, pending, 0).is_err() {
        return Awaited::Full;
    }
    if whole {
        Awaited::Yes
    } else {
        Awaited::TooDeep
    }
}

/// Fills `names[1..]` with the new image's `argv[1]`... up to the one equal to `names[0]`
/// (the script's own name, which the kernel put last); true when it was found. With
/// `A: #!/s/B` and `B: #!/bin/sh`, the arguments are `/bin/sh /s/B A`: `sh` opens `/s/B`.
fn chain_names(cfg: &Config, pending: &mut PendingScript) -> bool {
    let k = &cfg.kernel;
    let mut j = 1;
    while j < SCRIPT_NAMES {
        pending.names[j][0] = 0;
        j += 1;
    }
    let Some(mm) = read_kernel_ptr(current_task(), k.task_mm) else {
        return false;
    };
    let (Some(start), Some(end)) = (
        read_kernel::<u64>(mm, k.mm_arg_start),
        read_kernel::<u64>(mm, k.mm_arg_end),
    ) else {
        return false;
    };
    // argv[0], the final interpreter, read only for its length.
    // SAFETY: the helper checks the user address and bounds the copy.
    let Ok(arg0) =
        (unsafe { bpf_probe_read_user_str_bytes(start as *const u8, &mut pending.names[1]) })
    else {
        return false;
    };
    let mut pos = start + arg0.len() as u64 + 1;
    let mut j = 1;
    while j < SCRIPT_NAMES {
        if pos >= end {
            pending.names[j][0] = 0;
            return false;
        }
        // SAFETY: as above.
        let Ok(arg) =
            (unsafe { bpf_probe_read_user_str_bytes(pos as *const u8, &mut pending.names[j]) })
        else {
            pending.names[j][0] = 0;
            return false;
        };
        pos += arg.len() as u64 + 1;
        if same_name(&pending.names[j], &pending.names[0]) {
            // The script's own name: awaited as names[0] already.
            pending.names[j][0] = 0;
            return true;
        }
        j += 1;
    }
    false
}

/// Forgets the script of a process that has exited.
pub fn forget(tgid: u32) {
    let _ = SCRIPT_PENDING.remove(tgid);
}

/// An `open` by a process with a script waiting: is it the script's name?
fn try_opening(ctx: &TracePointContext, name_arg: usize) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(pending) = SCRIPT_PENDING.get_ptr_mut((pid_tgid >> 32) as u32) else {
        return Ok(());
    };
    let name = syscall_arg_at(ctx, name_arg)? as *const u8;
    // Without room to read the name, this open could be the script's and would go unjudged:
    // fail closed now.
    let claim = match Claim::<scratch::Path>::new() {
        Ok(claim) => claim,
        Err(err) => {
            if config().is_some_and(|cfg| cfg.mode == mode::ENFORCE) {
                crate::policy::unverifiable_now();
            }
            return Err(err);
        }
    };
    // SAFETY: this thread's scratch entry, which nobody else writes while the claim lives.
    let scratch = unsafe { &mut *claim.entry() };
    scratch.filename[0] = 0;
    // SAFETY: the helper checks the user address and bounds the copy.
    unsafe { bpf_probe_read_user_str_bytes(name, &mut scratch.filename) }?;
    // SAFETY: a live map value.
    let pending = unsafe { &mut *pending };
    let mut j = 0;
    while j < SCRIPT_NAMES {
        if pending.names[j][0] != 0 && same_name(&pending.names[j], &scratch.filename) {
            pending.opener_tid = pid_tgid as u32;
            pending.opening = j as u32;
            break;
        }
        j += 1;
    }
    Ok(())
}

/// Byte by byte up to the first NUL, as BPF has no `strcmp`.
fn same_name(a: &[u8; PATH_LEN], b: &[u8; PATH_LEN]) -> bool {
    let mut i = 0;
    while i < PATH_LEN {
        if a[i] != b[i] {
            return false;
        }
        if a[i] == 0 {
            return true;
        }
        i += 1;
    }
    // Neither ended: a name the kernel could not pass whole, never matched.
    false
}

fn all_opened(pending: &PendingScript) -> bool {
    let mut j = 0;
    while j < SCRIPT_NAMES {
        if pending.names[j][0] != 0 {
            return false;
        }
        j += 1;
    }
    true
}

/// The end of an `open` of the script's name: the descriptor it returned is the script.
/// Inlined into each program: as one BPF function shared by three, LLVM passed it more
/// arguments than the verifier lets a function read.
#[inline(always)]
fn try_opened(ctx: &TracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(pending) = SCRIPT_PENDING.get_ptr_mut(tgid) else {
        return Ok(());
    };
    // SAFETY: a live map value.
    let pending = unsafe { &mut *pending };
    if pending.opener_tid != pid_tgid as u32 {
        return Ok(());
    }
    pending.opener_tid = 0;
    // SAFETY: every sys_exit record holds `ret` at this offset (checked at load time).
    let ret = crate::task::record_u64(ctx, SYSCALL_RET_OFFSET) as i64;
    if ret < 0 {
        // Not opened: nothing of it runs; the name stays awaited.
        return Ok(());
    }
    pending.names[pending.opening as usize & (SCRIPT_NAMES - 1)][0] = 0;
    if all_opened(pending) {
        let _ = SCRIPT_PENDING.remove(tgid);
    }
    let cfg = config().ok_or(1)?;
    let set = current_set();
    let Some(ps) = policy_set(set) else {
        return Ok(());
    };
    let file = task_fd_file(cfg, ret as u32);
    let memfd = file.is_some_and(|f| anonymous_file(cfg, f));
    // Without room to walk its path, the script is unverifiable: decided so below.
    let claim = Claim::<scratch::Path>::new();
    // Plain values, not the Option: LLVM may leave an empty Option's payload undefined,
    // and the verifier refuses to copy it.
    let mut path: *const u8 = core::ptr::null();
    let mut len = 0;
    let mut forged = false;
    let mut rule = agent_common::PathRule::default();
    let mut keyed = false;
    if let Ok(claim) = &claim {
        // SAFETY: this thread's scratch entry, which nobody else writes while the claim
        // lives (to the end of this function, past the report that reads `path`).
        let scratch = unsafe { &mut *claim.entry() };
        if let Some(built) = file.and_then(|f| real_path(cfg, f, scratch)) {
            path = built.ptr(&scratch.path);
            len = built.len;
            forged = built.forged();
        }
        if !path.is_null() && !forged && path_key(&mut scratch.key, set, path, len) {
            keyed = true;
            if let Some(found) = EXEC_PATHS.get(&scratch.key) {
                rule = *found;
            }
        }
    }
    let file = file.unwrap_or(core::ptr::null());
    let drift = crate::drift::of(cfg, file) != 0;
    let mut v = decide_exec(set, &ps, memfd, drift, keyed, &rule, None);
    if !keyed && !memfd && !v.is_hit() {
        v = fail_closed(set, &ps);
    }
    if !v.is_hit() {
        return Ok(());
    }
    // Reported as carried out by `report_file` (a Deny as the kill it was here).
    enforce(v);
    let mut flags = exec_flags::SCRIPT | exec_flags::OPENED | exec_flags::ARGS_MISSING;
    if memfd {
        flags |= exec_flags::MEMFD;
    }
    if !keyed {
        flags |= exec_flags::UNVERIFIABLE;
    }
    if forged {
        flags |= exec_flags::USER_MOUNT;
    }
    crate::exec::report_file(cfg, v, flags, path, tgid, file);
    Ok(())
}
