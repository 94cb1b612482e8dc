//! Kernel tests: the real probes, loaded into this kernel, watching staged cgroups.
//! Root only; each test stages its own cgroup and removes it, even when it fails.
#[expect(
    dead_code,
    reason = "the helpers are shared by several test binaries; each uses a part"
)]
mod common;

use std::{
    net::{SocketAddr, TcpListener, UdpSocket},
    os::unix::process::CommandExt,
};

use common::{
    TestCgroup, Tracer, assert_ok, is, pid_of, root_or_skip, skip_for_kernel, stdout_lines,
};
use serde_json::Value;

const EXEC: &str = "dev.vigil.exec.v1";
const CONNECT: &str = "dev.vigil.connect.v1";
const WX: &str = "dev.vigil.wx.v1";
const UNSUPPORTED: i32 = 77;

/// Fields every event must carry, whatever its type.
fn assert_envelope(e: &Value, cgroup: &TestCgroup) {
    assert_eq!(e["specversion"], "1.0");
    assert!(e["id"].as_str().is_some_and(|id| !id.is_empty()));
    let node = vigil::node_name();
    assert_eq!(e["source"], format!("/vigil/nodes/{node}"));
    assert_eq!(e["subject"], format!("hosts/{node}"));
    assert_eq!(e["vigilverdict"], "observed");
    assert_eq!(e["datacontenttype"], "application/json");
    let time = chrono::DateTime::parse_from_rfc3339(e["time"].as_str().expect("time"))
        .expect("RFC 3339 time");
    let age = chrono::Utc::now().signed_duration_since(time).num_seconds();
    assert!(
        (0..60).contains(&age),
        "event time {time} is {age} s from now"
    );
    let data = &e["data"];
    assert_eq!(data["cgroup"]["id"], cgroup.id);
    assert_eq!(data["cgroup"]["path"], cgroup.rel.as_str());
    assert!(data["process"]["pid"].as_u64().is_some_and(|p| p > 0));
    assert!(
        data["process"]["comm"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
    );
}

/// What a process chose is not what it runs with: a second thread of the caller rewrites an
/// argument while the first executes with it. The arguments reported must be the ones the
/// new program was given (it prints them), never what the caller's memory held a moment
/// earlier. The benign twin is every round whose argument did not change.
#[test]
fn a_racing_thread_rewriting_an_argument_does_not_change_the_reported_arguments() {
    if !root_or_skip("exec") {
        return;
    }
    let cg = TestCgroup::new("exec-race");
    let tracer = Tracer::start(Some(&cg.rel), &[]);
    let (_, out) = cg.scenario(&["race-exec-args", "40"]);
    assert!(out.status.success(), "{out:?}");
    let given: Vec<(u32, String)> = common::stdout_lines(&out)
        .iter()
        .filter_map(|l| {
            let (pid, arg) = l.strip_prefix("pid=")?.split_once(" arg=")?;
            Some((pid.parse().ok()?, arg.to_string()))
        })
        .collect();
    assert_eq!(given.len(), 40, "{out:?}");
    for (pid, arg) in &given {
        let e = tracer.wait_for(&format!("the exec of pid {pid}"), |e| {
            is(e, EXEC, *pid) && e["data"]["exec"]["args"][1] == "print-args"
        });
        assert_eq!(
            e["data"]["exec"]["args"],
            serde_json::json!(["vigil-scenario", "print-args", arg]),
            "pid {pid} was given {arg:?}: {e}"
        );
        assert_eq!(e["data"]["exec"]["argsMissing"], false, "{e}");
    }
    let variants: std::collections::BTreeSet<&str> =
        given.iter().map(|(_, a)| a.as_str()).collect();
    eprintln!("race-exec-args: the programs were given {variants:?}");
}

#[test]
fn exec_of_a_copied_binary_reports_path_args_pid_parent_and_cgroup() {
    if !root_or_skip("exec") {
        return;
    }
    let cg = TestCgroup::new("exec");
    let tracer = Tracer::start(Some(&cg.rel), &[]);
    let tmp = tempfile::tempdir().unwrap();
    let copied = tmp.path().join("vigil-copied-true");
    std::fs::copy("/bin/true", &copied).unwrap();
    let child = cg
        .command(&copied)
        .args(["--first", "second arg"])
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());

    let e = tracer.wait_for("exec of the copied binary", |e| is(e, EXEC, pid));
    assert_envelope(&e, &cg);
    let data = &e["data"];
    let path = copied.display().to_string();
    assert_eq!(data["exec"]["path"], path.as_str());
    assert_eq!(
        data["exec"]["args"],
        serde_json::json!([path, "--first", "second arg"])
    );
    assert_eq!(data["exec"]["memfd"], false);
    assert_eq!(data["exec"]["deleted"], false);
    assert_eq!(data["process"]["comm"], "vigil-copied-tr");
    assert_eq!(data["process"]["ppid"], std::process::id());
    assert_eq!(data["parent"]["pid"], std::process::id());
    assert_eq!(data["process"]["uid"], 0);
    drop(tmp);
    tracer.stop();
}

#[test]
fn memfd_and_deleted_binaries_are_flagged() {
    if !root_or_skip("memfd") {
        return;
    }
    let cg = TestCgroup::new("memfd");
    let tracer = Tracer::start(Some(&cg.rel), &[]);
    let (pid, out) = cg.scenario(&["memfd-exec"]);
    assert_ok(&out, "memfd-exec");
    let e = tracer.wait_for("memfd exec", |e| {
        is(e, EXEC, pid) && e["data"]["exec"]["args"][0] == "vigil-payload"
    });
    let exec = &e["data"]["exec"];
    assert_eq!(exec["memfd"], true, "{e}");
    assert_eq!(exec["deleted"], false, "{e}");
    assert!(
        exec["exeName"]
            .as_str()
            .unwrap()
            .starts_with("memfd:vigil-payload"),
        "{e}"
    );
    assert_eq!(
        exec["args"],
        serde_json::json!(["vigil-payload", "--scenario-arg"])
    );

    let tmp = tempfile::tempdir().unwrap();
    let doomed = tmp.path().join("doomed");
    std::fs::copy("/bin/true", &doomed).unwrap();
    let (pid, out) = cg.scenario(&["deleted-exec", doomed.to_str().unwrap()]);
    assert_ok(&out, "deleted-exec");
    let e = tracer.wait_for("exec of a deleted binary", |e| {
        is(e, EXEC, pid) && e["data"]["exec"]["args"][0] == "vigil-deleted"
    });
    assert_eq!(e["data"]["exec"]["deleted"], true, "{e}");
    assert_eq!(e["data"]["exec"]["memfd"], false, "{e}");
    tracer.stop();
}

fn assert_connect(e: &Value, protocol: &str, family: &str, dest: SocketAddr) {
    let c = &e["data"]["connect"];
    assert_eq!(c["protocol"], protocol, "{e}");
    assert_eq!(c["family"], family, "{e}");
    assert_eq!(c["daddr"], dest.ip().to_string(), "{e}");
    assert_eq!(c["dport"], dest.port(), "{e}");
}

/// Runs `protocol`-connect from a traced cgroup to each of `dests` (v4, then v6) and checks
/// the reported destination, family and socket type.
fn connects_report_their_destinations(label: &str, protocol: &str, dests: [SocketAddr; 2]) {
    let cg = TestCgroup::new(label);
    let tracer = Tracer::start(Some(&cg.rel), &[]);
    let scenario = format!("{protocol}-connect");
    let socket_type = if protocol == "tcp" { "stream" } else { "dgram" };
    for (dest, family) in dests.into_iter().zip(["ipv4", "ipv6"]) {
        let (pid, out) = cg.scenario(&[&scenario, &dest.to_string()]);
        assert_ok(&out, &scenario);
        let e = tracer.wait_for(&format!("{scenario} to {dest}"), |e| is(e, CONNECT, pid));
        assert_envelope(&e, &cg);
        assert_connect(&e, protocol, family, dest);
        assert_eq!(e["data"]["connect"]["hook"], "connect", "{e}");
        assert_eq!(e["data"]["connect"]["socketType"], socket_type, "{e}");
    }
    tracer.stop();
}

#[test]
fn tcp_connects_over_ipv4_and_ipv6_report_the_true_destination() {
    if !root_or_skip("tcp") {
        return;
    }
    let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let v6 = TcpListener::bind("[::1]:0").unwrap();
    connects_report_their_destinations(
        "tcp",
        "tcp",
        [v4.local_addr().unwrap(), v6.local_addr().unwrap()],
    );
}

#[test]
fn udp_connects_are_reported() {
    if !root_or_skip("udp") {
        return;
    }
    // UDP connect sends nothing; the receivers only give the test addresses it owns.
    let v4 = UdpSocket::bind("127.0.0.1:0").unwrap();
    let v6 = UdpSocket::bind("[::1]:0").unwrap();
    connects_report_their_destinations(
        "udp",
        "udp",
        [v4.local_addr().unwrap(), v6.local_addr().unwrap()],
    );
}

#[test]
fn io_uring_connect_is_seen() {
    if !root_or_skip("io_uring") {
        return;
    }
    let cg = TestCgroup::new("uring");
    let tracer = Tracer::start(Some(&cg.rel), &[]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let dest = listener.local_addr().unwrap();
    let (pid, out) = cg.scenario(&["io-uring-connect", &dest.to_string()]);
    if out.status.code() == Some(UNSUPPORTED) {
        skip_for_kernel(
            "io_uring_connect_is_seen",
            &String::from_utf8_lossy(&out.stderr),
        );
        return;
    }
    assert_ok(&out, "io-uring-connect");
    let e = tracer.wait_for("io_uring connect", |e| is(e, CONNECT, pid));
    assert_connect(&e, "tcp", "ipv4", dest);
    tracer.stop();
}

#[test]
fn a_racing_thread_rewriting_the_sockaddr_does_not_change_the_reported_destination() {
    if !root_or_skip("race") {
        return;
    }
    let cg = TestCgroup::new("race");
    let tracer = Tracer::start(Some(&cg.rel), &[]);
    let a = TcpListener::bind("127.0.0.1:0").unwrap();
    let b = TcpListener::bind("127.0.0.1:0").unwrap();
    let (pa, pb) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    // Accept everything, so that a full backlog never stalls a connect.
    for listener in [a, b] {
        std::thread::spawn(move || listener.incoming().for_each(drop));
    }
    let rounds = 200;
    let (pid, out) = cg.scenario(&[
        "race-connect",
        &pa.to_string(),
        &pb.to_string(),
        &rounds.to_string(),
    ]);
    assert_ok(&out, "race-connect");
    let peers: Vec<u16> = stdout_lines(&out)
        .iter()
        .map(|l| {
            l.trim_start_matches("peer=")
                .parse::<SocketAddr>()
                .unwrap()
                .port()
        })
        .collect();
    assert_eq!(peers.len(), rounds);
    // 200 records in a 4 MiB ring with a live reader: below capacity, none may be lost.
    let reported = tracer.wait_for_events("every connect of the race", |events| {
        let reported: Vec<u16> = events
            .iter()
            .filter(|e| is(e, CONNECT, pid))
            .map(|e| e["data"]["connect"]["dport"].as_u64().unwrap() as u16)
            .collect();
        (reported.len() >= rounds).then_some(reported)
    });
    // The ring buffer keeps order, so the n-th event is the n-th connection.
    assert_eq!(
        reported, peers,
        "reported destinations differ from where the connections went"
    );
    let to_b = peers.iter().filter(|p| **p == pb.port()).count();
    eprintln!(
        "race: {to_b} of {rounds} connections went to the rewritten address; all reported correctly"
    );
    tracer.stop();
}

#[test]
fn write_execute_mappings_are_reported_and_loader_mappings_are_not() {
    if !root_or_skip("wx") {
        return;
    }
    let cg = TestCgroup::new("wx");
    // Where the BPF LSM programs report W^X, they do so before the kernel chooses an address.
    let before_the_act = common::wx_from_lsm();
    let tracer = Tracer::start(Some(&cg.rel), &[]);
    let mut checked = Vec::new();
    for (scenario, syscall, prot, rie) in [
        ("mmap-rwx", "mmap", "rwx", false),
        ("mprotect-rwx", "mprotect", "rwx", false),
        ("pkey-mprotect-rwx", "pkey_mprotect", "rwx", false),
        ("rie-mmap-rw", "mmap", "rw-", true),
    ] {
        let (pid, out) = cg.scenario(&[scenario]);
        if out.status.code() == Some(UNSUPPORTED) {
            skip_for_kernel(scenario, &String::from_utf8_lossy(&out.stderr));
            continue;
        }
        assert_ok(&out, scenario);
        let addr = stdout_lines(&out)[0]
            .trim_start_matches("addr=")
            .to_string();
        let e = tracer.wait_for(scenario, |e| {
            is(e, WX, pid) && e["data"]["wx"]["syscall"] == syscall
        });
        assert_envelope(&e, &cg);
        let wx = &e["data"]["wx"];
        assert_eq!(wx["protText"], prot, "{scenario}: {e}");
        assert_eq!(wx["readImpliesExec"], rie, "{scenario}: {e}");
        assert_eq!(wx["len"], 4096, "{scenario}: {e}");
        // mmap's too: decided when the call returns, the event has the kernel's address;
        // reported before the act, the one asked for (none).
        if before_the_act && syscall == "mmap" {
            assert_eq!(wx["addr"], "0x0", "{scenario}: {e}");
        } else {
            assert_eq!(wx["addr"], addr, "{scenario}: {e}");
        }
        checked.push(scenario);
    }
    // Only pkeys and READ_IMPLIES_EXEC may be missing from a kernel; mmap and mprotect never.
    assert!(
        checked.starts_with(&["mmap-rwx", "mprotect-rwx"]),
        "only {checked:?} could run"
    );
    // The dynamic loader's file-backed r-x mappings (here done explicitly) are benign.
    let (benign, out) = cg.scenario(&["mmap-file-rx", "/bin/true"]);
    assert_ok(&out, "mmap-file-rx");
    // Events keep their order: once a later marker is seen, any event of the benign
    // process would have been seen too.
    let (marker, out) = cg.scenario(&["mmap-rwx"]);
    assert_ok(&out, "marker");
    tracer.wait_for("the marker mapping", |e| is(e, WX, marker));
    let noise: Vec<Value> = tracer
        .events()
        .into_iter()
        .filter(|e| is(e, WX, benign))
        .collect();
    assert!(
        noise.is_empty(),
        "file-backed r-x mapping was reported: {noise:?}"
    );
    tracer.stop();
}

#[test]
fn the_cgroup_filter_leaves_out_processes_outside_the_cgroup() {
    if !root_or_skip("filter") {
        return;
    }
    let cg = TestCgroup::new("filter");
    let tracer = Tracer::start(Some(&cg.rel), &[]);
    // Outside: a plain child of the test process, in the test's own cgroup.
    let outside = std::process::Command::new(common::scenario_bin())
        .arg("mmap-rwx")
        .output()
        .unwrap();
    assert_ok(&outside, "outside mmap-rwx");
    let sibling = TestCgroup::new("filter-sibling");
    let (sibling_pid, out) = sibling.scenario(&["mmap-rwx"]);
    assert_ok(&out, "sibling mmap-rwx");
    // Inside, after them: the marker.
    let (inside, out) = cg.scenario(&["mmap-rwx"]);
    assert_ok(&out, "inside mmap-rwx");
    tracer.wait_for("the inside mapping", |e| is(e, WX, inside));
    let events = tracer.stop();
    let foreign: Vec<&Value> = events
        .iter()
        .filter(|e| e["data"]["cgroup"]["id"] != cg.id)
        .collect();
    assert!(
        foreign.is_empty(),
        "events from outside the cgroup: {foreign:?}"
    );
    assert!(!events.iter().any(|e| pid_of(e) == u64::from(sibling_pid)));
}

#[test]
fn descendants_of_the_filtered_cgroup_are_traced() {
    if !root_or_skip("descendants") {
        return;
    }
    let cg = TestCgroup::new("parent");
    let nested = TestCgroup::nested(&cg, "child");
    let tracer = Tracer::start(Some(&cg.rel), &[]);
    let (pid, out) = nested.scenario(&["mmap-rwx"]);
    assert_ok(&out, "nested mmap-rwx");
    let e = tracer.wait_for("a mapping in the child cgroup", |e| is(e, WX, pid));
    assert_eq!(e["data"]["cgroup"]["path"], format!("{}/child", cg.rel));
    tracer.stop();
}

#[test]
fn loss_accounting_is_exact_with_a_tiny_ring_buffer() {
    if !root_or_skip("loss") {
        return;
    }
    use vigil::ebpf::{CgroupFilter, ProbeOptions, Probes};
    let cg = TestCgroup::new("loss");
    let mut probes = Probes::load(&ProbeOptions {
        cgroup: Some(CgroupFilter {
            id: cg.id,
            level: cg.rel.trim_start_matches('/').split('/').count() as u32,
        }),
        ring_buffer_bytes: Some(4096),
        mode: vigil::ebpf::Mode::Trace,
        exclude_pid: std::process::id(),
        cgroup_root: Some(cg.root.clone()),
        kernel_log: false,
        pin: None,
    })
    .expect("loading probes");
    let mut ring = probes.take_ring_buffer().unwrap();
    let losses = probes.take_loss_counters().unwrap();
    let generated = 5000usize;
    // Nobody reads while the flood runs, so the 4 KiB ring must overflow: the test is about
    // the count of what was lost, so a loss is what it needs.
    let (pid, out) = cg.scenario(&["flood-mmap", &generated.to_string()]);
    assert_ok(&out, "flood-mmap");
    let mut received = 0usize;
    while let Some(item) = ring.next() {
        let ev = vigil::event::decode(&item).expect("decodable record");
        if ev.header.pid == pid && matches!(ev.body, vigil::event::Body::Wx(_)) {
            received += 1;
        }
    }
    let lost = losses.read().unwrap().wx as usize;
    eprintln!("loss: generated {generated}, received {received}, counted lost {lost}");
    assert!(lost > 0, "the flood did not overflow a 4 KiB ring buffer");
    assert!(received > 0);
    assert_eq!(received + lost, generated);
}

#[test]
fn trace_streams_through_the_pipeline_without_losses_and_pretty_output_is_readable() {
    if !root_or_skip("pretty") {
        return;
    }
    let cg = TestCgroup::new("flow");
    // JSON: a steady stream through the whole pipeline arrives, or what does not is counted.
    // Whether a loaded machine keeps up is for `cargo xtask bench`; that nothing goes missing
    // unreported is for this test.
    let tracer = Tracer::start(Some(&cg.rel), &[]);
    let (pid, out) = cg.scenario(&["flood-mmap", "2000"]);
    assert_ok(&out, "flood-mmap");
    let events = tracer.stop();
    let got = events.iter().filter(|e| is(e, WX, pid)).count();
    let lost: u64 = events
        .iter()
        .filter(|e| e["type"] == "dev.vigil.loss.v1")
        .map(|e| e["data"]["lost"]["total"].as_u64().unwrap())
        .sum();
    // A run the kernel skipped is counted as such and in no loss (docs/threat-model.md).
    let skipped = common::wx_runs_skipped(&events);
    eprintln!(
        "stream: received {got} of 2000, {lost} reported lost, {skipped} W^X probe runs skipped"
    );
    let accounted = got as u64 + lost;
    assert!(
        accounted <= 2000 && 2000 - accounted <= skipped,
        "received {got}, lost {lost}, {skipped} probe runs skipped"
    );

    // Pretty: one readable line per event.
    let mut child = std::process::Command::new(common::vigil_bin())
        .args(["trace", "--output", "pretty", "--cgroup", &cg.rel])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    assert!(lines.any(|l| l.is_ok_and(|l| l.contains("vigil is tracing"))));
    std::thread::spawn(move || lines.for_each(drop));
    let (printed_tx, printed) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            if printed_tx.send(line).is_err() {
                break;
            }
        }
    });
    let (pid, out) = cg.scenario(&["mmap-rwx"]);
    assert_ok(&out, "mmap-rwx");
    let mut text = Vec::new();
    let line = loop {
        let line = printed
            .recv_timeout(common::liveness())
            .unwrap_or_else(|_| panic!("no pretty wx line for {pid}:\n{}", text.join("\n")));
        if line.contains(&format!("[{pid}]")) && line.contains(" wx ") {
            break line;
        }
        text.push(line);
    };
    // SAFETY: signalling the child we started, by its pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "pretty trace exited with {status}");
    assert!(line.contains("mmap rwx len=4096"), "{line}");
    assert!(line.contains(&format!("cgroup {}", cg.rel)), "{line}");
}

#[test]
fn doctor_reports_this_kernel_and_succeeds() {
    if !root_or_skip("doctor") {
        return;
    }
    let out = common::doctor_now();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "doctor failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for check in [
        "BTF",
        "BPF ring buffer",
        "bpf_send_signal",
        "prevention (BPF LSM)",
        "fentry",
        "cgroup v2 root",
        "tracepoint sched/sched_process_exec",
        "program sched_process_exec",
        "W^X hooks",
        "script hooks",
        "foreign write hooks",
        "32-bit entry hook",
    ] {
        assert!(
            text.lines().any(|l| l.contains(check)),
            "doctor did not report {check}:\n{text}"
        );
    }
    assert!(text.contains("vigil can run on this kernel"));
    // A program that fails here would leave its act to a tracepoint, silently: where BPF LSM
    // runs, every level of a script is its; where it reads registers, foreign writes by
    // system call are too. (From this output: each doctor run loads every program, minutes
    // under emulation.)
    let line = |name: &str| {
        text.lines()
            .find(|l| l.contains(name))
            .unwrap_or_default()
            .to_owned()
    };
    if line("prevention (BPF LSM)").starts_with("ok") {
        assert!(
            line("script hooks").contains("bprm_check_security"),
            "{text}"
        );
    }
    if line("W^X hooks").contains("BPF LSM programs") {
        assert!(
            line("foreign write hooks").contains("BPF LSM programs"),
            "{text}"
        );
        for program in [
            "lsm_ptrace_access_check",
            "lsm_ptrace_traceme",
            "lsm_userfaultfd",
        ] {
            assert!(
                text.lines()
                    .any(|l| l.starts_with("ok") && l.contains(&format!("program {program}"))),
                "{program}:\n{text}"
            );
        }
        // Where the exec program reads registers too, raw `sys_enter` waits for a set that
        // denies 32-bit calls.
        assert!(
            line("32-bit entry hook").contains("only once a policy denies"),
            "{text}"
        );
    } else {
        assert!(
            line("32-bit entry hook").contains("runs at every system call"),
            "{text}"
        );
    }
}

#[test]
fn doctor_refuses_to_pass_without_privileges() {
    if !root_or_skip("doctor-unprivileged") {
        return;
    }
    let out = std::process::Command::new(common::vigil_bin())
        .arg("doctor")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!out.status.success(), "doctor passed as nobody");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("privileges")),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("privileges"));
}

/// The counters a probe keeps when it gives up reach the loss event, the log and `vigil
/// doctor`. No probe fails on demand, so the test writes a count into the running agent's
/// pinned `PROBE_ERRORS` slot, as the probe's failure path would, and follows it out.
#[test]
fn probe_failures_are_counted_and_reported_in_loss_events_the_log_and_doctor() {
    if !root_or_skip("probe-failures") {
        return;
    }
    use agent_common::probe_error;
    use aya::maps::{Map, MapData, PerCpuArray, PerCpuValues};
    let cg = TestCgroup::new("probe-failures");
    let tracer = Tracer::start(Some(&cg.rel), &[]);
    let pinned = std::path::Path::new(vigil::ebpf::PINNED_AGENTS)
        .join(tracer.pid().to_string())
        .join("probe_errors");
    let data = MapData::from_pin(&pinned).unwrap_or_else(|e| {
        panic!(
            "the agent pins its probe counters at {}: {e}",
            pinned.display()
        )
    });
    let mut map: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(data)).expect("a per-CPU array");
    let cpus = aya::util::nr_cpus().expect("CPU count");
    let slot = probe_error::slot(probe_error::id("sys_exit_open_mem"), probe_error::MAP);
    map.set(slot, PerCpuValues::try_from(vec![2u64; cpus]).unwrap(), 0)
        .expect("writing the slot");
    let want = 2 * cpus as u64;

    let loss = tracer.wait_for("a loss event naming the probe failure", |e| {
        e["type"] == "dev.vigil.loss.v1"
            && e["data"]["lost"]["probeErrors"]["sys_exit_open_mem/map"] == want
    });
    assert_eq!(
        loss["data"]["lostSinceStart"]["probeErrors"]["sys_exit_open_mem/map"],
        want
    );
    assert_eq!(
        loss["data"]["lost"]["total"], 0,
        "a probe failure is not a lost record"
    );

    let out = std::process::Command::new(common::vigil_bin())
        .arg("doctor")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = format!("probe failures (agent pid {})", tracer.pid());
    assert!(
        text.lines()
            .any(|l| l.contains(&line) && l.contains(&format!("sys_exit_open_mem/map: {want}"))),
        "doctor did not show the count:\n{text}"
    );
    assert!(
        tracer
            .stderr_lines()
            .iter()
            .any(|l| l.contains("kernel probes gave up") && l.contains("sys_exit_open_mem/map")),
        "the log did not name the failure"
    );
    tracer.stop();
    assert!(
        !pinned.exists(),
        "the agent removes its pinned counters when it stops"
    );
}
