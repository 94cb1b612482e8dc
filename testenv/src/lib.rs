//! A real Kubernetes control plane for Vigil's tests: etcd and kube-apiserver on loopback.
//!
//! The binaries (`kube-apiserver`, `kubectl`, `etcd`, `helm`) are built from pinned Go modules
//! kept in `k8s-env/` by [`ensure_built`] (what `cargo xtask k8s-env` and `cargo xtask test`
//! run) into [`bin_dir`]; `KUBEBUILDER_ASSETS` supplies `kube-apiserver` and `etcd` instead when
//! set. [`ControlPlane::start`] generates a CA and certificates (with `rcgen`),
//! starts etcd and kube-apiserver (RBAC on, Service CIDR [`SERVICE_CIDR`]), writes a
//! cluster-admin kubeconfig and creates a Node object.
//!
//! Nothing here listens on or connects to anything but 127.0.0.1. Service ClusterIPs are only
//! allocated by the API server; nothing routes them.
//!
//! A test that needs the binaries asks [`bin_dir_for_tests`], which skips (returns `None`)
//! outside CI when they are missing and fails in CI (`CI=true`) or when `VIGIL_K8S_BIN` is set.
mod control_plane;
mod pki;
mod process;
mod tools;

pub use control_plane::{ControlPlane, DEFAULT_NODE_NAME, Options, SERVICE_CIDR};
pub use tools::{
    Built, Source, TOOLS, Tool, bin_dir, bin_dir_for_tests, ensure_built, go_version,
    missing_binaries, workspace_root,
};
