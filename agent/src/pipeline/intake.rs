//! The first stage: the reader task copying records out of the ring buffer, and decoding.
//! Records that do not decode are counted as losses.
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::QUEUE_CAPACITY;
use crate::{
    ebpf::reader::{self, ReaderError, ReaderStats},
    event,
};

pub(crate) struct Intake {
    rx: mpsc::Receiver<Vec<u8>>,
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
    ) -> (Self, Option<mpsc::Sender<Vec<u8>>>) {
        let stats = Arc::new(ReaderStats::default());
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let second = second_sender.then(|| tx.clone());
        let reader = tokio::spawn(reader::run(ring, tx, stats.clone(), stop));
        let intake = Self {
            rx,
            reader,
            stats,
            undecodable: 0,
        };
        (intake, second)
    }

    /// The next decoded event; `None` once the reader has stopped and the queue is drained.
    pub(crate) async fn next(&mut self) -> Option<event::Event> {
        loop {
            let record = self.rx.recv().await?;
            match event::decode(&record) {
                Ok(ev) => return Some(ev),
                Err(err) => {
                    self.undecodable += 1;
                    tracing::debug!(%err, "undecodable record");
                }
            }
        }
    }

    /// Waits for the reader task to end (after `stop`).
    pub(crate) async fn stopped(&mut self) -> Result<(), super::PipelineError> {
        Ok((&mut self.reader).await??)
    }
}
