use agent_common::{
    AddrKeyData, Config, ConnectEvent, ExePath, ExecArgs, MAX_POLICY_SETS, PathKeyData, PathRule,
    PendingScript, PolicySet, PortRules, ServiceKey, ThrottleKey, ThrottleState, VouchKey, WxEvent,
    kind,
};
use aya_ebpf::{
    macros::map,
    maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf, lpm_trie::Key,
    },
};

use crate::state::PathScratch;

/// Every record for user space. User space may resize it at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Records that did not fit into `EVENTS`, per record kind.
#[map]
pub static LOSSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(kind::SLOTS, 0);

/// Probe failures per probe and reason (see `agent_common::probe_error`).
#[map]
pub static PROBE_ERRORS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(agent_common::probe_error::SLOTS, 0);

/// Slot 0: the generation whose programs report (see `Config::generation`). Shared, by its
/// pin, between the programs of consecutive agents.
#[map]
pub static EMITTER: Array<u32> = Array::with_max_entries(1, 0);

/// Violations this generation enforced but left to the reporting generation, per kind.
#[map]
pub static SILENCED: PerCpuArray<u64> = PerCpuArray::with_max_entries(kind::SLOTS, 0);

/// Slot 0: the run-time [`Config`] written by user space before attaching.
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Arguments captured at an exec's entry (`raw_syscalls/sys_enter`), by thread id, until
/// `sched_process_exec`.
/// LRU, so arguments of execs that failed age out by themselves.
#[map]
pub static EXEC_ARGS: LruHashMap<u32, ExecArgs> = LruHashMap::with_max_entries(2048, 0);

/// Per-thread scratch maps (`scratch.rs`): room for the runs that hold an entry at once,
/// node-wide (a run on each CPU and those preempted on it).
const SCRATCH_RUNS: u32 = 1024;

/// Per-thread scratch space for building an [`ExecArgs`], too large for the stack.
#[map]
pub static EXEC_SCRATCH: HashMap<u32, ExecArgs> = HashMap::with_max_entries(SCRATCH_RUNS, 0);

/// Per-thread scratch space for a connect record: the socket hooks' call chain (policy set,
/// hand-over, throttle) leaves no room on the 512-byte stack for it (6.1's verifier counts the
/// frames of a chain together).
#[map]
pub static CONNECT_SCRATCH: HashMap<u32, ConnectEvent> = HashMap::with_max_entries(SCRATCH_RUNS, 0);

/// Per-thread scratch space for paths and LPM keys.
#[map]
pub static PATH_SCRATCH: HashMap<u32, PathScratch> = HashMap::with_max_entries(SCRATCH_RUNS, 0);

/// Per-thread scratch space for one LPM key, for a lookup made inside a run that may hold
/// `PATH_SCRATCH` already (the W^X exemption).
#[map]
pub static KEY_SCRATCH: HashMap<u32, Key<PathKeyData>> = HashMap::with_max_entries(SCRATCH_RUNS, 0);

const fn larger(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

/// The size of the largest per-thread scratch value.
pub const ZERO_LEN: usize = larger(
    larger(size_of::<PathScratch>(), size_of::<ExecArgs>()),
    larger(
        size_of::<ConnectEvent>(),
        larger(
            size_of::<PendingWx>(),
            larger(size_of::<FileRequest>(), size_of::<Key<PathKeyData>>()),
        ),
    ),
);

/// Slot 0: zeroes, never written; a new per-thread scratch entry is copied from it.
#[map]
pub static ZEROES: Array<[u8; ZERO_LEN]> = Array::with_max_entries(1, 0);

/// cgroup id -> policy set (0: no policy). The deepest bound ancestor of a task's cgroup
/// decides, so a binding covers the cgroups created below it later.
#[map]
pub static CGROUP_SETS: HashMap<u64, u32> = HashMap::with_max_entries(16_384, 0);

/// Policy set id -> what the set decides.
#[map]
pub static POLICY_SETS: Array<PolicySet> = Array::with_max_entries(MAX_POLICY_SETS, 0);

/// (set, path) -> exec verdict and W^X exemption; exact paths and directory prefixes.
#[map]
pub static EXEC_PATHS: LpmTrie<PathKeyData, PathRule> = LpmTrie::with_max_entries(16_384, 0);

/// (set, CIDR) -> allowed port ranges.
#[map]
pub static CONNECT_ALLOW: LpmTrie<AddrKeyData, PortRules> = LpmTrie::with_max_entries(4096, 0);

/// (set, CIDR) -> denied port ranges.
#[map]
pub static CONNECT_DENY: LpmTrie<AddrKeyData, PortRules> = LpmTrie::with_max_entries(4096, 0);

/// Node-wide Service and endpoint addresses, for `allowServices`.
#[map]
pub static SERVICES: HashMap<ServiceKey, u32> = HashMap::with_max_entries(65_536, 0);

/// Process (thread group) id -> real path of its executable, recorded at exec, copied on
/// fork, removed on exit; W^X exemptions are looked up by it.
#[map]
pub static TASK_EXE: LruHashMap<u32, ExePath> = LruHashMap::with_max_entries(16_384, 0);

/// Which image of which process an exec's programs have judged: the task's `self_exec_id`
/// (the kernel adds one at every exec) and `start_time` (so a reused process id never matches),
/// with a bit per program that ran ([`crate::judged`]).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecMark {
    pub image: u64,
    pub started: u64,
    pub by: u32,
    pub _pad: u32,
}

/// Process (thread group) id -> the mark of its last exec, from `sched_process_exec` until the
/// exec returns to user space, where a missing part is failed closed (removed there, and at
/// exit). LRU, each CPU evicting from its own list (`BPF_F_NO_COMMON_LRU`), so a mark in
/// flight is the last its CPU gives up: entries outlive their exec only in trace mode, which
/// checks no return, and where the return was not seen. An evicted mark makes an exec
/// unjudged, which fails closed, never open.
#[map]
pub static EXEC_JUDGED: LruHashMap<u32, ExecMark> =
    LruHashMap::with_max_entries(16_384, aya_ebpf::bindings::BPF_F_NO_COMMON_LRU);

/// Process (thread group) id -> the `self_exec_id` its traced thread had when it entered an
/// exec (`image` only): a tracer may rewrite the registers that tell the exec's return, the
/// image it cannot (`judged.rs`). LRU: an evicted entry leaves that exec to the registers.
#[map]
pub static TRACED_EXECS: LruHashMap<u32, ExecMark> = LruHashMap::with_max_entries(4096, 0);

/// Slot 0: non-zero once a traced task entered an exec; until then a syscall exit does not
/// look `TRACED_EXECS` up.
#[map]
pub static TRACED_EXEC_SEEN: Array<u64> = Array::with_max_entries(1, 0);

/// Processes (thread group ids) whose act a hook refused under `Kill` but that the hook
/// could not signal (cgroup socket programs): killed when the call returns to them. Also
/// the processes held for a decision on their executable's content
/// (`agent_common::pending_kill`).
#[map]
pub static PENDING_KILLS: HashMap<u32, u32> = HashMap::with_max_entries(4096, 0);

/// Files whose content user space hashed and found among a set's `sha256:` entries, by set
/// and the file's identity (device, inode, change time): an exec of one is not drift. Only
/// user space writes it; a change to the file moves its change time, so a changed file is
/// never found here.
#[map]
pub static VOUCHED: LruHashMap<VouchKey, u32> = LruHashMap::with_max_entries(8192, 0);

/// Slot 0: non-zero once any kill was recorded in `PENDING_KILLS`; until then a syscall exit
/// costs one array read.
#[map]
pub static KILLS_RECORDED: Array<u64> = Array::with_max_entries(1, 0);

/// Process (thread group) id -> the cgroup holding the policy binding it was first under
/// (pinned at fork, exec or its first decision). Decisions use that binding's set wherever
/// the process is moved, so moving out of a policed cgroup escapes nothing.
#[map]
pub static TASK_ORIGIN: LruHashMap<u32, u64> = LruHashMap::with_max_entries(32_768, 0);

/// Process (thread group) id -> the mount namespace (its address) it was in when a process
/// outside every policy (the container runtime) put it into a policed cgroup: until it leaves
/// that namespace, it is the runtime's own work (`runc init`), not the container's. See
/// `handover.rs`. LRU: an evicted entry only makes the process judged by the pod's policy.
#[map]
pub static HANDOVER: LruHashMap<u32, u64> = LruHashMap::with_max_entries(8192, 0);

/// Per (cgroup, rule, behaviour): how many identical violations went out and were held back
/// in the current window.
#[map]
pub static THROTTLE: LruHashMap<ThrottleKey, ThrottleState> =
    LruHashMap::with_max_entries(16_384, 0);

/// Violations held back by the flood throttle, per record kind (reported, never silent).
#[map]
pub static THROTTLED: PerCpuArray<u64> = PerCpuArray::with_max_entries(kind::SLOTS, 0);

/// A W^X request decided at its syscall's entry, waiting for the syscall's result.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingWx {
    pub judged_hit: u16,
    pub judged_action: u16,
    pub judged_rule: u32,
    pub _pad: u64,
    pub event: WxEvent,
}

/// Thread id -> its W^X request in flight, removed when the call returns or the thread
/// exits. Not LRU: an evicted request would go undecided; when full, the request is decided
/// at entry instead.
#[map]
pub static WX_PENDING: HashMap<u32, PendingWx> = HashMap::with_max_entries(16_384, 0);

/// Where a W^X record is put together to be reported, per thread: it does not fit on the BPF
/// stack beside the calls that report it on kernels before 6.13 (512 bytes for a program and
/// the functions it calls, together).
#[map]
pub static WX_SCRATCH: HashMap<u32, PendingWx> = HashMap::with_max_entries(SCRATCH_RUNS, 0);

/// Process (thread group) id -> the script it was exec'd to run, until its interpreter opens
/// it (then decided on the opened file) or the process exits. It survives execs of plain
/// binaries (`#!/usr/bin/env python3` runs env, which runs python3, which opens the script).
/// Not LRU: an evicted entry would leave a script undecided; when full, the exec fails
/// closed instead.
#[map]
pub static SCRIPT_PENDING: HashMap<u32, PendingScript> = HashMap::with_max_entries(8192, 0);

/// A file mapped (or made) executable, handed from the `mmap`/`mprotect` hooks to the
/// program that judges it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FileRequest {
    pub file: u64,
    pub syscall: u32,
    pub fd: i32,
    pub prot: u64,
    pub flags: u64,
    pub addr: u64,
    pub len: u64,
}

/// Per thread: the request being handed over (a tail call keeps the thread).
#[map]
pub static FILE_REQUEST: HashMap<u32, FileRequest> = HashMap::with_max_entries(SCRATCH_RUNS, 0);

/// Slot 0: `judge_mapped_file`, filled by user space before any hook is attached.
#[map]
pub static JUDGE_FILE: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Slot 0: `judge_mapped_file_raw`, the same judge for raw `sys_enter` (the 32-bit entry):
/// a tail call stays within one program type.
#[map]
pub static JUDGE_FILE_RAW: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Slot 0: non-zero once any policy set denies 32-bit system calls; until then the
/// `raw_syscalls/sys_enter` program does not look at the task's status for other calls.
#[map]
pub static COMPAT_WATCH: Array<u64> = Array::with_max_entries(1, 0);

/// Slot 0: non-zero once any policy set denies foreign writes; until then an enforcing
/// agent's `open` exits do not look at the file opened (no set would judge it).
#[map]
pub static FOREIGN_WATCH: Array<u64> = Array::with_max_entries(1, 0);

/// Slot 0: how many cgroups were made or removed (`cgroup_change.rs`).
#[map]
pub static CGROUP_CHANGES: Array<u64> = Array::with_max_entries(1, 0);
