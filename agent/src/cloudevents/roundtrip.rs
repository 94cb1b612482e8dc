//! Every shape of event survives [`VigilEvent::to_cloudevent`] and
//! [`VigilEvent::from_cloudevent`] unchanged: what a spool keeps is what was taken.
use std::net::{IpAddr, Ipv4Addr};

use ::cloudevents::AttributesWriter;

use super::*;
use crate::{
    behaviour::{
        cgroup_move::Move,
        connect::{Connect, ConnectHook, Protocol},
        wx::{Wx, WxSyscall},
    },
    event::{Exec, Header, Verdict, test_violation},
    metadata::{
        cluster::{Owner, PodInfo},
        process::{Lineage, ProcessInfo},
    },
};

fn policy() -> PolicyRef {
    PolicyRef {
        kind: "RuntimePolicy".into(),
        name: "web".into(),
        namespace: Some("shop".into()),
        rule: "spec.exec.deny[0]".into(),
        text: "prefix /tmp/".into(),
    }
}

fn pod(owner: Option<Owner>, service_account: Option<String>) -> PodLookup {
    PodLookup::found(&PodInfo {
        namespace: "shop".into(),
        name: "web-0".into(),
        uid: "u-1".into(),
        labels: [("app".to_string(), "web".to_string())].into(),
        service_account,
        owner,
        container_id: Some("c0ffee".into()),
        container_name: None,
        image: Some("nginx:1".into()),
    })
}

/// An exec the kernel found in the container's writable layer.
fn drifted() -> Exec {
    Exec {
        drift: Some(crate::behaviour::exec::Drift {
            why: crate::behaviour::exec::DriftWhy::UpperLayer,
            origin: agent_common::FileOrigin {
                fs_magic: 0x794c_7630,
                dev: (1 << 20) | 45,
                ino: 1234,
                change: 1 << 40,
            },
        }),
        // Identified by content: a digest that matched no `sha256` entry.
        sha256: Some("ab".repeat(32)),
        ..Exec::plain("/tmp/shell", vec!["shell".into()])
    }
}

fn bodies() -> Vec<Body> {
    let wx = Wx {
        syscall: WxSyscall::PkeyMprotect,
        prot: 7,
        flags: 0x22,
        addr: 0x7f00_0000_0000,
        len: 4096,
        fd: -1,
        read_implies_exec: false,
        write_exec: true,
        shared_exec: false,
        foreign_write: false,
        compat: true,
        exec_stack: false,
        unjudged: false,
        unverifiable: false,
        extra: 3,
        exe_path: None,
    };
    vec![
        Body::Exec(Exec {
            memfd: true,
            ..Exec::plain("/tmp/x\\xff", vec!["x".into(), "-c".into()])
        }),
        Body::Exec(drifted()),
        Body::Connect(Connect {
            protocol: Protocol::Udp,
            ipv4: true,
            daddr: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            dport: Some(1023),
            hook: ConnectHook::Sendmsg,
            sock_type: 2,
        }),
        Body::Connect(Connect {
            protocol: Protocol::Other(1),
            ipv4: false,
            daddr: None,
            dport: None,
            hook: ConnectHook::Socket,
            sock_type: 3,
        }),
        Body::Wx(wx),
        Body::Move(Move {
            from_cgroup: 7,
            to_cgroup: 8,
            moved_pid: 42,
        }),
    ]
}

fn assert_round_trips(event: &VigilEvent) {
    let ce = event.to_cloudevent().expect("a CloudEvent");
    // What the sinks write and a spool keeps: written directly, it is the same JSON object as
    // the SDK's own serialization of the event.
    let mut bytes = Vec::new();
    event.write_json(&mut bytes).expect("JSON");
    let direct: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
    let sdk = serde_json::to_value(&ce).expect("JSON");
    assert_eq!(direct, sdk, "{}", String::from_utf8_lossy(&bytes));
    let back: CloudEvent = serde_json::from_slice(&bytes).expect("a CloudEvent again");
    assert_eq!(
        &VigilEvent::from_cloudevent(&back).expect("a Vigil event"),
        event,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
}

#[test]
fn every_behaviour_in_every_context_reads_back_as_it_was() {
    let lineage = Lineage {
        process: ProcessInfo {
            comm: "x".into(),
            exe: Some("/tmp/x".into()),
            args: vec!["x".into()].into(),
        },
        parent: None,
    };
    let owned = pod(
        Some(Owner {
            kind: "Deployment".into(),
            name: "web".into(),
        }),
        Some("default".into()),
    );
    // A bare pod: owner and service account present as null.
    let bare = pod(None, None);
    let unknown = PodLookup::Unknown {
        uid: "u-2".into(),
        container_id: None,
    };
    for body in bodies() {
        for lookup in [None, Some(&owned), Some(&bare), Some(&unknown)] {
            let ctx = Context {
                node: "n1".into(),
                cgroup_path: Some("/kubepods/x".into()),
                pod: lookup,
            };
            let observed_event = Event {
                header: Header::new(Verdict::Observed, 42, "x"),
                body: body.clone(),
            };
            assert_round_trips(&observed(&observed_event, &lineage, &ctx));
            let mut flood = Event {
                header: test_violation(Action::Kill, "x"),
                body: body.clone(),
            };
            flood.header.count = 9;
            flood.header.first_ns = 1;
            assert_round_trips(&violation(
                &flood,
                &Lineage::default(),
                &ctx,
                &Shared::new(policy()),
                Action::Kill,
            ));
        }
    }
}

#[test]
fn loss_events_read_back_as_they_were() {
    let totals = LossReport {
        reader_queue_full: 3,
        spool_dropped: 2,
        probe_errors: [("sys_exit_open_mem/read".to_string(), 1)].into(),
        ..LossReport::default()
    };
    assert_round_trips(&loss("n1", &totals, &totals));
}

#[test]
fn a_cloudevent_that_is_not_vigils_is_refused_naming_the_field() {
    let event = loss("n1", &LossReport::default(), &LossReport::default());
    let mut ce = event.to_cloudevent().unwrap();
    ce.set_type("com.example.other");
    let err = VigilEvent::from_cloudevent(&ce).unwrap_err();
    assert!(err.to_string().contains(": type: "), "{err}");
    ce.set_type("dev.vigil.exec.v1");
    let err = VigilEvent::from_cloudevent(&ce).unwrap_err();
    assert!(
        err.to_string().contains(": data: missing field `process`"),
        "{err}"
    );
    let exec = observed(
        &Event {
            header: Header::new(Verdict::Observed, 42, "x"),
            body: bodies().remove(0),
        },
        &Lineage::default(),
        &Context::host("n1", None),
    );
    let mut ce = exec.to_cloudevent().unwrap();
    ce.set_type("dev.vigil.connect.v1");
    let err = VigilEvent::from_cloudevent(&ce).unwrap_err();
    assert!(
        err.to_string()
            .contains(": type: dev.vigil.connect.v1 with the data of dev.vigil.exec.v1"),
        "{err}"
    );
    let mut ce = event.to_cloudevent().unwrap();
    ce.set_extension("vigilaction", "explode");
    let err = VigilEvent::from_cloudevent(&ce).unwrap_err();
    assert!(err.to_string().contains(": vigilaction: "), "{err}");
    let mut ce = event.to_cloudevent().unwrap();
    ce.set_id("x".repeat(65));
    let err = VigilEvent::from_cloudevent(&ce).unwrap_err();
    assert!(
        err.to_string()
            .contains(": id: 65 bytes, longer than any id Vigil makes"),
        "{err}"
    );
}

/// Drift is said of a pod's process, with where the file sits, in the data and in words; a
/// host process has no image to drift from, so the kernel's finding is not passed on.
#[test]
fn drift_is_said_of_a_pods_file_with_where_it_sits_and_never_of_a_host_process() {
    let event = Event {
        header: test_violation(Action::Kill, "shell"),
        body: Body::Exec(drifted()),
    };
    let owned = pod(None, None);
    let in_pod = Context {
        node: "n1".into(),
        cgroup_path: Some("/kubepods/x".into()),
        pod: Some(&owned),
    };
    let exec_of = |ctx: &Context<'_>| {
        let made = violation(
            &event,
            &Lineage::default(),
            ctx,
            &Shared::new(policy()),
            Action::Kill,
        );
        let json = serde_json::to_value(made.to_cloudevent().expect("a CloudEvent")).unwrap();
        json["data"]["exec"].clone()
    };
    let exec = exec_of(&in_pod);
    assert_eq!(exec["drift"], true);
    assert_eq!(
        exec["origin"],
        serde_json::json!({"layer": "upperLayer", "filesystem": "overlay", "device": "1:45", "inode": 1234})
    );
    let data: crate::behaviour::exec::ExecData = serde_json::from_value(exec).unwrap();
    assert!(
        data.line().contains(
            "drift: written into the container after it started (overlay 1:45, inode 1234)"
        ),
        "{}",
        data.line()
    );
    let host = Context::host("n1", None);
    let exec = exec_of(&host);
    assert!(
        exec.get("drift").is_none() && exec.get("origin").is_none(),
        "{exec}"
    );
}
