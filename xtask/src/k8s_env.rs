//! `cargo xtask k8s-env [up --dir DIR [--node] [--node-name NAME] | down --dir DIR]`: the
//! Kubernetes test environment.
//!
//! Without `up`, builds `kube-apiserver`, `etcd`, `kubectl` and `helm` from the pinned Go
//! modules in `k8s-env/` into `target/k8s-env/bin` (each only when missing or out of date; with
//! `KUBEBUILDER_ASSETS` set, `kube-apiserver` and `etcd` come from there) and prints where they
//! are and their versions. `up` then starts etcd and kube-apiserver on loopback with the
//! `testenv` crate (what the tests use), prints `ready` and the kubeconfig's path, and runs
//! until SIGINT or SIGTERM, then stops both and cleans up. `up --node` runs a real one-node
//! cluster instead (`testenv::Cluster`: controllers, scheduler, containerd, CNI bridge,
//! kube-proxy, kubelet) with Vigil's image and the test images imported; `down` removes what a
//! cluster in DIR left behind (its owner is stopped first when it still runs).
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
        /// Name of the node.
        #[arg(long, default_value = testenv::DEFAULT_NODE_NAME)]
        node_name: String,
        /// Run a real node: kube-controller-manager, kube-scheduler, containerd with runc, a
        /// CNI bridge on 10.244.0.0/24, kube-proxy and a kubelet; Vigil's image (from the
        /// debug build) and the test images are imported. Cleans up a previous cluster in
        /// DIR first.
        #[arg(long)]
        node: bool,
    },
    /// Remove everything a `up --node` cluster in DIR left on the host (processes, pods,
    /// mounts, cgroups, the bridge, iptables chains), then DIR.
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
}

pub fn run(options: &Options) -> Result<()> {
    let bin = ensure()?;
    match &options.command {
        None => Ok(()),
        Some(Up::Up {
            dir,
            node_name,
            node: false,
        }) => up(dir, node_name, &bin),
        Some(Up::Up {
            dir,
            node_name,
            node: true,
        }) => up_node(dir, node_name, &bin),
        Some(Up::Down { dir }) => down(dir, &bin),
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
            Source::Cached(cache) => (pin(item), format!("from the cache {}", cache.display())),
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

fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot install a signal handler")?;
    }
    Ok(stop)
}

fn up_node(dir: &Path, node: &str, bin: &Path) -> Result<()> {
    crate::util::require_root("k8s-env up --node")?;
    let stop = stop_flag()?;
    // The debug build, as `cargo xtask run` and the tests use: the cluster is for trying the
    // agent, and a second (release) build of everything would double the wait.
    let binary = crate::build::run(false)?;
    let images = crate::util::workspace_root().join("target/images");
    let (images, sandbox_image) = crate::image::for_node(&binary, &images)?;
    let start = std::time::Instant::now();
    let cluster = testenv::Cluster::start(
        dir,
        bin,
        &testenv::NodeOptions {
            node_name: node.to_owned(),
            images,
            sandbox_image,
            ready_timeout: Duration::from_secs(300),
        },
    )?;
    let plane = cluster.control_plane();
    println!(
        "k8s-env: node {} Ready in {}; API server {}; pods on {}, Services on {}",
        cluster.node_name(),
        secs(start.elapsed()),
        plane.server(),
        testenv::POD_CIDR,
        testenv::SERVICE_CIDR
    );
    let failure = watch(&stop, &plane.kubeconfig(), || cluster.check_running());
    finish(failure, cluster.stop())
}

/// Prints what a script waits for, then watches the processes until a signal or a failure;
/// the failure, if any, is returned for `finish` to report after stopping.
fn watch<E>(
    stop: &AtomicBool,
    kubeconfig: &Path,
    mut check_running: impl FnMut() -> Result<(), E>,
) -> Option<E> {
    println!("ready");
    println!("{}", kubeconfig.display());
    let mut failure = None;
    while !stop.load(Ordering::Relaxed) {
        if let Err(err) = check_running() {
            failure = Some(err);
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    println!("k8s-env: stopping");
    failure
}

/// A failure seen while running outranks one seen while stopping.
fn finish<E>(failure: Option<E>, stopped: Result<(), E>) -> Result<()>
where
    anyhow::Error: From<E>,
{
    if let Some(err) = failure {
        return Err(err.into());
    }
    stopped?;
    println!("k8s-env: stopped");
    Ok(())
}

fn down(dir: &Path, bin: &Path) -> Result<()> {
    crate::util::require_root("k8s-env down")?;
    testenv::teardown(dir, bin)?;
    // Only what a cluster writes there: DIR may be a directory the user keeps other files in.
    for name in ["etcd-data", "pki", "apiserver-certs", "kubectl-cache"] {
        let path = dir.join(name);
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    for name in ["etcd.log", "kube-apiserver.log", "kubeconfig"] {
        let _ = std::fs::remove_file(dir.join(name));
    }
    let _ = std::fs::remove_dir(dir);
    println!("k8s-env: {} cleaned up", dir.display());
    Ok(())
}

fn up(dir: &Path, node: &str, bin: &Path) -> Result<()> {
    let stop = stop_flag()?;
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
    let failure = watch(&stop, &plane.kubeconfig(), || plane.check_running());
    finish(failure, plane.stop())
}
