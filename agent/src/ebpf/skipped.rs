//! Runs of the probes the kernel skipped. A tracepoint's program does not run while another
//! tracing program, or a `bpf()` map call of any process (the kernel holds the same per-CPU
//! guard, `bpf_prog_active`, through each map lookup, update and delete from user space,
//! and the caller can be preempted while holding it), is active on that CPU. The act goes
//! on unseen. The kernel counts each skip in the program's `recursion_misses`: for
//! tracepoints from 6.7, raw tracepoints from 6.2, BPF LSM from 5.12; older kernels skip
//! without counting. The count has no process and no act attached, so it is reported as a
//! probe failure (`<program>/skipped`): an event that may be missing, never a silent one.
use std::{
    os::fd::{AsFd, AsRawFd},
    sync::atomic::{AtomicBool, Ordering},
};

use aya::programs::ProgramFd;

use super::EbpfError;

/// A handle on each loaded program, to read its skipped runs.
pub struct SkippedRuns {
    programs: Vec<Program>,
}

struct Program {
    name: String,
    fd: ProgramFd,
    /// The count last read: what is reported while a read fails.
    last: std::sync::atomic::AtomicU64,
    /// Whether a failed read was logged (once per program).
    warned: AtomicBool,
}

impl SkippedRuns {
    /// Every program of `ebpf` that is loaded (a program this kernel could not take, or a
    /// fallback's unused twin, has no runs to skip).
    pub(super) fn of(ebpf: &aya::Ebpf) -> Result<Self, EbpfError> {
        let mut programs = Vec::new();
        for (name, program) in ebpf.programs() {
            let Ok(fd) = program.fd() else { continue };
            let fd = fd.try_clone().map_err(|source| EbpfError::ProgramHandle {
                program: name.to_string(),
                source,
            })?;
            programs.push(Program {
                name: name.to_string(),
                fd,
                last: Default::default(),
                warned: AtomicBool::new(false),
            });
        }
        Ok(Self { programs })
    }

    /// Each program the kernel skipped at least once, with how often, since it was loaded.
    /// A count that cannot be read (the fdinfo file: out of descriptors, say) is logged once
    /// and stands at its last value: a diagnostic read must not stop the agent.
    pub fn read(&self) -> Vec<(&str, u64)> {
        let mut out = Vec::new();
        for p in &self.programs {
            let path = format!("/proc/self/fdinfo/{}", p.fd.as_fd().as_raw_fd());
            match std::fs::read_to_string(&path).map(|info| recursion_misses(&info)) {
                Ok(Some(n)) => p.last.store(n, Ordering::Relaxed),
                // Before 5.12 the kernel keeps no count.
                Ok(None) => {}
                Err(err) => {
                    if !p.warned.swap(true, Ordering::Relaxed) {
                        tracing::warn!(program = p.name, path, %err, "cannot read how often the kernel skipped this program; its last count stands");
                    }
                }
            }
            let n = p.last.load(Ordering::Relaxed);
            if n > 0 {
                out.push((p.name.as_str(), n));
            }
        }
        out
    }
}

/// The `recursion_misses` of a BPF program's fdinfo; `None` before 5.12, which has no count.
fn recursion_misses(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("recursion_misses:"))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_count_from_a_programs_fdinfo() {
        let info = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nprog_type:\t5\n\
                    prog_jited:\t1\nprog_tag:\t8d2c4b1fe0a5b3c6\nmemlock:\t4096\nprog_id:\t81\n\
                    run_time_ns:\t0\nrun_cnt:\t0\nrecursion_misses:\t37\nverified_insns:\t912\n";
        assert_eq!(recursion_misses(info), Some(37));
        assert_eq!(recursion_misses("prog_type:\t5\nrun_cnt:\t0\n"), None);
    }

    #[test]
    fn a_descriptor_that_is_no_program_has_no_count() {
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let info =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", file.as_raw_fd())).unwrap();
        assert_eq!(recursion_misses(&info), None);
    }
}
