//! Replacing a run of sealed segments with rewritten ones (what compaction does): the log
//! holds the old segments or the new ones, whatever point a crash interrupts the swap at.

mod common;

use std::path::Path;

use strata_storage::{Log, LogConfig, PreparedRewrite};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 1024,
        segment_ms: None,
        retention_ms: None,
        ..LogConfig::default()
    }
}

/// A log of many small segments; returns it, its batches, and the rewrite range (the bases of
/// its second and fifth segments).
fn log(dir: &Path) -> (Log, Vec<(i64, Vec<u8>)>, u64, u64) {
    let log = Log::open(dir, config()).expect("open");
    for i in 0..40 {
        log.append(&common::batch(&[(100 + i * 3, 1_000 + i as i64)]), 1)
            .expect("append");
    }
    let batches = common::split(&log.read(0, usize::MAX / 2).expect("read"));
    let segments = log.segments();
    assert!(segments.len() > 6);
    let (from, to) = (segments[1].base_offset, segments[4].base_offset);
    (log, batches, from, to)
}

/// What the log holds after the range is compacted: every other batch inside it dropped.
fn compacted(batches: &[(i64, Vec<u8>)], from: u64, to: u64) -> Vec<(i64, Vec<u8>)> {
    batches
        .iter()
        .filter(|(base, _)| !(from..to).contains(&(*base as u64)) || base % 2 == 0)
        .cloned()
        .collect()
}

/// Writes the compacted range and passes the commit point.
fn prepare(log: &Log, batches: &[(i64, Vec<u8>)], from: u64, to: u64) -> PreparedRewrite {
    let mut rewrite = log.rewrite_segments(from, to).expect("rewrite");
    for (base, bytes) in batches {
        if (from..to).contains(&(*base as u64)) && base % 2 == 0 {
            rewrite.append(bytes).expect("append");
        }
    }
    rewrite.prepare().expect("prepare")
}

fn holds(log: &Log, expected: &[(i64, Vec<u8>)], what: &str) {
    let want: Vec<u8> = expected.iter().flat_map(|(_, b)| b.clone()).collect();
    common::assert_same_batches(&log.read(0, usize::MAX / 2).expect("read"), &want, what);
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cleaned") || n.ends_with(".swap") || n.ends_with(".swapped"))
        .collect()
}

#[test]
fn a_rewrite_replaces_the_range_and_the_log_carries_on() {
    let dir = tempfile::tempdir().expect("dir");
    let (log, batches, from, to) = log(dir.path());
    let end = log.log_end_offset();
    let prepared = prepare(&log, &batches, from, to);
    log.apply_rewrite(prepared).expect("apply");
    let want = compacted(&batches, from, to);
    holds(&log, &want, "after the swap");
    assert_eq!(log.log_end_offset(), end);
    assert!(leftovers(dir.path()).is_empty());
    let info = log.append(&common::one(10, 9), 2).expect("append");
    assert_eq!(info.first_offset, end);
    drop(log);
    let log = Log::open(dir.path(), config()).expect("reopen");
    let mut want = want;
    want.push((end as i64, Vec::new()));
    let got = common::split(&log.read(0, usize::MAX / 2).expect("read"));
    assert_eq!(
        got.len(),
        want.len(),
        "the swap and the append survive a reopen"
    );
    // Refused: a range that is not a run of sealed segments.
    let inside = log.segments()[0].base_offset + 1;
    assert!(log.rewrite_segments(inside, to).is_err());
    assert!(
        log.rewrite_segments(from, log.log_end_offset() + 5)
            .is_err()
    );
}

#[test]
fn a_crash_before_the_commit_point_leaves_the_old_segments() {
    let dir = tempfile::tempdir().expect("dir");
    let (log, batches, from, to) = log(dir.path());
    let mut rewrite = log.rewrite_segments(from, to).expect("rewrite");
    let first = batches
        .iter()
        .find(|(b, _)| *b as u64 == from)
        .expect("batch");
    rewrite.append(&first.1).expect("append");
    drop(rewrite);
    drop(log); // the crash
    assert!(!leftovers(dir.path()).is_empty());
    let log = Log::open(dir.path(), config()).expect("reopen");
    holds(&log, &batches, "old segments stand");
    assert!(leftovers(dir.path()).is_empty(), "the new files are gone");
}

#[test]
fn a_crash_after_the_commit_point_is_completed_on_open() {
    let dir = tempfile::tempdir().expect("dir");
    let (log, batches, from, to) = log(dir.path());
    let prepared = prepare(&log, &batches, from, to);
    // A prepared swap blocks another until applied.
    assert!(log.rewrite_segments(from, to).is_err());
    let _ = prepared; // never applied: the process dies first
    drop(log); // the crash
    let log = Log::open(dir.path(), config()).expect("reopen");
    holds(&log, &compacted(&batches, from, to), "completed on open");
    assert!(leftovers(dir.path()).is_empty());
}

#[test]
fn a_crash_while_completing_is_completed_on_open() {
    for renamed in [0usize, 1] {
        let dir = tempfile::tempdir().expect("dir");
        let (log, batches, from, to) = log(dir.path());
        let old: Vec<_> = log
            .segments()
            .into_iter()
            .filter(|s| (from..to).contains(&s.base_offset))
            .collect();
        let prepared = prepare(&log, &batches, from, to);
        let _ = prepared; // never applied: the process dies first
        drop(log);
        // Part of the completion, done as the log does it, then the crash.
        let name = |base: u64, ext: &str| dir.path().join(format!("{base:020}.{ext}"));
        let marker = dir.path().join(format!("{from:020}-{to:020}.swap"));
        if renamed == 0 {
            // Half the old segments deleted.
            std::fs::remove_file(&old[0].log_path).expect("delete");
        } else {
            // Every old segment deleted, the marker moved on, one new file in place.
            for s in &old {
                std::fs::remove_file(&s.log_path).expect("delete");
            }
            let swapped = dir.path().join(format!("{from:020}-{to:020}.swapped"));
            std::fs::rename(&marker, &swapped).expect("rename");
            // The first new file takes the name of the first segment it replaces.
            std::fs::rename(name(from, "log.cleaned"), name(from, "log")).expect("rename");
        }
        let log = Log::open(dir.path(), config()).expect("reopen");
        holds(
            &log,
            &compacted(&batches, from, to),
            &format!("completed after crash {renamed}"),
        );
        assert!(leftovers(dir.path()).is_empty());
    }
}
