//! `data.wx` of a `dev.vigil.wx.v1` CloudEvent, and its readable line.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Wx, WxSyscall, prot_text};
use crate::cloudevents::schema::{is_false, only_true};

/// dev.vigil.wx.v1: memory was made writable and executable at once (mmap, mprotect,
/// pkey_mprotect), shared or anonymous memory was mapped executable (mmap of a memfd or
/// /dev/shm file, shmat with SHM_EXEC), or the process turned on READ_IMPLIES_EXEC
/// (personality): the usual first steps of in-memory code injection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields, rename = "wx")]
#[schemars(extend("allOf" = [
    {
        "if": {"properties": {"syscall": {"const": "pkey_mprotect"}}, "required": ["syscall"]},
        "then": {"properties": {"pkey": {"type": "integer"}}},
        "else": {"properties": {"pkey": {"type": "null"}}}
    },
    {
        "if": {"properties": {"syscall": {"const": "personality"}}, "required": ["syscall"]},
        "then": {"properties": {"persona": {"type": "integer"}}},
        "else": {"properties": {"persona": {"type": "null"}}}
    },
    {
        "description": "Exactly one reason is given.",
        "oneOf": [
            {"properties": {"writeExecute": {"const": true}}},
            {"properties": {"readImpliesExec": {"const": true}}},
            {"properties": {"sharedExec": {"const": true}}},
            {"properties": {"foreignWrite": {"const": true}}},
            {"required": ["execStack"]},
            {"required": ["compatSyscall"]},
            {"required": ["unjudged"]},
            {"required": ["unverifiable"]}
        ]
    }
]))]
pub struct WxData {
    /// The system call.
    pub syscall: WxSyscall,
    /// Requested protection bits (PROT_READ=1, PROT_WRITE=2, PROT_EXEC=4); 0 for
    /// personality.
    pub prot: u32,
    /// `prot` as `rwx` text, like /proc/<pid>/maps.
    #[schemars(regex(pattern = r"^[r-][w-][x-]$"))]
    pub prot_text: String,
    /// mmap's flags (MAP_*); 0 for the other system calls.
    pub flags: u32,
    /// Start address, lower-case hexadecimal with `0x`: for mmap the address the kernel chose
    /// (W^X is decided when the call returns: a request the kernel refused is not reported),
    /// or, where the BPF LSM programs report W^X before the act, the address asked for (0x0:
    /// none); for mprotect and pkey_mprotect the range as passed, for shmat the address hint;
    /// 0x0 for personality and the foreign writes.
    #[schemars(regex(pattern = r"^0x[0-9a-f]+$"))]
    pub addr: String,
    /// Length of the range in bytes; 0 for personality.
    pub len: u64,
    /// mmap's file descriptor (-1 for anonymous memory); -1 for the other system calls.
    pub fd: i32,
    /// The request asks for write and execute permission together. Exactly one of
    /// `writeExecute`, `readImpliesExec`, `sharedExec` and `foreignWrite` is true (or
    /// `execStack`, `compatSyscall`, `unjudged` or `unverifiable` is present).
    pub write_execute: bool,
    /// The memory becomes writable and executable because READ_IMPLIES_EXEC is on: a readable
    /// and writable mapping while the process runs with it, or (personality) the process
    /// turning it on.
    pub read_implies_exec: bool,
    /// An executable mapping of memory another mapping can write: a memfd or other anonymous
    /// file, a file in /dev/shm (mmap with PROT_EXEC), or SysV shared memory attached with
    /// SHM_EXEC (shmat; `flags` holds shmflg). Write here, run there: W^X by intent.
    pub shared_exec: bool,
    /// A write into another process's memory, or the means to it: ptrace attach, seize or a
    /// write request (`flags` holds the request), process_vm_writev, or /proc/<pid>/mem
    /// opened for writing (`syscall` open; `fd` the new descriptor, -1 where BPF LSM judges the
    /// open before it happens; `flags` the file's f_mode); or a userfaultfd created, with which the kernel fills pages (executable ones
    /// too) on the process's behalf (`syscall` userfaultfd; by the system call (`flags` its
    /// flags) or by opening /dev/userfaultfd (`fd`, `flags` the f_mode)). Reported under
    /// `memory.foreignWrites: Deny`, observed in trace mode.
    pub foreign_write: bool,
    /// The process written into (ptrace, process_vm_writev); null otherwise.
    pub target_pid: Option<u32>,
    /// pkey_mprotect's protection key (-1 = default key); null for the other system calls.
    pub pkey: Option<i32>,
    /// personality's new persona value; null for the other system calls.
    pub persona: Option<u32>,
    /// Present only when true: the request came through the 32-bit system call entry (int
    /// 0x80), which 64-bit processes may use too. Decided at the call's entry.
    #[serde(default, skip_serializing_if = "is_false")]
    #[schemars(schema_with = "only_true")]
    pub compat: bool,
    /// Present only when true: `syscall` is execve and the new image's stack is executable
    /// (its PT_GNU_STACK header asks for it), mapped by the kernel at exec with no system call
    /// of the process's own. `addr`/`len` are the stack area.
    #[serde(default, skip_serializing_if = "is_false")]
    #[schemars(schema_with = "only_true")]
    pub exec_stack: bool,
    /// Present only when true: `syscall` is execve and the memory the kernel mapped for the
    /// new image went unjudged (the kernel skipped both programs that look at it, each run
    /// skipped while another run of it is preempted on the same CPU), under
    /// `memory.writeExecute: Deny` for an executable not exempt: failed closed on the exec's
    /// way back to user space (killed under Kill). `prot`, `addr` and `len` are 0.
    #[serde(default, skip_serializing_if = "is_false")]
    #[schemars(schema_with = "only_true")]
    pub unjudged: bool,
    /// Present only when true: `syscall` is old_mmap, the 32-bit mmap whose arguments are a
    /// structure in the caller's memory, under `memory.writeExecute: Deny`. What it asked for
    /// (`prot` as read) was not writable and executable, but another thread can rewrite the
    /// structure until the kernel copies it, and no hook sees what the kernel made of it
    /// (kernels where the BPF LSM programs do not report W^X): failed closed.
    #[serde(default, skip_serializing_if = "is_false")]
    #[schemars(schema_with = "only_true")]
    pub unverifiable: bool,
    /// Present only when `syscall` is compat: the 32-bit system call number of a call through
    /// the 32-bit entry, which the policy's `memory.compatSyscalls: Deny` forbids.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compat_syscall: Option<u32>,
}

/// The member a W^X event adds to the shared data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct WxMember {
    pub wx: WxData,
}

impl From<&Wx> for WxData {
    fn from(w: &Wx) -> Self {
        let on = |syscalls: &[WxSyscall]| syscalls.contains(&w.syscall).then_some(w.extra);
        Self {
            syscall: w.syscall,
            prot: w.prot,
            prot_text: prot_text(w.prot),
            flags: w.flags,
            addr: format!("{:#x}", w.addr),
            len: w.len,
            fd: w.fd,
            write_execute: w.write_exec,
            read_implies_exec: w.read_implies_exec,
            shared_exec: w.shared_exec,
            foreign_write: w.foreign_write,
            target_pid: on(&[WxSyscall::Ptrace, WxSyscall::ProcessVmWritev]),
            // The key is signed; the record carries its bits.
            pkey: on(&[WxSyscall::PkeyMprotect]).map(|k| k as i32),
            persona: on(&[WxSyscall::Personality]),
            compat: w.compat,
            exec_stack: w.exec_stack,
            unjudged: w.unjudged,
            unverifiable: w.unverifiable,
            compat_syscall: on(&[WxSyscall::Compat]),
        }
    }
}

impl WxData {
    /// `mmap rwx len=4096 addr=0x7f.. READ_IMPLIES_EXEC`
    pub fn line(&self) -> String {
        let rie = if self.read_implies_exec {
            " READ_IMPLIES_EXEC"
        } else if self.unjudged {
            " (the new image ran unjudged: its probes were skipped)"
        } else if self.unverifiable {
            " (unverifiable: asked for in memory the process can rewrite)"
        } else {
            ""
        };
        format!(
            "{} {} len={} addr={}{rie}",
            self.syscall.name(),
            self.prot_text,
            self.len,
            self.addr
        )
    }
}
