//! `RuntimePolicyReport`: what one node's agent learned for one `Learn` RuntimePolicy. One
//! object per policy and node, beside the policy and owned by it (deleting the policy deletes
//! its reports); the agent writes it with server-side apply and reads it back after a
//! restart, and `vigil learn --namespace` merges the nodes' reports into the policy it writes.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{
    Api, Client, CustomResource,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{recorder::LearnKey, table::LearnTable};

/// The longest object name the API server accepts (a DNS subdomain).
const NAME_MAX: usize = 253;

/// What a node learned for a policy.
#[expect(
    clippy::duplicated_attributes,
    reason = "two printer columns are both strings: the lint takes their `type_` for a repeat"
)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "vigil.dev",
    version = "v1alpha1",
    kind = "RuntimePolicyReport",
    namespaced,
    shortname = "rpreport",
    category = "vigil",
    doc = "What the pods a RuntimePolicy in mode Learn selects did on one node, as that \
           node's Vigil agent learned it; `vigil learn` merges the reports into a policy.",
    printcolumn(name = "Policy", type_ = "string", json_path = ".spec.policy")
)]
#[kube(printcolumn(name = "Node", type_ = "string", json_path = ".spec.node"))]
#[kube(printcolumn(name = "Events", type_ = "integer", json_path = ".spec.events"))]
#[kube(printcolumn(
    name = "Age",
    type_ = "date",
    json_path = ".metadata.creationTimestamp"
))]
#[serde(rename_all = "camelCase")]
pub struct RuntimePolicyReportSpec {
    /// The RuntimePolicy (of this namespace) that learns.
    pub policy: String,
    /// The node whose agent learned this.
    pub node: String,
    /// Events taken in.
    pub events: u64,
    /// The bounded learn table (`docs/learn.md`): executables, destinations, JIT runtimes
    /// and the warnings a review needs.
    #[schemars(schema_with = "any_object")]
    pub table: serde_json::Value,
}

fn any_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("RuntimePolicyReport {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("RuntimePolicyReport {namespace}/{name}: spec.table: {source}")]
    Table {
        namespace: String,
        name: String,
        source: serde_json::Error,
    },
    #[error("{policy}: only a RuntimePolicy learns in a cluster")]
    NotNamespaced { policy: String },
}

/// The report's name: `<policy>.<node>-<hash>`. Both are DNS subdomains, which may hold dots,
/// so `a.b` on node `c` and `a` on node `b.c` would read alike: the hash of the pair keeps
/// every pair's report its own. Past 253 characters the readable part is cut.
pub fn report_name(policy: &str, node: &str) -> String {
    let hash = crate::policy::status::stable_hash(policy.bytes().chain([0]).chain(node.bytes()));
    let readable = format!("{policy}.{node}");
    let keep = NAME_MAX - 17;
    // DNS subdomains are ASCII: any byte offset is a character boundary. A cut ending in `.`
    // or `-` would not be a valid name before the `-`.
    let cut = if readable.len() > keep {
        readable[..keep].trim_end_matches(['.', '-'])
    } else {
        readable.as_str()
    };
    format!("{cut}-{hash:016x}")
}

/// Reads and writes this node's reports.
pub struct Reports {
    client: Client,
    node: String,
    params: PatchParams,
}

impl Reports {
    pub fn new(client: Client, node: &str) -> Self {
        Self {
            client,
            node: node.into(),
            // This node's report is this manager's alone.
            params: PatchParams::apply(&crate::policy::status::field_manager(node)).force(),
        }
    }

    fn api(&self, key: &LearnKey) -> Result<(Api<RuntimePolicyReport>, String), ReportError> {
        let Some(ns) = &key.namespace else {
            return Err(ReportError::NotNamespaced {
                policy: key.to_string(),
            });
        };
        Ok((
            Api::namespaced(self.client.clone(), ns),
            report_name(&key.name, &self.node),
        ))
    }

    /// What this node's report for `key` kept, if there is one and the policy in force
    /// (`owner_uid`) owns it. A report owned by another (an earlier policy of that name whose
    /// report the garbage collector has not taken yet, or one written by another hand) is not
    /// taken back but deleted: fields another manager wrote would outlive this agent's apply.
    pub async fn fetch(
        &self,
        key: &LearnKey,
        owner_uid: &str,
    ) -> Result<Option<LearnTable>, ReportError> {
        let (api, name) = self.api(key)?;
        let namespace = key.namespace.clone().unwrap_or_default();
        let api_error = |source| ReportError::Api {
            namespace: namespace.clone(),
            name: name.clone(),
            source,
        };
        let Some(report) = api.get_opt(&name).await.map_err(api_error)? else {
            return Ok(None);
        };
        if owned_by(&report, owner_uid) {
            return table_of(&report).map(Some);
        }
        tracing::warn!(
            report = %format!("{namespace}/{name}"),
            policy = %key,
            "learning: this node's report is not owned by the policy in force (an earlier policy of that name, or written by hand); deleted, not taken back"
        );
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => Ok(None),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(source) => Err(api_error(source)),
        }
    }

    /// Writes `table` as this node's report for `key`, owned by the policy (`owner_uid`).
    pub async fn publish(
        &self,
        key: &LearnKey,
        owner_uid: &str,
        table: &LearnTable,
    ) -> Result<(), ReportError> {
        let (api, name) = self.api(key)?;
        let namespace = key.namespace.clone().unwrap_or_default();
        let owner = OwnerReference {
            api_version: "vigil.dev/v1alpha1".into(),
            kind: "RuntimePolicy".into(),
            name: key.name.clone(),
            uid: owner_uid.into(),
            ..OwnerReference::default()
        };
        let body = json!({
            "apiVersion": "vigil.dev/v1alpha1",
            "kind": "RuntimePolicyReport",
            "metadata": {"name": name, "namespace": namespace, "ownerReferences": [owner]},
            "spec": {
                "policy": key.name,
                "node": self.node,
                "events": table.events,
                "table": table,
            },
        });
        api.patch(&name, &self.params, &Patch::Apply(&body))
            .await
            .map(drop)
            .map_err(|source| ReportError::Api {
                namespace,
                name,
                source,
            })
    }
}

/// The table a report holds.
pub fn table_of(report: &RuntimePolicyReport) -> Result<LearnTable, ReportError> {
    serde_json::from_value(report.spec.table.clone()).map_err(|source| ReportError::Table {
        namespace: report.metadata.namespace.clone().unwrap_or_default(),
        name: report.metadata.name.clone().unwrap_or_default(),
        source,
    })
}

/// Whether `report` names the RuntimePolicy of uid `uid` among its owners.
fn owned_by(report: &RuntimePolicyReport, uid: &str) -> bool {
    report
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "RuntimePolicy" && o.uid == uid)
}

/// Whether `report` is one a node's agent wrote for the RuntimePolicy `policy` of uid `uid`:
/// owned by it, and named as that node's agent names its report (so one object cannot speak
/// for another node, nor outlive the deletion of the report the node's name leads to).
pub fn is_report_of(report: &RuntimePolicyReport, policy: &str, uid: &str) -> bool {
    report.spec.policy == policy
        && owned_by(report, uid)
        && report.metadata.name.as_deref() == Some(report_name(policy, &report.spec.node).as_str())
}

/// The reports of a RuntimePolicy, and those that claim to be and are not.
#[derive(Debug, Default)]
pub struct Gathered {
    /// (node, table), one per node.
    pub reports: Vec<(String, LearnTable)>,
    /// Names of reports of that policy's name that it does not own, or not named as their
    /// node's agent names them: left alone, and said.
    pub ignored: Vec<String>,
}

/// Every node's report for the RuntimePolicy `namespace/policy` of uid `uid`.
pub async fn all_for(
    client: &Client,
    namespace: &str,
    policy: &str,
    uid: &str,
) -> Result<Gathered, ReportError> {
    let api: Api<RuntimePolicyReport> = Api::namespaced(client.clone(), namespace);
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|source| ReportError::Api {
            namespace: namespace.into(),
            name: format!("(reports of {policy})"),
            source,
        })?;
    let mut gathered = Gathered::default();
    for r in list.items.iter().filter(|r| r.spec.policy == policy) {
        if is_report_of(r, policy, uid) {
            gathered.reports.push((r.spec.node.clone(), table_of(r)?));
        } else {
            gathered
                .ignored
                .push(r.metadata.name.clone().unwrap_or_default());
        }
    }
    Ok(gathered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_names_fit_the_api_servers_limit_and_stay_apart() {
        let name = report_name("web", "node-a");
        assert!(name.starts_with("web.node-a-"), "{name}");
        assert_eq!(name, report_name("web", "node-a"), "stable");
        assert_ne!(report_name("a.b", "c"), report_name("a", "b.c"));
        let long_node = "n".repeat(250);
        let a = report_name("web", &long_node);
        let b = report_name("web", &format!("{long_node}x"));
        assert!(a.len() <= NAME_MAX && b.len() <= NAME_MAX);
        assert_ne!(a, b);
        let dotted = report_name(&"p".repeat(235), &"n".repeat(40));
        assert!(!dotted.contains(".-"), "{dotted}");
    }

    fn report(
        name: &str,
        policy: &str,
        node: &str,
        owner: Option<(&str, &str)>,
    ) -> RuntimePolicyReport {
        let mut r = RuntimePolicyReport::new(
            name,
            RuntimePolicyReportSpec {
                policy: policy.into(),
                node: node.into(),
                events: 1,
                table: serde_json::json!({}),
            },
        );
        r.metadata.owner_references = owner.map(|(kind, uid)| {
            vec![OwnerReference {
                api_version: "vigil.dev/v1alpha1".into(),
                kind: kind.into(),
                name: policy.into(),
                uid: uid.into(),
                ..OwnerReference::default()
            }]
        });
        r
    }

    #[test]
    fn only_a_report_the_policy_owns_under_its_nodes_name_is_merged() {
        let own = report_name("web", "node-a");
        let by_policy = Some(("RuntimePolicy", "uid-1"));
        // (name, spec.policy, spec.node, owner, merged)
        let cases = [
            (own.as_str(), "web", "node-a", by_policy, true),
            // An earlier policy of that name, or none at all.
            (
                &own,
                "web",
                "node-a",
                Some(("RuntimePolicy", "uid-0")),
                false,
            ),
            (&own, "web", "node-a", None, false),
            (&own, "web", "node-a", Some(("ConfigMap", "uid-1")), false),
            // Owned, but speaking for a node whose report has another name.
            (&own, "web", "node-b", by_policy, false),
            ("web.node-a", "web", "node-a", by_policy, false),
            // Another policy's.
            (&own, "api", "node-a", by_policy, false),
        ];
        for (name, policy, node, owner, merged) in cases {
            assert_eq!(
                is_report_of(&report(name, policy, node, owner), "web", "uid-1"),
                merged,
                "{name} {policy} {node} {owner:?}"
            );
        }
    }

    #[test]
    fn the_schema_keeps_the_table_whole() {
        use kube::CustomResourceExt as _;
        let crd = serde_json::to_value(RuntimePolicyReport::crd()).unwrap();
        let table = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["table"];
        assert_eq!(table["x-kubernetes-preserve-unknown-fields"], true);
    }
}
