//! Undoing a node: what [`crate::Cluster`] changed on the host, for a cluster that stopped
//! normally and for one whose owner was killed (then its control processes died with it, by
//! `PR_SET_PDEATHSIG`, but the containers, their shims, mounts, cgroups, the bridge and the
//! iptables chains remain).
//!
//! Only what is provably the cluster's is touched: processes in the `kubepods` cgroups of a
//! directory that recorded a cluster, shims serving that cluster's containerd socket, mounts
//! under the cluster's directory, and the host objects its record names.
use std::{
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::node::{BRIDGE, CNI_NETWORK, FILTER_CHAIN, Layout, run};

/// What a cluster changed on the host beyond its directory, saved as JSON in the directory
/// as each change is made.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Leftovers {
    /// The process that owns the cluster, and its start time (so a reused pid is not it).
    pub(crate) owner: Option<(u32, u64)>,
    /// File systems this mounted because the host lacked them (tracefs, bpffs).
    pub(crate) mounted: Vec<String>,
    pub(crate) bridge: bool,
    pub(crate) filter_chain: bool,
    pub(crate) kube_proxy: bool,
    /// The `KUBE-*` iptables chains (tool, table, chain) there before the cluster: kubelet
    /// and kube-proxy make theirs, and only those go at the end.
    pub(crate) kube_chains_before: Vec<Chain>,
    /// The pod network namespaces (`/run/netns/cni-*`) there before the cluster: containerd
    /// 1.6 pins each sandbox's there, and a pin left behind keeps the namespace and its veth.
    #[serde(default)]
    pub(crate) netns_before: Vec<String>,
    /// Whether [`AGENT_PINS`] was there before the cluster. An agent the cluster ran and
    /// that was not uninstalled leaves its enforcement pinned there (by design: it outlives
    /// the agent's pod); a cluster that goes takes it along.
    #[serde(default = "there")]
    pub(crate) agent_pins_before: bool,
    /// The iptables tables (tool, table) there before the cluster. On a host that had none,
    /// kubelet and kube-proxy create `filter`, `nat` and `mangle`; emptied, they would stay.
    /// `None` in records written before the field existed: then no table is removed.
    #[serde(default)]
    pub(crate) tables_before: Option<Vec<Table>>,
}

/// Where the chart's agents pin their programs.
pub const AGENT_PINS: &str = "/sys/fs/bpf/vigil";

/// For records written before the field existed: assume the pins were there, and keep them.
fn there() -> bool {
    true
}

/// Removes a bpffs directory and everything in it: pins first (files), then directories
/// (bpffs removes neither recursively). A removed link pin detaches its program once nothing
/// else holds it.
fn remove_bpffs_tree(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let mut dirs = Vec::new();
    dirs_deepest_first(dir, &mut dirs);
    for d in &dirs {
        for entry in fs::read_dir(d)
            .with_context(|| format!("cannot list {}", d.display()))?
            .flatten()
        {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                fs::remove_file(entry.path())
                    .with_context(|| format!("cannot unpin {}", entry.path().display()))?;
            }
        }
    }
    for d in &dirs {
        fs::remove_dir(d).with_context(|| format!("cannot remove {}", d.display()))?;
    }
    Ok(())
}

/// Where containerd's CRI pins pod network namespaces.
const NETNS_DIR: &str = "/run/netns";

/// The `cni-*` network namespaces pinned in [`NETNS_DIR`].
pub(crate) fn pod_netns() -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .filter(|n| n.starts_with("cni-"))
                .collect()
        })
        .unwrap_or_default()
}

/// An iptables chain: the tool (`iptables`, `ip6tables`), the table and the name.
pub(crate) type Chain = (String, String, String);

const IPTABLES_TOOLS: [&str; 2] = ["iptables", "ip6tables"];

/// Every `KUBE-*` chain in every table, for IPv4 and IPv6.
pub(crate) fn kube_chains() -> Result<Vec<Chain>> {
    let mut chains = Vec::new();
    for tool in IPTABLES_TOOLS {
        let saved = run(&format!("{tool}-save"), &[])?;
        let mut table = "";
        for line in saved.lines() {
            if let Some(name) = line.strip_prefix('*') {
                table = name;
            } else if let Some(chain) = line.strip_prefix(':')
                && let Some(name) = chain.split_whitespace().next()
                && name.starts_with("KUBE-")
            {
                chains.push((tool.to_owned(), table.to_owned(), name.to_owned()));
            }
        }
    }
    Ok(chains)
}

/// An iptables table: the tool (`iptables`, `ip6tables`) and the table's name.
pub(crate) type Table = (String, String);

/// Every table `iptables-save` and `ip6tables-save` show.
pub(crate) fn tables() -> Result<Vec<Table>> {
    let mut tables = Vec::new();
    for tool in IPTABLES_TOOLS {
        let saved = run(&format!("{tool}-save"), &[])?;
        tables.extend(
            saved
                .lines()
                .filter_map(|line| line.strip_prefix('*'))
                .map(|name| (tool.to_owned(), name.to_owned())),
        );
    }
    Ok(tables)
}

/// Whether an `iptables-save -t TABLE` text holds nothing but built-in chains that accept:
/// a table as it is when nothing was ever put into it.
fn table_is_empty(saved: &str) -> bool {
    saved
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('*') && *l != "COMMIT")
        .all(|l| {
            l.strip_prefix(':')
                .is_some_and(|chain| chain.split_whitespace().nth(1) == Some("ACCEPT"))
        })
}

/// Removes the tables that are there now, were not before, and are empty. Only iptables on
/// nf_tables can remove a table (`nft delete table`); the legacy one keeps its tables as long
/// as their modules are loaded, which the cluster did not change.
fn remove_new_tables(before: &[Table]) -> Result<()> {
    let version = run("iptables", &["--version"])?;
    if !version.contains("nf_tables") {
        return Ok(());
    }
    for (tool, table) in tables()? {
        if before.contains(&(tool.clone(), table.clone())) {
            continue;
        }
        let saved = run(&format!("{tool}-save"), &["-t", &table])?;
        if !table_is_empty(&saved) {
            bail!("{tool} table {table} was made by the cluster and still has rules or chains");
        }
        let family = if tool == "ip6tables" { "ip6" } else { "ip" };
        run("nft", &["delete", "table", family, &table])?;
    }
    Ok(())
}

/// The words of an `iptables-save` rule line, with its double quotes undone.
fn rule_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// Removes `chains`: first every rule that jumps to one of them, then their rules, then them.
fn remove_chains(chains: &[Chain]) -> Result<()> {
    let mut tables: Vec<(&str, &str)> = chains
        .iter()
        .map(|(tool, table, _)| (tool.as_str(), table.as_str()))
        .collect();
    tables.sort_unstable();
    tables.dedup();
    for (tool, table) in tables {
        let ours: Vec<&str> = chains
            .iter()
            .filter(|(t, tb, _)| t == tool && tb == table)
            .map(|(_, _, chain)| chain.as_str())
            .collect();
        let saved = run(&format!("{tool}-save"), &["-t", table])?;
        for line in saved.lines().filter(|l| l.starts_with("-A ")) {
            let words = rule_words(line);
            let jumps_to_ours = words
                .windows(2)
                .any(|w| (w[0] == "-j" || w[0] == "-g") && ours.contains(&w[1].as_str()));
            let in_ours = words.get(1).is_some_and(|c| ours.contains(&c.as_str()));
            if jumps_to_ours && !in_ours {
                let mut args = vec!["-w", "-t", table, "-D"];
                args.extend(words[1..].iter().map(String::as_str));
                run(tool, &args)?;
            }
        }
        for chain in &ours {
            run(tool, &["-w", "-t", table, "-F", chain])?;
        }
        for chain in &ours {
            run(tool, &["-w", "-t", table, "-X", chain])?;
        }
    }
    Ok(())
}

impl Leftovers {
    pub(crate) fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("plain data");
        fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
    }

    fn load(path: &Path) -> Result<Option<Self>> {
        match fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .with_context(|| format!("{} is damaged", path.display())),
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err).with_context(|| format!("cannot read {}", path.display())),
        }
    }
}

/// A process's start time in clock ticks since boot (field 22 of `/proc/PID/stat`).
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; the fields after its last `)` do not.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// One line of `/proc/self/mountinfo`: the mount point (unescaped) and the file system type.
fn mounts() -> Result<Vec<(PathBuf, String)>> {
    let text = fs::read_to_string("/proc/self/mountinfo").context("cannot read mountinfo")?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some((
                PathBuf::from(unescape(fields.get(4)?)),
                (*fields.get(sep + 1)?).to_owned(),
            ))
        })
        .collect())
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(code) = field
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(code);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether something is mounted at `path`.
pub(crate) fn is_mount_point(path: &Path) -> Result<bool> {
    Ok(mounts()?.iter().any(|(point, _)| point == path))
}

/// The roots of every cgroup hierarchy (v1 controllers and v2) mounted here.
fn cgroup_roots() -> Result<Vec<PathBuf>> {
    Ok(mounts()?
        .into_iter()
        .filter(|(_, fs_type)| fs_type == "cgroup" || fs_type == "cgroup2")
        .map(|(point, _)| point)
        .collect())
}

/// Every directory under `dir`, deepest first, `dir` last.
fn dirs_deepest_first(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs_deepest_first(&entry.path(), out);
            }
        }
    }
    out.push(dir.to_path_buf());
}

/// The pids in `kubepods` and below, in every hierarchy.
fn pod_pids() -> Result<Vec<u32>> {
    let mut pids = Vec::new();
    for root in cgroup_roots()? {
        let mut dirs = Vec::new();
        dirs_deepest_first(&root.join("kubepods"), &mut dirs);
        for dir in dirs {
            if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
                pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

fn kill(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: a plain syscall on a pid this module identified as the cluster's.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// The pids of `containerd-shim-runc-v2` processes serving `socket`.
fn shim_pids(socket: &Path) -> Vec<u32> {
    let socket = socket.as_os_str().as_encoded_bytes();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_shim = args
                .first()
                .is_some_and(|a| a.ends_with(b"containerd-shim-runc-v2"));
            let ours = args
                .windows(2)
                .any(|w| w[0] == b"-address" && w[1] == socket);
            (is_shim && ours).then_some(pid)
        })
        .collect()
}

fn umount(path: &Path) -> Result<()> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .context("a mount point with a NUL byte")?;
    // SAFETY: a plain syscall with a valid C string.
    if unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINVAL) && err.raw_os_error() != Some(libc::ENOENT) {
            return Err(err).with_context(|| format!("cannot unmount {}", path.display()));
        }
    }
    Ok(())
}

/// Removes what the cluster in `dir` left on the host. Does nothing when `dir` never held a
/// cluster. When the cluster's owner still runs, asks it to stop (SIGTERM) and waits for it.
pub fn teardown(dir: &Path, bin_dir: &Path) -> Result<()> {
    let layout = Layout::new(dir);
    let Some(leftovers) = Leftovers::load(&layout.leftovers())? else {
        if layout.root.exists() {
            unmount_under(&layout.root)?;
            remove_dir(&layout.root)?;
        }
        return Ok(());
    };
    let mut errors: Vec<String> = Vec::new();
    let mut note = |result: Result<()>| {
        if let Err(err) = result {
            errors.push(format!("{err:#}"));
        }
    };
    if let Some((pid, started)) = leftovers.owner
        && pid != std::process::id()
        && start_time(pid) == Some(started)
    {
        note(stop_owner(pid, started));
    }
    note(kill_pods(&layout));
    if !leftovers.agent_pins_before {
        note(remove_bpffs_tree(Path::new(AGENT_PINS)));
    }
    note(unmount_under(&layout.root));
    note(remove_pod_cgroups());
    if leftovers.kube_proxy {
        note(
            run(
                &bin_dir.join("kube-proxy").to_string_lossy(),
                &["--cleanup"],
            )
            .map(drop),
        );
    }
    match kube_chains() {
        Ok(now) => note(remove_chains(
            &now.into_iter()
                .filter(|chain| !leftovers.kube_chains_before.contains(chain))
                .collect::<Vec<_>>(),
        )),
        Err(err) => note(Err(err)),
    }
    if leftovers.filter_chain {
        // Each step may have been done already.
        let mangle = ["-w", "-t", "mangle"];
        let _ = run(
            "iptables",
            &[&mangle[..], &["-D", "FORWARD", "-j", FILTER_CHAIN]].concat(),
        );
        let _ = run("iptables", &[&mangle[..], &["-F", FILTER_CHAIN]].concat());
        let _ = run("iptables", &[&mangle[..], &["-X", FILTER_CHAIN]].concat());
        if run(
            "iptables",
            &[&mangle[..], &["-n", "-L", FILTER_CHAIN]].concat(),
        )
        .is_ok()
        {
            note(Err(anyhow::anyhow!(
                "the iptables chain {FILTER_CHAIN} is still there"
            )));
        }
    }
    if let Some(before) = &leftovers.tables_before {
        note(remove_new_tables(before));
    }
    if leftovers.bridge && Path::new("/sys/class/net").join(BRIDGE).exists() {
        note(run("ip", &["link", "del", BRIDGE]).map(drop));
    }
    note(remove_cni_cache());
    for name in pod_netns() {
        if !leftovers.netns_before.contains(&name) {
            let path = Path::new(NETNS_DIR).join(&name);
            note(umount(&path).and_then(|()| {
                fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))
            }));
        }
    }
    for target in &leftovers.mounted {
        note(umount(Path::new(target)));
    }
    if errors.is_empty()
        && let Err(err) = remove_dir(&layout.root)
    {
        errors.push(format!("{err:#}"));
    }
    if !errors.is_empty() {
        bail!(
            "cleaning up the node in {}: {}",
            dir.display(),
            errors.join("; ")
        );
    }
    Ok(())
}

fn stop_owner(pid: u32, started: u64) -> Result<()> {
    kill(pid, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(90);
    while start_time(pid) == Some(started) {
        if Instant::now() > deadline {
            bail!("the cluster's owner (pid {pid}) did not stop within 90 s of SIGTERM");
        }
        thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Kills every process in the pods' cgroups and the shims of this cluster's containerd, and
/// waits until the pods' cgroups are empty.
fn kill_pods(layout: &Layout) -> Result<()> {
    for pid in shim_pids(&layout.containerd_socket()) {
        kill(pid, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pids = pod_pids()?;
        if pids.is_empty() {
            return Ok(());
        }
        for pid in &pids {
            kill(*pid, libc::SIGKILL);
        }
        if Instant::now() > deadline {
            bail!("pod processes {pids:?} did not end within 30 s of SIGKILL");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Unmounts everything mounted at or under `root`, deepest first.
fn unmount_under(root: &Path) -> Result<()> {
    let mut points: Vec<PathBuf> = mounts()?
        .into_iter()
        .map(|(point, _)| point)
        .filter(|point| point.starts_with(root))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for point in points {
        umount(&point)?;
    }
    // A bind mount stacked twice shows twice; repeat until none is left.
    if mounts()?.iter().any(|(point, _)| point.starts_with(root)) {
        for (point, _) in mounts()?.into_iter().filter(|(p, _)| p.starts_with(root)) {
            umount(&point)?;
        }
    }
    Ok(())
}

/// Removes `kubepods` and everything under it in every cgroup hierarchy.
fn remove_pod_cgroups() -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut left = Vec::new();
        for root in cgroup_roots()? {
            let top = root.join("kubepods");
            if !top.exists() {
                continue;
            }
            let mut dirs = Vec::new();
            dirs_deepest_first(&top, &mut dirs);
            for dir in dirs {
                if let Err(err) = fs::remove_dir(&dir)
                    && err.kind() != ErrorKind::NotFound
                {
                    left.push(format!("{}: {err}", dir.display()));
                }
            }
        }
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("cannot remove the pods' cgroups: {}", left.join(", "));
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// libcni caches each attachment's result under /var/lib/cni, named after the network.
fn remove_cni_cache() -> Result<()> {
    let dir = Path::new("/var/lib/cni/results");
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(&format!("{CNI_NETWORK}-"))
        {
            fs::remove_file(entry.path())
                .with_context(|| format!("cannot remove {}", entry.path().display()))?;
        }
    }
    Ok(())
}

fn remove_dir(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(err) if err.kind() != ErrorKind::NotFound => {
            Err(err).with_context(|| format!("cannot remove {}", dir.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/tmp/a\040b\134c"), "/tmp/a b\\c");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn only_a_table_with_nothing_in_it_counts_as_empty() {
        let fresh = "# Generated by iptables-save\n*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n";
        assert!(super::table_is_empty(fresh));
        let with_chain = fresh.replace("COMMIT", ":KUBE-SERVICES - [0:0]\nCOMMIT");
        assert!(!super::table_is_empty(&with_chain));
        let with_rule = fresh.replace("COMMIT", "-A OUTPUT -j ACCEPT\nCOMMIT");
        assert!(!super::table_is_empty(&with_rule));
        let dropping = fresh.replace(":INPUT ACCEPT", ":INPUT DROP");
        assert!(!super::table_is_empty(&dropping));
    }

    #[test]
    fn iptables_save_rules_split_into_words() {
        assert_eq!(
            rule_words(
                r#"-A KUBE-FIREWALL ! -s 127.0.0.0/8 -m comment --comment "block \"local\" conns" -j DROP"#
            ),
            [
                "-A",
                "KUBE-FIREWALL",
                "!",
                "-s",
                "127.0.0.0/8",
                "-m",
                "comment",
                "--comment",
                "block \"local\" conns",
                "-j",
                "DROP"
            ]
        );
    }

    #[test]
    fn this_process_has_a_start_time() {
        assert!(start_time(std::process::id()).is_some());
    }

    #[test]
    fn leftovers_round_trip() {
        let dir = std::env::temp_dir().join(format!("testenv-leftovers-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("l.json");
        let saved = Leftovers {
            owner: Some((7, 9)),
            mounted: vec!["/sys/kernel/tracing".into()],
            bridge: true,
            filter_chain: false,
            kube_proxy: true,
            kube_chains_before: Vec::new(),
            netns_before: Vec::new(),
            tables_before: Some(vec![("iptables".into(), "nat".into())]),
            agent_pins_before: false,
        };
        saved.save(&path).expect("save");
        let back = Leftovers::load(&path).expect("load").expect("present");
        assert_eq!(back.owner, Some((7, 9)));
        assert_eq!(back.mounted, ["/sys/kernel/tracing"]);
        assert!(back.bridge && !back.filter_chain && back.kube_proxy);
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
