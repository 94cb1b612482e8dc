//! The kernel's flood throttle (`THROTTLE`) as user space sweeps it. The kernel holds back
//! identical violations past a burst a second and lets the next record of the same violation
//! carry their count; when a flood simply stops, no next record comes. The sweep finds those
//! stranded counts (held, and no record for two windows), and takes them out of the map for
//! user space to report. It reads the map only when the kernel held something back since the
//! last sweep that left nothing held, so a node without floods pays for one counter read.
use agent_common::{THROTTLE_WINDOW_NS, ThrottleKey, ThrottleState};
use aya::maps::{HashMap, MapData, PerCpuArray};

use super::EbpfError;

/// Quiet this long (two windows), an entry's flood is over: a record of the same violation
/// would have opened a new window by now.
pub const STRANDED_AFTER_NS: u64 = 2 * THROTTLE_WINDOW_NS;

pub struct ThrottleMap {
    map: HashMap<MapData, ThrottleKey, ThrottleState>,
    /// Violations held back so far (`THROTTLED`) and records lost to a full ring buffer
    /// (`LOSSES`, where a lost record gives its held-back count back to its entry): while
    /// both stand still and nothing was left held at the last sweep, there is nothing to
    /// sweep, and the map is not read at all.
    throttled: PerCpuArray<MapData, u64>,
    losses: PerCpuArray<MapData, u64>,
    held_at_last_sweep: Option<u64>,
}

impl ThrottleMap {
    pub(super) fn new(
        map: HashMap<MapData, ThrottleKey, ThrottleState>,
        throttled: PerCpuArray<MapData, u64>,
        losses: PerCpuArray<MapData, u64>,
    ) -> Self {
        Self {
            map,
            throttled,
            losses,
            held_at_last_sweep: None,
        }
    }

    /// Violations held back and records lost so far: what can leave a count to sweep.
    fn held_so_far(&self) -> Result<u64, EbpfError> {
        let mut total = 0;
        for (counters, name) in [(&self.throttled, "THROTTLED"), (&self.losses, "LOSSES")] {
            for slot in 0..agent_common::kind::SLOTS {
                let values = counters
                    .get(&slot, 0)
                    .map_err(|source| EbpfError::Map { map: name, source })?;
                total += values.iter().sum::<u64>();
            }
        }
        Ok(total)
    }

    /// Takes out of the map every entry quiet since `now_boot_ns - STRANDED_AFTER_NS`;
    /// returns those holding violations back. Each entry is read again just before it is
    /// removed: one whose window the kernel reopened meanwhile has had its count carried by
    /// that record, and stays. A record racing the removal itself opens a fresh window, so at
    /// worst a violation counted in `THROTTLED` is not attributed again.
    pub fn sweep(
        &mut self,
        now_boot_ns: u64,
    ) -> Result<Vec<(ThrottleKey, ThrottleState)>, EbpfError> {
        let err = |source| EbpfError::Map {
            map: "THROTTLE",
            source,
        };
        let held = self.held_so_far()?;
        if self.held_at_last_sweep == Some(held) {
            return Ok(Vec::new());
        }
        let mut quiet = Vec::new();
        let mut still_held = false;
        for entry in self.map.iter() {
            let (key, state) = match entry {
                Ok(entry) => entry,
                // The LRU evicted it while the walk went on.
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(err(e)),
            };
            if state.held == 0 {
                // Nothing to carry; the LRU reclaims it when room is needed.
                continue;
            }
            if now_boot_ns.saturating_sub(state.window_start) >= STRANDED_AFTER_NS {
                quiet.push((key, state));
            } else {
                still_held = true;
            }
        }
        // A key the walk met twice (the walk restarts when its key goes) is taken once.
        quiet.sort_by_key(|(k, _)| (k.cgroup_id, k.target, k.rule, k.kind, k.pid));
        quiet.dedup_by_key(|(k, _)| *k);
        let mut stranded = Vec::new();
        let mut failed = None;
        for (key, seen) in quiet {
            let now = match self.map.get(&key, 0) {
                Ok(now) if now.window_start == seen.window_start => now,
                // Reopened by a record, which carried the count; or gone.
                Ok(_) => continue,
                Err(e) if gone(&e) => continue,
                Err(e) => {
                    failed = Some(e);
                    continue;
                }
            };
            match self.map.remove(&key) {
                Ok(()) => {}
                Err(e) if gone(&e) => continue,
                Err(e) => {
                    failed = Some(e);
                    continue;
                }
            }
            if now.held > 0 {
                stranded.push((key, now));
            }
        }
        // Until a sweep leaves nothing held, the next one looks again.
        self.held_at_last_sweep = (!still_held && failed.is_none()).then_some(held);
        // What was taken out is reported whatever else failed; the failure is said once.
        if let Some(e) = failed {
            tracing::warn!(error = %err(e), "sweeping the flood throttle: some entries stay for the next sweep");
        }
        Ok(stranded)
    }
}

/// Whether a map call failed because the key is not (or no longer) there.
fn gone(e: &aya::maps::MapError) -> bool {
    match e {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}
