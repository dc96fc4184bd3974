//! The log cleaner: how fast it cleans a log locally and in object storage, what memory its
//! key map takes, and what a clean running on the broker does to a producer's latency.
//!
//! 1. A log of `COMPACT_MIB` MiB (default 256) of 1 KiB records over 10,000 keys (one in ten
//!    a tombstone), in 16 MiB segments, cleaned by `Log::map_dirty` + `clean_with` with the
//!    broker's default map (128 MiB bound) and with a small one (256 KiB: several passes);
//!    then the same log uploaded to an S3 server (s3s-fs, in-process, loopback) and cleaned
//!    there by `map_remote` + `compact_remote`. MB/s is of the log read.
//! 2. An in-process broker: a producer sends 1 KiB records at 5,000/s (acks=all) for 4 s
//!    while nothing else runs, then while the cleaner compacts a `COMPACT_MIB` MiB topic
//!    written just before: as fast as it goes (the default), and on a second broker held to
//!    64 MB/s so it spans the window; end-to-end latency of each window, and when the clean
//!    ended.
//!
//! `cargo bench -p strata-tests --bench compaction` (`COMPACT_MIB=1024` for 1 GiB).

#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use strata_storage::compact::{Aborted, FilterStats, MAP_ENTRY_BYTES, OffsetMap};
use strata_storage::tier::compact::{RemotePass, compact_remote, map_remote};
use strata_storage::tier::manifest::PartitionObjects;
use strata_storage::tier::read::{CacheConfig, RemoteReader};
use strata_storage::tier::upload::upload_sealed;
use strata_storage::{BatchBuilder, Log, LogConfig, Record};
use strata_tests::s3::S3Server;

mod common;

use common::{BenchResult, RECORD_BYTES, create_topic, print_latencies};

const KEYS: usize = 10_000;
const SEGMENT_BYTES: u64 = 16 << 20;
/// `cleaner.io_max_bytes_per_second` of the broker part's second run (so the clean spans
/// the measured window).
const CLEAN_RATE: u64 = 64_000_000;

fn main() -> BenchResult<()> {
    common::block_on(run())
}

async fn run() -> BenchResult<()> {
    let mib: u64 = common::env_or("COMPACT_MIB", 256);
    println!("{mib} MiB of {RECORD_BYTES}-byte records over {KEYS} keys, one in ten a tombstone");
    let dir = tempfile::tempdir()?;
    for (what, map_bytes) in [
        ("default map (128 MiB)", 128 << 20),
        ("256 KiB map", 256 << 10),
    ] {
        let log = fill(&dir.path().join(format!("log-{map_bytes}")), mib)?;
        let started = Instant::now();
        let (stats, passes, keys) = clean_locally(&log, map_bytes)?;
        report(&format!("local, {what}"), &stats, started.elapsed(), passes);
        println!(
            "{:<40} map of {keys} keys: {:.2} MiB (bound {:.2} MiB)",
            "",
            (keys * MAP_ENTRY_BYTES) as f64 / (1 << 20) as f64,
            map_bytes as f64 / (1 << 20) as f64
        );
    }
    remote(dir.path(), mib).await?;
    produce_during_clean(mib, 0).await?;
    produce_during_clean(mib, CLEAN_RATE).await
}

/// A log of `mib` MiB of keyed updates, sealed.
fn fill(dir: &std::path::Path, mib: u64) -> BenchResult<Log> {
    let log = Log::open(
        dir,
        LogConfig {
            segment_bytes: SEGMENT_BYTES,
            segment_ms: None,
            retention_ms: None,
            ..LogConfig::default()
        },
    )?;
    let records = (mib << 20) / RECORD_BYTES as u64;
    let value = vec![b'v'; RECORD_BYTES - 32];
    let mut i = 0u64;
    while i < records {
        let mut b = BatchBuilder::new();
        for _ in 0..16 {
            b = b.record(Record {
                key: Some(format!("key-{:05}", (i * 7919) % KEYS as u64).into_bytes()),
                value: (i % 10 != 9).then(|| value.clone()),
                headers: Vec::new(),
                timestamp: 1_000 + i as i64,
            });
            i += 1;
        }
        log.append(&b.build(), 1)?;
    }
    log.roll()?;
    log.flush()?;
    Ok(log)
}

/// Cleans everything sealed, in as many passes as the map needs.
fn clean_locally(log: &Log, map_bytes: usize) -> BenchResult<(FilterStats, u32, usize)> {
    let to = log.clean_bound(u64::MAX);
    let aborted = log.aborted_below(to)?;
    let (mut first_dirty, mut passes, mut keys) = (0, 0, 0);
    let mut total = FilterStats::default();
    while first_dirty < to {
        let mut map = OffsetMap::with_memory(map_bytes, first_dirty);
        log.map_dirty(&mut map, to, &aborted, &mut |_| {})?;
        let done = log
            .clean_with(&map, &aborted, first_dirty, 0, to, &mut |_| {})?
            .ok_or("nothing to clean")?;
        if passes == 0 {
            // The log's size: what MB/s is of, however many passes it takes.
            total.bytes_in = done.stats.bytes_in;
            total.records_in = done.stats.records_in;
        }
        total.bytes_out = done.stats.bytes_out;
        total.records_out = done.stats.records_out;
        keys = keys.max(map.len());
        first_dirty = map.end();
        passes += 1;
    }
    Ok((total, passes, keys))
}

/// Uploads a fresh log to the S3 server and cleans it there.
async fn remote(dir: &std::path::Path, mib: u64) -> BenchResult<()> {
    let s3 = S3Server::start().await;
    s3.create_bucket("bench").await;
    let objects = PartitionObjects::new(
        s3.store("bench"),
        &object_store::path::Path::from("compaction"),
        uuid::Uuid::new_v4(),
        0,
    );
    let log = fill(&dir.join("remote"), mib)?;
    upload_sealed(&log, &objects, 1).await?;
    let manifest = objects.latest().await?.ok_or("no manifest")?;
    let reader = RemoteReader::open(CacheConfig::default()).await?;
    let to = manifest.end_offset();
    let aborted = Aborted::default();
    let started = Instant::now();
    let mut map = OffsetMap::with_memory(128 << 20, 0);
    map_remote(
        &reader,
        &objects,
        &manifest,
        &mut map,
        to,
        &aborted,
        &mut |_| {},
    )
    .await?;
    let scratch = dir.join("scratch");
    let pass = RemotePass {
        map: &map,
        aborted: &aborted,
        clean_below: 0,
        delete_horizon_ms: 0,
        to,
        segment_bytes: SEGMENT_BYTES,
        epoch: 1,
        scratch: &scratch,
        uploads: &tokio::sync::Mutex::new(()),
    };
    let done = compact_remote(&reader, &objects, &pass, map.end(), &mut |_| {}, |_| {})
        .await?
        .ok_or("nothing to clean remotely")?;
    report(
        &format!("remote, {} segments", done.segments_in),
        &done.stats,
        started.elapsed(),
        1,
    );
    Ok(())
}

/// Producer latency alone, then while a clean of a `mib` MiB topic runs at `clean_rate`
/// bytes/s (0: as fast as it goes, the default).
async fn produce_during_clean(mib: u64, clean_rate: u64) -> BenchResult<()> {
    let broker = strata_tests::TestBroker::start_with(move |c| {
        c.cleaner.backoff_ms = 200;
        c.cleaner.io_max_bytes_per_second = clean_rate;
    })
    .await;
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "load", 1, 1, &[]).await?;
    let kept = [
        ("retention.ms", "-1".to_owned()),
        ("segment.bytes", SEGMENT_BYTES.to_string()),
        ("min.cleanable.dirty.ratio", "0.01".to_owned()),
        ("remote.storage.enable", "false".to_owned()),
    ];
    create_topic(&bootstrap, "table", 1, 1, &kept).await?;
    let producer = common::producer(&bootstrap, "5")?;
    let records = (mib << 20) / RECORD_BYTES as u64;
    let value = vec![b'v'; RECORD_BYTES];
    let mut pending = Vec::new();
    for i in 0..records {
        let key = format!("key-{:05}", (i * 7919) % KEYS as u64);
        pending.push(
            producer
                .send_result(
                    rdkafka::producer::FutureRecord::to("table")
                        .key(&key)
                        .payload(&value),
                )
                .map_err(|(e, _)| e)?,
        );
        if pending.len() >= 20_000 {
            for f in pending.drain(..) {
                f.await?.map_err(|(e, _)| e)?;
            }
        }
    }
    for f in pending.drain(..) {
        f.await?.map_err(|(e, _)| e)?;
    }
    // The last records must be in a sealed segment to be cleaned.
    let client = strata_client::Client::connect(&bootstrap).await?;
    let roll = BTreeMap::from([("segment.ms".to_owned(), "1".to_owned())]);
    client.alter_topic_config("table", &roll, &[]).await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let marker = vec![b'm'; 16];
    producer
        .send(
            rdkafka::producer::FutureRecord::to("table")
                .key("marker")
                .payload(&marker),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    // The table's writes settle (the flusher's fsyncs, the page cache's writeback) first.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (rate, seconds) = (5_000, 4);
    let alone = common::end_to_end(&bootstrap, "load", 1, rate, seconds).await?;
    print_latencies("produce e2e, no clean", alone);
    let compact = BTreeMap::from([("cleanup.policy".to_owned(), "compact".to_owned())]);
    client.alter_topic_config("table", &compact, &[]).await?;
    let started = Instant::now();
    let during = common::end_to_end(&bootstrap, "load", 1, rate, seconds).await?;
    let what = match clean_rate {
        0 => "produce e2e, clean unthrottled".to_owned(),
        r => format!("produce e2e, clean at {} MB/s", r / 1_000_000),
    };
    print_latencies(&what, during);
    // When the clean ended, against the window of `seconds` that began with it.
    let deadline = Instant::now() + Duration::from_secs(600);
    let finished_ms = loop {
        let dirs = client.log_dirs("table").await?;
        let view = dirs
            .first()
            .and_then(|d| d.cleaner)
            .ok_or("no cleaner view")?;
        if let Some(t) = view.last_clean_ms {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            break started.elapsed().as_millis() as i64 - (now - t);
        }
        if Instant::now() > deadline {
            return Err("the clean did not finish".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "{:<40} the clean of {mib} MiB ended {:.1} s after it was switched on ({seconds} s window)",
        "",
        finished_ms as f64 / 1e3
    );
    broker.stop().await;
    Ok(())
}

fn report(what: &str, s: &FilterStats, took: Duration, passes: u32) {
    let secs = took.as_secs_f64();
    println!(
        "{what:<40} {:>8.1} MB/s  {:.1} MB → {:.2} MB, {} → {} records, {passes} pass(es), {:.2} s",
        s.bytes_in as f64 / secs / 1e6,
        s.bytes_in as f64 / 1e6,
        s.bytes_out as f64 / 1e6,
        s.records_in,
        s.records_out,
        secs
    );
}
