//! The probes' own log (aya-log), forwarded to the agent's log with `--kernel-log`: why a
//! probe gave up, as it happened. Read like the event ring buffer: `AsyncFd`, drain, clear.
use tokio::{io::unix::AsyncFd, sync::watch};

pub struct KernelLog(pub aya_log::EbpfLogger<&'static dyn log::Log>);

impl KernelLog {
    /// Forwards records until `stop` turns true; an error polling the log's ring buffer ends
    /// the forwarding with a warning (the probes go on; only their log stops).
    pub async fn forward(self, mut stop: watch::Receiver<bool>) {
        // SAFETY: the logger owns its ring buffer's fd and keeps it open, unchanged, until it
        // is dropped together with the AsyncFd.
        let mut fd = match unsafe { AsyncFd::register(self.0) } {
            Ok(fd) => fd,
            Err(err) => {
                tracing::warn!(%err, "the probes' log (AYA_LOGS) cannot be polled; not forwarded");
                return;
            }
        };
        loop {
            tokio::select! {
                ready = fd.readable_mut() => match ready {
                    Ok(mut guard) => {
                        guard.get_inner_mut().flush();
                        guard.clear_ready();
                    }
                    Err(err) => {
                        tracing::warn!(%err, "polling the probes' log (AYA_LOGS) failed; no longer forwarded");
                        return;
                    }
                },
                _ = stop.changed() => {
                    fd.get_mut().flush();
                    return;
                }
            }
        }
    }
}
