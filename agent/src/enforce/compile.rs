//! Compiles the policies selecting one cgroup (a policy set) into what the kernel maps hold.
//! Pure: no maps, no files, so the semantics are unit-tested here.
//!
//! Union semantics as NetworkPolicy: a section restricts when any policy in the set restricts
//! it; allows are united; deny wins; the strongest action wins; Audit never kills.
//! Each behaviour compiles its own section (`crate::behaviour::*::compile`); this puts them
//! together. The kernel's LPM tries return only the longest match, so each entry here carries
//! what its covering (shorter) entries say: a deny anywhere on the way down wins.
use std::{collections::BTreeMap, net::Ipv4Addr};

use agent_common::{
    MAX_PORT_RANGES, PathRule, PortRange as KernelRange, PortRules, path_verdict, rule_id,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::compiled::Staging;
pub use super::compiled::{CompiledSet, PathEntry, RuleRef};
use crate::{behaviour, policy::Policy};

/// Compiles `policies` (all selecting the same cgroup) into one set.
pub fn compile(policies: &[&Policy]) -> CompiledSet {
    let mut staging = Staging::default();
    for (pi, policy) in policies.iter().enumerate() {
        // A learning policy only asks the kernel to report what the set allows; its rules
        // wait until it leaves Learn.
        if policy.spec.mode == crate::policy::Mode::Learn {
            staging.out.set.flags |= agent_common::set_flags::LEARN;
            continue;
        }
        behaviour::exec::compile::compile(&mut staging, pi, &policy.spec);
        behaviour::connect::compile::compile(&mut staging, pi, &policy.spec);
        behaviour::wx::compile::compile(&mut staging, pi, &policy.spec);
    }
    let Staging {
        mut out,
        exec_allow,
        exec_deny,
        wx_exempt,
        allow_nets,
        deny_nets,
    } = staging;

    // Every key any list names, each with what the longest match on it must say.
    let mut keys: Vec<PathEntry> = exec_allow
        .iter()
        .chain(&exec_deny)
        .map(|(e, _)| e.clone())
        .collect();
    keys.extend(wx_exempt.iter().cloned());
    keys.sort();
    keys.dedup();
    for key in keys {
        let most_specific = |list: &[(PathEntry, u16)]| {
            list.iter()
                .filter(|(e, _)| e.covers(&key))
                .max_by_key(|(e, _)| e.key_bytes().len())
                .map(|(_, i)| *i)
        };
        let mut rule = PathRule::default();
        if let Some(index) = most_specific(&exec_deny) {
            rule.exec = path_verdict::DENY;
            rule.exec_rule = index;
        } else if let Some(index) = most_specific(&exec_allow) {
            rule.exec = path_verdict::ALLOW;
            rule.exec_rule = index;
        }
        rule.wx_exempt = u16::from(wx_exempt.contains(&key));
        out.paths.insert(key, rule);
    }

    out.connect_allow = nets(&allow_nets, &mut out.dropped_ranges);
    out.connect_deny = nets(&deny_nets, &mut out.dropped_ranges);
    out
}

/// Each CIDR with the ranges of every CIDR covering it (itself included).
///
/// The probes key IPv4 as `::ffff:a.b.c.d`, so an IPv6 network short enough to cover
/// `::ffff:0:0/96` (e.g. `::/0`) would also match every IPv4 address in the trie. A policy's
/// IPv6 network says nothing about IPv4, so such a network gets an entry `0.0.0.0/0` beside it
/// that carries only the IPv4 rules covering it and shadows the IPv6 one for IPv4 lookups.
fn nets(entries: &[(IpNet, KernelRange)], dropped: &mut Vec<String>) -> BTreeMap<IpNet, PortRules> {
    let mut out = BTreeMap::new();
    let mut cidrs: Vec<IpNet> = entries.iter().map(|(n, _)| *n).collect();
    let mapped = IpNet::V6(Ipv6Net::new(Ipv4Addr::UNSPECIFIED.to_ipv6_mapped(), 96).expect("/96"));
    if cidrs.iter().any(|n| n.contains(&mapped)) {
        cidrs.push(IpNet::V4(
            Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("/0"),
        ));
    }
    cidrs.sort();
    cidrs.dedup();
    for cidr in cidrs {
        let mut rules = PortRules::default();
        let mut ranges: Vec<KernelRange> = entries
            .iter()
            .filter(|(n, _)| n.contains(&cidr))
            .map(|(_, r)| *r)
            .collect();
        ranges.dedup();
        for r in ranges {
            if (rules.count as usize) < MAX_PORT_RANGES {
                rules.ranges[rules.count as usize] = r;
                rules.count += 1;
            } else {
                dropped.push(format!("{cidr} ports {}-{}", r.lo, r.hi));
            }
        }
        out.insert(cidr, rules);
    }
    out
}

/// The 20-byte LPM key data and prefix length of `cidr` in `set`: IPv4 as `::ffff:a.b.c.d/96+n`.
pub fn addr_key(set: u32, cidr: &IpNet) -> (u32, agent_common::AddrKeyData) {
    let mut data = [0u8; 20];
    data[..4].copy_from_slice(&set.to_be_bytes());
    let (addr, bits) = match cidr {
        IpNet::V4(n) => (
            n.network().to_ipv6_mapped().octets(),
            96 + u32::from(n.prefix_len()),
        ),
        IpNet::V6(n) => (n.network().octets(), u32::from(n.prefix_len())),
    };
    data[4..].copy_from_slice(&addr);
    (32 + bits, data)
}

/// The LPM key data and prefix length of a path entry in `set`; `None` if too long.
pub fn path_key(set: u32, entry: &PathEntry) -> Option<(u32, agent_common::PathKeyData)> {
    let bytes = entry.key_bytes();
    if bytes.len() > agent_common::KEY_PATH_LEN {
        return None;
    }
    let mut data = [0u8; 4 + agent_common::KEY_PATH_LEN];
    data[..4].copy_from_slice(&set.to_be_bytes());
    data[4..4 + bytes.len()].copy_from_slice(&bytes);
    Some(((4 + bytes.len() as u32) * 8, data))
}

/// The rule index meaning "not on the allowlist".
pub const NOT_ALLOWED: u32 = rule_id::NOT_ALLOWED;
pub const PROTOCOL: u32 = rule_id::PROTOCOL;
pub const UNVERIFIABLE: u32 = rule_id::UNVERIFIABLE;
pub const MOVED: u32 = rule_id::MOVED;
pub const UNJUDGED: u32 = rule_id::UNJUDGED;

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use agent_common::{action, proto_mask, set_flags};

    use crate::policy::Action;

    use super::*;
    use crate::policy::load_str;

    fn policies(yaml: &str) -> Vec<Policy> {
        load_str(yaml, None).unwrap_or_else(|e| panic!("{e:?}"))
    }

    const A: &str = r#"
apiVersion: vigil.dev/v1alpha1
kind: ClusterRuntimePolicy
metadata: {name: a}
spec:
  hostProcesses: {}
  exec:
    allow: [{prefix: /usr/bin/}, {path: /tmp/tool}]
    deny: [{prefix: /tmp/}, {memfd: true}]
    action: Kill
  connect:
    allow: [{cidr: 10.0.0.0/8, ports: ["443"]}, {cidr: 10.1.0.0/16, ports: ["80"], protocol: TCP}]
    deny: [{cidr: "::1/128"}]
  memory: {writeExecute: Deny, allowExecutables: [/usr/bin/node], action: Alert}
"#;

    const B_AUDIT: &str = r#"
apiVersion: vigil.dev/v1alpha1
kind: ClusterRuntimePolicy
metadata: {name: b}
spec:
  hostProcesses: {}
  mode: Audit
  exec:
    allow: [{path: /opt/app/bin/app}]
    action: Kill
  connect: {allowServices: true}
"#;

    #[test]
    fn deny_wins_over_a_more_specific_allow_and_allows_are_inherited() {
        let ps = policies(A);
        let c = compile(&ps.iter().collect::<Vec<_>>());
        let tool = &c.paths[&PathEntry {
            path: "/tmp/tool".into(),
            exact: true,
        }];
        assert_eq!(
            tool.exec,
            path_verdict::DENY,
            "the allowed path lies under a denied prefix"
        );
        assert_eq!(c.rules[tool.exec_rule as usize].field, "spec.exec.deny[0]");
        let node = &c.paths[&PathEntry {
            path: "/usr/bin/node".into(),
            exact: true,
        }];
        assert_eq!(
            (node.exec, node.wx_exempt),
            (path_verdict::ALLOW, 1),
            "exemption entry inherits the /usr/bin/ allow"
        );
        assert_eq!(
            c.set.flags & set_flags::EXEC_DENY_MEMFD,
            set_flags::EXEC_DENY_MEMFD
        );
        assert_eq!(c.rules[c.set.memfd_rule as usize].text, "memfd");
        assert_eq!(c.set.exec_action, u32::from(action::KILL));
        assert_eq!(c.set.wx_action, u32::from(action::ALERT));
    }

    #[test]
    fn a_more_specific_cidr_keeps_the_ports_of_the_one_covering_it() {
        let ps = policies(A);
        let c = compile(&ps.iter().collect::<Vec<_>>());
        let inner = &c.connect_allow[&"10.1.0.0/16".parse::<IpNet>().unwrap()];
        let ranges: Vec<(u16, u16, u16)> = inner.ranges[..inner.count as usize]
            .iter()
            .map(|r| (r.lo, r.hi, r.protocols))
            .collect();
        assert!(ranges.contains(&(443, 443, proto_mask::ANY)), "{ranges:?}");
        assert!(ranges.contains(&(80, 80, proto_mask::TCP)), "{ranges:?}");
        let deny = &c.connect_deny[&"::1/128".parse::<IpNet>().unwrap()];
        assert_eq!(
            (deny.count, deny.ranges[0].lo, deny.ranges[0].hi),
            (1, 0, 65535)
        );
    }

    #[test]
    fn union_of_policies_audit_caps_at_alert_and_allowlists_unite() {
        let mut ps = policies(A);
        ps.extend(policies(B_AUDIT));
        let c = compile(&ps.iter().collect::<Vec<_>>());
        assert_eq!(
            c.set.exec_action,
            u32::from(action::KILL),
            "A's Kill is the strongest"
        );
        let app = &c.paths[&PathEntry {
            path: "/opt/app/bin/app".into(),
            exact: true,
        }];
        assert_eq!(app.exec, path_verdict::ALLOW);
        assert_ne!(c.set.flags & set_flags::CONNECT_ALLOW_SERVICES, 0);

        let b = policies(B_AUDIT);
        let c = compile(&b.iter().collect::<Vec<_>>());
        assert_eq!(
            c.set.exec_action,
            u32::from(action::ALERT),
            "Audit never kills"
        );
        assert_eq!(c.set.flags & set_flags::WX_DENY, 0);
    }

    #[test]
    fn deny_sits_between_alert_and_kill_and_audit_caps_it_at_alert() {
        let deny = |mode: &str| {
            policies(&format!(
                "apiVersion: vigil.dev/v1alpha1\nkind: ClusterRuntimePolicy\nmetadata: {{name: d}}\nspec:\n  hostProcesses: {{}}\n  mode: {mode}\n  connect: {{deny: [{{cidr: 10.0.0.0/8}}], action: Deny}}\n"
            ))
        };
        let d = deny("Enforce");
        let c = compile(&d.iter().collect::<Vec<_>>());
        assert_eq!(c.set.connect_action, u32::from(action::DENY));
        assert_ne!(
            c.set.flags & set_flags::CONNECT_RULES,
            0,
            "a deny list alone makes raw sockets judged"
        );
        assert_eq!(c.set.flags & set_flags::CONNECT_ALLOWLIST, 0);
        // Kill (A's connect is Alert; its exec is Kill) and Deny united: the strongest wins.
        let mut both = d.clone();
        both.extend(policies(A).into_iter().map(|mut p| {
            p.spec.connect.action = Action::Kill;
            p
        }));
        let c = compile(&both.iter().collect::<Vec<_>>());
        assert_eq!(c.set.connect_action, u32::from(action::KILL));
        let audit = deny("Audit");
        let c = compile(&audit.iter().collect::<Vec<_>>());
        assert_eq!(c.set.connect_action, u32::from(action::ALERT));
    }

    /// Found by the property test: `::/0` in an allowlist allowed every IPv4 address too,
    /// because the trie keys IPv4 inside `::ffff:0:0/96`.
    #[test]
    fn an_ipv6_network_says_nothing_about_ipv4() {
        let ps = policies(
            "apiVersion: vigil.dev/v1alpha1\nkind: ClusterRuntimePolicy\nmetadata: {name: v6}\nspec:\n  hostProcesses: {}\n  connect: {allow: [{cidr: \"::/0\"}, {cidr: 10.0.0.0/8, ports: [\"443\"]}], deny: [{cidr: \"::/0\", ports: [\"25\"]}]}\n",
        );
        let c = compile(&ps.iter().collect::<Vec<_>>());
        let everything_v4: IpNet = "0.0.0.0/0".parse().unwrap();
        for (map, what) in [(&c.connect_allow, "allow"), (&c.connect_deny, "deny")] {
            let shadow = &map[&everything_v4];
            assert_eq!(shadow.count, 0, "{what}: no IPv4 rule covers 0.0.0.0/0");
        }
        let ten = &c.connect_allow[&"10.0.0.0/8".parse::<IpNet>().unwrap()];
        assert_eq!(
            (ten.count, ten.ranges[0].lo),
            (1, 443),
            "IPv4 entries do not inherit IPv6 ports"
        );
        let v6 = &c.connect_allow[&"::/0".parse::<IpNet>().unwrap()];
        assert_eq!((v6.count, v6.ranges[0].lo, v6.ranges[0].hi), (1, 0, 65535));
    }

    #[test]
    fn keys_put_the_set_first_and_mark_exact_paths_with_their_nul() {
        let (bits, data) = path_key(
            3,
            &PathEntry {
                path: "/bin/sh".into(),
                exact: true,
            },
        )
        .unwrap();
        assert_eq!(bits, (4 + 8) * 8);
        assert_eq!(&data[..4], &[0, 0, 0, 3]);
        assert_eq!(&data[4..12], b"/bin/sh\0");
        let (bits, data) = addr_key(1, &"127.0.0.0/8".parse().unwrap());
        assert_eq!(bits, 32 + 96 + 8);
        assert_eq!(&data[14..17], &[0xff, 0xff, 127]);
        assert!(
            path_key(
                1,
                &PathEntry {
                    path: format!("/{}", "a".repeat(300)),
                    exact: false
                }
            )
            .is_none()
        );
    }

    /// Drift alone puts an exec action in force and names its own rule; the kernel's decision
    /// on the compiled set reports a path deny first, then drift (which a path allow does not
    /// exempt), and lets a drifted file through only where no policy denies drift.
    #[test]
    fn drift_compiles_to_a_set_flag_and_rule_and_is_decided_after_path_denies() {
        const DRIFT: &str = r#"
apiVersion: vigil.dev/v1alpha1
kind: ClusterRuntimePolicy
metadata: {name: drift}
spec:
  namespaceSelector: {}
  exec: {drift: Deny, action: Kill}
"#;
        const PATHS: &str = r#"
apiVersion: vigil.dev/v1alpha1
kind: ClusterRuntimePolicy
metadata: {name: paths}
spec:
  namespaceSelector: {}
  exec:
    allow: [{prefix: /tmp/}]
    deny: [{path: /tmp/evil}]
    action: Alert
"#;
        let drift = policies(DRIFT);
        let alone = compile(&drift.iter().collect::<Vec<_>>());
        assert_ne!(alone.set.flags & set_flags::EXEC_DENY_DRIFT, 0);
        assert_eq!(alone.set.exec_action, u32::from(action::KILL));
        let rule = &alone.rules[alone.set.drift_rule as usize];
        assert_eq!(rule.field, "spec.exec.drift");

        let both: Vec<Policy> = policies(DRIFT).into_iter().chain(policies(PATHS)).collect();
        let c = compile(&both.iter().collect::<Vec<_>>());
        let decide = |path: &str, drift: bool| {
            let exe = crate::behaviour::exec::decide::lookup(&c, path);
            let v = agent_common::decide::exec(1, &c.set, false, drift, true, &exe, None);
            v.is_hit()
                .then(|| c.rules[rule_id::index(v.rule) as usize].field.clone())
        };
        assert_eq!(
            decide("/tmp/evil", true).as_deref(),
            Some("spec.exec.deny[0]")
        );
        assert_eq!(
            decide("/tmp/tool", true).as_deref(),
            Some("spec.exec.drift")
        );
        assert_eq!(decide("/tmp/tool", false), None);
        // Without a drift rule, the same drifted file is only judged by its path.
        let paths = policies(PATHS);
        let p = compile(&paths.iter().collect::<Vec<_>>());
        assert_eq!(p.set.flags & set_flags::EXEC_DENY_DRIFT, 0);
        let exe = crate::behaviour::exec::decide::lookup(&p, "/tmp/tool");
        assert!(!agent_common::decide::exec(1, &p.set, false, true, true, &exe, None).is_hit());
    }

    /// A learning policy marks its set and adds no rule of its own; the other policies of
    /// the set keep theirs.
    #[test]
    fn a_learning_policy_marks_the_set_and_enforces_nothing_of_its_own() {
        let learn = policies(
            "apiVersion: vigil.dev/v1alpha1\nkind: RuntimePolicy\nmetadata: {name: l, namespace: shop}\nspec:\n  podSelector: {}\n  mode: Learn\n  exec: {allow: [{path: /bin/sh}], action: Kill}\n  memory: {writeExecute: Deny}\n",
        );
        let alone = compile(&learn.iter().collect::<Vec<_>>());
        assert_ne!(alone.set.flags & set_flags::LEARN, 0);
        assert_eq!(
            alone.set.flags & !set_flags::LEARN,
            0,
            "{:#x}",
            alone.set.flags
        );
        assert!(alone.paths.is_empty());
        let enforcing = policies(A);
        let both = compile(&[&learn[0], &enforcing[0]]);
        assert_ne!(both.set.flags & set_flags::LEARN, 0);
        assert_ne!(both.set.flags & set_flags::EXEC_ALLOWLIST, 0);
        assert_eq!(both.paths, compile(&[&enforcing[0]]).paths);
    }

    /// `sha256` entries mark the set and carry their digests, once each, and make no
    /// allowlist; a policy without them leaves the set unmarked.
    #[test]
    fn digests_compile_to_a_set_flag_and_the_sets_list_without_an_allowlist() {
        let d = "ab".repeat(32);
        let text = format!(
            "apiVersion: vigil.dev/v1alpha1\nkind: ClusterRuntimePolicy\nmetadata: {{name: d}}\nspec:\n  namespaceSelector: {{}}\n  exec: {{drift: Deny, allow: [{{sha256: {d}}}, {{sha256: {d}}}], action: Kill}}\n"
        );
        let p = policies(&text);
        let c = compile(&p.iter().collect::<Vec<_>>());
        assert_ne!(c.set.flags & set_flags::EXEC_DIGESTS, 0);
        assert_eq!(c.set.flags & set_flags::EXEC_ALLOWLIST, 0);
        assert_eq!(c.digests, vec![[0xab; 32]]);
        let plain = policies(
            "apiVersion: vigil.dev/v1alpha1\nkind: ClusterRuntimePolicy\nmetadata: {name: p}\nspec:\n  namespaceSelector: {}\n  exec: {drift: Deny}\n",
        );
        let c = compile(&plain.iter().collect::<Vec<_>>());
        assert_eq!(c.set.flags & set_flags::EXEC_DIGESTS, 0);
        assert!(c.digests.is_empty());
    }
}
