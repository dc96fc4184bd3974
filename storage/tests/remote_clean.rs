//! Compaction in object storage: uploaded segments are rewritten under new object keys and
//! replaced in one manifest version; a replay from offset 0 reads the latest value per key,
//! readers of the old manifest keep working until orphan cleanup, and a crash before the
//! commit leaves the old manifest intact.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStoreExt;
use object_store::memory::InMemory;
use object_store::path::Path;
use strata_storage::SegmentFile;
use strata_storage::compact::{Aborted, OffsetMap, decode};
use strata_storage::tier::compact::{RemotePass, compact_remote, map_remote};
use strata_storage::tier::manifest::{Manifest, PartitionObjects};
use strata_storage::tier::read::{CacheConfig, RemoteReader};
use strata_storage::tier::retention::clean_orphans;
use strata_storage::tier::upload::{ProducersAt, upload_sealed, upload_sealed_below};
use strata_storage::{BatchBuilder, Log, LogConfig, Record};
use uuid::Uuid;

type Latest = BTreeMap<Vec<u8>, Option<Vec<u8>>>;
/// A record as a replay returns it: offset, key, value.
type Replayed = (u64, Vec<u8>, Option<Vec<u8>>);

/// A log of `n` updates over `keys` keys (every 5th a delete) in small segments, all sealed
/// and uploaded.
async fn uploaded(
    dir: &std::path::Path,
    n: usize,
    keys: usize,
) -> (Log, PartitionObjects, Arc<Manifest>, Latest) {
    let (log, latest) = written(dir, n, keys, 4096);
    let objects =
        PartitionObjects::new(Arc::new(InMemory::new()), &Path::from("r"), Uuid::nil(), 0);
    let m = upload_sealed(&log, &objects, 1).await.expect("upload");
    (log, objects, m, latest)
}

/// The first `n` of one sequence of updates over `keys` keys (every 5th a delete), rolled
/// every `segment_bytes` and sealed, with the latest value per key.
fn written(dir: &std::path::Path, n: usize, keys: usize, segment_bytes: u64) -> (Log, Latest) {
    let log = Log::open(
        dir,
        LogConfig {
            segment_bytes,
            segment_ms: None,
            retention_ms: None,
            ..LogConfig::default()
        },
    )
    .expect("open");
    let mut latest = Latest::new();
    for i in 0..n {
        let key = format!("k{}", (i * 31) % keys).into_bytes();
        let value = (i % 5 != 4).then(|| format!("value-{i}").into_bytes());
        latest.insert(key.clone(), value.clone());
        let b = BatchBuilder::new()
            .record(Record {
                key: Some(key),
                value,
                headers: Vec::new(),
                timestamp: 1_000 + i as i64,
            })
            .build();
        log.append(&b, 1).expect("append");
    }
    log.roll().expect("roll");
    log.flush().expect("flush");
    (log, latest)
}

async fn reader() -> RemoteReader {
    RemoteReader::open(CacheConfig {
        chunk_bytes: 2048,
        memory_bytes: 1 << 20,
        ..CacheConfig::default()
    })
    .await
    .expect("reader")
}

/// Every record a replay of the remote segments from offset 0 returns.
async fn replay(reader: &RemoteReader, objects: &PartitionObjects, m: &Manifest) -> Vec<Replayed> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < m.end_offset() {
        let bytes = reader
            .read(objects, m, offset, 1 << 16)
            .await
            .expect("read")
            .into_bytes();
        if bytes.is_empty() {
            break;
        }
        for (_, b) in common::split(&bytes) {
            for r in decode(&b).expect("decodes") {
                offset = r.offset + 1;
                out.push((r.offset, r.key.expect("keyed"), r.value));
            }
        }
    }
    out
}

async fn pass(
    reader: &RemoteReader,
    objects: &PartitionObjects,
    m: &Manifest,
    first_dirty: u64,
    horizon: i64,
    scratch: &std::path::Path,
) -> Arc<Manifest> {
    pass_merging(reader, objects, m, first_dirty, horizon, scratch, 16 * 1024).await
}

/// [`pass`] merging runs of segments up to `segment_bytes`.
async fn pass_merging(
    reader: &RemoteReader,
    objects: &PartitionObjects,
    m: &Manifest,
    first_dirty: u64,
    horizon: i64,
    scratch: &std::path::Path,
    segment_bytes: u64,
) -> Arc<Manifest> {
    let mut map = OffsetMap::with_memory(1 << 20, first_dirty);
    let aborted = Aborted::default();
    let to = m.end_offset();
    map_remote(reader, objects, m, &mut map, to, &aborted, &mut |_| {})
        .await
        .expect("map");
    let done = compact_remote(
        reader,
        objects,
        &RemotePass {
            map: &map,
            aborted: &aborted,
            clean_below: first_dirty,
            delete_horizon_ms: horizon,
            to,
            segment_bytes,
            epoch: m.leader_epoch,
            scratch,
            uploads: &tokio::sync::Mutex::new(()),
        },
        map.end(),
        &mut |_| {},
        |_| {},
    )
    .await
    .expect("compact")
    .expect("something to clean");
    assert!(done.segments_out < done.segments_in, "runs merge");
    done.manifest
}

fn as_map(records: &[Replayed]) -> Latest {
    records
        .iter()
        .map(|(_, k, v)| (k.clone(), v.clone()))
        .collect()
}

#[tokio::test]
async fn a_remote_clean_leaves_the_latest_value_per_key_and_old_readers_keep_reading() {
    let dir = tempfile::tempdir().expect("tempdir");
    let scratch = dir.path().join("scratch");
    let (_log, objects, before, latest) = uploaded(&dir.path().join("log"), 2_000, 50).await;
    assert!(before.segments.len() > 20);
    let reader = reader().await;
    let old = replay(&reader, &objects, &before).await;
    assert_eq!(old.len(), 2_000);

    let after = pass(&reader, &objects, &before, 0, 0, &scratch).await;
    assert_eq!(after.cleaned_offset, 2_000);
    assert_eq!(after.end_offset(), before.end_offset(), "the range stays");
    let got = replay(&reader, &objects, &after).await;
    assert_eq!(
        got.len(),
        latest.len(),
        "one record per key, tombstones included"
    );
    assert_eq!(as_map(&got), latest);
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "offsets rise");
    assert!(after.segments.iter().all(|s| s.generation == 1));

    // A reader that still holds the old manifest reads the old objects until they are
    // orphans past the grace period.
    assert_eq!(replay(&reader, &objects, &before).await.len(), 2_000);
    let removed = clean_orphans(&objects, &after, Duration::ZERO)
        .await
        .expect("orphans");
    assert!(
        removed >= before.segments.len(),
        "{removed} objects removed"
    );
    for s in &after.segments {
        objects
            .store()
            .head(&s.key(&objects, strata_storage::SegmentFile::Log))
            .await
            .expect("the new objects stay");
    }

    // A later pass, once the tombstones are clean and old, drops them.
    let last = pass(&reader, &objects, &after, 2_000, i64::MAX, &scratch).await;
    let got = replay(&reader, &objects, &last).await;
    let live: Latest = latest.into_iter().filter(|(_, v)| v.is_some()).collect();
    assert_eq!(as_map(&got), live);
    // Compaction's generations are odd, above those it replaces.
    assert!(last.segments.iter().all(|s| s.generation == 3));
}

#[tokio::test]
async fn a_remote_clean_that_dies_before_its_commit_leaves_the_manifest_as_it_was() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_log, objects, before, _) = uploaded(&dir.path().join("log"), 600, 20).await;
    // Objects of a new generation uploaded, the commit never made: what a crash leaves.
    let store = objects.store().clone();
    for s in &before.segments {
        let mut next = s.as_ref().clone();
        next.generation = 1;
        let key = next.key(&objects, strata_storage::SegmentFile::Log);
        store
            .put(&key, b"half-written".to_vec().into())
            .await
            .expect("put");
    }
    let reader = reader().await;
    let current = objects.latest().await.expect("latest").expect("a manifest");
    assert_eq!(current, before);
    assert_eq!(replay(&reader, &objects, &current).await.len(), 600);
    // The next pass overwrites the leftovers and commits.
    let after = pass(&reader, &objects, &current, 0, 0, &dir.path().join("s")).await;
    assert_eq!(as_map(&replay(&reader, &objects, &after).await).len(), 20);
}

/// The uploader listed a segment before the local clean swapped in its cleaned copy, and
/// commits the dirty one while a remote pass runs: the pass cleans it before it records the
/// partition clean. (Before, it stayed dirty below `cleaned_offset`, and since nothing was
/// dirty any more, for good.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_uploaded_during_a_remote_clean_is_cleaned_before_its_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, latest) = written(&dir.path().join("log"), 2_000, 50, 4096);
    let objects =
        PartitionObjects::new(Arc::new(InMemory::new()), &Path::from("r"), Uuid::nil(), 0);
    let half = upload_sealed_below(&log, &objects, 1, 1_000, &|_| Default::default())
        .await
        .expect("first half");
    assert!(half.end_offset() < 1_000);
    // The pass's map covers the whole log (in the broker, the local pass maps it).
    let all = PartitionObjects::new(
        Arc::new(InMemory::new()),
        &Path::from("all"),
        Uuid::from_u128(1),
        0,
    );
    let whole = upload_sealed(&log, &all, 1).await.expect("whole");
    let to = whole.end_offset();
    let mut map = OffsetMap::with_memory(1 << 20, 0);
    let aborted = Aborted::default();
    map_remote(
        &reader().await,
        &all,
        &whole,
        &mut map,
        to,
        &aborted,
        &mut |_| {},
    )
    .await
    .expect("map");
    let reader = reader().await;
    let scratch = dir.path().join("scratch");
    let uploads = tokio::sync::Mutex::new(());
    let mut uploaded_meanwhile = false;
    let runtime = tokio::runtime::Handle::current();
    let mut io = |_| {
        if !std::mem::replace(&mut uploaded_meanwhile, true) {
            tokio::task::block_in_place(|| runtime.block_on(upload_sealed(&log, &objects, 1)))
                .expect("second half");
        }
    };
    let done = compact_remote(
        &reader,
        &objects,
        &RemotePass {
            map: &map,
            aborted: &aborted,
            clean_below: 0,
            delete_horizon_ms: 0,
            to,
            segment_bytes: 16 * 1024,
            epoch: 1,
            scratch: &scratch,
            uploads: &uploads,
        },
        map.end(),
        &mut io,
        |_| {},
    )
    .await
    .expect("compact")
    .expect("something to clean");
    assert!(uploaded_meanwhile);
    let m = done.manifest;
    assert_eq!((m.end_offset(), m.cleaned_offset), (to, to));
    let got = replay(&reader, &objects, &m).await;
    assert_eq!(got.len(), latest.len(), "one record per key");
    assert_eq!(as_map(&got), latest);
}

/// A rewritten run keeps the producer snapshot of its last segment (the producers' state
/// at the run's end, which is the new segment's end), for a replica that continues there.
#[tokio::test]
async fn a_remote_clean_keeps_the_producer_snapshot_at_a_runs_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = written(&dir.path().join("log"), 600, 20, 4096);
    let objects =
        PartitionObjects::new(Arc::new(InMemory::new()), &Path::from("r"), Uuid::nil(), 0);
    let at = |end: u64| ProducersAt {
        open_txns: Vec::new(),
        snapshot: Some(format!("state at {end}").into_bytes()),
    };
    let before = upload_sealed_below(&log, &objects, 1, u64::MAX, &at)
        .await
        .expect("upload");
    let snapshot = SegmentFile::ProducerSnapshot;
    assert!(before.segments.iter().all(|s| s.has(snapshot)));
    let reader = reader().await;
    let after = pass(&reader, &objects, &before, 0, 0, &dir.path().join("s")).await;
    let last = after.segments.last().expect("segments");
    assert!(last.generation > 0, "rewritten");
    let got = objects
        .producer_snapshot_at_end(&after)
        .await
        .expect("read")
        .expect("kept");
    assert_eq!(&got[..], format!("state at {}", last.end_offset).as_bytes());
}

/// Two replicas cut one history into segments at different points, and each uploaded as
/// leader: the second's first new segment overlaps the first's last. A clean reads the
/// overlapped batches once (before, it wrote them twice into the merged segment).
#[tokio::test]
async fn a_remote_clean_of_overlapping_segments_keeps_each_offset_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (first, _) = written(&dir.path().join("a"), 600, 700, 4096);
    let (second, latest) = written(&dir.path().join("b"), 1_000, 700, 2500);
    let objects =
        PartitionObjects::new(Arc::new(InMemory::new()), &Path::from("r"), Uuid::nil(), 0);
    upload_sealed(&first, &objects, 1).await.expect("first");
    let before = upload_sealed(&second, &objects, 2).await.expect("second");
    assert!(
        before
            .segments
            .windows(2)
            .any(|w| w[1].base_offset < w[0].end_offset),
        "the segments overlap: {:?}",
        before.segments
    );
    let reader = reader().await;
    let all = replay(&reader, &objects, &before).await;
    assert_eq!(all.len(), 1_000);

    // Into segments of about the same size, and into one.
    for merge in [16 * 1024, 1 << 30] {
        let scratch = dir.path().join("s");
        let after = pass_merging(&reader, &objects, &before, 0, 0, &scratch, merge).await;
        let got = replay(&reader, &objects, &after).await;
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "offsets rise");
        assert_eq!(got.len(), latest.len(), "one record per key");
        assert_eq!(as_map(&got), latest);
    }
}
