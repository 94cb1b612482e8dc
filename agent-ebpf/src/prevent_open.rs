//! Foreign writes by opening a file, refused before the open (BPF LSM, `file_open`): the
//! kernel calls it for every file opened, whatever the entry (`open`, `openat`, `openat2`,
//! their 32-bit twins, io_uring's `IORING_OP_OPENAT`, which no syscall tracepoint sees).
//! `/proc/<pid>/mem` opened for writing and `/dev/userfaultfd` are judged by the foreign
//! writes rule: reported in trace mode and under every action, refused (`EPERM`) under Deny
//! and Kill (under Kill the process is killed as well). Where this program runs,
//! `sys_exit_open_mem` is not attached (`prevent::FOREIGN_OPEN`).
use agent_common::{Config, action, kind, mode, set_flags, wx_reason};
use aya_ebpf::{macros::lsm, programs::LsmContext};

use crate::{
    diag::gave_up,
    foreign,
    policy::{Violation, current_set, policy_set, send_sigkill, violation},
    prevent_exec::verdict,
    scratch::{self, Claim},
    task::{config, count_loss, traced},
    wx,
};

/// `file_open(struct file *file)`; argument 1 is what the LSMs before this program decided.
#[lsm(hook = "file_open")]
pub fn lsm_file_open(ctx: LsmContext) -> i32 {
    let (prior, file): (i32, *const u8) = (ctx.arg(1), ctx.arg(0));
    if prior != 0 {
        return prior;
    }
    match try_file_open(file) {
        Ok(refused) => verdict(refused),
        Err(err) => gave_up(
            &ctx,
            const { agent_common::probe_error::id("lsm_file_open") },
            err,
        ),
    }
}

/// Whether the open is refused.
fn try_file_open(file: *const u8) -> Result<bool, i64> {
    let cfg = config().ok_or(1)?;
    // Every open of every task passes here: while no set denies foreign writes, an enforcing
    // agent has nothing to say about the file.
    if file.is_null() || !foreign::watched(cfg) || !traced(cfg) {
        return Ok(false);
    }
    let Some((syscall, f_mode)) = foreign::foreign_file(cfg, file)? else {
        return Ok(false);
    };
    Ok(refuse_foreign(cfg, syscall, f_mode, 0, 0))
}

/// Judges a foreign write by the current task (`syscall`, one of [`agent_common::wx_syscall`], with its
/// `flags` and the `target` process, 0 if none) before the act: reported in trace mode and
/// under every action, refused under Deny and Kill (under Kill the process is killed as
/// well). `also`: another set (0: none) whose rule decides when the current process's set
/// has none. Whether it is refused.
pub fn refuse_foreign(cfg: &Config, syscall: u32, flags: u32, target: u32, also: u32) -> bool {
    if !foreign::watched(cfg) || !traced(cfg) {
        return false;
    }
    let v = if cfg.mode == mode::ENFORCE {
        let denies =
            |set: u32| policy_set(set).filter(|ps| ps.flags & set_flags::FOREIGN_WRITES_DENY != 0);
        let mut set = current_set();
        let mut ps = denies(set);
        if ps.is_none() && also != 0 {
            set = also;
            ps = denies(set);
        }
        let Some(ps) = ps else {
            return false;
        };
        violation(ps.wx_action, set, ps.foreign_rule)
    } else {
        Violation::ALLOWED
    };
    let refused = v.is_hit() && action::refuses(v.action);
    if refused && v.action == action::KILL {
        send_sigkill();
    }
    // Carried out whatever follows: without room for its record, the record is counted lost.
    let Ok(claim) = Claim::<scratch::Wx>::new() else {
        count_loss(kind::WX);
        return refused;
    };
    // SAFETY: this thread's scratch entry, which nobody else writes while the claim lives.
    let event = unsafe { &mut (*claim.entry()).event };
    event.syscall = syscall;
    event.prot = 0;
    event.flags = flags;
    event.reason = wx_reason::FOREIGN_WRITE;
    event.addr = 0;
    event.len = 0;
    // Refused or not, there is no descriptor yet.
    event.fd = -1;
    event.extra = target;
    wx::report(cfg, v, event);
    refused
}
