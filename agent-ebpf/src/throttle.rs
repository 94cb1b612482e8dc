//! Floods of identical violations (same cgroup, process, behaviour, rule and target) are
//! held back in the kernel: a burst per window goes out, the rest are counted per behaviour (`THROTTLED`) and
//! the next record of the same violation carries how many it stands for. So a process cannot
//! bury one violation under a million others, and nothing is dropped silently.
use agent_common::{
    ConnectEvent, EventHeader, ExecEvent, MoveEvent, THROTTLE_BURST, THROTTLE_WINDOW_NS,
    ThrottleKey, ThrottleState, WxEvent, connect_target, throttle_flags, verdict,
};

use crate::{
    maps::{EMITTER, SILENCED, THROTTLE, THROTTLED},
    task::count_loss,
};

/// Records whose header [`admit`] may adjust, and what each was aimed at.
pub trait HasHeader {
    fn header_mut(&mut self) -> &mut EventHeader;
    fn target(&self) -> u64 {
        0
    }
}

impl HasHeader for ConnectEvent {
    fn header_mut(&mut self) -> &mut EventHeader {
        &mut self.header
    }
    fn target(&self) -> u64 {
        connect_target(self.dport, &self.daddr)
    }
}

impl HasHeader for MoveEvent {
    fn header_mut(&mut self) -> &mut EventHeader {
        &mut self.header
    }
    fn target(&self) -> u64 {
        self.to_cgroup
    }
}

impl HasHeader for WxEvent {
    fn header_mut(&mut self) -> &mut EventHeader {
        &mut self.header
    }
}

impl HasHeader for ExecEvent {
    fn header_mut(&mut self) -> &mut EventHeader {
        &mut self.header
    }
}

/// Whether this generation's programs report: always unless enforcement is pinned, then
/// only while `EMITTER` names this generation (the previous agent's programs report until
/// the new agent takes over; both enforce meanwhile).
fn reporting() -> bool {
    let Some(cfg) = crate::task::config() else {
        return true;
    };
    cfg.generation == 0 || EMITTER.get(0).is_some_and(|g| *g == cfg.generation)
}

/// Whether a record goes out; sets its `count` and `first_ns`. Observations (trace mode)
/// always go out.
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "by reference, so the key and value are not copied again onto the 512-byte BPF stack (connect4 exceeds it otherwise)"
)]
pub fn admit(kind: u32, target: u64, header: &mut EventHeader) -> bool {
    if !reporting() {
        if let Some(slot) = SILENCED.get_ptr_mut(kind) {
            // SAFETY: per-CPU slot, so no other program writes it concurrently.
            unsafe { *slot += 1 };
        }
        return false;
    }
    header.count = 1;
    header.first_ns = header.boot_ns;
    header.throttle = 0;
    if header.verdict != verdict::VIOLATION {
        return true;
    }
    let key = key_of(kind, target, header);
    let now = header.boot_ns;
    let Some(state) = THROTTLE.get_ptr_mut(&key) else {
        let fresh = ThrottleState {
            window_start: now,
            first_held: 0,
            emitted: 1,
            held: 0,
        };
        let _ = THROTTLE.insert(&key, &fresh, 0);
        return true;
    };
    // SAFETY: a live map value; concurrent updates of one key from two CPUs may miscount a
    // record in `count` (never in `THROTTLED`, which is per CPU).
    let state = unsafe { &mut *state };
    if now.wrapping_sub(state.window_start) >= THROTTLE_WINDOW_NS {
        if state.held > 0 {
            header.count = state.held + 1;
            header.first_ns = state.first_held;
        }
        state.window_start = now;
        state.emitted = 1;
        state.held = 0;
        return true;
    }
    if state.emitted < THROTTLE_BURST {
        state.emitted += 1;
        ends_burst(state.emitted, header);
        return true;
    }
    if state.held == 0 {
        state.first_held = now;
    }
    state.held += 1;
    if let Some(slot) = THROTTLED.get_ptr_mut(kind) {
        // SAFETY: per-CPU slot, so no other program writes it concurrently.
        unsafe { *slot += 1 };
    }
    false
}

/// Marks the record that is the `emitted`-th of its window (1 to [`THROTTLE_BURST`]) when it
/// is the last one let out: `emitted / THROTTLE_BURST` is 1 then and 0 before, with no branch
/// for the verifier to walk twice after every `admit` of every program that reports.
#[inline(always)]
fn ends_burst(emitted: u32, header: &mut EventHeader) {
    const _: () = assert!(throttle_flags::ENDS_BURST == 1 && THROTTLE_BURST > 1);
    header.throttle = emitted / THROTTLE_BURST;
}

/// A record [`admit`] let out that did not fit into the ring buffer: its own violation is
/// counted lost, and the held-back ones it was carrying go back to its throttle entry, for
/// the next record of the same violation (or the sweep) to carry. Dropped with the record,
/// they would be counted held back and yet stood for by no record.
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "by reference, as in `admit`: the key is not copied again onto the BPF stack"
)]
// A frame of its own, off the path of a record that fits: inlined, it grew its callers' frames
// past what kernels before 6.13 allow a chain of calls (`ebpf::stack_depth`).
//
// `count` and `first_ns` come as values, not through `header`: read through the pointer to
// the caller's stack, the counts given back were carried by no record on 5.10 and 6.1 (6.12
// and newer carried them); as values they are carried on all three of 5.10, 6.1 and 7.1
// (`flood::a_count_whose_record_found_the_ring_buffer_full…`). Which of the old verifiers'
// steps lost the branch was not established.
#[inline(never)]
pub fn lost(kind: u32, target: u64, count: u32, first_ns: u64, header: &EventHeader) {
    count_loss(kind);
    if count <= 1 {
        return;
    }
    let key = key_of(kind, target, header);
    // Evicted since: the count stays where it already is, in `THROTTLED` (heldBack).
    let Some(state) = THROTTLE.get_ptr_mut(&key) else {
        return;
    };
    // SAFETY: a live map value; see `admit` on concurrent updates of one key.
    let state = unsafe { &mut *state };
    if state.held == 0 || first_ns < state.first_held {
        state.first_held = first_ns;
    }
    state.held += count - 1;
}

/// The throttle key of a record of `kind` aimed at `target`: identical violations share it.
#[inline(always)]
fn key_of(kind: u32, target: u64, header: &EventHeader) -> ThrottleKey {
    ThrottleKey {
        cgroup_id: header.cgroup_id,
        target,
        rule: header.rule,
        kind,
        pid: header.pid,
        _pad: 0,
    }
}
