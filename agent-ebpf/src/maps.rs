use agent_common::{Config, ExecArgs, kind};
use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
};

/// Every record for user space. User space may resize it at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Records that did not fit into `EVENTS`, per record kind.
#[map]
pub static LOSSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(kind::SLOTS, 0);

/// Slot 0: the run-time [`Config`] written by user space before attaching.
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Arguments captured at `sys_enter_execve(at)`, by thread id, until `sched_process_exec`.
/// LRU, so arguments of execs that failed age out by themselves.
#[map]
pub static EXEC_ARGS: LruHashMap<u32, ExecArgs> = LruHashMap::with_max_entries(2048, 0);

/// Per-CPU scratch space for building an [`ExecArgs`], too large for the stack.
#[map]
pub static EXEC_SCRATCH: PerCpuArray<ExecArgs> = PerCpuArray::with_max_entries(1, 0);
