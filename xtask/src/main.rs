//! Vigil's developer tasks: `cargo xtask <command>` (the alias lives in `.cargo/config.toml`).
//!
//! `setup` installs what the build needs, `build` and `run` build and start the agent, `test`
//! is the full suite CI runs (`.ci/run`), `bench` measures the agent's overhead, and `crd`
//! regenerates the chart's CRDs from the Rust types.
mod bench;
mod bench_alerts;
mod bench_programs;
mod bench_scale;
mod bench_throughput;
mod build;
mod crd;
mod fake_slack;
mod guest;
mod image;
mod k8s_env;
mod run;
mod schema;
mod setup;
mod test;
mod util;
mod vm_test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Vigil's developer tasks",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install and check what the build needs (eBPF toolchain, bpf-linker, test packages).
    ///
    /// Quick when everything is present. Installing (apt-get) needs root.
    Setup,
    /// Run `setup`, then build the agent and the scenario binary.
    Build {
        /// Build with the release profile (target/release/vigil).
        #[arg(long)]
        release: bool,
    },
    /// Run `setup`, build (debug), then start the agent as root.
    ///
    /// Without arguments runs `vigil run --policy policies/host/ --output pretty` (the host
    /// baseline); with arguments after `--`, runs `vigil ARGS...` (e.g.
    /// `cargo xtask run -- doctor`).
    Run {
        /// Arguments for `target/debug/vigil` (default: `run --policy policies/host/ --output
        /// pretty`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The full suite, what CI runs: setup, fmt, clippy, build, then all tests (as root),
    /// the node tests also on a pure cgroup v2 kernel in QEMU.
    ///
    /// Arguments after `--` go to the test binaries (after `cargo test ... --`), e.g.
    /// `cargo xtask test -- exec_is_reported`.
    Test {
        /// Only the suite's last step: the node tests on the pure cgroup v2 kernel in QEMU
        /// (after the Kubernetes binaries, a debug build and the node images).
        #[arg(long)]
        cgroup_v2_only: bool,
        /// Boot the pure cgroup v2 guest on this node-test script only (the suite runs it
        /// beside the host's tests).
        #[arg(long, hide = true, value_name = "SCRIPT")]
        guest_script: Option<std::path::PathBuf>,
        /// Extra arguments for the test binaries.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Measure the agent's overhead on exec, connect and mmap workloads (as root).
    ///
    /// Default iterations per run: exec 2000, connect 20000, mmap 100000; each workload is
    /// run 3 times without and 3 times with the agent, and the medians are compared.
    /// Results also go to target/bench/results.json.
    Bench(bench::Options),
    /// Write the chart's CRDs (charts/vigil/crds/) from the policy types in the agent.
    ///
    /// With --check, only compare and fail when the committed YAML is out of date.
    Crd(crd::Options),
    /// Write docs/event.schema.json from the agent's event types.
    ///
    /// With --check, only compare and fail when the committed file is out of date.
    Schema(schema::Options),
    /// Build the Kubernetes test binaries (kube-apiserver, kubectl, the node's kubelet,
    /// kube-controller-manager, kube-scheduler and kube-proxy, etcd, helm) into
    /// target/k8s-env/bin when missing; with `up --dir DIR`, also run a cluster.
    ///
    /// `up` starts etcd and kube-apiserver on 127.0.0.1, writes DIR/kubeconfig (cluster-admin),
    /// creates a Node object, prints `ready` and the kubeconfig path, and runs until SIGINT or
    /// SIGTERM. With KUBEBUILDER_ASSETS set, kube-apiserver and etcd come from there. `up
    /// --node` runs a real one-node cluster instead (root); `down` removes what one left.
    K8sEnv(k8s_env::Options),
    /// A stand-in for a Slack incoming webhook, over HTTPS with a CA of its own, for trying the
    /// Slack sink where Slack cannot be reached (docs/quickstart.md).
    ///
    /// Writes DIR/ca.pem, DIR/webhook-url (the secret URL) and DIR/messages.jsonl, prints each
    /// message's text, and runs until SIGINT or SIGTERM.
    FakeSlack(fake_slack::Options),
    /// The kernel and enforcement tests on Debian's kernels, each booted under QEMU (TCG)
    /// with this host's root over 9p; one table of the results (as root).
    ///
    /// Kernels come from Debian's suites (bullseye to sid) through an apt configuration of
    /// its own under target/vm/apt. Default: 6.1.
    VmTest(vm_test::Options),
    /// Build the agent (release) and its container image as an OCI archive:
    /// target/images/vigil-<appVersion>.oci.tar, named vigil:<appVersion> (the chart's
    /// appVersion). `ctr -n k8s.io images import`, `docker load` and `podman load` take it.
    Image {
        /// Package this binary instead of building the release one.
        #[arg(long)]
        binary: Option<std::path::PathBuf>,
        /// Also build the test workloads' image (Debian's busybox-static) and the pod sandbox
        /// image, the same way.
        #[arg(long)]
        workloads: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run().map(|_| ()),
        Command::Build { release } => build::run(release).map(|_| ()),
        Command::Run { args } => run::run(&args),
        Command::Test {
            cgroup_v2_only: true,
            ..
        } => test::cgroup_v2_only(),
        Command::Test {
            guest_script: Some(script),
            ..
        } => test::guest_script(&script),
        Command::Test { args, .. } => test::run(&args),
        Command::Bench(options) => bench::run(&options),
        Command::Crd(options) => crd::run(&options),
        Command::Schema(options) => schema::run(&options),
        Command::K8sEnv(options) => k8s_env::run(&options),
        Command::FakeSlack(options) => fake_slack::run(&options),
        Command::VmTest(options) => vm_test::run(&options),
        Command::Image { binary, workloads } => image::run(binary, workloads),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
