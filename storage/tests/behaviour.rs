//! Focused behaviours of the log: roll triggers, lookups by time, log-append time, flush
//! policies, and concurrent appenders and readers.

mod common;

use std::sync::Arc;
use std::time::Duration;

use strata_storage::{BatchHeader, FlushPolicy, Log, LogConfig, ManualClock, TimestampType};

fn config() -> LogConfig {
    LogConfig {
        segment_ms: None,
        retention_ms: None,
        ..LogConfig::default()
    }
}

#[test]
fn segment_rolls_only_when_the_next_append_would_exceed_segment_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let one = common::one(100, 1);
    let len = one.len() as u64;
    let log = Log::open(
        dir.path(),
        LogConfig {
            segment_bytes: 3 * len,
            ..config()
        },
    )
    .expect("open");
    for _ in 0..3 {
        log.append(&one.clone(), 0).expect("append");
    }
    assert_eq!(log.segments().len(), 1, "three batches fit exactly");
    log.append(&one.clone(), 0).expect("append");
    let segs = log.segments();
    assert_eq!(segs.len(), 2);
    assert_eq!((segs[0].next_offset, segs[0].size_bytes), (3, 3 * len));
    assert!(segs[0].sealed && !segs[1].sealed);
    assert_eq!(segs[0].first_timestamp, Some(1));
    assert_eq!(segs[0].max_timestamp, Some(1));
}

#[test]
fn segment_rolls_once_its_first_batch_is_segment_ms_old() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(1_000_000));
    let cfg = LogConfig {
        segment_ms: Some(Duration::from_millis(500)),
        ..config()
    };
    let log = Log::open_with_clock(dir.path(), cfg.clone(), clock.clone()).expect("open");
    log.append(&common::one(10, 1_000_000), 0).expect("append");
    clock.advance(499);
    log.append(&common::one(10, 1_000_499), 0).expect("append");
    assert_eq!(log.segments().len(), 1);
    clock.advance(1);
    log.append(&common::one(10, 1_000_500), 0).expect("append");
    assert_eq!(log.segments().len(), 2);
    // The age survives a reopen: it is the first batch's timestamp, as in Kafka.
    drop(log);
    let log = Log::open_with_clock(dir.path(), cfg, clock.clone()).expect("reopen");
    clock.advance(500);
    log.append(&common::one(10, 1_001_000), 0).expect("append");
    assert_eq!(log.segments().len(), 3);
}

#[test]
fn records_stamped_long_ago_roll_by_their_own_timestamps_not_the_wall_clock() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A year after the records' timestamps, as when a topic is migrated or replayed in.
    let clock = Arc::new(ManualClock::new(1_000_000 + 365 * 24 * 3_600_000));
    let cfg = LogConfig {
        segment_ms: Some(Duration::from_millis(500)),
        ..config()
    };
    let log = Log::open_with_clock(dir.path(), cfg, clock.clone()).expect("open");
    for ts in [1_000_000, 1_000_100, 1_000_499] {
        log.append(&common::one(10, ts), 0).expect("append");
    }
    assert_eq!(log.segments().len(), 1, "old timestamps alone do not roll");
    log.append(&common::one(10, 1_000_500), 0).expect("append");
    assert_eq!(log.segments().len(), 2);
    // Records without a timestamp (-1) age by the wall clock since the segment was opened.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open_with_clock(
        dir.path(),
        LogConfig {
            segment_ms: Some(Duration::from_millis(500)),
            ..config()
        },
        clock.clone(),
    )
    .expect("open");
    log.append(&common::one(10, -1), 0).expect("append");
    clock.advance(499);
    log.append(&common::one(10, -1), 0).expect("append");
    assert_eq!(log.segments().len(), 1);
    clock.advance(1);
    log.append(&common::one(10, -1), 0).expect("append");
    assert_eq!(log.segments().len(), 2);
}

#[test]
fn offset_for_timestamp_finds_the_first_record_at_or_after_every_timestamp() {
    for interval in [1, 700, 4096] {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Log::open(
            dir.path(),
            LogConfig {
                segment_bytes: 6_000,
                index_interval_bytes: interval,
                ..config()
            },
        )
        .expect("open");
        // Rising timestamps with pseudo-random steps of 0, 1 or 2 ms, three records per batch,
        // so index entries land both 1 ms and several ms apart.
        let mut stamps = Vec::new();
        let mut ts = 10_000i64;
        let mut seed = 12_345u64;
        for _ in 0..150 {
            let recs: Vec<(usize, i64)> = (0..3)
                .map(|_| {
                    seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    ts += ((seed >> 33) % 3) as i64;
                    (50, ts)
                })
                .collect();
            stamps.extend(recs.iter().map(|r| r.1));
            log.append(&common::batch(&recs), 0).expect("append");
        }
        assert!(log.segments().len() > 3);
        for target in 9_990..=ts + 2 {
            let want = stamps.iter().position(|&t| t >= target).map(|p| p as u64);
            assert_eq!(
                log.offset_for_timestamp(target).expect("lookup"),
                want,
                "interval {interval}, ts {target}"
            );
        }
        let max_at = stamps.iter().position(|&t| t == ts).expect("max") as u64;
        assert_eq!(log.max_timestamp().expect("max"), Some((ts, max_at)));
    }
}

#[test]
fn log_append_time_stamps_the_broker_clock_and_keeps_the_crc_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(77_000));
    let log = Log::open_with_clock(
        dir.path(),
        LogConfig {
            timestamp_type: TimestampType::LogAppendTime,
            ..config()
        },
        clock,
    )
    .expect("open");
    let info = log
        .append(&common::batch(&[(10, 5), (10, 6)]), 9)
        .expect("append");
    assert_eq!(info.log_append_time, Some(77_000));
    assert_eq!(info.max_timestamp, 77_000);
    let bytes = log.read(0, 1 << 20).expect("read");
    let h = BatchHeader::parse(&bytes).expect("header");
    assert!(h.is_log_append_time());
    assert_eq!((h.max_timestamp, h.partition_leader_epoch), (77_000, 9));
    assert_eq!(crc32c::crc32c(&bytes[21..h.total_len()]), h.crc);
    assert_eq!(log.offset_for_timestamp(77_000).expect("lookup"), Some(0));
}

#[test]
fn create_time_max_timestamp_is_corrected_from_the_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), config()).expect("open");
    let mut b = common::batch(&[(10, 500), (10, 900)]);
    b[35..43].copy_from_slice(&100i64.to_be_bytes()); // a producer that lied
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    assert_eq!(log.append(&b, 0).expect("append").max_timestamp, 900);
    assert_eq!(log.max_timestamp().expect("max"), Some((900, 1)));
}

#[test]
fn flush_policies_decide_when_appends_become_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(0));
    let cfg = LogConfig {
        flush: FlushPolicy::Os,
        ..config()
    };
    let log = Log::open_with_clock(dir.path(), cfg.clone(), clock.clone()).expect("open");
    log.append(&common::one(10, 0), 0).expect("append");
    assert_eq!(log.durable_offset(), 0, "left to the OS");
    log.flush().expect("flush");
    assert_eq!(log.durable_offset(), 1);

    log.set_config(LogConfig {
        flush: FlushPolicy::Interval(Duration::from_millis(100)),
        ..cfg.clone()
    })
    .expect("config");
    clock.advance(50);
    log.append(&common::one(10, 0), 0).expect("append");
    assert_eq!(log.durable_offset(), 1, "interval not yet due");
    clock.advance(50);
    log.maybe_flush().expect("timer");
    assert_eq!(log.durable_offset(), 2, "due at 100 ms");

    log.set_config(LogConfig {
        flush: FlushPolicy::EveryAppend,
        ..cfg
    })
    .expect("config");
    log.append(&common::one(10, 0), 0).expect("append");
    assert_eq!(log.durable_offset(), 3, "every append");
}

#[test]
fn flush_messages_bounds_the_records_not_yet_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(
        dir.path(),
        LogConfig {
            flush_messages: Some(3),
            ..config()
        },
    )
    .expect("open");
    log.append(&common::one(10, 0), 0).expect("append");
    log.append(&common::one(10, 0), 0).expect("append");
    assert_eq!(log.durable_offset(), 0, "two records below flush.messages");
    log.append(&common::one(10, 0), 0).expect("append");
    assert_eq!(log.durable_offset(), 3, "the third forces an fsync");
    log.append(&common::one(10, 0), 0).expect("append");
    assert_eq!(log.durable_offset(), 3);
}

#[test]
fn sealed_segments_become_durable_on_a_timer_without_any_fsyncing_append() {
    let dir = tempfile::tempdir().expect("tempdir");
    let one = common::one(100, 1);
    let log = Log::open(
        dir.path(),
        LogConfig {
            segment_bytes: one.len() as u64,
            ..config()
        },
    )
    .expect("open");
    for _ in 0..3 {
        log.append(&one.clone(), 0).expect("append");
    }
    assert_eq!(
        log.durable_offset(),
        0,
        "rolls under the OS policy do not fsync"
    );
    assert!(log.flush_sealed().expect("flush sealed"));
    assert!(
        log.durable_offset() >= 2,
        "both sealed segments are durable"
    );
    assert!(!log.flush_sealed().expect("again"), "nothing left to sync");
    // The recovery point moved with them: a reopen trusts them.
    drop(log);
    let log = Log::open(dir.path(), config()).expect("reopen");
    assert_eq!(log.log_end_offset(), 3);
}

#[test]
fn concurrent_appenders_with_group_commit_get_contiguous_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(
        Log::open(
            dir.path(),
            LogConfig {
                flush: FlushPolicy::EveryAppend,
                segment_bytes: 64 * 1024,
                ..config()
            },
        )
        .expect("open"),
    );
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                (0..50)
                    .map(|i| {
                        let info = log
                            .append(&common::batch(&[(200, t), (200, i)]), 0)
                            .expect("append");
                        // Acknowledged means durable.
                        assert!(log.durable_offset() > info.last_offset);
                        info.first_offset
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut firsts: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("thread"))
        .collect();
    firsts.sort_unstable();
    assert_eq!(firsts, (0..200).map(|i| i * 2).collect::<Vec<_>>());
    let all = common::split(&log.read(0, usize::MAX / 2).expect("read"));
    assert_eq!(all.len(), 200);
}

#[test]
fn readers_racing_a_writer_always_see_whole_contiguous_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(
        Log::open(
            dir.path(),
            LogConfig {
                segment_bytes: 16 * 1024,
                index_interval_bytes: 256,
                ..config()
            },
        )
        .expect("open"),
    );
    let writer = {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            for i in 0..2_000 {
                log.append(&common::batch(&[(i % 300, i as i64), (7, 0)]), 0)
                    .expect("append");
            }
        })
    };
    let mut reads = 0;
    while !writer.is_finished() || reads == 0 {
        let end = log.log_end_offset();
        let from = end / 2;
        let bytes = log.read(from, 8 * 1024).expect("read");
        let batches = common::split(&bytes);
        if end > 0 {
            assert!(!batches.is_empty());
            assert!(batches[0].0 as u64 <= from && from < batches[0].0 as u64 + 2);
        }
        for pair in batches.windows(2) {
            assert_eq!(pair[1].0, pair[0].0 + 2, "contiguous offsets");
        }
        reads += 1;
    }
    writer.join().expect("writer");
    assert_eq!(log.log_end_offset(), 4_000);
}
