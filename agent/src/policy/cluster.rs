//! Policies from the API server: each object validated on its own, the last good version of
//! an object kept in force while a newer one is invalid, and the verdict written back where
//! `kubectl` shows it (a status condition, and an Event on the policy when refused).
use std::collections::{BTreeMap, HashMap};

use k8s_openapi::{api::core::v1::ObjectReference, apimachinery::pkg::apis::meta::v1::Condition};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use serde_json::json;

use super::{
    FieldError, Policy,
    crd::{ClusterRuntimePolicy, RuntimePolicy},
    validate,
};
use crate::metadata::cluster::Cluster;

/// What to write back about one policy object.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub reference: ObjectReference,
    pub namespace: Option<String>,
    pub name: String,
    pub cluster_scoped: bool,
    pub generation: i64,
    /// `None`: accepted.
    pub refusal: Option<String>,
}

#[derive(Default)]
pub struct ClusterPolicies {
    last_good: HashMap<String, Policy>,
    /// uid -> (generation, accepted) last written.
    written: HashMap<String, (i64, bool)>,
}

fn refusal(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ClusterPolicies {
    /// The policies in force, and the verdicts not yet written back.
    pub fn collect(&mut self, cluster: &Cluster) -> (Vec<Policy>, Vec<Verdict>) {
        let mut seen = Vec::new();
        let mut verdicts = Vec::new();
        let mut judge = |uid: String,
                         result: Result<Policy, Vec<FieldError>>,
                         reference: ObjectReference,
                         namespace: Option<String>,
                         name: String,
                         cluster_scoped: bool,
                         generation: i64| {
            let refusal_text = match result {
                Ok(policy) => {
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
            if self.written.get(&uid) != Some(&(generation, refusal_text.is_none())) {
                verdicts.push(Verdict {
                    reference,
                    namespace,
                    name,
                    cluster_scoped,
                    generation,
                    refusal: refusal_text,
                });
            }
            seen.push(uid);
        };
        for p in cluster.runtime_policies.state() {
            let uid = p.uid().unwrap_or_default();
            judge(
                uid,
                validate::runtime_policy(&p),
                p.object_ref(&()),
                p.namespace(),
                p.name_any(),
                false,
                p.meta().generation.unwrap_or(0),
            );
        }
        for p in cluster.cluster_policies.state() {
            let uid = p.uid().unwrap_or_default();
            judge(
                uid,
                validate::cluster_runtime_policy(&p),
                p.object_ref(&()),
                None,
                p.name_any(),
                true,
                p.meta().generation.unwrap_or(0),
            );
        }
        self.last_good.retain(|uid, _| seen.contains(uid));
        self.written.retain(|uid, _| seen.contains(uid));
        let ordered: BTreeMap<String, Policy> = self
            .last_good
            .values()
            .map(|p| (p.id(), p.clone()))
            .collect();
        (ordered.into_values().collect(), verdicts)
    }

    pub fn mark_written(&mut self, verdict: &Verdict) {
        if let Some(uid) = &verdict.reference.uid {
            self.written
                .insert(uid.clone(), (verdict.generation, verdict.refusal.is_none()));
        }
    }
}

/// Writes a verdict: the `Accepted` condition and `observedGeneration`, and for a refusal an
/// Event naming the fields.
pub async fn write(client: &Client, node: &str, verdict: &Verdict) -> Result<(), kube::Error> {
    let (status, reason, message) = match &verdict.refusal {
        None => (
            "True",
            "Valid",
            format!("enforced by the agent on node {node}"),
        ),
        Some(text) => (
            "False",
            "Invalid",
            format!("refused, the last good version stays in force: {text}"),
        ),
    };
    let condition = Condition {
        type_: "Accepted".into(),
        status: status.into(),
        reason: reason.into(),
        message: message.clone(),
        observed_generation: Some(verdict.generation),
        last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ),
    };
    let patch =
        json!({"status": {"conditions": [condition], "observedGeneration": verdict.generation}});
    let params = PatchParams::default();
    if verdict.cluster_scoped {
        Api::<ClusterRuntimePolicy>::all(client.clone())
            .patch_status(&verdict.name, &params, &Patch::Merge(&patch))
            .await?;
    } else {
        let ns = verdict.namespace.as_deref().unwrap_or("default");
        Api::<RuntimePolicy>::namespaced(client.clone(), ns)
            .patch_status(&verdict.name, &params, &Patch::Merge(&patch))
            .await?;
    }
    if verdict.refusal.is_some() {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "vigil-agent".into(),
                instance: Some(node.into()),
            },
        );
        let event = Event {
            type_: EventType::Warning,
            reason: "InvalidPolicy".into(),
            note: Some(message.chars().take(1000).collect()),
            action: "Validate".into(),
            secondary: None,
        };
        recorder.publish(&event, &verdict.reference).await?;
    }
    Ok(())
}
