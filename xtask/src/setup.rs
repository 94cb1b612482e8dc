//! `cargo xtask setup`: installs and checks what the build needs on Debian 12.
//!
//! The eBPF crate needs `core` built from source for `bpfel-unknown-none`: rustup's nightly with
//! `rust-src` when present, else Debian's `rustc-web` with `rust-web-src` (installed when
//! neither is there). `agent/build.rs` makes the same choice. bpf-linker 0.13.0 is built
//! against LLVM 22 when missing, and the tests need `iproute2` (`ip netns`).
use std::{env, fmt, path::Path, process::Command, time::Instant};

use anyhow::{Result, bail};

use crate::util::{self, cargo, command, output_of, run_checked, secs};

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CORE_SRC: &str = "/usr/lib/rustlib/src/rust/library/core";
const DEBIAN_TOOLCHAIN_PACKAGES: [&str; 3] = ["rustc-web", "cargo-web", "rust-web-src"];
const LLVM_PACKAGES: [&str; 4] = [
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
];
/// `ip` for the network-namespace tests; python3 and its venv for the independent CloudEvents
/// consumer the HTTP sink tests run (the `cloudevents` package, installed into a venv); skopeo
/// as the independent reader of the OCI archives `cargo xtask image` writes; busybox-static,
/// the test workloads' image; binutils' objcopy strips the node tests' agent image of its
/// debug information.
const TEST_PACKAGES: [&str; 17] = [
    "iproute2",
    "binutils",
    "python3",
    "python3-venv",
    "skopeo",
    "busybox-static",
    // The real node of `k8s-env up --node`: the container runtime, pod networking, and what
    // kube-proxy drives; GNU grep's PCRE2 JIT is the workloads' JIT runtime.
    "containerd",
    "runc",
    "containernetworking-plugins",
    "iptables",
    // `nft delete table`: a node's teardown removes the empty tables the cluster created.
    "nftables",
    "conntrack",
    "grep",
    // The pure cgroup v2 node: a Debian kernel booted in QEMU (`xtask/src/guest.rs`), with an
    // initramfs packed by cpio from busybox and the kernel's modules (kmod's depmod and
    // modprobe resolve them, xz unpacks them).
    "qemu-system-x86",
    "cpio",
    "kmod",
    "xz-utils",
];

#[derive(Clone, Copy)]
pub enum Toolchain {
    RustupNightly,
    Debian,
}

impl fmt::Display for Toolchain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::RustupNightly => "rustup nightly + rust-src",
            Self::Debian => "Debian rustc-web + rust-web-src",
        })
    }
}

/// Runs the checks, installs what is missing, and returns the eBPF toolchain the build uses.
pub fn run() -> Result<Toolchain> {
    let start = Instant::now();

    let found = timed("eBPF toolchain", detect_toolchain, |found| match found {
        Some(toolchain) => format!("{toolchain}"),
        None => format!(
            "none found; will install {}",
            DEBIAN_TOOLCHAIN_PACKAGES.join(" ")
        ),
    })?;

    let linker_ok = timed(
        "bpf-linker",
        || Ok(bpf_linker_ok()),
        |ok| {
            if *ok {
                format!("{BPF_LINKER_VERSION} found")
            } else {
                format!("{BPF_LINKER_VERSION} missing; will build it with cargo install")
            }
        },
    )?;

    let missing = timed(
        "apt packages",
        || Ok(missing_packages(found.is_none(), !linker_ok)),
        |missing| {
            if missing.is_empty() {
                "all present".to_owned()
            } else {
                format!("missing: {}", missing.join(" "))
            }
        },
    )?;

    if !missing.is_empty() {
        install_packages(&missing)?;
    }
    let toolchain = match found {
        Some(toolchain) => toolchain,
        None => match detect_toolchain()? {
            Some(toolchain) => toolchain,
            None => bail!(
                "installed {} but {DEBIAN_RUSTC} or {DEBIAN_CORE_SRC} is still missing",
                DEBIAN_TOOLCHAIN_PACKAGES.join(" ")
            ),
        },
    };
    if !linker_ok {
        install_bpf_linker()?;
    }

    println!(
        "setup: done in {}; eBPF toolchain: {toolchain}",
        secs(start.elapsed())
    );
    Ok(toolchain)
}

/// Runs one check, printing `setup: <name>: <summary> (<duration>)`.
fn timed<T>(
    name: &str,
    body: impl FnOnce() -> Result<T>,
    summary: impl FnOnce(&T) -> String,
) -> Result<T> {
    let start = Instant::now();
    let value = body()?;
    println!(
        "setup: {name}: {} ({})",
        summary(&value),
        secs(start.elapsed())
    );
    Ok(value)
}

/// Runs one installing step, printing its command line and then its duration.
fn install_step(name: &str, body: impl FnOnce() -> Result<()>) -> Result<()> {
    println!("setup: {name} ...");
    let start = Instant::now();
    body()?;
    println!("setup: {name}: done ({})", secs(start.elapsed()));
    Ok(())
}

fn rustup_nightly_has_rust_src() -> bool {
    output_of(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))
        .is_some_and(|sysroot| {
            !sysroot.is_empty()
                && Path::new(&sysroot)
                    .join("lib/rustlib/src/rust/library/core")
                    .is_dir()
        })
}

fn debian_toolchain_present() -> bool {
    Path::new(DEBIAN_RUSTC).exists() && Path::new(DEBIAN_CORE_SRC).is_dir()
}

/// The toolchain `agent/build.rs` will pick (honouring `VIGIL_EBPF_TOOLCHAIN` as it does), or
/// `None` when Debian's must be installed.
fn detect_toolchain() -> Result<Option<Toolchain>> {
    match env::var("VIGIL_EBPF_TOOLCHAIN").as_deref() {
        Ok("rustup-nightly") => {
            if rustup_nightly_has_rust_src() {
                return Ok(Some(Toolchain::RustupNightly));
            }
            bail!(
                "VIGIL_EBPF_TOOLCHAIN=rustup-nightly, but rustup's nightly has no rust-src: run \
                 `rustup toolchain install nightly --component rust-src`, or unset the variable"
            );
        }
        Ok("debian") => return Ok(debian_toolchain_present().then_some(Toolchain::Debian)),
        Ok(other) if !other.is_empty() => {
            bail!("VIGIL_EBPF_TOOLCHAIN={other}: expected `rustup-nightly` or `debian`")
        }
        _ => {}
    }
    Ok(if rustup_nightly_has_rust_src() {
        Some(Toolchain::RustupNightly)
    } else if debian_toolchain_present() {
        Some(Toolchain::Debian)
    } else {
        None
    })
}

fn bpf_linker_ok() -> bool {
    output_of(command("bpf-linker").arg("--version")).is_some_and(|version| {
        version
            .split_whitespace()
            .any(|word| word == BPF_LINKER_VERSION)
    })
}

/// `Some(installed?)` from dpkg, or `None` when dpkg-query cannot run (not Debian).
fn dpkg_installed(package: &str) -> Option<bool> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .ok()?;
    Some(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("install ok installed"),
    )
}

fn missing_packages(toolchain: bool, llvm: bool) -> Vec<&'static str> {
    let mut missing = Vec::new();
    if toolchain {
        missing.extend(DEBIAN_TOOLCHAIN_PACKAGES);
    }
    if llvm {
        missing.extend(
            LLVM_PACKAGES
                .into_iter()
                .filter(|package| dpkg_installed(package) != Some(true)),
        );
    }
    for package in TEST_PACKAGES {
        let installed = dpkg_installed(package).unwrap_or_else(|| {
            // Not Debian: accept the tool itself.
            match package {
                "iproute2" => output_of(Command::new("ip").arg("-V")).is_some(),
                "skopeo" => output_of(Command::new("skopeo").arg("--version")).is_some(),
                "busybox-static" => Path::new("/bin/busybox").exists(),
                "containerd" => output_of(Command::new("containerd").arg("--version")).is_some(),
                "runc" => output_of(Command::new("runc").arg("--version")).is_some(),
                "containernetworking-plugins" => Path::new("/usr/lib/cni/bridge").exists(),
                "iptables" => output_of(Command::new("iptables").arg("--version")).is_some(),
                "nftables" => output_of(Command::new("nft").arg("--version")).is_some(),
                "conntrack" => output_of(Command::new("conntrack").arg("--version")).is_some(),
                "grep" => output_of(Command::new("grep").arg("--version")).is_some(),
                "qemu-system-x86" => {
                    output_of(Command::new("qemu-system-x86_64").arg("--version")).is_some()
                }
                "cpio" => output_of(Command::new("cpio").arg("--version")).is_some(),
                "kmod" => output_of(Command::new("depmod").arg("--version")).is_some(),
                "xz-utils" => output_of(Command::new("xz").arg("--version")).is_some(),
                _ => output_of(Command::new("python3").args(["-m", "venv", "--help"])).is_some(),
            }
        });
        if !installed {
            missing.push(package);
        }
    }
    missing
}

/// What `cargo xtask bench` needs beyond the tests: bpftrace, the peer it measures Vigil
/// against.
const BENCH_PACKAGES: [&str; 1] = ["bpftrace"];

/// Installs the bench's packages that are missing.
pub fn bench_packages() -> Result<()> {
    let missing: Vec<&str> = BENCH_PACKAGES
        .into_iter()
        .filter(|package| match dpkg_installed(package) {
            Some(installed) => !installed,
            // Not Debian: accept the tool itself.
            None => output_of(Command::new(package).arg("--version")).is_none(),
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    install_packages(&missing)
}

fn install_packages(packages: &[&str]) -> Result<()> {
    if !util::is_root() {
        bail!(
            "setup must install apt packages ({}), which needs root: run `cargo xtask setup` \
             as root, or `apt-get install -y {}` yourself",
            packages.join(" "),
            packages.join(" ")
        );
    }
    if output_of(Command::new("apt-get").arg("--version")).is_none() {
        bail!(
            "apt-get is not available (this setup targets Debian 12): install the equivalent of \
             {} yourself",
            packages.join(" ")
        );
    }
    install_step("apt-get update", || {
        run_checked(Command::new("apt-get").arg("update"))
    })?;
    let line = format!("apt-get install -y {}", packages.join(" "));
    install_step(&line, || {
        run_checked(
            Command::new("apt-get")
                .args(["install", "-y"])
                .args(packages)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    })?;
    Ok(())
}

fn install_bpf_linker() -> Result<()> {
    let install = |locked: bool| {
        let mut cmd = cargo();
        cmd.args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION]);
        if locked {
            cmd.arg("--locked");
        }
        cmd.args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX);
        run_checked(&mut cmd)
    };
    install_step(
        &format!("cargo install bpf-linker {BPF_LINKER_VERSION} (LLVM 22)"),
        || {
            install(true).or_else(|err| {
                println!("setup: {err:#}; retrying without --locked");
                install(false)
            })
        },
    )?;
    if !bpf_linker_ok() {
        bail!(
            "installed bpf-linker {BPF_LINKER_VERSION}, but `bpf-linker --version` on PATH \
             does not report it; is another bpf-linker earlier on PATH?"
        );
    }
    Ok(())
}
