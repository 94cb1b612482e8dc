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

use common::{
    TestCgroup, Tracer, denied_binary, in_cgroup, is, liveness, remove_cgroup_dir, root_or_skip,
    run_in_cgroup, scenario_bin, wait_until,
};
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
        self.agent_on(self.plane.node_name(), &self.root, kubeconfig)
    }

    /// `vigil run` as the agent of `node`, with `root` as its cgroup root.
    fn agent_on(&self, node: &str, root: &TestCgroup, kubeconfig: Option<&Path>) -> Tracer {
        self.agent_with(node, root, kubeconfig, &[])
    }

    /// [`Cluster::agent_on`] with `extra` arguments.
    fn agent_with(
        &self,
        node: &str,
        root: &TestCgroup,
        kubeconfig: Option<&Path>,
        extra: &[&str],
    ) -> Tracer {
        let kubeconfig = kubeconfig.map_or_else(|| self.plane.kubeconfig(), Path::to_path_buf);
        let mut args = vec![
            "--watch-interval-ms",
            "100",
            "--node-name",
            node,
            "--cgroup-root",
            root.dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Tracer::run(&args, &[("KUBECONFIG", kubeconfig.as_os_str())])
    }

    /// `node`'s entry in the status of `object` (e.g. `["runtimepolicy", "web", "-n",
    /// "shop"]`): its `Accepted` condition's status and message, and its observed generation.
    fn verdict(&self, object: &[&str], node: &str) -> Option<NodeVerdict> {
        self.verdicts(object).into_iter().find(|v| v.node == node)
    }

    /// Every node's entry in the status of `object`.
    fn verdicts(&self, object: &[&str]) -> Vec<NodeVerdict> {
        let mut args = vec!["get"];
        args.extend_from_slice(object);
        args.extend(["-o", "json"]);
        let json: serde_json::Value =
            serde_json::from_str(&self.plane.kubectl_ok(args).unwrap()).unwrap();
        json["status"]["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|entry| {
                let accepted = entry["conditions"]
                    .as_array()
                    .and_then(|all| all.iter().find(|c| c["type"] == "Accepted"))
                    .cloned()
                    .unwrap_or_default();
                NodeVerdict {
                    node: entry["node"].as_str().unwrap_or_default().into(),
                    status: accepted["status"].as_str().unwrap_or_default().into(),
                    message: accepted["message"].as_str().unwrap_or_default().into(),
                    generation: entry["observedGeneration"].as_i64().unwrap_or_default(),
                }
            })
            .collect()
    }

    /// Polls `object`'s status until `done` holds for its entries. The bound is twice the
    /// liveness bound: a write refused and then allowed waits for the retry's backoff too.
    fn until_verdicts(
        &self,
        object: &[&str],
        what: &str,
        done: impl Fn(&[NodeVerdict]) -> bool,
    ) -> Vec<NodeVerdict> {
        wait_until(
            what,
            2 * liveness(),
            || Some(self.verdicts(object)).filter(|v| done(v)),
            || format!("the status says {:?}", self.verdicts(object)),
        )
    }

    /// The chart's resources as `helm template` renders them, applied with `edit` made to
    /// them, and a kubeconfig with a token of the chart's ServiceAccount.
    fn chart_account(&self, dir: &Path, edit: impl Fn(&str) -> String) -> (String, PathBuf) {
        let helm = self.plane.bin_dir().join("helm");
        let chart = testenv::workspace_root().join("charts/vigil");
        let out = Command::new(&helm)
            .args([
                "template",
                "vigil",
                chart.to_str().unwrap(),
                "--namespace",
                "vigil-system",
                "--kube-version",
                "1.37.0",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "helm template: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rendered = String::from_utf8(out.stdout).unwrap();
        self.plane
            .kubectl_ok(["create", "namespace", "vigil-system"])
            .unwrap();
        let edited = edit(&rendered);
        self.plane.apply(&edited).unwrap();
        let token = self
            .plane
            .kubectl_ok([
                "create",
                "token",
                "vigil",
                "-n",
                "vigil-system",
                "--duration=1h",
            ])
            .unwrap();
        (rendered, token_kubeconfig(self, dir, token.trim()))
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

/// One node's entry in a policy's status.
#[derive(Debug, Clone, PartialEq)]
struct NodeVerdict {
    node: String,
    /// The `Accepted` condition's status: `True` or `False`.
    status: String,
    message: String,
    generation: i64,
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
        run_in_cgroup(&self.container, program, args)
    }
}

impl Drop for StagedPod {
    fn drop(&mut self) {
        for dir in self.dirs.iter().rev() {
            remove_cgroup_dir(dir);
        }
    }
}

/// Polls until a denied exec in `pod` is killed (`want_killed`) or runs; the time it took
/// (printed by the tests, not asserted: `cargo xtask bench` measures speed).
fn until_enforced(
    pod: &StagedPod,
    writer: &Path,
    tmp: &Path,
    want_killed: bool,
    what: &str,
) -> Duration {
    static ATTEMPT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let start = Instant::now();
    wait_until(
        what,
        liveness(),
        || {
            // A fresh marker every attempt: an old one would read as "it ran".
            let n = ATTEMPT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let marker = tmp.join(format!("poll-{}-{n}", pod.uid));
            let (_, status) = pod.run(writer, &["write-marker", marker.to_str().unwrap()]);
            let killed = status.signal() == Some(libc::SIGKILL) && !marker.exists();
            (killed == want_killed).then(|| start.elapsed())
        },
        || {
            format!(
                "a denied exec is still {}",
                if want_killed { "running" } else { "killed" }
            )
        },
    )
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
    c.plane
        .apply(&deny_policy("shop", "no-tmp", "app: web", &denied))
        .unwrap();
    let took = until_enforced(&pod, &writer, tmp.path(), true, "the RuntimePolicy");
    eprintln!(
        "policy apply -> enforced in the kernel: {} ms",
        took.as_millis()
    );

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
    // The policy's status says it is enforced on this node.
    let node = c.plane.node_name();
    c.until_verdicts(
        &["runtimepolicy", "no-tmp", "-n", "shop"],
        "the policy's status",
        |all| all.iter().any(|v| v.node == node && v.status == "True"),
    );
    agent.stop();
}

/// The common start: a cluster, a pod `shop/web-0` labelled `app: web`, the agent, and a
/// RuntimePolicy killing execs from `denied/`, already in force.
struct Enforced {
    c: Cluster,
    tmp: tempfile::TempDir,
    writer: PathBuf,
    denied: String,
    pod: StagedPod,
    agent: Tracer,
    took: Duration,
}

impl Enforced {
    fn start(test: &str) -> Option<Self> {
        let c = Cluster::start(test)?;
        let tmp = tempfile::tempdir().unwrap();
        let (writer, denied) = denied_binary(tmp.path());
        c.namespace("shop", "env: prod");
        let pod = c.pod("shop", "web-0", "app: web", None);
        let agent = c.agent(None);
        c.plane
            .apply(&deny_policy("shop", "no-tmp", "app: web", &denied))
            .unwrap();
        let took = until_enforced(&pod, &writer, tmp.path(), true, "apply");
        Some(Self {
            c,
            tmp,
            writer,
            denied,
            pod,
            agent,
            took,
        })
    }
}

#[test]
fn relabelling_the_pod_or_deleting_the_policy_lifts_it() {
    let Some(Enforced {
        c,
        tmp,
        writer,
        pod,
        agent,
        took,
        ..
    }) = Enforced::start("relabel")
    else {
        return;
    };
    let other = c.pod("shop", "db-0", "app: db", None);
    let t = took;
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
    agent.stop();
}

#[test]
fn an_invalid_policy_is_refused_visibly_and_the_last_good_version_holds() {
    let Some(Enforced {
        c,
        tmp,
        writer,
        denied,
        pod,
        agent,
        ..
    }) = Enforced::start("invalid-crd")
    else {
        return;
    };
    // Valid for the API server's schema, refused by the agent: a CIDR with host bits set.
    let bad = format!(
        "{}  connect:\n    deny: [{{cidr: 10.0.0.1/8}}]\n",
        deny_policy("shop", "no-tmp", "app: web", &denied)
    );
    c.plane.apply(&bad).unwrap();
    let node = c.plane.node_name();
    let verdicts = c.until_verdicts(
        &["runtimepolicy", "no-tmp", "-n", "shop"],
        "the refusal in the status",
        |all| all.iter().any(|v| v.node == node && v.status == "False"),
    );
    let message = &verdicts.iter().find(|v| v.node == node).unwrap().message;
    assert!(message.contains("refused"), "{message}");
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

/// Every policy file of the library in `policies/`.
fn shipped_policies() -> Vec<PathBuf> {
    let root = testenv::workspace_root().join("policies");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .flat_map(|dir| std::fs::read_dir(dir.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn the_policy_library_applies_as_it_is_and_a_wrong_field_is_refused_by_name() {
    let Some(c) = Cluster::start("library") else {
        return;
    };
    let files = shipped_policies();
    assert!(files.len() >= 8, "the policy library: {files:?}");
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        // A namespaced policy needs its namespace, as on a user's cluster.
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let doc: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
            if let Some(ns) = doc["metadata"]["namespace"].as_str() {
                let _ = c.plane.kubectl(["create", "namespace", ns]);
            }
        }
        let out = c
            .plane
            .kubectl_ok(["apply", "--dry-run=server", "-f", file.to_str().unwrap()])
            .unwrap_or_else(|e| panic!("{}: {e:#}", file.display()));
        assert!(
            out.contains("(server dry run)"),
            "{}: {out}",
            file.display()
        );
    }
    // What the API server's schema refuses, with the field named: a misspelt field, a value
    // outside an enum, a string where a list belongs.
    let web = std::fs::read_to_string(testenv::workspace_root().join("policies/examples/web.yaml"))
        .unwrap();
    for (from, to, field) in [
        (
            "    allow:\n      - path: /usr/sbin/nginx",
            "    alow:\n      - path: /usr/sbin/nginx",
            "spec.exec.alow",
        ),
        (
            "    action: Kill",
            "    action: Explode",
            "spec.exec.action",
        ),
        (
            "  containers: [nginx]",
            "  containers: nginx",
            "spec.containers",
        ),
    ] {
        assert!(web.contains(from), "{from}");
        let bad = web.replacen(from, to, 1);
        let path = c._dir.path().join("bad.yaml");
        std::fs::write(&path, bad).unwrap();
        let out = c
            .plane
            .kubectl(["apply", "--dry-run=server", "-f", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{field}: accepted");
        assert!(stderr.contains(field), "{field} is not named: {stderr}");
    }
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
    // The kubelet's slice exists before the pod does (as on a node), so the host binding is in
    // force from the start and the exec is a violation whether or not the pod is known yet.
    let slice = c.root.dir.join("kubepods.slice");
    std::fs::create_dir(&slice).unwrap();
    let agent = c.agent(None);
    agent.wait_for_state("the kubelet's slice bound", |s| {
        s["bound"].as_array().is_some_and(|b| b.len() == 1)
    });
    let created = Instant::now();
    let pod = c.pod("shop", "fresh-0", "app: fresh", None);
    let (pid, _) = pod.run(
        &writer,
        &["write-marker", tmp.path().join("m").to_str().unwrap()],
    );
    let e = agent.wait_for("the fresh pod's violation", |e| is(e, EXEC, pid));
    let took = created.elapsed();
    eprintln!(
        "pod creation -> enriched violation event: {} ms",
        took.as_millis()
    );
    assert_eq!(e["data"]["pod"]["name"], "fresh-0", "{e}");
    assert_eq!(e["data"]["container"]["name"], "app");
    assert!(e["data"].get("metadataIncomplete").is_none(), "{e}");
    agent.stop();
    drop(pod);
    let _ = std::fs::remove_dir(&slice);
}

/// A network namespace of the test's own, with addresses on its loopback; deleted on drop.
/// Service and endpoint addresses are bound here, so no packet ever leaves the machine.
struct NetNs {
    name: String,
    listeners: Vec<std::process::Child>,
}

impl NetNs {
    fn new(label: &str) -> Self {
        let name = format!("vigil-{label}-{}", std::process::id());
        let ip = |args: &[&str]| {
            let out = Command::new("ip")
                .args(args)
                .output()
                .expect("ip (iproute2)");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Self {
            name,
            listeners: Vec::new(),
        }
    }

    fn add_address(&self, ip: &str) {
        let cidr = format!("{ip}/32");
        let out = Command::new("ip")
            .args(["-n", &self.name, "addr", "add", &cidr, "dev", "lo"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "adding {cidr}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A TCP listener on `addr` inside the namespace.
    fn listen(&mut self, addr: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(scenario_bin())
            .args(["tcp-listen", addr])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "listening", "listener on {addr}");
        self.listeners.push(child);
    }

    /// Connects to `addr` from inside the namespace, as a process of `pod`; returns its pid.
    fn connect_from(&self, pod: &StagedPod, addr: &str) -> u32 {
        let mut cmd = in_cgroup(&pod.container, "ip");
        let child = cmd
            .args(["netns", "exec", &self.name])
            .arg(scenario_bin())
            .args(["tcp-connect", addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        child.wait_with_output().unwrap();
        pid
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        for mut l in self.listeners.drain(..) {
            let _ = l.kill();
            let _ = l.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

fn cluster_ip(c: &Cluster, ns: &str, name: &str) -> String {
    c.plane
        .kubectl_ok([
            "get",
            "service",
            name,
            "-n",
            ns,
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .unwrap()
}

/// Whether a connect to `addr` from `pod` is a violation: a known-bad connect follows as a
/// marker, and events keep their order.
fn connect_violates(
    agent: &Tracer,
    netns: &NetNs,
    pod: &StagedPod,
    addr: &str,
    marker_addr: &str,
) -> bool {
    let pid = netns.connect_from(pod, addr);
    let marker = netns.connect_from(pod, marker_addr);
    agent.wait_for("the marker connect", |e| {
        e["type"] == "dev.vigil.connect.v1" && e["data"]["process"]["pid"] == marker
    });
    agent
        .events()
        .iter()
        .any(|e| e["type"] == "dev.vigil.connect.v1" && e["data"]["process"]["pid"] == pid)
}

#[test]
fn allow_services_follows_the_clusters_services_and_endpoints() {
    let Some(c) = Cluster::start("services") else {
        return;
    };
    c.namespace("shop", "env: prod");
    let pod = c.pod("shop", "web-0", "app: web", None);
    c.plane.apply("apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: shop}\nspec: {ports: [{port: 8080, protocol: TCP}], selector: {app: api}}\n").unwrap();
    c.plane
        .apply("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: api-1, namespace: shop, labels: {kubernetes.io/service-name: api}}\naddressType: IPv4\nports: [{port: 9090, protocol: TCP}]\nendpoints: [{addresses: [\"10.244.1.7\"], conditions: {ready: true}}]\n")
        .unwrap();
    let vip = cluster_ip(&c, "shop", "api");
    assert!(
        vip.starts_with("10.96."),
        "ClusterIP {vip} outside the test's Service CIDR"
    );
    let mut netns = NetNs::new("svc");
    netns.add_address(&vip);
    netns.add_address("10.244.1.7");
    for addr in [
        format!("{vip}:8080"),
        format!("{vip}:8081"),
        "10.244.1.7:9090".to_string(),
    ] {
        netns.listen(&addr);
    }
    let agent = c.agent(None);
    c.plane
        .apply("apiVersion: vigil.dev/v1alpha1\nkind: RuntimePolicy\nmetadata: {name: egress, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  connect: {allowServices: true, action: Alert}\n")
        .unwrap();
    let bad = format!("{vip}:8081");
    // The policy is in force once a known-bad connect is reported. Until then no connect is
    // reported at all, so each attempt looks back at every earlier one.
    let mut tried = Vec::new();
    wait_until(
        "the egress policy in force",
        liveness(),
        || {
            tried.push(netns.connect_from(&pod, &bad));
            let events = agent.events();
            tried
                .iter()
                .any(|pid| events.iter().any(|e| e["data"]["process"]["pid"] == *pid))
                .then_some(())
        },
        || "no connect to the Service's unlisted port was reported".into(),
    );
    assert!(
        !connect_violates(&agent, &netns, &pod, &format!("{vip}:8080"), &bad),
        "the Service's ClusterIP:port was refused"
    );
    assert!(
        !connect_violates(&agent, &netns, &pod, "10.244.1.7:9090", &bad),
        "the endpoint address:port was refused"
    );
    let e = agent
        .events()
        .into_iter()
        .rev()
        .find(|e| e["data"]["connect"]["dport"] == 8081)
        .unwrap();
    assert_eq!(e["data"]["policy"]["rule"], "spec.connect.allow");
    assert_eq!(e["data"]["connect"]["daddr"], vip.as_str());

    // A new Service: its address comes to be allowed, with no change to the policy.
    c.plane.apply("apiVersion: v1\nkind: Service\nmetadata: {name: api2, namespace: shop}\nspec: {ports: [{port: 7070, protocol: TCP}], selector: {app: api2}}\n").unwrap();
    let created = Instant::now();
    let vip2 = cluster_ip(&c, "shop", "api2");
    netns.add_address(&vip2);
    netns.listen(&format!("{vip2}:7070"));
    let ready = wait_until(
        "the new Service allowed",
        liveness(),
        || {
            (!connect_violates(&agent, &netns, &pod, &format!("{vip2}:7070"), &bad))
                .then(|| created.elapsed())
        },
        || "a connect to its ClusterIP is still a violation".into(),
    );
    eprintln!(
        "service created -> its ClusterIP allowed: {} ms",
        ready.as_millis()
    );
    agent.stop();
}

#[test]
fn an_api_server_outage_keeps_enforcement_and_the_agent_resyncs() {
    let Some(Enforced {
        c,
        tmp,
        writer,
        pod,
        agent,
        ..
    }) = Enforced::start("outage")
    else {
        return;
    };
    c.plane.stop_apiserver().unwrap();
    let down = Instant::now();
    let mut n = 0;
    // Time passing is the point: enforcement must hold for the whole outage, however long.
    while down.elapsed() < Duration::from_secs(20) {
        let marker = tmp.path().join(format!("outage-{n}"));
        let (_, status) = pod.run(&writer, &["write-marker", marker.to_str().unwrap()]);
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "not killed {} s into the outage",
            down.elapsed().as_secs()
        );
        assert!(!marker.exists());
        n += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    let failures = agent
        .stderr_lines()
        .iter()
        .filter(|l| l.contains("watch failed"))
        .count();
    c.plane.start_apiserver().unwrap();
    // Resynced: a change made after the restart takes effect.
    c.plane
        .kubectl_ok(["delete", "runtimepolicy", "no-tmp", "-n", "shop"])
        .unwrap();
    let lifted = until_enforced(
        &pod,
        &writer,
        tmp.path(),
        false,
        "deleting the policy after the restart",
    );
    eprintln!(
        "outage: {n} denied execs killed during 20 s without an API server; {failures} 'watch failed' log lines; change after restart applied in {} ms",
        lifted.as_millis()
    );
    assert!(
        failures <= 8,
        "the outage was logged {failures} times (once per watched resource at most)"
    );
    assert!(
        agent
            .stderr_lines()
            .iter()
            .any(|l| l.contains("watch resumed"))
    );
    agent.stop();
}

/// A kubeconfig for a ServiceAccount token.
fn token_kubeconfig(c: &Cluster, dir: &Path, token: &str) -> PathBuf {
    let path = dir.join("agent-kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: test, cluster: {{server: \"{}\", certificate-authority: \"{}\"}}}}]\nusers: [{{name: agent, user: {{token: \"{token}\"}}}}]\ncontexts: [{{name: agent, context: {{cluster: test, user: agent}}}}]\ncurrent-context: agent\n",
            c.plane.server(),
            c.plane.ca_cert().display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn the_charts_rbac_is_exactly_enough() {
    let Some(c) = Cluster::start("rbac") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (writer, denied) = denied_binary(tmp.path());
    let (rendered, kubeconfig) = c.chart_account(tmp.path(), str::to_string);

    c.namespace("shop", "env: prod");
    let pod = c.pod("shop", "web-0", "app: web", None);
    let agent = c.agent(Some(&kubeconfig));
    c.plane
        .apply(&deny_policy("shop", "no-tmp", "app: web", &denied))
        .unwrap();
    until_enforced(
        &pod,
        &writer,
        tmp.path(),
        true,
        "apply, with the chart's role",
    );
    let node = c.plane.node_name();
    c.until_verdicts(
        &["runtimepolicy", "no-tmp", "-n", "shop"],
        "the policy's status, written with the chart's role",
        |all| all.iter().any(|v| v.node == node && v.status == "True"),
    );
    let refusals: Vec<String> = agent
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("forbidden") || l.contains("watch failed"))
        .collect();
    assert!(
        refusals.is_empty(),
        "the chart's role is missing something: {refusals:?}"
    );
    agent.stop();

    // The same role without `list` on EndpointSlices: the agent says which.
    let crippled = rendered.replace(
        "resources: [endpointslices]\n    verbs: [list, watch]",
        "resources: [endpointslices]\n    verbs: [watch]",
    );
    assert_ne!(
        crippled, rendered,
        "the chart's EndpointSlice rule changed shape"
    );
    c.plane.apply(&crippled).unwrap();
    let agent = c.agent(Some(&kubeconfig));
    let line = agent.wait_for_log("watch failed");
    assert!(
        line.contains("endpointslices") && line.contains("cannot list"),
        "{line}"
    );
    agent.stop();
}

#[test]
fn trace_names_the_pod_of_every_event_too() {
    let Some(c) = Cluster::start("trace-pod") else {
        return;
    };
    c.namespace("shop", "env: prod");
    let pod = c.pod("shop", "web-0", "app: web", None);
    let kubeconfig = c.plane.kubeconfig();
    let tracer = Tracer::spawn_with(
        &[
            "trace",
            "--output",
            "json",
            "--node-name",
            c.plane.node_name(),
            "--cgroup-root",
            c.root.dir.to_str().unwrap(),
            "--cgroup",
            "/kubepods.slice",
        ],
        &[("KUBECONFIG", kubeconfig.as_os_str())],
        "vigil is tracing",
    );
    let (pid, status) = pod.run(Path::new("/bin/true"), &[]);
    assert!(status.success());
    let e = tracer.wait_for("the exec in the pod", |e| is(e, EXEC, pid));
    assert_eq!(e["vigilverdict"], "observed");
    assert_eq!(e["subject"], "namespaces/shop/pods/web-0");
    assert_eq!(e["data"]["pod"]["labels"]["app"], "web");
    assert_eq!(e["data"]["container"]["name"], "app");
    tracer.stop();
}

#[test]
fn two_agents_keep_two_verdicts_in_one_policys_status() {
    let Some(c) = Cluster::start("two-nodes") else {
        return;
    };
    let here = c.plane.node_name().to_string();
    let there = "node-b";
    let other_root = TestCgroup::new("k8s-two-nodes-b");
    let a = c.agent(None);
    let b = c.agent_on(there, &other_root, None);
    c.namespace("shop", "env: prod");
    let policy = deny_policy("shop", "no-tmp", "app: web", "/nonexistent/denied");
    c.plane.apply(&policy).unwrap();
    let object = ["runtimepolicy", "no-tmp", "-n", "shop"];
    let both = |status: &'static str, generation: i64| {
        let (here, there) = (here.clone(), there.to_string());
        move |all: &[NodeVerdict]| {
            [&here, &there].iter().all(|node| {
                all.iter()
                    .any(|v| v.node == **node && v.status == status && v.generation == generation)
            })
        }
    };
    let verdicts = c.until_verdicts(&object, "both nodes accept", both("True", 1));
    assert_eq!(verdicts.len(), 2, "{verdicts:?}");
    for v in &verdicts {
        assert!(v.message.contains(&v.node), "{v:?}");
    }
    // Each agent owns its own entry, by server-side apply under its own manager.
    let managers = c
        .plane
        .kubectl_ok([
            "get",
            "runtimepolicy",
            "no-tmp",
            "-n",
            "shop",
            "--show-managed-fields",
            "-o",
            "jsonpath={range .metadata.managedFields[*]}{.manager}/{.operation}/{.subresource}{\"\\n\"}{end}",
        ])
        .unwrap();
    for node in [here.as_str(), there] {
        let line = format!("vigil-agent/{node}/Apply/status");
        assert!(
            managers.lines().any(|l| l == line),
            "{line} not in {managers}"
        );
    }

    // A version both refuse: both entries follow, neither erases the other.
    let bad = format!("{policy}  connect:\n    deny: [{{cidr: 10.0.0.1/8}}]\n");
    c.plane.apply(&bad).unwrap();
    let verdicts = c.until_verdicts(&object, "both nodes refuse generation 2", both("False", 2));
    assert_eq!(verdicts.len(), 2, "{verdicts:?}");

    // With one agent gone, the other's write leaves the gone one's verdict standing.
    b.stop();
    c.plane.apply(&policy).unwrap();
    let verdicts = c.until_verdicts(&object, "this node accepts generation 3", |all| {
        all.iter()
            .any(|v| v.node == here && v.status == "True" && v.generation == 3)
    });
    let gone = verdicts.iter().find(|v| v.node == there);
    assert!(
        gone.is_some_and(|v| v.status == "False" && v.generation == 2),
        "{verdicts:?}"
    );
    a.stop();
}

#[test]
fn a_refused_status_write_is_retried_until_it_lands() {
    let Some(c) = Cluster::start("status-retry") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (writer, denied) = denied_binary(tmp.path());
    // The chart's role without the right to write the policies' status.
    let status_rule =
        "resources: [runtimepolicies/status, clusterruntimepolicies/status]\n    verbs: [patch]";
    let (rendered, kubeconfig) = c.chart_account(tmp.path(), |r| {
        assert!(
            r.contains(status_rule),
            "the chart's status rule changed shape"
        );
        r.replace(status_rule, &status_rule.replace("[patch]", "[get]"))
    });
    c.namespace("shop", "env: prod");
    let pod = c.pod("shop", "web-0", "app: web", None);
    let agent = c.agent(Some(&kubeconfig));
    c.plane
        .apply(&deny_policy("shop", "no-tmp", "app: web", &denied))
        .unwrap();
    until_enforced(&pod, &writer, tmp.path(), true, "apply");
    agent.wait_for_log("could not write the policy's status");
    let object = ["runtimepolicy", "no-tmp", "-n", "shop"];
    let node = c.plane.node_name();
    assert_eq!(c.verdict(&object, node), None, "the refused write landed");

    // The right restored: a retry lands, with no change to the policy to prompt it.
    c.plane.apply(&rendered).unwrap();
    let restored = Instant::now();
    c.until_verdicts(&object, "the retried status write", |all| {
        all.iter()
            .any(|v| v.node == node && v.status == "True" && v.generation == 1)
    });
    eprintln!(
        "status write landed {} ms after the right to write it came back",
        restored.elapsed().as_millis()
    );
    agent.stop();
}

#[test]
fn a_violation_in_a_pod_shows_as_an_event_on_the_pod() {
    let Some(c) = Cluster::start("k8s-events") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (writer, denied) = denied_binary(tmp.path());
    c.namespace("shop", "env: prod");
    c.plane
        .apply(
            &deny_policy("shop", "web", "app: web", &denied)
                .replace("action: Kill", "action: Alert"),
        )
        .unwrap();
    let config = tmp.path().join("config.yaml");
    std::fs::write(
        &config,
        "sinks:\n  - {name: console, type: stdout, format: json}\n  - {name: cluster, type: kubernetes-events}\n",
    )
    .unwrap();
    let agent = c.agent_with(
        c.plane.node_name(),
        &c.root,
        None,
        &["--config", config.to_str().unwrap()],
    );
    let pod = c.pod("shop", "web-0", "app: web", None);
    // Alert: the exec runs, and the violation is reported once the pod's binding is in force.
    let pid = wait_until(
        "a reported violation in web-0",
        liveness(),
        || {
            let (pid, _) = pod.run(
                &writer,
                &["write-marker", tmp.path().join("m").to_str().unwrap()],
            );
            agent
                .events()
                .iter()
                .any(|e| is(e, EXEC, pid) && e["data"]["pod"]["name"] == "web-0")
                .then_some(pid)
        },
        || "no violation event from the pod yet".into(),
    );
    let event = wait_until(
        "an Event on the pod",
        liveness(),
        || {
            let out = c
                .plane
                .kubectl_ok([
                    "get",
                    "events",
                    "-n",
                    "shop",
                    "--field-selector",
                    "involvedObject.name=web-0",
                    "-o",
                    "json",
                ])
                .ok()?;
            let list: serde_json::Value = serde_json::from_str(&out).ok()?;
            list["items"]
                .as_array()?
                .iter()
                .find(|e| e["reason"] == "ExecDenied")
                .cloned()
        },
        || "no ExecDenied Event on web-0".into(),
    );
    let note = event["message"].as_str().unwrap_or_default();
    assert!(note.contains(&denied), "the note names the binary: {event}");
    assert!(
        note.contains("policy shop/web rule spec.exec.deny[0]"),
        "{event}"
    );
    assert!(note.contains("reported"), "the action taken: {event}");
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["involvedObject"]["kind"], "Pod");
    assert_eq!(event["reportingComponent"], "vigil-agent", "{event}");
    eprintln!("the violation of pid {pid} became an Event on web-0");
    agent.stop();
}

impl NetNs {
    /// Runs `program` inside the namespace as a process of `pod`, with `envs`.
    fn run_from(
        &self,
        pod: &StagedPod,
        program: &Path,
        envs: &[(&str, &str)],
    ) -> std::process::ExitStatus {
        in_cgroup(&pod.container, "ip")
            .args(["netns", "exec", &self.name])
            .arg(program)
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .status()
            .unwrap()
    }
}

/// The RuntimePolicyReport of `policy` for `node` in `ns`, as JSON (`None` while there is none).
fn learn_report(c: &Cluster, ns: &str, policy: &str, node: &str) -> Option<serde_json::Value> {
    let out = c
        .plane
        .kubectl_ok(["get", "runtimepolicyreports", "-n", ns, "-o", "json"])
        .ok()?;
    let list: serde_json::Value = serde_json::from_str(&out).ok()?;
    list["items"]
        .as_array()?
        .iter()
        .find(|r| r["spec"]["policy"] == policy && r["spec"]["node"] == node)
        .cloned()
}

/// Learned in the cluster: `vigil learn --namespace` puts a Learn policy in place, the agent
/// (with the chart's role) records the workload and publishes its report, a restart of the
/// agent keeps what was learned before it, and the written policy, applied through the API
/// server in Enforce mode, lets the workload run and refuses anything new.
#[test]
fn a_workload_learned_in_the_cluster_runs_enforced_and_anything_new_is_refused() {
    let Some(c) = Cluster::start("learn") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (_, kubeconfig) = c.chart_account(tmp.path(), str::to_string);
    c.namespace("shop", "env: prod");
    let pod = c.pod("shop", "web-0", "app: web", None);
    c.plane.apply("apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: shop}\nspec: {ports: [{port: 5432, protocol: TCP}], selector: {app: db}}\n").unwrap();
    let vip = cluster_ip(&c, "shop", "db");
    assert!(
        vip.starts_with("10.96."),
        "ClusterIP {vip} outside the test's Service CIDR"
    );
    let mut netns = NetNs::new("learn");
    netns.add_address(&vip);
    let service = format!("{vip}:5432");
    netns.listen(&service);
    netns.listen("127.0.0.1:7070");
    // The workload: a shell entrypoint running a tool, connecting to the Service and to a
    // loopback port, and mapping memory writable and executable as a JIT does.
    let script = tmp.path().join("entry.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nset -e\ncat /proc/self/stat > /dev/null\n\
         \"$SCENARIO\" tcp-connect \"$SERVICE\" > /dev/null\n\
         \"$SCENARIO\" tcp-connect 127.0.0.1:7070 > /dev/null\n\
         \"$SCENARIO\" mmap-rwx > /dev/null\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let scenario = std::fs::canonicalize(scenario_bin())
        .unwrap()
        .display()
        .to_string();
    let envs = [
        ("SCENARIO", scenario.as_str()),
        ("SERVICE", service.as_str()),
    ];
    let node = c.plane.node_name().to_owned();
    let agent_args = ["--learn-report-interval", "1s"];
    let agent = c.agent_with(&node, &c.root, Some(&kubeconfig), &agent_args);

    // Reports of that name before the policy exists: one under this node's own report name
    // (an earlier policy of that name, its garbage not yet collected), one speaking for a node
    // that does not exist. Neither may reach the policy written: the agent deletes the first
    // instead of taking it back, `vigil learn` ignores the second and says so.
    let stale_name = vigil::learn::report::report_name("web", &node);
    let ghost_name = vigil::learn::report::report_name("web", "ghost-node");
    for (name, on, path) in [
        (&stale_name, node.as_str(), "/usr/bin/stale-by-test"),
        (&ghost_name, "ghost-node", "/usr/bin/forged-by-test"),
    ] {
        c.plane
            .apply(&format!(
                "apiVersion: vigil.dev/v1alpha1\nkind: RuntimePolicyReport\n\
                 metadata:\n  name: {name}\n  namespace: shop\n  ownerReferences:\n\
                 \x20 - {{apiVersion: vigil.dev/v1alpha1, kind: RuntimePolicy, name: web, uid: 00000000-0000-0000-0000-000000000001}}\n\
                 spec:\n  policy: web\n  node: {on}\n  events: 3\n\
                 \x20 table: {{executables: {{\"{path}\": {{count: 3}}}}, events: 3}}\n"
            ))
            .unwrap();
    }
    let learned = tmp.path().join("learned.yaml");
    let learn = Command::new(common::vigil_bin())
        .args([
            "learn",
            "--namespace",
            "shop",
            "--selector",
            "app=web",
            "--name",
            "web",
        ])
        .args(["--duration", "10m", "--report-wait", "3s", "-o"])
        .arg(&learned)
        .env("KUBECONFIG", c.plane.kubeconfig())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.until_verdicts(
        &["runtimepolicy", "web", "-n", "shop"],
        "the Learn policy in force",
        |all| all.iter().any(|v| v.node == node && v.status == "True"),
    );
    let web_field = |path: &str| {
        c.plane
            .kubectl_ok([
                "get",
                "runtimepolicy",
                "web",
                "-n",
                "shop",
                "-o",
                &format!("jsonpath={path}"),
            ])
            .unwrap()
    };
    let mode = web_field("{.spec.mode}");
    assert_eq!(mode, "Learn");
    let cat = std::fs::canonicalize("/bin/cat")
        .unwrap()
        .display()
        .to_string();
    // Each run until the report holds what it did: the set may take a moment to be bound.
    wait_until(
        "the workload in this node's report",
        liveness(),
        || {
            assert!(
                netns.run_from(&pod, &script, &envs).success(),
                "the workload failed while learning"
            );
            let report = learn_report(&c, "shop", "web", &node)?;
            let t = &report["spec"]["table"];
            (t["executables"].get(&cat).is_some()
                && t["runtimes"].get(&scenario).is_some()
                && t["destinations"].get(format!("TCP {vip}")).is_some())
            .then_some(())
        },
        || format!("report: {:?}", learn_report(&c, "shop", "web", &node)),
    );
    // Beside the Learn policy, an enforcing one selecting the same pods keeps killing, and
    // its violations reach the sinks (they go into the table too: the workload did that).
    let (writer, denied) = denied_binary(tmp.path());
    c.plane
        .apply(&deny_policy("shop", "no-tmp", "app: web", &denied))
        .unwrap();
    until_enforced(
        &pod,
        &writer,
        tmp.path(),
        true,
        "a Kill policy beside the Learn one",
    );
    agent.wait_for("the kill beside learning, in the sinks", |e| {
        e["vigilpolicy"] == "shop/no-tmp" && e["vigilaction"] == "kill"
    });
    assert!(
        agent
            .events()
            .iter()
            .all(|e| e["vigilverdict"] == "violation"),
        "learned acts went to the sinks"
    );

    // A restart: the new agent takes the report back before it publishes.
    agent.stop();
    let agent = c.agent_with(&node, &c.root, Some(&kubeconfig), &agent_args);
    let id = std::fs::canonicalize("/usr/bin/id")
        .unwrap()
        .display()
        .to_string();
    let report = wait_until(
        "a tool run after the restart in the report",
        liveness(),
        || {
            let _ = pod.run(Path::new(&id), &[]);
            let report = learn_report(&c, "shop", "web", &node)?;
            report["spec"]["table"]["executables"]
                .get(&id)
                .is_some()
                .then_some(report)
        },
        || format!("report: {:?}", learn_report(&c, "shop", "web", &node)),
    );
    assert!(
        report["spec"]["table"]["executables"].get(&cat).is_some(),
        "what was learned before the restart is gone: {report}"
    );
    assert_eq!(report["metadata"]["name"], stale_name.as_str());
    assert!(
        report["spec"]["table"]["executables"]
            .get("/usr/bin/stale-by-test")
            .is_none(),
        "the agent took back a report the policy does not own: {report}"
    );
    let uid = web_field("{.metadata.uid}");
    assert_eq!(
        report["metadata"]["ownerReferences"],
        serde_json::json!([{"apiVersion": "vigil.dev/v1alpha1", "kind": "RuntimePolicy", "name": "web", "uid": uid.trim()}]),
        "{report}"
    );

    // Stopped early (SIGINT), the command writes what the nodes learned.
    unsafe { libc::kill(learn.id() as i32, libc::SIGINT) };
    let out = learn.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "vigil learn: {stderr}");
    assert!(stderr.contains("reports from 1 node(s)"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "RuntimePolicyReport shop/{ghost_name} names policy web but is not one of its reports"
        )),
        "the forged report was not said: {stderr}"
    );
    let text = std::fs::read_to_string(&learned).unwrap();
    eprintln!("learned in the cluster:\n{text}");
    let check = Command::new(common::vigil_bin())
        .args(["policy", "check"])
        .arg(&learned)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let policy = vigil::policy::load_paths(std::slice::from_ref(&learned))
        .unwrap()
        .remove(0);
    let allow: Vec<String> = policy
        .spec
        .exec
        .allow
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        !text.contains("-by-test"),
        "a report the policy does not own reached it: {text}"
    );
    for want in [&cat, &id, &scenario, &script.display().to_string()] {
        assert!(
            allow.iter().any(|a| a.ends_with(want.as_str())),
            "{want} not in {allow:?}"
        );
    }
    assert!(policy.spec.connect.allow_services, "{text}");
    assert!(text.contains("# Service shop/db: TCP"), "{text}");
    assert_eq!(policy.spec.connect.allow.len(), 1, "{text}");
    assert!(policy.spec.connect.allow[0].matches(
        "127.0.0.1".parse().unwrap(),
        7070,
        vigil::policy::Protocol::Tcp
    ));
    assert_eq!(
        policy.spec.memory.allow_executables,
        std::slice::from_ref(&scenario)
    );
    // The Learn policy and its report are gone.
    c.plane
        .kubectl_ok([
            "wait",
            "--for=delete",
            "runtimepolicy/web",
            "-n",
            "shop",
            "--timeout=30s",
        ])
        .unwrap();
    // (An agent may publish once more before it sees the policy go; a cluster's garbage
    // collector removes such a report with its owner, this test's control plane has none.)
    wait_until(
        "the report taken away with the policy",
        liveness(),
        || {
            if let Some(r) = learn_report(&c, "shop", "web", &node) {
                let name = r["metadata"]["name"].as_str().unwrap().to_owned();
                let _ = c
                    .plane
                    .kubectl_ok(["delete", "runtimepolicyreport", &name, "-n", "shop"]);
                return None;
            }
            Some(())
        },
        || "the report stays".into(),
    );

    // Applied through the API server (its schema) in Enforce mode.
    c.plane
        .apply(&text.replace("  mode: Audit\n", "  mode: Enforce\n"))
        .unwrap();
    let whoami = std::fs::canonicalize("/usr/bin/whoami").unwrap();
    wait_until(
        "the learned policy in force",
        liveness(),
        || {
            let (_, status) = pod.run(&whoami, &[]);
            (status.signal() == Some(libc::SIGKILL)).then_some(())
        },
        || "a binary never learned still runs".into(),
    );
    let before = agent.events().len();
    assert!(
        netns.run_from(&pod, &script, &envs).success(),
        "the learned workload failed under its policy"
    );
    // A destination never learned: refused, and the marker that every earlier event is in.
    netns.connect_from(&pod, "127.0.0.1:7071");
    let events = agent.wait_for_events("the refused new destination", |all| {
        all.iter()
            .any(|e| e["type"] == "dev.vigil.connect.v1" && e["data"]["connect"]["dport"] == 7071)
            .then(|| all.to_vec())
    });
    let unexpected: Vec<&serde_json::Value> = events[before..]
        .iter()
        // The kills of the never-learned binary that showed the policy in force may come in
        // after `before`.
        .filter(|e| {
            e["vigilverdict"] == "violation"
                && e["data"]["connect"]["dport"] != 7071
                && e["data"]["exec"]["exeName"] != "whoami"
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "the learned workload was refused: {unexpected:#?}"
    );
    agent.stop();
}
