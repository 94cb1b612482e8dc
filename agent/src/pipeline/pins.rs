//! What happens to pinned enforcement when the agent stops: kept for the next agent
//! (a restart, an upgrade, a node drain), or removed because the agent is being uninstalled.
//!
//! Only the API server can tell the two apart: `helm uninstall` deletes the DaemonSet before
//! its pods, and right after it the chart's Role and ServiceAccount, so by the time the pod
//! is stopped the agent finds its DaemonSet gone or its own access revoked (401, 403). A
//! restart or an upgrade keeps all three. When the answer cannot be had otherwise (no
//! cluster, no pod name, the API server unreachable), the pins stay: a node left enforcing
//! the last policies is the safe side of the mistake, and `vigil unpin` clears it.
use std::path::Path;

use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::Pod};
use kube::Api;

/// Why the pins stay or go.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    Keep(String),
    Remove(String),
}

/// Decides from the agent's own pod (`POD_NAME`, `POD_NAMESPACE`, set by the chart) and its
/// owning DaemonSet.
pub(crate) async fn decide(client: Option<&kube::Client>) -> Decision {
    let Some(client) = client else {
        return Decision::Keep("not in a cluster".into());
    };
    let (Ok(name), Ok(namespace)) = (std::env::var("POD_NAME"), std::env::var("POD_NAMESPACE"))
    else {
        return Decision::Keep("POD_NAME and POD_NAMESPACE are not set".into());
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let pod = match pods.get(&name).await {
        Ok(pod) => pod,
        Err(err) if revoked(&err) => {
            return Decision::Remove(format!("the chart's access is gone ({err})"));
        }
        Err(err) => return Decision::Keep(format!("cannot read pod {namespace}/{name}: {err}")),
    };
    let Some(owner) = pod
        .metadata
        .owner_references
        .unwrap_or_default()
        .into_iter()
        .find(|o| o.kind == "DaemonSet")
    else {
        return Decision::Keep(format!("pod {namespace}/{name} has no DaemonSet owner"));
    };
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &namespace);
    match daemonsets.get_opt(&owner.name).await {
        Ok(None) => Decision::Remove(format!("DaemonSet {namespace}/{} is gone", owner.name)),
        Ok(Some(ds)) if ds.metadata.uid.as_deref() != Some(owner.uid.as_str()) => {
            Decision::Remove(format!("DaemonSet {namespace}/{} was replaced", owner.name))
        }
        Ok(Some(ds)) if ds.metadata.deletion_timestamp.is_some() => Decision::Remove(format!(
            "DaemonSet {namespace}/{} is being deleted",
            owner.name
        )),
        Ok(Some(_)) => Decision::Keep(format!(
            "DaemonSet {namespace}/{} stays: the next agent takes over",
            owner.name
        )),
        Err(err) if revoked(&err) => {
            Decision::Remove(format!("the chart's access is gone ({err})"))
        }
        Err(err) => Decision::Keep(format!(
            "cannot read DaemonSet {namespace}/{}: {err}",
            owner.name
        )),
    }
}

/// The agent's credentials or the chart's Role no longer exist.
fn revoked(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 401 || status.code == 403)
}

/// Applies [`decide`] to the pins under `dir`.
pub(crate) async fn release(dir: &Path, client: Option<&kube::Client>) {
    match decide(client).await {
        Decision::Keep(why) => {
            tracing::info!(dir = %dir.display(), why, "enforcement stays pinned")
        }
        Decision::Remove(why) => match crate::ebpf::pin::remove_all(dir) {
            Ok(()) => tracing::info!(dir = %dir.display(), why, "pinned enforcement removed"),
            Err(err) => tracing::error!(
                dir = %dir.display(),
                why,
                %err,
                "removing the pinned enforcement failed; `vigil unpin` removes it"
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_a_cluster_the_pins_stay() {
        assert_eq!(
            decide(None).await,
            Decision::Keep("not in a cluster".into())
        );
    }
}
