//! `data.exec` of a `dev.vigil.exec.v1` CloudEvent, and its readable line.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DriftWhy, Exec, device_name, filesystem_name};
use crate::cloudevents::{
    schema::{is_false, only_true},
    shared::Shared,
};

/// dev.vigil.exec.v1: a program was executed (successful execve/execveat).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields, rename = "exec")]
pub struct ExecData {
    /// The path passed to exec, as the kernel recorded it (may be relative, or `/dev/fd/<n>`
    /// for fexecve).
    pub path: String,
    /// File name of the executed file on its file system (the kernel's name for it, e.g.
    /// `memfd:payload` for an anonymous memory file).
    pub exe_name: String,
    /// The new program's arguments, argv[0] first (possibly truncated, see `argsTruncated`).
    pub args: Shared<[String]>,
    /// The executed file, its interpreter, or a script run from a descriptor lives on a
    /// kernel-internal file system (memfd_create and other anonymous files): fileless
    /// execution. Told by the file system, never by the name.
    pub memfd: bool,
    /// `path` is a script; `process.exe` is the interpreter that runs it.
    pub script: bool,
    /// The executed file had been deleted from its file system.
    pub deleted: bool,
    /// The arguments were longer than the kernel probe copies; `args` holds only the first
    /// ones.
    pub args_truncated: bool,
    /// The kernel probe could not read the arguments; `args` is empty or incomplete.
    pub args_missing: bool,
    /// Only on violations, present only when true: a policy applies but the kernel could not
    /// decide (an executable whose real path it cannot resolve, under an Alert deny list);
    /// user space decided, and can only alert.
    #[serde(default, skip_serializing_if = "is_false")]
    #[schemars(schema_with = "only_true")]
    pub undecided: bool,
    /// Only on violations, present only when true: the executable's real path could not be
    /// resolved in the kernel (deeper or longer than its walk goes), so the kernel decided
    /// without it and failed closed: not on any allowlist, killed under a Kill deny list.
    #[serde(default, skip_serializing_if = "is_false")]
    #[schemars(schema_with = "only_true")]
    pub unverifiable: bool,
    /// Only on violations, present only when true: not an exec but a file mapped executable
    /// (mmap with PROT_EXEC) by a running process: the dynamic loader run on a program,
    /// dlopen, LD_PRELOAD. `path` is that file's real path; `process` is the process that
    /// mapped it.
    #[serde(default, skip_serializing_if = "is_false")]
    #[schemars(schema_with = "only_true")]
    pub mapped: bool,
    /// Only on violations, present only when true: not an exec but the script of an earlier
    /// exec, decided on the file its interpreter opened under the name the script was run by
    /// (relative, `..`, `/dev/fd/N/name` and symlinked names alike). `path` is that file's
    /// real path; `process.exe` is the interpreter.
    #[serde(default, skip_serializing_if = "is_false")]
    #[schemars(schema_with = "only_true")]
    pub opened: bool,
    /// Only on violations, present only when true: a level of the exec that the kernel hands
    /// on to an interpreter (a script, an interpreter script between, a file `binfmt_misc`
    /// runs), decided on that file as the kernel picked it, before it ran (BPF LSM). `path`
    /// is that file's real path; `process.exe` the caller's executable. Unless `prevented`,
    /// the exec went on with the interpreter.
    #[serde(default, skip_serializing_if = "is_false")]
    #[schemars(schema_with = "only_true")]
    pub interpreted: bool,
    /// Only on violations, present only when true: the real path crosses a mount an
    /// unprivileged user made in a user namespace of its own (a bind mount, a detached mount,
    /// a file system mounted over a path, a root made with pivot_root). The path names what
    /// that user chose, not where the file lives, so it is unverifiable (and `unverifiable`
    /// is true).
    #[serde(default, skip_serializing_if = "is_false")]
    #[schemars(schema_with = "only_true")]
    pub user_mount: bool,
    /// Only on violations, present only when true: the exec did not happen. The kernel
    /// refused it before the file ran (BPF LSM): the caller's execve failed with EPERM and
    /// `process` is the caller, still running its own program. `path` is the refused file's
    /// real path (for a script, the level refused: the script or one of its interpreters).
    #[serde(default, skip_serializing_if = "is_false")]
    #[schemars(schema_with = "only_true")]
    pub prevented: bool,
    /// Only on violations, present only when true: the program ran without its exec's own
    /// judgement. The kernel skips a tracing program while another run of it is preempted on
    /// the same CPU, and both programs that judge an exec were skipped; the check on the
    /// exec's way back to user space failed it closed (killed under Kill, before its first
    /// instruction). What was run cannot be known any more, so `path` is the new image's
    /// executable (for a script, its interpreter) and `unverifiable` is true.
    #[serde(default, skip_serializing_if = "is_false")]
    #[schemars(schema_with = "only_true")]
    pub unjudged: bool,
    /// Present only when true: drift. The file decided (`process.exe` for an exec, `path`
    /// when `mapped`, `opened` or `interpreted`) did not come with the container's image:
    /// it was created or changed in the container after it started, or lives on a writable
    /// volume. Decided in the kernel on the file itself, whatever its path; `origin` says
    /// where it lives.
    #[serde(default, skip_serializing_if = "is_false")]
    #[schemars(schema_with = "only_true")]
    pub drift: bool,
    /// Present with `drift`: where the file lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<OriginData>,
    /// Present when the file was identified by its content: the SHA-256 digest (lowercase
    /// hexadecimal) the agent computed of an executable outside the image, in a pod whose
    /// policy vouches for content with `exec.allow` `sha256` entries. With `drift`, it
    /// matched none of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub sha256: Option<String>,
    /// Present only when true: the executable is outside the image but not drift, as its
    /// content matched a `sha256` entry when the agent hashed this same file (device,
    /// inode, change time) before; reported here for another rule.
    #[serde(default, skip_serializing_if = "is_false")]
    #[schemars(schema_with = "only_true")]
    pub vouched: bool,
}

/// Where a drifted file lives, as the kernel has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct OriginData {
    /// `upperLayer`: the container's writable overlay layer (created, or copied up by a
    /// change, after the container started); `writableMount`: a writable mount other than
    /// the image's overlay (an emptyDir, a tmpfs, a hostPath), a read-only one an
    /// unprivileged user made in a user namespace of its own, or a file system such a user
    /// mounted (an overlay whose lower layer it filled); `unknown`: the kernel could
    /// not read where the file lives, and decided it as drift (fail closed).
    pub layer: OriginLayer,
    /// The file system, e.g. `overlay`, `tmpfs`, `ext4` (unknown ones as their magic number).
    pub filesystem: String,
    /// The file system's device, `major:minor` as in `/proc/<pid>/mountinfo`.
    pub device: String,
    /// The file's inode number on that device.
    pub inode: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OriginLayer {
    UpperLayer,
    WritableMount,
    Unknown,
}

impl OriginData {
    /// What the origin says to a reader.
    pub fn words(&self) -> String {
        match self.layer {
            OriginLayer::UpperLayer => format!(
                "drift: written into the container after it started ({} {}, inode {})",
                self.filesystem, self.device, self.inode
            ),
            OriginLayer::WritableMount => format!(
                "drift: not from the image, on a writable {} mount ({}, inode {})",
                self.filesystem, self.device, self.inode
            ),
            OriginLayer::Unknown => "drift: where the file lives could not be read".into(),
        }
    }
}

/// The member an exec event adds to the shared data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ExecMember {
    pub exec: ExecData,
}

impl From<&Exec> for ExecData {
    fn from(e: &Exec) -> Self {
        Self {
            path: e.path.clone(),
            exe_name: e.exe_name.clone(),
            args: e.args.clone(),
            memfd: e.memfd,
            script: e.script,
            deleted: e.deleted,
            args_truncated: e.args_truncated,
            args_missing: e.args_missing,
            undecided: e.undecided,
            unverifiable: e.unverifiable,
            mapped: e.mapped,
            opened: e.opened,
            interpreted: e.interpreted,
            user_mount: e.user_mount,
            prevented: e.prevented,
            unjudged: e.unjudged,
            drift: e.drift.is_some(),
            origin: e.drift.map(|d| OriginData {
                layer: match d.why {
                    DriftWhy::UpperLayer => OriginLayer::UpperLayer,
                    DriftWhy::WritableMount => OriginLayer::WritableMount,
                    DriftWhy::Unknown => OriginLayer::Unknown,
                },
                filesystem: filesystem_name(d.origin.fs_magic),
                device: device_name(d.origin.dev),
                inode: d.origin.ino,
            }),
            sha256: e.sha256.clone(),
            vouched: e.vouched,
        }
    }
}

impl ExecData {
    /// `/usr/bin/curl curl -s x [memfd, deleted]`
    pub fn line(&self) -> String {
        let drift = self.origin.as_ref().map(OriginData::words);
        let content = match (&self.sha256, self.drift) {
            (Some(d), true) => Some(format!("content sha256 {d} matches no sha256 entry")),
            (Some(d), false) => Some(format!("content sha256 {d} vouched for")),
            (None, _) => None,
        };
        let mut marks: Vec<&str> = drift.as_deref().into_iter().collect();
        marks.extend(content.as_deref());
        if self.vouched {
            marks.push("outside the image, vouched for by its content");
        }
        marks.extend(
            [
                (self.prevented, "refused before it ran"),
                (self.unjudged, "ran unjudged: its exec probes were skipped"),
                (self.memfd, "memfd"),
                (self.mapped, "mapped executable, not exec'd"),
                (self.opened, "script as its interpreter opened it"),
                (
                    self.interpreted,
                    "script, judged before its interpreter ran",
                ),
                (
                    self.user_mount,
                    "path through a mount made in a user namespace",
                ),
                (self.unverifiable, "real path unverifiable"),
                (self.deleted, "deleted"),
                (self.args_truncated, "args truncated"),
            ]
            .into_iter()
            .filter_map(|(on, mark)| on.then_some(mark)),
        );
        let marks = if marks.is_empty() {
            String::new()
        } else {
            format!(" [{}]", marks.join(", "))
        };
        format!("{} {}{marks}", self.path, self.args.join(" "))
    }
}
