//! Cgroups made, removed or renamed anywhere. User space re-resolves every policy binding
//! (path -> cgroup id) when this count moves, instead of looking up every bound path on
//! every tick: a binding's path made anew (a service restarted, a directory renamed onto
//! it) is a new cgroup id the kernel must be told about at once.
use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

use crate::maps::CGROUP_CHANGES;

/// `cgroup_mkdir`, `cgroup_rmdir` and `cgroup_rename`: only that something changed counts.
#[raw_tracepoint(tracepoint = "cgroup_mkdir")]
pub fn cgroup_change(_ctx: RawTracePointContext) -> i32 {
    if let Some(count) = CGROUP_CHANGES.get_ptr_mut(0) {
        // SAFETY: a live map value. Two CPUs adding at once may lose one addition, but the
        // count still moves, and moving is all user space looks for.
        unsafe { *count = (*count).wrapping_add(1) };
    }
    0
}
