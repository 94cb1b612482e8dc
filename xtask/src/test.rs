//! `cargo xtask test`: the full suite, what CI runs (`.ci/run`). Stops at the first failure.
//!
//! Beside clippy and the build it builds the Kubernetes test binaries (`k8s_env::ensure`; Go
//! is required) and hands their directory to the tests as `VIGIL_K8S_BIN`. Beside the host's
//! tests, two lanes run under QEMU: the vm-test kernels, and the node tests on a pure cgroup
//! v2 kernel, Debian's 6.12 (`guest.rs`), followed by more vm-test kernels.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::{
    k8s_env, setup,
    util::{self, cargo, describe, run_checked, secs, step, workspace_root},
};

/// The steps run so far, with their durations and outcomes, and what the lanes under QEMU
/// said each of their runs took (printed under the steps: CI shows only the end of the output).
#[derive(Default)]
struct Steps {
    done: Vec<(String, Duration, bool)>,
    lane_run_times: Vec<String>,
    binary_times: BinaryTimes,
}

impl Steps {
    fn run(&mut self, name: String, body: impl FnOnce() -> Result<()>) -> Result<()> {
        let start = Instant::now();
        let result = step(&name, body);
        self.done.push((name, start.elapsed(), result.is_ok()));
        result
    }

    /// The host's `cargo test`, with what each test binary took kept for the summary.
    fn host_tests(&mut self, test: &mut Command, counts: &mut Counts) -> Result<()> {
        let mut times = BinaryTimes::default();
        let result = self.run(describe(test), || {
            run_counted(test, counts, Some(&mut times))
        });
        self.binary_times = times;
        result
    }

    fn command(&mut self, mut cmd: Command) -> Result<()> {
        self.run(describe(&cmd), || run_checked(&mut cmd))
    }
}

fn cargo_with(args: &[&str]) -> Command {
    let mut cmd = cargo();
    cmd.args(args);
    cmd
}

pub fn run(extra: &[String]) -> Result<()> {
    // The kernel tests load eBPF programs; they are part of the suite, not optional.
    util::require_root("test")?;
    let start = Instant::now();
    let mut steps = Steps::default();
    let mut counts = Counts::default();
    let result = run_steps(&mut steps, extra, &mut counts);
    println!();
    let outcome = if result.is_ok() {
        "all steps passed"
    } else {
        "FAILED"
    };
    println!("test: {outcome} in {}", secs(start.elapsed()));
    for (name, took, ok) in &steps.done {
        let outcome = if *ok { "ok" } else { "FAILED" };
        println!("  {:>8}  {outcome:<6}  {name}", secs(*took));
    }
    for line in &steps.lane_run_times {
        println!("  {line}");
    }
    let slowest = steps.binary_times.slowest(SLOWEST_SHOWN);
    if !slowest.is_empty() {
        println!("  the host's slowest test binaries: {slowest}");
    }
    // The closing line: every test binary's totals added up.
    println!(
        "tests: {} passed, {} failed, {} skipped",
        counts.passed, counts.failed, counts.ignored
    );
    result
}

/// Totals over every `test result:` line cargo test printed.
#[derive(Default, Clone, Copy)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

impl Counts {
    /// Adds `test result: ok. 13 passed; 0 failed; 0 ignored; ...`.
    pub fn add_line(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(['.', ';']) {
            let mut words = part.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// Says how much room the build has: a full disk shows up much later as a linker's error.
fn report_free_space() {
    let root = workspace_root();
    let out = Command::new("df")
        .args(["-P", "-B1048576"])
        .arg(root)
        .output();
    let free_mib = out.ok().and_then(|out| {
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .nth(1)?
            .split_whitespace()
            .nth(3)?
            .parse::<u64>()
            .ok()
    });
    match free_mib {
        Some(mib) => println!(
            "test: {} GiB free on the disk of {}",
            mib / 1024,
            root.display()
        ),
        None => println!(
            "test: cannot tell the free space of {} (df)",
            root.display()
        ),
    }
}

/// How many of the slowest test binaries the summary names.
const SLOWEST_SHOWN: usize = 8;

/// What each test binary took: from cargo's `Running <target> (<file>)` line (on stderr) to
/// the next such line, or to cargo's exit for the last one. Timed on one stream, so nothing
/// pairs lines of two pipes, and runners without libtest's summary line count too. CI shows
/// only the end of the output: the summary says where the suite's time went.
#[derive(Default)]
struct BinaryTimes {
    times: Vec<(String, f64)>,
}

impl BinaryTimes {
    /// `tests/sinks.rs` of `     Running tests/sinks.rs (target/debug/deps/sinks-0123)`, with
    /// the crate for unit tests (`unittests src/lib.rs (.../agent-0123)` is `agent src/lib.rs`)
    /// and `doc-tests agent` for `   Doc-tests agent`; terminal colours ignored.
    fn target_of(stderr_line: &str) -> Option<String> {
        let plain = strip_ansi(stderr_line);
        let line = plain.trim();
        if let Some(krate) = line.strip_prefix("Doc-tests ") {
            return Some(format!("doc-tests {krate}"));
        }
        let (target, file) = line.strip_prefix("Running ")?.split_once(" (")?;
        match target.strip_prefix("unittests ") {
            Some(src) => {
                let stem = file.trim_end_matches(')').rsplit('/').next()?;
                let krate = stem.rsplit_once('-').map_or(stem, |(k, _)| k);
                Some(format!("{krate} {src}"))
            }
            None => Some(target.to_owned()),
        }
    }

    /// Each binary's time, from when each started (in order) and when the last one ended.
    fn from_starts(starts: &[(String, Instant)], end: Instant) -> Self {
        let ends = starts.iter().skip(1).map(|(_, at)| *at).chain([end]);
        Self {
            times: starts
                .iter()
                .zip(ends)
                .map(|((name, from), to)| (name.clone(), (to - *from).as_secs_f64()))
                .collect(),
        }
    }

    /// `tests/sinks.rs 219 s, ...`, longest first.
    fn slowest(&self, n: usize) -> String {
        let mut times = self.times.clone();
        times.sort_by(|a, b| b.1.total_cmp(&a.1));
        times
            .iter()
            .take(n)
            .map(|(name, took)| format!("{name} {took:.0} s"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `line` without terminal escape sequences (`ESC [ ... letter`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// How long the stderr forwarder may go on after cargo exited: a test's child that kept the
/// pipe open must not hold the suite.
const FORWARD_GRACE: Duration = Duration::from_secs(5);

/// Runs `cmd` passing its output through, adds up its `test result:` lines, and with `times`
/// notes what each test binary took.
fn run_counted(
    cmd: &mut Command,
    counts: &mut Counts,
    times: Option<&mut BinaryTimes>,
) -> Result<()> {
    use std::io::Write;
    cmd.stdout(std::process::Stdio::piped());
    if times.is_some() {
        cmd.stderr(std::process::Stdio::piped());
    }
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().expect("piped stdout");
    let starts = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, Instant)>::new()));
    let forward = child.stderr.take().map(|stderr| {
        let starts = starts.clone();
        std::thread::spawn(move || {
            let _ = util::each_line(stderr, |line| {
                let _ = std::io::stderr().write_all(line);
                if let Some(target) = BinaryTimes::target_of(&String::from_utf8_lossy(line)) {
                    starts
                        .lock()
                        .expect("not poisoned")
                        .push((target, Instant::now()));
                }
            });
        })
    });
    util::each_line(stdout, |line| {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\n', '\r']);
        println!("{text}");
        counts.add_line(text);
    })?;
    let status = child.wait()?;
    let ended = Instant::now();
    if let Some(forward) = forward {
        while !forward.is_finished() && ended.elapsed() < FORWARD_GRACE {
            std::thread::sleep(Duration::from_millis(20));
        }
        if forward.is_finished() {
            let _ = forward.join();
        }
    }
    if let Some(times) = times {
        *times = BinaryTimes::from_starts(&starts.lock().expect("not poisoned"), ended);
    }
    if !status.success() {
        anyhow::bail!("{} failed: {status}", describe(cmd));
    }
    Ok(())
}

fn run_steps(steps: &mut Steps, extra: &[String], counts: &mut Counts) -> Result<()> {
    report_free_space();
    steps.run("setup".to_owned(), || setup::run().map(|_| ()))?;
    steps.command(cargo_with(&["fmt", "--all", "--", "--check"]))?;
    // The Kubernetes binaries, etcd and helm for the tests that run a real control plane or
    // node (testenv): built from k8s-env/ once, skipped while present and matching the pins.
    // From nothing that is a long Go build (601 s in CI on 2026-12-03), much of it fetching
    // modules or on the cores cargo leaves idle at the serial ends of its builds: it runs
    // beside clippy and the build, and is waited for even when they fail (no orphaned `go`).
    let k8s_build = std::thread::spawn(k8s_env::ensure);
    let rust_builds = steps
        .command(cargo_with(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
        .and_then(|()| steps.command(crate::build::command(false)));
    let mut k8s_bin = None;
    let k8s = steps.run(
        "k8s-env (the Kubernetes binaries, etcd, helm; built beside clippy and the build, \
         this is the wait after them)"
            .to_owned(),
        || {
            let built = k8s_build
                .join()
                .map_err(|_| anyhow::anyhow!("the k8s-env build's thread panicked"))?;
            k8s_bin = Some(built?);
            Ok(())
        },
    );
    rust_builds?;
    k8s?;

    let debug = workspace_root().join("target/debug");
    // The images of the node tests (agent/tests/node.rs): the agent's from this build, the
    // workloads' and the pod sandbox's, imported into the test node's containerd.
    let mut node_images = None;
    steps.run("images for the node tests".to_owned(), || {
        node_images = Some(crate::image::for_node(
            &debug.join("vigil"),
            &workspace_root().join("target/images/test"),
        )?);
        Ok(())
    })?;
    let (images, sandbox) = node_images.expect("set by the images step");
    let k8s_bin_dir = k8s_bin.expect("set by the k8s-env step");
    let mut test = cargo_with(&TEST_TARGETS);
    test.args(["--", "--test-threads=1"]);
    test.args(extra)
        .env("VIGIL_SCENARIO_BIN", debug.join("vigil-scenario"))
        .env("VIGIL_BIN", debug.join("vigil"))
        .env("VIGIL_K8S_BIN", &k8s_bin_dir)
        .env("VIGIL_NODE_IMAGES", std::env::join_paths(&images)?)
        .env("VIGIL_SANDBOX_IMAGE", &sandbox);
    if !extra.is_empty() {
        steps.host_tests(&mut test, counts)?;
        // A chosen subset of tests: the guests' selections are not part of it.
        println!(
            "test: the node tests on a pure cgroup v2 kernel and the kernels under QEMU are \
             left out with `--` arguments"
        );
        return Ok(());
    }
    // Prevention before the act needs BPF LSM, which this host's kernel refuses, and the
    // oldest kernel's fallbacks need that kernel: both under QEMU, beside the host's tests
    // (emulation keeps one core busy; the host's tests mostly wait on the kernel). The node
    // tests on the pure cgroup v2 kernel run in a third lane, niced: the emulated node's
    // waits stretch with its pace, the host's tests' do not.
    steps.run(
        "vm-test: build and stage the guests' binaries".to_owned(),
        || crate::vm_test::stage().map(drop),
    )?;
    let mut script = None;
    steps.run(
        "the pure cgroup v2 guest: kernel and script".to_owned(),
        || {
            crate::guest::prepare(&workspace_root().join("target/guest"))?;
            script = Some(node_tests_in_guest(&images, &sandbox, &k8s_bin_dir)?);
            Ok(())
        },
    )?;
    let script = script.expect("set by the step");
    let mut beside = Beside::start(Lane::VmTests)?;
    let mut node_guest = Beside::start(Lane::NodeGuest(script))?;
    let host = steps.host_tests(&mut test, counts);
    if host.is_err() {
        beside.stop();
        node_guest.stop();
    }
    host?;
    let mut run_times = Vec::new();
    let vm_tests = steps.run(beside.name(), || beside.finish(counts, &mut run_times));
    if vm_tests.is_err() {
        node_guest.stop();
    }
    let node = vm_tests.and_then(|()| {
        steps.run(node_guest.name(), || {
            node_guest.finish(counts, &mut run_times)
        })
    });
    steps.lane_run_times = run_times;
    node
}

/// What runs under QEMU beside the host's tests.
enum Lane {
    /// The `vm-test` runs: the oldest kernel with the prevention and fallback tests, then the
    /// others with the prevention tests.
    VmTests,
    /// The node tests on the pure cgroup v2 kernel, from this script (`node_tests_in_guest`).
    NodeGuest(std::path::PathBuf),
}

/// One lane of runs under QEMU, in a process group of their own beside the host's tests,
/// their output in a log.
struct Beside {
    lane: Lane,
    child: std::process::Child,
    log: std::path::PathBuf,
    /// Whether the runs ended (waited for, or stopped).
    ended: bool,
}

impl Drop for Beside {
    /// A suite that ends early (an error, a panic) takes the guests with it.
    fn drop(&mut self) {
        if !self.ended {
            self.stop();
        }
    }
}

impl Lane {
    /// The vm-test runs of each lane, balanced by their time under emulation. CI on
    /// 2026-12-04 (clean clone, 2 cores): 5.10 with the prevention and fallback tests 1,357 s,
    /// the node guest 755 s, 6.12 488 s, the newest with BPF LSM 513 s and without 169 s. So
    /// the oldest kernel and the newest without BPF LSM in the vm-test lane (about 1,530 s),
    /// the node guest, the second kernel and the newest in the other (about 1,760 s); the
    /// two lanes had been 1,870 s and 1,410 s, and the longer one ended 330 s after the
    /// host's tests. CI later that day: the vm-test lane, with two more prevention tests, ran
    /// 2,453 s on 5.10 (its guest's limit) and 179 s on the newest without BPF LSM; the
    /// tests now share one `vigil doctor` run per boot instead of one per question, and 5.10's
    /// seven prevention tests with two more took 1,531 s here beside a second guest (the
    /// prevention tests about 1,200 s of it).
    fn vm_test_runs(&self) -> Vec<String> {
        use crate::vm_test::{
            FALLBACK_TESTS, OLDEST, PREEMPTION_TESTS, PREVENTION_KERNELS, PREVENTION_TESTS,
            REGISTER_TESTS,
        };
        let others: Vec<&str> = PREVENTION_KERNELS
            .iter()
            .copied()
            .filter(|k| *k != OLDEST)
            .collect();
        let prevention = |kernels: &[&str]| {
            format!(
                "vm-test --kernel {} -- {}",
                kernels.join(" --kernel "),
                PREVENTION_TESTS.join(" ")
            )
        };
        match self {
            // The oldest kernel's prevention and fallback tests boot apart: together they
            // outgrew one guest's time limit (CI on 2026-12-04: over 2,400 s beside the
            // host's tests, once the prevention tests grew to seven).
            Lane::VmTests => vec![
                prevention(&[OLDEST]),
                format!("vm-test --kernel {OLDEST} -- {}", FALLBACK_TESTS.join(" ")),
                // The newest once more without BPF LSM, where nothing refuses an exec before
                // the act and every exec must still be judged or killed
                // (`agent-ebpf/src/judged.rs`).
                format!(
                    "vm-test --without-bpf-lsm --kernel newest -- {}",
                    PREEMPTION_TESTS.join(" ")
                ),
            ],
            Lane::NodeGuest(_) => vec![
                prevention(&others[..1]),
                // The newest kernel preempts kernel code, and its LSM programs read
                // registers: the tests that need those too.
                format!(
                    "{} {} {}",
                    prevention(&others[1..]),
                    PREEMPTION_TESTS.join(" "),
                    REGISTER_TESTS.join(" ")
                ),
            ],
        }
    }

    /// A short name for the summary's lines.
    fn label(&self) -> &'static str {
        match self {
            Lane::VmTests => "vm-test lane",
            Lane::NodeGuest(_) => "node guest lane",
        }
    }

    fn name(&self) -> String {
        let runs = self.vm_test_runs().join("; ");
        match self {
            Lane::VmTests => format!("under QEMU, beside the host's tests: {runs}"),
            Lane::NodeGuest(_) => format!("{GUEST_STEP}, then {runs}"),
        }
    }

    /// The lane's file names under `target/vm`: its copy of xtask (one per lane, so that
    /// starting a lane never replaces the file another is about to run) and its log.
    fn files(&self) -> (&'static str, &'static str) {
        match self {
            Lane::VmTests => ("bin/xtask", "beside.log"),
            Lane::NodeGuest(_) => ("bin/xtask-node-guest", "node-guest.log"),
        }
    }

    /// The lane's shell script (`$0` is xtask): every run, whatever the one before it did;
    /// the lane fails if one failed. Each run ends with a `RUN_TIME` line: its wall time,
    /// outcome and what it was.
    fn script(&self) -> String {
        let mut script = "rc=0\n".to_owned();
        let mut timed = |what: &str, command: String| {
            script.push_str(&format!(
                "s=$(date +%s); if {command}; then r=ok; else r=FAILED; rc=1; fi\n\
                 echo \"{RUN_TIME} $(( $(date +%s) - s ))s $r {what}\"\n"
            ));
        };
        if let Lane::NodeGuest(guest_script) = self {
            timed(
                "the node guest",
                format!("\"$0\" test --guest-script '{}'", guest_script.display()),
            );
        }
        for run in self.vm_test_runs() {
            let (_, args) = run.split_once(' ').expect("`vm-test ARGS`");
            let kernels: Vec<&str> = args
                .split(" -- ")
                .next()
                .unwrap_or(args)
                .split_whitespace()
                .filter(|word| *word != "--kernel")
                .collect();
            timed(
                &format!("vm-test {}", kernels.join(" ")),
                format!("\"$0\" vm-test --staged {args}"),
            );
        }
        script.push_str("exit $rc\n");
        script
    }
}

/// How a lane's script marks the line that says what one of its runs took.
const RUN_TIME: &str = "lane run took";

impl Beside {
    fn name(&self) -> String {
        self.lane.name()
    }

    fn start(lane: Lane) -> Result<Self> {
        use std::os::unix::process::CommandExt;
        let dir = workspace_root().join("target/vm");
        std::fs::create_dir_all(dir.join("bin"))?;
        let (xtask, log) = lane.files();
        let (xtask, log) = (dir.join(xtask), dir.join(log));
        // A copy: the host's tests rebuild this workspace's binaries, this one among them.
        let _ = std::fs::remove_file(&xtask);
        std::fs::copy(std::env::current_exe()?, &xtask)
            .with_context(|| format!("cannot copy the xtask binary to {}", xtask.display()))?;
        let file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let child = Command::new("sh")
            .args(["-c", &lane.script()])
            .arg(&xtask)
            .current_dir(workspace_root())
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .process_group(0)
            .spawn()
            .context("cannot start a lane under QEMU")?;
        println!("test: {} (output in {})", lane.name(), log.display());
        Ok(Self {
            lane,
            child,
            log,
            ended: false,
        })
    }

    /// Ends the runs and their guests (their own process group).
    fn stop(&mut self) {
        if self.ended {
            return;
        }
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let _ = self.child.wait();
        self.ended = true;
    }

    /// Waits for the runs and adds up their tests; prints the vm-test tables or the node
    /// guest's output, and the log's end when a run failed. Adds each run's time to
    /// `run_times`.
    fn finish(&mut self, counts: &mut Counts, run_times: &mut Vec<String>) -> Result<()> {
        let status = self.child.wait()?;
        self.ended = true;
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        for line in &lines {
            counts.add_line(line);
            if let Some(run) = line.strip_prefix(RUN_TIME) {
                run_times.push(format!("{}:{run}", self.lane.label()));
            }
        }
        if status.success() {
            let mut in_table = false;
            for line in &lines {
                in_table = match self.lane {
                    Lane::VmTests => {
                        line.starts_with("series ") || (in_table && !line.trim().is_empty())
                    }
                    Lane::NodeGuest(_) => true,
                };
                if in_table {
                    println!("{line}");
                }
            }
            return Ok(());
        }
        for line in &lines[lines.len().saturating_sub(300)..] {
            println!("{line}");
        }
        anyhow::bail!(
            "{} failed ({status}); its whole output: {}",
            self.name(),
            self.log.display()
        )
    }
}

/// Boots of the guest before its kernel is taken not to come up: emulation has oopsed early
/// in about one boot in ten here.
const BOOT_ATTEMPTS: u32 = 3;

const GUEST_STEP: &str = "the node tests on a pure cgroup v2 kernel (Debian's 6.12 in QEMU)";

/// `cargo xtask test --cgroup-v2-only`: only the suite's last step, the node tests on a pure
/// cgroup v2 kernel, after what they need (the Kubernetes binaries, a debug build and the
/// node images).
pub fn cgroup_v2_only() -> Result<()> {
    util::require_root("test --cgroup-v2-only")?;
    let k8s_bin = k8s_env::ensure()?;
    run_checked(&mut crate::build::command(false))?;
    let (images, sandbox) = crate::image::for_node(
        &workspace_root().join("target/debug/vigil"),
        &workspace_root().join("target/images/test"),
    )?;
    let mut counts = Counts::default();
    let result = step(GUEST_STEP, || {
        let script = node_tests_in_guest(&images, &sandbox, &k8s_bin)?;
        boot_node_guest(&script, &mut counts)
    });
    println!(
        "tests: {} passed, {} failed, {} skipped",
        counts.passed, counts.failed, counts.ignored
    );
    result
}

/// `cargo xtask test --guest-script SCRIPT`: the node guest's lane beside the host's tests.
pub fn guest_script(script: &std::path::Path) -> Result<()> {
    util::require_root("test --guest-script")?;
    let mut counts = Counts::default();
    step(GUEST_STEP, || boot_node_guest(script, &mut counts))
}

/// Boots the guest on the node tests' script and fails unless they all passed.
fn boot_node_guest(script: &std::path::Path, counts: &mut Counts) -> Result<()> {
    let guest = crate::guest::prepare(&workspace_root().join("target/guest"))?;
    for attempt in 1..=BOOT_ATTEMPTS {
        let mut qemu = guest.command(script)?;
        run_counted(&mut qemu, counts, None)?;
        if guest.booted() {
            break;
        }
        println!(
            "guest: the kernel did not reach its second stage (boot {attempt} of {BOOT_ATTEMPTS})"
        );
    }
    let code = guest.exit_code()?;
    anyhow::ensure!(
        code == 0,
        "the node tests on Linux {} with cgroup v2 alone failed (exit {code}; the cluster's \
         logs: {})",
        guest.version,
        guest.out().join("logs").display()
    );
    Ok(())
}

/// The tests run on the pure cgroup v2 guest: the chart installs and turns ready, a denied
/// exec in a Deployment's pod is killed and reported, drift is refused before it runs and a
/// tool vouched for by content is held and released (the only real overlay where BPF LSM
/// decides them), W^X is judged in a pod, and the uninstall
/// leaves nothing; the runner adds its start-after-a-crash and host-left-as-found checks. The
/// others would add nothing the cgroup layout decides, at TCG's pace.
const GUEST_NODE_TESTS: [&str; 6] = [
    "helm_install_brings_the_agent_to_ready",
    "a_binary_copied_into_a_deployment_pod_is_killed",
    "drift_in_a_pod_is_killed_wherever_it_sits",
    "a_tool_vouched_for_by_sha256_runs",
    "write_execute_memory_in_a_pod_is_a_violation",
    "helm_uninstall_leaves_no_program_map_or_pin_behind",
];

/// How many times slower than the host the guest is taken to be (TCG: CPU-bound work about
/// 5 times, a Go binary's start about 10), and niced beside the host's tests it gets less of
/// the machine still: the node tests stretch their waits by it. (The agent's first start in
/// the guest took 122 s alone and over 450 s beside the host's heaviest tests, 2026-12-05.)
const GUEST_PACE: u32 = 8;

/// Writes the guest's script: it checks that the guest has cgroup v2 alone, then runs the node
/// test binary of this build with [`GUEST_NODE_TESTS`].
fn node_tests_in_guest(
    images: &[std::path::PathBuf],
    sandbox: &str,
    k8s_bin: &std::path::Path,
) -> Result<std::path::PathBuf> {
    // A copy, as the vm-test guests run: the host's tests may build while the guest runs it.
    let binary = workspace_root().join("target/guest/bin/node");
    std::fs::create_dir_all(workspace_root().join("target/guest/bin"))?;
    let _ = std::fs::remove_file(&binary);
    std::fs::copy(test_executable("node")?, &binary)
        .with_context(|| format!("cannot copy the node tests to {}", binary.display()))?;
    let images = std::env::join_paths(images)?;
    let ci = std::env::var("CI").unwrap_or_default();
    let script = format!(
        r#"cd '{root}'
controllers=$(cat /sys/fs/cgroup/cgroup.controllers)
echo "guest: cgroup2 at /sys/fs/cgroup with controllers: $controllers"
if grep -q ' cgroup ' /proc/mounts; then echo "guest: a cgroup v1 hierarchy is mounted"; exit 1; fi
export CI='{ci}' VIGIL_K8S_BIN='{k8s_bin}' VIGIL_NODE_IMAGES='{images}' VIGIL_SANDBOX_IMAGE='{sandbox}'
export VIGIL_NODE_PACE={pace}
# What a node has loaded before it runs anything: without them the host-left-as-found check
# sees the cluster create the netfilter tables and sysctls that loading them brings.
modprobe -a overlay bridge br_netfilter veth nf_conntrack nf_nat iptable_filter iptable_nat iptable_mangle ip6table_filter ip6table_nat ip6table_mangle xt_conntrack xt_MASQUERADE xt_mark xt_comment xt_addrtype
iptables-save >/dev/null; ip6tables-save >/dev/null
# The cluster's directory on a tmpfs of its own: containerd's overlay snapshots cannot sit on
# the guest's overlay root, and /tmp stays the host's (a workspace may live there).
export TMPDIR=/run/vigil-tmp
mkdir -p "$TMPDIR"
'{binary}' {tests}
rc=$?
# The cluster's own logs outlive its teardown: kept for a failed run.
if [ $rc -ne 0 ]; then
    mkdir -p /.out/logs
    find "$TMPDIR/vigil-node-tests" -name '*.log' -exec cp --parents {{}} /.out/logs \;
    # The kubelet keeps the containers' own output (the agent's among it) here.
    [ -d /var/log/pods ] && cp -r --parents /var/log/pods /.out/logs
    echo "guest: the cluster's logs were copied into the out share, logs/"
fi
exit $rc
"#,
        pace = GUEST_PACE,
        root = workspace_root().display(),
        k8s_bin = k8s_bin.display(),
        images = images.to_string_lossy(),
        binary = binary.display(),
        tests = GUEST_NODE_TESTS.join(" "),
    );
    let path = workspace_root().join("target/guest/node-tests.sh");
    std::fs::write(&path, script)?;
    Ok(path)
}

/// What the suite's `cargo test` builds and runs. The guests' test binaries are built by the
/// same command (with `--no-run`): any other selection resolves the dependencies' features
/// differently and builds the whole tree a second time (minutes on a fresh clone).
const TEST_TARGETS: [&str; 7] = [
    "test",
    "--workspace",
    "--exclude",
    "agent-ebpf",
    "--lib",
    "--bins",
    "--tests",
];

/// The path of integration test `name`'s executable, as cargo built it for this suite.
pub fn test_executable(name: &str) -> Result<std::path::PathBuf> {
    Ok(test_executables(&[name])?.remove(0))
}

/// The paths of integration tests `names`' executables, in that order, from one build.
pub fn test_executables(names: &[&str]) -> Result<Vec<std::path::PathBuf>> {
    let out = cargo_with(&TEST_TARGETS)
        .args(["--no-run", "--message-format=json-diagnostic-rendered-ansi"])
        .stderr(std::process::Stdio::inherit())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let messages: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    // With JSON output cargo prints the compiler's errors (a linker's too) on stdout, as
    // messages: without this a failed build said only "due to 1 previous error".
    for rendered in messages.iter().filter_map(compiler_error) {
        eprint!("{rendered}");
    }
    anyhow::ensure!(
        out.status.success(),
        "cargo test --no-run (for the tests {}) failed",
        names.join(", ")
    );
    names
        .iter()
        .map(|name| {
            messages
                .iter()
                .filter(|message| {
                    message["target"]["name"] == *name
                        && message["target"]["kind"]
                            .as_array()
                            .is_some_and(|kinds| kinds.iter().any(|kind| kind == "test"))
                })
                .find_map(|message| message["executable"].as_str().map(std::path::PathBuf::from))
                .with_context(|| format!("cargo built no executable for test {name}"))
        })
        .collect()
}

/// The rendered text of a compiler message at level error, as rustc would have printed it.
fn compiler_error(message: &serde_json::Value) -> Option<&str> {
    if message["reason"] != "compiler-message" || message["message"]["level"] != "error" {
        return None;
    }
    message["message"]["rendered"].as_str()
}

#[cfg(test)]
mod tests {
    use super::{BinaryTimes, Counts, Lane, compiler_error};

    /// Cargo's lines as it prints them (colours too), and the summary's order.
    #[test]
    fn each_test_binary_is_named_with_its_time_and_the_slowest_come_first() {
        assert_eq!(
            BinaryTimes::target_of(
                "     Running tests/sinks.rs (target/debug/deps/sinks-02d24e2b)"
            )
            .as_deref(),
            Some("tests/sinks.rs")
        );
        assert_eq!(
            BinaryTimes::target_of(
                "\u{1b}[1m\u{1b}[92m     Running\u{1b}[0m unittests src/lib.rs (target/debug/deps/agent_common-9f3a)\n"
            )
            .as_deref(),
            Some("agent_common src/lib.rs")
        );
        assert_eq!(
            BinaryTimes::target_of("   Doc-tests agent\n").as_deref(),
            Some("doc-tests agent")
        );
        assert_eq!(BinaryTimes::target_of("   Compiling agent v0.1.0"), None);
        assert_eq!(BinaryTimes::target_of("test sinks ... ok"), None);
        let t0 = std::time::Instant::now();
        let at = |s: u64| t0 + std::time::Duration::from_secs(s);
        let times = BinaryTimes::from_starts(
            &[
                ("a".into(), at(0)),
                ("b".into(), at(3)),
                ("c".into(), at(223)),
            ],
            at(263),
        );
        assert_eq!(
            times.times,
            [
                ("a".to_owned(), 3.0),
                ("b".to_owned(), 220.0),
                ("c".to_owned(), 40.0)
            ]
        );
        assert_eq!(times.slowest(2), "b 220 s, c 40 s");
        assert_eq!(BinaryTimes::from_starts(&[], at(1)).slowest(2), "");
    }

    /// The two lanes run the prevention tests on every prevention kernel exactly once with BPF
    /// LSM, the fallback tests on the oldest only, the newest once more without BPF LSM, and the node guest's lane
    /// boots the node guest first; every run says what it took.
    #[test]
    fn the_lanes_share_the_prevention_kernels_and_the_node_guest_goes_first() {
        use crate::vm_test::{FALLBACK_TESTS, OLDEST, PREVENTION_KERNELS, PREVENTION_TESTS};
        let node = Lane::NodeGuest("/w/node-tests.sh".into());
        let runs: Vec<String> = [Lane::VmTests.vm_test_runs(), node.vm_test_runs()].concat();
        let (without_lsm, with_lsm): (Vec<&String>, Vec<&String>) = runs
            .iter()
            .partition(|run| run.contains("--without-bpf-lsm "));
        assert_eq!(
            without_lsm,
            [&format!(
                "vm-test --without-bpf-lsm --kernel newest -- {}",
                crate::vm_test::PREEMPTION_TESTS.join(" ")
            )]
        );
        for kernel in PREVENTION_KERNELS {
            let with = with_lsm
                .iter()
                .filter(|run| run.contains(&format!("--kernel {kernel} ")))
                .collect::<Vec<_>>();
            let prevention = with
                .iter()
                .filter(|run| run.contains(PREVENTION_TESTS[0]))
                .count();
            assert_eq!(prevention, 1, "{kernel} in {runs:?}");
            let fallback = with
                .iter()
                .filter(|run| run.contains(FALLBACK_TESTS[0]))
                .count();
            assert_eq!(
                fallback,
                usize::from(kernel == OLDEST),
                "{kernel}: {with:?}"
            );
        }
        // Only the newest of them preempts kernel code, so only it runs the tests that need it;
        // and only its run with BPF LSM has the tests of the LSM reading registers.
        for run in &runs {
            assert_eq!(
                run.contains(crate::vm_test::PREEMPTION_TESTS[0]),
                run.contains("--kernel newest "),
                "{run}"
            );
            assert_eq!(
                run.contains(crate::vm_test::REGISTER_TESTS[0]),
                run.contains("--kernel newest ") && !run.contains("--without-bpf-lsm"),
                "{run}"
            );
        }
        let script = node.script();
        let guest = script
            .find("test --guest-script '/w/node-tests.sh'")
            .expect("guest");
        let vm_test = script.find("vm-test --staged").expect("vm-test");
        assert!(guest < vm_test, "{script}");
        assert!(script.ends_with("exit $rc\n"), "{script}");
        // Run with `true` and `false` standing in for xtask: each run reports its time and
        // outcome, and the lane's status is a failure's.
        for (xtask, outcome, success) in [("true", "ok", true), ("false", "FAILED", false)] {
            let out = std::process::Command::new("sh")
                .args(["-c", &script, xtask])
                .output()
                .expect("sh");
            let text = String::from_utf8_lossy(&out.stdout);
            // `lane run took 0s ok vm-test 6.12`: the seconds, then the outcome and the run.
            let runs: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("lane run took "))
                .filter_map(|l| {
                    let (secs, run) = l.split_once("s ")?;
                    assert!(secs.parse::<u64>().is_ok(), "{l}");
                    Some(run)
                })
                .collect();
            assert_eq!(
                runs,
                [
                    format!("{outcome} the node guest"),
                    format!("{outcome} vm-test 6.12"),
                    format!("{outcome} vm-test newest"),
                ],
                "{text}"
            );
            assert_eq!(out.status.success(), success, "{text}");
        }
    }

    #[test]
    fn shows_compiler_errors_and_nothing_else() {
        let error = serde_json::json!({
            "reason": "compiler-message",
            "message": {"level": "error", "rendered": "error: linking with `cc` failed\n"},
        });
        let warning = serde_json::json!({
            "reason": "compiler-message",
            "message": {"level": "warning", "rendered": "warning: unused\n"},
        });
        let artifact = serde_json::json!({"reason": "compiler-artifact", "executable": "/x"});
        assert_eq!(
            compiler_error(&error),
            Some("error: linking with `cc` failed\n")
        );
        assert_eq!(compiler_error(&warning), None);
        assert_eq!(compiler_error(&artifact), None);
    }

    #[test]
    fn adds_up_cargo_test_result_lines() {
        let mut c = Counts::default();
        c.add_line("test result: ok. 13 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 5.16s");
        c.add_line(
            "test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        c.add_line("running 4 tests");
        assert_eq!((c.passed, c.failed, c.ignored), (16, 1, 2));
    }
}
