//! Mount tricks an unprivileged user can play in a user and mount namespace of its own: a
//! bind mount over an allowed path, a detached mount, `pivot_root` into a directory, a file
//! system mounted over an allowed directory; and the plain exec in such a namespace that must
//! stay allowed.
use std::ffi::CString;

use crate::{Failure, Outcome, os_error};

fn c(s: &str) -> Result<CString, Failure> {
    CString::new(s).map_err(|e| Failure::Error(e.to_string()))
}

/// A user namespace mapping root to root, and a mount namespace it owns, with every mount
/// private (as `unshare -Urm` leaves them).
fn enter() -> Outcome {
    // SAFETY: plain system calls on this process.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) } != 0 {
        return Err(os_error("unshare"));
    }
    std::fs::write("/proc/self/uid_map", "0 0 1\n")?;
    // Mapping one's own group from inside needs setgroups off, as for an unprivileged user.
    std::fs::write("/proc/self/setgroups", "deny\n")?;
    std::fs::write("/proc/self/gid_map", "0 0 1\n")?;
    mount(None, "/", None, libc::MS_REC | libc::MS_PRIVATE)
}

fn mount(
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
) -> Outcome {
    let source = source.map(c).transpose()?;
    let target = c(target)?;
    let fstype = fstype.map(c).transpose()?;
    // SAFETY: valid C strings or null.
    let rc = unsafe {
        libc::mount(
            source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(os_error("mount"));
    }
    Ok(())
}

fn exec(program: &str, args: &[&str]) -> Outcome {
    use std::os::unix::process::CommandExt as _;
    let err = std::process::Command::new(program).args(args).exec();
    Err(Failure::Error(format!("exec {program}: {err}")))
}

/// `userns-exec MODE ...`, see `usage` in main.rs.
pub fn run(mode: &str, rest: &[&str]) -> Outcome {
    match (mode, rest) {
        ("plain", [program, args @ ..]) => {
            enter()?;
            exec(program, args)
        }
        ("bind", [source, target, args @ ..]) => {
            enter()?;
            mount(Some(source), target, None, libc::MS_BIND)?;
            exec(target, args)
        }
        ("tmpfs", [dir, source, name, args @ ..]) => {
            let image = std::fs::read(source)?;
            enter()?;
            mount(Some("tmpfs"), dir, Some("tmpfs"), 0)?;
            let path = format!("{dir}/{name}");
            std::fs::write(&path, image)?;
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
            exec(&path, args)
        }
        ("detached", [dir, name, args @ ..]) => {
            enter()?;
            detached(dir, name, args)
        }
        ("pivot", [dir, program, args @ ..]) => {
            enter()?;
            mount(Some(dir), dir, None, libc::MS_BIND | libc::MS_REC)?;
            // The new root gets the system's programs and libraries, as an attacker would.
            mount(
                Some("/usr"),
                &format!("{dir}/usr"),
                None,
                libc::MS_BIND | libc::MS_REC,
            )?;
            std::env::set_current_dir(dir)?;
            let dot = c(".")?;
            // SAFETY: valid C strings.
            if unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } != 0 {
                return Err(os_error("pivot_root"));
            }
            // SAFETY: a valid C string.
            if unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) } != 0 {
                return Err(os_error("umount2"));
            }
            std::env::set_current_dir("/")?;
            exec(program, args)
        }
        _ => Err(Failure::Error(format!("userns-exec {mode}: bad arguments"))),
    }
}

const OPEN_TREE_CLONE: libc::c_uint = 1;

/// Clones `dir` into a detached mount (`open_tree`) and executes `name` inside it through
/// the descriptor: the file is reached through no path of any namespace.
fn detached(dir: &str, name: &str, args: &[&str]) -> Outcome {
    let dir = c(dir)?;
    // SAFETY: a valid C string; the descriptor is kept across the exec.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            dir.as_ptr(),
            OPEN_TREE_CLONE,
        )
    };
    if fd < 0 {
        return Err(os_error("open_tree"));
    }
    let argv: Vec<&str> = std::iter::once(name).chain(args.iter().copied()).collect();
    crate::exec::execveat(fd as i32, name, &argv, 0)
}
