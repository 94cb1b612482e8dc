//! file: one CloudEvent of structured-mode JSON per line, rotated by size. When a write would
//! take the file past `max_bytes`, the file is synced to disk and renamed `<path>.1` (older
//! ones move up to `<path>.<keep>`; the oldest beyond that is removed), and a new file begins.
use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
};

use futures::future::BoxFuture;

use super::{Sink, SinkError, json_lines, reuse};
use crate::cloudevents::VigilEvent;

pub struct FileSink {
    name: String,
    /// `None` only while a write is under way on the blocking thread.
    state: Option<State>,
}

struct State {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: File,
    size: u64,
    /// The batch buffer, kept from batch to batch.
    buf: Vec<u8>,
}

fn io_error(sink: &str, path: &Path, e: std::io::Error) -> SinkError {
    SinkError::Write {
        sink: sink.to_string(),
        source: std::io::Error::new(e.kind(), format!("{}: {e}", path.display())),
    }
}

fn open(path: &Path) -> std::io::Result<(File, u64)> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let size = file.metadata()?.len();
    Ok((file, size))
}

impl FileSink {
    pub fn new(name: String, path: PathBuf, max_bytes: u64, keep: u32) -> Result<Self, SinkError> {
        let (file, size) = open(&path).map_err(|e| io_error(&name, &path, e))?;
        Ok(Self {
            name,
            state: Some(State {
                path,
                max_bytes: max_bytes.max(1),
                keep: keep.max(1),
                file,
                size,
                buf: Vec::new(),
            }),
        })
    }

    /// Runs `op` on the file on a blocking thread.
    async fn with_state(
        &mut self,
        op: impl FnOnce(&mut State) -> std::io::Result<()> + Send + 'static,
    ) -> Result<(), SinkError> {
        let name = self.name.clone();
        let mut state = self.state.take().ok_or_else(|| SinkError::Write {
            sink: name.clone(),
            source: std::io::Error::other("the file was lost when an earlier write panicked"),
        })?;
        let (state, result) = tokio::task::spawn_blocking(move || {
            let result = op(&mut state);
            (state, result)
        })
        .await
        .map_err(|e| SinkError::Write {
            sink: name.clone(),
            source: std::io::Error::other(e),
        })?;
        let path = state.path.clone();
        self.state = Some(state);
        result.map_err(|e| io_error(&name, &path, e))
    }
}

impl State {
    /// `<path>.<n>`.
    fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        self.file.sync_all()?;
        match std::fs::remove_file(self.rotated(self.keep)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        for n in (1..self.keep).rev() {
            match std::fs::rename(self.rotated(n), self.rotated(n + 1)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, self.rotated(1))?;
        (self.file, self.size) = open(&self.path)?;
        Ok(())
    }

    /// Writes the lines, rotating first whenever the next line would not fit; the lines that
    /// fit before a rotation go out in one write. A line longer than a whole file gets a file
    /// of its own.
    fn write_lines(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        // At most one rotation per line, as when each line was written on its own: a file
        // that another writer filled again at once does not rotate the kept files away.
        let mut rotated = false;
        while !bytes.is_empty() {
            let room = self.max_bytes.saturating_sub(self.size);
            let mut fit = 0;
            for line in bytes.split_inclusive(|&b| b == b'\n') {
                if (fit + line.len()) as u64 > room {
                    break;
                }
                fit += line.len();
            }
            if fit == 0 {
                if self.size > 0 && !rotated {
                    self.rotate()?;
                    rotated = true;
                    continue;
                }
                fit = bytes
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(bytes.len(), |end| end + 1);
            }
            if let Err(e) = self.file.write_all(&bytes[..fit]) {
                // Part of it may have landed: the size is the file's own.
                self.size = self.file.metadata().map_or(self.size, |m| m.len());
                return Err(e);
            }
            self.size += fit as u64;
            rotated = false;
            bytes = &bytes[fit..];
        }
        Ok(())
    }
}

impl Sink for FileSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver<'a>(
        &'a mut self,
        events: &'a [Arc<VigilEvent>],
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let name = &self.name;
            let state = self.state.as_mut().ok_or_else(|| SinkError::Write {
                sink: name.clone(),
                source: std::io::Error::other("the file was lost when an earlier write panicked"),
            })?;
            let encoded = json_lines(name, events, &mut state.buf);
            if encoded.is_err() {
                state.buf.clear();
            }
            encoded?;
            self.with_state(|s| {
                let buf = std::mem::take(&mut s.buf);
                let written = s.write_lines(&buf);
                s.buf = reuse(buf);
                written
            })
            .await
        })
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move { self.with_state(|s| s.file.flush()).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloudevents::{LossReport, loss};

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    #[tokio::test]
    async fn rotation_keeps_every_event_in_at_most_keep_files_of_at_most_max_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut sink = FileSink::new("archive".into(), path.clone(), 4096, 3).unwrap();
        let events: Vec<Arc<VigilEvent>> = (0..40)
            .map(|_| Arc::new(loss("n1", &LossReport::default(), &LossReport::default())))
            .collect();
        for chunk in events.chunks(7) {
            sink.deliver(chunk).await.unwrap();
        }
        sink.flush().await.unwrap();

        let files = [
            path.clone(),
            dir.path().join("events.jsonl.1"),
            dir.path().join("events.jsonl.2"),
            dir.path().join("events.jsonl.3"),
        ];
        assert!(
            !dir.path().join("events.jsonl.4").exists(),
            "more than `keep` rotated files"
        );
        let mut seen = Vec::new();
        // Oldest first: .3, .2, .1, then the current file.
        for file in files.iter().rev() {
            let size = std::fs::metadata(file).unwrap().len();
            assert!(size <= 4096, "{} is {size} bytes", file.display());
            seen.extend(
                lines(file)
                    .into_iter()
                    .map(|e| e["id"].as_str().unwrap().to_string()),
            );
        }
        let ids: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
        // The oldest events went with the file rotated out; the rest are all there, in order.
        assert!(
            !seen.is_empty() && seen.len() < ids.len(),
            "{} of {}",
            seen.len(),
            ids.len()
        );
        assert_eq!(
            seen,
            ids[ids.len() - seen.len()..],
            "kept in order, none missing"
        );
    }

    #[tokio::test]
    async fn an_existing_file_is_appended_to_and_its_size_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "x".repeat(4000) + "\n").unwrap();
        let mut sink = FileSink::new("archive".into(), path.clone(), 4096, 2).unwrap();
        let event = Arc::new(loss("n1", &LossReport::default(), &LossReport::default()));
        sink.deliver(std::slice::from_ref(&event)).await.unwrap();
        sink.flush().await.unwrap();
        assert_eq!(
            lines(&path)[0]["id"],
            event.id.as_str(),
            "rotated before it"
        );
        assert!(
            std::fs::read_to_string(dir.path().join("events.jsonl.1"))
                .unwrap()
                .starts_with("xxx")
        );
    }

    #[test]
    fn a_line_longer_than_a_file_gets_a_file_of_its_own_and_none_is_split() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut sink = FileSink::new("archive".into(), path.clone(), 10, 5).unwrap();
        let state = sink.state.as_mut().unwrap();
        state
            .write_lines(b"a\nbb\nccccccccccccccccc\nd\neeeee\nf\n")
            .unwrap();
        let read = |n: u32| {
            let file = if n == 0 {
                path.clone()
            } else {
                dir.path().join(format!("events.jsonl.{n}"))
            };
            std::fs::read_to_string(file).unwrap()
        };
        // Oldest first: the lines that fit, the long line alone, then the rest.
        assert_eq!(read(2), "a\nbb\n");
        assert_eq!(read(1), "ccccccccccccccccc\n");
        assert_eq!(read(0), "d\neeeee\nf\n");
    }
}
