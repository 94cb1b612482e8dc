//! Egress enforcement against an attacker inside a policed cgroup: every kernel path to a
//! destination (connect, Fast Open, sendto, sendmsg, sendmmsg, io_uring, the 32-bit entry, a
//! sockaddr on an unfaulted page, the unspecified address, UDP-Lite, raw sockets) is judged
//! on the kernel's copy of the address and refused before anything leaves. Each attack has
//! a benign twin that must go through silently. Real receivers on loopback prove what did
//! and did not arrive. Root only; every policy selects only the test's own cgroup.
#[expect(
    dead_code,
    reason = "the helpers are shared by several test binaries; each uses a part"
)]
mod common;

use std::{
    io::Read,
    net::{SocketAddr, TcpListener, UdpSocket},
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use common::{TestCgroup, Tracer, is, root_or_skip, skip_for_kernel, stdout_lines};
use serde_json::Value;

const CONNECT: &str = "dev.vigil.connect.v1";
const EPERM: &str = "result=errno:1";
const PAYLOAD: &[u8] = b"vigil-egress";

/// TCP and UDP receivers on one port of 127.0.0.1 and ::1.
struct Receivers {
    port: u16,
    tcp: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
}

impl Receivers {
    fn bind() -> Self {
        for _ in 0..50 {
            let first = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = first.local_addr().unwrap().port();
            let rest = (
                TcpListener::bind(("::1", port)),
                UdpSocket::bind(("127.0.0.1", port)),
                UdpSocket::bind(("::1", port)),
            );
            if let (Ok(tcp6), Ok(udp4), Ok(udp6)) = rest {
                let tcp = vec![first, tcp6];
                let udp = vec![udp4, udp6];
                for l in &tcp {
                    l.set_nonblocking(true).unwrap();
                }
                for u in &udp {
                    u.set_nonblocking(true).unwrap();
                }
                return Self { port, tcp, udp };
            }
        }
        panic!("no port free on both 127.0.0.1 and ::1 for TCP and UDP");
    }

    /// What arrives since the last call, once `want` things have (one entry per accepted
    /// connection, with its first bytes if any came, or per datagram); fails after the
    /// liveness bound.
    fn arrived(&self, want: usize) -> Vec<Vec<u8>> {
        let got = std::cell::RefCell::new(Vec::new());
        common::wait_until(
            "what was sent",
            common::liveness(),
            || {
                got.borrow_mut().extend(self.take());
                (got.borrow().len() >= want).then_some(())
            },
            || format!("{} of {want} arrived", got.borrow().len()),
        );
        let mut got = got.into_inner();
        got.extend(self.take());
        got
    }

    /// Asserts that nothing arrived since the last call.
    #[track_caller]
    fn nothing_arrived(&self, what: &str) {
        // Waiting is the point: a leak would show up within the grace. Whatever was sent
        // before the scenario exited is queued by now on loopback, so a short grace covers
        // the softirq that delivers it.
        std::thread::sleep(Duration::from_millis(50));
        let leaked = self.take();
        assert!(leaked.is_empty(), "{what} leaked: {leaked:?}");
    }

    /// Everything queued on the receivers right now.
    fn take(&self) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        for l in &self.tcp {
            while let Ok((mut stream, _)) = l.accept() {
                stream
                    .set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                let mut buf = [0u8; 64];
                let n = stream.read(&mut buf).unwrap_or(0);
                got.push(buf[..n].to_vec());
            }
        }
        for u in &self.udp {
            let mut buf = [0u8; 64];
            while let Ok(n) = u.recv(&mut buf) {
                got.push(buf[..n].to_vec());
            }
        }
        got
    }
}

fn write_policy(dir: &Path, cg: &TestCgroup, name: &str, spec: &str) -> PathBuf {
    let file = dir.join("policy.yaml");
    let yaml = format!(
        "apiVersion: vigil.dev/v1alpha1\nkind: ClusterRuntimePolicy\nmetadata: {{name: {name}}}\nspec:\n  hostProcesses: {{cgroupPrefixes: [\"{}\"]}}\n{spec}",
        cg.rel
    );
    std::fs::write(&file, yaml).unwrap();
    file
}

/// `vigil-scenario send METHOD ADDR` in `cg`: its pid and output; `None` (with the reason
/// printed) when this kernel lacks the path.
fn send(cg: &TestCgroup, test: &str, method: &str, dest: &str) -> Option<(u32, Output)> {
    let (pid, out) = cg.scenario(&["send", method, dest]);
    if out.status.code() == Some(77) {
        skip_for_kernel(
            &format!("{test} {method}"),
            String::from_utf8_lossy(&out.stderr).trim(),
        );
        return None;
    }
    Some((pid, out))
}

fn result_line(out: &Output) -> String {
    stdout_lines(out)
        .into_iter()
        .find(|l| l.starts_with("result="))
        .unwrap_or_else(|| {
            panic!(
                "no result line ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// Paths to a destination, the hook that judges each, and whether it takes IPv6.
const METHODS: &[(&str, &str, bool)] = &[
    ("tcp-connect", "connect", true),
    ("tcp-fastopen", "connect", true),
    ("udp-connect", "connect", true),
    ("udp-sendto", "sendmsg", true),
    ("udp-sendmsg", "sendmsg", true),
    ("udp-sendmmsg", "sendmsg", true),
    ("udplite-sendto", "sendmsg", true),
    ("tcp-connect-unfaulted", "connect", true),
    ("udp-sendto-unfaulted", "sendmsg", true),
    ("uring-tcp-connect", "connect", true),
    ("uring-udp-connect", "connect", true),
    ("uring-udp-sendmsg", "sendmsg", true),
    ("compat-udp-connect", "connect", false),
];

fn host(addr: &str, port: u16) -> String {
    SocketAddr::new(addr.parse().unwrap(), port).to_string()
}

/// The violation reported for `pid`, checked against what the attack did.
fn assert_violation(e: &Value, action: &str, hook: &str, daddr: &str, dport: u16, rule: &str) {
    let c = &e["data"]["connect"];
    assert_eq!(e["vigilaction"], action, "{e}");
    assert_eq!(e["vigilverdict"], "violation", "{e}");
    assert_eq!(c["hook"], hook, "{e}");
    assert_eq!(c["daddr"], daddr, "{e}");
    assert_eq!(c["dport"], dport, "{e}");
    assert_eq!(e["data"]["policy"]["rule"], rule, "{e}");
}

#[test]
fn deny_refuses_every_path_to_a_destination_off_the_allowlist_and_lets_the_allowed_through() {
    let test = "deny-paths";
    if !root_or_skip(test) {
        return;
    }
    let allowed = Receivers::bind();
    let denied = Receivers::bind();
    let cg = TestCgroup::new("egress-deny");
    let dir = tempfile::tempdir().unwrap();
    let a = allowed.port;
    let policy = write_policy(
        dir.path(),
        &cg,
        "egress-deny",
        &format!(
            "  connect:\n    allow: [{{cidr: 127.0.0.1/32, ports: [\"{a}\"]}}, {{cidr: \"::1/128\", ports: [\"{a}\"]}}]\n    action: Deny\n"
        ),
    );
    let tracer = Tracer::enforce(&policy);
    let mut quiet = Vec::new();
    let mut tried = 0;
    for &(method, hook, v6) in METHODS {
        let loopbacks: &[&str] = if v6 {
            &["127.0.0.1", "::1"]
        } else {
            &["127.0.0.1"]
        };
        for lo in loopbacks {
            // The attack: refused with EPERM, reported, and nothing arrived.
            let Some((pid, out)) = send(&cg, test, method, &host(lo, denied.port)) else {
                continue;
            };
            tried += 1;
            assert!(out.status.success(), "{method} {lo}: {out:?}");
            assert_eq!(result_line(&out), EPERM, "{method} to {lo}:{}", denied.port);
            let e = tracer.wait_for(&format!("{method} to {lo}"), |e| is(e, CONNECT, pid));
            let expect_addr = lo.to_string();
            assert_violation(
                &e,
                "deny",
                hook,
                &expect_addr,
                denied.port,
                "spec.connect.allow",
            );
            denied.nothing_arrived(&format!("{method} to {lo}"));

            // The benign twin: the allowed port goes through by the same path.
            let (pid, out) = send(&cg, test, method, &host(lo, a)).expect("supported above");
            assert_eq!(
                result_line(&out),
                "result=ok",
                "{method} to {lo}:{a}: {out:?}"
            );
            if method != "udplite-sendto" {
                // (UDP-Lite datagrams do not reach a UDP socket; the result line says it went.)
                let got = allowed.arrived(1);
                assert_eq!(got.len(), 1, "{method} to {lo}:{a} arrived {got:?}");
                assert!(
                    got[0].is_empty() || got[0] == PAYLOAD,
                    "{method} to {lo}:{a} arrived {got:?}"
                );
            }
            quiet.push(pid);
        }
    }
    assert!(tried >= 20, "only {tried} attack paths could run here");

    // The unspecified address reaches this host's loopback: judged as loopback.
    for (method, unspecified, lo) in [
        ("tcp-connect", "0.0.0.0", "127.0.0.1"),
        ("udp-sendto", "0.0.0.0", "127.0.0.1"),
        ("tcp-connect", "::", "::1"),
    ] {
        let (pid, out) = send(&cg, test, method, &host(unspecified, denied.port)).unwrap();
        assert_eq!(result_line(&out), EPERM, "{method} to {unspecified}");
        let e = tracer.wait_for(&format!("{method} to {unspecified}"), |e| {
            is(e, CONNECT, pid)
        });
        let hook = if method == "udp-sendto" {
            "sendmsg"
        } else {
            "connect"
        };
        assert_violation(&e, "deny", hook, lo, denied.port, "spec.connect.allow");
        let (pid, out) = send(&cg, test, method, &host(unspecified, a)).unwrap();
        assert_eq!(
            result_line(&out),
            "result=ok",
            "{method} to {unspecified}:{a}"
        );
        assert_eq!(allowed.arrived(1).len(), 1, "{method} to {unspecified}:{a}");
        quiet.push(pid);
    }
    denied.nothing_arrived("the unspecified address");

    // A raw socket would reach any destination without passing an address hook.
    let (pid, out) = send(&cg, test, "raw-socket", "127.0.0.1:0").unwrap();
    assert_eq!(result_line(&out), EPERM, "raw socket");
    let e = tracer.wait_for("the raw socket", |e| is(e, CONNECT, pid));
    let c = &e["data"]["connect"];
    assert_eq!(
        (&c["hook"], &c["protocol"], &c["socketType"], &c["daddr"]),
        (
            &Value::from("socket"),
            &Value::from("ip-1"),
            &Value::from("raw"),
            &Value::Null
        ),
        "{e}"
    );
    assert_eq!(e["data"]["policy"]["rule"], "spec.connect", "{e}");
    assert_eq!(e["vigilaction"], "deny", "{e}");

    let events = tracer.stop();
    for pid in quiet {
        let loud: Vec<&Value> = events.iter().filter(|e| is(e, CONNECT, pid)).collect();
        assert!(loud.is_empty(), "allowed traffic was reported: {loud:?}");
    }
}

#[test]
fn kill_refuses_and_kills_on_every_path_and_a_deny_list_covers_the_unspecified_address() {
    let test = "kill-paths";
    if !root_or_skip(test) {
        return;
    }
    let allowed = Receivers::bind();
    let denied = Receivers::bind();
    let cg = TestCgroup::new("egress-kill");
    let free = TestCgroup::new("egress-free");
    let dir = tempfile::tempdir().unwrap();
    let d = denied.port;
    let spec = |action: &str| {
        format!(
            "  connect:\n    deny: [{{cidr: 127.0.0.0/8, ports: [\"{d}\"]}}, {{cidr: \"::1/128\", ports: [\"{d}\"]}}]\n    action: {action}\n"
        )
    };
    // Where raw `sys_exit` (every system call of every task) waits for a set that kills
    // (`agent/src/ebpf/late.rs`), an Alert set leaves it off; the Kill rule comes by a
    // reload and must hold at the next call, on every path.
    let policy = write_policy(dir.path(), &cg, "egress-kill", &spec("Alert"));
    let tracer = Tracer::enforce(&policy);
    let late = common::sys_exit_late();
    let attached = |tracer: &Tracer| {
        tracer
            .stderr_lines()
            .iter()
            .filter(|l| l.contains("raw sys_exit attached"))
            .count()
    };
    assert_eq!(attached(&tracer), 0, "{:?}", tracer.stderr_lines());
    let applied = tracer.state()["applied"].as_u64();
    write_policy(dir.path(), &cg, "egress-kill", &spec("Kill"));
    tracer.wait_for_state("the reload with action: Kill applied", |s| {
        s["applied"].as_u64() != applied
    });
    if late {
        tracer.wait_for_log("raw sys_exit attached");
    }
    assert_eq!(
        attached(&tracer),
        usize::from(late),
        "{:?}",
        tracer.stderr_lines()
    );
    let mut tried = 0;
    for (method, dest, daddr, hook) in [
        ("tcp-connect", host("0.0.0.0", d), "127.0.0.1", "connect"),
        ("udp-sendto", host("::", d), "::1", "sendmsg"),
        ("tcp-fastopen", host("127.0.0.1", d), "127.0.0.1", "connect"),
        ("udp-sendmmsg", host("::1", d), "::1", "sendmsg"),
        (
            "uring-udp-sendmsg",
            host("127.0.0.1", d),
            "127.0.0.1",
            "sendmsg",
        ),
        ("uring-tcp-connect", host("::1", d), "::1", "connect"),
        (
            "compat-udp-connect",
            host("127.0.0.1", d),
            "127.0.0.1",
            "connect",
        ),
    ] {
        let Some((pid, out)) = send(&cg, test, method, &dest) else {
            continue;
        };
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGKILL),
            "{method} to {dest} was not killed: {out:?}"
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("result="),
            "{method} to {dest} returned to user space: {out:?}"
        );
        let e = tracer.wait_for(&format!("{method} to {dest}"), |e| is(e, CONNECT, pid));
        assert_violation(&e, "kill", hook, daddr, d, rule_for(daddr));
        denied.nothing_arrived(&format!("{method} to {dest}"));
        tried += 1;
    }
    // io_uring and the 32-bit entry may be missing from a kernel; the other paths never.
    assert!(tried >= 4, "only {tried} kill paths could run here");
    // Raw sockets are killed too in a cgroup with connect rules ...
    let (pid, out) = send(&cg, test, "raw-socket", "127.0.0.1:0").unwrap();
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "raw socket: {out:?}"
    );
    tracer.wait_for("the raw socket", |e| is(e, CONNECT, pid));

    // ... and the benign twins go through: another port from the policed cgroup, and a raw
    // socket in a cgroup no policy selects.
    let (pid, out) = send(&cg, test, "tcp-connect", &host("127.0.0.1", allowed.port)).unwrap();
    assert_eq!(result_line(&out), "result=ok", "{out:?}");
    assert_eq!(allowed.arrived(1).len(), 1);
    let (free_pid, out) = send(&free, test, "raw-socket", "127.0.0.1:0").unwrap();
    assert_eq!(result_line(&out), "result=ok", "{out:?}");
    let events = tracer.stop();
    for quiet in [pid, free_pid] {
        assert!(
            !events.iter().any(|e| is(e, CONNECT, quiet)),
            "a benign twin was reported"
        );
    }
}

/// The deny rule that names `daddr` in the Kill test's policy.
fn rule_for(daddr: &str) -> &'static str {
    if daddr.contains(':') {
        "spec.connect.deny[1]"
    } else {
        "spec.connect.deny[0]"
    }
}
