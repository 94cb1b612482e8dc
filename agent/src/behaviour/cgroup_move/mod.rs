//! cgroup moves: a process under a policy moved out of its binding's cgroup subtree
//! (`agent-ebpf/src/cgroup_move.rs`). Always a violation: the policy keeps applying.
use agent_common::MoveEvent;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A process under a policy moved to a cgroup outside its binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    /// The cgroup holding the binding the moved process is pinned to.
    pub from_cgroup: u64,
    /// Where it was moved.
    pub to_cgroup: u64,
    /// The moved thread's id (the process id for a whole process).
    pub moved_pid: u32,
}

impl Move {
    pub fn decode(m: &MoveEvent) -> Self {
        Self {
            from_cgroup: m.from_cgroup,
            to_cgroup: m.to_cgroup,
            moved_pid: m.moved_pid,
        }
    }
}

/// dev.vigil.cgroup.v1 (always a violation): a process pinned to a policy binding (it started,
/// or first ran, under that policy) was moved to a cgroup outside the binding's subtree, e.g.
/// by writing cgroup.procs. The policy keeps applying to it. `process` is the mover (the moved
/// process itself when it moved itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields, rename = "move")]
pub struct MoveData {
    /// The moved process (thread id for a single thread).
    pub moved_pid: u32,
    /// The cgroup holding the policy binding the process is pinned to.
    pub from_cgroup_id: u64,
    /// The cgroup it was moved to.
    pub to_cgroup_id: u64,
}

/// The member a cgroup move event adds to the shared data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct MoveMember {
    #[serde(rename = "move")]
    pub moved: MoveData,
}

impl From<&Move> for MoveData {
    fn from(m: &Move) -> Self {
        Self {
            moved_pid: m.moved_pid,
            from_cgroup_id: m.from_cgroup,
            to_cgroup_id: m.to_cgroup,
        }
    }
}

impl MoveData {
    pub fn line(&self) -> String {
        format!(
            "pid {} moved out of the cgroup of its policy (cgroup id {} -> {})",
            self.moved_pid, self.from_cgroup_id, self.to_cgroup_id
        )
    }
}
