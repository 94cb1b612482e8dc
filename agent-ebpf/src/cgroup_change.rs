//! Cgroups made or removed anywhere. User space re-resolves every policy binding (path ->
//! cgroup id) when this count moves, instead of looking up every bound path on every tick: a
//! binding's path made anew (a service restarted) is a new cgroup id the kernel must be told
//! about at once. (Renaming exists only in cgroup v1, where no binding lives.)
use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

use crate::maps::CGROUP_CHANGES;

/// `cgroup_mkdir` and `cgroup_rmdir`: only that something changed counts.
#[raw_tracepoint(tracepoint = "cgroup_mkdir")]
pub fn cgroup_change(_ctx: RawTracePointContext) -> i32 {
    if let Some(count) = CGROUP_CHANGES.get_ptr_mut(0) {
        // SAFETY: a live map value. The kernel fires these tracepoints under its cgroup
        // lock, one at a time; and were two additions to race, the count would still move,
        // which is all user space looks for.
        unsafe { *count = (*count).wrapping_add(1) };
    }
    0
}
