//! The `vigil` command line.
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio::sync::watch;
use vigil::{
    doctor,
    pipeline::{self, AgentOptions, TraceOptions, run::RunOptions},
    sink::{
        Filter, Routed,
        stdout::{Format, StdoutSink},
    },
};

#[derive(Parser)]
#[command(
    name = "vigil",
    version,
    about = "eBPF runtime security agent for Kubernetes"
)]
struct Cli {
    /// How the log is written on stderr: `text` (readable lines) or `json` (one object per
    /// line, the fields at the top level). The filter is `VIGIL_LOG` (default `info`).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "VIGIL_LOG_FORMAT"
    )]
    log_format: vigil::telemetry::LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// What every agent command takes.
#[derive(clap::Args)]
struct AgentArgs {
    /// `json`: one CloudEvent per line on stdout; `pretty`: a readable line per event. A
    /// shortcut for a configuration with one stdout sink.
    #[arg(long, value_enum, default_value = "json")]
    output: Format,
    /// Where events go: the sinks of this configuration file (docs/sinks.md). Checked
    /// whole before the agent starts.
    #[arg(long, conflicts_with = "output")]
    config: Option<PathBuf>,
    /// Where cgroup v2 is mounted (default: found in /proc/self/mountinfo).
    #[arg(long)]
    cgroup_root: Option<PathBuf>,
    /// Node name used in `source` and `subject` and to select this node's pods (default:
    /// $NODE_NAME, else the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// Ring buffer size in bytes (a power of two and a multiple of the page size).
    #[arg(long)]
    ring_buffer_bytes: Option<u32>,
    /// Forward the kernel probes' own log (why a probe gave up on an event) to this log, at
    /// warn level. Off by default: the probes then log nothing.
    #[arg(long)]
    kernel_log: bool,
    /// Serve `/metrics` (Prometheus), `/healthz` and `/readyz` on this address, e.g.
    /// `0.0.0.0:9464` (docs/operations.md).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
}

impl AgentArgs {
    /// The agent's options and its sinks (checked before anything is loaded).
    fn options(self) -> Result<(AgentOptions, Vec<Routed>)> {
        let node = self.node_name.unwrap_or_else(vigil::node_name);
        let (sinks, aggregation) = sinks(self.config.as_deref(), self.output, &node)?;
        let options = AgentOptions {
            aggregation,
            cgroup_root: self.cgroup_root,
            node,
            ring_buffer_bytes: self.ring_buffer_bytes,
            kernel_log: self.kernel_log,
            metrics_addr: self.metrics_addr,
            pin_dir: None,
        };
        Ok((options, sinks))
    }
}

/// The sinks events go to (those of the configuration file, or stdout in the chosen format)
/// and the aggregation window.
fn sinks(
    config: Option<&std::path::Path>,
    format: Format,
    node: &str,
) -> Result<(Vec<Routed>, Option<std::time::Duration>)> {
    let Some(path) = config else {
        let stdout = std::io::BufWriter::new(std::io::stdout());
        let console: Routed = (
            Box::new(StdoutSink::new(Box::new(stdout), format)),
            Filter::default(),
        );
        return Ok((vec![console], None));
    };
    let config = load_config(path)?;
    let sinks = config
        .sinks
        .iter()
        .map(|spec| vigil::sink::build(spec, node).map_err(anyhow::Error::from))
        .collect::<Result<_>>()?;
    Ok((sinks, config.aggregation_window))
}

/// The checked configuration, or every error on stderr and a refusal.
fn load_config(path: &std::path::Path) -> Result<vigil::config::Config> {
    vigil::config::load(path).map_err(|errors| {
        for e in &errors {
            eprintln!("{e}");
        }
        anyhow::anyhow!(
            "{}: the configuration is refused ({} error(s))",
            path.display(),
            errors.len()
        )
    })
}

#[derive(Subcommand)]
enum Command {
    /// Stream every observed exec, connect and W^X mapping as CloudEvents.
    Trace {
        #[command(flatten)]
        agent: AgentArgs,
        /// Only this cgroup (relative to the cgroup v2 root, e.g. /system.slice/foo.service)
        /// and its descendants; filtered in the kernel.
        #[arg(long)]
        cgroup: Option<String>,
    },
    /// Enforce policies in the kernel and stream violations as CloudEvents. Policy files are
    /// watched: a valid edit takes effect without a restart, an invalid one is refused whole.
    Run {
        /// Policy files, or directories of *.yaml/*.yml files; repeatable. In a cluster (a
        /// kubeconfig in KUBECONFIG or ~/.kube/config, or in-cluster configuration) the
        /// RuntimePolicy and ClusterRuntimePolicy objects are enforced too.
        #[arg(long = "policy")]
        policies: Vec<PathBuf>,
        #[command(flatten)]
        agent: AgentArgs,
        /// How often policy files and cgroups are checked for changes, in milliseconds.
        #[arg(long, default_value_t = 500)]
        watch_interval_ms: u64,
        /// Keep the agent's state (policies in force, bindings, refusals) as JSON in this
        /// file, replaced whole on every change.
        #[arg(long)]
        state_file: Option<PathBuf>,
        /// Pin the programs in bpffs under this directory (e.g. /sys/fs/bpf/vigil), so that
        /// they keep enforcing while the agent restarts or is upgraded; the next agent takes
        /// over from them. In a cluster the pins go when the agent's DaemonSet is deleted
        /// (`helm uninstall`); `vigil unpin` removes them by hand.
        #[arg(long)]
        pin_dir: Option<PathBuf>,
    },
    /// Remove the enforcement `vigil run --pin-dir` left pinned: its programs detach.
    Unpin {
        #[arg(long, default_value = vigil::ebpf::pin::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Print what this kernel offers the agent; exit non-zero when the agent cannot run.
    Doctor,
    /// Ask the agent on every node a DaemonSet covers for `/readyz` (what `helm test` runs):
    /// exit 0 only when each one answered ready.
    CheckReady {
        /// The DaemonSet's namespace.
        #[arg(long)]
        namespace: String,
        /// The DaemonSet's name.
        #[arg(long)]
        daemonset: String,
        /// The agents' metrics port (`--metrics-addr`).
        #[arg(long, default_value_t = 9464)]
        port: u16,
    },
    /// Work with the agent's configuration file (sinks).
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Work with RuntimePolicy and ClusterRuntimePolicy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Write the CRDs generated from the policy types into DIR (for `cargo xtask crd`).
    #[command(hide = true)]
    Crd {
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the JSON Schema of the events, generated from their types (for `cargo xtask
    /// schema`).
    #[command(hide = true)]
    Schema,
    /// Attach an empty program to every hook Vigil attaches to, until SIGINT or SIGTERM:
    /// the floor `cargo xtask bench` measures Vigil against. Decides and reports nothing.
    #[command(hide = true)]
    Floor {
        /// Leave these hooks out, to measure what they cost: `raw-syscalls` (the raw
        /// `sys_enter` and `sys_exit`) or `syscalls` (every system call hook).
        #[arg(long, value_name = "HOOKS")]
        without: Vec<vigil::ebpf::floor::LeaveOut>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check a configuration file without starting: exit 0 and name its sinks, or exit 1 and
    /// print one `file: field.path: reason` line per error.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate policy files: exit 0 and print one summary line per policy, or exit 1 and
    /// print one `file: field.path: reason` line per error (all on stdout).
    Check {
        /// Files, or directories whose *.yaml and *.yml files are read.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

/// `vigil policy check`: results on stdout (summaries or errors) so tools read one stream.
fn policy_check(paths: &[PathBuf]) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match vigil::policy::load_paths(paths) {
        Ok(policies) => {
            for p in &policies {
                let file = p
                    .source()
                    .map(|s| format!("{}: ", s.display()))
                    .unwrap_or_default();
                writeln!(out, "{file}{}", vigil::policy::summary(p))?;
            }
            if policies.is_empty() {
                // A check that checked nothing is most likely a wrong path.
                eprintln!(
                    "no policies found (directories are read for *.yaml and *.yml, not recursively)"
                );
                std::process::exit(1)
            }
            Ok(())
        }
        Err(errors) => {
            for e in &errors {
                writeln!(out, "{e}")?;
            }
            out.flush()?;
            // Not an `Err`: the errors above are the report; a backtrace would only add noise.
            eprintln!("{} error(s): the policies are refused", errors.len());
            std::process::exit(1)
        }
    }
}

/// `vigil crd --out DIR`: the chart's CRD files, generated from the Rust types.
fn write_crds(dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, yaml) in vigil::policy::crd::crd_files()? {
        let path = dir.join(name);
        std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Runs `body` on a tokio runtime with a stop signal that SIGINT and SIGTERM set.
fn with_signals<F, Fut>(body: F) -> Result<()>
where
    F: FnOnce(watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            if let Err(err) = stop_on_signal(tx).await {
                tracing::error!("{err:#}");
            }
        });
        body(rx).await
    })
}

async fn stop_on_signal(tx: watch::Sender<bool>) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = int.recv() => tracing::info!("SIGINT: stopping after flushing"),
        _ = term.recv() => tracing::info!("SIGTERM: stopping after flushing"),
    }
    let _ = tx.send(true);
    Ok(())
}

fn main() -> Result<()> {
    let tuned = vigil::memory::tune_allocator();
    let cli = Cli::parse();
    vigil::telemetry::init_logging(cli.log_format)?;
    if !tuned {
        tracing::warn!(
            "the allocator refused its thresholds (mallopt); the agent's memory may grow larger"
        );
    }
    match cli.command {
        Command::Policy {
            command: PolicyCommand::Check { paths },
        } => policy_check(&paths),
        Command::Crd { out } => write_crds(&out),
        Command::Config {
            command: ConfigCommand::Check { file },
        } => match vigil::config::load(&file) {
            Ok(config) => {
                for spec in &config.sinks {
                    println!(
                        "{}: sink {} ({})",
                        file.display(),
                        spec.name,
                        spec.kind.type_name()
                    );
                }
                Ok(())
            }
            Err(errors) => {
                for e in &errors {
                    println!("{e}");
                }
                eprintln!("{} error(s): the configuration is refused", errors.len());
                std::process::exit(1)
            }
        },
        Command::Schema => {
            print!("{}", vigil::cloudevents::schema::event_schema_text());
            Ok(())
        }
        Command::Unpin { pin_dir } => {
            vigil::ebpf::pin::remove_all(&pin_dir)?;
            println!("{}: no pinned enforcement left", pin_dir.display());
            Ok(())
        }
        Command::CheckReady {
            namespace,
            daemonset,
            port,
        } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let readiness =
                runtime.block_on(vigil::readiness::check(&namespace, &daemonset, port))?;
            for line in vigil::readiness::report(&readiness) {
                println!("{line}");
            }
            anyhow::ensure!(
                readiness.all_ready(),
                "not every agent of daemonset {namespace}/{daemonset} is ready"
            );
            Ok(())
        }
        Command::Floor { without } => with_signals(|mut rx| async move {
            let floor = vigil::ebpf::floor::Floor::attach(None, &without)?;
            tracing::info!(
                hooks = floor.attached,
                lsm = floor.lsm,
                "the floor is attached: empty programs on every hook"
            );
            let _ = rx.wait_for(|stop| *stop).await;
            drop(floor);
            Ok(())
        }),
        Command::Doctor => {
            let checks = doctor::run();
            for c in &checks {
                println!("{c}");
            }
            if doctor::can_run(&checks) {
                println!("vigil can run on this kernel");
                Ok(())
            } else {
                let failed: Vec<&str> = checks
                    .iter()
                    .filter(|c| c.status == doctor::Status::Fail)
                    .map(|c| c.name.as_str())
                    .collect();
                anyhow::bail!("vigil cannot run here: {} failed", failed.join(", "))
            }
        }
        Command::Run {
            policies,
            agent,
            watch_interval_ms,
            state_file,
            pin_dir,
        } => {
            // Sinks are made in the runtime: some start tasks of their own.
            with_signals(|rx| async move {
                let (mut agent, sinks) = agent.options()?;
                agent.pin_dir = pin_dir;
                let options = RunOptions {
                    agent,
                    policies,
                    watch_interval: std::time::Duration::from_millis(watch_interval_ms.max(50)),
                    state_file,
                };
                let summary = pipeline::run::run(&options, sinks, rx).await?;
                tracing::info!(
                    violations = summary.emitted,
                    lost = summary.losses.total(),
                    where_lost = summary.losses.breakdown(),
                    "stopped"
                );
                Ok(())
            })
        }
        Command::Trace { agent, cgroup } => {
            let (agent, sinks) = agent.options()?;
            let options = TraceOptions { agent, cgroup };
            with_signals(|rx| async move {
                let summary = pipeline::trace(&options, sinks, rx).await?;
                tracing::info!(
                    events = summary.emitted,
                    lost = summary.losses.total(),
                    where_lost = summary.losses.breakdown(),
                    "stopped"
                );
                Ok(())
            })
        }
    }
}
