//! The real path of a file: its dentry walked up to the root of its mount, then across
//! mounts up to the mount namespace's root. No `bpf_d_path` in tracepoint programs, so this
//! is done by hand with offsets from BTF.
use agent_common::{Config, KEY_PATH_LEN, PathKeyData};
use aya_ebpf::{cty::c_void, maps::lpm_trie::Key};

pub use crate::state::PathScratch;
use crate::{
    read::{read_kernel, read_kernel_ptr},
    state::WALK_END as END,
};

/// Steps of the walk, mount crossings included; deeper paths are not resolved (flagged).
const MAX_STEPS: usize = 40;

/// A path built by [`real_path`]: `len` bytes at `start`, NUL-terminated.
#[derive(Clone, Copy)]
pub struct Built {
    pub start: usize,
    pub len: usize,
    /// The path crosses a mount an unprivileged user made: it names what that user chose,
    /// not where the file lives, so nothing may be decided on it. Not a `bool`: its niche
    /// would give `Option<Built>` a BTF layout the kernel refuses.
    pub forged_mount: u8,
}

impl Built {
    pub fn ptr(&self, buf: &[u8; 2 * END]) -> *const u8 {
        buf.as_ptr().wrapping_add(self.start & (END - 1))
    }

    pub fn forged(&self) -> bool {
        self.forged_mount != 0
    }
}

/// Writes the real path of `file` into `out`, one component at a time from the end, so
/// that the verifier sees a single bounded offset rather than a list of names.
///
/// The write position goes through memory on every step: reloaded and masked, it is the
/// same unknown-but-bounded value on every path, so the verifier can prune instead of
/// exploring each combination of component lengths.
pub fn real_path(cfg: &Config, file: *const u8, scratch: &mut PathScratch) -> Option<Built> {
    let k = &cfg.kernel;
    let mut dentry = read_kernel_ptr(file, k.file_dentry)?;
    let vfsmount = read_kernel_ptr(file, k.file_vfsmount)?;
    // struct mount embeds struct vfsmount: step back to the outer structure.
    let mut mount = vfsmount.wrapping_sub(k.mount_mnt as usize);
    scratch.path[END - 1] = 0;
    scratch.cursor = (END - 1) as u64;
    // SAFETY: a plain write of our own scratch field.
    unsafe { core::ptr::write_volatile(&mut scratch.forged, 0) };
    let mut complete = false;
    for _ in 0..MAX_STEPS {
        // SAFETY: a plain read of our own scratch field.
        let pos = unsafe { core::ptr::read_volatile(&scratch.cursor) } as usize & (END - 1);
        let mnt_root = read_kernel_ptr(
            mount.wrapping_add(k.mount_mnt as usize),
            k.vfsmount_mnt_root,
        )?;
        let parent = read_kernel_ptr(dentry, k.dentry_parent)?;
        if dentry == mnt_root || dentry == parent {
            let mount_parent = read_kernel_ptr(mount, k.mount_parent)?;
            if !mount_trusted(cfg, mount, mount_parent == mount, mnt_root) {
                // SAFETY: a plain write of our own scratch field.
                unsafe { core::ptr::write_volatile(&mut scratch.forged, 1) };
            }
            if mount_parent == mount {
                complete = true;
                break;
            }
            dentry = read_kernel_ptr(mount, k.mount_mountpoint)?;
            mount = mount_parent;
            continue;
        }
        let name = read_kernel_ptr(dentry, k.dentry_name)?;
        // struct qstr { u32 hash; u32 len; const char *name; }: len sits 4 bytes into it,
        // and the name pointer 8.
        let len = read_kernel::<u32>(dentry, k.dentry_name.wrapping_sub(4))? as usize;
        if len + 1 > pos {
            return None;
        }
        let pos = (pos - len) & (END - 1);
        let dst = scratch.path.as_mut_ptr().wrapping_add(pos);
        // SAFETY: dst + len stays inside `out` (pos < END, len < END); the helper checks
        // the source address.
        let rc = unsafe {
            aya_ebpf::helpers::generated::bpf_probe_read_kernel(
                dst as *mut c_void,
                (len & (END - 1)) as u32,
                name as *const c_void,
            )
        };
        if rc != 0 {
            return None;
        }
        let pos = (pos.wrapping_sub(1)) & (END - 1);
        scratch.path[pos] = b'/';
        // SAFETY: a plain write of our own scratch field.
        unsafe { core::ptr::write_volatile(&mut scratch.cursor, pos as u64) };
        dentry = parent;
    }
    if !complete {
        return None;
    }
    // SAFETY: as above.
    let mut pos = unsafe { core::ptr::read_volatile(&scratch.cursor) } as usize & (END - 1);
    if pos == END - 1 {
        pos = END - 2;
        scratch.path[pos] = b'/';
    }
    Some(Built {
        start: pos,
        len: END - 1 - pos,
        // SAFETY: a plain read of our own scratch field.
        forged_mount: u8::from(unsafe { core::ptr::read_volatile(&scratch.forged) } != 0),
    })
}

/// `MNT_LOCKED`: a mount copied into a less privileged mount namespace, which that
/// namespace's user cannot take away.
const MNT_LOCKED: i32 = 0x80_0000;

/// Whether a mount crossed by a walk shows the file where the system put it. A mount in a
/// namespace of the initial user namespace was made with real privilege; a locked mount is a
/// copy of one made elsewhere (what `unshare -Urm` inherits); the root of a namespace that
/// shows, from its root, a whole file system mounted with real privilege adds no name of its
/// own. Anything else (a bind
/// mount, a detached mount, a file system mounted over a path, a new root made with
/// `pivot_root`) was made by an unprivileged user in a user namespace of its own, who chose
/// the names it shows.
///
/// Not inlined: its branches then end in one return value instead of multiplying the states
/// the verifier explores at every step of the walk.
#[inline(never)]
fn mount_trusted(cfg: &Config, mount: *const u8, ns_root: bool, mnt_root: *const u8) -> bool {
    let k = &cfg.kernel;
    if k.user_ns_level == agent_common::OFFSET_UNKNOWN
        || k.vfsmount_flags == agent_common::OFFSET_UNKNOWN
    {
        // `vigil doctor` names the missing members; without them no mount can be told.
        return true;
    }
    let vfsmount = mount.wrapping_add(k.mount_mnt as usize);
    if read_kernel::<i32>(vfsmount, k.vfsmount_flags).is_some_and(|f| f & MNT_LOCKED != 0) {
        return true;
    }
    let level = read_kernel_ptr(mount, k.mount_mnt_ns)
        .and_then(|ns| read_kernel_ptr(ns, k.mnt_ns_user_ns))
        .and_then(|user_ns| read_kernel::<i32>(user_ns, k.user_ns_level));
    match level {
        Some(0) => true,
        Some(_) if ns_root => {
            let Some(sb) = read_kernel_ptr(vfsmount, k.vfsmount_sb) else {
                return false;
            };
            let whole = read_kernel_ptr(sb, k.sb_root) == Some(mnt_root);
            let mounted_with_privilege = read_kernel_ptr(sb, k.sb_user_ns)
                .and_then(|user_ns| read_kernel::<i32>(user_ns, k.user_ns_level))
                == Some(0);
            whole && mounted_with_privilege
        }
        _ => false,
    }
}

/// Fills `key` for the lookup of `path` (NUL-terminated, `len` bytes) in `set`: an exact
/// key (the path and its NUL) when it fits, else its first `KEY_PATH_LEN` bytes as a prefix
/// key. Rules the kernel holds are shorter than that, so for a longer path only a directory
/// prefix can match, and the longest one that does decides exactly as for a short path.
/// Returns false when the path cannot be read.
pub fn path_key(key: &mut Key<PathKeyData>, set: u32, path: *const u8, len: usize) -> bool {
    let mut data = [0u8; 4];
    data.copy_from_slice(&set.to_be_bytes());
    key.data[..4].copy_from_slice(&data);
    let dst = key.data.as_mut_ptr().wrapping_add(4);
    // SAFETY: dst has KEY_PATH_LEN bytes of room; the source is a kernel or map buffer of at
    // least that size.
    let copied = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            dst as *mut c_void,
            KEY_PATH_LEN as u32,
            path as *const c_void,
        )
    };
    if copied != 0 {
        return false;
    }
    key.prefix_len = if len < KEY_PATH_LEN {
        // The terminating NUL is part of an exact key, so a prefix entry cannot equal it.
        ((4 + len + 1) * 8) as u32
    } else {
        ((4 + KEY_PATH_LEN) * 8) as u32
    };
    true
}
