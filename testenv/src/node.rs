//! A real one-node cluster: the control plane of [`ControlPlane`] plus kube-controller-manager,
//! kube-scheduler, containerd with runc, a CNI bridge, kube-proxy and a kubelet registered as
//! the node, all owned by one [`Cluster`].
//!
//! What it touches on the host, and how it leaves it (see `node_cleanup.rs`):
//! - a bridge [`BRIDGE`] holding [`NODE_ADDRESS`] on the private pod range [`POD_CIDR`], with
//!   forwarding on that interface alone, and a filter chain that drops whatever would be
//!   forwarded from the bridge to any other interface: pods reach each other, the node and
//!   Service ClusterIPs, never the host's network. Pods get no default route either.
//! - kube-proxy's iptables chains (removed with `kube-proxy --cleanup`), configured to change no
//!   sysctl (no conntrack sizing, no `route_localnet`).
//! - the kubelet runs in a mount namespace of its own where the six kernel settings it would
//!   rewrite (`vm.overcommit_memory`, `kernel.panic`, ...) are files holding the values it
//!   wants, so the host keeps its own. Its root directory is a shared mount, so the volumes it
//!   mounts there (service-account tokens) are seen by runc in the host's namespace.
//! - cgroups under `kubepods` in every hierarchy; containerd's state, CNI state and pod logs
//!   under the cluster's directory.
//! - tracefs and bpffs are mounted when the host lacks them (as a systemd node has them), and
//!   unmounted at the end only if this mounted them.
//!
//! Every address the cluster uses is in [`POD_CIDR`] or [`SERVICE_CIDR`], or loopback.
use std::{
    ffi::OsString,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    control_plane::{ControlPlane, Options, SERVICE_CIDR},
    node_cleanup::{self, Leftovers},
    process::{Proc, log_tail, require_executable},
};

/// The pods' range, on the bridge.
pub const POD_CIDR: &str = "10.244.0.0/24";
/// The node's address on the bridge: the pods' gateway, the kubelet's and the API server's
/// address, and the `kubernetes` Service's endpoint.
pub const NODE_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The bridge the CNI plugin puts pods on.
pub const BRIDGE: &str = "vigil-cni0";
/// The CNI network's name (and the prefix of its cached results).
pub const CNI_NETWORK: &str = "vigil-testenv";
/// The filter chain that keeps pod traffic on the bridge.
pub const FILTER_CHAIN: &str = "VIGIL-TESTENV";
/// containerd's namespace for the CRI (images imported for pods go here).
pub const CRI_NAMESPACE: &str = "k8s.io";
/// The kubelet's port on [`NODE_ADDRESS`].
pub const KUBELET_PORT: u16 = 10250;

/// The kernel settings kubelet would set, and the values it wants.
const KUBELET_SYSCTLS: [(&str, &str); 6] = [
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];

const STOP_GRACE: Duration = Duration::from_secs(15);

/// What [`Cluster::start`] needs beyond the directory.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The node's name.
    pub node_name: String,
    /// OCI archives to import into containerd before the kubelet starts.
    pub images: Vec<PathBuf>,
    /// The pod sandbox image (one of `images`), e.g. `docker.io/library/vigil-test-pause:0.1.0`.
    pub sandbox_image: String,
    /// How long the node may take to turn Ready, and each of etcd and kube-apiserver to
    /// become ready before it: one bound, so a slow machine (emulation) stretches them all.
    pub ready_timeout: Duration,
}

/// The paths of one cluster's node side, all under `DIR/node`.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) root: PathBuf,
}

impl Layout {
    pub(crate) fn new(dir: &Path) -> Self {
        Self {
            root: dir.join("node"),
        }
    }
    pub(crate) fn containerd_socket(&self) -> PathBuf {
        self.root.join("containerd.sock")
    }
    fn containerd_config(&self) -> PathBuf {
        self.root.join("containerd.toml")
    }
    pub(crate) fn kubelet_root(&self) -> PathBuf {
        self.root.join("kubelet")
    }
    fn cni_conf_dir(&self) -> PathBuf {
        self.root.join("cni")
    }
    fn sysctl_dir(&self) -> PathBuf {
        self.root.join("sysctl")
    }
    pub(crate) fn leftovers(&self) -> PathBuf {
        self.root.join("leftovers.json")
    }
    fn log(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.log"))
    }
}

/// A running one-node cluster. Dropping it (or [`Cluster::stop`]) stops every process it
/// started, the pods' included, and removes what it put on the host; [`teardown`] does the
/// same for a cluster whose owner died.
#[derive(Debug)]
pub struct Cluster {
    plane: Option<ControlPlane>,
    layout: Layout,
    dir: PathBuf,
    node_name: String,
    /// Started in this order, stopped in reverse.
    procs: Mutex<Vec<Proc>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `program args`, failing with its output when it fails.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn os(args: &[String]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

impl Cluster {
    /// Cleans up whatever a previous cluster in `dir` left, then starts a new one and returns
    /// once the node is Ready, the `default` ServiceAccount exists and `dir/kubeconfig`
    /// (cluster-admin) works. `bin_dir` has every binary of [`crate::TOOLS`].
    pub fn start(dir: &Path, bin_dir: &Path, options: &NodeOptions) -> Result<Self> {
        for name in [
            "kube-controller-manager",
            "kube-scheduler",
            "kube-proxy",
            "kubelet",
        ] {
            require_executable(&bin_dir.join(name))?;
        }
        let dir = std::path::absolute(dir)
            .with_context(|| format!("cannot make {} absolute", dir.display()))?;
        // Where a slow start spends its time, for a run that timed out under emulation.
        let mut since = Instant::now();
        let mut took = |phase: &str| {
            eprintln!("testenv: {phase} in {:.1} s", since.elapsed().as_secs_f64());
            since = Instant::now();
        };
        node_cleanup::teardown(&dir, bin_dir).context("cannot clean up a previous cluster")?;
        took("cleaning up a previous cluster");
        let layout = Layout::new(&dir);
        for sub in [
            layout.root.clone(),
            layout.kubelet_root(),
            layout.sysctl_dir(),
        ] {
            fs::create_dir_all(&sub).with_context(|| format!("cannot create {}", sub.display()))?;
        }
        let mut leftovers = Leftovers {
            owner: node_cleanup::start_time(std::process::id())
                .map(|started| (std::process::id(), started)),
            // Started below; `--cleanup` is harmless should it not get that far.
            kube_proxy: true,
            kube_chains_before: node_cleanup::kube_chains()?,
            netns_before: node_cleanup::pod_netns(),
            tables_before: Some(node_cleanup::tables()?),
            agent_pins_before: Path::new(node_cleanup::AGENT_PINS).exists(),
            ..Leftovers::default()
        };
        // From the first change to the host on, the record says what to undo.
        let result = Self::prepare_host(&layout, &mut leftovers);
        leftovers.save(&layout.leftovers())?;
        result?;

        let plane = ControlPlane::start_with(
            &dir,
            bin_dir,
            Options {
                node_name: options.node_name.clone(),
                service_account_admission: true,
                address: NODE_ADDRESS,
                create_node: false,
                ready_timeout: options.ready_timeout,
                ..Options::default()
            },
        )?;
        let cluster = Self {
            plane: Some(plane),
            layout,
            dir,
            node_name: options.node_name.clone(),
            procs: Mutex::new(Vec::new()),
        };
        took("etcd and kube-apiserver ready");
        cluster.start_controllers(bin_dir)?;
        cluster.start_containerd(options)?;
        took("containerd up with the images imported");
        cluster.start_kubelet(bin_dir)?;
        // kube-proxy reads its node's addresses once at start: started before the kubelet
        // registered the node, it assumes loopback, and when the node then appears it exits
        // ("NodeIPs changed"), for its DaemonSet to restart it. Nothing restarts it here; a
        // busy or emulated machine registers late.
        cluster.wait_for(
            options.ready_timeout,
            &[(
                "the kubelet to register the node",
                vec![
                    "get".into(),
                    "node".into(),
                    cluster.node_name.clone(),
                    "-o".into(),
                    "jsonpath=True".into(),
                ],
            )],
        )?;
        took("the node registered");
        cluster.start_kube_proxy(bin_dir)?;
        cluster.wait_ready(options.ready_timeout)?;
        took("the node Ready");
        Ok(cluster)
    }

    /// Mounts, the bridge and the filter chain; each recorded in `leftovers` once made.
    fn prepare_host(layout: &Layout, leftovers: &mut Leftovers) -> Result<()> {
        for (fs_type, target) in [("tracefs", "/sys/kernel/tracing"), ("bpf", "/sys/fs/bpf")] {
            if !node_cleanup::is_mount_point(Path::new(target))? {
                run("mount", &["-t", fs_type, fs_type, target])?;
                leftovers.mounted.push(target.to_owned());
            }
        }

        run("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
        leftovers.bridge = true;
        run(
            "ip",
            &["addr", "add", &format!("{NODE_ADDRESS}/24"), "dev", BRIDGE],
        )?;
        run("ip", &["link", "set", BRIDGE, "up"])?;
        // Forwarding on this interface only: the pods' traffic to Service ClusterIPs comes in
        // here and goes back out here. The host's own setting stays as it is.
        write(
            &PathBuf::from(format!("/proc/sys/net/ipv4/conf/{BRIDGE}/forwarding")),
            "1",
        )?;
        // In the mangle table, which is passed before the filter table where kube-proxy puts
        // its ACCEPT rules first: nothing from the bridge is forwarded anywhere else.
        run("iptables", &["-w", "-t", "mangle", "-N", FILTER_CHAIN])?;
        leftovers.filter_chain = true;
        run(
            "iptables",
            &[
                "-w",
                "-t",
                "mangle",
                "-A",
                FILTER_CHAIN,
                "-i",
                BRIDGE,
                "!",
                "-o",
                BRIDGE,
                "-j",
                "DROP",
            ],
        )?;
        run(
            "iptables",
            &[
                "-w",
                "-t",
                "mangle",
                "-I",
                "FORWARD",
                "1",
                "-j",
                FILTER_CHAIN,
            ],
        )?;

        // The kubelet's root is its own shared mount: what the kubelet mounts there in its
        // namespace shows in the host's.
        let kubelet_root = display(&layout.kubelet_root());
        run("mount", &["--bind", &kubelet_root, &kubelet_root])?;
        run("mount", &["--make-shared", &kubelet_root])?;

        fs::create_dir_all(layout.cni_conf_dir())?;
        write(
            &layout.cni_conf_dir().join("10-vigil-testenv.conflist"),
            &cni_config(&layout.root.join("cni-ipam")),
        )?;
        for (name, value) in KUBELET_SYSCTLS {
            let file = layout.sysctl_dir().join(name.replace('/', "."));
            write(&file, &format!("{value}\n"))?;
        }
        write(&layout.root.join("resolv.conf"), "")?;
        Ok(())
    }

    fn plane(&self) -> &ControlPlane {
        self.plane.as_ref().expect("running until stopped")
    }

    fn spawn(&self, name: &str, program: &Path, args: &[OsString]) -> Result<()> {
        let proc = Proc::start(name, program, args, &self.layout.log(name))?;
        lock(&self.procs).push(proc);
        Ok(())
    }

    fn start_controllers(&self, bin_dir: &Path) -> Result<()> {
        let plane = self.plane();
        let kubeconfig = display(&plane.kubeconfig());
        self.spawn(
            "kube-controller-manager",
            &bin_dir.join("kube-controller-manager"),
            &os(&[
                format!("--kubeconfig={kubeconfig}"),
                "--leader-elect=false".into(),
                "--secure-port=0".into(),
                // Published to every namespace as `kube-root-ca.crt`, which the projected
                // service-account volumes carry.
                format!("--root-ca-file={}", display(plane.ca_cert())),
                "--controllers=*".into(),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            ]),
        )?;
        self.spawn(
            "kube-scheduler",
            &bin_dir.join("kube-scheduler"),
            &os(&[
                format!("--kubeconfig={kubeconfig}"),
                "--leader-elect=false".into(),
                "--secure-port=0".into(),
            ]),
        )
    }

    fn start_containerd(&self, options: &NodeOptions) -> Result<()> {
        let config = containerd_config(&self.layout, &options.sandbox_image);
        write(&self.layout.containerd_config(), &config)?;
        let containerd = which::which("containerd")
            .context("containerd is not installed (cargo xtask setup installs it)")?;
        self.spawn(
            "containerd",
            &containerd,
            &os(&["--config".into(), display(&self.layout.containerd_config())]),
        )?;
        let socket = display(&self.layout.containerd_socket());
        let bound = options.ready_timeout;
        let deadline = Instant::now() + bound;
        while run("ctr", &["--address", &socket, "version"]).is_err() {
            self.check_running()?;
            if Instant::now() > deadline {
                bail!(
                    "containerd did not answer on {socket} within {bound:?}: {}",
                    log_tail(&self.layout.log("containerd"), 20)
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
        for image in &options.images {
            run(
                "ctr",
                &[
                    "--address",
                    &socket,
                    "-n",
                    CRI_NAMESPACE,
                    "images",
                    "import",
                    "--platform",
                    "linux/amd64",
                    &display(image),
                ],
            )
            .with_context(|| format!("cannot import {}", image.display()))?;
        }
        Ok(())
    }

    fn start_kubelet(&self, bin_dir: &Path) -> Result<()> {
        let plane = self.plane();
        let config = kubelet_config(&self.layout, plane.ca_cert());
        let config_path = self.layout.root.join("kubelet.yaml");
        write(&config_path, &config)?;
        // In a mount namespace of its own: the kernel settings it would rewrite are files
        // there. /proc is made private first so that nothing mounted on it reaches the host.
        let mut script = String::from("set -e\nmount --make-rprivate /proc\n");
        for (name, _) in KUBELET_SYSCTLS {
            let file = self.layout.sysctl_dir().join(name.replace('/', "."));
            script.push_str(&format!(
                "mount --bind '{}' /proc/sys/{name}\n",
                display(&file)
            ));
        }
        script.push_str("exec \"$@\"\n");
        let mut args = os(&[
            "--mount".into(),
            "--propagation".into(),
            "unchanged".into(),
            "--".into(),
            "/bin/sh".into(),
            "-c".into(),
            script,
            "kubelet".into(),
        ]);
        args.push(bin_dir.join("kubelet").into_os_string());
        args.extend(os(&[
            format!("--config={}", display(&config_path)),
            format!("--kubeconfig={}", display(&plane.kubeconfig())),
            format!("--root-dir={}", display(&self.layout.kubelet_root())),
            format!("--hostname-override={}", self.node_name),
            format!("--node-ip={NODE_ADDRESS}"),
            "--v=1".into(),
        ]));
        let unshare = which::which("unshare").context("unshare (util-linux) is missing")?;
        self.spawn("kubelet", &unshare, &args)
    }

    fn start_kube_proxy(&self, bin_dir: &Path) -> Result<()> {
        let config = kube_proxy_config(&self.plane().kubeconfig(), &self.node_name);
        let config_path = self.layout.root.join("kube-proxy.yaml");
        write(&config_path, &config)?;
        self.spawn(
            "kube-proxy",
            &bin_dir.join("kube-proxy"),
            &os(&[format!("--config={}", display(&config_path))]),
        )
    }

    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let checks: [(&str, Vec<String>); 2] = [
            (
                "the node to be Ready",
                vec![
                    "get".into(),
                    "node".into(),
                    self.node_name.clone(),
                    "-o".into(),
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}".into(),
                ],
            ),
            (
                "the default ServiceAccount",
                vec![
                    "get".into(),
                    "serviceaccount".into(),
                    "default".into(),
                    "-n".into(),
                    "default".into(),
                    "-o".into(),
                    "jsonpath=True".into(),
                ],
            ),
        ];
        self.wait_for(timeout, &checks)
    }

    /// Waits, for at most `timeout` in all, until each `kubectl` query in turn prints `True`.
    fn wait_for(&self, timeout: Duration, checks: &[(&str, Vec<String>)]) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for (what, args) in checks {
            loop {
                self.check_running()?;
                let out = self.plane().kubectl(args);
                if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "True" {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "timed out after {timeout:?} waiting for {what}; kubelet log:\n{}",
                        log_tail(&self.layout.log("kubelet"), 30)
                    );
                }
                thread::sleep(Duration::from_millis(500));
            }
        }
        Ok(())
    }

    /// Fails, with the tail of its log, when any process of the cluster has exited.
    pub fn check_running(&self) -> Result<()> {
        self.plane().check_running()?;
        for proc in lock(&self.procs).iter_mut() {
            if proc.exited().is_some() {
                return Err(proc.failure("has exited"));
            }
        }
        Ok(())
    }

    /// The control plane (kubectl, kubeconfig, certificates).
    pub fn control_plane(&self) -> &ControlPlane {
        self.plane()
    }

    /// The node's name.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The directory holding everything.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// containerd's socket (for `ctr --address`).
    pub fn containerd_socket(&self) -> PathBuf {
        self.layout.containerd_socket()
    }

    /// The last lines of one component's log (`kubelet`, `containerd`, `kube-proxy`, ...).
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        log_tail(&self.layout.log(name), lines)
    }

    /// Stops everything and cleans up, reporting what could not be undone.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        let mut errors = Vec::new();
        // The kubelet first, so that it restarts nothing, then the rest in reverse.
        let mut procs = std::mem::take(&mut *lock(&self.procs));
        while let Some(mut proc) = procs.pop() {
            if let Err(err) = proc.stop(STOP_GRACE) {
                errors.push(format!("{err:#}"));
            }
        }
        let bin_dir = self.plane.as_ref().map(|p| p.bin_dir().to_path_buf());
        if let Some(plane) = self.plane.take()
            && let Err(err) = plane.stop()
        {
            errors.push(format!("{err:#}"));
        }
        if let Some(bin_dir) = bin_dir
            && let Err(err) = node_cleanup::teardown(&self.dir, &bin_dir)
        {
            errors.push(format!("{err:#}"));
        }
        if !errors.is_empty() {
            bail!("stopping the cluster: {}", errors.join("; "));
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.plane.is_some()
            && let Err(err) = self.shutdown()
        {
            eprintln!("testenv: {err:#}");
        }
    }
}

/// The CNI network: a bridge with the node as gateway, host-local addresses from [`POD_CIDR`],
/// and a route to the Service range only (no default route: nothing leaves the host).
fn cni_config(ipam_dir: &Path) -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            // The plugin would turn on forwarding host-wide for a gateway; the bridge has the
            // gateway's address from `prepare_host` instead, and forwarding on itself alone.
            "isGateway": false,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_ADDRESS.to_string()}]],
                "routes": [{"dst": SERVICE_CIDR}],
                "dataDir": display(ipam_dir),
            },
        }],
    }))
    .expect("static JSON")
}

fn containerd_config(layout: &Layout, sandbox_image: &str) -> String {
    let root = &layout.root;
    let path = |sub: &str| display(&root.join(sub));
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  # Root here lacks CAP_SYS_RESOURCE: runc cannot write a negative oom_score_adj.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
    max_conf_num = 1
"#,
        root = path("containerd/root"),
        state = path("containerd/state"),
        socket = display(&layout.containerd_socket()),
        opt = path("containerd/opt"),
        cni = display(&layout.cni_conf_dir()),
    )
}

fn kubelet_config(layout: &Layout, ca_cert: &Path) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# Hosts with the hybrid cgroup layout are refused by default.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: true
cgroupRoot: /
containerRuntimeEndpoint: unix://{socket}
failSwapOn: false
address: {NODE_ADDRESS}
port: {KUBELET_PORT}
readOnlyPort: 0
healthzPort: 0
podLogsDir: {logs}
resolvConf: {resolv}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {ca}}}
authorization:
  mode: Webhook
evictionHard:
  nodefs.available: "1%"
  imagefs.available: "1%"
  nodefs.inodesFree: "1%"
  memory.available: "50Mi"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
"#,
        socket = display(&layout.containerd_socket()),
        logs = display(&layout.root.join("pod-logs")),
        resolv = display(&layout.root.join("resolv.conf")),
        ca = display(ca_cert),
    )
}

/// iptables mode, serving nothing, and leaving every sysctl alone.
fn kube_proxy_config(kubeconfig: &Path, node_name: &str) -> String {
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
hostnameOverride: {node_name}
mode: iptables
clusterCIDR: {POD_CIDR}
nodePortAddresses: ["{NODE_ADDRESS}/32"]
healthzBindAddress: ""
metricsBindAddress: ""
iptables:
  localhostNodePorts: false
  # Pod to Service to pod on the same bridge works without relying on the host's
  # bridge-nf-call-iptables.
  masqueradeAll: true
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
  udpTimeout: 0s
  udpStreamTimeout: 0s
"#,
        kubeconfig = display(kubeconfig),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_config_routes_the_service_range_only() {
        let text = cni_config(Path::new("/tmp/x"));
        let value: serde_json::Value = serde_json::from_str(&text).expect("json");
        let ipam = &value["plugins"][0]["ipam"];
        assert_eq!(ipam["routes"], serde_json::json!([{"dst": SERVICE_CIDR}]));
        assert_eq!(ipam["ranges"][0][0]["subnet"], POD_CIDR);
        assert_eq!(value["plugins"][0]["ipMasq"], false);
    }

    #[test]
    fn node_address_is_in_the_pod_range() {
        assert!(POD_CIDR.starts_with("10.244.0."));
        assert_eq!(NODE_ADDRESS.octets()[..3], [10, 244, 0]);
    }
}
