//! The pipeline's throughput: one behaviour flooded (datagrams to loopback as fast as the
//! workload sends them, each to the next of 64,000 ports, so nothing is a repeat the kernel
//! would hold back), and the events the agent turns out per second of its own CPU time (user
//! and system, every thread, from `/proc/PID/stat`), with what it lost. Three pipelines:
//! - `vigil trace --output json` to a pipe (every event, the workload's cgroup only);
//! - `vigil run --output json` to a pipe, a policy making every datagram a violation (Alert);
//! - `vigil run` with the same policy to a loopback HTTP receiver in batch mode (measured in
//!   `bench_alerts`, which reports its agent's CPU through [`CpuWindow`]).
use std::{
    io::Read,
    path::Path,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::bench::Agent;

/// How long the workload floods.
pub const FLOOD_S: u64 = 5;
/// How long the output must stay still before the agent counts as drained.
const QUIET: Duration = Duration::from_secs(2);
/// The goal issue 13 sets.
pub const GOAL_PER_CORE: f64 = 200_000.0;

/// One pipeline's figures.
#[derive(Debug, Clone, Default)]
pub struct Throughput {
    pub pipeline: String,
    pub sent: u64,
    pub events: u64,
    pub lost: u64,
    pub cpu_seconds: f64,
    pub wall_seconds: f64,
}

impl Throughput {
    pub fn per_core_second(&self) -> f64 {
        if self.cpu_seconds > 0.0 {
            self.events as f64 / self.cpu_seconds
        } else {
            0.0
        }
    }

    pub fn json(&self) -> String {
        format!(
            "{{\"pipeline\": \"{}\", \"sent\": {}, \"events\": {}, \"lost\": {}, \"agent_cpu_seconds\": {}, \"wall_seconds\": {}, \"events_per_cpu_second\": {}}}",
            self.pipeline,
            self.sent,
            self.events,
            self.lost,
            self.cpu_seconds,
            self.wall_seconds,
            self.per_core_second()
        )
    }
}

/// The agent's CPU time over a window, in seconds.
pub struct CpuWindow {
    start: u64,
    tick: f64,
}

impl CpuWindow {
    pub fn open(agent: &Agent) -> Result<Self> {
        Ok(Self {
            start: agent.cpu_ticks()?,
            tick: 1.0 / clock_ticks_per_second()?,
        })
    }

    pub fn seconds(&self, agent: &Agent) -> Result<f64> {
        Ok(agent.cpu_ticks()?.saturating_sub(self.start) as f64 * self.tick)
    }
}

fn clock_ticks_per_second() -> Result<f64> {
    let text = crate::util::output_of(std::process::Command::new("getconf").arg("CLK_TCK"))
        .context("`getconf CLK_TCK` failed")?;
    text.parse::<f64>()
        .ok()
        .filter(|t| *t > 0.0)
        .with_context(|| format!("`getconf CLK_TCK` printed {text:?}"))
}

/// `lost=N` from the agent's last log line that says it stopped.
/// What the agent's `stopped` line says it lost; where, when anything was (ring buffer, a
/// queue, a sink), printed with the pipeline's name.
pub fn lost_said(pipeline: &str, log: &[String]) -> Result<u64> {
    let lost = lost_from_log(log).context("the agent's log has no `stopped ... lost=N` line")?;
    if lost > 0
        && let Some(stopped) = log.iter().rev().find(|l| l.contains(" stopped "))
    {
        println!("bench: {pipeline}: {stopped}");
    }
    Ok(lost)
}

pub fn lost_from_log(lines: &[String]) -> Option<u64> {
    lines
        .iter()
        .rev()
        .filter(|l| l.contains("stopped"))
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("lost="))
                .and_then(|n| n.parse().ok())
        })
}

/// Counts the lines a pipe carries, reading in large blocks (the reader must never be what
/// holds the agent back).
fn count_lines(mut pipe: impl Read + Send + 'static) -> Arc<AtomicU64> {
    let lines = Arc::new(AtomicU64::new(0));
    let counter = lines.clone();
    thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            let newlines = memchr::memchr_iter(b'\n', &buf[..n]).count() as u64;
            counter.fetch_add(newlines, Ordering::Relaxed);
        }
    });
    lines
}

/// Where the floods run.
pub struct Flood<'a> {
    pub agent_binary: &'a Path,
    pub scenario: &'a Path,
    pub cgroup_dir: &'a Path,
    pub cgroup_rel: &'a str,
    pub work: &'a Path,
}

impl Flood<'_> {
    /// `vigil ARGS` with its stdout counted, under the flood.
    fn through_pipe(
        &self,
        pipeline: &str,
        args: &[&str],
        ready: &'static str,
    ) -> Result<Throughput> {
        let mut agent = Agent::start_with(self.agent_binary, args, ready, Stdio::piped())?;
        let lines = count_lines(
            agent
                .take_stdout()
                .context("the agent's stdout is not piped")?,
        );
        // What came before the flood (the agent's own start) is not the flood's.
        thread::sleep(Duration::from_millis(500));
        let before = lines.load(Ordering::Relaxed);
        let cpu = CpuWindow::open(&agent)?;
        let started = Instant::now();
        let rate = "0".to_owned();
        let seconds = FLOOD_S.to_string();
        let out = crate::bench::run_in_cgroup_output(
            self.scenario,
            self.cgroup_dir,
            &["bench-udp-paced", &rate, &seconds],
        )?;
        let sent: u64 = out
            .lines()
            .find_map(|l| l.strip_prefix("sent="))
            .and_then(|n| n.trim().parse().ok())
            .context("the workload did not say how much it sent")?;
        // Drained: the output still for `QUIET`, at most 60 s after the flood.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = (lines.load(Ordering::Relaxed), Instant::now());
        while Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
            let now = lines.load(Ordering::Relaxed);
            if now != last.0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() >= QUIET {
                break;
            }
        }
        let cpu_seconds = cpu.seconds(&agent)?;
        let wall_seconds = (last.1 - started).as_secs_f64();
        let events = last.0 - before;
        agent.stop()?;
        let log = agent.stderr_lines();
        let lost = lost_said(pipeline, &log)?;
        if events == 0 {
            bail!("{pipeline}: no event of the {sent} datagrams came out");
        }
        Ok(Throughput {
            pipeline: pipeline.to_owned(),
            sent,
            events,
            lost,
            cpu_seconds,
            wall_seconds,
        })
    }

    pub fn run(&self) -> Result<Vec<Throughput>> {
        let policy = self.work.join("throughput-policy.yaml");
        std::fs::write(
            &policy,
            format!(
                "apiVersion: vigil.dev/v1alpha1\nkind: ClusterRuntimePolicy\nmetadata: {{name: bench-throughput}}\nspec:\n  hostProcesses: {{cgroupPrefixes: [\"{}\"]}}\n  connect:\n    allow: [{{cidr: 10.255.255.0/24}}]\n    action: Alert\n",
                self.cgroup_rel
            ),
        )
        .with_context(|| format!("writing {}", policy.display()))?;
        let policy = policy.to_str().context("UTF-8 path")?;
        Ok(vec![
            self.through_pipe(
                "vigil trace --output json | pipe",
                &["trace", "--output", "json", "--cgroup", self.cgroup_rel],
                "vigil is tracing",
            )?,
            self.through_pipe(
                "vigil run --output json | pipe (every datagram a violation)",
                &["run", "--output", "json", "--policy", policy],
                "vigil is enforcing",
            )?,
        ])
    }
}

pub fn print(results: &[Throughput]) {
    println!();
    println!(
        "pipeline throughput: datagrams to 64,000 loopback ports as fast as one process sends them for {FLOOD_S} s (goal: {GOAL_PER_CORE:.0} events per second per core)"
    );
    println!(
        "  {:<68} {:>9} {:>9} {:>7} {:>8} {:>14}",
        "pipeline", "sent", "events", "lost", "cpu s", "events/cpu s"
    );
    for r in results {
        println!(
            "  {:<68} {:>9} {:>9} {:>7} {:>8.2} {:>14.0}",
            r.pipeline,
            r.sent,
            r.events,
            r.lost,
            r.cpu_seconds,
            r.per_core_second()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_are_read_from_the_last_stopped_line() {
        let lines = [
            "2026-12-01T06:00:00Z  INFO vigil is tracing probes=30".to_owned(),
            "2026-12-01T06:00:01Z  INFO stopped events=10 lost=3".to_owned(),
            "2026-12-01T06:00:02Z  INFO stopped events=99 lost=7".to_owned(),
        ];
        assert_eq!(lost_from_log(&lines), Some(7));
        assert_eq!(lost_from_log(&lines[..1]), None);
    }

    #[test]
    fn events_per_cpu_second_is_zero_without_cpu_time() {
        let mut t = Throughput {
            events: 1000,
            cpu_seconds: 0.5,
            ..Throughput::default()
        };
        assert_eq!(t.per_core_second(), 2000.0);
        t.cpu_seconds = 0.0;
        assert_eq!(t.per_core_second(), 0.0);
    }
}
