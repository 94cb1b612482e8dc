//! etcd and kube-apiserver on loopback, with a cluster-admin kubeconfig and one Node object.
use std::{
    ffi::{OsStr, OsString},
    fs,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use kube::config::{
    AuthInfo, Cluster, Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext,
};

use crate::{
    pki::{self, Pki},
    process::{Proc, log_tail, require_executable},
};

/// The Node object [`ControlPlane::start`] creates.
pub const DEFAULT_NODE_NAME: &str = "vigil-test-node";

/// Where Service ClusterIPs come from. Without a node they are only ever bound inside test
/// network namespaces, never routed; on a real node kube-proxy routes them to pods on the
/// node's bridge.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

/// The kubeconfig's cluster and context name, and its user.
const KUBECONFIG_CLUSTER: &str = "testenv";
const KUBECONFIG_USER: &str = "testenv-admin";

/// How long a stopped process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// What [`ControlPlane::start_with`] does beyond the defaults.
#[derive(Debug, Clone)]
pub struct Options {
    /// The Node object to create (default [`DEFAULT_NODE_NAME`]).
    pub node_name: String,
    /// More kube-apiserver flags, after the built-in ones (so they win for single-valued flags),
    /// e.g. `--feature-gates=...`.
    pub apiserver_args: Vec<String>,
    /// How long each of etcd and kube-apiserver may take to become ready (default 120 s; the
    /// API server's first start on 2 busy cores can take tens of seconds).
    pub ready_timeout: Duration,
    /// Keep the ServiceAccount admission plugin (default off). Nothing here runs the
    /// controller that creates each namespace's `default` ServiceAccount, so with it on a Pod
    /// is refused until the ServiceAccount it names (or `default`) exists; with it off a Pod
    /// keeps the `serviceAccountName` it was given (none by default) and gets no token volume.
    pub service_account_admission: bool,
    /// The address the API server binds and advertises (default 127.0.0.1). A real node's
    /// pods reach it through the `kubernetes` Service, whose endpoint this becomes, so it
    /// must not be loopback then (see `node.rs`).
    pub address: Ipv4Addr,
    /// Create the Node object (default true); a real kubelet registers its own.
    pub create_node: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            node_name: DEFAULT_NODE_NAME.to_owned(),
            apiserver_args: Vec::new(),
            ready_timeout: Duration::from_secs(120),
            service_account_admission: false,
            address: Ipv4Addr::LOCALHOST,
            create_node: true,
        }
    }
}

/// A running control plane: etcd and kube-apiserver on 127.0.0.1, their data, certificates,
/// logs (`etcd.log`, `kube-apiserver.log`) and `kubeconfig` under one directory.
///
/// Dropping it stops both processes (by the pids it started; SIGTERM, then SIGKILL) and removes
/// the directory if [`ControlPlane::start`] created it. Should this process die first, the
/// kernel kills them (see `process.rs`). All methods take `&self`, so one control plane can be
/// shared between tests (e.g. in a `static OnceLock`; a static is never dropped, but its
/// processes still end with the test binary).
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    created_dir: bool,
    bin_dir: PathBuf,
    node_name: String,
    address: Ipv4Addr,
    pki: Pki,
    etcd_url: String,
    apiserver_port: u16,
    apiserver_args: Vec<OsString>,
    ready_timeout: Duration,
    etcd: Mutex<Option<Proc>>,
    apiserver: Mutex<Option<Proc>>,
}

/// Free TCP ports on 127.0.0.1 (bound together so that they differ, then released).
fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<Vec<_>, _>>()
        .context("cannot find a free port on 127.0.0.1")?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr().context("local_addr")?.port();
    }
    Ok(ports)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A string as a YAML double-quoted scalar.
fn yaml_string(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Whether etcd at `addr` answers `GET /health` with `"health":"true"`.
fn etcd_healthy(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut response = String::new();
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_to_string(&mut response).is_ok()
        && response.contains("\"health\":\"true\"")
}

/// A cluster-admin kubeconfig for `server` that names the certificate files of `pki`.
fn kubeconfig(server: &str, pki: &Pki) -> Kubeconfig {
    let file = |p: &Path| Some(p.to_string_lossy().into_owned());
    Kubeconfig {
        api_version: Some("v1".to_owned()),
        kind: Some("Config".to_owned()),
        clusters: vec![NamedCluster {
            name: KUBECONFIG_CLUSTER.to_owned(),
            cluster: Some(Cluster {
                server: Some(server.to_owned()),
                certificate_authority: file(&pki.ca_cert),
                ..Cluster::default()
            }),
            ..NamedCluster::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: KUBECONFIG_USER.to_owned(),
            auth_info: Some(AuthInfo {
                client_certificate: file(&pki.admin_cert),
                client_key: file(&pki.admin_key),
                ..AuthInfo::default()
            }),
            ..NamedAuthInfo::default()
        }],
        contexts: vec![NamedContext {
            name: KUBECONFIG_CLUSTER.to_owned(),
            context: Some(Context {
                cluster: KUBECONFIG_CLUSTER.to_owned(),
                user: Some(KUBECONFIG_USER.to_owned()),
                ..Context::default()
            }),
            ..NamedContext::default()
        }],
        current_context: Some(KUBECONFIG_CLUSTER.to_owned()),
        ..Kubeconfig::default()
    }
}

impl ControlPlane {
    /// Starts a control plane with [`Options::default`]: `dir` holds everything (created when
    /// missing, and then removed on drop); `bin_dir` has `etcd`, `kube-apiserver` and `kubectl`
    /// (see [`crate::bin_dir`]). Returns once the API server is ready, `dir/kubeconfig` is
    /// written and the Node object exists.
    pub fn start(dir: &Path, bin_dir: &Path) -> Result<Self> {
        Self::start_with(dir, bin_dir, Options::default())
    }

    /// [`ControlPlane::start`] with `options`.
    pub fn start_with(dir: &Path, bin_dir: &Path, options: Options) -> Result<Self> {
        for name in ["etcd", "kube-apiserver", "kubectl"] {
            require_executable(&bin_dir.join(name))?;
        }
        let dir = std::path::absolute(dir)
            .with_context(|| format!("cannot make {} absolute", dir.display()))?;
        let created_dir = !dir.exists();
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        // A directory used before starts afresh: a new cluster, new certificates, new logs.
        for old in ["etcd-data", "pki", "apiserver-certs", "kubectl-cache"] {
            let old = dir.join(old);
            if old.exists() {
                fs::remove_dir_all(&old)
                    .with_context(|| format!("cannot remove {}", old.display()))?;
            }
        }
        for old in ["etcd.log", "kube-apiserver.log", "kubeconfig"] {
            let _ = fs::remove_file(dir.join(old));
        }

        let pki = pki::generate(&dir.join("pki"), options.address)
            .context("cannot make the certificates")?;
        let [etcd_client, etcd_peer, apiserver_port] = free_ports::<3>()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let path = |p: &Path| p.as_os_str().to_owned();
        let flag = |name: &str, value: &OsStr| {
            let mut arg = OsString::from(format!("--{name}="));
            arg.push(value);
            arg
        };
        let mut apiserver_args = vec![
            flag("etcd-servers", etcd_url.as_ref()),
            format!("--bind-address={}", options.address).into(),
            format!("--advertise-address={}", options.address).into(),
            format!("--secure-port={apiserver_port}").into(),
            flag("tls-cert-file", &path(&pki.server_cert)),
            flag("tls-private-key-file", &path(&pki.server_key)),
            flag("client-ca-file", &path(&pki.ca_cert)),
            flag("cert-dir", &path(&dir.join("apiserver-certs"))),
            "--authorization-mode=RBAC".into(),
            format!("--service-cluster-ip-range={SERVICE_CIDR}").into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            flag("service-account-key-file", &path(&pki.service_account_pub)),
            flag(
                "service-account-signing-key-file",
                &path(&pki.service_account_key),
            ),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
            // How `kubectl exec` and `logs` reach a kubelet, which trusts this CA.
            flag("kubelet-client-certificate", &path(&pki.admin_cert)),
            flag("kubelet-client-key", &path(&pki.admin_key)),
            "--kubelet-preferred-address-types=InternalIP".into(),
        ];
        if options.address.is_loopback() {
            // The lease reconciler would publish 127.0.0.1 as the `kubernetes` Service's
            // endpoint, which validation refuses (loopback); nothing routes to it anyway.
            apiserver_args.push("--endpoint-reconciler-type=none".into());
        }
        if !options.service_account_admission {
            apiserver_args.push("--disable-admission-plugins=ServiceAccount".into());
        }
        apiserver_args.extend(options.apiserver_args.iter().map(OsString::from));

        // From here on, dropping `plane` cleans up whatever was started.
        let plane = Self {
            dir,
            created_dir,
            bin_dir: bin_dir.to_path_buf(),
            node_name: options.node_name,
            address: options.address,
            pki,
            etcd_url,
            apiserver_port,
            apiserver_args,
            ready_timeout: options.ready_timeout,
            etcd: Mutex::new(None),
            apiserver: Mutex::new(None),
        };
        plane.start_etcd(etcd_client, etcd_peer)?;
        plane.write_kubeconfig()?;
        plane.start_apiserver()?;
        if options.create_node {
            plane
                .apply(&format!(
                    "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    \
                 kubernetes.io/hostname: {name}\n    kubernetes.io/os: linux\n",
                    name = yaml_string(&plane.node_name)
                ))
                .context("cannot create the Node object")?;
        }
        Ok(plane)
    }

    fn start_etcd(&self, client: u16, peer: u16) -> Result<()> {
        let data = self.dir.join("etcd-data");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut data_flag = OsString::from("--data-dir=");
        data_flag.push(&data);
        let args: Vec<OsString> = vec![
            "--name=testenv".into(),
            data_flag,
            format!("--listen-client-urls={}", self.etcd_url).into(),
            format!("--advertise-client-urls={}", self.etcd_url).into(),
            format!("--listen-peer-urls={peer_url}").into(),
            format!("--initial-advertise-peer-urls={peer_url}").into(),
            format!("--initial-cluster=testenv={peer_url}").into(),
            "--initial-cluster-state=new".into(),
            // A test cluster lives for minutes: no fsync, much less waiting on the disk.
            "--unsafe-no-fsync=true".into(),
            "--log-level=warn".into(),
        ];
        let mut etcd = Proc::start(
            "etcd",
            &self.bin_dir.join("etcd"),
            &args,
            &self.dir.join("etcd.log"),
        )?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, client));
        let deadline = Instant::now() + self.ready_timeout;
        loop {
            if etcd_healthy(addr) {
                break;
            }
            if etcd.exited().is_some() {
                return Err(etcd.failure("exited before it was healthy"));
            }
            if Instant::now() > deadline {
                return Err(etcd.failure(&format!(
                    "was not healthy at {} within {:?}",
                    self.etcd_url, self.ready_timeout
                )));
            }
            thread::sleep(Duration::from_millis(100));
        }
        *lock(&self.etcd) = Some(etcd);
        Ok(())
    }

    fn write_kubeconfig(&self) -> Result<()> {
        let path = self.kubeconfig();
        let text = serde_yaml_ng::to_string(&kubeconfig(&self.server(), &self.pki))
            .context("cannot serialise the kubeconfig")?;
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Starts kube-apiserver again after [`ControlPlane::stop_apiserver`], with the same etcd,
    /// certificates, port and flags, and waits until it is ready. Does nothing when it runs.
    pub fn start_apiserver(&self) -> Result<()> {
        let mut slot = lock(&self.apiserver);
        if let Some(running) = slot.as_mut()
            && running.exited().is_none()
        {
            return Ok(());
        }
        let mut apiserver = Proc::start(
            "kube-apiserver",
            &self.bin_dir.join("kube-apiserver"),
            &self.apiserver_args,
            &self.dir.join("kube-apiserver.log"),
        )?;
        let result = self.wait_until_ready(&mut apiserver);
        *slot = Some(apiserver);
        result
    }

    /// Ready means `/readyz` says `ok` and the API server's own bootstrap is done (the
    /// `kubernetes` Service exists, so Services can be given ClusterIPs).
    fn wait_until_ready(&self, apiserver: &mut Proc) -> Result<()> {
        let deadline = Instant::now() + self.ready_timeout;
        let checks: [(&str, &[&str]); 2] = [
            ("/readyz", &["get", "--raw", "/readyz"]),
            (
                "the kubernetes Service",
                &[
                    "get",
                    "--raw",
                    "/api/v1/namespaces/default/services/kubernetes",
                ],
            ),
        ];
        for (what, args) in checks {
            loop {
                if apiserver.exited().is_some() {
                    return Err(apiserver.failure("exited before it was ready"));
                }
                let out = self.kubectl(args.iter().copied().chain(["--request-timeout=5s"]));
                if out.status.success() {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(apiserver.failure(&format!(
                        "did not serve {what} at {} within {:?} (kubectl: {})",
                        self.server(),
                        self.ready_timeout,
                        String::from_utf8_lossy(&out.stderr).trim()
                    )));
                }
                thread::sleep(Duration::from_millis(200));
            }
        }
        Ok(())
    }

    /// Stops kube-apiserver (SIGTERM, then SIGKILL after 15 s) and leaves etcd running, for
    /// tests of what clients do while the API server is away. Does nothing when it is stopped.
    pub fn stop_apiserver(&self) -> Result<()> {
        if let Some(mut apiserver) = lock(&self.apiserver).take() {
            apiserver.stop(STOP_GRACE)?;
        }
        Ok(())
    }

    /// Fails, with the tail of its log, when etcd or a started kube-apiserver has exited.
    pub fn check_running(&self) -> Result<()> {
        for slot in [&self.etcd, &self.apiserver] {
            if let Some(proc) = lock(slot).as_mut()
                && proc.exited().is_some()
            {
                return Err(proc.failure("has exited"));
            }
        }
        Ok(())
    }

    /// `DIR/kubeconfig`: cluster-admin (a client certificate in group `system:masters`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The directory holding everything (absolute).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The API server's URL, `https://ADDRESS:PORT` (127.0.0.1 unless [`Options::address`]
    /// said otherwise).
    pub fn server(&self) -> String {
        format!("https://{}:{}", self.address, self.apiserver_port)
    }

    /// The API server's port.
    pub fn apiserver_port(&self) -> u16 {
        self.apiserver_port
    }

    /// etcd's client URL, `http://127.0.0.1:PORT`.
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// The CA that signed the API server's certificate and the admin's.
    pub fn ca_cert(&self) -> &Path {
        &self.pki.ca_cert
    }

    /// The cluster-admin client certificate and key (group `system:masters`).
    pub fn admin_cert(&self) -> (&Path, &Path) {
        (&self.pki.admin_cert, &self.pki.admin_key)
    }

    /// The service-account signing key (what kube-controller-manager signs tokens with).
    pub fn service_account_key(&self) -> &Path {
        &self.pki.service_account_key
    }

    /// The CA's private key, to sign more client certificates (e.g. a user bound to a
    /// narrower role).
    pub fn ca_key(&self) -> &Path {
        &self.pki.ca_key
    }

    /// The name of the Node object created at start.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The directory the binaries came from.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The pid of the running kube-apiserver (`None` while stopped).
    pub fn apiserver_pid(&self) -> Option<u32> {
        lock(&self.apiserver).as_ref().map(Proc::pid)
    }

    /// The pid of etcd.
    pub fn etcd_pid(&self) -> Option<u32> {
        lock(&self.etcd).as_ref().map(Proc::pid)
    }

    /// `kubectl --kubeconfig DIR/kubeconfig` (with its cache under DIR, and no user
    /// preferences), ready for more arguments.
    pub fn kubectl_command(&self) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("kubectl"));
        let mut kubeconfig = OsString::from("--kubeconfig=");
        kubeconfig.push(self.kubeconfig());
        let mut cache = OsString::from("--cache-dir=");
        cache.push(self.dir.join("kubectl-cache"));
        cmd.env("KUBERC", "off")
            .env_remove("KUBECONFIG")
            .arg(kubeconfig)
            .arg(cache)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs kubectl as cluster-admin with `args` and returns what it did.
    ///
    /// # Panics
    /// When kubectl cannot be started at all.
    pub fn kubectl<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.kubectl_command();
        cmd.args(args);
        cmd.output()
            .unwrap_or_else(|err| panic!("cannot run {:?}: {err}", cmd.get_program()))
    }

    /// Runs kubectl with `args`; its stdout when it succeeds, else an error with its stderr.
    pub fn kubectl_ok<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = self.kubectl(&args);
        checked("kubectl", &args, &out)
    }

    /// `kubectl apply -f -` with `yaml` on its stdin; kubectl's stdout when it succeeds.
    pub fn apply(&self, yaml: &str) -> Result<String> {
        let mut cmd = self.kubectl_command();
        cmd.args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("cannot run kubectl")?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let yaml = yaml.to_owned();
        let writer = thread::spawn(move || stdin.write_all(yaml.as_bytes()));
        let out = child.wait_with_output().context("kubectl apply")?;
        let _ = writer.join();
        checked("kubectl", &["apply", "-f", "-"], &out)
    }

    /// Stops both processes, reporting what went wrong, and removes the directory if
    /// [`ControlPlane::start`] created it. Dropping does the same, ignoring errors.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        let mut errors = Vec::new();
        for (name, slot) in [("kube-apiserver", &self.apiserver), ("etcd", &self.etcd)] {
            if let Some(mut proc) = lock(slot).take()
                && let Err(err) = proc.stop(STOP_GRACE)
            {
                errors.push(format!("{name}: {err:#}"));
            }
        }
        if self.created_dir {
            self.created_dir = false;
            if let Err(err) = fs::remove_dir_all(&self.dir) {
                errors.push(format!("cannot remove {}: {err}", self.dir.display()));
            }
        }
        if !errors.is_empty() {
            bail!("stopping the control plane: {}", errors.join("; "));
        }
        Ok(())
    }

    /// The last `lines` lines of `etcd.log` or `kube-apiserver.log`, for messages.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        log_tail(&self.dir.join(format!("{name}.log")), lines)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

fn checked<S: AsRef<OsStr>>(program: &str, args: &[S], out: &Output) -> Result<String> {
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    bail!(
        "`{program} {}` failed ({}): {}",
        args.iter()
            .map(|a| a.as_ref().to_string_lossy())
            .collect::<Vec<_>>()
            .join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_strings_are_quoted_and_escaped() {
        assert_eq!(yaml_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(yaml_string("/tmp/x y"), "\"/tmp/x y\"");
    }

    /// What kube-rs (like kubectl) reads back is what was meant, even for paths that need
    /// quoting in YAML.
    #[test]
    fn kubeconfig_round_trips_with_odd_paths() {
        let dir = Path::new("/tmp/a \"quoted\": dir #1");
        let pki = Pki {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("apiserver.crt"),
            server_key: dir.join("apiserver.key"),
            admin_cert: dir.join("admin.crt"),
            admin_key: dir.join("admin.key"),
            service_account_key: dir.join("sa.key"),
            service_account_pub: dir.join("sa.pub"),
        };
        let text = serde_yaml_ng::to_string(&kubeconfig("https://127.0.0.1:6443", &pki))
            .expect("serialise");
        let back = Kubeconfig::from_yaml(&text).expect("parse");
        assert_eq!(back.current_context.as_deref(), Some("testenv"));
        let cluster = back.clusters[0].cluster.as_ref().expect("cluster");
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
        assert_eq!(
            cluster.certificate_authority.as_deref(),
            Some("/tmp/a \"quoted\": dir #1/ca.crt")
        );
        let user = back.auth_infos[0].auth_info.as_ref().expect("user");
        assert_eq!(
            user.client_key.as_deref(),
            Some("/tmp/a \"quoted\": dir #1/admin.key")
        );
        let context = back.contexts[0].context.as_ref().expect("context");
        assert_eq!(
            (context.cluster.as_str(), context.user.as_deref()),
            ("testenv", Some("testenv-admin"))
        );
    }

    /// One control plane can be shared between tests through a static.
    #[test]
    fn control_plane_is_send_and_sync() {
        fn shareable<T: Send + Sync>() {}
        shareable::<ControlPlane>();
    }

    #[test]
    fn free_ports_differ() {
        let [a, b, c] = free_ports::<3>().expect("ports");
        assert!(a != b && b != c && a != c);
    }
}
