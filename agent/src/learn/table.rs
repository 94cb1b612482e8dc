//! The learn table: what a workload did, as few entries as a policy needs, bounded.
//!
//! Fed the events `vigil learn` sees (every exec, connect and W^X mapping of the learned
//! cgroup), it keeps one entry per executable, destination and JIT runtime with how often and
//! by whom it was seen. It never grows past its limits: a table full of executables folds the
//! directory holding most of them into a prefix, a destination with too many ports keeps one
//! range, and each such step leaves a warning the written policy repeats. It serializes to
//! JSON, so a learn run that is stopped goes on where it stopped.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use serde::{Deserialize, Serialize};

use crate::policy::{Protocol, validate};

/// How large the table may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Exec entries (paths and prefixes) at most; past it directories fold into prefixes.
    pub executables: usize,
    /// A directory with this many learned executables is written as a prefix.
    pub collapse_at: usize,
    /// Destinations (protocol and address) at most; past it new ones are counted, not kept.
    pub destinations: usize,
    /// Ports kept one by one per destination; past it they become one range.
    pub ports: usize,
    /// JIT runtimes at most.
    pub runtimes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            executables: 1024,
            collapse_at: 32,
            destinations: 1024,
            ports: 16,
            runtimes: 256,
        }
    }
}

/// How often something was seen, and by which containers (or host cgroups): the first few.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub count: u64,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub by: BTreeSet<String>,
}

/// Names kept per entry: enough to review, bounded whatever the workload does.
const BY_KEPT: usize = 3;

impl Seen {
    fn add(&mut self, count: u64, by: Option<&str>) {
        self.count = self.count.saturating_add(count);
        if let Some(by) = by
            && self.by.len() < BY_KEPT
        {
            self.by.insert(by.to_owned());
        }
    }

    fn merge(&mut self, other: &Seen) {
        self.count = self.count.saturating_add(other.count);
        for by in &other.by {
            if self.by.len() >= BY_KEPT {
                break;
            }
            self.by.insert(by.clone());
        }
    }
}

/// A destination: one protocol to one address, with its ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    pub protocol: Protocol,
    pub addr: IpAddr,
    /// Ports seen one by one, until there are more than the limit.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<u16, Seen>,
    /// Once the ports outgrew the limit: the range from the lowest to the highest seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<(u16, u16)>,
    pub seen: Seen,
}

/// What a workload did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LearnTable {
    #[serde(default)]
    pub limits: Limits,
    /// Executables by real path.
    #[serde(default)]
    pub executables: BTreeMap<String, Seen>,
    /// Directories (ending in `/`) folded into a prefix, with what they stand for.
    #[serde(default)]
    pub prefixes: BTreeMap<String, Seen>,
    /// Executables run from a memfd (fileless).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memfd: Option<Seen>,
    /// Keyed `<protocol> <address>`.
    #[serde(default)]
    pub destinations: BTreeMap<String, Destination>,
    /// Executables that mapped memory writable and executable at once.
    #[serde(default)]
    pub runtimes: BTreeMap<String, Seen>,
    /// Writes into another process's memory, by system call: none seen, and the policy denies
    /// them.
    #[serde(default)]
    pub foreign_writes: BTreeMap<String, Seen>,
    /// Sockets no address rule can allow (raw, ICMP, SCTP), by protocol.
    #[serde(default)]
    pub other_sockets: BTreeMap<String, Seen>,
    /// What the policy cannot say, or said coarser than seen; repeated in the written policy.
    #[serde(default)]
    pub warnings: BTreeSet<String>,
    /// Events taken in.
    #[serde(default)]
    pub events: u64,
    /// Events that named nothing the table could keep (no path, a full table).
    #[serde(default)]
    pub unkept: u64,
}

impl LearnTable {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// An exec of the executable at `path` (its real path, as the kernel resolved it).
    /// `true` when it is a new entry of its own (not seen before, not under a prefix).
    pub fn exec(&mut self, path: &str, by: Option<&str>) -> bool {
        self.events += 1;
        let mut once = Seen::default();
        once.add(1, by);
        self.exec_seen(path, &once)
    }

    /// `path` seen as `seen` says (one exec, or another table's entry).
    fn exec_seen(&mut self, path: &str, seen_here: &Seen) -> bool {
        if let Err(e) = validate::check_path(path) {
            self.unkept += 1;
            self.warn(format!(
                "an executable with a path no policy can name was run ({e}); it is not in the policy"
            ));
            return false;
        }
        if let Some(seen) = self.executables.get_mut(path) {
            seen.merge(seen_here);
            return false;
        }
        loop {
            if let Some((_, seen)) = self
                .prefixes
                .iter_mut()
                .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            {
                seen.merge(seen_here);
                return false;
            }
            if self.executables.len() + self.prefixes.len() < self.limits.executables.max(1) {
                break;
            }
            // Folding may make a prefix that covers this path too: looked at again above.
            if !self.fold_one(path) {
                self.unkept += 1;
                self.warn(format!(
                    "the table holds {} executables and none share a directory to fold; later \
                     ones are not in the policy",
                    self.limits.executables
                ));
                return false;
            }
        }
        self.executables.insert(path.to_owned(), seen_here.clone());
        true
    }

    /// Makes the table's JSON at most `max_bytes` long, coarser with a warning for each step:
    /// directories folded into prefixes first, then JIT runtimes dropped (the longest paths
    /// first). Paths may be 4 KB each, so the entry limits alone do not bound the bytes a
    /// report object holds. `false` if it still does not fit.
    pub fn fit(&mut self, max_bytes: usize) -> bool {
        let size = |t: &Self| serde_json::to_vec(t).map_or(usize::MAX, |v| v.len());
        while size(self) > max_bytes {
            if let Some(any) = self.executables.keys().next().cloned()
                && self.fold_one(&any)
            {
                continue;
            }
            let Some(longest) = self.runtimes.keys().max_by_key(|p| p.len()).cloned() else {
                return false;
            };
            self.runtimes.remove(&longest);
            self.unkept = self.unkept.saturating_add(1);
            self.warn(format!(
                "the table outgrew {max_bytes} bytes: JIT runtimes with the longest paths are \
                 not in the policy"
            ));
        }
        true
    }

    /// Takes in what `other` (another node's table, or one kept from before a restart) saw,
    /// within this table's limits: the union, with counts added.
    pub fn merge(&mut self, other: &LearnTable) {
        self.events = self.events.saturating_add(other.events);
        self.unkept = self.unkept.saturating_add(other.unkept);
        for text in &other.warnings {
            self.warn(text.clone());
        }
        for (dir, seen) in &other.prefixes {
            self.fold(dir);
            if let Some(mine) = self.prefixes.get_mut(dir) {
                mine.merge(seen);
            }
        }
        // Prefixes taken in may leave more entries than the limit: fold until they fit.
        while self.executables.len() + self.prefixes.len() > self.limits.executables.max(1) {
            let Some(any) = self.executables.keys().next().cloned() else {
                break;
            };
            if !self.fold_one(&any) {
                break;
            }
        }
        for (path, seen) in &other.executables {
            self.exec_seen(path, seen);
        }
        if let Some(seen) = &other.memfd {
            self.memfd.get_or_insert_with(Seen::default).merge(seen);
        }
        for (key, theirs) in &other.destinations {
            self.merge_destination(key, theirs);
        }
        for (exe, seen) in &other.runtimes {
            if self.runtimes.contains_key(exe) || self.runtimes.len() < self.limits.runtimes {
                self.runtimes.entry(exe.clone()).or_default().merge(seen);
            } else {
                self.unkept = self.unkept.saturating_add(seen.count);
            }
        }
        for (call, seen) in &other.foreign_writes {
            if self.foreign_writes.len() < 16 || self.foreign_writes.contains_key(call) {
                self.foreign_writes
                    .entry(call.clone())
                    .or_default()
                    .merge(seen);
            }
        }
        for (protocol, seen) in &other.other_sockets {
            self.other_sockets
                .entry(protocol.clone())
                .or_default()
                .merge(seen);
        }
    }

    fn merge_destination(&mut self, key: &str, theirs: &Destination) {
        if !self.destinations.contains_key(key)
            && self.destinations.len() >= self.limits.destinations
        {
            self.unkept = self.unkept.saturating_add(theirs.seen.count);
            self.warn(format!(
                "the table holds {} destinations; later ones are not in the policy",
                self.limits.destinations
            ));
            return;
        }
        let limit = self.limits.ports;
        let mine = self
            .destinations
            .entry(key.to_owned())
            .or_insert_with(|| Destination {
                protocol: theirs.protocol,
                addr: theirs.addr,
                ports: BTreeMap::new(),
                range: None,
                seen: Seen::default(),
            });
        mine.seen.merge(&theirs.seen);
        for (port, seen) in &theirs.ports {
            mine.ports.entry(*port).or_default().merge(seen);
        }
        let bounds = mine
            .ports
            .keys()
            .next()
            .copied()
            .zip(mine.ports.keys().next_back().copied());
        let range = match (mine.range, theirs.range) {
            (Some((a, b)), Some((c, d))) => Some((a.min(c), b.max(d))),
            (one, other) => one.or(other),
        };
        let outgrown = mine.ports.len() > limit;
        if range.is_some() || outgrown {
            let (mut lo, mut hi) = range.or(bounds).unwrap_or((0, 0));
            if let Some((first, last)) = bounds {
                lo = lo.min(first);
                hi = hi.max(last);
            }
            mine.ports.clear();
            mine.range = Some((lo, hi));
            if outgrown {
                let text = format!(
                    "{} {}: more than {limit} ports, allowed as the range {lo}-{hi}",
                    protocol_name(mine.protocol),
                    mine.addr
                );
                self.warn(text);
            }
        }
    }

    /// An exec of a file from a memfd.
    pub fn exec_memfd(&mut self, by: Option<&str>) {
        self.events += 1;
        self.memfd.get_or_insert_with(Seen::default).add(1, by);
        self.warn(
            "the workload ran a program from a memfd (fileless execution); the policy allows it \
             with {memfd: true}: confirm that it should"
                .into(),
        );
    }

    /// A connect, or a datagram sent, to `addr`:`port`.
    pub fn destination(&mut self, protocol: Protocol, addr: IpAddr, port: u16, by: Option<&str>) {
        self.events += 1;
        let key = format!("{} {addr}", protocol_name(protocol));
        if !self.destinations.contains_key(&key)
            && self.destinations.len() >= self.limits.destinations
        {
            self.unkept += 1;
            self.warn(format!(
                "the table holds {} destinations; later ones are not in the policy",
                self.limits.destinations
            ));
            return;
        }
        let limit = self.limits.ports;
        let dest = self.destinations.entry(key).or_insert_with(|| Destination {
            protocol,
            addr,
            ports: BTreeMap::new(),
            range: None,
            seen: Seen::default(),
        });
        dest.seen.add(1, by);
        match &mut dest.range {
            Some((lo, hi)) => {
                *lo = (*lo).min(port);
                *hi = (*hi).max(port);
            }
            None => {
                dest.ports.entry(port).or_default().add(1, by);
                if dest.ports.len() > limit {
                    let lo = dest.ports.keys().next().copied().unwrap_or(port);
                    let hi = dest.ports.keys().next_back().copied().unwrap_or(port);
                    dest.ports.clear();
                    dest.range = Some((lo, hi));
                    let text = format!(
                        "{} {addr}: more than {limit} ports, allowed as the range {lo}-{hi}",
                        protocol_name(protocol)
                    );
                    self.warn(text);
                }
            }
        }
    }

    /// A socket of a protocol no connect rule can allow.
    pub fn other_socket(&mut self, protocol: &str, by: Option<&str>) {
        self.events += 1;
        self.other_sockets
            .entry(protocol.to_owned())
            .or_default()
            .add(1, by);
        self.warn(format!(
            "the workload created a socket of protocol {protocol}, which no connect rule can \
             allow: under the policy's connect allowlist it is a violation"
        ));
    }

    /// A writable and executable mapping by the executable at `exe`.
    pub fn write_execute(&mut self, exe: Option<&str>, by: Option<&str>) {
        self.events += 1;
        let Some(exe) = exe.filter(|e| validate::check_path(e).is_ok()) else {
            self.unkept += 1;
            self.warn(
                "a process whose executable is unknown mapped memory writable and executable; \
                 no allowExecutables entry can name it"
                    .into(),
            );
            return;
        };
        if !self.runtimes.contains_key(exe) && self.runtimes.len() >= self.limits.runtimes {
            self.unkept += 1;
            self.warn(format!(
                "the table holds {} JIT runtimes; later ones are not in the policy",
                self.limits.runtimes
            ));
            return;
        }
        self.runtimes.entry(exe.to_owned()).or_default().add(1, by);
    }

    /// A write into another process's memory (`ptrace`, `process_vm_writev`, `/proc/<pid>/mem`,
    /// `userfaultfd`), named by its system call.
    pub fn foreign_write(&mut self, syscall: &str, by: Option<&str>) {
        self.events += 1;
        if self.foreign_writes.len() < 16 || self.foreign_writes.contains_key(syscall) {
            self.foreign_writes
                .entry(syscall.to_owned())
                .or_default()
                .add(1, by);
        }
    }

    /// A note for the written policy (kept once).
    pub fn warn(&mut self, text: String) {
        // Bounded like everything else: the texts are few and fixed but for a number or a
        // destination, which the limits bound.
        if self.warnings.len() < 64 {
            self.warnings.insert(text);
        }
    }

    /// Folds a directory into a prefix: the one holding the most executables directly (a
    /// `bin` directory), else the narrowest one holding two. `false` when no two executables
    /// share a directory below `/` (folding into `/` would allow everything). `coming` is the
    /// executable on its way in: it counts for the directory it would join.
    fn fold_one(&mut self, coming: &str) -> bool {
        let paths = || self.executables.keys().map(String::as_str).chain([coming]);
        let mut direct: BTreeMap<&str, usize> = BTreeMap::new();
        let mut covered: BTreeMap<&str, usize> = BTreeMap::new();
        for path in paths() {
            let dirs: Vec<usize> = path.match_indices('/').skip(1).map(|(i, _)| i).collect();
            if let Some(&last) = dirs.last() {
                *direct.entry(&path[..=last]).or_default() += 1;
            }
            for i in dirs {
                *covered.entry(&path[..=i]).or_default() += 1;
            }
        }
        let by_children = direct
            .iter()
            .filter(|(_, n)| **n >= 2)
            .max_by_key(|(dir, n)| (**n, dir.len()));
        let narrowest = || {
            covered
                .iter()
                .filter(|(_, n)| **n >= 2)
                .max_by_key(|(dir, n)| (dir.len(), **n))
        };
        let Some(dir) = by_children
            .or_else(narrowest)
            .map(|(dir, _)| (*dir).to_owned())
        else {
            return false;
        };
        self.fold(&dir);
        self.warn(format!(
            "more than {} executables: the directory {dir} is allowed as a prefix",
            self.limits.executables
        ));
        true
    }

    /// Replaces the executables (and narrower prefixes) under `dir` by the prefix `dir`.
    fn fold(&mut self, dir: &str) {
        let mut seen = self.prefixes.remove(dir).unwrap_or_default();
        let under = |p: &String| p.starts_with(dir);
        let mut take = |p: &String, s: &mut Seen| {
            if under(p) {
                seen.merge(s);
                false
            } else {
                true
            }
        };
        self.executables.retain(&mut take);
        self.prefixes.retain(&mut take);
        self.prefixes.insert(dir.to_owned(), seen);
    }

    /// The exec allowlist as it is to be written: the prefixes, every directory with
    /// `collapse_at` executables or more as a prefix too, and the other executables one by
    /// one. (path or prefix, seen, how many executables a prefix stands for).
    pub fn exec_entries(&self) -> Vec<ExecEntry> {
        let mut per_dir: BTreeMap<&str, usize> = BTreeMap::new();
        for path in self.executables.keys() {
            if let Some(i) = path.rfind('/') {
                *per_dir.entry(&path[..=i]).or_default() += 1;
            }
        }
        let collapsed: BTreeSet<&str> = per_dir
            .into_iter()
            .filter(|(dir, n)| *n >= self.limits.collapse_at.max(2) && *dir != "/")
            .map(|(dir, _)| dir)
            .collect();
        let mut prefixes: BTreeMap<String, (Seen, usize)> = self
            .prefixes
            .iter()
            .map(|(p, s)| (p.clone(), (s.clone(), 0)))
            .collect();
        let mut entries = Vec::new();
        for (path, seen) in &self.executables {
            let dir = path.rfind('/').map(|i| &path[..=i]);
            match dir.filter(|d| collapsed.contains(d)) {
                Some(dir) => {
                    let (s, n) = prefixes.entry(dir.to_owned()).or_default();
                    s.merge(seen);
                    *n += 1;
                }
                None => entries.push(ExecEntry::Path(path.clone(), seen.clone())),
            }
        }
        entries.extend(
            prefixes
                .into_iter()
                .map(|(p, (s, n))| ExecEntry::Prefix(p, s, n)),
        );
        if let Some(seen) = &self.memfd {
            entries.push(ExecEntry::Memfd(seen.clone()));
        }
        entries
    }
}

/// One entry of the exec allowlist to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEntry {
    Path(String, Seen),
    /// A prefix, and how many learned executables it was folded from here (0: folded while
    /// learning, `Seen` says how often).
    Prefix(String, Seen, usize),
    Memfd(Seen),
}

impl Destination {
    /// The ports seen, as inclusive ranges: each port alone, or the one range they became.
    pub fn port_ranges(&self) -> Vec<(u16, u16)> {
        match self.range {
            Some(range) => vec![range],
            None => self.ports.keys().map(|p| (*p, *p)).collect(),
        }
    }

    /// The address as a policy's `cidr` of that one address.
    pub fn cidr(&self) -> String {
        match self.addr {
            IpAddr::V4(a) => format!("{a}/32"),
            IpAddr::V6(a) => format!("{a}/128"),
        }
    }
}

/// A port range as policies write it: `443` or `8000-8080`.
pub fn port_text((lo, hi): (u16, u16)) -> String {
    if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}-{hi}")
    }
}

/// The protocol as policies write it.
pub fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(executables: usize) -> LearnTable {
        LearnTable::new(Limits {
            executables,
            ..Limits::default()
        })
    }

    /// Long paths cannot make a table too large to publish: it folds until it fits.
    #[test]
    fn a_table_of_long_paths_folds_until_its_json_fits() {
        let mut t = table(1024);
        for i in 0..400 {
            t.exec(&format!("/opt/{}/{i}", "d".repeat(2000)), None);
        }
        assert!(serde_json::to_vec(&t).unwrap().len() > 100_000);
        assert!(t.fit(100_000));
        assert!(serde_json::to_vec(&t).unwrap().len() <= 100_000);
        assert!(!t.prefixes.is_empty());
        let mut runtimes = table(1024);
        for i in 0..100 {
            runtimes.write_execute(Some(&format!("/{}/{i}", "r".repeat(3000))), None);
        }
        assert!(runtimes.fit(50_000));
        assert!(runtimes.runtimes.len() < 100);
        assert!(runtimes.warnings.iter().any(|w| w.contains("outgrew")));
    }

    /// Two nodes' tables: the union, counts added, and still within the limits.
    #[test]
    fn tables_merge_into_their_union_within_the_limits() {
        let addr: IpAddr = "10.96.0.10".parse().unwrap();
        let mut a = table(8);
        a.exec("/bin/sh", Some("container app"));
        a.exec("/usr/bin/curl", None);
        a.destination(Protocol::Tcp, addr, 443, None);
        a.write_execute(Some("/usr/bin/node"), None);
        let mut b = table(8);
        b.exec("/bin/sh", Some("container side"));
        for i in 0..5 {
            b.exec(&format!("/opt/tools/t{i}"), None);
        }
        b.destination(Protocol::Tcp, addr, 80, None);
        b.destination(Protocol::Udp, addr, 53, None);
        let mut merged = a.clone();
        merged.merge(&b);
        assert_eq!(merged.events, a.events + b.events);
        assert_eq!(merged.executables["/bin/sh"].count, 2);
        assert_eq!(
            merged.executables["/bin/sh"].by,
            ["container app", "container side"].map(String::from).into()
        );
        assert_eq!(merged.executables.len() + merged.prefixes.len(), 7);
        let tcp = &merged.destinations["TCP 10.96.0.10"];
        assert_eq!(tcp.ports.keys().copied().collect::<Vec<_>>(), [80, 443]);
        assert!(merged.destinations.contains_key("UDP 10.96.0.10"));
        assert!(merged.runtimes.contains_key("/usr/bin/node"));

        // A third table over the limit folds, as taking the executables one by one would.
        let mut c = table(8);
        for i in 0..6 {
            c.exec(&format!("/opt/more/m{i}"), None);
        }
        merged.merge(&c);
        assert!(merged.executables.len() + merged.prefixes.len() <= 8);
        assert!(!merged.prefixes.is_empty(), "{merged:?}");
        assert!(merged.warnings.iter().any(|w| w.contains("as a prefix")));

        // Ports past the limit become one range; a range taken in widens it.
        let mut ports = table(8);
        ports.limits.ports = 2;
        let mut other = ports.clone();
        for p in [1000, 2000] {
            ports.destination(Protocol::Tcp, addr, p, None);
        }
        for p in [10, 3000, 4000] {
            other.destination(Protocol::Tcp, addr, p, None);
        }
        ports.merge(&other);
        let d = &ports.destinations["TCP 10.96.0.10"];
        assert_eq!(d.range, Some((10, 4000)));
        assert!(d.ports.is_empty());
    }

    #[test]
    fn a_hundred_thousand_distinct_executables_fold_into_a_prefix_with_a_warning() {
        let mut t = table(1024);
        t.exec("/usr/bin/dash", Some("/learn"));
        for i in 0..100_000 {
            t.exec(&format!("/srv/gen/bin-{i:06}"), Some("/learn"));
        }
        assert!(t.executables.len() + t.prefixes.len() <= 1024);
        assert_eq!(
            t.prefixes.keys().collect::<Vec<_>>(),
            ["/srv/gen/"],
            "{:?}",
            t.prefixes
        );
        assert_eq!(t.prefixes["/srv/gen/"].count, 100_000);
        assert!(t.executables.contains_key("/usr/bin/dash"));
        assert!(
            t.warnings
                .iter()
                .any(|w| w.contains("/srv/gen/ is allowed as a prefix")),
            "{:?}",
            t.warnings
        );
        assert_eq!(t.unkept, 0);
        // Bounded as JSON too: what survives a restart is as small as the table.
        assert!(serde_json::to_vec(&t).unwrap().len() < 200_000);
    }

    #[test]
    fn folding_takes_the_directory_holding_the_most_executables_directly() {
        let mut t = table(4);
        for p in ["/a/b/c/x", "/a/b/c/y", "/a/b/z", "/q/r"] {
            t.exec(p, None);
        }
        t.exec("/a/b/c/w", None);
        assert_eq!(t.prefixes.keys().collect::<Vec<_>>(), ["/a/b/c/"]);
        assert_eq!(t.prefixes["/a/b/c/"].count, 3);
        assert_eq!(t.executables.keys().collect::<Vec<_>>(), ["/a/b/z", "/q/r"]);
        // What a prefix covers is counted there, not added again.
        t.exec("/a/b/c/x", None);
        assert_eq!(t.prefixes["/a/b/c/"].count, 4);
        // No directory holds two directly: the narrowest holding two is folded.
        let mut t = table(3);
        for p in ["/a/b/c/x", "/a/b/d/y", "/q/r"] {
            t.exec(p, None);
        }
        t.exec("/z/w", None);
        assert_eq!(t.prefixes.keys().collect::<Vec<_>>(), ["/a/b/"]);
    }

    #[test]
    fn executables_sharing_no_directory_are_never_folded_into_the_root() {
        let mut t = table(2);
        for p in ["/a", "/b", "/c"] {
            t.exec(p, None);
        }
        assert!(t.prefixes.is_empty());
        assert_eq!(t.executables.len(), 2);
        assert_eq!(t.unkept, 1);
        assert!(t.warnings.iter().any(|w| w.contains("not in the policy")));
    }

    #[test]
    fn a_directory_with_many_executables_is_written_as_a_prefix() {
        let mut t = LearnTable::new(Limits {
            collapse_at: 3,
            ..Limits::default()
        });
        for p in [
            "/opt/t/a",
            "/opt/t/b",
            "/opt/t/c",
            "/usr/bin/dash",
            "/usr/bin/cat",
        ] {
            t.exec(p, Some("c1"));
        }
        let entries = t.exec_entries();
        assert!(entries.contains(&ExecEntry::Prefix(
            "/opt/t/".into(),
            Seen {
                count: 3,
                by: ["c1".to_string()].into()
            },
            3
        )));
        assert!(
            entries
                .iter()
                .any(|e| matches!(e, ExecEntry::Path(p, _) if p == "/usr/bin/dash"))
        );
        assert_eq!(entries.len(), 3);
    }

    #[test]
    fn paths_a_policy_cannot_name_are_left_out_and_said() {
        let mut t = table(16);
        t.exec("relative/x", None);
        t.exec("/a/../b", None);
        assert!(t.executables.is_empty());
        assert_eq!(t.unkept, 2);
    }

    #[test]
    fn ports_past_the_limit_become_one_range_and_destinations_stay_bounded() {
        let mut t = LearnTable::new(Limits {
            ports: 3,
            destinations: 2,
            ..Limits::default()
        });
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        for port in [53, 80, 443] {
            t.destination(Protocol::Udp, lo, port, None);
        }
        assert_eq!(t.destinations["UDP 127.0.0.1"].ports.len(), 3);
        t.destination(Protocol::Udp, lo, 40000, None);
        t.destination(Protocol::Udp, lo, 20, None);
        let d = &t.destinations["UDP 127.0.0.1"];
        assert!(d.ports.is_empty());
        assert_eq!(d.range, Some((20, 40000)));
        assert_eq!(d.seen.count, 5);
        t.destination(Protocol::Tcp, lo, 80, None);
        t.destination(Protocol::Tcp, "::1".parse().unwrap(), 80, None);
        assert_eq!(t.destinations.len(), 2);
        assert_eq!(t.unkept, 1);
    }

    #[test]
    fn the_table_survives_a_round_trip_through_json() {
        let mut t = table(16);
        t.exec("/usr/bin/dash", Some("web"));
        t.destination(
            Protocol::Tcp,
            "10.96.0.10".parse().unwrap(),
            53,
            Some("web"),
        );
        t.write_execute(Some("/usr/bin/node"), Some("web"));
        let back: LearnTable = serde_json::from_slice(&serde_json::to_vec(&t).unwrap()).unwrap();
        assert_eq!(back, t);
    }
}
