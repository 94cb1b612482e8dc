//! The first stage: the reader task copying records out of the ring buffer, and decoding.
//! Records that do not decode are counted as losses.
use std::sync::Arc;

use tokio::sync::watch;

use super::QUEUE_CAPACITY;
use crate::{
    ebpf::{
        reader::{self, ReaderError, ReaderStats},
        records::{self, Batch, RecordReceiver, RecordSender},
    },
    event,
};

pub(crate) struct Intake {
    rx: RecordReceiver,
    /// The batch being decoded, and the index of its next record.
    batch: Batch,
    at: usize,
    reader: tokio::task::JoinHandle<Result<(), ReaderError>>,
    pub(crate) stats: Arc<ReaderStats>,
    pub(crate) undecodable: u64,
}

impl Intake {
    /// Starts the reader; with `second_sender`, also returns a sender into the same queue
    /// (for the records a previous agent's ring buffer still holds), which must be dropped for
    /// the queue to end.
    pub(crate) fn start(
        ring: aya::maps::RingBuf<aya::maps::MapData>,
        stop: watch::Receiver<bool>,
        second_sender: bool,
    ) -> (Self, Option<RecordSender>) {
        let stats = Arc::new(ReaderStats::default());
        let (tx, rx) = records::queue(QUEUE_CAPACITY);
        let second = second_sender.then(|| tx.clone());
        let reader = tokio::spawn(reader::run(ring, tx, stats.clone(), stop));
        let intake = Self {
            rx,
            batch: Batch::default(),
            at: 0,
            reader,
            stats,
            undecodable: 0,
        };
        (intake, second)
    }

    /// The next decoded event; `None` once the reader has stopped and the queue is drained.
    /// Cancel-safe: it awaits only the next batch, and a batch taken is kept until decoded.
    pub(crate) async fn next(&mut self) -> Option<event::Event> {
        loop {
            while let Some(record) = self.batch.get(self.at) {
                self.at += 1;
                match event::decode(record) {
                    Ok(ev) => return Some(ev),
                    Err(err) => {
                        self.undecodable += 1;
                        tracing::debug!(%err, "undecodable record");
                    }
                }
            }
            self.batch = self.rx.recv().await?;
            self.at = 0;
        }
    }

    /// Waits for the reader task to end (after `stop`).
    pub(crate) async fn stopped(&mut self) -> Result<(), super::PipelineError> {
        Ok((&mut self.reader).await??)
    }
}
