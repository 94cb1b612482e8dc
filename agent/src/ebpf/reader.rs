//! Drains the ring buffer as fast as the kernel fills it: copy each record out, hand them to
//! the next stage in batches through a queue bounded in records (`records.rs`), and count
//! (never wait) when that stage is full.
//!
//! A drain that ran dry before a full batch is followed by a pause of [`GATHER`] (1 to 2 ms:
//! the timer counts whole milliseconds) before the reader waits on the ring again. The kernel
//! wakes the reader for each record that finds it caught up; under a steady stream each
//! wake-up would carry a record or two through every stage, each hand-off waking another
//! thread, and those thread switches were 40% of the agent's CPU. After the pause the next
//! drain takes what came meanwhile in one batch. A record that comes while the reader waits
//! is drained at once; one that comes during a pause waits for its end, so an alert is late
//! by 2 ms at most and no decision waits (they are made in the kernel). The ring holds far
//! more than a pause's worth of records at any rate the probes produce.
use std::{
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::watch};

use super::records::{Closed, Filling, RecordSender};

/// Records per hand-off at most: the next stage starts on a long drain before it ends.
const BATCH: usize = 256;
/// The pause after a drain that ran dry before [`BATCH`] records.
const GATHER: std::time::Duration = std::time::Duration::from_millis(1);

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
    tx: RecordSender,
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
                let Some(drained) = drain(guard.get_inner_mut(), &tx, &stats) else {
                    return Ok(());
                };
                guard.clear_ready();
                if drained < BATCH {
                    tokio::time::sleep(GATHER).await;
                }
            }
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    let _ = drain(ring.get_mut(), &tx, &stats);
                    return Ok(());
                }
            }
        }
    }
}

/// Returns how many records it took off the ring, or None once the receiver is gone.
fn drain(ring: &mut RingBuf<MapData>, tx: &RecordSender, stats: &ReaderStats) -> Option<usize> {
    let mut filling = tx.fill();
    let mut drained = 0;
    while let Some(item) = ring.next() {
        drained += 1;
        if !take(&mut filling, &item, stats) {
            return None;
        }
    }
    hand_on(&mut filling, stats).then_some(drained)
}

/// Hands the batch on; records nobody will take are counted as dropped. False once the
/// receiver is gone.
fn hand_on(filling: &mut Filling<'_>, stats: &ReaderStats) -> bool {
    match filling.send() {
        Ok(()) => true,
        Err(Closed(records)) => {
            stats.dropped.fetch_add(records as u64, Ordering::Relaxed);
            false
        }
    }
}

/// Copies one record into the batch, or counts it dropped when the queue is full, and hands
/// the batch on once it holds [`BATCH`] records. False once the receiver is gone.
fn take(filling: &mut Filling<'_>, record: &[u8], stats: &ReaderStats) -> bool {
    stats.received.fetch_add(1, Ordering::Relaxed);
    // Room first, copy second: a record that cannot be queued is never copied.
    if !filling.offer(record) {
        stats.dropped.fetch_add(1, Ordering::Relaxed);
        return true;
    }
    filling.copied() < BATCH || hand_on(filling, stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ebpf::records::queue;

    #[tokio::test]
    async fn records_without_room_are_counted_and_the_rest_arrive_in_order_in_batches() {
        let (tx, mut rx) = queue(300);
        let stats = ReaderStats::default();
        let mut filling = tx.fill();
        for i in 0..400u32 {
            assert!(take(&mut filling, &i.to_le_bytes(), &stats));
        }
        filling.send().unwrap();
        assert_eq!(stats.received.load(Ordering::Relaxed), 400);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 100);
        let first = rx.recv().await.unwrap();
        assert_eq!(
            first.len(),
            BATCH,
            "a full batch goes on before the drain ends"
        );
        let second = rx.recv().await.unwrap();
        let got: Vec<u32> = [first, second]
            .iter()
            .flat_map(|b| {
                (0..b.len())
                    .map(|i| u32::from_le_bytes(b.get(i).unwrap().try_into().unwrap()))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(got, (0..300).collect::<Vec<_>>(), "the first 300, in order");
    }

    #[tokio::test]
    async fn the_reader_stops_when_the_receiver_is_gone() {
        let (tx, rx) = queue(1000);
        let stats = ReaderStats::default();
        let mut filling = tx.fill();
        drop(rx);
        let mut took = true;
        for i in 0..BATCH as u32 {
            took &= take(&mut filling, &i.to_le_bytes(), &stats);
        }
        assert!(!took, "a batch that cannot be handed on stops the drain");
        assert_eq!(
            stats.dropped.load(Ordering::Relaxed),
            BATCH as u64,
            "and its records are counted as dropped"
        );
    }
}
