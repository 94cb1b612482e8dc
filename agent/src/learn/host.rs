//! `vigil learn` on a host: the kernel probes watch one cgroup (an existing one, or a fresh
//! one the command is started in) and every exec, connect and W^X mapping there goes into the
//! learn table, through the same pipeline `vigil trace` runs, until the command exits, the
//! duration passes, or a signal says stop.
use std::{
    ffi::OsString,
    os::{
        fd::{AsFd as _, AsRawFd},
        unix::process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::ExitStatus,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::future::BoxFuture;
use tokio::sync::watch;

use super::{
    LearnError,
    table::{LearnTable, Limits},
};
use crate::{
    cloudevents::VigilEvent,
    pipeline::{self, AgentOptions, TraceOptions},
    sink::{Filter, Sink, SinkError},
};

/// How often the table is saved while learning (`--table`).
const SAVE_EVERY: Duration = Duration::from_secs(10);
/// How long a command asked to stop (SIGTERM) at the end of `--duration` has before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What a host learn run watches and for how long.
#[derive(Debug)]
pub struct HostLearn {
    pub agent: AgentOptions,
    /// The cgroup (relative to the cgroup v2 root) watched, and the command started in; for a
    /// command without one, a fresh cgroup made for the run.
    pub cgroup: Option<String>,
    /// Run this and learn until it exits.
    pub command: Vec<OsString>,
    pub duration: Option<Duration>,
    pub limits: Limits,
    /// Keep the table here: loaded at start when it exists, saved while learning and at the
    /// end, so a run that is stopped goes on where it stopped.
    pub table_file: Option<PathBuf>,
}

/// What a host learn run found.
#[derive(Debug)]
pub struct Outcome {
    pub table: LearnTable,
    /// The cgroup watched (relative to the cgroup v2 root).
    pub cgroup: String,
    /// How the command ended, when there was one and it ended.
    pub exit: Option<ExitStatus>,
    /// Events the pipeline counted lost while learning.
    pub lost: u64,
}

/// The sink that feeds the table.
struct TableSink {
    table: Arc<Mutex<LearnTable>>,
}

impl Sink for TableSink {
    fn name(&self) -> &str {
        "learn"
    }

    fn deliver<'a>(
        &'a mut self,
        events: &'a [Arc<VigilEvent>],
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
            for event in events {
                super::observe::record(&mut table, event);
            }
            Ok(())
        })
    }
}

/// Loads the table kept in `file`, or a new one when there is none yet.
pub fn load_table(file: Option<&Path>, limits: Limits) -> Result<LearnTable, LearnError> {
    let Some(file) = file else {
        return Ok(LearnTable::new(limits));
    };
    match std::fs::read(file) {
        Ok(bytes) => {
            let mut table: LearnTable =
                serde_json::from_slice(&bytes).map_err(|e| LearnError::TableFile {
                    path: file.to_owned(),
                    reason: e.to_string(),
                })?;
            // The limits given now hold from now on.
            table.limits = limits;
            Ok(table)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LearnTable::new(limits)),
        Err(e) => Err(LearnError::TableFile {
            path: file.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// Saves `table` to `file` whole (written aside, then renamed over).
pub fn save_table(file: &Path, table: &LearnTable) -> Result<(), LearnError> {
    let err = |e: &dyn std::fmt::Display| LearnError::TableFile {
        path: file.to_owned(),
        reason: e.to_string(),
    };
    let bytes = serde_json::to_vec(table).map_err(|e| err(&e))?;
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| err(&e))?;
    std::fs::rename(&tmp, file).map_err(|e| err(&e))
}

/// A cgroup this run made, removed when the run ends (once its processes are gone).
struct MadeCgroup(PathBuf);

impl Drop for MadeCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        tracing::warn!(
            cgroup = %self.0.display(),
            "the learn cgroup still holds processes the command left behind; it is left in place"
        );
    }
}

/// Learns until the command exits, `duration` passes or `stop` says so.
pub async fn learn(
    options: HostLearn,
    mut stop: watch::Receiver<bool>,
) -> Result<Outcome, LearnError> {
    let root = options.agent.root()?;
    let cgroup = match (&options.cgroup, options.command.is_empty()) {
        (Some(c), _) => format!("/{}", c.trim_matches('/')),
        (None, false) => format!("/vigil-learn-{}", std::process::id()),
        (None, true) => return Err(LearnError::NothingToWatch),
    };
    // A canonical path below the root: `..` would leave the cgroup tree, and `/` would make a
    // policy for every host process out of whatever the whole host did meanwhile.
    let below_root = if cgroup == "/" {
        Err("the root holds every process of the host".to_owned())
    } else {
        crate::policy::validate::check_path(&cgroup).map_err(|e| e.to_string())
    };
    below_root.map_err(|reason| LearnError::Cgroup {
        path: PathBuf::from(&cgroup),
        reason: format!("not a cgroup below the root: {reason}"),
    })?;
    let dir = root.join(cgroup.trim_start_matches('/'));
    let _made = if options.command.is_empty() || dir.is_dir() {
        None
    } else {
        std::fs::create_dir_all(&dir).map_err(|e| LearnError::Cgroup {
            path: dir.clone(),
            reason: e.to_string(),
        })?;
        Some(MadeCgroup(dir.clone()))
    };
    let table = Arc::new(Mutex::new(load_table(
        options.table_file.as_deref(),
        options.limits,
    )?));
    let sink: crate::sink::Routed = (
        Box::new(TableSink {
            table: table.clone(),
        }),
        Filter::default(),
    );
    let (ready_tx, mut ready) = watch::channel(false);
    let (stop_trace, trace_stop) = watch::channel(false);
    let trace_options = TraceOptions {
        agent: options.agent.clone(),
        cgroup: Some(cgroup.clone()),
        ready: Some(ready_tx),
    };
    let mut trace =
        tokio::spawn(async move { pipeline::trace(&trace_options, vec![sink], trace_stop).await });
    tokio::select! {
        r = ready.wait_for(|r| *r) => {
            if r.is_err() {
                // The trace ended before it was ready: its error says why.
                return Err(ended_early(trace.await));
            }
        }
        r = &mut trace => {
            return Err(ended_early(r));
        }
    }
    let mut child = match options.command.split_first() {
        Some((program, args)) => Some(spawn_in(&dir, program, args)?),
        None => None,
    };
    tracing::info!(
        cgroup = %cgroup,
        pid = child.as_ref().and_then(tokio::process::Child::id),
        "learning"
    );
    let deadline = async {
        match options.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut save = tokio::time::interval(SAVE_EVERY);
    let mut exit = None;
    loop {
        tokio::select! {
            status = async { child.as_mut().map(|c| c.wait()).unwrap().await }, if child.is_some() => {
                exit = status.ok();
                child = None;
                break;
            }
            () = &mut deadline => break,
            _ = stop.wait_for(|s| *s) => break,
            _ = save.tick() => {
                if let Some(file) = &options.table_file {
                    let copy = table.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    save_table(file, &copy)?;
                }
            }
        }
    }
    if let Some(mut c) = child {
        exit = end(&mut c).await;
    }
    // What the last processes did is still on its way from the ring buffer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop_trace.send(true);
    let summary = trace.await??;
    let lost = summary.losses.total();
    let mut table = table.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if lost > 0 {
        table.warn(format!(
            "{lost} events were lost while learning; what they showed may be missing: learn again"
        ));
    }
    if let Some(file) = &options.table_file {
        save_table(file, &table)?;
    }
    Ok(Outcome {
        table,
        cgroup,
        exit,
        lost,
    })
}

/// Why a trace that ended before learning began did: its error, or that it just ended.
fn ended_early(
    result: Result<Result<pipeline::TraceSummary, pipeline::PipelineError>, tokio::task::JoinError>,
) -> LearnError {
    match result {
        Ok(Err(e)) => e.into(),
        Ok(Ok(_)) => LearnError::TraceEnded,
        Err(e) => LearnError::Join(e),
    }
}

/// Starts `program` in the cgroup `dir`: the child moves itself there before it execs, so
/// its first exec is already watched.
fn spawn_in(
    dir: &Path,
    program: &OsString,
    args: &[OsString],
) -> Result<tokio::process::Child, LearnError> {
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))
        .map_err(|e| LearnError::Cgroup {
            path: dir.to_owned(),
            reason: e.to_string(),
        })?;
    let fd = procs.as_raw_fd();
    let mut command = std::process::Command::new(program);
    command.args(args);
    // The policy (or patch) may be what goes to stdout: the command writes to stderr.
    if let Ok(stderr) = std::io::stderr().as_fd().try_clone_to_owned() {
        command.stdout(stderr);
    }
    // SAFETY: between fork and exec the closure makes one system call on a descriptor the
    // parent opened, and builds its error without allocating.
    unsafe {
        command.pre_exec(move || {
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = tokio::process::Command::from(command)
        .spawn()
        .map_err(|e| LearnError::Spawn {
            program: program.to_string_lossy().into_owned(),
            reason: e.to_string(),
        })?;
    drop(procs);
    Ok(child)
}

/// Ends the command at the end of the learning time: SIGTERM, then SIGKILL after a grace.
async fn end(child: &mut tokio::process::Child) -> Option<ExitStatus> {
    if let Some(pid) = child.id() {
        // SAFETY: a signal to our own child, which has not been reaped (we hold it).
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            let _ = child.start_kill();
            child.wait().await.ok()
        }
    }
}
