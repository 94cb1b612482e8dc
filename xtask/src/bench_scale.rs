//! The agent at cluster scale. A test API server (etcd and kube-apiserver from `cargo xtask
//! k8s-env`) holds 1,000 pods on this node, 2,000 Services with 10,000 endpoints and 100
//! RuntimePolicies. Each pod's cgroups are staged under a private cgroup root as containerd
//! with the systemd driver leaves them, so the agent binds every pod as on a real node.
//!
//! Measured: start to ready; RSS once synced; CPU at idle; the time from a policy change
//! reaching the API server to the kernel enforcing it (a denied exec in a pod killed) and to
//! lifting it (the same exec running again); and from a new Service to its address being
//! allowed (a connect the pod's policy refused with EPERM going through). Connects go only
//! to addresses bound inside a network namespace the bench creates and deletes.
use std::{
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader},
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use testenv::ControlPlane;

use crate::{
    bench::{Agent, cgroup2_mount, in_cgroup},
    bench_throughput::CpuWindow,
    util::{describe, secs, workspace_root},
};

/// What the API server holds.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    pub pods: usize,
    pub services: usize,
    pub endpoints_per_service: usize,
    pub policies: usize,
}

impl Size {
    /// What the issue asks for: 1,000 pods, 2,000 Services with 10,000 endpoints, 100 policies.
    pub const FULL: Self = Self {
        pods: 1000,
        services: 2000,
        endpoints_per_service: 5,
        policies: 100,
    };

    fn endpoints(&self) -> usize {
        self.services * self.endpoints_per_service
    }

    /// This size times `factor`, within what the bench can lay out: at least one pod per
    /// namespace and policies in two of them (the measured pods), at most the endpoint
    /// addresses of 10.200.0.0/16 and the Service range's dynamic band.
    pub fn times(&self, factor: f64) -> Result<Self> {
        let n = |count: usize| ((count as f64 * factor).round() as usize).max(1);
        let size = Self {
            pods: n(self.pods).max(NAMESPACES),
            services: n(self.services),
            endpoints_per_service: self.endpoints_per_service,
            policies: n(self.policies).clamp(2, NAMESPACES * APPS),
        };
        if size.endpoints() > MAX_ENDPOINTS || size.services > MAX_SERVICES {
            bail!(
                "--scale {factor}: {} Services with {} endpoints is more than the bench lays out \
                 ({MAX_SERVICES} Services, {MAX_ENDPOINTS} endpoints)",
                size.services,
                size.endpoints()
            );
        }
        Ok(size)
    }
}

/// Endpoint addresses the bench hands out: 10.200.0.1 to 10.200.255.250.
const MAX_ENDPOINTS: usize = 256 * 250;
/// Services: the dynamic part of 10.96.0.0/16, with room to spare.
const MAX_SERVICES: usize = 50_000;

/// Namespaces the objects are spread over; each holds one policy per app label.
const NAMESPACES: usize = 10;
/// Apps (the `app` label) per namespace: policy `p<k>` selects `app=a<k>`.
const APPS: usize = 10;
/// Rounds of each latency measurement.
const ROUNDS: usize = 5;
/// How long one change may take before the bench gives up on it.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// The window CPU at idle is measured over.
const IDLE_WINDOW: Duration = Duration::from_secs(10);
/// Between the window right after ready and the idle one.
const SETTLE: Duration = Duration::from_secs(20);
/// Goals from the issue.
const GOAL_RSS_MIB: f64 = 64.0;
const GOAL_APPLY_MS: f64 = 1000.0;

#[derive(Debug, Clone)]
pub struct ScaleResults {
    pub size: Size,
    pub setup_seconds: f64,
    pub ready_seconds: f64,
    /// Once idle after the first lists, and at the end (after the changes).
    pub synced_rss_kib: u64,
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
    /// CPU over the first window after ready, and over a window once settled.
    pub after_ready_cpu_percent: f64,
    pub idle_cpu_percent: f64,
    /// Policy change in the API server to the first denied exec killed, per round.
    pub enforce_ms: Vec<f64>,
    /// The deny taken out again to the first exec that runs, per round.
    pub lift_ms: Vec<f64>,
    /// A new Service created to the first connect to its address that goes through.
    pub service_ms: Vec<f64>,
}

pub struct Scale<'a> {
    pub agent_binary: &'a Path,
    pub scenario: &'a Path,
    pub work: &'a Path,
    pub size: Size,
}

impl Scale<'_> {
    pub fn run(&self) -> Result<ScaleResults> {
        let setup_started = Instant::now();
        let bin = crate::k8s_env::ensure()?;
        let plane_dir = self.work.join("scale-plane");
        let _ = fs::remove_dir_all(&plane_dir);
        let plane = ControlPlane::start(&plane_dir, &bin).context("starting the control plane")?;
        let crds = workspace_root().join("charts/vigil/crds");
        plane.kubectl_ok(["apply", "-f", &crds.to_string_lossy()])?;
        plane.kubectl_ok([
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/runtimepolicies.vigil.dev",
            "crd/clusterruntimepolicies.vigil.dev",
        ])?;
        let files = self.work.join("scale-objects");
        fs::create_dir_all(&files)?;
        let create = |name: &str, yaml: String| -> Result<()> {
            let path = files.join(name);
            fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
            plane.kubectl_ok(["create", "-f", &path.to_string_lossy()])?;
            Ok(())
        };
        create("namespaces.yaml", namespaces())?;
        create("pods.yaml", pods(self.size.pods, plane.node_name()))?;
        let staged = StagedPods::create(&plane, &files, self.size.pods)?;
        create("services.yaml", services(self.size))?;
        create("policies.yaml", policies(self.size.policies, None))?;
        let setup_seconds = setup_started.elapsed().as_secs_f64();
        println!(
            "bench: {} pods, {} Services with {} endpoints and {} policies in the API server after {}",
            self.size.pods,
            self.size.services,
            self.size.endpoints(),
            self.size.policies,
            secs(setup_started.elapsed())
        );

        let started = Instant::now();
        let kubeconfig = plane.kubeconfig();
        let root = staged.root.to_string_lossy().into_owned();
        let mut agent = Agent::start_env(
            self.agent_binary,
            &[
                "run",
                "--output",
                "json",
                "--node-name",
                plane.node_name(),
                "--cgroup-root",
                &root,
            ],
            &[("KUBECONFIG", kubeconfig.as_os_str())],
            "vigil is enforcing",
            Stdio::null(),
        )?;
        let ready_seconds = started.elapsed().as_secs_f64();
        // Ready is not done: the first window still holds the first lists' work.
        let first = CpuWindow::open(&agent)?;
        thread::sleep(IDLE_WINDOW);
        let after_ready_cpu_percent = 100.0 * first.seconds(&agent)? / IDLE_WINDOW.as_secs_f64();
        thread::sleep(SETTLE);
        let idle = CpuWindow::open(&agent)?;
        thread::sleep(IDLE_WINDOW);
        let idle_cpu_percent = 100.0 * idle.seconds(&agent)? / IDLE_WINDOW.as_secs_f64();
        let (synced_rss_kib, _) = agent.rss_kib()?;

        let (enforce_ms, lift_ms) = self.policy_changes(&plane, &files, &staged)?;
        let service_ms = self.new_services(&plane, &staged)?;
        let (rss_kib, peak_rss_kib) = agent.rss_kib()?;
        agent.stop()?;
        drop(staged);
        plane.stop()?;
        Ok(ScaleResults {
            size: self.size,
            setup_seconds,
            ready_seconds,
            synced_rss_kib,
            rss_kib,
            peak_rss_kib,
            after_ready_cpu_percent,
            idle_cpu_percent,
            enforce_ms,
            lift_ms,
            service_ms,
        })
    }

    /// Policy `p0` of the first namespace gains a deny of a copy of `/bin/true`, then loses it;
    /// its first pod runs that copy until the kernel kills it, then until it runs again.
    fn policy_changes(
        &self,
        plane: &ControlPlane,
        files: &Path,
        staged: &StagedPods,
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        let denied_dir = files.join("denied");
        fs::create_dir_all(&denied_dir)?;
        let denied = fs::canonicalize(&denied_dir)?.join("true");
        fs::copy(fs::canonicalize("/bin/true")?, &denied)
            .with_context(|| format!("copying /bin/true to {}", denied.display()))?;
        let pod = staged.container(0, 0);
        let runs = |status: ExitStatus| status.success();
        let killed = |status: ExitStatus| status.signal() == Some(SIGKILL);
        if !runs(run_in(pod, &denied, &[])?) {
            bail!("{} does not run in a pod before any deny", denied.display());
        }
        let apply = |deny: Option<&Path>| -> Result<()> {
            let path = files.join("policy-p0.yaml");
            fs::write(&path, policy(0, 0, deny))?;
            plane.kubectl_ok(["apply", "-f", &path.to_string_lossy()])?;
            Ok(())
        };
        let mut enforce = Vec::new();
        let mut lift = Vec::new();
        for round in 0..ROUNDS {
            apply(Some(&denied))?;
            let t = until(&format!("round {}: the deny enforced", round + 1), || {
                Ok(killed(run_in(pod, &denied, &[])?))
            })?;
            enforce.push(t.as_secs_f64() * 1000.0);
            apply(None)?;
            let t = until(&format!("round {}: the deny lifted", round + 1), || {
                Ok(runs(run_in(pod, &denied, &[])?))
            })?;
            lift.push(t.as_secs_f64() * 1000.0);
        }
        Ok((enforce, lift))
    }

    /// A Service created with an address of the bench's choosing, which a pod of the second
    /// namespace (connects: Services only, else EPERM) reaches once the agent allows it.
    fn new_services(&self, plane: &ControlPlane, staged: &StagedPods) -> Result<Vec<f64>> {
        let mut netns = NetNs::create(&format!("vigil-scale-{}", std::process::id()))?;
        let pod = staged.container(1, 0);
        // The benign twin first: an address no Service has is refused.
        let stranger = "10.201.0.1:80";
        netns.listen(self.scenario, stranger)?;
        match netns.connect(pod, self.scenario, stranger)? {
            Connect::Refused => {}
            other => bail!(
                "a connect from a pod to {stranger}, which no Service has: {other:?}, where the policy refuses it (EPERM)"
            ),
        }
        let mut out = Vec::new();
        for round in 0..ROUNDS {
            // The Service range's low band, which the API server leaves to addresses asked for.
            let ip = format!("10.96.0.{}", 200 + round);
            let addr = format!("{ip}:80");
            netns.listen(self.scenario, &addr)?;
            match netns.connect(pod, self.scenario, &addr)? {
                Connect::Refused => {}
                other => bail!("{addr} before its Service existed: {other:?}, not refused (EPERM)"),
            }
            plane.apply(&format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: fresh-{round}, namespace: scale-1}}\nspec:\n  clusterIP: {ip}\n  selector: {{app: a0}}\n  ports: [{{port: 80, protocol: TCP}}]\n"
            ))?;
            let t = until(
                &format!("round {}: Service fresh-{round} allowed", round + 1),
                || match netns.connect(pod, self.scenario, &addr)? {
                    Connect::Through => Ok(true),
                    Connect::Refused => Ok(false),
                    Connect::Failed(why) => bail!("a connect to {addr} failed otherwise: {why}"),
                },
            )?;
            out.push(t.as_secs_f64() * 1000.0);
        }
        Ok(out)
    }
}

/// A process the kernel killed (what a `Kill` exec rule does) ended by this signal.
const SIGKILL: i32 = 9;

/// Polls `done` until it holds; how long that took. A short pause between tries keeps the
/// polling itself from loading the agent it measures (each try is an exec it sees).
fn until(what: &str, mut done: impl FnMut() -> Result<bool>) -> Result<Duration> {
    let started = Instant::now();
    while started.elapsed() < CHANGE_TIMEOUT {
        if done()? {
            return Ok(started.elapsed());
        }
        thread::sleep(Duration::from_millis(5));
    }
    bail!("{what}: not within {}", secs(CHANGE_TIMEOUT))
}

/// What a connect from a pod came to.
#[derive(Debug)]
enum Connect {
    Through,
    /// `EPERM`: what the agent's cgroup program answers a connect the policy refuses.
    Refused,
    Failed(String),
}

/// Runs `program ARGS` in the cgroup at `dir`.
fn run_in(dir: &Path, program: &Path, args: &[&str]) -> Result<ExitStatus> {
    let mut cmd = in_cgroup(dir, program);
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::null());
    cmd.status()
        .with_context(|| format!("cannot start `{}`", describe(&cmd)))
}

fn namespaces() -> String {
    (0..NAMESPACES)
        .map(|n| {
            format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: scale-{n}, labels: {{team: t{n}}}}}\n---\n"
            )
        })
        .collect()
}

/// Pod `i` is in namespace `i % NAMESPACES` with app label `a<(i / NAMESPACES) % APPS>`.
fn pod_place(i: usize) -> (usize, usize) {
    (i % NAMESPACES, (i / NAMESPACES) % APPS)
}

fn pods(count: usize, node: &str) -> String {
    let mut yaml = String::new();
    for i in 0..count {
        let (ns, app) = pod_place(i);
        let _ = write!(
            yaml,
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: pod-{i}, namespace: scale-{ns}, labels: {{app: a{app}}}}}\n\
             spec:\n  nodeName: {node}\n  containers: [{{name: app, image: shop/web:1.2}}]\n---\n"
        );
    }
    yaml
}

/// The container id the bench gives pod `uid`: its hex digits, padded to 64.
fn container_id(uid: &str) -> String {
    format!("{:0>64}", uid.replace('-', ""))
}

fn services(size: Size) -> String {
    let mut yaml = String::new();
    let mut endpoint = 0usize;
    for s in 0..size.services {
        let ns = s % NAMESPACES;
        let app = (s / NAMESPACES) % APPS;
        let _ = write!(
            yaml,
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{s}, namespace: scale-{ns}}}\n\
             spec:\n  selector: {{app: a{app}}}\n  ports: [{{port: 80, targetPort: 8080, protocol: TCP}}]\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-{s}-1\n  namespace: scale-{ns}\n  \
             labels: {{kubernetes.io/service-name: svc-{s}}}\naddressType: IPv4\nports: [{{name: \"\", port: 8080, protocol: TCP}}]\nendpoints:\n"
        );
        for _ in 0..size.endpoints_per_service {
            // 10.200.0.0/16: documentation of nothing, never connected to.
            let _ = writeln!(
                yaml,
                "- {{addresses: [\"10.200.{}.{}\"], conditions: {{ready: true}}}}",
                endpoint / 250,
                endpoint % 250 + 1
            );
            endpoint += 1;
        }
        yaml.push_str("---\n");
    }
    yaml
}

/// Policy `p<k>` of namespace `scale-<ns>`: the pods labelled `a<k>` may run what is under
/// the usual system directories (alert otherwise) and connect only to Services and loopback
/// (EPERM otherwise); with `deny`, running that file kills.
fn policy(ns: usize, k: usize, deny: Option<&Path>) -> String {
    let exec = match deny {
        Some(path) => format!(
            "  exec:\n    deny: [{{path: \"{}\"}}]\n    action: Kill\n",
            path.display()
        ),
        None => "  exec:\n    allow: [{prefix: /usr/}, {prefix: /bin/}, {prefix: /sbin/}, {prefix: /opt/}]\n    action: Alert\n".to_owned(),
    };
    format!(
        "apiVersion: vigil.dev/v1alpha1\nkind: RuntimePolicy\nmetadata: {{name: p{k}, namespace: scale-{ns}}}\nspec:\n  \
         podSelector: {{matchLabels: {{app: a{k}}}}}\n{exec}  connect:\n    allowServices: true\n    \
         allow: [{{cidr: 127.0.0.0/8}}]\n    action: Deny\n---\n"
    )
}

fn policies(count: usize, deny: Option<&Path>) -> String {
    (0..count)
        .map(|i| policy(i % NAMESPACES, (i / NAMESPACES) % APPS, deny))
        .collect()
}

/// The pods' cgroups under a private root, as containerd with the systemd driver leaves them;
/// removed on drop, innermost first.
struct StagedPods {
    root: PathBuf,
    dirs: Vec<PathBuf>,
    /// The container cgroup of each pod, by `(namespace, index in it)`.
    containers: Vec<((usize, usize), PathBuf)>,
}

impl StagedPods {
    /// Gives each pod a running container in its status, and stages its cgroups.
    fn create(plane: &ControlPlane, files: &Path, count: usize) -> Result<Self> {
        let listing = plane.kubectl_ok([
            "get",
            "pods",
            "-A",
            "-o",
            "jsonpath={range .items[*]}{.metadata.namespace} {.metadata.name} {.metadata.uid}{\"\\n\"}{end}",
        ])?;
        let mut pods: Vec<(String, String, String)> = listing
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((
                    f.next()?.to_owned(),
                    f.next()?.to_owned(),
                    f.next()?.to_owned(),
                ))
            })
            .filter(|(ns, _, _): &(String, String, String)| ns.starts_with("scale-"))
            .collect();
        if pods.len() != count {
            bail!(
                "the API server lists {} bench pods, not {count}",
                pods.len()
            );
        }
        pods.sort_by_key(|(_, name, _)| {
            name.trim_start_matches("pod-")
                .parse::<usize>()
                .unwrap_or(usize::MAX)
        });
        let mut statuses = String::new();
        for (ns, name, uid) in &pods {
            let _ = write!(
                statuses,
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}}}\nstatus:\n  phase: Running\n  \
                 containerStatuses: [{{name: app, containerID: \"containerd://{}\", image: docker.io/shop/web:1.2, imageID: \"\", \
                 ready: true, restartCount: 0, started: true, state: {{running: {{}}}}}}]\n---\n",
                container_id(uid)
            );
        }
        let path = files.join("pod-statuses.yaml");
        fs::write(&path, statuses)?;
        plane.kubectl_ok([
            "apply",
            "--server-side",
            "--subresource=status",
            "--field-manager=kubelet",
            "-f",
            &path.to_string_lossy(),
        ])?;

        let root = cgroup2_mount()?.join(format!("vigil-scale-{}", std::process::id()));
        let mut staged = Self {
            root: root.clone(),
            dirs: Vec::new(),
            containers: Vec::new(),
        };
        let slice = root.join("kubepods.slice");
        let qos = slice.join("kubepods-besteffort.slice");
        for dir in [&root, &slice, &qos] {
            staged.mkdir(dir)?;
        }
        let mut per_namespace = [0usize; NAMESPACES];
        for (i, (_, _, uid)) in pods.iter().enumerate() {
            let pod = qos.join(format!(
                "kubepods-besteffort-pod{}.slice",
                uid.replace('-', "_")
            ));
            let container = pod.join(format!("cri-containerd-{}.scope", container_id(uid)));
            staged.mkdir(&pod)?;
            staged.mkdir(&container)?;
            let (ns, _) = pod_place(i);
            staged.containers.push(((ns, per_namespace[ns]), container));
            per_namespace[ns] += 1;
        }
        Ok(staged)
    }

    fn mkdir(&mut self, dir: &Path) -> Result<()> {
        fs::create_dir(dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        self.dirs.push(dir.to_path_buf());
        Ok(())
    }

    /// The container cgroup of the `index`th pod of namespace `scale-<ns>` (label `a0` for
    /// index 0).
    fn container(&self, ns: usize, index: usize) -> &Path {
        self.containers
            .iter()
            .find(|(at, _)| *at == (ns, index))
            .map(|(_, dir)| dir.as_path())
            .expect("a staged pod at every place the bench uses")
    }
}

impl Drop for StagedPods {
    fn drop(&mut self) {
        for dir in self.dirs.iter().rev() {
            let mut removed = false;
            for _ in 0..50 {
                if fs::remove_dir(dir).is_ok() {
                    removed = true;
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
            if !removed {
                eprintln!("bench: could not remove cgroup {}", dir.display());
            }
        }
    }
}

/// A network namespace of the bench's own with addresses on its loopback and listeners on
/// them; deleted (listeners first) on drop.
struct NetNs {
    name: String,
    listeners: Vec<Child>,
}

impl NetNs {
    fn create(name: &str) -> Result<Self> {
        ip(&["netns", "add", name])?;
        let ns = Self {
            name: name.to_owned(),
            listeners: Vec::new(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Binds the address of `addr` (`ip:port`) on the namespace's loopback and listens there.
    fn listen(&mut self, scenario: &Path, addr: &str) -> Result<()> {
        let ip_text = addr.rsplit_once(':').map_or(addr, |(ip, _)| ip);
        ip(&[
            "-n",
            &self.name,
            "addr",
            "add",
            &format!("{ip_text}/32"),
            "dev",
            "lo",
        ])?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(scenario)
            .args(["tcp-listen", addr])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a listener in the bench's network namespace")?;
        let stdout = child.stdout.take();
        // Kept before anything can fail, so that drop ends it.
        self.listeners.push(child);
        let mut line = String::new();
        BufReader::new(stdout.context("listener stdout")?).read_line(&mut line)?;
        if line.trim() != "listening" {
            bail!("the listener on {addr} said {line:?}");
        }
        Ok(())
    }

    /// A TCP connect to `addr` from inside the namespace, by a process of the cgroup `pod`.
    fn connect(&self, pod: &Path, scenario: &Path, addr: &str) -> Result<Connect> {
        let mut cmd = in_cgroup(pod, Path::new("ip"));
        cmd.args(["netns", "exec", &self.name])
            .arg(scenario)
            .args(["tcp-connect", addr])
            .stdout(Stdio::null());
        let out = cmd
            .output()
            .with_context(|| format!("cannot start `{}`", describe(&cmd)))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        Ok(if out.status.success() {
            Connect::Through
        } else if stderr.contains("(os error 1)") {
            Connect::Refused
        } else {
            Connect::Failed(format!("{}: {}", out.status, stderr.trim()))
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        for mut l in self.listeners.drain(..) {
            let _ = l.kill();
            let _ = l.wait();
        }
        let _ = ip(&["netns", "delete", &self.name]);
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    crate::util::run_checked(&mut cmd)
}

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn list(samples: &[f64]) -> String {
    let v: Vec<String> = samples.iter().map(|s| format!("{s:.0}")).collect();
    v.join(", ")
}

pub fn print(r: &ScaleResults) {
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!();
    println!(
        "scale: {} pods on this node, {} Services with {} endpoints, {} policies (set up in {:.0} s)",
        r.size.pods,
        r.size.services,
        r.size.endpoints(),
        r.size.policies,
        r.setup_seconds
    );
    println!("  {:<34} {:>10.2} s", "start to ready", r.ready_seconds);
    println!(
        "  {:<34} {:>10.1} MiB (after the changes {:.1} MiB, peak {:.1} MiB; goal <= {GOAL_RSS_MIB:.0} MiB)",
        "RSS once synced",
        mib(r.synced_rss_kib),
        mib(r.rss_kib),
        mib(r.peak_rss_kib)
    );
    println!(
        "  {:<34} {:>10.2} % of a core over {}",
        "CPU right after ready",
        r.after_ready_cpu_percent,
        secs(IDLE_WINDOW)
    );
    println!(
        "  {:<34} {:>10.2} % of a core over {}, {} later",
        "CPU at idle",
        r.idle_cpu_percent,
        secs(IDLE_WINDOW),
        secs(SETTLE)
    );
    for (what, samples, goal) in [
        ("policy change to enforced", &r.enforce_ms, true),
        ("policy change to lifted", &r.lift_ms, true),
        ("new Service to allowed", &r.service_ms, true),
    ] {
        println!(
            "  {:<34} {:>10.0} ms median ({}){}",
            what,
            median(samples),
            list(samples),
            if goal {
                format!("; goal <= {GOAL_APPLY_MS:.0} ms")
            } else {
                String::new()
            }
        );
    }
}

pub fn json(r: &ScaleResults) -> String {
    let nums = |s: &[f64]| {
        let v: Vec<String> = s.iter().map(|x| format!("{x:.1}")).collect();
        format!("[{}]", v.join(", "))
    };
    format!(
        "{{\"pods\": {}, \"services\": {}, \"endpoints\": {}, \"policies\": {}, \"setup_seconds\": {:.1}, \
         \"ready_seconds\": {:.3}, \"synced_rss_kib\": {}, \"rss_kib\": {}, \"peak_rss_kib\": {}, \"after_ready_cpu_percent\": {:.3}, \"idle_cpu_percent\": {:.3}, \
         \"enforce_ms\": {}, \"enforce_ms_median\": {:.1}, \"lift_ms\": {}, \"lift_ms_median\": {:.1}, \
         \"service_ms\": {}, \"service_ms_median\": {:.1}}}",
        r.size.pods,
        r.size.services,
        r.size.endpoints(),
        r.size.policies,
        r.setup_seconds,
        r.ready_seconds,
        r.synced_rss_kib,
        r.rss_kib,
        r.peak_rss_kib,
        r.after_ready_cpu_percent,
        r.idle_cpu_percent,
        nums(&r.enforce_ms),
        median(&r.enforce_ms),
        nums(&r.lift_ms),
        median(&r.lift_ms),
        nums(&r.service_ms),
        median(&r.service_ms),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_full_size_is_what_the_goals_are_stated_for() {
        assert_eq!(Size::FULL.endpoints(), 10_000);
        assert_eq!(Size::FULL.policies, NAMESPACES * APPS);
    }

    #[test]
    fn a_scaled_size_keeps_the_measured_pods_and_refuses_what_it_cannot_lay_out() {
        let small = Size::FULL.times(0.001).unwrap();
        assert_eq!(small.pods, NAMESPACES);
        assert_eq!(small.policies, 2);
        assert_eq!(Size::FULL.times(3.0).unwrap().policies, 100);
        let err = Size::FULL.times(7.0).unwrap_err().to_string();
        assert!(err.contains("more than the bench lays out"), "{err}");
    }

    #[test]
    fn every_policy_selects_a_label_that_pods_carry_and_each_is_unique() {
        let yaml = policies(NAMESPACES * APPS, None);
        let mut names: Vec<&str> = yaml
            .lines()
            .filter(|l| l.starts_with("metadata:"))
            .collect();
        let all = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all);
        assert_eq!(all, 100);
        // Every (namespace, app) a pod is placed at has its policy.
        for i in 0..Size::FULL.pods {
            let (ns, app) = pod_place(i);
            assert!(
                yaml.contains(&format!("{{name: p{app}, namespace: scale-{ns}}}")),
                "pod {i}"
            );
        }
    }

    #[test]
    fn endpoint_addresses_are_unique_and_stay_in_their_range() {
        let yaml = services(Size::FULL);
        let mut addrs: Vec<&str> = yaml
            .lines()
            .filter_map(|l| l.strip_prefix("- {addresses: [\""))
            .map(|l| l.split('"').next().unwrap())
            .collect();
        assert_eq!(addrs.len(), 10_000);
        assert!(addrs.iter().all(|a| a.starts_with("10.200.")));
        addrs.sort_unstable();
        addrs.dedup();
        assert_eq!(addrs.len(), 10_000);
    }

    #[test]
    fn a_deny_makes_the_policy_kill_only_that_file() {
        let p = policy(0, 0, Some(Path::new("/tmp/x/true")));
        assert!(p.contains("deny: [{path: \"/tmp/x/true\"}]"), "{p}");
        assert!(p.contains("action: Kill"), "{p}");
        assert!(!p.contains("allow: [{prefix"), "{p}");
    }

    #[test]
    fn medians_of_odd_even_and_empty_samples() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
