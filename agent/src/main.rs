//! The `vigil` command line.
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio::sync::watch;
use vigil::{
    doctor,
    pipeline::{self, TraceOptions},
    sink::stdout::Format,
};

#[derive(Parser)]
#[command(
    name = "vigil",
    version,
    about = "eBPF runtime security agent for Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stream every observed exec, connect and W^X mapping as CloudEvents.
    Trace {
        /// `json`: one CloudEvent per line on stdout; `pretty`: a readable line per event.
        #[arg(long, value_enum, default_value = "json")]
        output: Format,
        /// Only this cgroup (relative to the cgroup v2 root, e.g. /system.slice/foo.service)
        /// and its descendants; filtered in the kernel.
        #[arg(long)]
        cgroup: Option<String>,
        /// Where cgroup v2 is mounted (default: found in /proc/self/mountinfo).
        #[arg(long)]
        cgroup_root: Option<PathBuf>,
        /// Node name used in `source` and `subject` (default: $NODE_NAME, else the host name).
        #[arg(long)]
        node_name: Option<String>,
        /// Ring buffer size in bytes (a power of two and a multiple of the page size).
        #[arg(long)]
        ring_buffer_bytes: Option<u32>,
    },
    /// Print what this kernel offers the agent; exit non-zero when the agent cannot run.
    Doctor,
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
    let cli = Cli::parse();
    vigil::telemetry::init_logging();
    match cli.command {
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
        Command::Trace {
            output,
            cgroup,
            cgroup_root,
            node_name,
            ring_buffer_bytes,
        } => {
            let options = TraceOptions {
                format: output,
                cgroup,
                cgroup_root,
                node: node_name.unwrap_or_else(vigil::node_name),
                ring_buffer_bytes,
            };
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
                let stdout = std::io::BufWriter::new(std::io::stdout().lock());
                let summary = pipeline::trace(&options, stdout, rx).await?;
                tracing::info!(
                    events = summary.emitted,
                    lost = summary.losses.total(),
                    "stopped"
                );
                Ok(())
            })
        }
    }
}
