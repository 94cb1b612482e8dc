//! Helpers shared by the commands: paths, root check, child processes, step timing.
use std::{
    env,
    ffi::{OsStr, OsString},
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
}

/// Whether the effective user id is 0, read from /proc/self/status (no libc needed).
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// Fails with a clear message unless running as root.
pub fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!(
            "`cargo xtask {what}` must run as root (it loads eBPF programs into the kernel); \
             run it again as root, e.g. `sudo -E env \"PATH=$PATH\" cargo xtask {what}`"
        );
    }
    Ok(())
}

/// `$CARGO_HOME/bin`, else `~/.cargo/bin`: where `cargo install` puts bpf-linker.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .filter(|home| !home.is_empty())
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .map(|home| home.join("bin"))
}

/// `PATH` for child processes: the current one, with the cargo bin directory appended when it
/// is missing (so bpf-linker is found even when the caller's PATH lacks it).
pub fn child_path() -> OsString {
    let current = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = env::split_paths(&current).collect();
    if let Some(bin) = cargo_bin_dir().filter(|bin| !dirs.contains(bin)) {
        dirs.push(bin);
    }
    env::join_paths(dirs).unwrap_or(current)
}

/// A command run in the workspace root with [`child_path`] as `PATH`.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(workspace_root()).env("PATH", child_path());
    cmd
}

/// `cargo` (the one running this xtask, else the one on PATH) in the workspace root.
pub fn cargo() -> Command {
    command(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// How a command line reads, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut words = vec![Path::new(cmd.get_program()).file_name().map_or_else(
        || cmd.get_program().to_string_lossy().into_owned(),
        |name| name.to_string_lossy().into_owned(),
    )];
    words.extend(cmd.get_args().map(|arg| arg.to_string_lossy().into_owned()));
    words.join(" ")
}

/// Runs `cmd` with inherited stdio; fails when it cannot start or exits non-zero.
pub fn run_checked(cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its trimmed stdout when it succeeds.
pub fn output_of(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Calls `each` with every line `from` yields (its bytes, `\n` included), up to the end:
/// bytes, not strings, so a child's stray non-UTF-8 byte does not end the reading (and leave
/// the child writing into a closed pipe). A read error ends it too, and is returned.
pub fn each_line(from: impl std::io::Read, mut each: impl FnMut(&[u8])) -> std::io::Result<()> {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::new(from);
    let mut line = Vec::new();
    while reader.read_until(b'\n', &mut line)? > 0 {
        each(&line);
        line.clear();
    }
    Ok(())
}

pub fn secs(duration: Duration) -> String {
    format!("{:.2}s", duration.as_secs_f64())
}

/// Runs one named step of a command: prints a header, then the outcome with its duration.
pub fn step<T>(name: &str, body: impl FnOnce() -> Result<T>) -> Result<T> {
    println!("==> {name}");
    let start = Instant::now();
    let result = body();
    let took = secs(start.elapsed());
    match &result {
        Ok(_) => println!("<== {name}: ok ({took})"),
        Err(_) => println!("<== {name}: FAILED ({took})"),
    }
    result.with_context(|| format!("step `{name}` failed"))
}
