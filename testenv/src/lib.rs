//! A real Kubernetes control plane for Vigil's tests: etcd and kube-apiserver on loopback.
//!
//! The binaries (`kube-apiserver`, `kubectl`, `etcd`, `helm`) are built from pinned Go modules
//! kept in `k8s-env/` by [`ensure_built`] (what `cargo xtask k8s-env` and `cargo xtask test`
//! run) into [`bin_dir`]; `KUBEBUILDER_ASSETS` supplies `kube-apiserver` and `etcd` instead when
//! set. [`ControlPlane::start`] generates a CA and certificates (with `rcgen`),
//! starts etcd and kube-apiserver (RBAC on, Service CIDR [`SERVICE_CIDR`]), writes a
//! cluster-admin kubeconfig and creates a Node object.
//!
//! [`Cluster::start`] adds a real node (see `node.rs`): kube-controller-manager,
//! kube-scheduler, containerd with runc, a CNI bridge on [`POD_CIDR`], kube-proxy and a kubelet.
//!
//! A bare control plane listens on and connects to nothing but 127.0.0.1, and nothing routes
//! its Service ClusterIPs. A cluster's traffic stays on [`POD_CIDR`], [`SERVICE_CIDR`] and
//! loopback.
//!
//! A test that needs the binaries asks [`bin_dir_for_tests`], which skips (returns `None`)
//! outside CI when they are missing and fails in CI (`CI=true`) or when `VIGIL_K8S_BIN` is set.
mod control_plane;
mod node;
mod node_cleanup;
mod pki;
mod process;
mod tools;

pub use control_plane::{ControlPlane, DEFAULT_NODE_NAME, Options, SERVICE_CIDR};
pub use node::{BRIDGE, CRI_NAMESPACE, Cluster, NODE_ADDRESS, NodeOptions, POD_CIDR};
pub use node_cleanup::{AGENT_PINS, teardown};
pub use tools::{
    Built, Source, TOOLS, Tool, bin_dir, bin_dir_for_tests, ensure_built, go_version,
    missing_binaries, workspace_root,
};
