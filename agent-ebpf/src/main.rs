//! Vigil's kernel probes. One file per behaviour; every map lives in `maps.rs`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod calls;
mod cgroup_change;
mod cgroup_move;
mod compat;
mod connect;
mod diag;
mod doctor;
mod drift;
mod exec;
mod file;
mod floor;
mod foreign;
mod handover;
mod image;
mod judged;
mod kill;
mod mapped;
mod maps;
mod path;
mod policy;
mod prevent_exec;
mod prevent_foreign;
mod prevent_open;
mod prevent_wx;
mod process;
mod read;
mod scratch;
mod script;
mod state;
mod task;
mod throttle;
mod vma;
mod wx;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // SAFETY: the verifier rejects any program in which a panic path is reachable.
    unsafe { core::hint::unreachable_unchecked() }
}

/// Lets `cargo clippy --all-targets` check this crate on the host.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
