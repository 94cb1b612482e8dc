//! Code loaded without an exec of its file: the dynamic loader run on a program
//! (`ld.so /tmp/x`), `dlopen`, `LD_PRELOAD` all map the file executable with `mmap`; a
//! loader of its own may map it readable and add `PROT_EXEC` with `mprotect`. Such a
//! mapping of a file the exec rules deny (or of an anonymous file under a memfd deny) is an
//! exec violation. Allowlists do not apply: every program maps its shared libraries.
//!
//! The same mapping of memory another mapping can write (an anonymous file such as a memfd,
//! or a file in `/dev/shm`) is W^X by intent, the dual-mapping pattern of JIT engines and
//! injectors alike: a W^X violation unless the executable is exempt.
use agent_common::{
    PathRule, action, exec_flags, kind, mode, path_verdict, prevent, set_flags, wx_reason,
    wx_syscall,
};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel_buf},
    macros::{lsm, raw_tracepoint, tracepoint},
    programs::{LsmContext, RawTracePointContext, TracePointContext},
};

use crate::diag::entry_points;
use crate::{
    calls::Call,
    diag::gave_up,
    file::{anonymous_file, task_fd_file, tmpfs_file},
    maps::{EXEC_PATHS, FILE_REQUEST, FileRequest, JUDGE_FILE},
    path::{PathScratch, path_key, real_path},
    policy::{
        Violation, current_set, enforce, policy_set, policy_set_in_place, prevented, violation,
    },
    prevent_exec::verdict,
    scratch::{self, Claim},
    task::{config, count_loss, read_kernel, read_kernel_ptr, syscall_arg, traced},
    vma::{self, Found, VM_EXEC},
    wx,
};

const PROT_EXEC: u64 = 4;
const MAP_ANONYMOUS: u64 = 0x20;

entry_points! {
    /// A second program on `sys_enter_mmap` (beside the W^X one), so each stays small.
    #[tracepoint(category = "syscalls", name = "sys_enter_mmap")]
    fn sys_enter_mmap_exec(ctx: TracePointContext) -> u32 = try_mapped(&ctx);

    #[tracepoint(category = "syscalls", name = "sys_enter_mprotect")]
    fn sys_enter_mprotect_exec(ctx: TracePointContext) -> u32 =
        try_made_executable::<false>(&ctx, wx_syscall::MPROTECT);

    /// The same where `bpf_find_vma` is missing (the areas' tree is walked).
    #[tracepoint(category = "syscalls", name = "sys_enter_mprotect")]
    fn sys_enter_mprotect_exec_walk(ctx: TracePointContext) -> u32 =
        try_made_executable::<true>(&ctx, wx_syscall::MPROTECT);

    #[tracepoint(category = "syscalls", name = "sys_enter_pkey_mprotect")]
    fn sys_enter_pkey_mprotect_exec(ctx: TracePointContext) -> u32 =
        try_made_executable::<false>(&ctx, wx_syscall::PKEY_MPROTECT);

    #[tracepoint(category = "syscalls", name = "sys_enter_pkey_mprotect")]
    fn sys_enter_pkey_mprotect_exec_walk(ctx: TracePointContext) -> u32 =
        try_made_executable::<true>(&ctx, wx_syscall::PKEY_MPROTECT);

    /// Tail-call target: judges the file of the request in `FILE_REQUEST`. A program of its
    /// own, verified from a fresh state: the path walk does not fit after the hooks' own work.
    #[tracepoint(category = "syscalls", name = "sys_enter_mmap")]
    fn judge_mapped_file(ctx: TracePointContext) -> u32 = try_judge_mapped_file();

    /// The same judge for raw `sys_enter`, which hands over the 32-bit entry's mappings
    /// (`compat.rs`): a tail call stays within one program type.
    #[raw_tracepoint(tracepoint = "sys_enter")]
    fn judge_mapped_file_raw(ctx: RawTracePointContext) -> i32 = try_judge_mapped_file();
}

// Inlined into each of its two programs: as a function of its own, its frame on top of the
// path walk's passed the 512 bytes of stack kernels before 6.13 allow.
#[inline(always)]
fn try_judge_mapped_file() -> Result<(), i64> {
    // Released when this run ends, whatever happens: the entry is this run's alone. Read in
    // place: a copy would take 56 bytes of a frame that the path walk below leaves short.
    let claim = Claim::<scratch::Request>::existing()?;
    // SAFETY: this thread's entry, which the hook filled just before jumping here and which
    // nobody else writes while the claim lives.
    let request = unsafe { &*claim.entry() };
    let cfg = config().ok_or(1)?;
    judge_file(cfg, request.file as *const u8, request).map(|_| ())
}

/// The same judgement where BPF LSM runs and its programs are the only W^X hooks
/// (`prevent::WX_REPORTS`): a second program on `mmap_file` (after `lsm_mmap_file`, whose
/// refusal it passes on), with the file the kernel is about to map. What it finds is refused
/// as well as carried out, so that no other thread runs the mapping before the kill lands.
#[lsm(hook = "mmap_file")]
pub fn lsm_mmap_file_exec(ctx: LsmContext) -> i32 {
    let (prior, file, prot, flags): (i32, *const u8, u64, u64) =
        (ctx.arg(4), ctx.arg(0), ctx.arg(2), ctx.arg(3));
    if prior != 0 {
        return prior;
    }
    match try_lsm_mapped(file, prot, flags, wx_syscall::MMAP) {
        Ok(refused) => verdict(refused),
        Err(err) => gave_up(
            &ctx,
            const { agent_common::probe_error::id("lsm_mmap_file_exec") },
            err,
        ),
    }
}

/// The same for `file_mprotect`: an area of a file made executable, run for each area of the
/// range (each may be another file).
#[lsm(hook = "file_mprotect")]
pub fn lsm_file_mprotect_exec(ctx: LsmContext) -> i32 {
    let (prior, area, prot): (i32, *const u8, u64) = (ctx.arg(3), ctx.arg(0), ctx.arg(2));
    if prior != 0 {
        return prior;
    }
    let Some(cfg) = config() else {
        return 0;
    };
    // Already executable, or anonymous: nothing is made executable here.
    let flags: u64 = read_kernel(area, cfg.kernel.vma_flags).unwrap_or(0);
    let file = if flags & VM_EXEC == 0 {
        read_kernel_ptr(area, cfg.kernel.vma_file)
    } else {
        None
    };
    let Some(file) = file else {
        return 0;
    };
    match try_lsm_mapped(file, prot, 0, wx_syscall::MPROTECT) {
        Ok(refused) => verdict(refused),
        Err(err) => gave_up(
            &ctx,
            const { agent_common::probe_error::id("lsm_file_mprotect_exec") },
            err,
        ),
    }
}

/// Whether an executable mapping of `file` asked for through `syscall` is refused.
#[inline(always)]
fn try_lsm_mapped(file: *const u8, prot: u64, flags: u64, syscall: u32) -> Result<bool, i64> {
    if prot & PROT_EXEC == 0 || file.is_null() {
        return Ok(false);
    }
    let cfg = config().ok_or(1)?;
    if cfg.prevent & prevent::WX_REPORTS == 0 || !traced(cfg) {
        return Ok(false);
    }
    let call = Call::current(cfg, syscall);
    // The ELF loader's mappings are the exec's; shared memory attached executable is
    // `lsm_mmap_file`'s.
    if call.exec || call.syscall == wx_syscall::SHMAT {
        return Ok(false);
    }
    let request = FileRequest {
        file: file as u64,
        syscall: call.syscall,
        prot,
        flags,
        fd: call.fd,
        addr: call.addr,
        len: call.len,
    };
    judge_file(cfg, file, &request)
}

/// Hands the request over to `judge_mapped_file`. The jump does not return; if it cannot
/// be made (the table is filled before any hook is attached, so it can not), nothing is
/// judged and the loss is counted.
// Inlined, as are its callers: the kernel allows a tail call only in a function that returns
// an integer, and these return `Result`.
#[inline(always)]
fn hand_over(ctx: &TracePointContext, request: FileRequest) -> Result<(), i64> {
    file_request(request)?;
    // SAFETY: a tail call with this program's own context.
    unsafe { JUDGE_FILE.tail_call(ctx, 0) };
    jump_failed();
    Ok(())
}

/// Files `request` under the current thread for the judge jumped to next, which removes it
/// (see `scratch.rs`). Without room the file goes unjudged: it fails closed here.
#[inline(always)]
pub fn file_request(request: FileRequest) -> Result<(), i64> {
    let tid = bpf_get_current_pid_tgid() as u32;
    if let Err(err) = FILE_REQUEST.insert(tid, request, u64::from(BPF_NOEXIST)) {
        if config().is_some_and(|cfg| cfg.mode == mode::ENFORCE) {
            crate::policy::unverifiable_now();
        }
        return Err(i64::from(err));
    }
    Ok(())
}

/// After a jump that did not happen: the filed request is dropped and the loss counted.
#[inline(always)]
pub fn jump_failed() {
    let _ = FILE_REQUEST.remove(bpf_get_current_pid_tgid() as u32);
    count_loss(kind::EXEC);
}

#[inline(always)]
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
    let fd = syscall_arg(ctx, 4)? as u32;
    let file = task_fd_file(cfg, fd).ok_or(1)?;
    let request = FileRequest {
        file: file as u64,
        syscall: wx_syscall::MMAP,
        prot,
        flags,
        fd: fd as i32,
        addr: syscall_arg(ctx, 0)?,
        len: syscall_arg(ctx, 1)?,
    };
    hand_over(ctx, request)
}

/// `mprotect` adding `PROT_EXEC` to a file mapped without it (a loader of its own that maps
/// a program readable and then makes it executable): the file the kernel has behind the
/// address is judged as if it were mapped executable.
#[inline(always)]
fn try_made_executable<const WALK: bool>(ctx: &TracePointContext, syscall: u32) -> Result<(), i64> {
    let prot = syscall_arg(ctx, 2)?;
    if prot & PROT_EXEC == 0 {
        return Ok(());
    }
    let cfg = config().ok_or(1)?;
    if !traced(cfg) {
        return Ok(());
    }
    let addr = syscall_arg(ctx, 0)?;
    let len = syscall_arg(ctx, 1)?;
    // The area at the start of the range (a range over several areas is refused by the
    // kernel unless all are mapped; the first is the loader's file).
    let file = match vma::find::<WALK>(cfg, addr) {
        Found::Area(area) if area.file != 0 && area.flags & VM_EXEC == 0 => area.file,
        Found::Area(_) => return Ok(()),
        // An address nothing is mapped at fails in the kernel too (`ENOMEM`); but a walk
        // without the mm's lock also finds nothing when another thread reshapes the tree
        // meanwhile, which must not buy an unjudged mapping either.
        Found::Nothing if !WALK => return Ok(()),
        // Another thread holding the mm's lock must not buy an unjudged mapping: no file
        // is judged as a file whose path cannot be resolved (killed under Kill).
        Found::Nothing | Found::Unknown => 0,
    };
    let request = FileRequest {
        file,
        syscall,
        prot,
        flags: 0,
        fd: -1,
        addr,
        len,
    };
    hand_over(ctx, request)
}

/// An executable mapping of `file`: an exec violation when the exec rules deny the file, a
/// W^X one when it is shared memory. True when a violation whose action refuses was carried
/// out (a kill).
#[inline(always)]
fn judge_file(
    cfg: &agent_common::Config,
    file: *const u8,
    request: &FileRequest,
) -> Result<bool, i64> {
    let set = current_set();
    if !worth_a_walk(cfg, file, set) {
        return Ok(false);
    }
    // Without room to walk its path, the file is unverifiable: decided so below. The claim
    // lives to the end of this function, past the report that reads `path`.
    let claim = Claim::<scratch::Path>::new();
    let scratch: *mut PathScratch = match &claim {
        Ok(claim) => claim.entry(),
        Err(_) => core::ptr::null_mut(),
    };
    // Plain values, not the Option: LLVM may leave an empty Option's payload undefined,
    // and the verifier refuses to copy it.
    let mut path: *const u8 = core::ptr::null();
    let mut len = 0;
    let mut forged = false;
    if !scratch.is_null() {
        // SAFETY: this thread's scratch entry, which nobody else writes while the claim
        // lives.
        let scratch = unsafe { &mut *scratch };
        if let Some(built) = real_path(cfg, file, scratch) {
            path = built.ptr(&scratch.path);
            len = built.len;
            forged = built.forged();
        }
    }
    // Worked out again after the walk, not carried across it: the verifier then walks the
    // path once, not once per combination of these (its 1,000,000 instruction budget).
    let enforcing = cfg.mode == mode::ENFORCE;
    let memfd = anonymous_file(cfg, file);
    let tmpfs = !memfd && tmpfs_file(cfg, file);
    let shared = memfd || (tmpfs && !path.is_null() && under_dev_shm(path));
    let killed = shared && shared_exec(cfg, request);
    // Copied after the call above, so that the copy is not on the stack under it; the
    // decision and its kill below read only this copy.
    let Some(ps) = policy_set(set) else {
        return Ok(killed);
    };
    if !enforcing || ps.exec_action == 0 {
        return Ok(killed);
    }
    // A path was built only in a claimed entry: verified implies `scratch` is one.
    let verified = !path.is_null() && !forged && !scratch.is_null();
    let mut rule = PathRule::default();
    if verified {
        // SAFETY: as above.
        let scratch = unsafe { &mut *scratch };
        if path_key(&mut scratch.key, set, path, len)
            && let Some(found) = EXEC_PATHS.get(&scratch.key)
        {
            rule = *found;
        }
    }
    let v = if memfd && ps.flags & set_flags::EXEC_DENY_MEMFD != 0 {
        violation(ps.exec_action, set, ps.memfd_rule)
    } else if rule.exec == path_verdict::DENY {
        violation(ps.exec_action, set, rule.exec_rule.into())
    } else if ps.flags & set_flags::EXEC_DENY_DRIFT != 0 && crate::drift::of(cfg, file) != 0 {
        violation(ps.exec_action, set, ps.drift_rule)
    } else if !verified && !memfd && action::refuses(ps.exec_action as u16) {
        // A file whose real path cannot be resolved, under Deny or Kill: fails closed as at
        // exec.
        violation(ps.exec_action, set, agent_common::rule_id::UNVERIFIABLE)
    } else {
        Violation::ALLOWED
    };
    if !v.is_hit() {
        return Ok(killed);
    }
    // Reported as carried out by `report_file` (a Deny as the kill it was here).
    enforce(v);

    let mut flags = exec_flags::MAPPED | exec_flags::ARGS_MISSING;
    if memfd {
        flags |= exec_flags::MEMFD;
    }
    if path.is_null() {
        flags |= exec_flags::UNVERIFIABLE | exec_flags::EXE_PATH_TRUNCATED;
    } else if forged {
        flags |= exec_flags::UNVERIFIABLE | exec_flags::USER_MOUNT;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    crate::exec::report_file(cfg, v, flags, path, tgid, file);
    Ok(action::refuses(v.action))
}

/// Whether an executable mapping of `file` can matter: under a policy in enforce mode, and
/// with exec rules or of memory another mapping may write.
#[inline(never)]
fn worth_a_walk(cfg: &agent_common::Config, file: *const u8, set: u32) -> bool {
    // One field, read once: a gate only, the decision reads its own copy after the walk.
    let exec_rules = match policy_set_in_place(set) {
        Some(ps) => ps.exec_action != 0,
        None if cfg.mode == mode::ENFORCE => return false,
        None => false,
    };
    exec_rules || anonymous_file(cfg, file) || tmpfs_file(cfg, file)
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

/// Reports (and in enforce mode decides) an executable mapping of shared memory; true when a
/// violation whose action refuses was carried out (a kill). Never inlined, and its record is
/// built in map memory: `judge_mapped_file` walks a path below it, and kernels before 6.13
/// give the whole call chain 512 bytes of stack.
#[inline(never)]
fn shared_exec(cfg: &agent_common::Config, request: &FileRequest) -> bool {
    let Some(judged) = wx::decide(cfg) else {
        return false;
    };
    // Writable as well, it is refused by `mmap_file` or `file_mprotect` where BPF LSM runs,
    // which report it; an executable-only view of shared memory is carried out here.
    if request.prot as u32 & wx::PROT_WRITE != 0 && prevented(cfg, prevent::WX, judged) {
        return false;
    }
    let judged = enforce(judged);
    let killed = judged.is_hit() && action::refuses(judged.action);
    // Carried out above; without room for its record, the record is counted lost.
    let Ok(claim) = Claim::<scratch::Wx>::new() else {
        count_loss(kind::WX);
        return killed;
    };
    // SAFETY: this thread's scratch entry, which nobody else writes while the claim lives.
    let event = unsafe { &mut (*claim.entry()).event };
    event.syscall = request.syscall;
    event.prot = request.prot as u32;
    event.flags = request.flags as u32;
    event.reason = wx_reason::SHARED_EXEC;
    event.addr = request.addr;
    event.len = request.len;
    event.fd = request.fd;
    event.extra = 0;
    wx::report(cfg, judged, event);
    killed
}
