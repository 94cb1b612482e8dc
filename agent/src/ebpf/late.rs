//! Raw `sys_enter` attached only once a policy needs it. Where the BPF LSM programs read the
//! task's registers they see every 32-bit call a rule is about (W^X, foreign writes) and the
//! exec's entry (`prevent::EXEC_ENTRY`); what is left for raw `sys_enter` is the rule that
//! denies the 32-bit entry itself (`compatSyscalls: Deny`). It would run at every system call
//! of every task, and keep each on the system call slow path, on nodes whose policies never
//! ask for that; so it is verified at load (a program the kernel refuses fails the start,
//! not the first such policy) and attached when the first set that denies 32-bit calls is
//! written, before that set is bound. It stays attached, as the set's flag stays raised.
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use aya::{
    Ebpf,
    programs::{RawTracePoint, links::FdLink},
};

use super::EbpfError;

/// The program's name in the object and the raw tracepoint it attaches to.
pub const PROGRAM: &str = "sys_enter";

/// The loaded object (shared with the probes; a second handle on the program alone would
/// need `CAP_SYS_ADMIN`), the program's name in it on this kernel, and where its link is
/// pinned when enforcement outlives the agent.
pub struct LateSysEnter {
    ebpf: Arc<Mutex<Ebpf>>,
    build: String,
    pin: Option<PathBuf>,
    attached: bool,
}

impl std::fmt::Debug for LateSysEnter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LateSysEnter")
            .field("build", &self.build)
            .field("pin", &self.pin)
            .field("attached", &self.attached)
            .finish()
    }
}

impl LateSysEnter {
    /// `build`: the loaded (already verified) program's name in `ebpf`; `pin`: the link's
    /// path under this generation's pins.
    pub fn new(ebpf: Arc<Mutex<Ebpf>>, build: &str, pin: Option<PathBuf>) -> Self {
        Self {
            ebpf,
            build: build.to_owned(),
            pin,
            attached: false,
        }
    }

    /// Attaches it, once; pinned where the other links are. Unpinned, the link lives as
    /// long as the loaded object.
    pub fn attach(&mut self) -> Result<(), EbpfError> {
        if self.attached {
            return Ok(());
        }
        let err = |source| EbpfError::Program {
            program: PROGRAM.into(),
            action: "attach (a set denies 32-bit calls)",
            source,
        };
        let mut ebpf = self.ebpf.lock().unwrap_or_else(PoisonError::into_inner);
        let program: &mut RawTracePoint = ebpf
            .program_mut(&self.build)
            .ok_or_else(|| EbpfError::MissingProgram(self.build.clone()))?
            .try_into()
            .map_err(err)?;
        let id = program.attach(PROGRAM).map_err(err)?;
        if let Some(path) = &self.pin {
            let link = FdLink::from(program.take_link(id).map_err(err)?);
            link.pin(path).map_err(|e| EbpfError::Pin {
                program: PROGRAM.into(),
                path: path.clone(),
                reason: e.to_string(),
            })?;
        }
        self.attached = true;
        tracing::info!(
            "raw sys_enter attached: a policy denies 32-bit system calls, and every system call is now checked for them"
        );
        Ok(())
    }
}
