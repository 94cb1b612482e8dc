//! Drift: whether a file about to run, or to be mapped executable, came with the container's
//! image. Decided on the kernel's file object, never on a name the process chose: a file of
//! an overlay is drift when the overlay has an upper (writable-layer) dentry for it, i.e. it
//! was created or copied up by a change after the container started; a file of any other file
//! system is drift when its mount is writable (an emptyDir, a tmpfs, a hostPath, a memfd's
//! kernel mount) or was made read-only by an unprivileged user in a user namespace of its own.
//! What cannot be read is drift (fail closed).
use agent_common::{
    Config, FileOrigin, PolicySet, VouchKey, action, exec_flags, pending_kill, set_flags,
};
use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_send_signal};

use crate::maps::{KILLS_RECORDED, PENDING_KILLS, VOUCHED};

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

/// [`origin_of`] and the inode's change time: the identity content is vouched for by. Apart
/// from `origin_of`, whose callers on the exec's LSM hook are at the verifier's limit on 5.10.
#[inline(never)]
pub fn identity_of(cfg: &Config, file: *const u8, origin: &mut FileOrigin) {
    origin_of(cfg, file, origin);
    let k = &cfg.kernel;
    let Some(inode) = read_kernel_ptr(file, k.file_inode) else {
        origin.change = 0;
        return;
    };
    // Nanoseconds are below 2^30; 6.13 and later keep a flag in the top bit of theirs
    // (multigrain timestamps: the time was queried), which is no part of the time.
    origin.change = match (
        read_kernel::<i64>(inode, k.inode_ctime_sec),
        read_kernel::<u32>(inode, k.inode_ctime_nsec),
    ) {
        (Some(sec), Some(nsec)) => ((sec as u64) << 30) | u64::from(nsec & 0x3fff_ffff),
        _ => 0,
    };
}

/// An executable outside the image, in set `set` whose `exec.allow` vouches for files by
/// content (`set_flags::EXEC_DIGESTS`): not drift if its identity (device, inode, change
/// time) is in the vouched cache; otherwise left to user space to decide on its content
/// (`DIGEST_PENDING`, and `HELD` under an action that refuses). `rules`: the set's flags and
/// exec action ([`content_rules`]), one register for both. Its identity is left in
/// `origin`; an identity that cannot be read stays drift (fail closed). Works on the drift
/// bits in `drift` (map memory, which the verifier does not follow).
#[inline(never)]
pub fn by_content(
    cfg: &Config,
    set: u32,
    rules: u64,
    file: *const u8,
    scratch: &mut crate::state::PathScratch,
) {
    let (flags, exec_action) = ((rules >> 32) as u32, rules as u32);
    if flags & set_flags::EXEC_DIGESTS == 0
        || scratch.drift & u64::from(exec_flags::DRIFT) == 0
        || file.is_null()
    {
        return;
    }
    identity_of(cfg, file, &mut scratch.origin);
    let origin = scratch.origin;
    if origin.ino == 0 || origin.change == 0 {
        return;
    }
    let key = VouchKey {
        set,
        dev: origin.dev,
        ino: origin.ino,
        change: origin.change,
    };
    let cleared = scratch.drift & !u64::from(exec_flags::DRIFT);
    // SAFETY: only checked for presence.
    if unsafe { VOUCHED.get(key) }.is_some() {
        scratch.drift = cleared | u64::from(exec_flags::VOUCHED);
        return;
    }
    let held = if action::refuses(exec_action as u16) {
        exec_flags::HELD
    } else {
        0
    };
    scratch.drift = cleared | u64::from(exec_flags::DIGEST_PENDING | held);
}

/// `SIGSTOP`.
const SIGSTOP: u32 = 19;

/// Holds the current process, whose new image `by_content` left `HELD`: stopped before its
/// first instruction, and recorded so that a system call it makes before user space releases
/// it (someone sent it `SIGCONT`) kills it. Where either cannot be done it is killed now
/// (fail closed).
#[inline(never)]
pub fn hold(scratch: &crate::state::PathScratch) {
    if scratch.drift & u64::from(exec_flags::HELD) == 0 {
        return;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // Recorded before the flag is raised, as a pending kill is (`kill.rs`).
    let recorded = PENDING_KILLS
        .insert(tgid, pending_kill::HELD_AT_EXEC, 0)
        .is_ok();
    if let Some(flag) = KILLS_RECORDED.get_ptr_mut(0) {
        // SAFETY: a live map value; a flag that only goes from 0 to 1.
        unsafe { *flag = 1 };
    }
    // SAFETY: signals the current process only.
    if !recorded || unsafe { bpf_send_signal(SIGSTOP) } != 0 {
        crate::policy::send_sigkill();
    }
}

/// A set's flags and exec action for [`by_content`]: passed by value, as a pointer to the
/// caller's copy of the set would keep the whole copy on its frame.
#[inline(always)]
pub fn content_rules(ps: &PolicySet) -> u64 {
    (u64::from(ps.flags) << 32) | u64::from(ps.exec_action)
}
