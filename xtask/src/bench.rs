//! `cargo xtask bench`: what the agent costs the workloads it watches, against what any
//! program on the same hooks costs and against a peer doing the same work.
//!
//! Each workload (`vigil-scenario bench-<workload> <N>`, which prints `ns_per_op=<float>`)
//! runs in a cgroup of its own under seven modes: nothing attached (the baseline); `vigil
//! floor`, an empty program on every hook Vigil attaches to (the floor no code on those hooks
//! can go below), and the same without the raw syscall tracepoints and without any syscall
//! hook (what those cost on their own); bpftrace running a script that reports what `vigil
//! trace` reports (every exec, connect, datagram destination and W^X request); `vigil trace
//! --output json`
//! streaming every event; and `vigil run` enforcing a policy on that cgroup that allows all
//! the workloads do (every decision made, every event filtered, in the kernel). A round runs
//! every mode once, each round in another order, so that drift on a noisy machine spreads
//! over all modes; medians over the rounds are compared as ratios to the baseline and to the
//! floor. Results are printed and written to target/bench/results.json.
use std::{
    collections::VecDeque,
    fmt::Write as _,
    fs,
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

/// Workloads: name, the scenario that runs it, what it does, default iterations.
const WORKLOADS: [(&str, &str, &str, u64); 6] = [
    ("exec", "bench-exec", "fork + exec of /bin/true", 2000),
    (
        "connect",
        "bench-connect",
        "TCP connect over loopback",
        20_000,
    ),
    ("udp", "bench-udp", "UDP sendto over loopback", 50_000),
    ("mmap-rwx", "bench-mmap", "mmap of an RWX page", 100_000),
    ("mmap-rw", "bench-mmap-rw", "mmap of an RW page", 100_000),
    (
        "getppid",
        "bench-syscall",
        "a system call no program is about",
        2_000_000,
    ),
];
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const STDERR_TAIL_LINES: usize = 40;

/// What runs beside the workloads.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Mode {
    Baseline,
    Floor,
    /// The floor without the raw `sys_enter` and `sys_exit` tracepoints: what those two cost.
    FloorNoRaw,
    /// The floor without any system call hook: what is left where BPF LSM takes their place.
    FloorNoSyscalls,
    Bpftrace,
    Trace,
    Run,
}

const MODES: [Mode; 7] = [
    Mode::Baseline,
    Mode::Floor,
    Mode::FloorNoRaw,
    Mode::FloorNoSyscalls,
    Mode::Bpftrace,
    Mode::Trace,
    Mode::Run,
];

impl Mode {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::Floor => "floor",
            Self::FloorNoRaw => "floor-no-raw",
            Self::FloorNoSyscalls => "floor-no-syscalls",
            Self::Bpftrace => "bpftrace",
            Self::Trace => "trace",
            Self::Run => "run",
        }
    }

    fn index(self) -> usize {
        MODES.iter().position(|m| *m == self).unwrap_or(0)
    }
}

/// The modes of round `round` (from 0), in that round's order: each round starts one mode
/// further on.
fn round_order(round: usize) -> Vec<Mode> {
    (0..MODES.len())
        .map(|i| MODES[(round + i) % MODES.len()])
        .collect()
}

/// bpftrace doing what `vigil trace` does on these workloads, on the syscall tracepoints a
/// tracer without cgroup programs has: each exec (the caller's request and the new image),
/// each connect and `sendto` destination, each `mmap`, `mprotect` or `pkey_mprotect` asking
/// for write and execute, through the 64-bit and the 32-bit entry (`int 0x80`, which syscall
/// tracepoints do not see: `raw_syscalls`, as Vigil; its `thread_info.status` says a 32-bit
/// call). Vigil sees more: `sendmsg`, `sendmmsg`, `shmat`, io_uring. `BEGIN`'s `system()` runs once bpftrace reads its output, which it starts after
/// every probe is attached: the line on stderr says it traces.
const BPFTRACE_SCRIPT: &str = r#"BEGIN
{
  system("echo bpftrace is tracing >&2");
}

tracepoint:syscalls:sys_enter_execve,
tracepoint:syscalls:sys_enter_execveat
{
  printf("exec pid=%d ppid=%d uid=%d cgroup=%llu comm=%s path=%s argv=", pid, curtask->real_parent->tgid, uid, cgroup, comm, str(args->filename));
  join(args->argv);
}

tracepoint:sched:sched_process_exec
{
  printf("exec done pid=%d old_pid=%d path=%s\n", pid, args->old_pid, str(args->filename));
}

tracepoint:syscalls:sys_enter_connect
{
  $sa = (struct sockaddr_in *)args->uservaddr;
  if ($sa->sin_family == 2) {
    printf("connect pid=%d cgroup=%llu comm=%s to=%s:%d\n", pid, cgroup, comm, ntop(2, $sa->sin_addr.s_addr), (($sa->sin_port & 0xff) << 8) | ($sa->sin_port >> 8));
  } else if ($sa->sin_family == 10) {
    $sa6 = (struct sockaddr_in6 *)args->uservaddr;
    printf("connect pid=%d cgroup=%llu comm=%s to=[%s]:%d\n", pid, cgroup, comm, ntop(10, $sa6->sin6_addr.in6_u.u6_addr8), (($sa6->sin6_port & 0xff) << 8) | ($sa6->sin6_port >> 8));
  }
}

tracepoint:syscalls:sys_enter_sendto
/(uint64)args->addr != 0/
{
  $sa = (struct sockaddr_in *)args->addr;
  if ($sa->sin_family == 2) {
    printf("sendto pid=%d cgroup=%llu comm=%s to=%s:%d\n", pid, cgroup, comm, ntop(2, $sa->sin_addr.s_addr), (($sa->sin_port & 0xff) << 8) | ($sa->sin_port >> 8));
  } else if ($sa->sin_family == 10) {
    $sa6 = (struct sockaddr_in6 *)args->addr;
    printf("sendto pid=%d cgroup=%llu comm=%s to=[%s]:%d\n", pid, cgroup, comm, ntop(10, $sa6->sin6_addr.in6_u.u6_addr8), (($sa6->sin6_port & 0xff) << 8) | ($sa6->sin6_port >> 8));
  }
}

tracepoint:syscalls:sys_enter_mmap
/(args->prot & 6) == 6/
{
  printf("wx mmap pid=%d cgroup=%llu comm=%s prot=%d flags=%d fd=%d\n", pid, cgroup, comm, args->prot, args->flags, args->fd);
}

tracepoint:syscalls:sys_enter_mprotect,
tracepoint:syscalls:sys_enter_pkey_mprotect
/(args->prot & 6) == 6/
{
  printf("wx mprotect pid=%d cgroup=%llu comm=%s addr=%lx prot=%d\n", pid, cgroup, comm, args->start, args->prot);
}

tracepoint:raw_syscalls:sys_enter
/(curtask->thread_info.status & 2) != 0/
{
  if (args->id == 192 || args->id == 125 || args->id == 380) {
    if ((args->args[2] & 6) == 6) {
      printf("wx 32-bit pid=%d cgroup=%llu comm=%s nr=%d prot=%d\n", pid, cgroup, comm, args->id, args->args[2]);
    }
  } else if (args->id == 90) {
    $prot = *(uint32 *)uptr(args->args[0] + 8);
    if (($prot & 6) == 6) {
      printf("wx 32-bit old mmap pid=%d cgroup=%llu comm=%s prot=%d\n", pid, cgroup, comm, $prot);
    }
  }
}
"#;

#[derive(clap::Args)]
pub struct Options {
    /// Multiply every workload's default iteration count (exec 2000, connect 20000, udp
    /// 50000, mmap-rwx and mmap-rw 100000, getppid 2000000) by FACTOR, e.g. `--scale 0.1`
    /// for a quick run.
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
    /// Rounds: each runs every workload once under every mode; medians are reported.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    runs: u64,
    /// Run only these parts (repeatable; default: all of them). `--scale` also multiplies
    /// the cluster's pods and Services (1,000 and 2,000; from 0.02 to 5); its 100 policies
    /// stay at most 100.
    #[arg(long, value_name = "PART")]
    only: Vec<Part>,
}

/// The parts of one bench run.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Part {
    /// What the agent costs each workload, against the floor and bpftrace.
    Overhead,
    /// Alert latency and the HTTP sink's throughput.
    Alerts,
    /// Events per second per core of agent CPU.
    Throughput,
    /// Each of the agent's programs: runs and time per workload operation (kernel run
    /// statistics).
    Programs,
    /// The agent with 1,000 pods, 2,000 Services and 100 policies in the API server.
    Scale,
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

    fn runs_part(&self, part: Part) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }

    /// [`crate::bench_scale::Size::FULL`], times `--scale` (not `--iterations`, which is
    /// about loop lengths).
    fn cluster_size(&self) -> Result<crate::bench_scale::Size> {
        if !self.scale.is_finite() || self.scale <= 0.0 {
            bail!("--scale must be a positive number, not {}", self.scale);
        }
        crate::bench_scale::Size::FULL.times(self.scale)
    }
}

pub(crate) struct Workload {
    pub(crate) name: &'static str,
    scenario: &'static str,
    what: &'static str,
    pub(crate) iterations: u64,
    /// ns per operation, per mode (indexed as [`MODES`]), one per round.
    samples: [Vec<f64>; MODES.len()],
}

impl Workload {
    fn median(&self, mode: Mode) -> f64 {
        median(&self.samples[mode.index()])
    }

    /// `mode`'s median over `base`'s.
    fn ratio(&self, mode: Mode, base: Mode) -> f64 {
        self.median(mode) / self.median(base)
    }
}

/// The cgroup the workloads run in; removed on drop.
struct BenchCgroup {
    dir: PathBuf,
    rel: String,
}

/// Where cgroup v2 is mounted (the shortest such mount point).
pub(crate) fn cgroup2_mount() -> Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    mountinfo
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            (fields.get(sep + 1) == Some(&"cgroup2")).then(|| PathBuf::from(fields[4]))
        })
        .min_by_key(|p| p.as_os_str().len())
        .context("no cgroup v2 file system is mounted")
}

impl BenchCgroup {
    fn create() -> Result<Self> {
        let root = cgroup2_mount()?;
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
         connect:\n    allow: [{{cidr: 127.0.0.1/32, protocol: TCP}}, {{cidr: 127.0.0.1/32, protocol: UDP}}]\n  memory:\n    writeExecute: Deny\n    \
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
        .map(|(name, scenario, what, default)| {
            Ok(Workload {
                name,
                scenario,
                what,
                iterations: options.iterations_for(default)?,
                samples: Default::default(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    setup::run()?;
    setup::bench_packages()?;
    let agent_binary = build::build(true)?;
    let scenario = workspace_root().join("target/release/vigil-scenario");

    let cgroup = BenchCgroup::create()?;
    let policy = allowing_policy(&cgroup, &scenario)?;
    let script = workspace_root().join("target/bench/trace.bt");
    fs::write(&script, BPFTRACE_SCRIPT).with_context(|| format!("writing {}", script.display()))?;
    let bench = Bench {
        scenario: &scenario,
        cgroup: &cgroup,
        agent: &agent_binary,
        policy: &policy,
        script: &script,
    };
    let mut peak_rss_kib = [0u64; MODES.len()];
    let mut results = Results::default();
    if options.runs_part(Part::Overhead) {
        for round in 0..options.runs as usize {
            for mode in round_order(round) {
                let label = format!("round {}/{}: {}", round + 1, options.runs, mode.name());
                let rss = step(&label, || bench.round(mode, &mut workloads))?;
                let slot = &mut peak_rss_kib[mode.index()];
                *slot = (*slot).max(rss.unwrap_or(0));
            }
        }
        results.overhead = Some((&workloads[..], options.runs, peak_rss_kib));
    }
    if options.runs_part(Part::Programs) {
        results.programs = Some(step("program costs", || {
            crate::bench_programs::run(&bench, &workloads)
        })?);
    }
    if options.runs_part(Part::Alerts) {
        results.alerts = Some(step("alert latency and HTTP sink throughput", || {
            crate::bench_alerts::run(&agent_binary, &scenario, &cgroup.dir, &cgroup.rel)
        })?);
    }
    let work = workspace_root().join("target/bench");
    if options.runs_part(Part::Throughput) {
        let mut throughput = step("pipeline throughput", || {
            crate::bench_throughput::Flood {
                agent_binary: &agent_binary,
                scenario: &scenario,
                cgroup_dir: &cgroup.dir,
                cgroup_rel: &cgroup.rel,
                work: &work,
            }
            .run()
        })?;
        if let Some(alerts) = &results.alerts {
            throughput.push(alerts.batch.clone());
        }
        results.throughput = Some(throughput);
    }
    if options.runs_part(Part::Scale) {
        let size = options.cluster_size()?;
        results.scale = Some(step("scale", || {
            crate::bench_scale::Scale {
                agent_binary: &agent_binary,
                scenario: &scenario,
                work: &work,
                size,
            }
            .run()
        })?);
    }

    if let Some((workloads, _, rss)) = &results.overhead {
        print_table(workloads, rss);
    }
    if let Some(programs) = &results.programs {
        let baselines: Vec<(&str, f64)> = results
            .overhead
            .iter()
            .flat_map(|(workloads, _, _)| workloads.iter())
            .filter(|w| !w.samples[Mode::Baseline.index()].is_empty())
            .map(|w| (w.name, w.median(Mode::Baseline)))
            .collect();
        crate::bench_programs::print(programs, &baselines);
    }
    if let Some(alerts) = &results.alerts {
        crate::bench_alerts::print(alerts);
    }
    if let Some(throughput) = &results.throughput {
        crate::bench_throughput::print(throughput);
    }
    if let Some(scale) = &results.scale {
        crate::bench_scale::print(scale);
    }
    let path = write_json(&results)?;
    println!("bench: results written to {}", path.display());
    Ok(())
}

/// What one run measured: the parts it ran.
#[derive(Default)]
struct Results<'a> {
    /// The workloads, the rounds, and each mode's peak RSS.
    overhead: Option<(&'a [Workload], u64, [u64; MODES.len()])>,
    alerts: Option<crate::bench_alerts::AlertResults>,
    throughput: Option<Vec<crate::bench_throughput::Throughput>>,
    scale: Option<crate::bench_scale::ScaleResults>,
    programs: Option<Vec<crate::bench_programs::WorkloadCosts>>,
}

/// Where the workloads run and what runs beside them.
pub(crate) struct Bench<'a> {
    scenario: &'a Path,
    cgroup: &'a BenchCgroup,
    agent: &'a Path,
    policy: &'a Path,
    script: &'a Path,
}

impl Bench<'_> {
    /// Starts what `mode` runs beside the workloads (nothing for the baseline).
    fn start(&self, mode: Mode) -> Result<Option<Agent>> {
        self.start_logging(mode, "info")
    }

    /// [`Bench::start`] with the agent's log filter `log` (`VIGIL_LOG`).
    pub(crate) fn start_logging(&self, mode: Mode, log: &str) -> Result<Option<Agent>> {
        let log = std::ffi::OsStr::new(log);
        let agent = |args: &[&str], ready| {
            Agent::start_env(
                self.agent,
                args,
                &[("VIGIL_LOG", log)],
                ready,
                Stdio::null(),
            )
            .map(Some)
        };
        let floor = |without: &[&str]| {
            let args: Vec<&str> = ["floor"]
                .into_iter()
                .chain(without.iter().copied())
                .collect();
            agent(&args, "the floor is attached")
        };
        let policy = self.policy.display().to_string();
        match mode {
            Mode::Baseline => Ok(None),
            Mode::Floor => floor(&[]),
            Mode::FloorNoRaw => floor(&["--without", "raw-syscalls"]),
            Mode::FloorNoSyscalls => floor(&["--without", "syscalls"]),
            Mode::Trace => agent(&["trace", "--output", "json"], "vigil is tracing"),
            Mode::Run => agent(
                &["run", "--output", "json", "--policy", &policy],
                "vigil is enforcing",
            ),
            Mode::Bpftrace => {
                let script = self.script.display().to_string();
                Agent::start(
                    Path::new("bpftrace"),
                    &["--unsafe", &script],
                    "bpftrace is tracing",
                )
                .map(Some)
            }
        }
    }

    /// Runs every workload once under `mode`; the peak RSS (KiB) of what ran beside them.
    fn round(&self, mode: Mode, workloads: &mut [Workload]) -> Result<Option<u64>> {
        let mut beside = self.start(mode)?;
        for workload in workloads.iter_mut() {
            if let Some(beside) = beside.as_mut() {
                beside.check_running()?;
            }
            let ns = run_scenario(self.scenario, self.cgroup, workload)?;
            println!(
                "bench: {} ({} iterations) {}: {ns:.1} ns/op",
                workload.name,
                workload.iterations,
                mode.name()
            );
            workload.samples[mode.index()].push(ns);
        }
        let Some(mut beside) = beside else {
            return Ok(None);
        };
        beside.check_running()?;
        let rss = beside.peak_rss_kib()?;
        let status = beside.stop()?;
        if !status.success() {
            println!(
                "bench: warning: {} exited with {status} after SIGINT",
                mode.name()
            );
        }
        Ok(Some(rss))
    }
}

/// Runs `workload` once in the bench cgroup; the nanoseconds one operation took.
pub(crate) fn run_workload(bench: &Bench<'_>, workload: &Workload) -> Result<f64> {
    run_scenario(bench.scenario, bench.cgroup, workload)
}

fn run_scenario(scenario: &Path, cgroup: &BenchCgroup, workload: &Workload) -> Result<f64> {
    // The shell joins the bench cgroup, then becomes the scenario: every mode runs the
    // workload in the same place.
    let mut cmd = in_cgroup(&cgroup.dir, scenario);
    cmd.arg(workload.scenario)
        .arg(workload.iterations.to_string());
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

/// `program`, to be run in the cgroup at `dir`: a shell joins the cgroup (its `cgroup.procs`),
/// then becomes the program.
pub(crate) fn in_cgroup(dir: &Path, program: &Path) -> Command {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("echo $$ > \"$0\"/cgroup.procs && exec \"$@\"")
        .arg(dir)
        .arg(program)
        .stdin(Stdio::null());
    cmd
}

/// Runs `scenario ARGS` in the cgroup at `dir`; its stdout.
pub(crate) fn run_in_cgroup_output(scenario: &Path, dir: &Path, args: &[&str]) -> Result<String> {
    let mut cmd = in_cgroup(dir, scenario);
    cmd.args(args);
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

/// utime + stime from a `/proc/PID/stat` line: the 14th and 15th fields, counted after the
/// command name (which may hold spaces and parentheses, so the last `)` ends it).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
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
    /// The thread draining stderr; it ends at end of file, once the process is gone.
    stderr_reader: Option<thread::JoinHandle<()>>,
    /// Every stderr line up to the readiness line.
    startup: Vec<String>,
}

impl Agent {
    fn start(binary: &Path, args: &[&str], ready_line: &'static str) -> Result<Self> {
        Self::start_with(binary, args, ready_line, Stdio::null())
    }

    /// Starts `binary ARGS` with `stdout` as its standard output; waits for `ready_line`.
    pub(crate) fn start_with(
        binary: &Path,
        args: &[&str],
        ready_line: &'static str,
        stdout: Stdio,
    ) -> Result<Self> {
        Self::start_env(binary, args, &[], ready_line, stdout)
    }

    /// [`Agent::start_with`] with `envs` set for the agent.
    pub(crate) fn start_env(
        binary: &Path,
        args: &[&str],
        envs: &[(&str, &std::ffi::OsStr)],
        ready_line: &'static str,
        stdout: Stdio,
    ) -> Result<Self> {
        let mut cmd = Command::new(binary);
        cmd.args(args)
            // The readiness line is logged at info level; `envs` may ask for more.
            .env("VIGIL_LOG", "info")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(stdout)
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
        let stderr_reader = thread::spawn(move || {
            let _ = crate::util::each_line(stderr, |buf| {
                let line = String::from_utf8_lossy(buf).trim_end().to_owned();
                if let Ok(mut tail) = tail.lock() {
                    if tail.len() == STDERR_TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line.clone());
                }
                // Fails once readiness was seen and the receiver is gone: keep draining.
                let _ = tx.send(line);
            });
        });
        let pid = child.id();
        let mut agent = Self {
            child: Some(child),
            pid,
            stderr_tail,
            stderr_reader: Some(stderr_reader),
            startup: Vec::new(),
        };

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    println!("agent: {line}");
                    let ready = line.contains(ready_line);
                    agent.startup.push(line);
                    if ready {
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

    /// The standard output, when it was piped; taken once.
    pub(crate) fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.as_mut()?.stdout.take()
    }

    /// The CPU time the process has used, user and system, all threads, in clock ticks.
    pub(crate) fn cpu_ticks(&self) -> Result<u64> {
        let path = format!("/proc/{}/stat", self.pid);
        let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        cpu_ticks(&stat).with_context(|| format!("no utime and stime in {path}: {stat}"))
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// What the process wrote on stderr up to its readiness line, that line included.
    pub(crate) fn startup_lines(&self) -> &[String] {
        &self.startup
    }

    /// The last lines the process wrote on stderr.
    pub(crate) fn stderr_lines(&self) -> Vec<String> {
        self.stderr_tail
            .lock()
            .map(|tail| tail.iter().cloned().collect())
            .unwrap_or_default()
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
        Ok(self.rss_kib()?.1)
    }

    /// The agent's resident set size now and at its peak (VmRSS, VmHWM), in KiB.
    pub(crate) fn rss_kib(&self) -> Result<(u64, u64)> {
        let path = format!("/proc/{}/status", self.pid);
        let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|value| value.split_whitespace().next())
                .and_then(|kib| kib.parse().ok())
                .with_context(|| format!("no {name} in {path}"))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// Sends SIGINT (the agent flushes and exits) and waits; SIGKILL if it hangs.
    pub(crate) fn stop(&mut self) -> Result<ExitStatus> {
        let pid = self.pid.to_string();
        util::run_checked(Command::new("kill").args(["-INT", &pid]))?;
        match self.wait_for_exit(STOP_TIMEOUT)? {
            Some(status) => {
                self.child = None;
                // Its last lines (what it counted lost) are read before anyone asks for them.
                if let Some(reader) = self.stderr_reader.take() {
                    let _ = reader.join();
                }
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

/// How far `ratio` is above 1, as a signed percentage.
fn percent(ratio: f64) -> String {
    format!("{:+.1}%", (ratio - 1.0) * 100.0)
}

fn print_table(workloads: &[Workload], peak_rss_kib: &[u64; MODES.len()]) {
    use Mode::*;
    println!();
    println!(
        "{:<9} {:>9} {:>10} | {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} | {:>9} {:>9} | {:>9}",
        "workload",
        "iter",
        "base ns/op",
        "floor",
        "fl-noraw",
        "fl-nosys",
        "bpftrace",
        "trace",
        "run",
        "trace/fl",
        "run/fl",
        "trace/bpf"
    );
    for w in workloads {
        println!(
            "{:<9} {:>9} {:>10.1} | {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} | {:>9} {:>9} | {:>9.3}",
            w.name,
            w.iterations,
            w.median(Baseline),
            w.ratio(Floor, Baseline),
            w.ratio(FloorNoRaw, Baseline),
            w.ratio(FloorNoSyscalls, Baseline),
            w.ratio(Bpftrace, Baseline),
            w.ratio(Trace, Baseline),
            w.ratio(Run, Baseline),
            percent(w.ratio(Trace, Floor)),
            percent(w.ratio(Run, Floor)),
            w.ratio(Trace, Bpftrace),
        );
    }
    println!(
        "ratios to the baseline (medians); trace/fl and run/fl: above the floor (empty programs on \
         every hook Vigil attaches to); fl-noraw: the floor without the raw sys_enter and \
         sys_exit; fl-nosys: the floor without any system call hook; trace/bpf: vigil trace \
         over bpftrace doing the same work"
    );
    for w in workloads {
        println!("  {:<9} {}", w.name, w.what);
    }
    for mode in MODES.into_iter().filter(|m| *m != Baseline) {
        let kib = peak_rss_kib[mode.index()];
        println!(
            "peak RSS (VmHWM) of {}: {kib} KiB ({:.1} MiB)",
            mode.name(),
            kib as f64 / 1024.0
        );
    }
    println!();
}

fn json_numbers(samples: &[f64]) -> String {
    let numbers: Vec<String> = samples.iter().map(f64::to_string).collect();
    format!("[{}]", numbers.join(", "))
}

fn write_json(results: &Results<'_>) -> Result<PathBuf> {
    use Mode::*;
    let mut parts = Vec::new();
    if let Some((_, runs, peak_rss_kib)) = &results.overhead {
        parts.push(format!("  \"runs\": {runs}"));
        let rss: Vec<String> = MODES
            .iter()
            .filter(|m| **m != Baseline)
            .map(|m| format!("\"{}\": {}", m.name(), peak_rss_kib[m.index()]))
            .collect();
        parts.push(format!("  \"peak_rss_kib\": {{{}}}", rss.join(", ")));
    }
    if let Some(alerts) = &results.alerts {
        parts.push(format!(
            "  \"alerts\": {{\"sent\": {}, \"received\": {}, \"latency_p50_ms\": {}, \"latency_p99_ms\": {}, \
             \"latency_max_ms\": {}, \"batch_sent\": {}, \"batch_received\": {}, \"batch_events_per_second\": {}, \"aggregated_sent\": {}, \"aggregated_events\": {}, \"aggregated_count\": {}, \"aggregated_first_ms\": {}}}",
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
        ));
    }
    if let Some(throughput) = &results.throughput {
        let pipelines: Vec<String> = throughput.iter().map(|t| t.json()).collect();
        parts.push(format!("  \"throughput\": [{}]", pipelines.join(", ")));
    }
    if let Some(scale) = &results.scale {
        parts.push(format!("  \"scale\": {}", crate::bench_scale::json(scale)));
    }
    if let Some(programs) = &results.programs {
        parts.push(format!(
            "  \"programs\": {}",
            crate::bench_programs::json(programs)
        ));
    }
    if let Some((workloads, _, _)) = &results.overhead {
        let mut text = String::from("  \"workloads\": [\n");
        for (i, w) in workloads.iter().enumerate() {
            let modes: Vec<String> = MODES
                .iter()
                .map(|m| {
                    format!(
                        "\"{}\": {{\"ns_per_op\": {}, \"to_baseline\": {}, \"to_floor\": {}, \"samples\": {}}}",
                        m.name(),
                        w.median(*m),
                        w.ratio(*m, Baseline),
                        w.ratio(*m, Floor),
                        json_numbers(&w.samples[m.index()])
                    )
                })
                .collect();
            let _ = writeln!(
                text,
                "    {{\"name\": \"{}\", \"iterations\": {}, \"trace_to_bpftrace\": {}, {}}}{}",
                w.name,
                w.iterations,
                w.ratio(Trace, Bpftrace),
                modes.join(", "),
                if i + 1 < workloads.len() { "," } else { "" }
            );
        }
        text.push_str("  ]");
        parts.push(text);
    }
    let json = format!("{{\n{}\n}}\n", parts.join(",\n"));
    let dir = workspace_root().join("target/bench");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("results.json");
    fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_round_runs_each_mode_once_and_each_mode_leads_a_round_in_turn() {
        for (round, first) in MODES.iter().enumerate() {
            let order = round_order(round);
            for mode in MODES {
                assert_eq!(order.iter().filter(|m| **m == mode).count(), 1, "{order:?}");
            }
            assert_eq!(order[0], *first);
        }
    }

    #[test]
    fn no_string_of_the_bpftrace_script_runs_over_a_line_end() {
        // bpftrace refuses a string with a line end in it ("unterminated string").
        for (n, line) in BPFTRACE_SCRIPT.lines().enumerate() {
            let quotes = line.matches('"').count() - line.matches("\\\"").count();
            assert_eq!(quotes % 2, 0, "line {}: {line}", n + 1);
        }
        assert!(BPFTRACE_SCRIPT.contains("\\n\", pid"));
    }

    #[test]
    fn cpu_time_is_read_past_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (vig il) (x)) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    1500 250 0 0 20 0 9 0 123456 1000000 2000 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(1750));
        assert_eq!(cpu_ticks("4242 (vigil) S 1"), None);
    }

    #[test]
    fn ratios_are_of_medians_and_percent_is_signed() {
        let mut samples: [Vec<f64>; MODES.len()] = Default::default();
        samples[Mode::Baseline.index()] = vec![100.0, 300.0, 200.0];
        samples[Mode::Floor.index()] = vec![210.0, 220.0];
        let w = Workload {
            name: "w",
            scenario: "bench-w",
            what: "",
            iterations: 1,
            samples,
        };
        assert_eq!(w.ratio(Mode::Floor, Mode::Baseline), 1.075);
        assert_eq!(percent(1.025), "+2.5%");
        assert_eq!(percent(0.99), "-1.0%");
    }
}
