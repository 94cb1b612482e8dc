//! Refusing acts before they happen where the kernel runs BPF LSM: the `lsm_*` programs are
//! attached all together or not at all. Without them the tracepoints carry a `Deny` of exec
//! and W^X out as a kill after the act (fail closed), and this says so.
use agent_common::prevent;
use aya::{
    Btf as AyaBtf, Ebpf,
    programs::{FExit, Lsm, links::FdLink},
};

use super::{EbpfError, tracefs};

/// Each prevention program, the LSM hook it attaches to and the acts it covers.
pub const PREVENTION: &[(&str, &str, u32)] = &[
    ("lsm_bprm_check", "bprm_check_security", prevent::EXEC),
    ("lsm_mmap_file", "mmap_file", prevent::WX),
    ("lsm_file_mprotect", "file_mprotect", prevent::WX),
    // After the W^X programs on the same hooks, whose refusal they pass on: files mapped
    // executable, judged only where these programs report W^X (`prevent::WX_REPORTS`).
    ("lsm_mmap_file_exec", "mmap_file", prevent::WX),
    ("lsm_file_mprotect_exec", "file_mprotect", prevent::WX),
    ("lsm_file_open", "file_open", prevent::FOREIGN_OPEN),
];

/// Foreign writes by system call: attached after [`PREVENTION`], only where programs can
/// read the task's registers (the call each hook runs under, `mod.rs::wx_reports`), all three
/// or none. Without them the syscall tracepoints judge these calls.
pub const FOREIGN_CALLS: &[(&str, &str, u32)] = &[
    (
        "lsm_ptrace_access_check",
        "ptrace_access_check",
        prevent::FOREIGN_CALLS,
    ),
    (
        "lsm_ptrace_traceme",
        "ptrace_traceme",
        prevent::FOREIGN_CALLS,
    ),
    (
        "lsm_userfaultfd",
        "inode_init_security_anon",
        prevent::FOREIGN_CALLS,
    ),
];

/// What this node refuses before the act.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prevention {
    /// [`agent_common::prevent`] bits: what the attached programs cover.
    pub active: u32,
    /// Why nothing is refused before the act, when nothing is (one line).
    pub unavailable: Option<String>,
    /// The whole error, a verifier's log included, for `vigil doctor`.
    pub detail: Option<String>,
}

impl Prevention {
    /// One line for logs, `vigil doctor` and policy status.
    pub fn describe(&self) -> String {
        match &self.unavailable {
            None => "BPF LSM refuses denied execs, W^X mappings and foreign writes by open \
                     (/proc/<pid>/mem, /dev/userfaultfd) before they happen (EPERM)"
                .to_owned(),
            Some(why) => format!(
                "no BPF LSM ({why}): Deny of exec and W^X is carried out as Kill after the act"
            ),
        }
    }
}

/// Why BPF LSM cannot refuse anything here, or `None` when it is active.
pub(super) fn lsm_missing() -> Option<String> {
    match tracefs::active_lsms() {
        Ok(lsms) if lsms.iter().any(|l| l == "bpf") => None,
        Ok(lsms) => Some(format!(
            "bpf is not among the active LSMs ({}); boot with lsm=...,bpf",
            lsms.join(",")
        )),
        Err(err) => Some(format!("cannot read the active LSMs: {err}")),
    }
}

/// Attached programs' links, by program, for pinning.
pub type Links = Vec<(&'static str, FdLink)>;

/// Loads and attaches every prevention program, or none. Attached links are handed back for
/// pinning when `take` is set.
pub fn attach(ebpf: &mut Ebpf, take: bool) -> (Prevention, Links) {
    if let Some(why) = lsm_missing() {
        return (
            Prevention {
                active: 0,
                unavailable: Some(why),
                detail: None,
            },
            Vec::new(),
        );
    }
    match try_attach(ebpf, take, PREVENTION) {
        Ok((active, links)) => (
            Prevention {
                active,
                unavailable: None,
                detail: None,
            },
            links,
        ),
        Err(err) => (
            Prevention {
                active: 0,
                // The first line: a verifier's log would flood every policy's status.
                unavailable: Some(first_line(&err.to_string())),
                detail: Some(err.to_string()),
            },
            Vec::new(),
        ),
    }
}

/// The first line of `text`, at most 300 characters.
fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    match line.char_indices().nth(300) {
        Some((at, _)) => format!("{}...", &line[..at]),
        None => line.to_owned(),
    }
}

/// Attaches [`FOREIGN_CALLS`], all or none: what they cover and their links.
pub fn attach_foreign_calls(ebpf: &mut Ebpf, take: bool) -> Result<(u32, Links), EbpfError> {
    try_attach(ebpf, take, FOREIGN_CALLS)
}

/// The fexit program on `bprm_execve` that checks every successful exec's return
/// (`prevent::EXEC_RETURN`), for kernels where the LSM programs read the exec's entry: its
/// bit and, when `take`, its link. Fails where the kernel has no fexit trampolines, no
/// `bprm_execve` in its BTF or no `bpf_get_func_ret` (before 5.17); raw `sys_exit` then
/// checks the return.
pub fn attach_exec_return(ebpf: &mut Ebpf, take: bool) -> Result<(u32, Links), EbpfError> {
    const PROGRAM: &str = "bprm_execve_exit";
    let err = |action: &'static str| {
        move |source| EbpfError::Program {
            program: PROGRAM.into(),
            action,
            source,
        }
    };
    let btf = vmlinux_btf()?;
    let prog = ebpf
        .program_mut(PROGRAM)
        .ok_or_else(|| EbpfError::MissingProgram(PROGRAM.into()))?;
    let prog = <&mut FExit>::try_from(prog).map_err(err("load"))?;
    prog.load("bprm_execve", btf).map_err(err("load"))?;
    super::log_program_id(PROGRAM, prog.info());
    let id = prog.attach().map_err(err("attach"))?;
    let mut links = Vec::new();
    if take {
        let link = prog.take_link(id).map_err(err("take its link"))?;
        links.push((PROGRAM, FdLink::from(link)));
    }
    Ok((agent_common::prevent::EXEC_RETURN, links))
}

/// The kernel's BTF, which each LSM and fexit program's load names its hook in: parsed once
/// for every attach of a start.
fn vmlinux_btf() -> Result<&'static AyaBtf, EbpfError> {
    static BTF: std::sync::OnceLock<Result<AyaBtf, String>> = std::sync::OnceLock::new();
    BTF.get_or_init(|| AyaBtf::from_sys_fs().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|reason| EbpfError::Btf {
            path: super::offsets::VMLINUX_BTF.into(),
            reason: reason.clone(),
        })
}

fn try_attach(
    ebpf: &mut Ebpf,
    take: bool,
    group: &[(&'static str, &str, u32)],
) -> Result<(u32, Links), EbpfError> {
    let mut active = 0;
    let btf = vmlinux_btf()?;
    let mut attached = Vec::new();
    let mut links = Vec::new();
    let result = (|| {
        for (program, hook, bit) in group {
            let err = |action: &'static str| {
                move |source| EbpfError::Program {
                    program: (*program).into(),
                    action,
                    source,
                }
            };
            let prog = ebpf
                .program_mut(program)
                .ok_or_else(|| EbpfError::MissingProgram((*program).into()))?;
            let prog = <&mut Lsm>::try_from(prog).map_err(err("load"))?;
            prog.load(hook, btf).map_err(err("load"))?;
            super::log_program_id(program, prog.info());
            let id = prog.attach().map_err(err("attach"))?;
            if take {
                // Taken at once, so that a failure leaves nothing attached (see below).
                let link = prog.take_link(id).map_err(err("take its link"))?;
                links.push((*program, FdLink::from(link)));
            } else {
                attached.push((*program, id));
            }
            active |= bit;
        }
        Ok::<(), EbpfError>(())
    })();
    if let Err(err) = result {
        // All or nothing: a half-attached set would leave the tracepoints deferring to a
        // program that is not there. Taken links detach when dropped.
        links.clear();
        for (program, id) in attached {
            if let Some(prog) = ebpf.program_mut(program)
                && let Ok(prog) = <&mut Lsm>::try_from(prog)
            {
                let _detached = prog.detach(id);
            }
        }
        return Err(err);
    }
    Ok((active, links))
}
