//! What each of the agent's programs costs each workload: with the kernel's run statistics on
//! (`kernel.bpf_stats_enabled`, which times every run of every program), `vigil trace` and
//! `vigil run` each run every workload once, and the runs and nanoseconds each program added
//! (its `/proc/PID/fdinfo` entry, found by the id the agent logs at load) are divided by the
//! workload's operations. This is the programs' own time, not what having a program on a
//! hook costs (the floor modes measure that); turning the statistics on adds two clock reads
//! to every run, so this part runs apart from the overhead rounds.
use std::{collections::HashMap, fmt::Write as _, fs};

use anyhow::{Context, Result, bail};

use crate::bench::{Bench, Mode, Workload, run_workload};

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
/// The agent's log filter: its readiness line and each program's id.
const LOG: &str = "info,vigil::programs=debug";
/// The floor's empty programs first: what of each mode's time any program would take.
const MODES: [Mode; 3] = [Mode::Floor, Mode::Trace, Mode::Run];

/// One program's share of one workload under one mode.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgramCost {
    pub program: String,
    pub runs: u64,
    pub ns: u64,
}

/// Every program that ran during one workload under one mode.
#[derive(Debug, Clone)]
pub struct WorkloadCosts {
    pub workload: &'static str,
    pub mode: &'static str,
    pub iterations: u64,
    /// Most expensive first; programs that did not run are left out.
    pub programs: Vec<ProgramCost>,
}

impl WorkloadCosts {
    /// Nanoseconds of all programs per operation.
    pub fn ns_per_op(&self) -> f64 {
        self.programs.iter().map(|p| p.ns).sum::<u64>() as f64 / self.iterations as f64
    }
}

/// The run statistics switched on; the previous setting is put back on drop.
struct StatsOn {
    previous: String,
}

impl StatsOn {
    fn enable() -> Result<Self> {
        let previous =
            fs::read_to_string(STATS_SYSCTL).with_context(|| format!("reading {STATS_SYSCTL}"))?;
        fs::write(STATS_SYSCTL, "1").with_context(|| format!("writing 1 to {STATS_SYSCTL}"))?;
        Ok(Self { previous })
    }
}

impl Drop for StatsOn {
    fn drop(&mut self) {
        if let Err(err) = fs::write(STATS_SYSCTL, self.previous.trim()) {
            println!("bench: warning: could not restore {STATS_SYSCTL}: {err}");
        }
    }
}

/// Runs every workload under `vigil trace` and `vigil run` with the statistics on.
pub fn run(bench: &Bench<'_>, workloads: &[Workload]) -> Result<Vec<WorkloadCosts>> {
    let _stats = StatsOn::enable()?;
    let mut costs = Vec::new();
    for mode in MODES {
        let mut agent = bench
            .start_logging(mode, LOG)?
            .with_context(|| format!("{} starts no agent", mode.name()))?;
        let ids = program_ids(agent.startup_lines())?;
        for workload in workloads {
            let before = snapshot(agent.pid())?;
            run_workload(bench, workload)?;
            let after = snapshot(agent.pid())?;
            costs.push(WorkloadCosts {
                workload: workload.name,
                mode: mode.name(),
                iterations: workload.iterations,
                programs: differences(&ids, &before, &after),
            });
        }
        let status = agent.stop()?;
        if !status.success() {
            println!("bench: warning: {} exited with {status}", mode.name());
        }
    }
    Ok(costs)
}

/// (program, kernel id) from the agent's `program loaded` lines.
fn program_ids(lines: &[String]) -> Result<Vec<(String, u32)>> {
    let ids: Vec<(String, u32)> = lines
        .iter()
        .filter(|line| line.contains("program loaded"))
        .filter_map(|line| {
            let mut program = None;
            let mut id = None;
            for word in line.split_whitespace() {
                if let Some(name) = word.strip_prefix("program=") {
                    program = Some(name.trim_matches('"').to_owned());
                } else if let Some(value) = word.strip_prefix("id=") {
                    id = value.parse().ok();
                }
            }
            Some((program?, id?))
        })
        .collect();
    if ids.is_empty() {
        bail!(
            "the agent logged no `program loaded` line with a program and an id (VIGIL_LOG={LOG})"
        );
    }
    Ok(ids)
}

/// Run count and nanoseconds of every program the process holds, by kernel id.
fn snapshot(pid: u32) -> Result<HashMap<u32, (u64, u64)>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut stats = HashMap::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let path = entry.with_context(|| format!("reading {dir}"))?.path();
        // A descriptor closed meanwhile is no program of interest.
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        if let Some((id, runs, ns)) = program_stats(&text) {
            stats.insert(id, (runs, ns));
        }
    }
    Ok(stats)
}

/// (`prog_id`, `run_cnt`, `run_time_ns`) of one fdinfo entry, if it is a program's.
fn program_stats(fdinfo: &str) -> Option<(u32, u64, u64)> {
    let field = |name: &str| {
        fdinfo
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|value| value.trim().parse::<u64>().ok())
    };
    let id = u32::try_from(field("prog_id:")?).ok()?;
    Some((id, field("run_cnt:")?, field("run_time_ns:")?))
}

/// What each program added between the snapshots, most expensive first.
fn differences(
    ids: &[(String, u32)],
    before: &HashMap<u32, (u64, u64)>,
    after: &HashMap<u32, (u64, u64)>,
) -> Vec<ProgramCost> {
    let mut costs: Vec<ProgramCost> = ids
        .iter()
        .filter_map(|(program, id)| {
            let (runs_before, ns_before) = before.get(id).copied().unwrap_or_default();
            let (runs_after, ns_after) = after.get(id).copied()?;
            let runs = runs_after.saturating_sub(runs_before);
            (runs > 0).then(|| ProgramCost {
                program: program.clone(),
                runs,
                ns: ns_after.saturating_sub(ns_before),
            })
        })
        .collect();
    costs.sort_by(|a, b| b.ns.cmp(&a.ns).then_with(|| a.program.cmp(&b.program)));
    costs
}

/// The programs' time per operation of `workload` under `mode`, if it was measured.
fn ns_per_op(costs: &[WorkloadCosts], workload: &str, mode: Mode) -> Option<f64> {
    costs
        .iter()
        .find(|c| c.workload == workload && c.mode == mode.name())
        .map(WorkloadCosts::ns_per_op)
}

/// Prints each workload's programs, then per workload what `vigil trace` and `vigil run`
/// spend in their programs above the floor's empty ones, also as a share of the baseline's
/// operation where `baselines` (workload, ns per operation) has it.
pub fn print(costs: &[WorkloadCosts], baselines: &[(&str, f64)]) {
    println!(
        "program costs (kernel run statistics, the programs' own time; per operation of each workload):"
    );
    for c in costs {
        println!(
            "  {} under {}: {:.1} ns per operation in {} programs",
            c.workload,
            c.mode,
            c.ns_per_op(),
            c.programs.len()
        );
        for p in &c.programs {
            let per_op = p.ns as f64 / c.iterations as f64;
            // What runs at most once in a thousand operations is left out.
            if p.runs * 1000 < c.iterations {
                continue;
            }
            println!(
                "    {:<34} {:>7.2} runs/op {:>8.1} ns/run {:>8.1} ns/op",
                p.program,
                p.runs as f64 / c.iterations as f64,
                p.ns as f64 / p.runs as f64,
                per_op
            );
        }
    }
    println!(
        "  {:<10} {:>10} {:>10} {:>10} {:>12} {:>12}",
        "workload", "floor", "trace", "run", "trace-floor", "run-floor"
    );
    let mut workloads: Vec<&str> = Vec::new();
    for c in costs {
        if !workloads.contains(&c.workload) {
            workloads.push(c.workload);
        }
    }
    for workload in workloads {
        let floor = ns_per_op(costs, workload, Mode::Floor).unwrap_or(0.0);
        let above = |mode| {
            ns_per_op(costs, workload, mode).map_or_else(String::new, |ns| {
                let share = baselines
                    .iter()
                    .find(|(name, _)| *name == workload)
                    .map_or_else(String::new, |(_, base)| {
                        format!(" {:+.1}%", 100.0 * (ns - floor) / base)
                    });
                format!("{:.0}{share}", ns - floor)
            })
        };
        let plain = |mode| ns_per_op(costs, workload, mode).unwrap_or(0.0);
        println!(
            "  {:<10} {:>10.0} {:>10.0} {:>10.0} {:>12} {:>12}",
            workload,
            floor,
            plain(Mode::Trace),
            plain(Mode::Run),
            above(Mode::Trace),
            above(Mode::Run)
        );
    }
    println!(
        "  ns of program time per operation; above the floor also as a share of the baseline's operation"
    );
    println!();
}

pub fn json(costs: &[WorkloadCosts]) -> String {
    let mut text = String::from("[");
    for (i, c) in costs.iter().enumerate() {
        let programs: Vec<String> = c
            .programs
            .iter()
            .map(|p| {
                format!(
                    "{{\"program\": \"{}\", \"runs\": {}, \"ns\": {}}}",
                    p.program, p.runs, p.ns
                )
            })
            .collect();
        let _ = write!(
            text,
            "{}{{\"workload\": \"{}\", \"mode\": \"{}\", \"iterations\": {}, \"ns_per_op\": {}, \"programs\": [{}]}}",
            if i == 0 { "" } else { ", " },
            c.workload,
            c.mode,
            c.iterations,
            c.ns_per_op(),
            programs.join(", ")
        );
    }
    text.push(']');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_loaded_line_gives_its_name_and_id_quoted_or_not() {
        let lines = [
            "2026-12-04T08:00:00Z DEBUG program loaded program=\"sys_exit\" id=41".to_owned(),
            "2026-12-04T08:00:00Z DEBUG program loaded program=connect4 id=7".to_owned(),
            "2026-12-04T08:00:00Z  INFO vigil is tracing".to_owned(),
        ];
        assert_eq!(
            program_ids(&lines).unwrap(),
            vec![("sys_exit".to_owned(), 41), ("connect4".to_owned(), 7)]
        );
        assert!(program_ids(&lines[2..]).is_err());
    }

    #[test]
    fn only_a_program_descriptor_has_stats() {
        let prog = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nprog_type:\t5\nprog_jited:\t1\nprog_tag:\t3b185187f1855c4c\nmemlock:\t4096\nprog_id:\t123\nrun_time_ns:\t9000\nrun_cnt:\t30\nrecursion_misses:\t0\nverified_insns:\t20\n";
        assert_eq!(program_stats(prog), Some((123, 30, 9000)));
        let map = "pos:\t0\nflags:\t02000002\nmap_type:\t1\nkey_size:\t4\nmap_id:\t5\n";
        assert_eq!(program_stats(map), None);
    }

    #[test]
    fn differences_leave_out_what_did_not_run_and_put_the_dearest_first() {
        let ids = vec![
            ("a".to_owned(), 1),
            ("b".to_owned(), 2),
            ("c".to_owned(), 3),
        ];
        let before = HashMap::from([(1, (10, 1000)), (2, (5, 500)), (3, (0, 0))]);
        let after = HashMap::from([(1, (20, 2000)), (2, (5, 500)), (3, (4, 8000))]);
        let costs = differences(&ids, &before, &after);
        assert_eq!(
            costs,
            vec![
                ProgramCost {
                    program: "c".into(),
                    runs: 4,
                    ns: 8000
                },
                ProgramCost {
                    program: "a".into(),
                    runs: 10,
                    ns: 1000
                },
            ]
        );
    }
}
