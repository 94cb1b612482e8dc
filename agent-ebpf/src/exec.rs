//! exec: the executed path, its arguments and the verdict-relevant facts about the binary at
//! `sched_process_exec` (after the point of no return); arguments also at the exec's entry
//! (`raw_syscalls/sys_enter`), for an exec the BPF LSM refuses before it has a new image.
use agent_common::{
    ARG_READ_LEN, ARGC_ALL, ARGS_LEN, ARGS_OFFSET_LIMIT, Config, ExePath, ExecArgs, ExecEvent,
    FileOrigin, MAX_ARGS, NAME_LEN, PATH_LEN, PathRule, exec_flags, kind, mode,
};
use aya_ebpf::{
    cty::c_void,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel_buf, bpf_probe_read_kernel_str_bytes,
        bpf_probe_read_user,
        generated::{bpf_probe_read_user as probe_read_user_raw, bpf_probe_read_user_str},
    },
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};

use crate::diag::entry_points;
use crate::{
    file::{anonymous_file, task_fd_file},
    maps::{EVENTS, EXEC_ARGS, EXEC_PATHS, TASK_EXE},
    path::{Built, PathScratch, path_key, real_path},
    policy::mark,
    policy::{Violation, current_set, decide_exec, enforce, fail_closed, policy_set},
    scratch::{self, Claim},
    script::Awaited,
    task::{config, current_task, header, read_kernel, read_kernel_ptr, selected},
    throttle::{admit, lost},
};

const DEV_FD: &[u8; 8] = b"/dev/fd/";

/// `N` of a filename `/dev/fd/N` or `/dev/fd/N/...` (how the kernel names an `execveat`
/// by descriptor); byte by byte, as BPF has no `memcmp`.
fn fd_of_dev_fd_path(name: &[u8; PATH_LEN]) -> Option<u32> {
    let mut i = 0;
    while i < DEV_FD.len() {
        if name[i] != DEV_FD[i] {
            return None;
        }
        i += 1;
    }
    let mut fd: u32 = 0;
    let mut digits = 0;
    while digits < 10 {
        let c = name[DEV_FD.len() + digits];
        if !c.is_ascii_digit() {
            break;
        }
        fd = fd.wrapping_mul(10).wrapping_add(u32::from(c - b'0'));
        digits += 1;
    }
    (digits > 0).then_some(fd)
}

entry_points! {
    /// A raw tracepoint: its arguments include `bprm`, which tells a script from its
    /// interpreter and gives the executed file itself.
    #[raw_tracepoint(tracepoint = "sched_process_exec")]
    fn sched_process_exec(ctx: RawTracePointContext) -> i32 = judge::<false>(&ctx);

    /// The same judgement, by a program with a recursion guard of its own, for an exec the
    /// first one was skipped for (`judged.rs`); attached right after it.
    #[raw_tracepoint(tracepoint = "sched_process_exec")]
    fn sched_process_exec_again(ctx: RawTracePointContext) -> i32 = judge::<true>(&ctx);
}

/// Judges the exec unless this is the second program and the first judged it already.
#[inline(always)]
fn judge<const AGAIN: bool>(ctx: &RawTracePointContext) -> Result<(), i64> {
    let cfg = config().ok_or(1)?;
    // In trace mode only what is reported is marked (for the second program's sake).
    if cfg.mode != mode::ENFORCE && !selected(cfg) {
        return Ok(());
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !crate::judged::claim(tgid, crate::judged::EXEC, AGAIN) {
        return Ok(());
    }
    try_exec(ctx)
}

/// x86-64 `execve` and `execveat`.
const NR_EXECVE: i64 = 59;
const NR_EXECVEAT: i64 = 322;
/// `thread_info.status` bit: the task is in a 32-bit system call.
const TS_COMPAT: u32 = 0x0002;

/// `raw_syscalls/sys_enter`, where the BPF LSM refuses execs: the arguments of a 64-bit
/// `execve` or `execveat`, kept for the exec it refuses before there is a new image to read
/// them from (a syscall tracepoint of their own would put every task on the system call slow
/// path). 0, or the error code of a read that failed: a plain code, since LLVM combined two
/// `Result`s into a read of a register the verifier had not seen written.
#[inline(never)]
pub fn at_exec_entry(ctx: &RawTracePointContext) -> i64 {
    match try_exec_entry(ctx) {
        Ok(()) => 0,
        Err(err) => err,
    }
}

#[inline(always)]
fn try_exec_entry(ctx: &RawTracePointContext) -> Result<(), i64> {
    let nr: i64 = ctx.arg(1);
    if nr != NR_EXECVE && nr != NR_EXECVEAT {
        return Ok(());
    }
    let cfg = config().ok_or(1)?;
    // Where `bprm_check_security` reads them itself (`EXEC_ENTRY`), only where it may report.
    if cfg.prevent & agent_common::prevent::EXEC == 0
        || cfg.prevent & agent_common::prevent::EXEC_ENTRY != 0
        || !selected(cfg)
    {
        return Ok(());
    }
    // The same numbers through the 32-bit entry are other calls.
    let status: u32 = read_kernel(current_task(), cfg.kernel.thread_status).ok_or(1)?;
    if status & TS_COMPAT != 0 {
        return Ok(());
    }
    let regs = ctx.arg::<u64>(0) as *const u8;
    let k = &cfg.kernel;
    let at = if nr == NR_EXECVE {
        k.regs_si
    } else {
        k.regs_dx
    };
    let argv: u64 = read_kernel(regs, at).ok_or(1)?;
    capture_args(argv as *const *const u8)
}

/// `bprm_check_security` (`prevent::EXEC_ENTRY`), for an exec it may report: the arguments as
/// the caller's memory holds them, read through the registers the task entered `execve` or
/// `execveat` with, into `EXEC_ARGS` under the thread id (every level of the exec still runs
/// the caller's image). A 32-bit call's, or what cannot be read, leave no entry, so no earlier
/// exec's arguments are taken for these (the report says `argsMissing`). 0, or the error code.
#[inline(never)]
pub fn args_from_regs(cfg: &Config) -> i64 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let captured = match entry_argv(cfg) {
        Some(argv) => capture_args(argv),
        None => Err(1),
    };
    match captured {
        Ok(()) => 0,
        Err(err) => {
            let _ = EXEC_ARGS.remove(tid);
            err
        }
    }
}

/// `argv` of the 64-bit `execve` or `execveat` the current task is in, from its registers.
#[inline(always)]
fn entry_argv(cfg: &Config) -> Option<*const *const u8> {
    let k = &cfg.kernel;
    let regs = crate::task::current_regs()?;
    let status: u32 = read_kernel(current_task(), k.thread_status)?;
    if status & TS_COMPAT != 0 {
        return None;
    }
    let nr: i64 = read_kernel(regs, k.regs_orig_ax)?;
    let at = match nr {
        NR_EXECVE => k.regs_si,
        NR_EXECVEAT => k.regs_dx,
        _ => return None,
    };
    let argv: u64 = read_kernel(regs, at)?;
    Some(argv as *const *const u8)
}

/// Copies `argv` into `EXEC_ARGS` under the thread id.
#[inline(always)]
fn capture_args(argv: *const *const u8) -> Result<(), i64> {
    // No room: the exec is reported without its arguments (`argsMissing`), and counted.
    let claim = Claim::<scratch::Args>::new()?;
    // SAFETY: this thread's scratch entry, which nobody else writes while the claim lives.
    let args = unsafe { &mut *claim.entry() };
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

/// What the exec's own facts are, gathered before anything is decided or emitted.
struct ExecFacts {
    flags: u32,
    old_tid: u32,
    path: Option<Built>,
    script: bool,
    /// The script was run from a descriptor (`/dev/fd/N...`): its name says nothing.
    script_from_fd: bool,
    memfd: bool,
}

// Inlined into each entry point, and `gather` kept out: their frames with `real_path`'s chain
// fill the 512 bytes kernels before 6.13 give a chain of calls (`ebpf::stack_depth`).
#[inline(always)]
fn try_exec(ctx: &RawTracePointContext) -> Result<(), i64> {
    let cfg = config().ok_or(1)?;
    let enforcing = cfg.mode == mode::ENFORCE;
    if !enforcing && !selected(cfg) {
        return Ok(());
    }
    let claim = match Claim::<scratch::Path>::new() {
        Ok(claim) => claim,
        Err(err) => {
            without_room(enforcing);
            return Err(err);
        }
    };
    // SAFETY: this thread's scratch entry, which nobody else writes while the claim lives.
    let scratch = unsafe { &mut *claim.entry() };
    let facts = gather(ctx, cfg, scratch);
    // Captured at syscall entry for the LSM's sake; not needed past this point, whether this
    // exec is reported or not.
    let _ = EXEC_ARGS.remove(facts.old_tid);

    let mut verdict_of = None;
    let mut unverified = false;
    if enforcing {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        // The exemption follows the image: a new image whose path cannot be walked keeps
        // nothing of the old one's.
        match facts.path {
            Some(built) if !built.forged() => remember_exe(scratch, tgid, built),
            _ => {
                let _ = TASK_EXE.remove(tgid);
            }
        }
        let set = current_set();
        let Some(ps) = policy_set(set) else {
            return Ok(());
        };
        // An executable outside the image that its set may vouch for by content: looked up
        // in the vouched cache, else held for user space (`drift.rs`).
        if let Some(file) = read_kernel_ptr(ctx.arg::<u64>(2) as *const u8, cfg.kernel.bprm_file) {
            crate::drift::by_content(cfg, set, crate::drift::content_rules(&ps), file, scratch);
        }
        crate::drift::hold(scratch);
        // Plain values, not Options: LLVM may leave an Option's empty payload undefined,
        // which the verifier refuses to copy.
        // The executable's real path could not be walked (deeper or longer than the walk
        // goes), or its script cannot be followed: the decision fails closed below.
        let mut unverifiable = false;
        // Not verifiable, and an Alert deny list leaves the decision to user space.
        let mut undecided = false;
        let mut exe_rule = PathRule::default();
        match facts.path {
            Some(built)
                if !built.forged()
                    && path_key(&mut scratch.key, set, built.ptr(&scratch.path), built.len) =>
            {
                if let Some(rule) = EXEC_PATHS.get(&scratch.key) {
                    exe_rule = *rule;
                }
            }
            _ => unverifiable = true,
        }
        // A script run by a plain absolute name is decided by that name now (deny when the
        // name is denied); every script is decided again on the file its interpreter opens.
        let mut script_rule = PathRule::default();
        let mut script_checked = false;
        if facts.script
            && !facts.script_from_fd
            && plain_absolute(scratch)
            && path_key(
                &mut scratch.key,
                set,
                scratch.filename.as_ptr(),
                c_len(&scratch.filename),
            )
        {
            script_checked = true;
            if let Some(rule) = EXEC_PATHS.get(&scratch.key) {
                script_rule = *rule;
            }
        }
        let mut violation = decide_exec(
            set,
            &ps,
            facts.memfd,
            // From map memory, which the verifier does not follow: a bit of `facts.flags`
            // would make it tell apart every state after this by that bit (three times the
            // instructions, past its 1,000,000).
            scratch.drift & u64::from(exec_flags::DRIFT) != 0,
            !unverifiable,
            &exe_rule,
            script_checked.then_some(&script_rule),
        );
        if unverifiable && !violation.is_hit() {
            violation = fail_closed(set, &ps);
            undecided = !violation.is_hit();
        }
        // Where BPF LSM decided every level as the kernel chose it (`SCRIPT_LEVELS`), nothing
        // is left for the interpreter's open.
        if facts.script
            && !violation.is_hit()
            && ps.exec_action != 0
            && cfg.prevent & agent_common::prevent::SCRIPT_LEVELS == 0
        {
            match crate::script::await_open(cfg, scratch, tgid) {
                Awaited::Yes => {}
                // A script or a level of its chain cannot be followed to its file: it
                // cannot be verified.
                Awaited::TooDeep | Awaited::Full => {
                    unverifiable = true;
                    violation = fail_closed(set, &ps);
                    undecided = !violation.is_hit();
                }
            }
        }
        let violation = enforce(violation);
        // A file left to user space's judgement of its content is reported for it (read
        // again from map memory, as above).
        let mut violation = violation;
        if !violation.is_hit()
            && !undecided
            && scratch.drift & u64::from(exec_flags::DIGEST_PENDING) == 0
        {
            // An allowed exec, reported only where the set learns (its flags read again from
            // map memory, as above).
            match crate::policy::policy_set_in_place(set)
                .and_then(|ps| Violation::allowed_in(set, ps.flags))
            {
                Some(learned) => violation = learned,
                None => return Ok(()),
            }
        }
        unverified = unverifiable && violation.is_hit();
        verdict_of = Some((violation, undecided, set));
    }

    let mut head = header(kind::EXEC, cfg);
    let mut flags = facts.flags | scratch.drift as u32;
    if let Some((violation, undecided, set)) = verdict_of {
        if undecided {
            flags |= exec_flags::UNDECIDED;
        }
        if !violation.is_hit() {
            // User space decides (the path, or the content); it needs the set.
            head.rule = agent_common::rule_id::pack(set, 0);
        }
        mark(&mut head, violation);
        if unverified {
            flags |= exec_flags::UNVERIFIABLE;
        }
    }
    if !admit(kind::EXEC, 0, &mut head) {
        return Ok(());
    }
    let Some(mut entry) = EVENTS.reserve::<ExecEvent>(0) else {
        lost(kind::EXEC, 0, head.count, head.first_ns, &head);
        return Ok(());
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved ring-buffer slot of the right size that only this
    // program writes until it is submitted.
    let event = unsafe { &mut *event };
    event.header = head;
    event.flags = flags;
    event.old_tid = facts.old_tid;
    event.exe_name = scratch.exe_name;
    event.origin = scratch.origin;
    // SAFETY: both source buffers are at least PATH_LEN bytes long.
    unsafe {
        let _ = bpf_probe_read_kernel_buf(scratch.filename.as_ptr(), &mut event.path);
        match facts.path {
            Some(built) => {
                let _ = bpf_probe_read_kernel_buf(built.ptr(&scratch.path), &mut event.exe_path);
            }
            None => event.exe_path[0] = 0,
        }
    }
    fill_args_from_image(cfg, event);
    entry.submit(0);
    Ok(())
}

/// An exec that could not be looked at (no scratch entry to walk its path in): decided as an
/// executable whose path cannot be walked, so Kill kills (fail closed), and the old image's
/// W^X exemption does not carry over. Counted by the caller as the probe's map failure; the
/// record cannot be built without the entry.
#[inline(never)]
fn without_room(enforcing: bool) {
    if !enforcing {
        return;
    }
    let _ = TASK_EXE.remove((bpf_get_current_pid_tgid() >> 32) as u32);
    crate::policy::unverifiable_now();
}

/// Whether the name in `scratch.filename` is absolute with no empty, `.` or `..` component:
/// a name whose directories are the ones it spells (symlinks aside). Anything else is decided
/// only on the opened file.
///
/// Where the current component starts goes through memory (as in `real_path`), so that
/// every iteration reaches the loop head in the same state and the verifier can prune.
fn plain_absolute(scratch: &mut PathScratch) -> bool {
    if scratch.filename[0] != b'/' {
        return false;
    }
    // SAFETY: plain writes and reads of our own scratch field.
    unsafe { core::ptr::write_volatile(&mut scratch.cursor, 1) };
    let mut i = 1;
    while i < PATH_LEN {
        let c = scratch.filename[i];
        if c == b'/' || c == 0 {
            // SAFETY: as above.
            let start = unsafe { core::ptr::read_volatile(&scratch.cursor) } as usize;
            let len = i.wrapping_sub(start);
            let first = scratch.filename[start & (PATH_LEN - 1)];
            let second = scratch.filename[(start + 1) & (PATH_LEN - 1)];
            if len == 0 || (first == b'.' && (len == 1 || (len == 2 && second == b'.'))) {
                return false;
            }
            if c == 0 {
                return true;
            }
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(&mut scratch.cursor, (i + 1) as u64) };
        }
        i += 1;
    }
    false
}

/// Length of a NUL-terminated buffer.
fn c_len(buf: &[u8; PATH_LEN]) -> usize {
    let mut i = 0;
    while i < PATH_LEN {
        if buf[i] == 0 {
            break;
        }
        i += 1;
    }
    i
}

/// The real path, the filename as given, and what kind of file was executed.
#[inline(never)]
fn gather(ctx: &RawTracePointContext, cfg: &Config, scratch: &mut PathScratch) -> ExecFacts {
    let k = &cfg.kernel;
    let old_tid: u64 = ctx.arg(1);
    let bprm = ctx.arg::<u64>(2) as *const u8;
    let mut flags = 0;
    let file = read_kernel_ptr(bprm, k.bprm_file);
    let path = file.and_then(|f| real_path(cfg, f, scratch));
    scratch.origin = FileOrigin::default();
    scratch.drift = u64::from(crate::drift::of(cfg, file.unwrap_or(core::ptr::null())));
    if let Some(file) = file {
        crate::drift::origin_of(cfg, file, &mut scratch.origin);
    }
    match path {
        None => flags |= exec_flags::EXE_PATH_TRUNCATED,
        Some(built) if built.forged() => flags |= exec_flags::USER_MOUNT,
        Some(_) => {}
    }
    scratch.filename[0] = 0;
    let filename = read_kernel_ptr(bprm, k.bprm_filename);
    if let Some(name) = filename {
        // SAFETY: the helper bounds the copy by the destination length.
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(name, &mut scratch.filename) };
    }
    let interp = read_kernel_ptr(bprm, k.bprm_interp);
    let script = filename.is_some() && interp.is_some() && interp != filename;
    if script {
        flags |= exec_flags::SCRIPT;
    }
    match file {
        Some(file) => flags |= file_facts(cfg, file, &mut scratch.exe_name),
        None => {
            scratch.exe_name[0] = 0;
            flags |= exec_flags::EXE_UNKNOWN;
        }
    }
    let mut script_from_fd = false;
    if script && let Some(fd) = fd_of_dev_fd_path(&scratch.filename) {
        script_from_fd = true;
        // The script file itself: still open in the new image unless it was close-on-exec,
        // in which case the interpreter cannot open it either.
        if let Some(file) = task_fd_file(cfg, fd)
            && anonymous_file(cfg, file)
        {
            flags |= exec_flags::MEMFD;
        }
    }
    ExecFacts {
        flags,
        old_tid: old_tid as u32,
        path,
        script,
        script_from_fd,
        memfd: flags & exec_flags::MEMFD != 0,
    }
}

/// Records the real path for W^X exemptions, keyed by process id.
#[inline(always)]
pub fn remember_exe(scratch: &mut PathScratch, tgid: u32, built: Built) {
    scratch.exe.len = built.len as u32;
    scratch.exe._pad = 0;
    // A new executable: no exemption is known for it yet.
    scratch.exe.exempt = 0;
    // SAFETY: the source has at least PATH_LEN bytes from any start.
    if unsafe { bpf_probe_read_kernel_buf(built.ptr(&scratch.path), &mut scratch.exe.path) }.is_ok()
    {
        let exe: &ExePath = &scratch.exe;
        let _ = TASK_EXE.insert(tgid, exe, 0);
    }
}

/// The new image's arguments, as the kernel copied them onto its stack: what the program
/// was given, not what the caller's memory held at syscall entry (which another of its threads
/// may rewrite meanwhile). Copied whole, one read; `argc` says so ([`ARGC_ALL`]).
#[inline(always)]
pub fn fill_args_from_image(cfg: &Config, event: &mut ExecEvent) {
    event.argc = ARGC_ALL;
    event.args_len = 0;
    let k = &cfg.kernel;
    let Some(mm) = read_kernel_ptr(current_task(), k.task_mm) else {
        event.flags |= exec_flags::ARGS_MISSING;
        return;
    };
    let (Some(start), Some(end)) = (
        read_kernel::<u64>(mm, k.mm_arg_start),
        read_kernel::<u64>(mm, k.mm_arg_end),
    ) else {
        event.flags |= exec_flags::ARGS_MISSING;
        return;
    };
    if end < start || start == 0 {
        event.flags |= exec_flags::ARGS_MISSING;
        return;
    }
    let mut len = end - start;
    if len > ARGS_LEN as u64 {
        len = ARGS_LEN as u64;
        event.flags |= exec_flags::ARGS_TRUNCATED;
    }
    // SAFETY: `len` is at most the buffer's size; the helper checks the user address.
    let read = unsafe {
        probe_read_user_raw(
            event.args.as_mut_ptr() as *mut c_void,
            len as u32,
            start as *const c_void,
        )
    };
    if read == 0 {
        event.args_len = len as u32;
    } else {
        event.flags |= exec_flags::ARGS_MISSING;
    }
}

/// Copies the arguments captured at syscall entry into the record; `done`: the exec ends here
/// (refused), so the copy goes with it; else a later level may report them too.
pub fn fill_args(event: &mut ExecEvent, done: bool) {
    event.argc = 0;
    event.args_len = 0;
    let old_tid = event.old_tid;
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
            if done {
                let _ = EXEC_ARGS.remove(old_tid);
            }
        }
        None => event.flags |= exec_flags::ARGS_MISSING,
    }
}

/// The executed file's dentry name (memfd files are named `memfd:...`) and whether it
/// still has a link on its file system.
pub fn file_facts(cfg: &Config, file: *const u8, name: &mut [u8; NAME_LEN]) -> u32 {
    let k = &cfg.kernel;
    let mut flags = 0;
    match read_kernel_ptr(file, k.file_dentry)
        .and_then(|dentry| read_kernel_ptr(dentry, k.dentry_name))
    {
        Some(name_ptr) => {
            // SAFETY: the helper bounds the copy by the destination length.
            let _ = unsafe { bpf_probe_read_kernel_str_bytes(name_ptr, name) };
        }
        None => flags |= exec_flags::EXE_UNKNOWN,
    }
    // By the file system, never by the name: a file on disk may be named `memfd:x`.
    if anonymous_file(cfg, file) {
        flags |= exec_flags::MEMFD;
    }
    let nlink = read_kernel_ptr(file, k.file_inode)
        .and_then(|inode| read_kernel::<u32>(inode, k.inode_nlink));
    if nlink == Some(0) && flags & exec_flags::MEMFD == 0 {
        flags |= exec_flags::DELETED;
    }
    flags
}

/// An exec record for a file judged outside an exec: mapped executable (`MAPPED`) or
/// opened as a script (`OPENED`); `path` is the file's real path, `exe_path` the process's
/// executable.
// Inlined: as a BPF function its five arguments (one a struct) did not all fit registers.
#[inline(always)]
pub fn report_file(
    cfg: &agent_common::Config,
    v: crate::policy::Violation,
    flags: u32,
    // A plain pointer (null: none): BPF functions take at most five registers.
    path: *const u8,
    tgid: u32,
    // The file judged, for where it lives (null: unknown).
    file: *const u8,
) {
    let mut head = header(kind::EXEC, cfg);
    mark(&mut head, v);
    // Only tracepoints report this way, after the act, where a Deny was carried out as a
    // kill (`policy::enforce`); marked here rather than by the caller, whose stack is full.
    if agent_common::action::refuses(head.action) {
        head.action = agent_common::action::KILL;
    }
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
    // Worked out here rather than carried by the callers, whose frames hold a path walk.
    event.flags = flags | crate::drift::of(cfg, file);
    event.old_tid = event.header.tid;
    event.argc = 0;
    event.args_len = 0;
    event.exe_name = [0; agent_common::NAME_LEN];
    event.origin = FileOrigin::default();
    if !file.is_null() {
        crate::drift::origin_of(cfg, file, &mut event.origin);
    }
    event.path[0] = 0;
    if !path.is_null() {
        // SAFETY: the source has at least PATH_LEN bytes from any start.
        let _ = unsafe { bpf_probe_read_kernel_buf(path, &mut event.path) };
    }
    // The process's own executable (for a script, its interpreter), as recorded at exec.
    event.exe_path[0] = 0;
    if let Some(exe) = TASK_EXE.get_ptr(tgid) {
        // SAFETY: a live map value of PATH_LEN bytes.
        let _ = unsafe { bpf_probe_read_kernel_buf((*exe).path.as_ptr(), &mut event.exe_path) };
    }
    entry.submit(0);
}
