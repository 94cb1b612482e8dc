//! `exec-held PROGRAM ARGS...`: a child traced with `PTRACE_O_TRACEEXEC` execs `PROGRAM` and
//! is held at the exec's ptrace stop, which the kernel makes after `sched_process_exec` and
//! before the exec returns to user space, until a line arrives on standard input; then it is
//! let go and waited for. Prints `held PID` at the stop (or `died` when the child was killed
//! before it) and `status exit=N` or `status signal=N` at the end.
use std::{io::Write as _, os::unix::process::CommandExt as _};

use crate::{Failure, Outcome, os_error};

fn ptrace(request: libc::c_uint, pid: i32, data: usize) -> Outcome {
    // SAFETY: a request about our own traced child; no memory is passed.
    if unsafe { libc::ptrace(request, pid, 0usize, data) } != 0 {
        return Err(os_error("ptrace"));
    }
    Ok(())
}

fn wait(pid: i32) -> Result<i32, Failure> {
    let mut status = 0;
    // SAFETY: waits for our own child.
    if unsafe { libc::waitpid(pid, &raw mut status, 0) } != pid {
        return Err(os_error("waitpid"));
    }
    Ok(status)
}

fn ended(status: i32) -> String {
    if libc::WIFSIGNALED(status) {
        format!("signal={}", libc::WTERMSIG(status))
    } else {
        format!("exit={}", libc::WEXITSTATUS(status))
    }
}

pub fn exec_held(program: &str, args: &[&str]) -> Outcome {
    let _ = std::io::stdout().flush();
    // SAFETY: this program is single-threaded.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(os_error("fork"));
    }
    if pid == 0 {
        // SAFETY: plain system calls on this process.
        unsafe {
            libc::ptrace(libc::PTRACE_TRACEME, 0, 0usize, 0usize);
            libc::raise(libc::SIGSTOP);
        }
        let err = std::process::Command::new(program).args(args).exec();
        eprintln!("exec {program}: {err}");
        std::process::exit(3);
    }
    let status = wait(pid)?;
    if !libc::WIFSTOPPED(status) {
        return Err(Failure::Error(format!("child not stopped: {status:#x}")));
    }
    ptrace(
        libc::PTRACE_SETOPTIONS,
        pid,
        (libc::PTRACE_O_TRACEEXEC | libc::PTRACE_O_EXITKILL) as usize,
    )?;
    ptrace(libc::PTRACE_CONT, pid, 0)?;
    let status = wait(pid)?;
    let exec_stop = libc::SIGTRAP | (libc::PTRACE_EVENT_EXEC << 8);
    if !libc::WIFSTOPPED(status) || status >> 8 != exec_stop {
        println!("died");
        println!("status {}", ended(status));
        return Ok(());
    }
    println!("held {pid}");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    ptrace(libc::PTRACE_DETACH, pid, 0)?;
    println!("status {}", ended(wait(pid)?));
    Ok(())
}
