//! Kernel timestamps (`CLOCK_BOOTTIME`) to wall-clock time.
use chrono::{DateTime, Utc};

fn now_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// Now, on the clock of `bpf_ktime_get_boot_ns()` (`CLOCK_BOOTTIME`).
pub fn boot_now_ns() -> u64 {
    u64::try_from(now_ns(libc::CLOCK_BOOTTIME)).unwrap_or(0)
}

/// The wall-clock time of a `bpf_ktime_get_boot_ns()` timestamp. The offset is taken anew
/// each call, so clock adjustments since start are followed.
pub fn wall_time(boot_ns: u64) -> DateTime<Utc> {
    let offset = now_ns(libc::CLOCK_REALTIME) - now_ns(libc::CLOCK_BOOTTIME);
    let wall = i128::from(boot_ns) + offset;
    DateTime::from_timestamp_nanos(wall.clamp(0, i128::from(i64::MAX)) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_in_boot_time_is_now_in_wall_time() {
        let boot = now_ns(libc::CLOCK_BOOTTIME) as u64;
        let diff = (Utc::now() - wall_time(boot)).num_milliseconds().abs();
        assert!(diff < 1000, "{diff} ms apart");
    }
}
