//! `vigil doctor`: what this kernel offers the agent, and whether the agent can run here.
use std::{fmt, path::Path};

use aya::{
    Btf as AyaBtf, Ebpf, EbpfLoader,
    programs::{FEntry, TracePoint},
};

use crate::{
    ebpf::{
        Btf, PINNED_AGENTS, PROGRAMS, TAIL_CALLS, attachments,
        fallback::Fallbacks,
        load_program, offsets,
        prevent::{self, PREVENTION},
        read_probe_errors, tracefs,
    },
    metadata::cgroup,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Missing, but the agent runs without it (with less).
    Missing,
    /// The agent cannot run.
    Fail,
}

#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.status {
            Status::Ok => "ok  ",
            Status::Missing => "no  ",
            Status::Fail => "FAIL",
        };
        write!(f, "{tag} {:<34} {}", self.name, self.detail)
    }
}

fn check(name: impl Into<String>, status: Status, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        status,
        detail: detail.into(),
    }
}

/// For a map creation refused with `EPERM`: the locked-memory limit, which kernels before
/// 5.11 charge BPF maps to.
fn memlock_note(err: &std::io::Error) -> String {
    if err.raw_os_error() != Some(libc::EPERM) {
        return String::new();
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: reads this process's own limit into a valid struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return String::new();
    }
    let shown = |v: libc::rlim_t| {
        if v == libc::RLIM_INFINITY {
            "unlimited".to_owned()
        } else {
            format!("{} KiB", v / 1024)
        }
    };
    format!(
        " (RLIMIT_MEMLOCK {} of {}: kernels before 5.11 charge BPF maps to it, per user)",
        shown(limit.rlim_cur),
        shown(limit.rlim_max)
    )
}

fn ring_buffer_supported() -> Result<(), std::io::Error> {
    // union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries.
    let mut attr = [0u32; 32];
    attr[0] = 27; // BPF_MAP_TYPE_RINGBUF
    attr[3] = 4096;
    // SAFETY: attr is a zeroed bpf_attr large enough for BPF_MAP_CREATE.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by the kernel.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

/// Runs every check; the agent can run when none is `Fail`.
pub fn run() -> Vec<Check> {
    crate::ebpf::raise_memlock_limit();
    let mut checks = Vec::new();
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    checks.push(if euid == 0 {
        check("privileges", Status::Ok, "running as root")
    } else {
        check("privileges", Status::Fail, format!("running as uid {euid}; loading eBPF programs needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN)"))
    });

    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    checks.push(check("kernel", Status::Ok, kernel.trim()));

    match Btf::from_file(Path::new(offsets::VMLINUX_BTF)) {
        Ok(btf) => {
            let (_, missing) = offsets::kernel_offsets(Some(&btf));
            checks.push(if missing.is_empty() {
                check("BTF", Status::Ok, format!("{}: every kernel structure member the probes read was found", offsets::VMLINUX_BTF))
            } else {
                check("BTF", Status::Missing, format!("members not found: {}", missing.join(", ")))
            });
        }
        Err(err) => checks.push(check("BTF", Status::Missing, format!("{err}: memfd/deleted exec flags, parent pids, READ_IMPLIES_EXEC and UDP connects are not reported"))),
    }

    let tracefs_dir = match tracefs::ensure_tracefs() {
        Ok(dir) => {
            checks.push(check("tracefs", Status::Ok, dir.display().to_string()));
            Some(dir)
        }
        Err(err) => {
            checks.push(check("tracefs", Status::Fail, err.to_string()));
            None
        }
    };
    checks.push(match tracefs::ensure_bpffs() {
        Ok(()) => check("bpffs", Status::Ok, tracefs::BPFFS),
        Err(err) => check("bpffs", Status::Missing, err.to_string()),
    });
    if let Some(dir) = &tracefs_dir {
        for (category, name) in attachments().filter_map(|(_, hook)| hook.tracepoint()) {
            let path = dir.join("events").join(category).join(name);
            checks.push(if path.join("id").exists() {
                check(
                    format!("tracepoint {category}/{name}"),
                    Status::Ok,
                    "present",
                )
            } else {
                check(
                    format!("tracepoint {category}/{name}"),
                    Status::Fail,
                    format!("{} is missing", path.display()),
                )
            });
        }
        checks.push(match offsets::check_syscall_layout(dir) {
            Ok(()) => check("tracepoint formats", Status::Ok, "fields at known widths"),
            Err(err) => check("tracepoint formats", Status::Fail, err.to_string()),
        });
    }

    checks.push(match ring_buffer_supported() {
        Ok(()) => check("BPF ring buffer", Status::Ok, "map created"),
        Err(err) => check(
            "BPF ring buffer",
            Status::Fail,
            format!(
                "creating a ring buffer map failed: {err}{}",
                memlock_note(&err)
            ),
        ),
    });

    checks.push(match cgroup::detect_root() {
        Ok(root) => check("cgroup v2 root", Status::Ok, root.display().to_string()),
        Err(err) => check("cgroup v2 root", Status::Fail, err.to_string()),
    });

    program_checks(&mut checks);
    running_agents(&mut checks);
    checks
}

fn program_checks(checks: &mut Vec<Check>) {
    let btf = offsets::load_btf().ok();
    let (kernel, _) = offsets::kernel_offsets(btf.as_ref());
    // A failed probe or a fallback that cannot work is reported, and the programs are still
    // verified (with the helpers, if the probe failed), so every other check is made.
    let fallbacks = Fallbacks::detect();
    let helpers = fallbacks
        .as_ref()
        .map_err(ToString::to_string)
        .and_then(|f| f.check(&kernel).map_err(|e| e.to_string()));
    let fallbacks = fallbacks.unwrap_or_default();
    checks.push(match helpers {
        Ok(()) => {
            let taken = fallbacks.describe();
            check(
                "kernel helpers",
                Status::Ok,
                if taken.is_empty() {
                    "every helper the probes call is available to them".to_owned()
                } else {
                    format!("fallbacks taken:\n{}", taken.join("\n"))
                },
            )
        }
        Err(err) => check("kernel helpers", Status::Fail, err),
    });
    let mut loader = EbpfLoader::new();
    fallbacks.apply(&mut loader);
    let mut ebpf = match loader.load(crate::ebpf::Probes::object()) {
        Ok(ebpf) => ebpf,
        Err(err) => {
            checks.push(check(
                "eBPF object",
                Status::Fail,
                format!("loading maps failed: {err}"),
            ));
            return;
        }
    };
    for (program, hooks) in PROGRAMS {
        checks.push(verify(&mut ebpf, fallbacks.program(program), "", |p| {
            load_program(p, hooks[0])
        }));
    }
    // Tail-call targets are programs jumped to, never attached.
    for (program, _) in TAIL_CALLS {
        checks.push(verify(&mut ebpf, program, " (jumped to)", |p| {
            crate::ebpf::load_jump_target(p)
        }));
    }
    let send_signal = ebpf
        .program_mut("doctor_send_signal")
        .ok_or_else(|| "missing from the object".to_string())
        .and_then(|p| <&mut TracePoint>::try_from(p).map_err(|e| e.to_string()))
        .and_then(|p| p.load().map_err(|e| e.to_string()));
    checks.push(match send_signal {
        Ok(()) => check(
            "bpf_send_signal",
            Status::Ok,
            "available to tracepoint programs (in-kernel kill)",
        ),
        Err(err) => check(
            "bpf_send_signal",
            Status::Missing,
            format!("{err}: Kill actions cannot be enforced in the kernel"),
        ),
    });

    prevention_checks(&mut ebpf, checks, &fallbacks, &kernel);
    let btf = AyaBtf::from_sys_fs();
    let fentry = match &btf {
        Ok(btf) => ebpf
            .program_mut("doctor_fentry")
            .ok_or_else(|| "missing from the object".to_string())
            .and_then(|p| <&mut FEntry>::try_from(p).map_err(|e| e.to_string()))
            .and_then(|p| {
                p.load("security_bprm_check", btf)
                    .map_err(|e| format!("load: {e}"))?;
                p.attach().map(drop).map_err(|e| format!("attach: {e}"))
            }),
        Err(err) => Err(format!("no kernel BTF: {err}")),
    };
    checks.push(match fentry {
        Ok(()) => check("fentry", Status::Ok, "fentry programs load and attach"),
        Err(err) => check(
            "fentry",
            Status::Missing,
            format!("{err}; tracepoints are used instead"),
        ),
    });
}

/// Loads (verifies) `program` with `load`, and says how long the verifier took and, on 5.16
/// and newer, how many instructions it verified (for comparing kernels).
fn verify(
    ebpf: &mut Ebpf,
    program: &str,
    suffix: &str,
    load: impl FnOnce(&mut aya::programs::Program) -> Result<(), aya::programs::ProgramError>,
) -> Check {
    let started = std::time::Instant::now();
    let result = ebpf
        .program_mut(program)
        .ok_or_else(|| "missing from the object".to_string())
        .and_then(|p| {
            load(p).map_err(|e| e.to_string())?;
            Ok(p.info().ok().and_then(|i| i.verified_instruction_count()))
        });
    let took = started.elapsed();
    match result {
        Ok(verified) => check(
            format!("program {program}"),
            Status::Ok,
            format!(
                "accepted by the verifier in {} ms{}{suffix}",
                took.as_millis(),
                verified.map_or_else(String::new, |n| format!(", {n} instructions verified"))
            ),
        ),
        Err(err) => check(format!("program {program}"), Status::Fail, err),
    }
}

/// Whether the prevention programs (BPF LSM) load and attach here, each one's verified
/// instructions, and what `Deny` of exec and W^X amounts to on this node. They stay attached
/// only while the doctor runs, and refuse nothing then: no policy is loaded.
/// How many instructions the verifier went through for loaded program `program`.
fn verified(ebpf: &Ebpf, program: &str) -> Option<u32> {
    ebpf.program(program)
        .and_then(|p| p.info().ok())
        .and_then(|i| i.verified_instruction_count())
}

fn prevention_checks(
    ebpf: &mut Ebpf,
    checks: &mut Vec<Check>,
    fallbacks: &Fallbacks,
    kernel: &agent_common::KernelOffsets,
) {
    let started = std::time::Instant::now();
    let (prevention, _links) = prevent::attach(ebpf, false);
    let took = started.elapsed();
    checks.push(check(
        "W^X hooks",
        Status::Ok,
        if crate::ebpf::wx_reports(&prevention, fallbacks, kernel) != 0 {
            "the BPF LSM programs on mmap_file and file_mprotect report and decide every \
             W^X request; no W^X syscall tracepoint is attached"
        } else {
            "the syscall tracepoints of mmap, mprotect, pkey_mprotect, shmat and personality \
             (and raw sys_enter for 32-bit calls) report W^X"
        },
    ));
    checks.push(check(
        "script hooks",
        Status::Ok,
        if crate::ebpf::script_levels(&prevention, kernel) != 0 {
            "the BPF LSM program on bprm_check_security decides every level of a script \
             chain as the kernel picks it; no open tracepoint is attached for scripts"
        } else {
            "a script is decided on the file its interpreter opens (the open, openat and \
             openat2 syscall tracepoints)"
        },
    ));
    // As the agent does: where the LSM programs can tell the call they run under.
    let mut foreign_calls = Vec::new();
    let mut taken = prevention.active | crate::ebpf::taken_over(&prevention, fallbacks, kernel);
    if crate::ebpf::foreign_calls_possible(taken, kernel) {
        match prevent::attach_foreign_calls(ebpf, false) {
            Ok((bits, _)) => {
                taken |= bits;
                foreign_calls = prevent::FOREIGN_CALLS.to_vec();
            }
            Err(err) => checks.push(check(
                "foreign write LSM programs",
                Status::Missing,
                format!("the BPF LSM programs for them do not attach: {err}"),
            )),
        }
    }
    checks.push(check(
        "foreign write hooks",
        Status::Ok,
        if taken & agent_common::prevent::FOREIGN_CALLS != 0 {
            "the BPF LSM programs on ptrace_access_check, ptrace_traceme and \
             inode_init_security_anon judge ptrace, process_vm_writev and userfaultfd from \
             every entry; no syscall tracepoint is attached for them"
        } else {
            "the ptrace, process_vm_writev and userfaultfd syscall tracepoints (and raw \
             sys_enter for 32-bit calls) judge foreign writes by system call"
        },
    ));
    checks.push(check(
        "32-bit entry hook",
        Status::Ok,
        if crate::ebpf::sys_enter_late(crate::ebpf::Mode::Enforce, taken) {
            "raw sys_enter is attached only once a policy denies 32-bit calls \
             (compatSyscalls: Deny): the BPF LSM programs see every other 32-bit call a \
             rule is about, and bprm_check_security the exec's entry"
        } else {
            "raw sys_enter runs at every system call: 32-bit calls, and the entry of execs"
        },
    ));
    // As `vigil run` does: where bprm_check_security reads the exec's entry.
    if taken & agent_common::prevent::EXEC_ENTRY != 0 {
        checks.push(match prevent::attach_exec_return(ebpf, false) {
            Ok(_) => {
                let verified = verified(ebpf, "bprm_execve_exit");
                let exit = if crate::ebpf::sys_exit_late(
                    crate::ebpf::Mode::Enforce,
                    taken | agent_common::prevent::EXEC_RETURN,
                ) {
                    "raw sys_exit is attached only once a policy kills (for the kills cgroup \
                     socket programs cannot send)"
                } else {
                    "raw sys_exit still runs at every system call, for the 32-bit opens"
                };
                check(
                    "exec return hook",
                    Status::Ok,
                    format!(
                        "the fexit program on bprm_execve checks every exec's return{}; {exit}",
                        verified
                            .map_or_else(String::new, |n| format!(" ({n} instructions verified)"))
                    ),
                )
            }
            Err(err) => check(
                "exec return hook",
                Status::Missing,
                format!("raw sys_exit checks an exec's return: {err}"),
            ),
        });
    }
    if prevention.unavailable.is_none() {
        for (program, hook, _) in PREVENTION.iter().chain(&foreign_calls) {
            let verified = verified(ebpf, program);
            checks.push(check(
                format!("program {program}"),
                Status::Ok,
                format!(
                    "attached to LSM hook {hook}{}",
                    verified.map_or_else(String::new, |n| format!(", {n} instructions verified"))
                ),
            ));
        }
    }
    checks.push(check(
        "prevention (BPF LSM)",
        if prevention.unavailable.is_none() {
            Status::Ok
        } else {
            Status::Missing
        },
        format!(
            "{} ({} ms to load and attach){}",
            prevention.describe(),
            took.as_millis(),
            prevention
                .detail
                .as_deref()
                .map_or_else(String::new, |d| format!("\n{d}"))
        ),
    ));
}

/// The probe failures each running agent on this host has counted (from the counters it
/// pins); stale pins of agents that are gone are removed.
fn running_agents(checks: &mut Vec<Check>) {
    let Ok(entries) = std::fs::read_dir(PINNED_AGENTS) else {
        checks.push(check("probe failures", Status::Ok, "no agent running"));
        return;
    };
    let mut running = 0;
    for entry in entries.flatten() {
        let dir = entry.path();
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            // An agent that did not get to clean up (killed): its counters mean nothing now.
            let _removed = std::fs::remove_dir_all(&dir);
            continue;
        }
        running += 1;
        let name = format!("probe failures (agent pid {pid})");
        let counts = aya::maps::MapData::from_pin(dir.join("probe_errors"))
            .map_err(|e| e.to_string())
            .and_then(|data| {
                aya::maps::PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))
                    .map_err(|e| e.to_string())
            })
            .and_then(|map| read_probe_errors(&map).map_err(|e| e.to_string()));
        checks.push(match counts {
            Ok(counts) if counts.is_empty() => check(name, Status::Ok, "none"),
            Ok(counts) => check(
                name,
                Status::Missing,
                counts
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            Err(err) => check(name, Status::Missing, format!("cannot read: {err}")),
        });
    }
    if running == 0 {
        checks.push(check("probe failures", Status::Ok, "no agent running"));
    }
}

/// Whether the agent can run, given the checks.
pub fn can_run(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.status != Status::Fail)
}
