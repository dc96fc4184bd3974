//! Uploading sealed segments and committing them to the partition manifest.

use std::path::Path as FsPath;

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::io::AsyncReadExt;

use super::TierError;
use super::manifest::{Manifest, PartitionObjects, RemoteSegment};
use crate::{Log, SegmentInfo};

/// Files above this size go up as multipart uploads of this part size.
pub const MULTIPART_PART: usize = 8 << 20;

/// Uploads every sealed, durable segment of `log` that the manifest does not already hold,
/// and commits each one as leader of `epoch` (objects first, manifest after, so a manifest
/// never names a missing object). Returns the newest manifest.
///
/// A remote segment holds a local one when it has the same offsets and size and either this
/// epoch uploaded it or its last batch has the same CRC. So a new leader re-uploads (and,
/// through [`Manifest::with_segment`], replaces) whatever an older leader uploaded from a
/// diverged copy, and skips what it holds identically.
pub async fn upload_sealed(
    log: &Log,
    objects: &PartitionObjects,
    epoch: i32,
) -> Result<Manifest, TierError> {
    upload_sealed_below(log, objects, epoch, u64::MAX).await
}

/// [`upload_sealed`] of the segments that end at or below `upto`: a replicated partition's
/// leader uploads only what every in-sync replica holds (its high watermark), so no uploaded
/// batch can be cut away by a leader change.
pub async fn upload_sealed_below(
    log: &Log,
    objects: &PartitionObjects,
    epoch: i32,
    upto: u64,
) -> Result<Manifest, TierError> {
    let mut manifest = objects.latest().await?.unwrap_or_default();
    let durable = log.durable_offset().min(upto);
    let sealed: Vec<SegmentInfo> = log
        .segments()
        .into_iter()
        .filter(|s| {
            s.sealed
                && s.next_offset > s.base_offset
                && s.next_offset <= durable
                && s.next_offset > manifest.log_start_offset
        })
        .collect();
    for seg in sealed {
        let crc = last_batch_crc(log, &seg)?;
        let held = manifest.segments.iter().any(|r| {
            r.base_offset == seg.base_offset
                && r.end_offset == seg.next_offset
                && r.size_bytes == seg.size_bytes
                && (r.leader_epoch == epoch || r.last_batch_crc == crc)
        });
        if held {
            continue;
        }
        let epochs = segment_epochs(seg.log_path.clone(), seg.size_bytes).await?;
        let mut files = Vec::new();
        for (file, path) in seg.files() {
            upload_file(
                objects,
                objects.segment_key(seg.base_offset, epoch, file),
                path,
            )
            .await?;
            files.push(file);
        }
        let remote = RemoteSegment {
            base_offset: seg.base_offset,
            end_offset: seg.next_offset,
            max_timestamp: seg.retention_timestamp(),
            size_bytes: seg.size_bytes,
            leader_epoch: epoch,
            epochs,
            last_batch_crc: crc,
            files,
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

/// The leader epochs the batches of the sealed segment file at `path` (its first `size`
/// bytes) carry, each with its first offset there, read from the batch headers alone (one
/// small read per batch).
async fn segment_epochs(path: std::path::PathBuf, size: u64) -> Result<Vec<(i32, u64)>, TierError> {
    tokio::task::spawn_blocking(move || {
        let local = |source| TierError::Local {
            path: path.clone(),
            source,
        };
        read_epochs(&path, size).map_err(local)
    })
    .await
    .map_err(|e| TierError::Local {
        path: FsPath::new("segment epochs").to_owned(),
        source: std::io::Error::other(e),
    })?
}

fn read_epochs(path: &FsPath, size: u64) -> std::io::Result<Vec<(i32, u64)>> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len().min(size);
    let mut epochs: Vec<(i32, u64)> = Vec::new();
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
        at += h.total_len() as u64;
    }
    Ok(epochs)
}

/// The CRC of a sealed segment's last batch.
fn last_batch_crc(log: &Log, seg: &SegmentInfo) -> Result<u32, TierError> {
    let bytes = log
        .read(seg.next_offset - 1, 1)
        .map_err(|e| TierError::Local {
            path: seg.log_path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok(crate::BatchHeader::parse(&bytes).map_or(0, |h| h.crc))
}

/// Puts one local file, multipart when it is large. File reads are async (tokio) so a large
/// segment does not hold a runtime thread.
async fn upload_file(
    objects: &PartitionObjects,
    key: Path,
    path: &FsPath,
) -> Result<(), TierError> {
    let local = |source| TierError::Local {
        path: path.to_owned(),
        source,
    };
    let mut file = tokio::fs::File::open(path).await.map_err(local)?;
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
            let mut b = BatchBuilder::new().value(None, &value, i).build();
            log.append(&mut b, 1).expect("append");
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
            let mut b = BatchBuilder::new().value(None, &value, 100 + i).build();
            log.append(&mut b, 4).expect("append");
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
        upload_file(&objects, key.clone(), &path)
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
mod two_leaders {
    use std::sync::Arc;

    use object_store::memory::InMemory;
    use uuid::Uuid;

    use super::*;
    use crate::tier::read::{CacheConfig, RemoteReader};
    use crate::{BatchBuilder, LogConfig};

    fn log_with(dir: &std::path::Path, tag: u8, batches: i64, epoch: i32) -> Log {
        let log = Log::open(
            dir,
            LogConfig {
                segment_bytes: 2048,
                segment_ms: None,
                ..LogConfig::default()
            },
        )
        .expect("open");
        for i in 0..batches {
            let mut b = BatchBuilder::new().value(None, &[tag; 500], i).build();
            log.append(&mut b, epoch).expect("append");
        }
        log.roll().expect("roll");
        log.flush().expect("flush");
        log
    }

    /// Two brokers both believe they lead: the stale one (epoch 3) holds a diverged copy of
    /// the partition, the current one (epoch 5) the real one. They upload at the same time,
    /// over and over. One manifest history survives, it never names the stale leader's
    /// segments past the point where the current leader's start, and every byte of the
    /// current leader's log reads back from object storage.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_the_current_leaders_history_survives_concurrent_uploads() {
        for round in 0..10 {
            let (a, b) = (
                tempfile::tempdir().expect("dir"),
                tempfile::tempdir().expect("dir"),
            );
            let stale = Arc::new(log_with(a.path(), b's', 30, 3));
            let current = Arc::new(log_with(b.path(), b'c', 40, 5));
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
            assert!(
                matches!(
                    upload_sealed(&stale, &objects, 3).await,
                    Err(TierError::Fenced { .. })
                ),
                "round {round}: stale leader fenced (earlier result {:?})",
                stale_result.map(|m| m.version)
            );
            assert_eq!(m.end_offset(), current.log_end_offset(), "round {round}");
            let mut next = 0;
            for s in &m.segments {
                assert_eq!(
                    s.base_offset, next,
                    "round {round}: contiguous {:?}",
                    m.segments
                );
                next = s.end_offset;
            }
            let reader = RemoteReader::open(CacheConfig::default())
                .await
                .expect("cache");
            let mut offset = 0;
            while offset < m.end_offset() {
                let remote = reader
                    .read(&objects, &m, offset, 1 << 20)
                    .await
                    .expect("read");
                let local = current.read(offset, remote.len()).expect("local");
                assert_eq!(&remote[..], &local[..], "round {round}: offset {offset}");
                let mut pos = 0;
                while pos < remote.len() {
                    let h = crate::BatchHeader::parse(&remote[pos..]).expect("header");
                    offset = h.last_offset() as u64 + 1;
                    pos += h.total_len();
                }
            }
        }
    }
}
