//! Kubernetes: a real etcd and kube-apiserver on loopback (the `testenv` crate), pods staged as
//! the kubelet would leave them (a Pod object with a UID and a container id in its status, and
//! cgroups named after them), and the agent running against both. Root only.
#[expect(
    dead_code,
    reason = "the helpers are shared by several test binaries; each uses a part"
)]
mod common;

use std::{
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{TestCgroup, Tracer, root_or_skip, scenario_bin};
use testenv::ControlPlane;

const EXEC: &str = "dev.vigil.exec.v1";

/// A control plane with Vigil's CRDs installed and a private cgroup root for staged pods.
struct Cluster {
    plane: ControlPlane,
    root: TestCgroup,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start(test: &str) -> Option<Self> {
        if !root_or_skip(test) {
            return None;
        }
        let bin = testenv::bin_dir_for_tests(test)?;
        let dir = tempfile::tempdir().unwrap();
        let plane = ControlPlane::start(&dir.path().join("plane"), &bin).expect("control plane");
        let crds = testenv::workspace_root().join("charts/vigil/crds");
        plane
            .kubectl_ok(["apply", "-f", crds.to_str().unwrap()])
            .expect("CRDs");
        plane
            .kubectl_ok([
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/runtimepolicies.vigil.dev",
                "crd/clusterruntimepolicies.vigil.dev",
            ])
            .expect("CRDs established");
        Some(Self {
            plane,
            root: TestCgroup::new(&format!("k8s-{test}")),
            _dir: dir,
        })
    }

    /// `vigil run` against this cluster, with the private cgroup root.
    fn agent(&self, kubeconfig: Option<&Path>) -> Tracer {
        let kubeconfig = kubeconfig.map_or_else(|| self.plane.kubeconfig(), Path::to_path_buf);
        Tracer::spawn_with(
            &[
                "run",
                "--output",
                "json",
                "--watch-interval-ms",
                "100",
                "--node-name",
                self.plane.node_name(),
                "--cgroup-root",
                self.root.dir.to_str().unwrap(),
            ],
            &[("KUBECONFIG", kubeconfig.as_os_str())],
            "vigil is enforcing",
        )
    }

    fn namespace(&self, name: &str, labels: &str) {
        self.plane.apply(&format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{{labels}}}}}\n")).unwrap();
    }

    fn uid(&self, args: &[&str]) -> String {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend(["-o", "jsonpath={.metadata.uid}"]);
        self.plane.kubectl_ok(all).unwrap()
    }

    /// A Deployment and its ReplicaSet (objects only: no controllers run here).
    fn deployment(&self, ns: &str, name: &str) -> (String, String) {
        self.plane
            .apply(&format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec: {{containers: [{{name: app, image: shop/{name}:1.2}}]}}\n"
            ))
            .unwrap();
        let deploy_uid = self.uid(&["deployment", name, "-n", ns]);
        let rs = format!("{name}-5d4f8b7c9");
        self.plane
            .apply(&format!(
                "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata:\n  name: {rs}\n  namespace: {ns}\n  ownerReferences: [{{apiVersion: apps/v1, kind: Deployment, name: {name}, uid: {deploy_uid}, controller: true}}]\nspec:\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec: {{containers: [{{name: app, image: shop/{name}:1.2}}]}}\n"
            ))
            .unwrap();
        let rs_uid = self.uid(&["replicaset", &rs, "-n", ns]);
        (rs, rs_uid)
    }

    /// A pod on this node as the kubelet would leave it: the Pod object (status included) and
    /// its cgroups, named for the systemd driver and containerd.
    fn pod(&self, ns: &str, name: &str, labels: &str, owner: Option<(&str, &str)>) -> StagedPod {
        let owner = owner.map_or(String::new(), |(rs, uid)| {
            format!("  ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: {rs}, uid: {uid}, controller: true}}]\n")
        });
        self.plane
            .apply(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {{{labels}}}\n{owner}spec:\n  nodeName: {node}\n  serviceAccountName: web-sa\n  containers: [{{name: app, image: shop/web:1.2}}]\n",
                node = self.plane.node_name()
            ))
            .unwrap();
        let uid = self.uid(&["pod", name, "-n", ns]);
        let container_id = format!("{:0>64}", uid.replace('-', ""));
        let status = format!(
            r#"{{"status":{{"phase":"Running","containerStatuses":[{{"name":"app","containerID":"containerd://{container_id}","image":"docker.io/shop/web:1.2","imageID":"","ready":true,"restartCount":0,"started":true,"state":{{"running":{{}}}}}}]}}}}"#
        );
        self.plane
            .kubectl_ok([
                "patch",
                "pod",
                name,
                "-n",
                ns,
                "--subresource=status",
                "--type=merge",
                "-p",
                &status,
            ])
            .unwrap();
        StagedPod::create(&self.root, &uid, &container_id, name)
    }
}

/// The cgroups of a staged pod; removed on drop (innermost first).
struct StagedPod {
    name: String,
    uid: String,
    container_id: String,
    dirs: Vec<PathBuf>,
    container: PathBuf,
}

impl StagedPod {
    fn create(root: &TestCgroup, uid: &str, container_id: &str, name: &str) -> Self {
        let slice = root.dir.join("kubepods.slice");
        let qos = slice.join("kubepods-besteffort.slice");
        let pod = qos.join(format!(
            "kubepods-besteffort-pod{}.slice",
            uid.replace('-', "_")
        ));
        let container = pod.join(format!("cri-containerd-{container_id}.scope"));
        let mut dirs = Vec::new();
        for dir in [&slice, &qos, &pod, &container] {
            if !dir.exists() {
                std::fs::create_dir(dir).unwrap();
                dirs.push(dir.clone());
            }
        }
        Self {
            name: name.into(),
            uid: uid.into(),
            container_id: container_id.into(),
            dirs,
            container,
        }
    }

    /// Runs `program args` in the pod's container cgroup.
    fn run(&self, program: &Path, args: &[&str]) -> (u32, std::process::ExitStatus) {
        let mut cmd = in_cgroup(&self.container, program);
        let child = cmd
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        (pid, child.wait_with_output().unwrap().status)
    }
}

impl Drop for StagedPod {
    fn drop(&mut self) {
        for dir in self.dirs.iter().rev() {
            for _ in 0..100 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A command whose process joins the cgroup at `dir` between fork and exec.
fn in_cgroup(dir: &Path, program: impl AsRef<std::ffi::OsStr>) -> Command {
    use std::os::unix::{ffi::OsStrExt, process::CommandExt};
    let procs = std::ffi::CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).unwrap();
    let mut cmd = Command::new(program);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let rc = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if rc != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

fn denied_binary(dir: &Path) -> (PathBuf, String) {
    let denied = dir.join("denied");
    std::fs::create_dir_all(&denied).unwrap();
    let writer = denied.join("writer");
    std::fs::copy(scenario_bin(), &writer).unwrap();
    (
        writer,
        std::fs::canonicalize(&denied)
            .unwrap()
            .display()
            .to_string(),
    )
}

/// Polls until a denied exec in `pod` is killed (`want_killed`) or runs; the time it took.
fn until_enforced(
    pod: &StagedPod,
    writer: &Path,
    tmp: &Path,
    want_killed: bool,
    what: &str,
) -> Duration {
    let start = Instant::now();
    let mut n = 0;
    loop {
        let marker = tmp.join(format!("poll-{}-{n}", pod.uid));
        let (_, status) = pod.run(writer, &["write-marker", marker.to_str().unwrap()]);
        let killed = status.signal() == Some(libc::SIGKILL) && !marker.exists();
        if killed == want_killed {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: not in effect after 10 s"
        );
        n += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn deny_policy(ns: &str, name: &str, selector: &str, denied: &str) -> String {
    format!(
        "apiVersion: vigil.dev/v1alpha1\nkind: RuntimePolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  podSelector: {{matchLabels: {{{selector}}}}}\n  exec:\n    deny: [{{prefix: \"{denied}/\"}}]\n    action: Kill\n"
    )
}

#[test]
fn a_violation_in_a_pod_carries_its_pod_container_and_deployment() {
    let Some(c) = Cluster::start("pod-metadata") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (writer, denied) = denied_binary(tmp.path());
    c.namespace("shop", "env: prod");
    let (rs, rs_uid) = c.deployment("shop", "web");
    let pod = c.pod(
        "shop",
        "web-5d4f8b7c9-x2x7q",
        "app: web, tier: front",
        Some((&rs, &rs_uid)),
    );
    let agent = c.agent(None);
    let applied = Instant::now();
    c.plane
        .apply(&deny_policy("shop", "no-tmp", "app: web", &denied))
        .unwrap();
    let took = until_enforced(&pod, &writer, tmp.path(), true, "the RuntimePolicy");
    eprintln!(
        "policy apply -> enforced in the kernel: {} ms",
        took.as_millis()
    );
    assert!(applied.elapsed() < Duration::from_secs(5));

    let e = agent.wait_for("the kill in the pod", |e| {
        e["type"] == EXEC && e["vigilaction"] == "kill"
    });
    assert_eq!(e["subject"], format!("namespaces/shop/pods/{}", pod.name));
    assert_eq!(e["vigilpolicy"], "shop/no-tmp");
    let d = &e["data"];
    assert_eq!(d["pod"]["namespace"], "shop");
    assert_eq!(d["pod"]["name"], pod.name.as_str());
    assert_eq!(d["pod"]["uid"], pod.uid.as_str());
    assert_eq!(d["pod"]["labels"]["app"], "web");
    assert_eq!(d["pod"]["labels"]["tier"], "front");
    assert_eq!(d["pod"]["serviceAccount"], "web-sa");
    assert_eq!(
        d["pod"]["owner"],
        serde_json::json!({"kind": "Deployment", "name": "web"})
    );
    assert_eq!(d["container"]["id"], pod.container_id.as_str());
    assert_eq!(d["container"]["name"], "app");
    assert_eq!(d["container"]["image"], "docker.io/shop/web:1.2");
    assert_eq!(d["policy"]["kind"], "RuntimePolicy");
    assert_eq!(d["policy"]["namespace"], "shop");
    assert!(d.get("metadataIncomplete").is_none());
    // The policy's status says it is enforced.
    let accepted = c
        .plane
        .kubectl_ok([
            "get",
            "runtimepolicy",
            "no-tmp",
            "-n",
            "shop",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Accepted\")].status}",
        ])
        .unwrap();
    assert_eq!(accepted, "True");
    agent.stop();
}

#[test]
fn relabelling_the_pod_or_deleting_the_policy_lifts_it() {
    let Some(c) = Cluster::start("relabel") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (writer, denied) = denied_binary(tmp.path());
    c.namespace("shop", "env: prod");
    let pod = c.pod("shop", "web-0", "app: web", None);
    let other = c.pod("shop", "db-0", "app: db", None);
    let agent = c.agent(None);
    c.plane
        .apply(&deny_policy("shop", "no-tmp", "app: web", &denied))
        .unwrap();
    let t = until_enforced(&pod, &writer, tmp.path(), true, "apply");
    // A pod the selector does not match is not constrained.
    let marker = tmp.path().join("db-ran");
    let (_, status) = other.run(&writer, &["write-marker", marker.to_str().unwrap()]);
    assert!(
        status.success() && marker.exists(),
        "an unselected pod was constrained"
    );

    c.plane
        .kubectl_ok([
            "label",
            "pod",
            "web-0",
            "-n",
            "shop",
            "app=other",
            "--overwrite",
        ])
        .unwrap();
    let lifted = until_enforced(
        &pod,
        &writer,
        tmp.path(),
        false,
        "relabel out of the selector",
    );
    c.plane
        .kubectl_ok([
            "label",
            "pod",
            "web-0",
            "-n",
            "shop",
            "app=web",
            "--overwrite",
        ])
        .unwrap();
    let back = until_enforced(
        &pod,
        &writer,
        tmp.path(),
        true,
        "relabel back into the selector",
    );
    c.plane
        .kubectl_ok(["delete", "runtimepolicy", "no-tmp", "-n", "shop"])
        .unwrap();
    let deleted = until_enforced(&pod, &writer, tmp.path(), false, "policy deletion");
    eprintln!(
        "apply -> enforced {} ms; relabel out -> lifted {} ms; relabel in -> enforced {} ms; delete -> lifted {} ms",
        t.as_millis(),
        lifted.as_millis(),
        back.as_millis(),
        deleted.as_millis()
    );
    for (what, d) in [
        ("apply", t),
        ("relabel out", lifted),
        ("relabel in", back),
        ("delete", deleted),
    ] {
        assert!(
            d < Duration::from_secs(2),
            "{what} took {} ms",
            d.as_millis()
        );
    }
    agent.stop();
}

#[test]
fn an_invalid_policy_is_refused_visibly_and_the_last_good_version_holds() {
    let Some(c) = Cluster::start("invalid-crd") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (writer, denied) = denied_binary(tmp.path());
    c.namespace("shop", "env: prod");
    let pod = c.pod("shop", "web-0", "app: web", None);
    let agent = c.agent(None);
    c.plane
        .apply(&deny_policy("shop", "no-tmp", "app: web", &denied))
        .unwrap();
    until_enforced(&pod, &writer, tmp.path(), true, "apply");
    // Valid for the API server's schema, refused by the agent: a CIDR with host bits set.
    let bad = format!(
        "{}  connect:\n    deny: [{{cidr: 10.0.0.1/8}}]\n",
        deny_policy("shop", "no-tmp", "app: web", &denied)
    );
    c.plane.apply(&bad).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let message = loop {
        let m = c
            .plane
            .kubectl_ok([
                "get",
                "runtimepolicy",
                "no-tmp",
                "-n",
                "shop",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Accepted\")].message}",
            ])
            .unwrap();
        if m.contains("refused") {
            break m;
        }
        assert!(Instant::now() < deadline, "no refusal in the status: {m:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(message.contains("spec.connect.deny[0].cidr"), "{message}");
    let events = c
        .plane
        .kubectl_ok([
            "get",
            "events.events.k8s.io",
            "-n",
            "shop",
            "-o",
            "jsonpath={.items[*].reason}",
        ])
        .unwrap();
    assert!(
        events.contains("InvalidPolicy"),
        "no Event on the policy: {events}"
    );
    // The last good version still kills.
    let marker = tmp.path().join("after-invalid");
    let (_, status) = pod.run(&writer, &["write-marker", marker.to_str().unwrap()]);
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(!marker.exists());
    agent.stop();
}

#[test]
fn an_event_from_a_pod_created_a_moment_before_is_still_enriched() {
    let Some(c) = Cluster::start("fresh-pod") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (writer, denied) = denied_binary(tmp.path());
    c.namespace("shop", "env: prod");
    // Selects host processes and every pod: the violation happens whether or not the agent
    // has seen the pod yet.
    c.plane
        .apply(&format!(
            "apiVersion: vigil.dev/v1alpha1\nkind: ClusterRuntimePolicy\nmetadata: {{name: everywhere}}\nspec:\n  namespaceSelector: {{}}\n  hostProcesses: {{cgroupPrefixes: [\"/kubepods.slice\"]}}\n  exec:\n    deny: [{{prefix: \"{denied}/\"}}]\n    action: Alert\n"
        ))
        .unwrap();
    let agent = c.agent(None);
    agent.wait_for_log("policies in force");
    let created = Instant::now();
    let pod = c.pod("shop", "fresh-0", "app: fresh", None);
    let (pid, _) = pod.run(
        &writer,
        &["write-marker", tmp.path().join("m").to_str().unwrap()],
    );
    let e = agent.wait_for("the fresh pod's violation", |e| {
        e["type"] == EXEC && e["data"]["process"]["pid"] == pid
    });
    let took = created.elapsed();
    eprintln!(
        "pod creation -> enriched violation event: {} ms",
        took.as_millis()
    );
    assert_eq!(e["data"]["pod"]["name"], "fresh-0", "{e}");
    assert_eq!(e["data"]["container"]["name"], "app");
    assert!(e["data"].get("metadataIncomplete").is_none(), "{e}");
    agent.stop();
}
