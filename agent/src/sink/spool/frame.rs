//! The spool's framing: `u32` length (little-endian), `u32` CRC-32 of the bytes, the bytes.

/// Bytes before a record's own.
pub const HEADER_LEN: usize = 8;
/// The largest record; a length above it is damage, not a record.
pub const MAX_RECORD: usize = 16 * 1024 * 1024;

pub fn framed_len(record: &[u8]) -> u64 {
    (HEADER_LEN + record.len()) as u64
}

pub fn encode(record: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(record.len()).expect("records are checked against MAX_RECORD");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(record).to_le_bytes());
    out.extend_from_slice(record);
}

/// The whole length of the frame `bytes` starts with, from its header alone (`None` when the
/// header is cut short or its length cannot be a record's).
pub fn first_len(bytes: &[u8]) -> Option<usize> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    (len != 0 && len <= MAX_RECORD).then_some(HEADER_LEN + len)
}

/// The frame at the start of `bytes`: its record, or `None` when it is cut short or does not
/// check.
fn first(bytes: &[u8]) -> Option<&[u8]> {
    let header = bytes.get(..HEADER_LEN)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    if len == 0 || len > MAX_RECORD {
        return None;
    }
    let record = bytes.get(HEADER_LEN..HEADER_LEN + len)?;
    (crc32fast::hash(record) == crc).then_some(record)
}

/// What a segment's bytes hold.
#[derive(Debug, PartialEq, Eq)]
pub struct Scan {
    /// Whole frames that check.
    pub frames: u64,
    /// Bytes up to the first frame that does not (all of them when every frame checks).
    pub valid_len: u64,
}

pub fn scan(bytes: &[u8]) -> Scan {
    let mut at = 0;
    let mut frames = 0;
    while let Some(record) = first(&bytes[at..]) {
        at += HEADER_LEN + record.len();
        frames += 1;
    }
    Scan {
        frames,
        valid_len: at as u64,
    }
}

/// Up to `max_records` records (and no more than `max_bytes` of them, but at least one) from
/// the start of `bytes`, and how many bytes they took.
pub fn decode(bytes: &[u8], max_records: usize, max_bytes: usize) -> (Vec<Vec<u8>>, usize) {
    let mut at = 0;
    let mut taken = 0;
    let mut records = Vec::new();
    while records.len() < max_records {
        let Some(record) = first(&bytes[at..]) else {
            break;
        };
        if !records.is_empty() && taken + record.len() > max_bytes {
            break;
        }
        taken += record.len();
        at += HEADER_LEN + record.len();
        records.push(record.to_vec());
    }
    (records, at)
}
