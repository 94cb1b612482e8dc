//! Who did it: cgroups, processes, and the wall-clock time of kernel timestamps.
pub mod cgroup;
pub mod clock;
pub mod process;
