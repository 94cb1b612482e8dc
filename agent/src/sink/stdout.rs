//! stdout: one CloudEvent of structured-mode JSON per line, or a readable line per event.
use std::{io::Write, sync::Arc};

use futures::future::BoxFuture;

use super::{Sink, SinkError, json_lines, pretty::pretty, reuse};
use crate::cloudevents::VigilEvent;

pub use crate::config::Format;

/// Writes to any blocking writer (stdout, a pipe); the writes run on a blocking thread so a
/// reader that does not keep up stalls only this sink. Each batch is encoded into one buffer
/// kept from batch to batch, then written and flushed in one hand-off to that thread.
pub struct StdoutSink {
    /// The writer and the batch buffer; `None` only while a write is under way on the
    /// blocking thread.
    out: Option<(Box<dyn Write + Send>, Vec<u8>)>,
    format: Format,
}

impl StdoutSink {
    pub fn new(out: Box<dyn Write + Send>, format: Format) -> Self {
        Self {
            out: Some((out, Vec::new())),
            format,
        }
    }

    /// The bytes `events` become on the wire, into `buf`.
    fn encode(&self, events: &[Arc<VigilEvent>], buf: &mut Vec<u8>) -> Result<(), SinkError> {
        if self.format == Format::Json {
            return json_lines("stdout", events, buf);
        }
        for event in events {
            buf.extend_from_slice(pretty(event).as_bytes());
            buf.push(b'\n');
        }
        Ok(())
    }

    /// Encodes `events`, then writes and flushes them on a blocking thread.
    async fn write(&mut self, events: &[Arc<VigilEvent>]) -> Result<(), SinkError> {
        let (mut out, mut buf) = self.out.take().ok_or_else(|| write_error(lost_writer()))?;
        if let Err(err) = self.encode(events, &mut buf) {
            self.out = Some((out, reuse(buf)));
            return Err(err);
        }
        let (out, buf, result) = tokio::task::spawn_blocking(move || {
            let result = out.write_all(&buf).and_then(|()| out.flush());
            (out, buf, result)
        })
        .await
        .map_err(|e| write_error(std::io::Error::other(e)))?;
        self.out = Some((out, reuse(buf)));
        result.map_err(write_error)
    }
}

fn lost_writer() -> std::io::Error {
    std::io::Error::other("the writer was lost when an earlier write panicked")
}

fn write_error(source: std::io::Error) -> SinkError {
    SinkError::Write {
        sink: "stdout".into(),
        source,
    }
}

impl Sink for StdoutSink {
    fn name(&self) -> &str {
        "stdout"
    }

    fn deliver<'a>(
        &'a mut self,
        events: &'a [Arc<VigilEvent>],
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.write(events))
    }

    /// Nothing to do: every batch was flushed with its write.
    fn flush(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::cloudevents::{LossReport, loss};

    /// What reached the writer, and what of it was flushed.
    #[derive(Clone, Default)]
    struct Recorder {
        written: Arc<Mutex<Vec<u8>>>,
        flushed: Arc<Mutex<usize>>,
    }

    impl Write for Recorder {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.written.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            *self.flushed.lock().unwrap() = self.written.lock().unwrap().len();
            Ok(())
        }
    }

    #[tokio::test]
    async fn each_batch_is_written_once_and_flushed_with_its_write() {
        let recorder = Recorder::default();
        let mut sink = StdoutSink::new(Box::new(recorder.clone()), Format::Json);
        let events: Vec<Arc<VigilEvent>> = (0..5)
            .map(|_| Arc::new(loss("n1", &LossReport::default(), &LossReport::default())))
            .collect();
        sink.deliver(&events[..3]).await.unwrap();
        assert_eq!(
            *recorder.flushed.lock().unwrap(),
            recorder.written.lock().unwrap().len(),
            "flushed with the write, before any flush of the sink"
        );
        sink.deliver(&events[3..]).await.unwrap();
        let written = String::from_utf8(recorder.written.lock().unwrap().clone()).unwrap();
        let ids: Vec<String> = written
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].to_string())
            .collect();
        let sent: Vec<String> = events.iter().map(|e| format!("{:?}", e.id)).collect();
        assert_eq!(
            ids, sent,
            "every event once, in order: the buffer starts empty each batch"
        );
    }
}
