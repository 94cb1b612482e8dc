//! What every probe needs: the configuration, the cgroup filter, the record header, reads
//! from kernel structures at offsets user space found in BTF, and loss counting.
use agent_common::{Config, EventHeader, SYSCALL_ARG0_OFFSET};
use aya_ebpf::helpers::{
    bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_comm,
    bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
};

pub use crate::read::{read_kernel, read_kernel_ptr};
use crate::{
    maps::{CONFIG, EVENTS, LOSSES},
    throttle::{HasHeader, admit, lost},
};

pub fn config() -> Option<&'static Config> {
    CONFIG.get(0)
}

/// 1: tracing programs may call `bpf_get_current_ancestor_cgroup_id` (5.14 and newer); 0:
/// the ancestors are read from the task's cgroup. User space sets it at load time, in
/// read-only data the verifier sees as a constant, so the branch a kernel cannot take is
/// never verified (a kernel refuses a program calling a helper it does not know).
#[unsafe(no_mangle)]
static ANCESTOR_HELPER: u8 = 1;

/// Whether tracing programs may call `bpf_get_current_ancestor_cgroup_id` here.
#[inline(always)]
pub fn ancestor_helper() -> bool {
    // SAFETY: a read of a static; volatile so the compiler keeps the load the loader patches.
    unsafe { core::ptr::read_volatile(&raw const ANCESTOR_HELPER) != 0 }
}

/// 1: programs may call `bpf_task_pt_regs` (5.15 and newer), set by user space like
/// [`ANCESTOR_HELPER`]; 0: the task's registers are not read outside the syscall hooks.
#[unsafe(no_mangle)]
static TASK_REGS_HELPER: u8 = 0;

/// The current task's user registers as it entered the kernel: which system call it is in and
/// with which arguments, for hooks that are not system call hooks. `None` where the kernel
/// lacks the helper.
#[inline(always)]
pub fn current_regs() -> Option<*const u8> {
    // SAFETY: a read of a static; volatile so the compiler keeps the load the loader patches.
    if unsafe { core::ptr::read_volatile(&raw const TASK_REGS_HELPER) } == 0 {
        return None;
    }
    // SAFETY: plain helper calls; the second takes the task pointer the first returns.
    let regs = unsafe {
        aya_ebpf::helpers::bpf_task_pt_regs(aya_ebpf::helpers::bpf_get_current_task_btf())
    };
    if regs == 0 {
        None
    } else {
        Some(regs as *const u8)
    }
}

/// Where the helper is missing, what it reads, as kernels before 6.0 keep it: the current
/// task's cgroup v2 cgroup and its depth. The task's css_set and cgroup stay valid while a
/// program runs (RCU), so these reads fail only on offsets this kernel lacks, which user
/// space checks before it takes this path; should one fail all the same, it is counted
/// (`task_cgroup`), and the task is taken to be under no policy. Inlined: as a function of
/// its own its frame made `judge_mapped_file`'s call chain pass the 512 bytes of stack
/// kernels before 6.13 allow (5.10 and 6.1 round each frame up to 32).
#[inline(always)]
pub fn own_cgroup(cfg: &Config) -> Option<(*const u8, u32)> {
    let k = &cfg.kernel;
    if k.cgroup_ancestor_ids == agent_common::OFFSET_UNKNOWN {
        return None;
    }
    let cgroup = read_kernel_ptr(current_task(), k.task_cgroups)
        .and_then(|cgroups| read_kernel_ptr(cgroups, k.css_set_dfl_cgrp))
        .and_then(|cgrp| Some((cgrp, read_kernel::<i32>(cgrp, k.cgroup_level)?)));
    match cgroup {
        Some((cgrp, level)) if level >= 0 => Some((cgrp, level as u32)),
        _ => {
            count_cgroup_failure();
            None
        }
    }
}

/// The id of the ancestor at `level` of `cgrp` (at depth `own`), from its `ancestor_ids`; 0
/// when `cgrp` is not that deep, or (counted) when the read fails.
pub fn ancestor_id_in(cfg: &Config, cgrp: *const u8, own: u32, level: u32) -> u64 {
    if level > own {
        return 0;
    }
    let offset = cfg
        .kernel
        .cgroup_ancestor_ids
        .wrapping_add(level.wrapping_mul(8));
    read_kernel::<u64>(cgrp, offset).unwrap_or_else(|| {
        count_cgroup_failure();
        0
    })
}

#[inline(always)]
fn count_cgroup_failure() {
    use agent_common::probe_error;
    crate::diag::count(const { probe_error::id("task_cgroup") }, probe_error::READ);
}

/// The id of the current task's cgroup v2 ancestor at `level` (the root is 0; the cgroup
/// itself at its own level), 0 when the cgroup is not that deep.
#[inline(always)]
pub fn ancestor_cgroup_id(cfg: &Config, level: u32) -> u64 {
    if ancestor_helper() {
        // SAFETY: a plain helper call without pointer arguments.
        return unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
    }
    own_cgroup(cfg).map_or(0, |(cgrp, own)| ancestor_id_in(cfg, cgrp, own, level))
}

/// Whether the current task is one this agent reports on: not the agent itself, and inside
/// the configured cgroup subtree (if any).
pub fn selected(cfg: &Config) -> bool {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if pid == cfg.agent_pid {
        return false;
    }
    if cfg.filter_cgroup_id == 0 {
        return true;
    }
    ancestor_cgroup_id(cfg, cfg.filter_cgroup_level) == cfg.filter_cgroup_id
}

/// In trace mode, [`selected`]; in enforce mode every task but the agent (the policy set
/// lookup decides later).
pub fn traced(cfg: &Config) -> bool {
    if cfg.mode == agent_common::mode::ENFORCE {
        return (bpf_get_current_pid_tgid() >> 32) as u32 != cfg.agent_pid;
    }
    selected(cfg)
}

pub fn current_task() -> *const u8 {
    // SAFETY: a plain helper call without pointer arguments.
    unsafe { bpf_get_current_task() as *const u8 }
}

/// Thread group id of the current task's real parent (0 if unknown).
fn parent_tgid(cfg: &Config) -> u32 {
    let task = current_task();
    read_kernel_ptr(task, cfg.kernel.task_real_parent)
        .and_then(|parent| read_kernel::<i32>(parent, cfg.kernel.task_tgid))
        .map_or(0, |tgid| tgid as u32)
}

pub fn header(kind: u32, cfg: &Config) -> EventHeader {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    EventHeader {
        kind,
        verdict: 0,
        action: 0,
        // SAFETY: plain helper calls without pointer arguments.
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        ppid: parent_tgid(cfg),
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        rule: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        count: 1,
        throttle: 0,
        first_ns: 0,
    }
}

/// Counts a record of `kind` that did not fit into the ring buffer.
pub fn count_loss(kind: u32) {
    if let Some(slot) = LOSSES.get_ptr_mut(kind) {
        // SAFETY: per-CPU slot, so no other program writes it concurrently.
        unsafe { *slot += 1 };
    }
}

/// Sends a fixed-size record to user space, or counts it as lost under `kind`. Violations
/// pass [`admit`] first: a flood of identical ones is held back and counted.
pub fn emit<T: 'static + HasHeader>(kind: u32, mut record: T) {
    let target = record.target();
    if !admit(kind, target, record.header_mut()) {
        return;
    }
    match EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            entry.write(record);
            entry.submit(0);
        }
        None => {
            let header = record.header_mut();
            lost(kind, target, header.count, header.first_ns, header);
        }
    }
}

/// [`emit`] of a record kept in map memory (a scratch entry), copied straight into the
/// ring buffer: never onto the stack.
pub fn emit_from<T: 'static + HasHeader + Copy>(kind: u32, record: &mut T) {
    let target = record.target();
    if !admit(kind, target, record.header_mut()) {
        return;
    }
    match EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            entry.write(*record);
            entry.submit(0);
        }
        None => {
            let header = record.header_mut();
            lost(kind, target, header.count, header.first_ns, header);
        }
    }
}

/// Argument `index` (a constant where this is inlined: see [`record_u64`]) of the syscall
/// whose `sys_enter_*` tracepoint fired.
#[inline(always)]
pub fn syscall_arg(ctx: &aya_ebpf::programs::TracePointContext, index: usize) -> Result<u64, i64> {
    Ok(record_u64(ctx, SYSCALL_ARG0_OFFSET + 8 * index))
}

/// [`syscall_arg`] for an index the program only knows at run time (the verifier refuses a
/// load from the context at a computed offset): read through the helper.
pub fn syscall_arg_at(
    ctx: &aya_ebpf::programs::TracePointContext,
    index: usize,
) -> Result<u64, i64> {
    // SAFETY: syscall tracepoint records hold 8-byte argument slots from SYSCALL_ARG0_OFFSET.
    unsafe { ctx.read_at(SYSCALL_ARG0_OFFSET + 8 * index) }.map_err(i64::from)
}

/// The 8 bytes at `offset` of a tracepoint's record, loaded straight from the context: the
/// verifier checks the (constant) offset against the record's bounds, and no helper call is
/// made (`read_at` costs one, on every `mmap` and `mprotect` of every task).
#[inline(always)]
pub fn record_u64(ctx: &aya_ebpf::programs::TracePointContext, offset: usize) -> u64 {
    use aya_ebpf::EbpfContext as _;
    // SAFETY: `offset` is a constant within the record (syscall records hold 8-byte slots
    // from SYSCALL_ARG0_OFFSET, and `ret` at SYSCALL_RET_OFFSET), 8-byte aligned; the
    // verifier refuses the program otherwise.
    unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const u8).add(offset) as *const u64) }
}
