//! Loading the probes, attaching them, and owning their maps.
mod btf;
pub mod fallback;
pub mod floor;
pub mod kernel_log;
pub mod late;
pub mod offsets;
pub mod pin;
pub mod prevent;
pub mod reader;
pub mod records;
mod skipped;
#[cfg(test)]
mod stack_depth;
pub mod throttle;
pub mod tracefs;

use std::path::{Path, PathBuf};

use agent_common::{Config, kind};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSockAddr, Program, RawTracePoint, TracePoint,
        links::{FdLink, LinkError},
    },
};

pub use btf::Btf;

/// The object built from `agent-ebpf` by `build.rs`.
static PROBES_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("VIGIL_PROBES_OBJECT"));

/// Where a program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    /// A tracepoint's record: `(category, name)`.
    Tracepoint(&'static str, &'static str),
    /// A raw tracepoint: the tracepoint's own arguments (e.g. `bprm`) instead of its record.
    Raw(&'static str),
    /// A cgroup program on the cgroup v2 root (its attach type is in the object); it sees
    /// every process on the node and allows what no policy refuses.
    Cgroup,
}

impl Hook {
    /// The tracepoint a tracing program needs in tracefs: `(category, name)`.
    pub fn tracepoint(&self) -> Option<(&'static str, &'static str)> {
        match *self {
            Self::Tracepoint(category, name) => Some((category, name)),
            Self::Raw(name) => Some((RAW_CATEGORIES.iter().find(|(n, _)| *n == name)?.1, name)),
            Self::Cgroup => None,
        }
    }
}

/// The tracefs category of each raw tracepoint (raw tracepoints are named without one).
const RAW_CATEGORIES: &[(&str, &str)] = &[
    ("sched_process_exec", "sched"),
    ("sched_process_fork", "sched"),
    ("sys_exit", "raw_syscalls"),
    ("sys_enter", "raw_syscalls"),
    ("cgroup_attach_task", "cgroup"),
    ("cgroup_mkdir", "cgroup"),
    ("cgroup_rmdir", "cgroup"),
];

/// Every program and the hooks it attaches to. Programs on one tracepoint run in the order
/// they were attached, which is the order here.
pub const PROGRAMS: &[(&str, &[Hook])] = &[
    ("sched_process_exec", &[Hook::Raw("sched_process_exec")]),
    // Right after it: judges only an exec the first was skipped for (`agent-ebpf/src/judged.rs`).
    (
        "sched_process_exec_again",
        &[Hook::Raw("sched_process_exec")],
    ),
    // After the exec programs: they record the executable that exemptions are looked up by.
    (
        "sched_process_exec_image",
        &[Hook::Raw("sched_process_exec")],
    ),
    (
        "sched_process_exec_image_again",
        &[Hook::Raw("sched_process_exec")],
    ),
    ("sched_process_fork", &[Hook::Raw("sched_process_fork")]),
    (
        "sched_process_exit",
        &[Hook::Tracepoint("sched", "sched_process_exit")],
    ),
    ("sys_exit", &[Hook::Raw("sys_exit")]),
    ("sys_enter", &[Hook::Raw("sys_enter")]),
    ("cgroup_attach_task", &[Hook::Raw("cgroup_attach_task")]),
    (
        "cgroup_change",
        &[Hook::Raw("cgroup_mkdir"), Hook::Raw("cgroup_rmdir")],
    ),
    ("connect4", &[Hook::Cgroup]),
    ("connect6", &[Hook::Cgroup]),
    ("sendmsg4", &[Hook::Cgroup]),
    ("sendmsg6", &[Hook::Cgroup]),
    ("sock_create", &[Hook::Cgroup]),
    ("sys_enter_mmap", &[syscall("sys_enter_mmap")]),
    ("sys_enter_mmap_exec", &[syscall("sys_enter_mmap")]),
    (
        "sys_exit_protection",
        &[
            syscall("sys_exit_mmap"),
            syscall("sys_exit_mprotect"),
            syscall("sys_exit_pkey_mprotect"),
            syscall("sys_exit_shmat"),
        ],
    ),
    ("sys_enter_mprotect", &[syscall("sys_enter_mprotect")]),
    ("sys_enter_mprotect_exec", &[syscall("sys_enter_mprotect")]),
    (
        "sys_enter_pkey_mprotect_exec",
        &[syscall("sys_enter_pkey_mprotect")],
    ),
    (
        "sys_enter_pkey_mprotect",
        &[syscall("sys_enter_pkey_mprotect")],
    ),
    ("sys_enter_shmat", &[syscall("sys_enter_shmat")]),
    ("sys_enter_ptrace", &[syscall("sys_enter_ptrace")]),
    ("sys_enter_userfaultfd", &[syscall("sys_enter_userfaultfd")]),
    (
        "sys_enter_process_vm_writev",
        &[syscall("sys_enter_process_vm_writev")],
    ),
    (
        "sys_exit_open_mem",
        &[
            syscall("sys_exit_openat"),
            syscall("sys_exit_openat2"),
            syscall("sys_exit_open"),
        ],
    ),
    ("sys_enter_open_script", &[syscall("sys_enter_open")]),
    (
        "sys_enter_openat_script",
        &[syscall("sys_enter_openat"), syscall("sys_enter_openat2")],
    ),
    (
        "sys_exit_open_script",
        &[
            syscall("sys_exit_open"),
            syscall("sys_exit_openat"),
            syscall("sys_exit_openat2"),
        ],
    ),
    ("sys_enter_personality", &[syscall("sys_enter_personality")]),
];

/// Each `(program, hook)` of [`PROGRAMS`], in attach order.
pub fn attachments() -> impl Iterator<Item = (&'static str, Hook)> {
    PROGRAMS
        .iter()
        .flat_map(|(program, hooks)| hooks.iter().map(|hook| (*program, *hook)))
}

/// Programs only enforcement needs: `raw_syscalls/sys_exit` carries out kills the hooks
/// that refused could not send, and fails closed an exec no judge saw; the `*_script`
/// programs follow a script a policy awaits to its interpreter's open (`SCRIPT_PENDING` is
/// written only under a policy). `vigil trace` kills nothing and judges nothing, and these
/// hooks run at every system call, or every open, of every task.
const ENFORCE_ONLY: [&str; 4] = [
    "sys_exit",
    "sys_enter_open_script",
    "sys_enter_openat_script",
    "sys_exit_open_script",
];

/// Programs that only the W^X syscall tracepoints need: where the LSM programs report W^X
/// (`prevent::WX_REPORTS`) they see every one of these requests, from every entry, with the
/// protection the kernel applies.
const WX_TRACEPOINT_ONLY: [&str; 9] = [
    "sys_enter_mmap",
    "sys_enter_mmap_exec",
    "sys_exit_protection",
    "sys_enter_mprotect",
    "sys_enter_mprotect_exec",
    "sys_enter_pkey_mprotect_exec",
    "sys_enter_pkey_mprotect",
    "sys_enter_shmat",
    "sys_enter_personality",
];

/// Whether `program` is loaded and attached in `mode` where the BPF LSM covers `prevent`
/// ([`agent_common::prevent`] bits).
pub fn needed(program: &str, mode: Mode, prevent: u32) -> bool {
    (mode == Mode::Enforce || !ENFORCE_ONLY.contains(&program))
        && (prevent & agent_common::prevent::WX_REPORTS == 0
            || !WX_TRACEPOINT_ONLY.contains(&program))
        && (prevent & agent_common::prevent::FOREIGN_OPEN == 0 || program != "sys_exit_open_mem")
        && (prevent & agent_common::prevent::SCRIPT_LEVELS == 0
            || !SCRIPT_OPEN_ONLY.contains(&program))
        && (prevent & agent_common::prevent::FOREIGN_CALLS == 0
            || !FOREIGN_CALL_ONLY.contains(&program))
        && (program != late::SYS_ENTER || !sys_enter_late(mode, prevent))
        && (program != late::SYS_EXIT || !sys_exit_late(mode, prevent))
}

/// Programs on the foreign-write system calls: where the LSM programs judge those
/// (`prevent::FOREIGN_CALLS`) they see every entry to them.
const FOREIGN_CALL_ONLY: [&str; 3] = [
    "sys_enter_ptrace",
    "sys_enter_userfaultfd",
    "sys_enter_process_vm_writev",
];

/// Programs that only follow a script to its interpreter's open: where `bprm_check_security`
/// decides every level (`prevent::SCRIPT_LEVELS`) nothing waits for that open.
const SCRIPT_OPEN_ONLY: [&str; 3] = [
    "sys_enter_open_script",
    "sys_enter_openat_script",
    "sys_exit_open_script",
];

/// [`agent_common::prevent::SCRIPT_LEVELS`] where the LSM's exec program runs and can read
/// the first bytes of each level, else 0.
pub fn script_levels(prevention: &prevent::Prevention, k: &agent_common::KernelOffsets) -> u32 {
    if prevention.active & agent_common::prevent::EXEC != 0
        && k.bprm_buf != agent_common::OFFSET_UNKNOWN
    {
        agent_common::prevent::SCRIPT_LEVELS
    } else {
        0
    }
}

/// What the BPF LSM programs take over from tracepoints here, besides what they refuse:
/// [`wx_reports`], [`script_levels`] and [`exec_entry`].
pub fn taken_over(
    prevention: &prevent::Prevention,
    fallbacks: &fallback::Fallbacks,
    k: &agent_common::KernelOffsets,
) -> u32 {
    let wx = wx_reports(prevention, fallbacks, k);
    wx | script_levels(prevention, k) | exec_entry(prevention, wx, k)
}

/// [`agent_common::prevent::EXEC_ENTRY`] where the LSM's exec program runs and reads the
/// task's registers (as [`wx_reports`] found: `wx`) and the members it reads for a traced
/// exec are known, else 0.
pub fn exec_entry(
    prevention: &prevent::Prevention,
    wx: u32,
    k: &agent_common::KernelOffsets,
) -> u32 {
    if prevention.active & agent_common::prevent::EXEC != 0
        && wx & agent_common::prevent::WX_REPORTS != 0
        && k.task_ptrace != agent_common::OFFSET_UNKNOWN
    {
        agent_common::prevent::EXEC_ENTRY
    } else {
        0
    }
}

/// Whether raw `sys_enter` is left to be attached by the first set that denies 32-bit calls
/// ([`late`]): the LSM programs see every other 32-bit call a rule is about, and, under
/// policies, the exec's entry. `vigil trace` has no sets, so there it is not loaded at all.
pub fn sys_enter_late(mode: Mode, prevent: u32) -> bool {
    use agent_common::prevent::{EXEC_ENTRY, FOREIGN_CALLS, WX_REPORTS};
    prevent & WX_REPORTS != 0
        && prevent & FOREIGN_CALLS != 0
        && (mode == Mode::Trace || prevent & EXEC_ENTRY != 0)
}

/// Whether raw `sys_exit` is left to be attached by the first set that kills ([`late`]):
/// `bprm_execve`'s fexit program checks the exec's return and `file_open` sees the 32-bit
/// opens, so what is left are the kills a hook could not send itself.
pub fn sys_exit_late(mode: Mode, prevent: u32) -> bool {
    use agent_common::prevent::{EXEC_RETURN, FOREIGN_OPEN};
    mode == Mode::Enforce && prevent & EXEC_RETURN != 0 && prevent & FOREIGN_OPEN != 0
}

/// [`agent_common::prevent::WX_REPORTS`] where the LSM's W^X programs run and can read the
/// task's registers (the helper, and the members they read, known), else 0.
pub fn wx_reports(
    prevention: &prevent::Prevention,
    fallbacks: &fallback::Fallbacks,
    k: &agent_common::KernelOffsets,
) -> u32 {
    let members = [
        k.regs_orig_ax,
        k.regs_di,
        k.regs_si,
        k.regs_dx,
        k.regs_r10,
        k.regs_r8,
        k.regs_bx,
        k.regs_cx,
        k.thread_status,
    ];
    if prevention.active & agent_common::prevent::WX != 0
        && !fallbacks.wx_on_tracepoints
        && !members.contains(&agent_common::OFFSET_UNKNOWN)
    {
        agent_common::prevent::WX_REPORTS
    } else {
        0
    }
}

/// Whether the foreign-write LSM programs ([`prevent::FOREIGN_CALLS`]) can tell the call
/// they run under here: the LSM programs read the task's registers
/// ([`agent_common::prevent::WX_REPORTS`] says so) and the members they read are known.
pub fn foreign_calls_possible(prevent: u32, k: &agent_common::KernelOffsets) -> bool {
    prevent & agent_common::prevent::WX_REPORTS != 0
        && k.qstr_name != agent_common::OFFSET_UNKNOWN
        && k.task_tgid != agent_common::OFFSET_UNKNOWN
}

/// [`attachments`] of the programs [`needed`] in `mode` with `prevent`.
pub fn attachments_with(mode: Mode, prevent: u32) -> impl Iterator<Item = (&'static str, Hook)> {
    attachments().filter(move |(program, _)| needed(program, mode, prevent))
}

const fn syscall(name: &'static str) -> Hook {
    Hook::Tracepoint("syscalls", name)
}

/// Lifts `RLIMIT_MEMLOCK` where this process may: kernels before 5.11 charge BPF maps to it
/// (per user, across processes, and a map freed by an agent that just exited is uncharged
/// only once the kernel gets to it), later ones to the memory cgroup. Without the privilege
/// (`CAP_SYS_RESOURCE`) the limit stays, and a map creation it refuses says so (`EPERM`).
pub fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: sets this process's own limit from a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!("RLIMIT_MEMLOCK stays: {}", std::io::Error::last_os_error());
    }
}

/// Writes the run-time configuration the programs read (`CONFIG`, slot 0).
fn write_config(ebpf: &mut Ebpf, config: Config) -> Result<(), EbpfError> {
    let map = ebpf
        .map_mut("CONFIG")
        .ok_or(EbpfError::MissingMap("CONFIG"))?;
    let mut array: Array<_, Config> = Array::try_from(map).map_err(|source| EbpfError::Map {
        map: "CONFIG",
        source,
    })?;
    array.set(0, config, 0).map_err(|source| EbpfError::Map {
        map: "CONFIG",
        source,
    })
}

/// Programs that are not attached but jumped to (`bpf_tail_call`): each is loaded and put in
/// slot 0 of its table before any hook is attached.
pub const TAIL_CALLS: &[(&str, &str)] = &[
    ("judge_mapped_file", "JUDGE_FILE"),
    ("judge_mapped_file_raw", "JUDGE_FILE_RAW"),
];

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mounting {fstype} at {target}: {source}")]
    Mount {
        fstype: String,
        target: String,
        source: std::io::Error,
    },
    #[error("{path}: invalid BTF: {reason}")]
    Btf { path: PathBuf, reason: String },
    #[error("tracepoint {tracepoint}: field `{field}` {reason}")]
    TracepointField {
        tracepoint: String,
        field: String,
        reason: String,
    },
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {program}: {action}: {source}")]
    Program {
        program: String,
        action: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error(
        "program {program}: attaching to tracepoint {tracepoint} needs perf_event_open, which \
         this kernel refuses (EACCES) to a process without CAP_SYS_ADMIN while \
         kernel.perf_event_paranoid is {level} (Debian's and Ubuntu's kernels default to 3): \
         set it to 2 on the node (`sysctl kernel.perf_event_paranoid=2`), or grant SYS_ADMIN \
         (the chart's `capabilities`)"
    )]
    PerfParanoid {
        program: String,
        tracepoint: String,
        level: i32,
    },
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(String),
    #[error("program {program}: pinning its link at {path}: {reason}")]
    Pin {
        program: String,
        path: PathBuf,
        reason: String,
    },
    #[error("program {program}: a second handle on it: {source}")]
    ProgramHandle {
        program: String,
        source: std::io::Error,
    },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error("the probes' log (AYA_LOGS): {0}")]
    KernelLog(String),
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("a second handle on map {map}: {source}")]
    MapHandle {
        map: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Fallback(#[from] fallback::FallbackError),
    #[error("attaching the cgroup programs: {0}")]
    Cgroup(#[from] crate::metadata::cgroup::CgroupError),
}

/// Loads `program` (a tracepoint-type tail-call target) and puts it in slot 0 of `table`.
/// Loads a tail-call target, which has its caller's program type: a syscall tracepoint's,
/// or raw `sys_enter`'s.
pub fn load_jump_target(
    prog: &mut aya::programs::Program,
) -> Result<(), aya::programs::ProgramError> {
    match prog {
        aya::programs::Program::RawTracePoint(prog) => prog.load(),
        prog => <&mut TracePoint>::try_from(prog)?.load(),
    }
}

fn fill_tail_call(ebpf: &mut Ebpf, program: &str, table: &'static str) -> Result<(), EbpfError> {
    let err = |action: &'static str| {
        move |source| EbpfError::Program {
            program: program.into(),
            action,
            source,
        }
    };
    let prog = ebpf
        .program_mut(program)
        .ok_or_else(|| EbpfError::MissingProgram(program.into()))?;
    load_jump_target(prog).map_err(err("load"))?;
    let fd = prog
        .fd()
        .map_err(err("load"))?
        .try_clone()
        .map_err(|source| EbpfError::Io {
            path: PathBuf::from(program),
            source,
        })?;
    let map = ebpf.map_mut(table).ok_or(EbpfError::MissingMap(table))?;
    let mut jumps = aya::maps::ProgramArray::try_from(map)
        .map_err(|source| EbpfError::Map { map: table, source })?;
    jumps
        .set(0, &fd, 0)
        .map_err(|source| EbpfError::Map { map: table, source })
}

/// Logs the kernel's id of `program` (target `vigil::programs`, debug level), by which
/// `cargo xtask bench` finds its run counts and times in the agent's `/proc/PID/fdinfo`.
pub(super) fn log_program_id(
    program: &str,
    info: Result<aya::programs::ProgramInfo, aya::programs::ProgramError>,
) {
    match info {
        Ok(info) => {
            tracing::debug!(target: "vigil::programs", program, id = info.id(), "program loaded")
        }
        Err(err) => {
            tracing::debug!(target: "vigil::programs", program, %err, "program loaded, its id unknown")
        }
    }
}

/// Loads (verifies) one of [`PROGRAMS`] without attaching it.
pub fn load_program(
    prog: &mut aya::programs::Program,
    hook: Hook,
) -> Result<(), aya::programs::ProgramError> {
    match (hook, prog) {
        (Hook::Tracepoint(..), prog) => <&mut TracePoint>::try_from(prog)?.load(),
        (Hook::Raw(_), prog) => <&mut RawTracePoint>::try_from(prog)?.load(),
        (Hook::Cgroup, Program::CgroupSock(prog)) => prog.load(),
        (Hook::Cgroup, prog) => <&mut CgroupSockAddr>::try_from(prog)?.load(),
    }
}

/// Takes map `name` out of `ebpf` as the typed map `T`.
fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, EbpfError> {
    let map = ebpf.take_map(name).ok_or(EbpfError::MissingMap(name))?;
    T::try_from(map).map_err(|source| EbpfError::Map { map: name, source })
}

/// An attachment to be pinned, or why it cannot be.
type Taken = Result<FdLink, LinkError>;

/// The error of a failed attachment; a tracepoint refused for `perf_event_paranoid` says so,
/// with what the node's operator can do.
fn explain_attach(program: &str, hook: Hook, source: aya::programs::ProgramError) -> EbpfError {
    let denied = std::iter::successors(Some(&source as &dyn std::error::Error), |e| e.source())
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| e.kind() == std::io::ErrorKind::PermissionDenied);
    let level = std::fs::read_to_string(PERF_EVENT_PARANOID)
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok());
    match (hook, level) {
        (Hook::Tracepoint(category, name), Some(level)) if denied && level > 2 => {
            EbpfError::PerfParanoid {
                program: program.into(),
                tracepoint: format!("{category}/{name}"),
                level,
            }
        }
        _ => EbpfError::Program {
            program: program.into(),
            action: "attach",
            source,
        },
    }
}

const PERF_EVENT_PARANOID: &str = "/proc/sys/kernel/perf_event_paranoid";

/// Attaches a loaded program; cgroup programs go on `cgroup_root` as BPF links, which the
/// kernel always runs beside the other programs of that hook (the link API takes no
/// ALLOW_MULTI flag: `Single` sends none). The attachment ends when the agent exits, unless
/// `take` asks for it as a link to pin.
fn attach_program(
    prog: &mut Program,
    hook: Hook,
    cgroup_root: &std::fs::File,
    take: bool,
) -> Result<Option<Taken>, aya::programs::ProgramError> {
    Ok(match (hook, prog) {
        (Hook::Tracepoint(category, name), prog) => {
            let prog = <&mut TracePoint>::try_from(prog)?;
            let id = prog.attach(category, name)?;
            take.then(|| prog.take_link(id).map(FdLink::try_from))
                .transpose()?
        }
        (Hook::Raw(name), prog) => {
            let prog = <&mut RawTracePoint>::try_from(prog)?;
            let id = prog.attach(name)?;
            take.then(|| prog.take_link(id).map(|link| Ok(FdLink::from(link))))
                .transpose()?
        }
        (Hook::Cgroup, Program::CgroupSock(prog)) => {
            let id = prog.attach(cgroup_root, CgroupAttachMode::Single)?;
            take.then(|| prog.take_link(id).map(FdLink::try_from))
                .transpose()?
        }
        (Hook::Cgroup, prog) => {
            let prog = <&mut CgroupSockAddr>::try_from(prog)?;
            let id = prog.attach(cgroup_root, CgroupAttachMode::Single)?;
            take.then(|| prog.take_link(id).map(FdLink::try_from))
                .transpose()?
        }
    })
}

/// The cgroup subtree the probes are limited to (found by `metadata::cgroup::filter_for`).
pub use crate::metadata::cgroup::CgroupFilter;

/// What the probes report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Everything observed (`vigil trace`).
    #[default]
    Trace,
    /// Policies decide in the kernel; only violations are reported (`vigil run`).
    Enforce,
}

#[derive(Debug, Clone, Default)]
pub struct ProbeOptions {
    pub mode: Mode,
    pub cgroup: Option<CgroupFilter>,
    /// Size of the ring buffer in bytes (a power of two, at least a page); default 4 MiB.
    pub ring_buffer_bytes: Option<u32>,
    /// A process whose events are never emitted (the agent itself).
    pub exclude_pid: u32,
    /// The cgroup v2 root the cgroup programs attach to; `None`: found in mountinfo.
    pub cgroup_root: Option<PathBuf>,
    /// Forward the probes' own log (why a probe gave up) to the agent's log; off, the
    /// probes' log level is patched to nothing at load.
    pub kernel_log: bool,
    /// Pin the programs' links (enforcement survives the agent) and take over from the
    /// generations pinned before (`--pin-dir`).
    pub pin: Option<pin::PinPlan>,
}

/// Records lost because the ring buffer was full, per behaviour, since load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelLosses {
    pub exec: u64,
    pub connect: u64,
    pub wx: u64,
    pub moves: u64,
}

impl KernelLosses {
    pub fn total(&self) -> u64 {
        self.exec + self.connect + self.wx + self.moves
    }
}

/// Per-behaviour counters the probes keep: records lost to a full ring buffer (`LOSSES`)
/// and violations held back by the flood throttle (`THROTTLED`).
pub struct LossCounters {
    map: PerCpuArray<MapData, u64>,
    throttled: PerCpuArray<MapData, u64>,
    probe_errors: PerCpuArray<MapData, u64>,
    /// Runs of the programs the kernel skipped, reported with the probe failures.
    skipped: skipped::SkippedRuns,
    /// Where `PROBE_ERRORS` is pinned for `vigil doctor`; removed on drop.
    pinned: Option<PathBuf>,
}

/// Where each running agent pins its `PROBE_ERRORS` map: `<dir>/<pid>/probe_errors`.
pub const PINNED_AGENTS: &str = "/sys/fs/bpf/vigil/agents";

impl Drop for LossCounters {
    fn drop(&mut self) {
        if let Some(dir) = self.pinned.take() {
            if let Err(err) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), %err, "could not remove the pinned probe counters");
            }
            // The last agent out leaves no directory behind (another one's keeps them).
            let agents = Path::new(PINNED_AGENTS);
            if std::fs::remove_dir(agents).is_ok()
                && let Some(vigil) = agents.parent()
            {
                let _ = std::fs::remove_dir(vigil);
            }
        }
    }
}

/// Pins `map` as this agent's probe counters, so that `vigil doctor` can read them while the
/// agent runs. Not being able to is logged: the counts still reach the loss events and log.
fn pin_probe_errors(map: &aya::maps::Map) -> Option<PathBuf> {
    remove_dead_agents_pins();
    let dir = Path::new(PINNED_AGENTS).join(std::process::id().to_string());
    let pinned = std::fs::create_dir_all(&dir)
        .map_err(|e| e.to_string())
        .and_then(|()| map.pin(dir.join("probe_errors")).map_err(|e| e.to_string()));
    match pinned {
        Ok(()) => Some(dir),
        Err(err) => {
            tracing::warn!(dir = %dir.display(), %err, "probe counters not pinned: vigil doctor cannot show them");
            None
        }
    }
}

/// Removes the pinned counters of agents that died without cleaning up (SIGKILL, OOM): a
/// pinned map lives until its pin goes.
fn remove_dead_agents_pins() {
    let Ok(entries) = std::fs::read_dir(PINNED_AGENTS) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = Path::new("/proc").join(pid.to_string()).exists();
        if !alive && let Err(err) = std::fs::remove_dir_all(entry.path()) {
            tracing::warn!(dir = %entry.path().display(), %err, "could not remove a dead agent's pinned counters");
        }
    }
}

/// Failures of one probe for one reason (see `agent_common::probe_error`), summed over CPUs.
pub type ProbeErrors = std::collections::BTreeMap<String, u64>;

fn per_kind(
    map: &PerCpuArray<MapData, u64>,
    name: &'static str,
) -> Result<KernelLosses, EbpfError> {
    let sum = |slot: u32| -> Result<u64, EbpfError> {
        let values = map
            .get(&slot, 0)
            .map_err(|source| EbpfError::Map { map: name, source })?;
        Ok(values.iter().sum())
    };
    Ok(KernelLosses {
        exec: sum(kind::EXEC)?,
        connect: sum(kind::CONNECT)?,
        wx: sum(kind::WX)?,
        moves: sum(kind::MOVE)?,
    })
}

impl LossCounters {
    /// Records lost because the ring buffer was full.
    pub fn read(&self) -> Result<KernelLosses, EbpfError> {
        per_kind(&self.map, "LOSSES")
    }

    /// Violations held back by the flood throttle (each later record of the same violation
    /// carries how many it stands for).
    pub fn held_back(&self) -> Result<KernelLosses, EbpfError> {
        per_kind(&self.throttled, "THROTTLED")
    }

    /// Every probe failure so far, as `<probe>/<reason>`, the zero ones left out; a
    /// program's runs the kernel skipped are `<program>/skipped`.
    pub fn probe_errors(&self) -> Result<ProbeErrors, EbpfError> {
        let mut out = read_probe_errors(&self.probe_errors)?;
        for (program, n) in self.skipped.read() {
            out.insert(format!("{program}/skipped"), n);
        }
        Ok(out)
    }
}

/// The non-zero counts of a `PROBE_ERRORS` map, as `<probe>/<reason>`.
pub fn read_probe_errors(map: &PerCpuArray<MapData, u64>) -> Result<ProbeErrors, EbpfError> {
    use agent_common::probe_error::{PROBES, REASON_NAMES, slot};
    let mut out = ProbeErrors::new();
    for (probe, name) in PROBES.iter().enumerate() {
        for (reason, reason_name) in REASON_NAMES.iter().enumerate() {
            let at = slot(probe as u32, reason as u32);
            let count: u64 = map
                .get(&at, 0)
                .map_err(|source| EbpfError::Map {
                    map: "PROBE_ERRORS",
                    source,
                })?
                .iter()
                .sum();
            if count > 0 {
                out.insert(format!("{name}/{reason_name}"), count);
            }
        }
    }
    Ok(out)
}

/// The kernel maps a compiled policy lives in.
pub struct PolicyMaps {
    pub cgroup_sets: aya::maps::HashMap<MapData, u64, u32>,
    pub policy_sets: Array<MapData, agent_common::PolicySet>,
    pub exec_paths: aya::maps::LpmTrie<MapData, agent_common::PathKeyData, agent_common::PathRule>,
    pub connect_allow:
        aya::maps::LpmTrie<MapData, agent_common::AddrKeyData, agent_common::PortRules>,
    pub connect_deny:
        aya::maps::LpmTrie<MapData, agent_common::AddrKeyData, agent_common::PortRules>,
    pub services: aya::maps::HashMap<MapData, agent_common::ServiceKey, u32>,
    pub task_exe: aya::maps::HashMap<MapData, u32, agent_common::ExePath>,
    pub task_origin: aya::maps::HashMap<MapData, u32, u64>,
    /// Slot 0: non-zero once a set denies 32-bit system calls.
    pub compat_watch: Array<MapData, u64>,
    /// Slot 0: non-zero once a set denies foreign writes.
    pub foreign_watch: Array<MapData, u64>,
    /// Slot 0: moves whenever a cgroup is made or removed.
    pub cgroup_changes: Array<MapData, u64>,
    /// Files whose content matched a set's `sha256` entry, by set and identity.
    pub vouched: aya::maps::HashMap<MapData, agent_common::VouchKey, u32>,
    /// Processes to kill at their next system call exit, and those held for a decision on
    /// their executable's content (`agent_common::pending_kill`).
    pub pending_kills: aya::maps::HashMap<MapData, u32, u32>,
}

/// What a group of BPF LSM or fexit programs takes over when it attached (its bits into
/// `prevent`, its links kept); else the hooks it would replace stay, and the log says which.
fn take_over(
    attached: Result<(u32, prevent::Links), EbpfError>,
    (prevent, links): (&mut u32, &mut prevent::Links),
    stays: &str,
) {
    match attached {
        Ok((bits, taken)) => {
            *prevent |= bits;
            links.extend(taken);
        }
        Err(err) => tracing::info!(%err, "{stays}"),
    }
}

/// The loaded and attached probes. Dropping it detaches every program.
pub struct Probes {
    /// Shared with raw `sys_enter`'s late attach ([`late`]): a second handle on a loaded
    /// program would take `BPF_PROG_GET_FD_BY_ID`, which needs `CAP_SYS_ADMIN` (the chart's
    /// capabilities do not have it).
    ebpf: std::sync::Arc<std::sync::Mutex<Ebpf>>,
    /// The reader of the probes' own log, with `kernel_log`.
    kernel_log: Option<kernel_log::KernelLog>,
    /// Kernel structure members this kernel's BTF did not have.
    pub missing_offsets: Vec<String>,
    /// With pinning: the take-over from previous agents' programs, once ready.
    handover: Option<pin::Handover>,
    /// What this node refuses before the act (BPF LSM).
    pub prevention: prevent::Prevention,
    /// What the probes do instead of helpers this kernel lacks.
    pub fallbacks: fallback::Fallbacks,
    /// What the programs were configured with.
    config: Config,
    /// The programs' links are pinned: they outlive this agent until the next one takes over.
    pinned: bool,
    /// How many of [`PROGRAMS`] are attached ([`needed`] in this mode on this kernel).
    pub attached: usize,
    /// Raw `sys_enter` and `sys_exit` where each waits for the first set that needs it
    /// ([`late`]).
    late: Vec<late::Late>,
}

impl Drop for Probes {
    /// Programs detach in no particular order: the exec's return check is disarmed first, so
    /// that an exec whose judging programs are already gone is not taken for a skipped one.
    /// Pinned programs keep enforcing after this agent; the next one unpins the check first
    /// (`pin::unpin_links`).
    fn drop(&mut self) {
        if self.pinned || self.config.judges == 0 {
            return;
        }
        let config = Config {
            judges: 0,
            ..self.config
        };
        if let Err(e) = write_config(&mut self.ebpf(), config) {
            tracing::warn!("disarming the exec return check before detaching: {e}");
        }
    }
}

impl Probes {
    pub fn load(options: &ProbeOptions) -> Result<Self, EbpfError> {
        raise_memlock_limit();
        let tracefs = tracefs::ensure_tracefs()?;
        tracefs::ensure_bpffs()?;
        let btf = match offsets::load_btf() {
            Ok(btf) => Some(btf),
            Err(err) => {
                tracing::warn!(%err, "no kernel BTF: exec memfd/deleted flags, parent pids and READ_IMPLIES_EXEC are not reported");
                None
            }
        };
        let (kernel, missing_offsets) = offsets::kernel_offsets(btf.as_ref());
        if btf.is_some() && !missing_offsets.is_empty() {
            tracing::warn!(members = ?missing_offsets, "kernel structure members not found in BTF; dependent fields stay empty");
        }
        let fallbacks = fallback::Fallbacks::probe(&kernel)?;
        for line in fallbacks.describe() {
            tracing::info!("{line}");
        }
        let mut config = Config {
            filter_cgroup_id: options.cgroup.map_or(0, |c| c.id),
            filter_cgroup_level: options.cgroup.map_or(0, |c| c.level),
            agent_pid: options.exclude_pid,
            mode: match options.mode {
                Mode::Trace => agent_common::mode::TRACE,
                Mode::Enforce => agent_common::mode::ENFORCE,
            },
            generation: options.pin.as_ref().map_or(0, |pin| pin.generation),
            kernel,
            prevent: 0,
            judges: 0,
            _pad: 0,
        };
        offsets::check_syscall_layout(&tracefs)?;

        let mut loader = EbpfLoader::new();
        let emitter_pin = options.pin.as_ref().map(|plan| plan.dir.join("emitter"));
        if let Some(path) = &emitter_pin {
            // Shared with the previous generations' programs (created when none is pinned).
            loader.map_pin_path("EMITTER", path.as_path());
        }
        if let Some(bytes) = options.ring_buffer_bytes {
            loader.map_max_entries("EVENTS", bytes);
        }
        // aya-log's levels: 0 logs nothing, 5 (trace) everything.
        let log_level: u8 = if options.kernel_log { 5 } else { 0 };
        loader.override_global(aya_log::LEVEL, &log_level, true);
        fallbacks.apply(&mut loader);
        let mut ebpf = loader.load(PROBES_OBJECT)?;
        let kernel_log = if options.kernel_log {
            Some(
                aya_log::EbpfLogger::init(&mut ebpf)
                    .map_err(|e| EbpfError::KernelLog(e.to_string()))?,
            )
        } else {
            None
        };
        let root_path = match &options.cgroup_root {
            Some(root) => crate::metadata::cgroup::resolve_root(root)?,
            None => crate::metadata::cgroup::detect_root()?,
        };
        let cgroup_root = std::fs::File::open(&root_path).map_err(|source| EbpfError::Io {
            path: root_path.clone(),
            source,
        })?;
        for (program, table) in TAIL_CALLS {
            fill_tail_call(&mut ebpf, program, table)?;
        }
        let mut handover = None;
        let mut own_pins = None;
        if let Some(plan) = &options.pin {
            let mut taking_over = pin::Handover {
                generation: plan.generation,
                previous: plan.previous.clone(),
                emitter: take(&mut ebpf, "EMITTER")?,
                silenced: take(&mut ebpf, "SILENCED")?,
            };
            if plan.previous.is_empty() {
                taking_over.report_now()?;
            }
            handover = Some(taking_over);
            own_pins = Some(pin::OwnPins::create(plan)?);
        }
        let mut index = 0;
        let mut attached = 0;
        // Before any tracepoint: those leave to these programs what they refuse.
        let (prevention, mut lsm_links) = prevent::attach(&mut ebpf, own_pins.is_some());
        config.prevent = prevention.active | taken_over(&prevention, &fallbacks, &config.kernel);
        if foreign_calls_possible(config.prevent, &config.kernel) {
            take_over(
                prevent::attach_foreign_calls(&mut ebpf, own_pins.is_some()),
                (&mut config.prevent, &mut lsm_links),
                "foreign writes by system call stay on their syscall tracepoints",
            );
        }
        // Under policies, where the exec's entry is read at `bprm_check_security`: its
        // return is checked by `bprm_execve`'s fexit program, armed with the other judges
        // below, and raw `sys_exit` leaves it to that program.
        if options.mode == Mode::Enforce && config.prevent & agent_common::prevent::EXEC_ENTRY != 0
        {
            take_over(
                prevent::attach_exec_return(&mut ebpf, own_pins.is_some()),
                (&mut config.prevent, &mut lsm_links),
                "an exec's return is checked by raw sys_exit",
            );
        }
        if let Some(own) = &own_pins {
            for (program, link) in lsm_links {
                let path = own.link_path(program, index);
                link.pin(&path).map_err(|e| EbpfError::Pin {
                    program: program.into(),
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                index += 1;
            }
        }
        write_config(&mut ebpf, config)?;
        for (program, hooks) in PROGRAMS {
            if !needed(program, options.mode, config.prevent) {
                continue;
            }
            attached += 1;
            let err = |action: &'static str| {
                move |source| EbpfError::Program {
                    program: (*program).into(),
                    action,
                    source,
                }
            };
            let build = fallbacks.program(program);
            let prog = ebpf
                .program_mut(build)
                .ok_or_else(|| EbpfError::MissingProgram(build.into()))?;
            // A program on several hooks is loaded (verified) once and attached to each.
            load_program(prog, hooks[0]).map_err(err("load"))?;
            log_program_id(program, prog.info());
            for hook in *hooks {
                let taken = attach_program(prog, *hook, &cgroup_root, own_pins.is_some())
                    .map_err(|source| explain_attach(program, *hook, source))?;
                if let (Some(own), Some(taken)) = (&own_pins, taken) {
                    let path = own.link_path(program, index);
                    let pin_error = |reason: String| EbpfError::Pin {
                        program: (*program).into(),
                        path: path.clone(),
                        reason,
                    };
                    let link = taken.map_err(|e| pin_error(e.to_string()))?;
                    link.pin(&path).map_err(|e| pin_error(e.to_string()))?;
                }
                index += 1;
            }
        }
        // Verified now, attached by the first set that needs it.
        let mut late_pins = Vec::new();
        let late_ones = [
            (
                late::SYS_ENTER,
                sys_enter_late(options.mode, config.prevent),
            ),
            (late::SYS_EXIT, sys_exit_late(options.mode, config.prevent)),
        ];
        for (program, late) in late_ones {
            if options.mode != Mode::Enforce || !late {
                continue;
            }
            let build = fallbacks.program(program);
            let prog = ebpf
                .program_mut(build)
                .ok_or_else(|| EbpfError::MissingProgram(build.into()))?;
            load_program(prog, Hook::Raw(program)).map_err(|source| EbpfError::Program {
                program: program.into(),
                action: "load",
                source,
            })?;
            log_program_id(program, prog.info());
            let pin = own_pins.as_ref().map(|own| own.link_path(program, index));
            index += 1;
            late_pins.push((program, pin));
        }
        // Every exec from now on passes its judging programs before it returns.
        let k = &config.kernel;
        let unknown: Vec<&str> = [
            ("task_struct.self_exec_id", k.task_self_exec_id),
            ("task_struct.start_time", k.task_start_time),
            ("pt_regs.orig_ax", k.regs_orig_ax),
            ("thread_info.status", k.thread_status),
        ]
        .into_iter()
        .filter(|(_, offset)| *offset == agent_common::OFFSET_UNKNOWN)
        .map(|(member, _)| member)
        .collect();
        if unknown.is_empty() {
            config.judges = agent_common::judged::EXEC | agent_common::judged::IMAGE;
            write_config(&mut ebpf, config)?;
        } else {
            tracing::warn!(
                members = ?unknown,
                "execs are not checked on their return (these kernel members are unknown): an exec whose judging programs the kernel skipped goes unjudged"
            );
        }
        if let Some(own) = own_pins {
            let events = ebpf.map("EVENTS").ok_or(EbpfError::MissingMap("EVENTS"))?;
            events.pin(own.events_path()).map_err(|e| EbpfError::Pin {
                program: "EVENTS (ring buffer)".into(),
                path: own.events_path(),
                reason: e.to_string(),
            })?;
            own.commit();
        }
        let ebpf = std::sync::Arc::new(std::sync::Mutex::new(ebpf));
        let late = late_pins
            .into_iter()
            .map(|(program, pin)| {
                late::Late::new(
                    std::sync::Arc::clone(&ebpf),
                    program,
                    fallbacks.program(program),
                    pin,
                )
            })
            .collect();
        Ok(Self {
            ebpf,
            kernel_log: kernel_log.map(kernel_log::KernelLog),
            missing_offsets,
            handover,
            prevention,
            fallbacks,
            config,
            pinned: options.pin.is_some(),
            attached,
            late,
        })
    }

    /// The loaded object; the lock is only ever held for a map or program lookup.
    fn ebpf(&self) -> std::sync::MutexGuard<'_, Ebpf> {
        self.ebpf
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Raw `sys_enter` and `sys_exit` where each waits for a set that needs it; taken once,
    /// by the enforcer that writes the sets.
    pub fn take_late(&mut self) -> Vec<late::Late> {
        std::mem::take(&mut self.late)
    }

    /// With pinning, the take-over from the previous generations; taken once.
    pub fn take_handover(&mut self) -> Option<pin::Handover> {
        self.handover.take()
    }

    /// The reader of the probes' own log, when `kernel_log` was asked for; taken once.
    pub fn take_kernel_log(&mut self) -> Option<kernel_log::KernelLog> {
        self.kernel_log.take()
    }

    pub fn take_ring_buffer(&mut self) -> Result<RingBuf<MapData>, EbpfError> {
        let map = self
            .ebpf()
            .take_map("EVENTS")
            .ok_or(EbpfError::MissingMap("EVENTS"))?;
        RingBuf::try_from(map).map_err(|source| EbpfError::Map {
            map: "EVENTS",
            source,
        })
    }

    pub fn take_loss_counters(&mut self) -> Result<LossCounters, EbpfError> {
        let Some(probe_errors) = self.ebpf().take_map("PROBE_ERRORS") else {
            return Err(EbpfError::MissingMap("PROBE_ERRORS"));
        };
        let pinned = pin_probe_errors(&probe_errors);
        let take = |name: &'static str| -> Result<PerCpuArray<MapData, u64>, EbpfError> {
            let map = self
                .ebpf()
                .take_map(name)
                .ok_or(EbpfError::MissingMap(name))?;
            PerCpuArray::try_from(map).map_err(|source| EbpfError::Map { map: name, source })
        };
        Ok(LossCounters {
            map: take("LOSSES")?,
            throttled: take("THROTTLED")?,
            probe_errors: PerCpuArray::try_from(probe_errors).map_err(|source| EbpfError::Map {
                map: "PROBE_ERRORS",
                source,
            })?,
            skipped: skipped::SkippedRuns::of(&self.ebpf())?,
            pinned,
        })
    }

    /// The flood throttle's map, for the sweep of counts no record carried, with handles of
    /// its own on the `THROTTLED` and `LOSSES` counters (which the loss counters keep); taken
    /// once, before [`Self::take_loss_counters`].
    pub fn take_throttle(&mut self) -> Result<throttle::ThrottleMap, EbpfError> {
        let map = self
            .ebpf()
            .take_map("THROTTLE")
            .ok_or(EbpfError::MissingMap("THROTTLE"))?;
        let map = aya::maps::HashMap::try_from(map).map_err(|source| EbpfError::Map {
            map: "THROTTLE",
            source,
        })?;
        Ok(throttle::ThrottleMap::new(
            map,
            self.per_cpu_handle("THROTTLED")?,
            self.per_cpu_handle("LOSSES")?,
        ))
    }

    /// A handle of its own on per-CPU counters `name`, which stay in place for whoever takes
    /// them later.
    fn per_cpu_handle(&self, name: &'static str) -> Result<PerCpuArray<MapData, u64>, EbpfError> {
        let ebpf = self.ebpf();
        let Some(aya::maps::Map::PerCpuArray(counters)) = ebpf.map(name) else {
            return Err(EbpfError::MissingMap(name));
        };
        let err = |source| EbpfError::Map { map: name, source };
        let fd = std::os::fd::AsFd::as_fd(counters.fd())
            .try_clone_to_owned()
            .map_err(|source| EbpfError::MapHandle { map: name, source })?;
        let counters = aya::maps::MapData::from_fd(fd).map_err(err)?;
        PerCpuArray::try_from(aya::maps::Map::PerCpuArray(counters)).map_err(err)
    }

    /// The maps policies compile into; taken once.
    pub fn take_policy_maps(&mut self) -> Result<PolicyMaps, EbpfError> {
        let ebpf = &mut *self.ebpf();
        Ok(PolicyMaps {
            cgroup_sets: take(ebpf, "CGROUP_SETS")?,
            policy_sets: take(ebpf, "POLICY_SETS")?,
            exec_paths: take(ebpf, "EXEC_PATHS")?,
            connect_allow: take(ebpf, "CONNECT_ALLOW")?,
            connect_deny: take(ebpf, "CONNECT_DENY")?,
            services: take(ebpf, "SERVICES")?,
            task_exe: take(ebpf, "TASK_EXE")?,
            task_origin: take(ebpf, "TASK_ORIGIN")?,
            compat_watch: take(ebpf, "COMPAT_WATCH")?,
            foreign_watch: take(ebpf, "FOREIGN_WATCH")?,
            cgroup_changes: take(ebpf, "CGROUP_CHANGES")?,
            vouched: take(ebpf, "VOUCHED")?,
            pending_kills: take(ebpf, "PENDING_KILLS")?,
        })
    }

    /// The loaded object, for `vigil doctor`'s load-only checks.
    pub fn object() -> &'static [u8] {
        PROBES_OBJECT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What each mode attaches where BPF LSM prevents execs and where it does not: the
    /// programs left out are exactly those whose work the other hooks make unneeded.
    #[test]
    fn each_mode_attaches_every_program_but_those_it_has_no_use_for() {
        let names = |mode, prevent| -> Vec<&str> {
            let mut names: Vec<&str> = attachments_with(mode, prevent).map(|(p, _)| p).collect();
            names.dedup();
            names
        };
        let every: Vec<&str> = PROGRAMS.iter().map(|(p, _)| *p).collect();
        let all = agent_common::prevent::EXEC | agent_common::prevent::WX;
        let without = |left_out: &[&str]| -> Vec<&str> {
            every
                .iter()
                .copied()
                .filter(|p| !left_out.contains(p))
                .collect()
        };
        assert_eq!(names(Mode::Enforce, all), every);
        assert_eq!(names(Mode::Enforce, agent_common::prevent::WX), every);
        assert_eq!(names(Mode::Trace, all), without(&ENFORCE_ONLY));
        assert_eq!(names(Mode::Trace, 0), without(&ENFORCE_ONLY));
        // Where the LSM programs report W^X, no W^X syscall tracepoint is left: what stays
        // on a `syscalls/*` hook is scripts and foreign writes.
        let lsm_reports =
            all | agent_common::prevent::WX_REPORTS | agent_common::prevent::FOREIGN_OPEN;
        let syscall_tracepoints = |mode| -> Vec<&str> {
            let mut names: Vec<&str> = attachments_with(mode, lsm_reports)
                .filter(|(_, hook)| matches!(hook, Hook::Tracepoint("syscalls", _)))
                .map(|(p, _)| p)
                .collect();
            names.dedup();
            names
        };
        assert_eq!(
            syscall_tracepoints(Mode::Enforce),
            [
                "sys_enter_ptrace",
                "sys_enter_userfaultfd",
                "sys_enter_process_vm_writev",
                "sys_enter_open_script",
                "sys_enter_openat_script",
                "sys_exit_open_script",
            ]
        );
        let mut left_out = WX_TRACEPOINT_ONLY.to_vec();
        left_out.push("sys_exit_open_mem");
        assert_eq!(names(Mode::Enforce, lsm_reports), without(&left_out));
        // Where `bprm_check_security` decides every level, no open waits for a script.
        let levels = lsm_reports | agent_common::prevent::SCRIPT_LEVELS;
        left_out.extend(SCRIPT_OPEN_ONLY);
        assert_eq!(names(Mode::Enforce, levels), without(&left_out));
        assert!(
            attachments_with(Mode::Enforce, levels)
                .filter(|(_, hook)| matches!(hook, Hook::Tracepoint("syscalls", _)))
                .all(|(p, _)| p.starts_with("sys_enter_ptrace")
                    || p.starts_with("sys_enter_userfaultfd")
                    || p.starts_with("sys_enter_process_vm_writev"))
        );
        // And where the LSM judges foreign writes by system call, no `syscalls/*` hook is
        // left at all: the raw pair is what stays.
        let all_lsm = levels | agent_common::prevent::FOREIGN_CALLS;
        assert_eq!(
            attachments_with(Mode::Enforce, all_lsm)
                .filter(|(_, hook)| matches!(hook, Hook::Tracepoint("syscalls", _)))
                .count(),
            0
        );
        left_out.extend(FOREIGN_CALL_ONLY);
        assert_eq!(names(Mode::Enforce, all_lsm), without(&left_out));
        // `vigil trace` has no sets to deny 32-bit calls: raw `sys_enter` would only see what
        // the LSM programs see. `vigil run` keeps it for the traced exec's entry and the
        // refused exec's arguments, until the exec program reads them itself; then it waits
        // for a set that denies 32-bit calls.
        assert!(names(Mode::Enforce, all_lsm).contains(&late::SYS_ENTER));
        assert!(!names(Mode::Trace, all_lsm).contains(&late::SYS_ENTER));
        let entry = all_lsm | agent_common::prevent::EXEC_ENTRY;
        left_out.push(late::SYS_ENTER);
        assert_eq!(names(Mode::Enforce, entry), without(&left_out));
        // Without the foreign-write programs (they did not attach), the 32-bit entry's
        // `ptrace`, `process_vm_writev` and `userfaultfd` are raw `sys_enter`'s again.
        let no_foreign = entry & !agent_common::prevent::FOREIGN_CALLS;
        assert!(names(Mode::Enforce, no_foreign).contains(&late::SYS_ENTER));
        assert!(names(Mode::Trace, no_foreign).contains(&late::SYS_ENTER));
        // Where `bprm_execve`'s fexit program checks the exec's return and `file_open` sees
        // the 32-bit opens, raw `sys_exit` waits for a set that kills: no raw tracepoint on
        // the system calls is attached from the start.
        let exit = entry | agent_common::prevent::EXEC_RETURN;
        assert!(sys_exit_late(Mode::Enforce, exit));
        left_out.push(late::SYS_EXIT);
        assert_eq!(names(Mode::Enforce, exit), without(&left_out));
        assert!(
            attachments_with(Mode::Enforce, exit).all(|(_, hook)| !matches!(
                hook,
                Hook::Raw("sys_enter" | "sys_exit")
            ) && !matches!(
                hook,
                Hook::Tracepoint("syscalls", _)
            ))
        );
        // Without `file_open` the i386 opens' returns are raw `sys_exit`'s again, and without
        // the fexit program the exec's return.
        let no_open = exit & !agent_common::prevent::FOREIGN_OPEN;
        assert!(!sys_exit_late(Mode::Enforce, no_open));
        assert!(names(Mode::Enforce, no_open).contains(&late::SYS_EXIT));
        assert!(names(Mode::Enforce, entry).contains(&late::SYS_EXIT));
        // `vigil trace` kills and judges nothing: it never had raw `sys_exit`.
        assert!(!names(Mode::Trace, exit).contains(&late::SYS_EXIT));
    }

    /// The exec program takes the exec's entry over only where it runs and reads registers,
    /// and the traced task's member is known.
    #[test]
    fn the_exec_program_takes_the_entry_over_only_where_it_reads_registers() {
        let k = agent_common::KernelOffsets::find(|_, _| 8);
        let exec = prevent::Prevention {
            active: agent_common::prevent::EXEC,
            ..Default::default()
        };
        let wx = agent_common::prevent::WX_REPORTS;
        assert_eq!(exec_entry(&exec, wx, &k), agent_common::prevent::EXEC_ENTRY);
        assert_eq!(exec_entry(&exec, 0, &k), 0);
        assert_eq!(exec_entry(&prevent::Prevention::default(), wx, &k), 0);
        let unknown = agent_common::KernelOffsets {
            task_ptrace: agent_common::OFFSET_UNKNOWN,
            ..k
        };
        assert_eq!(exec_entry(&exec, wx, &unknown), 0);
    }

    /// The LSM programs take W^X over only where they are attached, the helper is there and
    /// every register they read is known.
    #[test]
    fn the_lsm_reports_w_x_only_where_it_can_tell_the_call() {
        let k = agent_common::KernelOffsets::find(|_, _| 8);
        let active = prevent::Prevention {
            active: agent_common::prevent::EXEC | agent_common::prevent::WX,
            ..Default::default()
        };
        let fallbacks = fallback::Fallbacks::default();
        assert_eq!(
            wx_reports(&active, &fallbacks, &k),
            agent_common::prevent::WX_REPORTS
        );
        assert_eq!(
            wx_reports(&prevent::Prevention::default(), &fallbacks, &k),
            0
        );
        let old = fallback::Fallbacks {
            wx_on_tracepoints: true,
            ..Default::default()
        };
        assert_eq!(wx_reports(&active, &old, &k), 0);
        let mut no_r8 = k;
        no_r8.regs_r8 = agent_common::OFFSET_UNKNOWN;
        assert_eq!(wx_reports(&active, &fallbacks, &no_r8), 0);
        assert_eq!(
            script_levels(&active, &k),
            agent_common::prevent::SCRIPT_LEVELS
        );
        assert_eq!(script_levels(&prevent::Prevention::default(), &k), 0);
        let mut no_buf = k;
        no_buf.bprm_buf = agent_common::OFFSET_UNKNOWN;
        assert_eq!(script_levels(&active, &no_buf), 0);
    }
}
