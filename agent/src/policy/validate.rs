//! The agent's own validation: turns a CRD object into a [`Policy`], collecting every problem
//! rather than stopping at the first. It repeats what the CRD schema checks (files never pass
//! through an API server) and adds what a schema cannot say: exactly one exec match, host bits,
//! reversed port ranges, selectors that select nothing, and `Kill` on a rule only user space can
//! decide.
use std::{collections::BTreeSet, net::IpAddr};

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::Selector;

use super::{
    crd::{self, ClusterRuntimePolicy, PATH_MAX, RuntimePolicy},
    error::{FieldError, ValueError},
    limits,
    model::{
        Action, ConnectRule, ConnectRules, ExecRule, ExecRules, HostSelection, LabelSelector,
        MemoryRules, NamespaceSelection, PodSelection, Policy, PolicyKind, PolicySpec, PortRange,
        SelectorOperator, policy_id,
    },
};

/// The namespace of a RuntimePolicy file that names none, as `kubectl apply` would use.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Collects errors; each carries its field path.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, reason: impl ToString) {
        self.0.push(FieldError::new(field, reason.to_string()));
    }
}

/// Validates a RuntimePolicy (from a file or the API server).
pub fn runtime_policy(object: &RuntimePolicy) -> Result<Policy, Vec<FieldError>> {
    let mut e = Errors::default();
    let name = name(&object.metadata, &mut e);
    let namespace = object
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| DEFAULT_NAMESPACE.into());
    if !is_dns_label(&namespace) {
        e.push(
            "metadata.namespace",
            format!("{namespace:?} is not a namespace name (an RFC 1123 label)"),
        );
    }
    let spec = &object.spec;
    selector(&spec.pod_selector, "spec.podSelector", &mut e);
    let pods = Some(PodSelection {
        namespaces: NamespaceSelection::Named(namespace.clone()),
        pods: Selector::from(&spec.pod_selector),
    });
    let body = Body {
        containers: spec.containers.as_ref(),
        exec: spec.exec.as_ref(),
        connect: spec.connect.as_ref(),
        memory: spec.memory.as_ref(),
    };
    let spec = body.validate(pods, None, spec.mode, &mut e);
    finish(PolicyKind::RuntimePolicy, Some(namespace), name, spec, e)
}

/// Validates a ClusterRuntimePolicy (from a file or the API server).
pub fn cluster_runtime_policy(object: &ClusterRuntimePolicy) -> Result<Policy, Vec<FieldError>> {
    let mut e = Errors::default();
    let name = name(&object.metadata, &mut e);
    if object.metadata.namespace.is_some() {
        e.push(
            "metadata.namespace",
            "a ClusterRuntimePolicy is cluster-scoped and has no namespace; remove it",
        );
    }
    let spec = &object.spec;
    if let Some(sel) = &spec.namespace_selector {
        selector(sel, "spec.namespaceSelector", &mut e);
    }
    if let Some(sel) = &spec.pod_selector {
        selector(sel, "spec.podSelector", &mut e);
    }
    let pods =
        (spec.namespace_selector.is_some() || spec.pod_selector.is_some()).then(|| PodSelection {
            namespaces: NamespaceSelection::Matching(
                spec.namespace_selector
                    .as_ref()
                    .map(Selector::from)
                    .unwrap_or_default(),
            ),
            pods: spec
                .pod_selector
                .as_ref()
                .map(Selector::from)
                .unwrap_or_default(),
        });
    let host = spec
        .host_processes
        .as_ref()
        .map(|h| host_processes(h, &mut e));
    if pods.is_none() && host.is_none() {
        e.push(
            "spec",
            "selects nothing: set podSelector and/or namespaceSelector (pods; {} selects all), \
             hostProcesses (processes outside pods; {} selects all), or both",
        );
    }
    if spec.mode == crd::Mode::Learn {
        e.push(
            "spec.mode",
            "Learn is for a RuntimePolicy (one workload's pods, whose agents publish what they              learn beside it); learn host processes with `vigil learn --cgroup PATH` or              `vigil learn -- COMMAND`",
        );
    }
    let body = Body {
        containers: spec.containers.as_ref(),
        exec: spec.exec.as_ref(),
        connect: spec.connect.as_ref(),
        memory: spec.memory.as_ref(),
    };
    let spec = body.validate(pods, host, spec.mode, &mut e);
    finish(PolicyKind::ClusterRuntimePolicy, None, name, spec, e)
}

fn finish(
    kind: PolicyKind,
    namespace: Option<String>,
    name: String,
    spec: PolicySpec,
    e: Errors,
) -> Result<Policy, Vec<FieldError>> {
    if e.0.is_empty() {
        return Ok(Policy {
            kind,
            name,
            namespace,
            source: None,
            spec,
        });
    }
    let id = policy_id(kind, namespace.as_deref(), &name);
    Err(e
        .0
        .into_iter()
        .map(|err| FieldError {
            policy: id.clone(),
            ..err
        })
        .collect())
}

fn name(meta: &ObjectMeta, e: &mut Errors) -> String {
    match meta.name.as_deref() {
        None | Some("") => {
            e.push("metadata.name", "is required");
            "<unnamed>".into()
        }
        Some(name) => {
            if !is_dns_subdomain(name) {
                e.push(
                    "metadata.name",
                    format!("{name:?} is not a valid name (lowercase RFC 1123 subdomain, at most 253 characters)"),
                );
            }
            name.into()
        }
    }
}

/// The parts both kinds share.
struct Body<'a> {
    containers: Option<&'a Vec<String>>,
    exec: Option<&'a crd::ExecRules>,
    connect: Option<&'a crd::ConnectRules>,
    memory: Option<&'a crd::MemoryRules>,
}

impl Body<'_> {
    fn validate(
        &self,
        pods: Option<PodSelection>,
        host: Option<HostSelection>,
        mode: crd::Mode,
        e: &mut Errors,
    ) -> PolicySpec {
        let containers = self
            .containers
            .map(|list| containers(list, pods.is_some(), e));
        let hosts = host.is_some();
        PolicySpec {
            pods,
            host,
            containers,
            mode,
            exec: self.exec.map(|x| exec(x, hosts, e)).unwrap_or_default(),
            connect: self.connect.map(|x| connect(x, e)).unwrap_or_default(),
            memory: self.memory.map(|x| memory(x, e)).unwrap_or_default(),
        }
    }
}

fn containers(list: &[String], has_pods: bool, e: &mut Errors) -> Vec<String> {
    if !has_pods {
        e.push(
            "spec.containers",
            "names containers, but this policy selects no pods",
        );
    }
    if list.is_empty() {
        e.push(
            "spec.containers",
            "an empty list selects no container; omit it to select all",
        );
    }
    let mut seen = BTreeSet::new();
    for (i, c) in list.iter().enumerate() {
        if !is_dns_label(c) {
            e.push(
                format!("spec.containers[{i}]"),
                format!("{c:?} is not a container name (an RFC 1123 label)"),
            );
        } else if !seen.insert(c) {
            e.push(
                format!("spec.containers[{i}]"),
                format!("{c:?} is listed twice"),
            );
        }
    }
    list.to_vec()
}

fn host_processes(h: &crd::HostProcesses, e: &mut Errors) -> HostSelection {
    let container_runtime = h.container_runtime.unwrap_or(false);
    let Some(list) = &h.cgroup_prefixes else {
        return HostSelection {
            cgroup_prefixes: Vec::new(),
            container_runtime,
        };
    };
    if list.is_empty() {
        e.push(
            "spec.hostProcesses.cgroupPrefixes",
            "an empty list is ambiguous; omit it (hostProcesses: {}) to select every host process",
        );
    }
    let mut prefixes = Vec::new();
    for (i, p) in list.iter().enumerate() {
        match without_slash(p).and_then(|dir| check_absolute(dir).map(|()| dir)) {
            Ok(dir) => prefixes.push(dir.to_owned()),
            Err(err) => e.push(format!("spec.hostProcesses.cgroupPrefixes[{i}]"), err),
        }
    }
    HostSelection {
        cgroup_prefixes: prefixes,
        container_runtime,
    }
}

fn exec(rules: &crd::ExecRules, host: bool, e: &mut Errors) -> ExecRules {
    let deny_drift = rules.drift == Some(crd::Drift::Deny);
    if deny_drift && host {
        // Silently ignoring it would leave host processes believed covered.
        e.push(
            "spec.exec.drift",
            "drift is decided against a container's image, and processes outside pods have \
             none; remove drift here or hostProcesses, and put the pods' drift rule in a \
             policy of its own",
        );
    }
    let mut out = ExecRules {
        action: rules.action,
        deny_drift,
        ..ExecRules::default()
    };
    for (list_name, list, target) in [
        ("allow", &rules.allow, &mut out.allow),
        ("deny", &rules.deny, &mut out.deny),
    ] {
        let Some(list) = list else { continue };
        let field = format!("spec.exec.{list_name}");
        if list.is_empty() {
            e.push(&field, empty_list_reason(list_name));
        }
        for (i, m) in list.iter().enumerate() {
            let Some((key, rule)) = exec_match(m, &format!("{field}[{i}]"), e) else {
                continue;
            };
            if let ExecRule::Sha256(_) = rule {
                if list_name == "deny" {
                    e.push(
                        format!("{field}[{i}].sha256"),
                        "a digest vouches for content and belongs in allow; to refuse a file, \
                         deny its place (path, prefix) or deny drift",
                    );
                    continue;
                }
                if !deny_drift {
                    e.push(
                        format!("{field}[{i}].sha256"),
                        "a digest vouches for a file against drift, which this policy does not \
                         deny: add drift: Deny to this exec section, or remove the entry",
                    );
                    continue;
                }
            }
            if let (Action::Kill | Action::Deny, Err(why)) =
                (rules.action, limits::exec_rule_in_kernel(&rule))
            {
                e.push(
                    format!("{field}[{i}].{key}"),
                    refused_in_user_space("exec", rules.action, why),
                );
            }
            target.push(rule);
        }
    }
    out
}

/// A SHA-256 digest as 64 lowercase hexadecimal digits.
fn digest(text: &str) -> Result<[u8; 32], ValueError> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 || !bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ValueError::Digest(text.into()));
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let nibble = |b: u8| {
            if b.is_ascii_digit() {
                b - b'0'
            } else {
                b - b'a' + 10
            }
        };
        out[i] = nibble(pair[0]) << 4 | nibble(pair[1]);
    }
    Ok(out)
}

/// One exec match; `None` when invalid (the error is recorded). Also returns the key, for
/// error paths.
fn exec_match(m: &crd::ExecMatch, field: &str, e: &mut Errors) -> Option<(&'static str, ExecRule)> {
    let set: Vec<&str> = [
        m.path.as_ref().map(|_| "path"),
        m.prefix.as_ref().map(|_| "prefix"),
        m.memfd.map(|_| "memfd"),
        m.sha256.as_ref().map(|_| "sha256"),
    ]
    .into_iter()
    .flatten()
    .collect();
    match set.as_slice() {
        [] => {
            e.push(
                field,
                "needs exactly one of path, prefix, memfd or sha256, and has none",
            );
            None
        }
        [_] => {
            if let Some(p) = &m.path {
                record(
                    check_path(p).map(|()| ("path", ExecRule::Path(p.clone()))),
                    &format!("{field}.path"),
                    e,
                )
            } else if let Some(p) = &m.prefix {
                record(
                    check_prefix(p).map(|()| ("prefix", ExecRule::Prefix(p.clone()))),
                    &format!("{field}.prefix"),
                    e,
                )
            } else if let Some(d) = &m.sha256 {
                record(
                    digest(d).map(|d| ("sha256", ExecRule::Sha256(d))),
                    &format!("{field}.sha256"),
                    e,
                )
            } else if m.memfd == Some(true) {
                Some(("memfd", ExecRule::Memfd))
            } else {
                e.push(
                    format!("{field}.memfd"),
                    "memfd: false matches nothing; remove the rule",
                );
                None
            }
        }
        several => {
            e.push(
                field,
                format!(
                    "needs exactly one of path, prefix, memfd or sha256, and has {}; write one rule each",
                    several.join(" and ")
                ),
            );
            None
        }
    }
}

fn record<T>(result: Result<T, ValueError>, field: &str, e: &mut Errors) -> Option<T> {
    result.map_err(|err| e.push(field, err)).ok()
}

fn connect(rules: &crd::ConnectRules, e: &mut Errors) -> ConnectRules {
    let mut out = ConnectRules {
        allow_services: rules.allow_services,
        action: rules.action,
        ..ConnectRules::default()
    };
    for (list_name, list, target) in [
        ("allow", &rules.allow, &mut out.allow),
        ("deny", &rules.deny, &mut out.deny),
    ] {
        let Some(list) = list else { continue };
        let field = format!("spec.connect.{list_name}");
        if list.is_empty() {
            e.push(&field, empty_list_reason(list_name));
        }
        // Indexes of the parsed rules in the written list, so a Kill error names the right one.
        let mut written = Vec::new();
        for (i, m) in list.iter().enumerate() {
            if let Some(rule) = connect_match(m, &format!("{field}[{i}]"), e) {
                written.push(i);
                target.push(rule);
            }
        }
        let in_kernel = limits::connect_list_in_kernel(target);
        if let (Action::Kill | Action::Deny, Err((index, why))) = (rules.action, in_kernel) {
            e.push(
                format!("{field}[{}].ports", written[index]),
                refused_in_user_space("connect", rules.action, why),
            );
        }
    }
    out
}

fn connect_match(m: &crd::ConnectMatch, field: &str, e: &mut Errors) -> Option<ConnectRule> {
    let cidr = record(parse_cidr(&m.cidr), &format!("{field}.cidr"), e);
    let mut ports = Vec::new();
    let mut ports_ok = true;
    for (j, p) in m.ports.iter().flatten().enumerate() {
        match p.parse::<PortRange>() {
            Ok(range) => ports.push(range),
            Err(err) => {
                ports_ok = false;
                e.push(format!("{field}.ports[{j}]"), err);
            }
        }
    }
    let cidr = cidr.filter(|_| ports_ok)?;
    Some(ConnectRule {
        cidr,
        ports,
        protocol: m.protocol,
    })
}

fn memory(rules: &crd::MemoryRules, e: &mut Errors) -> MemoryRules {
    let mut allowed = Vec::new();
    for (i, p) in rules.allow_executables.iter().enumerate() {
        let field = format!("spec.memory.allowExecutables[{i}]");
        let Some(()) = record(check_path(p), &field, e) else {
            continue;
        };
        if let (Action::Kill | Action::Deny, Err(why)) = (rules.action, limits::path_in_kernel(p)) {
            e.push(&field, refused_in_user_space("memory", rules.action, why));
        }
        allowed.push(p.clone());
    }
    MemoryRules {
        write_execute: rules.write_execute,
        allow_executables: allowed,
        foreign_writes: rules.foreign_writes.unwrap_or_default(),
        compat_syscalls: rules.compat_syscalls.unwrap_or_default(),
        action: rules.action,
    }
}

fn empty_list_reason(list: &str) -> &'static str {
    // NetworkPolicy readers expect `[]` to mean "nothing allowed"; here an absent allow list
    // means "no allowlist", so an empty one is refused rather than guessed at.
    if list == "allow" {
        "an empty list is ambiguous: omit allow for no allowlist, or deny what nothing may reach \
         (e.g. cidr 0.0.0.0/0 and ::/0, or prefix /)"
    } else {
        "an empty list is ambiguous: omit deny when nothing is denied"
    }
}

fn refused_in_user_space(section: &str, action: Action, why: limits::UserSpaceOnly) -> String {
    format!(
        "{section}.action is {action:?}, but {why}; use action Alert, or change the rule so the kernel can decide it"
    )
}

fn selector(sel: &LabelSelector, field: &str, e: &mut Errors) {
    for (k, v) in &sel.match_labels {
        if let Err(why) = check_label_key(k) {
            e.push(format!("{field}.matchLabels"), format!("key {k:?}: {why}"));
        }
        if !is_label_value(v) {
            e.push(
                format!("{field}.matchLabels.{k}"),
                format!("{v:?} is not a label value"),
            );
        }
    }
    for (i, req) in sel.match_expressions.iter().enumerate() {
        let f = format!("{field}.matchExpressions[{i}]");
        if let Err(why) = check_label_key(&req.key) {
            e.push(format!("{f}.key"), format!("{:?}: {why}", req.key));
        }
        match req.operator {
            SelectorOperator::In | SelectorOperator::NotIn if req.values.is_empty() => {
                e.push(
                    format!("{f}.values"),
                    format!("operator {:?} needs at least one value", req.operator),
                );
            }
            SelectorOperator::Exists | SelectorOperator::DoesNotExist if !req.values.is_empty() => {
                e.push(
                    format!("{f}.values"),
                    format!("operator {:?} takes no values", req.operator),
                );
            }
            _ => {}
        }
        for (j, v) in req.values.iter().enumerate() {
            if !is_label_value(v) {
                e.push(
                    format!("{f}.values[{j}]"),
                    format!("{v:?} is not a label value"),
                );
            }
        }
    }
}

/// An absolute path to a file: canonical, no trailing `/`.
pub fn check_path(p: &str) -> Result<(), ValueError> {
    if p.ends_with('/') {
        return Err(ValueError::PathIsDirectory(p.into()));
    }
    check_absolute(p)
}

/// An absolute directory prefix: canonical, ending in `/`.
pub fn check_prefix(p: &str) -> Result<(), ValueError> {
    if !p.ends_with('/') {
        return Err(ValueError::PrefixNotDirectory(p.into()));
    }
    check_absolute(without_slash(p)?)
}

/// A directory without its trailing `/` (`/` stays `/`); `//` and the like are not canonical.
fn without_slash(p: &str) -> Result<&str, ValueError> {
    match p.strip_suffix('/') {
        Some("") | None => Ok(p),
        Some(dir) if dir.ends_with('/') => Err(ValueError::NotCanonical(p.into())),
        Some(dir) => Ok(dir),
    }
}

/// Absolute and canonical: starts with `/`, no empty, `.` or `..` component (no trailing `/`
/// except for `/` itself), at most `PATH_MAX` bytes, no NUL.
fn check_absolute(p: &str) -> Result<(), ValueError> {
    if p.contains('\0') {
        return Err(ValueError::Nul);
    }
    if p.len() > PATH_MAX {
        return Err(ValueError::PathTooLong(p.len()));
    }
    let Some(rest) = p.strip_prefix('/') else {
        return Err(ValueError::NotAbsolute(p.into()));
    };
    if rest.is_empty() {
        return Ok(());
    }
    if rest
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(ValueError::NotCanonical(p.into()));
    }
    Ok(())
}

/// `10.0.0.0/8` or `fd00::/8`: an explicit prefix length, host bits zero, not IPv4-mapped.
pub fn parse_cidr(s: &str) -> Result<IpNet, ValueError> {
    let syntax = |why: &str| ValueError::CidrSyntax(s.into(), why.into());
    let Some((addr, len)) = s.split_once('/') else {
        return match s.parse::<IpAddr>() {
            Ok(a) => Err(ValueError::CidrNoPrefix {
                cidr: s.into(),
                bits: if a.is_ipv4() { 32 } else { 128 },
            }),
            Err(_) => Err(syntax("not an IP address")),
        };
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| syntax("not an IP address before the /"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len.is_empty()
        || !len.bytes().all(|b| b.is_ascii_digit())
        || (len.len() > 1 && len.starts_with('0'))
    {
        return Err(syntax(
            "the prefix length after the / must be a number without leading zeros",
        ));
    }
    let len: u8 = len
        .parse()
        .ok()
        .filter(|&l| l <= max)
        .ok_or_else(|| syntax(&format!("prefix length {len} is longer than {max}")))?;
    let net = IpNet::new(addr, len).map_err(|_| syntax("bad prefix length"))?;
    if net.trunc() != net {
        return Err(ValueError::CidrHostBits {
            cidr: s.into(),
            network: net.trunc().to_string(),
        });
    }
    if len >= 96 && matches!(addr, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some()) {
        return Err(ValueError::CidrMapped(s.into()));
    }
    Ok(net)
}

/// RFC 1123 label: what namespaces and container names are.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: what object names are.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A label value: empty, or up to 63 alphanumerics, `-`, `_`, `.`, starting and ending with
/// an alphanumeric.
fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name like a non-empty value.
fn check_label_key(k: &str) -> Result<(), &'static str> {
    let name = match k.split_once('/') {
        Some((prefix, name)) => {
            if !is_dns_subdomain(prefix) {
                return Err("the part before / must be a DNS subdomain");
            }
            name
        }
        None => k,
    };
    if name.is_empty() || !is_label_value(name) {
        return Err(
            "not a label key (at most 63 alphanumerics, -, _ or ., starting and ending alphanumeric)",
        );
    }
    Ok(())
}

#[cfg(test)]
mod props;
