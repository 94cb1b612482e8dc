//! `cargo xtask run`: setup, build (debug), then replace this process with the agent, which
//! enforces the host baseline in `policies/host/` and prints alerts readably.
use std::{os::unix::process::CommandExt, process::Command};

use anyhow::{Context, Result};

use crate::{build, util};

pub fn run(args: &[String]) -> Result<()> {
    util::require_root("run")?;
    let binary = build::run(false)?;
    // The caller's working directory stays, so relative paths in `args` mean what they say.
    let mut cmd = Command::new(&binary);
    cmd.env("PATH", util::child_path());
    if args.is_empty() {
        // The host baseline (Audit: alerts only) from the repository.
        let policies = util::workspace_root().join("policies/host");
        cmd.args(["run", "--output", "pretty", "--policy"])
            .arg(policies);
    } else {
        cmd.args(args);
    }
    println!("run: {}", util::describe(&cmd));
    // `exec` only returns on failure; on success the agent inherits stdio, signals and the
    // exit code is its own.
    let err = cmd.exec();
    Err(err).with_context(|| format!("cannot start {}", binary.display()))
}
