//! Programs that are loaded but never attached by `vigil doctor`, to learn whether this
//! kernel's verifier accepts what later enforcement paths need.
use aya_ebpf::{
    helpers::generated::bpf_send_signal,
    macros::{fentry, tracepoint},
    programs::{FEntryContext, TracePointContext},
};

/// Loads only where `bpf_send_signal` is available to tracepoint programs.
#[tracepoint(category = "syscalls", name = "sys_enter_kill")]
pub fn doctor_send_signal(_ctx: TracePointContext) -> u32 {
    // SAFETY: signal 0 delivers nothing; the program is never attached anyway.
    unsafe { bpf_send_signal(0) };
    0
}

/// Loads only where fentry trampolines are allowed.
#[fentry(function = "security_bprm_check")]
pub fn doctor_fentry(_ctx: FEntryContext) -> u32 {
    0
}
