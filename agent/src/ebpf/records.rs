//! The queue between the ring-buffer reader and the pipeline. Records cross it a batch at a
//! time, one batch per drain of the ring buffer: a record copied into a batch costs no
//! allocation of its own and no hand-off of its own, and a consumer that is busy is not woken
//! once per record. The bound is in records, as before batching: room for a record is taken
//! before it is copied, and a record without room is counted by the reader, never waited for.
use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use tokio::sync::{Notify, mpsc};

/// Records copied back to back, in the order they were read.
#[derive(Debug, Default)]
pub struct Batch {
    bytes: Vec<u8>,
    /// End offset of each record in `bytes`.
    ends: Vec<usize>,
}

impl Batch {
    pub fn push(&mut self, record: &[u8]) {
        self.bytes.extend_from_slice(record);
        self.ends.push(self.bytes.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Record `index`, `None` past the last.
    pub fn get(&self, index: usize) -> Option<&[u8]> {
        let end = *self.ends.get(index)?;
        let start = match index {
            0 => 0,
            _ => self.ends[index - 1],
        };
        Some(&self.bytes[start..end])
    }
}

/// How many records are queued, against the bound.
#[derive(Debug)]
struct Room {
    queued: AtomicUsize,
    capacity: usize,
    /// Senders waiting for room: room that frees up is theirs first, as a bounded channel's
    /// waiting senders are served before a `try_send`.
    waiting: AtomicUsize,
    /// Woken when records leave the queue or the receiver goes away.
    changed: Notify,
}

impl Room {
    /// Room for one record unless a waiting sender is first in line.
    fn try_take_unless_waited_for(&self) -> bool {
        self.waiting.load(Ordering::Acquire) == 0 && self.try_take()
    }

    fn try_take(&self) -> bool {
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued < self.capacity).then_some(queued + 1)
            })
            .is_ok()
    }

    fn give_back(&self, records: usize) {
        self.queued.fetch_sub(records, Ordering::AcqRel);
        self.changed.notify_waiters();
    }
}

/// The receiver went away: nothing more can be queued; carries how many records were not
/// handed on (copied, then given up).
#[derive(Debug, PartialEq, Eq)]
pub struct Closed(pub usize);

/// A queue that holds at most `capacity` records.
pub fn queue(capacity: usize) -> (RecordSender, RecordReceiver) {
    let room = Arc::new(Room {
        queued: AtomicUsize::new(0),
        capacity,
        waiting: AtomicUsize::new(0),
        changed: Notify::new(),
    });
    // Unbounded in batches only: every record in them holds room, so the records are bounded.
    let (tx, rx) = mpsc::unbounded_channel();
    (
        RecordSender {
            tx,
            room: room.clone(),
        },
        RecordReceiver { rx, room },
    )
}

#[derive(Clone, Debug)]
pub struct RecordSender {
    tx: mpsc::UnboundedSender<Batch>,
    room: Arc<Room>,
}

impl RecordSender {
    /// A batch being filled; nothing reaches the receiver before [`Filling::send`].
    pub fn fill(&self) -> Filling<'_> {
        Filling {
            sender: self,
            batch: Batch::default(),
        }
    }

    /// Queues one record, waiting for room (what must not be dropped: the records a previous
    /// agent's ring buffer still holds at a hand-over).
    pub async fn send_waiting(&self, record: &[u8]) -> Result<(), Closed> {
        self.room.waiting.fetch_add(1, Ordering::AcqRel);
        let sent = self.wait_and_send(record).await;
        self.room.waiting.fetch_sub(1, Ordering::AcqRel);
        sent
    }

    async fn wait_and_send(&self, record: &[u8]) -> Result<(), Closed> {
        loop {
            let changed = self.room.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a release between the two is not missed.
            changed.as_mut().enable();
            if self.tx.is_closed() {
                return Err(Closed(1));
            }
            if self.room.try_take() {
                let mut batch = Batch::default();
                batch.push(record);
                return self.hand_on(batch);
            }
            changed.await;
        }
    }

    /// Sends `batch`, whose records hold room; gives the room back if nobody will take it.
    fn hand_on(&self, batch: Batch) -> Result<(), Closed> {
        self.tx
            .send(batch)
            .map_err(|mpsc::error::SendError(batch)| {
                self.room.give_back(batch.len());
                Closed(batch.len())
            })
    }
}

/// Records taken room for and copied, not yet handed on.
#[derive(Debug)]
pub struct Filling<'a> {
    sender: &'a RecordSender,
    batch: Batch,
}

impl Filling<'_> {
    /// Copies `record` in; false (and nothing copied) when the queue has no room for it.
    pub fn offer(&mut self, record: &[u8]) -> bool {
        if !self.sender.room.try_take_unless_waited_for() {
            return false;
        }
        self.batch.push(record);
        true
    }

    /// Records copied and not yet handed on.
    pub fn copied(&self) -> usize {
        self.batch.len()
    }

    /// Hands the records copied so far on, in one piece, and starts a new batch.
    pub fn send(&mut self) -> Result<(), Closed> {
        if self.batch.is_empty() {
            return if self.sender.tx.is_closed() {
                Err(Closed(0))
            } else {
                Ok(())
            };
        }
        self.sender.hand_on(std::mem::take(&mut self.batch))
    }
}

impl Drop for Filling<'_> {
    /// Records copied and never handed on give their room back.
    fn drop(&mut self) {
        self.sender.room.give_back(self.batch.len());
    }
}

#[derive(Debug)]
pub struct RecordReceiver {
    rx: mpsc::UnboundedReceiver<Batch>,
    room: Arc<Room>,
}

impl RecordReceiver {
    /// The next batch, `None` once every sender is gone and the queue is empty. Its records
    /// leave the bound as it is taken. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Batch> {
        let batch = self.rx.recv().await?;
        self.room.give_back(batch.len());
        Some(batch)
    }
}

impl Drop for RecordReceiver {
    fn drop(&mut self) {
        self.rx.close();
        // A sender waiting for room sees the queue closed.
        self.room.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_gives_back_each_record_whole_and_in_order() {
        let mut batch = Batch::default();
        batch.push(b"first");
        batch.push(b"");
        batch.push(&[7; 300]);
        assert_eq!(batch.len(), 3);
        assert_eq!(batch.get(0), Some(&b"first"[..]));
        assert_eq!(batch.get(1), Some(&b""[..]));
        assert_eq!(batch.get(2), Some(&[7u8; 300][..]));
        assert_eq!(batch.get(3), None);
    }

    #[tokio::test]
    async fn the_bound_is_in_records_across_batches_and_a_taken_batch_frees_its_room() {
        let (tx, mut rx) = queue(5);
        let mut filling = tx.fill();
        for i in 0..3u8 {
            assert!(filling.offer(&[i]), "record {i}");
        }
        filling.send().unwrap();
        for i in 3..5u8 {
            assert!(filling.offer(&[i]), "record {i}");
        }
        assert!(!filling.offer(&[5]), "a sixth record has no room");
        filling.send().unwrap();

        let first = rx.recv().await.unwrap();
        assert_eq!((first.len(), first.get(0)), (3, Some(&[0u8][..])));
        // Three records left the queue: room for three more, not four.
        for i in 6..9u8 {
            assert!(filling.offer(&[i]), "record {i}");
        }
        assert!(!filling.offer(&[9]));
        filling.send().unwrap();
        let second = rx.recv().await.unwrap();
        let third = rx.recv().await.unwrap();
        let got: Vec<u8> = [&second, &third]
            .iter()
            .flat_map(|b| (0..b.len()).map(|i| b.get(i).unwrap()[0]))
            .collect();
        assert_eq!(got, vec![3, 4, 6, 7, 8]);
    }

    #[tokio::test]
    async fn a_waiting_sender_goes_on_once_room_is_freed_and_stops_when_the_receiver_goes() {
        let (tx, mut rx) = queue(1);
        let mut filling = tx.fill();
        assert!(filling.offer(b"a"));
        filling.send().unwrap();
        drop(filling);
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send_waiting(b"b").await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "no room yet");
        assert_eq!(rx.recv().await.unwrap().get(0), Some(&b"a"[..]));
        waiting.await.unwrap().unwrap();
        assert_eq!(rx.recv().await.unwrap().get(0), Some(&b"b"[..]));

        let mut filling = tx.fill();
        assert!(filling.offer(b"c"));
        filling.send().unwrap();
        let stuck = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send_waiting(b"d").await }
        });
        tokio::task::yield_now().await;
        drop(rx);
        assert_eq!(stuck.await.unwrap(), Err(Closed(1)));
        assert_eq!(tx.fill().send(), Err(Closed(0)));
    }

    #[tokio::test]
    async fn freed_room_goes_to_a_waiting_sender_before_the_reader() {
        let (tx, mut rx) = queue(1);
        let mut filling = tx.fill();
        assert!(filling.offer(b"a"));
        filling.send().unwrap();
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send_waiting(b"handed over").await }
        });
        tokio::task::yield_now().await;
        assert!(!filling.offer(b"b"), "full");
        rx.recv().await.unwrap();
        assert!(
            !filling.offer(b"c"),
            "the room freed is the waiting sender's, not the reader's"
        );
        waiting.await.unwrap().unwrap();
        assert_eq!(rx.recv().await.unwrap().get(0), Some(&b"handed over"[..]));
        assert!(filling.offer(b"d"), "and then the reader's again");
    }

    #[tokio::test]
    async fn records_copied_and_never_sent_give_their_room_back() {
        let (tx, _rx) = queue(2);
        let mut filling = tx.fill();
        assert!(filling.offer(b"a"));
        assert!(filling.offer(b"b"));
        drop(filling);
        let mut filling = tx.fill();
        assert!(filling.offer(b"c"), "room given back by the dropped batch");
    }

    #[tokio::test]
    async fn the_receiver_ends_once_every_sender_is_gone_and_the_queue_is_empty() {
        let (tx, mut rx) = queue(4);
        let mut filling = tx.fill();
        assert!(filling.offer(b"x"));
        filling.send().unwrap();
        drop(filling);
        drop(tx);
        assert_eq!(rx.recv().await.unwrap().get(0), Some(&b"x"[..]));
        assert!(rx.recv().await.is_none());
    }
}
