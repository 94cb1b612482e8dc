//! Pods described once per pod object: every event from a container shares one description
//! (labels, owner, container, subject) instead of copying the pod's metadata into each. A
//! description is reused only while the store hands out the very same pod object and the
//! very same controlling ReplicaSet or Job object; any change to either (a new status, a
//! relabel, an owner listed late, adopted or orphaned) replaces the object and so the
//! description.
use std::{collections::HashMap, sync::Arc};

use k8s_openapi::api::core::v1::Pod;

use crate::{
    cloudevents::{PodDescription, shared::Shared},
    metadata::cluster::{ControllerObject, PodInfo},
};

/// Entries kept before the ones whose pod the store no longer holds are dropped.
const FIRST_PRUNE: usize = 1024;

struct Seen {
    container_id: Option<String>,
    pod: Arc<Pod>,
    owner: Option<ControllerObject>,
    described: Shared<PodDescription>,
}

impl Seen {
    fn holds(&self, pod: &Arc<Pod>, owner: Option<&ControllerObject>) -> bool {
        Arc::ptr_eq(&self.pod, pod)
            && match (&self.owner, owner) {
                (None, None) => true,
                (Some(a), Some(b)) => a.same(b),
                _ => false,
            }
    }
}

pub(crate) struct SeenPods {
    /// By pod uid, one entry per container seen.
    by_uid: HashMap<String, Vec<Seen>>,
    entries: usize,
    /// Above this many entries, those of pods gone from the store are dropped.
    prune_at: usize,
}

impl Default for SeenPods {
    fn default() -> Self {
        Self {
            by_uid: HashMap::new(),
            entries: 0,
            prune_at: FIRST_PRUNE,
        }
    }
}

impl SeenPods {
    /// The description of `pod`'s container `container_id`: the one made before while `pod`
    /// and `owner` are the same objects as then, else one `describe` makes now.
    pub(crate) fn describe(
        &mut self,
        pod: &Arc<Pod>,
        owner: Option<ControllerObject>,
        container_id: Option<&str>,
        describe: impl FnOnce() -> PodInfo,
        live: impl Fn(&str) -> Option<Arc<Pod>>,
    ) -> Shared<PodDescription> {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        if let Some(seen) = self.by_uid.get_mut(uid) {
            // A new object for the pod makes every container's entry stale.
            let before = seen.len();
            seen.retain(|s| Arc::ptr_eq(&s.pod, pod));
            self.entries -= before - seen.len();
            if let Some(s) = seen
                .iter_mut()
                .find(|s| s.container_id.as_deref() == container_id)
            {
                if s.holds(pod, owner.as_ref()) {
                    return s.described.clone();
                }
                // Made before the entry changes, so that a panic in `describe` leaves no entry
                // claiming the new owner with the old description.
                let described = Shared::new(PodDescription::from(&describe()));
                s.owner = owner;
                s.described = described.clone();
                return described;
            }
        }
        let described = Shared::new(PodDescription::from(&describe()));
        self.by_uid.entry(uid.to_owned()).or_default().push(Seen {
            container_id: container_id.map(str::to_owned),
            pod: Arc::clone(pod),
            owner,
            described: described.clone(),
        });
        self.entries += 1;
        if self.entries > self.prune_at {
            self.prune(live);
        }
        described
    }

    /// Drops the entries of pods the store no longer holds as the same object; the next
    /// prune waits until the entries have doubled, so the work stays constant per event.
    fn prune(&mut self, live: impl Fn(&str) -> Option<Arc<Pod>>) {
        self.by_uid.retain(|uid, seen| {
            let current = live(uid);
            seen.retain(|s| current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &s.pod)));
            !seen.is_empty()
        });
        self.entries = self.by_uid.values().map(Vec::len).sum();
        self.prune_at = (self.entries * 2).max(FIRST_PRUNE);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::Cell, collections::BTreeMap};

    use k8s_openapi::{
        api::{apps::v1::ReplicaSet, core::v1::Pod},
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };
    use kube::core::PartialObjectMeta;

    use super::*;

    fn pod(uid: &str, app: &str) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                uid: Some(uid.into()),
                namespace: Some("ns".into()),
                name: Some(format!("p-{uid}")),
                labels: Some(BTreeMap::from([("app".into(), app.into())])),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        })
    }

    fn info(pod: &Pod, container: Option<&str>, owner: &str) -> PodInfo {
        PodInfo {
            namespace: pod.metadata.namespace.clone().unwrap(),
            name: pod.metadata.name.clone().unwrap(),
            uid: pod.metadata.uid.clone().unwrap(),
            labels: pod.metadata.labels.clone().unwrap(),
            service_account: None,
            owner: Some(crate::metadata::cluster::Owner {
                kind: "Deployment".into(),
                name: owner.into(),
            }),
            container_id: container.map(str::to_owned),
            container_name: Some("c".into()),
            image: Some("img".into()),
        }
    }

    fn replicaset() -> ControllerObject {
        ControllerObject::ReplicaSet(Arc::new(PartialObjectMeta::<ReplicaSet>::default()))
    }

    #[test]
    fn a_pod_is_described_once_and_shared_until_its_object_changes() {
        let mut seen = SeenPods::default();
        let made = Cell::new(0);
        let first = pod("u1", "web");
        let rs = replicaset();
        let mut describe = |p: &Arc<Pod>, owner: &ControllerObject, container| {
            seen.describe(
                p,
                Some(owner.clone()),
                container,
                || {
                    made.set(made.get() + 1);
                    info(p, container, "web")
                },
                |_| Some(Arc::clone(p)),
            )
        };
        let a = describe(&first, &rs, Some("c1"));
        let b = describe(&first, &rs, Some("c1"));
        assert_eq!(made.get(), 1, "the same pod object is described once");
        assert!(std::ptr::eq(&*a, &*b), "and the description shared");
        assert_eq!(a.subject, "namespaces/ns/pods/p-u1");
        assert_eq!(a.container.id.as_deref(), Some("c1"));

        describe(&first, &rs, Some("c2"));
        assert_eq!(made.get(), 2, "another container of the pod has its own");

        let relabelled = pod("u1", "api");
        let c = describe(&relabelled, &rs, Some("c1"));
        assert_eq!(made.get(), 3, "a new object of the pod is described anew");
        assert_eq!(
            c.pod
                .labels
                .as_ref()
                .unwrap()
                .get("app")
                .map(String::as_str),
            Some("api")
        );
    }

    #[test]
    fn an_owner_listed_late_adopted_or_orphaned_is_seen() {
        let mut seen = SeenPods::default();
        let made = Cell::new(0);
        let p = pod("u1", "web");
        let mut describe = |owner: Option<ControllerObject>, name: &'static str| {
            seen.describe(
                &p,
                owner,
                None,
                || {
                    made.set(made.get() + 1);
                    info(&p, None, name)
                },
                |_| Some(Arc::clone(&p)),
            )
        };
        assert_eq!(
            describe(None, "rs")
                .pod
                .owner
                .as_ref()
                .unwrap()
                .as_ref()
                .unwrap()
                .name,
            "rs"
        );
        let rs = replicaset();
        let listed = describe(Some(rs.clone()), "web");
        assert_eq!(made.get(), 2, "the owner listed late is read");
        assert_eq!(
            listed.pod.owner.as_ref().unwrap().as_ref().unwrap().name,
            "web"
        );
        describe(Some(rs), "web");
        assert_eq!(made.get(), 2);
        describe(Some(replicaset()), "other");
        assert_eq!(made.get(), 3, "a changed owner object is read again");
        describe(None, "rs");
        assert_eq!(made.get(), 4, "an owner gone is seen");
    }

    #[test]
    fn entries_of_pods_gone_from_the_store_are_dropped() {
        let mut seen = SeenPods::default();
        let kept = pod("kept", "web");
        for i in 0..FIRST_PRUNE {
            let gone = pod(&format!("gone-{i}"), "web");
            seen.describe(&gone, None, None, || info(&gone, None, "x"), |_| None);
        }
        assert_eq!(seen.len(), FIRST_PRUNE);
        let live = Arc::clone(&kept);
        seen.describe(
            &kept,
            None,
            None,
            || info(&kept, None, "x"),
            move |uid| (uid == "kept").then(|| Arc::clone(&live)),
        );
        assert_eq!(seen.len(), 1, "only the pod the store still holds is kept");
    }
}
