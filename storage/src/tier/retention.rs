//! Retention of remote data and cleanup of objects no manifest names.
//!
//! Remote segments leave in two steps: a manifest version without them is committed first,
//! then their objects are deleted, so a reader never follows a manifest to a missing object.
//! A crash between the steps leaves unreferenced objects behind; so does a crash between an
//! upload and its commit. [`clean_orphans`] deletes such objects once they are older than a
//! grace period (long enough that no live upload can still be about to commit them).

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::ObjectStoreExt;

use super::TierError;
use super::manifest::{Manifest, PartitionObjects, RemoteSegment};
use crate::SegmentFile;

impl Manifest {
    /// This manifest without `gone`, its log start moved past them.
    pub fn without(&self, gone: &[RemoteSegment]) -> Manifest {
        let mut next = self.clone();
        next.segments
            .retain(|s| !gone.iter().any(|g| g == s.as_ref()));
        let past = gone
            .iter()
            .map(|s| s.end_offset)
            .max()
            .unwrap_or(next.log_start_offset);
        next.log_start_offset = next.log_start_offset.max(past);
        next
    }

    /// This manifest with its log start moved up to `offset` (DeleteRecords): segments wholly
    /// below it leave.
    pub fn starting_at(&self, offset: u64) -> Manifest {
        let mut next = self.clone();
        next.segments.retain(|s| s.end_offset > offset);
        next.log_start_offset = next.log_start_offset.max(offset);
        next
    }

    /// The oldest segments outside `retention_ms` (by largest timestamp, against `now_ms`) or
    /// beyond `retention_bytes` of the whole log, whose other part (`local_bytes` not yet in
    /// the manifest) counts towards the size.
    pub fn expired(
        &self,
        now_ms: i64,
        retention_ms: Option<Duration>,
        retention_bytes: Option<u64>,
        local_bytes: u64,
    ) -> Vec<RemoteSegment> {
        let cutoff = retention_ms.map(|d| now_ms.saturating_sub(d.as_millis() as i64));
        let total: u64 = self.segments.iter().map(|s| s.size_bytes).sum::<u64>() + local_bytes;
        let mut excess = retention_bytes.map(|limit| total as i128 - limit as i128);
        let mut gone = Vec::new();
        for s in &self.segments {
            let expired = cutoff.is_some_and(|c| s.max_timestamp < c);
            let oversize = excess.is_some_and(|e| e - s.size_bytes as i128 >= 0);
            if !(expired || oversize) {
                break;
            }
            excess = excess.map(|e| e - s.size_bytes as i128);
            gone.push(s.as_ref().clone());
        }
        gone
    }
}

/// Drops remote segments outside the whole log's retention: commits a manifest without them
/// (as leader of `epoch`), hands it to `publish` (so readers stop following the old one),
/// then deletes their objects. Returns the manifest in force and the segments removed.
pub async fn apply_remote_retention(
    objects: &PartitionObjects,
    epoch: i32,
    now_ms: i64,
    retention_ms: Option<Duration>,
    retention_bytes: Option<u64>,
    local_bytes: u64,
    publish: impl FnOnce(&Arc<Manifest>),
) -> Result<(Arc<Manifest>, Vec<RemoteSegment>), TierError> {
    let current = objects.latest().await?.unwrap_or_default();
    let gone = current.expired(now_ms, retention_ms, retention_bytes, local_bytes);
    if gone.is_empty() {
        return Ok((current, gone));
    }
    let next = objects.commit(epoch, |m| m.without(&gone)).await?;
    publish(&next);
    for s in &gone {
        delete_segment(objects, s).await?;
    }
    tracing::debug!(
        segments = gone.len(),
        log_start = next.log_start_offset,
        "remote segments past retention deleted"
    );
    Ok((next, gone))
}

/// Moves the remote log start up to `offset` (DeleteRecords): commits a manifest that starts
/// there (as leader of `epoch`), hands it to `publish`, then deletes the objects of the
/// segments wholly below it. Returns the manifest in force.
pub async fn delete_records_before(
    objects: &PartitionObjects,
    epoch: i32,
    offset: u64,
    publish: impl FnOnce(&Arc<Manifest>),
) -> Result<Arc<Manifest>, TierError> {
    let current = objects.latest().await?.unwrap_or_default();
    if offset <= current.log_start_offset {
        return Ok(current);
    }
    let next = objects.commit(epoch, |m| m.starting_at(offset)).await?;
    publish(&next);
    for s in current.segments.iter().filter(|s| s.end_offset <= offset) {
        delete_segment(objects, s).await?;
    }
    Ok(next)
}

async fn delete_segment(
    objects: &PartitionObjects,
    segment: &RemoteSegment,
) -> Result<(), TierError> {
    for file in SegmentFile::ALL {
        match objects.store().delete(&segment.key(objects, file)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Deletes segment objects of this partition that `manifest` does not name, and manifest
/// chunks that no manifest version present names, last modified more than `grace` ago;
/// returns how many objects went.
pub async fn clean_orphans(
    objects: &PartitionObjects,
    manifest: &Manifest,
    grace: Duration,
) -> Result<usize, TierError> {
    let listed: Vec<_> = objects
        .store()
        .list(Some(objects.root()))
        .try_collect()
        .await?;
    let cutoff = chrono::Utc::now() - grace;
    let mut deleted = 0;
    // A partition with years of segments lists hundreds of thousands of objects here.
    let named: std::collections::HashSet<_> = manifest.segments.iter().map(|s| s.name()).collect();
    let chunks = objects.chunks_dir();
    // The chunks some manifest version present names, read only if an old chunk is found.
    let mut named_chunks = None;
    for meta in listed {
        let Some(name) = meta.location.filename() else {
            continue;
        };
        if meta.location.prefix_matches(&chunks) {
            if meta.last_modified > cutoff {
                continue;
            }
            let named = match &named_chunks {
                Some(named) => named,
                None => named_chunks.insert(objects.named_chunks().await?),
            };
            if named.contains(name) {
                continue;
            }
            match objects.store().delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                Err(e) => return Err(e.into()),
            }
            continue;
        }
        let Some((base, epoch, generation)) = parse_segment_name(name) else {
            continue;
        };
        if named.contains(&(base, epoch, generation)) || meta.last_modified > cutoff {
            continue;
        }
        match objects.store().delete(&meta.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
            Err(e) => return Err(e.into()),
        }
    }
    if deleted > 0 {
        tracing::info!(deleted, root = %objects.root(), "orphaned segment objects deleted");
    }
    Ok(deleted)
}

/// `<base>-<epoch>.<ext>` or `<base>-<epoch>-<generation>.<ext>` of a segment object.
fn parse_segment_name(name: &str) -> Option<(u64, i32, u32)> {
    let (stem, ext) = name.rsplit_once('.')?;
    SegmentFile::from_ext(ext)?;
    let (base, rest) = stem.split_once('-')?;
    let (epoch, generation) = match rest.split_once('-') {
        Some((epoch, generation)) => (epoch, generation.parse().ok()?),
        None => (rest, 0),
    };
    Some((base.parse().ok()?, epoch.parse().ok()?, generation))
}

#[cfg(test)]
mod tests {

    use object_store::memory::InMemory;
    use object_store::path::Path;
    use object_store::{ObjectStore, PutPayload};
    use uuid::Uuid;

    use super::*;

    fn seg(base: u64, end: u64, ts: i64) -> RemoteSegment {
        RemoteSegment {
            base_offset: base,
            end_offset: end,
            max_timestamp: ts,
            size_bytes: 100,
            leader_epoch: 1,
            epochs: Vec::new(),
            last_batch_crc: 0,
            files: SegmentFile::ALL.to_vec(),
            open_txns: Vec::new(),
            generation: 0,
        }
    }

    #[test]
    fn expiry_takes_the_oldest_segments_by_time_and_by_whole_log_size() {
        let m = Manifest {
            segments: [seg(0, 10, 1_000), seg(10, 20, 2_000), seg(20, 30, 9_000)]
                .map(Arc::new)
                .to_vec(),
            ..Manifest::default()
        };
        let ms = |v| Some(Duration::from_millis(v));
        assert_eq!(
            m.expired(10_000, ms(8_500), None, 0),
            vec![seg(0, 10, 1_000)]
        );
        assert_eq!(m.expired(10_000, None, None, 0), vec![]);
        // 300 remote + 150 local against 250: two segments must go.
        assert_eq!(
            m.expired(10_000, None, Some(250), 150),
            vec![seg(0, 10, 1_000), seg(10, 20, 2_000)]
        );
        // Everything older than a millisecond goes.
        assert_eq!(m.expired(10_000, ms(1), None, 0).len(), 3);
        let next = m.without(&m.expired(10_000, ms(8_500), None, 0));
        assert_eq!(next.log_start_offset, 10);
        assert_eq!(next.segments.len(), 2);
    }

    /// How many objects an orphan sweep deletes within the grace period (an hour), then
    /// once it has passed.
    async fn swept(objects: &PartitionObjects, m: &Manifest) -> (usize, usize) {
        let mut counts = [0; 2];
        for (count, grace) in counts
            .iter_mut()
            .zip([Duration::from_secs(3600), Duration::ZERO])
        {
            *count = clean_orphans(objects, m, grace).await.expect("clean");
        }
        (counts[0], counts[1])
    }

    #[tokio::test]
    async fn retention_commits_first_then_deletes_and_orphans_go_after_the_grace() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let objects = PartitionObjects::new(store.clone(), &Path::from("c"), Uuid::nil(), 0);
        for (base, end, ts) in [(0, 10, 1_000), (10, 20, 9_000)] {
            for file in SegmentFile::ALL {
                store
                    .put(
                        &objects.segment_key(base, 1, file),
                        PutPayload::from_static(b"x"),
                    )
                    .await
                    .expect("put");
            }
            objects
                .commit(1, |m| m.with_segment(seg(base, end, ts)))
                .await
                .expect("commit");
        }
        // An upload that crashed before its commit.
        let orphan = objects.segment_key(20, 1, SegmentFile::Log);
        store
            .put(&orphan, PutPayload::from_static(b"x"))
            .await
            .expect("put");
        let mut published = None;
        let (m, gone) = apply_remote_retention(
            &objects,
            1,
            10_000,
            Some(Duration::from_millis(5_000)),
            None,
            0,
            |m| {
                // Readers learn the new manifest while the old one's objects still exist.
                let old = futures::executor::block_on(store.head(&objects.segment_key(
                    0,
                    1,
                    SegmentFile::Log,
                )));
                published = Some((m.clone(), old.is_ok()));
            },
        )
        .await
        .expect("retention");
        assert_eq!(
            published,
            Some((m.clone(), true)),
            "published before deleting"
        );
        assert_eq!(gone, vec![seg(0, 10, 1_000)]);
        assert_eq!(m.log_start_offset, 10);
        assert!(
            store
                .head(&objects.segment_key(0, 1, SegmentFile::Log))
                .await
                .is_err()
        );
        assert!(
            store
                .head(&objects.segment_key(10, 1, SegmentFile::Log))
                .await
                .is_ok()
        );
        // Within the grace period the orphan stays (a live upload may be about to commit it).
        assert_eq!(swept(&objects, &m).await, (0, 1));
        assert!(store.head(&orphan).await.is_err());
        assert!(
            store
                .head(&objects.segment_key(10, 1, SegmentFile::OffsetIndex))
                .await
                .is_ok()
        );
        assert!(objects.latest().await.expect("latest").is_some());
    }

    #[tokio::test]
    async fn manifest_chunks_no_version_names_go_after_the_grace() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let objects = PartitionObjects::new(store.clone(), &Path::from("c"), Uuid::nil(), 0);
        let chunk = super::super::manifest::CHUNK as u64;
        let first = objects
            .commit(1, |m| Manifest {
                segments: (0..2 * chunk).map(|i| Arc::new(seg(i, i + 1, 0))).collect(),
                ..m.clone()
            })
            .await
            .expect("commit");
        let old: Vec<String> = first.layout.names().map(str::to_owned).collect();
        // Retention cuts into the first chunk: its rest goes into a new one.
        let m = objects
            .commit(1, |m| m.starting_at(10))
            .await
            .expect("commit");
        let names: Vec<String> = m.layout.names().map(str::to_owned).collect();
        assert_eq!(
            (names.len(), &names[1]),
            (2, &old[1]),
            "the second chunk is kept"
        );
        assert_ne!(names[0], old[0]);
        let chunk_key = |name: &str| objects.chunks_dir().join(name);
        // The old first chunk is still named by version 1, which a reader may be loading.
        clean_orphans(&objects, &m, Duration::ZERO)
            .await
            .expect("clean");
        assert!(store.head(&chunk_key(&old[0])).await.is_ok());
        // Once no version present names it, it goes; the chunks in use stay.
        for _ in 0..8 {
            objects.commit(1, |m| m.clone()).await.expect("commit");
        }
        assert_eq!(swept(&objects, &m).await, (0, 1));
        assert!(store.head(&chunk_key(&old[0])).await.is_err());
        for name in &names {
            assert!(store.head(&chunk_key(name)).await.is_ok(), "{name}");
        }
        let fresh = PartitionObjects::new(store.clone(), &Path::from("c"), Uuid::nil(), 0);
        let read = fresh.latest().await.expect("read").expect("manifest");
        assert_eq!(read.segments, m.segments);
    }
}
