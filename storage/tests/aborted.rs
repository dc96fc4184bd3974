//! The log's aborted-transaction indexes: entries go to the segment holding their marker,
//! a query walks segments from the fetch offset until it is complete, truncation and
//! retention take entries with their segments, a reopen keeps them, and only segments with
//! an abort list a `.txnindex` file for upload.

mod common;

use strata_storage::{AbortedTxn, Log, LogConfig, SegmentFile};

fn txn(producer_id: i64, first: u64, last: u64, lso: u64) -> AbortedTxn {
    AbortedTxn {
        producer_id,
        first_offset: first,
        last_offset: last,
        last_stable_offset: lso,
    }
}

#[test]
fn aborted_transactions_follow_their_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        segment_bytes: 8192,
        segment_ms: None,
        retention_ms: None,
        ..LogConfig::default()
    };
    let log = Log::open(dir.path(), config.clone()).expect("open");
    // 1 KiB batches: four segments of about seven batches each.
    for i in 0..24 {
        log.append(&common::one(1000, i), 0).expect("append");
    }
    let segments = log.segments();
    assert!(segments.len() >= 4, "{} segments", segments.len());
    let second = segments[1].base_offset;
    let third = segments[2].base_offset;
    assert!(second > 3);
    assert!(log.append_aborted(txn(1, 0, 2, 3)).is_ok());
    assert!(log.append_aborted(txn(2, 3, second, second + 1)).is_ok());
    assert!(log.append_aborted(txn(3, second, third, 100)).is_ok());
    assert!(
        log.append_aborted(txn(4, 0, 99, 100)).is_err(),
        "past the log end"
    );

    // Records 0..3: the first transaction's, and the log was stable at 3 once it was
    // aborted, so the search ends there; 0..4 also takes the second, from the next segment.
    assert_eq!(log.aborted_txns(0, 3).expect("query"), [txn(1, 0, 2, 3)]);
    assert_eq!(
        log.aborted_txns(0, 4).expect("query"),
        [txn(1, 0, 2, 3), txn(2, 3, second, second + 1)]
    );
    assert_eq!(
        log.aborted_txns(second, third + 1).expect("query"),
        [txn(2, 3, second, second + 1), txn(3, second, third, 100)]
    );
    let listed: Vec<bool> = log
        .segments()
        .iter()
        .map(|s| s.files().iter().any(|(f, _)| *f == SegmentFile::TxnIndex))
        .collect();
    assert_eq!(listed[..3], [true, true, true]);
    assert!(
        !listed[3],
        "a segment without aborts has no index to upload"
    );

    // Kept across a reopen; a truncation into the third segment drops its entry.
    drop(log);
    let log = Log::open(dir.path(), config.clone()).expect("reopen");
    assert_eq!(log.aborted_txns(third, third + 1).expect("query").len(), 1);
    log.truncate_to(third).expect("truncate");
    assert!(log.aborted_txns(second, u64::MAX).expect("query")[1..].is_empty());
    // Retention deletes the first segment and its index file with it.
    let first_index = dir.path().join(format!("{:020}.txnindex", 0));
    assert!(first_index.exists());
    log.delete_before(second).expect("delete");
    assert!(!first_index.exists());
    // A replay from `second` forgets what it will record again.
    log.truncate_aborted(second).expect("truncate entries");
    assert!(
        log.aborted_txns(second, u64::MAX)
            .expect("query")
            .is_empty()
    );
}
