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
    let patched = object.with_file_name("vigil-probes.static-builtins");
    let mut bytes =
        std::fs::read(&object).with_context(|| format!("reading {}", object.display()))?;
    let changed = memory_builtins_static(&mut bytes)
        .with_context(|| format!("patching the BTF of {}", object.display()))?;
    if changed == 0 {
        bail!("{}: no memory builtin found in its BTF", object.display());
    }
    std::fs::write(&patched, &bytes).with_context(|| format!("writing {}", patched.display()))?;
    println!("cargo:rustc-env=VIGIL_PROBES_OBJECT={}", patched.display());
    Ok(())
}

/// The memory builtins (`memset`, `memcpy`, `memmove`, `memcmp`, `bcmp`) that `core` brings
/// are global functions in the object's BTF. Kernels before 5.12 verify a global function on
/// its own and refuse one that takes a pointer to anything but the context ("arg#0 type is
/// not a struct"), which refused every program that calls them on 5.10. Marked static, they
/// are verified in their caller's context, as every other function of the probes is. Gives
/// how many were changed.
fn memory_builtins_static(elf: &mut [u8]) -> Result<usize> {
    const BUILTINS: [&[u8]; 5] = [b"memset", b"memcpy", b"memmove", b"memcmp", b"bcmp"];
    const KIND_FUNC: u32 = 12;
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]) as usize;
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let u64_at =
        |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap()) as usize;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        bail!("not a 64-bit little-endian ELF object");
    }
    let (shoff, shentsize, shnum, shstrndx) = (
        u64_at(elf, 0x28),
        u16_at(elf, 0x3a),
        u16_at(elf, 0x3c),
        u16_at(elf, 0x3e),
    );
    let section = |i: usize| shoff + i * shentsize;
    let names = u64_at(elf, section(shstrndx) + 24);
    let btf = (0..shnum)
        .map(section)
        .find(|&h| {
            let name = names + u32_at(elf, h) as usize;
            elf.get(name..name + 5) == Some(b".BTF\0")
        })
        .context("no .BTF section")?;
    let (start, size) = (u64_at(elf, btf + 24), u64_at(elf, btf + 32));
    let btf = &mut elf[start..start + size];
    if u16_at(btf, 0) != 0xeb9f {
        bail!(".BTF has no BTF magic");
    }
    let hdr_len = u32_at(btf, 4) as usize;
    let (type_off, type_len) = (u32_at(btf, 8) as usize, u32_at(btf, 12) as usize);
    let str_off = hdr_len + u32_at(btf, 16) as usize;
    let mut at = hdr_len + type_off;
    let end = at + type_len;
    let mut changed = 0;
    while at < end {
        let name = str_off + u32_at(btf, at) as usize;
        let info = u32_at(btf, at + 4);
        let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
        let name_bytes = &btf[name..];
        let name_len = name_bytes.iter().position(|&c| c == 0).unwrap_or(0);
        if kind == KIND_FUNC && BUILTINS.contains(&&name_bytes[..name_len]) && vlen != 0 {
            // A FUNC's vlen is its linkage: 0 static, 1 global.
            btf[at + 4..at + 8].copy_from_slice(&(info & !0xffff).to_le_bytes());
            changed += 1;
        }
        at += 12
            + match kind {
                1 | 14 | 17 => 4,
                3 => 12,
                4 | 5 | 15 | 19 => 12 * vlen,
                6 | 13 => 8 * vlen,
                2 | 7..=12 | 16 | 18 => 0,
                other => bail!("BTF type kind {other} unknown"),
            };
    }
    Ok(changed)
}
