//! `vigil run` in a cluster: policies and Services from the API server, kept in the kernel
//! maps as they change, and the pod behind every event.
use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
};

use agent_common::ServiceKey;
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::{mpsc, watch};

use super::seen_pods::SeenPods;
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
type Desired = (Vec<Policy>, BTreeMap<String, bindings::Members>);

pub struct ClusterLink {
    pub cluster: Cluster,
    /// For the questions asked once, e.g. whether this agent's DaemonSet is going away.
    pub client: kube::Client,
    synced: watch::Receiver<bool>,
    policy_stores: crate::policy::cluster::PolicyStores,
    policies: ClusterPolicies,
    cluster_policies: Vec<Policy>,
    applied: Option<Desired>,
    /// To the task that writes verdicts back, retrying each until it lands.
    status: mpsc::UnboundedSender<Verdict>,
    /// Pod descriptions the events share; only the enrich stage asks, so the lock is never
    /// contended.
    seen: std::sync::Mutex<SeenPods>,
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
        let own_client = client.clone();
        let policy_stores = crate::policy::cluster::watch(&client, &cluster.dirty.policies);
        let (synced_tx, synced) = watch::channel(false);
        let stores = (
            cluster.pods.clone(),
            cluster.namespaces.clone(),
            cluster.replicasets.clone(),
            cluster.jobs.clone(),
            cluster.services.clone(),
            cluster.slices.clone(),
            policy_stores.runtime.clone(),
            policy_stores.cluster.clone(),
        );
        tokio::spawn(async move {
            let (pods, namespaces, replicasets, jobs, services, slices, runtime, cluster_wide) =
                &stores;
            let _ = tokio::join!(
                pods.wait_until_ready(),
                namespaces.wait_until_ready(),
                replicasets.wait_until_ready(),
                jobs.wait_until_ready(),
                services.wait_until_ready(),
                slices.wait_until_ready(),
                runtime.wait_until_ready(),
                cluster_wide.wait_until_ready(),
            );
            let _ = synced_tx.send(true);
        });
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
            client: own_client,
            synced,
            policy_stores,
            policies: ClusterPolicies::new(node),
            cluster_policies: Vec::new(),
            applied: None,
            status,
            seen: std::sync::Mutex::default(),
        }))
    }

    /// Says, in the status of each policy that uses `Deny` for exec or memory, that this node
    /// carries it out as Kill, and why (`None`: it refuses before the act).
    pub fn set_deny_fallback(&mut self, why: Option<String>) {
        self.policies.deny_fallback = why;
    }

    /// Turns true once every reflector has listed once: before that, a policy or a pod that
    /// exists looks absent (the first sync binds nothing).
    pub fn synced(&self) -> watch::Receiver<bool> {
        self.synced.clone()
    }

    /// Waits for [`Self::synced`], at most `bound`; says whether it came.
    pub async fn wait_synced(&self, bound: std::time::Duration) -> bool {
        let mut synced = self.synced();
        tokio::time::timeout(bound, synced.wait_for(|done| *done))
            .await
            .is_ok_and(|r| r.is_ok())
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

    /// The uid of the RuntimePolicy `key` names, as the policy store holds it.
    pub fn policy_uid(&self, key: &crate::learn::recorder::LearnKey) -> Option<String> {
        let ns = key.namespace.as_deref()?;
        let found = self
            .policy_stores
            .runtime
            .get(&kube::runtime::reflector::ObjectRef::new(&key.name).within(ns))?;
        found.metadata.uid.clone()
    }

    /// The pod (and container) of a cgroup that is a pod's (`None`: a host cgroup, or one
    /// not resolved).
    pub fn lookup(&self, cgroup: Option<&container::PodCgroup>) -> PodLookup {
        let Some(found) = cgroup else {
            return PodLookup::Host;
        };
        let Some(pod) = self.cluster.pod_by_uid(&found.pod_uid) else {
            return PodLookup::Unknown {
                uid: found.pod_uid.clone(),
                container_id: found.container_id.clone(),
            };
        };
        let owner = self.cluster.controller_object(&pod);
        let container_id = found.container_id.as_deref();
        let described = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .describe(
                &pod,
                owner,
                container_id,
                || pod_info(&self.cluster, &pod, container_id.map(str::to_owned)),
                |uid| self.cluster.pod_by_uid(uid),
            );
        PodLookup::Found(described)
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
    use std::net::IpAddr;

    use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

    use kube::runtime::{
        reflector::{Store, store::Writer},
        watcher,
    };
    use serde_json::json;

    use super::*;

    /// A store holding `objects`, each given as its JSON.
    fn store<K>(objects: &[serde_json::Value]) -> Store<K>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    {
        let mut writer = Writer::<K>::default();
        for object in objects {
            let object: K = serde_json::from_value(object.clone()).expect("a valid object");
            writer.apply_watcher_event(&watcher::Event::Apply(object));
        }
        writer.as_reader()
    }

    /// A cluster whose stores hold only these namespaces, pods, Services and EndpointSlices.
    fn cluster_of(
        namespaces: &[serde_json::Value],
        pods: &[serde_json::Value],
        services: &[serde_json::Value],
        slices: &[serde_json::Value],
    ) -> Cluster {
        Cluster {
            dirty: std::sync::Arc::new(Dirty {
                policies: Default::default(),
                services: Default::default(),
            }),
            pods: store(pods),
            pods_by_uid: Default::default(),
            namespaces: store(namespaces),
            replicasets: store(&[]),
            jobs: store(&[]),
            services: store(services),
            slices: store(slices),
        }
    }

    /// A key as the kernel map holds it: IPv4 as `::ffff:a.b.c.d`.
    fn key(addr: &str, port: u16, protocol: u16) -> ServiceKey {
        ServiceKey {
            addr: mapped(addr.parse::<IpAddr>().unwrap()),
            port,
            protocol,
        }
    }

    fn sorted(mut keys: Vec<ServiceKey>) -> Vec<ServiceKey> {
        keys.sort_by_key(|k| (k.addr, k.port, k.protocol));
        keys
    }

    #[test]
    fn service_keys_are_every_cluster_ip_port_and_every_ready_endpoint() {
        let services = [
            json!({"metadata": {"name": "api", "namespace": "shop"}, "spec": {
                "clusterIP": "10.96.0.10",
                "clusterIPs": ["10.96.0.10", "fd00::10"],
                "ports": [{"port": 8080}, {"port": 53, "protocol": "UDP"}],
            }}),
            // Only `clusterIP` set, as older API servers leave it.
            json!({"metadata": {"name": "old", "namespace": "shop"}, "spec": {
                "clusterIP": "10.96.0.11",
                "ports": [{"port": 9000, "protocol": "SCTP"}],
            }}),
            // Headless: no address to allow.
            json!({"metadata": {"name": "headless", "namespace": "shop"}, "spec": {
                "clusterIP": "None",
                "ports": [{"port": 80}],
            }}),
            json!({"metadata": {"name": "no-spec", "namespace": "shop"}}),
        ];
        let slices = [json!({
            "metadata": {"name": "api-1", "namespace": "shop"},
            "addressType": "IPv4",
            "ports": [{"port": 9090}, {"port": 9091, "protocol": "UDP"}, {"name": "no-port"}],
            "endpoints": [
                {"addresses": ["10.244.1.7"], "conditions": {"ready": true}},
                // Ready unless the slice says otherwise.
                {"addresses": ["10.244.1.8"]},
                {"addresses": ["10.244.1.9"], "conditions": {"ready": false}},
                // The same endpoint twice (two slices of one Service may overlap).
                {"addresses": ["10.244.1.7", "not-an-address"]},
            ],
        })];
        let keys = service_keys(&cluster_of(&[], &[], &services, &slices));
        assert_eq!(
            keys,
            sorted(vec![
                key("10.96.0.10", 8080, 6),
                key("10.96.0.10", 53, 17),
                key("fd00::10", 8080, 6),
                key("fd00::10", 53, 17),
                key("10.96.0.11", 9000, 132),
                key("10.244.1.7", 9090, 6),
                key("10.244.1.7", 9091, 17),
                key("10.244.1.8", 9090, 6),
                key("10.244.1.8", 9091, 17),
            ])
        );
    }

    #[test]
    fn trimmed_services_and_slices_give_the_same_keys() {
        let services = [json!({
            "metadata": {"name": "api", "namespace": "shop", "labels": {"app": "api"},
                         "annotations": {"note": "x"}},
            "spec": {
                "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::10"],
                "selector": {"app": "api"}, "type": "NodePort", "externalIPs": ["192.0.2.1"],
                "ports": [
                    {"name": "http", "port": 8080, "targetPort": 80, "nodePort": 30080},
                    {"name": "dns", "port": 53, "protocol": "UDP", "appProtocol": "dns"},
                ],
            },
            "status": {"loadBalancer": {}},
        })];
        let slices = [json!({
            "metadata": {"name": "api-1", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "api"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 9090, "appProtocol": "http"},
                      {"port": 9091, "protocol": "UDP"}],
            "endpoints": [
                {"addresses": ["10.244.1.7"], "nodeName": "n1", "zone": "a", "hostname": "h",
                 "conditions": {"ready": true, "serving": true, "terminating": false},
                 "targetRef": {"kind": "Pod", "name": "api-0", "namespace": "shop", "uid": "u"},
                 "hints": {"forZones": [{"name": "a"}]}},
                {"addresses": ["10.244.1.9"], "conditions": {"ready": false, "serving": true}},
                {"addresses": ["10.244.1.8"]},
            ],
        })];
        let whole = service_keys(&cluster_of(&[], &[], &services, &slices));
        let trim = |objects: &[serde_json::Value], f: &dyn Fn(&mut serde_json::Value)| {
            objects
                .iter()
                .map(|o| {
                    let mut o = o.clone();
                    f(&mut o);
                    o
                })
                .collect::<Vec<_>>()
        };
        let services = trim(&services, &|o| {
            let mut svc: Service = serde_json::from_value(o.clone()).unwrap();
            crate::metadata::cluster::trim_service(&mut svc);
            *o = serde_json::to_value(svc).unwrap();
        });
        let slices = trim(&slices, &|o| {
            let mut slice: EndpointSlice = serde_json::from_value(o.clone()).unwrap();
            crate::metadata::cluster::trim_slice(&mut slice);
            *o = serde_json::to_value(slice).unwrap();
        });
        assert!(
            !serde_json::to_string(&slices).unwrap().contains("api-0"),
            "the target reference is gone: {slices:?}"
        );
        assert!(
            !serde_json::to_string(&services)
                .unwrap()
                .contains("selector"),
            "the selector is gone: {services:?}"
        );
        assert_eq!(whole.len(), 8, "{whole:?}");
        assert_eq!(
            service_keys(&cluster_of(&[], &[], &services, &slices)),
            whole
        );
    }

    #[test]
    fn pod_views_carry_labels_namespace_labels_and_container_ids() {
        let namespaces = [json!({
            "apiVersion": "meta.k8s.io/v1",
            "kind": "PartialObjectMetadata",
            "metadata": {"name": "shop", "labels": {"env": "prod"}},
        })];
        let pods = [
            json!({
                "metadata": {"name": "web-0", "namespace": "shop", "uid": "u1",
                             "labels": {"app": "web"}},
                "status": {"containerStatuses": [
                    {"name": "app", "containerID": "containerd://c1", "image": "web",
                     "imageID": "", "ready": true, "restartCount": 0},
                    // Not started yet: no id, so nothing to bind.
                    {"name": "sidecar", "image": "proxy", "imageID": "", "ready": false,
                     "restartCount": 0},
                ]},
            }),
            // A namespace the store has not seen: no namespace labels.
            json!({"metadata": {"name": "db-0", "namespace": "new", "uid": "u2"}}),
            // Without a UID there is no pod to bind.
            json!({"metadata": {"name": "ghost", "namespace": "shop"}}),
        ];
        let mut views = pod_views(&cluster_of(&namespaces, &pods, &[], &[]));
        views.sort_by(|a, b| a.uid.cmp(&b.uid));
        assert_eq!(views.len(), 2, "{views:?}");
        let web = &views[0];
        assert_eq!(web.uid, "u1");
        assert_eq!(web.namespace, "shop");
        assert_eq!(web.labels, [("app".into(), "web".into())].into());
        assert_eq!(web.namespace_labels, [("env".into(), "prod".into())].into());
        assert_eq!(web.containers, vec![("app".to_string(), "c1".to_string())]);
        let db = &views[1];
        assert_eq!((db.uid.as_str(), db.namespace.as_str()), ("u2", "new"));
        assert!(db.labels.is_empty() && db.namespace_labels.is_empty());
        assert!(db.containers.is_empty());
    }

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
