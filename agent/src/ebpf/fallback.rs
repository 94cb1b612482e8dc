//! Helpers older kernels lack, and what the probes do instead. Each is probed once before the
//! object is loaded; the choice reaches the programs either as a constant in their read-only
//! data (the verifier then never looks at the branch this kernel cannot take) or as a second
//! build of a program (a callback an older kernel does not know cannot sit in dead code).
use agent_common::{KernelOffsets, OFFSET_UNKNOWN};
use aya::{
    EbpfLoader,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported},
};

/// The read-only flag of `agent-ebpf/src/task.rs`: 1 calls the helper, 0 reads the cgroup.
const ANCESTOR_HELPER: &str = "ANCESTOR_HELPER";
/// The read-only flag of `agent-ebpf/src/task.rs`: 1 reads a task's registers with the
/// helper, 0 does not read them outside the syscall hooks.
const TASK_REGS_HELPER: &str = "TASK_REGS_HELPER";

/// Programs built twice, by the name `PROGRAMS` gives them and the name of their build that
/// walks the memory areas' tree instead of calling `bpf_find_vma`.
const VMA_WALK: &[(&str, &str)] = &[
    ("sched_process_exec_image", "sched_process_exec_image_walk"),
    (
        "sched_process_exec_image_again",
        "sched_process_exec_image_walk_again",
    ),
    ("sys_enter_mprotect_exec", "sys_enter_mprotect_exec_walk"),
    (
        "sys_enter_pkey_mprotect_exec",
        "sys_enter_pkey_mprotect_exec_walk",
    ),
];

/// Kernel structure members only a fallback reads: a kernel that does not need the fallback
/// may lack them without anything going unreported.
pub const FALLBACK_MEMBERS: &[&str] = &[
    "cgroup.level",
    "cgroup.ancestor_ids",
    "mm_struct.mm_rb",
    "vm_area_struct.vm_rb",
    "rb_node.rb_right",
    "rb_node.rb_left",
];

#[derive(Debug, thiserror::Error)]
pub enum FallbackError {
    #[error("probing whether tracepoint programs may call {helper}: {reason}")]
    Probe {
        helper: &'static str,
        reason: String,
    },
    #[error(
        "this kernel has neither the helper {helper} for tracing programs nor the kernel \
         structure members its fallback reads ({members}): the probes cannot tell {what}"
    )]
    Impossible {
        helper: &'static str,
        members: String,
        what: &'static str,
    },
}

/// Which fallbacks this kernel needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fallbacks {
    /// No `bpf_get_current_ancestor_cgroup_id` for tracing programs (before 5.14): a task's
    /// cgroup ancestors are read from its cgroup's `ancestor_ids`.
    pub ancestors_from_cgroup: bool,
    /// No `bpf_find_vma` (before 5.17): the tree of memory areas is walked.
    pub walk_memory_areas: bool,
    /// No `bpf_task_pt_regs` (before 5.15): the LSM programs cannot tell which call a mapping
    /// came from, so where BPF LSM runs the W^X syscall tracepoints still report
    /// (`prevent::WX_REPORTS` stays off).
    pub wx_on_tracepoints: bool,
}

impl Fallbacks {
    /// Probes this kernel's helpers and checks the members the fallbacks need are known.
    pub fn probe(offsets: &KernelOffsets) -> Result<Self, FallbackError> {
        let fallbacks = Self::detect()?;
        fallbacks.check(offsets)?;
        Ok(fallbacks)
    }

    /// Which helpers tracepoint programs lack here.
    pub fn detect() -> Result<Self, FallbackError> {
        Ok(Self {
            ancestors_from_cgroup: !helper(
                BpfHelper::BPF_FUNC_get_current_ancestor_cgroup_id,
                "bpf_get_current_ancestor_cgroup_id",
            )?,
            walk_memory_areas: !helper(BpfHelper::BPF_FUNC_find_vma, "bpf_find_vma")?,
            wx_on_tracepoints: !helper(BpfHelper::BPF_FUNC_task_pt_regs, "bpf_task_pt_regs")?,
        })
    }

    /// Whether the members the fallbacks taken read are known.
    pub fn check(&self, k: &KernelOffsets) -> Result<(), FallbackError> {
        let need = |helper, what, members: &[(&str, u32)]| {
            let missing: Vec<&str> = members
                .iter()
                .filter(|(_, offset)| *offset == OFFSET_UNKNOWN)
                .map(|(name, _)| *name)
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(FallbackError::Impossible {
                    helper,
                    members: missing.join(", "),
                    what,
                })
            }
        };
        if self.ancestors_from_cgroup {
            need(
                "bpf_get_current_ancestor_cgroup_id",
                "which cgroup, and so which policy, a process is under",
                &[
                    ("task_struct.cgroups", k.task_cgroups),
                    ("css_set.dfl_cgrp", k.css_set_dfl_cgrp),
                    ("cgroup.level", k.cgroup_level),
                    ("cgroup.ancestor_ids", k.cgroup_ancestor_ids),
                ],
            )?;
        }
        if self.walk_memory_areas {
            need(
                "bpf_find_vma",
                "which file backs memory made executable",
                &[
                    ("task_struct.mm", k.task_mm),
                    ("mm_struct.mm_rb", k.mm_rb),
                    ("vm_area_struct.vm_rb", k.vma_rb),
                    ("vm_area_struct.vm_start", k.vma_start),
                    ("vm_area_struct.vm_end", k.vma_end),
                    ("rb_node.rb_left", k.rb_left),
                    ("rb_node.rb_right", k.rb_right),
                ],
            )?;
        }
        Ok(())
    }

    /// Sets the read-only data the programs branch on.
    pub fn apply(&self, loader: &mut EbpfLoader<'_>) {
        static CALL: u8 = 1;
        static READ: u8 = 0;
        let flag = if self.ancestors_from_cgroup {
            &READ
        } else {
            &CALL
        };
        loader.override_global(ANCESTOR_HELPER, flag, true);
        let regs = if self.wx_on_tracepoints { &READ } else { &CALL };
        loader.override_global(TASK_REGS_HELPER, regs, true);
    }

    /// The build of `program` this kernel loads.
    pub fn program(&self, program: &'static str) -> &'static str {
        if self.walk_memory_areas
            && let Some((_, walk)) = VMA_WALK.iter().find(|(name, _)| *name == program)
        {
            return walk;
        }
        program
    }

    /// One line per fallback taken, for the log and `vigil doctor` (empty: none).
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if self.ancestors_from_cgroup {
            lines.push(
                "no bpf_get_current_ancestor_cgroup_id for tracing programs (before 5.14): a \
                 task's cgroup ancestors are read from its cgroup (cgroup.ancestor_ids)"
                    .to_owned(),
            );
        }
        if self.walk_memory_areas {
            lines.push(format!(
                "no bpf_find_vma (before 5.17): memory areas are found by walking their tree \
                 (mm_struct.mm_rb) without the mm's lock, in {}",
                VMA_WALK
                    .iter()
                    .map(|(_, walk)| *walk)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if self.wx_on_tracepoints {
            lines.push(
                "no bpf_task_pt_regs (before 5.15): where BPF LSM runs it refuses W^X, but the \
                 syscall tracepoints still report it (the LSM hooks cannot tell which call a \
                 mapping came from)"
                    .to_owned(),
            );
        }
        lines
    }
}

/// Whether tracepoint programs may call `id` here.
fn helper(id: BpfHelper, name: &'static str) -> Result<bool, FallbackError> {
    is_helper_supported(ProgramType::TracePoint, id).map_err(|e| FallbackError::Probe {
        helper: name,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets() -> KernelOffsets {
        KernelOffsets::find(|_, _| 8)
    }

    #[test]
    fn a_kernel_with_both_helpers_loads_every_program_as_named() {
        let none = Fallbacks::default();
        assert_eq!(
            none.program("sched_process_exec_image"),
            "sched_process_exec_image"
        );
        assert!(none.describe().is_empty());
        assert!(
            none.check(&KernelOffsets::find(|_, _| OFFSET_UNKNOWN))
                .is_ok()
        );
    }

    #[test]
    fn without_find_vma_the_walking_builds_are_loaded() {
        let walk = Fallbacks {
            walk_memory_areas: true,
            ..Fallbacks::default()
        };
        for (program, build) in VMA_WALK {
            assert_eq!(walk.program(program), *build);
        }
        assert_eq!(walk.program("sys_enter_mprotect"), "sys_enter_mprotect");
        assert!(walk.check(&offsets()).is_ok());
    }

    #[test]
    fn a_fallback_without_its_members_is_refused_naming_them() {
        let mut k = offsets();
        k.cgroup_ancestor_ids = OFFSET_UNKNOWN;
        k.mm_rb = OFFSET_UNKNOWN;
        let ancestors = Fallbacks {
            ancestors_from_cgroup: true,
            ..Fallbacks::default()
        };
        let err = ancestors.check(&k).unwrap_err().to_string();
        assert!(err.contains("cgroup.ancestor_ids"), "{err}");
        assert!(err.contains("bpf_get_current_ancestor_cgroup_id"), "{err}");
        let walk = Fallbacks {
            walk_memory_areas: true,
            ..Fallbacks::default()
        };
        let err = walk.check(&k).unwrap_err().to_string();
        assert!(
            err.contains("mm_struct.mm_rb") && err.contains("bpf_find_vma"),
            "{err}"
        );
    }

    #[test]
    fn every_build_that_walks_is_an_entry_point_that_counts_its_failures() {
        for (program, walk) in VMA_WALK {
            assert!(
                crate::ebpf::PROGRAMS.iter().any(|(p, _)| p == program),
                "{program}"
            );
            assert!(agent_common::probe_error::PROBES.contains(walk), "{walk}");
        }
    }
}
