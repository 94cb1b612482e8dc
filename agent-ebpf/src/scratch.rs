//! Memory a program works in that does not fit its 512-byte stack: an entry of the running
//! thread's own, claimed for one run and released when the run ends.
//!
//! Not one slot per CPU: a program runs with migration disabled, not preemption. A kernel
//! that preempts kernel code (lazy or full preemption; Debian's default from 6.16) can give
//! the CPU to another task half way through a program, and that task's programs would write
//! the same per-CPU slot: a decision could then be taken on the other process's path (seen
//! on 7.2 and 7.3: allowed execs killed while denied ones ran beside them). A thread runs one
//! of these programs at a time, and none of them runs in interrupt context (where it would
//! share the interrupted thread's entry), so nobody else writes a thread's entry.
//!
//! An entry lives only while the run that claimed it: the maps hold the runs in progress at
//! once, not every thread, so they are preallocated (kernels before 6.1 warn about, and
//! real-time kernels refuse, maps that allocate at run time in tracing programs), and a
//! thread that execs or exits leaves nothing behind. A claim that finds no room fails, and
//! each caller then decides as for what it could not read: fail closed.
use agent_common::{ConnectEvent, ExecArgs, PathKeyData};
use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_get_current_pid_tgid, maps::HashMap};

use crate::{
    maps::{
        CONNECT_SCRATCH, EXEC_SCRATCH, FILE_REQUEST, FileRequest, KEY_SCRATCH, PATH_SCRATCH,
        PendingWx, WX_SCRATCH, ZERO_LEN, ZEROES,
    },
    state::PathScratch,
};

/// A scratch map, named by a type so that a claim need not carry it: a claim is one pointer
/// on the stack, where kernels before 6.13 give a chain of calls 512 bytes in all.
pub trait Scratch: 'static {
    type Value;
    fn map() -> &'static HashMap<u32, Self::Value>;
}

macro_rules! scratch_maps {
    ($($(#[$doc:meta])* $name:ident: $value:ty = $map:ident;)+) => {$(
        $(#[$doc])*
        pub enum $name {}
        impl Scratch for $name {
            type Value = $value;
            #[inline(always)]
            fn map() -> &'static HashMap<u32, $value> {
                &$map
            }
        }
    )+};
}

scratch_maps! {
    /// The path walk and its LPM key.
    Path: PathScratch = PATH_SCRATCH;
    /// An exec's arguments, read at the syscall's entry.
    Args: ExecArgs = EXEC_SCRATCH;
    /// A W^X record.
    Wx: PendingWx = WX_SCRATCH;
    /// A connect record.
    Connect: ConnectEvent = CONNECT_SCRATCH;
    /// One LPM key (the W^X exemption, looked up while `Path` may be held).
    LpmKey: Key<PathKeyData> = KEY_SCRATCH;
    /// A mapped file handed over to `judge_mapped_file`.
    Request: FileRequest = FILE_REQUEST;
}

/// The current thread's entry of scratch map `M`, removed when this is dropped.
pub struct Claim<M: Scratch> {
    entry: *mut M::Value,
}

impl<M: Scratch> Claim<M> {
    /// Makes the current thread's entry, zeroed. Fails with the map's error when it is full
    /// (or, never expected, when this thread holds one already).
    #[inline(always)]
    pub fn new() -> Result<Self, i64> {
        const { assert!(size_of::<M::Value>() <= ZERO_LEN) };
        let zero = ZEROES.get_ptr(0).ok_or(1i64)?;
        // SAFETY: ZERO_LEN bytes of zeroes, no fewer than a value has (asserted above); every
        // value here is plain data for which zeroes are a value.
        let zero = unsafe { &*zero.cast::<M::Value>() };
        // BPF_NOEXIST: an entry of this thread's that is still there belongs to a run that
        // has not ended; writing over it would be the very sharing this module exists to
        // prevent, so the claim fails instead.
        M::map()
            .insert(current_tid(), zero, u64::from(BPF_NOEXIST))
            .map_err(i64::from)?;
        Self::existing()
    }

    /// Takes over the current thread's entry that an earlier part of this run filed (the
    /// hand-over before a tail call), to be removed when this is dropped.
    #[inline(always)]
    pub fn existing() -> Result<Self, i64> {
        match M::map().get_ptr_mut(current_tid()) {
            Some(entry) => Ok(Self { entry }),
            None => Err(1),
        }
    }

    /// The entry, valid while this claim lives.
    #[inline(always)]
    pub fn entry(&self) -> *mut M::Value {
        self.entry
    }
}

impl<M: Scratch> Drop for Claim<M> {
    #[inline(always)]
    fn drop(&mut self) {
        let _ = M::map().remove(current_tid());
    }
}

#[inline(always)]
fn current_tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}
