//! What the agent knows of the cluster: kube-rs reflectors (in-memory stores, trimmed with
//! `.modify()`) of this node's Pods, Namespaces, the owners of pods (ReplicaSets, Jobs, as
//! metadata only), Services and EndpointSlices, and both policy kinds. Lookups never wait on
//! the network; each watch retries with backoff on its own and says so once.
use std::{
    collections::{BTreeMap, HashMap},
    fmt::Debug,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
};

use futures::{Stream, StreamExt};
use k8s_openapi::api::{
    apps::v1::ReplicaSet,
    batch::v1::Job,
    core::v1::{Namespace, Pod, Service, ServicePort, ServiceSpec},
    discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};

use crate::cloudevents::{PodDescription, shared::Shared};

/// What changed since the caller last looked: only policies and Services need work of their
/// own (pods, namespaces and owners are read afresh whenever they are needed). Flags rather
/// than a queue, so that nothing piles up while nobody looks.
#[derive(Debug)]
pub struct Dirty {
    pub policies: Arc<AtomicBool>,
    pub services: Arc<AtomicBool>,
}

impl Dirty {
    /// Takes the flag: true once after each change (and at the start).
    pub fn take(flag: &AtomicBool) -> bool {
        flag.swap(false, Ordering::AcqRel)
    }
}

/// Pod UID -> the pod's key in the store, kept from the pod watch's own events: every event
/// from a pod looks its pod up by UID, and the store can only be searched by scanning it.
#[derive(Debug, Default)]
pub struct PodIndex {
    state: RwLock<IndexState>,
}

#[derive(Debug, Default)]
struct IndexState {
    by_uid: HashMap<String, ObjectRef<Pod>>,
    /// The pods of a relist in progress, swapped in whole when it ends (as the store does), so
    /// that pods deleted while the watch was down leave the index too.
    relist: Option<HashMap<String, ObjectRef<Pod>>>,
}

impl PodIndex {
    /// Follows one event of the pod watch, after the store has applied it.
    pub fn apply(&self, event: &watcher::Event<Pod>) {
        let entry = |pod: &Pod| Some((pod.metadata.uid.clone()?, ObjectRef::from_obj(pod)));
        // A poisoned lock only means a panic elsewhere mid-update; the map itself is whole.
        let mut state = self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match event {
            watcher::Event::Apply(pod) => {
                if let Some((uid, key)) = entry(pod) {
                    state.by_uid.insert(uid, key);
                }
            }
            watcher::Event::Delete(pod) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    state.by_uid.remove(uid);
                }
            }
            watcher::Event::Init => state.relist = Some(HashMap::new()),
            watcher::Event::InitApply(pod) => {
                if let Some((uid, key)) = entry(pod) {
                    state.relist.get_or_insert_default().insert(uid, key);
                }
            }
            watcher::Event::InitDone => {
                state.by_uid = state.relist.take().unwrap_or_default();
            }
        }
    }

    /// The store key of the pod with this UID, if the watch has seen it.
    pub fn get(&self, uid: &str) -> Option<ObjectRef<Pod>> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .by_uid
            .get(uid)
            .cloned()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .by_uid
            .len()
    }
}

pub struct Cluster {
    pub dirty: Arc<Dirty>,
    pub pods: Store<Pod>,
    pub pods_by_uid: Arc<PodIndex>,
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    pub replicasets: Store<PartialObjectMeta<ReplicaSet>>,
    pub jobs: Store<PartialObjectMeta<Job>>,
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
}

/// One reflector's health, for `/metrics`: read at each scrape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReflectorState {
    /// Listed in full at least once, and the watch not failing now.
    pub synced: bool,
    /// When the last full list ended (Unix seconds; 0: never).
    pub last_resync: u64,
    /// Changes the watch delivered.
    pub events: u64,
    /// Watch errors (each failed attempt of an outage counts).
    pub failures: u64,
}

static REFLECTORS: std::sync::LazyLock<std::sync::Mutex<BTreeMap<&'static str, ReflectorState>>> =
    std::sync::LazyLock::new(Default::default);

fn reflector_state(resource: &'static str, update: impl FnOnce(&mut ReflectorState)) {
    let mut all = REFLECTORS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    update(all.entry(resource).or_default());
}

/// Every reflector started so far, by resource.
pub fn reflector_states() -> BTreeMap<&'static str, ReflectorState> {
    REFLECTORS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Drives one watch into its store; every applied change sets its `changed` flag, if any,
/// and is shown to `observe`. Errors (the API server gone, a forbidden verb) are logged once
/// per outage, with the resource named. Its health is kept for [`reflector_states`].
pub(crate) fn drive<K, S>(
    resource: &'static str,
    stream: S,
    changed: Option<Arc<AtomicBool>>,
    mut observe: impl FnMut(&watcher::Event<K>) + Send + 'static,
) where
    K: Debug,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    reflector_state(resource, |_| {});
    tokio::spawn(async move {
        let mut failing = false;
        let mut listed = false;
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => {
                    if failing {
                        tracing::info!(resource, "watch resumed; resynced from the API server");
                        failing = false;
                    }
                    listed |= matches!(event, watcher::Event::InitDone);
                    reflector_state(resource, |state| {
                        state.events += 1;
                        state.synced = listed;
                        if matches!(event, watcher::Event::InitDone) {
                            state.last_resync = unix_now();
                        }
                    });
                    observe(&event);
                    if let Some(flag) = &changed {
                        flag.store(true, Ordering::Release);
                    }
                }
                Err(err) => {
                    reflector_state(resource, |state| {
                        state.failures += 1;
                        state.synced = false;
                    });
                    if !failing {
                        tracing::warn!(resource, error = %err, "watch failed; retrying with backoff, enforcing with what is known");
                        failing = true;
                    }
                }
            }
        }
    });
}

/// Retry delays for a failed watch: 125 ms doubling to 1.5 s, each plus a random part of up to
/// as much again (so at most 3 s), back to the start after a success. kube-rs's default tops
/// out at 30 s (60 with its jitter), which would leave the agent that long behind an API
/// server that came back; a failed attempt costs one refused connection, and the jitter keeps
/// the agents of every node from coming back in step.
pub(crate) fn quick_backoff() -> watcher::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(125))
        .with_max_delay(std::time::Duration::from_millis(1500))
        .with_jitter()
        .without_max_times()
        .into()
}

fn trim_pod(pod: &mut Pod) {
    pod.managed_fields_mut().clear();
    // Nothing reads a pod's annotations, and `kubectl apply` leaves a copy of the whole
    // object in one of them.
    pod.metadata.annotations = None;
    if let Some(spec) = pod.spec.as_mut() {
        spec.volumes = None;
        spec.affinity = None;
        spec.tolerations = None;
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            c.env = None;
            c.env_from = None;
            c.volume_mounts = None;
            c.liveness_probe = None;
            c.readiness_probe = None;
            c.startup_probe = None;
            c.command = None;
            c.args = None;
        }
    }
    if let Some(status) = pod.status.as_mut() {
        status.conditions = None;
    }
}

fn trim_meta<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
    object.meta_mut().annotations = None;
}

/// What the Service addresses the kernel allows are made of (`service_keys`): the
/// ClusterIPs and each port's number and protocol. A cluster's Services and EndpointSlices
/// outnumber its pods many times over; their selectors, labels, target references, zones
/// and hints are most of each object and nothing here reads them.
pub(crate) fn trim_service(svc: &mut Service) {
    svc.metadata.managed_fields = None;
    svc.metadata.annotations = None;
    svc.metadata.labels = None;
    svc.metadata.owner_references = None;
    svc.status = None;
    svc.spec = svc.spec.take().map(|spec| ServiceSpec {
        cluster_ip: spec.cluster_ip,
        cluster_ips: spec.cluster_ips,
        ports: spec.ports.map(|ports| {
            ports
                .into_iter()
                .map(|p| ServicePort {
                    port: p.port,
                    protocol: p.protocol,
                    ..ServicePort::default()
                })
                .collect()
        }),
        ..ServiceSpec::default()
    });
}

/// What `service_keys` reads of an EndpointSlice: each endpoint's addresses and whether it
/// is ready, and each port's number and protocol.
pub(crate) fn trim_slice(slice: &mut EndpointSlice) {
    slice.metadata.managed_fields = None;
    slice.metadata.annotations = None;
    slice.metadata.labels = None;
    slice.metadata.owner_references = None;
    slice.endpoints = std::mem::take(&mut slice.endpoints)
        .into_iter()
        .map(|e| Endpoint {
            addresses: e.addresses,
            conditions: e.conditions.map(|c| EndpointConditions {
                ready: c.ready,
                ..EndpointConditions::default()
            }),
            ..Endpoint::default()
        })
        .collect();
    slice.ports = slice.ports.take().map(|ports| {
        ports
            .into_iter()
            .map(|p| EndpointPort {
                port: p.port,
                protocol: p.protocol,
                ..EndpointPort::default()
            })
            .collect()
    });
}

/// Starts the reflectors of what the pipeline looks up (pods, their owners, Services); the
/// policies' own reflectors are `policy::cluster::watch`. Stores fill in the background;
/// `dirty` says what changed.
pub fn start(client: Client, node: &str) -> Cluster {
    let dirty = Arc::new(Dirty {
        policies: Arc::new(AtomicBool::new(true)),
        services: Arc::new(AtomicBool::new(true)),
    });
    let cfg = watcher::Config::default;
    let (pods, w) = reflector::store();
    let on_node = cfg().fields(&format!("spec.nodeName={node}"));
    let stream = watcher(Api::<Pod>::all(client.clone()), on_node)
        .backoff(quick_backoff())
        .modify(trim_pod)
        .reflect(w);
    let pods_by_uid = Arc::new(PodIndex::default());
    let index = pods_by_uid.clone();
    drive("pods", stream, None, move |event| index.apply(event));

    let (namespaces, w) = reflector::store();
    let stream = watcher(
        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
        cfg(),
    )
    .backoff(quick_backoff())
    .modify(trim_meta)
    .reflect(w);
    drive("namespaces", stream, None, |_| {});

    let (replicasets, w) = reflector::store();
    let stream = watcher(
        Api::<PartialObjectMeta<ReplicaSet>>::all(client.clone()),
        cfg(),
    )
    .backoff(quick_backoff())
    .modify(trim_meta)
    .reflect(w);
    drive("replicasets", stream, None, |_| {});

    let (jobs, w) = reflector::store();
    let stream = watcher(Api::<PartialObjectMeta<Job>>::all(client.clone()), cfg())
        .backoff(quick_backoff())
        .modify(trim_meta)
        .reflect(w);
    drive("jobs", stream, None, |_| {});

    let (services, w) = reflector::store();
    let stream = watcher(Api::<Service>::all(client.clone()), cfg())
        .backoff(quick_backoff())
        .modify(trim_service)
        .reflect(w);
    drive("services", stream, Some(dirty.services.clone()), |_| {});

    let (slices, w) = reflector::store();
    let stream = watcher(Api::<EndpointSlice>::all(client.clone()), cfg())
        .backoff(quick_backoff())
        .modify(trim_slice)
        .reflect(w);
    drive(
        "endpointslices",
        stream,
        Some(dirty.services.clone()),
        |_| {},
    );

    Cluster {
        dirty,
        pods,
        pods_by_uid,
        namespaces,
        replicasets,
        jobs,
        services,
        slices,
    }
}

/// The pod with `uid`: one index lookup and one store lookup. The UID is checked again
/// because the index follows the store a moment later: a pod made anew under the same name
/// (a StatefulSet's) may already be in the store under the old pod's key.
fn pod_by_uid(pods: &Store<Pod>, index: &PodIndex, uid: &str) -> Option<Arc<Pod>> {
    pods.get(&index.get(uid)?)
        .filter(|pod| pod.metadata.uid.as_deref() == Some(uid))
}

/// The workload that owns a pod, through ReplicaSet to Deployment and Job to CronJob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub kind: String,
    pub name: String,
}

impl Cluster {
    pub fn pod_by_uid(&self, uid: &str) -> Option<Arc<Pod>> {
        pod_by_uid(&self.pods, &self.pods_by_uid, uid)
    }

    pub fn namespace_labels(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        self.namespaces
            .get(&ObjectRef::new(namespace))
            .map(|n| n.metadata.labels.clone().unwrap_or_default())
    }

    /// The store's object of the ReplicaSet or Job controlling `pod`, the one [`Self::owner`]
    /// reads: a description of the pod made from it holds while the store hands out this very
    /// object (a change, a late listing or a deletion replaces it).
    pub fn controller_object(&self, pod: &Pod) -> Option<ControllerObject> {
        let ns = pod.metadata.namespace.as_deref()?;
        let first = controller_ref(pod)?;
        match first.kind.as_str() {
            "ReplicaSet" => self
                .replicasets
                .get(&ObjectRef::new(&first.name).within(ns))
                .map(ControllerObject::ReplicaSet),
            "Job" => self
                .jobs
                .get(&ObjectRef::new(&first.name).within(ns))
                .map(ControllerObject::Job),
            _ => None,
        }
    }

    /// The workload owning `pod`: its controlling ReplicaSet's or Job's own controller (a
    /// Deployment, a CronJob) when the store holds that object, else the controller itself.
    pub fn owner(&self, pod: &Pod) -> Option<Owner> {
        pod.metadata.namespace.as_ref()?;
        let first = controller_ref(pod)?;
        let up = self.controller_object(pod).and_then(|object| {
            let meta = object.metadata();
            let parent = meta
                .owner_references
                .as_ref()?
                .iter()
                .find(|o| o.controller == Some(true))?;
            Some(Owner {
                kind: parent.kind.clone(),
                name: parent.name.clone(),
            })
        });
        up.or_else(|| {
            Some(Owner {
                kind: first.kind.clone(),
                name: first.name.clone(),
            })
        })
    }
}

fn controller_ref(
    pod: &Pod,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    pod.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
}

/// A pod's controlling ReplicaSet or Job, as the store holds it.
#[derive(Debug, Clone)]
pub enum ControllerObject {
    ReplicaSet(Arc<PartialObjectMeta<ReplicaSet>>),
    Job(Arc<PartialObjectMeta<Job>>),
}

impl ControllerObject {
    fn metadata(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            Self::ReplicaSet(r) => &r.metadata,
            Self::Job(j) => &j.metadata,
        }
    }

    /// The very same object of the store (not merely an equal one).
    pub fn same(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::ReplicaSet(a), Self::ReplicaSet(b)) => Arc::ptr_eq(a, b),
            (Self::Job(a), Self::Job(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// What an event's cgroup says about its pod.
#[derive(Debug, Clone, PartialEq)]
pub enum PodLookup {
    /// Not in a pod: a host process.
    Host,
    Found(Shared<PodDescription>),
    /// In a pod the store does not know (yet).
    Unknown {
        uid: String,
        container_id: Option<String>,
    },
}

impl PodLookup {
    /// A pod described from `info` (tools and tests; the pipeline reuses descriptions).
    pub fn found(info: &PodInfo) -> Self {
        Self::Found(Shared::new(info.into()))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: Option<String>,
    pub owner: Option<Owner>,
    pub container_id: Option<String>,
    pub container_name: Option<String>,
    pub image: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::{reflector::store::Writer, utils::Backoff};

    /// Waits (a bounded while) until `resource`'s state passes `done`.
    async fn state_when(
        resource: &'static str,
        done: impl Fn(&ReflectorState) -> bool,
    ) -> ReflectorState {
        for _ in 0..500 {
            if let Some(state) = reflector_states().get(resource).filter(|s| done(s)) {
                return state.clone();
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("{resource}: {:?}", reflector_states().get(resource));
    }

    #[tokio::test]
    async fn a_reflectors_state_follows_its_lists_and_failures() {
        let (tx, rx) =
            futures::channel::mpsc::unbounded::<Result<watcher::Event<Pod>, watcher::Error>>();
        drive("test-pods", rx, None, |_| {});
        let never = state_when("test-pods", |_| true).await;
        assert_eq!(
            never,
            ReflectorState::default(),
            "registered before any event"
        );

        let send = |item| tx.unbounded_send(item).expect("the driver is listening");
        send(Ok(watcher::Event::Init));
        send(Ok(watcher::Event::InitApply(pod("a", "u1"))));
        send(Ok(watcher::Event::InitDone));
        let listed = state_when("test-pods", |s| s.events == 3).await;
        assert!(listed.synced);
        assert!(listed.last_resync > 0);
        assert_eq!(listed.failures, 0);

        send(Err(watcher::Error::NoResourceVersion));
        send(Err(watcher::Error::NoResourceVersion));
        let failing = state_when("test-pods", |s| s.failures == 2).await;
        assert!(!failing.synced, "a failing watch is not synced");

        send(Ok(watcher::Event::Apply(pod("b", "u2"))));
        let resumed = state_when("test-pods", |s| s.events == 4).await;
        assert!(resumed.synced);
        assert_eq!(
            resumed.last_resync, listed.last_resync,
            "no new full list yet"
        );
    }

    fn pod(name: &str, uid: &str) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some(name.into());
        pod.metadata.namespace = Some("shop".into());
        pod.metadata.uid = Some(uid.into());
        pod
    }

    /// A store and its index fed the same events, as `start` does.
    fn follow(events: Vec<watcher::Event<Pod>>) -> (Store<Pod>, PodIndex) {
        let mut writer = Writer::<Pod>::default();
        let index = PodIndex::default();
        for event in &events {
            writer.apply_watcher_event(event);
            index.apply(event);
        }
        (writer.as_reader(), index)
    }

    #[test]
    fn finds_pods_by_uid_through_applies_and_deletes() {
        use watcher::Event::{Apply, Delete};
        let (store, index) = follow(vec![
            Apply(pod("web-0", "u1")),
            Apply(pod("web-1", "u2")),
            Apply(pod("db-0", "u3")),
            Delete(pod("web-1", "u2")),
        ]);
        assert_eq!(index.len(), 2);
        let found = pod_by_uid(&store, &index, "u1").unwrap();
        assert_eq!(found.metadata.name.as_deref(), Some("web-0"));
        assert_eq!(
            pod_by_uid(&store, &index, "u3")
                .unwrap()
                .metadata
                .name
                .as_deref(),
            Some("db-0")
        );
        assert!(pod_by_uid(&store, &index, "u2").is_none());
        assert!(pod_by_uid(&store, &index, "nope").is_none());
    }

    #[test]
    fn a_pod_made_anew_under_its_name_is_found_by_its_new_uid_only() {
        use watcher::Event::{Apply, Delete};
        let (store, index) = follow(vec![
            Apply(pod("web-0", "old")),
            Delete(pod("web-0", "old")),
            Apply(pod("web-0", "new")),
        ]);
        assert!(pod_by_uid(&store, &index, "old").is_none());
        assert!(pod_by_uid(&store, &index, "new").is_some());
        // The store already holds the new pod while the index still names the old UID.
        let mut writer = Writer::<Pod>::default();
        let lagging = PodIndex::default();
        lagging.apply(&Apply(pod("web-0", "old")));
        writer.apply_watcher_event(&Apply(pod("web-0", "new")));
        assert!(pod_by_uid(&writer.as_reader(), &lagging, "old").is_none());
    }

    #[test]
    fn a_relist_replaces_the_index_whole() {
        use watcher::Event::{Apply, Init, InitApply, InitDone};
        let mut events = vec![
            Apply(pod("web-0", "u1")),
            Apply(pod("web-1", "u2")),
            // The watch was down while web-1 was deleted and web-2 created.
            Init,
            InitApply(pod("web-0", "u1")),
            InitApply(pod("web-2", "u4")),
        ];
        let (store, index) = follow(events.clone());
        // Until the relist is complete, the old view stands (as in the store).
        assert!(pod_by_uid(&store, &index, "u2").is_some());
        assert!(pod_by_uid(&store, &index, "u4").is_none());
        events.push(InitDone);
        let (store, index) = follow(events);
        assert_eq!(index.len(), 2);
        assert!(pod_by_uid(&store, &index, "u1").is_some());
        assert!(pod_by_uid(&store, &index, "u2").is_none());
        assert!(pod_by_uid(&store, &index, "u4").is_some());
    }

    #[test]
    fn watch_retries_stay_within_three_seconds_and_start_again_after_a_success() {
        let mut backoff = quick_backoff();
        let delays: Vec<_> = backoff.by_ref().take(20).collect();
        let min = std::time::Duration::from_millis(125);
        let max = std::time::Duration::from_secs(3);
        assert!(delays.iter().all(|d| *d >= min && *d <= max), "{delays:?}");
        assert!(
            delays[0] < std::time::Duration::from_millis(250),
            "{delays:?}"
        );
        assert!(
            delays[19] >= std::time::Duration::from_millis(1500),
            "{delays:?}"
        );
        backoff.reset();
        assert!(backoff.next().unwrap() < std::time::Duration::from_millis(250));
    }
}
