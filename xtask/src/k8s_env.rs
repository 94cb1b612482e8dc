//! `cargo xtask k8s-env [up --dir DIR [--node NAME]]`: the Kubernetes test environment.
//!
//! Without `up`, builds `kube-apiserver`, `etcd`, `kubectl` and `helm` from the pinned Go
//! modules in `k8s-env/` into `target/k8s-env/bin` (each only when missing or out of date; with
//! `KUBEBUILDER_ASSETS` set, `kube-apiserver` and `etcd` come from there) and prints where they
//! are and their versions. `up` then starts etcd and kube-apiserver on loopback with the
//! `testenv` crate (what the tests use), prints `ready` and the kubeconfig's path, and runs
//! until SIGINT or SIGTERM, then stops both and cleans up.
use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context, Result};
use testenv::{ControlPlane, Source};

use crate::util::{command, output_of, secs};

#[derive(clap::Args)]
pub struct Options {
    #[command(subcommand)]
    command: Option<Up>,
}

#[derive(clap::Subcommand)]
enum Up {
    /// Build when needed, start etcd and kube-apiserver on 127.0.0.1, print `ready` and the
    /// kubeconfig path, and run until SIGINT or SIGTERM.
    Up {
        /// Directory for certificates, etcd data, logs and `kubeconfig` (created when missing,
        /// and then removed at exit).
        #[arg(long)]
        dir: PathBuf,
        /// Name of the Node object to create.
        #[arg(long, default_value = testenv::DEFAULT_NODE_NAME)]
        node: String,
    },
}

pub fn run(options: &Options) -> Result<()> {
    let bin = ensure()?;
    match &options.command {
        None => Ok(()),
        Some(Up::Up { dir, node }) => up(dir, node, &bin),
    }
}

/// Makes sure Go is there, builds what is missing or out of date, and prints the
/// binaries with their versions. Returns the directory holding them (for `VIGIL_K8S_BIN`).
pub fn ensure() -> Result<PathBuf> {
    let go = testenv::go_version().context("the Kubernetes test environment needs Go")?;
    let built = testenv::ensure_built()?;
    let bin = testenv::bin_dir();
    println!("k8s-env: {} (with {go})", bin.display());
    for item in &built {
        let (from, how) = match &item.source {
            Source::Built(took) => (pin(item), format!("built in {}", secs(*took))),
            Source::UpToDate => (pin(item), "up to date".to_owned()),
            // Not ours: say what the binary says it is.
            Source::KubebuilderAssets(path) => (
                output_of(command(path).arg("--version"))
                    .and_then(|v| v.lines().next().map(str::to_owned))
                    .unwrap_or_else(|| "(no --version)".to_owned()),
                format!("from KUBEBUILDER_ASSETS: {}", path.display()),
            ),
        };
        println!("  {:<15} {from:<35} {how}", item.tool.name);
    }
    Ok(bin)
}

fn pin(built: &testenv::Built) -> String {
    format!("{} {}", built.tool.module, built.tool.version)
}

fn up(dir: &Path, node: &str, bin: &Path) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot install a signal handler")?;
    }
    let options = testenv::Options {
        node_name: node.to_owned(),
        ..testenv::Options::default()
    };
    let start = std::time::Instant::now();
    let plane = ControlPlane::start_with(dir, bin, options)?;
    println!(
        "k8s-env: API server {} ready in {}; node {}; etcd {}",
        plane.server(),
        secs(start.elapsed()),
        plane.node_name(),
        plane.etcd_url()
    );
    println!("ready");
    println!("{}", plane.kubeconfig().display());
    let mut failure = None;
    while !stop.load(Ordering::Relaxed) {
        if let Err(err) = plane.check_running() {
            failure = Some(err);
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    println!("k8s-env: stopping");
    let stopped = plane.stop();
    if let Some(err) = failure {
        return Err(err);
    }
    stopped?;
    println!("k8s-env: stopped");
    Ok(())
}
