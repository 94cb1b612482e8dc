//! Raw `sys_enter` and raw `sys_exit` attached only once a policy needs them: each would run
//! at every system call of every task, and keep each on the system call slow path, on nodes
//! whose policies never ask for what they do. Each is verified at load (a program the kernel
//! refuses fails the start, not the first such policy) and attached when the first set that
//! needs it is written, before that set is bound; it stays attached.
//!
//! - Raw `sys_enter`, where the BPF LSM programs read the task's registers: they see every
//!   32-bit call a rule is about (W^X, foreign writes) and the exec's entry
//!   (`prevent::EXEC_ENTRY`); what is left is the rule that denies the 32-bit entry itself
//!   (`compatSyscalls: Deny`).
//! - Raw `sys_exit`, where `bprm_execve`'s fexit program checks the exec's return
//!   (`prevent::EXEC_RETURN`) and `file_open` sees the 32-bit opens
//!   (`prevent::FOREIGN_OPEN`): what is left is carrying out kills a hook could not send
//!   itself (a cgroup socket program's refusal under Kill, a process moved out of its
//!   binding under Kill), so a set that kills attaches it.
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use aya::{
    Ebpf,
    programs::{RawTracePoint, links::FdLink},
};

use super::EbpfError;

/// Raw `sys_enter`: the program's name in the object and the raw tracepoint it attaches to.
pub const SYS_ENTER: &str = "sys_enter";
/// Raw `sys_exit`, likewise.
pub const SYS_EXIT: &str = "sys_exit";

/// The loaded object (shared with the probes; a second handle on the program alone would
/// need `CAP_SYS_ADMIN`), the program's name in it on this kernel, and where its link is
/// pinned when enforcement outlives the agent.
pub struct Late {
    ebpf: Arc<Mutex<Ebpf>>,
    /// [`SYS_ENTER`] or [`SYS_EXIT`].
    program: &'static str,
    build: String,
    pin: Option<PathBuf>,
    attached: bool,
}

impl std::fmt::Debug for Late {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Late")
            .field("program", &self.program)
            .field("build", &self.build)
            .field("pin", &self.pin)
            .field("attached", &self.attached)
            .finish()
    }
}

impl Late {
    /// `program` ([`SYS_ENTER`] or [`SYS_EXIT`]), loaded (already verified) in `ebpf` as
    /// `build`; `pin`: the link's path under this generation's pins.
    pub fn new(
        ebpf: Arc<Mutex<Ebpf>>,
        program: &'static str,
        build: &str,
        pin: Option<PathBuf>,
    ) -> Self {
        Self {
            ebpf,
            program,
            build: build.to_owned(),
            pin,
            attached: false,
        }
    }

    /// [`SYS_ENTER`] or [`SYS_EXIT`].
    pub fn program(&self) -> &'static str {
        self.program
    }

    /// Attaches it, once; pinned where the other links are. Unpinned, the link lives as
    /// long as the loaded object.
    pub fn attach(&mut self) -> Result<(), EbpfError> {
        if self.attached {
            return Ok(());
        }
        let err = |source| EbpfError::Program {
            program: self.program.into(),
            action: "attach (a set needs it)",
            source,
        };
        let mut ebpf = self.ebpf.lock().unwrap_or_else(PoisonError::into_inner);
        let program: &mut RawTracePoint = ebpf
            .program_mut(&self.build)
            .ok_or_else(|| EbpfError::MissingProgram(self.build.clone()))?
            .try_into()
            .map_err(err)?;
        let id = program.attach(self.program).map_err(err)?;
        if let Some(path) = &self.pin {
            let link = FdLink::from(program.take_link(id).map_err(err)?);
            link.pin(path).map_err(|e| EbpfError::Pin {
                program: self.program.into(),
                path: path.clone(),
                reason: e.to_string(),
            })?;
        }
        self.attached = true;
        if self.program == SYS_ENTER {
            tracing::info!(
                "raw sys_enter attached: a policy denies 32-bit system calls, and every system call is now checked for them"
            );
        } else {
            tracing::info!(
                "raw sys_exit attached: a policy kills, and every system call's return now carries out the kills its hooks could not send"
            );
        }
        Ok(())
    }
}
