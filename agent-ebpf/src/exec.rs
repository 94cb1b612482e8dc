//! exec: arguments at `sys_enter_execve(at)`, the executed path and the verdict-relevant
//! facts about the binary at `sched_process_exec` (after the point of no return).
use agent_common::{
    ARG_READ_LEN, ARGS_LEN, ARGS_OFFSET_LIMIT, Config, ExecArgs, ExecEvent, MAX_ARGS, NAME_LEN,
    SYSCALL_ARG0_OFFSET, exec_flags, kind,
};
use aya_ebpf::{
    EbpfContext,
    cty::c_void,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel_buf, bpf_probe_read_kernel_str_bytes,
        bpf_probe_read_user, generated::bpf_probe_read_user_str,
    },
    macros::tracepoint,
    programs::TracePointContext,
};

use crate::{
    maps::{EVENTS, EXEC_ARGS, EXEC_SCRATCH},
    task::{config, count_loss, current_task, header, read_kernel, read_kernel_ptr, selected},
};

const MEMFD_PREFIX: &[u8; 6] = b"memfd:";

/// Byte by byte, because a slice comparison may become a `memcmp` call, which BPF lacks.
fn is_memfd_name(name: &[u8; NAME_LEN]) -> bool {
    let mut i = 0;
    while i < MEMFD_PREFIX.len() {
        if name[i] != MEMFD_PREFIX[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[tracepoint(category = "syscalls", name = "sys_enter_execve")]
pub fn sys_enter_execve(ctx: TracePointContext) -> u32 {
    match try_capture_args(&ctx, 1) {
        Ok(()) | Err(_) => 0,
    }
}

#[tracepoint(category = "syscalls", name = "sys_enter_execveat")]
pub fn sys_enter_execveat(ctx: TracePointContext) -> u32 {
    match try_capture_args(&ctx, 2) {
        Ok(()) | Err(_) => 0,
    }
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    match try_exec(&ctx) {
        Ok(()) | Err(_) => 0,
    }
}

/// Copies `argv` (argument `argv_index` of the syscall) into `EXEC_ARGS` under the thread id.
fn try_capture_args(ctx: &TracePointContext, argv_index: usize) -> Result<(), i64> {
    let cfg = config().ok_or(1)?;
    if !selected(cfg) {
        return Ok(());
    }
    // SAFETY: the offset is inside the syscall tracepoint record (8-byte argument slots).
    let argv: u64 =
        unsafe { ctx.read_at(SYSCALL_ARG0_OFFSET + 8 * argv_index) }.map_err(i64::from)?;
    let argv = argv as *const *const u8;
    let scratch = EXEC_SCRATCH.get_ptr_mut(0).ok_or(1)?;
    // SAFETY: the per-CPU scratch slot is ours for the duration of this program.
    let args = unsafe { &mut *scratch };
    args.argc = 0;
    args.truncated = 0;
    let mut offset = 0usize;
    let mut complete = false;
    for i in 0..MAX_ARGS {
        // SAFETY: bpf_probe_read_user checks the user address.
        let arg = match unsafe { bpf_probe_read_user(argv.wrapping_add(i)) } {
            Ok(p) => p,
            Err(_) => break,
        };
        if arg.is_null() {
            complete = true;
            break;
        }
        if offset >= ARGS_OFFSET_LIMIT {
            break;
        }
        // The mask tells the verifier that the write stays inside the buffer.
        let dst = args
            .buf
            .as_mut_ptr()
            .wrapping_add(offset & (ARGS_OFFSET_LIMIT - 1));
        // SAFETY: dst has ARG_READ_LEN bytes of room (ARGS_LEN = limit + ARG_READ_LEN).
        let n = unsafe {
            bpf_probe_read_user_str(
                dst as *mut c_void,
                ARG_READ_LEN as u32,
                arg as *const c_void,
            )
        };
        if n <= 0 {
            break;
        }
        if n as usize == ARG_READ_LEN {
            args.truncated = 1;
        }
        offset += n as usize;
        args.argc += 1;
    }
    if !complete {
        args.truncated = 1;
    }
    args.len = if offset > ARGS_LEN {
        ARGS_LEN as u32
    } else {
        offset as u32
    };
    let tid = bpf_get_current_pid_tgid() as u32;
    // By reference: the record is too large for the 512-byte BPF stack.
    let args: &ExecArgs = args;
    EXEC_ARGS.insert(tid, args, 0).map_err(i64::from)
}

fn try_exec(ctx: &TracePointContext) -> Result<(), i64> {
    let cfg = config().ok_or(1)?;
    if !selected(cfg) {
        return Ok(());
    }
    let Some(mut entry) = EVENTS.reserve::<ExecEvent>(0) else {
        count_loss(kind::EXEC);
        return Ok(());
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved ring-buffer slot of the right size that only this
    // program writes until it is submitted.
    unsafe { fill_exec(ctx, cfg, &mut *event) };
    entry.submit(0);
    Ok(())
}

/// Fills every field of the record; a fact that cannot be read is flagged, never fatal, so
/// that the exec is always reported.
unsafe fn fill_exec(ctx: &TracePointContext, cfg: &Config, event: &mut ExecEvent) {
    event.header = header(kind::EXEC, cfg);
    event.flags = 0;
    event.argc = 0;
    event.args_len = 0;
    event.path[0] = 0;
    event.exe_name[0] = 0;

    let tp = &cfg.tracepoints;
    // SAFETY: offsets come from this tracepoint's format file.
    let loc: Option<u32> = unsafe { ctx.read_at(tp.exec_filename as usize) }.ok();
    if let Some(loc) = loc {
        let src = (ctx.as_ptr() as *const u8).wrapping_add((loc & 0xffff) as usize);
        // SAFETY: the helper bounds the copy by the destination length.
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(src, &mut event.path) };
    }
    // SAFETY: as above.
    let old_tid: u32 =
        unsafe { ctx.read_at::<i32>(tp.exec_old_pid as usize) }.map_or(0, |p| p as u32);
    event.old_tid = old_tid;

    match EXEC_ARGS.get_ptr(old_tid) {
        Some(args) => {
            // SAFETY: `args` points at a live map value of type ExecArgs.
            let args = unsafe { &*args };
            event.argc = args.argc;
            event.args_len = args.len;
            if args.truncated != 0 {
                event.flags |= exec_flags::ARGS_TRUNCATED;
            }
            // SAFETY: both buffers are ARGS_LEN bytes.
            if unsafe { bpf_probe_read_kernel_buf(args.buf.as_ptr(), &mut event.args) }.is_err() {
                event.flags |= exec_flags::ARGS_MISSING;
                event.args_len = 0;
            }
            let _ = EXEC_ARGS.remove(old_tid);
        }
        None => event.flags |= exec_flags::ARGS_MISSING,
    }

    event.flags |= exe_facts(cfg, &mut event.exe_name);
}

/// Reads the new image's `mm->exe_file`: its dentry name (memfd files are named `memfd:...`)
/// and whether it still has a link on its file system.
fn exe_facts(cfg: &Config, name: &mut [u8; NAME_LEN]) -> u32 {
    let k = &cfg.kernel;
    let task = current_task();
    let Some(file) =
        read_kernel_ptr(task, k.task_mm).and_then(|mm| read_kernel_ptr(mm, k.mm_exe_file))
    else {
        return exec_flags::EXE_UNKNOWN;
    };
    let mut flags = 0;
    match read_kernel_ptr(file, k.file_dentry)
        .and_then(|dentry| read_kernel_ptr(dentry, k.dentry_name))
    {
        Some(name_ptr) => {
            // SAFETY: the helper bounds the copy by the destination length.
            let _ = unsafe { bpf_probe_read_kernel_str_bytes(name_ptr, name) };
            if is_memfd_name(name) {
                flags |= exec_flags::MEMFD;
            }
        }
        None => flags |= exec_flags::EXE_UNKNOWN,
    }
    let nlink = read_kernel_ptr(file, k.file_inode)
        .and_then(|inode| read_kernel::<u32>(inode, k.inode_nlink));
    if nlink == Some(0) && flags & exec_flags::MEMFD == 0 {
        flags |= exec_flags::DELETED;
    }
    flags
}
