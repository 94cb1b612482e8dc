//! Staging for kernel tests: cgroups that stand in for pods, a running `vigil trace`, and
//! scenario processes placed inside the staged cgroup. Everything is removed on drop.

use std::{
    ffi::CString,
    io::{BufRead, BufReader},
    os::unix::{ffi::OsStrExt, fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;

/// True when the kernel tests can run. Outside CI a missing privilege skips with a reason;
/// in CI (`CI=true`) it fails the run.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: kernel tests need root, and CI must run them");
    }
    eprintln!("skipped {test}: kernel tests need root");
    false
}

/// Skips for a kernel feature this kernel lacks (allowed in CI too), with the reason.
pub fn skip_for_kernel(test: &str, reason: &str) {
    eprintln!("skipped {test}: this kernel lacks {reason}");
}

fn built_binary(env: &str, name: &str) -> PathBuf {
    if let Ok(path) = std::env::var(env) {
        return PathBuf::from(path);
    }
    // target/<profile>/deps/<test binary> -> target/<profile>/<name>
    let exe = std::env::current_exe().expect("test binary path");
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(name))
        .expect("target dir");
    assert!(
        candidate.exists(),
        "{} not found; build it first (cargo xtask build) or set {env}",
        candidate.display()
    );
    candidate
}

/// What `vigil doctor` says of prevention here: `Ok(())` when BPF LSM programs attach, else
/// its reason.
pub fn prevention() -> Result<(), String> {
    let line = doctor_line("prevention (BPF LSM)");
    if line.starts_with("ok") {
        Ok(())
    } else {
        Err(line)
    }
}

/// The line of `vigil doctor`'s output about `check`.
fn doctor_line(check: &str) -> String {
    let text = doctor_output();
    text.lines()
        .find(|l| l.contains(check))
        .unwrap_or_else(|| panic!("vigil doctor says nothing of {check}:\n{text}"))
        .to_owned()
}

/// `vigil doctor`'s report for this boot of the kernel and this build of the agent. Every
/// doctor run loads and verifies every program (minutes under emulation), and what the
/// kernel offers cannot change within a boot, so the tests that only ask which hooks this
/// kernel has share one run: kept for the test process, and in a file named by the boot and
/// the binary's identity for the other test binaries. The doctor's own test runs it afresh
/// ([`doctor_now`]), and its run fills that file.
fn doctor_output() -> String {
    static OUTPUT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    OUTPUT
        .get_or_init(|| {
            if let Ok(text) = std::fs::read_to_string(doctor_cache()) {
                return text;
            }
            String::from_utf8_lossy(&doctor_now().stdout).into_owned()
        })
        .clone()
}

/// Runs `vigil doctor` now, and keeps its report for [`doctor_output`].
pub fn doctor_now() -> Output {
    let out = Command::new(vigil_bin())
        .arg("doctor")
        .output()
        .expect("running vigil doctor");
    let cache = doctor_cache();
    // Written whole, then renamed: a reader sees all of it or none.
    let partial = cache.with_extension(format!("{}.partial", std::process::id()));
    if std::fs::write(&partial, &out.stdout).is_ok() {
        let _ = std::fs::rename(&partial, &cache);
    }
    out
}

/// Where [`doctor_now`] keeps the report: named by the boot and the binary's identity.
fn doctor_cache() -> PathBuf {
    let bin = vigil_bin();
    let meta = std::fs::metadata(&bin).expect("vigil binary metadata");
    let boot =
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("reading the boot id");
    std::env::temp_dir().join(format!(
        "vigil-test-doctor-{}-{}-{}-{}.txt",
        boot.trim(),
        meta.dev(),
        meta.ino(),
        meta.mtime_nsec() + meta.mtime() * 1_000_000_000
    ))
}

/// Whether the BPF LSM programs are this kernel's W^X hooks (`vigil doctor`'s "W^X hooks"):
/// they report a request before the kernel carries it out, so an `mmap` event has the address
/// asked for rather than the one the kernel chose.
pub fn wx_from_lsm() -> bool {
    doctor_line("W^X hooks").contains("BPF LSM programs")
}

/// Whether `bprm_check_security` decides every level of a script chain (`vigil doctor`'s
/// "script hooks"): a script is then judged as the kernel picks it, not when its interpreter
/// opens it.
pub fn scripts_from_lsm() -> bool {
    doctor_line("script hooks").contains("bprm_check_security")
}

/// Whether BPF LSM programs judge foreign writes by system call (`vigil doctor`'s "foreign
/// write hooks"): `ptrace` attach and `PTRACE_TRACEME`, `process_vm_writev` and userfaultfds
/// are then refused before the act, and a `PTRACE_TRACEME` is the tracee's own request.
pub fn foreign_calls_from_lsm() -> bool {
    doctor_line("foreign write hooks").contains("BPF LSM programs")
}

/// Whether `vigil run` attaches raw `sys_enter` only for a set that denies 32-bit calls
/// (`vigil doctor`'s "32-bit entry hook").
pub fn sys_enter_late() -> bool {
    doctor_line("32-bit entry hook").contains("only once a policy denies")
}

/// Whether `bprm_execve`'s fexit program checks each exec's return instead of raw `sys_exit`
/// (`vigil doctor`'s "exec return hook").
pub fn exec_return_by_fexit() -> bool {
    doctor_output().lines().any(|l| {
        l.contains("exec return hook") && l.contains("fexit program on bprm_execve checks")
    })
}

/// An exec held since before the agent started is checked on its return only by raw
/// `sys_exit`: an fexit program runs for calls that enter its function after it attached.
/// Tells and says so where the fexit program checks the return.
pub fn return_check_sees_an_exec_under_way(test: &str) -> bool {
    if exec_return_by_fexit() {
        skip_for_kernel(
            test,
            "raw sys_exit as the exec's return check (bprm_execve's fexit program checks it \
             here, which an exec under way before it attached does not pass, as a process \
             started before the agent; an exec no judge saw comes only from preemption here: \
             allowed_and_denied_execs_sharing_one_cpu)",
        );
        return false;
    }
    true
}

/// Whether `vigil run` attaches raw `sys_exit` only for a set that kills (`vigil doctor`'s
/// "exec return hook").
pub fn sys_exit_late() -> bool {
    // The line is there only where the exec program reads the exec's entry.
    doctor_output()
        .lines()
        .any(|l| l.contains("exec return hook") && l.contains("only once a policy kills"))
}

pub fn vigil_bin() -> PathBuf {
    built_binary("VIGIL_BIN", "vigil")
}

pub fn scenario_bin() -> PathBuf {
    built_binary("VIGIL_SCENARIO_BIN", "vigil-scenario")
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// How long a test waits for something that must happen before it calls it a failure. A
/// liveness bound, not a latency claim: on a loaded machine (two cores, other suites running)
/// an event or a reload can take seconds; `cargo xtask bench` is where speed is measured.
/// 60 s, times `VIGIL_TEST_PACE` (a whole number, default 1), which `cargo xtask vm-test`
/// sets for kernels under emulation, where loading the programs alone takes a minute.
pub fn liveness() -> Duration {
    let pace: u32 = std::env::var("VIGIL_TEST_PACE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|p| *p > 0)
        .unwrap_or(1);
    Duration::from_secs(60) * pace
}

/// Polls `poll` every 20 ms until it yields a value; fails naming `what` (and what `poll`
/// last saw, via `seen`) after `limit`.
pub fn wait_until<T>(
    what: &str,
    limit: Duration,
    mut poll: impl FnMut() -> Option<T>,
    seen: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = poll() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {} s; {}",
            limit.as_secs(),
            seen()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `docs/event.schema.json`, compiled once for every test of a binary.
pub fn event_schema() -> &'static jsonschema::Validator {
    static SCHEMA: std::sync::LazyLock<jsonschema::Validator> = std::sync::LazyLock::new(|| {
        let schema: Value = serde_json::from_str(include_str!("../../../docs/event.schema.json"))
            .expect("docs/event.schema.json is JSON");
        jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&schema)
            .unwrap_or_else(|e| panic!("docs/event.schema.json does not compile: {e}"))
    });
    &SCHEMA
}

/// Where and why `event` does not match the schema (empty: it does).
pub fn schema_errors(event: &Value) -> Vec<String> {
    event_schema()
        .iter_errors(event)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// A command whose process joins the cgroup at `dir` between fork and exec.
pub fn in_cgroup(dir: &Path, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).expect("path");
    let mut cmd = Command::new(program);
    // SAFETY: only async-signal-safe calls (open, write, close) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let rc = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if rc != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Runs `program args` inside the cgroup at `dir`, output discarded; its pid and how it ended.
pub fn run_in_cgroup(dir: &Path, program: &Path, args: &[&str]) -> (u32, std::process::ExitStatus) {
    let child = in_cgroup(dir, program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning");
    let pid = child.id();
    (pid, child.wait_with_output().expect("waiting").status)
}

/// A copy of the scenario binary in `dir/denied/writer`; returns it and the real path of
/// `dir/denied` (what a policy names).
pub fn denied_binary(dir: &Path) -> (PathBuf, String) {
    let denied = dir.join("denied");
    std::fs::create_dir_all(&denied).expect("denied dir");
    let writer = denied.join("writer");
    std::fs::copy(scenario_bin(), &writer).expect("copying the scenario binary");
    (
        writer,
        std::fs::canonicalize(&denied)
            .expect("real path")
            .display()
            .to_string(),
    )
}

/// Removes a cgroup directory. The processes placed there have been waited for, but the
/// kernel may still be tearing them down, so it retries for two seconds. False if it is
/// still there.
pub fn remove_cgroup_dir(dir: &Path) -> bool {
    for _ in 0..100 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A cgroup v2 directory standing in for a pod; removed on drop.
pub struct TestCgroup {
    pub root: PathBuf,
    pub dir: PathBuf,
    /// Path relative to the cgroup v2 root, as `--cgroup` takes it.
    pub rel: String,
    pub id: u64,
}

impl TestCgroup {
    pub fn new(label: &str) -> Self {
        let root = vigil::metadata::cgroup::detect_root().expect("cgroup v2 root");
        let rel = format!(
            "/vigil-test-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = root.join(rel.trim_start_matches('/'));
        std::fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", dir.display()));
        let id = std::fs::metadata(&dir).expect("cgroup metadata").ino();
        Self { root, dir, rel, id }
    }

    /// A cgroup below `parent`, removed before it.
    pub fn nested(parent: &TestCgroup, name: &str) -> Self {
        let rel = format!("{}/{name}", parent.rel);
        let dir = parent.dir.join(name);
        std::fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", dir.display()));
        let id = std::fs::metadata(&dir).expect("cgroup metadata").ino();
        Self {
            root: parent.root.clone(),
            dir,
            rel,
            id,
        }
    }

    /// A command whose process joins this cgroup between fork and exec, so that everything
    /// it does, its exec included, happens inside.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        in_cgroup(&self.dir, program)
    }

    /// Runs a scenario inside the cgroup and returns its output (and pid).
    pub fn scenario(&self, args: &[&str]) -> (u32, Output) {
        let child = self
            .command(scenario_bin())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning vigil-scenario");
        let pid = child.id();
        (
            pid,
            child
                .wait_with_output()
                .expect("waiting for vigil-scenario"),
        )
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if !remove_cgroup_dir(&self.dir) {
            eprintln!("warning: could not remove cgroup {}", self.dir.display());
        }
    }
}

/// A running `vigil trace --output json`, its events collected as they arrive.
pub struct Tracer {
    child: Option<Child>,
    events: Arc<Mutex<Vec<Value>>>,
    /// Stdout lines read and not yet parsed and checked.
    unread: Arc<Mutex<Vec<String>>>,
    stdout_thread: Option<std::thread::JoinHandle<()>>,
    log: Arc<Mutex<Vec<String>>>,
    /// Stdout lines that are not JSON or do not match the schema, each with the reason. The
    /// reader thread only records them: a panic there would surface in the test as a timeout.
    invalid: Arc<Mutex<Vec<String>>>,
    /// `vigil run --state-file`: where the agent keeps its state, for [`Tracer::state`].
    state: Option<(tempfile::TempDir, PathBuf)>,
}

impl Tracer {
    /// Starts tracing `cgroup` (relative path, or None for the whole host) and waits until
    /// the probes are attached.
    pub fn start(cgroup: Option<&str>, extra: &[&str]) -> Self {
        let mut args = vec!["trace", "--output", "json"];
        args.extend_from_slice(extra);
        if let Some(cg) = cgroup {
            args.extend(["--cgroup", cg]);
        }
        Self::spawn_with(&args, &[], "vigil is tracing")
    }

    /// Starts `vigil run` with `policy` (a file or directory), checking it every 100 ms.
    pub fn enforce(policy: &Path) -> Self {
        let policy = policy.to_str().expect("UTF-8 path");
        Self::run(&["--watch-interval-ms", "100", "--policy", policy], &[])
    }

    /// Starts `vigil run --output json ARGS` (without `--output` when ARGS name a `--config`)
    /// with `envs`, its state kept in a file of the
    /// test's own (see [`Tracer::state`]), and waits until it enforces.
    pub fn run(args: &[&str], envs: &[(&str, &std::ffi::OsStr)]) -> Self {
        let dir = tempfile::tempdir().expect("a directory for the state file");
        let file = dir.path().join("state.json");
        let mut all = vec!["run"];
        // A configuration names its own sinks; `--output` is the shortcut without one.
        if !args.contains(&"--config") {
            all.extend(["--output", "json"]);
        }
        all.extend_from_slice(args);
        all.extend(["--state-file", file.to_str().expect("UTF-8 path")]);
        let mut tracer = Self::spawn_with(&all, envs, "vigil is enforcing");
        tracer.state = Some((dir, file));
        tracer
    }

    /// The agent's state file (`vigil run --state-file`) as it is now.
    #[track_caller]
    pub fn state(&self) -> Value {
        let (_, file) = self
            .state
            .as_ref()
            .expect("a tracer started by Tracer::enforce");
        let text = std::fs::read(file)
            .unwrap_or_else(|e| panic!("reading the state file {}: {e}", file.display()));
        serde_json::from_slice(&text)
            .unwrap_or_else(|e| panic!("the state file {} is not JSON: {e}", file.display()))
    }

    /// Waits until the agent's state satisfies `pred`; returns it.
    #[track_caller]
    pub fn wait_for_state(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_until(
            &format!("the agent's state: {what}"),
            liveness(),
            || {
                self.assert_valid_output();
                Some(self.state()).filter(|s| pred(s))
            },
            || format!("state: {}", self.state()),
        )
    }

    /// Starts `vigil ARGS` with `envs` and waits for `ready_marker` on stderr.
    pub fn spawn_with(
        args: &[&str],
        envs: &[(&str, &std::ffi::OsStr)],
        ready_marker: &'static str,
    ) -> Self {
        Self::spawn_program(&vigil_bin(), args, envs, ready_marker)
    }

    /// Starts `program ARGS` as the agent (a stand-in lets the helper itself be tested).
    pub fn spawn_program(
        program: &Path,
        args: &[&str],
        envs: &[(&str, &std::ffi::OsStr)],
        ready_marker: &'static str,
    ) -> Self {
        let mut cmd = Command::new(program);
        cmd.args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd
            .env("VIGIL_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning vigil trace");
        let stderr = child.stderr.take().expect("stderr");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log_sink = log.clone();
        std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[vigil] {line}");
                log_sink.lock().expect("log").push(line.clone());
                if line.contains(ready_marker)
                    && let Some(tx) = ready.take()
                {
                    let _ = tx.send(());
                }
            }
        });
        let events = Arc::new(Mutex::new(Vec::new()));
        let invalid = Arc::new(Mutex::new(Vec::new()));
        let unread = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout");
        let unread_sink = unread.clone();
        // Only reads: parsing and checking each line against the schema (a debug build, under
        // emulation: milliseconds a line) happen when the test looks, so that the agent's
        // stdout never waits on this test's checks (it would count what it cannot write
        // within its shutdown deadline as lost).
        let stdout_thread = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                unread_sink.lock().expect("unread").push(line);
            }
        });
        if ready_rx.recv_timeout(liveness()).is_err() {
            let _ = child.kill();
            panic!(
                "{} {args:?} did not report `{ready_marker}` within {} s",
                program.display(),
                liveness().as_secs()
            );
        }
        Self {
            child: Some(child),
            events,
            unread,
            stdout_thread: Some(stdout_thread),
            log,
            invalid,
            state: None,
        }
    }

    /// Fails the test, in the test's thread, once the agent has written anything that is not
    /// a valid event.
    #[track_caller]
    pub fn assert_valid_output(&self) {
        self.check_unread();
        // Copied out so that the panic does not poison the lock for a later look.
        let invalid = self.invalid.lock().expect("invalid").clone();
        if let Some(first) = invalid.first() {
            panic!(
                "the agent wrote {} invalid line(s) to stdout; the first: {first}",
                invalid.len()
            );
        }
    }

    /// Parses the stdout lines read since the last look: every emitted event must match the
    /// documented schema.
    fn check_unread(&self) {
        // Held throughout, so that two threads looking at once keep the events in order.
        let mut events = self.events.lock().expect("events");
        let lines = std::mem::take(&mut *self.unread.lock().expect("unread"));
        for line in lines {
            match serde_json::from_str::<Value>(&line) {
                Err(e) => self
                    .invalid
                    .lock()
                    .expect("invalid")
                    .push(format!("stdout line is not JSON ({e}): {line}")),
                Ok(value) => {
                    let errors = schema_errors(&value);
                    if errors.is_empty() {
                        events.push(value);
                    } else {
                        self.invalid.lock().expect("invalid").push(format!(
                            "event does not match docs/event.schema.json:\n{}\nevent: {line}",
                            errors.join("\n")
                        ));
                    }
                }
            }
        }
    }

    /// Every event so far (after checking that all of them are valid).
    #[track_caller]
    pub fn events(&self) -> Vec<Value> {
        self.assert_valid_output();
        self.events.lock().expect("events").clone()
    }

    /// `kill -9`: the agent ends with no chance to flush or clean up.
    pub fn kill(mut self) {
        let mut child = self.child.take().expect("running");
        // SAFETY: signalling the child we started, by its pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let status = child.wait().expect("wait");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
        if let Some(t) = self.stdout_thread.take() {
            t.join().expect("stdout reader");
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Waits until the agent logged a line containing `text`; returns the line.
    #[track_caller]
    pub fn wait_for_log(&self, text: &str) -> String {
        wait_until(
            &format!("the agent's log line `{text}`"),
            liveness(),
            || {
                self.assert_valid_output();
                self.stderr_lines().into_iter().find(|l| l.contains(text))
            },
            || "no such line".into(),
        )
    }

    /// Everything the agent logged so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }

    /// Waits for an event matching `pred`.
    #[track_caller]
    pub fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_events(&format!("the event {what}"), |events| {
            events.iter().find(|e| pred(e)).cloned()
        })
    }

    /// Waits until `done` yields something from the events so far.
    #[track_caller]
    pub fn wait_for_events<T>(&self, what: &str, done: impl Fn(&[Value]) -> Option<T>) -> T {
        wait_until(
            what,
            liveness(),
            || done(&self.events()),
            || {
                let seen: Vec<String> = self.events().iter().map(compact).collect();
                format!("saw {} events:\n{}", seen.len(), seen.join("\n"))
            },
        )
    }

    /// SIGINT, then waits for a clean exit; returns every event emitted.
    #[track_caller]
    pub fn stop(mut self) -> Vec<Value> {
        self.assert_valid_output();
        let mut child = self.child.take().expect("running");
        // SAFETY: signalling the child we started, by its pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let status = wait_until(
            "vigil's exit after SIGINT",
            liveness(),
            || child.try_wait().expect("wait"),
            || "still running".into(),
        );
        assert!(status.success(), "vigil exited with {status} after SIGINT");
        if let Some(t) = self.stdout_thread.take() {
            t.join().expect("stdout reader");
        }
        self.events()
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Everything the agent wrote is read before it is checked.
        if let Some(t) = self.stdout_thread.take() {
            let _ = t.join();
        }
        // A test that never looked at the events again still fails on an invalid one.
        if !std::thread::panicking() {
            self.assert_valid_output();
        }
    }
}

/// SIGKILLs a child this test started, by pid, if the test panics before it was waited for
/// (then it is at worst a zombie, so the pid cannot have been reused). Forget it once waited.
pub struct KillOnUnwind(pub u32);

impl Drop for KillOnUnwind {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // SAFETY: signalling a child this test started and has not reaped.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
}

pub fn compact(e: &Value) -> String {
    let data = &e["data"];
    format!(
        "{} pid={} comm={} {}",
        e["type"].as_str().unwrap_or("?"),
        data["process"]["pid"],
        data["process"]["comm"],
        ["exec", "connect", "wx"]
            .iter()
            .filter_map(|k| data.get(*k))
            .map(|v| v.to_string())
            .collect::<String>()
    )
}

/// The events other than loss reports. Those count what the agent or the kernel could not
/// see (on a loaded machine, e.g., probe runs the kernel skipped while another BPF program ran
/// on that CPU), so "nothing else was reported" is about these. A lost violation still fails
/// such a check: the reports then fall short.
pub fn reports(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["type"] != "dev.vigil.loss.v1")
        .collect()
}

pub fn pid_of(e: &Value) -> u64 {
    e["data"]["process"]["pid"].as_u64().unwrap_or(0)
}

pub fn is(e: &Value, ty: &str, pid: u32) -> bool {
    e["type"] == ty && pid_of(e) == u64::from(pid)
}

pub fn stdout_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs of `program` the kernel skipped since start, as the last loss event counted them
/// (`<program>/skipped`, from 6.7; 0 when none was counted).
pub fn runs_skipped(events: &[Value], program: &str) -> u64 {
    events
        .iter()
        .rev()
        .find(|e| e["type"] == "dev.vigil.loss.v1")
        .and_then(|last| {
            last["data"]["lostSinceStart"]["probeErrors"][format!("{program}/skipped")].as_u64()
        })
        .unwrap_or(0)
}

/// Runs of the W^X probes (on `mmap` and its return) the kernel skipped, as the last loss
/// event counted them since start: a tracepoint's program does not run while another BPF
/// program or a `bpf()` map call is active on that CPU, and the kernel counts each skip
/// (from 6.7). They are every process's runs, the flood's among them.
pub fn wx_runs_skipped(events: &[Value]) -> u64 {
    let Some(last) = events
        .iter()
        .rev()
        .find(|e| e["type"] == "dev.vigil.loss.v1")
    else {
        return 0;
    };
    let Some(errors) = last["data"]["lostSinceStart"]["probeErrors"].as_object() else {
        return 0;
    };
    errors
        .iter()
        // One program on each side of the call: a skipped `mmap` counts once for every
        // program on its tracepoint (`sys_enter_mmap_exec` shares the entry), so those are
        // left out.
        .filter(|(k, _)| *k == "sys_enter_mmap/skipped" || *k == "sys_exit_protection/skipped")
        .filter_map(|(_, v)| v.as_u64())
        .sum()
}
