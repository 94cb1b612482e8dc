//! The exec section of a policy: allowed and denied paths, prefixes and memfd, and the action.
use agent_common::set_flags;

use crate::{
    enforce::compiled::{PathEntry, Staging, kernel_action},
    policy::{ExecRule, PolicySpec},
};

/// Adds policy `pi`'s exec rules to the set.
pub fn compile(staging: &mut Staging, pi: usize, spec: &PolicySpec) {
    let exec = &spec.exec;
    let out = &mut staging.out;
    if exec.has_rules() {
        out.set.exec_action = out
            .set
            .exec_action
            .max(kernel_action(spec.effective(exec.action)));
    }
    if exec.has_allowlist() {
        out.set.flags |= set_flags::EXEC_ALLOWLIST;
    }
    // Content vouches only against drift: without a drift rule of the set there is nothing
    // to vouch against (validation refuses such a policy alone; another policy of the set
    // may deny drift).
    for digest in exec.digests() {
        out.set.flags |= set_flags::EXEC_DIGESTS;
        if !out.digests.contains(digest) {
            out.digests.push(*digest);
        }
    }
    if exec.deny_drift && out.set.flags & set_flags::EXEC_DENY_DRIFT == 0 {
        out.set.flags |= set_flags::EXEC_DENY_DRIFT;
        out.set.drift_rule = out
            .rule(
                pi,
                "spec.exec.drift".into(),
                "drift: a file that did not come with the container's image".into(),
            )
            .into();
    }
    for (list, rules, sink) in [
        ("allow", &exec.allow, &mut staging.exec_allow),
        ("deny", &exec.deny, &mut staging.exec_deny),
    ] {
        for (i, rule) in rules.iter().enumerate() {
            let index = out.rule(pi, format!("spec.exec.{list}[{i}]"), rule.to_string());
            match rule {
                ExecRule::Path(p) => sink.push((
                    PathEntry {
                        path: p.clone(),
                        exact: true,
                    },
                    index,
                )),
                ExecRule::Prefix(p) => sink.push((
                    PathEntry {
                        path: p.clone(),
                        exact: false,
                    },
                    index,
                )),
                ExecRule::Memfd if list == "deny" => {
                    out.set.flags |= set_flags::EXEC_DENY_MEMFD;
                    out.set.memfd_rule = index.into();
                }
                ExecRule::Memfd => out.set.flags |= set_flags::EXEC_ALLOW_MEMFD,
                ExecRule::Sha256(_) => {}
            }
        }
    }
}
