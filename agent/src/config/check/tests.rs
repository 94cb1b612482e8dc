use std::{path::Path, time::Duration};

use super::parse;
use crate::{
    cloudevents::{EventType, Severity},
    config::{Config, ConfigError, HttpMode, SinkKind},
};

/// A directory with a CA file and a Slack webhook URL file, and the token variable set.
struct Fixture {
    dir: tempfile::TempDir,
}

const SECRET_URL: &str = "https://hooks.chat.example/services/T000/B000/very-secret-token";
const SECRET_TOKEN: &str = "11111111-2222-3333-4444-555555555555";

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("ca.pem"),
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("slack-url"), format!("{SECRET_URL}\n")).unwrap();
        std::fs::write(dir.path().join("not-a-cert"), "hello\n").unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// The issue's example, with this fixture's files.
    fn full(&self) -> String {
        format!(
            r#"
sinks:
  - name: siem
    type: http
    url: https://collector.example/events
    mode: structured
    headers: {{X-Team: security}}
    caFile: {ca}
    spool: {{dir: {dir}/spool/siem, maxBytes: 104857600}}
  - name: chat
    type: slack
    webhookUrlFile: {slack}
    caFile: {ca}
    minSeverity: high
    types: [dev.vigil.exec.v1]
  - name: splunk
    type: splunk-hec
    url: https://splunk.example:8088
    tokenEnv: SPLUNK_HEC_TOKEN
    index: security
    sourcetype: vigil
    ack: true
  - name: cluster
    type: kubernetes-events
  - name: archive
    type: file
    path: {dir}/events.jsonl
    maxBytes: 104857600
    keep: 5
aggregation: {{window: 10s}}
"#,
            ca = self.path("ca.pem"),
            slack = self.path("slack-url"),
            dir = self.dir.path().display(),
        )
    }

    fn check(&self, text: &str) -> Result<Config, Vec<ConfigError>> {
        let env = |name: &str| (name == "SPLUNK_HEC_TOKEN").then(|| SECRET_TOKEN.to_string());
        parse(text, Path::new("/etc/vigil/config.yaml"), &env)
    }

    /// The config `text` is refused with an error at `field` whose reason contains `reason`.
    #[track_caller]
    fn assert_refused(&self, text: &str, field: &str, reason: &str) {
        let errors = self.check(text).expect_err("refused");
        assert!(
            errors
                .iter()
                .any(|e| e.field == field && e.reason.contains(reason)),
            "expected `{field}: …{reason}…`, got {errors:#?}"
        );
        for e in &errors {
            let text = e.to_string();
            assert!(text.starts_with("/etc/vigil/config.yaml: "), "{text}");
            assert!(
                !text.contains("very-secret-token") && !text.contains(SECRET_TOKEN),
                "a secret in an error: {text}"
            );
        }
    }
}

#[test]
fn the_example_of_the_issue_is_accepted_with_every_field() {
    let f = Fixture::new();
    let config = f.check(&f.full()).unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(config.aggregation_window, Some(Duration::from_secs(10)));
    let names: Vec<&str> = config.sinks.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["siem", "chat", "splunk", "cluster", "archive"]);
    let SinkKind::Http {
        url,
        mode,
        headers,
        ca_file,
    } = &config.sinks[0].kind
    else {
        panic!("not http")
    };
    let spool = &config.sinks[0].spool;
    assert_eq!(url.as_str(), "https://collector.example/events");
    assert_eq!(*mode, HttpMode::Structured);
    assert_eq!(headers, &[("X-Team".to_string(), "security".to_string())]);
    assert!(ca_file.is_some());
    assert_eq!(spool.as_ref().map(|s| s.max_bytes), Some(104_857_600));
    let chat = &config.sinks[1];
    assert_eq!(chat.min_severity, Severity::High);
    assert_eq!(chat.types, [EventType::Exec]);
    assert!(chat.wants(EventType::Exec, Severity::High));
    assert!(!chat.wants(EventType::Exec, Severity::Medium));
    assert!(!chat.wants(EventType::Connect, Severity::Critical));
    let SinkKind::Slack {
        webhook_url,
        ca_file,
    } = &chat.kind
    else {
        panic!("not slack")
    };
    assert_eq!(webhook_url.expose(), SECRET_URL);
    assert_eq!(
        ca_file.as_deref(),
        Some(f.dir.path().join("ca.pem").as_path())
    );
    assert!(!format!("{config:?}").contains("very-secret-token"));
    let SinkKind::SplunkHec { token, ack, .. } = &config.sinks[2].kind else {
        panic!("not splunk")
    };
    assert_eq!((token.expose(), *ack), (SECRET_TOKEN, true));
    assert!(!format!("{config:?}").contains(SECRET_TOKEN));
    assert_eq!(
        config.sinks[4].kind,
        SinkKind::File {
            path: f.dir.path().join("events.jsonl"),
            max_bytes: 104_857_600,
            keep: 5
        }
    );
}

#[test]
fn bad_configs_are_refused_naming_the_field() {
    let f = Fixture::new();
    let one = |sink: &str| format!("sinks:\n  - {sink}\n");
    f.assert_refused("sinks: [", "(file)", "not YAML (line");
    f.assert_refused("[1, 2]", "(file)", "must be a mapping");
    f.assert_refused("sinks: []", "sinks", "at least one sink");
    f.assert_refused(
        "sinx: []\nsinks: [{name: a, type: stdout}]",
        "sinx",
        "unknown field",
    );
    f.assert_refused(
        &one("{name: a, type: smoke-signal}"),
        "sinks[0].type",
        "unknown sink type `smoke-signal`",
    );
    f.assert_refused(&one("{type: stdout}"), "sinks[0].name", "required");
    f.assert_refused(
        &one("{name: Loud, type: stdout}"),
        "sinks[0].name",
        "lower-case",
    );
    f.assert_refused(
        "sinks:\n  - {name: a, type: stdout}\n  - {name: a, type: stdout}\n",
        "sinks[1].name",
        "names another sink",
    );
    f.assert_refused(
        &one("{name: a, type: file, path: /var/log/a.jsonl, spool: {dir: /var/lib/a}}"),
        "sinks[0].spool",
        "a file sink writes locally and keeps no spool",
    );
    f.assert_refused(
        &one("{name: a, type: kubernetes-events, spool: {dir: /var/lib/a, maxBytes: 4096}}"),
        "sinks[0].spool.maxBytes",
        "4096 is below the least a spool needs",
    );
    f.assert_refused(
        "sinks:\n  - {name: a, type: kubernetes-events, spool: {dir: /var/lib/s}}\n  - {name: b, type: kubernetes-events, spool: {dir: /var/lib/s}}\n",
        "sinks[1].spool.dir",
        "the spool of sink `a` too",
    );
    f.assert_refused(
        &one("{name: a, type: stdout, url: x}"),
        "sinks[0].url",
        "unknown field",
    );
    f.assert_refused(
        &one("{name: a, type: http, url: 'ftp://x/y'}"),
        "sinks[0].url",
        "http or https",
    );
    f.assert_refused(
        &one("{name: a, type: http, url: 'not a url'}"),
        "sinks[0].url",
        "not a URL",
    );
    f.assert_refused(
        &one("{name: a, type: http, url: 'https://user:pw@x.example/'}"),
        "sinks[0].url",
        "credentials",
    );
    f.assert_refused(&one("{name: a, type: http}"), "sinks[0].url", "required");
    f.assert_refused(
        &one("{name: a, type: http, url: 'https://x.example', mode: fast}"),
        "sinks[0].mode",
        "structured, binary or batch",
    );
    f.assert_refused(
        &one(&format!(
            "{{name: a, type: http, url: 'https://x.example', caFile: {}}}",
            f.path("missing.pem")
        )),
        "sinks[0].caFile",
        "cannot be read",
    );
    f.assert_refused(
        &one(&format!(
            "{{name: a, type: http, url: 'https://x.example', caFile: {}}}",
            f.path("not-a-cert")
        )),
        "sinks[0].caFile",
        "no PEM certificate",
    );
    // The webhook is fine; its CA is not: the CA's field is named all the same.
    f.assert_refused(
        &one(&format!(
            "{{name: a, type: slack, webhookUrlFile: {}, caFile: {}}}",
            f.path("slack-url"),
            f.path("not-a-cert")
        )),
        "sinks[0].caFile",
        "no PEM certificate",
    );
    f.assert_refused(
        &one("{name: a, type: http, url: 'https://x.example', headers: {'Bad Header': x}}"),
        "sinks[0].headers.Bad Header",
        "not a valid header name",
    );
    f.assert_refused(
        &one("{name: a, type: slack, webhookUrlFile: relative/path}"),
        "sinks[0].webhookUrlFile",
        "absolute",
    );
    f.assert_refused(
        &one(&format!(
            "{{name: a, type: slack, webhookUrlFile: {}}}",
            f.path("missing")
        )),
        "sinks[0].webhookUrlFile",
        "cannot be read",
    );
    f.assert_refused(
        &one("{name: a, type: splunk-hec, url: 'https://s.example:8088', tokenEnv: NOT_SET_ANYWHERE}"),
        "sinks[0].tokenEnv",
        "NOT_SET_ANYWHERE is not set",
    );
    f.assert_refused(&one("{name: a, type: splunk-hec, url: 'https://s.example:8088', tokenEnv: SPLUNK_HEC_TOKEN, ack: maybe}"), "sinks[0].ack", "true or false");
    f.assert_refused(
        &one("{name: a, type: file, path: /nonexistent-dir/x.jsonl}"),
        "sinks[0].path",
        "does not exist",
    );
    f.assert_refused(
        &one(&format!(
            "{{name: a, type: file, path: {}/x, maxBytes: 0}}",
            f.dir.path().display()
        )),
        "sinks[0].maxBytes",
        "above 0",
    );
    f.assert_refused(
        &one(&format!(
            "{{name: a, type: file, path: {}/x, keep: -1}}",
            f.dir.path().display()
        )),
        "sinks[0].keep",
        "whole number",
    );
    f.assert_refused(
        &one("{name: a, type: stdout, minSeverity: urgent}"),
        "sinks[0].minSeverity",
        "not one of",
    );
    f.assert_refused(
        &one("{name: a, type: stdout, types: [dev.vigil.exec.v2]}"),
        "sinks[0].types[0]",
        "not an event type",
    );
    f.assert_refused(
        "sinks: [{name: a, type: stdout}]\naggregation: {window: soon}",
        "aggregation.window",
        "not a duration",
    );
    f.assert_refused(
        &one("{name: a, type: stdout, format: xml}"),
        "sinks[0].format",
        "json or pretty",
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let f = Fixture::new();
    let errors = f
        .check("sinks:\n  - {name: a, type: http, url: 'ftp://x'}\n  - {name: b, type: slack}\n  - {name: c, type: nope}\n")
        .expect_err("refused");
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        ["sinks[0].url", "sinks[1].webhookUrlFile", "sinks[2].type"],
        "{errors:#?}"
    );
}

#[test]
fn a_webhook_url_file_holding_plain_http_is_refused_without_showing_the_url() {
    let f = Fixture::new();
    std::fs::write(
        f.dir.path().join("plain"),
        "http://hooks.chat.example/very-secret-token",
    )
    .unwrap();
    f.assert_refused(
        &format!(
            "sinks:\n  - {{name: a, type: slack, webhookUrlFile: {}}}\n",
            f.path("plain")
        ),
        "sinks[0].webhookUrlFile",
        "not https",
    );
    std::fs::write(f.dir.path().join("loop"), "http://127.0.0.1:9/hook").unwrap();
    assert!(
        f.check(&format!(
            "sinks:\n  - {{name: a, type: slack, webhookUrlFile: {}}}\n",
            f.path("loop")
        ))
        .is_ok(),
        "plain http to loopback is for test receivers"
    );
}
