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

/// Uploads every sealed, durable segment of `log` that ends past the manifest's end, and
/// commits each one as leader of `epoch` (objects first, manifest after, so a manifest never
/// names a missing object). Returns the newest manifest.
pub async fn upload_sealed(
    log: &Log,
    objects: &PartitionObjects,
    epoch: i32,
) -> Result<Manifest, TierError> {
    let mut manifest = objects.latest().await?.unwrap_or_default();
    let durable = log.durable_offset();
    let pending: Vec<SegmentInfo> = log
        .segments()
        .into_iter()
        .filter(|s| {
            s.sealed
                && s.next_offset > s.base_offset
                && s.next_offset <= durable
                && s.next_offset > manifest.end_offset()
        })
        .collect();
    for seg in pending {
        for (path, ext) in [
            (&seg.log_path, "log"),
            (&seg.offset_index_path, "index"),
            (&seg.time_index_path, "timeindex"),
        ] {
            upload_file(
                objects,
                objects.segment_key(seg.base_offset, epoch, ext),
                path,
            )
            .await?;
        }
        let remote = RemoteSegment {
            base_offset: seg.base_offset,
            end_offset: seg.next_offset,
            max_timestamp: seg.max_timestamp.unwrap_or(-1),
            size_bytes: seg.size_bytes,
            leader_epoch: epoch,
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
    use crate::{BatchBuilder, LogConfig};

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
                .get(&objects.segment_key(s.base_offset, 1, "log"))
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
        for i in 0..6 {
            let mut b = BatchBuilder::new().value(None, &value, 100 + i).build();
            log.append(&mut b, 1).expect("append");
        }
        log.flush().expect("flush");
        let more = upload_sealed(&log, &objects, 1).await.expect("upload");
        assert!(more.segments.len() > m.segments.len());
        assert_eq!(&more.segments[..m.segments.len()], &m.segments[..]);
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
        let key = objects.segment_key(0, 1, "log");
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
