//! Who did it: cgroups, processes, and the wall-clock time of kernel timestamps.
pub mod cgroup;
pub mod clock;
pub mod cluster;
pub mod container;
pub mod process;
