//! Throughput of the partition log's hot paths, printed by criterion as bytes per second:
//!
//! - `append/no_fsync`: 1 KiB records in ~16 KiB batches, flush left to the OS;
//! - `append/group_commit_fsync/{1,4}_writers`: the same batches with an fsync before each
//!   append returns, shared between concurrent writers;
//! - `read/sequential`: 1 MiB reads streaming through a log that sits in the page cache.
//!
//! Run with `cargo bench -p strata-storage --bench log`. Appending keeps the log bounded with
//! retention, so the figures measure the log and not the disk's writeback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use strata_storage::{BatchBuilder, FlushPolicy, Log, LogConfig};

const RECORD: usize = 1024;
const RECORDS_PER_BATCH: usize = 16;

fn batch() -> Vec<u8> {
    let mut b = BatchBuilder::new();
    for i in 0..RECORDS_PER_BATCH {
        let value = vec![(i % 251) as u8; RECORD];
        b = b.value(
            Some(format!("key-{i:04}").as_bytes()),
            &value,
            1_700_000_000_000,
        );
    }
    b.build()
}

fn config(flush: FlushPolicy) -> LogConfig {
    LogConfig {
        segment_bytes: 128 << 20,
        retention_bytes: Some(512 << 20),
        retention_ms: None,
        segment_ms: None,
        flush,
        ..LogConfig::default()
    }
}

/// Appends `count` copies of `buf`, applying retention every 128 MiB so the log stays bounded.
fn append_many(log: &Log, buf: &mut [u8], count: u64) {
    let every = (128 << 20) / buf.len() as u64;
    for i in 0..count {
        log.append(buf, 0).expect("append");
        if i % every == every - 1 {
            log.apply_retention().expect("retention");
        }
    }
}

fn append(c: &mut Criterion) {
    let template = batch();
    let mut group = c.benchmark_group("append");
    group.throughput(Throughput::Bytes(template.len() as u64));

    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), config(FlushPolicy::Os)).expect("open");
    let mut buf = template.clone();
    group.bench_function("no_fsync", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            append_many(&log, &mut buf, iters);
            start.elapsed()
        })
    });
    drop(log);

    for writers in [1u64, 4] {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Arc::new(Log::open(dir.path(), config(FlushPolicy::EveryAppend)).expect("open"));
        group.bench_function(format!("group_commit_fsync/{writers}_writers"), |b| {
            b.iter_custom(|iters| {
                let per_writer = iters.div_ceil(writers);
                let start = Instant::now();
                std::thread::scope(|s| {
                    for _ in 0..writers {
                        let log = &log;
                        let mut buf = template.clone();
                        s.spawn(move || append_many(log, &mut buf, per_writer));
                    }
                });
                // Report time per append actually made.
                start
                    .elapsed()
                    .mul_f64(iters as f64 / (per_writer * writers) as f64)
            })
        });
    }
    group.finish();
}

fn read(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(
        dir.path(),
        LogConfig {
            retention_bytes: None,
            ..config(FlushPolicy::Os)
        },
    )
    .expect("open");
    let mut buf = batch();
    let batches = (512u64 << 20) / buf.len() as u64;
    append_many(&log, &mut buf, batches);
    let end = log.log_end_offset();
    let max_bytes = 1 << 20;
    let per_read = log.read(0, max_bytes).expect("read").len() as u64;

    let mut group = c.benchmark_group("read");
    group.throughput(Throughput::Bytes(per_read));
    let mut next = 0u64;
    group.bench_function("sequential", |b| {
        b.iter(|| {
            let bytes = log.read(next, max_bytes).expect("read");
            next += (bytes.len() / buf.len() * RECORDS_PER_BATCH) as u64;
            if next >= end {
                next = 0;
            }
            bytes
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8));
    targets = append, read
}
criterion_main!(benches);
