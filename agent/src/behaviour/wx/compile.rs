//! The memory section of a policy: W^X, foreign writes and the 32-bit entry denied, the
//! executables exempt from W^X, and the action.
use agent_common::set_flags;

use crate::{
    enforce::compiled::{PathEntry, Staging, kernel_action},
    policy::{CompatSyscalls, ForeignWrites, PolicySpec, WriteExecute},
};

/// Adds policy `pi`'s memory rules to the set.
pub fn compile(staging: &mut Staging, pi: usize, spec: &PolicySpec) {
    let memory = &spec.memory;
    let out = &mut staging.out;
    let action = kernel_action(spec.effective(memory.action));
    let denials = [
        (
            memory.write_execute == WriteExecute::Deny,
            set_flags::WX_DENY,
            "spec.memory.writeExecute",
        ),
        (
            memory.foreign_writes == ForeignWrites::Deny,
            set_flags::FOREIGN_WRITES_DENY,
            "spec.memory.foreignWrites",
        ),
        (
            memory.compat_syscalls == CompatSyscalls::Deny,
            set_flags::COMPAT_DENY,
            "spec.memory.compatSyscalls",
        ),
    ];
    for (denied, flag, field) in denials {
        if !denied {
            continue;
        }
        // The first policy of the set that denies it is the one reported.
        if out.set.flags & flag == 0 {
            let rule = u32::from(out.rule(pi, field.into(), "Deny".into()));
            match flag {
                set_flags::WX_DENY => out.set.wx_rule = rule,
                set_flags::FOREIGN_WRITES_DENY => out.set.foreign_rule = rule,
                _ => out.set.compat_rule = rule,
            }
        }
        out.set.flags |= flag;
        out.set.wx_action = out.set.wx_action.max(action);
    }
    for exe in &memory.allow_executables {
        staging.wx_exempt.push(PathEntry {
            path: exe.clone(),
            exact: true,
        });
    }
}
