//! Waiting until no kernel program can still hold a policy set it looked up before a swap.
//!
//! A program reads a set out of the map's value, so a set rewritten while a program that looked
//! it up is still running is read half old, half new: a Kill set zeroed mid-read gave a
//! violation with no action, refused but not killed (seen under BPF LSM during 150 reloads on
//! 6.1 and 6.17, when programs still read the set field by field; each now copies it once, which
//! makes its own decisions agree but does not make the copy atomic). The programs run inside
//! RCU read-side sections, so once every binding points to the new sets, one RCU grace period
//! ends every program that could have seen the old ones. `membarrier(MEMBARRIER_CMD_GLOBAL)`
//! waits for one (`synchronize_rcu`, milliseconds). It runs on the loop that applies policies,
//! not on the ring-buffer reader's task: records queue up behind it (65,536 at most, counted
//! past that) and none is lost to the wait itself.
use std::time::Duration;

/// `MEMBARRIER_CMD_GLOBAL` (linux/membarrier.h).
const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;

/// When the kernel refuses membarrier (a seccomp profile without it): programs run for
/// microseconds, so this is far beyond any of them short of a stalled CPU.
const FALLBACK: Duration = Duration::from_millis(100);

/// Returns once every kernel program that started before the call has finished.
pub fn wait_for_running_programs() {
    if let Err(err) = membarrier_global() {
        tracing::warn!(
            error = %err,
            "membarrier(MEMBARRIER_CMD_GLOBAL) refused: waiting {FALLBACK:?} before the old policy sets are deleted instead"
        );
        std::thread::sleep(FALLBACK);
    }
}

/// `membarrier(MEMBARRIER_CMD_GLOBAL, 0, 0)`: one RCU grace period.
fn membarrier_global() -> std::io::Result<()> {
    // SAFETY: membarrier takes no pointers; MEMBARRIER_CMD_GLOBAL with flags 0 only waits.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel accepts the call as made (a wrong command or flags would be EINVAL and
    /// silently cost the fallback's sleep on every reload).
    #[test]
    fn the_kernel_accepts_the_grace_period_call() {
        membarrier_global().expect("membarrier(MEMBARRIER_CMD_GLOBAL)");
    }
}
