//! The kernel's flood throttle (`THROTTLE`) as user space sweeps it. The kernel holds back
//! identical violations past a burst a second and lets the next record of the same violation
//! carry their count; when a flood simply stops, no next record comes. The sweep finds those
//! stranded counts (held, and no record for two windows), and takes them out of the map for
//! user space to report; entries idle as long are removed, so the map holds only live floods.
use agent_common::{THROTTLE_WINDOW_NS, ThrottleKey, ThrottleState};
use aya::maps::{HashMap, MapData};

use super::EbpfError;

/// Quiet this long (two windows), an entry's flood is over: a record of the same violation
/// would have opened a new window by now.
pub const STRANDED_AFTER_NS: u64 = 2 * THROTTLE_WINDOW_NS;

pub struct ThrottleMap {
    map: HashMap<MapData, ThrottleKey, ThrottleState>,
}

impl ThrottleMap {
    pub(super) fn new(map: HashMap<MapData, ThrottleKey, ThrottleState>) -> Self {
        Self { map }
    }

    /// Takes out of the map every entry quiet since `now_boot_ns - STRANDED_AFTER_NS`;
    /// returns those holding violations back. A record racing the removal opens a fresh
    /// window, so at worst a violation counted in `THROTTLED` is not attributed again.
    pub fn sweep(
        &mut self,
        now_boot_ns: u64,
    ) -> Result<Vec<(ThrottleKey, ThrottleState)>, EbpfError> {
        let err = |source| EbpfError::Map {
            map: "THROTTLE",
            source,
        };
        let mut quiet = Vec::new();
        for entry in self.map.iter() {
            let (key, state) = entry.map_err(err)?;
            if now_boot_ns.saturating_sub(state.window_start) >= STRANDED_AFTER_NS {
                quiet.push((key, state));
            }
        }
        let mut stranded = Vec::new();
        for (key, state) in quiet {
            match self.map.remove(&key) {
                Ok(()) => {}
                // Evicted by the LRU meanwhile: its count was never going to be carried.
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(source) => return Err(err(source)),
            }
            if state.held > 0 {
                stranded.push((key, state));
            }
        }
        Ok(stranded)
    }
}
