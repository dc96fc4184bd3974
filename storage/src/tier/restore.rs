//! Refilling a local log from a partition's remote segments.

use std::sync::Arc;

use object_store::ObjectStoreExt;

use super::TierError;
use super::manifest::{Manifest, PartitionObjects};
use crate::batch::{BatchError, BatchHeader};
use crate::{Log, SegmentFile, StorageError};

/// Bytes appended at a time.
const CHUNK: usize = 1 << 20;

/// Makes `log` hold what `manifest` holds, from its log start to its end: an internal topic's
/// coordinator replays its whole log (committed offsets, transactions), and such a topic is
/// compacted, so the copy is small. One segment is in memory at a time, and of each only the
/// batches it adds to those before it ([`Manifest::spans`]: a segment uploaded by a replica
/// whose segments were cut elsewhere overlaps the previous one). Whatever `log` held before
/// is gone.
pub async fn restore_log(
    log: &Arc<Log>,
    objects: &PartitionObjects,
    manifest: &Manifest,
) -> Result<(), TierError> {
    let (start, end) = (manifest.log_start_offset, manifest.end_offset());
    blocking(log, move |log| log.reset_to(start)).await?;
    for (segment, from) in manifest.spans() {
        let key = segment.key(objects, SegmentFile::Log);
        let bytes = objects.store().get(&key).await?.bytes().await?;
        blocking(log, move |log| append_from(log, &bytes, from)).await?;
    }
    blocking(log, move |log| log.skip_to(end)).await
}

/// Runs `f` on `log` on the blocking pool.
async fn blocking(
    log: &Arc<Log>,
    f: impl FnOnce(&Log) -> Result<(), StorageError> + Send + 'static,
) -> Result<(), TierError> {
    let log = log.clone();
    let dir = log.dir().to_owned();
    tokio::task::spawn_blocking(move || f(&log))
        .await
        .map_err(|e| TierError::Local {
            path: dir,
            source: std::io::Error::other(e),
        })?
        .map_err(TierError::from)
}

/// Appends the batches of a remote segment's `bytes` that end at or past `from`, about
/// [`CHUNK`] bytes at a time.
fn append_from(log: &Log, bytes: &[u8], from: u64) -> Result<(), StorageError> {
    let mut at = 0;
    while let Some(h) = BatchHeader::parse(&bytes[at..]) {
        if h.batch_length < 0 || h.last_offset() as u64 >= from {
            break;
        }
        at += h.total_len();
    }
    while at < bytes.len() {
        let len = whole_batches(&bytes[at..], CHUNK);
        if len == 0 {
            return Err(BatchError::Truncated {
                at,
                available: bytes.len() - at,
            }
            .into());
        }
        log.append_replica(&bytes[at..at + len])?;
        at += len;
    }
    Ok(())
}

/// The length of the whole batches at the start of `bytes`, about `limit` of them (at least
/// one when there is one).
fn whole_batches(bytes: &[u8], limit: usize) -> usize {
    let mut len = 0;
    while let Some(h) = BatchHeader::parse(&bytes[len..]) {
        let next = len + h.total_len();
        if h.batch_length < 0 || next > bytes.len() || (len > 0 && next > limit) {
            break;
        }
        len = next;
    }
    len
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;
    use object_store::path::Path;
    use uuid::Uuid;

    use super::*;
    use crate::tier::upload::two_leaders::copy;
    use crate::tier::upload::upload_sealed;

    /// Two replicas cut the same history into segments at different points and each
    /// uploaded as leader: the second's first new segment overlaps the first's last. The
    /// fault checker saw every restore of such a partition fail ("base offset 804 is below
    /// 805, where the log continues") because it appended the overlap twice.
    #[tokio::test]
    async fn a_log_restored_from_overlapping_segments_holds_each_offset_once() {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("dir")).collect();
        let first = copy(dirs[0].path(), 0, 30, 2048);
        let second = copy(dirs[1].path(), 0, 45, 2400);
        let objects =
            PartitionObjects::new(Arc::new(InMemory::new()), &Path::from("r"), Uuid::nil(), 0);
        upload_sealed(&first, &objects, 3).await.expect("first");
        let m = upload_sealed(&second, &objects, 5).await.expect("second");
        crate::tier::upload::two_leaders::assert_overlapping(&m);
        assert_eq!(m.end_offset(), 45);
        // A log with other contents (a wiped disk's fresh log would be empty).
        let restored = Arc::new(copy(dirs[2].path(), 0, 3, 4096));
        restore_log(&restored, &objects, &m).await.expect("restore");
        assert_eq!(restored.log_end_offset(), 45);
        let mut offset = 0;
        while offset < 45 {
            let got = restored.read(offset, 1 << 20).expect("read");
            let mut at = 0;
            while let Some(h) = BatchHeader::parse(&got[at..]) {
                assert_eq!(h.base_offset as u64, offset, "each offset once, in order");
                let batch = &got[at..at + h.total_len()];
                let want = second.read(offset, batch.len()).expect("read");
                assert_eq!(batch, &want[..batch.len()], "at {offset}");
                offset += 1;
                at += h.total_len();
            }
        }
    }
}
