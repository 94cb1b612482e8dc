//! The control plane against the real binaries: etcd and kube-apiserver on loopback.
//!
//! Skipped (with the reason printed) when the binaries are missing, except in CI (`CI=true`)
//! or when `VIGIL_K8S_BIN` is set, where that fails: `cargo xtask k8s-env` builds them.
use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use testenv::{ControlPlane, DEFAULT_NODE_NAME, Options};

/// A directory under the system temp dir that does not exist yet.
fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vigil-testenv-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

/// Removes a directory the test made itself, even when the test fails.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Whether `pid` is still a process named `name` (pids are only reused after a long while,
/// and the name guards against that).
fn running(pid: u32, name: &str) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == name)
}

fn service_ip(plane: &ControlPlane) -> Ipv4Addr {
    let ip = plane
        .kubectl_ok([
            "get",
            "service",
            "web",
            "--namespace=vigil-test",
            "--output=jsonpath={.spec.clusterIP}",
        ])
        .expect("get service");
    ip.trim()
        .parse()
        .unwrap_or_else(|err| panic!("clusterIP {ip:?}: {err}"))
}

const NAMESPACE_AND_SERVICE: &str = "\
apiVersion: v1
kind: Namespace
metadata:
  name: vigil-test
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: vigil-test
spec:
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: 8080
";

#[test]
fn control_plane_serves_nodes_rbac_and_services_and_survives_an_apiserver_restart() {
    let Some(bin) = testenv::bin_dir_for_tests("control_plane") else {
        return;
    };
    let dir = fresh_dir("main");
    let plane = ControlPlane::start(&dir, &bin).expect("start the control plane");
    assert!(plane.kubeconfig().is_file());
    assert!(plane.server().starts_with("https://127.0.0.1:"));
    let etcd = plane.etcd_pid().expect("etcd runs");
    let first_apiserver = plane.apiserver_pid().expect("kube-apiserver runs");
    assert!(running(etcd, "etcd") && running(first_apiserver, "kube-apiserver"));

    let nodes = plane
        .kubectl_ok(["get", "nodes", "--output=name"])
        .expect("get nodes");
    assert!(
        nodes
            .lines()
            .any(|n| n == format!("node/{DEFAULT_NODE_NAME}")),
        "{nodes}"
    );

    let can_i = plane.kubectl(["auth", "can-i", "*", "*"]);
    assert!(can_i.status.success(), "{can_i:?}");
    assert_eq!(String::from_utf8_lossy(&can_i.stdout).trim(), "yes");
    // RBAC is on: a user bound to nothing may not list pods.
    let nobody = plane.kubectl(["auth", "can-i", "list", "pods", "--as=vigil-nobody"]);
    assert_eq!(
        String::from_utf8_lossy(&nobody.stdout).trim(),
        "no",
        "{nobody:?}"
    );

    plane.apply(NAMESPACE_AND_SERVICE).expect("apply");
    let ip = service_ip(&plane);
    assert_eq!(ip.octets()[..2], [10, 96], "{ip} is outside 10.96.0.0/16");

    // Pods can be created without a ServiceAccount controller (the admission plugin is off).
    plane
        .apply(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-0\n  namespace: vigil-test\n  \
             labels:\n    app: web\nspec:\n  nodeName: vigil-test-node\n  containers:\n  - name: \
             web\n    image: registry.invalid/web:1\n",
        )
        .expect("create a pod");

    // The service-account key pair works: a token the API server signs with the private key
    // authenticates (verified with the public key) as that account, without the admin's
    // client certificate.
    plane
        .kubectl_ok([
            "create",
            "serviceaccount",
            "probe",
            "--namespace=vigil-test",
        ])
        .expect("create a ServiceAccount");
    let token = plane
        .kubectl_ok(["create", "token", "probe", "--namespace=vigil-test"])
        .expect("request a token");
    let whoami = std::process::Command::new(plane.bin_dir().join("kubectl"))
        .env("KUBERC", "off")
        .env_remove("KUBECONFIG")
        .arg("--kubeconfig=/dev/null")
        .arg(format!("--server={}", plane.server()))
        .arg(format!(
            "--certificate-authority={}",
            plane.ca_cert().display()
        ))
        .arg(format!("--token={}", token.trim()))
        .args([
            "auth",
            "whoami",
            "--output=jsonpath={.status.userInfo.username}",
        ])
        .output()
        .expect("run kubectl");
    assert!(whoami.status.success(), "{whoami:?}");
    assert_eq!(
        String::from_utf8_lossy(&whoami.stdout).trim(),
        "system:serviceaccount:vigil-test:probe"
    );

    let stopping = std::time::Instant::now();
    plane.stop_apiserver().expect("stop kube-apiserver");
    eprintln!("kube-apiserver stopped in {:?}", stopping.elapsed());
    assert_eq!(plane.apiserver_pid(), None);
    assert!(!running(first_apiserver, "kube-apiserver"));
    assert!(running(etcd, "etcd"), "etcd stays up");
    let refused = plane.kubectl(["get", "nodes", "--request-timeout=3s"]);
    assert!(!refused.status.success(), "the API server is stopped");

    let starting = std::time::Instant::now();
    plane.start_apiserver().expect("restart kube-apiserver");
    eprintln!("kube-apiserver ready again in {:?}", starting.elapsed());
    let second_apiserver = plane.apiserver_pid().expect("kube-apiserver runs again");
    assert_ne!(first_apiserver, second_apiserver);
    assert_eq!(
        service_ip(&plane),
        ip,
        "same Service, same ClusterIP, from etcd"
    );
    plane.check_running().expect("both running");
    let pod = plane
        .kubectl_ok([
            "get",
            "pod",
            "web-0",
            "--namespace=vigil-test",
            "--output=name",
        ])
        .expect("the pod is still there");
    assert_eq!(pod.trim(), "pod/web-0");

    let stopping = std::time::Instant::now();
    plane.stop().expect("stop");
    eprintln!("control plane stopped in {:?}", stopping.elapsed());
    assert!(!dir.exists(), "the directory start created is removed");
    for (pid, name) in [
        (etcd, "etcd"),
        (first_apiserver, "kube-apiserver"),
        (second_apiserver, "kube-apiserver"),
    ] {
        assert!(!running(pid, name), "{name} (pid {pid}) is left running");
    }
}

#[test]
fn an_existing_directory_is_kept_and_the_node_name_is_ours() {
    let Some(bin) = testenv::bin_dir_for_tests("control_plane") else {
        return;
    };
    let dir = fresh_dir("kept");
    fs::create_dir_all(&dir).expect("mkdir");
    let _cleanup = RemoveOnDrop(dir.clone());
    let options = Options {
        node_name: "worker-7".to_owned(),
        ..Options::default()
    };
    let plane = ControlPlane::start_with(&dir, &bin, options).expect("start");
    let node = plane
        .kubectl_ok(["get", "node", "worker-7", "--output=name"])
        .expect("get node");
    assert_eq!(node.trim(), "node/worker-7");
    let pids = [plane.etcd_pid(), plane.apiserver_pid()].map(|p| p.expect("running"));
    drop(plane);
    assert!(!running(pids[0], "etcd") && !running(pids[1], "kube-apiserver"));
    assert!(dir.join("kube-apiserver.log").is_file(), "logs are kept");
}

#[test]
fn an_apiserver_that_cannot_start_is_reported_with_its_log() {
    let Some(bin) = testenv::bin_dir_for_tests("control_plane") else {
        return;
    };
    let dir = fresh_dir("broken");
    let options = Options {
        apiserver_args: vec!["--no-such-flag".to_owned()],
        ..Options::default()
    };
    let err = ControlPlane::start_with(&dir, &bin, options).expect_err("a bad flag must fail");
    let message = format!("{err:#}");
    assert!(message.contains("kube-apiserver"), "{message}");
    assert!(message.contains("exited before it was ready"), "{message}");
    assert!(message.contains("no-such-flag"), "the log tail: {message}");
    assert!(!dir.exists(), "cleaned up after a failed start");
}

#[test]
fn missing_binaries_are_named() {
    let dir = fresh_dir("nobin");
    let err =
        ControlPlane::start(&dir, Path::new("/nonexistent/k8s-env/bin")).expect_err("no binaries");
    let message = format!("{err:#}");
    assert!(message.contains("/nonexistent/k8s-env/bin/"), "{message}");
    assert!(message.contains("cargo xtask k8s-env"), "{message}");
    assert!(!dir.exists());
}
