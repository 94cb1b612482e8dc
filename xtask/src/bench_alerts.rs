//! The alert path under load: `vigil run` with an HTTP sink to a receiver on loopback, and a
//! workload in the bench cgroup sending datagrams its policy forbids (Alert), each to the next
//! of 64,000 ports, so that the kernel's flood throttle (8 a second of one violation) holds
//! back nothing below 512,000 a second.
//! - latency: 1,000 violations a second for 30 s, structured mode; for each event, the time
//!   from its kernel timestamp (`time`) to its receipt; p50, p99 and max;
//! - throughput: violations as fast as the workload sends them for 10 s, batch mode; the
//!   events per second the receiver got over the busy part;
//! - aggregation: 1,000 identical violations (datagrams to one port) under a 10 s window; the
//!   first one's latency, how many events carried them, and that their counts add up.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail};

/// The goal the sinks issue sets for the alert path.
pub const LATENCY_P99_GOAL_MS: f64 = 5.0;

#[derive(Debug, Clone, Default)]
pub struct AlertResults {
    pub sent: u64,
    pub received: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub batch_sent: u64,
    pub batch_received: u64,
    pub batch_per_second: f64,
    pub aggregated_sent: u64,
    /// Events the receiver got for them, and the sum of their `count`s.
    pub aggregated_events: u64,
    pub aggregated_count: u64,
    pub aggregated_first_ms: f64,
    /// The batch load as a pipeline's throughput, with the agent's CPU time.
    pub batch: crate::bench_throughput::Throughput,
}

/// The aggregation window of the aggregation run.
const WINDOW_S: u64 = 10;

/// What the receiver saw: per event, its kernel time and when it arrived (both Unix ns), and
/// how many violations it stands for.
type Seen = Arc<Mutex<Vec<Arrival>>>;
type Arrival = (i128, i128, u64);

fn unix_ns(t: SystemTime) -> i128 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// A minimal HTTP/1.1 receiver: keep-alive, Content-Length bodies, 200 to everything.
fn receiver() -> Result<(u16, Seen)> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding the receiver")?;
    let port = listener.local_addr()?.port();
    let seen: Seen = Arc::default();
    let sink = seen.clone();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let sink = sink.clone();
            thread::spawn(move || serve(stream, &sink));
        }
    });
    Ok((port, seen))
}

fn serve(stream: TcpStream, seen: &Seen) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let arrived = unix_ns(SystemTime::now());
        record(&body, arrived, seen);
        if writer
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}

/// The kernel times of the connect events in a structured event; for a batch only how many
/// arrived (parsing each array would make the receiver, not the sink, the bottleneck).
fn record(body: &[u8], arrived: i128, seen: &Seen) {
    if body.first() == Some(&b'[') {
        let marker = b"\"dev.vigil.connect.v1\"";
        let n = memchr::memmem::find_iter(body, marker).count();
        seen.lock()
            .expect("seen")
            .extend(std::iter::repeat_n((0, arrived, 1), n));
        return;
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    let events = match value {
        serde_json::Value::Array(events) => events,
        event => vec![event],
    };
    let mut seen = seen.lock().expect("seen");
    for e in events {
        if e["type"] != "dev.vigil.connect.v1" {
            continue;
        }
        if let Some(t) = e["time"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .and_then(|t| t.timestamp_nanos_opt())
        {
            seen.push((
                i128::from(t),
                arrived,
                e["data"]["count"].as_u64().unwrap_or(1),
            ));
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The policy (datagrams to loopback off the allowlist: Alert) and the sink configuration.
fn files(
    dir: &Path,
    cgroup_rel: &str,
    port: u16,
    mode: &str,
    extra: &str,
) -> Result<(PathBuf, PathBuf)> {
    let policy = dir.join(format!("alerts-policy-{mode}.yaml"));
    std::fs::write(
        &policy,
        format!(
            "apiVersion: vigil.dev/v1alpha1\nkind: ClusterRuntimePolicy\nmetadata: {{name: bench-alerts}}\nspec:\n  hostProcesses: {{cgroupPrefixes: [\"{cgroup_rel}\"]}}\n  connect:\n    allow: [{{cidr: 10.255.255.0/24}}]\n    action: Alert\n"
        ),
    )?;
    let config = dir.join(format!("alerts-config-{mode}.yaml"));
    std::fs::write(
        &config,
        format!(
            "sinks:\n  - {{name: receiver, type: http, url: 'http://127.0.0.1:{port}/', mode: {mode}}}\n{extra}"
        ),
    )?;
    Ok((policy, config))
}

/// Where a load runs.
struct Bench<'a> {
    agent_binary: &'a Path,
    scenario: &'a Path,
    cgroup_dir: &'a Path,
    cgroup_rel: &'a str,
    work: &'a Path,
}

/// One load: the sink's mode, configuration beyond the sink, the workload's arguments, and
/// how long the receiver may stay quiet before what was in flight is taken as arrived.
struct Load<'a> {
    mode: &'a str,
    extra_config: &'a str,
    workload: &'a [&'a str],
    quiet: Duration,
}

/// What one load sent, what the receiver saw, the agent's CPU seconds from its start of the
/// workload until the receiver went quiet, and what the agent counted lost.
struct Outcome {
    sent: u64,
    seen: Vec<Arrival>,
    cpu_seconds: f64,
    lost: u64,
}

/// Runs one load under a fresh agent.
fn under_load(bench: &Bench<'_>, load: &Load<'_>) -> Result<Outcome> {
    let Bench {
        agent_binary,
        scenario,
        cgroup_dir,
        cgroup_rel,
        work,
    } = *bench;
    let (port, seen) = receiver()?;
    let (policy, config) = files(work, cgroup_rel, port, load.mode, load.extra_config)?;
    let args = [
        "run",
        "--policy",
        policy.to_str().context("UTF-8 path")?,
        "--config",
        config.to_str().context("UTF-8 path")?,
    ];
    let mut agent = crate::bench::start_agent(agent_binary, &args, "vigil is enforcing")?;
    let cpu = crate::bench_throughput::CpuWindow::open(&agent)?;
    let sent = crate::bench::run_in_cgroup_output(scenario, cgroup_dir, load.workload)?;
    let sent: u64 = sent
        .lines()
        .find_map(|l| l.strip_prefix("sent="))
        .and_then(|n| n.trim().parse().ok())
        .context("the workload did not say how much it sent")?;
    // Let what is in flight arrive: until nothing new comes for `quiet`, at most 30 s more.
    let deadline = Instant::now() + load.quiet + Duration::from_secs(30);
    let mut last = (0, Instant::now());
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
        let now = seen.lock().expect("seen").len();
        if now != last.0 {
            last = (now, Instant::now());
        } else if now > 0 && last.1.elapsed() >= load.quiet {
            break;
        }
    }
    let cpu_seconds = cpu.seconds(&agent)?;
    agent.stop()?;
    let lost = crate::bench_throughput::lost_said(load.mode, &agent.stderr_lines())?;
    let seen = seen.lock().expect("seen").clone();
    Ok(Outcome {
        sent,
        seen,
        cpu_seconds,
        lost,
    })
}

pub fn run(
    agent_binary: &Path,
    scenario: &Path,
    cgroup_dir: &Path,
    cgroup_rel: &str,
) -> Result<AlertResults> {
    let work = crate::util::workspace_root().join("target/bench");
    std::fs::create_dir_all(&work)?;
    let mut out = AlertResults::default();

    let bench = Bench {
        agent_binary,
        scenario,
        cgroup_dir,
        cgroup_rel,
        work: &work,
    };
    let Outcome { sent, seen, .. } = under_load(
        &bench,
        &Load {
            mode: "structured",
            extra_config: "",
            workload: &["bench-udp-paced", "1000", "30"],
            quiet: Duration::from_secs(1),
        },
    )?;
    if seen.is_empty() {
        bail!("the receiver got no alert of the {sent} violations");
    }
    let mut latencies: Vec<f64> = seen
        .iter()
        .map(|(kernel, arrived, _)| (arrived - kernel) as f64 / 1e6)
        .collect();
    latencies.sort_by(f64::total_cmp);
    out.sent = sent;
    out.received = seen.len() as u64;
    out.p50_ms = percentile(&latencies, 50.0);
    out.p99_ms = percentile(&latencies, 99.0);
    out.max_ms = *latencies.last().expect("not empty");

    let Outcome {
        sent,
        seen,
        cpu_seconds,
        lost,
    } = under_load(
        &bench,
        &Load {
            mode: "batch",
            extra_config: "",
            workload: &["bench-udp-paced", "0", "10"],
            quiet: Duration::from_secs(1),
        },
    )?;
    out.batch_sent = sent;
    out.batch_received = seen.len() as u64;
    let first = seen.iter().map(|(_, a, _)| *a).min().unwrap_or(0);
    let last = seen.iter().map(|(_, a, _)| *a).max().unwrap_or(0);
    let span = (last - first) as f64 / 1e9;
    out.batch_per_second = if span > 0.0 {
        seen.len() as f64 / span
    } else {
        0.0
    };
    out.batch = crate::bench_throughput::Throughput {
        pipeline: "vigil run, one HTTP sink in batch mode (every datagram a violation)".into(),
        sent,
        events: seen.len() as u64,
        lost,
        cpu_seconds,
        wall_seconds: span,
    };

    let window = format!("aggregation: {{window: {WINDOW_S}s}}\n");
    let Outcome { sent, seen, .. } = under_load(
        &bench,
        &Load {
            mode: "structured",
            extra_config: &window,
            workload: &["bench-udp-same", "1000"],
            // The summary comes when the window closes.
            quiet: Duration::from_secs(WINDOW_S + 2),
        },
    )?;
    let (kernel, arrived, _) = *seen
        .iter()
        .min_by_key(|(kernel, _, _)| *kernel)
        .context("the receiver got no event of the identical violations")?;
    out.aggregated_sent = sent;
    out.aggregated_events = seen.len() as u64;
    out.aggregated_count = seen.iter().map(|(_, _, n)| n).sum();
    out.aggregated_first_ms = (arrived - kernel) as f64 / 1e6;
    Ok(out)
}

pub fn print(r: &AlertResults) {
    println!();
    println!(
        "alert latency (kernel timestamp -> receipt at a loopback HTTP receiver, structured mode, 1,000 violations/s for 30 s):"
    );
    println!(
        "  p50 {:.2} ms   p99 {:.2} ms (goal < {LATENCY_P99_GOAL_MS} ms)   max {:.2} ms   received {} of {} sent",
        r.p50_ms, r.p99_ms, r.max_ms, r.received, r.sent
    );
    println!(
        "one HTTP sink in batch mode, the workload sending as fast as it can for 10 s: {:.0} events/s received ({} of {} sent; the rest were held back by the kernel's flood throttle or dropped where the pipeline could not keep up, both counted in loss events)",
        r.batch_per_second, r.batch_received, r.batch_sent
    );
    println!(
        "  {:.0} events per second of the agent's CPU ({:.2} CPU s), {} counted lost",
        r.batch.per_core_second(),
        r.batch.cpu_seconds,
        r.batch.lost
    );
    println!(
        "aggregation ({WINDOW_S} s window): {} identical violations reached the receiver as {} events whose counts add up to {}; the first in {:.2} ms (goal < {LATENCY_P99_GOAL_MS} ms)",
        r.aggregated_sent, r.aggregated_events, r.aggregated_count, r.aggregated_first_ms
    );
}
