//! stdout: one CloudEvent of structured-mode JSON per line, or a readable line per event.
use std::io::Write;

use ::cloudevents::{AttributesReader, Data, Event as CloudEvent};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Json,
    Pretty,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("stdout sink: writing: {0}")]
    Write(#[from] std::io::Error),
    #[error("stdout sink: encoding event {id}: {source}")]
    Encode {
        id: String,
        source: serde_json::Error,
    },
}

pub struct StdoutSink<W: Write> {
    out: W,
    format: Format,
}

impl<W: Write> StdoutSink<W> {
    pub fn new(out: W, format: Format) -> Self {
        Self { out, format }
    }

    pub fn emit(&mut self, event: &CloudEvent) -> Result<(), SinkError> {
        match self.format {
            Format::Json => {
                serde_json::to_writer(&mut self.out, event).map_err(|source| {
                    SinkError::Encode {
                        id: event.id().to_string(),
                        source,
                    }
                })?;
                self.out.write_all(b"\n")?;
            }
            Format::Pretty => writeln!(self.out, "{}", pretty(event))?,
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), SinkError> {
        Ok(self.out.flush()?)
    }
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, k| &v[*k])
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// `05:31:02.123 exec    bash[1234] uid=0 /usr/bin/curl curl -s x  (parent sshd[1200], cgroup /user.slice)`
pub fn pretty(event: &CloudEvent) -> String {
    let null = Value::Null;
    let data = match event.data() {
        Some(Data::Json(v)) => v,
        _ => &null,
    };
    let time = event
        .time()
        .map(|t| t.format("%H:%M:%S%.3f").to_string())
        .unwrap_or_default();
    let ty = event
        .ty()
        .trim_start_matches("dev.vigil.")
        .trim_end_matches(".v1");
    let p = &data["process"];
    let who = format!(
        "{}[{}] uid={}",
        text(&p["comm"]),
        text(&p["pid"]),
        text(&p["uid"])
    );
    let what = match ty {
        "exec" => {
            let e = &data["exec"];
            let args: Vec<String> = e["args"]
                .as_array()
                .map(|a| a.iter().map(text).collect())
                .unwrap_or_default();
            let mut marks = Vec::new();
            for (flag, mark) in [
                ("memfd", "memfd"),
                ("mapped", "mapped executable, not exec'd"),
                ("opened", "script as its interpreter opened it"),
                ("userMount", "path through a mount made in a user namespace"),
                ("unverifiable", "real path unverifiable"),
                ("deleted", "deleted"),
                ("argsTruncated", "args truncated"),
            ] {
                if e[flag] == Value::Bool(true) {
                    marks.push(mark);
                }
            }
            let marks = if marks.is_empty() {
                String::new()
            } else {
                format!(" [{}]", marks.join(", "))
            };
            format!("{} {}{}", text(&e["path"]), args.join(" "), marks)
        }
        "connect" => {
            let c = &data["connect"];
            let host = |addr: &Value, port: &Value| {
                let a = text(addr);
                if a.contains(':') {
                    format!("[{a}]:{}", text(port))
                } else {
                    format!("{a}:{}", text(port))
                }
            };
            if c["daddr"].is_null() {
                format!(
                    "{} {} socket {}",
                    text(&c["protocol"]),
                    text(&c["family"]),
                    text(&c["socketType"])
                )
            } else {
                format!(
                    "{} {} {}",
                    text(&c["protocol"]),
                    text(&c["hook"]),
                    host(&c["daddr"], &c["dport"])
                )
            }
        }
        "cgroup" => {
            let m = &data["move"];
            format!(
                "pid {} moved out of the cgroup of its policy (cgroup id {} -> {})",
                text(&m["movedPid"]),
                text(&m["fromCgroupId"]),
                text(&m["toCgroupId"])
            )
        }
        "wx" => {
            let w = &data["wx"];
            let rie = if w["readImpliesExec"] == Value::Bool(true) {
                " READ_IMPLIES_EXEC"
            } else {
                ""
            };
            format!(
                "{} {} len={} addr={}{rie}",
                text(&w["syscall"]),
                text(&w["protText"]),
                text(&w["len"]),
                text(&w["addr"])
            )
        }
        "loss" => format!("LOST {}", s(data, &["lost", "total"])),
        _ => String::new(),
    };
    let exe = text(&p["exe"]);
    let parent = &data["parent"];
    let context = format!(
        "exe {exe}, parent {}[{}], cgroup {}",
        text(&parent["comm"]),
        text(&p["ppid"]),
        text(s(data, &["cgroup", "path"]))
    );
    let pod = &data["pod"];
    let context = if pod["name"].is_string() {
        format!(
            "pod {}/{}, container {}, {context}",
            text(&pod["namespace"]),
            text(&pod["name"]),
            text(&data["container"]["name"])
        )
    } else {
        context
    };
    if ty == "loss" {
        return format!("{time} {ty:<7} {what}");
    }
    let policy = &data["policy"];
    if policy.is_object() {
        // A violation: what was done, then which policy and rule decided.
        let action = event
            .extension("vigilaction")
            .map(|a| a.to_string().to_uppercase())
            .unwrap_or_default();
        let name = match policy["namespace"].as_str() {
            Some(ns) => format!("{ns}/{}", text(&policy["name"])),
            None => text(&policy["name"]),
        };
        return format!(
            "{time} {action:<5} {ty:<7} {who} {what}  [{} {name}: {} {}]  ({context})",
            text(&policy["kind"]),
            text(&policy["rule"]),
            text(&policy["description"]),
        );
    }
    format!("{time} {ty:<7} {who} {what}  ({context})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cloudevents::{Context, violation},
        enforce::PolicyRef,
        event::{Action, Body, Event, Exec, Header, Verdict},
        metadata::process::Lineage,
    };

    #[test]
    fn a_violation_reads_with_its_action_policy_and_rule() {
        let event = Event {
            header: Header {
                verdict: Verdict::Violation {
                    action: Action::Kill,
                    set: 1,
                    rule: 0,
                },
                boot_ns: 0,
                cgroup_id: 9,
                pid: 42,
                tid: 42,
                ppid: 1,
                uid: 0,
                gid: 0,
                comm: "evil".into(),
                count: 1,
                first_ns: 0,
            },
            body: Body::Exec(Exec {
                path: "/tmp/evil".into(),
                exe_path: Some("/tmp/evil".into()),
                exe_name: "evil".into(),
                args: vec!["/tmp/evil".into(), "-x".into()],
                memfd: false,
                deleted: false,
                script: false,
                undecided: false,
                unverifiable: false,
                mapped: false,
                opened: false,
                user_mount: false,
                undecided_set: None,
                args_truncated: false,
                args_missing: false,
            }),
        };
        let policy = PolicyRef {
            kind: "ClusterRuntimePolicy".into(),
            name: "host-baseline".into(),
            namespace: None,
            rule: "spec.exec.deny[0]".into(),
            text: "prefix /tmp/".into(),
        };
        let ce = violation(
            &event,
            &Lineage::default(),
            &Context::host("n1", Some("/".into())),
            &policy,
            Action::Kill,
        )
        .unwrap();
        let line = pretty(&ce);
        assert!(line.contains(" KILL  exec"), "{line}");
        assert!(line.contains("evil[42]"), "{line}");
        assert!(line.contains("/tmp/evil /tmp/evil -x"), "{line}");
        assert!(
            line.contains("[ClusterRuntimePolicy host-baseline: spec.exec.deny[0] prefix /tmp/]"),
            "{line}"
        );
    }
}
