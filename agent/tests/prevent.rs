//! Prevention before the act (`vigil run`, root only): where the kernel runs BPF LSM, a
//! `Deny` of exec or W^X fails the call with `EPERM` and the process lives, and a `Kill`
//! refuses the act before killing; where it does not, both are carried out as a kill after
//! the act. Every policy here selects only the test's own staged cgroup.
#[expect(
    dead_code,
    reason = "the helpers are shared by several test binaries; each uses a part"
)]
mod common;

use std::{
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::Output,
};

use common::{
    TestCgroup, Tracer, assert_ok, denied_binary, is, pid_of, root_or_skip, scenario_bin,
    skip_for_kernel,
};
use serde_json::Value;

const EXEC: &str = "dev.vigil.exec.v1";
const WX: &str = "dev.vigil.wx.v1";
const EPERM_TEXT: &str = "Operation not permitted";

fn real(path: &Path) -> String {
    std::fs::canonicalize(path).unwrap().display().to_string()
}

/// A ClusterRuntimePolicy selecting only `cg`, with `spec` (YAML, indented two spaces).
fn policy_file(dir: &Path, cg: &TestCgroup, name: &str, spec: &str) -> PathBuf {
    let file = dir.join("policy.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: vigil.dev/v1alpha1\nkind: ClusterRuntimePolicy\nmetadata: {{name: {name}}}\nspec:\n  hostProcesses: {{cgroupPrefixes: [\"{}\"]}}\n{spec}",
            cg.rel
        ),
    )
    .unwrap();
    file
}

/// Runs only where BPF LSM programs attach. `cargo xtask vm-test` boots kernels with BPF LSM
/// on and sets `VIGIL_EXPECT_BPF_LSM`: there, not attaching fails the test.
fn lsm_or_skip(test: &str) -> bool {
    if !root_or_skip(test) {
        return false;
    }
    match common::prevention() {
        Ok(()) => true,
        Err(why) if std::env::var_os("VIGIL_EXPECT_BPF_LSM").is_some() => {
            panic!("{test}: this kernel was booted with BPF LSM, yet: {why}")
        }
        Err(why) => {
            skip_for_kernel(test, &format!("BPF LSM programs that attach ({why})"));
            false
        }
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The process lived and its exec failed with EPERM: exit 1 with the scenario's message.
fn assert_refused(out: &Output, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: expected the caller to live and fail with EPERM, got {} ({})",
        out.status,
        stderr(out)
    );
    assert!(
        stderr(out).contains(EPERM_TEXT),
        "{what}: expected EPERM, got: {}",
        stderr(out)
    );
}

fn only(events: &[Value], ty: &str, pid: u32) -> Value {
    let found: Vec<&Value> = events.iter().filter(|e| is(e, ty, pid)).collect();
    assert_eq!(found.len(), 1, "one {ty} event for pid {pid}: {events:?}");
    found[0].clone()
}

#[test]
fn deny_refuses_an_exec_before_it_runs_and_the_caller_lives() {
    if !lsm_or_skip("prevent-exec") {
        return;
    }
    let cg = TestCgroup::new("prevent-exec");
    let tmp = tempfile::tempdir().unwrap();
    let (writer, denied) = denied_binary(tmp.path());
    // A script in the denied directory, run by an allowed interpreter.
    let script = Path::new(&denied).join("script.sh");
    std::fs::write(&script, "#!/bin/sh\ntouch \"$1\"\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // A script outside it whose interpreter is the denied binary.
    let by_denied_interp = tmp.path().join("by-denied-interp");
    std::fs::write(&by_denied_interp, format!("#!{}\n", writer.display())).unwrap();
    std::fs::set_permissions(
        &by_denied_interp,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let link = tmp.path().join("innocent-name");
    std::os::unix::fs::symlink(&writer, &link).unwrap();
    let spec = format!("  exec:\n    deny: [{{prefix: \"{denied}/\"}}]\n    action: Deny\n");
    let file = policy_file(tmp.path(), &cg, "prevent-exec", &spec);
    let tracer = Tracer::enforce(&file);

    let marker = tmp.path().join("marker");
    let m = marker.to_str().unwrap();
    let writer_s = writer.to_str().unwrap();
    let attempts: Vec<(&str, Vec<&str>, String)> = vec![
        (
            "the denied binary",
            vec!["exec-into", writer_s, "write-marker", m],
            real(&writer),
        ),
        (
            "through a symlink named elsewhere",
            vec!["exec-into", link.to_str().unwrap(), "write-marker", m],
            real(&writer),
        ),
        (
            "by directory descriptor (execveat)",
            vec!["exec-at", &denied, "writer", "write-marker", m],
            real(&writer),
        ),
        (
            "a denied script",
            vec!["exec-into", script.to_str().unwrap(), m],
            real(&script),
        ),
        (
            "a script whose interpreter is denied",
            vec![
                "exec-into",
                by_denied_interp.to_str().unwrap(),
                "write-marker",
                m,
            ],
            real(&writer),
        ),
    ];
    let scenario = real(&scenario_bin());
    for (what, args, refused) in &attempts {
        let (pid, out) = cg.scenario(args);
        assert_refused(&out, what);
        assert!(!marker.exists(), "{what}: the denied program ran");
        let e = tracer.wait_for(what, |e| is(e, EXEC, pid));
        assert_eq!(e["vigilaction"], "deny", "{what}: {e}");
        assert_eq!(e["vigilverdict"], "violation", "{what}: {e}");
        assert_eq!(
            e["data"]["policy"]["rule"], "spec.exec.deny[0]",
            "{what}: {e}"
        );
        assert_eq!(e["data"]["exec"]["prevented"], true, "{what}: {e}");
        assert_eq!(e["data"]["exec"]["path"], refused.as_str(), "{what}: {e}");
        // Refused before it had a new image: the arguments are those kept from its entry
        // (`execve` and `execveat` alike), the marker's path last.
        assert_eq!(e["data"]["exec"]["argsMissing"], false, "{what}: {e}");
        let args = e["data"]["exec"]["args"].as_array().expect("args");
        assert_eq!(args.last().and_then(|a| a.as_str()), Some(m), "{what}: {e}");
        // The caller is still itself.
        assert_eq!(
            e["data"]["process"]["exe"],
            scenario.as_str(),
            "{what}: {e}"
        );
    }

    // The benign twin: an allowed program through the same call runs, unreported.
    let (quiet, out) = cg.scenario(&[
        "exec-into",
        scenario_bin().to_str().unwrap(),
        "write-marker",
        m,
    ]);
    assert_ok(&out, "allowed exec");
    assert!(marker.exists(), "the allowed program did not run");
    let events = tracer.stop();
    assert!(
        !events.iter().any(|e| pid_of(e) == u64::from(quiet)),
        "the allowed exec was reported: {events:?}"
    );
    assert_eq!(
        common::reports(&events).len(),
        attempts.len(),
        "one event per refusal: {events:?}"
    );
}

#[test]
fn an_allowlist_under_deny_refuses_what_it_does_not_name() {
    if !lsm_or_skip("prevent-allowlist") {
        return;
    }
    let cg = TestCgroup::new("prevent-allow");
    let tmp = tempfile::tempdir().unwrap();
    let scenario = real(&scenario_bin());
    let other = tmp.path().join("other-tool");
    std::fs::copy("/bin/true", &other).unwrap();
    let spec = format!(
        "  exec:\n    allow: [{{path: \"{scenario}\"}}, {{path: \"{t}\"}}]\n    action: Deny\n",
        t = real(Path::new("/bin/true"))
    );
    let file = policy_file(tmp.path(), &cg, "prevent-allow", &spec);
    let tracer = Tracer::enforce(&file);
    let (pid, out) = cg.scenario(&["exec-into", other.to_str().unwrap()]);
    assert_refused(&out, "a program off the allowlist");
    let (quiet, out) = cg.scenario(&["exec-into", "/bin/true"]);
    assert_ok(&out, "an allowed program");
    let e = tracer.wait_for("the refusal", |e| is(e, EXEC, pid));
    assert_eq!(e["vigilaction"], "deny");
    assert_eq!(e["data"]["policy"]["rule"], "spec.exec.allow");
    assert_eq!(e["data"]["exec"]["path"], real(&other));
    let events = tracer.stop();
    assert!(
        !events.iter().any(|e| pid_of(e) == u64::from(quiet)),
        "the allowed exec was reported: {events:?}"
    );
}

#[test]
fn kill_refuses_the_exec_first_then_kills_the_caller() {
    if !lsm_or_skip("prevent-kill") {
        return;
    }
    let cg = TestCgroup::new("prevent-kill");
    let tmp = tempfile::tempdir().unwrap();
    let (writer, denied) = denied_binary(tmp.path());
    let spec = format!("  exec:\n    deny: [{{prefix: \"{denied}/\"}}]\n    action: Kill\n");
    let file = policy_file(tmp.path(), &cg, "prevent-kill", &spec);
    let tracer = Tracer::enforce(&file);
    let marker = tmp.path().join("marker");
    let (pid, out) = cg.scenario(&[
        "exec-into",
        writer.to_str().unwrap(),
        "write-marker",
        marker.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "expected SIGKILL, got {} ({})",
        out.status,
        stderr(&out)
    );
    assert!(!marker.exists(), "the denied program ran");
    let e = tracer.wait_for("the kill", |e| is(e, EXEC, pid));
    assert_eq!(e["vigilaction"], "kill");
    assert_eq!(e["data"]["exec"]["prevented"], true);
    assert_eq!(e["data"]["exec"]["path"], real(&writer));
    let events = tracer.stop();
    only(&events, EXEC, pid);
}

#[test]
fn deny_refuses_a_writable_executable_mapping_and_the_memory_stays_as_it_was() {
    if !lsm_or_skip("prevent-wx") {
        return;
    }
    let cg = TestCgroup::new("prevent-wx");
    let tmp = tempfile::tempdir().unwrap();
    let jit = tmp.path().join("jit");
    std::fs::copy(scenario_bin(), &jit).unwrap();
    let spec = format!(
        "  memory:\n    writeExecute: Deny\n    allowExecutables: [\"{}\"]\n    action: Deny\n",
        real(&jit)
    );
    let file = policy_file(tmp.path(), &cg, "prevent-wx", &spec);
    let tracer = Tracer::enforce(&file);

    // mprotect RW -> RWX: refused, and the area is still RW (and writable).
    let (mprotect_pid, out) = cg.scenario(&["mprotect-rwx-outcome"]);
    assert_ok(&out, "mprotect-rwx-outcome");
    let line = String::from_utf8_lossy(&out.stdout);
    assert_eq!(line.trim(), "mprotect=errno 1 perms=rw-p", "{line}");
    let mut refused = vec![("mprotect", mprotect_pid)];
    for (what, args) in [
        ("mmap", vec!["mmap-rwx"]),
        ("pkey_mprotect", vec!["pkey-mprotect-rwx"]),
        ("shmat", vec!["shmat-exec"]),
        ("read-implies-exec mmap", vec!["rie-mmap-rw"]),
    ] {
        let (pid, out) = cg.scenario(&args);
        assert_refused(&out, what);
        refused.push((what, pid));
    }
    // The 32-bit entry reaches the same hooks.
    let (compat_pid, out) = cg.scenario(&["compat-mmap-rwx"]);
    if out.status.code() == Some(77) {
        eprintln!("compat mmap not run: {}", stderr(&out));
    } else {
        assert_refused(&out, "compat mmap2");
        refused.push(("compat mmap2", compat_pid));
    }
    // Benign twins: RW memory, and RWX by the exempt executable.
    let (quiet_rw, out) = cg.scenario(&["compat-mmap-rw"]);
    assert!(
        out.status.success() || out.status.code() == Some(77),
        "compat RW: {}",
        stderr(&out)
    );
    let quiet_jit = cg.command(&jit).arg("mmap-rwx").spawn().unwrap();
    let quiet_jit_pid = quiet_jit.id();
    assert!(
        quiet_jit.wait_with_output().unwrap().status.success(),
        "exempt RWX"
    );

    for (what, pid) in &refused {
        let e = tracer.wait_for(what, |e| is(e, WX, *pid));
        assert_eq!(e["vigilaction"], "deny", "{what}: {e}");
        assert_eq!(
            e["data"]["policy"]["rule"], "spec.memory.writeExecute",
            "{what}: {e}"
        );
    }
    let events = tracer.stop();
    for (what, pid) in &refused {
        let n = events.iter().filter(|e| is(e, WX, *pid)).count();
        assert_eq!(n, 1, "{what}: one event per refusal: {events:?}");
    }
    let noise: Vec<&Value> = events
        .iter()
        .filter(|e| [quiet_rw, quiet_jit_pid].contains(&(pid_of(e) as u32)))
        .collect();
    assert!(noise.is_empty(), "allowed memory was reported: {noise:?}");
}

#[test]
fn without_bpf_lsm_deny_of_exec_and_wx_is_carried_out_as_kill() {
    if !root_or_skip("deny-fallback") {
        return;
    }
    if common::prevention().is_ok() {
        eprintln!(
            "skipped deny-fallback: BPF LSM programs attach here, so Deny refuses before the act (the other tests here)"
        );
        return;
    }
    let cg = TestCgroup::new("deny-fallback");
    let tmp = tempfile::tempdir().unwrap();
    let (writer, denied) = denied_binary(tmp.path());
    let spec = format!(
        "  exec:\n    deny: [{{prefix: \"{denied}/\"}}]\n    action: Deny\n  memory:\n    writeExecute: Deny\n    action: Deny\n"
    );
    let file = policy_file(tmp.path(), &cg, "deny-fallback", &spec);
    let tracer = Tracer::enforce(&file);
    tracer.wait_for_log("carried out as Kill after the act");

    let marker = tmp.path().join("marker");
    let (exec_pid, out) = cg.scenario(&[
        "exec-into",
        writer.to_str().unwrap(),
        "write-marker",
        marker.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "exec: {}",
        out.status
    );
    assert!(!marker.exists(), "the denied program ran");
    let (wx_pid, out) = cg.scenario(&["mmap-rwx"]);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "mmap: {}",
        out.status
    );
    // The benign twin.
    let (quiet, out) = cg.scenario(&["mmap-file-rx", "/bin/true"]);
    assert_ok(&out, "an allowed mapping");

    let e = tracer.wait_for("the exec", |e| is(e, EXEC, exec_pid));
    assert_eq!(e["vigilaction"], "kill", "reported as what was done: {e}");
    assert!(e["data"]["exec"].get("prevented").is_none(), "{e}");
    let w = tracer.wait_for("the mapping", |e| is(e, WX, wx_pid));
    assert_eq!(w["vigilaction"], "kill", "{w}");
    let events = tracer.stop();
    assert!(
        !events.iter().any(|e| pid_of(e) == u64::from(quiet)),
        "the allowed mapping was reported: {events:?}"
    );

    let doctor = std::process::Command::new(common::vigil_bin())
        .arg("doctor")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        text.lines().any(|l| l.contains("prevention (BPF LSM)")
            && l.contains("Deny of exec and W^X is carried out as Kill")),
        "{text}"
    );
}
