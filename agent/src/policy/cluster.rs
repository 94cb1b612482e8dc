//! Policies from the API server: each object validated on its own, the last good version of
//! an object kept in force while a newer one is invalid, and the verdicts to write back (see
//! [`super::status`]).
use std::collections::{BTreeMap, HashMap};

use k8s_openapi::{api::core::v1::ObjectReference, apimachinery::pkg::apis::meta::v1::Time};
use kube::{Resource, ResourceExt};

use std::sync::{Arc, atomic::AtomicBool};

use kube::{
    Api, Client,
    runtime::{WatchStreamExt, reflector, reflector::Store, watcher},
};

use super::{
    FieldError, Policy,
    crd::{ClusterRuntimePolicy, PolicyStatus, RuntimePolicy},
    status::Verdict,
    validate,
};
use crate::metadata::cluster::{drive, quick_backoff};

/// The policy objects as the API server has them.
pub struct PolicyStores {
    pub runtime: Store<RuntimePolicy>,
    pub cluster: Store<ClusterRuntimePolicy>,
}

/// Starts the reflectors of both policy kinds; every change sets `changed`.
pub fn watch(client: &Client, changed: &Arc<AtomicBool>) -> PolicyStores {
    PolicyStores {
        runtime: reflect(client, "runtimepolicies.vigil.dev", changed),
        cluster: reflect(client, "clusterruntimepolicies.vigil.dev", changed),
    }
}

/// One kind's reflector, its objects trimmed of what the agent never reads.
fn reflect<K>(client: &Client, resource: &'static str, changed: &Arc<AtomicBool>) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = watcher(Api::<K>::all(client.clone()), watcher::Config::default())
        .backoff(quick_backoff())
        .modify(|p: &mut K| p.managed_fields_mut().clear())
        .reflect(writer);
    drive(resource, stream, Some(changed.clone()), |_| {});
    store
}

pub struct ClusterPolicies {
    node: String,
    last_good: HashMap<String, Policy>,
    /// uid -> (generation, accepted) handed to the status writer, which retries until it
    /// lands: sent once, not again for every sync while it waits.
    sent: HashMap<String, (i64, bool)>,
    /// Why this node carries out a Deny of exec and W^X as Kill (no BPF LSM), if it does.
    pub deny_fallback: Option<String>,
}

/// What an accepted policy's status says about `Deny` on a node without BPF LSM.
fn deny_caveat(policy: &Policy, fallback: Option<&str>) -> Option<String> {
    let fallback = fallback?;
    let sections: Vec<&str> = [
        ("exec", policy.spec.exec.action),
        ("memory", policy.spec.memory.action),
    ]
    .into_iter()
    .filter(|(_, action)| *action == crate::policy::Action::Deny)
    .map(|(section, _)| section)
    .collect();
    (!sections.is_empty()).then(|| {
        format!(
            "{} Deny is carried out as Kill after the act on this node ({fallback})",
            sections.join(" and ")
        )
    })
}

fn refusal(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

/// What this node's entry in `status` already says about `verdict`: whether it says exactly
/// that (nothing to write: an agent that restarts writes nothing that stands), and if the
/// condition's status is the same, since when.
fn already_written(
    status: Option<&PolicyStatus>,
    node: &str,
    verdict: &Verdict,
) -> (bool, Option<Time>) {
    let Some(entry) = status.and_then(|s| s.nodes.iter().find(|n| n.node == node)) else {
        return (false, None);
    };
    let Some(condition) = entry.conditions.iter().find(|c| c.type_ == "Accepted") else {
        return (false, None);
    };
    let (state, reason, message) = verdict.accepted(node);
    if condition.status != state {
        return (false, None);
    }
    let same = entry.observed_generation == Some(verdict.generation)
        && condition.observed_generation == Some(verdict.generation)
        && condition.reason == reason
        && condition.message == message;
    (same, Some(condition.last_transition_time.clone()))
}

impl ClusterPolicies {
    pub fn new(node: &str) -> Self {
        Self {
            deny_fallback: None,
            node: node.into(),
            last_good: HashMap::new(),
            sent: HashMap::new(),
        }
    }

    /// The policies in force, and the verdicts to write back: those not sent yet and not
    /// already in this node's entry of the object's status. Each one returned counts as sent.
    pub fn collect(&mut self, stores: &PolicyStores) -> (Vec<Policy>, Vec<Verdict>) {
        let mut seen = Vec::new();
        let mut verdicts = Vec::new();
        let mut judge = |uid: String,
                         result: Result<Policy, Vec<FieldError>>,
                         reference: ObjectReference,
                         namespace: Option<String>,
                         name: String,
                         cluster_scoped: bool,
                         generation: i64,
                         status: Option<&PolicyStatus>| {
            let mut caveat = None;
            let refusal_text = match result {
                Ok(policy) => {
                    caveat = deny_caveat(&policy, self.deny_fallback.as_deref());
                    self.last_good.insert(uid.clone(), policy);
                    None
                }
                Err(errors) => {
                    let text = refusal(&errors);
                    for e in &errors {
                        tracing::error!(
                            "policy {}{name}: {}: {} (the last good version stays in force)",
                            namespace
                                .as_deref()
                                .map(|n| format!("{n}/"))
                                .unwrap_or_default(),
                            e.field,
                            e.reason
                        );
                    }
                    Some(text)
                }
            };
            let wanted = (generation, refusal_text.is_none());
            if self.sent.get(&uid) != Some(&wanted) {
                let mut verdict = Verdict {
                    reference,
                    namespace,
                    name,
                    cluster_scoped,
                    generation,
                    refusal: refusal_text,
                    caveat,
                    since: None,
                };
                let (same, since) = already_written(status, &self.node, &verdict);
                verdict.since = since;
                if !same {
                    verdicts.push(verdict);
                }
                self.sent.insert(uid.clone(), wanted);
            }
            seen.push(uid);
        };
        for p in stores.runtime.state() {
            let uid = p.uid().unwrap_or_default();
            judge(
                uid,
                validate::runtime_policy(&p),
                p.object_ref(&()),
                p.namespace(),
                p.name_any(),
                false,
                p.meta().generation.unwrap_or(0),
                p.status.as_ref(),
            );
        }
        for p in stores.cluster.state() {
            let uid = p.uid().unwrap_or_default();
            judge(
                uid,
                validate::cluster_runtime_policy(&p),
                p.object_ref(&()),
                None,
                p.name_any(),
                true,
                p.meta().generation.unwrap_or(0),
                p.status.as_ref(),
            );
        }
        self.last_good.retain(|uid, _| seen.contains(uid));
        self.sent.retain(|uid, _| seen.contains(uid));
        let ordered: BTreeMap<String, Policy> = self
            .last_good
            .values()
            .map(|p| (p.id(), p.clone()))
            .collect();
        (ordered.into_values().collect(), verdicts)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    use super::*;
    use crate::policy::crd::NodeStatus;

    fn verdict(generation: i64, refusal: Option<&str>) -> Verdict {
        Verdict {
            reference: ObjectReference::default(),
            namespace: Some("shop".into()),
            name: "web".into(),
            cluster_scoped: false,
            generation,
            refusal: refusal.map(Into::into),
            caveat: None,
            since: None,
        }
    }

    /// The status as `node`'s agent would have written `written`, at `time` (seconds).
    fn status_of(node: &str, written: &Verdict, time: i64) -> PolicyStatus {
        let (status, reason, message) = written.accepted(node);
        PolicyStatus {
            nodes: vec![NodeStatus {
                node: node.into(),
                observed_generation: Some(written.generation),
                conditions: vec![Condition {
                    type_: "Accepted".into(),
                    status: status.into(),
                    reason: reason.into(),
                    message,
                    observed_generation: Some(written.generation),
                    last_transition_time: Time(
                        k8s_openapi::jiff::Timestamp::from_second(time).unwrap(),
                    ),
                }],
            }],
        }
    }

    #[test]
    fn only_what_this_nodes_entry_does_not_already_say_is_written() {
        let at = |s| Some(Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap()));
        let accepted = status_of("node-a", &verdict(2, None), 100);
        assert_eq!(
            already_written(Some(&accepted), "node-a", &verdict(2, None)),
            (true, at(100))
        );
        // A new generation, still accepted: written, keeping when it became accepted.
        assert_eq!(
            already_written(Some(&accepted), "node-a", &verdict(3, None)),
            (false, at(100))
        );
        // Now refused: written, and the transition is now.
        assert_eq!(
            already_written(Some(&accepted), "node-a", &verdict(3, Some("spec.exec: x"))),
            (false, None)
        );
        // Another node's entry says nothing about this node.
        assert_eq!(
            already_written(Some(&accepted), "node-b", &verdict(2, None)),
            (false, None)
        );
        assert_eq!(
            already_written(None, "node-a", &verdict(1, None)),
            (false, None)
        );
        // Refused for other reasons than the entry names: written again.
        let refused = status_of("node-a", &verdict(4, Some("spec.exec: x")), 200);
        assert_eq!(
            already_written(Some(&refused), "node-a", &verdict(4, Some("spec.exec: y"))),
            (false, at(200))
        );
    }
}
