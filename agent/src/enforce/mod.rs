//! Enforcement: policies compiled into the kernel maps, swapped in without a gap, and the
//! names behind the rule indices the kernel reports.
//!
//! Reload writes the new sets under fresh ids (the two halves of the id space alternate),
//! repoints every cgroup binding, waits until no program that looked up an old set still runs
//! (`grace.rs`), then deletes the old sets. Every lookup in between sees a complete old or a
//! complete new set: there is no moment without enforcement.
pub mod bindings;
pub mod compile;
pub mod compiled;
mod grace;
pub mod seed;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
};

use agent_common::{MAX_POLICY_SETS, PolicySet, ServiceKey};
use aya::maps::lpm_trie::Key;

use crate::{
    cloudevents::shared::Shared,
    ebpf::PolicyMaps,
    metadata::cgroup,
    policy::{Policy, PolicyRef},
};
use compile::{CompiledSet, addr_key, compile, path_key};

#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error("too many policy sets: {0} (at most {max} per generation)", max = HALF - 1)]
    TooManySets(usize),
    #[error("a set denies 32-bit calls, but the hook that sees them did not attach: {0}")]
    CompatHook(#[source] Box<crate::ebpf::EbpfError>),
    #[error(
        "a set kills, but the hook that carries out the kills other hooks cannot send (raw sys_exit) did not attach: {0}"
    )]
    KillHook(#[source] Box<crate::ebpf::EbpfError>),
}

const HALF: u32 = MAX_POLICY_SETS / 2;

/// A kernel map's fill: what `/metrics` and the state file show per map.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MapUsage {
    pub map: &'static str,
    pub entries: usize,
    /// Its `max_entries` (0: the kernel would not say).
    pub capacity: u32,
}

impl MapUsage {
    fn new(map: &'static str, entries: usize, capacity: u32) -> Self {
        Self {
            map,
            entries,
            capacity,
        }
    }
}

/// One generation of compiled sets as written to the kernel.
struct Generation {
    base: u32,
    sets: Vec<CompiledSet>,
    /// For each set, the policies it was compiled from.
    members: Vec<Vec<Policy>>,
}

impl Generation {
    fn set(&self, id: u32) -> Option<(&CompiledSet, &Vec<Policy>)> {
        let i = id.checked_sub(self.base + 1)? as usize;
        Some((self.sets.get(i)?, self.members.get(i)?))
    }
}

/// What an apply did, for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub policies: usize,
    pub sets: usize,
    pub bound: Vec<String>,
    /// Binding paths whose cgroup does not exist (yet); retried by `refresh`.
    pub waiting: Vec<String>,
    /// Binding paths whose cgroup is deeper than the kernel looks for bindings: refused.
    pub too_deep: Vec<String>,
}

pub struct Enforcer {
    maps: PolicyMaps,
    cgroup_root: PathBuf,
    /// Bindings refused for depth, each logged once.
    refused_deep: std::collections::BTreeSet<String>,
    current: Option<Generation>,
    previous: Option<Generation>,
    /// Binding path -> set id, as wanted by the current generation.
    wanted: BTreeMap<String, u32>,
    /// Binding path -> (cgroup id, set) it is bound to now.
    bound: HashMap<String, (u64, u32)>,
    /// Map entries that could not be removed (each logged): a stale rule or binding the
    /// kernel may still act on, so it must not pass unseen.
    map_errors: u64,
    /// What `SERVICES` holds, as last written; `None` until read from the map, and again
    /// after a write failed part way.
    services: Option<HashSet<ServiceKey>>,
    /// The kernel's count of cgroup changes when every binding was last looked up.
    cgroup_changes_seen: Option<u64>,
    /// When every binding was last looked up.
    checked_every: Option<std::time::Instant>,
    /// Whether a failed read of the count was logged (once is enough).
    count_unreadable_logged: bool,
    /// The last [`agent_common::PolicySet::stamp`] given: each set written gets the next.
    last_stamp: u32,
    /// Raw `sys_enter` and `sys_exit` where each waits for the first set that needs it (a set
    /// that denies 32-bit calls, a set that kills); empty where they are attached from the
    /// start.
    late: Vec<crate::ebpf::late::Late>,
    /// What [`Self::describe`] said of each set, rule and section since the last apply: every
    /// event of a flood names the same rule, and now shares it.
    described: std::cell::RefCell<HashMap<RuleAt, Shared<PolicyRef>>>,
}

/// What a set decides an executable's content by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentRules {
    /// The `sha256` entries of its policies.
    pub digests: Vec<[u8; 32]>,
    /// Its exec action (kernel encoding).
    pub action: u32,
    /// The rule index of its drift rule.
    pub drift_rule: u32,
}

/// A violation's set, rule index and section, as [`Enforcer::describe`] is asked.
type RuleAt = (u32, u32, &'static str);

/// Which bindings a pass looks up.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Every wanted path: a bound path's cgroup may have been made anew or removed.
    Every,
    /// Only wanted paths that are not bound yet (pods whose cgroups are still to come).
    Unbound,
}

/// The longest a bound path goes without being looked up while no cgroup change is
/// counted. The count is kept by raw tracepoint programs, which (unlike the syscall
/// tracepoints, see docs/kernels.md) are skipped only when they recurse into themselves; the
/// backstop bounds what a change nobody foresaw (a count that cannot be read, a new way to
/// make a cgroup) can cost.
const CHECK_EVERY_AT_LEAST: std::time::Duration = std::time::Duration::from_secs(10);

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> EnforceError {
    move |source| EnforceError::Map { map, source }
}

/// Logs and counts (in `errors`) a failed removal of `key` from `map`; a key already gone is
/// no error. A free function so that it borrows only the counter, not the whole enforcer.
fn removed(
    errors: &mut u64,
    map: &'static str,
    key: impl FnOnce() -> String,
    result: Result<(), aya::maps::MapError>,
) {
    if let Err(error) = absent_is_removed(result) {
        *errors += 1;
        tracing::warn!(map, key = %key(), %error, total = *errors, "could not remove a kernel map entry; the stale entry stays in the kernel");
    }
}

/// A removal's outcome with "the key was not there" counted as done: every removal follows
/// what the agent believes is in the map, and an entry already gone is what it wanted.
pub fn absent_is_removed(
    result: Result<(), aya::maps::MapError>,
) -> Result<(), aya::maps::MapError> {
    use aya::maps::MapError;
    match result {
        Err(MapError::KeyNotFound | MapError::ElementNotFound) => Ok(()),
        Err(MapError::SyscallError(aya::sys::SyscallError { io_error, .. }))
            if io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other,
    }
}

impl Enforcer {
    pub fn new(maps: PolicyMaps, cgroup_root: PathBuf) -> Self {
        Self {
            maps,
            cgroup_root,
            current: None,
            previous: None,
            wanted: BTreeMap::new(),
            bound: HashMap::new(),
            refused_deep: std::collections::BTreeSet::new(),
            map_errors: 0,
            services: None,
            cgroup_changes_seen: None,
            checked_every: None,
            count_unreadable_logged: false,
            last_stamp: 0,
            late: Vec::new(),
            described: std::cell::RefCell::default(),
        }
    }

    /// Raw `sys_enter` and `sys_exit` where each waits for the first set that needs it
    /// (`ebpf::late`).
    pub fn with_late(mut self, hooks: Vec<crate::ebpf::late::Late>) -> Self {
        self.late = hooks;
        self
    }

    /// The kernel's count of cgroups made or removed; `None` when it cannot be read, which
    /// makes the next pass look at every binding.
    fn cgroup_changes(&mut self) -> Option<u64> {
        match self.maps.cgroup_changes.get(&0, 0) {
            Ok(count) => Some(count),
            Err(err) => {
                if !std::mem::replace(&mut self.count_unreadable_logged, true) {
                    tracing::warn!(
                        %err,
                        "map CGROUP_CHANGES cannot be read: every binding is looked up at every watch tick instead"
                    );
                }
                None
            }
        }
    }

    /// Map entries the agent failed to remove since it started.
    pub fn map_errors(&self) -> u64 {
        self.map_errors
    }

    /// Compiles `policies` for their `hostProcesses` bindings (a plain host) and swaps them in.
    pub fn apply(&mut self, policies: &[Policy]) -> Result<Applied, EnforceError> {
        self.apply_bindings(policies, &bindings::host_bindings(policies))
    }

    /// Compiles `policies` for `bindings` (cgroup path -> indices of the policies covering
    /// it; none: explicitly no policy) and swaps them in.
    pub fn apply_bindings(
        &mut self,
        policies: &[Policy],
        bindings: &BTreeMap<String, bindings::Members>,
    ) -> Result<Applied, EnforceError> {
        // Bindings with the same policies (and hand-over) share one set.
        let mut set_of_members: BTreeMap<bindings::Members, u32> = BTreeMap::new();
        let base = match &self.current {
            Some(g) if g.base == 0 => HALF,
            _ => 0,
        };
        let mut generation = Generation {
            base,
            sets: Vec::new(),
            members: Vec::new(),
        };
        let mut wanted = BTreeMap::new();
        for (path, members) in bindings {
            if members.policies.is_empty() {
                wanted.insert(path.clone(), 0);
                continue;
            }
            let id = match set_of_members.get(members) {
                Some(id) => *id,
                None => {
                    let chosen: Vec<&Policy> =
                        members.policies.iter().map(|i| &policies[*i]).collect();
                    let mut compiled = compile(&chosen);
                    if members.runtime_handover {
                        compiled.set.flags |= agent_common::set_flags::RUNTIME_HANDOVER;
                    }
                    for dropped in &compiled.dropped_ranges {
                        tracing::warn!(range = %dropped, "more port ranges for one CIDR than the kernel keeps; this range is not enforced");
                    }
                    generation.sets.push(compiled);
                    generation
                        .members
                        .push(chosen.into_iter().cloned().collect());
                    let id = base + generation.sets.len() as u32;
                    if id >= base + HALF {
                        return Err(EnforceError::TooManySets(generation.sets.len()));
                    }
                    set_of_members.insert(members.clone(), id);
                    id
                }
            };
            wanted.insert(path.clone(), id);
        }

        // 1. The new sets, complete, under ids no binding points to yet.
        for (i, compiled) in generation.sets.iter().enumerate() {
            self.write_set(base + 1 + i as u32, compiled)?;
        }
        // 2. Repoint the bindings (and drop those no policy wants any more).
        self.wanted = wanted;
        let applied = self.bind_all(Pass::Every)?;
        // 3. The old sets: nothing points to them any more, and once the programs that looked
        // them up before step 2 have finished, nothing reads them.
        if let Some(current) = self.current.take() {
            grace::wait_for_running_programs();
            self.delete_generation(&current)?;
            // Kept only to name the rules of events still in flight.
            self.previous = Some(current);
        }
        self.current = Some(generation);
        // Set ids are given again by later generations.
        self.described.get_mut().clear();
        Ok(Applied {
            policies: policies.len(),
            sets: set_of_members.len(),
            ..applied
        })
    }

    fn write_set(&mut self, id: u32, compiled: &CompiledSet) -> Result<(), EnforceError> {
        for (entry, rule) in &compiled.paths {
            let Some((bits, data)) = path_key(id, entry) else {
                continue;
            };
            self.maps
                .exec_paths
                .insert(&Key::new(bits, data), *rule, 0)
                .map_err(map_err("EXEC_PATHS"))?;
        }
        for (net, rules) in &compiled.connect_allow {
            let (bits, data) = addr_key(id, net);
            self.maps
                .connect_allow
                .insert(&Key::new(bits, data), *rules, 0)
                .map_err(map_err("CONNECT_ALLOW"))?;
        }
        for (net, rules) in &compiled.connect_deny {
            let (bits, data) = addr_key(id, net);
            self.maps
                .connect_deny
                .insert(&Key::new(bits, data), *rules, 0)
                .map_err(map_err("CONNECT_DENY"))?;
        }
        // Sticky flags, raised before the set is bound: until then the 32-bit entry costs
        // every system call one array read (after it, one more read of the task's status),
        // and every open's exit skips the opened file.
        let flags = compiled.set.flags;
        let watches = [
            (
                agent_common::set_flags::COMPAT_DENY,
                &mut self.maps.compat_watch,
                "COMPAT_WATCH",
            ),
            (
                agent_common::set_flags::FOREIGN_WRITES_DENY,
                &mut self.maps.foreign_watch,
                "FOREIGN_WATCH",
            ),
        ];
        // The hooks that wait for a set needing them (raw `sys_enter` for the 32-bit entry,
        // raw `sys_exit` for the kills other hooks cannot send): attached before the set is
        // bound, or the set is not written.
        let set = &compiled.set;
        // A set that holds executables for a decision on their content needs the kill at a
        // held process's first system call (someone else's `SIGCONT`), whatever its action.
        let holds = flags & agent_common::set_flags::EXEC_DIGESTS != 0
            && agent_common::action::refuses(set.exec_action as u16);
        let kills = holds
            || [set.exec_action, set.connect_action, set.wx_action]
                .contains(&u32::from(agent_common::action::KILL));
        for hook in &mut self.late {
            if hook.program() == crate::ebpf::late::SYS_ENTER
                && flags & agent_common::set_flags::COMPAT_DENY != 0
            {
                hook.attach()
                    .map_err(|e| EnforceError::CompatHook(Box::new(e)))?;
            } else if hook.program() == crate::ebpf::late::SYS_EXIT && kills {
                hook.attach()
                    .map_err(|e| EnforceError::KillHook(Box::new(e)))?;
            }
        }
        for (flag, watch, name) in watches {
            if flags & flag != 0 {
                watch.set(0, 1, 0).map_err(map_err(name))?;
            }
        }
        // Written last, with a stamp no set had: what the programs cached about a set that
        // had this id before no longer matches.
        self.last_stamp = if self.last_stamp >= agent_common::STAMP_MAX {
            1
        } else {
            self.last_stamp + 1
        };
        let stamped = agent_common::PolicySet {
            stamp: self.last_stamp,
            ..compiled.set
        };
        self.maps
            .policy_sets
            .set(id, stamped, 0)
            .map_err(map_err("POLICY_SETS"))
    }

    fn delete_generation(&mut self, g: &Generation) -> Result<(), EnforceError> {
        for (i, compiled) in g.sets.iter().enumerate() {
            let id = g.base + 1 + i as u32;
            self.maps
                .policy_sets
                .set(id, PolicySet::default(), 0)
                .map_err(map_err("POLICY_SETS"))?;
            for entry in compiled.paths.keys() {
                if let Some((bits, data)) = path_key(id, entry) {
                    let result = self.maps.exec_paths.remove(&Key::new(bits, data));
                    removed(
                        &mut self.map_errors,
                        "EXEC_PATHS",
                        || {
                            let kind = if entry.exact { "path" } else { "prefix" };
                            format!("set {id} {kind} {}", entry.path)
                        },
                        result,
                    );
                }
            }
            for net in compiled.connect_allow.keys() {
                let (bits, data) = addr_key(id, net);
                let result = self.maps.connect_allow.remove(&Key::new(bits, data));
                removed(
                    &mut self.map_errors,
                    "CONNECT_ALLOW",
                    || format!("set {id} {net}"),
                    result,
                );
            }
            for net in compiled.connect_deny.keys() {
                let (bits, data) = addr_key(id, net);
                let result = self.maps.connect_deny.remove(&Key::new(bits, data));
                removed(
                    &mut self.map_errors,
                    "CONNECT_DENY",
                    || format!("set {id} {net}"),
                    result,
                );
            }
        }
        Ok(())
    }

    /// Binds every wanted path whose cgroup exists (a cgroup id changes when a service
    /// restarts and its cgroup is made anew), and unbinds what is no longer wanted. A
    /// [`Pass::Unbound`] looks only at paths not bound yet.
    fn bind_all(&mut self, pass: Pass) -> Result<Applied, EnforceError> {
        let applied = Applied::default();
        if pass == Pass::Unbound {
            let waiting: Vec<String> = self
                .wanted
                .keys()
                .filter(|p| !self.bound.contains_key(*p))
                .cloned()
                .collect();
            if waiting.is_empty() {
                return Ok(applied);
            }
            return self.bind(waiting.iter(), applied);
        }
        // Read before the lookups: a change during them moves the count again, and the
        // next tick looks again.
        self.cgroup_changes_seen = self.cgroup_changes();
        self.checked_every = Some(std::time::Instant::now());
        let stale: Vec<String> = self
            .bound
            .keys()
            .filter(|p| !self.wanted.contains_key(*p))
            .cloned()
            .collect();
        for path in stale {
            if let Some((id, _)) = self.bound.remove(&path) {
                let result = self.maps.cgroup_sets.remove(&id);
                removed(
                    &mut self.map_errors,
                    "CGROUP_SETS",
                    || format!("cgroup {id} ({path})"),
                    result,
                );
            }
        }
        let every: Vec<String> = self.wanted.keys().cloned().collect();
        self.bind(every.iter(), applied)
    }

    /// Binds each of `paths` (wanted ones) whose cgroup exists, and unbinds those whose
    /// cgroup is gone.
    fn bind<'a>(
        &mut self,
        paths: impl Iterator<Item = &'a String>,
        mut applied: Applied,
    ) -> Result<Applied, EnforceError> {
        let mounts = crate::mountinfo::cgroup2_mounts();
        for path in paths {
            let Some(&set) = self.wanted.get(path) else {
                continue;
            };
            match cgroup::filter_among(&self.cgroup_root, path, &mounts) {
                Ok(cgroup) if cgroup.level >= agent_common::MAX_CGROUP_LEVELS => {
                    if let Some((old, _)) = self.bound.remove(path) {
                        let result = self.maps.cgroup_sets.remove(&old);
                        removed(
                            &mut self.map_errors,
                            "CGROUP_SETS",
                            || format!("cgroup {old} ({path})"),
                            result,
                        );
                    }
                    if self.refused_deep.insert(path.clone()) {
                        tracing::error!(
                            cgroup = %path,
                            level = cgroup.level,
                            max = agent_common::MAX_CGROUP_LEVELS - 1,
                            "binding refused: the kernel looks for policy bindings only this many levels below the cgroup root; bind the policy to an ancestor instead (it covers every cgroup below it)"
                        );
                    }
                    applied.too_deep.push(path.clone());
                }
                Ok(cgroup) => {
                    let id = cgroup.id;
                    // Unchanged bindings cost no map write.
                    match self.bound.insert(path.clone(), (id, set)) {
                        Some(old) if old == (id, set) => {}
                        old => {
                            if let Some((old_id, _)) = old
                                && old_id != id
                            {
                                let result = self.maps.cgroup_sets.remove(&old_id);
                                removed(
                                    &mut self.map_errors,
                                    "CGROUP_SETS",
                                    || format!("cgroup {old_id} ({path}, made anew)"),
                                    result,
                                );
                            }
                            self.maps
                                .cgroup_sets
                                .insert(id, set, 0)
                                .map_err(map_err("CGROUP_SETS"))?;
                        }
                    }
                    applied.bound.push(path.clone());
                }
                Err(_) => {
                    if let Some((old, _)) = self.bound.remove(path) {
                        let result = self.maps.cgroup_sets.remove(&old);
                        removed(
                            &mut self.map_errors,
                            "CGROUP_SETS",
                            || format!("cgroup {old} ({path})"),
                            result,
                        );
                    }
                    applied.waiting.push(path.clone());
                }
            }
        }
        Ok(applied)
    }

    /// Re-checks bindings: cgroups that appeared, or were made anew, since the last look.
    pub fn refresh(&mut self) -> Result<Vec<String>, EnforceError> {
        // Looking up every bound path on every tick cost a node with 1,000 pods most of the
        // idle agent's CPU; bound paths change only with a cgroup change the kernel counts.
        let due = self
            .checked_every
            .is_none_or(|at| at.elapsed() >= CHECK_EVERY_AT_LEAST);
        let changed = match (self.cgroup_changes(), self.cgroup_changes_seen) {
            (Some(now), Some(seen)) => now != seen,
            _ => true,
        };
        if !(due || changed) {
            // Each path bound now was unbound before.
            return Ok(self.bind_all(Pass::Unbound)?.bound);
        }
        let before = self.bound.clone();
        let applied = self.bind_all(Pass::Every)?;
        Ok(applied
            .bound
            .into_iter()
            .filter(|p| before.get(p) != self.bound.get(p))
            .collect())
    }

    /// The `Learn` policies of policy set `set` (of the generation in force or the one
    /// before it): whose learn tables an act under the set goes into.
    pub fn learners(&self, set: u32) -> Vec<crate::learn::recorder::LearnKey> {
        [&self.current, &self.previous]
            .into_iter()
            .flatten()
            .find_map(|g| g.set(set))
            .map(|(_, members)| {
                members
                    .iter()
                    .filter(|p| p.spec.mode == crate::policy::Mode::Learn)
                    .map(crate::learn::recorder::LearnKey::of)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The `Learn` policies of the sets in force.
    pub fn learning_policies(
        &self,
    ) -> std::collections::BTreeSet<crate::learn::recorder::LearnKey> {
        self.current
            .iter()
            .flat_map(|g| g.members.iter().flatten())
            .filter(|p| p.spec.mode == crate::policy::Mode::Learn)
            .map(crate::learn::recorder::LearnKey::of)
            .collect()
    }

    /// Names the policy and rule behind a violation's set and rule index: once per rule and
    /// apply, then shared.
    pub fn describe(
        &self,
        set: u32,
        rule: u32,
        section: &'static str,
    ) -> Option<Shared<PolicyRef>> {
        if let Some(known) = self.described.borrow().get(&(set, rule, section)) {
            return Some(known.clone());
        }
        let named = Shared::new(self.name_rule(set, rule, section)?);
        self.described
            .borrow_mut()
            .insert((set, rule, section), named.clone());
        Some(named)
    }

    fn name_rule(&self, set: u32, rule: u32, section: &str) -> Option<PolicyRef> {
        let (compiled, members) = [&self.current, &self.previous]
            .into_iter()
            .flatten()
            .find_map(|g| g.set(set))?;
        if rule == compile::NOT_ALLOWED {
            // Every policy of the set with an allowlist for this section shares the blame;
            // the first is named.
            let policy = members.iter().find(|p| match section {
                "exec" => p.spec.exec.has_allowlist(),
                "connect" => p.spec.connect.has_allowlist(),
                _ => false,
            })?;
            return Some(policy_ref(
                policy,
                format!("spec.{section}.allow"),
                format!("not on the {section} allowlist"),
            ));
        }
        if rule == compile::MOVED {
            let policy = members.first()?;
            return Some(policy_ref(
                policy,
                "spec".into(),
                "a process under this policy was moved to a cgroup outside its binding; the policy keeps applying to it".into(),
            ));
        }
        if rule == compile::UNVERIFIABLE {
            let policy = members
                .iter()
                .find(|p| !p.spec.exec.deny.is_empty())
                .or_else(|| members.iter().find(|p| p.spec.exec.has_rules()))?;
            return Some(policy_ref(
                policy,
                "spec.exec".into(),
                "the executable's real path could not be resolved in the kernel (deeper or longer than its walk goes); under Kill that fails closed".into(),
            ));
        }
        if rule == compile::UNJUDGED {
            let policy = members.iter().find(|p| p.spec.exec.has_rules())?;
            return Some(policy_ref(
                policy,
                "spec.exec".into(),
                "the exec ran without its judgement (the kernel skipped the exec probes while other runs of them were preempted on that CPU); it fails closed under the exec action".into(),
            ));
        }
        if rule == compile::PROTOCOL {
            let policy = members
                .iter()
                .find(|p| p.spec.connect.has_allowlist() || !p.spec.connect.deny.is_empty())?;
            return Some(policy_ref(
                policy,
                "spec.connect".into(),
                "a socket of a protocol the connect rules cannot judge (raw, ICMP, SCTP, ...)"
                    .into(),
            ));
        }
        let r = compiled.rules.get(rule as usize)?;
        Some(policy_ref(
            members.get(r.policy)?,
            r.field.clone(),
            r.text.clone(),
        ))
    }

    /// Decides, in user space, an exec the kernel could not (a path too long for its keys),
    /// by the kernel's own rule on the same compiled entries. Only alerts: the exec has
    /// happened.
    pub fn decide_exec(
        &self,
        set: u32,
        path: &str,
        script: Option<&str>,
        memfd: bool,
    ) -> Option<Shared<PolicyRef>> {
        let (compiled, _) = [&self.current, &self.previous]
            .into_iter()
            .flatten()
            .find_map(|g| g.set(set))?;
        let v = crate::behaviour::exec::decide::decide(set, compiled, path, script, memfd);
        if !v.is_hit() {
            return None;
        }
        self.describe(set, agent_common::rule_id::index(v.rule), "exec")
    }

    /// What set `set` decides an executable's content by (`None`: the set is gone or has
    /// no `sha256` entries).
    pub fn content_rules(&self, set: u32) -> Option<ContentRules> {
        let (compiled, _) = [&self.current, &self.previous]
            .into_iter()
            .flatten()
            .find_map(|g| g.set(set))?;
        (!compiled.digests.is_empty()).then(|| ContentRules {
            digests: compiled.digests.clone(),
            action: compiled.set.exec_action,
            drift_rule: compiled.set.drift_rule,
        })
    }

    /// Tells the kernel that the file `key` names (set, device, inode, change time) is
    /// vouched for by its content: its next exec is not held.
    pub fn vouch(&mut self, key: agent_common::VouchKey) -> Result<(), EnforceError> {
        self.maps
            .vouched
            .insert(key, 1, 0)
            .map_err(map_err("VOUCHED"))
    }

    /// Lets process `tgid`, held for a decision on its content, make system calls again
    /// (before it is continued).
    pub fn release_hold(&mut self, tgid: u32) -> Result<(), EnforceError> {
        absent_is_removed(self.maps.pending_kills.remove(&tgid)).map_err(map_err("PENDING_KILLS"))
    }

    /// The processes the kernel holds for a decision on their content.
    pub fn holds(&self) -> Vec<u32> {
        self.maps
            .pending_kills
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| {
                *v == agent_common::pending_kill::HELD_AT_EXEC
                    || *v == agent_common::pending_kill::HELD
            })
            .map(|(tgid, _)| tgid)
            .collect()
    }

    /// Replaces the node-wide Service addresses (for `allowServices`). Only the difference
    /// is written: a cluster's endpoints change all the time, and each `bpf()` map call costs
    /// a system call and, while it runs, blinds the tracepoint probes on its CPU
    /// (docs/threat-model.md), so rewriting 10,000 addresses for one that changed is not
    /// free.
    pub fn set_services(&mut self, services: &[ServiceKey]) -> Result<(), EnforceError> {
        // Until this call ends well, `self.services` stays `None`: the next call reads the map.
        let current = match self.services.take() {
            Some(current) => current,
            // A walk that stops part way would leave entries unknown, never to be removed.
            None => self
                .maps
                .services
                .keys()
                .collect::<Result<HashSet<_>, _>>()
                .map_err(map_err("SERVICES"))?,
        };
        // A set: up to 65,536 addresses on each side.
        let wanted: HashSet<ServiceKey> = services.iter().copied().collect();
        // Removals first: a full map has room for the new addresses after them.
        let errors = self.map_errors;
        for key in current.difference(&wanted) {
            let result = self.maps.services.remove(key);
            removed(
                &mut self.map_errors,
                "SERVICES",
                || service_text(key),
                result,
            );
        }
        for key in wanted.difference(&current) {
            self.maps
                .services
                .insert(*key, 1, 0)
                .map_err(map_err("SERVICES"))?;
        }
        // An entry that would not go stays in the kernel: the next call reads the map and
        // tries again.
        self.services = (self.map_errors == errors).then_some(wanted);
        Ok(())
    }

    /// Each map policies compile into: its entries and its capacity.
    pub fn map_usage(&self) -> Vec<MapUsage> {
        use aya::maps::IterableMap;
        fn capacity<K: aya::Pod, V>(map: &impl IterableMap<K, V>) -> u32 {
            map.map().info().map_or(0, |info| info.max_entries())
        }
        let m = &self.maps;
        vec![
            MapUsage::new(
                "CGROUP_SETS",
                m.cgroup_sets.keys().count(),
                capacity(&m.cgroup_sets),
            ),
            MapUsage::new(
                "EXEC_PATHS",
                m.exec_paths.keys().count(),
                capacity(&m.exec_paths),
            ),
            MapUsage::new(
                "CONNECT_ALLOW",
                m.connect_allow.keys().count(),
                capacity(&m.connect_allow),
            ),
            MapUsage::new(
                "CONNECT_DENY",
                m.connect_deny.keys().count(),
                capacity(&m.connect_deny),
            ),
            MapUsage::new("SERVICES", m.services.keys().count(), capacity(&m.services)),
        ]
    }

    /// Entries in the path and CIDR maps (to show reloads do not leak).
    pub fn map_entries(&self) -> usize {
        self.maps.exec_paths.keys().count()
            + self.maps.connect_allow.keys().count()
            + self.maps.connect_deny.keys().count()
            + self.maps.cgroup_sets.keys().count()
    }

    /// Pins every running process to the binding covering its cgroup (see
    /// [`seed::origins_from_proc`]).
    pub fn pin_running(&mut self) -> usize {
        let bound: Vec<(String, u64)> = self
            .bound
            .iter()
            .map(|(path, (id, _))| (path.clone(), *id))
            .collect();
        let handing_over: HashSet<u64> = self
            .bound
            .values()
            .filter(|(_, set)| {
                self.maps
                    .policy_sets
                    .get(set, 0)
                    .is_ok_and(|ps| ps.flags & agent_common::set_flags::RUNTIME_HANDOVER != 0)
            })
            .map(|(id, _)| *id)
            .collect();
        seed::origins_from_proc(&mut self.maps.task_origin, &bound, &handing_over)
    }

    pub fn task_exe_map(
        &mut self,
    ) -> &mut aya::maps::HashMap<aya::maps::MapData, u32, agent_common::ExePath> {
        &mut self.maps.task_exe
    }
}

/// A Service key as a person reads it: `10.96.0.10:53/6`.
fn service_text(key: &ServiceKey) -> String {
    let addr = std::net::Ipv6Addr::from(key.addr);
    let ip = addr
        .to_ipv4_mapped()
        .map_or_else(|| addr.to_string(), |v4| v4.to_string());
    let ip = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip
    };
    format!("{ip}:{}/{}", key.port, key.protocol)
}

fn policy_ref(p: &Policy, rule: String, text: String) -> PolicyRef {
    PolicyRef {
        kind: p.kind.to_string(),
        name: p.name.clone(),
        namespace: p.namespace.clone(),
        rule,
        text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syscall(errno: i32) -> Result<(), aya::maps::MapError> {
        Err(aya::sys::SyscallError {
            call: "bpf_map_delete_elem",
            io_error: std::io::Error::from_raw_os_error(errno),
        }
        .into())
    }

    #[test]
    fn a_key_already_gone_is_removed_and_anything_else_is_an_error() {
        assert!(absent_is_removed(Ok(())).is_ok());
        assert!(absent_is_removed(syscall(libc::ENOENT)).is_ok());
        assert!(absent_is_removed(Err(aya::maps::MapError::KeyNotFound)).is_ok());
        assert!(absent_is_removed(Err(aya::maps::MapError::ElementNotFound)).is_ok());
        for errno in [libc::EPERM, libc::EINVAL, libc::EBADF, libc::ENOMEM] {
            assert!(absent_is_removed(syscall(errno)).is_err(), "errno {errno}");
        }
    }

    #[test]
    fn counts_and_keeps_counting_failed_removals_only() {
        let mut errors = 0;
        removed(&mut errors, "SERVICES", || "a".into(), Ok(()));
        removed(
            &mut errors,
            "SERVICES",
            || "b".into(),
            syscall(libc::ENOENT),
        );
        assert_eq!(errors, 0);
        removed(&mut errors, "SERVICES", || "c".into(), syscall(libc::EPERM));
        removed(
            &mut errors,
            "CGROUP_SETS",
            || "d".into(),
            syscall(libc::EBADF),
        );
        assert_eq!(errors, 2);
    }

    #[test]
    fn service_keys_read_as_addresses() {
        let v4 = ServiceKey {
            addr: std::net::Ipv4Addr::new(10, 96, 0, 10)
                .to_ipv6_mapped()
                .octets(),
            port: 53,
            protocol: 17,
        };
        assert_eq!(service_text(&v4), "10.96.0.10:53/17");
        let v6 = ServiceKey {
            addr: "fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets(),
            port: 443,
            protocol: 6,
        };
        assert_eq!(service_text(&v6), "[fd00::1]:443/6");
    }
}
