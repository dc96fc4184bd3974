//! Logs whose active segments write with direct I/O (`strata_storage::direct`): they hold,
//! serve and reopen what was appended exactly as buffered ones do, cleanly, after a crash and
//! after a truncation. Every test here turns direct writes on (the setting is process-wide,
//! and this file is a process of its own) and none turns them off.

mod common;

use std::fs;
use std::path::Path;

use strata_storage::direct::{probe, set_direct_writes};
use strata_storage::{FlushPolicy, Log, LogConfig};

const BLOCK: u64 = 4096;

/// A new log in a temporary directory, with direct writes on; `None` (the test is skipped,
/// saying so) where the directory's filesystem takes none.
fn open_direct(flush: FlushPolicy) -> Option<(tempfile::TempDir, Log)> {
    let dir = tempfile::tempdir().expect("dir");
    set_direct_writes(true);
    if let Err(e) = probe(dir.path()) {
        eprintln!(
            "skipped: {} takes no direct writes ({e})",
            dir.path().display()
        );
        return None;
    }
    let log = Log::open(dir.path(), config(flush)).expect("open");
    Some((dir, log))
}

fn config(flush: FlushPolicy) -> LogConfig {
    LogConfig {
        segment_bytes: 20_000,
        segment_ms: None,
        index_interval_bytes: 512,
        retention_ms: None,
        flush,
        ..LogConfig::default()
    }
}

/// Batches of sizes that start and end anywhere in a block, span several, or are tiny.
fn batches(count: usize, seed: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let len = [7, 3_000, 5_100, 9_000, 40, 4_000][(i + seed) % 6];
            common::batch(&[(len, 1_000 + i as i64), (13, 1_000 + i as i64)])
        })
        .collect()
}

/// `batch` as the log holds it: its base offset and leader epoch stamped (outside the CRC).
fn stamped(batch: &[u8], base_offset: u64, epoch: i32) -> Vec<u8> {
    let mut out = batch.to_vec();
    out[..8].copy_from_slice(&(base_offset as i64).to_be_bytes());
    out[12..16].copy_from_slice(&epoch.to_be_bytes());
    out
}

/// Appends `batches` and returns what the log should hold for them.
fn append_all(log: &Log, batches: &[Vec<u8>]) -> Vec<u8> {
    let mut expected = Vec::new();
    for b in batches {
        let info = log.append(b, 3).expect("append");
        let want = stamped(b, info.first_offset, 3);
        let got = log.read(info.first_offset, 1).expect("read");
        common::assert_same_batches(&got, &want, "read back at once");
        expected.extend_from_slice(&want);
    }
    expected
}

/// Asserts that `log` holds exactly `expected`, read from its start.
fn assert_holds(log: &Log, expected: &[u8], what: &str) {
    let all = log.read(0, usize::MAX / 2).expect("read");
    common::assert_same_batches(&all, expected, what);
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).expect("stat").len()
}

#[test]
fn reads_rolls_and_a_clean_reopen_hold_every_batch() {
    let Some((dir, log)) = open_direct(FlushPolicy::EveryAppend) else {
        return;
    };
    let mut expected = append_all(&log, &batches(40, 0));
    let segments = log.segments();
    assert!(segments.len() >= 4, "rolled: {}", segments.len());
    let (active, sealed) = segments.split_last().expect("active");
    for s in sealed {
        assert_eq!(
            file_len(&s.log_path),
            s.size_bytes,
            "sealing cut the padding"
        );
    }
    assert!(
        !active.size_bytes.is_multiple_of(BLOCK),
        "the scenario ends inside a block"
    );
    assert_eq!(
        file_len(&active.log_path),
        active.size_bytes.next_multiple_of(BLOCK),
        "the active segment is written in whole blocks, so direct I/O wrote it"
    );
    assert_holds(&log, &expected, "all");
    log.close().expect("close");

    let log = Log::open(dir.path(), config(FlushPolicy::EveryAppend)).expect("reopen");
    let active = log.segments().pop().expect("active");
    assert_eq!(
        file_len(&active.log_path),
        active.size_bytes,
        "a clean stop leaves no padding"
    );
    assert_holds(&log, &expected, "after");
    expected.extend_from_slice(&append_all(&log, &batches(9, 1)));
    assert_holds(&log, &expected, "more");
}

#[test]
fn a_crash_keeps_every_synced_batch_and_cuts_the_padding() {
    let Some((dir, log)) = open_direct(FlushPolicy::EveryAppend) else {
        return;
    };
    let mut expected = append_all(&log, &batches(23, 2));
    let active = log.segments().pop().expect("active");
    assert!(file_len(&active.log_path) > active.size_bytes, "padded");
    drop(log); // killed: no close, no checkpoint past the last flush

    let log = Log::open(dir.path(), config(FlushPolicy::EveryAppend)).expect("reopen");
    let reopened = log.segments().pop().expect("active");
    assert_eq!(reopened.size_bytes, active.size_bytes);
    assert_eq!(file_len(&reopened.log_path), reopened.size_bytes, "cut");
    assert_holds(&log, &expected, "kept");
    expected.extend_from_slice(&append_all(&log, &batches(5, 3)));
    assert_holds(&log, &expected, "more");
}

/// A crash can leave a sealed segment with its padding (the cut made as it was sealed had not
/// reached the disk, while later appends had): the padding goes, the segments after it stay.
#[test]
fn a_sealed_segment_still_padded_after_a_crash_keeps_the_segments_after_it() {
    let Some((dir, log)) = open_direct(FlushPolicy::EveryAppend) else {
        return;
    };
    let expected = append_all(&log, &batches(30, 6));
    let segments = log.segments();
    assert!(segments.len() >= 3, "rolled: {}", segments.len());
    drop(log); // killed
    let sealed = segments
        .iter()
        .find(|s| !s.size_bytes.is_multiple_of(BLOCK))
        .expect("a sealed segment ending inside a block");
    let file = fs::OpenOptions::new()
        .write(true)
        .open(&sealed.log_path)
        .expect("open");
    file.set_len(sealed.size_bytes.next_multiple_of(BLOCK))
        .expect("pad");
    // The checkpoint is removed too, so every segment is validated as after a crash.
    fs::remove_file(dir.path().join("log.checkpoint")).expect("no checkpoint");

    let log = Log::open(dir.path(), config(FlushPolicy::EveryAppend)).expect("reopen");
    assert_eq!(log.segments().len(), segments.len(), "no segment dropped");
    assert_eq!(file_len(&sealed.log_path), sealed.size_bytes, "padding cut");
    assert_holds(&log, &expected, "kept");
}

#[test]
fn appends_after_a_truncation_continue_from_the_cut() {
    let Some((dir, log)) = open_direct(FlushPolicy::Os) else {
        return;
    };
    let all = batches(12, 4);
    let expected = append_all(&log, &all);
    let segments = log.segments();
    let active = segments.last().expect("active");
    // Cut inside the active segment, at its second batch: the rewritten block starts there.
    let cut = active.base_offset + 2;
    assert!(cut < log.log_end_offset());
    assert_eq!(log.truncate_to(cut).expect("truncate"), cut);
    let kept = common::split(&expected)
        .into_iter()
        .take_while(|(o, _)| (*o as u64) < cut)
        .flat_map(|(_, b)| b)
        .collect::<Vec<u8>>();
    let mut expected = kept;
    expected.extend_from_slice(&append_all(&log, &batches(4, 5)));
    assert_holds(&log, &expected, "cut");
    log.close().expect("close");
    let log = Log::open(dir.path(), config(FlushPolicy::Os)).expect("reopen");
    assert_holds(&log, &expected, "after");
}
