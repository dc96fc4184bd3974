//! The replica's append: a follower's log copies its leader's batches with their offsets,
//! epochs and timestamps, and a copy of a compacted leader (batches missing, so gaps between
//! offsets) reads and recovers like a dense one.

mod common;

use strata_storage::{BatchError, Log, LogConfig, StorageError, TimestampType};

fn config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        segment_ms: None,
        retention_ms: None,
        ..LogConfig::default()
    }
}

/// A leader log with `n` batches written under epochs 1 then 3, stamped with log-append time;
/// returns the log and its batches as stored (offsets and epochs assigned).
fn leader(dir: &std::path::Path, n: usize) -> (Log, Vec<(i64, Vec<u8>)>) {
    let log = Log::open(
        dir,
        LogConfig {
            timestamp_type: TimestampType::LogAppendTime,
            ..config(1 << 20)
        },
    )
    .expect("open");
    for i in 0..n {
        let epoch = if i < n / 2 { 1 } else { 3 };
        let b = common::batch(&[(50 + i * 7, 1_000 + i as i64), (10, 1_000 + i as i64)]);
        log.append(&b, epoch).expect("append");
    }
    let batches = common::split(&log.read(0, usize::MAX / 2).expect("read"));
    (log, batches)
}

/// `batches` with every third one from the second gone, as compaction can leave a log.
fn compacted(batches: &[(i64, Vec<u8>)]) -> Vec<&(i64, Vec<u8>)> {
    batches
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 1)
        .map(|(_, b)| b)
        .collect()
}

#[test]
fn a_replica_keeps_the_leaders_offsets_epochs_and_timestamps() {
    let (l, f) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let (leader, batches) = leader(l.path(), 40);
    let follower = Log::open(f.path(), config(2048)).expect("open");
    // Fetched in chunks of several batches, as a follower's Fetch returns them.
    for chunk in batches.chunks(3) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|(_, b)| b.clone()).collect();
        let info = follower.append_replica(&bytes).expect("replicated");
        assert_eq!(info.first_offset as i64, chunk[0].0);
        assert_eq!(info.log_append_time, None, "the leader's times are kept");
    }
    assert!(
        follower.segments().len() > 1,
        "rolled on its own segment size"
    );
    assert_eq!(follower.log_end_offset(), leader.log_end_offset());
    common::assert_same_batches(
        &follower.read(0, usize::MAX / 2).expect("read"),
        &leader.read(0, usize::MAX / 2).expect("read"),
        "the copy",
    );
    // Promoted, it appends as a leader from where the copy ends.
    let info = follower.append(&common::one(10, 5_000), 4).expect("append");
    assert_eq!(info.first_offset, leader.log_end_offset());
}

#[test]
fn batches_at_or_behind_the_log_end_are_refused_and_change_nothing() {
    let (l, f) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let (_leader, batches) = leader(l.path(), 6);
    let follower = Log::open(f.path(), config(1 << 20)).expect("open");
    follower.append_replica(&batches[0].1).expect("first");
    let again = follower.append_replica(&batches[0].1);
    assert!(matches!(
        again,
        Err(StorageError::InvalidBatch(BatchError::OffsetBehind {
            offset: 0,
            expected: 2,
            ..
        }))
    ));
    // Out of order within one append: the whole append is refused.
    let swapped: Vec<u8> = [&batches[2].1, &batches[1].1]
        .into_iter()
        .flatten()
        .copied()
        .collect();
    assert!(matches!(
        follower.append_replica(&swapped),
        Err(StorageError::InvalidBatch(BatchError::OffsetBehind { .. }))
    ));
    // A damaged batch is refused like a leader's.
    let mut bad = batches[1].1.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(matches!(
        follower.append_replica(&bad),
        Err(StorageError::InvalidBatch(BatchError::BadCrc { .. }))
    ));
    assert_eq!(follower.log_end_offset(), 2);
    assert!(
        !f.path().join("offset-gaps").exists(),
        "a dense copy is not marked"
    );
}

#[test]
fn a_copy_with_gaps_reads_across_them_and_recovers_them() {
    let (l, f) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let (_leader, batches) = leader(l.path(), 60);
    // What compaction leaves: some batches gone, so offsets jump.
    let kept = compacted(&batches);
    let follower = Log::open(f.path(), config(1024)).expect("open");
    // Chunks of three start after a missing batch, so rolled segments begin past a gap too.
    for chunk in kept.chunks(3) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|(_, b)| b.clone()).collect();
        follower.append_replica(&bytes).expect("replicated");
    }
    assert!(f.path().join("offset-gaps").exists());
    let segments = follower.segments();
    assert!(segments.len() > 3);
    assert!(
        segments
            .windows(2)
            .any(|w| w[0].next_offset < w[1].base_offset),
        "some segment starts after a gap"
    );
    let expected: Vec<u8> = kept.iter().flat_map(|(_, b)| b.clone()).collect();
    let end = follower.log_end_offset();
    // Every offset, in a batch or in a gap, reads from the batch holding it or the next one.
    let check = |log: &Log, what: &str| {
        common::assert_same_batches(&log.read(0, usize::MAX / 2).expect("read"), &expected, what);
        for offset in 0..end {
            let first = common::split(&log.read(offset, 1).expect("read"))[0].clone();
            let want = kept
                .iter()
                .find(|(_, b)| {
                    let h = strata_storage::BatchHeader::parse(b).expect("header");
                    offset <= h.last_offset() as u64
                })
                .expect("a batch at or after it");
            assert_eq!(first.0, want.0, "{what}: read at {offset}");
        }
    };
    check(&follower, "before the crash");
    drop(follower);
    // A crash that lost the checkpoint (if one was written yet: a new log writes it at its
    // first fsync): every segment is validated again, gaps and all.
    let _ = std::fs::remove_file(f.path().join("log.checkpoint"));
    let reopened = Log::open(f.path(), config(1024)).expect("reopen");
    assert_eq!(reopened.log_end_offset(), end);
    check(&reopened, "after recovery");
}

#[test]
fn an_empty_copy_starts_where_the_first_batch_does() {
    let (l, f) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let (_leader, batches) = leader(l.path(), 30);
    let follower = Log::open(f.path(), config(1 << 20)).expect("open");
    let (base, first) = &batches[20];
    follower.append_replica(first).expect("replicated");
    assert_eq!(follower.segments()[0].base_offset, *base as u64);
    assert_eq!(follower.log_end_offset(), *base as u64 + 2);
    drop(follower);
    let reopened = Log::open(f.path(), config(1 << 20)).expect("reopen");
    assert_eq!(reopened.log_end_offset(), *base as u64 + 2);
    assert_eq!(
        common::split(&reopened.read(*base as u64, 1 << 20).expect("read"))[0].1,
        *first
    );
}

/// Truncation (a follower cutting its log back to the leader's) at an offset inside a gap
/// removes every batch at or after it and ends the log where the last kept batch ends (Kafka
/// keeps the offset asked for as its log end until a restart, which then ends it at the batch
/// too; Strata does the same at once). Inside a batch it cuts at that batch. Either way later
/// batches append, and the log reopens as it was.
#[test]
fn truncating_inside_a_gap_ends_the_log_after_the_last_kept_batch() {
    let (l, f) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let (_leader, batches) = leader(l.path(), 30);
    // Batch i holds offsets 2i and 2i+1; every third from the second is gone.
    let kept = compacted(&batches);
    let follower = Log::open(f.path(), config(700)).expect("open");
    for (_, b) in &kept {
        follower.append_replica(b).expect("replicated");
    }
    assert!(follower.segments().len() > 2);
    let below = |log: &Log, offset: u64| -> Vec<i64> {
        let bytes = log.read(0, usize::MAX / 2).expect("read");
        common::split(&bytes)
            .into_iter()
            .map(|(base, _)| base)
            .inspect(|base| assert!((*base as u64) < offset, "batch {base} at or past {offset}"))
            .collect()
    };

    // In a gap between segments (the next one starts after it): the later segments go whole.
    let segments = follower.segments();
    let at = segments
        .windows(2)
        .rposition(|w| w[0].next_offset < w[1].base_offset)
        .expect("a segment that starts after a gap");
    let (kept_end, next_base) = (segments[at].next_offset, segments[at + 1].base_offset);
    assert!(kept_end > 41, "above the cuts below");
    assert_eq!(
        follower.truncate_to(next_base - 1).expect("truncate"),
        kept_end
    );
    assert_eq!(follower.segments().len(), at + 1);
    // Inside a batch: cut at its base.
    assert_eq!(follower.truncate_to(41).expect("truncate"), 40);
    assert_eq!(follower.log_end_offset(), 40);
    // Inside the gap 38..40 after batch 36..38 (batch 19 was dropped): the log ends at 38.
    assert_eq!(follower.truncate_to(39).expect("truncate"), 38);
    assert_eq!(follower.log_end_offset(), 38);
    assert_eq!(below(&follower, 38).last(), Some(&36));
    // Inside the gap 2..4 near the start: the first batch alone stays.
    assert_eq!(follower.truncate_to(3).expect("truncate"), 2);
    assert_eq!(below(&follower, 2), vec![0]);
    // The leader's next batches append after the cut, past the gap they leave.
    for (_, b) in kept.iter().skip(1).take(4) {
        follower.append_replica(b).expect("appended after the cut");
    }
    let end = follower.log_end_offset();
    assert_eq!(end, 14);
    drop(follower);
    let reopened = Log::open(f.path(), config(700)).expect("reopen");
    assert_eq!(reopened.log_end_offset(), end);
    assert_eq!(below(&reopened, end), vec![0, 4, 6, 10, 12]);
}
