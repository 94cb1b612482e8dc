//! `cargo xtask build`: setup, then the agent (whose build script builds the eBPF object) and
//! the scenario binary.
use std::{path::PathBuf, process::Command};

use anyhow::Result;

use crate::{
    setup,
    util::{cargo, run_checked, step, workspace_root},
};

/// Builds and returns the path of the `vigil` binary.
pub fn run(release: bool) -> Result<PathBuf> {
    setup::run()?;
    build(release)
}

/// `cargo build [--release] -p agent -p scenarios`: what every build of the project runs.
pub fn command(release: bool) -> Command {
    let mut cmd = cargo();
    cmd.arg("build");
    if release {
        cmd.arg("--release");
    }
    cmd.args(["-p", "agent", "-p", "scenarios"]);
    cmd
}

/// Builds without running setup first (for callers that already ran it).
pub fn build(release: bool) -> Result<PathBuf> {
    let profile = if release { "release" } else { "debug" };
    let mut cmd = command(release);
    let line = crate::util::describe(&cmd);
    step(&line, || run_checked(&mut cmd))?;
    let binary = workspace_root().join("target").join(profile).join("vigil");
    println!("build: agent binary at {}", binary.display());
    Ok(binary)
}
