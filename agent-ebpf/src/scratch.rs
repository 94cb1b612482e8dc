//! Memory a program works in that does not fit its 512-byte stack: one entry per thread.
//!
//! Not one slot per CPU: a program runs with migration disabled, not preemption. A kernel
//! that preempts kernel code (lazy or full preemption; Debian's default from 6.16) can give
//! the CPU to another task half way through a program, and that task's programs would write
//! the same per-CPU slot: a decision could then be taken on the other process's path (seen
//! on 7.2 and 7.3: allowed execs killed while denied ones ran beside them). A thread runs one
//! of these programs at a time, and none of them runs in interrupt context (where it would
//! share the interrupted thread's entry), so nobody else writes a thread's entry. Entries go
//! when their thread exits (`process.rs`).
use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_get_current_pid_tgid, maps::HashMap};

use crate::maps::{
    CONNECT_SCRATCH, EXEC_SCRATCH, FILE_REQUEST, PATH_SCRATCH, WX_SCRATCH, ZERO_LEN, ZEROES,
};

/// The current thread's entry of `map`, made (zeroed) if it has none; `None` when the map
/// is full, which its callers treat as any other failure to read what they decide on.
#[inline(always)]
pub fn of<T>(map: &HashMap<u32, T>) -> Option<*mut T> {
    const { assert!(size_of::<T>() <= ZERO_LEN) };
    let tid = bpf_get_current_pid_tgid() as u32;
    if let Some(entry) = map.get_ptr_mut(tid) {
        return Some(entry);
    }
    let zero = ZEROES.get_ptr(0)?;
    // SAFETY: ZERO_LEN bytes of zeroes, no fewer than a `T` has (asserted above); every `T`
    // here is plain data for which zeroes are a value.
    let zero = unsafe { &*zero.cast::<T>() };
    // Only this thread makes its own entry, so the key cannot appear in between.
    map.insert(tid, zero, u64::from(BPF_NOEXIST)).ok()?;
    map.get_ptr_mut(tid)
}

/// The current thread's entry of `map` as an earlier program of this thread left it.
#[inline(always)]
pub fn existing<T>(map: &HashMap<u32, T>) -> Option<*const T> {
    map.get_ptr(bpf_get_current_pid_tgid() as u32)
}

/// Removes the entries of thread `tid` (it exits).
pub fn forget(tid: u32) {
    let _ = PATH_SCRATCH.remove(tid);
    let _ = EXEC_SCRATCH.remove(tid);
    let _ = CONNECT_SCRATCH.remove(tid);
    let _ = WX_SCRATCH.remove(tid);
    let _ = FILE_REQUEST.remove(tid);
}
