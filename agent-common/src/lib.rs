//! Records shared by the eBPF programs and user space.
//!
//! Every type here is `#[repr(C)]` with explicit padding fields, so its layout is the same on
//! both sides of the ring buffer; the sizes are asserted at compile time below and in the
//! agent's tests.
#![no_std]

/// Declares a module of one-bit `u32` flags numbered in the order written, from bit 0, so
/// that no two flags of a record can share a bit by a slip of the pen.
macro_rules! bit_flags {
    (
        $(#[$($module_attr:tt)*])*
        pub mod $module:ident { $($flags:tt)+ }
    ) => {
        $(#[$($module_attr)*])*
        pub mod $module {
            bit_flags!(@from 0; $($flags)+);
        }
    };
    (@from $bit:expr; $(#[$($attr:tt)*])* $flag:ident, $($rest:tt)*) => {
        $(#[$($attr)*])*
        pub const $flag: u32 = 1 << ($bit);
        bit_flags!(@from $bit + 1; $($rest)*);
    };
    (@from $bit:expr;) => {};
}

pub mod decide;

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
/// `argc` of a record whose arguments are the new image's own, copied whole: every
/// NUL-terminated string in `args[..args_len]` is one (the last one cut short when
/// `ARGS_TRUNCATED`).
pub const ARGC_ALL: u32 = u32::MAX;

/// Identical violations emitted per cgroup, behaviour and rule in one [`THROTTLE_WINDOW_NS`]
/// before the kernel holds the rest back (counted, and carried by the next record).
pub const THROTTLE_BURST: u32 = 8;
pub const THROTTLE_WINDOW_NS: u64 = 1_000_000_000;

/// Bits of [`EventHeader::throttle`].
pub mod throttle_flags {
    /// The last record of its violation the flood throttle lets out in this window: identical
    /// ones after it are held back, and user space keeps this one to carry their count should
    /// no later record do so. The records before it are never needed for that.
    pub const ENDS_BURST: u32 = 1;
}

/// Record kinds; also the index into the loss counter map.
pub mod kind {
    pub const EXEC: u32 = 1;
    pub const CONNECT: u32 = 2;
    pub const WX: u32 = 3;
    /// A process under a policy moved to another cgroup.
    pub const MOVE: u32 = 4;
    /// Number of slots in the loss counter map (index 0 is unused).
    pub const SLOTS: u32 = 5;
}

bit_flags! {
    /// Flags of an exec record.
    pub mod exec_flags {
        /// The executable, its interpreter or a script run from a descriptor lives on a
        /// kernel-internal mount (`SB_KERNMOUNT`): a memfd or another anonymous file, never a
        /// file anyone can reach by a path.
        MEMFD,
        /// The executable has no links left on its file system (deleted after open).
        DELETED,
        /// Not every argument fitted into the buffer.
        ARGS_TRUNCATED,
        /// The arguments could not be read: the new image's (`mm_struct.arg_start..arg_end`)
        /// at `sched_process_exec`, or, for an exec refused before it ran, those captured at
        /// the exec's entry (not found, e.g. evicted).
        ARGS_MISSING,
        /// The executable's dentry could not be read (kernel offsets unknown).
        EXE_UNKNOWN,
        /// The executed file is a script: `path` is the script, `exe_path` its interpreter.
        SCRIPT,
        /// The executable's real path did not fit (or was deeper than the walk goes).
        EXE_PATH_TRUNCATED,
        /// A policy applies but the kernel could not decide (path too long for its maps):
        /// user space decides, and may only alert.
        UNDECIDED,
        /// The executable's real path could not be resolved (deeper or longer than the kernel's
        /// walk goes): the kernel decided without it, failing closed.
        UNVERIFIABLE,
        /// Not an exec: a file mapped executable (`mmap` with `PROT_EXEC`) by a running process
        /// (the dynamic loader, `dlopen`, `LD_PRELOAD`); `path` is the file's real path.
        MAPPED,
        /// Not an exec: the script of an earlier exec, as its interpreter opened it; `path` is
        /// the opened file's real path, `exe_path` the interpreter's.
        OPENED,
        /// The real path crosses a mount an unprivileged user made in a user namespace of its
        /// own (a bind mount, a detached mount, a new root): the path is that user's choice, so
        /// it is unverifiable.
        USER_MOUNT,
        /// Not run: refused before it started (BPF LSM, `bprm_check_security`), the exec
        /// failed with `EPERM` in the process that asked for it. `path` is the refused file's
        /// real path (for a script, the level refused: the script or an interpreter; the name
        /// asked for when the real path cannot be resolved), `exe_path` the caller's own
        /// executable.
        PREVENTED,
        /// Run without its exec's own judgement: the kernel skipped both programs on
        /// `sched_process_exec` (each run is skipped while another run of the same program
        /// is preempted on that CPU), and the check on the way back to user space failed it
        /// closed (`UNVERIFIABLE` too). `path` and `exe_path` are the new image's executable.
        UNJUDGED,
        /// A level of an exec that the kernel hands on to an interpreter (a script, or a file
        /// `binfmt_misc` runs), judged before it ran (BPF LSM, `bprm_check_security`, where
        /// it decides every level: [`prevent::SCRIPT_LEVELS`]); `path` is that file's real
        /// path, `exe_path` the caller's executable. Without `PREVENTED` the exec went on.
        LEVEL,
        /// Drift: the file the record decides (the executable, or `path` for a `MAPPED`,
        /// `OPENED` or `LEVEL` record) did not come with the container's image. One of the
        /// three below says why; [`ExecEvent::origin`] says where the file lives.
        DRIFT,
        /// In an overlay's upper (writable) layer: created, or copied up by a change, after
        /// the container started.
        UPPER_LAYER,
        /// On a writable mount that is not an overlay (an emptyDir, a tmpfs, a hostPath), on a
        /// read-only one an unprivileged user made in a user namespace of its own, or on a file
        /// system (an overlay, a tmpfs) such a user mounted.
        WRITABLE_MOUNT,
        /// Where the file lives could not be read: decided as drift (fail closed).
        ORIGIN_UNKNOWN,
        /// The executable is outside the image, but its set vouches for files by content
        /// (`exec.allow` `sha256:` entries) and this file's identity was not in the cache of
        /// vouched files ([`VouchKey`]): user space decides it on its content; `DRIFT` is
        /// then not set.
        DIGEST_PENDING,
        /// With `DIGEST_PENDING`, under an action that refuses: the kernel stopped the
        /// process (`SIGSTOP`) before its first instruction, and kills it at its first system
        /// call unless user space releases it ([`pending_kill::HELD`]).
        HELD,
        /// The executable is outside the image and its identity was in the cache of files
        /// whose content a `sha256:` entry of the set vouched for: not drift.
        VOUCHED,
    }
}

/// Values of the pending kills map (by process id): what a process's next system call
/// exit does.
pub mod pending_kill {
    /// Kill it.
    pub const KILL: u32 = 1;
    /// Held by `sched_process_exec` for a decision on its content: the exec's own return
    /// turns it into [`HELD`].
    pub const HELD_AT_EXEC: u32 = 2;
    /// Held and past its exec: any system call it makes before user space releases it
    /// (someone else sent it `SIGCONT`) kills it.
    pub const HELD: u32 = 3;
}

/// Whether a record reports a violation.
pub mod verdict {
    pub const OBSERVED: u16 = 0;
    pub const VIOLATION: u16 = 1;
    /// An act allowed under a set that learns ([`super::set_flags::LEARN`]), reported for the
    /// learn table, never for the sinks; the header's rule packs the set (index 0).
    pub const LEARNED: u16 = 2;
}

/// The action taken on a violation; ordered, so the strongest is the largest.
pub mod action {
    pub const NONE: u16 = 0;
    pub const ALERT: u16 = 1;
    /// The act is refused (`EPERM`) before it happens; the process lives.
    pub const DENY: u16 = 2;
    /// The act is refused where the hook can refuse it, and the process is killed.
    pub const KILL: u16 = 3;

    /// Whether `action` refuses the act (Deny, Kill) rather than only reporting it.
    #[inline(always)]
    pub const fn refuses(action: u16) -> bool {
        action == DENY || action == KILL
    }
}

/// What `CONFIG.mode` selects.
pub mod mode {
    /// `vigil trace`: every behaviour is reported, filtered only by cgroup.
    pub const TRACE: u32 = 0;
    /// `vigil run`: policies decide in the kernel; only violations are reported.
    pub const ENFORCE: u32 = 1;
}

/// Packs a policy set and a rule index into a header's `rule`.
pub mod rule_id {
    /// The behaviour is not on the set's allowlist (no single rule matched).
    pub const NOT_ALLOWED: u32 = 0xffff;
    /// A socket of a protocol the connect rules cannot judge (raw, ICMP, SCTP, ...) in a
    /// set with connect rules.
    pub const PROTOCOL: u32 = 0xfffe;
    /// An executable whose real path the kernel could not resolve, under `Kill`.
    pub const UNVERIFIABLE: u32 = 0xfffd;
    /// A process under the set was moved to another cgroup.
    pub const MOVED: u32 = 0xfffc;
    /// An exec that ran without its judgement (the kernel skipped the exec programs), failed
    /// closed under the set's exec action.
    pub const UNJUDGED: u32 = 0xfffb;

    pub const fn pack(set: u32, index: u32) -> u32 {
        (set << 16) | (index & 0xffff)
    }

    pub const fn set(rule: u32) -> u32 {
        rule >> 16
    }

    pub const fn index(rule: u32) -> u32 {
        rule & 0xffff
    }
}

bit_flags! {
    /// Bits of [`PolicySet::flags`].
    pub mod set_flags {
        /// `exec.allow` is not empty: executables not on it are violations.
        EXEC_ALLOWLIST,
        /// `exec.deny` has `memfd: true`.
        EXEC_DENY_MEMFD,
        /// `connect.allow` is not empty or `allowServices` is set: other destinations are
        /// violations.
        CONNECT_ALLOWLIST,
        CONNECT_ALLOW_SERVICES,
        /// `memory.writeExecute: Deny`.
        WX_DENY,
        /// `exec.allow` has `memfd: true`: executables run from a memfd are on the allowlist.
        EXEC_ALLOW_MEMFD,
        /// `connect.deny` is not empty.
        CONNECT_RULES,
        /// `memory.foreignWrites: Deny`.
        FOREIGN_WRITES_DENY,
        /// `memory.compatSyscalls: Deny`.
        COMPAT_DENY,
        /// A container runtime starts the processes of the bound cgroup (a pod's, or
        /// `hostProcesses.containerRuntime`): its own work there before the container
        /// enters its mount namespace is its hand-over, not judged (`handover.rs`).
        RUNTIME_HANDOVER,
        /// `exec.drift: Deny`.
        EXEC_DENY_DRIFT,
        /// `exec.allow` has `sha256:` entries (with `drift: Deny`): an executable outside the
        /// image may be vouched for by its content.
        EXEC_DIGESTS,
        /// A policy in mode `Learn` selects the bound cgroup: every exec, connect, W^X
        /// mapping and foreign write the set allows is reported ([`super::verdict::LEARNED`]).
        LEARN,
    }
}

/// Policy sets: slot 0 means "no policy".
pub const MAX_POLICY_SETS: u32 = 1024;
/// Depth of the cgroup hierarchy searched for a policy binding: a binding on a cgroup at
/// this level or deeper is refused by user space (the processes below a shallower bound
/// ancestor are covered at any depth).
pub const MAX_CGROUP_LEVELS: u32 = 32;

/// What one policy set (the union of the policies selecting a cgroup) decides in the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicySet {
    /// Bits of [`set_flags`].
    pub flags: u32,
    /// [`action`] per behaviour (the strongest of the policies in the set; Audit caps at Alert).
    pub exec_action: u32,
    pub connect_action: u32,
    pub wx_action: u32,
    /// Rule index reported for a denied memfd exec and for a W^X violation.
    pub memfd_rule: u32,
    pub wx_rule: u32,
    /// Rule index reported for a write into another process's memory.
    pub foreign_rule: u32,
    /// Rule index reported for a system call through the 32-bit entry.
    pub compat_rule: u32,
    /// Unique among the sets one agent writes, from 1 to [`STAMP_MAX`] (0: no set): a
    /// decision cached about this set (a process's W^X exemption, [`ExePath::exempt`])
    /// holds only while the set under its id still has this stamp.
    pub stamp: u32,
    /// Rule index reported for drift (`exec.drift: Deny`).
    pub drift_rule: u32,
}

/// Bytes of a path inside an LPM key (after the 4-byte set id); a path of this length or
/// longer is decided in user space.
pub const KEY_PATH_LEN: usize = 252;

/// Data of an `EXEC_PATHS` LPM key: the set id (big-endian, so it is the leading prefix),
/// then the path. An exact path is stored with its terminating NUL, a directory prefix
/// without.
pub type PathKeyData = [u8; 4 + KEY_PATH_LEN];

pub mod path_verdict {
    pub const NONE: u16 = 0;
    pub const ALLOW: u16 = 1;
    pub const DENY: u16 = 2;
}

/// Value of an `EXEC_PATHS` entry. User space folds covering prefixes into each entry
/// (deny wins), so the longest match alone decides.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathRule {
    /// One of [`path_verdict`].
    pub exec: u16,
    /// Rule index of the deciding rule.
    pub exec_rule: u16,
    /// Non-zero: an executable whose W^X mappings the set allows (`allowExecutables`).
    pub wx_exempt: u16,
    pub _pad: u16,
}

/// Data of a `CONNECT_ALLOW`/`CONNECT_DENY` LPM key: set id (big-endian), then the IPv6
/// address (IPv4 as `::ffff:a.b.c.d`).
pub type AddrKeyData = [u8; 20];

/// Port ranges kept per CIDR entry; more are decided in user space.
pub const MAX_PORT_RANGES: usize = 16;

pub mod proto_mask {
    pub const TCP: u16 = 1 << 0;
    pub const UDP: u16 = 1 << 1;
    pub const ANY: u16 = TCP | UDP;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
    /// Bits of [`proto_mask`].
    pub protocols: u16,
    pub rule: u16,
}

/// Value of a connect LPM entry: the port ranges of this CIDR and of every CIDR covering it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRules {
    pub count: u32,
    pub _pad: u32,
    pub ranges: [PortRange; MAX_PORT_RANGES],
}

/// Key of the node-wide `SERVICES` map (Service and endpoint addresses).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// IPv6, IPv4 as `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
    pub port: u16,
    /// IP protocol number.
    pub protocol: u16,
}

/// The real path of a process's executable, recorded at exec (and seeded from /proc).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExePath {
    pub len: u32,
    pub _pad: u32,
    /// The W^X exemption last looked up for this executable: the process id that looked it
    /// up (bits 32 to 63), the [`PolicySet::stamp`] of the set it was looked up in (bits 1
    /// to 31) and the answer (bit 0, 1: exempt); 0 when none was. One 8-byte word, written
    /// at once, so no reader pairs one stamp with another's answer; the process id, because
    /// the map recycles an evicted entry for another process at once, and a lookup that
    /// was under way writes into it (a copy made at fork is looked up again too).
    pub exempt: u64,
    pub path: [u8; PATH_LEN],
}

/// The largest [`PolicySet::stamp`]: it shares [`ExePath::exempt`] with a process id.
pub const STAMP_MAX: u32 = 0x7fff_ffff;

/// [`ExePath::exempt`] for process `tgid`, a set stamped `stamp` and `answer`.
pub const fn exempt_word(tgid: u32, stamp: u32, answer: bool) -> u64 {
    ((tgid as u64) << 32) | (((stamp & STAMP_MAX) as u64) << 1) | answer as u64
}

/// How many names of a script chain are awaited: the name the script was run by and the
/// three arguments the kernel put before it (interpreter scripts and `#!` options).
pub const SCRIPT_NAMES: usize = 4;

/// A script the kernel ran, waiting for its interpreter to open it: a file opened under a
/// name the kernel ran the chain by is a script of the chain, and it is decided then, on the
/// file itself.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PendingScript {
    /// The thread inside an `open` of one of the names (0: none), and which one.
    pub opener_tid: u32,
    pub opening: u32,
    /// `names[0]`: the name the script was run by (`bprm->filename`); then the arguments the
    /// kernel put before it in the new image (`argv[1]`...): the names of the interpreter
    /// scripts between, each opened by the level below it. Empty: none, or already opened.
    pub names: [[u8; PATH_LEN]; SCRIPT_NAMES],
}

/// Where a connect record was observed. All three are cgroup socket programs: they see the
/// kernel's copy of the address, whatever path led there (connect, sendto, sendmsg,
/// sendmmsg, TCP Fast Open, io_uring, 32-bit compat calls).
pub mod connect_hook {
    /// `cgroup/connect4`, `cgroup/connect6`: connect on a stream or datagram socket.
    pub const CONNECT: u32 = 1;
    /// `cgroup/sendmsg4`, `cgroup/sendmsg6`: a datagram sent with an explicit destination.
    pub const SENDMSG: u32 = 2;
    /// `cgroup/sock_create`: a socket of a protocol no address hook judges (raw, ICMP, ...).
    pub const SOCKET: u32 = 3;
}

bit_flags! {
    /// Why a W^X record was emitted.
    pub mod wx_reason {
        /// The requested protection is writable and executable.
        WRITE_EXEC,
        /// The process runs with `READ_IMPLIES_EXEC`, so a readable and writable mapping is
        /// executable too.
        READ_IMPLIES_EXEC,
        /// An executable mapping of memory another mapping can write: an anonymous file
        /// (memfd), a file in `/dev/shm`, or SysV shared memory attached with `SHM_EXEC`.
        SHARED_EXEC,
        /// A write into another process's memory (or the means to it).
        FOREIGN_WRITE,
        /// Not a reason of its own: the request came through the 32-bit system call entry.
        COMPAT,
        /// The new image's stack is executable (`PT_GNU_STACK` asked for it): mapped by the
        /// kernel at exec, with no system call.
        EXEC_STACK,
        /// The new image's memory went unjudged (the kernel skipped both programs that look
        /// at it) under `memory.writeExecute: Deny`: failed closed on the exec's return.
        UNJUDGED,
        /// The protection asked for is in the caller's memory (the 32-bit `old_mmap`'s
        /// argument structure), which another thread can rewrite until the kernel copies it,
        /// and no hook sees what the kernel made of it: under `memory.writeExecute: Deny`
        /// it fails closed whatever it read.
        UNVERIFIABLE,
    }
}

/// The syscall a W^X record came from.
pub mod wx_syscall {
    pub const MMAP: u32 = 1;
    pub const MPROTECT: u32 = 2;
    pub const PKEY_MPROTECT: u32 = 3;
    pub const PERSONALITY: u32 = 4;
    pub const SHMAT: u32 = 5;
    /// `ptrace` attach, seize or a write request (`extra`: the target; `flags`: the request).
    pub const PTRACE: u32 = 6;
    /// `process_vm_writev` (`extra`: the target).
    pub const PROCESS_VM_WRITEV: u32 = 7;
    /// `/proc/<pid>/mem` opened for writing (`fd`: the descriptor).
    pub const PROC_MEM: u32 = 8;
    /// The 32-bit `mmap2` (the compat `mprotect` and `pkey_mprotect` use their own values
    /// with [`super::wx_reason::COMPAT`]).
    pub const MMAP2: u32 = 9;
    /// Memory the kernel's ELF loader mapped for a new image at exec (`addr`, `len`: the
    /// area), with no system call of the process's own.
    pub const EXEC: u32 = 10;
    /// Any system call through the 32-bit entry, under `compatSyscalls: Deny` (`extra`: its
    /// 32-bit number).
    pub const COMPAT: u32 = 11;
    /// A userfaultfd created (`userfaultfd(2)`, or `/dev/userfaultfd` opened: `fd`), the means
    /// to have the kernel fill pages, executable ones too (`flags`: its flags or open mode).
    pub const USERFAULTFD: u32 = 12;
    /// The 32-bit `mmap` of old (i386 number 90): its arguments are a structure in the
    /// caller's memory (`addr`, `len`, `flags`, `fd` as read from it).
    pub const OLD_MMAP: u32 = 13;
}

pub const READ_IMPLIES_EXEC: u32 = 0x0040_0000;

/// Marks a kernel structure offset that is not known on this kernel.
pub const OFFSET_UNKNOWN: u32 = u32::MAX;

/// Common start of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    pub kind: u32,
    /// One of [`verdict`].
    pub verdict: u16,
    /// One of [`action`]: what the kernel did (or will have the sink do).
    pub action: u16,
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
    /// `(policy set << 16) | rule index` of a violation, else 0; see [`rule_id`].
    pub rule: u32,
    pub comm: [u8; COMM_LEN],
    /// Identical violations (same cgroup, behaviour and rule) this record stands for: 1, or
    /// more when the kernel held back a flood and this record carries what it held back.
    pub count: u32,
    /// [`throttle_flags`] the flood throttle set on this record.
    pub throttle: u32,
    /// `boot_ns` of the first of them (equal to `boot_ns` when `count` is 1).
    pub first_ns: u64,
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
    /// Where the file the drift flags are about lives.
    pub origin: FileOrigin,
    /// The path as passed to execve (`bprm->filename`).
    pub path: [u8; PATH_LEN],
    /// The executable's real path, walked from its dentry to the mount namespace's root
    /// (symlinks resolved; for scripts, the interpreter).
    pub exe_path: [u8; PATH_LEN],
    pub exe_name: [u8; NAME_LEN],
    pub args: [u8; ARGS_LEN],
}

/// The file system a file lives on and its identity there, as the kernel has them (all 0:
/// not read).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileOrigin {
    /// The super block's magic (`OVERLAYFS_SUPER_MAGIC`, `TMPFS_MAGIC`, `EXT4_SUPER_MAGIC`).
    pub fs_magic: u32,
    /// The super block's device, the kernel's `dev_t` (major << 20 | minor).
    pub dev: u32,
    pub ino: u64,
    /// The inode's change time, `seconds << 30 | nanoseconds`: any change to the file's
    /// content or attributes moves it.
    pub change: u64,
}

/// A file's identity as the vouched cache keys it: the policy set whose `sha256:` entry its
/// content matched, and the file's device, inode and change time ([`FileOrigin`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VouchKey {
    pub set: u32,
    pub dev: u32,
    pub ino: u64,
    pub change: u64,
}

/// Arguments captured at an exec's entry (`raw_syscalls/sys_enter`), keyed by thread id until
/// the exec happens.
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
    /// The socket's type (`SOCK_STREAM` 1, `SOCK_DGRAM` 2, `SOCK_RAW` 3, ...).
    pub sock_type: u32,
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

/// A W^X record as it goes to user space: the facts, then the executable the kernel recorded
/// at the process's exec (`TASK_EXE`), which outlives a process killed for the mapping.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WxRecord {
    pub event: WxEvent,
    /// Bytes of `exe` in use; 0: none recorded (the process predates the agent and /proc
    /// did not say, or the map had no room).
    pub exe_len: u32,
    pub _pad: u32,
    pub exe: [u8; PATH_LEN],
}

/// A process whose policy binding was pinned (it started, or first ran, under a policy) was
/// moved to a cgroup outside that binding. The policy keeps applying to it wherever it is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MoveEvent {
    /// The mover: the process that wrote `cgroup.procs` (its own pid when it moved itself).
    pub header: EventHeader,
    /// The cgroup holding the policy binding the moved process is pinned to.
    pub from_cgroup: u64,
    /// The cgroup it was moved to.
    pub to_cgroup: u64,
    /// The moved thread's id (the process id when the whole process moved).
    pub moved_pid: u32,
    pub _pad: u32,
}

macro_rules! kernel_offsets {
    (
        $(#[$($attr:tt)*])*
        pub struct $name:ident {
            $($structure:ident {
                $($(#[$($field_attr:tt)*])* $field:ident: $member:literal,)+
            })+
        }
    ) => {
        $(#[$($attr)*])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name {
            // `Config` pads an odd number of members explicitly (its `_pad`, asserted below).
            $($($(#[$($field_attr)*])* pub $field: u32,)+)+
        }

        impl $name {
            /// Each offset from `find(structure, member)`: the list above is the only place
            /// that says where a field's offset comes from.
            pub fn find(mut find: impl FnMut(&str, &str) -> u32) -> Self {
                Self {
                    $($($field: find(stringify!($structure), $member),)+)+
                }
            }
        }
    };
}

kernel_offsets! {
    /// Offsets into kernel structures, read by user space from `/sys/kernel/btf/vmlinux`
    /// (Rust eBPF has no CO-RE relocations), grouped by structure. [`OFFSET_UNKNOWN`] marks a
    /// member this kernel lacks: the probe then leaves the dependent field empty and says so
    /// in its flags.
    pub struct KernelOffsets {
        task_struct {
            task_real_parent: "real_parent",
            task_tgid: "tgid",
            task_personality: "personality",
            task_files: "files",
            task_pid: "pid",
            /// With `signal_struct.live`: threads of the process still alive.
            task_signal: "signal",
            /// `TS_COMPAT`: the task is in a 32-bit system call (its first five arguments are
            /// in the `pt_regs` members below).
            thread_status: "thread_info.status",
            /// With `mm_struct.arg_start` and `arg_end`: the new image's arguments, written by
            /// the kernel at exec (a script chain's names).
            task_mm: "mm",
            /// With `nsproxy.mnt_ns`: the mount namespace a task is in (a container runtime's
            /// hand-over ends when the process leaves the runtime's).
            task_nsproxy: "nsproxy",
            /// With `css_set.dfl_cgrp`: a task's cgroup v2 cgroup (a child born into another
            /// cgroup than its parent's, with `CLONE_INTO_CGROUP`).
            task_cgroups: "cgroups",
            /// With `start_time`: which image of which process a task runs (the kernel adds one
            /// at every exec); an exec's judgement is marked with both (`judged.rs`).
            task_self_exec_id: "self_exec_id",
            task_start_time: "start_time",
            /// Non-zero while a tracer is attached: one that could rewrite the registers an
            /// exec's return is told by (`judged.rs`).
            task_ptrace: "ptrace",
        }
        file {
            file_dentry: "f_path.dentry",
            file_inode: "f_inode",
            file_vfsmount: "f_path.mnt",
            /// Whether a file was opened for writing.
            file_mode: "f_mode",
        }
        dentry {
            dentry_name: "d_name.name",
            dentry_parent: "d_parent",
        }
        inode {
            inode_nlink: "__i_nlink",
            /// With `i_sb` and `super_block.s_dev`: a file's identity, reported with drift.
            inode_ino: "i_ino",
            inode_sb: "i_sb",
            /// The change time's seconds and nanoseconds (`i_ctime_sec` and `i_ctime_nsec`
            /// from 6.11; a `timespec64` before, found by user space).
            inode_ctime_sec: "i_ctime_sec",
            inode_ctime_nsec: "i_ctime_nsec",
        }
        files_struct {
            files_fdt: "fdt",
        }
        fdtable {
            fdtable_max_fds: "max_fds",
            fdtable_fd: "fd",
        }
        vfsmount {
            vfsmount_mnt_root: "mnt_root",
            /// With `super_block.s_flags`: a file on a kernel-internal mount (`SB_KERNMOUNT`:
            /// memfd, pipes, sockets, anonymous inodes) has no path anyone chose.
            vfsmount_sb: "mnt_sb",
            vfsmount_flags: "mnt_flags",
        }
        super_block {
            sb_flags: "s_flags",
            /// tmpfs files may be shared memory.
            sb_magic: "s_magic",
            sb_root: "s_root",
            /// The user namespace that mounted the file system.
            sb_user_ns: "s_user_ns",
            sb_dev: "s_dev",
        }
        ovl_inode {
            /// Not an offset into `ovl_inode` but from its `vfs_inode` to `__upperdentry`
            /// (user space works it out): from an overlay file's inode, whether the file has
            /// an upper (writable) layer, i.e. is drift.
            ovl_inode_upper: "__upperdentry",
        }
        mount {
            mount_mnt: "mnt",
            mount_parent: "mnt_parent",
            mount_mountpoint: "mnt_mountpoint",
            /// With `mnt_namespace.user_ns`, `user_namespace.level`, `vfsmount.mnt_flags` and
            /// `super_block.s_root`: whether a mount crossed by a path walk was made by an
            /// unprivileged user in a user namespace of its own (the path is then that user's
            /// choice).
            mount_mnt_ns: "mnt_ns",
        }
        nsproxy {
            nsproxy_mnt_ns: "mnt_ns",
        }
        css_set {
            css_set_dfl_cgrp: "dfl_cgrp",
        }
        mnt_namespace {
            mnt_ns_user_ns: "user_ns",
        }
        user_namespace {
            user_ns_level: "level",
        }
        linux_binprm {
            bprm_file: "file",
            bprm_filename: "filename",
            bprm_interp: "interp",
            /// The first bytes of the file at this level (`#!`, an ELF header): whether the
            /// kernel will hand it on to an interpreter.
            bprm_buf: "buf",
        }
        signal_struct {
            signal_live: "live.counter",
        }
        qstr {
            /// The name of an anonymous inode (`[userfaultfd]`).
            qstr_name: "name",
        }
        cgroup {
            /// With `cgroup_root.hierarchy_id` (0: the cgroup v2 hierarchy) and
            /// `kernfs_node.id` (the cgroup id).
            cgroup_root: "root",
            cgroup_kn: "kn",
            cgroup_parent: "self.parent",
            /// With `ancestor_ids` (kernels before 6.0): a cgroup's depth and the ids of its
            /// ancestors, read where tracing programs lack
            /// `bpf_get_current_ancestor_cgroup_id` (before 5.14).
            cgroup_level: "level",
            cgroup_ancestor_ids: "ancestor_ids",
        }
        cgroup_root {
            root_hierarchy_id: "hierarchy_id",
        }
        kernfs_node {
            kn_id: "id",
        }
        pt_regs {
            regs_bx: "bx",
            regs_cx: "cx",
            regs_dx: "dx",
            regs_si: "si",
            regs_di: "di",
            /// The 64-bit entry's fourth and fifth arguments (`mmap`'s flags and descriptor,
            /// `pkey_mprotect`'s key), read where BPF LSM reports W^X from the task's registers.
            regs_r10: "r10",
            regs_r8: "r8",
            /// The system call a task returns from; after a successful exec the kernel sets
            /// it to that ABI's `execve`, whichever call it was.
            regs_orig_ax: "orig_ax",
        }
        mm_struct {
            mm_arg_start: "arg_start",
            mm_arg_end: "arg_end",
            /// With `start_code`, `start_data` and `end_code`: where the kernel put a new
            /// image's stack, code and data.
            mm_start_stack: "start_stack",
            mm_start_code: "start_code",
            mm_start_data: "start_data",
            mm_end_code: "end_code",
            /// The executable of a process's image (the interpreter of a script): what an exec
            /// that went unjudged is reported and failed closed by.
            mm_exe_file: "exe_file",
            /// The new image's auxiliary vector (type and value pairs): `AT_BASE` is where the
            /// kernel loaded the program's ELF interpreter (the dynamic loader).
            mm_saved_auxv: "saved_auxv",
            /// With `vm_area_struct.vm_rb` and `rb_node`'s children (kernels before 6.1): the
            /// tree of memory areas, walked where `bpf_find_vma` is missing (before 5.17).
            mm_rb: "mm_rb",
        }
        vm_area_struct {
            /// With `vm_file`, `vm_start` and `vm_end`: a memory area's protection and file.
            vma_flags: "vm_flags",
            vma_file: "vm_file",
            vma_start: "vm_start",
            vma_end: "vm_end",
            vma_rb: "vm_rb",
        }
        rb_node {
            rb_right: "rb_right",
            rb_left: "rb_left",
        }
    }
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
    /// One of [`mode`].
    pub mode: u32,
    /// This agent's generation when enforcement is pinned (0: not pinned). Its programs
    /// report only while `EMITTER` holds it: during a hand-over from a previous agent
    /// exactly one generation reports each act, while both enforce.
    pub generation: u32,
    pub kernel: KernelOffsets,
    /// Which acts BPF LSM programs refuse before they happen on this node ([`prevent`]
    /// bits); the tracepoints leave a Deny or Kill of those to them.
    pub prevent: u32,
    /// Which parts of an exec ([`judged`] bits) the exec's return fails closed when its
    /// programs on `sched_process_exec` left them unjudged; 0 until every program is attached,
    /// so an exec already under way at start-up is not taken for a skipped one.
    pub judges: u32,
    pub _pad: u32,
}

/// Bits of [`Config::judges`]: the programs on `sched_process_exec` whose judgement an exec
/// must have had by the time it returns to user space.
pub mod judged {
    /// The exec itself: its path, script and arguments.
    pub const EXEC: u32 = 1;
    /// The memory the kernel mapped for the new image (an executable stack, a W+X segment).
    pub const IMAGE: u32 = 2;
}

/// Bits of [`Config::prevent`].
pub mod prevent {
    /// `bprm_check_security`: every exec, at every interpreter level.
    pub const EXEC: u32 = 1;
    /// `mmap_file` and `file_mprotect`: every W^X mapping, 32-bit calls and `shmat` too.
    pub const WX: u32 = 2;
    /// With [`WX`], where programs may read the task's registers (`bpf_task_pt_regs`, 5.15):
    /// the LSM programs are the only W^X hooks. They report every request, in both modes and
    /// under every action, and judge files mapped executable; the W^X syscall tracepoints are
    /// not attached.
    pub const WX_REPORTS: u32 = 4;
    /// `file_open`: every file opened, whatever the entry (io_uring and 32-bit calls too):
    /// `/proc/<pid>/mem` for writing and `/dev/userfaultfd` are judged and refused before
    /// the open; `sys_exit_open_mem` is not attached.
    pub const FOREIGN_OPEN: u32 = 8;
    /// With [`EXEC`], where the first bytes of each level are readable: `bprm_check_security`
    /// decides every level an interpreter runs, under every action (Alert reports it), so
    /// nothing waits for the interpreter to open its script; the `*_script` open tracepoints
    /// are not attached.
    pub const SCRIPT_LEVELS: u32 = 16;
    /// `ptrace_access_check`, `ptrace_traceme` and `inode_init_security_anon`, where programs
    /// may read the task's registers (the call they run under): foreign writes by system call
    /// (`ptrace` attach and seize, `PTRACE_TRACEME`, `process_vm_writev`, every userfaultfd)
    /// from every entry, refused before the act; the `sys_enter_ptrace`,
    /// `sys_enter_process_vm_writev` and `sys_enter_userfaultfd` tracepoints are not attached,
    /// and raw `sys_enter` leaves the 32-bit ones to these programs.
    pub const FOREIGN_CALLS: u32 = 32;
    /// With [`EXEC`], where programs may read the task's registers: `bprm_check_security`
    /// reads the arguments of an exec it may report from the caller's memory (under exec
    /// rules that refuse, or at a level it reports; not at every exec's entry) and records a
    /// traced task's exec, so raw `sys_enter` does neither;
    /// where [`WX_REPORTS`] and [`FOREIGN_CALLS`] hold too, raw `sys_enter` is attached only
    /// once a set denies 32-bit calls (`compatSyscalls: Deny`).
    pub const EXEC_ENTRY: u32 = 64;
    /// With [`EXEC_ENTRY`], where an fexit program on `bprm_execve` loads and attaches: it
    /// checks each successful exec's return (what its `sched_process_exec` programs left
    /// unjudged fails closed), every exec whatever its entry (the system calls of each ABI,
    /// the kernel's own `kernel_execve`), with no register a tracer could rewrite; raw
    /// `sys_exit` neither checks it nor records a traced task's exec entry.
    pub const EXEC_RETURN: u32 = 128;
}

/// Offsets of the arguments in every `syscalls/sys_enter_*` record: 8 bytes of common
/// fields, the syscall number (padded to 8), then one 8-byte slot per argument. This layout
/// has not changed since syscall tracepoints exist; the agent checks it at load time.
pub const SYSCALL_ARG0_OFFSET: usize = 16;
/// Offset of `ret` in every `syscalls/sys_exit_*` record (checked at load time too).
pub const SYSCALL_RET_OFFSET: usize = 16;

/// The key of the kernel's flood throttle (`THROTTLE`): one kind of violation of one process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ThrottleKey {
    pub cgroup_id: u64,
    /// What the violation was aimed at ([`connect_target`] of a connect, a move's cgroup),
    /// else 0.
    pub target: u64,
    pub rule: u32,
    /// One of [`kind`].
    pub kind: u32,
    pub pid: u32,
    pub _pad: u32,
}

/// What one kind of violation did in its current throttle window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThrottleState {
    /// `boot_ns` of the window's first record.
    pub window_start: u64,
    /// `boot_ns` of the first violation held back since the last record went out.
    pub first_held: u64,
    pub emitted: u32,
    /// Violations held back since the last record went out.
    pub held: u32,
}

/// A connect's destination folded into a throttle key's `target`.
pub const fn connect_target(dport: u16, daddr: &[u8; 16]) -> u64 {
    let mut folded = (dport as u64) << 32;
    let mut i = 0;
    while i < 16 {
        folded ^= (daddr[i] as u64) << ((i % 4) * 8);
        folded = folded.rotate_left(5);
        i += 1;
    }
    folded
}

// Flag values are read by the other generation during a hand-over: they stay where they are.
const _: () = assert!(exec_flags::MEMFD == 1 && exec_flags::USER_MOUNT == 1 << 11);
const _: () = assert!(set_flags::EXEC_ALLOWLIST == 1 && set_flags::COMPAT_DENY == 1 << 8);
const _: () = assert!(wx_reason::WRITE_EXEC == 1 && wx_reason::EXEC_STACK == 1 << 5);
const _: () = assert!(core::mem::size_of::<EventHeader>() == 80);

/// Names the layout of the records in `EVENTS`: an agent reads a previous agent's pinned
/// ring buffer only when this matches (bump [`RECORD_LAYOUT_REVISION`] on any change a size
/// does not show).
pub const RECORD_LAYOUT_REVISION: u32 = 1;
pub const RECORD_LAYOUT: u32 = RECORD_LAYOUT_REVISION
    .wrapping_mul(31)
    .wrapping_add(core::mem::size_of::<EventHeader>() as u32)
    .wrapping_mul(31)
    .wrapping_add(core::mem::size_of::<ExecEvent>() as u32)
    .wrapping_mul(31)
    .wrapping_add(core::mem::size_of::<ConnectEvent>() as u32)
    .wrapping_mul(31)
    .wrapping_add(core::mem::size_of::<WxRecord>() as u32)
    .wrapping_mul(31)
    .wrapping_add(core::mem::size_of::<MoveEvent>() as u32);
const _: () =
    assert!(core::mem::size_of::<ExecEvent>() == 80 + 40 + 2 * PATH_LEN + NAME_LEN + ARGS_LEN);
const _: () = assert!(core::mem::size_of::<FileOrigin>() == 24);
const _: () = assert!(core::mem::size_of::<VouchKey>() == 24);
const _: () = assert!(core::mem::size_of::<ExecArgs>() == 16 + ARGS_LEN);
const _: () = assert!(core::mem::size_of::<ConnectEvent>() == 80 + 8 + 32 + 8);
const _: () = assert!(core::mem::size_of::<WxEvent>() == 80 + 16 + 16 + 8);
const _: () = assert!(core::mem::size_of::<WxRecord>() == 120 + 8 + PATH_LEN);
const _: () = assert!(core::mem::size_of::<MoveEvent>() == 80 + 24);
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 81 * 4);
const _: () = assert!(core::mem::size_of::<Config>() == 24 + 324 + 12);
const _: () = assert!(core::mem::size_of::<PolicySet>() == 40);
const _: () = assert!(core::mem::size_of::<ThrottleKey>() == 32);
const _: () = assert!(core::mem::size_of::<ThrottleState>() == 24);
const _: () = assert!(core::mem::size_of::<PathRule>() == 8);
const _: () = assert!(core::mem::size_of::<PortRules>() == 8 + 8 * MAX_PORT_RANGES);
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 20);
const _: () = assert!(core::mem::size_of::<ExePath>() == 16 + PATH_LEN);
const _: () = assert!(core::mem::size_of::<PendingScript>() == 8 + SCRIPT_NAMES * PATH_LEN);

#[cfg(feature = "user")]
mod pod {
    use super::{
        Config, ConnectEvent, EventHeader, ExePath, ExecEvent, FileOrigin, MoveEvent, PathRule,
        PolicySet, PortRules, ServiceKey, ThrottleKey, ThrottleState, VouchKey, WxEvent, WxRecord,
    };

    // SAFETY: all are #[repr(C)] of integers and byte arrays, with explicit padding fields,
    // so every bit pattern is valid and no byte is uninitialised.
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for EventHeader {}
    unsafe impl aya::Pod for ExecEvent {}
    unsafe impl aya::Pod for FileOrigin {}
    unsafe impl aya::Pod for VouchKey {}
    unsafe impl aya::Pod for ConnectEvent {}
    unsafe impl aya::Pod for WxEvent {}
    unsafe impl aya::Pod for WxRecord {}
    unsafe impl aya::Pod for MoveEvent {}
    unsafe impl aya::Pod for ThrottleKey {}
    unsafe impl aya::Pod for ThrottleState {}
    unsafe impl aya::Pod for PolicySet {}
    unsafe impl aya::Pod for PathRule {}
    unsafe impl aya::Pod for PortRules {}
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ExePath {}
}

/// Probe failures, counted per probe and reason in the per-CPU `PROBE_ERRORS` map: a probe
/// that gives up on an event (a value it cannot read, a map that refuses an update) says so
/// instead of returning quietly. Slot `probe * REASONS + reason`.
pub mod probe_error {
    /// A kernel or user value could not be read or resolved.
    pub const READ: u32 = 0;
    /// A map refused an update or lacked an entry it needed (full, missing).
    pub const MAP: u32 = 1;
    /// Anything else a helper returned.
    pub const OTHER: u32 = 2;
    pub const REASONS: u32 = 3;
    pub const REASON_NAMES: [&str; REASONS as usize] = ["read", "map", "other"];

    /// The reason behind a probe's error value: its own `1` for "could not read", else a
    /// helper's negative errno.
    pub const fn reason(err: i64) -> u32 {
        match err {
            1 | -14 => READ,
            -2 | -7 | -12 | -16 | -17 | -28 => MAP,
            _ => OTHER,
        }
    }

    pub const fn slot(probe: u32, reason: u32) -> u32 {
        probe * REASONS + reason
    }

    /// The probes that count, by entry-point name, and the reads many entry points share
    /// (`task_cgroup`: a task's cgroup and its ancestors where the helper is missing;
    /// `sigkill`: a kill the kernel would not send at once, left for the task's syscall exit);
    /// a probe's id is its index here.
    pub const PROBES: [&str; 43] = [
        "cgroup_attach_task",
        "sys_enter",
        "sched_process_exec",
        "sys_enter_ptrace",
        "sys_enter_process_vm_writev",
        "sys_enter_userfaultfd",
        "sys_exit_open_mem",
        "sched_process_exec_image",
        "sys_enter_mmap_exec",
        "sys_enter_mprotect_exec",
        "sys_enter_pkey_mprotect_exec",
        "judge_mapped_file",
        "sched_process_fork",
        "sched_process_exit",
        "sys_enter_open_script",
        "sys_enter_openat_script",
        "sys_exit_open_script",
        "sys_enter_mmap",
        "sys_enter_mprotect",
        "sys_enter_pkey_mprotect",
        "sys_enter_personality",
        "sys_exit_protection",
        "sys_enter_shmat",
        "lsm_bprm_check",
        "lsm_mmap_file",
        "lsm_file_mprotect",
        "sched_process_exec_image_walk",
        "sys_enter_mprotect_exec_walk",
        "sys_enter_pkey_mprotect_exec_walk",
        "task_cgroup",
        "sigkill",
        "sched_process_exec_again",
        "sys_exit",
        "sched_process_exec_image_again",
        "sched_process_exec_image_walk_again",
        "lsm_mmap_file_exec",
        "lsm_file_mprotect_exec",
        "lsm_file_open",
        "lsm_ptrace_access_check",
        "lsm_ptrace_traceme",
        "lsm_userfaultfd",
        "bprm_execve_exit",
        "judge_mapped_file_raw",
    ];
    pub const SLOTS: u32 = PROBES.len() as u32 * REASONS;

    /// The id of the probe named `name` (its index in [`PROBES`]); a compile error when it is
    /// not there, so a renamed probe cannot count into another's row.
    pub const fn id(name: &str) -> u32 {
        let mut i = 0;
        while i < PROBES.len() {
            if eq(PROBES[i].as_bytes(), name.as_bytes()) {
                return i as u32;
            }
            i += 1;
        }
        panic!("a probe missing from probe_error::PROBES")
    }

    const fn eq(a: &[u8], b: &[u8]) -> bool {
        if a.len() != b.len() {
            return false;
        }
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }
}
