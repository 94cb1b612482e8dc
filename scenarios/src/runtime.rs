//! What a container runtime does to start a container's process, and the ways an intruder
//! might pass for it: a process started outside a cgroup, put into it by its parent (or
//! cloned into it), that execs before or after entering a mount namespace of its own.
//!
//! `runtime-handover MODE CGROUP_DIR PROGRAM ARGS...` prints `pid N` for the process that
//! execs `PROGRAM` and `status exit=N` or `status signal=N` for how it ended. Modes:
//! - `move`: the parent (outside `CGROUP_DIR`) writes the child's pid into its `cgroup.procs`;
//!   the child then execs (what runc 1.1 does before it enters the container);
//! - `move-unshare`: as `move`, but the child enters a mount namespace of its own first (the
//!   container's entrypoint);
//! - `move-fork`: as `move`, but the child's own child execs (the runtime's helpers);
//! - `move-fork-unshare`: as `move-fork`, the grandchild in a mount namespace of its own;
//! - `clone-into`: the child is cloned straight into the cgroup (`CLONE_INTO_CGROUP`, as
//!   crun and newer runc do);
//! - `clone-into-unshare`: as `clone-into`, with `CLONE_NEWNS` in the same clone;
//! - `policed-mover`: a process that moved itself into the cgroup moves the child in;
//! - `self-move`: the child moves itself in.
use std::{
    io::Write as _,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::Path,
};

use crate::{Failure, Outcome, os_error};

/// A pipe whose read end a child blocks on until the parent has put it in place.
#[derive(Clone, Copy)]
struct Gate {
    read: i32,
    write: i32,
}

impl Gate {
    fn new() -> Result<Self, Failure> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(os_error("pipe2"));
        }
        Ok(Self {
            read: fds[0],
            write: fds[1],
        })
    }

    /// In the child: waits for [`Self::open`].
    fn wait(&self) -> Outcome {
        let mut byte = 0u8;
        // SAFETY: reads one byte into a local.
        if unsafe { libc::read(self.read, (&raw mut byte).cast(), 1) } != 1 {
            return Err(os_error("read gate"));
        }
        Ok(())
    }

    fn open(&self) -> Outcome {
        // SAFETY: writes one byte from a static.
        if unsafe { libc::write(self.write, b"g".as_ptr().cast(), 1) } != 1 {
            return Err(os_error("write gate"));
        }
        Ok(())
    }
}

fn move_pid(dir: &str, pid: i32) -> Outcome {
    std::fs::write(Path::new(dir).join("cgroup.procs"), pid.to_string())?;
    Ok(())
}

fn unshare_mounts() -> Outcome {
    // SAFETY: a plain system call on this process.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(os_error("unshare"));
    }
    Ok(())
}

/// Prints this process's pid and becomes `program args`.
fn exec(program: &str, args: &[&str]) -> Failure {
    println!("pid {}", std::process::id());
    let _ = std::io::stdout().flush();
    let err = std::process::Command::new(program).args(args).exec();
    Failure::Error(format!("exec {program}: {err}"))
}

/// Waits for `pid`; its status as `exit=N` or `signal=N`.
fn wait(pid: i32) -> Result<(String, i32), Failure> {
    let mut status = 0;
    // SAFETY: waits for our own child.
    if unsafe { libc::waitpid(pid, &raw mut status, 0) } != pid {
        return Err(os_error("waitpid"));
    }
    Ok(if libc::WIFSIGNALED(status) {
        (
            format!("signal={}", libc::WTERMSIG(status)),
            libc::WTERMSIG(status),
        )
    } else {
        (format!("exit={}", libc::WEXITSTATUS(status)), 0)
    })
}

/// In a child: runs `body`, and leaves with its error (never returns to the caller).
fn child(body: impl FnOnce() -> Failure) -> ! {
    let failure = body();
    eprintln!("child: {failure:?}");
    std::process::exit(3)
}

fn fork() -> Result<i32, Failure> {
    let _ = std::io::stdout().flush();
    // SAFETY: this program is single-threaded.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(os_error("fork"));
    }
    Ok(pid)
}

/// The exec of `program` after `before`, directly or (`through_child`) by a child.
fn exec_after(
    before: impl FnOnce() -> Outcome,
    through_child: bool,
    program: &str,
    args: &[&str],
) -> Failure {
    if let Err(e) = before() {
        return e;
    }
    if !through_child {
        return exec(program, args);
    }
    match fork() {
        Err(e) => e,
        Ok(0) => exec(program, args),
        Ok(pid) => share_the_fate_of(pid),
    }
}

/// Waits for child `pid` and ends as it did: a killed one is killed again here.
fn share_the_fate_of(pid: i32) -> Failure {
    match wait(pid) {
        Ok((_, signal)) if signal != 0 => {
            // SAFETY: signals this process.
            unsafe { libc::kill(libc::getpid(), signal) };
            Failure::Error("survived its own signal".into())
        }
        Ok((how, _)) => match how.strip_prefix("exit=").map(str::parse::<i32>) {
            Some(Ok(code)) => std::process::exit(code),
            _ => Failure::Error(format!("the exec ended with {how}")),
        },
        Err(e) => e,
    }
}

/// `struct clone_args` up to `cgroup` (`CLONE_ARGS_SIZE_VER2` in `<linux/sched.h>`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const _: () = assert!(std::mem::size_of::<CloneArgs>() == 88);

/// `clone3(CLONE_INTO_CGROUP | extra)` into the cgroup at `dir`: the child's pid, 0 in the
/// child.
fn clone_into(dir: &str, extra: u64) -> Result<i32, Failure> {
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let cgroup = std::fs::File::open(dir)?;
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP | extra,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    let _ = std::io::stdout().flush();
    // SAFETY: no stack given, so the child continues on a copy of ours, as after fork.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &raw const args,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid < 0 {
        return Err(os_error("clone3"));
    }
    Ok(pid as i32)
}

/// `runtime-handover MODE CGROUP_DIR PROGRAM ARGS...`.
pub fn handover(mode: &str, dir: &str, program: &str, args: &[&str]) -> Outcome {
    let gate = Gate::new()?;
    let (unshare, through_child) = match mode {
        "move" | "clone-into" | "policed-mover" | "self-move" => (false, false),
        "move-unshare" => (true, false),
        "move-fork" => (false, true),
        "move-fork-unshare" => (true, true),
        "clone-into-unshare" => (false, false),
        _ => return Err(Failure::Error(format!("unknown mode {mode}"))),
    };
    let before = move || -> Outcome {
        gate.wait()?;
        if unshare {
            unshare_mounts()?;
        }
        Ok(())
    };
    let pid = match mode {
        "clone-into" | "clone-into-unshare" => {
            let extra = if mode == "clone-into" {
                0
            } else {
                libc::CLONE_NEWNS as u64
            };
            match clone_into(dir, extra)? {
                0 => child(|| exec_after(before, through_child, program, args)),
                pid => pid,
            }
        }
        "self-move" => match fork()? {
            0 => child(|| {
                exec_after(
                    || {
                        before()?;
                        move_pid(dir, 0)
                    },
                    through_child,
                    program,
                    args,
                )
            }),
            pid => pid,
        },
        _ => match fork()? {
            0 => child(|| exec_after(before, through_child, program, args)),
            pid => pid,
        },
    };
    match mode {
        "clone-into" | "clone-into-unshare" | "self-move" => {}
        "policed-mover" => match fork()? {
            0 => child(
                || match move_pid(dir, 0).and_then(|()| move_pid(dir, pid)) {
                    Ok(()) => std::process::exit(0),
                    Err(e) => e,
                },
            ),
            mover => {
                let (how, _) = wait(mover)?;
                if how != "exit=0" {
                    return Err(Failure::Error(format!("the mover ended with {how}")));
                }
            }
        },
        _ => move_pid(dir, pid)?,
    }
    gate.open()?;
    let (how, _) = wait(pid)?;
    println!("status {how}");
    Ok(())
}

/// `runtime-handover-early MODE CGROUP_DIR PROGRAM ARGS...`: the runtime's move, and all
/// that follows it up to the exec, happen first; then it prints `ready` and waits for a line
/// on its standard input before the exec. An agent started in between saw the processes
/// arrive in the cgroup no more than one that missed the move's tracepoint. Modes:
/// - `move`: the parent writes the child's pid into the cgroup, as in `runtime-handover`;
/// - `move-unshare`: the moved child enters a mount namespace of its own before `ready`;
/// - `move-forked`: the moved child forks before `ready`, and its child (a process already
///   inside the pod when the agent came) execs.
pub fn handover_early(mode: &str, dir: &str, program: &str, args: &[&str]) -> Outcome {
    let (unshare, forked) = match mode {
        "move" => (false, false),
        "move-unshare" => (true, false),
        "move-forked" => (false, true),
        _ => return Err(Failure::Error(format!("unknown mode {mode}"))),
    };
    let (moved, ready, go) = (Gate::new()?, Gate::new()?, Gate::new()?);
    let pid = match fork()? {
        0 => child(|| {
            let prepare = || -> Result<Option<i32>, Failure> {
                moved.wait()?;
                if unshare {
                    unshare_mounts()?;
                }
                let grandchild = if forked {
                    match fork()? {
                        0 => child(|| match go.wait() {
                            Ok(()) => exec(program, args),
                            Err(e) => e,
                        }),
                        pid => Some(pid),
                    }
                } else {
                    None
                };
                ready.open()?;
                Ok(grandchild)
            };
            match prepare() {
                Err(e) => e,
                Ok(Some(grandchild)) => share_the_fate_of(grandchild),
                Ok(None) => match go.wait() {
                    Ok(()) => exec(program, args),
                    Err(e) => e,
                },
            }
        }),
        pid => pid,
    };
    move_pid(dir, pid)?;
    moved.open()?;
    ready.wait()?;
    println!("ready");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    go.open()?;
    let (how, _) = wait(pid)?;
    println!("status {how}");
    Ok(())
}
