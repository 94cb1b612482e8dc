//! Executions of binaries that have no name on disk.
use std::{ffi::CString, io::Write, os::fd::FromRawFd};

use crate::{Failure, Outcome, os_error};

/// `execveat(fd, "", argv, envp, AT_EMPTY_PATH)`: only returns on failure.
/// `execveat(fd, name, argv, no environment, flags)`; only returns on failure.
pub fn execveat(fd: i32, name: &str, argv: &[&str], flags: i32) -> Outcome {
    let c = |s: &str| CString::new(s).map_err(|e| Failure::Error(e.to_string()));
    let name = c(name)?;
    let argv = argv.iter().map(|a| c(a)).collect::<Result<Vec<_>, _>>()?;
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: valid NUL-terminated strings and NULL-terminated arrays.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd,
            name.as_ptr(),
            ptrs.as_ptr(),
            envp.as_ptr(),
            flags,
        )
    };
    Err(os_error("execveat"))
}

fn exec_fd(fd: i32, argv0: &str) -> Outcome {
    execveat(fd, "", &[argv0, "--scenario-arg"], libc::AT_EMPTY_PATH)
}

/// Copies /bin/true into a memfd and executes it from there.
pub fn memfd_exec() -> Outcome {
    let name = c"vigil-payload";
    // SAFETY: name is a valid C string.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    if fd < 0 {
        return Err(os_error("memfd_create"));
    }
    let image = std::fs::read("/bin/true")?;
    // SAFETY: fd is ours; ManuallyDrop keeps it open for the exec.
    let mut file = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    file.write_all(&image)?;
    exec_fd(fd, "vigil-payload")
}

/// Opens `path`, unlinks it, then executes the open file: a binary deleted from disk.
pub fn deleted_exec(path: &str) -> Outcome {
    let file = std::fs::File::open(path)?;
    std::fs::remove_file(path)?;
    let fd = std::os::fd::IntoRawFd::into_raw_fd(file);
    exec_fd(fd, "vigil-deleted")
}

/// Runs every file in `dir` once (name order), one after the other, each waited for: a
/// workload that executes as many distinct paths as `dir` holds.
pub fn exec_each(dir: &str) -> Outcome {
    let mut names: Vec<std::path::PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for path in names {
        let status = std::process::Command::new(&path).status()?;
        if !status.success() {
            return Err(Failure::Error(format!("{}: {status}", path.display())));
        }
    }
    Ok(())
}

/// The first thing this program does is write `path`: if the file exists, the program ran.
pub fn write_marker(path: &str) -> Outcome {
    std::fs::write(path, b"ran\n")?;
    Ok(())
}

/// Copies this very program into a memfd and executes it there as `write-marker PATH`.
pub fn memfd_exec_marker(path: &str) -> Outcome {
    let name = c"vigil-payload";
    // SAFETY: name is a valid C string.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    if fd < 0 {
        return Err(os_error("memfd_create"));
    }
    let image = std::fs::read("/proc/self/exe")?;
    // SAFETY: fd is ours; ManuallyDrop keeps it open for the exec.
    let mut file = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    file.write_all(&image)?;
    execveat(
        fd,
        "",
        &["vigil-payload", "write-marker", path],
        libc::AT_EMPTY_PATH,
    )
}

/// Puts a shell script that writes `path` into a memfd and executes the memfd: the script
/// is fileless, its interpreter (`/bin/sh`) is not. Only returns on failure.
pub fn memfd_script_marker(path: &str) -> Outcome {
    let name = c"vigil-script";
    // SAFETY: name is a valid C string. Not close-on-exec: the interpreter opens the script
    // through /dev/fd/N.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    if fd < 0 {
        return Err(os_error("memfd_create"));
    }
    // SAFETY: fd is ours; ManuallyDrop keeps it open for the exec.
    let mut file = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    write!(file, "#!/bin/sh\necho ran > '{path}'\n")?;
    exec_fd(fd, "vigil-script")
}

/// Moves this process into the cgroup at `dir` (writing `cgroup.procs`), prints `moved`, then
/// runs `then` (a program and its arguments) in place of itself, if given.
pub fn move_to(dir: &str, then: &[&str]) -> Outcome {
    std::fs::write(std::path::Path::new(dir).join("cgroup.procs"), b"0")?;
    println!("moved");
    std::io::stdout().flush()?;
    match then.split_first() {
        Some((program, args)) => {
            use std::os::unix::process::CommandExt as _;
            let err = std::process::Command::new(program).args(args).exec();
            Err(Failure::Error(format!("exec {program}: {err}")))
        }
        None => Ok(()),
    }
}

/// Waits (up to 60 s) until `go` exists, doing nothing a policy judges meanwhile, then
/// [`move_to`]: a process that started before the agent and moves before its first decision.
pub fn wait_then_move_to(go: &str, dir: &str, then: &[&str]) -> Outcome {
    // Only a bound for a test that died without saying go (see memory::wait_then_rwx).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(900);
    while !std::path::Path::new(go).exists() {
        if std::time::Instant::now() > deadline {
            return Err(Failure::Error(format!("{go} did not appear within 900 s")));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    move_to(dir, then)
}

/// `execveat(dirfd, name)` with `dir` opened as the directory descriptor (left open across
/// the exec, so an interpreter can open the script by the `/dev/fd/N/name` the kernel names
/// it by).
pub fn exec_at(dir: &str, name: &str, args: &[&str]) -> Outcome {
    let dir = CString::new(dir).map_err(|e| Failure::Error(e.to_string()))?;
    // SAFETY: a valid C string; the descriptor is deliberately not close-on-exec.
    let fd = unsafe { libc::open(dir.as_ptr(), libc::O_PATH | libc::O_DIRECTORY) };
    if fd < 0 {
        return Err(os_error("open"));
    }
    let argv: Vec<&str> = std::iter::once(name).chain(args.iter().copied()).collect();
    execveat(fd, name, &argv, 0)
}

/// The two values a racing thread writes into the argument being executed, alternately.
const RACE_ARGS: [&[u8; 16]; 2] = [b"benign-argument\0", b"EVIL---argument\0"];

/// `count` times: a child whose second thread keeps rewriting an argument while the first
/// executes `vigil-scenario print-args ARGUMENT` with it; the new image prints what it got
/// (`pid=<pid> arg=<argument>`). Whatever the caller's memory said at syscall entry, the
/// program runs with the kernel's copy.
pub fn race_exec_args(count: &str) -> Outcome {
    let count = crate::parse_count(count)?;
    let exe = CString::new(
        std::env::current_exe()
            .map_err(|e| Failure::Error(format!("current_exe: {e}")))?
            .into_os_string()
            .into_encoded_bytes(),
    )
    .map_err(|e| Failure::Error(e.to_string()))?;
    std::io::stdout().flush().ok();
    for _ in 0..count {
        // SAFETY: this process is single-threaded; the child only spawns a thread and execs.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(os_error("fork"));
        }
        if pid == 0 {
            race_child(&exe);
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        if unsafe { libc::waitpid(pid, &mut status, 0) } != pid
            || !libc::WIFEXITED(status)
            || libc::WEXITSTATUS(status) != 0
        {
            return Err(Failure::Error(format!("child {pid} failed: {status:#x}")));
        }
    }
    Ok(())
}

/// In the child: starts the rewriting thread, waits until it has rewritten the argument at
/// least once, then executes. Never returns.
fn race_child(exe: &CString) -> ! {
    use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
    let arg: &'static [AtomicU8; 16] = Box::leak(Box::new(RACE_ARGS[0].map(AtomicU8::new)));
    let flips: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
    std::thread::spawn(move || {
        let mut which = 1;
        loop {
            for (slot, byte) in arg.iter().zip(RACE_ARGS[which].iter()) {
                slot.store(*byte, Ordering::Relaxed);
            }
            flips.fetch_add(1, Ordering::Relaxed);
            which ^= 1;
        }
    });
    while flips.load(Ordering::Relaxed) < 2 {
        std::hint::spin_loop();
    }
    let argv: [*const libc::c_char; 4] = [
        c"vigil-scenario".as_ptr(),
        c"print-args".as_ptr(),
        arg.as_ptr() as *const libc::c_char,
        std::ptr::null(),
    ];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: NUL-terminated strings (the racing one always holds a NUL at its end) and
    // NULL-terminated arrays.
    unsafe { libc::execve(exe.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    // SAFETY: leaving the forked child without running the parent's destructors.
    unsafe { libc::_exit(127) }
}

/// The new image of `race-exec-args`: what it was given.
pub fn print_args(arg: &str) -> Outcome {
    println!("pid={} arg={arg}", std::process::id());
    Ok(())
}
