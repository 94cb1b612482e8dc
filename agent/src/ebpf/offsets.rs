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
        let found = match (name, path) {
            ("ovl_inode", _) => btf.and_then(|b| overlay_upper_from_inode(b, path)),
            ("inode", "i_ctime_sec" | "i_ctime_nsec") => {
                btf.and_then(|b| change_time(b, path == "i_ctime_nsec"))
            }
            _ => btf.and_then(|b| b.offset_of(name, path)),
        };
        match found {
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

/// From an overlay inode's `vfs_inode` to its `member` (`__upperdentry`). Where overlayfs is
/// built in, `struct ovl_inode` is in vmlinux's BTF; where it is a module, whose BTF is split
/// from vmlinux's, the member's place is the one every kernel from 4.13 to 7.3 gives it:
/// right after `vfs_inode`, i.e. `sizeof(struct inode)` from it (both are pointer-aligned).
fn overlay_upper_from_inode(btf: &Btf, member: &str) -> Option<u32> {
    match (
        btf.offset_of("ovl_inode", member),
        btf.offset_of("ovl_inode", "vfs_inode"),
    ) {
        (Some(upper), Some(inode)) if upper > inode => Some(upper - inode),
        _ => btf.size_of("inode"),
    }
}

/// The inode's change time, seconds or nanoseconds: two members from 6.11
/// (`i_ctime_sec`, `i_ctime_nsec`), a `timespec64` before (`__i_ctime` from 6.6, `i_ctime`).
fn change_time(btf: &Btf, nanoseconds: bool) -> Option<u32> {
    let (member, field) = if nanoseconds {
        ("i_ctime_nsec", "tv_nsec")
    } else {
        ("i_ctime_sec", "tv_sec")
    };
    btf.offset_of("inode", member)
        .or_else(|| btf.offset_of("inode", &format!("__i_ctime.{field}")))
        .or_else(|| btf.offset_of("inode", &format!("i_ctime.{field}")))
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
