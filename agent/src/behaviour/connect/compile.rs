//! The connect section of a policy: allowed and denied CIDRs with ports and protocol,
//! `allowServices`, and the action.
use agent_common::{PortRange as KernelRange, proto_mask, set_flags};

use crate::{
    enforce::compiled::{Staging, kernel_action},
    policy::{ConnectRule, PolicySpec, Protocol},
};

/// Adds policy `pi`'s connect rules to the set.
pub fn compile(staging: &mut Staging, pi: usize, spec: &PolicySpec) {
    let connect = &spec.connect;
    let out = &mut staging.out;
    if connect.has_allowlist() || !connect.deny.is_empty() {
        out.set.connect_action = out
            .set
            .connect_action
            .max(kernel_action(spec.effective(connect.action)));
    }
    if connect.has_allowlist() {
        out.set.flags |= set_flags::CONNECT_ALLOWLIST;
    }
    if connect.allow_services {
        out.set.flags |= set_flags::CONNECT_ALLOW_SERVICES;
    }
    if !connect.deny.is_empty() {
        out.set.flags |= set_flags::CONNECT_RULES;
    }
    for (list, rules, sink) in [
        ("allow", &connect.allow, &mut staging.allow_nets),
        ("deny", &connect.deny, &mut staging.deny_nets),
    ] {
        for (i, rule) in rules.iter().enumerate() {
            let index = out.rule(pi, format!("spec.connect.{list}[{i}]"), text(rule));
            let protocols = match rule.protocol {
                None => proto_mask::ANY,
                Some(Protocol::Tcp) => proto_mask::TCP,
                Some(Protocol::Udp) => proto_mask::UDP,
            };
            for r in rule.port_ranges() {
                sink.push((
                    rule.cidr,
                    KernelRange {
                        lo: r.lo,
                        hi: r.hi,
                        protocols,
                        rule: index,
                    },
                ));
            }
        }
    }
}

/// What a connect rule says, e.g. `10.0.0.0/8 ports 443 TCP`.
fn text(rule: &ConnectRule) -> String {
    let ports: Vec<String> = rule.ports.iter().map(ToString::to_string).collect();
    let ports = if ports.is_empty() {
        "all ports".to_string()
    } else {
        format!("ports {}", ports.join(","))
    };
    let proto = match rule.protocol {
        None => "",
        Some(Protocol::Tcp) => " TCP",
        Some(Protocol::Udp) => " UDP",
    };
    format!("{} {ports}{proto}", rule.cidr)
}
