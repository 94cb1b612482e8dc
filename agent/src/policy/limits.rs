//! Which rules the kernel can decide. A rule that does not fit the kernel's maps is decided in
//! user space, after the behaviour already happened, so it can only alert: validation refuses
//! `Kill` on such rules, and the compiler uses the same functions to route them.
use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use super::model::{ConnectRule, ExecRule, PortRange, Protocol};

/// Longest exec path or prefix (and `allowExecutables` entry), in bytes, the kernel's path maps
/// hold: an LPM key carries 252 path bytes and an exact path keeps its terminating NUL.
pub const KERNEL_PATH_MAX: usize = 251;
const _: () = assert!(
    KERNEL_PATH_MAX == agent_common::KEY_PATH_LEN - 1,
    "an exact key holds the path and its NUL"
);

/// Distinct (port range, protocol) entries the kernel keeps for one CIDR of one list.
pub const KERNEL_PORT_RANGES: usize = 16;

/// Why a rule can only be decided in user space.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UserSpaceOnly {
    #[error(
        "this path is {len} bytes, longer than the {max} bytes the kernel's path maps hold, so it \
         is decided in user space after the exec, which can only alert",
        max = KERNEL_PATH_MAX
    )]
    PathTooLong { len: usize },
    #[error(
        "{cidr} has {count} distinct port ranges in this list, more than the {max} the kernel \
         keeps per CIDR, so its connects are decided in user space, which can only alert",
        max = KERNEL_PORT_RANGES
    )]
    TooManyPortRanges { cidr: IpNet, count: usize },
}

/// Whether the kernel can match `path` (an exec path or prefix, or an executable exempt from
/// the W^X rule).
pub fn path_in_kernel(path: &str) -> Result<(), UserSpaceOnly> {
    if path.len() > KERNEL_PATH_MAX {
        Err(UserSpaceOnly::PathTooLong { len: path.len() })
    } else {
        Ok(())
    }
}

/// Whether the kernel can match this exec rule (`memfd` always: it is a flag, not a path).
pub fn exec_rule_in_kernel(rule: &ExecRule) -> Result<(), UserSpaceOnly> {
    match rule {
        ExecRule::Path(p) | ExecRule::Prefix(p) => path_in_kernel(p),
        // Decided in user space on the file's content; the kernel keeps only its identity.
        ExecRule::Memfd | ExecRule::Sha256(_) => Ok(()),
    }
}

/// Whether the kernel can hold one `allow` or `deny` list: counts the distinct
/// (port range, protocol) entries per CIDR (a rule without ports is one entry, all ports).
/// On failure, names the index of the first rule that went over the limit.
pub fn connect_list_in_kernel(rules: &[ConnectRule]) -> Result<(), (usize, UserSpaceOnly)> {
    let mut entries: BTreeMap<IpNet, BTreeSet<(PortRange, Option<Protocol>)>> = BTreeMap::new();
    for (index, rule) in rules.iter().enumerate() {
        let set = entries.entry(rule.cidr).or_default();
        set.extend(rule.port_ranges().into_iter().map(|r| (r, rule.protocol)));
        if set.len() > KERNEL_PORT_RANGES {
            let err = UserSpaceOnly::TooManyPortRanges {
                cidr: rule.cidr,
                count: set.len(),
            };
            return Err((index, err));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(cidr: &str, ports: &[(u16, u16)]) -> ConnectRule {
        ConnectRule {
            cidr: cidr.parse().unwrap(),
            ports: ports.iter().map(|&(lo, hi)| PortRange { lo, hi }).collect(),
            protocol: None,
        }
    }

    #[test]
    fn path_limit_is_inclusive() {
        assert!(path_in_kernel(&format!("/{}", "a".repeat(KERNEL_PATH_MAX - 1))).is_ok());
        let long = format!("/{}", "a".repeat(KERNEL_PATH_MAX));
        assert_eq!(
            path_in_kernel(&long),
            Err(UserSpaceOnly::PathTooLong {
                len: KERNEL_PATH_MAX + 1
            })
        );
        assert!(exec_rule_in_kernel(&ExecRule::Memfd).is_ok());
        assert!(exec_rule_in_kernel(&ExecRule::Prefix(long)).is_err());
    }

    #[test]
    fn port_ranges_count_per_cidr_across_rules() {
        let sixteen: Vec<(u16, u16)> = (1..=16).map(|p| (p, p)).collect();
        // 16 ranges on one CIDR fit, even spread over two rules, and repeats do not count.
        let list = vec![
            rule("10.0.0.0/8", &sixteen[..8]),
            rule("10.0.0.0/8", &sixteen),
        ];
        assert!(connect_list_in_kernel(&list).is_ok());
        // Another CIDR has its own budget.
        let list = vec![
            rule("10.0.0.0/8", &sixteen),
            rule("10.1.0.0/16", &[(17, 17)]),
        ];
        assert!(connect_list_in_kernel(&list).is_ok());
        // The 17th range on the same CIDR does not fit; the error names that rule.
        let list = vec![
            rule("10.0.0.0/8", &sixteen),
            rule("192.0.2.0/24", &[]),
            rule("10.0.0.0/8", &[(17, 20)]),
        ];
        let (index, err) = connect_list_in_kernel(&list).unwrap_err();
        assert_eq!(index, 2);
        assert!(err.to_string().contains("17 distinct port ranges"), "{err}");
    }

    #[test]
    fn protocols_are_separate_entries() {
        let mut tcp = rule("10.0.0.0/8", &[(1, 1)]);
        tcp.protocol = Some(Protocol::Tcp);
        let mut udp = tcp.clone();
        udp.protocol = Some(Protocol::Udp);
        let mut list = vec![tcp, udp];
        list.push(rule(
            "10.0.0.0/8",
            &(2..=15).map(|p| (p, p)).collect::<Vec<_>>(),
        ));
        assert!(connect_list_in_kernel(&list).is_ok(), "16 entries");
        list.push(rule("10.0.0.0/8", &[(1, 1)]));
        assert!(connect_list_in_kernel(&list).is_err(), "17 entries");
    }
}
