//! Records shared by the eBPF programs and user space.
//!
//! Every type here is `#[repr(C)]` with explicit padding fields, so its layout is the same on
//! both sides of the ring buffer; the sizes are asserted at compile time below and in the
//! agent's tests.
#![no_std]

pub const COMM_LEN: usize = 16;
/// Bytes kept of the executed path (the kernel's copy from `sched_process_exec`).
pub const PATH_LEN: usize = 256;
/// Bytes kept of the executable's dentry name (e.g. `memfd:payload`).
pub const NAME_LEN: usize = 64;
/// Bytes read of one argument at most.
pub const ARG_READ_LEN: usize = 256;
/// Arguments start at an offset below this bound (a power of two, so the eBPF code can mask
/// the offset for the verifier); the buffer is large enough for one more full argument.
pub const ARGS_OFFSET_LIMIT: usize = 512;
pub const ARGS_LEN: usize = ARGS_OFFSET_LIMIT + ARG_READ_LEN;
/// Arguments read at most.
pub const MAX_ARGS: usize = 32;

/// Record kinds; also the index into the loss counter map.
pub mod kind {
    pub const EXEC: u32 = 1;
    pub const CONNECT: u32 = 2;
    pub const WX: u32 = 3;
    /// Number of slots in the loss counter map (index 0 is unused).
    pub const SLOTS: u32 = 4;
}

/// Flags of an exec record.
pub mod exec_flags {
    /// The executable is a memfd (its dentry is named `memfd:...`).
    pub const MEMFD: u32 = 1 << 0;
    /// The executable has no links left on its file system (deleted after open).
    pub const DELETED: u32 = 1 << 1;
    /// Not every argument fitted into the buffer.
    pub const ARGS_TRUNCATED: u32 = 1 << 2;
    /// The arguments from `sys_enter_execve(at)` were not found (e.g. evicted).
    pub const ARGS_MISSING: u32 = 1 << 3;
    /// The executable's dentry could not be read (kernel offsets unknown).
    pub const EXE_UNKNOWN: u32 = 1 << 4;
}

/// Where a connect record was observed.
pub mod connect_hook {
    /// `sock/inet_sock_set_state` to `TCP_SYN_SENT`: the kernel's own addresses.
    pub const TCP_STATE: u32 = 1;
    /// `syscalls/sys_enter_connect` on a datagram socket.
    pub const SYSCALL: u32 = 2;
}

/// The syscall a W^X record came from.
pub mod wx_syscall {
    pub const MMAP: u32 = 1;
    pub const MPROTECT: u32 = 2;
    pub const PKEY_MPROTECT: u32 = 3;
    pub const PERSONALITY: u32 = 4;
}

/// Why a W^X record was emitted.
pub mod wx_reason {
    /// The requested protection is writable and executable.
    pub const WRITE_EXEC: u32 = 1 << 0;
    /// The process runs with `READ_IMPLIES_EXEC`, so a readable and writable mapping is
    /// executable too.
    pub const READ_IMPLIES_EXEC: u32 = 1 << 1;
}

pub const READ_IMPLIES_EXEC: u32 = 0x0040_0000;

/// Marks a kernel structure offset that is not known on this kernel.
pub const OFFSET_UNKNOWN: u32 = u32::MAX;

/// Common start of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    pub kind: u32,
    pub _pad0: u32,
    /// `bpf_ktime_get_boot_ns()` at the event.
    pub boot_ns: u64,
    pub cgroup_id: u64,
    /// Thread group id (the process id users know).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Thread group id of the real parent.
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub _pad1: u32,
    pub comm: [u8; COMM_LEN],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    pub header: EventHeader,
    pub flags: u32,
    /// Thread id that called execve (differs from `pid` when a non-leader thread exec'd).
    pub old_tid: u32,
    pub argc: u32,
    /// Bytes used in `args`: NUL-separated arguments.
    pub args_len: u32,
    pub path: [u8; PATH_LEN],
    pub exe_name: [u8; NAME_LEN],
    pub args: [u8; ARGS_LEN],
}

/// Arguments captured at `sys_enter_execve(at)`, keyed by thread id until the exec happens.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecArgs {
    pub argc: u32,
    pub len: u32,
    pub truncated: u32,
    pub _pad: u32,
    pub buf: [u8; ARGS_LEN],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectEvent {
    pub header: EventHeader,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// IP protocol number (6 TCP, 17 UDP, ...).
    pub protocol: u16,
    /// Ports in host byte order.
    pub sport: u16,
    pub dport: u16,
    /// Addresses in network byte order; IPv4 uses the first four bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// One of [`connect_hook`].
    pub hook: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WxEvent {
    pub header: EventHeader,
    /// One of [`wx_syscall`].
    pub syscall: u32,
    pub prot: u32,
    /// `mmap` flags (0 for the others).
    pub flags: u32,
    /// Bits of [`wx_reason`].
    pub reason: u32,
    pub addr: u64,
    pub len: u64,
    /// `mmap` file descriptor (-1 for anonymous mappings and the other syscalls).
    pub fd: i32,
    /// `pkey_mprotect` key, `personality` persona, else 0.
    pub extra: u32,
}

/// Offsets into kernel structures, read by user space from `/sys/kernel/btf/vmlinux`
/// (Rust eBPF has no CO-RE relocations). [`OFFSET_UNKNOWN`] marks a field this kernel lacks:
/// the probe then leaves the dependent field empty and says so in its flags.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_real_parent: u32,
    pub task_tgid: u32,
    pub task_mm: u32,
    pub task_personality: u32,
    pub task_files: u32,
    pub mm_exe_file: u32,
    pub file_dentry: u32,
    pub file_inode: u32,
    pub file_private_data: u32,
    pub dentry_name: u32,
    pub inode_nlink: u32,
    pub inode_mode: u32,
    pub files_fdt: u32,
    pub fdtable_max_fds: u32,
    pub fdtable_fd: u32,
    pub socket_type: u32,
    pub socket_sk: u32,
    pub sock_protocol: u32,
}

/// Field offsets of the tracepoints whose layout differs between kernels, read from
/// `/sys/kernel/tracing/events/*/*/format`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TracepointOffsets {
    pub exec_filename: u32,
    pub exec_old_pid: u32,
    pub sock_newstate: u32,
    pub sock_sport: u32,
    pub sock_dport: u32,
    pub sock_family: u32,
    pub sock_protocol: u32,
    pub sock_saddr: u32,
    pub sock_daddr: u32,
    pub sock_saddr_v6: u32,
    pub sock_daddr_v6: u32,
    pub _pad: u32,
}

/// Run-time configuration, slot 0 of the `CONFIG` array map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Only events from this cgroup v2 id or its descendants are emitted (0 = all).
    pub filter_cgroup_id: u64,
    /// Depth of `filter_cgroup_id` below the cgroup v2 root (root = 0).
    pub filter_cgroup_level: u32,
    /// The agent's own process id: its events are never emitted (no feedback loops).
    pub agent_pid: u32,
    pub kernel: KernelOffsets,
    pub tracepoints: TracepointOffsets,
}

/// Offsets of the arguments in every `syscalls/sys_enter_*` record: 8 bytes of common
/// fields, the syscall number (padded to 8), then one 8-byte slot per argument. This layout
/// has not changed since syscall tracepoints exist; the agent checks it at load time.
pub const SYSCALL_ARG0_OFFSET: usize = 16;

const _: () = assert!(core::mem::size_of::<EventHeader>() == 64);
const _: () =
    assert!(core::mem::size_of::<ExecEvent>() == 64 + 16 + PATH_LEN + NAME_LEN + ARGS_LEN);
const _: () = assert!(core::mem::size_of::<ExecArgs>() == 16 + ARGS_LEN);
const _: () = assert!(core::mem::size_of::<ConnectEvent>() == 64 + 8 + 32 + 8);
const _: () = assert!(core::mem::size_of::<WxEvent>() == 64 + 16 + 16 + 8);
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 18 * 4);
const _: () = assert!(core::mem::size_of::<TracepointOffsets>() == 12 * 4);
const _: () = assert!(core::mem::size_of::<Config>() == 16 + 72 + 48);

#[cfg(feature = "user")]
mod pod {
    use super::{Config, ConnectEvent, EventHeader, ExecEvent, WxEvent};

    // SAFETY: all are #[repr(C)] of integers and byte arrays, with explicit padding fields,
    // so every bit pattern is valid and no byte is uninitialised.
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for EventHeader {}
    unsafe impl aya::Pod for ExecEvent {}
    unsafe impl aya::Pod for ConnectEvent {}
    unsafe impl aya::Pod for WxEvent {}
}
