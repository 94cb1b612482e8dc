//! `vigil learn` on a host (root only): a scripted workload learned in a cgroup of the test's
//! own, the written policy checked and then enforced on the same cgroup, where the workload
//! runs without a violation and anything new is one.
#[expect(
    dead_code,
    reason = "the helpers are shared by several test binaries; each uses a part"
)]
mod common;

use std::{
    net::{TcpListener, UdpSocket},
    os::unix::{fs::PermissionsExt, process::ExitStatusExt},
    path::Path,
    process::{Command, Stdio},
};

use common::{TestCgroup, Tracer, root_or_skip, scenario_bin, vigil_bin};
use serde_json::Value;

fn real(path: &Path) -> String {
    std::fs::canonicalize(path).unwrap().display().to_string()
}

/// The workload: a shell entrypoint that runs a tool, connects to a TCP port, sends a
/// datagram, and maps memory writable and executable (as a JIT does).
fn workload(dir: &Path) -> std::path::PathBuf {
    let script = dir.join("entry.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nset -e\ncat /proc/self/stat > /dev/null\n\
         \"$SCENARIO\" tcp-connect \"127.0.0.1:$TCP_PORT\" > /dev/null\n\
         \"$SCENARIO\" send udp-sendto \"127.0.0.1:$UDP_PORT\" > /dev/null\n\
         \"$SCENARIO\" mmap-rwx > /dev/null\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// The `exec.allow` entries of the one policy in `file`, as the agent describes them.
fn exec_allow(file: &Path) -> Vec<String> {
    let policy = vigil::policy::load_paths(&[file.to_owned()])
        .unwrap()
        .remove(0);
    policy
        .spec
        .exec
        .allow
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn violations_in(events: &[Value], cgroup: u64) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["vigilverdict"] == "violation" && e["data"]["cgroup"]["id"] == cgroup)
        .collect()
}

#[test]
fn a_learned_policy_lets_the_workload_run_and_refuses_anything_new() {
    if !root_or_skip("learn-host") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = workload(dir.path());
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let tcp_port = tcp.local_addr().unwrap().port().to_string();
    let udp_port = udp.local_addr().unwrap().port().to_string();
    let env = [
        ("SCENARIO", scenario_bin().display().to_string()),
        ("TCP_PORT", tcp_port.clone()),
        ("UDP_PORT", udp_port.clone()),
    ];
    let cg = TestCgroup::new("learn");
    let learned = dir.path().join("learned.yaml");

    let out = Command::new(vigil_bin())
        .args(["learn", "--cgroup", &cg.rel, "--name", "entry", "-o"])
        .arg(&learned)
        .arg("--")
        .arg(&script)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "vigil learn failed:\n{stderr}");
    assert!(
        stderr.contains("the command ended: exit status: 0"),
        "{stderr}"
    );
    let text = std::fs::read_to_string(&learned).unwrap();
    eprintln!("learned policy:\n{text}");

    // What the policy says, read back as the agent reads it.
    let check = Command::new(vigil_bin())
        .args(["policy", "check"])
        .arg(&learned)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "vigil policy check refused the learned policy:\n{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let policy = vigil::policy::load_paths(std::slice::from_ref(&learned))
        .unwrap()
        .remove(0);
    let allowed = exec_allow(&learned);
    let mut want = vec![
        format!("path {}", real(Path::new("/bin/sh"))),
        format!("path {}", real(Path::new("/usr/bin/cat"))),
        format!("path {}", real(&scenario_bin())),
        format!("path {}", script.display()),
    ];
    if real(&script) != script.display().to_string() {
        want.push(format!("path {}", real(&script)));
    }
    want.sort();
    assert_eq!(allowed, want, "{text}");
    let destinations: Vec<String> = policy
        .spec
        .connect
        .allow
        .iter()
        .map(|r| format!("{} {:?} {:?}", r.cidr, r.ports, r.protocol))
        .collect();
    assert_eq!(destinations.len(), 2, "{text}");
    assert!(
        policy.spec.connect.allow.iter().any(|r| r.matches(
            "127.0.0.1".parse().unwrap(),
            tcp_port.parse().unwrap(),
            vigil::policy::Protocol::Tcp
        ) && !r
            .covers_protocol(vigil::policy::Protocol::Udp)),
        "{destinations:?}"
    );
    assert!(
        policy.spec.connect.allow.iter().any(|r| r.matches(
            "127.0.0.1".parse().unwrap(),
            udp_port.parse().unwrap(),
            vigil::policy::Protocol::Udp
        )),
        "{destinations:?}"
    );
    assert_eq!(
        policy.spec.memory.allow_executables,
        [real(&scenario_bin())],
        "{text}"
    );
    assert!(text.contains("# 1 run, by cgroup"), "{text}");

    // Enforced: the same workload runs untouched; a new binary and a new destination are
    // violations.
    let enforced = dir.path().join("enforce.yaml");
    std::fs::write(&enforced, text.replace("mode: Audit", "mode: Enforce")).unwrap();
    let agent = Tracer::enforce(&enforced);
    let run = cg
        .command(&script)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "the learned workload failed under its policy: {:?}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let other_port = other.local_addr().unwrap().port();
    let refused = cg
        .command(scenario_bin())
        .args(["tcp-connect", &format!("127.0.0.1:{other_port}")])
        .output()
        .unwrap();
    assert!(!refused.status.success(), "a new destination was reached");
    let new_dir = dir.path().join("new");
    std::fs::create_dir(&new_dir).unwrap();
    let new_tool = new_dir.join("true");
    std::fs::copy("/bin/true", &new_tool).unwrap();
    let killed = cg.command(&new_tool).status().unwrap();
    assert_eq!(killed.signal(), Some(libc::SIGKILL), "a new binary ran");
    agent.wait_for_events("the two violations", |events| {
        (violations_in(events, cg.id).len() >= 2).then_some(())
    });
    let events = agent.stop();
    let v = violations_in(&events, cg.id);
    let what: Vec<String> = v.iter().map(|e| common::compact(e)).collect();
    assert_eq!(v.len(), 2, "only the new binary and destination: {what:#?}");
    assert!(
        v.iter()
            .any(|e| e["type"] == "dev.vigil.exec.v1"
                && e["data"]["process"]["exe"] == real(&new_tool)),
        "{what:#?}"
    );
    assert!(
        v.iter()
            .any(|e| e["type"] == "dev.vigil.connect.v1"
                && e["data"]["connect"]["dport"] == other_port),
        "{what:#?}"
    );
}

#[test]
fn against_a_policy_the_workload_outgrew_learn_prints_the_patch_that_allows_it() {
    if !root_or_skip("learn-against") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cg = TestCgroup::new("learn-against");
    let old = dir.path().join("old.yaml");
    std::fs::write(
        &old,
        format!(
            "apiVersion: vigil.dev/v1alpha1\nkind: ClusterRuntimePolicy\nmetadata: {{name: old}}\n\
             spec:\n  hostProcesses: {{cgroupPrefixes: [\"{}\"]}}\n  exec:\n    allow: [{{path: {}}}]\n    \
             action: Kill\n",
            cg.rel,
            real(&scenario_bin())
        ),
    )
    .unwrap();
    // The new version also runs cat.
    let out = Command::new(vigil_bin())
        .args(["learn", "--cgroup", &cg.rel, "--against"])
        .arg(&old)
        .arg("--")
        .arg(scenario_bin())
        .args(["exec-into", "/usr/bin/cat", "/proc/self/stat"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let patch: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        patch,
        serde_json::json!([{"op": "add", "path": "/spec/exec/allow/-",
                            "value": {"path": real(Path::new("/usr/bin/cat"))}}]),
        "{stderr}"
    );
    assert!(stderr.contains("would refuse exec"), "{stderr}");
}

/// A workload that runs 100,000 distinct executables (hard links of one script) gives a
/// policy of a few entries: the directory folded into a prefix, with a warning. The table it
/// leaves (`--table`) is as small, and a second run goes on from it: what the first learned
/// is still in the policy the second writes.
#[test]
fn a_hundred_thousand_executables_fold_into_a_prefix_and_a_stopped_run_goes_on_from_its_table() {
    if !root_or_skip("learn-bounded") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tools = dir.path().join("tools");
    std::fs::create_dir(&tools).unwrap();
    // Four files, 25,000 names each: a file system caps the links of one inode (ext4 at
    // 65,000).
    for i in 0..100_000 {
        let name = tools.join(format!("t{i:06}"));
        let source = tools.join(format!("t{:06}", i / 25_000 * 25_000));
        if i % 25_000 == 0 {
            std::fs::write(&name, "#!/bin/true\n").unwrap();
            std::fs::set_permissions(&name, std::fs::Permissions::from_mode(0o755)).unwrap();
        } else {
            std::fs::hard_link(&source, name).unwrap();
        }
    }
    let cg = TestCgroup::new("learn-bounded");
    let table = dir.path().join("table.json");
    let learn = |out: &Path, command: &[&std::ffi::OsStr]| {
        let run = Command::new(vigil_bin())
            .args(["learn", "--cgroup", &cg.rel, "--table"])
            .arg(&table)
            .arg("-o")
            .arg(out)
            .arg("--")
            .args(command)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
        assert!(run.status.success(), "vigil learn failed:\n{stderr}");
        assert!(stderr.contains("exit status: 0"), "{stderr}");
        std::fs::read_to_string(out).unwrap()
    };
    let scenario = scenario_bin();
    let first_policy = dir.path().join("first.yaml");
    let text = learn(
        &first_policy,
        &[
            scenario.as_os_str(),
            "exec-each".as_ref(),
            tools.as_os_str(),
        ],
    );
    let tools_prefix = format!("{}/", real(&tools));
    let rules = exec_allow(&first_policy);
    assert!(
        rules.contains(&format!("prefix {tools_prefix}")),
        "{rules:?}"
    );
    assert!(rules.len() <= 8, "{rules:?}");
    assert!(
        text.contains(&format!(
            "# warning: more than 1024 executables: the directory {tools_prefix} is allowed as a prefix"
        )),
        "{}",
        text.lines().take(12).collect::<Vec<_>>().join("\n")
    );
    assert!(text.len() < 4096, "{} bytes", text.len());
    let kept = std::fs::metadata(&table).unwrap().len();
    assert!(kept < 64 * 1024, "the table file holds {kept} bytes");

    // Stopped and started again: the second run adds to what the first learned.
    let second_policy = dir.path().join("second.yaml");
    learn(&second_policy, &["/usr/bin/id".as_ref()]);
    let rules = exec_allow(&second_policy);
    assert!(
        rules.contains(&format!("prefix {tools_prefix}")),
        "{rules:?}"
    );
    assert!(
        rules.contains(&format!("path {}", real(Path::new("/usr/bin/id")))),
        "{rules:?}"
    );
}
