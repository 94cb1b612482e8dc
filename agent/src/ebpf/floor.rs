//! `vigil floor`: an empty program on every hook Vigil attaches to, as many on each hook as
//! Vigil puts there. `cargo xtask bench` measures Vigil against it: what is left above this
//! floor is the cost of Vigil's own code, the rest the cost of having any program there.
use std::collections::HashMap;

use aya::{
    Btf as AyaBtf, Ebpf, EbpfLoader,
    programs::{Lsm, Program},
};

use super::{
    EbpfError, Hook, PROBES_OBJECT, attach_program, attachments_with, load_program, prevent,
};

/// The empty programs for the `nth` program on one tracepoint (`floor.rs` in the probes).
const TRACEPOINTS: [&str; 2] = ["floor_tracepoint_0", "floor_tracepoint_1"];
const RAW: [&str; 4] = ["floor_raw_0", "floor_raw_1", "floor_raw_2", "floor_raw_3"];
/// Each cgroup program and its empty twin of the same attach type.
const CGROUP: &[(&str, &str)] = &[
    ("connect4", "floor_connect4"),
    ("connect6", "floor_connect6"),
    ("sendmsg4", "floor_sendmsg4"),
    ("sendmsg6", "floor_sendmsg6"),
    ("sock_create", "floor_sock_create"),
];
/// Each prevention hook and its empty program.
const LSM: &[(&str, &str)] = &[
    ("bprm_check_security", "floor_lsm_bprm_check"),
    ("mmap_file", "floor_lsm_mmap_file"),
    ("file_mprotect", "floor_lsm_file_mprotect"),
    ("mmap_file", "floor_lsm_mmap_file_1"),
    ("file_mprotect", "floor_lsm_file_mprotect_1"),
    ("file_open", "floor_lsm_file_open"),
];

/// The stand-ins for `prevent::FOREIGN_CALLS`, attached as the agent's are: after [`LSM`],
/// where the LSM programs can read the task's registers.
const LSM_FOREIGN_CALLS: &[(&str, &str)] = &[
    ("ptrace_access_check", "floor_lsm_ptrace_access_check"),
    ("ptrace_traceme", "floor_lsm_ptrace_traceme"),
    (
        "inode_init_security_anon",
        "floor_lsm_inode_init_security_anon",
    ),
];

/// The empty program standing in for `program`, the `nth` of Vigil's programs on `hook`.
fn stand_in(program: &str, hook: Hook, nth: usize) -> Result<&'static str, EbpfError> {
    let found = match hook {
        Hook::Tracepoint(..) => TRACEPOINTS.get(nth).copied(),
        Hook::Raw(_) => RAW.get(nth).copied(),
        Hook::Cgroup => CGROUP
            .iter()
            .find_map(|(real, empty)| (*real == program).then_some(*empty)),
    };
    found.ok_or_else(|| EbpfError::MissingProgram(format!("an empty stand-in for {program}")))
}

/// Hooks a floor can leave out, to measure what they cost on their own (`vigil floor
/// --without`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LeaveOut {
    /// The raw `sys_enter` and `sys_exit` tracepoints, which run on every system call.
    RawSyscalls,
    /// Every system call hook: the raw ones and each `syscalls/*` tracepoint. What is left is
    /// what a kernel with BPF LSM would need without syscall tracepoints: the scheduler and
    /// cgroup tracepoints, the cgroup socket programs and the LSM hooks.
    Syscalls,
}

impl LeaveOut {
    /// Whether this leaves `hook` out.
    pub fn covers(self, hook: Hook) -> bool {
        let raw_syscall = matches!(hook, Hook::Raw("sys_enter" | "sys_exit"));
        match self {
            Self::RawSyscalls => raw_syscall,
            Self::Syscalls => raw_syscall || matches!(hook, Hook::Tracepoint("syscalls", _)),
        }
    }
}

/// The empty programs attached; they detach when this is dropped.
pub struct Floor {
    _ebpf: Ebpf,
    /// Hooks with an empty program, the LSM ones included.
    pub attached: usize,
    /// Whether the LSM hooks have theirs (where Vigil would attach its prevention).
    pub lsm: bool,
}

impl Floor {
    /// Attaches an empty program on each of Vigil's hooks but those `leave_out` covers.
    pub fn attach(
        cgroup_root: Option<&std::path::Path>,
        leave_out: &[LeaveOut],
    ) -> Result<Self, EbpfError> {
        super::tracefs::ensure_tracefs()?;
        let mut ebpf = EbpfLoader::new().load(PROBES_OBJECT)?;
        let root_path = match cgroup_root {
            Some(root) => crate::metadata::cgroup::resolve_root(root)?,
            None => crate::metadata::cgroup::detect_root()?,
        };
        let root = std::fs::File::open(&root_path).map_err(|source| EbpfError::Io {
            path: root_path.clone(),
            source,
        })?;
        // As the agent does: on the LSM hooks first, all of them or none.
        let lsm = match prevent::lsm_missing() {
            Some(why) => {
                tracing::info!("no empty LSM programs: {why}");
                false
            }
            None => match attach_lsm(&mut ebpf) {
                Ok(()) => true,
                Err(err) => {
                    tracing::info!(%err, "no empty LSM programs: the kernel refused one");
                    false
                }
            },
        };
        let mut attached = if lsm { LSM.len() } else { 0 };
        let mut on_hook: HashMap<Hook, usize> = HashMap::new();
        // The LSM programs stand for exec and W^X prevention both, as the agent's do.
        let (kernel, _) = super::offsets::kernel_offsets(super::offsets::load_btf().ok().as_ref());
        let mut prevent = if lsm {
            let active = prevent::Prevention {
                active: agent_common::prevent::EXEC
                    | agent_common::prevent::WX
                    | agent_common::prevent::FOREIGN_OPEN,
                ..Default::default()
            };
            let fallbacks = super::fallback::Fallbacks::detect().unwrap_or_default();
            active.active | super::taken_over(&active, &fallbacks, &kernel)
        } else {
            0
        };
        // And on the foreign-write LSM hooks where the agent would attach its programs.
        if super::foreign_calls_possible(prevent, &kernel) {
            match attach_lsm_group(&mut ebpf, LSM_FOREIGN_CALLS) {
                Ok(()) => {
                    prevent |= agent_common::prevent::FOREIGN_CALLS;
                    attached += LSM_FOREIGN_CALLS.len();
                }
                Err(err) => tracing::info!(%err, "no empty foreign-write LSM programs"),
            }
        }
        // The hooks of `vigil run`, the most it attaches.
        for (program, hook) in attachments_with(super::Mode::Enforce, prevent) {
            if leave_out.iter().any(|l| l.covers(hook)) {
                continue;
            }
            let nth = on_hook.entry(hook).or_default();
            let empty = stand_in(program, hook, *nth)?;
            *nth += 1;
            let err = |action: &'static str| {
                move |source| EbpfError::Program {
                    program: empty.into(),
                    action,
                    source,
                }
            };
            let prog = ebpf
                .program_mut(empty)
                .ok_or_else(|| EbpfError::MissingProgram(empty.into()))?;
            if prog.fd().is_err() {
                load_program(prog, hook).map_err(err("load"))?;
                super::log_program_id(empty, prog.info());
            }
            attach_program(prog, hook, &root, false).map_err(err("attach"))?;
            attached += 1;
        }
        Ok(Self {
            _ebpf: ebpf,
            attached,
            lsm,
        })
    }
}

/// Attaches the empty LSM programs; on a failure the ones attached detach with `ebpf`.
fn attach_lsm(ebpf: &mut Ebpf) -> Result<(), EbpfError> {
    attach_lsm_group(ebpf, LSM)
}

fn attach_lsm_group(ebpf: &mut Ebpf, group: &[(&str, &str)]) -> Result<(), EbpfError> {
    let btf = AyaBtf::from_sys_fs().map_err(|e| EbpfError::Btf {
        path: super::offsets::VMLINUX_BTF.into(),
        reason: e.to_string(),
    })?;
    for (hook, program) in group {
        let err = |action: &'static str| {
            move |source| EbpfError::Program {
                program: (*program).into(),
                action,
                source,
            }
        };
        let prog: &mut Program = ebpf
            .program_mut(program)
            .ok_or_else(|| EbpfError::MissingProgram((*program).into()))?;
        let prog = <&mut Lsm>::try_from(prog).map_err(err("load"))?;
        prog.load(hook, &btf).map_err(err("load"))?;
        super::log_program_id(program, prog.info());
        prog.attach().map_err(err("attach"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use object::{Object, ObjectSymbol};

    use crate::ebpf::attachments;

    use super::*;

    #[test]
    fn every_attachment_of_vigil_has_an_empty_stand_in_in_the_object_and_lsm_hooks_match() {
        let elf = object::File::parse(PROBES_OBJECT).expect("the probes object");
        let symbols: HashSet<&str> = elf.symbols().filter_map(|s| s.name().ok()).collect();
        let mut on_hook: HashMap<Hook, usize> = HashMap::new();
        let mut used = HashSet::new();
        for (program, hook) in attachments() {
            let nth = on_hook.entry(hook).or_default();
            let empty = stand_in(program, hook, *nth)
                .unwrap_or_else(|e| panic!("{program} on {hook:?}: {e}"));
            *nth += 1;
            assert!(symbols.contains(empty), "{empty} is not in the object");
            used.insert(empty);
        }
        // No stand-in is left unused: the floor has no hook Vigil lacks.
        for empty in TRACEPOINTS
            .iter()
            .chain(&RAW)
            .chain(CGROUP.iter().map(|(_, e)| e))
        {
            assert!(used.contains(empty), "{empty} stands in for nothing");
        }
        let prevention: Vec<&str> = prevent::PREVENTION
            .iter()
            .map(|(_, hook, _)| *hook)
            .collect();
        let floor: Vec<&str> = LSM.iter().map(|(hook, _)| *hook).collect();
        assert_eq!(prevention, floor);
        let foreign: Vec<&str> = prevent::FOREIGN_CALLS
            .iter()
            .map(|(_, hook, _)| *hook)
            .collect();
        let floor: Vec<&str> = LSM_FOREIGN_CALLS.iter().map(|(hook, _)| *hook).collect();
        assert_eq!(foreign, floor);
        for (_, empty) in LSM.iter().chain(LSM_FOREIGN_CALLS) {
            assert!(symbols.contains(empty), "{empty} is not in the object");
        }
    }

    /// Leaving out the syscall hooks leaves no hook in tracefs' `syscalls` or `raw_syscalls`
    /// categories and keeps every other; leaving out the raw ones keeps `syscalls/*`.
    #[test]
    fn leaving_out_syscall_hooks_goes_by_the_tracepoints_category() {
        let category = |hook: Hook| hook.tracepoint().map(|(category, _)| category);
        let hooks: Vec<Hook> = attachments().map(|(_, hook)| hook).collect();
        for hook in &hooks {
            let syscall = matches!(category(*hook), Some("syscalls" | "raw_syscalls"));
            assert_eq!(LeaveOut::Syscalls.covers(*hook), syscall, "{hook:?}");
            assert_eq!(
                LeaveOut::RawSyscalls.covers(*hook),
                category(*hook) == Some("raw_syscalls"),
                "{hook:?}"
            );
        }
        // Both kinds are there to leave out, and something stays when they are.
        for leave_out in [LeaveOut::RawSyscalls, LeaveOut::Syscalls] {
            assert!(hooks.iter().any(|h| leave_out.covers(*h)), "{leave_out:?}");
        }
        assert!(hooks.iter().any(|h| !LeaveOut::Syscalls.covers(*h)));
    }
}
