//! The memory the kernel's ELF loader maps for a new image, with no system call the W^X
//! probes could see: an executable stack (`PT_GNU_STACK` with `PF_X`) and a segment that is
//! both writable and executable (`PT_LOAD` with `PF_W | PF_X`) are W^X violations of the
//! image itself, decided before its first instruction.
use agent_common::{WxEvent, exec_flags, mode, set_flags, wx_reason, wx_syscall};
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::raw_tracepoint, programs::RawTracePointContext,
};

use crate::diag::entry_points;
use crate::{
    policy::{Violation, current_set, enforce, policy_set_in_place, violation},
    task::{config, current_task, read_kernel, read_kernel_ptr, traced},
    vma::{self, Area, VM_EXEC, VM_READ, VM_WRITE},
    wx::{self, PROT_EXEC, PROT_READ, PROT_WRITE},
};

/// Areas looked at between the start and the end of the code: an image of more segments
/// than this is looked at only that far.
const MAX_AREAS: usize = 16;

entry_points! {
    /// A second program on `sched_process_exec`, attached after the exec program, so the new
    /// image's executable is recorded (for exemptions) when this one runs.
    #[raw_tracepoint(tracepoint = "sched_process_exec")]
    fn sched_process_exec_image(ctx: RawTracePointContext) -> i32 = try_image::<false, false>();

    /// The same where `bpf_find_vma` is missing: the areas are found by walking their tree.
    #[raw_tracepoint(tracepoint = "sched_process_exec")]
    fn sched_process_exec_image_walk(ctx: RawTracePointContext) -> i32 =
        try_image::<true, false>();

    /// Each again, by a program with a recursion guard of its own, for an image the first was
    /// skipped for (`judged.rs`); attached right after it.
    #[raw_tracepoint(tracepoint = "sched_process_exec")]
    fn sched_process_exec_image_again(ctx: RawTracePointContext) -> i32 =
        try_image::<false, true>();

    #[raw_tracepoint(tracepoint = "sched_process_exec")]
    fn sched_process_exec_image_walk_again(ctx: RawTracePointContext) -> i32 =
        try_image::<true, true>();
}

/// The area at `addr` of the new image. At exec its mm has a single thread and no other
/// process has had time to take its lock, so a lookup that cannot be made is not something
/// the process can cause; it is treated as no area.
fn area_at<const WALK: bool>(cfg: &agent_common::Config, addr: u64) -> Option<Area> {
    match vma::find::<WALK>(cfg, addr) {
        vma::Found::Area(area) => Some(area),
        vma::Found::Nothing | vma::Found::Unknown => None,
    }
}

fn prot_of(area: &Area) -> u32 {
    let mut prot = 0;
    if area.flags & VM_READ != 0 {
        prot |= PROT_READ;
    }
    if area.flags & VM_WRITE != 0 {
        prot |= PROT_WRITE;
    }
    if area.flags & VM_EXEC != 0 {
        prot |= PROT_EXEC;
    }
    prot
}

/// `AT_NULL` and `AT_BASE` of the auxiliary vector.
const AT_NULL: u64 = 0;
const AT_BASE: u64 = 7;
/// Pairs of the saved auxiliary vector looked at (the kernel writes about 20; `AT_BASE` is
/// among the first ten).
const AUXV_PAIRS: u32 = 32;

/// Drift of the new image's ELF interpreter (the dynamic loader), which the kernel opens and
/// maps itself: no exec record and no `mmap` call judges it. Its area holds the overlay's
/// underlying file, on the kernel's private mount of that layer: read-only for the image's
/// layers, writable for the container's own (`drift.rs`). Carried out (a kill) here; the
/// violation and the file are given back for the record.
#[inline(never)]
fn judge_interpreter<const WALK: bool>(
    cfg: &agent_common::Config,
    mm: *const u8,
) -> (Violation, u64) {
    const NONE: (Violation, u64) = (Violation::ALLOWED, 0);
    if cfg.mode != mode::ENFORCE {
        return NONE;
    }
    let set = current_set();
    // The three values the decision needs, read once (a copy of the set would not fit the
    // stack under the walk of the areas below).
    let Some(ps) = policy_set_in_place(set) else {
        return NONE;
    };
    let (flags, action, rule) = (ps.flags, ps.exec_action, ps.drift_rule);
    if flags & set_flags::EXEC_DENY_DRIFT == 0 || action == 0 {
        return NONE;
    }
    let k = &cfg.kernel;
    let mut base = 0u64;
    let mut i = 0;
    while i < AUXV_PAIRS {
        let at = k.mm_saved_auxv.wrapping_add(i * 16);
        let Some(kind) = read_kernel::<u64>(mm, at) else {
            break;
        };
        if kind == AT_NULL {
            break;
        }
        if kind == AT_BASE {
            base = read_kernel::<u64>(mm, at.wrapping_add(8)).unwrap_or(0);
            break;
        }
        i += 1;
    }
    // A static program has no interpreter.
    if base == 0 {
        return NONE;
    }
    // An area that cannot be found holds a file that cannot be judged: drift (fail closed).
    let file = match vma::find::<WALK>(cfg, base) {
        vma::Found::Area(area) => area.file,
        vma::Found::Nothing | vma::Found::Unknown => 0,
    };
    if crate::drift::of(cfg, file as *const u8) == 0 {
        return NONE;
    }
    (enforce(violation(action, set, rule)), file)
}

/// The record of a drifted interpreter, built off the frame that walks the areas.
#[inline(never)]
fn report_interpreter(cfg: &agent_common::Config, v: Violation, file: *const u8) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    crate::exec::report_file(
        cfg,
        v,
        exec_flags::MAPPED | exec_flags::ARGS_MISSING,
        core::ptr::null(),
        tgid,
        file,
    );
}

fn try_image<const WALK: bool, const AGAIN: bool>() -> Result<(), i64> {
    let cfg = config().ok_or(1)?;
    if !traced(cfg) {
        return Ok(());
    }
    let tgid = (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32;
    if !crate::judged::claim(tgid, crate::judged::IMAGE, AGAIN) {
        return Ok(());
    }
    let k = &cfg.kernel;
    let mm = read_kernel_ptr(current_task(), k.task_mm).ok_or(1)?;
    // Reported from here: under the judgement's frame the record's chain of calls would not
    // fit the stack of kernels before 6.13.
    let (drifted, file) = judge_interpreter::<WALK>(cfg, mm);
    if drifted.is_hit() {
        report_interpreter(cfg, drifted, file as *const u8);
    }
    let stack: u64 = read_kernel(mm, k.mm_start_stack).ok_or(1)?;
    let mut found = None;
    if let Some(area) = area_at::<WALK>(cfg, stack)
        && area.flags & VM_EXEC != 0
    {
        found = Some((area, wx_reason::EXEC_STACK));
    }
    if found.is_none() {
        // Every area from the first executable segment to the end of the last one, and the
        // last segment (where data usually is).
        let code: u64 = read_kernel(mm, k.mm_start_code).ok_or(1)?;
        let end_code: u64 = read_kernel(mm, k.mm_end_code).ok_or(1)?;
        let data: u64 = read_kernel(mm, k.mm_start_data).ok_or(1)?;
        let mut addr = code;
        for _ in 0..MAX_AREAS {
            let Some(area) = area_at::<WALK>(cfg, addr) else {
                break;
            };
            if area.flags & (VM_WRITE | VM_EXEC) == VM_WRITE | VM_EXEC {
                found = Some((area, wx_reason::WRITE_EXEC));
                break;
            }
            addr = area.end;
            if addr >= end_code {
                if let Some(area) = area_at::<WALK>(cfg, data)
                    && area.flags & (VM_WRITE | VM_EXEC) == VM_WRITE | VM_EXEC
                {
                    found = Some((area, wx_reason::WRITE_EXEC));
                }
                break;
            }
        }
    }
    let Some((area, reason)) = found else {
        return Ok(());
    };
    let Some(judged) = wx::judge(cfg) else {
        return Ok(());
    };
    wx::report(
        cfg,
        judged,
        &WxEvent {
            syscall: wx_syscall::EXEC,
            prot: prot_of(&area),
            reason,
            addr: area.start,
            len: area.end - area.start,
            fd: -1,
            ..WxEvent::default()
        },
    );
    Ok(())
}
