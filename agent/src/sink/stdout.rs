//! stdout: one CloudEvent of structured-mode JSON per line, or a readable line per event.
use std::{io::Write, sync::Arc};

use futures::future::BoxFuture;

use super::{Sink, SinkError, json_lines, pretty::pretty};
use crate::cloudevents::VigilEvent;

pub use crate::config::Format;

/// Writes to any blocking writer (stdout, a pipe); the writes run on a blocking thread so a
/// reader that does not keep up stalls only this sink.
pub struct StdoutSink {
    /// `None` only while a write is under way on the blocking thread.
    out: Option<Box<dyn Write + Send>>,
    format: Format,
}

impl StdoutSink {
    pub fn new(out: Box<dyn Write + Send>, format: Format) -> Self {
        Self {
            out: Some(out),
            format,
        }
    }

    /// The bytes `events` become on the wire.
    fn encode(&self, events: &[Arc<VigilEvent>]) -> Result<Vec<u8>, SinkError> {
        if self.format == Format::Json {
            return json_lines("stdout", events);
        }
        let mut buf = Vec::with_capacity(events.len() * 256);
        for event in events {
            buf.extend_from_slice(pretty(event).as_bytes());
            buf.push(b'\n');
        }
        Ok(buf)
    }

    /// Runs `op` on the writer on a blocking thread.
    async fn with_writer(
        &mut self,
        op: impl FnOnce(&mut dyn Write) -> std::io::Result<()> + Send + 'static,
    ) -> Result<(), SinkError> {
        let mut out = self.out.take().ok_or_else(|| write_error(lost_writer()))?;
        let (out, result) = tokio::task::spawn_blocking(move || {
            let result = op(&mut out);
            (out, result)
        })
        .await
        .map_err(|e| write_error(std::io::Error::other(e)))?;
        self.out = Some(out);
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
        Box::pin(async move {
            let bytes = self.encode(events)?;
            self.with_writer(move |out| out.write_all(&bytes)).await
        })
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move { self.with_writer(|out| out.flush()).await })
    }
}
