//! The CloudEvents 1.0 envelope (structured-mode JSON) and the `data` schema of Vigil's
//! events. The schema is documented in `docs/event-schema.md` and `docs/event.schema.json`.
use ::cloudevents::{Event as CloudEvent, EventBuilder, EventBuilderV10};
use serde::Serialize;
use serde_json::json;

use crate::{
    ebpf::KernelLosses,
    enforce::PolicyRef,
    event::{Action, Body, Event, prot_text},
    metadata::cluster::PodLookup,
    metadata::{clock::wall_time, process::Lineage},
};

pub const TYPE_EXEC: &str = "dev.vigil.exec.v1";
pub const TYPE_CONNECT: &str = "dev.vigil.connect.v1";
pub const TYPE_WX: &str = "dev.vigil.wx.v1";
pub const TYPE_MOVE: &str = "dev.vigil.cgroup.v1";
pub const TYPE_LOSS: &str = "dev.vigil.loss.v1";

#[derive(Debug, thiserror::Error)]
pub enum CloudEventError {
    #[error("building CloudEvent of type {ty}: {source}")]
    Build {
        ty: &'static str,
        source: ::cloudevents::event::EventBuilderError,
    },
}

/// Where an event happened, beyond the process itself.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub node: &'a str,
    pub cgroup_path: Option<String>,
    /// The pod, when the event came from one (and the agent knows the cluster).
    pub pod: Option<&'a PodLookup>,
}

impl<'a> Context<'a> {
    pub fn host(node: &'a str, cgroup_path: Option<String>) -> Self {
        Self {
            node,
            cgroup_path,
            pod: None,
        }
    }
}

/// `data.pod`, `data.container` and the subject, from what is known of the pod.
fn pod_fields(data: &mut serde_json::Value, pod: Option<&PodLookup>, node: &str) -> String {
    match pod {
        Some(PodLookup::Found(p)) => {
            data["pod"] = json!({
                "namespace": p.namespace,
                "name": p.name,
                "uid": p.uid,
                "labels": p.labels,
                "serviceAccount": p.service_account,
                "owner": p.owner.as_ref().map(|o| json!({"kind": o.kind, "name": o.name})),
            });
            data["container"] =
                json!({"id": p.container_id, "name": p.container_name, "image": p.image});
            format!("namespaces/{}/pods/{}", p.namespace, p.name)
        }
        Some(PodLookup::Unknown { uid, container_id }) => {
            data["pod"] = json!({"uid": uid});
            data["container"] = json!({"id": container_id});
            data["metadataIncomplete"] = json!(true);
            format!("hosts/{node}")
        }
        Some(PodLookup::Host) | None => format!("hosts/{node}"),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ProcessData<'a> {
    pid: u32,
    tid: u32,
    ppid: u32,
    uid: u32,
    gid: u32,
    comm: &'a str,
    exe: Option<&'a str>,
    args: &'a [String],
}

#[derive(Serialize)]
struct ParentData<'a> {
    pid: u32,
    comm: &'a str,
    exe: Option<&'a str>,
    args: &'a [String],
}

fn source(node: &str) -> String {
    format!("/vigil/nodes/{node}")
}

fn behaviour(body: &Body) -> (&'static str, &'static str, serde_json::Value) {
    match body {
        Body::Exec(e) => {
            let mut fields = json!({
                "path": e.path,
                "exeName": e.exe_name,
                "args": e.args,
                "memfd": e.memfd,
                "script": e.script,
                "deleted": e.deleted,
                "argsTruncated": e.args_truncated,
                "argsMissing": e.args_missing,
            });
            // Present only when true.
            if e.undecided {
                fields["undecided"] = json!(true);
            }
            if e.unverifiable {
                fields["unverifiable"] = json!(true);
            }
            if e.mapped {
                fields["mapped"] = json!(true);
            }
            if e.opened {
                fields["opened"] = json!(true);
            }
            if e.user_mount {
                fields["userMount"] = json!(true);
            }
            (TYPE_EXEC, "exec", fields)
        }
        Body::Connect(c) => (
            TYPE_CONNECT,
            "connect",
            json!({
                "protocol": c.protocol.name(),
                "family": if c.ipv4 { "ipv4" } else { "ipv6" },
                "daddr": c.daddr.map(|a| a.to_string()),
                "dport": c.dport,
                "hook": c.hook.name(),
                "socketType": crate::event::sock_type_name(c.sock_type),
            }),
        ),
        Body::Wx(w) => (TYPE_WX, "wx", wx_fields(w)),
        Body::Move(m) => (
            TYPE_MOVE,
            "move",
            json!({
                "movedPid": m.moved_pid,
                "fromCgroupId": m.from_cgroup,
                "toCgroupId": m.to_cgroup,
            }),
        ),
    }
}

/// `data.wx`.
fn wx_fields(w: &crate::event::Wx) -> serde_json::Value {
    let mut fields = json!({
        "syscall": w.syscall.name(),
        "prot": w.prot,
        "protText": prot_text(w.prot),
        "flags": w.flags,
        "addr": format!("{:#x}", w.addr),
        "len": w.len,
        "fd": w.fd,
        "writeExecute": w.write_exec,
        "readImpliesExec": w.read_implies_exec,
        "sharedExec": w.shared_exec,
        "foreignWrite": w.foreign_write,
        "targetPid": matches!(w.syscall, crate::event::WxSyscall::Ptrace | crate::event::WxSyscall::ProcessVmWritev).then_some(w.extra),
        "pkey": matches!(w.syscall, crate::event::WxSyscall::PkeyMprotect).then_some(w.extra as i32),
        "persona": matches!(w.syscall, crate::event::WxSyscall::Personality).then_some(w.extra),
    });
    // Present only when true.
    if w.compat {
        fields["compat"] = json!(true);
    }
    if w.exec_stack {
        fields["execStack"] = json!(true);
    }
    if w.syscall == crate::event::WxSyscall::Compat {
        fields["compatSyscall"] = json!(w.extra);
    }
    fields
}

/// An observed behaviour (`vigilverdict: observed`), as `vigil trace` emits it.
pub fn observed(
    event: &Event,
    lineage: &Lineage,
    ctx: &Context<'_>,
) -> Result<CloudEvent, CloudEventError> {
    build(event, lineage, ctx, None)
}

/// A policy violation: `vigilverdict: violation`, what was done, and which policy and rule.
pub fn violation(
    event: &Event,
    lineage: &Lineage,
    ctx: &Context<'_>,
    policy: &PolicyRef,
    action: Action,
) -> Result<CloudEvent, CloudEventError> {
    build(event, lineage, ctx, Some((policy, action)))
}

fn build(
    event: &Event,
    lineage: &Lineage,
    ctx: &Context<'_>,
    judged: Option<(&PolicyRef, Action)>,
) -> Result<CloudEvent, CloudEventError> {
    let h = &event.header;
    let (ty, key, fields) = behaviour(&event.body);
    let mut data = json!({
        "process": ProcessData {
            pid: h.pid,
            tid: h.tid,
            ppid: h.ppid,
            uid: h.uid,
            gid: h.gid,
            comm: &h.comm,
            exe: lineage.process.exe.as_deref(),
            args: &lineage.process.args,
        },
        "parent": lineage.parent.as_ref().map(|p| ParentData { pid: h.ppid, comm: &p.comm, exe: p.exe.as_deref(), args: &p.args }),
        "cgroup": { "id": h.cgroup_id, "path": ctx.cgroup_path },
        "node": ctx.node,
    });
    data[key] = fields;
    let subject = pod_fields(&mut data, ctx.pod, ctx.node);
    let mut builder = EventBuilderV10::new()
        .id(uuid::Uuid::new_v4().to_string())
        .source(source(ctx.node))
        .ty(ty)
        .subject(subject)
        .time(wall_time(h.boot_ns));
    match judged {
        None => {
            builder = builder
                .extension("vigilverdict", "observed")
                .extension("vigilaction", "none")
                .extension("vigilseverity", "info");
        }
        Some((policy, action)) => {
            data["policy"] = json!({
                "kind": policy.kind,
                "name": policy.name,
                "namespace": policy.namespace,
                "rule": policy.rule,
                "description": policy.text,
            });
            if h.count > 1 {
                data["count"] = json!(h.count);
                data["firstSeen"] = json!(
                    wall_time(h.first_ns).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
                );
            }
            let qualified = match &policy.namespace {
                Some(ns) => format!("{ns}/{}", policy.name),
                None => policy.name.clone(),
            };
            builder = builder
                .extension("vigilverdict", "violation")
                .extension("vigilaction", action.name())
                .extension("vigilpolicy", qualified)
                .extension(
                    "vigilseverity",
                    if matches!(action, Action::Kill | Action::Deny) {
                        "high"
                    } else {
                        "medium"
                    },
                );
        }
    }
    builder
        .data("application/json", data)
        .build()
        .map_err(|source| CloudEventError::Build { ty, source })
}

/// Losses since the previous report, and totals since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LossReport {
    pub kernel: KernelLosses,
    /// Violations the kernel held back in a flood: not lost (a later record of the same
    /// violation carries their count), but reported so that a flood is never silent.
    pub held_back: KernelLosses,
    pub reader_queue_full: u64,
    pub undecodable: u64,
}

fn kernel_delta(now: &KernelLosses, earlier: &KernelLosses) -> KernelLosses {
    KernelLosses {
        exec: now.exec - earlier.exec,
        connect: now.connect - earlier.connect,
        wx: now.wx - earlier.wx,
        moves: now.moves - earlier.moves,
    }
}

fn per_kind_json(k: &KernelLosses) -> serde_json::Value {
    json!({ "exec": k.exec, "connect": k.connect, "wx": k.wx, "move": k.moves })
}

impl LossReport {
    /// Records lost (held-back violations are not lost).
    pub fn total(&self) -> u64 {
        self.kernel.total() + self.reader_queue_full + self.undecodable
    }

    /// Whether anything is worth a loss event: a loss, or violations held back.
    pub fn any(&self) -> bool {
        self.total() > 0 || self.held_back.total() > 0
    }

    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            kernel: kernel_delta(&self.kernel, &earlier.kernel),
            held_back: kernel_delta(&self.held_back, &earlier.held_back),
            reader_queue_full: self.reader_queue_full - earlier.reader_queue_full,
            undecodable: self.undecodable - earlier.undecodable,
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "ringBuffer": per_kind_json(&self.kernel),
            "heldBack": per_kind_json(&self.held_back),
            "readerQueueFull": self.reader_queue_full,
            "undecodable": self.undecodable,
            "total": self.total(),
        })
    }
}

/// `dev.vigil.loss.v1`: events that were lost, so that no loss is silent.
pub fn loss(
    node: &str,
    delta: &LossReport,
    totals: &LossReport,
) -> Result<CloudEvent, CloudEventError> {
    EventBuilderV10::new()
        .id(uuid::Uuid::new_v4().to_string())
        .source(source(node))
        .ty(TYPE_LOSS)
        .subject(format!("hosts/{node}"))
        .time(chrono::Utc::now())
        .extension("vigilverdict", "observed")
        .extension("vigilaction", "none")
        .extension("vigilseverity", "warning")
        .data(
            "application/json",
            json!({ "node": node, "lost": delta.json(), "lostSinceStart": totals.json() }),
        )
        .build()
        .map_err(|source| CloudEventError::Build {
            ty: TYPE_LOSS,
            source,
        })
}
