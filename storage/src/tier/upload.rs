//! Uploading sealed segments and committing them to the partition manifest.

use std::path::Path as FsPath;
use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::io::AsyncReadExt;

use super::TierError;
use super::manifest::{Manifest, OpenTxn, PartitionObjects, RemoteSegment, Writer};
use crate::{Log, SegmentFile, SegmentInfo};

/// Files above this size go up as multipart uploads of this part size.
pub const MULTIPART_PART: usize = 8 << 20;

/// Uploads every sealed, durable segment of `log` that reaches past what the manifest holds,
/// and commits each one as leader of `epoch` (objects first, manifest after, so a manifest
/// never names a missing object). Returns the newest manifest.
///
/// What the object store holds is committed history, the same on every replica whatever
/// their segment boundaries, so a segment that ends within it is not uploaded again; one that
/// straddles its end is, and overlaps the last remote segments (see
/// [`Manifest::with_segment`]).
pub async fn upload_sealed(
    log: &Log,
    objects: &PartitionObjects,
    epoch: i32,
) -> Result<Arc<Manifest>, TierError> {
    upload_sealed_below(log, objects, epoch, u64::MAX, &|_| ProducersAt::default()).await
}

/// What the broker's producer state knows as of a segment's end, recorded with the segment
/// for a replica that continues from there.
#[derive(Debug, Default)]
pub struct ProducersAt {
    /// The transactions open there (in the manifest).
    pub open_txns: Vec<OpenTxn>,
    /// The idempotent producers' state, encoded (the segment's
    /// [`SegmentFile::ProducerSnapshot`] object); `None` when there is none to keep.
    pub snapshot: Option<Vec<u8>>,
}

/// [`upload_sealed`] of the segments that end at or below `upto`: a replicated partition's
/// leader uploads only what every in-sync replica holds (its high watermark), so no uploaded
/// batch can be cut away by a leader change. `producers_at(end)` answers what the producer
/// state knows at a segment's end, uploaded with the segment.
pub async fn upload_sealed_below(
    log: &Log,
    objects: &PartitionObjects,
    epoch: i32,
    upto: u64,
    producers_at: &(dyn Fn(u64) -> ProducersAt + Send + Sync),
) -> Result<Arc<Manifest>, TierError> {
    let mut manifest = objects.latest().await?.unwrap_or_default();
    let durable = log.durable_offset().min(upto);
    let all = log.segments();
    // A segment's range runs to the next one's base: past its last batch when compaction
    // left a gap at its end, which the remote copy must cover too, or an offset in that gap
    // would be neither remote nor local once the segment is evicted.
    let range_end = |seg: &SegmentInfo| {
        all.windows(2)
            .find(|w| w[0].base_offset == seg.base_offset)
            .map_or(seg.next_offset, |w| w[1].base_offset.max(seg.next_offset))
    };
    let sealed: Vec<SegmentInfo> = all
        .iter()
        .filter(|s| {
            s.sealed
                && s.next_offset > s.base_offset
                && s.next_offset <= durable
                && s.next_offset > manifest.end_offset()
        })
        .cloned()
        .collect();
    for listed in sealed {
        // Its files as one version: the cleaner may have swapped the segment since it was
        // listed (then the next pass lists it again).
        let local = |source| TierError::Local {
            path: listed.log_path.clone(),
            source,
        };
        let open = log
            .open_segment(listed.base_offset)
            .map_err(|e| local(std::io::Error::other(e.to_string())))?;
        let Some(open) = open.filter(|o| o.info == listed) else {
            break;
        };
        let seg = open.info;
        let mut handles = open.files;
        let log_file = handles
            .iter()
            .find(|(kind, _)| *kind == SegmentFile::Log)
            .map(|(_, f)| f.try_clone())
            .transpose()
            .map_err(local)?
            .ok_or_else(|| local(std::io::Error::other("a segment without its log")))?;
        let (epochs, crc) = segment_epochs(log_file, seg.log_path.clone(), seg.size_bytes).await?;
        // A segment the cleaner merged locally may start where an uploaded one does: a new
        // generation keeps the objects readers of the current manifest use as they are.
        let end = range_end(&seg);
        let generation = manifest.generation_for(seg.base_offset, end, Writer::Upload);
        let mut files = Vec::new();
        for (file, handle) in handles.drain(..) {
            let path = seg
                .files()
                .into_iter()
                .find(|(kind, _)| *kind == file)
                .map_or_else(|| seg.log_path.clone(), |(_, p)| p.to_owned());
            upload_file(
                objects,
                objects.object_key(seg.base_offset, epoch, generation, file),
                handle,
                &path,
            )
            .await?;
            files.push(file);
        }
        let producers = producers_at(end);
        if let Some(snapshot) = producers.snapshot {
            let key = objects.object_key(
                seg.base_offset,
                epoch,
                generation,
                SegmentFile::ProducerSnapshot,
            );
            objects
                .store()
                .put(&key, PutPayload::from(snapshot))
                .await?;
            files.push(SegmentFile::ProducerSnapshot);
        }
        let remote = RemoteSegment {
            base_offset: seg.base_offset,
            end_offset: end,
            max_timestamp: seg.retention_timestamp(),
            size_bytes: seg.size_bytes,
            leader_epoch: epoch,
            epochs,
            last_batch_crc: crc,
            files,
            open_txns: producers.open_txns,
            generation,
        };
        manifest = objects
            .commit(epoch, |m| m.with_segment(remote.clone()))
            .await?;
        tracing::debug!(
            base = seg.base_offset,
            end = seg.next_offset,
            version = manifest.version,
            "segment uploaded"
        );
    }
    Ok(manifest)
}

/// The leader epochs the batches of the sealed segment `file` (at `path`; its first `size`
/// bytes) carry, each with its first offset there, and its last batch's CRC, read from the
/// batch headers alone (one small read per batch).
async fn segment_epochs(
    file: std::fs::File,
    path: std::path::PathBuf,
    size: u64,
) -> Result<(Vec<(i32, u64)>, u32), TierError> {
    tokio::task::spawn_blocking(move || {
        let local = |source| TierError::Local {
            path: path.clone(),
            source,
        };
        read_epochs(&file, size).map_err(local)
    })
    .await
    .map_err(|e| TierError::Local {
        path: FsPath::new("segment epochs").to_owned(),
        source: std::io::Error::other(e),
    })?
}

fn read_epochs(file: &std::fs::File, size: u64) -> std::io::Result<(Vec<(i32, u64)>, u32)> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len().min(size);
    let mut epochs: Vec<(i32, u64)> = Vec::new();
    let mut crc = 0;
    let mut header = [0u8; crate::HEADER_LEN];
    let mut at = 0u64;
    while at + crate::HEADER_LEN as u64 <= len {
        file.read_exact_at(&mut header, at)?;
        let h = crate::BatchHeader::parse(&header).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "short batch header")
        })?;
        if h.batch_length <= 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("batch at byte {at} has length {}", h.batch_length),
            ));
        }
        if epochs
            .last()
            .is_none_or(|(e, _)| h.partition_leader_epoch > *e)
        {
            epochs.push((
                h.partition_leader_epoch,
                u64::try_from(h.base_offset).unwrap_or(0),
            ));
        }
        crc = h.crc;
        at += h.total_len() as u64;
    }
    Ok((epochs, crc))
}

/// Puts one local file (open as `file`; `path` names it in errors), multipart when it is
/// large. File reads are async (tokio) so a large segment does not hold a runtime thread.
pub(super) async fn upload_file(
    objects: &PartitionObjects,
    key: Path,
    file: std::fs::File,
    path: &FsPath,
) -> Result<(), TierError> {
    let local = |source| TierError::Local {
        path: path.to_owned(),
        source,
    };
    let mut file = tokio::fs::File::from_std(file);
    let len = file.metadata().await.map_err(local)?.len() as usize;
    let store = objects.store();
    if len <= MULTIPART_PART {
        let mut buf = Vec::with_capacity(len);
        file.read_to_end(&mut buf).await.map_err(local)?;
        store.put(&key, PutPayload::from(buf)).await?;
        return Ok(());
    }
    let upload = store.put_multipart(&key).await?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, MULTIPART_PART);
    let mut chunk = vec![0u8; MULTIPART_PART];
    loop {
        let n = file.read(&mut chunk).await.map_err(local)?;
        if n == 0 {
            break;
        }
        writer.wait_for_capacity(4).await?;
        writer.write(&chunk[..n]);
    }
    writer.finish().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::memory::InMemory;
    use uuid::Uuid;

    use super::*;
    use crate::{BatchBuilder, LogConfig, SegmentFile};

    #[tokio::test]
    async fn sealed_durable_segments_are_uploaded_once_with_their_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Log::open(
            dir.path(),
            LogConfig {
                segment_bytes: 4096,
                ..LogConfig::default()
            },
        )
        .expect("open");
        let value = vec![7u8; 900];
        for i in 0..20 {
            let b = BatchBuilder::new().value(None, &value, i).build();
            log.append(&b, 1).expect("append");
        }
        log.flush().expect("flush");
        let store = Arc::new(InMemory::new());
        let objects = PartitionObjects::new(store.clone(), &Path::from("t"), Uuid::nil(), 3);
        let m = upload_sealed(&log, &objects, 1).await.expect("upload");
        let sealed: Vec<SegmentInfo> = log.segments().into_iter().filter(|s| s.sealed).collect();
        assert!(sealed.len() >= 4, "{} sealed", sealed.len());
        assert_eq!(m.segments.len(), sealed.len());
        assert_eq!(m.end_offset(), sealed.last().expect("sealed").next_offset);
        for s in &sealed {
            let remote = store
                .get(&objects.segment_key(s.base_offset, 1, SegmentFile::Log))
                .await
                .expect("object")
                .bytes()
                .await
                .expect("bytes");
            let local = std::fs::read(&s.log_path).expect("local");
            assert_eq!(
                &remote[..],
                &local[..],
                "segment {} uploaded byte for byte",
                s.base_offset
            );
        }
        // Nothing new: no new version. New sealed data: only it goes up.
        let again = upload_sealed(&log, &objects, 1).await.expect("upload");
        assert_eq!(again.version, m.version);
        // Written under a later leader epoch (still uploaded as 1): the segments record the
        // epochs of their batches, not the uploader's.
        for i in 0..6 {
            let b = BatchBuilder::new().value(None, &value, 100 + i).build();
            log.append(&b, 4).expect("append");
        }
        log.roll().expect("roll");
        log.flush().expect("flush");
        let more = upload_sealed(&log, &objects, 1).await.expect("upload");
        assert!(more.segments.len() > m.segments.len());
        assert_eq!(&more.segments[..m.segments.len()], &m.segments[..]);
        assert_eq!(m.segments[0].epochs, vec![(1, 0)]);
        assert_eq!(more.leader_epochs(), vec![(1, 0), (4, 20)]);
        assert!(more.segments.iter().all(|s| s.leader_epoch == 1));
    }

    #[tokio::test]
    async fn large_segments_go_up_in_parts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big");
        let data: Vec<u8> = (0..(MULTIPART_PART * 2 + 12345))
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&path, &data).expect("write");
        let store = Arc::new(InMemory::new());
        let objects = PartitionObjects::new(store.clone(), &Path::from("t"), Uuid::nil(), 0);
        let key = objects.segment_key(0, 1, SegmentFile::Log);
        let file = std::fs::File::open(&path).expect("open");
        upload_file(&objects, key.clone(), file, &path)
            .await
            .expect("upload");
        let got = store
            .get(&key)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        assert_eq!(got.len(), data.len());
        assert!(got[..] == data[..]);
    }
}

#[cfg(test)]
pub(crate) mod two_leaders {
    use std::sync::Arc;

    use object_store::memory::InMemory;
    use uuid::Uuid;

    use super::*;
    use crate::tier::read::{CacheConfig, RemoteReader};
    use crate::{BatchBuilder, LogConfig};

    /// A replica's copy of one history (batch `i` is offset `i`, written under epoch 3):
    /// offsets `from..to`, rolled every `segment_bytes`, so replicas differ only in where
    /// their segments start.
    pub(crate) fn copy(dir: &std::path::Path, from: i64, to: i64, segment_bytes: u64) -> Log {
        let log = Log::open(
            dir,
            LogConfig {
                segment_bytes,
                segment_ms: None,
                ..LogConfig::default()
            },
        )
        .expect("open");
        log.reset_to(from as u64).expect("start");
        for i in from..to {
            let b = BatchBuilder::new().value(None, &[7; 500], i).build();
            log.append(&b, 3).expect("append");
        }
        log.roll().expect("roll");
        log.flush().expect("flush");
        log
    }

    /// Asserts that some segment of `m` overlaps the one before it (what replicas cutting
    /// one history at different offsets leave, see [`Manifest::spans`]).
    pub(crate) fn assert_overlapping(m: &Manifest) {
        assert!(
            m.spans().any(|(s, start)| start > s.base_offset),
            "the segments overlap: {:?}",
            m.segments
        );
    }

    /// Every offset below the manifest's end reads back from object storage as `reference`
    /// holds it, and the segments leave no gap.
    async fn reads_back(m: &Manifest, objects: &PartitionObjects, reference: &Log, what: &str) {
        let reader = RemoteReader::open(CacheConfig::default())
            .await
            .expect("cache");
        reads_back_through(&reader, m, objects, reference, what).await;
    }

    /// [`reads_back`] through `reader` (and whatever its cache holds).
    async fn reads_back_through(
        reader: &RemoteReader,
        m: &Manifest,
        objects: &PartitionObjects,
        reference: &Log,
        what: &str,
    ) {
        let mut covered = m.log_start_offset;
        for s in &m.segments {
            assert!(
                s.base_offset <= covered && s.end_offset > covered,
                "{what}: gap at {covered}: {:?}",
                m.segments
            );
            covered = s.end_offset;
        }
        let mut offset = m.log_start_offset;
        while offset < m.end_offset() {
            let remote = reader
                .read(objects, m, offset, 1 << 20)
                .await
                .expect("read")
                .into_bytes();
            let local = reference.read(offset, remote.len()).expect("local");
            assert_eq!(&remote[..], &local[..], "{what}: offset {offset}");
            let mut pos = 0;
            while pos < remote.len() {
                let h = crate::BatchHeader::parse(&remote[pos..]).expect("header");
                offset = h.last_offset() as u64 + 1;
                pos += h.total_len();
            }
        }
    }

    /// The cleaner merges local segments, so a segment that starts where an uploaded one
    /// does can reach past the manifest's end and go up again under the same epoch. Its
    /// objects get a new generation: the ones the first manifest names keep their bytes for
    /// its readers, and a reader whose cache holds them reads the new manifest right. (Before,
    /// the upload overwrote them, and the cache served the old bytes for the new segment:
    /// "short chunk" on every read of the partition.)
    #[tokio::test]
    async fn a_segment_uploaded_again_never_overwrites_objects() {
        let (a, b) = (
            tempfile::tempdir().expect("dir"),
            tempfile::tempdir().expect("dir"),
        );
        let small = copy(a.path(), 0, 10, 2048);
        let merged = copy(b.path(), 0, 30, 8192);
        let store = Arc::new(InMemory::new());
        let objects = PartitionObjects::new(store.clone(), &Path::from("x"), Uuid::nil(), 0);
        let first = upload_sealed(&small, &objects, 3).await.expect("first");
        assert_eq!(first.end_offset(), 10);
        let reader = RemoteReader::open(CacheConfig::default())
            .await
            .expect("cache");
        reads_back_through(&reader, &first, &objects, &small, "first").await;
        let bytes_of = |m: &Manifest| {
            let (store, objects) = (store.clone(), objects.clone());
            let keys: Vec<Path> = m
                .segments
                .iter()
                .map(|s| s.key(&objects, SegmentFile::Log))
                .collect();
            async move {
                let mut out = Vec::new();
                for k in keys {
                    let got = store.get(&k).await.expect("object");
                    out.push(got.bytes().await.expect("bytes"));
                }
                out
            }
        };
        let before = bytes_of(&first).await;
        let second = upload_sealed(&merged, &objects, 3).await.expect("second");
        assert_eq!(second.segments[0].base_offset, 0);
        assert!(second.segments[0].end_offset > 10, "{:?}", second.segments);
        assert_eq!(second.segments[0].generation, 2, "{:?}", second.segments);
        assert_eq!(
            bytes_of(&first).await,
            before,
            "the first manifest's objects"
        );
        reads_back_through(&reader, &second, &objects, &merged, "second, cached").await;
        reads_back(&second, &objects, &merged, "second").await;
        // Compaction takes odd generations above those, so it never picks an upload's key.
        assert_eq!(second.generation_for(0, 10, Writer::Compaction), 3);
        assert_eq!(second.generation_for(0, 10, Writer::Upload), 4);
        assert_eq!(first.generation_for(10, 20, Writer::Upload), 0);
        assert_eq!(first.generation_for(10, 20, Writer::Compaction), 1);
    }

    /// A leader whose disk was wiped continued from the remote end of the time (20) and led
    /// again later, under a newer epoch, after another leader had uploaded up to 30: it
    /// uploads only what reaches past 30, and nothing of 20..30 is lost. (Before, its first
    /// segment replaced the remote ones it overlapped, and a leader after it found a hole.)
    #[tokio::test]
    async fn a_leader_whose_log_starts_late_cuts_no_hole() {
        let (a, b, full) = (
            tempfile::tempdir().expect("dir"),
            tempfile::tempdir().expect("dir"),
            tempfile::tempdir().expect("dir"),
        );
        let earlier = copy(a.path(), 0, 30, 2048);
        let wiped = copy(b.path(), 20, 45, 3000);
        let reference = copy(full.path(), 0, 45, 4096);
        let objects =
            PartitionObjects::new(Arc::new(InMemory::new()), &Path::from("x"), Uuid::nil(), 0);
        let m = upload_sealed(&earlier, &objects, 3).await.expect("earlier");
        assert_eq!(m.end_offset(), 30);
        let m = upload_sealed(&wiped, &objects, 5).await.expect("wiped");
        assert_eq!(m.end_offset(), 45);
        assert!(
            m.segments
                .iter()
                .all(|s| s.leader_epoch == 5 || s.end_offset <= 30),
            "{:?}",
            m.segments
        );
        reads_back(&m, &objects, &reference, "after the late leader").await;
        // Nothing new: no new version.
        let again = upload_sealed(&wiped, &objects, 5).await.expect("again");
        assert_eq!(again.version, m.version);
    }

    /// Two replicas of the same history, cut into segments at different points, both believe
    /// they lead and upload at the same time, over and over: the manifest never has a gap,
    /// every offset reads back, and once the newer leader (epoch 5) has committed, the other
    /// (epoch 3) changes nothing (it is refused, `a_stale_leader_is_fenced`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_leaders_leave_one_history_without_gaps() {
        for round in 0..10 {
            let (a, b) = (
                tempfile::tempdir().expect("dir"),
                tempfile::tempdir().expect("dir"),
            );
            let stale = Arc::new(copy(a.path(), 0, 30, 2048));
            let current = Arc::new(copy(b.path(), 0, 40, 3000));
            let store = Arc::new(InMemory::new());
            let objects = PartitionObjects::new(store, &Path::from("x"), Uuid::nil(), 0);
            let (o1, o2) = (objects.clone(), objects.clone());
            let (s, c) = (stale.clone(), current.clone());
            // Round 0: the stale leader uploads everything first. Then they race.
            let stale_result = if round == 0 {
                let r = upload_sealed(&s, &o1, 3).await;
                upload_sealed(&c, &o2, 5).await.expect("current leader");
                r
            } else {
                let stale_task = tokio::spawn(async move { upload_sealed(&s, &o1, 3).await });
                let current_task = tokio::spawn(async move { upload_sealed(&c, &o2, 5).await });
                let r = stale_task.await.expect("task");
                current_task
                    .await
                    .expect("task")
                    .expect("the current leader is never fenced");
                r
            };
            // Whatever the interleaving, the current leader's next pass completes its upload
            // and the stale one is refused from then on.
            let m = upload_sealed(&current, &objects, 5)
                .await
                .expect("catch up");
            // The stale leader has nothing past the end to add, and could not commit it.
            let again = upload_sealed(&stale, &objects, 3).await;
            assert!(
                again.as_ref().is_ok_and(|a| a.version == m.version)
                    || matches!(again, Err(TierError::Fenced { .. })),
                "round {round}: {again:?} (earlier result {:?})",
                stale_result.map(|m| m.version)
            );
            let latest = objects.latest().await.expect("read").expect("manifest");
            assert_eq!((latest.version, latest.leader_epoch), (m.version, 5));
            assert_eq!(m.end_offset(), current.log_end_offset(), "round {round}");
            reads_back(&m, &objects, &current, &format!("round {round}")).await;
        }
    }
}
