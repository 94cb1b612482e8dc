//! From the events `vigil learn` sees to entries of the learn table, with the names the
//! kernel judges by: the executable's real path, and for a script both the name it was run by
//! (when absolute) and the file that name leads to, as the exec allowlist checks both.
use std::path::Path;

use super::table::LearnTable;
use crate::{
    behaviour::{connect::ConnectHook, exec::ExecData},
    cloudevents::{Payload, VigilEvent, data::BehaviourData, data::Member},
    policy::Protocol,
};

/// Takes one event into `table`. Loss events and cgroup moves teach nothing.
pub fn record(table: &mut LearnTable, event: &VigilEvent) {
    let Payload::Behaviour(data) = &event.payload else {
        return;
    };
    let by = by(data);
    let by = by.as_deref();
    match &data.member {
        Member::Exec(exec) => record_exec(table, data, exec, by),
        Member::Connect(c) => match (c.hook, c.daddr, c.dport) {
            (ConnectHook::Socket, ..) | (_, None, _) | (_, _, None) => {
                table.other_socket(&c.protocol, by);
            }
            (_, Some(addr), Some(port)) => match protocol(&c.protocol) {
                Some(p) => table.destination(p, addr, port, by),
                None => table.other_socket(&c.protocol, by),
            },
        },
        Member::Wx(wx) if wx.foreign_write => table.foreign_write(wx.syscall.name(), by),
        Member::Wx(_) => table.write_execute(data.process.exe.as_deref(), by),
        Member::Move(_) => {}
    }
}

/// Who did it, as a review wants it: the container's name in a pod, the cgroup on a host.
fn by(data: &BehaviourData) -> Option<String> {
    if let Some(container) = &data.container
        && let Some(Some(name)) = &container.name
    {
        return Some(format!("container {name}"));
    }
    data.cgroup.path.as_deref().map(|p| format!("cgroup {p}"))
}

/// The connect rule's protocol: UDP-Lite counts as UDP, as the kernel's rules have it.
fn protocol(name: &str) -> Option<Protocol> {
    match name {
        "tcp" => Some(Protocol::Tcp),
        "udp" | "ip-136" => Some(Protocol::Udp),
        _ => None,
    }
}

fn record_exec(table: &mut LearnTable, data: &BehaviourData, exec: &ExecData, by: Option<&str>) {
    if exec.memfd {
        table.exec_memfd(by);
        return;
    }
    let on_host = data.pod.is_none();
    match data.process.exe.as_deref() {
        Some(exe) => {
            if table.exec(exe, by) && on_host {
                writable_place(table, exe);
            }
        }
        None => {
            table.events += 1;
            table.unkept += 1;
            table.warn(format!(
                "an exec of {} whose executable's real path is unknown; it is not in the policy",
                exec.path
            ));
        }
    }
    if exec.script {
        record_script(table, data.process.pid, &exec.path, by, on_host);
    }
}

/// A learned executable in a directory anyone may write to (`/tmp`, `/dev/shm`): whoever runs
/// there during learning, an intruder included, gets the place allowed. Said, for the review.
/// Host paths only: a pod's path names a file in its own mount namespace.
fn writable_place(table: &mut LearnTable, path: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let Some(dir) = Path::new(path).parent() else {
        return;
    };
    if std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o002 != 0) {
        table.warn(format!(
            "{path} was run from {}, a directory anyone may write to: make sure it is the \
             workload's own and not something planted there",
            dir.display()
        ));
    }
}

/// A script: the allowlist is checked on the name it was run by (an absolute one) and on the
/// file the interpreter opens (its real path).
fn record_script(table: &mut LearnTable, pid: u32, name: &str, by: Option<&str>, on_host: bool) {
    if name.starts_with('/') && !name.starts_with("/dev/fd/") && table.exec(name, by) && on_host {
        writable_place(table, name);
    }
    match real_path(pid, name) {
        Some(real) if real != name => {
            if table.exec(&real, by) && on_host {
                writable_place(table, &real);
            }
        }
        Some(_) => {}
        None => {
            table.unkept += 1;
            table.warn(format!(
                "the script {name} could not be followed to its file (gone, or run by a name \
                 relative to a directory the process has left); its real path is not in the \
                 policy"
            ));
        }
    }
}

/// The real path of a script run as `name` by the process `pid`: an absolute name as it is,
/// a relative one from the process's working directory and `/dev/fd/N` from its descriptor,
/// while it still has them.
fn real_path(pid: u32, name: &str) -> Option<String> {
    // `/dev/fd/N` names the script's descriptor in that process, not in this one.
    let path = if let Some(fd) = name.strip_prefix("/dev/fd/") {
        Path::new(&format!("/proc/{pid}/fd")).join(fd)
    } else if name.starts_with('/') {
        Path::new(name).to_path_buf()
    } else {
        Path::new(&format!("/proc/{pid}/cwd")).join(name)
    };
    let real = std::fs::canonicalize(path).ok()?;
    real.to_str().map(str::to_owned)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{
        cloudevents::{Context, observed},
        event::{Body, Event, Header, Verdict},
        metadata::process::Lineage,
    };

    pub(crate) fn event(body: Body) -> VigilEvent {
        let event = Event {
            header: Header::new(Verdict::Observed, 42, "sh"),
            body,
        };
        let ctx = Context {
            node: "n1".into(),
            cgroup_path: Some("/learn".into()),
            pod: None,
        };
        let lineage = Lineage {
            process: crate::metadata::process::ProcessInfo {
                exe: Some("/usr/bin/dash".into()),
                ..Default::default()
            },
            parent: None,
        };
        observed(&event, &lineage, &ctx)
    }

    #[test]
    fn a_script_run_by_an_absolute_name_teaches_its_interpreter_its_name_and_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.sh");
        std::fs::write(&real, "#!/bin/sh\n").unwrap();
        let link = dir.path().join("link.sh");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let link = link.to_str().unwrap().to_owned();
        let real = std::fs::canonicalize(real).unwrap();
        let mut exec = crate::event::Exec::plain(&link, Vec::new());
        exec.exe_path = Some("/usr/bin/dash".into());
        exec.script = true;
        let mut t = LearnTable::default();
        record(&mut t, &event(Body::Exec(exec)));
        let learned: Vec<&str> = t.executables.keys().map(String::as_str).collect();
        let mut want = vec!["/usr/bin/dash", link.as_str(), real.to_str().unwrap()];
        want.sort();
        assert_eq!(learned, want);
        assert_eq!(
            t.executables["/usr/bin/dash"].by,
            ["cgroup /learn".to_string()].into()
        );
    }

    #[test]
    fn an_executable_in_a_directory_anyone_may_write_is_said_for_the_review() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let tool = open.join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        let tool = tool.to_str().unwrap().to_owned();
        let mut exec = crate::event::Exec::plain(&tool, Vec::new());
        exec.script = true;
        let mut t = LearnTable::default();
        record(&mut t, &event(Body::Exec(exec)));
        assert!(t.executables.contains_key(&tool));
        assert!(
            t.warnings
                .iter()
                .any(|w| w.contains(&tool) && w.contains("anyone may write to")),
            "{:?}",
            t.warnings
        );
        // Its twin, in a directory only its owner writes: nothing to say.
        let closed = dir.path().join("closed.sh");
        std::fs::write(&closed, "#!/bin/sh\n").unwrap();
        let mut exec = crate::event::Exec::plain(closed.to_str().unwrap(), Vec::new());
        exec.script = true;
        let mut t = LearnTable::default();
        record(&mut t, &event(Body::Exec(exec)));
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    }

    #[test]
    fn a_script_run_from_a_descriptor_is_followed_in_the_process_that_holds_it() {
        use std::os::fd::AsRawFd as _;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("by-fd.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        let file = std::fs::File::open(&script).unwrap();
        let name = format!("/dev/fd/{}", file.as_raw_fd());
        let mut t = LearnTable::default();
        record_script(&mut t, std::process::id(), &name, None, true);
        let real = std::fs::canonicalize(&script).unwrap();
        assert_eq!(
            t.executables.keys().collect::<Vec<_>>(),
            [real.to_str().unwrap()]
        );
        // Gone with its process: said, not guessed from this process's descriptors.
        let mut t = LearnTable::default();
        record_script(&mut t, u32::MAX, &name, None, true);
        assert!(t.executables.is_empty());
        assert_eq!(t.unkept, 1);
    }
}
