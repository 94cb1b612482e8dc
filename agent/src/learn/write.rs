//! The learned policy as YAML a person reviews: every entry on a line of its own with a
//! comment saying how often and by whom it was seen, the table's warnings at the top.
//!
//! Written by hand rather than through serde, for the comments. Every value that came from
//! the workload (paths, addresses, cgroup and container names) is a JSON string, which YAML
//! reads as a double-quoted scalar, and every comment has its line breaks and other control
//! characters escaped: a file name such as `x\n  - prefix: /` stays one entry's text and never
//! becomes a rule. What is written is loaded back as a policy before anyone sees it.
use std::{collections::BTreeMap, fmt::Write as _};

use super::table::{ExecEntry, LearnTable, Seen, port_text, protocol_name};
use crate::policy::{self, FieldError, limits::KERNEL_PORT_RANGES};

/// Whom the learned policy selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Host processes under this cgroup (a ClusterRuntimePolicy with `hostProcesses`).
    Host { cgroup: String },
    /// Pods of one namespace with these labels (a RuntimePolicy).
    Pods {
        namespace: String,
        labels: BTreeMap<String, String>,
    },
}

/// What the writer needs beside the table.
#[derive(Debug, Clone)]
pub struct Learned<'a> {
    pub name: &'a str,
    pub scope: Scope,
    pub table: &'a LearnTable,
    /// Where and when it was learned, for the first comment lines.
    pub origin: String,
    /// The cluster's Services by what they answer on (their ClusterIPs and endpoints, with
    /// port and protocol): a destination found here is written as `allowServices`, with a
    /// comment naming the Service.
    pub services: ServiceIndex,
}

/// (protocol, address, port) -> the Service (`namespace/name`) that answers there.
pub type ServiceIndex = BTreeMap<(crate::policy::Protocol, std::net::IpAddr, u16), String>;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(
        "the learned policy {name} is not a valid policy (a bug in vigil learn; please report it \
         with the table): {}",
        errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    Invalid {
        name: String,
        errors: Vec<FieldError>,
    },
}

/// The policy as YAML, checked by loading it back.
pub fn policy_yaml(learned: &Learned<'_>) -> Result<String, WriteError> {
    let text = render(learned);
    policy::load_str(&text, None).map_err(|errors| WriteError::Invalid {
        name: learned.name.to_owned(),
        errors,
    })?;
    Ok(text)
}

/// Characters written escaped: control characters, and what YAML 1.1 (which the loaders in
/// use follow) also takes for a line break (NEL, LS, PS) or a byte order mark.
fn unsafe_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}')
}

/// A value from the workload as a YAML double-quoted scalar, read back as exactly `s`.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if unsafe_char(c) => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Text from the workload fit for a comment: on one line whatever it holds.
pub fn comment_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if unsafe_char(c) {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// A valid object name from `raw`: lower case letters, digits and `-`, at most 63.
pub fn object_name(raw: &str) -> String {
    let mut name: String = raw
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .collect();
    name.truncate(63);
    let name = name.trim_matches('-');
    if name.is_empty() {
        "learned".into()
    } else {
        name.to_owned()
    }
}

fn seen_text(seen: &Seen, what: &str) -> String {
    let mut text = format!(
        "{} {what}{}",
        seen.count,
        if seen.count == 1 { "" } else { "s" }
    );
    if !seen.by.is_empty() {
        let by: Vec<&str> = seen.by.iter().map(String::as_str).collect();
        let _ = write!(text, ", by {}", by.join(", "));
    }
    comment_text(&text)
}

fn render(learned: &Learned<'_>) -> String {
    let t = learned.table;
    let mut y = String::new();
    let _ = writeln!(
        y,
        "# Learned by `vigil learn` {}",
        comment_text(&learned.origin)
    );
    let _ = writeln!(
        y,
        "# from {} events. Review every entry, apply it as it is (mode: Audit), watch for \
         violations,\n# then set mode: Enforce.",
        t.events
    );
    if t.unkept > 0 {
        let _ = writeln!(
            y,
            "# {} events named nothing this policy can hold: see the warnings.",
            t.unkept
        );
    }
    for w in &t.warnings {
        let _ = writeln!(y, "# warning: {}", comment_text(w));
    }
    match &learned.scope {
        Scope::Host { cgroup } => {
            y.push_str("apiVersion: vigil.dev/v1alpha1\nkind: ClusterRuntimePolicy\n");
            let _ = writeln!(y, "metadata:\n  name: {}", quoted(learned.name));
            let _ = writeln!(
                y,
                "spec:\n  hostProcesses:\n    cgroupPrefixes: [{}]",
                quoted(cgroup)
            );
        }
        Scope::Pods { namespace, labels } => {
            y.push_str("apiVersion: vigil.dev/v1alpha1\nkind: RuntimePolicy\n");
            let _ = writeln!(
                y,
                "metadata:\n  name: {}\n  namespace: {}",
                quoted(learned.name),
                quoted(namespace)
            );
            y.push_str("spec:\n  podSelector:\n");
            if labels.is_empty() {
                y.push_str("    {}\n");
            } else {
                y.push_str("    matchLabels:\n");
                for (k, v) in labels {
                    let _ = writeln!(y, "      {}: {}", quoted(k), quoted(v));
                }
            }
        }
    }
    y.push_str("  mode: Audit\n");
    exec_section(&mut y, t);
    connect_section(&mut y, t, &learned.services);
    memory_section(&mut y, t);
    y
}

fn exec_section(y: &mut String, t: &LearnTable) {
    let entries = t.exec_entries();
    if entries.is_empty() {
        y.push_str(
            "  # exec: nothing was run while learning, so there is no allowlist to write.\n",
        );
        return;
    }
    // A path longer than a Kill rule can hold would make the whole policy invalid: it is
    // said, not written, and its runs stay violations.
    let (entries, too_long): (Vec<_>, Vec<_>) = entries.into_iter().partition(|e| match e {
        ExecEntry::Path(p, _) | ExecEntry::Prefix(p, _, _) => {
            policy::limits::path_in_kernel(p).is_ok()
        }
        ExecEntry::Memfd(_) => true,
    });
    let mut notes = String::new();
    for entry in &too_long {
        if let ExecEntry::Path(p, seen) | ExecEntry::Prefix(p, seen, _) = entry {
            let _ = writeln!(
                notes,
                "    # not allowed, {} bytes long (a rule holds {}): {}; {}",
                p.len(),
                policy::limits::KERNEL_PATH_MAX,
                comment_text(p),
                seen_text(seen, "run")
            );
        }
    }
    y.push_str("  exec:\n");
    y.push_str(&notes);
    if entries.is_empty() {
        // An empty allowlist is no allowlist: what was run must not come out allowing all.
        y.push_str(
            "    # nothing a rule can hold was run: every exec is denied\n    deny:\n      - prefix: \"/\"\n    action: Kill\n",
        );
        return;
    }
    y.push_str("    allow:\n");
    for entry in entries {
        match entry {
            ExecEntry::Path(path, seen) => {
                let _ = writeln!(
                    y,
                    "      - path: {}  # {}",
                    quoted(&path),
                    seen_text(&seen, "run")
                );
            }
            ExecEntry::Prefix(prefix, seen, folded) => {
                let what = if folded > 0 {
                    format!("{folded} executables in one directory; ")
                } else {
                    "folded while learning (the table was full); ".into()
                };
                let _ = writeln!(
                    y,
                    "      - prefix: {}  # {}{}",
                    quoted(&prefix),
                    comment_text(&what),
                    seen_text(&seen, "run")
                );
            }
            ExecEntry::Memfd(seen) => {
                let _ = writeln!(
                    y,
                    "      - memfd: true  # fileless execution: {}",
                    seen_text(&seen, "run")
                );
            }
        }
    }
    y.push_str("    action: Kill\n");
}

/// One protocol's port ranges at an address.
type ProtocolRanges = (policy::Protocol, Vec<(u16, u16)>);

/// The port ranges of the destinations at addresses whose rules together hold more than the
/// kernel's [`KERNEL_PORT_RANGES`] (protocols counted apart), joined across their smallest
/// gaps until they fit; addresses that fit are not in the map. Without this the written
/// policy would be refused under `Deny`.
fn fit_port_ranges(
    rest: &[super::table::Destination],
) -> BTreeMap<(std::net::IpAddr, policy::Protocol), Vec<(u16, u16)>> {
    let mut by_addr: BTreeMap<std::net::IpAddr, Vec<ProtocolRanges>> = BTreeMap::new();
    for dest in rest {
        by_addr
            .entry(dest.addr)
            .or_default()
            .push((dest.protocol, dest.port_ranges()));
    }
    let mut fitted = BTreeMap::new();
    for (addr, mut lists) in by_addr {
        let count =
            |lists: &[ProtocolRanges]| -> usize { lists.iter().map(|(_, r)| r.len()).sum() };
        if count(&lists) <= KERNEL_PORT_RANGES {
            continue;
        }
        while count(&lists) > KERNEL_PORT_RANGES {
            // The smallest gap between neighbouring ranges of one protocol.
            let Some((li, ri, _)) = lists
                .iter()
                .enumerate()
                .flat_map(|(li, (_, r))| {
                    r.windows(2)
                        .enumerate()
                        .map(move |(ri, w)| (li, ri, w[1].0 - w[0].1))
                })
                .min_by_key(|(_, _, gap)| *gap)
            else {
                break;
            };
            let ranges = &mut lists[li].1;
            ranges[ri].1 = ranges[ri + 1].1;
            ranges.remove(ri + 1);
        }
        for (protocol, ranges) in lists {
            fitted.insert((addr, protocol), ranges);
        }
    }
    fitted
}

/// The destinations of `t` that Services answer on (`allowServices`): one comment line each;
/// and what is left of each destination for its CIDR rule (`None`: nothing).
fn split_services(
    t: &LearnTable,
    services: &ServiceIndex,
) -> (Vec<String>, Vec<super::table::Destination>) {
    let mut named = Vec::new();
    let mut rest = Vec::new();
    for dest in t.destinations.values() {
        // A range stands for ports not seen one by one: it stays a CIDR rule.
        if dest.range.is_some() {
            rest.push(dest.clone());
            continue;
        }
        let mut left = dest.clone();
        for (port, seen) in &dest.ports {
            if let Some(service) = services.get(&(dest.protocol, dest.addr, *port)) {
                named.push(format!(
                    "Service {service}: {} {} port {port}; {}",
                    protocol_name(dest.protocol),
                    dest.addr,
                    seen_text(seen, "connect")
                ));
                left.ports.remove(port);
            }
        }
        if !left.ports.is_empty() {
            rest.push(left);
        }
    }
    (named, rest)
}

fn connect_section(y: &mut String, t: &LearnTable, services: &ServiceIndex) {
    y.push_str("  connect:\n");
    let (named, rest) = split_services(t, services);
    if !named.is_empty() {
        y.push_str("    allowServices: true\n");
        for line in &named {
            let _ = writeln!(y, "    # {}", comment_text(line));
        }
    }
    let fitted = fit_port_ranges(&rest);
    // Port 0 cannot be written (a rule's ports are 1-65535); a rule without ports covers it.
    let mut any = false;
    for dest in &rest {
        if !any {
            y.push_str("    allow:\n");
            any = true;
        }
        let ranges = fitted
            .get(&(dest.addr, dest.protocol))
            .cloned()
            .unwrap_or_else(|| dest.port_ranges());
        let what = if dest.addr.is_loopback() {
            "loopback; "
        } else {
            ""
        };
        let _ = writeln!(
            y,
            "      - cidr: {}  # {what}{}",
            quoted(&dest.cidr()),
            seen_text(&dest.seen, "connect")
        );
        if fitted.contains_key(&(dest.addr, dest.protocol)) {
            let _ = writeln!(
                y,
                "        # ports joined into ranges: the kernel holds {KERNEL_PORT_RANGES} port ranges per address"
            );
        }
        if ranges.iter().any(|(lo, _)| *lo == 0) {
            y.push_str("        # port 0 was seen: every port of this address is allowed\n");
        } else {
            let list: Vec<String> = ranges.into_iter().map(|r| quoted(&port_text(r))).collect();
            let _ = writeln!(y, "        ports: [{}]", list.join(", "));
        }
        let _ = writeln!(y, "        protocol: {}", protocol_name(dest.protocol));
    }
    if !any && named.is_empty() {
        y.push_str(
            "    # no connect or datagram was seen: every destination is denied\n    deny:\n      \
             - cidr: \"0.0.0.0/0\"\n      - cidr: \"::/0\"\n",
        );
    }
    y.push_str("    action: Deny\n");
}

fn memory_section(y: &mut String, t: &LearnTable) {
    y.push_str("  memory:\n    writeExecute: Deny\n");
    if t.runtimes.is_empty() {
        y.push_str("    # no writable and executable mapping was seen\n");
    } else {
        y.push_str("    allowExecutables:\n");
        for (exe, seen) in &t.runtimes {
            let _ = writeln!(
                y,
                "      - {}  # {}",
                quoted(exe),
                seen_text(seen, "W^X mapping")
            );
        }
    }
    if t.foreign_writes.is_empty() {
        y.push_str("    foreignWrites: Deny  # no write into another process was seen\n");
    } else {
        for (call, seen) in &t.foreign_writes {
            let _ = writeln!(
                y,
                "    # foreign writes allowed: {} ({})",
                comment_text(call),
                seen_text(seen, "call")
            );
        }
    }
    y.push_str("    action: Kill\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{ExecRule, Protocol};

    fn host(t: &LearnTable) -> String {
        policy_yaml(&Learned {
            name: "web",
            scope: Scope::Host {
                cgroup: "/learn/web".into(),
            },
            table: t,
            services: ServiceIndex::new(),
            origin: "on node n1".into(),
        })
        .unwrap()
    }

    #[test]
    fn a_learned_policy_loads_and_allows_exactly_what_was_seen() {
        let mut t = LearnTable::default();
        t.exec("/usr/bin/dash", Some("cgroup /learn/web"));
        t.exec("/usr/bin/dash", Some("cgroup /learn/web"));
        t.destination(Protocol::Tcp, "127.0.0.1".parse().unwrap(), 8080, None);
        t.destination(Protocol::Udp, "::1".parse().unwrap(), 53, None);
        t.write_execute(Some("/usr/bin/node"), None);
        let text = host(&t);
        assert!(
            text.contains("- path: \"/usr/bin/dash\"  # 2 runs, by cgroup /learn/web"),
            "{text}"
        );
        let p = policy::load_str(&text, None).unwrap().remove(0);
        assert_eq!(p.spec.mode, policy::Mode::Audit);
        assert_eq!(p.spec.exec.allow, [ExecRule::Path("/usr/bin/dash".into())]);
        assert_eq!(p.spec.exec.action, policy::Action::Kill);
        assert_eq!(
            p.spec.host.as_ref().unwrap().cgroup_prefixes,
            ["/learn/web"]
        );
        let c = &p.spec.connect;
        assert_eq!(c.allow.len(), 2);
        assert!(c.allow[0].matches("127.0.0.1".parse().unwrap(), 8080, Protocol::Tcp));
        assert!(!c.allow[0].matches("127.0.0.1".parse().unwrap(), 8081, Protocol::Tcp));
        assert!(!c.allow[0].matches("127.0.0.1".parse().unwrap(), 8080, Protocol::Udp));
        assert!(c.allow[1].matches("::1".parse().unwrap(), 53, Protocol::Udp));
        assert_eq!(p.spec.memory.allow_executables, ["/usr/bin/node"]);
        assert_eq!(p.spec.memory.foreign_writes, policy::ForeignWrites::Deny);
    }

    /// A destination a Service answers on is `allowServices` with the Service named; its
    /// other ports stay a CIDR rule.
    #[test]
    fn service_destinations_are_written_as_allow_services_naming_the_service() {
        let mut t = LearnTable::default();
        t.exec("/usr/bin/true", None);
        let svc: std::net::IpAddr = "10.96.0.10".parse().unwrap();
        t.destination(Protocol::Tcp, svc, 5432, Some("container app"));
        t.destination(Protocol::Tcp, svc, 9999, None);
        let services: ServiceIndex = [((Protocol::Tcp, svc, 5432), "shop/db".to_owned())].into();
        let text = policy_yaml(&Learned {
            name: "web",
            scope: Scope::Pods {
                namespace: "shop".into(),
                labels: [("app".to_owned(), "web".to_owned())].into(),
            },
            table: &t,
            origin: "in a test".into(),
            services,
        })
        .unwrap();
        assert!(
            text.contains("# Service shop/db: TCP 10.96.0.10 port 5432"),
            "{text}"
        );
        let p = policy::load_str(&text, None).unwrap().remove(0);
        let c = &p.spec.connect;
        assert!(c.allow_services, "{text}");
        assert_eq!(c.allow.len(), 1, "{text}");
        assert!(c.allow[0].matches(svc, 9999, Protocol::Tcp));
        assert!(!c.allow[0].matches(svc, 5432, Protocol::Tcp));

        // Only a Service's: no CIDR rule, and no deny of everything.
        let mut only = LearnTable::default();
        only.destination(Protocol::Tcp, svc, 5432, None);
        let text = policy_yaml(&Learned {
            name: "web",
            scope: Scope::Pods {
                namespace: "shop".into(),
                labels: BTreeMap::new(),
            },
            table: &only,
            origin: "in a test".into(),
            services: [((Protocol::Tcp, svc, 5432), "shop/db".to_owned())].into(),
        })
        .unwrap();
        let p = policy::load_str(&text, None).unwrap().remove(0);
        assert!(p.spec.connect.allow_services);
        assert!(
            p.spec.connect.allow.is_empty() && p.spec.connect.deny.is_empty(),
            "{text}"
        );
    }

    #[test]
    fn a_workload_that_connected_nowhere_gets_every_destination_denied() {
        let mut t = LearnTable::default();
        t.exec("/usr/bin/true", None);
        let p = policy::load_str(&host(&t), None).unwrap().remove(0);
        assert!(p.spec.connect.allow.is_empty());
        assert_eq!(p.spec.connect.deny.len(), 2);
        assert!(p.spec.memory.allow_executables.is_empty());
    }

    #[test]
    fn names_the_workload_chose_never_become_rules() {
        let mut t = LearnTable::default();
        // A path the workload made up to smuggle in a rule through the comment or the value.
        let evil = "/tmp/x\n      - prefix: \"/\"  #\u{2028}      - prefix: /y\u{85}z";
        t.exec(evil, Some("cgroup /a\n    - prefix: /"));
        t.exec("/usr/bin/true", Some("container \u{85}- prefix: /"));
        t.write_execute(Some("/usr/bin/true"), Some("x\r\n      - \"/tmp/\""));
        let text = host(&t);
        let p = policy::load_str(&text, None).unwrap().remove(0);
        assert!(
            p.spec
                .exec
                .allow
                .iter()
                .all(|r| matches!(r, ExecRule::Path(_))),
            "{text}"
        );
        assert!(p.spec.exec.allow.contains(&ExecRule::Path(evil.into())));
        assert_eq!(p.spec.memory.allow_executables, ["/usr/bin/true"]);
        // Every comment stayed on its line.
        assert!(
            !text
                .lines()
                .any(|l| l.trim_start().starts_with("- prefix") || l.contains("\u{2028}")),
            "{text}"
        );
    }

    #[test]
    fn a_pod_workload_gets_a_runtime_policy_for_its_labels() {
        let mut t = LearnTable::default();
        t.exec("/usr/sbin/nginx", Some("container web"));
        let text = policy_yaml(&Learned {
            name: "web",
            scope: Scope::Pods {
                namespace: "shop".into(),
                labels: [("app".to_string(), "web".to_string())].into(),
            },
            table: &t,
            services: ServiceIndex::new(),
            origin: "in namespace shop".into(),
        })
        .unwrap();
        let p = policy::load_str(&text, None).unwrap().remove(0);
        assert_eq!(p.kind, policy::PolicyKind::RuntimePolicy);
        assert_eq!(p.namespace.as_deref(), Some("shop"));
    }

    #[test]
    fn ports_that_reach_down_to_zero_allow_every_port_of_the_address() {
        let mut t = LearnTable::new(crate::learn::table::Limits {
            ports: 1,
            ..Default::default()
        });
        let lo = "127.0.0.1".parse().unwrap();
        t.destination(Protocol::Udp, lo, 0, None);
        t.destination(Protocol::Udp, lo, 5353, None);
        let p = policy::load_str(&host(&t), None).unwrap().remove(0);
        assert_eq!(p.spec.connect.allow.len(), 1);
        assert!(p.spec.connect.allow[0].ports.is_empty());
        assert!(p.spec.connect.allow[0].matches(lo, 0, Protocol::Udp));
    }

    /// A path no Kill rule can hold (the workload chose its length) would make the policy
    /// invalid and nothing would be written: it is said in a comment and stays a violation.
    #[test]
    fn a_path_longer_than_a_rule_holds_is_said_not_written() {
        let mut t = LearnTable::default();
        let long = format!("/tmp/{}/x", "a".repeat(300));
        t.exec("/usr/bin/dash", None);
        t.exec(&long, None);
        let text = host(&t);
        let p = policy::load_str(&text, None).unwrap().remove(0);
        assert_eq!(p.spec.exec.allow, [ExecRule::Path("/usr/bin/dash".into())]);
        assert!(
            text.contains(&format!(
                "# not allowed, {} bytes long (a rule holds 251)",
                long.len()
            )),
            "{text}"
        );
        // Only such paths: no allowlist, and each said.
        let mut only = LearnTable::default();
        only.exec(&long, None);
        let text = host(&only);
        let p = policy::load_str(&text, None).unwrap().remove(0);
        assert!(p.spec.exec.allow.is_empty(), "{text}");
        assert_eq!(p.spec.exec.deny, [ExecRule::Prefix("/".into())], "{text}");
        assert_eq!(p.spec.exec.action, policy::Action::Kill);
        assert!(text.contains("# not allowed, 307 bytes long"), "{text}");
    }

    /// TCP and UDP ports of one address past the kernel's 16 port ranges per address: joined
    /// across their smallest gaps, so the policy loads and still allows every port seen.
    #[test]
    fn port_ranges_past_what_the_kernel_holds_for_an_address_are_joined() {
        let mut t = LearnTable::default();
        let lo = "127.0.0.1".parse().unwrap();
        let tcp: Vec<u16> = (0..9).map(|i| 1000 + i * 2).collect();
        let udp: Vec<u16> = (0..8).map(|i| 2000 + i * 10).collect();
        for port in &tcp {
            t.destination(Protocol::Tcp, lo, *port, None);
        }
        for port in &udp {
            t.destination(Protocol::Udp, lo, *port, None);
        }
        let text = host(&t);
        let p = policy::load_str(&text, None).unwrap().remove(0);
        let allow = &p.spec.connect.allow;
        let ranges: usize = allow.iter().map(|r| r.port_ranges().len()).sum();
        assert!(ranges <= KERNEL_PORT_RANGES, "{ranges}: {text}");
        for port in &tcp {
            assert!(
                allow.iter().any(|r| r.matches(lo, *port, Protocol::Tcp)),
                "{port}: {text}"
            );
        }
        for port in &udp {
            assert!(
                allow.iter().any(|r| r.matches(lo, *port, Protocol::Udp)),
                "{port}: {text}"
            );
        }
        // The smallest gap (TCP's, 2) was closed: UDP's ports stay one each.
        assert!(
            !allow.iter().any(|r| r.matches(lo, 2005, Protocol::Udp)),
            "{text}"
        );
        assert!(text.contains("ports joined into ranges"), "{text}");
        // An address that fits is written as seen.
        let mut few = LearnTable::default();
        few.destination(Protocol::Tcp, lo, 1000, None);
        few.destination(Protocol::Tcp, lo, 1002, None);
        let text = host(&few);
        assert!(!text.contains("ports joined"), "{text}");
        let p = policy::load_str(&text, None).unwrap().remove(0);
        assert!(!p.spec.connect.allow[0].matches(lo, 1001, Protocol::Tcp));
    }

    #[test]
    fn object_names_are_made_valid() {
        assert_eq!(object_name("My Web_App.sh"), "my-web-app-sh");
        assert_eq!(object_name("///"), "learned");
        assert_eq!(object_name(&"a".repeat(100)).len(), 63);
    }
}
