//! `cargo xtask test`: the full suite, what CI runs (`.ci/run`). Stops at the first failure.
//!
//! Before the tests it builds the Kubernetes test binaries (`k8s_env::ensure`; Go is required)
//! and hands their directory to the tests as `VIGIL_K8S_BIN`.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{
    k8s_env, setup,
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
    let mut counts = Counts::default();
    let result = run_steps(&mut steps, extra, &mut counts);
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
    // The closing line: every test binary's totals added up.
    println!(
        "tests: {} passed, {} failed, {} skipped",
        counts.passed, counts.failed, counts.ignored
    );
    result
}

/// Totals over every `test result:` line cargo test printed.
#[derive(Default)]
struct Counts {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Counts {
    /// Adds `test result: ok. 13 passed; 0 failed; 0 ignored; ...`.
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(['.', ';']) {
            let mut words = part.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// Runs cargo test, echoing its output and counting its results.
fn run_counted(cmd: &mut Command, counts: &mut Counts) -> Result<()> {
    use std::io::BufRead;
    cmd.stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().expect("piped stdout");
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        counts.add_line(&line);
    }
    let status = child.wait()?;
    if !status.success() {
        anyhow::bail!("{} failed: {status}", describe(cmd));
    }
    Ok(())
}

fn run_steps(steps: &mut Steps, extra: &[String], counts: &mut Counts) -> Result<()> {
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
    steps.command(crate::build::command(false))?;
    // The Kubernetes binaries, etcd and helm for the tests that run a real control plane or
    // node (testenv): built from k8s-env/ once, skipped while present and matching the pins.
    let mut k8s_bin = None;
    steps.run(
        "k8s-env (the Kubernetes binaries, etcd, helm)".to_owned(),
        || {
            k8s_bin = Some(k8s_env::ensure()?);
            Ok(())
        },
    )?;

    let debug = workspace_root().join("target/debug");
    // The images of the node tests (agent/tests/node.rs): the agent's from this build, the
    // workloads' and the pod sandbox's, imported into the test node's containerd.
    let mut node_images = None;
    steps.run("images for the node tests".to_owned(), || {
        node_images = Some(crate::image::for_node(
            &debug.join("vigil"),
            &workspace_root().join("target/images/test"),
        )?);
        Ok(())
    })?;
    let (images, sandbox) = node_images.expect("set by the images step");
    let mut test = cargo_with(&[
        "test",
        "--workspace",
        "--exclude",
        "agent-ebpf",
        "--lib",
        "--bins",
        "--tests",
        "--",
        "--test-threads=1",
    ]);
    test.args(extra)
        .env("VIGIL_SCENARIO_BIN", debug.join("vigil-scenario"))
        .env("VIGIL_BIN", debug.join("vigil"))
        .env("VIGIL_K8S_BIN", k8s_bin.expect("set by the k8s-env step"))
        .env("VIGIL_NODE_IMAGES", std::env::join_paths(&images)?)
        .env("VIGIL_SANDBOX_IMAGE", sandbox);
    steps.run(describe(&test), || run_counted(&mut test, counts))
}

#[cfg(test)]
mod tests {
    use super::Counts;

    #[test]
    fn adds_up_cargo_test_result_lines() {
        let mut c = Counts::default();
        c.add_line("test result: ok. 13 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 5.16s");
        c.add_line(
            "test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        c.add_line("running 4 tests");
        assert_eq!((c.passed, c.failed, c.ignored), (16, 1, 2));
    }
}
