//! Property: a compiled policy set, looked up the way the kernel looks it up (longest-prefix
//! match on the path and CIDR tries, then the kernel's own decision, `agent_common::decide`), decides
//! every exec and connect exactly like the plain semantics of the policies: deny wins over
//! allow, a path rule is the exact path or a directory prefix, a CIDR rule is containment plus
//! port ranges and protocol, allowlists of all policies are united, and an allowlist restricts
//! when any policy has one.
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use agent_common::{PortRules, proto_mask, set_flags};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;

use super::{CompiledSet, NOT_ALLOWED, PathEntry, addr_key, compile};
use crate::enforce::compiled::kernel_action;
use crate::policy::{
    Action, ConnectRule, ConnectRules, ExecRule, ExecRules, HostSelection, MemoryRules, Mode,
    Policy, PolicyKind, PolicySpec, PortRange, Protocol,
};

/// Few names, so that rules and queries share prefixes and collide often.
fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec!["a", "b", "bin", "a.b", "tmp"]),
        1..5,
    )
    .prop_map(|parts| format!("/{}", parts.join("/")))
}

fn exec_rule() -> impl Strategy<Value = ExecRule> {
    prop_oneof![
        4 => path().prop_map(ExecRule::Path),
        4 => path().prop_map(|p| ExecRule::Prefix(format!("{p}/"))),
        1 => Just(ExecRule::Prefix("/".into())),
        1 => Just(ExecRule::Memfd),
    ]
}

/// Networks inside 10.0.0.0/8 and fd00::/8 (host bits cleared, as validation demands), plus
/// the two "everything" networks.
fn cidr() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        4 => (0u8..4, 0u8..4, 8u8..=32).prop_map(|(b, c, len)| {
            let net = Ipv4Net::new(Ipv4Addr::new(10, b, c, 1), len).expect("prefix <= 32");
            IpNet::V4(net.trunc())
        }),
        2 => (0u16..4, 8u8..=128).prop_map(|(x, len)| {
            let net = Ipv6Net::new(Ipv6Addr::new(0xfd00, x, 0, 0, 0, 0, 0, 1), len)
                .expect("prefix <= 128");
            IpNet::V6(net.trunc())
        }),
        1 => Just("0.0.0.0/0".parse().expect("cidr")),
        1 => Just("::/0".parse().expect("cidr")),
    ]
}

fn addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (0u8..4, 0u8..4, 0u8..3).prop_map(|(b, c, d)| IpAddr::V4(Ipv4Addr::new(10, b, c, d))),
        (0u16..4, 0u16..3)
            .prop_map(|(x, y)| IpAddr::V6(Ipv6Addr::new(0xfd00, x, 0, 0, 0, 0, 0, y))),
        Just(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
    ]
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)]
}

fn port_range() -> impl Strategy<Value = PortRange> {
    (1u16..12, 0u16..4).prop_map(|(lo, len)| PortRange { lo, hi: lo + len })
}

fn connect_rule() -> impl Strategy<Value = ConnectRule> {
    (
        cidr(),
        prop::collection::vec(port_range(), 0..3),
        prop::option::of(protocol()),
    )
        .prop_map(|(cidr, ports, protocol)| ConnectRule {
            cidr,
            ports,
            protocol,
        })
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![Just(Action::Alert), Just(Action::Deny), Just(Action::Kill)]
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        prop_oneof![Just(Mode::Enforce), Just(Mode::Audit)],
        prop::collection::vec(exec_rule(), 0..4),
        prop::collection::vec(exec_rule(), 0..3),
        action(),
        any::<bool>(),
        prop::collection::vec(connect_rule(), 0..3),
        prop::collection::vec(connect_rule(), 0..2),
        action(),
        prop::collection::vec(path(), 0..2),
    )
        .prop_map(
            |(mode, allow, deny, exec_action, services, c_allow, c_deny, c_action, exempt)| {
                Policy {
                    kind: PolicyKind::ClusterRuntimePolicy,
                    name: "p".into(),
                    namespace: None,
                    source: None,
                    spec: PolicySpec {
                        pods: None,
                        host: Some(HostSelection {
                            cgroup_prefixes: Vec::new(),
                            container_runtime: false,
                        }),
                        containers: None,
                        mode,
                        exec: ExecRules {
                            allow,
                            deny,
                            deny_drift: false,
                            action: exec_action,
                        },
                        connect: ConnectRules {
                            allow_services: services,
                            allow: c_allow,
                            deny: c_deny,
                            action: c_action,
                        },
                        memory: MemoryRules {
                            allow_executables: exempt,
                            ..MemoryRules::default()
                        },
                    },
                }
            },
        )
}

/// A verdict: allowed, or a violation with the kernel action.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Allowed,
    Violation(u32),
}

// ---- the plain semantics ----

fn model_exec(policies: &[Policy], path: &str, memfd: bool) -> Verdict {
    let strongest = policies
        .iter()
        .filter(|p| !p.spec.exec.allow.is_empty() || !p.spec.exec.deny.is_empty())
        .map(|p| kernel_action(p.spec.effective(p.spec.exec.action)))
        .max()
        .unwrap_or(0);
    let denied = policies
        .iter()
        .flat_map(|p| &p.spec.exec.deny)
        .any(|r| r.matches(path, memfd));
    let restricted = policies.iter().any(|p| !p.spec.exec.allow.is_empty());
    let allowed = policies
        .iter()
        .flat_map(|p| &p.spec.exec.allow)
        .any(|r| r.matches(path, memfd));
    if denied || (restricted && !allowed) {
        Verdict::Violation(strongest)
    } else {
        Verdict::Allowed
    }
}

fn model_connect(
    policies: &[Policy],
    services: &BTreeSet<(IpAddr, u16, Protocol)>,
    addr: IpAddr,
    port: u16,
    protocol: Protocol,
) -> Verdict {
    let strongest = policies
        .iter()
        .filter(|p| p.spec.connect.has_allowlist() || !p.spec.connect.deny.is_empty())
        .map(|p| kernel_action(p.spec.effective(p.spec.connect.action)))
        .max()
        .unwrap_or(0);
    let rules = |p: &Policy| p.spec.connect.clone();
    let denied = policies
        .iter()
        .flat_map(|p| rules(p).deny)
        .any(|r| r.matches(addr, port, protocol));
    let restricted = policies.iter().any(|p| p.spec.connect.has_allowlist());
    let allowed = policies
        .iter()
        .flat_map(|p| rules(p).allow)
        .any(|r| r.matches(addr, port, protocol))
        || (policies.iter().any(|p| p.spec.connect.allow_services)
            && services.contains(&(addr, port, protocol)));
    if denied || (restricted && !allowed) {
        Verdict::Violation(strongest)
    } else {
        Verdict::Allowed
    }
}

// ---- the kernel's lookups over the compiled form ----

/// The longest `EXEC_PATHS` entry whose key is a prefix of the exec's key (path and NUL).
fn longest_path<'a>(
    c: &'a CompiledSet,
    path: &str,
) -> Option<(&'a PathEntry, &'a agent_common::PathRule)> {
    let key = PathEntry {
        path: path.into(),
        exact: true,
    }
    .key_bytes();
    c.paths
        .iter()
        .filter(|(e, _)| key.starts_with(&e.key_bytes()))
        .max_by_key(|(e, _)| e.key_bytes().len())
}

/// The exec decision user space shares with the kernel (`agent_common::decide::exec`), for a
/// keyed, non-script exec.
fn kernel_exec(c: &CompiledSet, path: &str, memfd: bool) -> (Verdict, Option<u16>) {
    let v = crate::behaviour::exec::decide::decide(0, c, path, None, memfd);
    if !v.is_hit() {
        return (Verdict::Allowed, None);
    }
    let index = agent_common::rule_id::index(v.rule);
    (
        Verdict::Violation(u32::from(v.action)),
        (index != NOT_ALLOWED).then_some(index as u16),
    )
}

/// The LPM match in a connect trie: the entry with the longest key prefix covering `addr`
/// (IPv4 as `::ffff:a.b.c.d`, as the probes key it).
fn longest_net(
    map: &std::collections::BTreeMap<IpNet, PortRules>,
    addr: IpAddr,
) -> Option<&PortRules> {
    let host = IpNet::from(addr);
    let (_, query) = addr_key(0, &host);
    map.iter()
        .map(|(net, rules)| (addr_key(0, net), rules))
        .filter(|((bits, data), _)| {
            let prefix = (*bits - 32) as usize;
            (0..prefix).all(|i| {
                let bit = |d: &[u8; 20]| d[4 + i / 8] >> (7 - i % 8) & 1;
                bit(data) == bit(&query)
            })
        })
        .max_by_key(|((bits, _), _)| *bits)
        .map(|(_, rules)| rules)
}

fn port_match(rules: &PortRules, port: u16, protocol: Protocol) -> Option<u16> {
    let bit = match protocol {
        Protocol::Tcp => proto_mask::TCP,
        Protocol::Udp => proto_mask::UDP,
    };
    rules.ranges[..rules.count as usize]
        .iter()
        .find(|r| r.protocols & bit != 0 && r.lo <= port && port <= r.hi)
        .map(|r| r.rule)
}

/// `decide_connect`.
fn kernel_connect(
    c: &CompiledSet,
    services: &BTreeSet<(IpAddr, u16, Protocol)>,
    addr: IpAddr,
    port: u16,
    protocol: Protocol,
) -> (Verdict, Option<u16>) {
    let ps = &c.set;
    let violation = Verdict::Violation(ps.connect_action);
    if let Some(rule) =
        longest_net(&c.connect_deny, addr).and_then(|r| port_match(r, port, protocol))
    {
        return (violation, Some(rule));
    }
    if ps.flags & set_flags::CONNECT_ALLOWLIST == 0 {
        return (Verdict::Allowed, None);
    }
    if longest_net(&c.connect_allow, addr).is_some_and(|r| port_match(r, port, protocol).is_some())
    {
        return (Verdict::Allowed, None);
    }
    if ps.flags & set_flags::CONNECT_ALLOW_SERVICES != 0
        && services.contains(&(addr, port, protocol))
    {
        return (Verdict::Allowed, None);
    }
    (violation, None)
}

/// The rule a reported index names, as the policies say it.
fn named_rule<'a>(c: &CompiledSet, policies: &'a [Policy], index: u16) -> (&'a Policy, String) {
    let r = &c.rules[usize::from(index)];
    (&policies[r.policy], r.field.clone())
}

fn field_index(field: &str, list: &str) -> usize {
    field
        .strip_prefix(list)
        .and_then(|rest| rest.strip_prefix('['))
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|i| i.parse().ok())
        .unwrap_or_else(|| panic!("{field} is not in {list}"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn compiled_exec_decides_like_the_policies(
        policies in prop::collection::vec(policy(), 1..4),
        queries in prop::collection::vec((path(), prop::bool::weighted(0.1)), 1..16),
    ) {
        let c = compile(&policies.iter().collect::<Vec<_>>());
        for (path, memfd) in &queries {
            let (verdict, rule) = kernel_exec(&c, path, *memfd);
            prop_assert_eq!(&verdict, &model_exec(&policies, path, *memfd), "exec of {}", path);
            // A deny names a deny rule that matches this exec.
            if let Some(index) = rule {
                let (policy, field) = named_rule(&c, &policies, index);
                let i = field_index(&field, "spec.exec.deny");
                prop_assert!(policy.spec.exec.deny[i].matches(path, *memfd), "{} for {}", field, path);
            }
            let exempt = policies
                .iter()
                .any(|p| p.spec.memory.allow_executables.contains(path));
            let kernel_exempt = longest_path(&c, path).is_some_and(|(_, r)| r.wx_exempt != 0);
            prop_assert_eq!(kernel_exempt, exempt, "W^X exemption of {}", path);
        }
    }

    #[test]
    fn compiled_connect_decides_like_the_policies(
        policies in prop::collection::vec(policy(), 1..4),
        services in prop::collection::btree_set((addr(), 1u16..16, protocol()), 0..3),
        queries in prop::collection::vec((addr(), 0u16..18, protocol()), 1..24),
    ) {
        let c = compile(&policies.iter().collect::<Vec<_>>());
        prop_assume!(c.dropped_ranges.is_empty());
        for (addr, port, protocol) in &queries {
            let (verdict, rule) = kernel_connect(&c, &services, *addr, *port, *protocol);
            prop_assert_eq!(
                &verdict,
                &model_connect(&policies, &services, *addr, *port, *protocol),
                "connect to {} port {} {:?}", addr, port, protocol
            );
            if let Some(index) = rule {
                prop_assert_ne!(u32::from(index), NOT_ALLOWED);
                let (policy, field) = named_rule(&c, &policies, index);
                let i = field_index(&field, "spec.connect.deny");
                prop_assert!(
                    policy.spec.connect.deny[i].matches(*addr, *port, *protocol),
                    "{} for {} port {}", field, addr, port
                );
            }
        }
    }
}
