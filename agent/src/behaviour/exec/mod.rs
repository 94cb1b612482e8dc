//! exec: a program run (`sched_process_exec`), a file mapped executable, or the script an
//! interpreter opened (`agent-ebpf/src/exec.rs`, `mapped.rs`, `script.rs`).
pub mod compile;
mod data;
pub mod decide;

use agent_common::{ExecEvent, FileOrigin, exec_flags};

pub use data::{ExecData, ExecMember, OriginData};

use crate::event::{c_string, split_args};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    /// The path as the kernel recorded it for the exec (`bprm->filename`).
    pub path: String,
    /// The executable's real path (symlinks resolved; a script's interpreter), as seen from
    /// the process's mount namespace; `None` when it could not be walked.
    pub exe_path: Option<String>,
    /// The executable's file name on its file system (e.g. `memfd:payload`).
    pub exe_name: String,
    /// `path` is a script run by the interpreter at `exe_path`.
    pub script: bool,
    /// A policy applies but the kernel could not decide (e.g. a path too long for its maps).
    pub undecided: bool,
    /// The kernel could not resolve the executable's real path and failed closed.
    pub unverifiable: bool,
    /// A file mapped executable by a running process (loader, `dlopen`, `LD_PRELOAD`), not
    /// an exec: `path` is that file.
    pub mapped: bool,
    /// The script of an earlier exec as its interpreter opened it, not an exec: `path` is
    /// the opened file's real path.
    pub opened: bool,
    /// A level the kernel hands on to an interpreter, decided before it ran (BPF LSM): `path`
    /// is that file's real path, the process the caller.
    pub interpreted: bool,
    /// The real path crosses a mount an unprivileged user made in a user namespace of its
    /// own: the path is that user's choice (and so unverifiable).
    pub user_mount: bool,
    /// Not run: refused before it started (BPF LSM); `path` is the refused file's real path
    /// and the process is the caller, still running its own executable.
    pub prevented: bool,
    /// Ran without its exec's own judgement (the kernel skipped the exec programs); failed
    /// closed on its way back to user space. `path` is the new image's executable.
    pub unjudged: bool,
    /// The file did not come with the container's image, and why the kernel says so.
    pub drift: Option<Drift>,
    /// The policy set that applies, when `undecided`.
    pub undecided_set: Option<u32>,
    /// An executable outside the image whose set vouches for files by content: left to
    /// user space to hash and decide (`pipeline::content`).
    pub content: Option<ContentCheck>,
    /// Not drift because its identity was in the cache of files whose content a `sha256`
    /// entry vouched for (identified by content, earlier).
    pub vouched: bool,
    /// The file's SHA-256 digest, when user space hashed it (lowercase hexadecimal).
    pub sha256: Option<String>,
    /// Shared with the process cache and the event: read from the record once, copied never.
    pub args: crate::cloudevents::shared::Shared<[String]>,
    pub memfd: bool,
    pub deleted: bool,
    pub args_truncated: bool,
    pub args_missing: bool,
}

impl Exec {
    /// A plain exec of `path`, as the kernel reports one: the path is its own real path, the
    /// file's name its last component, no flags set. For tools and tests that build events.
    pub fn plain(path: &str, args: Vec<String>) -> Self {
        Self {
            path: path.into(),
            exe_path: Some(path.into()),
            exe_name: path.rsplit('/').next().unwrap_or(path).into(),
            script: false,
            undecided: false,
            unverifiable: false,
            mapped: false,
            opened: false,
            interpreted: false,
            user_mount: false,
            prevented: false,
            unjudged: false,
            drift: None,
            undecided_set: None,
            content: None,
            vouched: false,
            sha256: None,
            args: args.into(),
            memfd: false,
            deleted: false,
            args_truncated: false,
            args_missing: false,
        }
    }

    pub fn decode(e: &ExecEvent) -> Self {
        let flag = |bit: u32| e.flags & bit != 0;
        Self {
            path: c_string(&e.path),
            exe_path: Some(c_string(&e.exe_path))
                .filter(|p| p.starts_with('/') && !flag(exec_flags::EXE_PATH_TRUNCATED)),
            exe_name: c_string(&e.exe_name),
            script: flag(exec_flags::SCRIPT),
            undecided: flag(exec_flags::UNDECIDED),
            unverifiable: flag(exec_flags::UNVERIFIABLE),
            mapped: flag(exec_flags::MAPPED),
            opened: flag(exec_flags::OPENED),
            interpreted: flag(exec_flags::LEVEL),
            user_mount: flag(exec_flags::USER_MOUNT),
            prevented: flag(exec_flags::PREVENTED),
            unjudged: flag(exec_flags::UNJUDGED),
            drift: Drift::decode(e),
            undecided_set: flag(exec_flags::UNDECIDED)
                .then(|| agent_common::rule_id::set(e.header.rule)),
            content: flag(exec_flags::DIGEST_PENDING).then(|| ContentCheck {
                set: agent_common::rule_id::set(e.header.rule),
                held: flag(exec_flags::HELD),
                drift: Drift {
                    why: DriftWhy::of(e.flags),
                    origin: e.origin,
                },
            }),
            vouched: flag(exec_flags::VOUCHED),
            sha256: None,
            args: split_args(&e.args, e.args_len, e.argc).into(),
            memfd: flag(exec_flags::MEMFD),
            deleted: flag(exec_flags::DELETED),
            args_truncated: flag(exec_flags::ARGS_TRUNCATED),
            args_missing: flag(exec_flags::ARGS_MISSING),
        }
    }
}

/// Drift, as the kernel decided it on the file itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drift {
    pub why: DriftWhy,
    pub origin: FileOrigin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriftWhy {
    /// In the overlay's upper layer: created or changed after the container started.
    UpperLayer,
    /// On a writable mount other than the image's overlay.
    WritableMount,
    /// Where the file lives could not be read; decided as drift.
    Unknown,
}

impl Drift {
    fn decode(e: &ExecEvent) -> Option<Self> {
        if e.flags & exec_flags::DRIFT == 0 {
            return None;
        }
        Some(Self {
            why: DriftWhy::of(e.flags),
            origin: e.origin,
        })
    }
}

impl DriftWhy {
    /// The reason among a record's flags.
    fn of(flags: u32) -> Self {
        if flags & exec_flags::UPPER_LAYER != 0 {
            Self::UpperLayer
        } else if flags & exec_flags::WRITABLE_MOUNT != 0 {
            Self::WritableMount
        } else {
            Self::Unknown
        }
    }
}

/// An executable outside the image, in a set with `sha256` entries, that the kernel did not
/// find in its cache of vouched files: drift unless its content matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentCheck {
    /// The policy set that decides it.
    pub set: u32,
    /// The kernel stopped the process until user space decides (an action that refuses).
    pub held: bool,
    /// Where the file lives, and why it is outside the image: the drift it is, should its
    /// content not match.
    pub drift: Drift,
}

/// The name of the file system with super block magic `magic`, as `/proc/filesystems` names
/// it; unknown ones as the hexadecimal magic.
pub fn filesystem_name(magic: u32) -> String {
    let name = match magic {
        0x794c_7630 => "overlay",
        0x0102_1994 => "tmpfs",
        0xef53 => "ext4",
        0x5846_5342 => "xfs",
        0x9123_683e => "btrfs",
        0x8584_58f6 => "ramfs",
        0x9584_58f6 => "hugetlbfs",
        0x6969 => "nfs",
        0x6573_5546 => "fuse",
        0x7371_7368 => "squashfs",
        0xe0f5_e1e2 => "erofs",
        0x2fc1_2fc1 => "zfs",
        0x0102_1997 => "9p",
        _ => return format!("{magic:#x}"),
    };
    name.into()
}

/// A kernel `dev_t` (major << 20 | minor) as `/proc/self/mountinfo` writes it.
pub fn device_name(dev: u32) -> String {
    format!("{}:{}", dev >> 20, dev & 0xf_ffff)
}
