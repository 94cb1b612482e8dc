//! Which cgroups a policy set is bound to. On a host, ClusterRuntimePolicies with
//! `hostProcesses` bind to cgroup paths; the kernel uses the deepest bound ancestor of a
//! task's cgroup, so each binding gets the union of every policy covering its path.
use std::collections::BTreeMap;

use kube::core::SelectorExt as _;

use crate::{
    metadata::cgroup::PodDirs,
    policy::{NamespaceSelection, Policy},
};

/// What one binding holds: the policies covering its cgroup, and whether a container runtime
/// starts the processes there (its hand-over, `agent-ebpf/src/handover.rs`, is then not
/// judged).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Members {
    /// Indices of the policies; none: explicitly no policy.
    pub policies: Vec<usize>,
    pub runtime_handover: bool,
}

/// cgroup path (relative to the root, `/` for the root) -> the policies covering it. A host
/// binding has a container runtime's hand-over only when every policy covering it says so
/// (`containerRuntime`): a hand-over exempts the runtime's work, so no policy is weakened
/// by another's word.
pub fn host_bindings(policies: &[Policy]) -> BTreeMap<String, Members> {
    let mut paths: Vec<String> = Vec::new();
    for policy in policies {
        if let Some(host) = &policy.spec.host {
            if host.cgroup_prefixes.is_empty() {
                paths.push("/".into());
            } else {
                paths.extend(host.cgroup_prefixes.iter().cloned());
            }
        }
    }
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .map(|path| {
            let covering: Vec<usize> = policies
                .iter()
                .enumerate()
                .filter(|(_, p)| p.spec.host.as_ref().is_some_and(|h| h.covers(&path)))
                .map(|(i, _)| i)
                .collect();
            let runtime_handover = covering.iter().all(|i| {
                policies[*i]
                    .spec
                    .host
                    .as_ref()
                    .is_some_and(|h| h.container_runtime)
            });
            (
                path,
                Members {
                    policies: covering,
                    runtime_handover,
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::load_str;

    #[test]
    fn pods_get_their_selecting_policies_and_unselected_pods_get_none() {
        let ps = load_str(
            r#"
apiVersion: vigil.dev/v1alpha1
kind: RuntimePolicy
metadata: {name: web, namespace: shop}
spec: {podSelector: {matchLabels: {app: web}}, exec: {deny: [{prefix: /tmp/}]}}
---
apiVersion: vigil.dev/v1alpha1
kind: RuntimePolicy
metadata: {name: sidecar, namespace: shop}
spec: {podSelector: {}, containers: [proxy], exec: {deny: [{memfd: true}]}}
---
apiVersion: vigil.dev/v1alpha1
kind: ClusterRuntimePolicy
metadata: {name: prod}
spec: {namespaceSelector: {matchLabels: {env: prod}}, memory: {writeExecute: Deny}}
"#,
            None,
        )
        .unwrap();
        let pod = |uid: &str, ns: &str, app: &str, env: &str| PodView {
            uid: uid.into(),
            namespace: ns.into(),
            labels: [("app".to_string(), app.to_string())].into(),
            namespace_labels: [("env".to_string(), env.to_string())].into(),
            containers: vec![
                ("web".into(), format!("{uid}-c1")),
                ("proxy".into(), format!("{uid}-c2")),
            ],
        };
        let pods = vec![
            pod("a", "shop", "web", "prod"),
            pod("b", "shop", "db", "dev"),
            pod("c", "other", "web", "dev"),
        ];
        let mut dirs = std::collections::HashMap::new();
        for p in &pods {
            let containers = p
                .containers
                .iter()
                .map(|(_, id)| (id.clone(), format!("/pod-{}/{id}", p.uid)))
                .collect();
            dirs.insert(
                p.uid.clone(),
                PodDirs {
                    pod: format!("/pod-{}", p.uid),
                    containers,
                },
            );
        }
        let b = pod_bindings(&ps, &pods, &dirs);
        assert_eq!(
            b["/pod-a"].policies,
            vec![0, 2],
            "web in shop, prod namespace"
        );
        assert_eq!(
            b["/pod-a/a-c2"].policies,
            vec![0, 1, 2],
            "the proxy container adds the sidecar policy"
        );
        assert!(
            !b.contains_key("/pod-a/a-c1"),
            "the web container is covered by the pod's binding"
        );
        assert_eq!(b["/pod-b"].policies, Vec::<usize>::new());
        assert_eq!(b["/pod-b/b-c2"].policies, vec![1]);
        assert!(
            b.values().all(|m| m.runtime_handover),
            "a pod is started by its runtime"
        );
        assert_eq!(
            b["/pod-c"].policies,
            Vec::<usize>::new(),
            "RuntimePolicies select only in their namespace"
        );
    }

    #[test]
    fn a_host_binding_has_a_hand_over_only_when_every_covering_policy_says_so() {
        let ps = load_str(
            r#"
apiVersion: vigil.dev/v1alpha1
kind: ClusterRuntimePolicy
metadata: {name: containers}
spec: {hostProcesses: {cgroupPrefixes: [/system.slice/docker], containerRuntime: true}, exec: {allow: [{path: /app}]}}
---
apiVersion: vigil.dev/v1alpha1
kind: ClusterRuntimePolicy
metadata: {name: services}
spec: {hostProcesses: {cgroupPrefixes: [/system.slice/docker/db, /system.slice/cron.service]}, exec: {deny: [{prefix: /tmp/}]}}
"#,
            None,
        )
        .unwrap();
        let b = host_bindings(&ps);
        assert!(b["/system.slice/docker"].runtime_handover);
        assert!(
            !b["/system.slice/docker/db"].runtime_handover,
            "a policy without containerRuntime covers it too"
        );
        assert!(!b["/system.slice/cron.service"].runtime_handover);
    }

    #[test]
    fn a_deeper_binding_includes_the_policies_of_its_ancestors() {
        let ps = load_str(
            r#"
apiVersion: vigil.dev/v1alpha1
kind: ClusterRuntimePolicy
metadata: {name: everything}
spec: {hostProcesses: {}, exec: {deny: [{prefix: /tmp/}]}}
---
apiVersion: vigil.dev/v1alpha1
kind: ClusterRuntimePolicy
metadata: {name: nginx}
spec: {hostProcesses: {cgroupPrefixes: [/system.slice/nginx.service]}, exec: {allow: [{path: /usr/sbin/nginx}]}}
---
apiVersion: vigil.dev/v1alpha1
kind: ClusterRuntimePolicy
metadata: {name: nginx-again}
spec: {hostProcesses: {cgroupPrefixes: [/system.slice/nginx.service]}, exec: {deny: [{memfd: true}]}}
"#,
            None,
        )
        .unwrap();
        let b = host_bindings(&ps);
        assert_eq!(b["/"].policies, vec![0]);
        assert_eq!(b["/system.slice/nginx.service"].policies, vec![0, 1, 2]);
        assert_eq!(b.len(), 2);
        assert!(
            b.values().all(|m| !m.runtime_handover),
            "host processes have no runtime's hand-over unless a policy says so"
        );
    }
}

/// A pod as the binding computation needs it.
#[derive(Debug, Clone)]
pub struct PodView {
    pub uid: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub namespace_labels: BTreeMap<String, String>,
    /// (container name, container id) from the pod's status.
    pub containers: Vec<(String, String)>,
}

fn selects(policy: &Policy, pod: &PodView) -> bool {
    let Some(sel) = &policy.spec.pods else {
        return false;
    };
    let namespace_ok = match &sel.namespaces {
        NamespaceSelection::Named(ns) => ns == &pod.namespace,
        NamespaceSelection::Matching(selector) => selector.matches(&pod.namespace_labels),
    };
    namespace_ok && sel.pods.matches(&pod.labels)
}

/// Bindings for the pods on this node: each pod's cgroup gets the policies selecting the
/// whole pod (none at all: an explicit "no policy", so a host-wide binding above it never
/// reaches into pods); a container gets those plus the policies naming it in `containers`.
pub fn pod_bindings(
    policies: &[Policy],
    pods: &[PodView],
    dirs: &std::collections::HashMap<String, PodDirs>,
) -> BTreeMap<String, Members> {
    let mut out = BTreeMap::new();
    // The container runtime starts every process of a pod.
    let of_pod = |policies| Members {
        policies,
        runtime_handover: true,
    };
    for pod in pods {
        let Some(dir) = dirs.get(&pod.uid) else {
            continue;
        };
        let selecting: Vec<usize> = policies
            .iter()
            .enumerate()
            .filter(|(_, p)| selects(p, pod))
            .map(|(i, _)| i)
            .collect();
        let whole: Vec<usize> = selecting
            .iter()
            .copied()
            .filter(|i| policies[*i].spec.containers.is_none())
            .collect();
        out.insert(dir.pod.clone(), of_pod(whole.clone()));
        for (name, id) in &pod.containers {
            let Some(cgroup) = dir.containers.get(id) else {
                continue;
            };
            let mut members = whole.clone();
            members.extend(selecting.iter().copied().filter(|i| {
                policies[*i]
                    .spec
                    .containers
                    .as_ref()
                    .is_some_and(|names| names.contains(name))
            }));
            if members != whole {
                members.sort_unstable();
                out.insert(cgroup.clone(), of_pod(members));
            }
        }
    }
    out
}
