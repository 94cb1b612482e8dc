//! Which cgroups a policy set is bound to. On a host, ClusterRuntimePolicies with
//! `hostProcesses` bind to cgroup paths; the kernel uses the deepest bound ancestor of a
//! task's cgroup, so each binding gets the union of every policy covering its path.
use std::collections::BTreeMap;

use crate::policy::Policy;

/// cgroup path (relative to the root, `/` for the root) -> indices of the policies covering it.
pub fn host_bindings(policies: &[Policy]) -> BTreeMap<String, Vec<usize>> {
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
            let covering = policies
                .iter()
                .enumerate()
                .filter(|(_, p)| p.spec.host.as_ref().is_some_and(|h| h.covers(&path)))
                .map(|(i, _)| i)
                .collect();
            (path, covering)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::load_str;

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
        assert_eq!(b["/"], vec![0]);
        assert_eq!(b["/system.slice/nginx.service"], vec![0, 1, 2]);
        assert_eq!(b.len(), 2);
    }
}
