//! `cargo xtask schema [--check]`: `docs/event.schema.json`, generated from the agent's event
//! types by the agent's hidden `vigil schema` (so xtask does not link the agent crate).
use std::fs;

use anyhow::{Context, Result, bail};

use crate::util::{cargo, workspace_root};

const SCHEMA: &str = "docs/event.schema.json";

#[derive(clap::Args)]
pub struct Options {
    /// Only compare: exit non-zero when the committed file differs from what the types
    /// generate.
    #[arg(long)]
    check: bool,
}

pub fn run(options: &Options) -> Result<()> {
    let out = cargo()
        .args([
            "run", "--quiet", "-p", "agent", "--bin", "vigil", "--", "schema",
        ])
        .output()
        .context("running `vigil schema`")?;
    if !out.status.success() {
        bail!(
            "`vigil schema` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let generated = String::from_utf8(out.stdout).context("`vigil schema` printed non-UTF-8")?;
    let path = workspace_root().join(SCHEMA);
    if options.check {
        let committed =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        if committed != generated {
            bail!("{SCHEMA} is out of date with the event types; run `cargo xtask schema`");
        }
        println!("schema: {SCHEMA} matches the event types");
        return Ok(());
    }
    fs::write(&path, generated).with_context(|| format!("writing {}", path.display()))?;
    println!("schema: wrote {SCHEMA} from the event types");
    Ok(())
}
