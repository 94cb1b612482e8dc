//! `vigil run`: policies enforced in the kernel, violations out as CloudEvents, policy files
//! watched and swapped in without a gap.
use std::{path::PathBuf, time::Duration};

use tokio::sync::watch;

use super::{
    AgentOptions, HELD_RECHECK, LOSS_REPORT_INTERVAL, PipelineError, Stages, TraceSummary,
    WINDOW_CHECK,
    learning::{Learning, learners_of},
    policy_files::{Look, PolicyFiles},
    verdict::judge,
};
use crate::{
    ebpf::{Mode, ProbeOptions, Probes},
    enforce::{Applied, Enforcer, seed},
    pipeline::cluster::ClusterLink,
    policy::{self, FieldError, Policy},
    sink::Routed,
    telemetry::{metrics::Telemetry, state::StateFile},
};

/// How often the processes held for a decision on their content are looked at: one held
/// through two sweeps had no record, and is killed (`content::Content::sweep`).
const HOLD_SWEEP: Duration = Duration::from_secs(2);

/// How long the agent waits for the API server's first lists before it enforces what it has.
const FIRST_LIST_WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub agent: AgentOptions,
    /// Policy files or directories.
    pub policies: Vec<PathBuf>,
    /// How often policy files and cgroup bindings are checked for changes.
    pub watch_interval: Duration,
    /// Where the agent keeps its state as JSON (`--state-file`).
    pub state_file: Option<PathBuf>,
    /// How often the tables of `Learn` policies are published when they changed.
    pub learn_report_interval: Duration,
}

fn refused(errors: &[FieldError], state: &mut StateFile) -> Result<(), PipelineError> {
    tracing::error!(
        errors = errors.len(),
        "policy set refused; the last good policies stay in force"
    );
    for e in errors {
        tracing::error!("{e}");
    }
    Ok(state.refused(errors)?)
}

/// Says what was put in force, in the log and the state file.
fn in_force(
    enforcer: &Enforcer,
    applied: Option<Applied>,
    state: &mut StateFile,
) -> Result<(), PipelineError> {
    let Some(applied) = applied else {
        return Ok(());
    };
    tracing::info!(
        policies = applied.policies,
        sets = applied.sets,
        bindings = applied.bound.len(),
        bound = ?applied.bound,
        waiting_for = ?applied.waiting,
        map_entries = enforcer.map_entries(),
        map_errors = enforcer.map_errors(),
        "policies in force"
    );
    Ok(state.applied(
        &applied,
        enforcer.map_usage(),
        enforcer.map_entries(),
        enforcer.map_errors(),
    )?)
}

/// Applies the file policies (no cluster) or syncs with the cluster, and says what changed.
fn sync(
    enforcer: &mut Enforcer,
    link: Option<&mut ClusterLink>,
    file_policies: &[Policy],
    reload: bool,
    root: &std::path::Path,
    state: &mut StateFile,
) -> Result<(), PipelineError> {
    let applied = match link {
        Some(link) => link.sync(enforcer, file_policies, root)?,
        None if reload => Some(enforcer.apply(file_policies)?),
        None => None,
    };
    in_force(enforcer, applied, state)
}

/// Loads the policies, enforces them until `stop` turns true, and reloads them on change.
/// With a kubeconfig (or in a cluster) policies and Services also come from the API server.
pub async fn run(
    options: &RunOptions,
    sinks: Vec<Routed>,
    stop: watch::Receiver<bool>,
) -> Result<TraceSummary, PipelineError> {
    let common = &options.agent;
    let root = common.root()?;
    // Watched from before the first read: a change while the probes load is read after.
    let mut policy_files = PolicyFiles::new(
        options.policies.clone(),
        options.watch_interval,
        std::time::Instant::now(),
    );
    let mut file_policies = if options.policies.is_empty() {
        Vec::new()
    } else {
        policy::load_paths(&options.policies).map_err(PipelineError::Policies)?
    };
    let mut probes = Probes::load(&ProbeOptions {
        mode: Mode::Enforce,
        cgroup: None,
        ring_buffer_bytes: common.ring_buffer_bytes,
        exclude_pid: std::process::id(),
        cgroup_root: Some(root.clone()),
        kernel_log: common.kernel_log,
        pin: common
            .pin_dir
            .as_deref()
            .map(crate::ebpf::pin::plan)
            .transpose()?,
    })?;
    let mut enforcer =
        Enforcer::new(probes.take_policy_maps()?, root.clone()).with_late(probes.take_late());
    let seeded = seed::from_proc(enforcer.task_exe_map());
    tracing::debug!(
        processes = seeded,
        "executables of running processes recorded"
    );
    match &probes.prevention.unavailable {
        None => tracing::info!("{}", probes.prevention.describe()),
        Some(_) => tracing::warn!("{}", probes.prevention.describe()),
    }
    let mut link = ClusterLink::connect(&common.node).await?;
    if let Some(link) = link.as_mut() {
        link.set_deny_fallback(probes.prevention.unavailable.clone());
    }
    if link.is_none() && options.policies.is_empty() {
        return Err(PipelineError::NothingToEnforce);
    }
    // Ready, and taking over pinned enforcement, only with the whole picture; enforcing what
    // is known meanwhile, once the lists had a fair chance to come.
    let synced = match &link {
        Some(link) => {
            if !link.wait_synced(FIRST_LIST_WAIT).await {
                tracing::warn!(
                    waited_s = FIRST_LIST_WAIT.as_secs(),
                    "the API server's first lists of pods, Services and policies are not all in: enforcing what is known; not ready, and not taking over pinned enforcement, until they are"
                );
            }
            link.synced()
        }
        None => watch::channel(true).1,
    };
    let telemetry = Telemetry::new();
    let mut state =
        StateFile::new(options.state_file.clone(), &common.node).with_telemetry(telemetry.clone());
    sync(
        &mut enforcer,
        link.as_mut(),
        &file_policies,
        true,
        &root,
        &mut state,
    )?;
    let pinned = enforcer.pin_running();
    tracing::debug!(
        processes = pinned,
        "running processes pinned to their policy bindings"
    );

    let attached = probes.attached;
    let mut stages = Stages::start(
        probes,
        root.clone(),
        sinks,
        common,
        telemetry,
        stop,
        synced.clone(),
    )
    .await?;
    // Ready: programs attached, policies compiled, and the cluster's caches synced.
    // Already synced (no cluster, or its caches filled): ready before the log says
    // enforcing, so a probe that follows the log never finds the agent unready.
    let ready = stages.telemetry.clone();
    if *synced.borrow() {
        ready.set_ready(true);
    } else {
        let mut synced_now = synced;
        tokio::spawn(async move {
            if synced_now.wait_for(|done| *done).await.is_ok() {
                ready.set_ready(true);
            }
        });
    }
    tracing::info!(probes = attached, cgroup_root = %root.display(), "vigil is enforcing");
    let node = common.node.as_str();
    let mut loss_ticker = tokio::time::interval(LOSS_REPORT_INTERVAL);
    let mut watch_ticker = tokio::time::interval(options.watch_interval);
    let mut held_ticker = tokio::time::interval(HELD_RECHECK);
    let mut windows = tokio::time::interval(WINDOW_CHECK);
    let mut content = super::content::Content::default();
    let mut hold_sweep = tokio::time::interval(HOLD_SWEEP);
    let mut stranded = stages.take_stranded();
    let mut learning = Learning::new(link.as_ref(), node);
    learning.follow(&enforcer, &mut stages.learn, link.as_ref());
    let mut learn_ticker = tokio::time::interval(options.learn_report_interval);
    loop {
        tokio::select! {
            ev = stages.next() => {
                let Some(mut ev) = ev else { break };
                content.settle(&mut enforcer, &mut ev);
                let learn = learners_of(&enforcer, &ev);
                match judge(&enforcer, &ev) {
                    Some(judgement) => {
                        stages.dispatch(node, ev, Some(judgement), learn, link.as_ref());
                    }
                    None if !learn.is_empty() => {
                        stages.dispatch(node, ev, None, learn, link.as_ref());
                    }
                    None => {}
                }
            }
            _ = learn_ticker.tick() => learning.tick(&mut stages.learn, link.as_ref()),
            Some(answer) = learning.answer() => learning.settle(answer, &mut stages.learn),
            _ = held_ticker.tick(), if stages.has_held() => stages.release_held(node, link.as_ref()),
            _ = loss_ticker.tick() => stages.report_losses(node)?,
            _ = hold_sweep.tick() => content.sweep(&enforcer),
            _ = windows.tick() => stages.close_windows(Some(std::time::Instant::now())),
            Some(stranded) = stranded.recv() => stages.carry_held_back(stranded),
            _ = watch_ticker.tick() => {
                let mut reloaded = false;
                match policy_files.look(std::time::Instant::now()) {
                    Look::Unchanged | Look::Settling => {}
                    Look::Empty(files) => tracing::warn!(
                        files = ?files,
                        "policy file empty: taken as still being written, the policies in force stay (to lift a file's policies, leave a comment in it)"
                    ),
                    Look::Read(Ok(policies)) => {
                        file_policies = policies;
                        reloaded = true;
                    }
                    Look::Read(Err(errors)) => refused(&errors, &mut state)?,
                }
                sync(&mut enforcer, link.as_mut(), &file_policies, reloaded, &root, &mut state)?;
                learning.follow(&enforcer, &mut stages.learn, link.as_ref());
                let rebound = enforcer.refresh()?;
                if !rebound.is_empty() {
                    tracing::info!(paths = ?rebound, "policies bound to new cgroups");
                }
            }
        }
    }
    learning.last(&mut stages.learn, link.as_ref()).await;
    let summary = stages.finish(node, link.as_ref()).await;
    if let Some(dir) = &common.pin_dir {
        super::pins::release(dir, link.as_ref().map(|l| &l.client)).await;
    }
    summary
}
