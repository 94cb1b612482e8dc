//! Each policy object's verdict, written back where `kubectl` shows it: this node's entry in
//! `status.nodes` (server-side apply under a field manager of this node's own, so the agents
//! of other nodes keep theirs), and an Event on the policy when refused. A write that fails is
//! retried with backoff until it lands, off the event path; a newer verdict for the same
//! policy replaces one still waiting.
use std::{collections::BTreeMap, future::Future, time::Duration};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use k8s_openapi::{
    api::core::v1::ObjectReference,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use serde_json::json;
use tokio::{sync::mpsc, time::Instant};

use super::crd::{API_VERSION, ClusterRuntimePolicy, NodeStatus, PolicyStatus, RuntimePolicy};

/// What to write back about one policy object.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub reference: ObjectReference,
    pub namespace: Option<String>,
    pub name: String,
    pub cluster_scoped: bool,
    pub generation: i64,
    /// `None`: accepted.
    pub refusal: Option<String>,
    /// What an accepted policy's message adds about this node: how it carries the policy
    /// out where that differs from what it says (Deny of exec or W^X without BPF LSM).
    pub caveat: Option<String>,
    /// The `lastTransitionTime` of this node's condition when its status is unchanged (only
    /// the generation moved on); `None` means now.
    pub since: Option<Time>,
}

/// The policy object a verdict is about: its latest verdict is the only one worth writing.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PolicyKey {
    pub cluster_scoped: bool,
    pub namespace: Option<String>,
    pub name: String,
}

impl Verdict {
    pub fn key(&self) -> PolicyKey {
        PolicyKey {
            cluster_scoped: self.cluster_scoped,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// `RuntimePolicy shop/web` or `ClusterRuntimePolicy baseline`.
    pub fn describe(&self) -> String {
        match (&self.namespace, self.cluster_scoped) {
            (Some(ns), false) => format!("RuntimePolicy {ns}/{}", self.name),
            _ => format!("ClusterRuntimePolicy {}", self.name),
        }
    }

    /// The `Accepted` condition's status, reason and message.
    pub fn accepted(&self, node: &str) -> (&'static str, &'static str, String) {
        match &self.refusal {
            None => (
                "True",
                "Valid",
                match &self.caveat {
                    None => format!("enforced by the agent on node {node}"),
                    Some(caveat) => format!("enforced by the agent on node {node}; {caveat}"),
                },
            ),
            Some(text) => (
                "False",
                "Invalid",
                format!("refused, the last good version stays in force: {text}"),
            ),
        }
    }
}

/// A status write that did not land, naming the policy.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("writing the status of {policy}: {source}")]
    Status { policy: String, source: kube::Error },
    #[error("publishing the InvalidPolicy Event on {policy}: {source}")]
    Event { policy: String, source: kube::Error },
}

impl StatusError {
    /// The policy object is gone: there is nothing left to write to (its deletion also
    /// removes it from the policies in force, so no newer verdict will follow).
    pub fn object_gone(&self) -> bool {
        matches!(self, Self::Status { source: kube::Error::Api(status), .. } if status.code == 404)
    }
}

/// The longest field manager name the API server accepts.
const FIELD_MANAGER_MAX: usize = 128;
const FIELD_MANAGER_PREFIX: &str = "vigil-agent/";

/// FNV-1a of `bytes`: stable across builds and releases, unlike the standard library's
/// hasher, so the names made with it (a node's field manager, its reports) stay the same over
/// agent upgrades.
pub fn stable_hash(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The field manager of this node's agent, `vigil-agent/<node>`. A node name can be longer
/// than a manager name may be (253 against 128 characters); such a name is cut and a hash of
/// the whole name keeps two long names that share a beginning apart.
pub fn field_manager(node: &str) -> String {
    let whole = format!("{FIELD_MANAGER_PREFIX}{node}");
    if whole.len() <= FIELD_MANAGER_MAX {
        return whole;
    }
    let hash = stable_hash(node.bytes());
    let keep = FIELD_MANAGER_MAX - FIELD_MANAGER_PREFIX.len() - 17;
    // Node names are DNS subdomains (ASCII), so any byte offset is a character boundary.
    format!("{FIELD_MANAGER_PREFIX}{}-{hash:016x}", &node[..keep])
}

/// The server-side apply body for this node's entry of the verdict's policy.
pub fn apply_body(verdict: &Verdict, node: &str) -> serde_json::Value {
    let (status, reason, message) = verdict.accepted(node);
    let condition = Condition {
        type_: "Accepted".into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: Some(verdict.generation),
        last_transition_time: verdict
            .since
            .clone()
            .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now())),
    };
    let status = PolicyStatus {
        nodes: vec![NodeStatus {
            node: node.into(),
            observed_generation: Some(verdict.generation),
            conditions: vec![condition],
        }],
    };
    let (kind, metadata) = match (&verdict.namespace, verdict.cluster_scoped) {
        (Some(ns), false) => (
            "RuntimePolicy",
            json!({"name": verdict.name, "namespace": ns}),
        ),
        _ => ("ClusterRuntimePolicy", json!({"name": verdict.name})),
    };
    json!({"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "status": status})
}

/// Writes verdicts for this node's agent.
pub struct StatusWriter {
    client: Client,
    node: String,
    params: PatchParams,
    recorder: Recorder,
}

impl StatusWriter {
    pub fn new(client: Client, node: &str) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "vigil-agent".into(),
                instance: Some(node.into()),
            },
        );
        Self {
            client,
            node: node.into(),
            // Forced: this node's entry is this manager's alone; forcing only takes over a
            // field some other manager (an older agent's merge patch, a person) once set.
            params: PatchParams::apply(&field_manager(node)).force(),
            recorder,
        }
    }

    /// This node's entry in the policy's status and, for a refusal, an Event naming the fields.
    pub async fn write(&self, verdict: &Verdict) -> Result<(), StatusError> {
        let body = apply_body(verdict, &self.node);
        let patch = Patch::Apply(&body);
        let result = if verdict.cluster_scoped {
            Api::<ClusterRuntimePolicy>::all(self.client.clone())
                .patch_status(&verdict.name, &self.params, &patch)
                .await
                .map(drop)
        } else {
            let ns = verdict.namespace.as_deref().unwrap_or("default");
            Api::<RuntimePolicy>::namespaced(self.client.clone(), ns)
                .patch_status(&verdict.name, &self.params, &patch)
                .await
                .map(drop)
        };
        result.map_err(|source| StatusError::Status {
            policy: verdict.describe(),
            source,
        })?;
        if verdict.refusal.is_some() {
            let (_, _, message) = verdict.accepted(&self.node);
            let event = Event {
                type_: EventType::Warning,
                reason: "InvalidPolicy".into(),
                note: Some(message.chars().take(1000).collect()),
                action: "Validate".into(),
                secondary: None,
            };
            self.recorder
                .publish(&event, &verdict.reference)
                .await
                .map_err(|source| StatusError::Event {
                    policy: verdict.describe(),
                    source,
                })?;
        }
        Ok(())
    }
}

/// Retry delays for a status write: 250 ms doubling to 15 s, each plus a random part of up to
/// as much again (so at most 30 s, as client-go's own watches wait), without end. The jitter
/// keeps the agents of every node from retrying in step against an API server that is
/// struggling already.
pub fn retry_delays() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(15))
        .with_jitter()
        .without_max_times()
}

/// A verdict waiting to be written.
struct Pending {
    verdict: Verdict,
    due: Instant,
    delays: ExponentialBackoff,
    failures: u32,
}

/// Writes every verdict received with `write`, each retried after `delays` until it lands; a
/// verdict received for a policy whose write is still waiting replaces it (and starts its
/// delays afresh). A failing policy does not hold up the others. Returns once `verdicts` is
/// closed and nothing waits any more.
pub async fn deliver<F, Fut>(
    mut verdicts: mpsc::UnboundedReceiver<Verdict>,
    delays: ExponentialBuilder,
    mut write: F,
) where
    F: FnMut(Verdict) -> Fut,
    Fut: Future<Output = Result<(), StatusError>>,
{
    let mut pending: BTreeMap<PolicyKey, Pending> = BTreeMap::new();
    let mut open = true;
    loop {
        let next = pending
            .iter()
            .min_by_key(|(_, p)| p.due)
            .map(|(key, p)| (key.clone(), p.due));
        let received = match next {
            None if !open => return,
            None => verdicts.recv().await,
            Some((key, due)) => {
                tokio::select! {
                    // Newer verdicts first: one of them may replace the write that is due.
                    biased;
                    received = verdicts.recv(), if open => received,
                    () = tokio::time::sleep_until(due) => {
                        attempt(&mut pending, key, &mut write).await;
                        continue;
                    }
                }
            }
        };
        match received {
            Some(verdict) => {
                pending.insert(
                    verdict.key(),
                    Pending {
                        verdict,
                        due: Instant::now(),
                        delays: delays.build(),
                        failures: 0,
                    },
                );
            }
            None => open = false,
        }
    }
}

async fn attempt<F, Fut>(pending: &mut BTreeMap<PolicyKey, Pending>, key: PolicyKey, write: &mut F)
where
    F: FnMut(Verdict) -> Fut,
    Fut: Future<Output = Result<(), StatusError>>,
{
    let Some(entry) = pending.get_mut(&key) else {
        return;
    };
    let policy = entry.verdict.describe();
    match write(entry.verdict.clone()).await {
        Ok(()) => {
            if entry.failures > 0 {
                tracing::info!(policy, failures = entry.failures, "policy status written");
            }
            pending.remove(&key);
        }
        Err(error) if error.object_gone() => {
            tracing::debug!(policy, "the policy is gone; its status is not written");
            pending.remove(&key);
        }
        Err(error) => {
            entry.failures += 1;
            // Without a limit on attempts the delays never run out; the cap is the fallback.
            let delay = entry.delays.next().unwrap_or(Duration::from_secs(30));
            entry.due = Instant::now() + delay;
            // Once per outage, as the watches do; the retries themselves only at debug.
            if entry.failures == 1 {
                tracing::warn!(policy, %error, "could not write the policy's status; retrying with backoff until it lands");
            } else {
                tracing::debug!(policy, %error, failures = entry.failures, retry_in = ?delay, "policy status still not written");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn verdict(name: &str, generation: i64, refusal: Option<&str>) -> Verdict {
        Verdict {
            reference: ObjectReference::default(),
            namespace: Some("shop".into()),
            name: name.into(),
            cluster_scoped: false,
            generation,
            refusal: refusal.map(Into::into),
            caveat: None,
            since: None,
        }
    }

    fn unavailable(v: &Verdict) -> StatusError {
        StatusError::Status {
            policy: v.describe(),
            source: kube::Error::Api(Box::new(
                kube::core::Status::failure("etcd is away", "ServiceUnavailable").with_code(503),
            )),
        }
    }

    fn quick() -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(1))
            .with_max_delay(Duration::from_millis(4))
            .with_jitter()
            .without_max_times()
    }

    /// Every attempt as (policy name, generation, landed).
    type Log = Arc<Mutex<Vec<(String, i64, bool)>>>;

    /// A write that fails while `fails` says so for that verdict.
    fn recording(
        log: Log,
        fails: impl Fn(&Verdict, usize) -> Option<StatusError> + 'static,
    ) -> impl FnMut(Verdict) -> std::future::Ready<Result<(), StatusError>> {
        move |v: Verdict| {
            let mut log = log.lock().unwrap();
            let tries = log
                .iter()
                .filter(|(n, g, _)| *n == v.name && *g == v.generation)
                .count();
            let failure = fails(&v, tries);
            log.push((v.name.clone(), v.generation, failure.is_none()));
            std::future::ready(failure.map_or(Ok(()), Err))
        }
    }

    #[tokio::test]
    async fn a_failed_write_is_retried_until_it_lands() {
        let log = Log::default();
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(verdict("web", 1, None)).unwrap();
        drop(tx);
        let write = recording(log.clone(), |v, tries| (tries < 5).then(|| unavailable(v)));
        tokio::time::timeout(Duration::from_secs(10), deliver(rx, quick(), write))
            .await
            .expect("delivered");
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 6, "{log:?}");
        assert!(log[..5].iter().all(|(_, _, landed)| !landed));
        assert_eq!(log[5], ("web".into(), 1, true));
    }

    #[tokio::test]
    async fn a_newer_verdict_replaces_a_waiting_one() {
        let log = Log::default();
        let (tx, rx) = mpsc::unbounded_channel();
        // Generation 1 never lands; generation 2 lands at its second try.
        let write = recording(log.clone(), |v, tries| {
            (v.generation == 1 || tries == 0).then(|| unavailable(v))
        });
        let delivering = tokio::spawn(deliver(rx, quick(), write));
        tx.send(verdict("web", 1, None)).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while log.lock().unwrap().len() < 3 {
            assert!(std::time::Instant::now() < deadline, "no retries");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tx.send(verdict(
            "web",
            2,
            Some("spec.exec.deny[0].prefix: relative"),
        ))
        .unwrap();
        drop(tx);
        tokio::time::timeout(Duration::from_secs(10), delivering)
            .await
            .expect("delivered")
            .unwrap();
        let log = log.lock().unwrap();
        let first_newer = log.iter().position(|(_, g, _)| *g == 2).unwrap();
        assert!(
            log[first_newer..].iter().all(|(_, g, _)| *g == 2),
            "the older verdict was written after the newer one: {log:?}"
        );
        assert_eq!(log.last(), Some(&("web".into(), 2, true)));
        assert_eq!(log.iter().filter(|(_, _, landed)| *landed).count(), 1);
    }

    #[tokio::test]
    async fn a_failing_policy_does_not_hold_up_the_others() {
        let log = Log::default();
        let (tx, rx) = mpsc::unbounded_channel();
        let write = recording(log.clone(), |v, _| {
            (v.name == "stuck").then(|| unavailable(v))
        });
        let delivering = tokio::spawn(deliver(rx, quick(), write));
        tx.send(verdict("stuck", 1, None)).unwrap();
        tx.send(verdict("web", 1, None)).unwrap();
        tx.send(verdict("db", 1, None)).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let landed: Vec<String> = log
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, _, landed)| *landed)
                .map(|(n, _, _)| n.clone())
                .collect();
            if landed.len() == 2 {
                assert_eq!(landed.iter().filter(|n| *n == "stuck").count(), 0);
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{landed:?}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Still retrying the stuck one, without end.
        let before = log.lock().unwrap().len();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(log.lock().unwrap().len() > before);
        assert!(!delivering.is_finished());
        delivering.abort();
    }

    #[tokio::test]
    async fn a_policy_that_is_gone_is_not_retried() {
        let log = Log::default();
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(verdict("deleted", 3, None)).unwrap();
        drop(tx);
        let write = recording(log.clone(), |v, _| {
            Some(StatusError::Status {
                policy: v.describe(),
                source: kube::Error::Api(Box::new(
                    kube::core::Status::failure("not found", "NotFound").with_code(404),
                )),
            })
        });
        tokio::time::timeout(Duration::from_secs(10), deliver(rx, quick(), write))
            .await
            .expect("given up at once");
        assert_eq!(log.lock().unwrap().len(), 1);
    }

    #[test]
    fn retry_delays_grow_to_a_cap_with_jitter() {
        let delays: Vec<Duration> = retry_delays().build().take(30).collect();
        assert!(delays[0] >= Duration::from_millis(250) && delays[0] < Duration::from_millis(500));
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(30)),
            "{delays:?}"
        );
        assert!(delays[29] >= Duration::from_secs(15), "{delays:?}");
        // Jitter: two agents starting together do not retry in step.
        let other: Vec<Duration> = retry_delays().build().take(30).collect();
        assert_ne!(delays, other);
    }

    #[test]
    fn each_node_applies_its_own_entry_under_its_own_manager() {
        let body = apply_body(&verdict("web", 4, None), "node-a");
        assert_eq!(body["apiVersion"], API_VERSION);
        assert_eq!(body["kind"], "RuntimePolicy");
        assert_eq!(
            body["metadata"],
            json!({"name": "web", "namespace": "shop"})
        );
        let nodes = body["status"]["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0]["node"], "node-a");
        assert_eq!(nodes[0]["observedGeneration"], 4);
        let condition = &nodes[0]["conditions"][0];
        assert_eq!(condition["type"], "Accepted");
        assert_eq!(condition["status"], "True");
        assert_eq!(condition["observedGeneration"], 4);
        assert_eq!(
            body.as_object().unwrap().len(),
            4,
            "only what this node owns: {body}"
        );

        let mut refused = verdict("base", 2, Some("spec.connect.deny[0].cidr: host bits"));
        refused.cluster_scoped = true;
        refused.namespace = None;
        let body = apply_body(&refused, "node-b");
        assert_eq!(body["kind"], "ClusterRuntimePolicy");
        assert_eq!(body["metadata"], json!({"name": "base"}));
        let condition = &body["status"]["nodes"][0]["conditions"][0];
        assert_eq!(condition["status"], "False");
        assert_eq!(condition["reason"], "Invalid");
        assert!(
            condition["message"]
                .as_str()
                .unwrap()
                .contains("spec.connect.deny[0].cidr: host bits")
        );

        assert_eq!(field_manager("node-a"), "vigil-agent/node-a");
        let long_a = format!("{}a", "n".repeat(252));
        let long_b = format!("{}b", "n".repeat(252));
        for long in [&long_a, &long_b] {
            assert_eq!(field_manager(long).len(), FIELD_MANAGER_MAX);
        }
        assert_ne!(field_manager(&long_a), field_manager(&long_b));
        assert_eq!(field_manager(&long_a), field_manager(&long_a));
    }
}
