//! cgroup path -> pod UID and container id, for the kubelet's systemd and cgroupfs drivers
//! with containerd, CRI-O and Docker naming. Pure string work: the path comes from the
//! cgroup id of an event (see `cgroup::CgroupPaths`).

/// Where in a pod a cgroup is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCgroup {
    /// The pod's UID with dashes, as the API server reports it.
    pub pod_uid: String,
    /// The container's id (64 hex digits), without the runtime's prefix; `None` for the pod's
    /// own cgroup.
    pub container_id: Option<String>,
    /// Which runtime named the container cgroup.
    pub runtime: Option<Runtime>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    /// The cgroupfs driver names a container by its bare id.
    Unnamed,
}

fn is_uid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// `kubepods-besteffort-pod<uid_with_underscores>.slice` (systemd) or `pod<uid>` (cgroupfs).
fn pod_uid(component: &str) -> Option<String> {
    if let Some(slice) = component.strip_suffix(".slice") {
        let uid = slice.rsplit_once("-pod")?.1.replace('_', "-");
        return is_uid(&uid).then_some(uid);
    }
    let uid = component.strip_prefix("pod")?;
    is_uid(uid).then(|| uid.to_string())
}

fn container(component: &str) -> Option<(String, Runtime)> {
    let (name, runtime) = if let Some(rest) = component.strip_prefix("cri-containerd-") {
        (rest, Runtime::Containerd)
    } else if let Some(rest) = component.strip_prefix("crio-") {
        // conmon, CRI-O's monitor process, is not the container.
        if rest.starts_with("conmon-") {
            return None;
        }
        (rest, Runtime::CriO)
    } else if let Some(rest) = component.strip_prefix("docker-") {
        (rest, Runtime::Docker)
    } else {
        (component, Runtime::Unnamed)
    };
    let id = name.strip_suffix(".scope").unwrap_or(name);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| (id.to_string(), runtime))
}

/// Parses a cgroup path relative to the cgroup v2 root. `None` when it is not in a pod.
pub fn parse(path: &str) -> Option<PodCgroup> {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let at = components.iter().position(|c| pod_uid(c).is_some())?;
    let pod_uid = pod_uid(components[at])?;
    let found = components.get(at + 1).and_then(|c| container(c));
    Some(PodCgroup {
        pod_uid,
        container_id: found.as_ref().map(|(id, _)| id.clone()),
        runtime: found.map(|(_, r)| r),
    })
}

/// A container id from `status.containerStatuses[].containerID` (`containerd://<id>`).
pub fn status_id(container_id: &str) -> &str {
    container_id
        .split_once("://")
        .map_or(container_id, |(_, id)| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "8f7c0e1a-3b2d-4c5e-9f60-1a2b3c4d5e6f";
    const CID: &str = "4b825dc642cb6eb9a060e54bf8d69288fbee4904b825dc642cb6eb9a060e54bf";

    fn expect(path: &str, container: Option<&str>, runtime: Option<Runtime>) {
        let parsed = parse(path).unwrap_or_else(|| panic!("{path} not recognised"));
        assert_eq!(parsed.pod_uid, UID, "{path}");
        assert_eq!(parsed.container_id.as_deref(), container, "{path}");
        assert_eq!(parsed.runtime, runtime, "{path}");
    }

    #[test]
    fn systemd_driver_with_each_runtime_and_qos_class() {
        let u = UID.replace('-', "_");
        expect(
            &format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{CID}.scope"
            ),
            Some(CID),
            Some(Runtime::Containerd),
        );
        expect(
            &format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/crio-{CID}.scope"
            ),
            Some(CID),
            Some(Runtime::CriO),
        );
        expect(
            &format!("/kubepods.slice/kubepods-pod{u}.slice/docker-{CID}.scope"),
            Some(CID),
            Some(Runtime::Docker),
        );
        // The pod's own cgroup, and CRI-O's conmon, are not containers.
        expect(
            &format!("/kubepods.slice/kubepods-pod{u}.slice"),
            None,
            None,
        );
        expect(
            &format!("/kubepods.slice/kubepods-pod{u}.slice/crio-conmon-{CID}.scope"),
            None,
            None,
        );
        // Nested under another slice (kind, or a kubelet in a systemd unit).
        expect(
            &format!(
                "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{u}.slice/cri-containerd-{CID}.scope"
            ),
            Some(CID),
            Some(Runtime::Containerd),
        );
    }

    #[test]
    fn cgroupfs_driver_with_bare_and_prefixed_ids() {
        expect(
            &format!("/kubepods/burstable/pod{UID}/{CID}"),
            Some(CID),
            Some(Runtime::Unnamed),
        );
        expect(
            &format!("/kubepods/besteffort/pod{UID}/crio-{CID}"),
            Some(CID),
            Some(Runtime::CriO),
        );
        expect(
            &format!("/kubepods/pod{UID}/{CID}"),
            Some(CID),
            Some(Runtime::Unnamed),
        );
        // A process somewhere below the container cgroup still belongs to it.
        expect(
            &format!("/kubepods/pod{UID}/{CID}/init"),
            Some(CID),
            Some(Runtime::Unnamed),
        );
    }

    #[test]
    fn host_cgroups_and_look_alikes_are_not_pods() {
        assert_eq!(parse("/system.slice/containerd.service"), None);
        assert_eq!(parse("/user.slice/user-0.slice/session-1.scope"), None);
        assert_eq!(parse("/"), None);
        assert_eq!(parse("/kubepods.slice/kubepods-podnot-a-uid.slice"), None);
        assert_eq!(parse(&format!("/kubepods/pod{UID}x/{CID}")), None);
    }

    #[test]
    fn status_ids_lose_their_scheme() {
        assert_eq!(status_id(&format!("containerd://{CID}")), CID);
        assert_eq!(status_id(&format!("cri-o://{CID}")), CID);
        assert_eq!(status_id(CID), CID);
    }
}
