//! Loading the probes, attaching them, and owning their maps.
mod btf;
pub mod offsets;
pub mod reader;
pub mod tracefs;

use std::path::PathBuf;

use agent_common::{Config, kind};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};

pub use btf::Btf;

/// The object built from `agent-ebpf` by `build.rs`.
static PROBES_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("VIGIL_PROBES_OBJECT"));

/// Every tracepoint program and the tracepoint it attaches to.
pub const TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("sys_enter_execve", "syscalls", "sys_enter_execve"),
    ("sys_enter_execveat", "syscalls", "sys_enter_execveat"),
    ("sched_process_exec", "sched", "sched_process_exec"),
    ("inet_sock_set_state", "sock", "inet_sock_set_state"),
    ("sys_enter_connect", "syscalls", "sys_enter_connect"),
    ("sys_enter_mmap", "syscalls", "sys_enter_mmap"),
    ("sys_enter_mprotect", "syscalls", "sys_enter_mprotect"),
    (
        "sys_enter_pkey_mprotect",
        "syscalls",
        "sys_enter_pkey_mprotect",
    ),
    ("sys_enter_personality", "syscalls", "sys_enter_personality"),
];

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mounting {fstype} at {target}: {source}")]
    Mount {
        fstype: String,
        target: String,
        source: std::io::Error,
    },
    #[error("{path}: invalid BTF: {reason}")]
    Btf { path: PathBuf, reason: String },
    #[error("tracepoint {tracepoint}: field `{field}` {reason}")]
    TracepointField {
        tracepoint: String,
        field: String,
        reason: String,
    },
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {program}: {action}: {source}")]
    Program {
        program: String,
        action: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(String),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
}

/// Limits the probes to one cgroup v2 subtree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupFilter {
    /// The cgroup's id (the inode number of its directory).
    pub id: u64,
    /// Its depth below the cgroup v2 root (the root is 0).
    pub level: u32,
}

#[derive(Debug, Clone, Default)]
pub struct ProbeOptions {
    pub cgroup: Option<CgroupFilter>,
    /// Size of the ring buffer in bytes (a power of two, at least a page); default 4 MiB.
    pub ring_buffer_bytes: Option<u32>,
    /// A process whose events are never emitted (the agent itself).
    pub exclude_pid: u32,
}

/// Records lost because the ring buffer was full, per behaviour, since load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelLosses {
    pub exec: u64,
    pub connect: u64,
    pub wx: u64,
}

impl KernelLosses {
    pub fn total(&self) -> u64 {
        self.exec + self.connect + self.wx
    }
}

pub struct LossCounters {
    map: PerCpuArray<MapData, u64>,
}

impl LossCounters {
    pub fn read(&self) -> Result<KernelLosses, EbpfError> {
        let sum = |slot: u32| -> Result<u64, EbpfError> {
            let values = self.map.get(&slot, 0).map_err(|source| EbpfError::Map {
                map: "LOSSES",
                source,
            })?;
            Ok(values.iter().sum())
        };
        Ok(KernelLosses {
            exec: sum(kind::EXEC)?,
            connect: sum(kind::CONNECT)?,
            wx: sum(kind::WX)?,
        })
    }
}

/// The loaded and attached probes. Dropping it detaches every program.
pub struct Probes {
    ebpf: Ebpf,
    /// Kernel structure members this kernel's BTF did not have.
    pub missing_offsets: Vec<String>,
}

impl Probes {
    pub fn load(options: &ProbeOptions) -> Result<Self, EbpfError> {
        let tracefs = tracefs::ensure_tracefs()?;
        tracefs::ensure_bpffs()?;
        let btf = match offsets::load_btf() {
            Ok(btf) => Some(btf),
            Err(err) => {
                tracing::warn!(%err, "no kernel BTF: exec memfd/deleted flags, parent pids, READ_IMPLIES_EXEC and UDP connects are not reported");
                None
            }
        };
        let (kernel, missing_offsets) = offsets::kernel_offsets(btf.as_ref());
        if btf.is_some() && !missing_offsets.is_empty() {
            tracing::warn!(members = ?missing_offsets, "kernel structure members not found in BTF; dependent fields stay empty");
        }
        let config = Config {
            filter_cgroup_id: options.cgroup.map_or(0, |c| c.id),
            filter_cgroup_level: options.cgroup.map_or(0, |c| c.level),
            agent_pid: options.exclude_pid,
            kernel,
            tracepoints: offsets::tracepoint_offsets(&tracefs)?,
        };

        let mut loader = EbpfLoader::new();
        if let Some(bytes) = options.ring_buffer_bytes {
            loader.map_max_entries("EVENTS", bytes);
        }
        let mut ebpf = loader.load(PROBES_OBJECT)?;
        {
            let map = ebpf
                .map_mut("CONFIG")
                .ok_or(EbpfError::MissingMap("CONFIG"))?;
            let mut array: Array<_, Config> =
                Array::try_from(map).map_err(|source| EbpfError::Map {
                    map: "CONFIG",
                    source,
                })?;
            array.set(0, config, 0).map_err(|source| EbpfError::Map {
                map: "CONFIG",
                source,
            })?;
        }
        for (program, category, name) in TRACEPOINTS {
            let prog: &mut TracePoint = ebpf
                .program_mut(program)
                .ok_or_else(|| EbpfError::MissingProgram((*program).into()))?
                .try_into()
                .map_err(|source| EbpfError::Program {
                    program: (*program).into(),
                    action: "wrong type",
                    source,
                })?;
            prog.load().map_err(|source| EbpfError::Program {
                program: (*program).into(),
                action: "load",
                source,
            })?;
            prog.attach(category, name)
                .map_err(|source| EbpfError::Program {
                    program: (*program).into(),
                    action: "attach",
                    source,
                })?;
        }
        Ok(Self {
            ebpf,
            missing_offsets,
        })
    }

    pub fn take_ring_buffer(&mut self) -> Result<RingBuf<MapData>, EbpfError> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(EbpfError::MissingMap("EVENTS"))?;
        RingBuf::try_from(map).map_err(|source| EbpfError::Map {
            map: "EVENTS",
            source,
        })
    }

    pub fn take_loss_counters(&mut self) -> Result<LossCounters, EbpfError> {
        let map = self
            .ebpf
            .take_map("LOSSES")
            .ok_or(EbpfError::MissingMap("LOSSES"))?;
        let map = PerCpuArray::try_from(map).map_err(|source| EbpfError::Map {
            map: "LOSSES",
            source,
        })?;
        Ok(LossCounters { map })
    }

    /// The loaded object, for `vigil doctor`'s load-only checks.
    pub fn object() -> &'static [u8] {
        PROBES_OBJECT
    }
}
