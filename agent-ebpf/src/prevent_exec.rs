//! Exec refused before it happens (BPF LSM, `bprm_check_security`). The hook runs for the
//! executed file and again for each interpreter a script names, before the point of no
//! return: a refused level fails the whole `execve` with `EPERM` and the caller keeps running
//! its old image (under Kill it is killed as well). The decision is the exec tracepoint's,
//! on the file the kernel is about to run, from the same policy maps; what this hook lets
//! through is decided again at `sched_process_exec`, which kills (fail closed).
use agent_common::{NAME_LEN, PathRule, action, exec_flags, kind, mode, prevent, set_flags};
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel_buf, bpf_probe_read_kernel_str_bytes,
    },
    macros::lsm,
    programs::LsmContext,
};

use crate::{
    diag::gave_up,
    exec::{file_facts, fill_args},
    maps::{EVENTS, EXEC_PATHS, TASK_EXE},
    path::{path_key, real_path},
    policy::{current_set, decide_exec, fail_closed, mark, policy_set, send_sigkill},
    scratch::{self, Claim},
    task::{config, header, read_kernel_ptr},
    throttle::{admit, lost},
};

const EPERM: i64 = 1;

/// The hook's return for a decision: `-EPERM` or 0. Kernels from 6.12 check an LSM program's
/// return as a 64-bit value the verifier knows to be within [-4095, 0]: an `i32` carried
/// through a `Result` came back zero-extended (4294967295), and `-(refused as i64)` is a
/// negation, whose result the verifier does not track. So the refusal is a 64-bit constant,
/// read back through memory so that the compiler cannot fold the two cases into arithmetic.
#[inline(always)]
pub fn verdict(refused: bool) -> i32 {
    if refused {
        let refusal: i64 = -EPERM;
        // SAFETY: a read of a local.
        unsafe { core::ptr::read_volatile(&refusal) as i32 }
    } else {
        0
    }
}

/// `bprm_check_security(struct linux_binprm *bprm)`; argument 1 is what the LSMs before
/// this program decided.
#[lsm(hook = "bprm_check_security")]
pub fn lsm_bprm_check(ctx: LsmContext) -> i32 {
    // The hook's second argument is the previous programs' return value.
    let prior: i32 = ctx.arg(1);
    if prior != 0 {
        return prior;
    }
    match try_bprm_check(&ctx) {
        Ok(refused) => verdict(refused),
        // Nothing decided here: the exec tracepoint decides after the act, failing closed.
        Err(err) => gave_up(
            &ctx,
            const { agent_common::probe_error::id("lsm_bprm_check") },
            err,
        ),
    }
}

/// Whether the kernel will hand the file at this level on to an interpreter: anything but
/// an ELF image for this machine (x86-64, or i386 through the 32-bit entry) is a script or
/// a file `binfmt_misc` runs. Unreadable counts as interpreted: the level is then decided here.
#[inline(always)]
fn interpreted(bprm: *const u8, buf: u32) -> bool {
    let Some(head) = crate::task::read_kernel::<[u8; 20]>(bprm, buf) else {
        return true;
    };
    let machine = u16::from_le_bytes([head[18], head[19]]);
    !(head[0] == 0x7f
        && head[1] == b'E'
        && head[2] == b'L'
        && head[3] == b'F'
        && (machine == EM_X86_64 || machine == EM_386))
}

const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;

/// Whether the exec is refused.
fn try_bprm_check(ctx: &LsmContext) -> Result<bool, i64> {
    let cfg = config().ok_or(1)?;
    if cfg.mode != mode::ENFORCE {
        return Ok(false);
    }
    let entry = cfg.prevent & prevent::EXEC_ENTRY != 0;
    // What raw `sys_enter` recorded of a traced task's exec, recorded here: a failure leaves
    // that exec's return unnoticed should its tracer rewrite the call, so it is counted.
    if entry && crate::judged::entered(cfg).is_err() {
        crate::diag::count(
            const { agent_common::probe_error::id("lsm_bprm_check") },
            agent_common::probe_error::MAP,
        );
    }
    let set = current_set();
    let Some(ps) = policy_set(set) else {
        return Ok(false);
    };
    let k = &cfg.kernel;
    // The hook's first argument is the `struct linux_binprm *`.
    let bprm: *const u8 = ctx.arg(0);
    let refusing = action::refuses(ps.exec_action as u16);
    // Alert leaves the act and its report to the exec tracepoint, except a level the kernel
    // hands on to an interpreter where this program decides those (`SCRIPT_LEVELS`): by
    // `sched_process_exec` that file is released, and no open of it is awaited.
    let level = ps.exec_action != 0
        && cfg.prevent & prevent::SCRIPT_LEVELS != 0
        && interpreted(bprm, k.bprm_buf);
    if !refusing && !level {
        return Ok(false);
    }
    // For the report, should there be one (`fill_args` below); unreadable, it says
    // `argsMissing`. Read here, before the decision's branches: reached from each of them,
    // the copy's loop was verified once per path (665,763 instructions on 7.3, against
    // 254,641 without it).
    if entry {
        let _ = crate::exec::args_from_regs(cfg);
    }
    let file = read_kernel_ptr(bprm, k.bprm_file);
    let mut exe_name = [0u8; NAME_LEN];
    let mut flags = 0;
    if level {
        flags |= exec_flags::LEVEL;
    }
    match file {
        Some(file) => flags |= file_facts(cfg, file, &mut exe_name),
        None => flags |= exec_flags::EXE_UNKNOWN,
    }
    let memfd = flags & exec_flags::MEMFD != 0;
    // Without room to walk the path the file cannot be verified: it fails closed below, as
    // the tracepoint would decide it.
    let claim = Claim::<scratch::Path>::new().ok();
    let mut rule = PathRule::default();
    let mut keyed = false;
    // The real path's bytes, in the scratch entry the claim holds.
    let mut path_at: Option<*const u8> = None;
    match &claim {
        None => {
            crate::diag::count(
                const { agent_common::probe_error::id("lsm_bprm_check") },
                agent_common::probe_error::MAP,
            );
            flags |= exec_flags::EXE_PATH_TRUNCATED;
        }
        Some(claim) => {
            // SAFETY: this thread's scratch entry, which nobody else writes while the claim
            // lives.
            let scratch = unsafe { &mut *claim.entry() };
            // A branch with the call in it, not `unwrap_or`: LLVM turned that into a select
            // that reads the empty Option's payload, an unwritten stack slot, which kernels
            // before 6.2 refuse ("invalid read from stack").
            match file {
                Some(file) => {
                    // Where the set vouches for executables by content, drift is left to
                    // `sched_process_exec`, which looks the file up and holds it
                    // (`drift::by_content`): masked here without a branch or a call, which
                    // took 5.10's verifier past its 1,000,000 instructions. A level the
                    // kernel hands on to an interpreter is a script, which content does
                    // not vouch for: its drift stays.
                    let digests =
                        u64::from((ps.flags >> set_flags::EXEC_DIGESTS.trailing_zeros()) & 1)
                            & (u64::from(level) ^ 1);
                    scratch.drift = u64::from(crate::drift::of_file(cfg, file))
                        & !(digests * u64::from(exec_flags::DRIFT));
                }
                None => {
                    scratch.drift = u64::from(exec_flags::DRIFT | exec_flags::ORIGIN_UNKNOWN);
                }
            }
            match file.and_then(|f| real_path(cfg, f, scratch)) {
                Some(built)
                    if !built.forged()
                        && path_key(&mut scratch.key, set, built.ptr(&scratch.path), built.len) =>
                {
                    keyed = true;
                    path_at = Some(built.ptr(&scratch.path));
                    if let Some(found) = EXEC_PATHS.get(&scratch.key) {
                        rule = *found;
                    }
                }
                Some(built) if built.forged() => {
                    path_at = Some(built.ptr(&scratch.path));
                    flags |= exec_flags::USER_MOUNT;
                }
                Some(built) => {
                    path_at = Some(built.ptr(&scratch.path));
                    flags |= exec_flags::EXE_PATH_TRUNCATED;
                }
                None => flags |= exec_flags::EXE_PATH_TRUNCATED,
            }
        }
    }
    // Drift is read back from the entry, which the verifier does not follow: as a value of
    // this frame, branched on and carried into `flags`, it tripled the states the verifier
    // walks after it (past its 1,000,000 instructions on 7.3). Without an entry nothing of
    // the file could be read: drift (fail closed).
    let drift = match &claim {
        // SAFETY: as above.
        Some(claim) => (unsafe { (*claim.entry()).drift }) & u64::from(exec_flags::DRIFT) != 0,
        None => true,
    };
    let mut v = decide_exec(set, &ps, memfd, drift, keyed, &rule, None);
    // Alert with a deny list on a path the maps cannot key: user space decides on the path.
    let mut undecided = false;
    if !keyed && !memfd && !v.is_hit() {
        v = fail_closed(set, &ps);
        if v.is_hit() {
            flags |= exec_flags::UNVERIFIABLE;
        } else {
            undecided = !refusing;
        }
    }
    if !v.is_hit() && !undecided {
        return Ok(false);
    }
    let refused = refusing && v.is_hit();
    if refused {
        flags |= exec_flags::PREVENTED;
        if v.action == action::KILL {
            send_sigkill();
        }
    }

    let mut head = header(kind::EXEC, cfg);
    mark(&mut head, v);
    if undecided {
        flags |= exec_flags::UNDECIDED;
        // User space decides; it needs the set.
        head.rule = agent_common::rule_id::pack(set, 0);
    }
    let filename = read_kernel_ptr(bprm, k.bprm_filename);
    let interp = read_kernel_ptr(bprm, k.bprm_interp);
    if filename.is_some() && interp.is_some() && interp != filename {
        flags |= exec_flags::SCRIPT;
    }
    if !admit(kind::EXEC, 0, &mut head) {
        return Ok(refused);
    }
    let Some(mut entry) = EVENTS.reserve::<agent_common::ExecEvent>(0) else {
        lost(kind::EXEC, 0, head.count, head.first_ns, &head);
        return Ok(refused);
    };
    // SAFETY: a reserved ring-buffer slot of the right size that only this program writes
    // until it is submitted.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    event.header = head;
    event.flags = flags
        | match &claim {
            // SAFETY: as above.
            Some(claim) => (unsafe { (*claim.entry()).drift }) as u32,
            None => exec_flags::DRIFT | exec_flags::ORIGIN_UNKNOWN,
        };
    let pid_tgid = bpf_get_current_pid_tgid();
    // Not run (yet): the arguments are still filed under the caller's thread.
    event.old_tid = pid_tgid as u32;
    event.exe_name = exe_name;
    event.origin = agent_common::FileOrigin::default();
    if let Some(file) = file {
        crate::drift::origin_of(cfg, file, &mut event.origin);
    }
    event.path[0] = 0;
    match path_at {
        Some(at) => {
            // SAFETY: the source has at least PATH_LEN bytes from any start.
            let _ = unsafe { bpf_probe_read_kernel_buf(at, &mut event.path) };
        }
        None => {
            if let Some(name) = filename {
                // SAFETY: the helper bounds the copy by the destination length.
                let _ = unsafe { bpf_probe_read_kernel_str_bytes(name, &mut event.path) };
            }
        }
    }
    // The caller still runs its own executable, as recorded at its exec.
    event.exe_path[0] = 0;
    if let Some(exe) = TASK_EXE.get_ptr((pid_tgid >> 32) as u32) {
        // SAFETY: a live map value of PATH_LEN bytes.
        let _ = unsafe { bpf_probe_read_kernel_buf((*exe).path.as_ptr(), &mut event.exe_path) };
    }
    // An exec that goes on keeps them for its next level's report.
    fill_args(event, refused);
    entry.submit(0);
    Ok(refused)
}
