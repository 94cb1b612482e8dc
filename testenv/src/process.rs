//! The control plane's child processes: started with their output in a log file, stopped by
//! the pid this code started (SIGTERM, then SIGKILL), and killed by the kernel if this process
//! dies first.
//!
//! Children are spawned from one long-lived thread and ask the kernel for SIGKILL when their
//! parent goes (`PR_SET_PDEATHSIG`): that fires when the *thread* that forked them ends, so a
//! control plane started in one test thread and used from others lives exactly as long as this
//! process. Each child gets its own process group, so a terminal's Ctrl-C reaches only this
//! process, which then stops them in order.
use std::{
    ffi::OsString,
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        OnceLock,
        mpsc::{self, Sender},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

type SpawnRequest = (Command, Sender<io::Result<Child>>);

/// Spawns `cmd` from the spawner thread (started on first use, alive until the process exits).
fn spawn(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Sender<SpawnRequest>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("testenv-spawner".to_owned())
            .spawn(move || {
                for (mut cmd, reply) in incoming {
                    // The requester waits for the answer; if it is gone the child is still
                    // ours to reap, which dropping it here does not do, so kill it.
                    if let Err(mpsc::SendError(Ok(mut child))) = reply.send(cmd.spawn()) {
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                }
            })
            .expect("cannot start the testenv spawner thread");
        requests
    });
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls
    // (setpgid, prctl, getppid) without allocating.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, 0) != 0
                || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl: then nobody would ever stop this child.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::other("parent exited"));
            }
            Ok(())
        });
    }
    let (reply, answer) = mpsc::channel();
    spawner
        .send((cmd, reply))
        .map_err(|_| io::Error::other("the testenv spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| io::Error::other("the testenv spawner thread did not answer"))?
}

/// A running child process whose stdout and stderr go to a log file.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `program` with `args`, appending its output to `log` after a header line.
    pub fn start(name: &str, program: &Path, args: &[OsString], log: &Path) -> Result<Self> {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        writeln!(
            file,
            "==== testenv: starting {} {}",
            program.display(),
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        )
        .with_context(|| format!("cannot write {}", log.display()))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().context("log file")?))
            .stderr(Stdio::from(file));
        let child = spawn(cmd).with_context(|| format!("cannot start {}", program.display()))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, once it has exited (and been reaped).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// An error naming the process, with `what` and the tail of its log.
    pub fn failure(&mut self, what: &str) -> anyhow::Error {
        let status = self
            .exited()
            .map_or_else(|| "still running".to_owned(), |s| format!("exited: {s}"));
        anyhow::anyhow!(
            "{} (pid {}, {status}) {what}; last lines of {}:\n{}",
            self.name,
            self.pid(),
            self.log.display(),
            log_tail(&self.log, 40)
        )
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL; waits for it either way.
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.exited() {
            return Ok(status);
        }
        let pid = libc::pid_t::try_from(self.pid()).context("pid out of range")?;
        // SAFETY: plain syscall; `pid` is our own unreaped child, so it cannot have been reused.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(50));
        }
        self.child
            .kill()
            .with_context(|| format!("cannot kill {} (pid {})", self.name, self.pid()))?;
        let status = self.child.wait().context("wait")?;
        let _ = fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .and_then(|mut f| {
                writeln!(
                    f,
                    "==== testenv: killed after {:.0}s without exiting on SIGTERM",
                    grace.as_secs_f64()
                )
            });
        Ok(status)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.stop(Duration::from_secs(10));
    }
}

/// The last `lines` lines of the file at `path`, or why it cannot be read.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("({} unreadable: {err})", path.display()),
    }
}

/// Fails unless `path` is an executable file.
pub fn require_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match File::open(path).and_then(|f| f.metadata()) {
        Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => Ok(()),
        Ok(_) => bail!("{} is not an executable file", path.display()),
        Err(err) => bail!(
            "{} is missing ({err}); `cargo xtask k8s-env` builds it",
            path.display()
        ),
    }
}
