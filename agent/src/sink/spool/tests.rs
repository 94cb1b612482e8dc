use super::*;

fn stats() -> Arc<SinkStats> {
    Arc::new(SinkStats::default())
}

fn record(i: usize, len: usize) -> Vec<u8> {
    let mut r = format!("event-{i:06}-").into_bytes();
    r.resize(len, b'x');
    r
}

/// Reads and commits everything pending, as the sender does.
fn drain(spool: &mut Spool) -> Vec<Vec<u8>> {
    let mut all = Vec::new();
    loop {
        let batch = spool.read(7, 1 << 20).expect("read");
        let Some(end) = batch.last().map(|r| r.end) else {
            return all;
        };
        all.extend(batch.into_iter().map(|r| r.bytes));
        spool.commit(end).expect("commit");
    }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

#[test]
fn records_come_back_in_order_once_and_survive_a_restart_from_the_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<Vec<u8>> = (0..50).map(|i| record(i, 100)).collect();
    {
        let (mut spool, recovered) = Spool::open(dir.path(), MIN_CAP, stats()).unwrap();
        assert_eq!(recovered, Recovered::default());
        spool.append(&records).unwrap();
        // Deliver 20, then "crash" with 30 pending.
        let mut delivered = 0;
        while delivered < 20 {
            let batch = spool.read(20 - delivered, 1 << 20).unwrap();
            delivered += batch.len();
            spool.commit(batch.last().unwrap().end).unwrap();
        }
    }
    let (mut spool, recovered) = Spool::open(dir.path(), MIN_CAP, stats()).unwrap();
    assert_eq!(recovered.pending, 30);
    assert!(!recovered.cursor_reset);
    assert_eq!(drain(&mut spool), records[20..].to_vec());
    assert_eq!(drain(&mut spool), Vec::<Vec<u8>>::new(), "nothing twice");
    let later = vec![record(99, 10)];
    spool.append(&later).unwrap();
    assert_eq!(drain(&mut spool), later);
}

#[test]
fn read_without_commit_returns_the_same_records_again() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(dir.path(), MIN_CAP, stats()).unwrap();
    spool.append(&[record(1, 10), record(2, 10)]).unwrap();
    let first: Vec<_> = spool
        .read(10, 1 << 20)
        .unwrap()
        .into_iter()
        .map(|r| r.bytes)
        .collect();
    let again: Vec<_> = spool
        .read(10, 1 << 20)
        .unwrap()
        .into_iter()
        .map(|r| r.bytes)
        .collect();
    assert_eq!(first, again, "undelivered until committed: at least once");
}

#[test]
fn a_torn_tail_is_cut_counted_and_the_whole_records_before_it_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<Vec<u8>> = (0..5).map(|i| record(i, 64)).collect();
    {
        let (mut spool, _) = Spool::open(dir.path(), MIN_CAP, stats()).unwrap();
        spool.append(&records).unwrap();
    }
    // A crash in the middle of a write: a header and half a record.
    let last = segment_files(dir.path()).pop().unwrap();
    let mut torn = Vec::new();
    frame::encode(&record(5, 64), &mut torn);
    torn.truncate(HEADER_LEN + 20);
    OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap()
        .write_all(&torn)
        .unwrap();

    let counts = stats();
    let (mut spool, recovered) = Spool::open(dir.path(), MIN_CAP, counts.clone()).unwrap();
    assert_eq!(recovered.corrupt, 1);
    assert_eq!(recovered.pending, 5);
    assert_eq!(counts.spool_corrupt.load(Ordering::Relaxed), 1);
    // Appending goes on after the last whole record.
    spool.append(&[record(6, 64)]).unwrap();
    let mut want = records.clone();
    want.push(record(6, 64));
    assert_eq!(drain(&mut spool), want);
}

#[test]
fn damage_inside_an_older_segment_skips_the_rest_of_it_only() {
    let dir = tempfile::tempdir().unwrap();
    // Segments of MIN_CAP/8 = 8 KiB: 1 KiB records, 7 a segment.
    let records: Vec<Vec<u8>> = (0..30).map(|i| record(i, 1024)).collect();
    {
        let (mut spool, _) = Spool::open(dir.path(), MIN_CAP, stats()).unwrap();
        spool.append(&records).unwrap();
    }
    let files = segment_files(dir.path());
    assert!(files.len() >= 4, "{files:?}");
    // Flip a byte in the third record of the first segment.
    let mut bytes = fs::read(&files[0]).unwrap();
    let third = 2 * (HEADER_LEN + 1024) + HEADER_LEN + 10;
    bytes[third] ^= 0xff;
    fs::write(&files[0], &bytes).unwrap();

    let counts = stats();
    let (mut spool, recovered) = Spool::open(dir.path(), MIN_CAP, counts.clone()).unwrap();
    assert_eq!(recovered.corrupt, 1);
    let per_segment = frame::scan(&fs::read(&files[1]).unwrap()).frames as usize;
    let got = drain(&mut spool);
    assert_eq!(&got[..2], &records[..2], "the records before the damage");
    assert_eq!(
        &got[2..],
        &records[records.len() - (got.len() - 2)..],
        "then the next segments, whole"
    );
    assert_eq!(
        got.len(),
        2 + (30 - per_segment),
        "one segment's rest skipped"
    );
}

#[test]
fn a_full_spool_drops_its_oldest_undelivered_records_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let counts = stats();
    let (mut spool, _) = Spool::open(dir.path(), MIN_CAP, counts.clone()).unwrap();
    let records: Vec<Vec<u8>> = (0..300).map(|i| record(i, 1000)).collect();
    for chunk in records.chunks(10) {
        spool.append(chunk).unwrap();
        assert!(spool.bytes() <= MIN_CAP, "{} over the cap", spool.bytes());
    }
    let dropped = counts.spool_dropped.load(Ordering::Relaxed) as usize;
    assert!(dropped > 0);
    let got = drain(&mut spool);
    assert_eq!(
        got.len() + dropped,
        records.len(),
        "every record delivered or counted"
    );
    assert_eq!(
        got,
        records[dropped..].to_vec(),
        "the newest are kept, in order"
    );
}

#[test]
fn a_cap_drop_under_the_cursor_counts_only_what_was_undelivered() {
    let dir = tempfile::tempdir().unwrap();
    let counts = stats();
    let (mut spool, _) = Spool::open(dir.path(), MIN_CAP, counts.clone()).unwrap();
    let records: Vec<Vec<u8>> = (0..100).map(|i| record(i, 1000)).collect();
    spool.append(&records[..5]).unwrap();
    let three = spool.read(3, 1 << 20).unwrap();
    spool.commit(three.last().unwrap().end).unwrap();
    spool.append(&records[5..]).unwrap();
    let dropped = counts.spool_dropped.load(Ordering::Relaxed) as usize;
    let got = drain(&mut spool);
    assert_eq!(3 + dropped + got.len(), records.len());
    assert_eq!(got, records[3 + dropped..].to_vec());
}

#[test]
fn a_damaged_cursor_sends_everything_kept_again_rather_than_lose_it() {
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<Vec<u8>> = (0..4).map(|i| record(i, 10)).collect();
    {
        let (mut spool, _) = Spool::open(dir.path(), MIN_CAP, stats()).unwrap();
        spool.append(&records).unwrap();
        let two = spool.read(2, 1 << 20).unwrap();
        spool.commit(two.last().unwrap().end).unwrap();
    }
    fs::write(dir.path().join(CURSOR), "1 2 3\n").unwrap();
    let (mut spool, recovered) = Spool::open(dir.path(), MIN_CAP, stats()).unwrap();
    assert!(recovered.cursor_reset);
    assert_eq!(drain(&mut spool), records);
}

#[test]
fn a_second_agent_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_spool, _) = Spool::open(dir.path(), MIN_CAP, stats()).unwrap();
    let err = Spool::open(dir.path(), MIN_CAP, stats())
        .err()
        .expect("refused");
    assert!(matches!(err, SpoolError::InUse { .. }), "{err}");
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
}

#[test]
fn a_cap_below_the_least_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let err = Spool::open(dir.path(), 1000, stats())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("maxBytes 1000"), "{err}");
}

#[test]
fn frames_check_their_length_and_checksum() {
    let mut bytes = Vec::new();
    frame::encode(b"abc", &mut bytes);
    frame::encode(b"defg", &mut bytes);
    assert_eq!(
        frame::scan(&bytes),
        frame::Scan {
            frames: 2,
            valid_len: bytes.len() as u64
        }
    );
    let mut zero_len = bytes.clone();
    zero_len.extend_from_slice(&[0; HEADER_LEN]);
    assert_eq!(frame::scan(&zero_len).frames, 2);
    let mut huge = bytes.clone();
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    huge.extend_from_slice(&[0; 4]);
    assert_eq!(frame::scan(&huge).valid_len, bytes.len() as u64);
    let (records, used) = frame::decode(&bytes, 1, 1 << 20);
    assert_eq!((records, used), (vec![b"abc".to_vec()], HEADER_LEN + 3));
}

#[test]
fn a_batch_being_delivered_when_the_cap_drops_its_segment_is_not_counted_as_lost() {
    let dir = tempfile::tempdir().unwrap();
    let counts = stats();
    let (mut spool, _) = Spool::open(dir.path(), MIN_CAP, counts.clone()).unwrap();
    let records: Vec<Vec<u8>> = (0..100).map(|i| record(i, 1000)).collect();
    spool.append(&records[..7]).unwrap();
    let in_flight = spool.read(5, 1 << 20).unwrap();
    assert_eq!(in_flight.len(), 5);
    spool.append(&records[7..]).unwrap();
    // The sender delivers the 5 and commits; the cap had dropped their segment meanwhile.
    spool.commit(in_flight.last().unwrap().end).unwrap();
    let dropped = counts.spool_dropped.load(Ordering::Relaxed) as usize;
    let got = drain(&mut spool);
    assert_eq!(
        5 + dropped + got.len(),
        records.len(),
        "each delivered or counted, once"
    );
}

#[test]
fn a_record_larger_than_a_read_is_still_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(dir.path(), MIN_CAP, stats()).unwrap();
    let big = record(1, 5000);
    spool.append(&[big.clone(), record(2, 10)]).unwrap();
    let first = spool.read(10, 100).unwrap();
    assert_eq!(first.iter().map(|r| &r.bytes).collect::<Vec<_>>(), [&big]);
    spool.commit(first[0].end).unwrap();
    assert_eq!(drain(&mut spool), [record(2, 10)]);
}
