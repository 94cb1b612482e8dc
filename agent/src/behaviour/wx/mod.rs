//! W^X: memory made writable and executable, shared memory mapped executable, writes into
//! another process, and the 32-bit entry (`agent-ebpf/src/wx.rs`, `foreign.rs`, `compat.rs`,
//! `image.rs`).
pub mod compile;
mod data;

use agent_common::{WxEvent, wx_reason, wx_syscall};

pub use data::{WxData, WxMember};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum WxSyscall {
    Mmap,
    Mmap2,
    /// The 32-bit `mmap` of old, whose arguments are a structure in the caller's memory.
    OldMmap,
    Mprotect,
    PkeyMprotect,
    Personality,
    Shmat,
    Ptrace,
    ProcessVmWritev,
    /// `/proc/<pid>/mem` opened for writing (`open`, `openat`, `openat2`).
    #[serde(rename = "open")]
    ProcMem,
    /// Memory the kernel's ELF loader mapped for a new image.
    #[serde(rename = "execve")]
    Exec,
    /// Any system call through the 32-bit entry (`compatSyscalls: Deny`).
    Compat,
    /// A userfaultfd created.
    Userfaultfd,
}

impl WxSyscall {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Mmap => "mmap",
            Self::Mprotect => "mprotect",
            Self::PkeyMprotect => "pkey_mprotect",
            Self::Personality => "personality",
            Self::Shmat => "shmat",
            Self::Ptrace => "ptrace",
            Self::ProcessVmWritev => "process_vm_writev",
            Self::ProcMem => "open",
            Self::Mmap2 => "mmap2",
            Self::OldMmap => "old_mmap",
            Self::Exec => "execve",
            Self::Compat => "compat",
            Self::Userfaultfd => "userfaultfd",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wx {
    pub syscall: WxSyscall,
    pub prot: u32,
    pub flags: u32,
    pub addr: u64,
    pub len: u64,
    pub fd: i32,
    /// The process runs with `READ_IMPLIES_EXEC`.
    pub read_implies_exec: bool,
    pub write_exec: bool,
    /// An executable mapping of memory another mapping can write (memfd, `/dev/shm`, SysV
    /// shared memory with `SHM_EXEC`).
    pub shared_exec: bool,
    /// A write into another process's memory, or the means to it (`ptrace` attach).
    pub foreign_write: bool,
    /// Requested through the 32-bit system call entry.
    pub compat: bool,
    /// The new image's stack is executable (`syscall` is `Exec`).
    pub exec_stack: bool,
    /// The new image's memory went unjudged (`syscall` is `Exec`): failed closed.
    pub unjudged: bool,
    /// The protection asked for could not be trusted (`syscall` is `OldMmap`): failed
    /// closed.
    pub unverifiable: bool,
    /// `pkey_mprotect`'s key or `personality`'s persona.
    pub extra: u32,
    /// The executable the kernel recorded at the process's exec: names a process that is
    /// gone (killed for the mapping) by the time it is reported.
    pub exe_path: Option<String>,
}

impl Wx {
    pub fn decode(w: &WxEvent) -> Self {
        let reason = |bit: u32| w.reason & bit != 0;
        Self {
            syscall: match w.syscall {
                wx_syscall::MMAP => WxSyscall::Mmap,
                wx_syscall::MPROTECT => WxSyscall::Mprotect,
                wx_syscall::PKEY_MPROTECT => WxSyscall::PkeyMprotect,
                wx_syscall::SHMAT => WxSyscall::Shmat,
                wx_syscall::PTRACE => WxSyscall::Ptrace,
                wx_syscall::PROCESS_VM_WRITEV => WxSyscall::ProcessVmWritev,
                wx_syscall::PROC_MEM => WxSyscall::ProcMem,
                wx_syscall::MMAP2 => WxSyscall::Mmap2,
                wx_syscall::OLD_MMAP => WxSyscall::OldMmap,
                wx_syscall::EXEC => WxSyscall::Exec,
                wx_syscall::COMPAT => WxSyscall::Compat,
                wx_syscall::USERFAULTFD => WxSyscall::Userfaultfd,
                _ => WxSyscall::Personality,
            },
            prot: w.prot,
            flags: w.flags,
            addr: w.addr,
            len: w.len,
            fd: w.fd,
            read_implies_exec: reason(wx_reason::READ_IMPLIES_EXEC),
            write_exec: reason(wx_reason::WRITE_EXEC),
            shared_exec: reason(wx_reason::SHARED_EXEC),
            foreign_write: reason(wx_reason::FOREIGN_WRITE),
            compat: reason(wx_reason::COMPAT),
            exec_stack: reason(wx_reason::EXEC_STACK),
            unjudged: reason(wx_reason::UNJUDGED),
            unverifiable: reason(wx_reason::UNVERIFIABLE),
            exe_path: None,
            extra: w.extra,
        }
    }
}

/// `rwx`-style text for a protection mask.
pub fn prot_text(prot: u32) -> String {
    let flag = |bit: u32, c: char| if prot & bit != 0 { c } else { '-' };
    [flag(1, 'r'), flag(2, 'w'), flag(4, 'x')].iter().collect()
}
