//! Policy enforcement in the kernel (`vigil run`): root only. Every policy here selects only
//! the test's own staged cgroup, so a `Kill` can never reach anything else.
#[expect(
    dead_code,
    reason = "the helpers are shared by several test binaries; each uses a part"
)]
mod common;

use std::{
    net::TcpListener,
    os::unix::{
        fs::PermissionsExt,
        process::{CommandExt, ExitStatusExt},
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    TestCgroup, Tracer, assert_ok, denied_binary, is, liveness, pid_of, remove_cgroup_dir,
    root_or_skip, run_in_cgroup, scenario_bin, skip_for_kernel, wait_until,
};
use serde_json::Value;

const EXEC: &str = "dev.vigil.exec.v1";
const CONNECT: &str = "dev.vigil.connect.v1";
const WX: &str = "dev.vigil.wx.v1";

fn real(path: &Path) -> String {
    std::fs::canonicalize(path).unwrap().display().to_string()
}

fn write_policy(dir: &Path, yaml: &str) -> PathBuf {
    let file = dir.join("policy.yaml");
    std::fs::write(&file, yaml).unwrap();
    file
}

/// A ClusterRuntimePolicy selecting only `cg`, with `spec` (YAML, indented two spaces).
fn policy_for(cg: &TestCgroup, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: vigil.dev/v1alpha1\nkind: ClusterRuntimePolicy\nmetadata: {{name: {name}}}\nspec:\n  hostProcesses: {{cgroupPrefixes: [\"{}\"]}}\n{spec}",
        cg.rel
    )
}

fn violations(events: &[Value], ty: &str, pid: u32) -> Vec<Value> {
    events.iter().filter(|e| is(e, ty, pid)).cloned().collect()
}

/// Waits until the process `pid` is reported, or `timeout` passes.
fn settle(tracer: &Tracer, marker_pid: u32, ty: &str) {
    tracer.wait_for("the marker violation", |e| is(e, ty, marker_pid));
}

#[test]
fn allowed_behaviour_stays_in_the_kernel_and_each_violation_is_reported_once() {
    if !root_or_skip("enforce-basic") {
        return;
    }
    let cg = TestCgroup::new("policy");
    let tmp = tempfile::tempdir().unwrap();
    let scenario = real(&scenario_bin());
    let jit = tmp.path().join("jit");
    std::fs::copy(scenario_bin(), &jit).unwrap();
    let other = tmp.path().join("other-tool");
    std::fs::copy("/bin/true", &other).unwrap();
    let allowed = TcpListener::bind("127.0.0.1:0").unwrap();
    let denied = TcpListener::bind("127.0.0.1:0").unwrap();
    for l in [allowed.try_clone().unwrap(), denied.try_clone().unwrap()] {
        std::thread::spawn(move || l.incoming().for_each(drop));
    }
    let (ap, dp) = (
        allowed.local_addr().unwrap().port(),
        denied.local_addr().unwrap().port(),
    );
    let spec = format!(
        "  exec:\n    allow: [{{path: \"{scenario}\"}}, {{path: \"{jit}\"}}]\n  connect:\n    allow: [{{cidr: 127.0.0.1/32, ports: [\"{ap}\"], protocol: TCP}}, {{cidr: 127.0.0.1/32, ports: [\"53\"], protocol: UDP}}]\n  memory:\n    writeExecute: Deny\n    allowExecutables: [\"{jit}\"]\n",
        jit = real(&jit)
    );
    let file = write_policy(tmp.path(), &policy_for(&cg, "basic", &spec));
    let tracer = Tracer::enforce(&file);

    // Allowed: an allowed exec, a connect to the allowed port, DNS to the allowed resolver,
    // RWX by the exempt executable, and the loader's r-x file mappings.
    let (quiet_exec, out) = cg.scenario(&["mmap-file-rx", "/bin/true"]);
    assert_ok(&out, "mmap-file-rx");
    let (quiet_connect, out) = cg.scenario(&["tcp-connect", &format!("127.0.0.1:{ap}")]);
    assert_ok(&out, "allowed connect");
    let (quiet_dns, out) = cg.scenario(&["udp-connect", "127.0.0.1:53"]);
    assert_ok(&out, "allowed DNS");
    let jit_run = cg.command(&jit).arg("mmap-rwx").output().unwrap();
    assert_ok(&jit_run, "exempt RWX");

    // Violations, one each.
    let bad_exec = cg.command(&other).spawn().unwrap();
    let bad_exec_pid = bad_exec.id();
    bad_exec.wait_with_output().unwrap();
    let (bad_connect, out) = cg.scenario(&["tcp-connect", &format!("127.0.0.1:{dp}")]);
    assert_ok(&out, "denied connect (Alert lets it through)");
    let (bad_wx, out) = cg.scenario(&["mmap-rwx"]);
    assert_ok(&out, "RWX (Alert lets it through)");
    settle(&tracer, bad_wx, WX);
    let events = tracer.stop();

    let e = violations(&events, EXEC, bad_exec_pid);
    assert_eq!(e.len(), 1, "{events:?}");
    assert_eq!(e[0]["vigilverdict"], "violation");
    assert_eq!(e[0]["vigilaction"], "alert");
    assert_eq!(e[0]["vigilpolicy"], "basic");
    assert_eq!(e[0]["data"]["policy"]["rule"], "spec.exec.allow");
    assert_eq!(e[0]["data"]["process"]["exe"], real(&other));
    let c = violations(&events, CONNECT, bad_connect);
    assert_eq!(c.len(), 1, "{events:?}");
    assert_eq!(c[0]["data"]["connect"]["dport"], dp);
    assert_eq!(c[0]["data"]["policy"]["rule"], "spec.connect.allow");
    let w = violations(&events, WX, bad_wx);
    assert_eq!(w.len(), 1, "{events:?}");
    assert_eq!(w[0]["data"]["policy"]["rule"], "spec.memory.writeExecute");
    // Nothing else at all: allowed behaviour never left the kernel. Loss reports name no
    // process (a run the kernel skipped on a loaded machine is counted there, not here).
    let quiet = [quiet_exec, quiet_connect, quiet_dns];
    let jit = real(&jit);
    let noise: Vec<&Value> = common::reports(&events)
        .into_iter()
        .filter(|e| {
            quiet.contains(&(pid_of(e) as u32)) || e["data"]["process"]["exe"] == jit.as_str()
        })
        .collect();
    assert!(
        noise.is_empty(),
        "allowed behaviour was reported: {noise:?}"
    );
    assert_eq!(
        common::reports(&events).len(),
        3,
        "exactly one event per violation: {events:?}"
    );
}

/// Runs `program args` inside `cg` and returns how it ended.
fn run_in(cg: &TestCgroup, program: &Path, args: &[&str]) -> (u32, std::process::ExitStatus) {
    run_in_cgroup(&cg.dir, program, args)
}

fn assert_killed(status: std::process::ExitStatus, marker: &Path, what: &str) {
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "{what}: expected SIGKILL, got {status}"
    );
    assert!(
        !marker.exists(),
        "{what}: the killed program ran (marker {} exists)",
        marker.display()
    );
}

#[test]
fn kill_stops_a_denied_exec_before_its_first_instruction_and_only_in_the_selected_cgroup() {
    if !root_or_skip("kill") {
        return;
    }
    let cg = TestCgroup::new("kill");
    let tmp = tempfile::tempdir().unwrap();
    let (writer, denied) = denied_binary(tmp.path());
    let spec = format!("  exec:\n    deny: [{{prefix: \"{denied}/\"}}]\n    action: Kill\n");
    let file = write_policy(tmp.path(), &policy_for(&cg, "kill", &spec));
    let tracer = Tracer::enforce(&file);

    let marker = tmp.path().join("inside-marker");
    let (pid, status) = run_in(&cg, &writer, &["write-marker", marker.to_str().unwrap()]);
    assert_killed(status, &marker, "denied exec inside the cgroup");
    let e = tracer.wait_for("the kill", |e| is(e, EXEC, pid));
    assert_eq!(e["vigilaction"], "kill");
    assert_eq!(e["vigilseverity"], "high");
    assert_eq!(e["data"]["policy"]["rule"], "spec.exec.deny[0]");

    // The same binary outside the selected cgroup runs normally.
    let outside = tmp.path().join("outside-marker");
    let status = Command::new(&writer)
        .args(["write-marker", outside.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success(), "outside the cgroup: {status}");
    assert!(outside.exists());
    tracer.stop();
}

/// How many times the agent logged that `path` was bound to a new cgroup.
fn rebinds(tracer: &Tracer, path: &str) -> usize {
    tracer
        .stderr_lines()
        .iter()
        .filter(|l| l.contains("policies bound to new cgroups") && l.contains(path))
        .count()
}

#[test]
fn a_binding_follows_its_cgroup_made_late_and_made_anew() {
    if !root_or_skip("anew") {
        return;
    }
    let cg = TestCgroup::new("anew");
    let tmp = tempfile::tempdir().unwrap();
    let (writer, denied) = denied_binary(tmp.path());
    let spec = format!("  exec:\n    deny: [{{prefix: \"{denied}/\"}}]\n    action: Kill\n");
    let file = write_policy(tmp.path(), &policy_for(&cg, "anew", &spec));
    // The cgroup comes only after the agent (a pod's cgroup after its object).
    assert!(remove_cgroup_dir(&cg.dir), "removing {}", cg.dir.display());
    let tracer = Tracer::enforce(&file);
    tracer.wait_for_state("the binding waiting for its cgroup", |s| {
        s["waiting"]
            .as_array()
            .is_some_and(|w| w.iter().any(|p| p == cg.rel.as_str()))
    });
    std::fs::create_dir(&cg.dir).unwrap();
    wait_until(
        "the binding of the late cgroup",
        liveness(),
        || (rebinds(&tracer, &cg.rel) >= 1).then_some(()),
        || tracer.stderr_lines().join("\n"),
    );
    let late = tmp.path().join("late-marker");
    let (_, status) = run_in(&cg, &writer, &["write-marker", late.to_str().unwrap()]);
    assert_killed(status, &late, "denied exec in the late cgroup");

    // Made anew at the same path (a service restarted): a new cgroup id, which the kernel
    // knows nothing of until the agent binds it. Every bound path is looked up again when
    // the kernel counted a cgroup change, or at the latest 10 s after the last full look.
    // Three rounds in a row: without the count, the first might land near the end of the
    // 10 s by chance, but the next starts right after a full look and would wait it out.
    let mut ids = vec![cg.id];
    for round in 1..=3 {
        assert!(remove_cgroup_dir(&cg.dir), "removing {}", cg.dir.display());
        std::fs::create_dir(&cg.dir).unwrap();
        let made = Instant::now();
        let id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&cg.dir).unwrap());
        assert!(!ids.contains(&id), "a cgroup made anew has a new id");
        ids.push(id);
        wait_until(
            &format!("the binding of the cgroup made anew, round {round}"),
            liveness(),
            || (rebinds(&tracer, &cg.rel) > round).then_some(()),
            || tracer.stderr_lines().join("\n"),
        );
        let took = made.elapsed();
        eprintln!("anew: round {round}, the cgroup made anew was bound after {took:?}");
        assert!(
            took < Duration::from_secs(5),
            "round {round}: bound only after {took:?}, the backstop's doing, not the kernel's count of cgroup changes"
        );
        let anew = tmp.path().join(format!("anew-marker-{round}"));
        let (pid, status) = run_in(&cg, &writer, &["write-marker", anew.to_str().unwrap()]);
        assert_killed(status, &anew, "denied exec in the cgroup made anew");
        tracer.wait_for("the kill in the cgroup made anew", |e| {
            is(e, EXEC, pid) && e["vigilaction"] == "kill"
        });
    }
    // The benign twin: an allowed program in the same cgroup runs.
    let allowed = tmp.path().join("allowed-marker");
    let (_, status) = run_in(
        &cg,
        &scenario_bin(),
        &["write-marker", allowed.to_str().unwrap()],
    );
    assert!(status.success(), "the allowed program: {status}");
    assert!(allowed.exists(), "the allowed program ran");
    tracer.stop();
}

#[test]
fn evasions_are_caught() {
    if !root_or_skip("evasions") {
        return;
    }
    let cg = TestCgroup::new("evasion");
    let tmp = tempfile::tempdir().unwrap();
    let denied = tmp.path().join("denied");
    let allowed = tmp.path().join("allowed");
    std::fs::create_dir(&denied).unwrap();
    std::fs::create_dir(&allowed).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let dport = listener.local_addr().unwrap().port();
    let spec = format!(
        "  exec:\n    deny: [{{prefix: \"{d}/\"}}, {{memfd: true}}]\n    action: Kill\n  connect:\n    deny: [{{cidr: 127.0.0.1/32, ports: [\"{dport}\"]}}]\n",
        d = real(&denied)
    );
    let file = write_policy(tmp.path(), &policy_for(&cg, "evasions", &spec));
    let lsm = common::prevention().is_ok();
    let tracer = Tracer::enforce(&file);

    // 1. A symlink with an innocent name, in an allowed place, pointing at a denied binary.
    let target = denied.join("real-writer");
    std::fs::copy(scenario_bin(), &target).unwrap();
    let link = allowed.join("innocent");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let marker = tmp.path().join("m-symlink");
    let (pid, status) = run_in(&cg, &link, &["write-marker", marker.to_str().unwrap()]);
    assert_killed(status, &marker, "symlink to a denied binary");
    let e = tracer.wait_for("the symlink exec", |e| is(e, EXEC, pid));
    if lsm {
        // Refused before the image was replaced: the process is still its caller, and the
        // event's path is the refused file's real path.
        assert_eq!(e["data"]["exec"]["prevented"], true, "{e}");
        assert_eq!(e["data"]["exec"]["path"], real(&target), "{e}");
    } else {
        // Killed after: the process is the new image; the path is the name exec was given.
        assert_eq!(e["data"]["process"]["exe"], real(&target), "{e}");
    }

    // 2. A copy of an allowed system binary placed under the denied prefix.
    let copy = denied.join("true");
    std::fs::copy("/bin/true", &copy).unwrap();
    let (pid, status) = run_in(&cg, &copy, &[]);
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "copied binary: {status}"
    );
    tracer.wait_for("the copied binary", |e| is(e, EXEC, pid));

    // 3. `sh -c` running a denied script: the interpreter is allowed, the script is not.
    let script = denied.join("script.sh");
    let marker = tmp.path().join("m-script");
    std::fs::write(&script, format!("#!/bin/sh\ntouch {}\n", marker.display())).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = cg
        .command("/bin/sh")
        .args(["-c", &format!("{}; echo status=$?", script.display())])
        .output()
        .unwrap();
    assert!(!marker.exists(), "the denied script ran");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("status=137"),
        "{out:?}"
    );
    let e = tracer.wait_for("the script exec", |e| {
        e["type"] == EXEC && e["data"]["exec"]["path"] == script.to_str().unwrap()
    });
    // Where BPF LSM runs, the script's own exec is refused, before the kernel chooses its
    // interpreter; elsewhere the interpreter is killed as it opens the script.
    if lsm {
        assert_eq!(e["data"]["exec"]["prevented"], true, "{e}");
    } else {
        assert_eq!(e["data"]["exec"]["script"], true, "{e}");
    }
    assert_eq!(e["vigilaction"], "kill");

    // 4. Fileless: a memfd exec.
    let marker = tmp.path().join("m-memfd");
    let (_, out) = cg.scenario(&["memfd-exec-marker", marker.to_str().unwrap()]);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "memfd exec: {:?}",
        out.status
    );
    assert!(!marker.exists(), "the memfd payload ran");
    let e = tracer.wait_for("the memfd exec", |e| {
        e["type"] == EXEC && e["data"]["exec"]["memfd"] == true
    });
    assert_eq!(e["data"]["policy"]["rule"], "spec.exec.deny[1]");

    // 5. A connect through io_uring instead of connect(2).
    let (pid, out) = cg.scenario(&["io-uring-connect", &format!("127.0.0.1:{dport}")]);
    if out.status.code() == Some(77) {
        skip_for_kernel(
            "io_uring connect evasion",
            &String::from_utf8_lossy(&out.stderr),
        );
    } else {
        assert_ok(&out, "io_uring connect (Alert)");
        let e = tracer.wait_for("the io_uring connect", |e| is(e, CONNECT, pid));
        assert_eq!(e["data"]["policy"]["rule"], "spec.connect.deny[0]");
    }
    tracer.stop();
}

#[test]
fn a_jit_runtime_named_in_allow_executables_maps_rwx_silently() {
    if !root_or_skip("jit") {
        return;
    }
    // node's V8 maps its code space read-write-execute; python's ctypes callbacks do too.
    let (runtime, args): (PathBuf, Vec<&str>) = if let Ok(node) = which::which("node") {
        (
            node,
            vec![
                "-e",
                "let s = 0; for (let i = 0; i < 1e7; i++) s += i; console.log(s)",
            ],
        )
    } else {
        let python = which::which("python3").expect("node or python3 is needed for the JIT test");
        (
            python,
            vec![
                "-c",
                "import ctypes; print(ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 1)())",
            ],
        )
    };
    let runtime_real = resolve_interpreter(&runtime);
    let cg = TestCgroup::new("jit");
    // The twin: the same runtime where no exemption names it.
    let plain = TestCgroup::new("jit-plain");
    let tmp = tempfile::tempdir().unwrap();
    let spec =
        format!("  memory:\n    writeExecute: Deny\n    allowExecutables: [\"{runtime_real}\"]\n");
    let file = write_policy(
        tmp.path(),
        &[
            policy_for(&cg, "jit", &spec),
            policy_for(&plain, "jit-plain", "  memory:\n    writeExecute: Deny\n"),
        ]
        .join("---\n"),
    );
    let tracer = Tracer::enforce(&file);
    // Silence below only means something if this runtime does map RWX memory.
    let out = plain.command(&runtime).args(&args).output().unwrap();
    assert_ok(&out, "JIT runtime without an exemption");
    tracer.wait_for("the runtime's RWX mapping without an exemption", |e| {
        e["type"] == WX
            && e["data"]["cgroup"]["id"] == plain.id
            && e["data"]["process"]["exe"] == runtime_real.as_str()
    });
    let out = cg.command(&runtime).args(&args).output().unwrap();
    assert_ok(&out, "JIT runtime");
    let (marker, out) = cg.scenario(&["mmap-rwx"]);
    assert_ok(&out, "non-exempt RWX");
    settle(&tracer, marker, WX);
    let events: Vec<Value> = tracer
        .stop()
        .into_iter()
        .filter(|e| e["data"]["cgroup"]["id"] == cg.id)
        .collect();
    let jit_events: Vec<&Value> = events
        .iter()
        .filter(|e| e["data"]["process"]["exe"] == runtime_real.as_str())
        .collect();
    assert!(
        jit_events.is_empty(),
        "the exempt runtime was reported: {jit_events:?}"
    );
    assert_eq!(events.len(), 1, "{events:?}");
}

/// The executable a runtime really runs as (a pyenv shim execs the real python).
fn resolve_interpreter(runtime: &Path) -> String {
    let out = Command::new(runtime)
        .args(if runtime.ends_with("node") {
            vec!["-e", "console.log(process.execPath)"]
        } else {
            vec![
                "-c",
                "import sys, os; print(os.path.realpath(sys.executable))",
            ]
        })
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    real(Path::new(&printed))
}

/// The benign twin of the denied `writer`: the same binary, copied outside the denied
/// directory (to DIR/allowed/writer), which the policy allows.
fn benign_twin(dir: &Path, writer: &Path) -> PathBuf {
    let allowed_dir = dir.join("allowed");
    std::fs::create_dir_all(&allowed_dir).unwrap();
    let allowed = allowed_dir.join("writer");
    std::fs::copy(writer, &allowed).unwrap();
    allowed
}

/// No exec violation was reported for a process running the executable `exe` (a real path).
fn assert_no_violation_of(events: &[Value], exe: &str) {
    let wrongly = events
        .iter()
        .filter(|e| e["type"] == EXEC && e["vigilaction"].is_string())
        .filter(|e| e["data"]["process"]["exe"].as_str() == Some(exe))
        .count();
    assert_eq!(wrongly, 0, "violations reported for the allowed binary");
}

/// How one exec of a generator ended: exit status, whether its marker was written, its pid.
type Ended = (std::process::ExitStatus, bool, u32);

/// Runs `program write-marker DIR/NAME-n` in `cg` one after another (on CPU `cpu` only, when
/// given) while `go_on(n)` holds. Gives how each ended, and the errors of execs that failed
/// with their caller alive (under Kill with BPF LSM the exec is refused and its caller killed
/// before it runs again, so there should be none).
fn exec_loop(
    cg: &TestCgroup,
    program: &Path,
    dir: &Path,
    name: &str,
    cpu: Option<usize>,
    go_on: impl Fn(usize) -> bool,
) -> (Vec<Ended>, Vec<String>) {
    let mut results = Vec::new();
    let mut lived = Vec::new();
    let mut n = 0;
    while go_on(n) {
        let marker = dir.join(format!("{name}-{n}"));
        let mut cmd = common::in_cgroup(&cg.dir, program);
        cmd.args(["write-marker", marker.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(cpu) = cpu {
            // SAFETY: only sched_setaffinity (async-signal-safe) between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(cpu, &mut set);
                    if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        match cmd.spawn() {
            Ok(child) => {
                let pid = child.id();
                let status = child.wait_with_output().expect("waiting").status;
                results.push((status, marker.exists(), pid));
            }
            Err(err) => lived.push(err.to_string()),
        }
        n += 1;
    }
    (results, lived)
}

/// The agent's events about the processes `pids` (its events carry the pid), waited for a
/// little: a failure then names the program and rule that acted on them, or shows that
/// nothing reported them.
fn said_about(tracer: &Tracer, pids: &[u32]) -> Vec<String> {
    if pids.is_empty() {
        return Vec::new();
    }
    let said = |events: &[Value]| -> Vec<String> {
        events
            .iter()
            .filter(|e| {
                e["data"]["process"]["pid"]
                    .as_u64()
                    .is_some_and(|p| pids.contains(&(p as u32)))
            })
            .map(|e| e.to_string())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while said(&tracer.events()).len() < pids.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut out = said(&tracer.events());
    out.push(format!(
        "pids {pids:?}; the agent's state: {}",
        tracer.state()
    ));
    out
}

/// Programs on a kernel that preempts kernel code (lazy or full preemption, Debian's default
/// from 6.16) can be interrupted half way and their CPU given to another task whose programs
/// run on the same CPU: what one program keeps in memory of its own while it decides must
/// not be the other's. Both generators share one CPU, so their decisions interleave there;
/// the denied one must die every time and the allowed one never.
#[test]
fn allowed_and_denied_execs_sharing_one_cpu_keep_their_own_verdicts() {
    if !root_or_skip("one-cpu") {
        return;
    }
    let cg = TestCgroup::new("one-cpu");
    let tmp = tempfile::tempdir().unwrap();
    let (writer, d) = denied_binary(tmp.path());
    let policy = policy_for(
        &cg,
        "one-cpu",
        &format!("  exec:\n    deny: [{{prefix: \"{d}/\"}}]\n    action: Kill\n"),
    );
    let file = write_policy(tmp.path(), &policy);
    let tracer = Tracer::enforce(&file);
    let allowed = benign_twin(tmp.path(), &writer);

    const EXECS: usize = 300;
    let ((denied, denied_lived), (benign, benign_failed)) = std::thread::scope(|scope| {
        let denied =
            scope.spawn(|| exec_loop(&cg, &writer, tmp.path(), "denied", Some(0), |n| n < EXECS));
        let benign =
            scope.spawn(|| exec_loop(&cg, &allowed, tmp.path(), "allowed", Some(0), |n| n < EXECS));
        (denied.join().unwrap(), benign.join().unwrap())
    });
    let escaped: Vec<&Ended> = denied
        .iter()
        .filter(|(s, ran, _)| s.signal() != Some(libc::SIGKILL) || *ran)
        .collect();
    let harmed: Vec<&Ended> = benign
        .iter()
        .filter(|(s, ran, _)| !s.success() || !ran)
        .collect();
    eprintln!(
        "one cpu: {} of {EXECS} denied execs killed, {} of {EXECS} allowed ones ran",
        denied.len() - escaped.len(),
        benign.len() - harmed.len()
    );
    assert!(
        denied_lived.is_empty() && escaped.is_empty(),
        "denied execs escaped the kill ({} refused with the caller alive: {:?}; {} ran or died otherwise: {:?}); what the agent said about them: {:#?}",
        denied_lived.len(),
        &denied_lived[..denied_lived.len().min(3)],
        escaped.len(),
        &escaped[..escaped.len().min(5)],
        said_about(&tracer, &escaped.iter().map(|e| e.2).collect::<Vec<_>>()),
    );
    assert!(
        benign_failed.is_empty() && harmed.is_empty(),
        "allowed execs were refused ({}: {:?}) or did not run to the end ({}: {:?}); what the agent said about them: {:#?}",
        benign_failed.len(),
        &benign_failed[..benign_failed.len().min(3)],
        harmed.len(),
        &harmed[..harmed.len().min(5)],
        said_about(&tracer, &harmed.iter().map(|e| e.2).collect::<Vec<_>>()),
    );
    let allowed_real = real(&allowed);
    let denied_real = real(&writer);
    let events = tracer.stop();
    // What each layer had to do (kernels that preempt kernel code, `agent-ebpf/src/judged.rs`):
    // runs the kernel skipped, and execs the return check failed closed.
    let unjudged = events
        .iter()
        .filter(|e| e["type"] == EXEC && e["data"]["exec"]["unjudged"] == true)
        .count();
    eprintln!(
        "one cpu: runs skipped: sched_process_exec {}, sched_process_exec_again {}, sys_exit {}, bprm_execve_exit {}; execs failed closed unjudged: {unjudged}",
        common::runs_skipped(&events, "sched_process_exec"),
        common::runs_skipped(&events, "sched_process_exec_again"),
        common::runs_skipped(&events, "sys_exit"),
        common::runs_skipped(&events, "bprm_execve_exit"),
    );
    assert_no_violation_of(&events, &allowed_real);
    // Each report is one exec's own: its path and the arguments it was started with (built
    // in memory of their own as well) are the denied binary's, never the other's.
    let mixed: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == EXEC && e["vigilaction"] == "kill")
        .filter(|e| {
            let exec = &e["data"]["exec"];
            exec["path"].as_str() != Some(denied_real.as_str())
                || exec["args"]
                    .get(0)
                    .and_then(Value::as_str)
                    .is_some_and(|a| a != writer.to_str().unwrap())
        })
        .collect();
    assert!(
        mixed.is_empty(),
        "kill reports naming another exec's path or arguments: {:#?}",
        &mixed[..mixed.len().min(3)]
    );
}

/// An `exec-held` scenario in the test's cgroup: its child stopped by ptrace inside a
/// successful exec, after `sched_process_exec` and before the exec returns to user space.
struct Held {
    what: String,
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
    pid: u32,
}

impl Held {
    fn start(cg: &TestCgroup, program: &Path, marker: &Path) -> Self {
        use std::io::BufRead as _;
        let what = format!("{} held at its exec", program.display());
        let mut child = common::in_cgroup(&cg.dir, scenario_bin())
            .arg("exec-held")
            .arg(program)
            .args(["write-marker", marker.to_str().unwrap()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let pid = line
            .trim()
            .strip_prefix("held ")
            .unwrap_or_else(|| panic!("{what}: not held: {line:?}"))
            .parse()
            .unwrap();
        Self {
            what,
            child,
            out,
            pid,
        }
    }

    /// Lets the exec return: how the process ended (`exit=N`, `signal=N`).
    fn go(mut self) -> String {
        use std::io::{Read as _, Write as _};
        self.child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let mut rest = String::new();
        self.out.read_to_string(&mut rest).unwrap();
        self.child.wait().unwrap();
        rest.lines()
            .find_map(|l| l.strip_prefix("status "))
            .unwrap_or_else(|| panic!("{}: no status in {rest:?}", self.what))
            .to_string()
    }
}

/// The exec's return is the last line (`agent-ebpf/src/judged.rs`): an exec that passed
/// `sched_process_exec` with no judge there (here: before the agent started, held by ptrace
/// until the agent enforces; on a preempting kernel: both judging programs skipped) has run
/// unjudged, and under Kill dies before its first instruction, whatever it runs: what was
/// executed cannot be known any more. The benign twin, held the same way after its judges
/// saw it, runs: the mark of its judgement outlives the stop.
#[test]
fn an_exec_no_judge_saw_is_killed_on_its_return_and_one_they_saw_is_not() {
    if !root_or_skip("unjudged") || !common::return_check_sees_an_exec_under_way("unjudged") {
        return;
    }
    let cg = TestCgroup::new("unjudged");
    let tmp = tempfile::tempdir().unwrap();
    let (writer, d) = denied_binary(tmp.path());
    let allowed = benign_twin(tmp.path(), &writer);
    let policy = policy_for(
        &cg,
        "unjudged",
        &format!("  exec:\n    deny: [{{prefix: \"{d}/\"}}]\n    action: Kill\n"),
    );
    let file = write_policy(tmp.path(), &policy);
    let marker = |name: &str| tmp.path().join(format!("marker-{name}"));
    let unseen = [
        (
            Held::start(&cg, &writer, &marker("denied")),
            &writer,
            "denied",
        ),
        (
            Held::start(&cg, &allowed, &marker("allowed")),
            &allowed,
            "allowed",
        ),
    ];
    let tracer = Tracer::enforce(&file);
    for (held, program, name) in unseen {
        let (what, pid) = (held.what.clone(), held.pid);
        let status = held.go();
        assert_eq!(status, "signal=9", "{what}");
        assert!(!marker(name).exists(), "{what}: it ran");
        let e = tracer.wait_for(&what, |e| is(e, EXEC, pid));
        assert_eq!(e["vigilaction"], "kill", "{what}: {e}");
        let exec = &e["data"]["exec"];
        assert_eq!(exec["unjudged"], true, "{what}: {e}");
        assert_eq!(exec["unverifiable"], true, "{what}: {e}");
        assert_eq!(exec["path"], real(program), "{what}: {e}");
        assert_eq!(e["data"]["policy"]["rule"], "spec.exec", "{what}: {e}");
    }
    let seen = Held::start(&cg, &allowed, &marker("seen"));
    let pid = seen.pid;
    assert_eq!(
        seen.go(),
        "exit=0",
        "the allowed exec held after its judges saw it"
    );
    assert!(
        marker("seen").exists(),
        "the allowed exec held after its judges saw it"
    );
    let events = tracer.stop();
    assert!(
        violations(&events, EXEC, pid).is_empty(),
        "the judged exec was reported: {:#?}",
        violations(&events, EXEC, pid)
    );
}

/// The same for the memory the kernel maps for a new image (`image.rs`): with no exec rules
/// but `writeExecute: Deny`, an image no judge saw fails closed unless its executable (the
/// kernel's record of it, taken on the exec's return) is exempt.
#[test]
fn an_image_no_judge_saw_fails_closed_under_write_execute_deny_unless_exempt() {
    if !root_or_skip("unjudged-image")
        || !common::return_check_sees_an_exec_under_way("unjudged-image")
    {
        return;
    }
    let cg = TestCgroup::new("unjudged-image");
    let tmp = tempfile::tempdir().unwrap();
    let (writer, _) = denied_binary(tmp.path());
    let exempt = benign_twin(tmp.path(), &writer);
    let policy = policy_for(
        &cg,
        "unjudged-image",
        &format!(
            "  memory:\n    writeExecute: Deny\n    allowExecutables: [\"{}\"]\n    action: Kill\n",
            real(&exempt)
        ),
    );
    let file = write_policy(tmp.path(), &policy);
    let marker = |name: &str| tmp.path().join(format!("marker-{name}"));
    let not_exempt = Held::start(&cg, &writer, &marker("not-exempt"));
    let held_exempt = Held::start(&cg, &exempt, &marker("exempt"));
    let tracer = Tracer::enforce(&file);
    let (what, pid) = (not_exempt.what.clone(), not_exempt.pid);
    assert_eq!(not_exempt.go(), "signal=9", "{what}");
    assert!(!marker("not-exempt").exists(), "{what}: it ran");
    let e = tracer.wait_for(&what, |e| is(e, WX, pid));
    assert_eq!(e["vigilaction"], "kill", "{what}: {e}");
    assert_eq!(e["data"]["wx"]["unjudged"], true, "{what}: {e}");
    assert_eq!(e["data"]["wx"]["syscall"], "execve", "{what}: {e}");
    let pid = held_exempt.pid;
    assert_eq!(held_exempt.go(), "exit=0", "the exempt executable");
    assert!(
        marker("exempt").exists(),
        "the exempt executable did not run"
    );
    let events = tracer.stop();
    assert!(
        violations(&events, WX, pid).is_empty() && violations(&events, EXEC, pid).is_empty(),
        "the exempt executable was reported: {:#?}",
        violations(&events, WX, pid)
    );
}

/// Events name the rule in force when they were decided: the agent keeps what it said of
/// each rule until the next apply, and set ids come round again (the third apply reuses the
/// first's), so a name kept past its apply would name the first version's rule.
#[test]
fn a_violation_after_each_reload_names_the_rule_then_in_force() {
    if !root_or_skip("names after reload") {
        return;
    }
    let cg = TestCgroup::new("renamed");
    let tmp = tempfile::tempdir().unwrap();
    let (writer, d) = denied_binary(tmp.path());
    let exact = writer.canonicalize().unwrap().display().to_string();
    let version = |rule: &str, mode: &str| {
        policy_for(
            &cg,
            "renamed",
            &format!("  exec:\n    deny: [{rule}]\n    action: Alert\n  mode: {mode}\n"),
        )
    };
    let versions = [
        (
            version(&format!("{{prefix: \"{d}/\"}}"), "Enforce"),
            format!("prefix {d}/"),
        ),
        (
            version(&format!("{{path: \"{exact}\"}}"), "Enforce"),
            format!("path {exact}"),
        ),
        (
            version(&format!("{{path: \"{exact}\"}}"), "Audit"),
            format!("path {exact}"),
        ),
        (
            version(&format!("{{prefix: \"{d}/\"}}"), "Audit"),
            format!("prefix {d}/"),
        ),
    ];
    let file = write_policy(tmp.path(), &versions[0].0);
    let tracer = Tracer::enforce(&file);
    for (i, (text, description)) in versions.iter().enumerate() {
        if i > 0 {
            let before = tracer.state()["applied"].as_u64();
            std::fs::write(&file, text).unwrap();
            tracer.wait_for_state(&format!("version {i} applied"), |s| {
                s["applied"].as_u64() != before
            });
        }
        let marker = tmp.path().join(format!("marker-{i}"));
        let (pid, status) = run_in(&cg, &writer, &["write-marker", marker.to_str().unwrap()]);
        assert!(
            status.success() && marker.exists(),
            "version {i}: an Alert rule let it run: {status}"
        );
        let e = tracer.wait_for(&format!("the alert under version {i}"), |e| {
            is(e, EXEC, pid)
        });
        assert_eq!(
            e["data"]["policy"]["rule"], "spec.exec.deny[0]",
            "version {i}"
        );
        assert_eq!(
            e["data"]["policy"]["description"],
            description.as_str(),
            "version {i} names another version's rule: {e}"
        );
    }
}

#[test]
fn reloading_150_times_leaves_no_gap_and_no_growth() {
    if !root_or_skip("reload") {
        return;
    }
    let cg = TestCgroup::new("reload");
    let tmp = tempfile::tempdir().unwrap();
    let (writer, d) = denied_binary(tmp.path());
    // Two equivalent versions (same decisions, different text and rule order).
    let a = policy_for(
        &cg,
        "reload",
        &format!(
            "  exec:\n    deny: [{{prefix: \"{d}/\"}}, {{path: /nonexistent/a}}]\n    action: Kill\n"
        ),
    );
    let b = policy_for(
        &cg,
        "reload",
        &format!(
            "  exec:\n    deny: [{{path: /nonexistent/bb}}, {{prefix: \"{d}/\"}}]\n    action: Kill\n  mode: Enforce\n"
        ),
    );
    let file = write_policy(tmp.path(), &a);
    let tracer = Tracer::enforce(&file);
    // What the agent says it put in force, from its state file.
    let applied = |t: &Tracer| t.state()["applied"].as_u64().expect("applied");
    let entries = |t: &Tracer| t.state()["mapEntries"].as_u64().expect("mapEntries");
    let mut counts = vec![entries(&tracer)];

    // The benign twin: the same binary outside the denied directory, which every version of
    // the policy allows; a reload must never kill or refuse it.
    let allowed = benign_twin(tmp.path(), &writer);

    // Two generators, one after another each, for as long as the reloads go on: denied execs
    // and allowed ones.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let go_on = |_: usize| !stop.load(std::sync::atomic::Ordering::Relaxed);
    let generate =
        |program: &Path, name: &str| exec_loop(&cg, program, tmp.path(), name, None, go_on);
    // The heap reaches its working size over the first reloads (about 100 on this host,
    // measured to 300), so growth is measured only over the last 100.
    const RELOADS: usize = 150;
    const WARM: usize = 50;
    let mut rss_early = 0;
    let mut rss_late = 0;
    let (results, (benign, benign_failed)) = std::thread::scope(|scope| {
        let generator = scope.spawn(|| generate(&writer, "denied"));
        let twin = scope.spawn(|| generate(&allowed, "allowed"));
        for i in 0..RELOADS {
            let before = applied(&tracer);
            std::fs::write(&file, if i % 2 == 0 { &b } else { &a }).unwrap();
            tracer.wait_for_state(&format!("reload {i} applied"), |s| {
                s["applied"].as_u64() != Some(before)
            });
            counts.push(entries(&tracer));
            if i + 1 == WARM {
                rss_early = rss_kib(tracer.pid());
            }
        }
        rss_late = rss_kib(tracer.pid());
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (generator.join().unwrap(), twin.join().unwrap())
    });
    let (results, lived) = results;
    let killed = results
        .iter()
        .filter(|(s, ran, _)| s.signal() == Some(libc::SIGKILL) && !ran)
        .count();
    eprintln!(
        "reload: {} execs killed of {} across {RELOADS} reloads; map entries per apply {:?}; agent RSS {rss_early} KiB after {WARM} reloads, {rss_late} KiB after {RELOADS}",
        killed,
        results.len(),
        counts.iter().collect::<std::collections::BTreeSet<_>>(),
    );
    let losses = |events: &[Value]| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["type"] == "dev.vigil.loss.v1")
            .map(|e| e["data"].to_string())
            .collect()
    };
    // What the kernel did first: none may have escaped the kill during a swap.
    assert!(
        results.len() >= 20,
        "the generator ran only {} times",
        results.len()
    );
    assert!(
        lived.is_empty(),
        "{} denied execs failed and their callers lived (of {} spawned): {:?}; the agent's loss reports: {:?}",
        lived.len(),
        results.len() + lived.len(),
        &lived[..lived.len().min(3)],
        losses(&tracer.events()),
    );
    let escaped: Vec<&Ended> = results
        .iter()
        .filter(|(s, ran, _)| s.signal() != Some(libc::SIGKILL) || *ran)
        .collect();
    assert!(
        escaped.is_empty(),
        "{} of {} denied execs were not killed during reloads (exit status, marker written): {:?}",
        escaped.len(),
        results.len(),
        &escaped[..escaped.len().min(5)],
    );
    // The benign twin ran throughout, every time, untouched.
    let harmed: Vec<&Ended> = benign
        .iter()
        .filter(|(s, ran, _)| !s.success() || !ran)
        .collect();
    eprintln!(
        "reload: {} allowed execs ran of {} beside them",
        benign.len() - harmed.len(),
        benign.len() + benign_failed.len()
    );
    assert!(
        benign.len() >= 20,
        "the allowed generator ran only {} times",
        benign.len()
    );
    assert!(
        benign_failed.is_empty() && harmed.is_empty(),
        "allowed execs were refused ({}: {:?}) or did not run to the end ({} of {}: exit status, marker written, pid {:?}) during reloads; what the agent said about them: {:#?}",
        benign_failed.len(),
        &benign_failed[..benign_failed.len().min(3)],
        harmed.len(),
        benign.len(),
        &harmed[..harmed.len().min(5)],
        said_about(&tracer, &harmed.iter().map(|e| e.2).collect::<Vec<_>>()),
    );
    // Every kill is reported: wait for the last of them rather than guess how long it takes.
    // A record stands for `count` kills (1 when absent): past a few thousand the kernel's
    // flood throttle folds them, and the last held-back ones come with a later record.
    let kill_records = |events: &[Value]| -> Vec<Value> {
        events
            .iter()
            .filter(|e| e["type"] == EXEC && e["vigilaction"] == "kill")
            .cloned()
            .collect()
    };
    let stands_for = |records: &[Value]| -> usize {
        records
            .iter()
            .map(|e| e["data"]["count"].as_u64().unwrap_or(1) as usize)
            .sum()
    };
    let folded = |records: &[Value]| -> Vec<u64> {
        records
            .iter()
            .filter_map(|e| e["data"]["count"].as_u64())
            .collect()
    };
    common::wait_until(
        &format!("records standing for {killed} kills"),
        common::liveness(),
        || (stands_for(&kill_records(&tracer.events())) >= killed).then_some(()),
        || {
            let events = tracer.events();
            let records = kill_records(&events);
            format!(
                "{} kill records standing for {}; the counts of folded ones: {:?}; the agent's loss reports: {:?}",
                records.len(),
                stands_for(&records),
                folded(&records),
                losses(&events),
            )
        },
    );
    let events = tracer.stop();
    let records = kill_records(&events);
    assert_eq!(
        stands_for(&records),
        killed,
        "every kill is reported, once ({} records); the agent's loss reports: {:?}",
        records.len(),
        losses(&events),
    );
    let allowed_real = real(&allowed);
    assert_no_violation_of(&events, &allowed_real);
    let named = records
        .iter()
        .filter(|e| e["vigilpolicy"] == "reload")
        .count();
    assert_eq!(
        named,
        records.len(),
        "every kill names the policy, even across swaps"
    );
    assert_eq!(
        counts.len(),
        RELOADS + 1,
        "one apply at start and one per reload"
    );
    assert!(
        counts.windows(2).all(|w| w[0] == w[1]),
        "map entries changed across equivalent reloads: {counts:?}"
    );
    assert!(
        rss_late <= rss_early + 4096,
        "RSS grew from {rss_early} KiB to {rss_late} KiB over reloads {WARM} to {RELOADS}"
    );
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

#[test]
fn invalid_policies_are_refused_naming_the_field_and_the_last_good_one_holds() {
    if !root_or_skip("invalid") {
        return;
    }
    let cg = TestCgroup::new("invalid");
    let tmp = tempfile::tempdir().unwrap();
    let (writer, denied) = denied_binary(tmp.path());
    let good_spec = format!("  exec:\n    deny: [{{prefix: \"{denied}/\"}}]\n    action: Kill\n");
    let file = write_policy(tmp.path(), &policy_for(&cg, "guard", &good_spec));
    let tracer = Tracer::enforce(&file);
    let long = format!("/{}", "a".repeat(300));
    // (spec, the field path the refusal must name)
    let invalid: Vec<(String, &str)> = vec![
        ("  exec: {alow: [{path: /a}]}\n".into(), "spec.exec.alow"),
        ("  mode: Enforcing\n".into(), "spec.mode"),
        (
            "  exec: {deny: [{path: /a}], action: Terminate}\n".into(),
            "spec.exec.action",
        ),
        (
            "  connect: {deny: [{cidr: 10.0.0.300/8}]}\n".into(),
            "spec.connect.deny[0].cidr",
        ),
        (
            "  connect: {deny: [{cidr: \"::1/129\"}]}\n".into(),
            "spec.connect.deny[0].cidr",
        ),
        (
            "  connect: {deny: [{cidr: 10.0.0.0/8, ports: [\"70000\"]}]}\n".into(),
            "spec.connect.deny[0].ports[0]",
        ),
        (
            "  connect: {deny: [{cidr: 10.0.0.0/8, ports: [\"90-80\"]}]}\n".into(),
            "spec.connect.deny[0].ports[0]",
        ),
        (
            "  exec: {deny: [{path: /a, prefix: /b/}]}\n".into(),
            "spec.exec.deny[0]",
        ),
        (
            "  exec: {deny: [{path: bin/sh}]}\n".into(),
            "spec.exec.deny[0].path",
        ),
        (
            "  exec: {deny: [{prefix: /tmp}]}\n".into(),
            "spec.exec.deny[0].prefix",
        ),
        (
            format!("  exec: {{deny: [{{path: {long}}}], action: Kill}}\n"),
            "spec.exec.deny[0].path",
        ),
        (
            "  memory: {writeExecute: Maybe}\n".into(),
            "spec.memory.writeExecute",
        ),
    ];
    for (i, (spec, field)) in invalid.iter().enumerate() {
        let before = tracer.stderr_lines().len();
        std::fs::write(&file, policy_for(&cg, "guard", spec)).unwrap();
        let state = tracer.wait_for_state(&format!("invalid policy {i} refused"), |s| {
            s["refused"].as_u64() == Some(i as u64 + 1)
        });
        let named = state["lastRefusal"]
            .as_array()
            .expect("lastRefusal")
            .iter()
            .any(|r| r["field"] == *field && r["file"] == file.display().to_string());
        assert!(
            named,
            "invalid policy {i}: the refusal names {field}: {state}"
        );
        // The operator reading the log sees it as an error, naming the file and the field.
        let line = common::wait_until(
            &format!("invalid policy {i} logged naming {field}"),
            common::liveness(),
            || {
                tracer.stderr_lines()[before..]
                    .iter()
                    .find(|l| l.contains(&format!("{}: {field}:", file.display())))
                    .cloned()
            },
            || format!("log: {:?}", &tracer.stderr_lines()[before..]),
        );
        assert!(line.contains("ERROR"), "refusals are errors: {line}");
        // The last good policy still kills.
        let marker = tmp.path().join(format!("m-{i}"));
        let (_, status) = run_in(&cg, &writer, &["write-marker", marker.to_str().unwrap()]);
        assert_killed(
            status,
            &marker,
            &format!("after invalid policy {i} ({field})"),
        );
    }
    assert_eq!(
        tracer.state()["applied"],
        1,
        "an invalid policy was applied"
    );
    tracer.stop();
}

#[test]
fn processes_started_before_the_agent_keep_their_exemption() {
    if !root_or_skip("seed") {
        return;
    }
    let cg = TestCgroup::new("seed");
    let tmp = tempfile::tempdir().unwrap();
    let jit = tmp.path().join("early-jit");
    std::fs::copy(scenario_bin(), &jit).unwrap();
    let go = tmp.path().join("go");
    // Started (and exec'd) before the agent exists: only /proc can tell its executable.
    let early = cg
        .command(&jit)
        .args(["wait-then-mmap-rwx", go.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let early_pid = early.id();
    // Waits up to 900 s for its go: if the test fails before, it must not outlive it.
    let guard = common::KillOnUnwind(early_pid);
    let spec = format!(
        "  memory:\n    writeExecute: Deny\n    allowExecutables: [\"{}\"]\n",
        real(&jit)
    );
    let file = write_policy(tmp.path(), &policy_for(&cg, "seed", &spec));
    let tracer = Tracer::enforce(&file);
    std::fs::write(&go, "").unwrap();
    let out = early.wait_with_output().unwrap();
    std::mem::forget(guard);
    if !out.status.success() {
        let seen: Vec<String> = tracer
            .events()
            .iter()
            .filter(|e| e["data"]["process"]["pid"] == early_pid)
            .map(|e| e.to_string())
            .collect();
        panic!(
            "the process started before the agent (pid {early_pid}, {}) was refused its RWX mapping: {} ({}); the agent's events for it: {seen:?}; its log: {:?}",
            real(&jit),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            tracer.stderr_lines(),
        );
    }
    let (marker, out) = cg.scenario(&["mmap-rwx"]);
    assert_ok(&out, "non-exempt RWX");
    settle(&tracer, marker, WX);
    let events = tracer.stop();
    assert_eq!(
        common::reports(&events).len(),
        1,
        "only the non-exempt mapping is a violation: {events:?}"
    );
}

/// The kernel keeps a process's W^X exemption with its executable once looked up, under the
/// stamp of the policy set it was looked up in. The attack on such a cache is a stale
/// answer: a running process keeps an exemption its policy no longer gives. Set ids are
/// reused every other reload, so an answer kept by set id alone would be stale two reloads
/// later. Here one process maps RWX again and again while reloads take its exemption away
/// and give it back, twice in a row each: exactly the mappings made without it are
/// violations.
#[test]
fn a_wx_exemption_follows_every_reload_for_a_running_process() {
    use std::io::{BufRead, Write};
    if !root_or_skip("exempt-cache") {
        return;
    }
    let cg = TestCgroup::new("exempt-cache");
    let tmp = tempfile::tempdir().unwrap();
    // A copy of its own, so that the exemption names this process's executable only.
    let jit = tmp.path().join("jit");
    std::fs::copy(scenario_bin(), &jit).unwrap();
    let jit_real = real(&jit);
    let version = std::cell::Cell::new(0);
    // Every version differs from the last (another path no process runs), so each is
    // applied anew, as new sets.
    let policy = |exempt: bool| {
        version.set(version.get() + 1);
        let unused = format!("/nonexistent/v{}", version.get());
        let allowed = if exempt {
            format!("\"{jit_real}\", \"{unused}\"")
        } else {
            format!("\"{unused}\"")
        };
        policy_for(
            &cg,
            "exempt-cache",
            &format!("  memory:\n    writeExecute: Deny\n    allowExecutables: [{allowed}]\n"),
        )
    };
    let file = write_policy(tmp.path(), &policy(true));
    let tracer = Tracer::enforce(&file);
    let reload = |exempt: bool| {
        let before = tracer.state()["applied"].as_u64();
        std::fs::write(&file, policy(exempt)).unwrap();
        tracer.wait_for_state(&format!("the reload (exempt: {exempt}) applied"), |s| {
            s["applied"].as_u64() != before
        });
    };
    let mut child = cg
        .command(&jit)
        .arg("mmap-rwx-per-line")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let guard = common::KillOnUnwind(pid);
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut map = |step: &str| {
        writeln!(stdin, "{step}").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(
            line.starts_with("mapped"),
            "{step}: the process did not map (said {line:?})"
        );
    };
    let wx_violations = |n: usize| {
        tracer.wait_for_events(&format!("{n} W^X violations of pid {pid}"), |events| {
            (violations(events, WX, pid).len() >= n).then_some(())
        });
    };

    map("exempt");
    map("exempt, the answer kept");
    reload(false);
    reload(false);
    map("two reloads without the exemption, the set id of the first back in use");
    wx_violations(1);
    reload(true);
    map("the exemption back");
    reload(true);
    map("the exemption back, the set id of the violation back in use");
    map("the exemption back, the answer kept");
    reload(false);
    map("the exemption away again");
    wx_violations(2);
    drop(stdin);
    assert!(child.wait().unwrap().success());
    std::mem::forget(guard);
    // Everything the process did is in the ring buffer before this marker's violation.
    let (marker, out) = cg.scenario(&["mmap-rwx"]);
    assert_ok(&out, "non-exempt RWX");
    settle(&tracer, marker, WX);
    let events = tracer.stop();
    let found = violations(&events, WX, pid);
    assert_eq!(
        found.len(),
        2,
        "exactly the two mappings made without the exemption are violations: {found:#?}"
    );
    for v in &found {
        assert_eq!(v["data"]["process"]["exe"], jit_real.as_str(), "{v:#?}");
    }
}

#[test]
fn allow_services_admits_the_node_wide_service_addresses() {
    if !root_or_skip("services") {
        return;
    }
    use agent_common::ServiceKey;
    use vigil::{
        ebpf::{Mode, ProbeOptions, Probes},
        enforce::Enforcer,
        event::{Body, Verdict, decode},
    };
    let cg = TestCgroup::new("services");
    let service = TcpListener::bind("127.0.0.1:0").unwrap();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let (sp, op) = (
        service.local_addr().unwrap().port(),
        other.local_addr().unwrap().port(),
    );
    for l in [service, other] {
        std::thread::spawn(move || l.incoming().for_each(drop));
    }
    let policies = vigil::policy::load_str(
        &policy_for(
            &cg,
            "svc",
            "  connect:\n    allowServices: true\n    action: Alert\n",
        ),
        None,
    )
    .unwrap();
    let mut probes = Probes::load(&ProbeOptions {
        mode: Mode::Enforce,
        exclude_pid: std::process::id(),
        cgroup_root: Some(cg.root.clone()),
        ..Default::default()
    })
    .unwrap();
    let mut enforcer = Enforcer::new(probes.take_policy_maps().unwrap(), cg.root.clone())
        .with_late(probes.take_late());
    enforcer.apply(&policies).unwrap();
    let mut ring = probes.take_ring_buffer().unwrap();
    let connect_violations = |ring: &mut aya::maps::RingBuf<aya::maps::MapData>, pid: u32| {
        let mut found = Vec::new();
        while let Some(item) = ring.next() {
            let ev = decode(&item).unwrap();
            if let (Body::Connect(c), Verdict::Violation { .. }) = (&ev.body, ev.header.verdict)
                && ev.header.pid == pid
            {
                found.push(c.dport.expect("a connect has a destination port"));
            }
        }
        found
    };

    // Before the Service exists, its address is not allowed.
    let (pid, out) = cg.scenario(&["tcp-connect", &format!("127.0.0.1:{sp}")]);
    assert_ok(&out, "connect before the service");
    assert_eq!(connect_violations(&mut ring, pid), vec![sp]);

    let mut addr = [0u8; 16];
    addr[10] = 0xff;
    addr[11] = 0xff;
    addr[12..].copy_from_slice(&[127, 0, 0, 1]);
    enforcer
        .set_services(&[ServiceKey {
            addr,
            port: sp,
            protocol: 6,
        }])
        .unwrap();
    let (pid, out) = cg.scenario(&["tcp-connect", &format!("127.0.0.1:{sp}")]);
    assert_ok(&out, "connect to the service");
    assert_eq!(
        connect_violations(&mut ring, pid),
        Vec::<u16>::new(),
        "the Service address is allowed"
    );
    // The same address on another port is not a Service.
    let (pid, out) = cg.scenario(&["tcp-connect", &format!("127.0.0.1:{op}")]);
    assert_ok(&out, "connect to another port");
    assert_eq!(connect_violations(&mut ring, pid), vec![op]);

    // A second Service joins, then the first leaves: each address is allowed exactly while
    // its Service exists (the enforcer writes only the difference, from what it remembers).
    let service = |port: u16| ServiceKey {
        addr,
        port,
        protocol: 6,
    };
    enforcer.set_services(&[service(sp), service(op)]).unwrap();
    let (pid, out) = cg.scenario(&["tcp-connect", &format!("127.0.0.1:{op}")]);
    assert_ok(&out, "connect to the second service");
    assert_eq!(connect_violations(&mut ring, pid), Vec::<u16>::new());
    enforcer.set_services(&[service(op)]).unwrap();
    let (pid, out) = cg.scenario(&["tcp-connect", &format!("127.0.0.1:{sp}")]);
    assert_ok(&out, "connect to the first service, gone");
    assert_eq!(connect_violations(&mut ring, pid), vec![sp]);
    let (pid, out) = cg.scenario(&["tcp-connect", &format!("127.0.0.1:{op}")]);
    assert_ok(&out, "connect to the second service, still there");
    assert_eq!(connect_violations(&mut ring, pid), Vec::<u16>::new());

    // Removing every Service takes the addresses off the list again.
    enforcer.set_services(&[]).unwrap();
    for port in [sp, op] {
        let (pid, out) = cg.scenario(&["tcp-connect", &format!("127.0.0.1:{port}")]);
        assert_ok(&out, "connect after the services are gone");
        assert_eq!(connect_violations(&mut ring, pid), vec![port]);
    }
}

#[test]
fn a_path_too_long_for_the_kernel_is_decided_in_user_space_and_alerted() {
    if !root_or_skip("long-path") {
        return;
    }
    let cg = TestCgroup::new("long");
    let tmp = tempfile::tempdir().unwrap();
    // Longer than the kernel's path keys (and its dentry walk) hold.
    let mut deep = std::fs::canonicalize(tmp.path()).unwrap();
    while deep.as_os_str().len() < 300 {
        deep = deep.join("a-rather-long-directory-name");
    }
    std::fs::create_dir_all(&deep).unwrap();
    // It lives a moment, so user space can still read its executable from /proc.
    let tool = deep.join("tool");
    std::fs::copy("/bin/sleep", &tool).unwrap();
    let spec = format!(
        "  exec:\n    deny: [{{prefix: \"{}/\"}}]\n    action: Alert\n",
        deep.display()
    );
    let file = write_policy(tmp.path(), &policy_for(&cg, "long", &spec));
    let tracer = Tracer::enforce(&file);
    let child = cg.command(&tool).arg("1").spawn().unwrap();
    let pid = child.id();
    assert!(
        child.wait_with_output().unwrap().status.success(),
        "Alert never kills"
    );
    let e = tracer.wait_for("the user-space decision", |e| is(e, EXEC, pid));
    assert_eq!(e["vigilaction"], "alert");
    assert_eq!(e["data"]["exec"]["undecided"], true);
    assert_eq!(e["data"]["policy"]["rule"], "spec.exec.deny[0]");
    tracer.stop();
}

#[test]
fn datagram_connects_are_judged_by_the_policy_too() {
    if !root_or_skip("udp-policy") {
        return;
    }
    let cg = TestCgroup::new("udp-policy");
    let tmp = tempfile::tempdir().unwrap();
    let spec = "  connect:\n    allow: [{cidr: 127.0.0.1/32, ports: [\"53\"], protocol: UDP}]\n    action: Alert\n";
    let file = write_policy(tmp.path(), &policy_for(&cg, "udp", spec));
    let tracer = Tracer::enforce(&file);
    let (allowed, out) = cg.scenario(&["udp-connect", "127.0.0.1:53"]);
    assert_ok(&out, "allowed UDP connect");
    let (denied, out) = cg.scenario(&["udp-connect", "127.0.0.1:5353"]);
    assert_ok(&out, "UDP connect (Alert lets it through)");
    let e = tracer.wait_for("the UDP violation", |e| is(e, CONNECT, denied));
    assert_eq!(e["data"]["connect"]["protocol"], "udp");
    assert_eq!(e["data"]["connect"]["dport"], 5353);
    assert_eq!(e["data"]["policy"]["rule"], "spec.connect.allow");
    let events = tracer.stop();
    assert!(
        !events.iter().any(|e| pid_of(e) == u64::from(allowed)),
        "the allowed UDP connect was reported"
    );
}

#[test]
fn a_kubeconfig_that_is_there_but_broken_stops_start_up_with_the_reason() {
    if !root_or_skip("broken-kubeconfig") {
        return;
    }
    let cg = TestCgroup::new("broken-kube");
    let tmp = tempfile::tempdir().unwrap();
    let file = write_policy(
        tmp.path(),
        &policy_for(
            &cg,
            "kube",
            "  exec:\n    deny: [{path: /nonexistent/x}]\n    action: Alert\n",
        ),
    );
    let kubeconfig = tmp.path().join("kubeconfig");
    std::fs::write(&kubeconfig, "this: [is not a kubeconfig\n").unwrap();
    let mut child = std::process::Command::new(common::vigil_bin())
        .args(["run", "--policy", file.to_str().unwrap()])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A liveness bound, not a timing claim: it must end by itself.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "vigil kept running with a broken kubeconfig (host-only, cluster policies gone)"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("kubeconfig {}", kubeconfig.display())),
        "the error names the kubeconfig: {stderr}"
    );
    assert!(!stderr.contains("vigil is enforcing"), "{stderr}");
}
