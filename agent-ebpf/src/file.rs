//! Facts about a file the kernel holds: which descriptor of the current task it is, and
//! whether it lives on a kernel-internal mount.
use agent_common::Config;

use crate::task::{current_task, read_kernel, read_kernel_ptr};

/// `SB_KERNMOUNT`: the super block of a kernel-internal mount.
const SB_KERNMOUNT: u64 = 1 << 22;

/// Whether `file` lives on a kernel-internal mount (memfd, hugetlbfs memfd, pipes, sockets,
/// anonymous inodes): a file no path leads to.
pub fn anonymous_file(cfg: &Config, file: *const u8) -> bool {
    super_block_field(cfg, file, cfg.kernel.sb_flags).is_some_and(|flags| flags & SB_KERNMOUNT != 0)
}

/// A `u64` member (`s_flags`, `s_magic`) of the super block `file` lives on.
pub fn super_block_field(cfg: &Config, file: *const u8, offset: u32) -> Option<u64> {
    let k = &cfg.kernel;
    read_kernel_ptr(file, k.file_vfsmount)
        .and_then(|mnt| read_kernel_ptr(mnt, k.vfsmount_sb))
        .and_then(|sb| read_kernel::<u64>(sb, offset))
}

/// The file behind descriptor `fd` of the current task. Inlined: as a function of its own,
/// 6.1's verifier refuses the call (it takes the pointer to its result as an argument, which
/// that kernel does not allow a global function).
#[inline(always)]
pub fn task_fd_file(cfg: &Config, fd: u32) -> Option<*const u8> {
    let k = &cfg.kernel;
    let files = read_kernel_ptr(current_task(), k.task_files)?;
    let fdt = read_kernel_ptr(files, k.files_fdt)?;
    let max_fds: u32 = read_kernel(fdt, k.fdtable_max_fds)?;
    if fd >= max_fds {
        return None;
    }
    let fd_array = read_kernel_ptr(fdt, k.fdtable_fd)?;
    let file: *const u8 = read_kernel(fd_array, fd.wrapping_mul(8))?;
    (!file.is_null()).then_some(file)
}

const TMPFS_MAGIC: u64 = 0x0102_1994;

/// Whether `file` lives on a tmpfs (where `/dev/shm` is).
pub fn tmpfs_file(cfg: &Config, file: *const u8) -> bool {
    super_block_field(cfg, file, cfg.kernel.sb_magic) == Some(TMPFS_MAGIC)
}
