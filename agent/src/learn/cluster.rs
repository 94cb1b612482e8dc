//! `vigil learn --namespace NS --selector app=web`: learning through the agents already
//! deployed. The command puts a RuntimePolicy in mode `Learn` in place for the pods, waits,
//! merges the reports every node's agent published for it (`report.rs`) and takes the policy
//! away again; the caller writes the merged table as the RuntimePolicy to review, naming the
//! Services its destinations were.
use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use serde_json::json;
use tokio::sync::watch;

use super::{
    LearnError,
    report::{self, RuntimePolicyReport},
    table::{LearnTable, Limits},
    write::ServiceIndex,
};
use crate::policy::{Mode, Protocol, crd::RuntimePolicy};

/// The field manager of the Learn policy this command puts in place.
const MANAGER: &str = "vigil-learn";

/// What a cluster learn run watches and for how long.
#[derive(Debug, Clone)]
pub struct ClusterLearn {
    pub namespace: String,
    /// The pods' labels (`--selector app=web,tier=front`).
    pub labels: BTreeMap<String, String>,
    /// The Learn policy's name, and the written policy's.
    pub name: String,
    /// Learn this long; `None`: until SIGINT or SIGTERM.
    pub duration: Option<Duration>,
    /// After that, how long the agents have for their last reports (they publish what
    /// changed every `--learn-report-interval`, 15 s by default).
    pub report_wait: Duration,
    pub limits: Limits,
    /// Leave the Learn policy in place (learning goes on; a later run takes it up again).
    pub keep: bool,
}

/// What the nodes learned, merged.
#[derive(Debug)]
pub struct ClusterOutcome {
    pub table: LearnTable,
    /// The nodes that reported.
    pub nodes: Vec<String>,
    /// Where the cluster's Services answer, for `allowServices`.
    pub services: ServiceIndex,
}

/// `app=web,tier=front` as labels; only equality, as `podSelector.matchLabels` has it.
pub fn parse_selector(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = part.split_once('=') else {
            return Err(format!(
                "{part:?}: only key=value terms are supported (they become matchLabels)"
            ));
        };
        let key = key.trim();
        let value = value.trim().trim_start_matches('=');
        if key.is_empty() || key.ends_with('!') {
            return Err(format!(
                "{part:?}: only key=value terms are supported (they become matchLabels)"
            ));
        }
        labels.insert(key.to_owned(), value.trim().to_owned());
    }
    Ok(labels)
}

fn api_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> LearnError {
    let what = what.into();
    move |source| LearnError::Cluster { what, source }
}

/// Puts the Learn policy in place: made when missing, taken up again when a policy of that
/// name already learns for the same pods; any other policy of that name is left alone.
/// Whether it was made, and its uid (the owner its reports name).
async fn put_learn_policy(client: &Client, o: &ClusterLearn) -> Result<(bool, String), LearnError> {
    let api: Api<RuntimePolicy> = Api::namespaced(client.clone(), &o.namespace);
    let id = format!("RuntimePolicy {}/{}", o.namespace, o.name);
    if let Some(found) = api.get_opt(&o.name).await.map_err(api_error(&id))? {
        let same_pods = found.spec.pod_selector.match_expressions.is_empty()
            && found.spec.pod_selector.match_labels == o.labels;
        if found.spec.mode != Mode::Learn || !same_pods {
            return Err(LearnError::PolicyInTheWay {
                policy: id,
                mode: format!("{:?}", found.spec.mode),
            });
        }
        return Ok((false, uid_of(&found, &id)?));
    }
    let body = json!({
        "apiVersion": "vigil.dev/v1alpha1",
        "kind": "RuntimePolicy",
        "metadata": {
            "name": o.name,
            "namespace": o.namespace,
            "labels": {"app.kubernetes.io/managed-by": MANAGER},
        },
        "spec": {"podSelector": {"matchLabels": o.labels}, "mode": "Learn"},
    });
    let made = api
        .patch(&o.name, &PatchParams::apply(MANAGER), &Patch::Apply(&body))
        .await
        .map_err(api_error(&id))?;
    Ok((true, uid_of(&made, &id)?))
}

fn uid_of(policy: &RuntimePolicy, id: &str) -> Result<String, LearnError> {
    policy
        .metadata
        .uid
        .clone()
        .ok_or_else(|| LearnError::NoUid { policy: id.into() })
}

/// Waits `duration` (or for ever), or until `stop` turns true.
async fn wait(duration: Option<Duration>, stop: &mut watch::Receiver<bool>) {
    let stopped = stop.wait_for(|s| *s);
    match duration {
        Some(d) => {
            tokio::select! {
                () = tokio::time::sleep(d) => {}
                _ = stopped => {}
            }
        }
        None => {
            let _ = stopped.await;
        }
    }
}

/// Learns through the deployed agents; see the module's comment.
pub async fn learn(
    client: Client,
    o: &ClusterLearn,
    mut stop: watch::Receiver<bool>,
) -> Result<ClusterOutcome, LearnError> {
    let (made, uid) = put_learn_policy(&client, o).await?;
    eprintln!(
        "RuntimePolicy {}/{} {} in mode Learn for the pods labelled {}; learning {}",
        o.namespace,
        o.name,
        if made { "put" } else { "already" },
        labels_text(&o.labels),
        match o.duration {
            Some(d) => format!("for {} s", d.as_secs()),
            None => "until interrupted".into(),
        }
    );
    wait(o.duration, &mut stop).await;
    eprintln!(
        "waiting {} s for the agents' last reports",
        o.report_wait.as_secs()
    );
    tokio::time::sleep(o.report_wait).await;

    let report::Gathered { reports, ignored } =
        report::all_for(&client, &o.namespace, &o.name, &uid).await?;
    for name in &ignored {
        eprintln!(
            "warning: RuntimePolicyReport {}/{name} names policy {} but is not one of its reports (another owner than RuntimePolicy {}/{} of uid {uid}, or not named as its node's agent names it): ignored, left in place",
            o.namespace, o.name, o.namespace, o.name
        );
    }
    let mut table = LearnTable::new(o.limits);
    let mut nodes = Vec::new();
    for (node, learned) in &reports {
        table.merge(learned);
        nodes.push(node.clone());
    }
    let services = service_index(&client).await?;
    if !o.keep {
        take_away(&client, o, &reports).await?;
    }
    Ok(ClusterOutcome {
        table,
        nodes,
        services,
    })
}

fn labels_text(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Deletes the Learn policy and the reports read: the API server's garbage collector would
/// delete the reports with their owner, but not before the learned policy of the same name
/// could be applied.
async fn take_away(
    client: &Client,
    o: &ClusterLearn,
    reports: &[(String, LearnTable)],
) -> Result<(), LearnError> {
    let id = format!("RuntimePolicy {}/{}", o.namespace, o.name);
    let policies: Api<RuntimePolicy> = Api::namespaced(client.clone(), &o.namespace);
    match policies.delete(&o.name, &DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(source) => return Err(LearnError::Cluster { what: id, source }),
    }
    let api: Api<RuntimePolicyReport> = Api::namespaced(client.clone(), &o.namespace);
    for (node, _) in reports {
        let name = report::report_name(&o.name, node);
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => {
                return Err(LearnError::Cluster {
                    what: format!("RuntimePolicyReport {}/{name}", o.namespace),
                    source,
                });
            }
        }
    }
    Ok(())
}

fn protocol(name: Option<&str>) -> Option<Protocol> {
    match name.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        _ => None,
    }
}

/// Where every Service of the cluster answers: its ClusterIPs at its ports, and its
/// endpoints at theirs.
async fn service_index(client: &Client) -> Result<ServiceIndex, LearnError> {
    let mut index = ServiceIndex::new();
    let services: Api<Service> = Api::all(client.clone());
    for svc in services
        .list(&ListParams::default())
        .await
        .map_err(api_error("Services"))?
    {
        let name = format!(
            "{}/{}",
            svc.metadata.namespace.as_deref().unwrap_or_default(),
            svc.metadata.name.as_deref().unwrap_or_default()
        );
        let Some(spec) = &svc.spec else { continue };
        let ips = spec
            .cluster_ips
            .clone()
            .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
            .unwrap_or_default();
        for ip in ips.iter().filter_map(|ip| ip.parse().ok()) {
            for port in spec.ports.iter().flatten() {
                let (Some(p), Ok(number)) =
                    (protocol(port.protocol.as_deref()), u16::try_from(port.port))
                else {
                    continue;
                };
                index.insert((p, ip, number), name.clone());
            }
        }
    }
    let slices: Api<EndpointSlice> = Api::all(client.clone());
    for slice in slices
        .list(&ListParams::default())
        .await
        .map_err(api_error("EndpointSlices"))?
    {
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
        else {
            continue;
        };
        let name = format!(
            "{}/{service}",
            slice.metadata.namespace.as_deref().unwrap_or_default()
        );
        for endpoint in &slice.endpoints {
            for addr in endpoint.addresses.iter().filter_map(|a| a.parse().ok()) {
                for port in slice.ports.iter().flatten() {
                    let (Some(p), Some(number)) = (
                        protocol(port.protocol.as_deref()),
                        port.port.and_then(|n| u16::try_from(n).ok()),
                    ) else {
                        continue;
                    };
                    index
                        .entry((p, addr, number))
                        .or_insert_with(|| name.clone());
                }
            }
        }
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_are_label_equalities_and_anything_else_is_refused() {
        assert_eq!(
            parse_selector("app=web, tier==front").unwrap(),
            [("app", "web"), ("tier", "front")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into()
        );
        assert!(parse_selector("").unwrap().is_empty());
        for bad in ["app", "app!=web", "app in (web)"] {
            let err = parse_selector(bad).unwrap_err();
            assert!(err.contains("key=value"), "{bad}: {err}");
        }
    }
}
