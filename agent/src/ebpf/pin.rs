//! Enforcement that survives the agent (`--pin-dir`): each agent's programs are attached
//! through links pinned in bpffs, so they keep enforcing while the agent restarts or is
//! upgraded, and the next agent takes over from them without a gap.
//!
//! Layout under the pin directory (default `/sys/fs/bpf/vigil`):
//! - `emitter`: a one-slot map shared by every generation's programs, holding the generation
//!   whose programs report. Both generations enforce during a hand-over; one reports.
//! - `gen-<N>/`: one agent's generation: `links/<program>-<n>` (its attached programs),
//!   `events` (its ring buffer), and the directories `pid-<pid>` (the agent that loaded it)
//!   and `layout-<hex>` (its record layout, `agent_common::RECORD_LAYOUT`).
//!
//! Hand-over (`Handover::complete`), once the new agent is ready (programs attached,
//! policies compiled, caches synced): wait until the previous agent's process has exited
//! (it drains its own ring buffer when it stops), make the new generation the reporting one,
//! remove the previous links (its programs detach), read what its programs reported since
//! its agent stopped reading (when the layout matches), and remove its pins.
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData, PerCpuArray, RingBuf};

use super::EbpfError;

/// Where the chart pins.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/vigil";
/// The longest a new agent waits for the previous one to exit before it takes over anyway.
const PREVIOUS_EXIT_WAIT: Duration = Duration::from_secs(45);

/// What `Probes::load` needs to pin: the directory and this agent's generation.
#[derive(Debug, Clone)]
pub struct PinPlan {
    pub dir: PathBuf,
    pub generation: u32,
    /// The generations found pinned, older agents' programs still attached.
    pub previous: Vec<Previous>,
}

/// A generation a previous agent pinned.
#[derive(Debug, Clone)]
pub struct Previous {
    pub generation: u32,
    pub dir: PathBuf,
    /// The agent that loaded it.
    pub pid: Option<u32>,
    /// Whether its records read as ours.
    pub layout_matches: bool,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EbpfError + '_ {
    move |source| EbpfError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn generation_dir(dir: &Path, generation: u32) -> PathBuf {
    dir.join(format!("gen-{generation}"))
}

fn layout_marker() -> String {
    format!("layout-{:08x}", agent_common::RECORD_LAYOUT)
}

/// Finds the generations pinned in `dir` (created when missing) and picks the next one.
pub fn plan(dir: &Path) -> Result<PinPlan, EbpfError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut previous = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
        let name = entry.file_name();
        let Some(generation) = name
            .to_str()
            .and_then(|n| n.strip_prefix("gen-"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let path = entry.path();
        let markers: Vec<String> = std::fs::read_dir(&path)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        previous.push(Previous {
            generation,
            pid: markers
                .iter()
                .find_map(|m| m.strip_prefix("pid-").and_then(|p| p.parse().ok())),
            layout_matches: markers.contains(&layout_marker()),
            dir: path,
        });
    }
    previous.sort_by_key(|p| p.generation);
    let generation = previous
        .last()
        .map_or(1, |p| p.generation.wrapping_add(1).max(1));
    Ok(PinPlan {
        dir: dir.to_path_buf(),
        generation,
        previous,
    })
}

/// The pins of this agent's generation, made as it attaches. Dropped before
/// [`OwnPins::commit`] (a load that failed half-way), they are removed: a half-attached
/// generation must not enforce on after its agent gave up.
#[derive(Debug)]
pub struct OwnPins {
    pub dir: PathBuf,
    committed: bool,
}

impl Drop for OwnPins {
    fn drop(&mut self) {
        if !self.committed
            && let Err(err) = remove_generation(&self.dir)
        {
            tracing::warn!(dir = %self.dir.display(), %err, "could not remove the pins of a failed load");
        }
    }
}

impl OwnPins {
    /// Creates `gen-<N>/` with its markers.
    pub fn create(plan: &PinPlan) -> Result<Self, EbpfError> {
        let dir = generation_dir(&plan.dir, plan.generation);
        for sub in [
            dir.join("links"),
            dir.join(format!("pid-{}", std::process::id())),
            dir.join(layout_marker()),
        ] {
            std::fs::create_dir_all(&sub).map_err(io(&sub))?;
        }
        Ok(Self {
            dir,
            committed: false,
        })
    }

    /// Every program and the ring buffer are pinned: the generation stays.
    pub fn commit(mut self) {
        self.committed = true;
    }

    pub fn link_path(&self, program: &str, index: usize) -> PathBuf {
        self.dir.join("links").join(format!("{program}-{index}"))
    }

    pub fn events_path(&self) -> PathBuf {
        self.dir.join("events")
    }
}

/// Removes a generation's pins: its links go (and with the last reference its programs
/// detach), then its ring buffer and markers.
/// Unpins a generation's links, so its programs detach: the exec's return check
/// (`sys_exit`) first, or an exec whose judging programs detached before it would be taken
/// for one the kernel skipped (`agent-ebpf/src/judged.rs`) and killed.
fn unpin_links(links: &Path) -> Result<(), EbpfError> {
    if !links.exists() {
        return Ok(());
    }
    let mut paths: Vec<std::path::PathBuf> = std::fs::read_dir(links)
        .map_err(io(links))?
        .flatten()
        .map(|entry| entry.path())
        .collect();
    paths.sort_by_key(|path| !is_return_check(path));
    for path in paths {
        std::fs::remove_file(&path).map_err(io(&path))?;
    }
    Ok(())
}

/// Whether a pinned link (`<program>-<index>`) is of a program that checks an exec's
/// return (raw `sys_exit`, `bprm_execve`'s fexit program).
fn is_return_check(link: &Path) -> bool {
    link.file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.rsplit_once('-'))
        .is_some_and(|(program, _)| program == "sys_exit" || program == "bprm_execve_exit")
}

pub fn remove_generation(dir: &Path) -> Result<(), EbpfError> {
    if !dir.exists() {
        return Ok(());
    }
    unpin_links(&dir.join("links"))?;
    // bpffs has no recursive removal: files (pins) first, then the directories.
    let mut dirs = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        for entry in std::fs::read_dir(&dirs[i]).map_err(io(&dirs[i]))?.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(path);
            } else {
                std::fs::remove_file(&path).map_err(io(&path))?;
            }
        }
        i += 1;
    }
    for d in dirs.iter().rev() {
        std::fs::remove_dir(d).map_err(io(d))?;
    }
    Ok(())
}

/// Removes every pin under `dir` and `dir` itself: what `helm uninstall` (or `vigil unpin`)
/// leaves of the agent is nothing.
pub fn remove_all(dir: &Path) -> Result<(), EbpfError> {
    if !dir.exists() {
        return Ok(());
    }
    let plan = plan(dir)?;
    for previous in &plan.previous {
        remove_generation(&previous.dir)?;
    }
    let emitter = dir.join("emitter");
    if emitter.exists() {
        std::fs::remove_file(&emitter).map_err(io(&emitter))?;
    }
    // Other agents' directories (e.g. `agents/`) stay: they remove their own.
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.raw_os_error() == Some(libc::ENOTEMPTY) => Ok(()),
        Err(err) => Err(io(dir)(err)),
    }
}

fn process_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// What remains to do once this agent is ready: take over from the previous generations.
pub struct Handover {
    pub generation: u32,
    pub previous: Vec<Previous>,
    pub emitter: Array<MapData, u32>,
    /// This generation's `SILENCED` counters: what its programs enforced while the previous
    /// generation was the reporting one.
    pub silenced: PerCpuArray<MapData, u64>,
}

/// What a hand-over did, for the log.
#[derive(Debug, Default)]
pub struct HandoverReport {
    pub generations: Vec<u32>,
    pub records: u64,
    pub unreadable: Vec<u32>,
    /// Violations this generation's programs met before it took over, left to the previous
    /// generation to report (it reported those it knew of too).
    pub silenced: u64,
}

impl Handover {
    /// Makes this generation the reporting one now (there is no previous one).
    pub fn report_now(&mut self) -> Result<(), EbpfError> {
        self.emitter
            .set(0, self.generation, 0)
            .map_err(|source| EbpfError::Map {
                map: "EMITTER",
                source,
            })
    }

    /// Takes over from the previous generations and passes what their programs reported
    /// since their agent stopped reading to `tx` (the reader's queue).
    pub async fn complete(
        mut self,
        tx: super::records::RecordSender,
    ) -> Result<HandoverReport, EbpfError> {
        let deadline = Instant::now() + PREVIOUS_EXIT_WAIT;
        for previous in &self.previous {
            let Some(pid) = previous.pid else { continue };
            while process_alive(pid) && pid != std::process::id() {
                if Instant::now() > deadline {
                    tracing::warn!(
                        pid,
                        generation = previous.generation,
                        "the previous agent has not exited; taking over anyway (it may report acts this agent reports too)"
                    );
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        self.report_now()?;
        let mut report = HandoverReport {
            silenced: (0..agent_common::kind::SLOTS)
                .filter_map(|slot| self.silenced.get(&slot, 0).ok())
                .map(|per_cpu| per_cpu.iter().sum::<u64>())
                .sum(),
            ..HandoverReport::default()
        };
        for previous in &self.previous {
            let events = previous.dir.join("events");
            let ring = if previous.layout_matches && events.exists() {
                Some(open_ring(&events)?)
            } else {
                None
            };
            // Its programs detach once their links are unpinned; a record they were writing
            // is committed within microseconds of that.
            unpin_links(&previous.dir.join("links"))?;
            tokio::time::sleep(Duration::from_millis(100)).await;
            match ring {
                Some(mut ring) => {
                    while let Some(item) = ring.next() {
                        report.records += 1;
                        if tx.send_waiting(&item).await.is_err() {
                            break;
                        }
                    }
                }
                None => report.unreadable.push(previous.generation),
            }
            remove_generation(&previous.dir)?;
            report.generations.push(previous.generation);
        }
        Ok(report)
    }
}

fn open_ring(path: &Path) -> Result<RingBuf<MapData>, EbpfError> {
    let map = MapData::from_pin(path)
        .and_then(Map::from_map_data)
        .map_err(|source| EbpfError::Map {
            map: "EVENTS (a previous agent's)",
            source,
        })?;
    RingBuf::try_from(map).map_err(|source| EbpfError::Map {
        map: "EVENTS (a previous agent's)",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_sys_exit_programs_links_are_the_return_check() {
        for (name, check) in [
            ("sys_exit-7", true),
            ("sys_exit-12", true),
            ("sys_exit_protection-12", false),
            ("sys_exit_open_mem-3", false),
            ("sched_process_exec-1", false),
        ] {
            assert_eq!(is_return_check(Path::new(name)), check, "{name}");
        }
        // And unpinning leaves nothing behind.
        let dir = tempfile::tempdir().unwrap();
        for name in ["sched_process_exec-1", "sys_exit-7", "connect4-20"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        unpin_links(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_next_generation_follows_the_highest_pinned_one() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = plan(dir.path()).unwrap();
        assert_eq!(fresh.generation, 1);
        assert!(fresh.previous.is_empty());
        for (generation, pid) in [(3, 10), (7, 20)] {
            let gen_dir = dir.path().join(format!("gen-{generation}"));
            std::fs::create_dir_all(gen_dir.join(format!("pid-{pid}"))).unwrap();
            std::fs::create_dir_all(gen_dir.join(layout_marker())).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("gen-5").join("layout-00000000")).unwrap();
        let next = plan(dir.path()).unwrap();
        assert_eq!(next.generation, 8);
        let found: Vec<(u32, Option<u32>, bool)> = next
            .previous
            .iter()
            .map(|p| (p.generation, p.pid, p.layout_matches))
            .collect();
        assert_eq!(
            found,
            [(3, Some(10), true), (5, None, false), (7, Some(20), true)]
        );
    }

    #[test]
    fn removing_a_generation_leaves_nothing_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan(dir.path()).unwrap();
        let own = OwnPins::create(&plan).unwrap();
        std::fs::write(own.link_path("exec", 0), b"").unwrap();
        std::fs::write(own.events_path(), b"").unwrap();
        let own_dir = own.dir.clone();
        own.commit();
        assert!(own_dir.exists(), "a committed generation stays");
        remove_generation(&own_dir).unwrap();
        assert!(!own_dir.exists());
        // A load that failed half-way leaves nothing pinned.
        let failed = OwnPins::create(&plan).unwrap();
        std::fs::write(failed.link_path("exec", 0), b"").unwrap();
        let failed_dir = failed.dir.clone();
        drop(failed);
        assert!(!failed_dir.exists());
        std::fs::write(dir.path().join("emitter"), b"").unwrap();
        remove_all(dir.path()).unwrap();
        assert!(!dir.path().exists());
    }
}
