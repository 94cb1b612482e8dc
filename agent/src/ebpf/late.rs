//! Raw `sys_enter` attached only once a policy needs it. Where the BPF LSM programs read the
//! task's registers they see every 32-bit call a rule is about (W^X, foreign writes) and the
//! exec's entry (`prevent::EXEC_ENTRY`); what is left for raw `sys_enter` is the rule that
//! denies the 32-bit entry itself (`compatSyscalls: Deny`). It would run at every system call
//! of every task, and keep each on the system call slow path, on nodes whose policies never
//! ask for that; so it is verified at load (a program the kernel refuses fails the start,
//! not the first such policy) and attached when the first set that denies 32-bit calls is
//! written, before that set is bound. It stays attached, as the set's flag stays raised.
use std::path::PathBuf;

use aya::programs::{RawTracePoint, links::FdLink};

use super::EbpfError;

/// The program's name in the object and the raw tracepoint it attaches to.
pub const PROGRAM: &str = "sys_enter";

/// A second handle on the loaded program (the object stays with the pipeline), and where
/// its link is pinned when enforcement outlives the agent.
pub struct LateSysEnter {
    program: RawTracePoint,
    pin: Option<PathBuf>,
    attached: bool,
}

impl std::fmt::Debug for LateSysEnter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LateSysEnter")
            .field("pin", &self.pin)
            .field("attached", &self.attached)
            .finish()
    }
}

impl LateSysEnter {
    /// A handle on `loaded` (already verified); `pin`: the link's path under this
    /// generation's pins.
    pub fn new(loaded: &RawTracePoint, pin: Option<PathBuf>) -> Result<Self, EbpfError> {
        let err = |source| EbpfError::Program {
            program: PROGRAM.into(),
            action: "a second handle for attaching it later",
            source,
        };
        let info = loaded.info().map_err(err)?;
        let program = RawTracePoint::from_program_info(info, PROGRAM.into()).map_err(err)?;
        Ok(Self {
            program,
            pin,
            attached: false,
        })
    }

    /// Attaches it, once; pinned where the other links are.
    pub fn attach(&mut self) -> Result<(), EbpfError> {
        if self.attached {
            return Ok(());
        }
        let err = |source| EbpfError::Program {
            program: PROGRAM.into(),
            action: "attach (a set denies 32-bit calls)",
            source,
        };
        let id = self.program.attach(PROGRAM).map_err(err)?;
        if let Some(path) = &self.pin {
            let link = FdLink::from(self.program.take_link(id).map_err(err)?);
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
