//! The cost of a partition manifest as its remote history grows: a partition whose manifest
//! names 1,000, 10,000 and 100,000 segments (years of segments at a few an hour), on a real
//! S3-compatible HTTP server (s3s-fs, in-process on loopback), through object_store as the
//! broker uses it.
//!
//! `cargo bench -p strata-tests --bench manifest` (sizes: `STRATA_BENCH_SEGMENTS`, default
//! `1000,10000,100000`; commits timed per size: `STRATA_BENCH_COMMITS`, default 20).
//!
//! Figures per size:
//! - upload commit: one more segment committed by the broker that keeps the manifest (what
//!   each uploaded segment costs): time, and bytes put and read per commit;
//! - cold load: the newest manifest read by a broker that has none in memory, with its
//!   leader-epoch history (what an empty-disk recovery and a new leader start with): time
//!   and bytes read;
//! - warm check: the newest manifest read again when nothing changed (each tiering pass);
//! - time lookup: choosing the first segment whose records reach a timestamp in the middle
//!   (ListOffsets by time, before it reads that segment's index).

#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use object_store::path::Path;
use strata_storage::SegmentFile;
use strata_storage::tier::manifest::{Manifest, PartitionObjects, RemoteSegment};
use strata_storage::tier::metered::{MeteredStore, StoreMetrics};
use strata_tests::s3::S3Server;
use uuid::Uuid;

mod common;

use common::BenchResult;

const BUCKET: &str = "strata-bench";
/// Offsets per segment and milliseconds between segments' last records.
const RECORDS: u64 = 100_000;
const SPACING_MS: i64 = 600_000;

fn main() -> BenchResult<()> {
    common::block_on(run())
}

async fn run() -> BenchResult<()> {
    let sizes = common::env_list("STRATA_BENCH_SEGMENTS", &[1_000, 10_000, 100_000]);
    let commits: u64 = common::env_or("STRATA_BENCH_COMMITS", 20);
    let s3 = S3Server::start().await;
    s3.create_bucket(BUCKET).await;
    println!(
        "s3s-fs {} (in-process, loopback); one partition's manifest; {commits} commits per size",
        s3.endpoint()
    );
    println!(
        "{:>8} | {:>24} | {:>26} | {:>24} | {:>10} | {:>11}",
        "segments",
        "commit p50 / max",
        "per commit put / get",
        "cold load",
        "warm check",
        "time lookup"
    );
    for n in sizes {
        let topic = Uuid::new_v4();
        let (objects, metrics) = partition(&s3, topic);
        objects
            .commit(1, |_| Manifest {
                segments: (0..n).map(|i| Arc::new(segment(i))).collect(),
                ..Manifest::default()
            })
            .await?;

        let mut times = Vec::new();
        let (put0, get0) = (metrics.bytes("put"), metrics.bytes("get"));
        for i in 0..commits {
            let next = segment(n + i);
            let started = Instant::now();
            objects.commit(1, |m| m.with_segment(next.clone())).await?;
            times.push(started.elapsed());
        }
        let put = (metrics.bytes("put") - put0) / commits.max(1);
        let get = (metrics.bytes("get") - get0) / commits.max(1);
        times.sort_unstable();
        let p50 = times.get(times.len() / 2).copied().unwrap_or_default();
        let max = times.last().copied().unwrap_or_default();

        let (cold, cold_metrics) = partition(&s3, topic);
        let started = Instant::now();
        let manifest = cold.latest().await?.ok_or("no manifest")?;
        // What recovery takes from it besides the end: the leader-epoch history.
        let epochs = manifest.leader_epochs();
        let cold_time = started.elapsed();
        assert_eq!(epochs, vec![(1, 0)]);
        let cold_bytes = cold_metrics.bytes("get");
        assert_eq!(manifest.segments.len() as u64, n + commits);

        let started = Instant::now();
        cold.latest().await?;
        let warm = started.elapsed();

        let middle = segment(n / 2).max_timestamp - SPACING_MS / 2;
        let started = Instant::now();
        let found = manifest.reaching(middle).next().map(|s| s.base_offset);
        let lookup = started.elapsed();
        assert_eq!(found, Some(n / 2 * RECORDS));

        println!(
            "{n:>8} | {:>24} | {:>26} | {:>24} | {:>10} | {:>11}",
            format!("{} / {}", ms(p50), ms(max)),
            format!("{} / {}", kib(put), kib(get)),
            format!("{} ({})", ms(cold_time), kib(cold_bytes)),
            ms(warm),
            ms(lookup),
        );
    }
    Ok(())
}

/// A partition of topic `topic` in the bench bucket, through a store that counts its bytes.
fn partition(s3: &S3Server, topic: Uuid) -> (PartitionObjects, StoreMetrics) {
    let metrics = StoreMetrics::default();
    let store: Arc<dyn ObjectStore> =
        Arc::new(MeteredStore::new(s3.store(BUCKET), metrics.clone()));
    let objects = PartitionObjects::new(store, &Path::from("bench"), topic, 0);
    (objects, metrics)
}

/// The `i`th segment of the partition, as an upload records it.
fn segment(i: u64) -> RemoteSegment {
    let base = i * RECORDS;
    RemoteSegment {
        base_offset: base,
        end_offset: base + RECORDS,
        max_timestamp: 1_700_000_000_000 + i as i64 * SPACING_MS,
        size_bytes: 100 << 20,
        leader_epoch: 1,
        epochs: vec![(1, base)],
        last_batch_crc: i as u32,
        files: vec![
            SegmentFile::Log,
            SegmentFile::OffsetIndex,
            SegmentFile::TimeIndex,
            SegmentFile::ProducerSnapshot,
        ],
        open_txns: Vec::new(),
        generation: 0,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn kib(bytes: u64) -> String {
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}
