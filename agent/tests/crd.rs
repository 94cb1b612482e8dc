//! The CRDs in charts/vigil/crds/ are generated from the Rust types (`cargo xtask crd`): this
//! test fails when the committed YAML is stale, when a schema is not structural (the API server
//! would refuse the CRD), or when the schema stops catching what it is meant to catch.
use std::{fs, path::Path};

use serde_json::Value;
use vigil::policy::crd::{self, ClusterRuntimePolicy, RuntimePolicy};

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
}

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/policies")
}

#[test]
fn committed_crds_match_the_rust_types() {
    let dir = workspace().join("charts/vigil/crds");
    let files = crd::crd_files().expect("CRDs serialize");
    assert_eq!(
        files.len(),
        3,
        "RuntimePolicy, ClusterRuntimePolicy, RuntimePolicyReport"
    );
    for (name, generated) in files {
        let path = dir.join(&name);
        let committed = fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{} differs from the Rust types in agent/src/policy/crd.rs: run `cargo xtask crd`",
            path.display()
        );
    }
}

fn open_api_schema(
    crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Value {
    let schema = crd.spec.versions[0]
        .schema
        .clone()
        .and_then(|s| s.open_api_v3_schema);
    serde_json::to_value(schema.expect("a schema")).unwrap()
}

fn schemas() -> [(&'static str, Value); 3] {
    use kube::CustomResourceExt;
    [
        ("RuntimePolicy", open_api_schema(RuntimePolicy::crd())),
        (
            "ClusterRuntimePolicy",
            open_api_schema(ClusterRuntimePolicy::crd()),
        ),
        (
            "RuntimePolicyReport",
            open_api_schema(vigil::learn::report::RuntimePolicyReport::crd()),
        ),
    ]
}

/// The rules of a structural schema that schemars output can break: no references, no
/// composition, and a type on every node.
fn structural_problems(schema: &Value, path: &str, problems: &mut Vec<String>) {
    let Some(obj) = schema.as_object() else {
        problems.push(format!("{path}: not an object"));
        return;
    };
    for key in [
        "$ref",
        "definitions",
        "$defs",
        "$schema",
        "oneOf",
        "anyOf",
        "allOf",
        "not",
        "patternProperties",
    ] {
        if obj.contains_key(key) {
            problems.push(format!("{path}: has {key}"));
        }
    }
    let typeless_ok = [
        "x-kubernetes-int-or-string",
        "x-kubernetes-preserve-unknown-fields",
    ]
    .iter()
    .any(|k| obj.get(*k) == Some(&Value::Bool(true)));
    if !obj.contains_key("type") && !typeless_ok {
        problems.push(format!("{path}: no type"));
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            structural_problems(child, &format!("{path}.{name}"), problems);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = obj.get(key).filter(|c| c.is_object()) {
            structural_problems(child, &format!("{path}[{key}]"), problems);
        }
    }
}

#[test]
fn schemas_are_structural() {
    for (kind, schema) in schemas() {
        let mut problems = Vec::new();
        structural_problems(&schema, kind, &mut problems);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}

/// Every policy file in `policies/`, the library users apply as it is.
fn shipped_policies() -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for dir in fs::read_dir(workspace().join("policies")).unwrap() {
        for file in fs::read_dir(dir.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn documents(file: &Path) -> Vec<Value> {
    let text = fs::read_to_string(file).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn schema_accepts(doc: &Value) -> Result<(), Vec<String>> {
    let kind = doc["kind"].as_str().unwrap_or_default();
    let (_, schema) = schemas()
        .into_iter()
        .find(|(k, _)| *k == kind)
        .expect("a policy kind");
    // OpenAPI v3.0 schemas are (close to) JSON Schema draft 4; `nullable` and the `x-` keys are
    // ignored here, which only matters for explicit nulls.
    let validator = jsonschema::draft4::new(&schema).expect("the schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

#[test]
fn schema_accepts_the_valid_fixtures_and_shipped_policies() {
    let mut files: Vec<_> = fs::read_dir(fixtures().join("valid"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        files.len() >= 3,
        "the valid fixtures are missing: {files:?}"
    );
    let shipped = shipped_policies();
    assert!(shipped.len() >= 8, "the policy library: {shipped:?}");
    files.extend(shipped);
    for file in files {
        let docs = documents(&file);
        assert!(!docs.is_empty(), "{} holds no policy", file.display());
        for doc in docs {
            if let Err(errors) = schema_accepts(&doc) {
                panic!("{}: {}", file.display(), errors.join("; "));
            }
        }
    }
}

/// What the API server refuses on its own, before the agent sees the object.
#[test]
fn schema_refuses_what_a_schema_can_tell() {
    for name in [
        "bad-mode",
        "bad-action",
        "bad-write-execute",
        "bad-protocol",
        "cidr-v4-prefix-too-long",
        "port-zero",
        "port-too-large",
        "ports-as-numbers",
        "exec-two-matches",
        "exec-no-match",
        "relative-path",
        "prefix-without-slash",
        "memfd-false",
        "missing-pod-selector",
        "allow-executables-relative",
        "empty-allow",
    ] {
        let file = fixtures().join(format!("invalid/{name}.yaml"));
        let doc = documents(&file).remove(0);
        assert!(
            schema_accepts(&doc).is_err(),
            "the CRD schema accepts {}",
            file.display()
        );
    }
}

/// What `vigil learn` writes passes the API server's schema too, for every kind of entry it
/// writes: paths, folded and collapsed prefixes, memfd, IPv4 and IPv6 destinations with ports
/// and port ranges, a destination of every port, JIT runtimes, and the deny-all of a workload
/// that connected nowhere.
#[test]
fn schema_accepts_what_vigil_learn_writes() {
    use vigil::{
        learn::{
            table::{LearnTable, Limits},
            write::{Learned, Scope, policy_yaml},
        },
        policy::Protocol,
    };
    let mut busy = LearnTable::new(Limits {
        executables: 8,
        collapse_at: 3,
        ports: 2,
        ..Limits::default()
    });
    for p in ["/usr/bin/dash", "/opt/t/a", "/opt/t/b", "/opt/t/c"] {
        busy.exec(p, Some("container web"));
    }
    for i in 0..20 {
        busy.exec(&format!("/srv/gen/x{i}"), Some("container web"));
    }
    busy.exec_memfd(None);
    let lo = "127.0.0.1".parse().unwrap();
    busy.destination(Protocol::Tcp, lo, 8080, None);
    for port in [53, 5353, 40000] {
        busy.destination(Protocol::Udp, "fd00::10".parse().unwrap(), port, None);
    }
    busy.destination(Protocol::Tcp, "10.96.0.1".parse().unwrap(), 0, None);
    busy.write_execute(Some("/usr/bin/node"), None);
    busy.foreign_write("ptrace", None);
    let mut idle = LearnTable::default();
    idle.exec("/usr/bin/true", None);
    let scopes = [
        Scope::Host {
            cgroup: "/system.slice/web.service".into(),
        },
        Scope::Pods {
            namespace: "shop".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
        },
    ];
    // One destination of the busy table is a Service's: the policy says allowServices.
    let services: vigil::learn::write::ServiceIndex = busy
        .destinations
        .values()
        .flat_map(|d| {
            d.ports
                .keys()
                .map(move |p| ((d.protocol, d.addr, *p), "shop/db".to_owned()))
        })
        .take(1)
        .collect();
    for table in [&busy, &idle] {
        for scope in &scopes {
            let text = policy_yaml(&Learned {
                name: "learned-web",
                scope: scope.clone(),
                table,
                origin: "in a test".into(),
                services: services.clone(),
            })
            .unwrap();
            let doc: Value = serde_yaml_ng::from_str(&text).unwrap();
            if let Err(errors) = schema_accepts(&doc) {
                panic!("{text}\n{}", errors.join("; "));
            }
        }
    }
}
