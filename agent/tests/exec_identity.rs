//! Exec decisions on what the kernel executes, not on names: anonymous files are told by
//! their file system (a file on disk named `memfd:x` is not one; a script held in a memfd
//! is), long paths are decided in the kernel, and a path the kernel cannot resolve fails
//! closed. Root only; every policy selects only the test's own cgroups.
#[expect(
    dead_code,
    reason = "the helpers are shared by several test binaries; each uses a part"
)]
mod common;

use std::{
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
};

use common::{TestCgroup, Tracer, is, pid_of, root_or_skip, run_in_cgroup, scenario_bin};
use serde_json::Value;

const EXEC: &str = "dev.vigil.exec.v1";
const WX: &str = "dev.vigil.wx.v1";
const WX_KILL: &str = "  memory:\n    writeExecute: Deny\n    action: Kill\n";
const FOREIGN_WRITES_KILL: &str =
    "  memory:\n    writeExecute: Allow\n    foreignWrites: Deny\n    action: Kill\n";

/// One ClusterRuntimePolicy document per (cgroup, name, spec), in one file.
fn write_policies(dir: &Path, docs: &[(&TestCgroup, &str, String)]) -> PathBuf {
    let docs: Vec<_> = docs
        .iter()
        .map(|(cg, name, spec)| (*cg, *name, spec.clone(), false))
        .collect();
    write_host_policies(dir, &docs)
}

/// As [`write_policies`], each with whether a container runtime starts the processes of its
/// cgroup (`hostProcesses.containerRuntime`).
fn write_host_policies(dir: &Path, docs: &[(&TestCgroup, &str, String, bool)]) -> PathBuf {
    let text: Vec<String> = docs
        .iter()
        .map(|(cg, name, spec, runtime)| {
            format!(
                "apiVersion: vigil.dev/v1alpha1\nkind: ClusterRuntimePolicy\nmetadata: {{name: {name}}}\nspec:\n  hostProcesses: {{cgroupPrefixes: [\"{}\"], containerRuntime: {runtime}}}\n{spec}",
                cg.rel
            )
        })
        .collect();
    let file = dir.join("policies.yaml");
    std::fs::write(&file, text.join("---\n")).unwrap();
    file
}

/// A copy of the scenario binary at `path` (its directories created).
fn writer_at(path: &Path) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::copy(scenario_bin(), path).unwrap();
    path.to_path_buf()
}

/// Runs `writer write-marker MARKER` in `cg`: pid, how it ended, and whether it ran.
fn run_writer(
    cg: &TestCgroup,
    writer: &Path,
    marker: &Path,
) -> (u32, std::process::ExitStatus, bool) {
    let _ = std::fs::remove_file(marker);
    let (pid, status) = run_in_cgroup(&cg.dir, writer, &["write-marker", marker.to_str().unwrap()]);
    (pid, status, marker.exists())
}

/// A cgroup named `name`, a policy of that name on it with `spec`, and the agent enforcing
/// it; the directory holds the policy file and whatever the test puts there.
fn policed(name: &str, spec: &str) -> (TestCgroup, tempfile::TempDir, Tracer) {
    let cg = TestCgroup::new(name);
    let tmp = tempfile::tempdir().unwrap();
    let file = write_policies(tmp.path(), &[(&cg, name, spec.to_string())]);
    let tracer = Tracer::enforce(&file);
    (cg, tmp, tracer)
}

/// The exit code with which a scenario says this kernel lacks what it needs.
const UNSUPPORTED: i32 = 77;

/// Runs the scenario `args` in `cg`, where a Kill policy must kill it inside the call, before
/// it returns to user space; the `ty` event that says so. `None` (the reason printed) where
/// this kernel lacks the call.
#[track_caller]
fn killed_in_the_call_if_supported(
    tracer: &Tracer,
    cg: &TestCgroup,
    args: &[&str],
    ty: &str,
) -> Option<Value> {
    let (pid, out) = cg.scenario(args);
    if out.status.code() == Some(UNSUPPORTED) {
        common::skip_for_kernel(&args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        return None;
    }
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "{args:?}: {out:?}"
    );
    assert!(
        out.stdout.is_empty(),
        "{args:?} returned to user space: {out:?}"
    );
    Some(tracer.wait_for(&format!("{args:?}"), |e| is(e, ty, pid)))
}

/// As [`killed_in_the_call_if_supported`], for calls every kernel this runs on has.
#[track_caller]
fn killed_in_the_call(tracer: &Tracer, cg: &TestCgroup, args: &[&str], ty: &str) -> Value {
    killed_in_the_call_if_supported(tracer, cg, args, ty)
        .unwrap_or_else(|| panic!("{args:?} is missing from this kernel"))
}

/// Asserts that no event names any of `pids` (the benign twins).
#[track_caller]
fn assert_quiet(events: &[Value], pids: &[u32], what: &str) {
    let loud: Vec<&Value> = events
        .iter()
        .filter(|e| pids.iter().any(|p| pid_of(e) == u64::from(*p)))
        .collect();
    assert!(loud.is_empty(), "{what} was reported: {loud:?}");
}

#[test]
fn anonymous_files_are_told_by_their_file_system_not_their_name() {
    if !root_or_skip("anonymous") {
        return;
    }
    let lsm = common::prevention().is_ok();
    let (cg, tmp, tracer) = policed(
        "anon",
        "  exec:\n    deny: [{memfd: true}]\n    action: Kill\n",
    );

    // A script held in a memfd, run by an interpreter from disk: the script is fileless.
    let marker = tmp.path().join("m-script");
    let (pid, out) = cg.scenario(&["memfd-script-marker", marker.to_str().unwrap()]);
    assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{out:?}");
    assert!(!marker.exists(), "the fileless script ran");
    let e = if lsm {
        // Where BPF LSM runs, the memfd is refused at its own exec, before an interpreter is
        // chosen for it.
        let e = tracer.wait_for("the memfd script", |e| {
            is(e, EXEC, pid) && e["data"]["exec"]["prevented"] == true
        });
        assert_eq!(e["vigilaction"], "kill", "{e}");
        e
    } else {
        // Elsewhere, when the interpreter opens it (as /dev/fd/N).
        let e = tracer.wait_for("the memfd script", |e| {
            e["type"] == EXEC && e["data"]["exec"]["script"] == true
        });
        assert!(
            e["data"]["exec"]["path"]
                .as_str()
                .unwrap()
                .starts_with("/dev/fd/"),
            "{e}"
        );
        e
    };
    assert_eq!(e["data"]["exec"]["memfd"], true, "{e}");
    assert_eq!(e["data"]["policy"]["rule"], "spec.exec.deny[0]");

    // The benign twins: files on disk whose names look like memfds run untouched.
    let mut quiet = Vec::new();
    for name in ["memfd:tool", "memfd:vigil-payload (deleted)"] {
        let writer = writer_at(&tmp.path().join("disk").join(name));
        let marker = tmp.path().join("m-disk");
        let (pid, status, ran) = run_writer(&cg, &writer, &marker);
        assert!(status.success() && ran, "{name}: {status}");
        quiet.push(pid);
    }
    assert_quiet(&tracer.stop(), &quiet, "a file on disk named like a memfd");
}

/// A directory under `base` whose `writer` has a real path exactly `len` bytes long.
fn path_of_length(base: &Path, len: usize) -> PathBuf {
    let base = std::fs::canonicalize(base).unwrap();
    let fixed = base.as_os_str().len() + "/".len() + "/writer".len();
    assert!(len > fixed + 1, "base too long");
    let mut dir = base.clone();
    let mut left = len - fixed;
    // Components of at most 200 bytes, each followed by a slash but the last.
    while left > 200 {
        dir = dir.join("d".repeat(150));
        left -= 151;
    }
    dir = dir.join("e".repeat(left));
    let writer = dir.join("writer");
    assert_eq!(writer.as_os_str().len(), len);
    writer
}

#[test]
fn long_paths_are_decided_in_the_kernel_and_unresolvable_ones_fail_closed() {
    if !root_or_skip("long-paths") {
        return;
    }
    let kill = TestCgroup::new("long-kill");
    let allow = TestCgroup::new("long-allow");
    let tmp = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(tmp.path()).unwrap();
    let denied = base.join("denied");
    let free = base.join("free");
    std::fs::create_dir_all(&denied).unwrap();
    std::fs::create_dir_all(&free).unwrap();
    // 253 bytes: longer than the kernel's path keys (251), short enough for its walk.
    let long_denied = writer_at(&path_of_length(&denied, 253));
    let long_free = writer_at(&path_of_length(&free, 253));
    // 300 bytes: longer than the walk goes.
    let unresolvable = writer_at(&path_of_length(&free, 300));
    let short = writer_at(&free.join("writer"));
    let file = write_policies(
        tmp.path(),
        &[
            (
                &kill,
                "long-kill",
                format!(
                    "  exec:\n    deny: [{{prefix: \"{}/\"}}]\n    action: Kill\n",
                    denied.display()
                ),
            ),
            (
                &allow,
                "long-allow",
                format!(
                    "  exec:\n    allow: [{{prefix: \"{}/\"}}]\n    action: Alert\n",
                    base.display()
                ),
            ),
        ],
    );
    let tracer = Tracer::enforce(&file);
    let marker = tmp.path().join("marker");

    // Under the deny prefix, 253 bytes long: killed in the kernel, before it ran.
    let (pid, status, ran) = run_writer(&kill, &long_denied, &marker);
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    assert!(!ran, "the long denied binary ran");
    let e = tracer.wait_for("the long denied exec", |e| is(e, EXEC, pid));
    assert_eq!(e["data"]["policy"]["rule"], "spec.exec.deny[0]", "{e}");
    assert_eq!(e["data"]["exec"].get("undecided"), None, "{e}");

    // A path the kernel cannot resolve, under a Kill deny list it may not match: killed.
    let (pid, status, ran) = run_writer(&kill, &unresolvable, &marker);
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    assert!(!ran, "the unverifiable binary ran under Kill");
    let e = tracer.wait_for("the unverifiable exec", |e| is(e, EXEC, pid));
    assert_eq!(e["data"]["exec"]["unverifiable"], true, "{e}");
    assert_eq!(e["data"]["policy"]["rule"], "spec.exec", "{e}");

    // Under an allowlist it is not allowed (Alert: it runs, and says why).
    let (pid, status, ran) = run_writer(&allow, &unresolvable, &marker);
    assert!(status.success() && ran, "Alert never kills: {status}");
    let e = tracer.wait_for("the unverifiable exec on an allowlist", |e| {
        is(e, EXEC, pid)
    });
    assert_eq!(e["vigilaction"], "alert", "{e}");
    assert_eq!(e["data"]["exec"]["unverifiable"], true, "{e}");
    assert_eq!(e["data"]["policy"]["rule"], "spec.exec.allow", "{e}");

    // The benign twins: a long path outside the deny prefix and a short one under Kill,
    // and a long path on the allowlist.
    let mut quiet = Vec::new();
    for (cg, writer) in [(&kill, &long_free), (&kill, &short), (&allow, &long_free)] {
        let (pid, status, ran) = run_writer(cg, writer, &marker);
        assert!(status.success() && ran, "{}: {status}", writer.display());
        quiet.push(pid);
    }
    let events = tracer.stop();
    let loud: Vec<&Value> = events
        .iter()
        .filter(|e| quiet.iter().any(|p| is(e, EXEC, *p)))
        .collect();
    assert!(loud.is_empty(), "benign execs were reported: {loud:?}");
}

/// Nested cgroups, removed deepest first even when the test fails.
struct Chain(Vec<TestCgroup>);

impl Chain {
    /// `depth` cgroups, each below the one before, the first below the cgroup root.
    fn new(label: &str, depth: usize) -> Self {
        let mut chain = vec![TestCgroup::new(label)];
        while chain.len() < depth {
            let next = TestCgroup::nested(chain.last().unwrap(), &format!("l{}", chain.len() + 1));
            chain.push(next);
        }
        Self(chain)
    }

    /// The cgroup at `level` below the root (1 is the first).
    fn at(&self, level: usize) -> &TestCgroup {
        &self.0[level - 1]
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        while let Some(cg) = self.0.pop() {
            drop(cg);
        }
    }
}

#[test]
fn deep_bindings_are_enforced_or_refused_by_name_and_deep_descendants_stay_covered() {
    if !root_or_skip("deep") {
        return;
    }
    let root = vigil::metadata::cgroup::detect_root().unwrap();
    // Levels below the whole hierarchy's root, as the kernel counts them.
    let base_level = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.contains(" - cgroup2 ") && l.split(' ').nth(4) == root.to_str())
        .and_then(|l| l.split(' ').nth(3))
        .map_or(0, |r| r.split('/').filter(|c| !c.is_empty()).count());
    let chain = Chain::new("deep", 40 - base_level);
    let tmp = tempfile::tempdir().unwrap();
    let (writer, denied) = common::denied_binary(tmp.path());
    let spec = format!("  exec:\n    deny: [{{prefix: \"{denied}/\"}}]\n    action: Kill\n");
    let enforced = chain.at(30 - base_level);
    let refused = chain.at(35 - base_level);
    let file = write_policies(
        tmp.path(),
        &[
            (enforced, "deep-enforced", spec.clone()),
            (refused, "deep-refused", spec),
        ],
    );
    let tracer = Tracer::enforce(&file);
    let state = tracer.wait_for_state("the too-deep binding refused", |s| {
        s["tooDeep"].as_array().is_some_and(|d| !d.is_empty())
    });
    assert_eq!(
        state["tooDeep"],
        serde_json::json!([refused.rel]),
        "{state}"
    );
    // Bound at level 30 (the kills prove it was not refused): enforced there and at level 40
    // below it.
    let marker = tmp.path().join("marker");
    for cg in [enforced, chain.at(40 - base_level)] {
        let (pid, status, ran) = run_writer(cg, &writer, &marker);
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{}: {status}", cg.rel);
        assert!(!ran);
        tracer.wait_for("the deep kill", |e| is(e, EXEC, pid));
    }
    tracer.stop();
}

#[test]
fn code_mapped_from_a_denied_place_without_an_exec_is_caught() {
    if !root_or_skip("mapped") {
        return;
    }
    let cg = TestCgroup::new("mapped");
    let tmp = tempfile::tempdir().unwrap();
    let (writer, denied) = common::denied_binary(tmp.path());
    let loader = std::fs::canonicalize("/lib64/ld-linux-x86-64.so.2").unwrap();
    let lib = Path::new(&denied).join("libpreload.so");
    std::fs::copy(
        std::fs::canonicalize("/lib/x86_64-linux-gnu/libdl.so.2").unwrap(),
        &lib,
    )
    .unwrap();
    let file = write_policies(
        tmp.path(),
        &[(
            &cg,
            "mapped",
            format!("  exec:\n    deny: [{{prefix: \"{denied}/\"}}]\n    action: Kill\n"),
        )],
    );
    let tracer = Tracer::enforce(&file);
    let marker = tmp.path().join("marker");
    let m = marker.to_str().unwrap();

    // The dynamic loader (allowed) asked to run a denied program: no exec of the program.
    let (pid, status) = run_in_cgroup(
        &cg.dir,
        &loader,
        &[writer.to_str().unwrap(), "write-marker", m],
    );
    assert_eq!(status.signal(), Some(libc::SIGKILL), "ld.so: {status}");
    assert!(
        !marker.exists(),
        "the denied program ran through the loader"
    );
    let e = tracer.wait_for("the loader mapping", |e| is(e, EXEC, pid));
    assert_eq!(e["data"]["exec"]["mapped"], true, "{e}");
    assert_eq!(e["data"]["exec"]["path"], writer.to_str().unwrap(), "{e}");
    assert_eq!(e["data"]["process"]["exe"], loader.to_str().unwrap(), "{e}");
    assert_eq!(e["data"]["policy"]["rule"], "spec.exec.deny[0]", "{e}");

    // A library preloaded from the denied place into an allowed program.
    let out = cg
        .command("/bin/true")
        .env("LD_PRELOAD", &lib)
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "LD_PRELOAD: {out:?}"
    );
    tracer.wait_for("the preloaded library", |e| {
        e["type"] == EXEC && e["data"]["exec"]["path"] == lib.to_str().unwrap()
    });

    // The same library mapped executable through the 32-bit entry, as a 32-bit loader maps
    // one: no syscall tracepoint fires there. `mprotect` names an area, not a file: where
    // the BPF LSM programs are the W^X hooks, `file_mprotect` judges the area's file;
    // elsewhere the area is not looked up, and it fails closed as a file whose path cannot
    // be resolved.
    let lsm = common::wx_from_lsm();
    let denied_lib = lib.to_str().unwrap();
    let mut compat = true;
    for (scenario, rule) in [
        ("compat-mmap-file-exec", "spec.exec.deny[0]"),
        ("compat-old-mmap-file-exec", "spec.exec.deny[0]"),
        // Its structure on a page not yet faulted in: the probe cannot read what the kernel
        // will, so it fails closed (the LSM's `mmap_file` sees the file itself).
        (
            "compat-old-mmap-unfaulted-file-exec",
            if lsm {
                "spec.exec.deny[0]"
            } else {
                "spec.exec"
            },
        ),
        (
            "compat-mprotect-file-exec",
            if lsm {
                "spec.exec.deny[0]"
            } else {
                "spec.exec"
            },
        ),
    ] {
        let Some(e) = killed_in_the_call_if_supported(&tracer, &cg, &[scenario, denied_lib], EXEC)
        else {
            compat = false;
            break;
        };
        assert_eq!(e["data"]["exec"]["mapped"], true, "{scenario}: {e}");
        assert_eq!(e["data"]["policy"]["rule"], rule, "{scenario}: {e}");
        if rule == "spec.exec" {
            assert_eq!(e["data"]["exec"]["unverifiable"], true, "{scenario}: {e}");
        } else {
            assert_eq!(e["data"]["exec"]["path"], denied_lib, "{scenario}: {e}");
        }
    }

    // The benign twins: the loader running an allowed program, an allowed program with its
    // usual libraries, and an allowed library mapped through the 32-bit entry.
    let mut quiet = Vec::new();
    if compat {
        let allowed_lib = tmp.path().join("libplain.so");
        std::fs::copy("/bin/true", &allowed_lib).unwrap();
        for scenario in ["compat-mmap-file-exec", "compat-old-mmap-file-exec"] {
            let (pid, out) = cg.scenario(&[scenario, allowed_lib.to_str().unwrap()]);
            assert!(out.status.success(), "{scenario}: {out:?}");
            quiet.push(pid);
        }
    }
    let allowed = tmp.path().join("allowed-writer");
    std::fs::copy(scenario_bin(), &allowed).unwrap();
    let (pid_loader, status) = run_in_cgroup(
        &cg.dir,
        &loader,
        &[allowed.to_str().unwrap(), "write-marker", m],
    );
    assert!(
        status.success() && marker.exists(),
        "ld.so allowed: {status}"
    );
    let (pid_true, status) = run_in_cgroup(&cg.dir, Path::new("/bin/true"), &[]);
    assert!(status.success(), "{status}");
    let events = tracer.stop();
    quiet.extend([pid_loader, pid_true]);
    for quiet in quiet {
        assert!(
            !events.iter().any(|e| is(e, EXEC, quiet)),
            "a benign mapping was reported"
        );
    }
}

#[test]
fn a_wx_exemption_follows_the_image_exactly() {
    if !root_or_skip("exemption") {
        return;
    }
    let cg = TestCgroup::new("exempt");
    let tmp = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(tmp.path()).unwrap();
    let runtime = writer_at(&base.join("jit").join("runtime"));
    std::fs::create_dir_all(base.join("deep")).unwrap();
    let unresolvable = writer_at(&path_of_length(&base.join("deep"), 300));
    let file = write_policies(
        tmp.path(),
        &[(
            &cg,
            "exempt",
            format!(
                "  memory:\n    writeExecute: Deny\n    allowExecutables: [\"{}\"]\n    action: Alert\n",
                runtime.display()
            ),
        )],
    );
    let tracer = Tracer::enforce(&file);

    // The exempt runtime's leader thread exits first; its other thread maps RWX: still the
    // exempt image, silent.
    let (quiet, out) = {
        let child = cg
            .command(&runtime)
            .arg("rwx-after-leader-exit")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        (child.id(), child.wait_with_output().unwrap())
    };
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "mapped");

    // The exempt runtime execs a binary whose path the kernel cannot walk: the new image is
    // not exempt.
    let (pid, out) = {
        let child = cg
            .command(&runtime)
            .args(["exec-into", unresolvable.to_str().unwrap(), "mmap-rwx"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        (child.id(), child.wait_with_output().unwrap())
    };
    assert!(out.status.success(), "{out:?}");
    let e = tracer.wait_for("the RWX of the new image", |e| is(e, WX, pid));
    assert_eq!(e["vigilverdict"], "violation", "{e}");
    let events = tracer.stop();
    assert!(
        !events.iter().any(|e| is(e, WX, quiet)),
        "the exemption was dropped when the leader thread exited"
    );
}

#[test]
fn shared_memory_mapped_executable_is_wx_unless_the_runtime_is_exempt() {
    if !root_or_skip("shared-exec") {
        return;
    }
    let cg = TestCgroup::new("shared-exec");
    let jit_cg = TestCgroup::new("shared-exec-jit");
    let tmp = tempfile::tempdir().unwrap();
    let runtime = writer_at(&std::fs::canonicalize(tmp.path()).unwrap().join("jit"));
    let library = tmp.path().join("library");
    std::fs::write(&library, [0u8; 4096]).unwrap();
    let file = write_policies(
        tmp.path(),
        &[
            (
                &cg,
                "shared-exec",
                "  memory:\n    writeExecute: Deny\n    action: Kill\n".to_string(),
            ),
            (
                &jit_cg,
                "shared-exec-jit",
                format!(
                    "  memory:\n    writeExecute: Deny\n    allowExecutables: [\"{}\"]\n    action: Kill\n",
                    runtime.display()
                ),
            ),
        ],
    );
    let tracer = Tracer::enforce(&file);
    for (scenario, syscall) in [
        ("memfd-dual-map", "mmap"),
        ("shm-dual-map", "mmap"),
        ("shmat-exec", "shmat"),
    ] {
        let (pid, out) = cg.scenario(&[scenario]);
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGKILL),
            "{scenario}: {out:?}"
        );
        let e = tracer.wait_for(scenario, |e| is(e, WX, pid));
        assert_eq!(e["data"]["wx"]["sharedExec"], true, "{e}");
        assert_eq!(e["data"]["wx"]["syscall"], syscall, "{e}");
        assert_eq!(e["vigilaction"], "kill", "{e}");
    }
    // The benign twins: a disk file mapped executable, shared memory without exec, and the
    // dual-mapping pattern of an exempt JIT runtime.
    let mut quiet = Vec::new();
    for args in [
        vec!["mmap-file-rx", library.to_str().unwrap()],
        vec!["shmat-rw"],
    ] {
        let (pid, out) = cg.scenario(&args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        quiet.push(pid);
    }
    let out = jit_cg
        .command(&runtime)
        .arg("memfd-dual-map")
        .output()
        .unwrap();
    assert!(out.status.success(), "exempt runtime: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "mapped");
    let events = tracer.stop();
    let loud: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == WX)
        .filter(|e| {
            quiet.iter().any(|p| is(e, WX, *p))
                || e["data"]["process"]["exe"] == runtime.to_str().unwrap()
        })
        .collect();
    assert!(loud.is_empty(), "benign mappings were reported: {loud:?}");
}

#[test]
fn moving_out_of_a_policed_cgroup_escapes_nothing_and_is_reported() {
    if !root_or_skip("cgroup-move") {
        return;
    }
    let killed = TestCgroup::new("move-kill");
    let audited = TestCgroup::new("move-alert");
    let inside = TestCgroup::nested(&audited, "inside");
    let elsewhere = TestCgroup::new("move-free");
    let tmp = tempfile::tempdir().unwrap();
    let (writer, denied) = common::denied_binary(tmp.path());
    let deny = |action: &str| {
        format!("  exec:\n    deny: [{{prefix: \"{denied}/\"}}]\n    action: {action}\n")
    };
    let file = write_policies(
        tmp.path(),
        &[
            (&killed, "move-kill", deny("Kill")),
            (&audited, "move-alert", deny("Alert")),
        ],
    );
    let tracer = Tracer::enforce(&file);
    let free_dir = elsewhere.dir.to_str().unwrap();
    let marker = tmp.path().join("marker");
    let m = marker.to_str().unwrap();

    // Under Kill: the process that moves itself out dies in the move.
    let (pid, out) = killed.scenario(&["move-to", free_dir]);
    assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{out:?}");
    let e = tracer.wait_for("the move under Kill", |e| is(e, "dev.vigil.cgroup.v1", pid));
    assert_eq!(e["vigilaction"], "kill", "{e}");
    assert_eq!(e["data"]["move"]["movedPid"], pid, "{e}");
    assert_eq!(e["data"]["move"]["fromCgroupId"], killed.id, "{e}");
    assert_eq!(e["data"]["move"]["toCgroupId"], elsewhere.id, "{e}");
    assert_eq!(e["data"]["policy"]["rule"], "spec", "{e}");

    // Under Alert: the move is reported, and the policy follows the process: its exec of a
    // denied binary from the unpoliced cgroup is still a violation.
    let (pid, out) = audited.scenario(&[
        "move-to",
        free_dir,
        writer.to_str().unwrap(),
        "write-marker",
        m,
    ]);
    assert!(out.status.success(), "{out:?}");
    let e = tracer.wait_for("the move under Alert", |e| {
        is(e, "dev.vigil.cgroup.v1", pid)
    });
    assert_eq!(e["vigilaction"], "alert", "{e}");
    let e = tracer.wait_for("the exec after the move", |e| is(e, EXEC, pid));
    assert_eq!(e["data"]["policy"]["name"], "move-alert", "{e}");
    assert_eq!(e["data"]["cgroup"]["id"], elsewhere.id, "{e}");

    // The benign twins: a move inside the binding's own subtree, and a move between cgroups
    // no policy covers.
    let (inner, out) = audited.scenario(&["move-to", inside.dir.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let other = TestCgroup::new("move-free-2");
    let (free, out) = elsewhere.scenario(&["move-to", other.dir.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let events = tracer.stop();
    for quiet in [inner, free] {
        assert!(
            !events.iter().any(|e| is(e, "dev.vigil.cgroup.v1", quiet)),
            "a benign move was reported"
        );
    }
}

/// `vigil-scenario runtime-handover MODE DIR PROGRAM ARGS...` run from outside every policed
/// cgroup (as a container runtime runs): the pid that exec'd `PROGRAM`, and how it ended.
fn runtime_handover(mode: &str, dir: &Path, program: &Path, args: &[&str]) -> (u32, String) {
    let out = std::process::Command::new(scenario_bin())
        .args(["runtime-handover", mode, dir.to_str().unwrap()])
        .arg(program)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("{mode}: no `{key}` line: {out:?}"))
            .to_string()
    };
    (line("pid ").parse().unwrap(), line("status "))
}

/// A pod's cgroup with a container's cgroup below it, as the kubelet and runc lay them out,
/// and a service's cgroup, both under an exec allowlist with Kill that lists only the scenario
/// binary; the pod's policy says a container runtime starts its processes, the service's
/// (as systemd's) does not.
struct HandoverCgroups {
    _pod: TestCgroup,
    container: TestCgroup,
    service: TestCgroup,
    tmp: tempfile::TempDir,
    /// A binary off the allowlist.
    writer: PathBuf,
    scenario: PathBuf,
    file: PathBuf,
}

impl HandoverCgroups {
    fn new(name: &str) -> Self {
        let pod = TestCgroup::new(name);
        let container = TestCgroup::nested(&pod, "container");
        let service = TestCgroup::new(&format!("{name}-service"));
        let tmp = tempfile::tempdir().unwrap();
        let (writer, _) = common::denied_binary(tmp.path());
        let scenario = std::fs::canonicalize(scenario_bin()).unwrap();
        let spec = format!(
            "  exec:\n    allow: [{{path: \"{}\"}}]\n    action: Kill\n",
            scenario.display()
        );
        let service_name = format!("{name}-service");
        let file = write_host_policies(
            tmp.path(),
            &[
                (&pod, name, spec.clone(), true),
                (&service, service_name.as_str(), spec, false),
            ],
        );
        Self {
            _pod: pod,
            container,
            service,
            tmp,
            writer,
            scenario,
            file,
        }
    }
}

#[test]
fn the_runtimes_own_work_before_the_container_is_not_the_pods_and_nothing_else_passes_for_it() {
    if !root_or_skip("runtime-handover") {
        return;
    }
    let HandoverCgroups {
        _pod,
        container,
        service,
        tmp,
        writer,
        scenario,
        file,
    } = HandoverCgroups::new("handover");
    let tracer = Tracer::enforce(&file);
    let marker = tmp.path().join("marker");
    let m = marker.to_str().unwrap();
    // What runc 1.1 does in the container's cgroup: exec a binary the pod does not list,
    // and exec itself again from a memfd (which no allowlist can list).
    let programs: [(&Path, [&str; 2]); 2] = [
        (&writer, ["write-marker", m]),
        (&scenario, ["memfd-exec-marker", m]),
    ];
    let mut runtimes = Vec::new();
    for (cgroup, mode, the_runtimes) in [
        // Put into the cgroup by an unpoliced parent, or cloned into it, and still in the
        // parent's mount namespace: the runtime's, as are its children there.
        (&container, "move", true),
        (&container, "move-fork", true),
        (&container, "clone-into", true),
        // In a mount namespace of its own: the container's.
        (&container, "move-unshare", false),
        (&container, "move-fork-unshare", false),
        (&container, "clone-into-unshare", false),
        // Moved in by a process inside the pod, or by itself: the pod's.
        (&container, "policed-mover", false),
        (&container, "self-move", false),
        // Where no container runtime starts the processes, whoever put a process there
        // (systemd clones a service into its cgroup) hands nothing over.
        (&service, "move", false),
        (&service, "move-fork", false),
        (&service, "clone-into", false),
    ] {
        for (program, args) in &programs {
            let _ = std::fs::remove_file(&marker);
            let (pid, status) = runtime_handover(mode, &cgroup.dir, program, args);
            let what = format!("{} {mode} {}", cgroup.rel, args[0]);
            if the_runtimes {
                assert_eq!(status, "exit=0", "{what}");
                assert!(marker.exists(), "{what}: the runtime's exec did not run");
                runtimes.push(pid);
            } else {
                assert_eq!(status, "signal=9", "{what}");
                assert!(!marker.exists(), "{what}: the pod's exec ran");
                let e = tracer.wait_for(&what, |e| is(e, EXEC, pid));
                assert_eq!(e["vigilaction"], "kill", "{what}: {e}");
                assert_eq!(e["data"]["cgroup"]["id"], cgroup.id, "{what}: {e}");
            }
        }
    }
    let events = tracer.stop();
    assert_quiet(&events, &runtimes, "the runtime's hand-over");
}

/// A runtime-handover-early process, held at `ready` until [`Early::go`].
struct Early {
    what: String,
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl Early {
    fn start(mode: &str, dir: &Path, program: &Path, args: &[&str]) -> Self {
        use std::io::BufRead as _;
        let what = format!("early {} {mode} {}", dir.display(), args[0]);
        let mut child = std::process::Command::new(scenario_bin())
            .args(["runtime-handover-early", mode, dir.to_str().unwrap()])
            .arg(program)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "{what}");
        Self { what, child, out }
    }

    /// Lets it exec: the pid that exec'd and how it ended.
    fn go(mut self) -> (u32, String) {
        use std::io::{Read as _, Write as _};
        self.child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let mut rest = String::new();
        self.out.read_to_string(&mut rest).unwrap();
        let status = self.child.wait().unwrap();
        let line = |key: &str| {
            rest.lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_else(|| panic!("{}: no `{key}` line in {rest:?} ({status})", self.what))
                .to_string()
        };
        (line("pid ").parse().unwrap(), line("status "))
    }
}

/// The kernel reports a move into a cgroup (`cgroup_attach_task`) only after it: the moved
/// process can exec in the pod's cgroup before the agent has seen its move (runc's memfd
/// re-exec did, once, on the pure cgroup v2 node, and was killed). Moves made before the
/// agent started are the same case, held still: with no move seen, the process's parent
/// decides. A runtime's process is the runtime's; one in a namespace of its own, or whose
/// parent is already inside the pod, is the pod's.
#[test]
fn a_runtime_move_the_agent_did_not_see_is_told_by_the_parent() {
    if !root_or_skip("runtime-handover-early") {
        return;
    }
    let HandoverCgroups {
        _pod,
        container,
        service,
        tmp,
        writer,
        scenario,
        file,
    } = HandoverCgroups::new("handover-early");
    let mut held = Vec::new();
    for (cgroup, mode, the_runtimes) in [
        (&container, "move", true),
        (&container, "move-unshare", false),
        (&container, "move-forked", false),
        // No container runtime there: the same move hands nothing over.
        (&service, "move", false),
    ] {
        for (program, first) in [(&writer, "write-marker"), (&scenario, "memfd-exec-marker")] {
            let marker = tmp.path().join(format!(
                "marker-{}-{mode}-{first}",
                cgroup.rel.replace('/', "")
            ));
            let early = Early::start(
                mode,
                &cgroup.dir,
                program,
                &[first, marker.to_str().unwrap()],
            );
            held.push((early, the_runtimes, marker, cgroup.id));
        }
    }
    let tracer = Tracer::enforce(&file);
    let mut runtimes = Vec::new();
    for (early, the_runtimes, marker, cgroup_id) in held {
        let what = early.what.clone();
        let (pid, status) = early.go();
        if the_runtimes {
            assert_eq!(status, "exit=0", "{what}");
            assert!(marker.exists(), "{what}: the runtime's exec did not run");
            runtimes.push(pid);
        } else {
            assert_eq!(status, "signal=9", "{what}");
            assert!(!marker.exists(), "{what}: the pod's exec ran");
            let e = tracer.wait_for(&what, |e| is(e, EXEC, pid));
            assert_eq!(e["vigilaction"], "kill", "{what}: {e}");
            assert_eq!(e["data"]["cgroup"]["id"], cgroup_id, "{what}: {e}");
        }
    }
    let events = tracer.stop();
    assert_quiet(
        &events,
        &runtimes,
        "the runtime's hand-over the agent did not see",
    );
}

#[test]
fn a_cgroup_created_below_a_policed_one_is_policed_from_its_first_moment() {
    if !root_or_skip("new-child") {
        return;
    }
    let parent = TestCgroup::new("new-child");
    let tmp = tempfile::tempdir().unwrap();
    let (writer, denied) = common::denied_binary(tmp.path());
    let file = write_policies(
        tmp.path(),
        &[(
            &parent,
            "new-child",
            format!("  exec:\n    deny: [{{prefix: \"{denied}/\"}}]\n    action: Kill\n"),
        )],
    );
    let tracer = Tracer::enforce(&file);
    let marker = tmp.path().join("marker");
    // Created after the policy was applied, and used at once: no binding of its own is
    // needed, the kernel finds the parent's.
    for round in 0..20 {
        let child = TestCgroup::nested(&parent, &format!("c{round}"));
        let (pid, status, ran) = run_writer(&child, &writer, &marker);
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "round {round}: {status}"
        );
        assert!(
            !ran,
            "round {round}: the denied binary ran in a new child cgroup"
        );
        tracer.wait_for("the kill in the new child", |e| is(e, EXEC, pid));
    }
    tracer.stop();
}

#[test]
fn writes_into_another_process_are_violations_under_foreign_writes_deny() {
    if !root_or_skip("foreign-writes") {
        return;
    }
    let (cg, _tmp, tracer) = policed("foreign", FOREIGN_WRITES_KILL);
    for (scenario, syscall) in [
        ("ptrace-poke", "ptrace"),
        ("vm-writev", "process_vm_writev"),
        ("proc-mem-write", "open"),
        // The same through the 32-bit entry, where no syscall tracepoint fires.
        ("compat-proc-mem-write", "open"),
    ] {
        let e = killed_in_the_call(&tracer, &cg, &[scenario], WX);
        assert_eq!(e["data"]["wx"]["foreignWrite"], true, "{e}");
        assert_eq!(e["data"]["wx"]["syscall"], syscall, "{e}");
        assert_eq!(
            e["data"]["policy"]["rule"], "spec.memory.foreignWrites",
            "{e}"
        );
        if syscall != "open" {
            assert!(e["data"]["wx"]["targetPid"].as_u64().unwrap() > 0, "{e}");
        }
    }
    // A tracee's own offer (`PTRACE_TRACEME`): its parent writes with no attach. Where BPF
    // LSM judges foreign writes by system call the offer is refused and its maker killed;
    // elsewhere the parent's write is, at the call.
    let lsm_calls = common::foreign_calls_from_lsm();
    {
        let args = ["traceme-poke"];
        let (pid, out) = cg.scenario(&args);
        assert!(
            !stdout_text(&out).contains("poked"),
            "{args:?}: the write went through: {out:?}"
        );
        if lsm_calls {
            assert!(out.status.code().is_some(), "{args:?}: {out:?}");
        } else {
            assert_eq!(
                out.status.signal(),
                Some(libc::SIGKILL),
                "{args:?}: {out:?}"
            );
        }
        let e = tracer.wait_for(&format!("{args:?}"), |e| {
            e["type"] == WX
                && e["data"]["wx"]["foreignWrite"] == true
                && if lsm_calls {
                    e["data"]["process"]["ppid"] == pid
                } else {
                    is(e, WX, pid)
                }
        });
        assert_eq!(e["data"]["wx"]["syscall"], "ptrace", "{args:?}: {e}");
        assert_eq!(e["vigilaction"], "kill", "{args:?}: {e}");
        if lsm_calls {
            assert_eq!(e["data"]["wx"]["targetPid"], pid, "{args:?}: {e}");
        }
    }
    // The same with a tracee that first moves itself to a cgroup no policy selects: the
    // move out of a policed cgroup is itself a violation, and nothing is written.
    let elsewhere = TestCgroup::new("foreign-elsewhere");
    let (pid, out) = cg.scenario(&["traceme-poke", elsewhere.dir.to_str().unwrap()]);
    assert!(
        !stdout_text(&out).contains("poked") && out.status.code().is_some_and(|c| c != 0),
        "a tracee moved elsewhere: {out:?}"
    );
    let e = tracer.wait_for("a tracee moved elsewhere", |e| {
        e["data"]["process"]["ppid"] == pid && e["vigilaction"] == "kill"
    });
    assert_eq!(e["data"]["policy"]["name"], "foreign", "{e}");
    // Through io_uring no syscall tracepoint sees the open; BPF LSM's `file_open` does.
    match common::prevention() {
        Ok(()) => {
            if let Some(e) =
                killed_in_the_call_if_supported(&tracer, &cg, &["uring-proc-mem-write"], WX)
            {
                assert_eq!(e["data"]["wx"]["syscall"], "open", "{e}");
                assert_eq!(e["data"]["wx"]["foreignWrite"], true, "{e}");
            }
        }
        Err(why) => common::skip_for_kernel(
            "/proc/<pid>/mem opened through io_uring",
            &format!("BPF LSM's file_open ({why})"),
        ),
    }
    // The benign twins: reading another process's memory, reading one's own /proc mem, and
    // the same write outside any policy.
    let mut quiet = Vec::new();
    for scenario in ["vm-readv", "proc-mem-read"] {
        let (pid, out) = cg.scenario(&[scenario]);
        assert!(out.status.success(), "{scenario}: {out:?}");
        quiet.push(pid);
    }
    let free = TestCgroup::new("foreign-free");
    let (pid, out) = free.scenario(&["ptrace-poke"]);
    assert!(out.status.success(), "{out:?}");
    quiet.push(pid);
    assert_quiet(&tracer.stop(), &quiet, "a benign access");
}

/// Where BPF LSM judges foreign writes by system call, `Deny` refuses each before the act
/// (`EPERM`) from either entry, and the process lives on; reading stays allowed.
#[test]
fn foreign_writes_by_system_call_are_refused_before_the_act_under_deny() {
    if !root_or_skip("foreign-deny") {
        return;
    }
    if !common::foreign_calls_from_lsm() {
        common::skip_for_kernel(
            "foreign_writes_by_system_call_are_refused_before_the_act_under_deny",
            "BPF LSM programs that can read the task's registers (5.15 and newer)",
        );
        return;
    }
    let deny = "  memory:\n    writeExecute: Allow\n    foreignWrites: Deny\n    action: Deny\n";
    let (cg, _tmp, tracer) = policed("foreign-deny", deny);
    for (args, syscall, refused) in [
        (&["ptrace-poke"][..], "ptrace", "PTRACE_ATTACH"),
        (&["vm-writev"][..], "process_vm_writev", "process_vm_writev"),
        (
            &["userfaultfd", "syscall"][..],
            "userfaultfd",
            "userfaultfd",
        ),
        (&["userfaultfd", "compat"][..], "userfaultfd", "userfaultfd"),
    ] {
        let (pid, out) = cg.scenario(args);
        if out.status.code() == Some(UNSUPPORTED) {
            common::skip_for_kernel(&args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
            continue;
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code().is_some_and(|c| c != 0)
                && stderr.contains(refused)
                && stderr.contains("Operation not permitted"),
            "{args:?}: {out:?}"
        );
        let e = tracer.wait_for(&format!("{args:?}"), |e| is(e, WX, pid));
        assert_eq!(e["data"]["wx"]["syscall"], syscall, "{args:?}: {e}");
        assert_eq!(e["data"]["wx"]["foreignWrite"], true, "{args:?}: {e}");
        assert_eq!(e["vigilaction"], "deny", "{args:?}: {e}");
    }
    // The offer to be traced: the child's request is refused, the parent's write fails.
    let (pid, out) = cg.scenario(&["traceme-poke"]);
    assert!(
        out.status.code().is_some_and(|c| c != 0) && !stdout_text(&out).contains("poked"),
        "{out:?}"
    );
    let e = tracer.wait_for("traceme-poke", |e| {
        e["type"] == WX && e["data"]["process"]["ppid"] == pid
    });
    assert_eq!(e["data"]["wx"]["syscall"], "ptrace", "{e}");
    assert_eq!(e["vigilaction"], "deny", "{e}");
    // The twin: reading another process's memory.
    let (quiet, out) = cg.scenario(&["vm-readv"]);
    assert!(out.status.success(), "{out:?}");
    assert_quiet(&tracer.stop(), &[quiet], "a read");
}

/// While no policy denies foreign writes, an enforcing agent does not look at the files
/// processes open (every open of every task passes there). The attack on that shortcut: a
/// rule that arrives later, by a reload, must be in force for the next open, and the open
/// allowed before it must have stayed silent.
#[test]
fn a_foreign_writes_rule_added_by_a_reload_holds_at_the_next_open() {
    if !root_or_skip("foreign-reload") {
        return;
    }
    let cg = TestCgroup::new("foreign-reload");
    let tmp = tempfile::tempdir().unwrap();
    let before = "  memory:\n    writeExecute: Allow\n    action: Kill\n".to_string();
    let file = write_policies(tmp.path(), &[(&cg, "foreign-reload", before)]);
    let tracer = Tracer::enforce(&file);
    // Allowed while no rule names foreign writes: silent, and it lives.
    let (quiet, out) = cg.scenario(&["proc-mem-write"]);
    assert!(out.status.success(), "{out:?}");
    let applied = tracer.state()["applied"].as_u64();
    write_policies(
        tmp.path(),
        &[(&cg, "foreign-reload", FOREIGN_WRITES_KILL.to_string())],
    );
    tracer.wait_for_state("the reload with foreignWrites: Deny applied", |s| {
        s["applied"].as_u64() != applied
    });
    let e = killed_in_the_call(&tracer, &cg, &["proc-mem-write"], WX);
    assert_eq!(e["data"]["wx"]["foreignWrite"], true, "{e}");
    assert_eq!(e["data"]["wx"]["syscall"], "open", "{e}");
    assert_quiet(&tracer.stop(), &[quiet], "a write allowed before the rule");
}

#[test]
fn wx_is_decided_on_what_the_kernel_did() {
    if !root_or_skip("wx-result") {
        return;
    }
    let lsm = common::prevention().is_ok();
    let (cg, _tmp, tracer) = policed("wx-result", WX_KILL);
    // Requests the kernel refuses made no mapping: the process lives, nothing is reported.
    let (quiet, out) = cg.scenario(&["refused-rwx"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "refused");
    // The same requests granted: killed before the mapping is used, reported with the
    // address the kernel chose.
    for scenario in ["mmap-rwx", "mprotect-rwx"] {
        let e = killed_in_the_call(&tracer, &cg, &[scenario], WX);
        // Where BPF LSM runs, `mmap_file` refuses the mapping before the kernel chooses an
        // address: the event has the one asked for (none).
        if !(lsm && scenario == "mmap-rwx") {
            assert_ne!(e["data"]["wx"]["addr"], "0x0", "{scenario}: {e}");
        }
        assert_eq!(e["vigilaction"], "kill", "{scenario}: {e}");
    }
    assert_quiet(&tracer.stop(), &[quiet], "a refused request");
}

#[test]
fn wx_through_the_32_bit_entry_is_caught() {
    if !root_or_skip("compat-wx") {
        return;
    }
    let (cg, _tmp, tracer) = policed("compat-wx", WX_KILL);
    for (scenario, syscall) in [
        ("compat-mmap-rwx", "mmap2"),
        // Its arguments are a structure in the caller's memory.
        ("compat-old-mmap-rwx", "old_mmap"),
        ("compat-mprotect-rwx", "mprotect"),
    ] {
        // Without the 32-bit entry there is nothing to test, the twin included.
        let Some(e) = killed_in_the_call_if_supported(&tracer, &cg, &[scenario], WX) else {
            return;
        };
        assert_eq!(e["data"]["wx"]["syscall"], syscall, "{e}");
        assert_eq!(e["data"]["wx"]["compat"], true, "{e}");
        assert_eq!(e["data"]["wx"]["protText"], "rwx", "{e}");
    }
    // The old mmap asking for a writable mapping only: another thread can rewrite its
    // structure until the kernel copies it. Where the BPF LSM decides on the protection the
    // kernel applies, it is a benign twin; where only the 32-bit entry's tracepoint sees it,
    // it fails closed.
    let lsm = common::prevention().is_ok();
    if !lsm {
        let e = killed_in_the_call_if_supported(&tracer, &cg, &["compat-old-mmap-rw"], WX)
            .expect("the 32-bit entry worked a moment ago");
        assert_eq!(e["data"]["wx"]["syscall"], "old_mmap", "{e}");
        assert_eq!(e["data"]["wx"]["unverifiable"], true, "{e}");
        assert_eq!(e["data"]["wx"]["protText"], "rw-", "{e}");
    }
    // The benign twins: writable, not executable, mappings through the same entry.
    let mut quiet = Vec::new();
    let twins: &[&str] = if lsm {
        &["compat-mmap-rw", "compat-old-mmap-rw"]
    } else {
        &["compat-mmap-rw"]
    };
    for scenario in twins {
        let (pid, out) = cg.scenario(&[scenario]);
        assert!(out.status.success(), "{scenario}: {out:?}");
        quiet.push(pid);
    }
    assert_quiet(&tracer.stop(), &quiet, "a writable-only compat mapping");
}

#[test]
fn a_process_started_before_the_agent_is_pinned_to_its_policy_too() {
    if !root_or_skip("pinned-before") {
        return;
    }
    let cg = TestCgroup::new("pin-before");
    let elsewhere = TestCgroup::new("pin-before-free");
    let tmp = tempfile::tempdir().unwrap();
    let (writer, denied) = common::denied_binary(tmp.path());
    let go = tmp.path().join("go");
    let marker = tmp.path().join("marker");
    // Started (and placed in its cgroup) before the agent; it judges nothing until told to
    // move out and exec a denied binary.
    let child = cg
        .command(scenario_bin())
        .args([
            "wait-then-move-to",
            go.to_str().unwrap(),
            elsewhere.dir.to_str().unwrap(),
            writer.to_str().unwrap(),
            "write-marker",
            marker.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Waits up to 900 s for its go: if the test fails before, it must not outlive it.
    let guard = common::KillOnUnwind(pid);
    let file = write_policies(
        tmp.path(),
        &[(
            &cg,
            "pin-before",
            format!("  exec:\n    deny: [{{prefix: \"{denied}/\"}}]\n    action: Kill\n"),
        )],
    );
    let tracer = Tracer::enforce(&file);
    std::fs::write(&go, b"go").unwrap();
    let status = child.wait_with_output().unwrap().status;
    std::mem::forget(guard);
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    assert!(
        !marker.exists(),
        "the process escaped by moving before its first decision"
    );
    let e = tracer.wait_for("the move", |e| is(e, "dev.vigil.cgroup.v1", pid));
    assert_eq!(e["data"]["move"]["fromCgroupId"], cg.id, "{e}");
    tracer.stop();
}

/// A script that touches the marker it is given, with mode 0755.
fn marker_script(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, "#!/bin/sh\ntouch \"$1\"\n").unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Runs `program args...` from `cwd` in `cg`: pid, how it ended, whether the marker was
/// written.
fn run_from(
    cg: &TestCgroup,
    cwd: &Path,
    program: &str,
    args: &[&str],
    marker: &Path,
) -> (u32, std::process::ExitStatus, bool) {
    let _ = std::fs::remove_file(marker);
    let child = cg
        .command(program)
        .args(args)
        .arg(marker)
        .current_dir(cwd)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let status = child.wait_with_output().unwrap().status;
    (pid, status, marker.exists())
}

#[test]
fn scripts_are_decided_on_the_file_their_interpreter_opens_not_on_the_name() {
    if !root_or_skip("script-names") {
        return;
    }
    let deny = TestCgroup::new("script-deny");
    let allow = TestCgroup::new("script-allow");
    let tmp = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(tmp.path()).unwrap();
    let denied = base.join("denied");
    let ok = base.join("ok");
    std::fs::create_dir_all(denied.join("sub")).unwrap();
    std::fs::create_dir_all(&ok).unwrap();
    let script = denied.join("s.sh");
    marker_script(&script);
    marker_script(&ok.join("ok.sh"));
    // What `ok/dlink/../s.sh` would be if `..` were taken lexically: a benign script.
    marker_script(&ok.join("s.sh"));
    std::os::unix::fs::symlink(&script, ok.join("link.sh")).unwrap();
    std::os::unix::fs::symlink(denied.join("sub"), ok.join("dlink")).unwrap();
    let scenario_dir = std::fs::canonicalize(scenario_bin())
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let file = write_policies(
        tmp.path(),
        &[
            (
                &deny,
                "script-deny",
                format!(
                    "  exec:\n    deny: [{{prefix: \"{}/\"}}]\n    action: Kill\n",
                    denied.display()
                ),
            ),
            (
                &allow,
                "script-allow",
                format!(
                    "  exec:\n    allow: [{{prefix: /usr/}}, {{prefix: \"{}/\"}}, {{prefix: \"{}/\"}}]\n    action: Kill\n",
                    ok.display(),
                    scenario_dir.display()
                ),
            ),
        ],
    );
    let lsm = common::prevention().is_ok();
    let levels_from_lsm = common::scripts_from_lsm();
    let tracer = Tracer::enforce(&file);
    let marker = base.join("marker");
    let sh = std::fs::canonicalize("/bin/sh").unwrap();
    let bin = scenario_bin();
    let bin = bin.to_str().unwrap();
    let dd = denied.to_str().unwrap();
    let od = ok.to_str().unwrap();
    let double_slash = format!("{}//denied//s.sh", base.display());
    let through_ok = format!("{od}/../denied/s.sh");
    let link = format!("{od}/link.sh");
    let dir_link = format!("{od}/dlink/../s.sh");
    let through_denied = format!("{dd}/../ok/ok.sh");

    // The denied script under names the caller chose: each is killed when the interpreter
    // opens it, before a line runs, and reported with the file's real path.
    let attacks: Vec<(&str, &TestCgroup, &Path, &str, Vec<&str>)> = vec![
        ("relative ./", &deny, &denied, "./s.sh", vec![]),
        (
            "relative with ..",
            &deny,
            &base,
            "ok/../denied/s.sh",
            vec![],
        ),
        ("absolute with //", &deny, &base, &double_slash, vec![]),
        ("absolute with ..", &deny, &base, &through_ok, vec![]),
        ("symlink to it", &deny, &base, &link, vec![]),
        (
            "a symlinked directory's ..",
            &deny,
            &base,
            &dir_link,
            vec![],
        ),
        (
            "execveat(dirfd)",
            &deny,
            &base,
            bin,
            vec!["exec-at", dd, "s.sh"],
        ),
        ("allowlist, relative", &allow, &denied, "./s.sh", vec![]),
        (
            "allowlist, symlinked directory's ..",
            &allow,
            &base,
            &dir_link,
            vec![],
        ),
        (
            "allowlist, execveat(dirfd)",
            &allow,
            &base,
            bin,
            vec!["exec-at", dd, "s.sh"],
        ),
    ];
    for (what, cg, cwd, program, args) in &attacks {
        let (pid, status, ran) = run_from(cg, cwd, program, args, &marker);
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{what}: {status}");
        assert!(!ran, "{what}: the denied script ran");
        // Where BPF LSM runs, the exec of the script itself is refused, on the file the
        // kernel opened; elsewhere the interpreter is killed as it opens the script.
        let e = tracer.wait_for(what, |e| {
            is(e, EXEC, pid)
                && if lsm {
                    e["data"]["exec"]["prevented"] == true
                } else {
                    e["data"]["exec"]["opened"] == true
                }
        });
        assert_eq!(
            e["data"]["exec"]["path"],
            script.to_str().unwrap(),
            "{what}: {e}"
        );
        if levels_from_lsm {
            assert_eq!(e["data"]["exec"]["interpreted"], true, "{what}: {e}");
        }
        if !lsm {
            assert_eq!(e["data"]["exec"]["script"], true, "{what}: {e}");
            assert_eq!(
                e["data"]["process"]["exe"],
                sh.to_str().unwrap(),
                "{what}: {e}"
            );
        }
        let rule = if std::ptr::eq(*cg, &deny) {
            "spec.exec.deny[0]"
        } else {
            "spec.exec.allow"
        };
        assert_eq!(e["data"]["policy"]["rule"], rule, "{what}: {e}");
        assert_eq!(e["vigilaction"], "kill", "{what}: {e}");
    }

    // The benign twins: allowed scripts under the same kinds of names run, silently.
    let twins: Vec<(&str, &TestCgroup, &Path, &str, Vec<&str>)> = vec![
        ("relative ./", &deny, &ok, "./ok.sh", vec![]),
        ("relative", &deny, &base, "ok/ok.sh", vec![]),
        (
            "absolute with .. through the denied directory",
            &deny,
            &base,
            &through_denied,
            vec![],
        ),
        (
            "the lexical reading of the symlinked directory",
            &deny,
            &base,
            "ok/s.sh",
            vec![],
        ),
        (
            "execveat(dirfd)",
            &deny,
            &base,
            bin,
            vec!["exec-at", od, "ok.sh"],
        ),
        ("allowlist, relative", &allow, &ok, "./ok.sh", vec![]),
        (
            "allowlist, execveat(dirfd)",
            &allow,
            &base,
            bin,
            vec!["exec-at", od, "ok.sh"],
        ),
    ];
    let mut quiet = Vec::new();
    for (what, cg, cwd, program, args) in &twins {
        let (pid, status, ran) = run_from(cg, cwd, program, args, &marker);
        assert!(status.success() && ran, "{what}: {status}, ran: {ran}");
        quiet.push((what, pid));
    }
    let events = tracer.stop();
    for (what, pid) in quiet {
        let noisy: Vec<_> = events.iter().filter(|e| is(e, EXEC, pid)).collect();
        assert!(
            noisy.is_empty(),
            "{what}: a benign script was reported: {noisy:?}"
        );
    }
}

/// Writes an executable script with the given text.
fn script_with(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn every_level_of_a_nested_interpreter_chain_is_decided() {
    if !root_or_skip("script-chain") {
        return;
    }
    let cg = TestCgroup::new("script-chain");
    let tmp = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(tmp.path()).unwrap();
    let denied = base.join("denied");
    let ok = base.join("ok");
    std::fs::create_dir_all(&denied).unwrap();
    std::fs::create_dir_all(&ok).unwrap();
    let (d, o) = (denied.display(), ok.display());
    // Two levels: A (allowed) names a script interpreter B, which sh runs as `sh B A marker`.
    for dir in [&denied, &ok] {
        script_with(&dir.join("mid"), "#!/bin/sh\ntouch \"$2\"\n");
    }
    script_with(&ok.join("two-denied"), &format!("#!{d}/mid\n"));
    script_with(&ok.join("two-ok"), &format!("#!{o}/mid\n"));
    // Three levels: A names B, B names C (allowed), C sources B: `sh C B A marker`.
    script_with(&ok.join("sourcer"), "#!/bin/sh\n. \"$1\"\n");
    for dir in [&denied, &ok] {
        script_with(&dir.join("b"), &format!("#!{o}/sourcer\ntouch \"$3\"\n"));
    }
    script_with(&ok.join("three-denied"), &format!("#!{d}/b\n"));
    script_with(&ok.join("three-ok"), &format!("#!{o}/b\n"));
    // Four levels: deeper than the names the kernel side follows. `sh sourcer c4 b4 four
    // marker`: sourcer sources c4, which touches the marker where the chain runs.
    script_with(&ok.join("c4"), &format!("#!{o}/sourcer\ntouch \"$4\"\n"));
    script_with(&ok.join("b4"), &format!("#!{o}/c4\n"));
    script_with(&ok.join("four"), &format!("#!{o}/b4\n"));
    let file = write_policies(
        tmp.path(),
        &[(
            &cg,
            "script-chain",
            format!("  exec:\n    deny: [{{prefix: \"{d}/\"}}]\n    action: Kill\n"),
        )],
    );
    let lsm = common::prevention().is_ok();
    let tracer = Tracer::enforce(&file);
    let marker = base.join("marker");
    let sh = std::fs::canonicalize("/bin/sh").unwrap();

    for (what, program, level) in [
        ("two levels", "two-denied", denied.join("mid")),
        ("three levels", "three-denied", denied.join("b")),
    ] {
        let program = ok.join(program);
        let (pid, status, ran) = run_from(&cg, &base, program.to_str().unwrap(), &[], &marker);
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{what}: {status}");
        assert!(!ran, "{what}: the denied level ran");
        // Where BPF LSM runs, `bprm_check_security` refuses the denied level as the kernel
        // chooses it for an interpreter, before any runs; elsewhere the interpreter is killed
        // as it opens it.
        let e = tracer.wait_for(what, |e| {
            is(e, EXEC, pid)
                && if lsm {
                    e["data"]["exec"]["prevented"] == true
                } else {
                    e["data"]["exec"]["opened"] == true
                }
        });
        assert_eq!(
            e["data"]["exec"]["path"],
            level.to_str().unwrap(),
            "{what}: {e}"
        );
        if !lsm {
            assert_eq!(
                e["data"]["process"]["exe"],
                sh.to_str().unwrap(),
                "{what}: {e}"
            );
        }
        assert_eq!(
            e["data"]["policy"]["rule"], "spec.exec.deny[0]",
            "{what}: {e}"
        );
    }

    // Deeper than the names followed: not verifiable, so a Kill policy kills and says why.
    // Where `bprm_check_security` decides every level nothing is followed by name, and a
    // chain of allowed levels is as benign as a shorter one.
    let four = ok.join("four");
    let levels_from_lsm = common::scripts_from_lsm();
    if !levels_from_lsm {
        let (pid, status, ran) = run_from(&cg, &base, four.to_str().unwrap(), &[], &marker);
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "four levels: {status}"
        );
        assert!(!ran, "four levels ran");
        let e = tracer.wait_for("four levels", |e| is(e, EXEC, pid));
        assert_eq!(e["data"]["exec"]["unverifiable"], true, "{e}");
        assert_eq!(e["data"]["policy"]["rule"], "spec.exec", "{e}");
    }

    // The twins: the same chains through allowed levels run, silently.
    let mut quiet = Vec::new();
    let mut twins = vec!["two-ok", "three-ok"];
    if levels_from_lsm {
        twins.push("four");
    }
    for program in twins {
        let program = ok.join(program);
        let (pid, status, ran) = run_from(&cg, &base, program.to_str().unwrap(), &[], &marker);
        assert!(status.success() && ran, "{}: {status}", program.display());
        quiet.push(pid);
    }
    let events = tracer.stop();
    for pid in quiet {
        let noisy: Vec<_> = events.iter().filter(|e| is(e, EXEC, pid)).collect();
        assert!(noisy.is_empty(), "a benign chain was reported: {noisy:?}");
    }
}

/// Under Alert nothing is refused and nothing waits for a kill: a denied script, and a denied
/// level of a chain, are each reported on their own file (as the kernel picked it where BPF
/// LSM decides every level, as the interpreter opened it elsewhere) and run on.
#[test]
fn a_denied_script_under_alert_is_reported_on_its_file_and_runs() {
    if !root_or_skip("script-alert") {
        return;
    }
    let cg = TestCgroup::new("script-alert");
    let tmp = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(tmp.path()).unwrap();
    let denied = base.join("denied");
    let ok = base.join("ok");
    std::fs::create_dir_all(&denied).unwrap();
    std::fs::create_dir_all(&ok).unwrap();
    let (d, o) = (denied.display(), ok.display());
    marker_script(&denied.join("s.sh"));
    marker_script(&ok.join("ok.sh"));
    std::os::unix::fs::symlink(denied.join("s.sh"), ok.join("link.sh")).unwrap();
    // `ok/two` names the denied interpreter script `denied/mid`, which sh runs.
    script_with(&denied.join("mid"), "#!/bin/sh\ntouch \"$2\"\n");
    script_with(&ok.join("mid"), "#!/bin/sh\ntouch \"$2\"\n");
    script_with(&ok.join("two"), &format!("#!{d}/mid\n"));
    script_with(&ok.join("two-ok"), &format!("#!{o}/mid\n"));
    let file = write_policies(
        tmp.path(),
        &[(
            &cg,
            "script-alert",
            format!("  exec:\n    deny: [{{prefix: \"{d}/\"}}]\n    action: Alert\n"),
        )],
    );
    let levels_from_lsm = common::scripts_from_lsm();
    let tracer = Tracer::enforce(&file);
    let marker = base.join("marker");
    let how = if levels_from_lsm {
        "interpreted"
    } else {
        "opened"
    };
    for (what, cwd, program, level) in [
        ("relative ./", &denied, "./s.sh", denied.join("s.sh")),
        ("symlink to it", &ok, "./link.sh", denied.join("s.sh")),
        ("a level between", &base, "ok/two", denied.join("mid")),
    ] {
        let (pid, status, ran) = run_from(&cg, cwd, program, &[], &marker);
        assert!(
            status.success() && ran,
            "{what}: Alert stops nothing ({status})"
        );
        let e = tracer.wait_for(what, |e| is(e, EXEC, pid) && e["data"]["exec"][how] == true);
        assert_eq!(
            e["data"]["exec"]["path"],
            level.to_str().unwrap(),
            "{what}: {e}"
        );
        assert_eq!(
            e["data"]["policy"]["rule"], "spec.exec.deny[0]",
            "{what}: {e}"
        );
        assert_eq!(e["vigilaction"], "alert", "{what}: {e}");
        assert!(e["data"]["exec"].get("prevented").is_none(), "{what}: {e}");
        if levels_from_lsm {
            // Reported before the new image exists: the arguments the caller passed, read
            // from its memory at that level (the exec's own entry is no longer watched).
            assert_eq!(e["data"]["exec"]["argsMissing"], false, "{what}: {e}");
            assert_eq!(
                e["data"]["exec"]["args"],
                serde_json::json!([program, marker.to_str().unwrap()]),
                "{what}: {e}"
            );
        }
    }
    // A denied binary is no interpreted level: one report, of the exec itself.
    let binary = denied.join("true");
    std::fs::copy("/bin/true", &binary).unwrap();
    let (binary_pid, status, _) = run_from(&cg, &base, binary.to_str().unwrap(), &[], &marker);
    assert!(status.success(), "Alert stops nothing ({status})");
    tracer.wait_for("the denied binary", |e| is(e, EXEC, binary_pid));
    // The benign twins under the same kinds of names: silent.
    let mut quiet = Vec::new();
    for (cwd, program) in [(&ok, "./ok.sh"), (&base, "ok/two-ok")] {
        let (pid, status, ran) = run_from(&cg, cwd, program, &[], &marker);
        assert!(status.success() && ran, "{program}: {status}");
        quiet.push(pid);
    }
    let events = tracer.stop();
    for pid in quiet {
        let noisy: Vec<_> = events.iter().filter(|e| is(e, EXEC, pid)).collect();
        assert!(noisy.is_empty(), "a benign script was reported: {noisy:?}");
    }
    let reports: Vec<_> = events
        .iter()
        .filter(|e| is(e, EXEC, binary_pid) && e["data"]["exec"]["mapped"] != true)
        .collect();
    assert!(
        reports.len() == 1
            && reports[0]["data"]["exec"].get("interpreted").is_none()
            && reports[0]["data"]["exec"]["path"] == binary.to_str().unwrap(),
        "the denied binary: {reports:?}"
    );
}

#[test]
fn mount_tricks_in_a_user_namespace_are_unverifiable_and_fail_closed() {
    if !root_or_skip("user-mounts") {
        return;
    }
    let allow = TestCgroup::new("mounts-allow");
    let deny = TestCgroup::new("mounts-deny");
    let tmp = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(tmp.path()).unwrap();
    let denied = base.join("denied");
    let ok = base.join("ok");
    let prog = writer_at(&denied.join("prog"));
    let ok_prog = writer_at(&ok.join("prog"));
    let ok_other = writer_at(&ok.join("other"));
    std::fs::create_dir_all(denied.join("usr")).unwrap();
    for (link, to) in [
        ("lib64", "usr/lib64"),
        ("lib", "usr/lib"),
        ("bin", "usr/bin"),
    ] {
        std::os::unix::fs::symlink(to, denied.join(link)).unwrap();
    }
    let scenario_dir = std::fs::canonicalize(scenario_bin())
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let file = write_policies(
        tmp.path(),
        &[
            (
                &allow,
                "mounts-allow",
                format!(
                    "  exec:\n    allow: [{{prefix: /usr/}}, {{prefix: \"{}/\"}}, {{prefix: \"{}/\"}}]\n    action: Kill\n",
                    ok.display(),
                    scenario_dir.display()
                ),
            ),
            (
                &deny,
                "mounts-deny",
                format!(
                    "  exec:\n    deny: [{{prefix: \"{}/\"}}]\n    action: Kill\n",
                    denied.display()
                ),
            ),
        ],
    );
    let tracer = Tracer::enforce(&file);
    let marker = base.join("marker");
    let m = marker.to_str().unwrap();
    let (p, d, o) = (
        prog.to_str().unwrap(),
        denied.to_str().unwrap(),
        ok.to_str().unwrap(),
    );
    let other = ok_other.to_str().unwrap();

    let attacks: Vec<(&str, &TestCgroup, Vec<&str>, &str)> = vec![
        (
            "allowlist: a denied binary bind-mounted over an allowed one",
            &allow,
            vec!["userns-exec", "bind", p, other, "write-marker", m],
            "spec.exec.allow",
        ),
        (
            "allowlist: a tmpfs over the allowed directory",
            &allow,
            vec!["userns-exec", "tmpfs", o, p, "prog", "write-marker", m],
            "spec.exec.allow",
        ),
        (
            "deny list: a denied binary bind-mounted over an allowed one",
            &deny,
            vec!["userns-exec", "bind", p, other, "write-marker", m],
            "spec.exec",
        ),
        (
            "deny list: the denied directory as a detached mount",
            &deny,
            vec!["userns-exec", "detached", d, "prog", "write-marker", m],
            "spec.exec",
        ),
        (
            "deny list: pivot_root into the denied directory",
            &deny,
            vec![
                "userns-exec",
                "pivot",
                d,
                "/prog",
                "write-marker",
                "/marker",
            ],
            "spec.exec",
        ),
    ];
    for (what, cg, args, rule) in &attacks {
        let _ = std::fs::remove_file(&marker);
        let (pid, out) = cg.scenario(args);
        assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{what}: {out:?}");
        assert!(!marker.exists(), "{what}: it ran");
        let e = tracer.wait_for(what, |e| is(e, EXEC, pid));
        assert_eq!(e["data"]["exec"]["userMount"], true, "{what}: {e}");
        assert_eq!(e["data"]["exec"]["unverifiable"], true, "{what}: {e}");
        assert_eq!(e["data"]["policy"]["rule"], *rule, "{what}: {e}");
        assert_eq!(e["vigilaction"], "kill", "{what}: {e}");
    }

    // The twins: the same namespaces without a trick. What `unshare -Urm` inherits shows
    // files where the system put them.
    let ok_p = ok_prog.to_str().unwrap();
    let mut quiet = Vec::new();
    for (what, cg) in [("allowlist", &allow), ("deny list", &deny)] {
        let _ = std::fs::remove_file(&marker);
        let (pid, out) = cg.scenario(&["userns-exec", "plain", ok_p, "write-marker", m]);
        assert!(out.status.success() && marker.exists(), "{what}: {out:?}");
        let (pid_true, out) = cg.scenario(&["userns-exec", "plain", "/usr/bin/true"]);
        assert!(out.status.success(), "{what}, /usr/bin/true: {out:?}");
        quiet.extend([pid, pid_true]);
    }
    let events = tracer.stop();
    for pid in quiet {
        let noisy: Vec<_> = events.iter().filter(|e| is(e, EXEC, pid)).collect();
        assert!(
            noisy.is_empty(),
            "a plain exec in a user namespace was reported: {noisy:?}"
        );
    }
}

const PT_LOAD: u32 = 1;
const PT_GNU_STACK: u32 = 0x6474_e551;
const PF_X: u32 = 1;
const PF_W: u32 = 2;

/// A copy of the scenario binary at `dst` in which every program header of type `p_type`
/// that has all of `need` gets `add` in its flags: what a linker writes for `-z execstack`
/// (`PT_GNU_STACK` + `PF_X`) or for a writable and executable segment.
fn patched_scenario(dst: &Path, p_type: u32, need: u32, add: u32) -> PathBuf {
    let mut elf = std::fs::read(scenario_bin()).unwrap();
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes(b[at..at + 2].try_into().unwrap());
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let phentsize = u16_at(&elf, 0x36) as usize;
    let phnum = u16_at(&elf, 0x38) as usize;
    let mut patched = 0;
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let kind = u32::from_le_bytes(elf[at..at + 4].try_into().unwrap());
        let flags = u32::from_le_bytes(elf[at + 4..at + 8].try_into().unwrap());
        if kind == p_type && flags & need == need {
            elf[at + 4..at + 8].copy_from_slice(&(flags | add).to_le_bytes());
            patched += 1;
        }
    }
    assert!(
        patched > 0,
        "no program header of type {p_type:#x} to patch"
    );
    std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
    std::fs::write(dst, elf).unwrap();
    std::fs::set_permissions(dst, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    dst.to_path_buf()
}

#[test]
fn memory_the_kernel_maps_at_exec_and_files_made_executable_later_are_judged() {
    if !root_or_skip("image-wx") {
        return;
    }
    let cg = TestCgroup::new("image-wx");
    let exempt_cg = TestCgroup::new("image-wx-exempt");
    let tmp = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(tmp.path()).unwrap();
    let denied = base.join("denied");
    let execstack = patched_scenario(&base.join("execstack"), PT_GNU_STACK, 0, PF_X);
    let rwx = patched_scenario(&base.join("rwx"), PT_LOAD, PF_W, PF_X);
    let jit = patched_scenario(&base.join("jit").join("execstack"), PT_GNU_STACK, 0, PF_X);
    let plain = writer_at(&base.join("plain"));
    let denied_lib = denied.join("lib.so");
    std::fs::create_dir_all(&denied).unwrap();
    std::fs::copy("/bin/true", &denied_lib).unwrap();
    let allowed_lib = base.join("lib.so");
    std::fs::copy("/bin/true", &allowed_lib).unwrap();
    let file = write_policies(
        tmp.path(),
        &[
            (
                &cg,
                "image-wx",
                format!(
                    "  exec:\n    deny: [{{prefix: \"{}/\"}}]\n    action: Kill\n  memory:\n    writeExecute: Deny\n    action: Kill\n",
                    denied.display()
                ),
            ),
            (
                &exempt_cg,
                "image-wx-exempt",
                format!(
                    "  memory:\n    writeExecute: Deny\n    allowExecutables: [\"{}\"]\n    action: Kill\n",
                    jit.display()
                ),
            ),
        ],
    );
    let lsm = common::prevention().is_ok();
    let tracer = Tracer::enforce(&file);
    let marker = base.join("marker");

    // Images that ask the kernel for W^X memory: killed before their first instruction.
    // Where BPF LSM runs, the kernel's own mapping of an RWX segment during the exec passes
    // `mmap_file`, which refuses it (the exec fails there); the stack is set up without a
    // hook, and the new image is judged at its exec.
    for (what, program, exec_stack) in [
        ("executable stack", &execstack, true),
        ("RWX segment", &rwx, false),
    ] {
        let (pid, status, ran) = run_writer(&cg, program, &marker);
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{what}: {status}");
        assert!(!ran, "{what}: the image ran");
        let e = tracer.wait_for(what, |e| is(e, WX, pid));
        let syscall = if lsm && !exec_stack { "mmap" } else { "execve" };
        assert_eq!(e["data"]["wx"]["syscall"], syscall, "{what}: {e}");
        assert!(
            e["data"]["wx"]["protText"].as_str().unwrap().contains('x'),
            "{what}: {e}"
        );
        if exec_stack {
            assert_eq!(e["data"]["wx"]["execStack"], true, "{what}: {e}");
        } else {
            assert_eq!(e["data"]["wx"]["writeExecute"], true, "{what}: {e}");
        }
        assert_eq!(e["vigilaction"], "kill", "{what}: {e}");
    }

    // A file from a denied place mapped readable, then made executable: killed in mprotect.
    let (pid, out) = cg.scenario(&["mprotect-file-exec", denied_lib.to_str().unwrap()]);
    assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{out:?}");
    let e = tracer.wait_for("the file made executable", |e| is(e, EXEC, pid));
    assert_eq!(e["data"]["exec"]["mapped"], true, "{e}");
    assert_eq!(
        e["data"]["exec"]["path"],
        denied_lib.to_str().unwrap(),
        "{e}"
    );
    assert_eq!(e["data"]["policy"]["rule"], "spec.exec.deny[0]", "{e}");

    // The twins: a plain image, an allowed file made executable, and an executable stack
    // in an image the policy exempts.
    let mut quiet = Vec::new();
    let (pid, status, ran) = run_writer(&cg, &plain, &marker);
    assert!(status.success() && ran, "plain: {status}");
    quiet.push(pid);
    let (pid, out) = cg.scenario(&["mprotect-file-exec", allowed_lib.to_str().unwrap()]);
    assert_eq!(stdout_text(&out), "executable", "{out:?}");
    quiet.push(pid);
    let (pid, status, ran) = run_writer(&exempt_cg, &jit, &marker);
    assert!(status.success() && ran, "exempt: {status}");
    quiet.push(pid);
    let events = tracer.stop();
    for pid in quiet {
        let noisy: Vec<_> = events
            .iter()
            .filter(|e| pid_of(e) == u64::from(pid))
            .collect();
        assert!(
            noisy.is_empty(),
            "a benign image or mapping was reported: {noisy:?}"
        );
    }
}

fn stdout_text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn every_32_bit_call_is_a_violation_where_compat_syscalls_are_denied() {
    if !root_or_skip("compat-deny") {
        return;
    }
    let cg = TestCgroup::new("compat-deny");
    let other = TestCgroup::new("compat-allow");
    let tmp = tempfile::tempdir().unwrap();
    let allow = (
        &other,
        "compat-allow",
        "  memory:\n    writeExecute: Deny\n    action: Kill\n".to_string(),
    );
    let file = write_policies(tmp.path(), std::slice::from_ref(&allow));
    let tracer = Tracer::enforce(&file);
    // Where the LSM programs see every other 32-bit call, raw `sys_enter` (every system call
    // of every task) waits for a set that denies the 32-bit entry: the rule comes by a
    // reload, and must hold at the next call.
    let late = common::sys_enter_late();
    let applied = tracer.state()["applied"].as_u64();
    write_policies(
        tmp.path(),
        &[
            (
                &cg,
                "compat-deny",
                "  memory:\n    writeExecute: Allow\n    compatSyscalls: Deny\n    action: Kill\n"
                    .to_string(),
            ),
            allow,
        ],
    );
    tracer.wait_for_state("the reload with compatSyscalls: Deny applied", |s| {
        s["applied"].as_u64() != applied
    });
    if late {
        tracer.wait_for_log("raw sys_enter attached");
    }
    let attached = tracer
        .stderr_lines()
        .iter()
        .filter(|l| l.contains("raw sys_enter attached"))
        .count();
    assert_eq!(attached, usize::from(late), "{:?}", tracer.stderr_lines());
    // A writable-only mapping through the 32-bit entry: no W^X, but the entry is forbidden.
    let Some(e) = killed_in_the_call_if_supported(&tracer, &cg, &["compat-mmap-rw"], WX) else {
        return;
    };
    assert_eq!(e["data"]["wx"]["syscall"], "compat", "{e}");
    // i386 mmap2.
    assert_eq!(e["data"]["wx"]["compatSyscall"], 192, "{e}");
    assert_eq!(e["data"]["wx"]["compat"], true, "{e}");
    assert_eq!(
        e["data"]["policy"]["rule"], "spec.memory.compatSyscalls",
        "{e}"
    );

    // The twins: 64-bit calls in the same cgroup, and the same 32-bit call where the entry
    // is not forbidden.
    let (quiet_64, out) = cg.scenario(&["mmap-file-rx", "/bin/true"]);
    assert!(out.status.success(), "{out:?}");
    let (quiet_32, out) = other.scenario(&["compat-mmap-rw"]);
    assert!(out.status.success(), "{out:?}");
    assert_quiet(&tracer.stop(), &[quiet_64, quiet_32], "a benign call");
}

#[test]
fn a_userfaultfd_is_a_foreign_write_under_foreign_writes_deny() {
    if !root_or_skip("userfaultfd") {
        return;
    }
    let (cg, _tmp, tracer) = policed("uffd", FOREIGN_WRITES_KILL);
    let free = TestCgroup::new("uffd-free");
    let mut quiet = Vec::new();
    // `/dev/userfaultfd` came in 6.1: before it there is only the system call.
    let device = Path::new("/sys/class/misc/userfaultfd").exists();
    if !device {
        common::skip_for_kernel(
            "a_userfaultfd_is_a_foreign_write_under_foreign_writes_deny (the device)",
            "/dev/userfaultfd (6.1 and newer)",
        );
    }
    // `compat`: the 32-bit system call, which no syscall tracepoint sees.
    let ways: &[&str] = if device {
        &["syscall", "compat", "device"]
    } else {
        &["syscall", "compat"]
    };
    for &how in ways {
        let Some(e) = killed_in_the_call_if_supported(&tracer, &cg, &["userfaultfd", how], WX)
        else {
            assert_eq!(how, "compat", "only the 32-bit entry may be missing");
            continue;
        };
        assert_eq!(e["data"]["wx"]["syscall"], "userfaultfd", "{how}: {e}");
        assert_eq!(e["data"]["wx"]["foreignWrite"], true, "{how}: {e}");
        assert_eq!(
            e["data"]["policy"]["rule"], "spec.memory.foreignWrites",
            "{how}: {e}"
        );
        // The twin: the same outside any policy.
        let (pid, out) = free.scenario(&["userfaultfd", how]);
        assert_eq!(stdout_text(&out), "created", "{how}: {out:?}");
        quiet.push(pid);
    }
    assert_quiet(&tracer.stop(), &quiet, "a userfaultfd outside the policy");
}
