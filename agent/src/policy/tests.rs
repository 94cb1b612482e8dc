//! Loading and validation through the public API, one test per kind of error, on small YAML
//! texts. Realistic whole files live in `agent/tests/fixtures/policies/`.
use std::{collections::BTreeMap, fs, path::PathBuf};

use kube::core::{Selector, SelectorExt as _};

use super::*;

/// A RuntimePolicy `shop/web` whose spec is `spec` (YAML lines indented by two spaces).
fn runtime(spec: &str) -> String {
    format!(
        "apiVersion: vigil.dev/v1alpha1\nkind: RuntimePolicy\nmetadata: {{name: web, namespace: shop}}\nspec:\n{spec}"
    )
}

fn cluster(spec: &str) -> String {
    format!(
        "apiVersion: vigil.dev/v1alpha1\nkind: ClusterRuntimePolicy\nmetadata: {{name: base}}\nspec:\n{spec}"
    )
}

#[track_caller]
fn ok(text: &str) -> Policy {
    match load_str(text, None) {
        Ok(mut policies) => {
            assert_eq!(policies.len(), 1);
            policies.remove(0)
        }
        Err(errors) => panic!("unexpected errors: {errors:#?}"),
    }
}

/// Asserts that loading fails with an error on `field` whose reason contains `reason`
/// (panics otherwise, at the caller's line); returns every error for further checks.
#[track_caller]
fn assert_refused(text: &str, field: &str, reason: &str) -> Vec<FieldError> {
    let errors = load_str(text, Some(Path::new("p.yaml"))).expect_err("must be refused");
    assert!(
        errors
            .iter()
            .any(|e| e.field == field && e.reason.contains(reason)),
        "no error on {field} saying {reason:?}; got:\n{}",
        errors
            .iter()
            .map(|e| format!("  {e}\n"))
            .collect::<String>()
    );
    errors
}

const WEB: &str = "  podSelector: {matchLabels: {app: web}}\n";

/// The RuntimePolicy `shop/web` selecting `app: web`, with `extra` in its spec.
fn web(extra: &str) -> String {
    runtime(&format!("{WEB}{extra}"))
}

#[test]
fn valid_runtime_policy_is_normalized() {
    let p = ok(&runtime(
        "  podSelector: {matchLabels: {app: web}}
  containers: [nginx]
  exec:
    allow: [{path: /usr/sbin/nginx}, {prefix: /usr/lib/nginx/}]
    deny: [{prefix: /tmp/}, {memfd: true}]
    action: Kill
  connect:
    allowServices: true
    allow: [{cidr: 10.0.0.0/8, ports: [\"443\", \"8000-8080\"]}, {cidr: \"fd00::/8\", protocol: UDP}]
  memory: {writeExecute: Deny, allowExecutables: [/usr/bin/node]}
",
    ));
    assert_eq!(
        (p.kind, p.name.as_str()),
        (PolicyKind::RuntimePolicy, "web")
    );
    assert_eq!(p.namespace.as_deref(), Some("shop"));
    assert_eq!(p.spec.mode, Mode::Enforce, "mode defaults to Enforce");
    let pods = p.spec.pods.as_ref().unwrap();
    assert_eq!(pods.namespaces, NamespaceSelection::Named("shop".into()));
    assert!(p.spec.host.is_none());
    assert_eq!(
        p.spec.containers.as_deref(),
        Some(&["nginx".to_string()][..])
    );
    assert_eq!(
        p.spec.exec.allow,
        [
            ExecRule::Path("/usr/sbin/nginx".into()),
            ExecRule::Prefix("/usr/lib/nginx/".into())
        ]
    );
    assert_eq!(
        p.spec.exec.deny,
        [ExecRule::Prefix("/tmp/".into()), ExecRule::Memfd]
    );
    assert_eq!(p.spec.exec.action, Action::Kill);
    let c = &p.spec.connect;
    assert!(c.allow_services && c.has_allowlist());
    assert_eq!(c.action, Action::Alert, "action defaults to Alert");
    assert_eq!(
        c.allow[0].cidr,
        "10.0.0.0/8".parse::<ipnet::IpNet>().unwrap()
    );
    assert_eq!(
        c.allow[0].ports,
        [
            PortRange { lo: 443, hi: 443 },
            PortRange { lo: 8000, hi: 8080 }
        ]
    );
    assert_eq!(c.allow[0].protocol, None);
    assert_eq!(c.allow[1].port_ranges(), [PortRange::ALL]);
    assert_eq!(c.allow[1].protocol, Some(Protocol::Udp));
    assert_eq!(p.spec.memory.write_execute, WriteExecute::Deny);
    assert_eq!(p.spec.memory.allow_executables, ["/usr/bin/node"]);
}

#[test]
fn missing_namespace_defaults_like_kubectl() {
    let text = "apiVersion: vigil.dev/v1alpha1\nkind: RuntimePolicy\nmetadata: {name: a}\nspec: {podSelector: {}}\n";
    assert_eq!(ok(text).namespace.as_deref(), Some("default"));
}

#[test]
fn cluster_policy_selections() {
    let host = ok(&cluster("  hostProcesses: {}\n"));
    assert!(host.spec.pods.is_none() && host.namespace.is_none());
    assert!(host.spec.host.as_ref().unwrap().cgroup_prefixes.is_empty());

    let both = ok(&cluster(
        "  namespaceSelector: {matchLabels: {team: a}}\n  hostProcesses: {cgroupPrefixes: [/system.slice/nginx.service/, /]}\n",
    ));
    let pods = both.spec.pods.unwrap();
    assert!(
        pods.pods.selects_all(),
        "no podSelector: every pod of those namespaces"
    );
    assert!(matches!(pods.namespaces, NamespaceSelection::Matching(ref s) if !s.selects_all()));
    assert_eq!(
        both.spec.host.unwrap().cgroup_prefixes,
        ["/system.slice/nginx.service", "/"]
    );

    let every_pod = ok(&cluster("  podSelector: {}\n"));
    let pods = every_pod.spec.pods.unwrap();
    assert_eq!(
        pods.namespaces,
        NamespaceSelection::Matching(Selector::default())
    );
}

#[test]
fn empty_sections_are_no_ops() {
    let p = ok(&web("  exec: {action: Kill}\n  connect: {}\n"));
    assert!(p.spec.exec.allow.is_empty() && p.spec.exec.deny.is_empty());
    assert!(!p.spec.connect.has_allowlist());
    assert_eq!(
        p.spec.memory.write_execute,
        WriteExecute::Allow,
        "no memory section"
    );
}

#[test]
fn unknown_fields_are_all_reported_with_their_path() {
    let errors = assert_refused(
        &web(
            "  exec: {alow: [{path: /bin/sh}]}\n  connect: {allow: [{cidr: 10.0.0.0/8, port: [\"1\"]}]}\n  namespaceSelector: {}\n",
        ),
        "spec.exec.alow",
        "unknown field",
    );
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert!(fields.contains(&"spec.connect.allow[0].port"), "{fields:?}");
    assert!(
        fields.contains(&"spec.namespaceSelector"),
        "a RuntimePolicy has none: {fields:?}"
    );
    assert_eq!(errors[0].policy, "RuntimePolicy shop/web");
    assert_eq!(errors[0].document, 1);
}

#[test]
fn selector_typo_is_not_silently_every_pod() {
    assert_refused(
        &runtime("  podSelector: {matchLabel: {app: web}}\n"),
        "spec.podSelector.matchLabel",
        "unknown field",
    );
}

#[test]
fn unknown_top_level_field() {
    let text = runtime(WEB) + "extra: 1\n";
    assert_refused(&text, "extra", "unknown field");
}

#[test]
fn bad_enum_values() {
    assert_refused(
        &web("  mode: enforce\n"),
        "spec.mode",
        "\"Enforce\", \"Audit\"",
    );
    assert_refused(
        &web("  exec: {action: Block}\n"),
        "spec.exec.action",
        "\"Kill\"",
    );
    assert_refused(
        &web("  memory: {writeExecute: No}\n"),
        "spec.memory.writeExecute",
        "\"Deny\"",
    );
    assert_refused(
        &web("  connect: {deny: [{cidr: 10.0.0.0/8, protocol: SCTP}]}\n"),
        "spec.connect.deny[0].protocol",
        "\"TCP\", \"UDP\"",
    );
}

#[test]
fn wrong_types() {
    assert_refused(
        &web("  connect: {allow: [{cidr: 10.0.0.0/8, ports: [443]}]}\n"),
        "spec.connect.allow[0].ports[0]",
        "write ports as strings",
    );
    assert_refused(
        &web("  exec: {allow: {path: /bin/sh}}\n"),
        "spec.exec.allow",
        "expected a list",
    );
    assert_refused(
        &web("  connect: {allowServices: \"yes\"}\n"),
        "spec.connect.allowServices",
        "true or false",
    );
}

#[test]
fn required_fields() {
    assert_refused(
        &runtime("  mode: Audit\n"),
        "spec.podSelector",
        "is required",
    );
    assert_refused(
        &web("  memory: {action: Alert}\n"),
        "spec.memory.writeExecute",
        "is required",
    );
    assert_refused(
        &web("  connect: {allow: [{ports: [\"1\"]}]}\n"),
        "spec.connect.allow[0].cidr",
        "is required",
    );
    let no_name = "apiVersion: vigil.dev/v1alpha1\nkind: RuntimePolicy\nmetadata: {}\nspec: {podSelector: {}}\n";
    assert_refused(no_name, "metadata.name", "is required");
}

#[test]
fn bad_cidrs() {
    let deny = |cidr: &str| {
        runtime(&format!(
            "{WEB}  connect: {{deny: [{{cidr: \"{cidr}\"}}]}}\n"
        ))
    };
    let field = "spec.connect.deny[0].cidr";
    assert_refused(
        &deny("10.0.0.0/33"),
        field,
        "prefix length 33 is longer than 32",
    );
    assert_refused(
        &deny("fd00::/129"),
        field,
        "prefix length 129 is longer than 128",
    );
    assert_refused(
        &deny("10.0.0.1/8"),
        field,
        "host bits set; the network is 10.0.0.0/8",
    );
    assert_refused(
        &deny("2001:db8::1/32"),
        field,
        "host bits set; the network is 2001:db8::/32",
    );
    assert_refused(&deny("10.0.0.1"), field, "write 10.0.0.1/32");
    assert_refused(&deny("fd00::1"), field, "write fd00::1/128");
    assert_refused(&deny("10.0.0.256/32"), field, "not an IP address");
    assert_refused(&deny("010.0.0.0/8"), field, "not an IP address");
    assert_refused(&deny("10.0.0.0/08"), field, "without leading zeros");
    assert_refused(&deny("::ffff:10.0.0.0/104"), field, "IPv4-mapped");
    // Host addresses and the whole space are fine.
    ok(&deny("192.0.2.7/32"));
    ok(&deny("::/0"));
    ok(&deny("0.0.0.0/0"));
    ok(&deny("2001:DB8::/32"));
}

#[test]
fn bad_ports() {
    let ports = |p: &str| {
        runtime(&format!(
            "{WEB}  connect: {{allow: [{{cidr: 10.0.0.0/8, ports: [\"80\", \"{p}\"]}}]}}\n"
        ))
    };
    let field = "spec.connect.allow[0].ports[1]";
    assert_refused(&ports("0"), field, "port 0");
    assert_refused(&ports("65536"), field, "ports are 1-65535");
    assert_refused(&ports("99999999999"), field, "ports are 1-65535");
    assert_refused(&ports("9000-8000"), field, "reversed");
    assert_refused(&ports("80-"), field, "not a port");
    assert_refused(&ports(" 80"), field, "not a port");
    assert_refused(&ports("+80"), field, "not a port");
    ok(&ports("65535"));
    ok(&ports("1-65535"));
    ok(&ports("443-443"));
    let p = ok(&web(
        "  connect: {allow: [{cidr: 10.0.0.0/8, ports: []}]}\n",
    ));
    assert_eq!(
        p.spec.connect.allow[0].port_ranges(),
        [PortRange::ALL],
        "[] is every port"
    );
}

#[test]
fn exec_match_needs_exactly_one() {
    let deny = |m: &str| {
        runtime(&format!(
            "{WEB}  exec: {{deny: [{{prefix: /tmp/}}, {m}]}}\n"
        ))
    };
    assert_refused(&deny("{}"), "spec.exec.deny[1]", "has none");
    assert_refused(
        &deny("{path: /a, prefix: /b/}"),
        "spec.exec.deny[1]",
        "has path and prefix",
    );
    assert_refused(
        &deny("{path: /a, prefix: /b/, memfd: true}"),
        "spec.exec.deny[1]",
        "has path and prefix and memfd",
    );
    assert_refused(
        &deny("{memfd: false}"),
        "spec.exec.deny[1].memfd",
        "matches nothing",
    );
}

#[test]
fn exec_paths_must_be_absolute_and_canonical() {
    let allow = |m: &str| runtime(&format!("{WEB}  exec: {{allow: [{m}]}}\n"));
    assert_refused(
        &allow("{path: bin/sh}"),
        "spec.exec.allow[0].path",
        "not absolute",
    );
    assert_refused(
        &allow("{path: /usr/bin/}"),
        "spec.exec.allow[0].path",
        "matched with prefix",
    );
    assert_refused(
        &allow("{path: /usr/./bin/sh}"),
        "spec.exec.allow[0].path",
        "canonical",
    );
    assert_refused(
        &allow("{path: //bin/sh}"),
        "spec.exec.allow[0].path",
        "canonical",
    );
    assert_refused(
        &allow("{prefix: /tmp}"),
        "spec.exec.allow[0].prefix",
        "write \"/tmp/\"",
    );
    assert_refused(
        &allow("{prefix: tmp/}"),
        "spec.exec.allow[0].prefix",
        "not absolute",
    );
    assert_refused(
        &allow("{prefix: /a/../b/}"),
        "spec.exec.allow[0].prefix",
        "canonical",
    );
    assert_refused(
        &allow(&format!("{{path: /{}}}", "a".repeat(5000))),
        "spec.exec.allow[0].path",
        "5001 bytes",
    );
    ok(&allow("{prefix: /}"));
    ok(&allow("{path: /usr/bin/..hidden}"));
}

#[test]
fn empty_lists_are_refused_as_ambiguous() {
    assert_refused(
        &web("  connect: {allow: []}\n"),
        "spec.connect.allow",
        "ambiguous",
    );
    assert_refused(&web("  exec: {deny: []}\n"), "spec.exec.deny", "ambiguous");
    assert_refused(
        &web("  containers: []\n"),
        "spec.containers",
        "selects no container",
    );
    assert_refused(
        &cluster("  hostProcesses: {cgroupPrefixes: []}\n"),
        "spec.hostProcesses.cgroupPrefixes",
        "ambiguous",
    );
}

#[test]
fn cluster_policy_selecting_nothing_is_refused() {
    assert_refused(&cluster("  mode: Audit\n"), "spec", "selects nothing");
    assert_refused(
        &cluster("  hostProcesses: {}\n  containers: [app]\n"),
        "spec.containers",
        "selects no pods",
    );
    let namespaced = "apiVersion: vigil.dev/v1alpha1\nkind: ClusterRuntimePolicy\nmetadata: {name: a, namespace: b}\nspec: {hostProcesses: {}}\n";
    assert_refused(namespaced, "metadata.namespace", "cluster-scoped");
}

#[test]
fn cgroup_prefixes_must_be_absolute_without_dot_dot() {
    let host = |p: &str| cluster(&format!("  hostProcesses: {{cgroupPrefixes: [\"{p}\"]}}\n"));
    let field = "spec.hostProcesses.cgroupPrefixes[0]";
    assert_refused(&host("system.slice"), field, "not absolute");
    assert_refused(&host("/system.slice/../user.slice"), field, "canonical");
    assert_refused(&host("/a//b"), field, "canonical");
}

#[test]
fn selectors_are_checked() {
    let sel = |s: &str| runtime(&format!("  podSelector: {s}\n"));
    assert_refused(
        &sel("{matchExpressions: [{key: tier, operator: In}]}"),
        "spec.podSelector.matchExpressions[0].values",
        "at least one value",
    );
    assert_refused(
        &sel("{matchExpressions: [{key: tier, operator: Exists, values: [a]}]}"),
        "spec.podSelector.matchExpressions[0].values",
        "takes no values",
    );
    assert_refused(
        &sel("{matchExpressions: [{key: tier, operator: Has}]}"),
        "spec.podSelector.matchExpressions[0].operator",
        "\"In\"",
    );
    assert_refused(
        &sel("{matchLabels: {\"bad key!\": a}}"),
        "spec.podSelector.matchLabels",
        "not a label key",
    );
    assert_refused(
        &sel("{matchLabels: {app: \"-web\"}}"),
        "spec.podSelector.matchLabels.app",
        "not a label value",
    );
    ok(&sel("{matchLabels: {app.kubernetes.io/name: web}}"));
}

#[test]
fn names_are_checked() {
    let text = runtime(WEB).replace("name: web", "name: Web_1");
    assert_refused(&text, "metadata.name", "not a valid name");
    let text = runtime(WEB).replace("namespace: shop", "namespace: Shop");
    assert_refused(&text, "metadata.namespace", "not a namespace name");
    assert_refused(
        &web("  containers: [Nginx]\n"),
        "spec.containers[0]",
        "not a container name",
    );
    assert_refused(
        &web("  containers: [a, a]\n"),
        "spec.containers[1]",
        "listed twice",
    );
}

#[test]
fn allow_executables_must_be_absolute() {
    let mem = |p: &str| {
        runtime(&format!(
            "{WEB}  memory: {{writeExecute: Deny, allowExecutables: [/usr/bin/node, \"{p}\"]}}\n"
        ))
    };
    assert_refused(
        &mem("java"),
        "spec.memory.allowExecutables[1]",
        "not absolute",
    );
    assert_refused(
        &mem("/usr/lib/jvm/*/bin/../bin/java"),
        "spec.memory.allowExecutables[1]",
        "canonical",
    );
}

#[test]
fn kill_is_refused_on_rules_only_user_space_decides() {
    let long = format!("/opt/{}", "x".repeat(KERNEL_PATH_MAX));
    let exec = |action: &str| {
        runtime(&format!(
            "{WEB}  exec: {{allow: [{{path: /bin/sh}}, {{prefix: \"{long}/\"}}], action: {action}}}\n"
        ))
    };
    let errors = assert_refused(
        &exec("Kill"),
        "spec.exec.allow[1].prefix",
        "exec.action is Kill, but this path is 257 bytes",
    );
    assert!(errors[0].reason.contains("can only alert"), "{}", errors[0]);
    // Deny needs the kernel to decide before the act: the same limit.
    assert_refused(
        &exec("Deny"),
        "spec.exec.allow[1].prefix",
        "exec.action is Deny, but this path is 257 bytes",
    );
    ok(&exec("Alert"));
    // Audit does not make Kill acceptable: switching the mode must not make a policy invalid.
    assert_refused(
        &exec("Kill").replace("  exec:", "  mode: Audit\n  exec:"),
        "spec.exec.allow[1].prefix",
        "Kill",
    );

    let mem = |action: &str| {
        runtime(&format!(
            "{WEB}  memory: {{writeExecute: Deny, allowExecutables: [\"{long}\"], action: {action}}}\n"
        ))
    };
    assert_refused(
        &mem("Kill"),
        "spec.memory.allowExecutables[0]",
        "memory.action is Kill",
    );
    assert_refused(
        &mem("Deny"),
        "spec.memory.allowExecutables[0]",
        "memory.action is Deny",
    );
    ok(&mem("Alert"));

    // 17 distinct ranges for one CIDR in one list; the rule that goes over is named.
    let ranges: Vec<String> = (1..=16).map(|p| format!("\"{p}\"")).collect();
    let connect = |action: &str| {
        runtime(&format!(
            "{WEB}  connect:\n    action: {action}\n    deny:\n    - {{cidr: 10.0.0.0/8, ports: [{}]}}\n    - {{cidr: 192.0.2.0/24}}\n    - {{cidr: 10.0.0.0/8, ports: [\"100-200\"]}}\n",
            ranges.join(", ")
        ))
    };
    assert_refused(
        &connect("Kill"),
        "spec.connect.deny[2].ports",
        "17 distinct port ranges",
    );
    // Deny needs the kernel to refuse the act, so the same limit applies.
    assert_refused(
        &connect("Deny"),
        "spec.connect.deny[2].ports",
        "connect.action is Deny",
    );
    ok(&connect("Alert"));
}

#[test]
fn deny_is_accepted_for_every_section() {
    // Exec and W^X are refused before the act where the node runs BPF LSM, and killed after
    // it elsewhere: the policy means the same on every node.
    for section in [
        "  connect: {allow: [{cidr: 10.0.0.0/8}], action: Deny}\n",
        "  exec: {deny: [{prefix: /tmp/}], action: Deny}\n",
        "  memory: {writeExecute: Deny, action: Deny}\n",
    ] {
        let p = ok(&web(section));
        let actions = [
            p.spec.connect.action,
            p.spec.exec.action,
            p.spec.memory.action,
        ];
        assert!(
            actions.contains(&crate::policy::Action::Deny),
            "{section}: {actions:?}"
        );
    }
}

#[test]
fn api_version_and_kind() {
    assert_refused(
        &runtime(WEB).replace("vigil.dev/v1alpha1", "vigil.dev/v1"),
        "apiVersion",
        "is not vigil.dev/v1alpha1",
    );
    assert_refused(
        &runtime(WEB).replace("kind: RuntimePolicy", "kind: NetworkPolicy"),
        "kind",
        "not a policy kind",
    );
    assert_refused(
        &runtime(WEB).replace("kind: RuntimePolicy\n", ""),
        "kind",
        "is required",
    );
    assert_refused("- a\n- b\n", "", "a mapping");
}

#[test]
fn multiple_documents_and_duplicates() {
    let two = format!(
        "---\n{}\n---\n# only a comment\n---\n{}",
        runtime(WEB),
        cluster("  hostProcesses: {}\n")
    );
    let policies = load_str(&two, None).unwrap();
    assert_eq!(policies.len(), 2);

    let dup = format!("{}\n---\n{}", runtime(WEB), runtime("  podSelector: {}\n"));
    let errors = assert_refused(
        &dup,
        "metadata.name",
        "RuntimePolicy shop/web is also defined",
    );
    assert_eq!(errors.len(), 1);
    // Same name, other namespace or other kind: no conflict.
    let other_ns = runtime(WEB).replace("namespace: shop", "namespace: other");
    let web_cluster = cluster("  hostProcesses: {}\n").replace("name: base", "name: web");
    load_str(
        &format!("{}\n---\n{other_ns}\n---\n{web_cluster}", runtime(WEB)),
        None,
    )
    .unwrap();
}

#[test]
fn errors_in_several_documents_are_all_reported() {
    let text = format!(
        "{}\n---\n{}",
        runtime("  podSelector: {}\n  mode: enforce\n"),
        runtime("  podSelector: {}\n  exec: {deny: [{prefix: /tmp}]}\n")
            .replace("name: web", "name: api")
    );
    let errors = load_str(&text, None).unwrap_err();
    let docs: Vec<(usize, &str)> = errors
        .iter()
        .map(|e| (e.document, e.field.as_str()))
        .collect();
    assert_eq!(docs, [(1, "spec.mode"), (2, "spec.exec.deny[0].prefix")]);
}

#[test]
fn yaml_errors_end_the_file_but_not_before_good_documents() {
    let text = format!(
        "{}\n---\nspec: [unclosed\n---\n{}",
        runtime(WEB),
        runtime(WEB)
    );
    let errors = load_str(&text, None).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].reason.starts_with("not valid YAML"),
        "{}",
        errors[0]
    );
    assert_eq!(errors[0].document, 2);
    // A duplicate key spoils one document only.
    let text = format!(
        "{}\n---\n{}",
        web("  mode: Audit\n  mode: Audit\n"),
        runtime("  mode: x\n")
    );
    let errors = load_str(&text, None).unwrap_err();
    assert!(
        errors[0].reason.contains("duplicate entry"),
        "{}",
        errors[0]
    );
    assert!(
        errors
            .iter()
            .any(|e| e.document == 2 && e.field == "spec.mode"),
        "{errors:#?}"
    );
}

#[test]
fn display_is_file_field_reason() {
    let errors = load_str(&web("  mode: x\n"), Some(Path::new("dir/p.yaml"))).unwrap_err();
    let line = errors[0].to_string();
    assert!(
        line.starts_with("dir/p.yaml: spec.mode: unknown value \"x\""),
        "{line}"
    );
    assert!(
        line.ends_with("[RuntimePolicy shop/web, document 1]"),
        "{line}"
    );
}

#[test]
fn load_paths_reads_directories_sorted_and_refuses_the_whole_set() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("b.yml"), cluster("  hostProcesses: {}\n")).unwrap();
    fs::write(d.join("a.yaml"), runtime(WEB)).unwrap();
    fs::write(d.join("notes.txt"), "not a policy").unwrap();
    fs::write(d.join(".hidden.yaml"), "not: [valid").unwrap();
    fs::create_dir(d.join("sub.yaml")).unwrap();
    let policies = load_paths(&[d.to_path_buf()]).unwrap();
    let names: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["web", "base"], "a.yaml before b.yml");
    assert_eq!(
        policies[0].source.as_deref(),
        Some(d.join("a.yaml").as_path())
    );

    // One bad file refuses everything, and names itself.
    fs::write(
        d.join("c.yaml"),
        runtime("  podSelector: {}\n  mode: x\n").replace("web", "c"),
    )
    .unwrap();
    let errors = load_paths(&[d.to_path_buf()]).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].file.as_deref(), Some(d.join("c.yaml").as_path()));

    // A duplicate across files names the later file and the earlier one.
    fs::remove_file(d.join("c.yaml")).unwrap();
    let copy = d.join("copy.yaml");
    fs::write(&copy, runtime(WEB)).unwrap();
    let errors = load_paths(&[d.to_path_buf()]).unwrap_err();
    assert_eq!(errors[0].file.as_deref(), Some(copy.as_path()));
    assert!(errors[0].reason.contains("a.yaml"), "{}", errors[0]);

    // A missing path is an error too.
    let missing = PathBuf::from("/nonexistent/policies");
    let errors = load_paths(std::slice::from_ref(&missing)).unwrap_err();
    assert_eq!(errors[0].file.as_ref(), Some(&missing));
    assert!(errors[0].reason.starts_with("cannot read"));
}

#[test]
fn semantics_helpers() {
    let p = ok(&web(
        "  mode: Audit\n  exec: {deny: [{prefix: /tmp/}], action: Kill}\n",
    ));
    assert_eq!(
        p.spec.effective(p.spec.exec.action),
        Action::Alert,
        "Audit never kills"
    );
    assert!(Action::Kill > Action::Alert, "strongest wins by max()");

    let labels: BTreeMap<String, String> = [("app", "web"), ("tier", "front")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let sel = |yaml: &str| -> Selector {
        Selector::from(&serde_yaml_ng::from_str::<LabelSelector>(yaml).unwrap())
    };
    assert!(sel("{}").matches(&labels));
    assert!(sel("{matchLabels: {app: web}}").matches(&labels));
    assert!(!sel("{matchLabels: {app: api}}").matches(&labels));
    assert!(
        sel("{matchExpressions: [{key: tier, operator: In, values: [front, back]}]}")
            .matches(&labels)
    );
    assert!(
        !sel("{matchExpressions: [{key: tier, operator: NotIn, values: [front]}]}")
            .matches(&labels)
    );
    assert!(
        sel("{matchExpressions: [{key: x, operator: NotIn, values: [front]}]}").matches(&labels)
    );
    assert!(sel("{matchExpressions: [{key: app, operator: Exists}]}").matches(&labels));
    assert!(!sel("{matchExpressions: [{key: app, operator: DoesNotExist}]}").matches(&labels));

    let host = HostSelection {
        cgroup_prefixes: vec!["/system.slice/nginx.service".into()],
        container_runtime: false,
    };
    assert!(host.covers("/system.slice/nginx.service"));
    assert!(host.covers("/system.slice/nginx.service/worker"));
    assert!(!host.covers("/system.slice/nginx.service2"));
    assert!(
        HostSelection {
            cgroup_prefixes: vec!["/".into()],
            container_runtime: false,
        }
        .covers("/user.slice")
    );
    assert!(
        HostSelection {
            cgroup_prefixes: vec![],
            container_runtime: false,
        }
        .covers("/anything")
    );

    assert!(ExecRule::Prefix("/tmp/".into()).matches("/tmp/x/y", false));
    assert!(!ExecRule::Prefix("/tmp/".into()).matches("/tmpfoo", false));
    assert!(ExecRule::Path("/bin/sh".into()).matches("/bin/sh", false));
    assert!(ExecRule::Memfd.matches("/memfd:x (deleted)", true));

    let rule = ConnectRule {
        cidr: "10.0.0.0/8".parse().unwrap(),
        ports: vec![PortRange { lo: 8000, hi: 8080 }],
        protocol: Some(Protocol::Tcp),
    };
    let addr = "10.1.2.3".parse().unwrap();
    assert!(rule.matches(addr, 8080, Protocol::Tcp));
    assert!(!rule.matches(addr, 8081, Protocol::Tcp));
    assert!(!rule.matches(addr, 8000, Protocol::Udp));
}

#[test]
fn summary_is_one_readable_line() {
    let p = ok(&runtime(
        "  podSelector: {matchLabels: {app: web}, matchExpressions: [{key: canary, operator: DoesNotExist}]}
  containers: [nginx]
  exec: {allow: [{path: /usr/sbin/nginx}], deny: [{memfd: true}], action: Kill}
  connect: {allowServices: true}
  memory: {writeExecute: Deny, allowExecutables: [/usr/bin/node]}
",
    ));
    assert_eq!(
        summary(&p),
        "RuntimePolicy shop/web: Enforce; selects pods app=web,!canary in namespace shop \
         (containers nginx); exec: 1 allow, 1 deny, Kill; connect: 0 allow + Services, 0 deny, \
         Alert; memory: writeExecute Deny, foreignWrites Allow, compatSyscalls Allow, 1 allowed \
         executable, Alert"
    );
    let host = ok(&cluster(
        "  mode: Audit\n  hostProcesses: {cgroupPrefixes: [/system.slice]}\n",
    ));
    assert_eq!(
        summary(&host),
        "ClusterRuntimePolicy base: Audit; selects host processes under /system.slice; \
         exec: no rules; connect: no rules; memory: no rules"
    );
    let everything = ok(&cluster("  podSelector: {}\n  hostProcesses: {}\n"));
    assert!(
        summary(&everything)
            .contains("selects every pod in every namespace and every host process")
    );
}

/// The CRD's patterns (the API server's check) and the agent's own checks agree: the schema
/// accepts every value the agent accepts, and refuses the ones it can tell apart by syntax.
#[test]
fn schema_patterns_agree_with_validation() {
    let re = |p: &str| regex::Regex::new(p).unwrap();
    let (path, prefix, cgroup) = (
        re(crd::PATH_PATTERN),
        re(crd::PREFIX_PATTERN),
        re(crd::CGROUP_PATTERN),
    );
    let (port, cidr) = (re(crd::PORT_PATTERN), re(crd::CIDR_PATTERN));

    for p in [
        "/bin/sh",
        "/usr/lib/jvm/java-17-openjdk-amd64/bin/java",
        "/a/..b",
        "/.x/y",
    ] {
        assert!(path.is_match(p) && validate::check_path(p).is_ok(), "{p}");
    }
    for p in ["bin/sh", "/bin/", "/a/../b", "/a/./b", "//a", "/", ""] {
        assert!(!path.is_match(p) && validate::check_path(p).is_err(), "{p}");
    }
    for p in ["/", "/tmp/", "/usr/lib/nginx/"] {
        assert!(
            prefix.is_match(p) && validate::check_prefix(p).is_ok(),
            "{p}"
        );
    }
    for p in ["/tmp", "tmp/", "/a/../", "//"] {
        assert!(
            !prefix.is_match(p) && validate::check_prefix(p).is_err(),
            "{p}"
        );
    }
    for p in ["/", "/system.slice", "/system.slice/nginx.service/"] {
        assert!(cgroup.is_match(p), "{p}");
    }
    for p in ["system.slice", "/a/../b", "/a//b", "//", "/a//"] {
        assert!(!cgroup.is_match(p), "{p}");
        let host = cluster(&format!("  hostProcesses: {{cgroupPrefixes: [\"{p}\"]}}\n"));
        assert!(load_str(&host, None).is_err(), "{p}");
    }
    for p in ["1", "443", "65535", "8000-8080", "1-65535"] {
        assert!(port.is_match(p) && p.parse::<PortRange>().is_ok(), "{p}");
    }
    for p in ["0", "65536", "080", "80-", "-80", " 80", "99999"] {
        assert!(!port.is_match(p) && p.parse::<PortRange>().is_err(), "{p}");
    }
    for c in [
        "10.0.0.0/8",
        "0.0.0.0/0",
        "192.0.2.7/32",
        "::/0",
        "fd00::/8",
        "2001:db8::/32",
        "64:ff9b::/96",
    ] {
        assert!(cidr.is_match(c) && validate::parse_cidr(c).is_ok(), "{c}");
    }
    for c in [
        "10.0.0.0",
        "10.0.0.0/33",
        "256.0.0.0/8",
        "010.0.0.0/8",
        "fd00::/129",
        "10.0.0.0/08",
        "x/8",
    ] {
        assert!(!cidr.is_match(c) && validate::parse_cidr(c).is_err(), "{c}");
    }
}

#[test]
fn drift_deny_is_read_for_pods_and_refused_for_host_processes_by_name() {
    let p = ok(&web("  exec: {drift: Deny, action: Kill}\n"));
    assert!(p.spec.exec.deny_drift && p.spec.exec.has_rules());
    assert!(!ok(&web("  exec: {drift: Allow}\n")).spec.exec.deny_drift);
    // A cluster policy for pods only takes it too.
    assert!(
        ok(&cluster("  namespaceSelector: {}\n  exec: {drift: Deny}\n"))
            .spec
            .exec
            .deny_drift
    );
    // Host processes have no image to drift from: refused, never silently ignored, whether
    // the policy selects host processes alone or pods as well.
    for selects in [
        "  hostProcesses: {}\n",
        "  hostProcesses: {cgroupPrefixes: [/system.slice]}\n",
        "  namespaceSelector: {}\n  hostProcesses: {}\n",
    ] {
        assert_refused(
            &cluster(&format!(
                "{selects}  exec: {{drift: Deny, action: Alert}}\n"
            )),
            "spec.exec.drift",
            "processes outside pods have none",
        );
    }
    // Allow is the default, and harmless anywhere.
    ok(&cluster("  hostProcesses: {}\n  exec: {drift: Allow}\n"));
    assert_refused(&web("  exec: {drift: deny}\n"), "spec.exec.drift", "");
}

#[test]
fn sha256_entries_vouch_against_drift_only_and_bad_ones_are_refused_by_field() {
    let digest = "a".repeat(64);
    let p = ok(&web(&format!(
        "  exec:\n    drift: Deny\n    allow: [{{sha256: {digest}}}, {{path: /bin/sh}}]\n    action: Kill\n"
    )));
    assert_eq!(p.spec.exec.digests().count(), 1);
    // A digest is no place: alone it makes no allowlist.
    assert!(p.spec.exec.has_allowlist());
    let alone = ok(&web(&format!(
        "  exec: {{drift: Deny, allow: [{{sha256: {digest}}}]}}\n"
    )));
    assert!(!alone.spec.exec.has_allowlist() && alone.spec.exec.has_rules());
    assert_refused(
        &web(&format!("  exec: {{allow: [{{sha256: {digest}}}]}}\n")),
        "spec.exec.allow[0].sha256",
        "does not deny",
    );
    assert_refused(
        &web(&format!(
            "  exec: {{drift: Deny, deny: [{{sha256: {digest}}}]}}\n"
        )),
        "spec.exec.deny[0].sha256",
        "belongs in allow",
    );
    assert_refused(
        &web("  exec: {drift: Deny, allow: [{sha256: ABCD}]}\n"),
        "spec.exec.allow[0].sha256",
        "64 lowercase hexadecimal digits",
    );
    assert_refused(
        &web(&format!(
            "  exec: {{drift: Deny, allow: [{{sha256: {digest}, path: /bin/sh}}]}}\n"
        )),
        "spec.exec.allow[0]",
        "exactly one of path, prefix, memfd or sha256",
    );
}

/// Learning is per workload: a ClusterRuntimePolicy in mode Learn is refused naming the field.
#[test]
fn learn_mode_is_refused_on_a_cluster_policy_by_field() {
    let errors = load_str(
        "apiVersion: vigil.dev/v1alpha1\nkind: ClusterRuntimePolicy\nmetadata: {name: l}\nspec:\n  hostProcesses: {}\n  mode: Learn\n",
        None,
    )
    .unwrap_err();
    assert!(
        errors.iter().any(|e| e.to_string().contains("spec.mode")
            && e.to_string().contains("vigil learn --cgroup")),
        "{errors:?}"
    );
    let ok = load_str(
        "apiVersion: vigil.dev/v1alpha1\nkind: RuntimePolicy\nmetadata: {name: l, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  mode: Learn\n",
        None,
    )
    .unwrap();
    assert_eq!(ok[0].spec.mode, Mode::Learn);
}
