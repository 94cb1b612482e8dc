//! `vigil run` in a cluster: policies and Services from the API server, kept in the kernel
//! maps as they change, and the pod behind every event.
use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
};

use agent_common::ServiceKey;
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::mpsc;

use crate::{
    enforce::{
        Applied, Enforcer,
        bindings::{self, PodView},
    },
    metadata::{
        cgroup,
        cluster::{self, Cluster, Dirty, PodInfo, PodLookup},
        container,
    },
    policy::{
        Policy,
        cluster::ClusterPolicies,
        status::{self, StatusWriter, Verdict},
    },
};

/// The policies in force and their cgroup bindings, as last applied.
type Desired = (Vec<Policy>, BTreeMap<String, Vec<usize>>);

pub struct ClusterLink {
    pub cluster: Cluster,
    policy_stores: crate::policy::cluster::PolicyStores,
    policies: ClusterPolicies,
    cluster_policies: Vec<Policy>,
    applied: Option<Desired>,
    /// To the task that writes verdicts back, retrying each until it lands.
    status: mpsc::UnboundedSender<Verdict>,
}

/// Where a Kubernetes configuration would come from, if one is there at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// `KUBERNETES_SERVICE_HOST` is set: the agent runs in a pod.
    InCluster,
    /// `KUBECONFIG` (non-empty) or `~/.kube/config`, which exists.
    Kubeconfig(String),
}

/// The configuration source present, judged by presence only (the same places the client
/// looks); `None` means a plain host. `env` reads an environment variable, `exists` tells
/// whether a path exists.
pub fn config_source(
    env: impl Fn(&str) -> Option<String>,
    exists: impl Fn(&Path) -> bool,
) -> Option<ConfigSource> {
    if env("KUBERNETES_SERVICE_HOST").is_some_and(|h| !h.is_empty()) {
        return Some(ConfigSource::InCluster);
    }
    if let Some(paths) = env("KUBECONFIG").filter(|p| !p.is_empty()) {
        return Some(ConfigSource::Kubeconfig(paths));
    }
    let default = Path::new(&env("HOME")?).join(".kube/config");
    exists(&default).then(|| ConfigSource::Kubeconfig(default.display().to_string()))
}

/// A Kubernetes configuration that is there but cannot be used: start-up stops with the
/// reason rather than run without the cluster's policies.
#[derive(Debug, thiserror::Error)]
#[error(
    "the Kubernetes configuration ({source_name}) cannot be used: {reason}; fix it, or unset it to run host-only"
)]
pub struct BrokenClusterConfig {
    pub source_name: String,
    pub reason: String,
}

impl ClusterLink {
    /// Connects when a kubeconfig (`KUBECONFIG`, ~/.kube/config) or in-cluster configuration
    /// is there; `Ok(None)` means a plain host (none is). A configuration that is there but
    /// broken is an error: running host-only would drop every cluster policy silently.
    pub async fn connect(node: &str) -> Result<Option<Self>, BrokenClusterConfig> {
        let Some(source) = config_source(|k| std::env::var(k).ok(), Path::exists) else {
            tracing::info!("no Kubernetes configuration found: host-only");
            return Ok(None);
        };
        let client = kube::Client::try_default()
            .await
            .map_err(|err| BrokenClusterConfig {
                source_name: match &source {
                    ConfigSource::InCluster => "in-cluster service account".into(),
                    ConfigSource::Kubeconfig(path) => format!("kubeconfig {path}"),
                },
                reason: err.to_string(),
            })?;
        let cluster = cluster::start(client.clone(), node);
        let policy_stores = crate::policy::cluster::watch(&client, &cluster.dirty.policies);
        // Unbounded, yet it holds at most one verdict per policy change, and the writer keeps
        // only the latest per policy.
        let (status, verdicts) = mpsc::unbounded_channel::<Verdict>();
        let writer = StatusWriter::new(client, node);
        tokio::spawn(async move {
            status::deliver(verdicts, status::retry_delays(), |verdict| {
                let writer = &writer;
                async move { writer.write(&verdict).await }
            })
            .await;
        });
        tracing::info!(
            node,
            "watching the API server for this node's pods, Services and policies"
        );
        Ok(Some(Self {
            cluster,
            policy_stores,
            policies: ClusterPolicies::new(node),
            cluster_policies: Vec::new(),
            applied: None,
            status,
        }))
    }

    /// Brings the kernel maps in line with the stores and the cgroups on disk. Cheap when
    /// nothing changed: the desired state is compared with what was applied last.
    pub fn sync(
        &mut self,
        enforcer: &mut Enforcer,
        file_policies: &[Policy],
        cgroup_root: &Path,
    ) -> Result<Option<Applied>, crate::enforce::EnforceError> {
        if Dirty::take(&self.cluster.dirty.services) {
            let keys = service_keys(&self.cluster);
            enforcer.set_services(&keys)?;
            tracing::debug!(addresses = keys.len(), "service addresses in force");
        }
        if Dirty::take(&self.cluster.dirty.policies) {
            let (collected, verdicts) = self.policies.collect(&self.policy_stores);
            self.cluster_policies = collected;
            for verdict in verdicts {
                if self.status.send(verdict).is_err() {
                    tracing::error!(
                        "the policy status writer has stopped; verdicts are no longer written back"
                    );
                }
            }
        }
        let mut policies: Vec<Policy> = file_policies.to_vec();
        policies.extend(self.cluster_policies.iter().cloned());
        let pods = pod_views(&self.cluster);
        let dirs = cgroup::pod_dirs(cgroup_root);
        let mut wanted = bindings::host_bindings(&policies);
        wanted.extend(bindings::pod_bindings(&policies, &pods, &dirs));
        let desired = (policies, wanted);
        if self.applied.as_ref() == Some(&desired) {
            return Ok(None);
        }
        let applied = enforcer.apply_bindings(&desired.0, &desired.1)?;
        self.applied = Some(desired);
        Ok(Some(applied))
    }

    /// The pod (and container) a cgroup path belongs to.
    pub fn lookup(&self, cgroup_path: Option<&str>) -> PodLookup {
        let Some(found) = cgroup_path.and_then(container::parse) else {
            return PodLookup::Host;
        };
        let Some(pod) = self.cluster.pod_by_uid(&found.pod_uid) else {
            return PodLookup::Unknown {
                uid: found.pod_uid,
                container_id: found.container_id,
            };
        };
        PodLookup::Found(pod_info(&self.cluster, &pod, found.container_id))
    }
}

fn pod_info(cluster: &Cluster, pod: &Pod, container_id: Option<String>) -> PodInfo {
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    let status = container_id.as_deref().and_then(|id| {
        statuses
            .iter()
            .find(|s| s.container_id.as_deref().map(container::status_id) == Some(id))
    });
    PodInfo {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        service_account: pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone()),
        owner: cluster.owner(pod),
        container_id,
        container_name: status.map(|s| s.name.clone()),
        image: status.map(|s| s.image.clone()),
    }
}

fn pod_views(cluster: &Cluster) -> Vec<PodView> {
    let mut namespace_labels: HashMap<String, BTreeMap<String, String>> = HashMap::new();
    cluster
        .pods
        .state()
        .iter()
        .filter_map(|pod| {
            let namespace = pod.metadata.namespace.clone()?;
            let labels = namespace_labels
                .entry(namespace.clone())
                .or_insert_with(|| cluster.namespace_labels(&namespace).unwrap_or_default())
                .clone();
            let containers = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .map(|all| {
                    all.iter()
                        .filter_map(|s| {
                            Some((
                                s.name.clone(),
                                container::status_id(s.container_id.as_deref()?).to_string(),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default();
            Some(PodView {
                uid: pod.metadata.uid.clone()?,
                namespace,
                labels: pod.metadata.labels.clone().unwrap_or_default(),
                namespace_labels: labels,
                containers,
            })
        })
        .collect()
}

fn mapped(ip: std::net::IpAddr) -> [u8; 16] {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6.octets(),
    }
}

fn protocol_number(p: Option<&str>) -> u16 {
    match p {
        Some("UDP") => 17,
        Some("SCTP") => 132,
        _ => 6,
    }
}

/// Every Service ClusterIP:port and every ready endpoint address:port, as kernel keys.
pub fn service_keys(cluster: &Cluster) -> Vec<ServiceKey> {
    let mut keys = Vec::new();
    for svc in cluster.services.state() {
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let ips: Vec<String> = spec
            .cluster_ips
            .clone()
            .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
            .unwrap_or_default();
        for ip in ips
            .iter()
            .filter_map(|ip| ip.parse::<std::net::IpAddr>().ok())
        {
            for port in spec.ports.iter().flatten() {
                keys.push(ServiceKey {
                    addr: mapped(ip),
                    port: port.port as u16,
                    protocol: protocol_number(port.protocol.as_deref()),
                });
            }
        }
    }
    for slice in cluster.slices.state() {
        let ports: Vec<(u16, u16)> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Some((p.port? as u16, protocol_number(p.protocol.as_deref()))))
            .collect();
        for endpoint in &slice.endpoints {
            // Ready unless the slice says otherwise (the API's own default).
            if endpoint.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for addr in endpoint
                .addresses
                .iter()
                .filter_map(|a| a.parse::<std::net::IpAddr>().ok())
            {
                for (port, protocol) in &ports {
                    keys.push(ServiceKey {
                        addr: mapped(addr),
                        port: *port,
                        protocol: *protocol,
                    });
                }
            }
        }
    }
    keys.sort_by_key(|k| (k.addr, k.port, k.protocol));
    keys.dedup();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(env: &[(&str, &str)], existing: &[&str]) -> Option<ConfigSource> {
        config_source(
            |k| {
                env.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_string())
            },
            |p| existing.iter().any(|e| Path::new(e) == p),
        )
    }

    #[test]
    fn only_the_absence_of_every_configuration_means_host_only() {
        assert_eq!(source(&[("HOME", "/root")], &[]), None);
        assert_eq!(source(&[("HOME", "/root"), ("KUBECONFIG", "")], &[]), None);
        assert_eq!(source(&[], &[]), None);
        assert_eq!(
            source(&[("KUBERNETES_SERVICE_HOST", "10.0.0.1")], &[]),
            Some(ConfigSource::InCluster)
        );
        // Named but unreadable or missing is still a configuration someone meant: the client
        // reports what is wrong with it.
        assert_eq!(
            source(&[("KUBECONFIG", "/nonexistent/config")], &[]),
            Some(ConfigSource::Kubeconfig("/nonexistent/config".into()))
        );
        assert_eq!(
            source(&[("HOME", "/root")], &["/root/.kube/config"]),
            Some(ConfigSource::Kubeconfig("/root/.kube/config".into()))
        );
    }
}
