//! Probe failures are counted, never swallowed: each entry point hands its error here, which
//! adds one to the probe's row in `PROBE_ERRORS` under the reason (see
//! `agent_common::probe_error`), and logs it through aya-log when user space asked for the
//! kernel log (`vigil run --kernel-log`; otherwise the log level is patched to off at load
//! and the log call costs a branch). User space reports the counts in loss events, its log
//! and `vigil doctor`.
use agent_common::probe_error;
use aya_ebpf::EbpfContext;

use crate::maps::PROBE_ERRORS;

/// Declares thin entry points, each `fn name(ctx: Context) -> Ret = body;` with its
/// attributes: the body (a `Result<(), i64>`) runs, and an error is counted under the entry
/// point's own name, worked out at compile time, so the counted name cannot drift from the
/// function's; a name missing from `agent_common::probe_error::PROBES` does not build.
macro_rules! entry_points {
    ($(
        $(#[$($attr:tt)*])*
        fn $name:ident($ctx:ident: $context:ty) -> $ret:ty = $body:expr;
    )+) => {$(
        $(#[$($attr)*])*
        pub fn $name($ctx: $context) -> $ret {
            match $body {
                Ok(()) => 0,
                Err(err) => $crate::diag::gave_up(
                    &$ctx,
                    const { agent_common::probe_error::id(stringify!($name)) },
                    err,
                ),
            }
        }
    )+};
}
pub(crate) use entry_points;

/// Counts a failure of probe `probe` and gives the entry point's return value.
#[inline(always)]
pub fn gave_up<C: EbpfContext, R: From<u8>>(ctx: &C, probe: u32, err: i64) -> R {
    let reason = probe_error::reason(err);
    count(probe, reason);
    aya_log_ebpf::warn!(
        ctx,
        "probe {} gave up: reason {}, error {}",
        probe,
        reason,
        err
    );
    R::from(0)
}

/// Adds one to the failures of `probe` under `reason`, where there is no entry point's
/// context to log with.
#[inline(always)]
pub fn count(probe: u32, reason: u32) {
    if let Some(count) = PROBE_ERRORS.get_ptr_mut(probe_error::slot(probe, reason)) {
        // SAFETY: a valid pointer to this CPU's slot. A plain add: should a preempted
        // program race with another on the same CPU, a count is off by one, not wrong.
        unsafe { *count += 1 };
    }
}
