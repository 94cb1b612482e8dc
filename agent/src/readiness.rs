//! `vigil check-ready`: whether the agent on every node the DaemonSet covers answers `/readyz`
//! (what `helm test` runs). It asks the API server which pods the DaemonSet should have, then
//! each pod itself; a node whose agent is missing, not running or not ready fails the check.
use std::time::Duration;

use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::Pod};
use kube::{Api, api::ListParams};

#[derive(Debug, thiserror::Error)]
pub enum ReadinessError {
    #[error("no Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("daemonset {namespace}/{name}: {source}")]
    DaemonSet {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("daemonset {namespace}/{name} has no matchLabels selector")]
    Selector { namespace: String, name: String },
    #[error("listing the pods of daemonset {namespace}/{name}: {source}")]
    Pods {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("HTTP client: {0}")]
    Http(#[source] reqwest::Error),
}

/// One agent pod's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentAnswer {
    pub node: String,
    pub pod: String,
    /// `None`: ready; else why not.
    pub problem: Option<String>,
}

/// The check's outcome: how many agents the DaemonSet should have, and each pod's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub desired: usize,
    pub answers: Vec<AgentAnswer>,
}

impl Readiness {
    pub fn ready(&self) -> usize {
        self.answers.iter().filter(|a| a.problem.is_none()).count()
    }

    /// Every node the DaemonSet covers has an agent that answered ready.
    pub fn all_ready(&self) -> bool {
        self.desired > 0 && self.ready() >= self.desired
    }
}

/// How long one agent may take to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Asks every pod of DaemonSet `namespace/name` for `/readyz` on `port`.
pub async fn check(namespace: &str, name: &str, port: u16) -> Result<Readiness, ReadinessError> {
    let client = kube::Client::try_default()
        .await
        .map_err(ReadinessError::Client)?;
    let ds = Api::<DaemonSet>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .map_err(|source| ReadinessError::DaemonSet {
            namespace: namespace.into(),
            name: name.into(),
            source,
        })?;
    let desired = ds
        .status
        .as_ref()
        .map_or(0, |s| s.desired_number_scheduled.max(0) as usize);
    let labels = ds
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .filter(|l| !l.is_empty())
        .ok_or_else(|| ReadinessError::Selector {
            namespace: namespace.into(),
            name: name.into(),
        })?;
    let selector: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let pods = Api::<Pod>::namespaced(client, namespace)
        .list(&ListParams::default().labels(&selector.join(",")))
        .await
        .map_err(|source| ReadinessError::Pods {
            namespace: namespace.into(),
            name: name.into(),
            source,
        })?;
    let http = reqwest::Client::builder()
        .timeout(ANSWER_TIMEOUT)
        .build()
        .map_err(ReadinessError::Http)?;
    let mut answers = Vec::new();
    for pod in pods.items {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| "(unscheduled)".into());
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
        let problem = match ip {
            None => Some("no pod IP yet".to_string()),
            Some(ip) => ask(&http, &ip, port).await.err(),
        };
        answers.push(AgentAnswer {
            node,
            pod: pod_name,
            problem,
        });
    }
    answers.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(Readiness { desired, answers })
}

/// `GET http://IP:PORT/readyz`: ready only on `200`.
async fn ask(http: &reqwest::Client, ip: &str, port: u16) -> Result<(), String> {
    // An IPv6 pod address goes in brackets.
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    let url = format!("http://{host}:{port}/readyz");
    let response = http
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if status == reqwest::StatusCode::OK {
        Ok(())
    } else {
        Err(format!("{url} answered {status}: {}", body.trim()))
    }
}

/// The lines `vigil check-ready` prints.
pub fn report(r: &Readiness) -> Vec<String> {
    let mut lines: Vec<String> = r
        .answers
        .iter()
        .map(|a| match &a.problem {
            None => format!("node {}: agent {} ready", a.node, a.pod),
            Some(why) => format!("node {}: agent {} NOT ready: {why}", a.node, a.pod),
        })
        .collect();
    lines.push(format!("{} of {} agents ready", r.ready(), r.desired));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(node: &str, problem: Option<&str>) -> AgentAnswer {
        AgentAnswer {
            node: node.into(),
            pod: format!("vigil-{node}"),
            problem: problem.map(Into::into),
        }
    }

    #[test]
    fn a_missing_or_unready_agent_fails_the_check() {
        let all = Readiness {
            desired: 2,
            answers: vec![answer("a", None), answer("b", None)],
        };
        assert!(all.all_ready());
        assert_eq!(report(&all).last().unwrap(), "2 of 2 agents ready");
        let one_missing = Readiness {
            desired: 2,
            answers: vec![answer("a", None)],
        };
        assert!(!one_missing.all_ready());
        let unready = Readiness {
            desired: 2,
            answers: vec![answer("a", None), answer("b", Some("answered 503"))],
        };
        assert!(!unready.all_ready());
        assert_eq!(
            report(&unready)[1],
            "node b: agent vigil-b NOT ready: answered 503"
        );
        let nothing = Readiness {
            desired: 0,
            answers: Vec::new(),
        };
        assert!(
            !nothing.all_ready(),
            "a DaemonSet covering no node proves nothing"
        );
    }
}
