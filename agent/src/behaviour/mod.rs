//! One home per behaviour. Each folder holds everything user space knows about one kind of
//! kernel record: the typed event decoded from it, the CloudEvent `data` member it becomes,
//! its readable line, and (for the policed behaviours) its policy compile step. The kernel
//! side is one file in `agent-ebpf/src/` and one record in `agent-common`; the recipe for
//! adding a behaviour is in `docs/architecture.md`.
pub mod cgroup_move;
pub mod connect;
pub mod exec;
pub mod wx;
