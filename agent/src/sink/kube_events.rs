//! kubernetes-events: a violation in a pod becomes an `events.k8s.io/v1` Event on that pod,
//! so `kubectl describe pod` shows it. Repeats of the same violation become the Event's
//! `series` (kube-rs's recorder), and each pod gets at most a few writes a minute: a flood in
//! one pod cannot hammer the API server, and what is held back is counted and logged.
use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use super::{Sink, SinkError};
use crate::{
    cloudevents::{Payload, VerdictName, VigilEvent, data::Member},
    event::Action,
};

/// Writes one pod may get per window; the rest are held back and counted.
const PER_POD_BURST: u32 = 5;
const PER_POD_WINDOW: Duration = Duration::from_secs(60);
/// Pods whose windows are remembered; the oldest are forgotten beyond this.
const TRACKED_PODS: usize = 4096;

/// What the sink did since start.
#[derive(Debug, Default)]
pub struct KubeEventStats {
    pub published: AtomicU64,
    /// Violations not written because their pod had its share of the window.
    pub held_back: AtomicU64,
    pub failed: AtomicU64,
}

pub struct KubeEventsSink {
    name: String,
    node: String,
    /// Made at the first delivery: the client needs the runtime, the sinks are built before it.
    recorder: Option<Recorder>,
    windows: HashMap<String, (Instant, u32)>,
    pub stats: Arc<KubeEventStats>,
}

impl KubeEventsSink {
    pub fn new(name: String, node: String) -> Self {
        Self {
            name,
            node,
            recorder: None,
            windows: HashMap::new(),
            stats: Arc::default(),
        }
    }

    async fn recorder(&mut self) -> Result<&Recorder, SinkError> {
        if self.recorder.is_none() {
            let client = kube::Client::try_default()
                .await
                .map_err(|e| SinkError::Kubernetes {
                    sink: self.name.clone(),
                    reason: format!("no Kubernetes client: {e}"),
                })?;
            self.recorder = Some(Recorder::new(
                client,
                Reporter {
                    controller: "vigil-agent".into(),
                    instance: Some(self.node.clone()),
                },
            ));
        }
        Ok(self.recorder.as_ref().expect("made above"))
    }

    /// Whether `pod` may get another write now.
    fn admit(&mut self, pod: &str, now: Instant) -> bool {
        if self.windows.len() >= TRACKED_PODS && !self.windows.contains_key(pod) {
            self.windows
                .retain(|_, (start, _)| now.duration_since(*start) < PER_POD_WINDOW);
        }
        let (start, used) = self.windows.entry(pod.to_string()).or_insert((now, 0));
        if now.duration_since(*start) >= PER_POD_WINDOW {
            (*start, *used) = (now, 0);
        }
        *used += 1;
        *used <= PER_POD_BURST
    }
}

/// The pod an event is about and the Event to write there; `None` for what is not a violation
/// in a known pod (host processes, observed behaviour, losses).
pub fn event_for(event: &VigilEvent) -> Option<(ObjectReference, Event)> {
    if event.verdict != VerdictName::Violation {
        return None;
    }
    let Payload::Behaviour(data) = &event.payload else {
        return None;
    };
    let pod = data.pod.as_ref()?;
    let (namespace, name) = (pod.namespace.clone()?, pod.name.clone()?);
    let (reason, what) = match &data.member {
        Member::Exec(e) => ("ExecDenied", format!("executable {}", e.path)),
        Member::Connect(c) => (
            "ConnectDenied",
            match (&c.daddr, c.dport) {
                (Some(a), Some(p)) if a.is_ipv6() => format!("connect to [{a}]:{p}"),
                (Some(a), Some(p)) => format!("connect to {a}:{p}"),
                _ => format!("{} socket ({})", c.protocol, c.socket_type),
            },
        ),
        Member::Wx(w) => (
            "WriteExecuteMemory",
            format!(
                "{} {} by {}",
                w.syscall.name(),
                w.prot_text,
                data.process.comm
            ),
        ),
        Member::Move(m) => (
            "CgroupEscape",
            format!("pid {} moved out of its policy's cgroup", m.moved_pid),
        ),
    };
    let policy = data.policy.as_ref().map_or_else(String::new, |p| {
        format!(
            "; policy {}{} rule {} ({})",
            p.namespace
                .as_ref()
                .map(|n| format!("{n}/"))
                .unwrap_or_default(),
            p.name,
            p.rule,
            p.text
        )
    });
    let action = match event.action {
        Action::Kill => "killed",
        Action::Deny => "refused",
        Action::Alert => "reported",
        Action::None => "observed",
    };
    let container = data
        .container
        .as_ref()
        .and_then(|c| c.name.clone().flatten())
        .map(|c| format!(" in container {c}"))
        .unwrap_or_default();
    // The text is the watched process's choice: shown, not obeyed, by `kubectl describe` on a
    // terminal; and cut to the 1 kB the API server takes.
    let note: String = super::pretty::visible(&format!("{what}{container}: {action}{policy}"))
        .chars()
        .take(1000)
        .collect();
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(namespace),
        name: Some(name),
        uid: Some(pod.uid.clone()),
        ..ObjectReference::default()
    };
    let event = Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(note),
        action: match event.action {
            Action::Kill => "Kill",
            Action::Deny => "Deny",
            Action::Alert | Action::None => "Alert",
        }
        .into(),
        secondary: None,
    };
    Some((reference, event))
}

impl super::SinkCounters for KubeEventStats {
    fn retries(&self) -> u64 {
        0
    }

    /// Violations not written because their pod had had its share of Events this minute.
    fn refusals(&self) -> Vec<(String, u64)> {
        vec![(
            "rate_limited".into(),
            self.held_back.load(Ordering::Relaxed),
        )]
    }
}

impl Sink for KubeEventsSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver<'a>(
        &'a mut self,
        events: &'a [Arc<VigilEvent>],
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let mut failures = Vec::new();
            for event in events {
                let Some((reference, k8s_event)) = event_for(event) else {
                    continue;
                };
                let pod_key = reference.uid.clone().unwrap_or_default();
                if !self.admit(&pod_key, Instant::now()) {
                    let held = self.stats.held_back.fetch_add(1, Ordering::Relaxed) + 1;
                    if held == 1 || held.is_multiple_of(1000) {
                        tracing::warn!(
                            sink = self.name,
                            held_back = held,
                            "a pod's violations are coming faster than Events are written; held back and counted"
                        );
                    }
                    continue;
                }
                let stats = self.stats.clone();
                let name = self.name.clone();
                let recorder = self.recorder().await?;
                match recorder.publish(&k8s_event, &reference).await {
                    Ok(()) => {
                        stats.published.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(sink = name, pod = ?reference.name, error = %e, "writing an Event failed");
                        failures.push(e.to_string());
                    }
                }
            }
            // Said to the fan-out, which counts them as failed (and a spool keeps them).
            let Some(first) = failures.first() else {
                return Ok(());
            };
            Err(SinkError::Partly {
                sink: self.name.clone(),
                url: "the API server".into(),
                failed_events: failures.len(),
                total_events: events.len(),
                failed_requests: failures.len(),
                first: Box::new(SinkError::Kubernetes {
                    sink: self.name.clone(),
                    reason: first.clone(),
                }),
            })
        })
    }

    fn counters(&self) -> Option<Arc<dyn super::SinkCounters>> {
        Some(self.stats.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cloudevents::{Context, violation},
        event::{Body, Event as VEvent, Exec},
        metadata::{
            cluster::{PodInfo, PodLookup},
            process::Lineage,
        },
        policy::PolicyRef,
    };

    fn exec_violation(pod: Option<&PodLookup>, path: &str) -> VigilEvent {
        let event = VEvent {
            header: crate::event::test_violation(Action::Kill, "x"),
            body: Body::Exec(Exec {
                exe_name: "x".into(),
                ..Exec::plain(path, Vec::new())
            }),
        };
        let policy = PolicyRef {
            kind: "RuntimePolicy".into(),
            name: "web".into(),
            namespace: Some("shop".into()),
            rule: "spec.exec.deny[0]".into(),
            text: "prefix /tmp/".into(),
        };
        let ctx = Context {
            node: "n1".into(),
            cgroup_path: None,
            pod,
        };
        violation(
            &event,
            &Lineage::default(),
            &ctx,
            &crate::cloudevents::shared::Shared::new(policy),
            Action::Kill,
        )
    }

    fn found() -> PodLookup {
        PodLookup::found(&PodInfo {
            namespace: "shop".into(),
            name: "web-0".into(),
            uid: "u-1".into(),
            labels: Default::default(),
            service_account: None,
            owner: None,
            container_id: Some("c".into()),
            container_name: Some("web".into()),
            image: None,
        })
    }

    #[test]
    fn a_violation_in_a_pod_becomes_an_event_on_that_pod() {
        let pod = found();
        let (reference, event) =
            event_for(&exec_violation(Some(&pod), "/tmp/evil")).expect("an Event");
        assert_eq!(
            (
                reference.kind.as_deref(),
                reference.namespace.as_deref(),
                reference.name.as_deref(),
                reference.uid.as_deref()
            ),
            (Some("Pod"), Some("shop"), Some("web-0"), Some("u-1"))
        );
        assert_eq!(
            (event.reason.as_str(), event.action.as_str()),
            ("ExecDenied", "Kill")
        );
        assert_eq!(
            event.note.as_deref(),
            Some(
                "executable /tmp/evil in container web: killed; policy shop/web rule spec.exec.deny[0] (prefix /tmp/)"
            )
        );
        // Host processes have no pod to write on.
        assert!(event_for(&exec_violation(None, "/tmp/evil")).is_none());
        // A hostile path cannot make the note exceed what the API server takes, nor reach a
        // terminal as a control sequence.
        let long = format!("/tmp/{}", "a".repeat(5000));
        let (_, event) = event_for(&exec_violation(Some(&pod), &long)).unwrap();
        assert_eq!(event.note.unwrap().chars().count(), 1000);
        let (_, event) = event_for(&exec_violation(Some(&pod), "/tmp/\u{1b}[2Jx")).unwrap();
        assert!(
            event
                .note
                .unwrap()
                .starts_with("executable /tmp/\\u{1b}[2Jx")
        );
    }

    #[test]
    fn each_pod_gets_a_bounded_number_of_writes_per_window() {
        let mut sink = KubeEventsSink::new("cluster".into(), "n1".into());
        let t0 = Instant::now();
        let admitted = (0..20).filter(|_| sink.admit("pod-a", t0)).count();
        assert_eq!(admitted, PER_POD_BURST as usize);
        assert!(sink.admit("pod-b", t0), "another pod has its own share");
        assert!(sink.admit("pod-a", t0 + PER_POD_WINDOW), "a new window");
    }
}
