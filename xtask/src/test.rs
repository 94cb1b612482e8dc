//! `cargo xtask test`: the full suite, what CI runs (`.ci/run`). Stops at the first failure.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{
    setup,
    util::{self, cargo, describe, run_checked, secs, step, workspace_root},
};

/// The steps run so far, with their durations and outcomes.
#[derive(Default)]
struct Steps(Vec<(String, Duration, bool)>);

impl Steps {
    fn run(&mut self, name: String, body: impl FnOnce() -> Result<()>) -> Result<()> {
        let start = Instant::now();
        let result = step(&name, body);
        self.0.push((name, start.elapsed(), result.is_ok()));
        result
    }

    fn command(&mut self, mut cmd: Command) -> Result<()> {
        self.run(describe(&cmd), || run_checked(&mut cmd))
    }
}

fn cargo_with(args: &[&str]) -> Command {
    let mut cmd = cargo();
    cmd.args(args);
    cmd
}

pub fn run(extra: &[String]) -> Result<()> {
    // The kernel tests load eBPF programs; they are part of the suite, not optional.
    util::require_root("test")?;
    let start = Instant::now();
    let mut steps = Steps::default();
    let result = run_steps(&mut steps, extra);
    println!();
    let outcome = if result.is_ok() {
        "all steps passed"
    } else {
        "FAILED"
    };
    println!("test: {outcome} in {}", secs(start.elapsed()));
    for (name, took, ok) in &steps.0 {
        let outcome = if *ok { "ok" } else { "FAILED" };
        println!("  {:>8}  {outcome:<6}  {name}", secs(*took));
    }
    result
}

fn run_steps(steps: &mut Steps, extra: &[String]) -> Result<()> {
    steps.run("setup".to_owned(), || setup::run().map(|_| ()))?;
    steps.command(cargo_with(&["fmt", "--all", "--", "--check"]))?;
    steps.command(cargo_with(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    steps.command(cargo_with(&["build", "-p", "agent", "-p", "scenarios"]))?;

    let debug = workspace_root().join("target/debug");
    let mut test = cargo_with(&[
        "test",
        "--workspace",
        "--exclude",
        "agent-ebpf",
        "--",
        "--test-threads=1",
    ]);
    test.args(extra)
        .env("VIGIL_SCENARIO_BIN", debug.join("vigil-scenario"))
        .env("VIGIL_BIN", debug.join("vigil"));
    steps.command(test)
}
