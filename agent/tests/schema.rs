//! `docs/event.schema.json` against the events the code builds: each type, built through the
//! real `vigil::cloudevents` functions, validates, and drifted events are refused. No root.

#[expect(
    dead_code,
    reason = "the helpers are shared by several test binaries; each uses a part"
)]
mod common;

use std::net::IpAddr;

use serde_json::{Value, json};
use vigil::{
    cloudevents::{Context, LossReport, loss, observed},
    ebpf::KernelLosses,
    event::{Body, Connect, ConnectHook, Event, Exec, Header, Protocol, Wx, WxSyscall},
    metadata::process::{Lineage, ProcessInfo},
};

const SCHEMA: &str = include_str!("../../docs/event.schema.json");

fn schema() -> Value {
    serde_json::from_str(SCHEMA).expect("docs/event.schema.json is JSON")
}

fn errors(event: &Value) -> Vec<String> {
    common::schema_errors(event)
}

fn assert_valid(event: &Value) {
    let errors = errors(event);
    assert!(
        errors.is_empty(),
        "event does not match the schema:\n{}\n{event:#}",
        errors.join("\n")
    );
}

/// Refused, and for the expected reason: some error is at `path`.
fn assert_invalid(event: &Value, path: &str) {
    let errors = errors(event);
    assert!(
        errors.iter().any(|e| e.starts_with(path)),
        "expected an error at {path:?}, got {errors:?} for\n{event:#}"
    );
}

fn header(comm: &str) -> Header {
    Header {
        verdict: vigil::event::Verdict::Observed,
        boot_ns: 5_000_000_000,
        cgroup_id: 7123,
        pid: 4242,
        tid: 4242,
        ppid: 4200,
        uid: 1000,
        gid: 1000,
        comm: comm.into(),
        count: 1,
        first_ns: 0,
        ends_burst: false,
        target: 0,
    }
}

fn lineage(exe: Option<&str>, args: &[&str], parent: bool) -> Lineage {
    Lineage {
        process: ProcessInfo {
            comm: "curl".into(),
            exe: exe.map(Into::into),
            args: args.iter().map(|a| a.to_string()).collect(),
        },
        parent: parent.then(|| ProcessInfo {
            comm: "bash".into(),
            exe: Some("/usr/bin/bash".into()),
            args: vec!["bash".into()].into(),
        }),
    }
}

fn build(body: Body, lineage: &Lineage, cgroup_path: Option<&str>) -> Value {
    let event = Event {
        header: header("curl"),
        body,
    };
    let ctx = Context::host("node-a", cgroup_path.map(Into::into));
    serde_json::to_value(
        observed(&event, lineage, &ctx)
            .to_cloudevent()
            .expect("building the event"),
    )
    .expect("serializing the event")
}

fn exec_event() -> Value {
    let args = ["curl", "-s", "http://127.0.0.1/"];
    build(
        Body::Exec(Exec {
            exe_name: "curl".into(),
            ..Exec::plain(
                "/usr/bin/curl",
                args.iter().map(|a| a.to_string()).collect(),
            )
        }),
        &lineage(Some("/usr/bin/curl"), &args, true),
        Some("/kubepods.slice/kubepods-pod1.slice/cri-containerd-abc.scope"),
    )
}

fn connect(hook: ConnectHook, daddr: Option<&str>) -> Value {
    let daddr: Option<IpAddr> = daddr.map(|d| d.parse().unwrap());
    let (protocol, sock_type) = match hook {
        ConnectHook::Connect => (Protocol::Tcp, 1),
        ConnectHook::Sendmsg => (Protocol::Udp, 2),
        ConnectHook::Socket => (Protocol::Other(1), 3),
    };
    build(
        Body::Connect(Connect {
            protocol,
            ipv4: daddr.is_none_or(|a| a.is_ipv4()),
            daddr,
            dport: daddr.map(|_| 443),
            hook,
            sock_type,
        }),
        &lineage(None, &[], false),
        None,
    )
}

fn wx(syscall: WxSyscall, extra: u32) -> Value {
    let personality = syscall == WxSyscall::Personality;
    let shmat = syscall == WxSyscall::Shmat;
    // The old mmap's failing closed: asked for rw- in memory the process can rewrite.
    let unverifiable = syscall == WxSyscall::OldMmap;
    build(
        Body::Wx(Wx {
            syscall,
            prot: if personality {
                0
            } else if unverifiable {
                3
            } else {
                7
            },
            flags: if syscall == WxSyscall::Mmap { 0x22 } else { 0 },
            addr: if personality { 0 } else { 0x7f3a_1c00_0000 },
            len: if personality { 0 } else { 4096 },
            fd: -1,
            read_implies_exec: personality,
            write_exec: !personality && !shmat && !unverifiable,
            shared_exec: shmat,
            foreign_write: false,
            compat: unverifiable,
            exec_stack: false,
            unjudged: false,
            unverifiable,
            extra,
            exe_path: None,
        }),
        &lineage(Some("/usr/bin/node"), &["node", "app.js"], true),
        Some("/system.slice/app.service"),
    )
}

fn loss_event() -> Value {
    let totals = LossReport {
        kernel: KernelLosses {
            exec: 0,
            connect: 2,
            wx: 310,
            moves: 1,
        },
        held_back: KernelLosses {
            wx: 9,
            ..KernelLosses::default()
        },
        reader_queue_full: 5,
        undecodable: 0,
        sink_queue_full: 4,
        sink_failed: 0,
        spool_dropped: 6,
        spool_corrupt: 1,
        probe_errors: [("sys_exit_open_mem/read".to_string(), 3)].into(),
    };
    let delta = totals.since(&LossReport {
        kernel: KernelLosses {
            exec: 0,
            connect: 0,
            wx: 100,
            moves: 0,
        },
        ..LossReport::default()
    });
    serde_json::to_value(
        loss("node-a", &delta, &totals)
            .to_cloudevent()
            .expect("building the loss event"),
    )
    .expect("serializing the loss event")
}

#[test]
fn the_schema_is_a_valid_draft_2020_12_schema_and_compiles() {
    let schema = schema();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    jsonschema::meta::validate(&schema)
        .unwrap_or_else(|e| panic!("the schema violates its meta-schema: {e}"));
    common::event_schema();
}

#[test]
fn exec_events_match_the_schema() {
    let e = exec_event();
    assert_eq!(e["type"], "dev.vigil.exec.v1");
    assert_valid(&e);

    // An unknown executable, no parent, an unresolved cgroup: all nullable.
    let mut bare = e.clone();
    bare["data"]["process"]["exe"] = Value::Null;
    bare["data"]["parent"] = Value::Null;
    bare["data"]["cgroup"]["path"] = Value::Null;
    assert_valid(&bare);
}

#[test]
fn connect_events_match_the_schema() {
    for (hook, daddr) in [
        (ConnectHook::Connect, Some("127.0.0.9")),
        (ConnectHook::Connect, Some("::1")),
        (ConnectHook::Sendmsg, Some("127.0.0.53")),
        (ConnectHook::Sendmsg, Some("fd00::1")),
        (ConnectHook::Socket, None),
    ] {
        let e = connect(hook, daddr);
        assert_eq!(e["type"], "dev.vigil.connect.v1");
        assert_eq!(e["data"]["connect"]["hook"], hook.name(), "{e}");
        assert_valid(&e);
    }
    let e = connect(ConnectHook::Socket, None);
    assert_eq!(e["data"]["connect"]["daddr"], Value::Null, "{e}");
    assert_eq!(e["data"]["connect"]["dport"], Value::Null, "{e}");
    assert_eq!(e["data"]["connect"]["socketType"], "raw", "{e}");
}

#[test]
fn wx_events_match_the_schema() {
    for (syscall, extra) in [
        (WxSyscall::Mmap, 0),
        (WxSyscall::Mprotect, 0),
        (WxSyscall::PkeyMprotect, u32::MAX), // key -1, the default key
        (WxSyscall::Personality, 0x0040_0000),
        (WxSyscall::Shmat, 0),
        (WxSyscall::OldMmap, 0),
    ] {
        let e = wx(syscall, extra);
        assert_eq!(e["type"], "dev.vigil.wx.v1");
        assert_valid(&e);
    }
    let e = wx(WxSyscall::OldMmap, 0);
    assert_eq!(e["data"]["wx"]["unverifiable"], true, "{e}");
    assert_eq!(e["data"]["wx"]["syscall"], "old_mmap", "{e}");
    let mut both = e.clone();
    both["data"]["wx"]["writeExecute"] = Value::Bool(true);
    assert!(
        !common::schema_errors(&both).is_empty(),
        "unverifiable and writeExecute passed: {both}"
    );
    let e = wx(WxSyscall::Shmat, 0);
    assert_eq!(e["data"]["wx"]["sharedExec"], true, "{e}");
    // Exactly one reason.
    let mut two = e.clone();
    two["data"]["wx"]["writeExecute"] = Value::Bool(true);
    assert!(
        !common::schema_errors(&two).is_empty(),
        "two reasons passed: {two}"
    );
}

#[test]
fn loss_events_match_the_schema() {
    let e = loss_event();
    assert_eq!(e["type"], "dev.vigil.loss.v1");
    // 212 in the ring buffer, 5 in the reader queue, 4 in sink queues, 6 spooled and dropped,
    // 1 damaged spool region; held-back violations and probe errors are not losses.
    assert_eq!(e["data"]["lost"]["total"], 229, "{e}");
    assert_valid(&e);
}

#[test]
fn a_violation_with_pod_metadata_and_future_aggregation_is_accepted() {
    let mut e = exec_event();
    e["subject"] = json!("namespaces/shop/pods/web-7d9f-abcde");
    e["vigilverdict"] = json!("violation");
    e["vigilaction"] = json!("kill");
    e["vigilseverity"] = json!("high");
    e["vigilpolicy"] = json!("shop/web");
    e["data"]["pod"] = json!({"namespace": "shop", "name": "web-7d9f-abcde", "uid": "8f7c0e1a-3b2d-4c5e-9f60-1a2b3c4d5e6f", "labels": {"app": "web"}, "serviceAccount": "web", "owner": {"kind": "Deployment", "name": "web"}});
    e["data"]["container"] = json!({"id": "abc", "name": "web", "image": "shop/web:1.2"});
    e["data"]["policy"] = json!({"kind": "RuntimePolicy", "name": "web", "namespace": "shop", "rule": "spec.exec.deny[0]", "description": "prefix /tmp/"});
    e["data"]["count"] = json!(3);
    e["data"]["firstSeen"] = json!("2026-05-01T12:00:00.5Z");
    assert_valid(&e);
}

#[test]
fn drifted_events_are_refused() {
    let mut e = exec_event();
    e["data"]["exec"].as_object_mut().unwrap().remove("path");
    assert_invalid(&e, "/data/exec");

    let mut e = connect(ConnectHook::Connect, Some("127.0.0.9"));
    e["data"]["connect"]["dport"] = json!("443");
    assert_invalid(&e, "/data/connect/dport");

    let mut e = connect(ConnectHook::Connect, Some("127.0.0.9"));
    e["data"]["connect"]["dport"] = json!(70000);
    assert_invalid(&e, "/data/connect/dport");

    let mut e = wx(WxSyscall::Mmap, 0);
    e["type"] = json!("dev.vigil.wx.v2");
    assert_invalid(&e, "/type");

    let mut e = loss_event();
    e["source"] = json!("/nodes/node-a");
    assert_invalid(&e, "/source");

    let mut e = exec_event();
    e["subject"] = json!("pods/web");
    assert_invalid(&e, "/subject");

    let mut e = exec_event();
    e["time"] = json!("yesterday");
    assert_invalid(&e, "/time");

    let mut e = exec_event();
    e["vigilseverity"] = json!("urgent");
    assert_invalid(&e, "/vigilseverity");

    // Observed behaviour is never acted upon.
    let mut e = exec_event();
    e["vigilaction"] = json!("kill");
    assert_invalid(&e, "/vigilaction");

    // A field Vigil does not document.
    let mut e = exec_event();
    e["data"]["exec"]["inode"] = json!(12);
    assert_invalid(&e, "/data/exec");

    // Another type's member.
    let mut e = exec_event();
    e["data"]["wx"] = wx(WxSyscall::Mmap, 0)["data"]["wx"].clone();
    assert_invalid(&e, "/data");

    // The exec member on a connect event.
    let mut e = connect(ConnectHook::Connect, Some("127.0.0.9"));
    e["type"] = json!("dev.vigil.exec.v1");
    assert_invalid(&e, "/data");

    let mut e = exec_event();
    e["data"]["process"]["pid"] = json!(-1);
    assert_invalid(&e, "/data/process/pid");

    let mut e = connect(ConnectHook::Connect, Some("127.0.0.9"));
    e["data"]["connect"]["daddr"] = json!("localhost");
    assert_invalid(&e, "/data/connect/daddr");

    // An address hook always has a destination; only a socket creation has none.
    let mut e = connect(ConnectHook::Sendmsg, Some("127.0.0.53"));
    e["data"]["connect"]["daddr"] = Value::Null;
    assert_invalid(&e, "/data/connect/daddr");

    let mut e = wx(WxSyscall::Mprotect, 0);
    e["data"]["wx"]["pkey"] = json!(1);
    assert_invalid(&e, "/data/wx/pkey");

    let mut e = loss_event();
    e["data"]["lost"]["ringBuffer"]["wx"] = json!(-3);
    assert_invalid(&e, "/data/lost/ringBuffer/wx");

    let mut e = loss_event();
    e["data"].as_object_mut().unwrap().remove("lostSinceStart");
    assert_invalid(&e, "/data");

    let mut e = exec_event();
    e["specversion"] = json!("0.3");
    assert_invalid(&e, "/specversion");
}

/// An agent that writes an invalid event fails the test at the next look, with the event and
/// the schema's errors, not later as a wait that timed out.
#[test]
fn an_invalid_event_fails_the_test_at_once_and_says_why() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("fake-vigil");
    std::fs::write(
        &agent,
        "#!/bin/sh\necho 'vigil is tracing' >&2\necho '{\"specversion\": \"0.3\"}'\nexec sleep 600\n",
    )
    .unwrap();
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let tracer = common::Tracer::spawn_program(&agent, &[], &[], "vigil is tracing");
    let failure = |f: Box<dyn FnOnce() + '_>| {
        let payload = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .expect_err("an invalid event must fail the test");
        payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default()
    };
    // Waiting for an event that never comes: the invalid one ends the wait, not the deadline.
    let message = failure(Box::new(|| {
        tracer.wait_for("that never comes", |_| false);
    }));
    assert!(
        message.contains("does not match docs/event.schema.json")
            && message.contains("/specversion")
            && message.contains(r#"{"specversion": "0.3"}"#),
        "{message}"
    );
    // A test that never looks again still fails when the agent is dropped.
    let message = failure(Box::new(move || drop(tracer)));
    assert!(message.contains("invalid line"), "{message}");
}

#[test]
fn the_examples_in_the_documentation_match_the_schema() {
    let doc = include_str!("../../docs/event-schema.md");
    let examples: Vec<&str> = doc
        .split("```json\n")
        .skip(1)
        .map(|block| block.split("```").next().expect("a closed code block"))
        .collect();
    assert_eq!(examples.len(), 5, "examples in docs/event-schema.md");
    let mut types = std::collections::BTreeSet::new();
    for example in examples {
        let event: Value = serde_json::from_str(example)
            .unwrap_or_else(|e| panic!("example is not JSON ({e}): {example}"));
        assert_valid(&event);
        types.insert(event["type"].as_str().expect("type").to_string());
    }
    assert_eq!(types.len(), 4, "every type has an example: {types:?}");
}

#[test]
fn violations_from_pods_known_and_not_yet_known_validate() {
    use vigil::{
        cloudevents::violation,
        event::Action,
        metadata::cluster::{Owner, PodInfo, PodLookup},
        policy::PolicyRef,
    };
    let event = Event {
        header: header("curl"),
        body: Body::Exec(Exec {
            exe_name: "x".into(),
            ..Exec::plain("/tmp/x", vec!["x".into()])
        }),
    };
    let policy = vigil::cloudevents::shared::Shared::new(PolicyRef {
        kind: "RuntimePolicy".into(),
        name: "web".into(),
        namespace: Some("shop".into()),
        rule: "spec.exec.deny[0]".into(),
        text: "prefix /tmp/".into(),
    });
    let known = PodLookup::found(&PodInfo {
        namespace: "shop".into(),
        name: "web-0".into(),
        uid: "8f7c0e1a-3b2d-4c5e-9f60-1a2b3c4d5e6f".into(),
        labels: [("app".to_string(), "web".to_string())].into(),
        service_account: Some("web".into()),
        owner: Some(Owner {
            kind: "Deployment".into(),
            name: "web".into(),
        }),
        container_id: Some("ab".repeat(32)),
        container_name: Some("app".into()),
        image: Some("shop/web:1".into()),
    });
    let unknown = PodLookup::Unknown {
        uid: "8f7c0e1a-3b2d-4c5e-9f60-1a2b3c4d5e6f".into(),
        container_id: None,
    };
    for (pod, subject) in [
        (&known, "namespaces/shop/pods/web-0"),
        (&unknown, "hosts/node-a"),
    ] {
        let ctx = Context {
            node: "node-a".into(),
            cgroup_path: None,
            pod: Some(pod),
        };
        let e = serde_json::to_value(
            violation(
                &event,
                &lineage(Some("/tmp/x"), &["x"], false),
                &ctx,
                &policy,
                Action::Kill,
            )
            .to_cloudevent()
            .unwrap(),
        )
        .unwrap();
        assert_valid(&e);
        assert_eq!(e["subject"], subject);
        assert_eq!(e["vigilverdict"], "violation");
        assert_eq!(e["vigilaction"], "kill");
    }
}

#[test]
fn the_committed_schema_is_what_the_event_types_generate() {
    let generated = vigil::cloudevents::schema::event_schema_text();
    let line = SCHEMA
        .lines()
        .zip(generated.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| SCHEMA.lines().count().min(generated.lines().count()));
    assert!(
        SCHEMA == generated,
        "docs/event.schema.json differs from the event types at line {}:\n  committed: {}\n  generated: {}\nrun `cargo xtask schema`",
        line + 1,
        SCHEMA.lines().nth(line).unwrap_or("<end of file>"),
        generated.lines().nth(line).unwrap_or("<end of file>"),
    );
}
