//! `cargo xtask bench`: the agent's overhead on exec, connect and mmap workloads.
//!
//! Each workload (`vigil-scenario bench-<workload> <N>`, which prints `ns_per_op=<float>`) runs
//! in a cgroup of its own, `--runs` times in each of three modes, all in one run: without the
//! agent (the baseline), while `vigil trace --output json` streams every event, and while
//! `vigil run` enforces a policy on that cgroup that allows everything the workloads do (so
//! every decision is made, and every event filtered, in the kernel). Medians are compared as
//! ratios to the baseline; results are printed and written to target/bench/results.json.
use std::{
    collections::VecDeque,
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        mpsc::{self, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    build, setup,
    util::{self, describe, secs, step, workspace_root},
};

/// Workloads and their default iteration counts.
const WORKLOADS: [(&str, u64); 3] = [("exec", 2000), ("connect", 20_000), ("mmap", 100_000)];
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const STDERR_TAIL_LINES: usize = 40;

#[derive(clap::Args)]
pub struct Options {
    /// Multiply every workload's default iteration count (exec 2000, connect 20000,
    /// mmap 100000) by FACTOR, e.g. `--scale 0.1` for a quick run.
    #[arg(
        long,
        value_name = "FACTOR",
        default_value_t = 1.0,
        conflicts_with = "iterations"
    )]
    scale: f64,
    /// Use exactly N iterations for every workload instead of the (scaled) defaults.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    iterations: Option<u64>,
    /// Runs per workload with and without the agent; the median is reported.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    runs: u64,
}

impl Options {
    fn iterations_for(&self, default: u64) -> Result<u64> {
        if let Some(n) = self.iterations {
            return Ok(n);
        }
        if !self.scale.is_finite() || self.scale <= 0.0 {
            bail!("--scale must be a positive number, not {}", self.scale);
        }
        // Float to integer: the product is positive and far below u64::MAX.
        Ok(((default as f64 * self.scale).round() as u64).max(1))
    }
}

struct Workload {
    name: &'static str,
    iterations: u64,
    baseline: Vec<f64>,
    with_agent: Vec<f64>,
    with_policy: Vec<f64>,
}

impl Workload {
    fn ratio(&self) -> f64 {
        median(&self.with_agent) / median(&self.baseline)
    }

    fn policy_ratio(&self) -> f64 {
        median(&self.with_policy) / median(&self.baseline)
    }
}

/// The cgroup the workloads run in; removed on drop.
struct BenchCgroup {
    dir: PathBuf,
    rel: String,
}

impl BenchCgroup {
    fn create() -> Result<Self> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
        let root = mountinfo
            .lines()
            .filter_map(|l| {
                let fields: Vec<&str> = l.split(' ').collect();
                let sep = fields.iter().position(|f| *f == "-")?;
                (fields.get(sep + 1) == Some(&"cgroup2")).then(|| PathBuf::from(fields[4]))
            })
            .min_by_key(|p| p.as_os_str().len())
            .context("no cgroup v2 file system is mounted")?;
        let rel = format!("/vigil-bench-{}", std::process::id());
        let dir = root.join(rel.trim_start_matches('/'));
        fs::create_dir(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        Ok(Self { dir, rel })
    }
}

impl Drop for BenchCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("bench: could not remove cgroup {}", self.dir.display());
    }
}

/// A policy on the bench cgroup that allows everything the workloads do.
fn allowing_policy(cgroup: &BenchCgroup, scenario: &Path) -> Result<PathBuf> {
    let scenario = fs::canonicalize(scenario)?;
    let true_bin = fs::canonicalize("/bin/true")?;
    let yaml = format!(
        "apiVersion: vigil.dev/v1alpha1\nkind: ClusterRuntimePolicy\nmetadata: {{name: bench}}\nspec:\n  \
         hostProcesses: {{cgroupPrefixes: [\"{cg}\"]}}\n  exec:\n    allow: [{{path: \"{s}\"}}, {{path: \"{t}\"}}]\n  \
         connect:\n    allow: [{{cidr: 127.0.0.1/32, protocol: TCP}}]\n  memory:\n    writeExecute: Deny\n    \
         allowExecutables: [\"{s}\"]\n",
        cg = cgroup.rel,
        s = scenario.display(),
        t = true_bin.display(),
    );
    let dir = workspace_root().join("target/bench");
    fs::create_dir_all(&dir)?;
    let path = dir.join("allowing-policy.yaml");
    fs::write(&path, yaml)?;
    Ok(path)
}

pub fn run(options: &Options) -> Result<()> {
    util::require_root("bench")?;
    let mut workloads = WORKLOADS
        .into_iter()
        .map(|(name, default)| {
            Ok(Workload {
                name,
                iterations: options.iterations_for(default)?,
                baseline: Vec::new(),
                with_agent: Vec::new(),
                with_policy: Vec::new(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    setup::run()?;
    let agent_binary = build::build(true)?;
    let scenario = workspace_root().join("target/release/vigil-scenario");

    let cgroup = BenchCgroup::create()?;
    let policy = allowing_policy(&cgroup, &scenario)?;

    step("measure without the agent", || {
        for workload in &mut workloads {
            workload.baseline = measure(&scenario, &cgroup, workload, options.runs, "baseline")?;
        }
        Ok(())
    })?;

    let bench = Bench {
        scenario: &scenario,
        cgroup: &cgroup,
        runs: options.runs,
    };
    let peak_rss_kib = bench.under_agent(
        &agent_binary,
        &["trace", "--output", "json"],
        "vigil is tracing",
        &mut workloads,
        |w| &mut w.with_agent,
    )?;
    let policy_arg = policy.display().to_string();
    let policy_rss_kib = bench.under_agent(
        &agent_binary,
        &["run", "--output", "json", "--policy", &policy_arg],
        "vigil is enforcing",
        &mut workloads,
        |w| &mut w.with_policy,
    )?;
    println!("bench: vigil run peak RSS (VmHWM): {policy_rss_kib} KiB");

    let alerts = step("alert latency and HTTP sink throughput", || {
        crate::bench_alerts::run(&agent_binary, &scenario, &cgroup.dir, &cgroup.rel)
    })?;

    print_table(&workloads, peak_rss_kib);
    crate::bench_alerts::print(&alerts);
    let path = write_json(&workloads, options.runs, peak_rss_kib, &alerts)?;
    println!("bench: results written to {}", path.display());
    Ok(())
}

/// Where and how often the workloads run.
struct Bench<'a> {
    scenario: &'a Path,
    cgroup: &'a BenchCgroup,
    runs: u64,
}

impl Bench<'_> {
    /// Starts `vigil ARGS`, measures every workload into `slot` while it runs, stops it, and
    /// returns its peak RSS in KiB.
    fn under_agent(
        &self,
        binary: &Path,
        args: &[&str],
        ready_line: &'static str,
        workloads: &mut [Workload],
        slot: fn(&mut Workload) -> &mut Vec<f64>,
    ) -> Result<u64> {
        let name = format!("vigil {}", args[0]);
        let mut agent = step(&format!("start {name}"), || {
            Agent::start(binary, args, ready_line)
        })?;
        step(&format!("measure with {name}"), || {
            for workload in workloads.iter_mut() {
                agent.check_running()?;
                let samples = measure(
                    self.scenario,
                    self.cgroup,
                    workload,
                    self.runs,
                    &format!("with {name}"),
                )?;
                *slot(workload) = samples;
            }
            agent.check_running()
        })?;
        let peak_rss_kib = agent.peak_rss_kib()?;
        let status = step(&format!("stop {name}"), || agent.stop())?;
        if !status.success() {
            println!("bench: warning: {name} exited with {status} after SIGINT");
        }
        Ok(peak_rss_kib)
    }
}

fn measure(
    scenario: &Path,
    cgroup: &BenchCgroup,
    workload: &Workload,
    runs: u64,
    label: &str,
) -> Result<Vec<f64>> {
    (1..=runs)
        .map(|run| {
            let ns = run_scenario(scenario, cgroup, workload)?;
            println!(
                "bench: {} ({} iterations) {label} run {run}/{runs}: {ns:.1} ns/op",
                workload.name, workload.iterations
            );
            Ok(ns)
        })
        .collect()
}

fn run_scenario(scenario: &Path, cgroup: &BenchCgroup, workload: &Workload) -> Result<f64> {
    // The shell joins the bench cgroup, then becomes the scenario: every mode runs the
    // workload in the same place.
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("echo $$ > \"$0\"/cgroup.procs && exec \"$@\"")
        .arg(&cgroup.dir)
        .arg(scenario)
        .arg(format!("bench-{}", workload.name))
        .arg(workload.iterations.to_string())
        .stdin(Stdio::null());
    let line = describe(&cmd);
    let out = cmd
        .output()
        .with_context(|| format!("cannot start `{line}`"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let value = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("ns_per_op="))
        .with_context(|| format!("`{line}` printed no `ns_per_op=` line:\n{stdout}"))?;
    match value.trim().parse::<f64>() {
        Ok(ns) if ns.is_finite() && ns > 0.0 => Ok(ns),
        _ => bail!("`{line}` printed `ns_per_op={value}`: not a positive number"),
    }
}

/// Starts `vigil ARGS` and waits for `ready_line` (for the alert bench).
pub(crate) fn start_agent(binary: &Path, args: &[&str], ready_line: &'static str) -> Result<Agent> {
    Agent::start(binary, args, ready_line)
}

/// Runs `scenario ARGS` in the cgroup at `dir`; its stdout.
pub(crate) fn run_in_cgroup_output(scenario: &Path, dir: &Path, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("echo $$ > \"$0\"/cgroup.procs && exec \"$@\"")
        .arg(dir)
        .arg(scenario)
        .args(args)
        .stdin(Stdio::null());
    let line = describe(&cmd);
    let out = cmd
        .output()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// The running agent. Dropping it (on an error) stops it too.
pub(crate) struct Agent {
    child: Option<Child>,
    pid: u32,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
}

impl Agent {
    fn start(binary: &Path, args: &[&str], ready_line: &'static str) -> Result<Self> {
        let mut cmd = Command::new(binary);
        cmd.args(args)
            // The readiness line is logged at info level.
            .env("VIGIL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let line = describe(&cmd);
        println!("bench: starting `{line}`");
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{line}`"))?;
        let stderr = child.stderr.take().context("agent stderr is not piped")?;
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        let tail = Arc::clone(&stderr_tail);
        // Drains stderr for the agent's whole life so it never blocks on a full pipe; keeps
        // the last lines for error messages, and hands lines over while we wait for readiness.
        thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                if let Ok(mut tail) = tail.lock() {
                    if tail.len() == STDERR_TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line.clone());
                }
                // Fails once readiness was seen and the receiver is gone: keep draining.
                let _ = tx.send(line);
            }
        });
        let pid = child.id();
        let mut agent = Self {
            child: Some(child),
            pid,
            stderr_tail,
        };

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    println!("agent: {line}");
                    if line.contains(ready_line) {
                        return Ok(agent);
                    }
                }
                Err(RecvTimeoutError::Timeout) => bail!(
                    "the agent did not print `{ready_line}` within {}{}",
                    secs(READY_TIMEOUT),
                    agent.tail()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = agent.wait_for_exit(STOP_TIMEOUT)?;
                    bail!(
                        "the agent exited ({}) before tracing{}",
                        status.map_or_else(|| "still running".to_owned(), |s| s.to_string()),
                        agent.tail()
                    )
                }
            }
        }
    }

    fn tail(&self) -> String {
        let lines = self
            .stderr_tail
            .lock()
            .map(|tail| tail.iter().cloned().collect::<Vec<_>>())
            .unwrap_or_default();
        if lines.is_empty() {
            String::new()
        } else {
            format!("; its last stderr lines:\n{}", lines.join("\n"))
        }
    }

    fn check_running(&mut self) -> Result<()> {
        let child = self
            .child
            .as_mut()
            .context("the agent was already stopped")?;
        if let Some(status) = child.try_wait()? {
            bail!(
                "the agent exited ({status}) during the benchmark{}",
                self.tail()
            );
        }
        Ok(())
    }

    /// The agent's peak resident set size (VmHWM) in KiB.
    fn peak_rss_kib(&self) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid);
        let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .with_context(|| format!("no VmHWM in {path}"))
    }

    /// Sends SIGINT (the agent flushes and exits) and waits; SIGKILL if it hangs.
    pub(crate) fn stop(&mut self) -> Result<ExitStatus> {
        let pid = self.pid.to_string();
        util::run_checked(Command::new("kill").args(["-INT", &pid]))?;
        match self.wait_for_exit(STOP_TIMEOUT)? {
            Some(status) => {
                self.child = None;
                Ok(status)
            }
            None => {
                self.kill();
                bail!(
                    "the agent did not exit within {} of SIGINT; killed it{}",
                    secs(STOP_TIMEOUT),
                    self.tail()
                )
            }
        }
    }

    /// Waits up to `timeout` for the agent to exit; `None` if it is still running.
    fn wait_for_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let Some(child) = self.child.as_mut() else {
            bail!("the agent was already stopped");
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let running = self
            .child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)));
        if running {
            eprintln!("bench: stopping the agent (pid {})", self.pid);
            let _ = Command::new("kill")
                .args(["-INT", &self.pid.to_string()])
                .status();
            if !matches!(self.wait_for_exit(Duration::from_secs(5)), Ok(Some(_))) {
                self.kill();
            }
        }
        self.child = None;
    }
}

fn print_table(workloads: &[Workload], peak_rss_kib: u64) {
    println!();
    println!(
        "{:<10} {:>10} {:>14} {:>14} {:>7} {:>15} {:>7}",
        "workload", "iterations", "baseline ns/op", "trace ns/op", "ratio", "policy ns/op", "ratio"
    );
    for w in workloads {
        println!(
            "{:<10} {:>10} {:>14.1} {:>14.1} {:>7.2} {:>15.1} {:>7.2}",
            w.name,
            w.iterations,
            median(&w.baseline),
            median(&w.with_agent),
            w.ratio(),
            median(&w.with_policy),
            w.policy_ratio()
        );
    }
    println!(
        "trace: `vigil trace` streams every event to user space; policy: `vigil run` with a policy allowing all of it (decided in the kernel)"
    );
    println!(
        "agent peak RSS (VmHWM): {peak_rss_kib} KiB ({:.1} MiB)",
        peak_rss_kib as f64 / 1024.0
    );
    println!();
}

fn json_numbers(samples: &[f64]) -> String {
    let numbers: Vec<String> = samples.iter().map(f64::to_string).collect();
    format!("[{}]", numbers.join(", "))
}

fn write_json(
    workloads: &[Workload],
    runs: u64,
    peak_rss_kib: u64,
    alerts: &crate::bench_alerts::AlertResults,
) -> Result<PathBuf> {
    let mut json = String::from("{\n");
    let _ = writeln!(json, "  \"runs\": {runs},");
    let _ = writeln!(json, "  \"agent_peak_rss_kib\": {peak_rss_kib},");
    let _ = writeln!(
        json,
        "  \"alerts\": {{\"sent\": {}, \"received\": {}, \"latency_p50_ms\": {}, \"latency_p99_ms\": {}, \
         \"latency_max_ms\": {}, \"batch_sent\": {}, \"batch_received\": {}, \"batch_events_per_second\": {}, \"aggregated_sent\": {}, \"aggregated_events\": {}, \"aggregated_count\": {}, \"aggregated_first_ms\": {}}},",
        alerts.sent,
        alerts.received,
        alerts.p50_ms,
        alerts.p99_ms,
        alerts.max_ms,
        alerts.batch_sent,
        alerts.batch_received,
        alerts.batch_per_second,
        alerts.aggregated_sent,
        alerts.aggregated_events,
        alerts.aggregated_count,
        alerts.aggregated_first_ms
    );
    json.push_str("  \"workloads\": [\n");
    for (i, w) in workloads.iter().enumerate() {
        let _ = writeln!(
            json,
            "    {{\"name\": \"{}\", \"iterations\": {}, \"baseline_ns_per_op\": {}, \
             \"with_agent_ns_per_op\": {}, \"ratio\": {}, \"with_policy_ns_per_op\": {}, \
             \"policy_ratio\": {}, \"baseline_samples\": {}, \"with_agent_samples\": {}, \
             \"with_policy_samples\": {}}}{}",
            w.name,
            w.iterations,
            median(&w.baseline),
            median(&w.with_agent),
            w.ratio(),
            median(&w.with_policy),
            w.policy_ratio(),
            json_numbers(&w.baseline),
            json_numbers(&w.with_agent),
            json_numbers(&w.with_policy),
            if i + 1 < workloads.len() { "," } else { "" }
        );
    }
    json.push_str("  ]\n}\n");
    let dir = workspace_root().join("target/bench");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("results.json");
    fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
