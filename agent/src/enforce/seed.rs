//! Processes that started before the agent have no executable recorded by the exec probe
//! and are pinned to no policy binding; both come from /proc, so W^X exemptions apply to
//! them and moving to another cgroup escapes nothing for them either.
use agent_common::{ExePath, PATH_LEN};

/// The ids of the processes running now.
fn running_pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
}

/// Writes every running process's executable into `map`. Returns how many were recorded.
pub fn from_proc(map: &mut aya::maps::HashMap<aya::maps::MapData, u32, ExePath>) -> usize {
    let mut count = 0;
    for pid in running_pids() {
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

/// The cgroup v2 path of process `pid` (the `0::` line of /proc/<pid>/cgroup).
fn cgroup_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// The deepest of `bound` (cgroup path -> binding cgroup id) that covers `cgroup`.
pub fn covering_binding<'a>(
    cgroup: &str,
    bound: impl Iterator<Item = (&'a str, u64)>,
) -> Option<u64> {
    bound
        .filter(|(path, _)| {
            *path == "/"
                || cgroup
                    .strip_prefix(*path)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .max_by_key(|(path, _)| path.len())
        .map(|(_, id)| id)
}

/// Pins every running process to the binding covering its cgroup, as the probes do at fork
/// and exec for processes started later. Returns how many were pinned.
pub fn origins_from_proc(
    map: &mut aya::maps::HashMap<aya::maps::MapData, u32, u64>,
    bound: &[(String, u64)],
) -> usize {
    let mut count = 0;
    for pid in running_pids() {
        let Some(cgroup) = cgroup_of(pid) else {
            continue;
        };
        let Some(binding) =
            covering_binding(&cgroup, bound.iter().map(|(p, id)| (p.as_str(), *id)))
        else {
            continue;
        };
        // BPF_NOEXIST: a pin the probes made since wins.
        if map.insert(pid, binding, 1).is_ok() {
            count += 1;
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::covering_binding;

    #[test]
    fn the_deepest_covering_binding_wins_by_whole_components() {
        let bound = [
            ("/kubepods/pod1", 10),
            ("/kubepods/pod1/ctr", 11),
            ("/a/b", 12),
        ];
        let find = |cg: &str| covering_binding(cg, bound.iter().copied());
        assert_eq!(find("/kubepods/pod1/ctr"), Some(11));
        assert_eq!(find("/kubepods/pod1/other"), Some(10));
        assert_eq!(find("/kubepods/pod1"), Some(10));
        assert_eq!(find("/a/bc"), None, "not a component boundary");
        assert_eq!(find("/elsewhere"), None);
        assert_eq!(covering_binding("/x", [("/", 1)].into_iter()), Some(1));
    }
}
