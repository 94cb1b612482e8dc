//! Builds the eBPF object (crate `agent-ebpf`) for the BPF target and hands its path to the
//! agent, which embeds it. The BPF target needs `core` built from source: with rustup's
//! nightly when it has `rust-src`, else with Debian's `rustc-web` and its `rust-web-src`
//! (see `cargo xtask setup`).
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

const TARGET: &str = "bpfel-unknown-none";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_LIBRARY_SRC: &str = "/usr/lib/rustlib/src/rust/library";

enum Toolchain {
    RustupNightly,
    Debian,
}

fn rustup_nightly_has_rust_src() -> bool {
    let Ok(out) = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
    else {
        return false;
    };
    out.status.success()
        && Path::new(String::from_utf8_lossy(&out.stdout).trim())
            .join("lib/rustlib/src/rust/library/core")
            .is_dir()
}

fn detect() -> Result<Toolchain> {
    match env::var("VIGIL_EBPF_TOOLCHAIN").as_deref() {
        Ok("rustup-nightly") => return Ok(Toolchain::RustupNightly),
        Ok("debian") => return Ok(Toolchain::Debian),
        Ok(other) if !other.is_empty() => {
            bail!("VIGIL_EBPF_TOOLCHAIN={other}: expected `rustup-nightly` or `debian`")
        }
        _ => {}
    }
    if rustup_nightly_has_rust_src() {
        Ok(Toolchain::RustupNightly)
    } else if Path::new(DEBIAN_RUSTC).exists()
        && Path::new(DEBIAN_LIBRARY_SRC).join("core").is_dir()
    {
        Ok(Toolchain::Debian)
    } else {
        bail!(
            "no compiler that can build `core` for {TARGET}: neither rustup's nightly with \
             rust-src nor Debian's rustc-web with rust-web-src is installed; run `cargo xtask setup`"
        )
    }
}

fn main() -> Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .context("agent crate has no parent directory")?;
    for path in [
        "agent-ebpf/src",
        "agent-ebpf/Cargo.toml",
        "agent-common/src",
        "agent-common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(path).display());
    }
    println!("cargo:rerun-if-env-changed=VIGIL_EBPF_TOOLCHAIN");

    let toolchain = detect()?;
    if let Err(err) = which::which("bpf-linker") {
        bail!("bpf-linker is not on PATH ({err}); run `cargo xtask setup`");
    }
    let target_dir = workspace.join("target/ebpf");
    let mut cmd = match toolchain {
        Toolchain::RustupNightly => {
            let mut c = Command::new("rustup");
            c.args(["run", "nightly", "cargo"]);
            c
        }
        Toolchain::Debian => {
            let mut c = Command::new(DEBIAN_CARGO);
            c.env("RUSTC", DEBIAN_RUSTC).env("RUSTC_BOOTSTRAP", "1");
            c
        }
    };
    // The outer build's variables (rustflags, wrappers such as clippy-driver, the rustup
    // toolchain) must not leak into the BPF build.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTUP_TOOLCHAIN")
            || key == "RUSTFLAGS"
            || key == "RUSTDOCFLAGS"
        {
            cmd.env_remove(key.as_ref());
        }
    }
    if let Toolchain::Debian = toolchain {
        cmd.env("RUSTC", DEBIAN_RUSTC).env("RUSTC_BOOTSTRAP", "1");
    }
    cmd.current_dir(workspace)
        .args([
            "build",
            "-p",
            "agent-ebpf",
            "--bin",
            "vigil-probes",
            "--release",
            "--target",
            TARGET,
        ])
        .args(["-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir)
        .env(
            "CARGO_TARGET_BPFEL_UNKNOWN_NONE_RUSTFLAGS",
            "-C debuginfo=2 -C link-arg=--btf",
        );
    let status = cmd.status().context("running cargo for the eBPF crate")?;
    if !status.success() {
        bail!("building agent-ebpf for {TARGET} failed ({status})");
    }
    let object = target_dir.join(TARGET).join("release/vigil-probes");
    if !object.exists() {
        bail!("eBPF build succeeded but {} is missing", object.display());
    }
    println!("cargo:rustc-env=VIGIL_PROBES_OBJECT={}", object.display());
    Ok(())
}
