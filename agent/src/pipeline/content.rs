//! Executables outside the image in a pod whose policy vouches for files by content
//! (`exec.allow` `sha256` entries). The kernel looked the file's identity up in its cache of
//! vouched files and did not find it: under an action that refuses it stopped the process
//! before its first instruction (`agent-ebpf/src/drift.rs`); under Alert it only reported
//! it. Here the executable is hashed: content that matches an entry is released (and
//! vouched for in the kernel's cache once its change time has settled); anything else is
//! drift, killed where it was held. What cannot be hashed is drift too (fail closed).
use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io::Read,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use agent_common::{FileOrigin, VouchKey};
use sha2::{Digest, Sha256};

use crate::{
    behaviour::exec::ContentCheck,
    enforce::Enforcer,
    event::{Action, Body, Event, Verdict},
    policy::hex,
};

/// Digests kept of files hashed, by identity; past this the cache starts again.
const CACHE_CAPACITY: usize = 4096;

/// A file whose change time is younger than this is decided by a fresh hash, never by a
/// cached one: the kernel's clock for change times is coarse (a tick), so a second change
/// within the same tick leaves the same change time, and the identity would name the old
/// content.
const SETTLED: Duration = Duration::from_secs(2);

/// The rule index given when the set is gone (replaced before the record was read): the
/// report then says so.
const SET_GONE: u32 = u32::MAX;

#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("pidfd_open of process {pid}: {source}")]
    Pidfd { pid: u32, source: std::io::Error },
    #[error("cannot read /proc/{pid}/exe: {source}")]
    Read { pid: u32, source: std::io::Error },
    #[error(
        "/proc/{pid}/exe is inode {found}, the kernel reported inode {expected}: the process runs another file now"
    )]
    Replaced { pid: u32, found: u64, expected: u64 },
}

/// A process, by a descriptor that cannot come to name another one.
struct Pidfd(OwnedFd);

impl Pidfd {
    fn open(pid: u32) -> Result<Self, ContentError> {
        // SAFETY: a plain system call; the descriptor it returns is owned below.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(ContentError::Pidfd {
                pid,
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: a new descriptor nobody else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    fn signal(&self, signal: i32) -> std::io::Result<()> {
        // SAFETY: a plain system call on a descriptor this owns.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

#[derive(Default)]
pub struct Content {
    /// Digests of files hashed whose change time had settled, by (device, inode, change).
    digests: HashMap<(u32, u64, u64), [u8; 32]>,
    /// Held processes the last sweep found with no decision yet.
    unsettled_holds: HashSet<u32>,
    /// Holds a sweep ended by killing: their record never reached the agent.
    orphans_killed: u64,
}

impl Content {
    /// Decides `ev` when it is an executable left to its content: releases or kills a held
    /// process, and turns the record into a drift violation, or into an observed exec that
    /// is not reported.
    pub fn settle(&mut self, enforcer: &mut Enforcer, ev: &mut Event) {
        let Body::Exec(exec) = &mut ev.body else {
            return;
        };
        // A refused exec never ran: the process still runs its own program.
        let Some(check) = exec.content.filter(|_| !exec.prevented) else {
            return;
        };
        let pid = ev.header.pid;
        self.unsettled_holds.remove(&pid);
        let pidfd = Pidfd::open(pid);
        let digest = match &pidfd {
            Ok(_) => self.digest(pid, &check).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let rules = enforcer.content_rules(check.set);
        let matched = match (&digest, &rules) {
            (Ok(d), Some(rules)) => rules.digests.contains(d),
            _ => false,
        };
        exec.sha256 = digest.as_ref().ok().map(|d| hex(d));
        if matched {
            if check.held {
                let origin = check.drift.origin;
                if settled(origin.change) {
                    let key = VouchKey {
                        set: check.set,
                        dev: origin.dev,
                        ino: origin.ino,
                        change: origin.change,
                    };
                    if let Err(error) = enforcer.vouch(key) {
                        tracing::warn!(%error, pid, "could not vouch for a file in the kernel's cache; its next exec is hashed again");
                    }
                }
                if let Err(error) = enforcer.release_hold(pid) {
                    // Still recorded: continued, it would die at its first system call.
                    tracing::warn!(%error, pid, "could not release a held process; it is killed instead");
                    kill(pidfd.as_ref().ok(), pid);
                } else if let Ok(fd) = &pidfd
                    && let Err(error) = fd.signal(libc::SIGCONT)
                {
                    tracing::warn!(%error, pid, "could not continue a held process whose content is vouched for");
                }
            }
            return;
        }
        if let Err(error) = &digest {
            tracing::warn!(%error, pid, "an executable outside the image could not be hashed: decided as drift");
            exec.unverifiable = true;
        }
        exec.drift = Some(check.drift);
        let action = if check.held {
            kill(pidfd.as_ref().ok(), pid);
            Action::Kill
        } else {
            Action::Alert
        };
        // A violation the kernel reported for another rule stays the event's; it now also
        // says drift.
        if ev.header.verdict == Verdict::Observed {
            ev.header.verdict = Verdict::Violation {
                action,
                set: check.set,
                rule: rules.map_or(SET_GONE, |r| r.drift_rule),
            };
        }
    }

    /// The content of the executable process `pid` runs, from the cache when its identity
    /// is there.
    fn digest(&mut self, pid: u32, check: &ContentCheck) -> Result<[u8; 32], ContentError> {
        let origin = check.drift.origin;
        let key = (origin.dev, origin.ino, origin.change);
        let cacheable = check.held && settled(origin.change);
        if cacheable && let Some(known) = self.digests.get(&key) {
            return Ok(*known);
        }
        let digest = hash_exe(pid, &origin)?;
        // Only what a held process runs is the file the kernel named: it cannot exec
        // another while stopped, and the file cannot be written while it runs.
        if cacheable {
            if self.digests.len() >= CACHE_CAPACITY {
                self.digests.clear();
            }
            self.digests.insert(key, digest);
        }
        Ok(digest)
    }

    /// Kills the processes the kernel has held since the last sweep with no decision: their
    /// record was lost (a full ring buffer, a flood held back), and what cannot be decided
    /// does not run.
    pub fn sweep(&mut self, enforcer: &Enforcer) {
        let holds: HashSet<u32> = enforcer.holds().into_iter().collect();
        for &pid in holds.intersection(&self.unsettled_holds) {
            self.orphans_killed += 1;
            tracing::warn!(
                pid,
                total = self.orphans_killed,
                "a process held for a decision on its content had no record after two sweeps; killed (fail closed)"
            );
            kill(Pidfd::open(pid).ok().as_ref(), pid);
        }
        self.unsettled_holds = holds;
    }
}

/// SIGKILL through the pidfd; where there is none the process is gone, or it stays recorded
/// and dies at its first system call.
fn kill(pidfd: Option<&Pidfd>, pid: u32) {
    if let Some(fd) = pidfd
        && let Err(error) = fd.signal(libc::SIGKILL)
    {
        tracing::warn!(%error, pid, "could not kill a process whose content is drift; it dies at its first system call");
    }
}

/// Whether a change time (`seconds << 30 | nanoseconds`) is older than [`SETTLED`].
fn settled(change: u64) -> bool {
    let seconds = change >> 30;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    change != 0 && now.saturating_sub(seconds) >= SETTLED.as_secs()
}

/// SHA-256 of `/proc/<pid>/exe`, the file the process runs (not a name it chose), checked to
/// be the inode the kernel reported.
fn hash_exe(pid: u32, origin: &FileOrigin) -> Result<[u8; 32], ContentError> {
    let read = |source| ContentError::Read { pid, source };
    let mut file = File::open(format!("/proc/{pid}/exe")).map_err(read)?;
    let found = file.metadata().map_err(read)?.ino();
    if found != origin.ino {
        return Err(ContentError::Replaced {
            pid,
            found,
            expected: origin.ino,
        });
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(read)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_time_is_settled_only_seconds_after_it() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(!settled(0));
        assert!(!settled(now << 30));
        assert!(!settled(((now - 1) << 30) | 999_999_999));
        assert!(settled((now - 2) << 30));
        assert!(settled((now - 3600) << 30 | 5));
    }

    /// The digest of what a process runs is the digest of its executable's bytes, and a
    /// process whose executable is not the inode the kernel named is refused.
    #[test]
    fn the_digest_is_of_the_running_executable_and_its_inode_is_checked() {
        let pid = std::process::id();
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let ino = std::fs::metadata("/proc/self/exe").unwrap().ino();
        let origin = FileOrigin {
            ino,
            ..FileOrigin::default()
        };
        let digest = hash_exe(pid, &origin).unwrap();
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&exe)));
        let other = FileOrigin {
            ino: ino + 1,
            ..origin
        };
        assert!(matches!(
            hash_exe(pid, &other),
            Err(ContentError::Replaced { .. })
        ));
    }
}
