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
            exempt: 0,
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
/// and exec for processes started later, except one still in its container runtime's
/// hand-over under a binding in `handing_over`. Returns how many were pinned.
pub fn origins_from_proc(
    map: &mut aya::maps::HashMap<aya::maps::MapData, u32, u64>,
    bound: &[(String, u64)],
    handing_over: &std::collections::HashSet<u64>,
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
        if handing_over.contains(&binding) && in_runtimes_handover(pid, map, bound) {
            continue;
        }
        // BPF_NOEXIST: a pin the probes made since wins.
        if map.insert(pid, binding, 1).is_ok() {
            count += 1;
        }
    }
    count
}

/// Process `pid`'s parent, from `/proc/<pid>/stat` (the field after the command name, which
/// may itself hold spaces and parentheses).
fn parent_of(pid: u32) -> Option<u32> {
    parent_in_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parent_in_stat(stat: &str) -> Option<u32> {
    let (_, after) = stat.rsplit_once(')')?;
    after.split_whitespace().nth(1)?.parse().ok()
}

/// The mount namespace of process `pid` (`mnt:[inode]`).
fn mount_ns(pid: u32) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()
}

/// Whether process `pid`, in a bound cgroup, is still its container runtime's as the probes
/// judge a process whose move they did not see (`agent-ebpf/src/handover.rs`): its parent is
/// under no binding, pinned to none, and shares its mount namespace. Such a process is left
/// unpinned for the probes to decide; every other process in a bound cgroup is the pod's.
fn in_runtimes_handover(
    pid: u32,
    pinned: &aya::maps::HashMap<aya::maps::MapData, u32, u64>,
    bound: &[(String, u64)],
) -> bool {
    let Some(parent) = parent_of(pid) else {
        return false;
    };
    let parent_bound = cgroup_of(parent).map(|cgroup| {
        covering_binding(&cgroup, bound.iter().map(|(p, id)| (p.as_str(), *id))).is_some()
    });
    runtimes_by_parent(
        parent_bound,
        pinned.get(&parent, 0).is_ok(),
        mount_ns(pid),
        mount_ns(parent),
    )
}

/// The rule of [`in_runtimes_handover`] on what /proc said (`None`: could not be read, which
/// makes the process the pod's).
fn runtimes_by_parent(
    parent_bound: Option<bool>,
    parent_pinned: bool,
    own_ns: Option<std::path::PathBuf>,
    parent_ns: Option<std::path::PathBuf>,
) -> bool {
    parent_bound == Some(false) && !parent_pinned && own_ns.is_some() && own_ns == parent_ns
}

#[cfg(test)]
mod tests {
    use super::{covering_binding, parent_in_stat, parent_of, runtimes_by_parent};

    #[test]
    fn a_process_is_the_runtimes_only_beside_an_unpoliced_parent_in_its_namespace() {
        let ns = |n: &str| Some(std::path::PathBuf::from(format!("mnt:[{n}]")));
        assert!(runtimes_by_parent(Some(false), false, ns("1"), ns("1")));
        assert!(
            !runtimes_by_parent(Some(true), false, ns("1"), ns("1")),
            "a parent inside a pod"
        );
        assert!(
            !runtimes_by_parent(Some(false), true, ns("1"), ns("1")),
            "a parent pinned to a binding"
        );
        assert!(
            !runtimes_by_parent(Some(false), false, ns("2"), ns("1")),
            "the container's own namespace"
        );
        assert!(
            !runtimes_by_parent(None, false, ns("1"), ns("1")),
            "a parent whose cgroup cannot be read"
        );
        assert!(
            !runtimes_by_parent(Some(false), false, None, None),
            "namespaces that cannot be read"
        );
    }

    #[test]
    fn the_parent_is_read_past_a_command_name_with_spaces_and_parentheses() {
        assert_eq!(parent_in_stat("4242 (a) b (c)) S 77 4242 1 0"), Some(77));
        assert_eq!(parent_in_stat("4242 (a) b"), None);
        assert_eq!(
            parent_of(std::process::id()),
            Some(std::os::unix::process::parent_id())
        );
    }

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
