//! The kernel structure and tracepoint field offsets the probes need, found on this kernel.
use std::path::Path;

use agent_common::{KernelOffsets, OFFSET_UNKNOWN, SYSCALL_ARG0_OFFSET, SYSCALL_RET_OFFSET};

use super::{EbpfError, btf::Btf, tracefs::Format};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Offsets of kernel structure members from BTF. A kernel without BTF, or a member this
/// kernel lacks, leaves [`OFFSET_UNKNOWN`]: the probes then report what they cannot read.
pub fn kernel_offsets(btf: Option<&Btf>) -> (KernelOffsets, Vec<String>) {
    let mut missing = Vec::new();
    let mut find = |name: &str, path: &str| -> u32 {
        match btf.and_then(|b| b.offset_of(name, path)) {
            Some(off) => off,
            None => {
                let member = format!("{name}.{path}");
                // Read only where a helper is missing; whether that is so is checked when
                // the fallback is taken (`fallback::Fallbacks::probe`).
                if !super::fallback::FALLBACK_MEMBERS.contains(&member.as_str()) {
                    missing.push(member);
                }
                OFFSET_UNKNOWN
            }
        }
    };
    let offsets = KernelOffsets::find(&mut find);
    (offsets, missing)
}

pub fn load_btf() -> Result<Btf, EbpfError> {
    Btf::from_file(Path::new(VMLINUX_BTF))
}

/// Checks that syscall tracepoints have the record layout the probes assume.
pub fn check_syscall_layout(tracefs: &Path) -> Result<(), EbpfError> {
    let mmap = Format::read(tracefs, "syscalls", "sys_enter_mmap")?;
    let addr = mmap.offset("addr", 8)?;
    if addr as usize != SYSCALL_ARG0_OFFSET {
        return Err(EbpfError::TracepointField {
            tracepoint: mmap.tracepoint,
            field: "addr".into(),
            reason: format!("is at offset {addr}, the probes expect {SYSCALL_ARG0_OFFSET}"),
        });
    }
    let openat = Format::read(tracefs, "syscalls", "sys_exit_openat")?;
    let ret = openat.offset("ret", 8)?;
    if ret as usize != SYSCALL_RET_OFFSET {
        return Err(EbpfError::TracepointField {
            tracepoint: openat.tracepoint,
            field: "ret".into(),
            reason: format!("is at offset {ret}, the probes expect {SYSCALL_RET_OFFSET}"),
        });
    }
    Ok(())
}
