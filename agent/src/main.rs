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
    #[command(flatten)]
    node: NodeArgs,
    /// Forward the kernel probes' own log (why a probe gave up on an event) to this log, at
    /// warn level. Off by default: the probes then log nothing.
    #[arg(long)]
    kernel_log: bool,
    /// Serve `/metrics` (Prometheus), `/healthz` and `/readyz` on this address, e.g.
    /// `0.0.0.0:9464` (docs/operations.md).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
}

/// Where the probes run: what every command that loads them takes (`vigil learn` only this).
#[derive(clap::Args)]
struct NodeArgs {
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
}

impl AgentArgs {
    /// The agent's options and its sinks (checked before anything is loaded).
    fn options(self) -> Result<(AgentOptions, Vec<Routed>)> {
        let node = self.node.node_name.unwrap_or_else(vigil::node_name);
        let (sinks, aggregation) = sinks(self.config.as_deref(), self.output, &node)?;
        let options = AgentOptions {
            aggregation,
            cgroup_root: self.node.cgroup_root,
            node,
            ring_buffer_bytes: self.node.ring_buffer_bytes,
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
        /// How often what `Learn` policies learned is published (RuntimePolicyReport), when
        /// it changed: `15s`, `1m`.
        #[arg(long, default_value = "15s", value_parser = vigil::learn::parse_duration)]
        learn_report_interval: std::time::Duration,
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
    /// Write an allowlist policy from what a workload does: every exec, connect and W^X
    /// mapping in a cgroup, for --duration, or while a command started in it runs. The policy
    /// (mode Audit, to review) goes to stdout or -o; with --against, a JSON Patch that makes
    /// that policy allow what the workload did goes there instead.
    Learn {
        #[command(flatten)]
        agent: NodeArgs,
        /// The cgroup to watch (relative to the cgroup v2 root, not the root itself). A
        /// command runs in it (made if missing, then removed); a command without --cgroup
        /// runs in a fresh /vigil-learn-<pid>. Without a command or --duration, learning
        /// lasts until SIGINT or SIGTERM.
        #[arg(long)]
        cgroup: Option<String>,
        /// Learn for this long (90s, 10m, 2h); with a command, at most this long (the command
        /// is then stopped: SIGTERM, SIGKILL after 10 s).
        #[arg(long, value_parser = vigil::learn::parse_duration)]
        duration: Option<std::time::Duration>,
        /// The written policy's name (default: from the command or cgroup).
        #[arg(long)]
        name: Option<String>,
        /// Write the policy (or patch) here instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Compare with this policy file: print what it would refuse as a JSON Patch
        /// (`kubectl patch ... --type json --patch-file`), and what no addition can allow.
        #[arg(long)]
        against: Option<PathBuf>,
        /// Keep the learn table in this JSON file: loaded when it exists, saved every 10 s
        /// and at the end, so that a stopped run goes on where it stopped.
        #[arg(long)]
        table: Option<PathBuf>,
        /// Executables kept one by one at most; past it, directories fold into prefixes.
        #[arg(long, default_value_t = 1024)]
        max_executables: usize,
        /// A directory with this many learned executables is written as a prefix.
        #[arg(long, default_value_t = 32)]
        collapse_at: usize,
        /// Learn in the cluster instead, through the agents already deployed: the pods of
        /// this namespace that --selector picks (a RuntimePolicy in mode Learn is put in
        /// place for them, and taken away at the end).
        #[arg(long, conflicts_with_all = ["cgroup", "command", "table"])]
        namespace: Option<String>,
        /// With --namespace: the pods' labels, `app=web,tier=front` (matchLabels).
        #[arg(long, requires = "namespace")]
        selector: Option<String>,
        /// With --namespace: after --duration, how long the agents have for their last
        /// reports (they publish every --learn-report-interval, 15 s by default).
        #[arg(long, default_value = "20s", value_parser = vigil::learn::parse_duration, requires = "namespace")]
        report_wait: std::time::Duration,
        /// With --namespace: leave the Learn policy in place (learning goes on; run again to
        /// take up what it learned since).
        #[arg(long, requires = "namespace")]
        keep_learning: bool,
        /// The command to run and learn (after --).
        #[arg(last = true)]
        command: Vec<std::ffi::OsString>,
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

/// The default name of a learned policy: the command's file name, else the cgroup's last
/// component.
fn learned_name(options: &vigil::learn::host::HostLearn) -> String {
    let from_command = options.command.first().and_then(|c| {
        std::path::Path::new(c)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
    });
    let from_cgroup = options
        .cgroup
        .as_deref()
        .and_then(|c| c.trim_end_matches('/').rsplit('/').next())
        .map(str::to_owned);
    format!(
        "learned-{}",
        from_command
            .or(from_cgroup)
            .unwrap_or_else(|| "workload".into())
    )
}

/// `vigil learn --against FILE`: the one policy in the file.
fn against_policy(path: &std::path::Path) -> Result<vigil::policy::Policy> {
    let mut found = vigil::policy::load_paths(&[path.to_path_buf()]).map_err(|errors| {
        for e in &errors {
            eprintln!("{e}");
        }
        anyhow::anyhow!("{}: the policy is refused", path.display())
    })?;
    anyhow::ensure!(
        found.len() == 1,
        "{}: --against takes a file with one policy, found {}",
        path.display(),
        found.len()
    );
    Ok(found.remove(0))
}

/// The end of `vigil learn`: warnings on stderr, the policy or patch to `output` or stdout.
fn finish_learn(
    warnings: &std::collections::BTreeSet<String>,
    lost: u64,
    output: Option<&std::path::Path>,
    text: &str,
) -> Result<()> {
    for w in warnings {
        eprintln!("warning: {w}");
    }
    if lost > 0 {
        eprintln!("warning: {lost} events were lost while learning");
    }
    match output {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// `vigil learn --against`: the patch as JSON (what it cannot mend on stderr).
fn learn_diff(table: &vigil::learn::table::LearnTable, policy: &vigil::policy::Policy) -> String {
    let diff = vigil::learn::diff::diff(table, policy);
    for line in &diff.additions {
        eprintln!("{}: would refuse {line}", policy.id());
    }
    for line in &diff.conflicts {
        eprintln!(
            "{}: refuses, and no addition can allow: {line}",
            policy.id()
        );
    }
    if diff.is_empty() {
        eprintln!("{}: allows everything the workload did", policy.id());
    }
    let mut text = serde_json::to_string_pretty(&diff.patch).unwrap_or_else(|_| "[]".into());
    text.push('\n');
    text
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
            learn_report_interval,
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
                    learn_report_interval: learn_report_interval
                        .max(std::time::Duration::from_millis(100)),
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
        Command::Learn {
            agent,
            cgroup,
            duration,
            name,
            output,
            against,
            table,
            max_executables,
            collapse_at,
            namespace,
            selector,
            report_wait,
            keep_learning,
            command,
        } => {
            let limits = vigil::learn::table::Limits {
                executables: max_executables,
                collapse_at,
                ..Default::default()
            };
            let against = against.as_deref().map(against_policy).transpose()?;
            if let Some(namespace) = namespace {
                let labels =
                    vigil::learn::cluster::parse_selector(selector.as_deref().unwrap_or(""))
                        .map_err(|e| anyhow::anyhow!("--selector {e}"))?;
                let name = vigil::learn::write::object_name(&name.unwrap_or_else(|| {
                    let of = labels.values().next().map_or("pods", String::as_str);
                    format!("learned-{of}")
                }));
                let options = vigil::learn::cluster::ClusterLearn {
                    namespace,
                    labels,
                    name,
                    duration,
                    report_wait,
                    limits,
                    keep: keep_learning,
                };
                return with_signals(|rx| async move {
                    let client = kube::Client::try_default().await.context(
                        "connecting to the cluster (KUBECONFIG, ~/.kube/config or in-cluster)",
                    )?;
                    let outcome = vigil::learn::cluster::learn(client, &options, rx).await?;
                    eprintln!(
                        "reports from {} node(s): {}",
                        outcome.nodes.len(),
                        outcome.nodes.join(", ")
                    );
                    let text = match &against {
                        Some(policy) => learn_diff(&outcome.table, policy),
                        None => vigil::learn::write::policy_yaml(&vigil::learn::write::Learned {
                            name: &options.name,
                            scope: vigil::learn::write::Scope::Pods {
                                namespace: options.namespace.clone(),
                                labels: options.labels.clone(),
                            },
                            table: &outcome.table,
                            services: outcome.services,
                            origin: format!(
                                "in namespace {} on node(s) {}, until {}",
                                options.namespace,
                                outcome.nodes.join(", "),
                                chrono::Utc::now()
                                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                            ),
                        })?,
                    };
                    finish_learn(&outcome.table.warnings, 0, output.as_deref(), &text)
                });
            }
            let node = agent.node_name.unwrap_or_else(vigil::node_name);
            let options = vigil::learn::host::HostLearn {
                agent: AgentOptions {
                    aggregation: None,
                    cgroup_root: agent.cgroup_root,
                    node: node.clone(),
                    ring_buffer_bytes: agent.ring_buffer_bytes,
                    kernel_log: false,
                    metrics_addr: None,
                    pin_dir: None,
                },
                cgroup,
                command,
                duration,
                limits,
                table_file: table,
            };
            let default_name = learned_name(&options);
            with_signals(|rx| async move {
                let outcome = vigil::learn::host::learn(options, rx).await?;
                if let Some(status) = outcome.exit {
                    eprintln!("the command ended: {status}");
                }
                let text = match &against {
                    Some(policy) => learn_diff(&outcome.table, policy),
                    None => {
                        let name = name.unwrap_or(default_name);
                        let learned = vigil::learn::write::Learned {
                            name: &vigil::learn::write::object_name(&name),
                            scope: vigil::learn::write::Scope::Host {
                                cgroup: outcome.cgroup.clone(),
                            },
                            table: &outcome.table,
                            services: vigil::learn::write::ServiceIndex::new(),
                            origin: format!(
                                "on {node}, cgroup {}, until {}",
                                outcome.cgroup,
                                chrono::Utc::now()
                                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                            ),
                        };
                        vigil::learn::write::policy_yaml(&learned)?
                    }
                };
                finish_learn(
                    &outcome.table.warnings,
                    outcome.lost,
                    output.as_deref(),
                    &text,
                )
            })
        }
        Command::Trace { agent, cgroup } => {
            let (agent, sinks) = agent.options()?;
            let options = TraceOptions {
                agent,
                cgroup,
                ready: None,
            };
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
