//! Drains the ring buffer as fast as the kernel fills it: copy each record out, hand it to
//! the next stage through a bounded channel, and count (never wait) when that stage is full.
use std::{
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, watch},
};

/// What the reader saw and what it had to drop.
#[derive(Debug, Default)]
pub struct ReaderStats {
    pub received: AtomicU64,
    /// Records dropped because the next stage's queue was full.
    pub dropped: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    #[error("ring buffer EVENTS (fd {fd}): {source}")]
    Poll { fd: i32, source: std::io::Error },
}

/// Copies records out of `ring` into `tx` until `stop` turns true (then drains what is left)
/// or the receiving side goes away.
pub async fn run(
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<Vec<u8>>,
    stats: Arc<ReaderStats>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ReaderError> {
    let fd = ring.as_raw_fd();
    // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged, until it is
    // dropped together with the AsyncFd.
    let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|e| ReaderError::Poll {
        fd,
        source: e.into(),
    })?;
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.map_err(|source| ReaderError::Poll { fd, source })?;
                if !drain(guard.get_inner_mut(), &tx, &stats) {
                    return Ok(());
                }
                guard.clear_ready();
            }
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    drain(ring.get_mut(), &tx, &stats);
                    return Ok(());
                }
            }
        }
    }
}

/// Returns false once the receiver is gone.
fn drain(ring: &mut RingBuf<MapData>, tx: &mpsc::Sender<Vec<u8>>, stats: &ReaderStats) -> bool {
    while let Some(item) = ring.next() {
        stats.received.fetch_add(1, Ordering::Relaxed);
        // Room first, copy second: a record that cannot be queued is never copied.
        match tx.try_reserve() {
            Ok(permit) => permit.send(item.to_vec()),
            Err(mpsc::error::TrySendError::Full(())) => {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Closed(())) => return false,
        }
    }
    true
}
