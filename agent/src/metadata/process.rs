//! Process details the kernel record does not carry (executable, arguments, parent),
//! remembered from exec events and otherwise read from /proc. Never called by the reader.
use std::collections::HashMap;

use crate::{
    cloudevents::shared::Shared,
    event::{Body, Event},
};

/// Shared with the events built from it: a cache hit costs no copy of the strings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    pub comm: Shared<str>,
    pub exe: Option<Shared<str>>,
    pub args: Shared<[String]>,
}

/// What is known about an event's process and its parent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lineage {
    pub process: ProcessInfo,
    pub parent: Option<ProcessInfo>,
}

const CACHE_LIMIT: usize = 32_768;

pub struct ProcessCache {
    procfs: std::path::PathBuf,
    by_pid: HashMap<u32, ProcessInfo>,
}

/// The executable of a running process from `/proc/<pid>/exe`, without the kernel's
/// " (deleted)" suffix.
pub fn proc_exe(pid: u32) -> Option<String> {
    let link = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let text = link.to_string_lossy();
    Some(text.strip_suffix(" (deleted)").unwrap_or(&text).to_string())
}

fn read_proc(procfs: &std::path::Path, pid: u32) -> Option<ProcessInfo> {
    let dir = procfs.join(pid.to_string());
    let comm = std::fs::read_to_string(dir.join("comm"))
        .ok()?
        .trim_end()
        .into();
    let exe = std::fs::read_link(dir.join("exe"))
        .ok()
        .map(|p| p.display().to_string().into());
    let args = std::fs::read(dir.join("cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(crate::event::text)
                .collect::<Vec<_>>()
                .into()
        })
        .unwrap_or_default();
    Some(ProcessInfo { comm, exe, args })
}

impl Default for ProcessCache {
    fn default() -> Self {
        Self::new("/proc".into())
    }
}

impl ProcessCache {
    pub fn new(procfs: std::path::PathBuf) -> Self {
        Self {
            procfs,
            by_pid: HashMap::new(),
        }
    }

    fn remember(&mut self, pid: u32, info: ProcessInfo) {
        if self.by_pid.len() >= CACHE_LIMIT {
            self.by_pid.clear();
        }
        self.by_pid.insert(pid, info);
    }

    /// A cached entry is trusted only while the comm still matches: a reused pid or a later
    /// exec changes it, and then /proc is asked again.
    fn lookup(&mut self, pid: u32, comm: Option<&str>) -> Option<ProcessInfo> {
        if let Some(hit) = self.by_pid.get(&pid)
            && comm.is_none_or(|c| *c == *hit.comm)
        {
            return Some(hit.clone());
        }
        let info = read_proc(&self.procfs, pid)?;
        self.remember(pid, info.clone());
        Some(info)
    }

    pub fn lineage(&mut self, event: &Event) -> Lineage {
        let h = &event.header;
        let process = match &event.body {
            Body::Exec(exec)
                if !exec.mapped && !exec.opened && !exec.prevented && !exec.interpreted =>
            {
                // The exec record is authoritative for the new image; /proc may add the
                // resolved executable path if the process still exists.
                let exe = exec.exe_path.as_deref().map(Shared::from).or_else(|| {
                    read_proc(&self.procfs, h.pid)
                        .filter(|p| *p.comm == *h.comm)
                        .and_then(|p| p.exe)
                        .or_else(|| Some(exec.path.as_str().into()))
                });
                let info = ProcessInfo {
                    comm: h.comm.as_str().into(),
                    exe,
                    args: exec.args.clone(),
                };
                self.remember(h.pid, info.clone());
                info
            }
            body => {
                let mut info = self
                    .lookup(h.pid, Some(h.comm.as_str()))
                    .unwrap_or_else(|| ProcessInfo {
                        comm: h.comm.as_str().into(),
                        ..Default::default()
                    });
                // A mapping record carries the executable the kernel recorded at exec, which
                // outlives a process killed for the mapping.
                if info.exe.is_none() {
                    match body {
                        Body::Exec(exec) => info.exe = exec.exe_path.as_deref().map(Shared::from),
                        // Likewise a W^X record.
                        Body::Wx(wx) => info.exe = wx.exe_path.as_deref().map(Shared::from),
                        _ => {}
                    }
                }
                info
            }
        };
        let parent = (h.ppid != 0).then(|| self.lookup(h.ppid, None)).flatten();
        Lineage { process, parent }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Exec, Header, Wx, WxSyscall};

    fn header(pid: u32, comm: &str) -> Header {
        Header {
            verdict: crate::event::Verdict::Observed,
            boot_ns: 0,
            cgroup_id: 1,
            pid,
            tid: pid,
            ppid: 0,
            uid: 0,
            gid: 0,
            comm: comm.into(),
            count: 1,
            first_ns: 0,
            ends_burst: false,
            target: 0,
        }
    }

    #[test]
    fn exec_events_feed_the_cache_and_a_comm_change_invalidates_it() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cache = ProcessCache::new(tmp.path().to_owned());
        let exec = Event {
            header: header(4242, "payload"),
            body: Body::Exec(Exec {
                path: "/tmp/payload".into(),
                exe_name: "payload".into(),
                exe_path: None,
                script: false,
                undecided: false,
                unverifiable: false,
                mapped: false,
                opened: false,
                interpreted: false,
                user_mount: false,
                prevented: false,
                unjudged: false,
                drift: None,
                undecided_set: None,
                content: None,
                vouched: false,
                sha256: None,
                args: vec!["payload".into(), "-x".into()].into(),
                memfd: false,
                deleted: false,
                args_truncated: false,
                args_missing: false,
            }),
        };
        let l = cache.lineage(&exec);
        assert_eq!(l.process.exe.as_deref(), Some("/tmp/payload"));

        let wx_from = |comm: &str, exe_path: Option<&str>| Event {
            header: header(4242, comm),
            body: Body::Wx(Wx {
                syscall: WxSyscall::Mmap,
                prot: 7,
                flags: 0,
                addr: 0,
                len: 4096,
                fd: -1,
                read_implies_exec: false,
                write_exec: true,
                shared_exec: false,
                foreign_write: false,
                compat: false,
                exec_stack: false,
                unjudged: false,
                unverifiable: false,
                extra: 0,
                exe_path: exe_path.map(str::to_owned),
            }),
        };
        let wx = |comm: &str| wx_from(comm, None);
        let l = cache.lineage(&wx("payload"));
        assert_eq!(*l.process.args, ["payload", "-x"]);

        // Pid reused by another program: the stale entry must not be used; /proc (empty
        // here) knows nothing, so only the kernel's comm remains.
        let l = cache.lineage(&wx("other"));
        assert_eq!(
            l.process,
            ProcessInfo {
                comm: "other".into(),
                exe: None,
                args: Default::default(),
            }
        );

        // A process gone by the time its W^X record is read (killed for it): the record's
        // own executable, recorded by the kernel at exec, names it.
        let l = cache.lineage(&wx_from("pcre", Some("/tmp/pcre")));
        assert_eq!(l.process.exe.as_deref(), Some("/tmp/pcre"));
    }

    #[test]
    fn reads_a_live_process_from_proc() {
        let mut cache = ProcessCache::default();
        let me = std::process::id();
        let info = cache.lookup(me, None).unwrap();
        assert_eq!(
            info.exe.as_deref(),
            std::env::current_exe()
                .ok()
                .map(|p| p.display().to_string())
                .as_deref()
        );
        assert!(!info.args.is_empty());
    }
}
