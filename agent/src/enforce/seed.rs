//! Processes that started before the agent have no executable recorded by the exec probe;
//! their real paths come from /proc so W^X exemptions apply to them too.
use agent_common::{ExePath, PATH_LEN};

/// Writes every running process's executable into `map`. Returns how many were recorded.
pub fn from_proc(map: &mut aya::maps::HashMap<aya::maps::MapData, u32, ExePath>) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut count = 0;
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Some(path) = crate::metadata::process::proc_exe(pid) else {
            continue;
        };
        if path.len() >= PATH_LEN {
            continue;
        }
        let mut value = ExePath {
            len: path.len() as u32,
            _pad: 0,
            path: [0; PATH_LEN],
        };
        value.path[..path.len()].copy_from_slice(path.as_bytes());
        // An exec racing with this scan wins: the probe writes its entry later or already did.
        if map.get(&pid, 0).is_err() && map.insert(pid, value, 0).is_ok() {
            count += 1;
        }
    }
    count
}
