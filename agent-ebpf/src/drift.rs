//! Drift: whether a file about to run, or to be mapped executable, came with the container's
//! image. Decided on the kernel's file object, never on a name the process chose: a file of
//! an overlay is drift when the overlay has an upper (writable-layer) dentry for it, i.e. it
//! was created or copied up by a change after the container started; a file of any other file
//! system is drift when its mount is writable (an emptyDir, a tmpfs, a hostPath, a memfd's
//! kernel mount) or was made read-only by an unprivileged user in a user namespace of its own.
//! What cannot be read is drift (fail closed).
use agent_common::{Config, FileOrigin, exec_flags};

use crate::task::{read_kernel, read_kernel_ptr};

const OVERLAYFS_SUPER_MAGIC: u64 = 0x794c_7630;
/// `vfsmount.mnt_flags`: this mount is read-only (a read-only bind of a writable file system).
const MNT_READONLY: i32 = 0x40;
/// `super_block.s_flags`: the whole file system is read-only.
const SB_RDONLY: u64 = 1;
/// `vfsmount.mnt_flags`: a mount copied into a less privileged mount namespace.
const MNT_LOCKED: i32 = 0x80_0000;
/// The lowest `ERR_PTR` (`-MAX_ERRNO`).
const MAX_ERRNO_PTR: u64 = 0u64.wrapping_sub(4095);

/// The drift bits of [`exec_flags`] for `file`: 0 when it came with the image (a privileged
/// overlay's lower layers) or sits on a read-only mount made with privilege of a file system
/// mounted with privilege; else `DRIFT` with the reason. A function of
/// its own: its reads stay off the frames of the callers whose path walks fill the stack.
#[inline(never)]
pub fn of_file(cfg: &Config, file: *const u8) -> u32 {
    let k = &cfg.kernel;
    let Some(inode) = read_kernel_ptr(file, k.file_inode) else {
        return exec_flags::DRIFT | exec_flags::ORIGIN_UNKNOWN;
    };
    let Some(sb) = read_kernel_ptr(inode, k.inode_sb) else {
        return exec_flags::DRIFT | exec_flags::ORIGIN_UNKNOWN;
    };
    let Some(magic) = read_kernel::<u64>(sb, k.sb_magic) else {
        return exec_flags::DRIFT | exec_flags::ORIGIN_UNKNOWN;
    };
    // A file system an unprivileged user mounted in a user namespace of its own (an overlay
    // whose lower layer it filled, a tmpfs) holds what that user put there.
    let by_privilege = read_kernel_ptr(sb, k.sb_user_ns)
        .and_then(|user_ns| read_kernel::<i32>(user_ns, k.user_ns_level))
        == Some(0);
    if magic == OVERLAYFS_SUPER_MAGIC {
        if !by_privilege {
            return exec_flags::DRIFT | exec_flags::WRITABLE_MOUNT;
        }
        // The overlay's inode sits in an `ovl_inode`; the offset is from the inode.
        return match read_kernel::<u64>(inode, k.ovl_inode_upper) {
            Some(0) => 0,
            Some(_) => exec_flags::DRIFT | exec_flags::UPPER_LAYER,
            None => exec_flags::DRIFT | exec_flags::ORIGIN_UNKNOWN,
        };
    }
    let Some(mnt) = read_kernel_ptr(file, k.file_vfsmount) else {
        return exec_flags::DRIFT | exec_flags::ORIGIN_UNKNOWN;
    };
    let mnt_flags = read_kernel::<i32>(mnt, k.vfsmount_flags);
    let sb_flags = read_kernel::<u64>(sb, k.sb_flags);
    match (mnt_flags, sb_flags) {
        (Some(m), Some(s))
            if (m & MNT_READONLY != 0 || s & SB_RDONLY != 0)
                && by_privilege
                && (m & MNT_LOCKED != 0 || privileged_mount(cfg, mnt)) =>
        {
            0
        }
        (Some(_), Some(_)) => exec_flags::DRIFT | exec_flags::WRITABLE_MOUNT,
        _ => exec_flags::DRIFT | exec_flags::ORIGIN_UNKNOWN,
    }
}

/// Whether mount `mnt` (a `vfsmount`) was made with real privilege: by the kernel itself
/// (no namespace, or the marker of its internal mounts, `MNT_NS_INTERNAL`: the private
/// mounts of an overlay's layers, whose lower ones it makes read-only, and which are what an
/// overlay file's mapping holds), or in a mount namespace of the initial user namespace (the
/// orchestrator's volumes). A read-only mount an unprivileged user made in a user namespace of
/// its own (`unshare -Urm`, then a read-only bind of a file it wrote) vouches for nothing:
/// its files stay drift. Copies of privileged mounts in such a namespace are locked and pass
/// before this is asked.
#[inline(always)]
fn privileged_mount(cfg: &Config, mnt: *const u8) -> bool {
    let k = &cfg.kernel;
    let mount = mnt.wrapping_sub(k.mount_mnt as usize);
    let Some(ns) = read_kernel::<u64>(mount, k.mount_mnt_ns) else {
        return false;
    };
    // `ERR_PTR` values: the top 4,095 addresses.
    if ns == 0 || ns >= MAX_ERRNO_PTR {
        return true;
    }
    read_kernel_ptr(ns as *const u8, k.mnt_ns_user_ns)
        .and_then(|user_ns| read_kernel::<i32>(user_ns, k.user_ns_level))
        == Some(0)
}

/// [`of_file`] for a file that may be missing (null): where no file was found, where it
/// lives is unknown, which is drift.
#[inline(always)]
pub fn of(cfg: &Config, file: *const u8) -> u32 {
    if file.is_null() {
        return exec_flags::DRIFT | exec_flags::ORIGIN_UNKNOWN;
    }
    of_file(cfg, file)
}

/// Where `file` lives: its file system, device and inode (zero what cannot be read).
#[inline(never)]
pub fn origin_of(cfg: &Config, file: *const u8, origin: &mut FileOrigin) {
    let k = &cfg.kernel;
    let inode = read_kernel_ptr(file, k.file_inode);
    let sb = inode.and_then(|inode| read_kernel_ptr(inode, k.inode_sb));
    origin.ino = inode
        .and_then(|inode| read_kernel::<u64>(inode, k.inode_ino))
        .unwrap_or(0);
    origin.fs_magic = sb
        .and_then(|sb| read_kernel::<u64>(sb, k.sb_magic))
        .unwrap_or(0) as u32;
    origin.dev = sb
        .and_then(|sb| read_kernel::<u32>(sb, k.sb_dev))
        .unwrap_or(0);
}
