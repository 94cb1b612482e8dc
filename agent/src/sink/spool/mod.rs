//! A sink's disk spool: what the agent has taken for a receiver but not yet delivered, kept
//! across receiver outages, agent restarts and `kill -9`.
//!
//! Records go into append-only segment files (`<seq>.seg`), each framed as a little-endian
//! `u32` length, the `u32` CRC-32 of the bytes, then the bytes; a segment is closed once the
//! next record would take it past an eighth of the cap. The file `cursor` names the first
//! record not yet delivered; it is replaced (write, then rename) after each delivered batch,
//! so a crash between delivery and the cursor's update sends that batch again: delivery is at
//! least once, and receivers de-duplicate by the event's `id`.
//!
//! A frame that does not check (a write torn by a crash, a damaged disk) ends what is read of
//! its segment: the rest is skipped and counted, never a crash. When the segments exceed the
//! cap, the oldest goes, and what it held undelivered is counted.
mod frame;

use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    os::{
        fd::AsRawFd,
        unix::fs::{DirBuilderExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
};

pub use frame::{HEADER_LEN, MAX_RECORD};

use super::SinkStats;

/// Segments are cut at this fraction of the cap, so dropping the oldest frees at most this.
const SEGMENTS_PER_CAP: u64 = 8;
/// The smallest cap: a cap must hold a few segments of a few events each.
pub const MIN_CAP: u64 = 64 * 1024;
const CURSOR: &str = "cursor";
const LOCK: &str = "lock";

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {}: {action}: {source}", dir.display())]
    Io {
        dir: PathBuf,
        action: String,
        source: std::io::Error,
    },
    #[error(
        "spool {}: in use by another process (each agent needs its own spool directory)",
        dir.display()
    )]
    InUse { dir: PathBuf },
    #[error("spool: a spool task ended: {0}")]
    Task(String),
    #[error("spool {}: maxBytes {max_bytes} is below the least a spool needs ({MIN_CAP})", dir.display())]
    CapTooSmall { dir: PathBuf, max_bytes: u64 },
}

/// Where a record starts or ends: a segment and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub seq: u64,
    pub offset: u64,
}

/// One record read back, and where the next one starts.
#[derive(Debug)]
pub struct Record {
    pub bytes: Vec<u8>,
    pub end: Position,
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    seq: u64,
    /// Bytes of whole, checked frames.
    len: u64,
}

/// What opening found, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Records waiting from an earlier run.
    pub pending: u64,
    /// Damaged regions skipped (a torn tail after a crash is one).
    pub corrupt: u64,
    /// The cursor was missing or unreadable: everything kept is sent again.
    pub cursor_reset: bool,
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    segments: VecDeque<Segment>,
    writer: File,
    cursor: Position,
    /// Where the batch last handed out by [`Self::read`] ends, until it is committed: a cap
    /// drop does not count it as lost (it is being delivered).
    in_flight: Option<Position>,
    stats: Arc<SinkStats>,
    /// Held for the spool's life: an advisory lock that keeps a second agent out.
    _lock: File,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.seg"))
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, checking every kept frame, cutting a torn tail,
    /// and counting into `stats` what it had to skip.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        stats: Arc<SinkStats>,
    ) -> Result<(Self, Recovered), SpoolError> {
        let io = |action: &str| {
            let dir = dir.to_path_buf();
            let action = action.to_string();
            move |source| SpoolError::Io {
                dir,
                action,
                source,
            }
        };
        if max_bytes < MIN_CAP {
            return Err(SpoolError::CapTooSmall {
                dir: dir.to_path_buf(),
                max_bytes,
            });
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io("creating the directory"))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(dir.join(LOCK))
            .map_err(io("opening the lock file"))?;
        // SAFETY: a valid descriptor; flock has no memory preconditions.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(SpoolError::InUse {
                dir: dir.to_path_buf(),
            });
        }

        let mut seqs = Vec::new();
        for entry in fs::read_dir(dir).map_err(io("listing the directory"))? {
            let name = entry.map_err(io("listing the directory"))?.file_name();
            if let Some(seq) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();

        let mut recovered = Recovered::default();
        let mut segments = VecDeque::new();
        let last = seqs.last().copied();
        for seq in seqs {
            let path = segment_path(dir, seq);
            let bytes = fs::read(&path).map_err(io("reading a segment"))?;
            let scan = frame::scan(&bytes);
            if scan.valid_len < bytes.len() as u64 {
                recovered.corrupt += 1;
                tracing::warn!(
                    spool = %dir.display(),
                    segment = seq,
                    kept = scan.valid_len,
                    skipped = bytes.len() as u64 - scan.valid_len,
                    "spool segment damaged (a write torn by a crash?): the rest of it is skipped and counted"
                );
                if Some(seq) == last {
                    // Appends continue after the last whole frame.
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io("cutting a torn segment"))?;
                    f.set_len(scan.valid_len)
                        .map_err(io("cutting a torn segment"))?;
                }
            }
            segments.push_back(Segment {
                seq,
                len: scan.valid_len,
            });
        }
        if segments.is_empty() {
            segments.push_back(Segment { seq: 1, len: 0 });
        }
        let (cursor, reset) = read_cursor(dir, &segments);
        recovered.cursor_reset = reset;
        let last = *segments.back().expect("at least one segment");
        let writer = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(segment_path(dir, last.seq))
            .map_err(io("opening the last segment"))?;
        stats
            .spool_corrupt
            .fetch_add(recovered.corrupt, Ordering::Relaxed);
        let mut spool = Self {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes: (max_bytes / SEGMENTS_PER_CAP).min(64 * 1024 * 1024),
            segments,
            writer,
            cursor,
            in_flight: None,
            stats,
            _lock: lock,
        };
        spool.drop_delivered_segments()?;
        recovered.pending = spool.pending_records()?;
        spool.write_cursor()?;
        Ok((spool, recovered))
    }

    fn io(&self, action: &str, source: std::io::Error) -> SpoolError {
        SpoolError::Io {
            dir: self.dir.clone(),
            action: action.to_string(),
            source,
        }
    }

    /// Bytes the segments take.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    fn publish_bytes(&self) {
        self.stats
            .spool_bytes
            .store(self.bytes(), Ordering::Relaxed);
    }

    /// Appends `records` and makes them durable, then drops the oldest segments while the
    /// spool is over its cap. A record larger than a segment is refused and counted.
    pub fn append(&mut self, records: &[Vec<u8>]) -> Result<(), SpoolError> {
        let mut frames = Vec::new();
        for record in records {
            let len = frame::framed_len(record);
            if len > self.segment_bytes || record.len() > MAX_RECORD {
                self.stats.spool_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    spool = %self.dir.display(),
                    bytes = record.len(),
                    "an event larger than a spool segment is dropped and counted"
                );
                continue;
            }
            let filled = self.segments.back().expect("a segment").len + frames.len() as u64;
            if filled > 0 && filled + len > self.segment_bytes {
                self.flush_frames(&mut frames)?;
                self.roll()?;
            }
            frame::encode(record, &mut frames);
        }
        self.flush_frames(&mut frames)?;
        self.writer
            .sync_data()
            .map_err(|e| self.io("syncing a segment", e))?;
        self.enforce_cap()?;
        self.publish_bytes();
        Ok(())
    }

    fn flush_frames(&mut self, frames: &mut Vec<u8>) -> Result<(), SpoolError> {
        if frames.is_empty() {
            return Ok(());
        }
        let len = self.segments.back().expect("a segment").len;
        if let Err(e) = self.writer.write_all(frames) {
            // A partial frame (a full disk) would shift every later append: cut it off, or
            // if even that fails, leave the segment for a fresh one.
            if self.writer.set_len(len).is_err() {
                let _ = self.roll();
            }
            return Err(self.io("appending to a segment", e));
        }
        self.segments.back_mut().expect("a segment").len += frames.len() as u64;
        frames.clear();
        Ok(())
    }

    fn roll(&mut self) -> Result<(), SpoolError> {
        self.writer
            .sync_data()
            .map_err(|e| self.io("syncing a segment", e))?;
        let seq = self.segments.back().expect("a segment").seq + 1;
        self.writer = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(segment_path(&self.dir, seq))
            .map_err(|e| self.io("creating a segment", e))?;
        self.segments.push_back(Segment { seq, len: 0 });
        // The new file's name must outlive a power cut as its content does.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.io("syncing the directory", e))
    }

    fn enforce_cap(&mut self) -> Result<(), SpoolError> {
        while self.bytes() > self.max_bytes && self.segments.len() > 1 {
            let oldest = self.segments[0];
            let from = if oldest.seq == self.cursor.seq {
                match self.in_flight {
                    // Being delivered now: not lost.
                    Some(end) if end.seq == oldest.seq => end.offset,
                    _ => self.cursor.offset,
                }
            } else {
                0
            };
            let lost = self.count_frames(oldest, from)?;
            self.stats.spool_dropped.fetch_add(lost, Ordering::Relaxed);
            tracing::warn!(
                spool = %self.dir.display(),
                segment = oldest.seq,
                undelivered = lost,
                "spool full: its oldest undelivered events are dropped and counted"
            );
            self.remove_oldest()?;
            if self.cursor.seq <= oldest.seq {
                self.cursor = Position {
                    seq: self.segments[0].seq,
                    offset: 0,
                };
                self.write_cursor()?;
            }
        }
        Ok(())
    }

    fn remove_oldest(&mut self) -> Result<(), SpoolError> {
        let oldest = self.segments[0];
        match fs::remove_file(segment_path(&self.dir, oldest.seq)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(self.io("removing a segment", e));
            }
            _ => {}
        }
        self.segments.pop_front();
        Ok(())
    }

    fn read_segment(&self, seg: Segment, from: u64) -> Result<Vec<u8>, SpoolError> {
        self.read_at(seg, from, seg.len - from)
    }

    /// At most `len` bytes of `seg` from `from` on (never past its checked length).
    fn read_at(&self, seg: Segment, from: u64, len: u64) -> Result<Vec<u8>, SpoolError> {
        let len = len.min(seg.len.saturating_sub(from));
        let mut file = File::open(segment_path(&self.dir, seg.seq))
            .map_err(|e| self.io("opening a segment", e))?;
        file.seek(SeekFrom::Start(from))
            .map_err(|e| self.io("reading a segment", e))?;
        let mut bytes = Vec::with_capacity(len as usize);
        file.take(len)
            .read_to_end(&mut bytes)
            .map_err(|e| self.io("reading a segment", e))?;
        Ok(bytes)
    }

    /// The bytes from the cursor on that hold up to `max_bytes` of records, and at least the
    /// first whole record: not the rest of a segment that may be large.
    fn read_from_cursor(&self, seg: Segment, max_bytes: usize) -> Result<Vec<u8>, SpoolError> {
        let from = self.cursor.offset;
        let bytes = self.read_at(seg, from, (max_bytes + HEADER_LEN) as u64)?;
        match frame::first_len(&bytes) {
            Some(first) if first > bytes.len() => self.read_at(seg, from, first as u64),
            _ => Ok(bytes),
        }
    }

    fn count_frames(&self, seg: Segment, from: u64) -> Result<u64, SpoolError> {
        if from >= seg.len {
            return Ok(0);
        }
        Ok(frame::scan(&self.read_segment(seg, from)?).frames)
    }

    /// Records not yet delivered.
    pub fn pending_records(&self) -> Result<u64, SpoolError> {
        let mut n = 0;
        for seg in self.segments.iter().filter(|s| s.seq >= self.cursor.seq) {
            let from = if seg.seq == self.cursor.seq {
                self.cursor.offset
            } else {
                0
            };
            n += self.count_frames(*seg, from)?;
        }
        Ok(n)
    }

    /// Up to `max_records` records (and about `max_bytes`) from the cursor on, all from one
    /// segment; empty when everything is delivered. The cursor moves only with [`commit`].
    ///
    /// [`commit`]: Self::commit
    pub fn read(
        &mut self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, SpoolError> {
        loop {
            let Some(index) = self.segments.iter().position(|s| s.seq == self.cursor.seq) else {
                // The cursor's segment is gone: on with the next one there is.
                let Some(next) = self.segments.iter().find(|s| s.seq > self.cursor.seq) else {
                    return Ok(Vec::new());
                };
                self.cursor = Position {
                    seq: next.seq,
                    offset: 0,
                };
                self.write_cursor()?;
                continue;
            };
            let seg = self.segments[index];
            if self.cursor.offset >= seg.len {
                if index + 1 == self.segments.len() {
                    return Ok(Vec::new());
                }
                // Everything in it is delivered: go on with the next one.
                self.cursor = Position {
                    seq: self.segments[index + 1].seq,
                    offset: 0,
                };
                self.write_cursor()?;
                self.drop_delivered_segments()?;
                continue;
            }
            let bytes = self.read_from_cursor(seg, max_bytes)?;
            let (records, checked) = frame::decode(&bytes, max_records, max_bytes);
            if records.is_empty() && checked < bytes.len() {
                // What was read starts with a frame that does not check: damaged.
                let bytes = self.read_segment(seg, self.cursor.offset)?;
                // Damaged since it was opened: skip the rest of the segment.
                self.stats.spool_corrupt.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    spool = %self.dir.display(),
                    segment = seg.seq,
                    "spool segment damaged: the rest of it is skipped and counted"
                );
                self.segments[index].len = self.cursor.offset;
                if index + 1 == self.segments.len() {
                    // The writer appends after the damage; reading resumes there.
                    self.segments[index].len = self.cursor.offset + bytes.len() as u64;
                    self.cursor.offset = self.segments[index].len;
                    self.write_cursor()?;
                    return Ok(Vec::new());
                }
                continue;
            }
            let mut offset = self.cursor.offset;
            let records: Vec<Record> = records
                .into_iter()
                .map(|bytes| {
                    offset += frame::framed_len(&bytes);
                    Record {
                        bytes,
                        end: Position {
                            seq: seg.seq,
                            offset,
                        },
                    }
                })
                .collect();
            self.in_flight = records.last().map(|r| r.end);
            return Ok(records);
        }
    }

    /// Marks everything before `end` delivered, durably.
    pub fn commit(&mut self, end: Position) -> Result<(), SpoolError> {
        self.in_flight = None;
        // The cap may have dropped the segment meanwhile: the cursor has moved past it.
        if end <= self.cursor {
            return Ok(());
        }
        self.cursor = end;
        self.write_cursor()
    }

    fn drop_delivered_segments(&mut self) -> Result<(), SpoolError> {
        while self.segments.len() > 1 && self.segments[0].seq < self.cursor.seq {
            self.remove_oldest()?;
        }
        self.publish_bytes();
        Ok(())
    }

    fn write_cursor(&self) -> Result<(), SpoolError> {
        let tmp = self.dir.join("cursor.tmp");
        let text = cursor_text(self.cursor);
        fs::write(&tmp, text).map_err(|e| self.io("writing the cursor", e))?;
        fs::rename(&tmp, self.dir.join(CURSOR)).map_err(|e| self.io("writing the cursor", e))
    }
}

/// `<seq> <offset> <crc of both>`: a cursor damaged on disk is told from a valid one.
fn cursor_text(p: Position) -> String {
    let body = format!("{} {}", p.seq, p.offset);
    format!("{body} {:08x}\n", crc32fast::hash(body.as_bytes()))
}

fn parse_cursor(text: &str) -> Option<Position> {
    let mut parts = text.split_whitespace();
    let (seq, offset, crc) = (parts.next()?, parts.next()?, parts.next()?);
    let body = format!("{seq} {offset}");
    (u32::from_str_radix(crc, 16).ok()? == crc32fast::hash(body.as_bytes())).then_some(())?;
    Some(Position {
        seq: seq.parse().ok()?,
        offset: offset.parse().ok()?,
    })
}

/// The kept cursor, moved onto a record boundary the segments still have; the oldest
/// record when it is missing or unreadable (and then `true`: all is sent again).
fn read_cursor(dir: &Path, segments: &VecDeque<Segment>) -> (Position, bool) {
    let first = Position {
        seq: segments[0].seq,
        offset: 0,
    };
    let Some(kept) = fs::read_to_string(dir.join(CURSOR))
        .ok()
        .and_then(|t| parse_cursor(&t))
    else {
        let any_data = segments.iter().any(|s| s.len > 0);
        return (first, any_data);
    };
    if kept < first {
        return (first, false);
    }
    match segments.iter().find(|s| s.seq == kept.seq) {
        // Past a torn tail that was cut: nothing after it is left in that segment.
        Some(seg) => (
            Position {
                seq: seg.seq,
                offset: kept.offset.min(seg.len),
            },
            false,
        ),
        // A segment that is gone (dropped by the cap while the cursor was in it): the next.
        None => match segments.iter().find(|s| s.seq > kept.seq) {
            Some(seg) => (
                Position {
                    seq: seg.seq,
                    offset: 0,
                },
                false,
            ),
            None => {
                let last = segments.back().expect("a segment");
                (
                    Position {
                        seq: last.seq,
                        offset: last.len,
                    },
                    false,
                )
            }
        },
    }
}

#[cfg(test)]
mod tests;
