//! The chart as `helm lint` and `helm template` see it, with the default values and with
//! every sink: what it renders, and the values its schema refuses (naming the field). No
//! cluster; `helm install` on a real node is in node.rs.
#[expect(
    dead_code,
    reason = "the helpers are shared by several test binaries; each uses a part"
)]
mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;

fn chart() -> PathBuf {
    testenv::workspace_root().join("charts/vigil")
}

fn every_sink() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chart/every-sink.yaml")
}

/// `helm ARGS` with the k8s-env helm; `None` (the reason printed) without it, outside CI.
fn helm(test: &str, args: &[&str]) -> Option<Output> {
    let bin = testenv::bin_dir_for_tests(test)?;
    Some(Command::new(bin.join("helm")).args(args).output().unwrap())
}

/// `helm template` of the chart with `extra` arguments: its documents.
fn rendered(test: &str, extra: &[&str]) -> Option<Vec<Value>> {
    let chart = chart();
    let mut args = vec![
        "template",
        "vigil",
        chart.to_str().unwrap(),
        "--namespace",
        "vigil",
        "--kube-version",
        "1.37.0",
    ];
    args.extend_from_slice(extra);
    let out = helm(test, &args)?;
    assert!(
        out.status.success(),
        "helm template {extra:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    Some(
        serde_yaml_ng::Deserializer::from_str(&text)
            .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
            .filter(|v: &Value| !v.is_null())
            .collect(),
    )
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> Option<&'a Value> {
    docs.iter().find(|d| d["kind"] == kind)
}

#[test]
fn the_chart_lints_with_the_default_values_and_with_every_sink() {
    let chart = chart();
    let every = every_sink();
    for extra in [vec![], vec!["-f", every.to_str().unwrap()]] {
        let mut args = vec![
            "lint",
            chart.to_str().unwrap(),
            "--strict",
            "--kube-version",
            "1.37.0",
        ];
        args.extend(extra.iter().copied());
        let Some(out) = helm("chart-lint", &args) else {
            return;
        };
        assert!(
            out.status.success(),
            "helm lint {extra:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn by_default_the_agent_is_node_critical_tolerates_every_taint_and_is_scraped() {
    let Some(docs) = rendered("chart-default", &[]) else {
        return;
    };
    let ds = kind(&docs, "DaemonSet").expect("a DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{"operator": "Exists"}])
    );
    let agent = &pod["containers"][0];
    let args: Vec<&str> = agent["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.windows(2).any(|w| w == ["--output", "json"]),
        "{args:?}"
    );
    assert!(
        args.windows(2).any(|w| w == ["--log-format", "text"]),
        "{args:?}"
    );
    assert!(
        kind(&docs, "ConfigMap").is_none(),
        "no sinks, no configuration"
    );
    assert_eq!(agent["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(agent["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert!(agent["resources"]["requests"]["memory"].is_string());
    assert!(agent["resources"]["limits"]["memory"].is_string());
    // A throttled agent would fall behind the kernel's ring buffer (docs/operations.md).
    assert!(
        agent["resources"]["limits"]["cpu"].is_null(),
        "{}",
        agent["resources"]
    );
    let service = kind(&docs, "Service").expect("the metrics Service");
    assert_eq!(service["spec"]["clusterIP"], "None");
    assert_eq!(service["spec"]["ports"][0]["port"], 9464);
    assert!(kind(&docs, "ServiceMonitor").is_none());
}

#[test]
fn every_sink_renders_into_a_configuration_the_agent_accepts_with_secrets_only_by_reference() {
    let every = every_sink();
    let Some(docs) = rendered("chart-sinks", &["-f", every.to_str().unwrap()]) else {
        return;
    };
    let config = kind(&docs, "ConfigMap").expect("the configuration")["data"]["config.yaml"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, &config).unwrap();
    // What only the pod has (the Secrets' files, the host's directory) is all that is missing;
    // the token's variable is set as the pod sets it.
    let out = Command::new(common::vigil_bin())
        .args(["config", "check", file.to_str().unwrap()])
        .env("VIGIL_SINK_SPLUNK_TOKEN", "from-the-secret")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let problems: Vec<&str> = stdout.lines().collect();
    let f = file.display();
    assert_eq!(
        problems,
        [
            format!("{f}: sinks[1].path: its directory /var/log/vigil does not exist"),
            format!(
                "{f}: sinks[2].caFile: /etc/vigil/ca/siem/ca.crt cannot be read: No such file or directory (os error 2)"
            ),
            format!(
                "{f}: sinks[3].caFile: /etc/vigil/ca/chat/bundle.pem cannot be read: No such file or directory (os error 2)"
            ),
            format!(
                "{f}: sinks[3].webhookUrlFile: /etc/vigil/secrets/chat/url cannot be read: No such file or directory (os error 2)"
            ),
        ],
        "{config}"
    );
    assert!(!config.contains("existingSecret"), "{config}");

    let ds = kind(&docs, "DaemonSet").expect("a DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let agent = &pod["containers"][0];
    let args = agent["args"].to_string();
    assert!(
        args.contains("\"--config\",\"/etc/vigil/config.yaml\""),
        "{args}"
    );
    assert!(args.contains("\"--log-format\",\"json\""), "{args}");
    assert!(!args.contains("--output"), "{args}");
    let env = agent["env"].as_array().unwrap();
    let token = env
        .iter()
        .find(|e| e["name"] == "VIGIL_SINK_SPLUNK_TOKEN")
        .expect("the token's variable");
    assert_eq!(
        token["valueFrom"]["secretKeyRef"],
        serde_json::json!({"name": "vigil-hec", "key": "token"})
    );
    let volumes = pod["volumes"].to_string();
    assert!(
        volumes.contains("\"secretName\":\"vigil-slack\""),
        "{volumes}"
    );
    // Each sink's CA is its Secret's one key, mounted where its caFile says.
    for (sink, secret, key) in [
        ("siem", "corp-ca", "ca.crt"),
        ("chat", "chat-ca", "bundle.pem"),
    ] {
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == format!("ca-{sink}"))
            .unwrap_or_else(|| panic!("no CA volume for {sink}: {volumes}"));
        assert_eq!(volume["secret"]["secretName"], secret);
        assert_eq!(volume["secret"]["items"][0]["key"], key);
        let mount = agent["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == format!("ca-{sink}"))
            .unwrap_or_else(|| panic!("no CA mount for {sink}"));
        assert_eq!(mount["mountPath"], format!("/etc/vigil/ca/{sink}"));
        assert_eq!(mount["readOnly"], true);
    }
    assert!(volumes.contains("/var/lib/vigil/spool"), "{volumes}");
    assert!(volumes.contains("/var/log/vigil"), "{volumes}");
    assert!(
        ds["spec"]["template"]["metadata"]["annotations"]["vigil.dev/config-checksum"].is_string()
    );
    let monitor = kind(&docs, "ServiceMonitor").expect("the ServiceMonitor");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
}

#[test]
fn wrong_values_are_refused_at_install_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("metrics:\n  port: nine\n", "at '/metrics/port'"),
        ("logFormat: xml\n", "at '/logFormat'"),
        ("imagee: {tag: x}\n", "'imagee' not allowed"),
        (
            "sinks:\n  - {name: chat, type: slack, webhookUrl: \"https://hooks.example/T0/B0/x\"}\n",
            "at '/sinks/0/webhookUrl'",
        ),
        (
            "sinks:\n  - {name: hec, type: splunk-hec, url: \"https://splunk.example:8088\", tokenEnv: X}\n",
            "invalid propertyName 'tokenEnv'",
        ),
        (
            "sinks:\n  - {name: archive, type: file, path: /tmp/events.jsonl}\n",
            "at '/sinks/0/path'",
        ),
        (
            "sinks:\n  - {name: siem, type: http, url: \"https://c.example\", ca: /etc/ssl/ca.pem}\n",
            "at '/sinks/0/ca'",
        ),
        (
            "sinks:\n  - {name: mail, type: smtp}\n",
            "at '/sinks/0/type'",
        ),
        (
            "resources:\n  requests: {memory: lots}\n",
            "at '/resources/requests/memory'",
        ),
        (
            "tolerations:\n  - {operator: Maybe}\n",
            "at '/tolerations/0/operator'",
        ),
    ];
    let chart = chart();
    for (i, (values, named)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad-{i}.yaml"));
        std::fs::write(&file, values).unwrap();
        let Some(out) = helm(
            "chart-schema",
            &[
                "template",
                "vigil",
                chart.to_str().unwrap(),
                "--kube-version",
                "1.37.0",
                "-f",
                file.to_str().unwrap(),
            ],
        ) else {
            return;
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{values} was accepted");
        assert!(
            stderr.contains("don't meet the specifications of the schema"),
            "{values}: {stderr}"
        );
        assert!(
            stderr.contains(named),
            "{values}: {named} is not named: {stderr}"
        );
    }
}
