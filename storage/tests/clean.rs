//! Cleaning a compacted log: after a pass, reading from the start gives the latest value of
//! every key (and, until a later pass finds them old, tombstones), offsets rising with gaps,
//! the same after a reopen; appends carry on; a map that fills up cleans in several passes.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use strata_storage::compact::{Aborted, KeyedRecord, OffsetMap, decode};
use strata_storage::{BatchBuilder, Log, LogConfig, Record};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        segment_ms: None,
        retention_ms: None,
        keys_required: true,
        ..LogConfig::default()
    }
}

/// Appends `n` records over `keys` keys (every 7th a tombstone), three to a batch, with
/// timestamp `ts`; returns the latest value (or tombstone) of each key.
fn fill(
    log: &Log,
    n: usize,
    keys: usize,
    ts: i64,
    latest: &mut BTreeMap<Vec<u8>, Option<Vec<u8>>>,
) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(3) {
        let mut b = BatchBuilder::new();
        for &i in chunk {
            let key = format!("key-{}", (i * 7919) % keys).into_bytes();
            let value = (i % 7 != 6).then(|| format!("value-{i}-{ts}").into_bytes());
            latest.insert(key.clone(), value.clone());
            b = b.record(Record {
                key: Some(key),
                value,
                headers: vec![("n".into(), Some(i.to_string().into_bytes()))],
                timestamp: ts,
            });
        }
        log.append(&b.build(), 1).expect("append");
    }
}

fn records(log: &Log) -> Vec<KeyedRecord> {
    let bytes = log
        .read(log.log_start_offset(), usize::MAX / 2)
        .expect("read");
    common::split(&bytes)
        .iter()
        .flat_map(|(_, b)| decode(b).expect("decodes"))
        .collect()
}

/// One pass: maps what is dirty below the active segment and rewrites.
fn clean(log: &Log, first_dirty: u64, map_bytes: usize, horizon: i64) -> u64 {
    let to = log.clean_bound(u64::MAX);
    let aborted = log.aborted_below(to).expect("aborted");
    let mut map = OffsetMap::with_memory(map_bytes, first_dirty);
    log.map_dirty(&mut map, to, &aborted, &mut |_| {})
        .expect("map");
    let done = log
        .clean_with(&map, &aborted, first_dirty, horizon, to, &mut |_| {})
        .expect("clean")
        .expect("something to clean");
    assert!(done.applied);
    map.end()
}

fn check(log: &Log, latest: &BTreeMap<Vec<u8>, Option<Vec<u8>>>, with_tombstones: bool) {
    let got = records(log);
    let offsets: Vec<u64> = got.iter().map(|r| r.offset).collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "offsets rise");
    let mut seen = BTreeMap::new();
    for r in &got {
        let key = r.key.clone().expect("keyed");
        assert!(
            seen.insert(key.clone(), r.value.clone()).is_none(),
            "one record per key, {:?} twice",
            String::from_utf8_lossy(&key)
        );
    }
    let want: BTreeMap<_, _> = latest
        .iter()
        .filter(|(_, v)| with_tombstones || v.is_some())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(seen, want);
}

#[test]
fn a_clean_keeps_the_latest_value_per_key_and_survives_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), config()).expect("open");
    let mut latest = BTreeMap::new();
    fill(&log, 3000, 100, 1_000, &mut latest);
    log.roll().expect("roll");
    let before = log.segments().len();
    let end = log.log_end_offset();
    let cleaned = clean(&log, 0, 1 << 20, 0);
    assert_eq!(cleaned, end);
    check(&log, &latest, true);
    assert!(log.segments().len() < before / 4, "small segments merge");
    assert_eq!(log.log_end_offset(), end);

    // Appends carry on, and everything reads the same after a reopen.
    fill(&log, 300, 100, 2_000, &mut latest);
    drop(log);
    let log = Log::open(dir.path(), config()).expect("reopen");
    assert_eq!(log.log_end_offset(), end + 300);
    log.roll().expect("roll");

    // The second pass: tombstones the first pass cleaned are old by now and go; the ones
    // written since stay until a later pass.
    let second = clean(&log, cleaned, 1 << 20, 1_500);
    let got = records(&log);
    for r in &got {
        assert!(
            r.value.is_some() || r.offset >= cleaned,
            "old tombstone at {}",
            r.offset
        );
    }
    assert_eq!(second, end + 300);
    let third = clean(&log, second, 1 << 20, 2_500);
    assert_eq!(third, second);
    check(&log, &latest, false);
}

#[test]
fn a_small_map_cleans_in_several_passes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), config()).expect("open");
    let mut latest = BTreeMap::new();
    fill(&log, 2000, 400, 1_000, &mut latest);
    log.roll().expect("roll");
    let end = log.log_end_offset();
    let map_bytes = 25 * 256; // 224 keys: less than the dirty section holds
    let mut first_dirty = 0;
    let mut passes = 0;
    while first_dirty < end {
        first_dirty = clean(&log, first_dirty, map_bytes, 0);
        passes += 1;
        assert!(passes < 50, "passes make progress");
    }
    assert!(passes > 2, "{passes} passes");
    check(&log, &latest, true);
}

#[test]
fn a_clean_the_log_changed_under_is_given_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), config()).expect("open");
    let mut latest = BTreeMap::new();
    fill(&log, 600, 50, 1_000, &mut latest);
    log.roll().expect("roll");
    let to = log.clean_bound(u64::MAX);
    let aborted = Aborted::default();
    let mut map = OffsetMap::with_memory(1 << 20, 0);
    log.map_dirty(&mut map, to, &aborted, &mut |_| {})
        .expect("map");
    // DeleteRecords moves the log start while the pass runs: it must not bring data back.
    let second = log.segments()[1].base_offset;
    let mut moved = false;
    let mut io = |_| {
        if !std::mem::replace(&mut moved, true) {
            log.delete_before(second).expect("delete records");
        }
    };
    let done = log
        .clean_with(&map, &aborted, 0, 0, to, &mut io)
        .expect("clean")
        .expect("something to clean");
    assert!(!done.applied);
    assert_eq!(log.log_start_offset(), second);
    assert!(records(&log).iter().all(|r| r.offset >= second));
    assert!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("list")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cleaned") || n.ends_with(".swap") || n.ends_with(".swapped"))
        .collect()
}

/// What an upload reads of a segment is one version of it: files opened together before a
/// swap keep the old bytes of every file, log and indexes alike, after it.
#[test]
fn files_opened_before_a_swap_read_the_old_version_of_every_file() {
    use std::io::Read;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), config()).expect("open");
    let mut latest = BTreeMap::new();
    fill(&log, 600, 20, 1_000, &mut latest);
    log.roll().expect("roll");
    let first = log.segments()[0].clone();
    let before: Vec<Vec<u8>> = first
        .files()
        .iter()
        .map(|(_, p)| std::fs::read(p).expect("read"))
        .collect();
    let open = log
        .open_segment(first.base_offset)
        .expect("open")
        .expect("the segment");
    assert_eq!(open.info, first);
    clean(&log, 0, 1 << 20, 0);
    assert_ne!(
        std::fs::read(&first.log_path).expect("read the new file"),
        before[0],
        "the swap replaced the file under its name"
    );
    for ((_, mut file), old) in open.files.into_iter().zip(&before) {
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).expect("read");
        assert_eq!(&bytes, old);
    }
    assert_ne!(
        log.open_segment(first.base_offset)
            .expect("open")
            .expect("the segment")
            .info,
        first,
        "an upload that listed the old segment sees that it changed"
    );
}

/// DeleteRecords may leave the log start inside the first segment; cleaning goes on, and
/// nothing below the log start comes back, before or after a reopen.
#[test]
fn a_log_start_inside_the_first_segment_does_not_stop_cleaning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), config()).expect("open");
    let mut latest = BTreeMap::new();
    fill(&log, 600, 50, 1_000, &mut latest);
    log.roll().expect("roll");
    let first = log.segments()[0].clone();
    // A batch boundary (batches hold three records): reads start at a whole batch.
    let inside = first.base_offset + (first.next_offset - first.base_offset) / 6 * 3;
    assert_eq!(log.delete_before(inside).expect("delete records"), inside);
    clean(&log, 0, 1 << 20, 0);
    assert_eq!(log.log_start_offset(), inside);
    assert!(records(&log).iter().all(|r| r.offset >= inside));
    drop(log);
    let log = Log::open(dir.path(), config()).expect("reopen");
    assert_eq!(log.log_start_offset(), inside);
    assert!(records(&log).iter().all(|r| r.offset >= inside));
}
