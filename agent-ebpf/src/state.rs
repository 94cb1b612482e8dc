//! Kernel-only map values: the per-thread scratch of the path walk and the flood throttle's key
//! and state. Kept apart from the code using them so that `maps.rs` depends on nothing that
//! depends on it.
use agent_common::{ExePath, NAME_LEN, PATH_LEN, PathKeyData, PendingScript};
use aya_ebpf::maps::lpm_trie::Key;

/// The path walk builds backwards from this offset (a power of two, for masking).
pub const WALK_END: usize = 256;
const END: usize = WALK_END;

/// Per-thread scratch (`scratch.rs`): too large for the 512-byte stack.
#[repr(C)]
pub struct PathScratch {
    /// The real path ends at `END - 1` (its NUL) and starts where `real_path` says; reads
    /// of up to `END` bytes from any start stay inside.
    pub path: [u8; 2 * END],
    pub filename: [u8; PATH_LEN],
    /// The executed file's dentry name: off the exec program's stack, which its chain of
    /// calls fills.
    pub exe_name: [u8; NAME_LEN],
    pub key: Key<PathKeyData>,
    pub exe: ExePath,
    pub pending: PendingScript,
    /// The walk's write position, kept in memory (see `real_path`).
    pub cursor: u64,
    /// Non-zero when the walk crossed a mount an unprivileged user made (see `mount_trusted`).
    pub forged: u64,
    /// Where the executed file lives (drift), for the record: off the exec program's stack.
    pub origin: agent_common::FileOrigin,
    /// The executed file's drift bits (`drift.rs`), read back where the exec is decided.
    pub drift: u64,
}
