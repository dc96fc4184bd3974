//! The partition manifest: which segments of a partition live in object storage.
//!
//! Each commit writes a new immutable object `manifest/<version>.json` (20-digit version) with
//! a create-only conditional put, so exactly one writer wins each version and the versions
//! form a single history. Every manifest records the leader epoch of its writer; a writer
//! whose epoch is older than the newest manifest's is fenced and commits nothing. A new
//! leader's commit drops remote segments of older epochs that overlap its own, so its data
//! wins where a stale leader's diverged.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::TierError;
use crate::SegmentFile;

/// Versions kept behind the newest; older ones are deleted after a commit.
const KEEP_VERSIONS: u64 = 8;
/// Attempts before a commit gives up on losing races.
const MAX_ATTEMPTS: usize = 16;

/// One segment in object storage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteSegment {
    /// First offset.
    pub base_offset: u64,
    /// One past the last offset.
    pub end_offset: u64,
    /// Largest record timestamp; for a segment whose records carry none, when its local
    /// file was last written (what retention ages it by).
    pub max_timestamp: i64,
    /// Bytes of the `.log` object.
    pub size_bytes: u64,
    /// Epoch of the leader that uploaded it (part of its object keys). Not the epochs its
    /// batches were written under: those are in `epochs`.
    pub leader_epoch: i32,
    /// The leader epochs its batches carry, each with the first offset written under it in
    /// this segment, in increasing order (Kafka's `segmentLeaderEpochs`): what a replica that
    /// continues from the object store seeds its leader-epoch history with. Empty in manifests
    /// written before it was recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub epochs: Vec<(i32, u64)>,
    /// CRC of its last batch, which tells two copies of a segment apart when diagnosing.
    #[serde(default)]
    pub last_batch_crc: u32,
    /// The segment's files in object storage (manifests written before this was recorded
    /// name none: they hold the batches and both indexes).
    #[serde(default = "all_files")]
    pub files: Vec<SegmentFile>,
    /// The transactions open at the segment's end (started in it or before, ended after):
    /// what a replica that starts its log there, copying only the tail, must know to hold
    /// read_committed consumers at them and to index their aborts. Empty in manifests
    /// written before it was recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub open_txns: Vec<OpenTxn>,
    /// Which version of the offsets' objects this is (0: the first upload): part of its
    /// object keys, so that no key is ever written twice with different bytes, which readers
    /// of an older manifest and the chunk cache (keyed by name) rely on. See
    /// [`Manifest::generation_for`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u32,
}

/// Who writes a segment's objects: each takes generations of its own parity, so an upload
/// and a compaction running at once never pick the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// The uploader, of a local segment: even generations.
    Upload,
    /// The remote cleaner, of a rewritten run: odd generations.
    Compaction,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

/// A transaction open at some offset: its producer, the epoch of its batches and its first
/// offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenTxn {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub first_offset: u64,
}

fn all_files() -> Vec<SegmentFile> {
    SegmentFile::LEGACY.to_vec()
}

impl RemoteSegment {
    /// Whether the segment has this file in object storage.
    pub fn has(&self, file: SegmentFile) -> bool {
        self.files.contains(&file)
    }

    /// The key of one of its files.
    pub fn key(&self, objects: &PartitionObjects, file: SegmentFile) -> Path {
        objects.object_key(self.base_offset, self.leader_epoch, self.generation, file)
    }

    /// Whether this is the segment whose objects are named by `(base, epoch, generation)`.
    pub fn named(&self, base: u64, epoch: i32, generation: u32) -> bool {
        (self.base_offset, self.leader_epoch, self.generation) == (base, epoch, generation)
    }
}

/// One version of a partition's manifest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Increases by one per commit.
    pub version: u64,
    /// The committing leader's epoch.
    pub leader_epoch: i32,
    /// First offset still retained remotely.
    pub log_start_offset: u64,
    /// Below this offset a completed compaction pass cleaned the partition (its dirty
    /// section starts here); 0 when none has or the topic is not compacted. A broker with an
    /// empty disk continues cleaning from it.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub cleaned_offset: u64,
    /// Remote segments in offset order.
    pub segments: Vec<RemoteSegment>,
}

impl Manifest {
    /// The leader-epoch history of the remote segments: each epoch with the first remote
    /// offset written under it, in increasing epoch and offset order. Segments from manifests
    /// that did not record their epochs add nothing.
    pub fn leader_epochs(&self) -> Vec<(i32, u64)> {
        let mut history: Vec<(i32, u64)> = Vec::new();
        for (epoch, start) in self.segments.iter().flat_map(|s| s.epochs.iter().copied()) {
            if history.last().is_none_or(|(e, _)| epoch > *e) {
                history.push((epoch, start));
            }
        }
        history
    }

    /// The transactions open at [`Self::end_offset`] (see [`RemoteSegment::open_txns`]).
    pub fn open_txns_at_end(&self) -> &[OpenTxn] {
        self.segments.last().map_or(&[], |s| &s.open_txns)
    }

    /// One past the last remote offset (the log start when nothing is remote).
    pub fn end_offset(&self) -> u64 {
        self.segments
            .last()
            .map_or(self.log_start_offset, |s| s.end_offset)
    }

    /// Each segment with the first offset it adds to those before it: its base, or where it
    /// overlaps the previous segment (see [`Self::with_segment`]), that one's end. Read from
    /// there, the segments hold every remote offset once, in order; reading each segment
    /// whole would read the overlapped batches twice.
    pub fn spans(&self) -> impl Iterator<Item = (&RemoteSegment, u64)> {
        let previous_ends = std::iter::once(0).chain(self.segments.iter().map(|s| s.end_offset));
        self.segments
            .iter()
            .zip(previous_ends)
            .map(|(s, end)| (s, s.base_offset.max(end)))
    }

    /// The first offset segment `seg` of this manifest adds (see [`Self::spans`]): its base,
    /// or the end of the segment before it where that one reaches further. A binary search
    /// (bases are distinct and sorted, as no segment lies inside another), so a pass over a
    /// partition with years of segments stays linear.
    pub fn span_start(&self, seg: &RemoteSegment) -> u64 {
        let i = self
            .segments
            .partition_point(|s| s.base_offset < seg.base_offset);
        i.checked_sub(1)
            .and_then(|p| self.segments.get(p))
            .map_or(seg.base_offset, |prev| seg.base_offset.max(prev.end_offset))
    }

    /// The generation of new objects for the offsets `[base, end)` written by `writer`:
    /// above every generation of the segments here that overlap them, of `writer`'s parity
    /// (0 for an upload of offsets no segment holds yet). Every rewrite of offsets takes a
    /// generation above those of the segments it replaces, and a segment leaves a manifest
    /// only for one that covers its base or for retention (and then its base never comes
    /// back), so a generation above those overlapping now is above every one a segment at
    /// `base` ever had: a key is never reused, even for a segment an older manifest named.
    pub fn generation_for(&self, base: u64, end: u64, writer: Writer) -> u32 {
        let above = self
            .segments
            .iter()
            .filter(|s| s.base_offset < end && s.end_offset > base)
            .map(|s| s.generation.saturating_add(1))
            .max()
            .unwrap_or(0);
        match writer {
            Writer::Upload => above.saturating_add(above & 1),
            Writer::Compaction => above | 1,
        }
    }

    /// This manifest with `segment` added. Remote segments hold committed history (leaders
    /// upload only below the high watermark), so where segments overlap they hold the same
    /// records: one the new segment covers entirely is replaced, one that covers the new
    /// segment entirely makes it redundant, and one that only overlaps it stays, as it holds
    /// offsets no other segment does. Nothing is ever dropped for being older or from another
    /// epoch: a leader whose local log starts late (a wiped disk, recovered at the remote end
    /// of the time) would otherwise cut a hole in the history. No segment ends up inside
    /// another, so segments sorted by base offset are sorted by end offset too, and each adds
    /// the offsets from the previous one's end ([`Self::spans`]).
    pub fn with_segment(&self, segment: RemoteSegment) -> Manifest {
        let mut next = self.clone();
        let covers = |outer: &RemoteSegment, inner: &RemoteSegment| {
            outer.base_offset <= inner.base_offset && inner.end_offset <= outer.end_offset
        };
        if next.segments.iter().any(|s| covers(s, &segment)) {
            return next;
        }
        next.segments.retain(|s| !covers(&segment, s));
        next.segments.push(segment);
        next.segments.sort_by_key(|s| s.base_offset);
        next
    }
}

/// The manifests and segment objects of one partition.
#[derive(Debug, Clone)]
pub struct PartitionObjects {
    store: Arc<dyn ObjectStore>,
    root: Path,
    topic_id: Uuid,
    partition: i32,
}

impl PartitionObjects {
    /// Objects of `partition` of topic `topic_id` under `prefix`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &Path, topic_id: Uuid, partition: i32) -> Self {
        let root = prefix
            .clone()
            .join("topics")
            .join(topic_id.to_string())
            .join(partition.to_string());
        Self {
            store,
            root,
            topic_id,
            partition,
        }
    }

    /// The topic's id.
    pub fn topic_id(&self) -> Uuid {
        self.topic_id
    }

    /// The partition's index.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The prefix every object of this partition lives under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The object store these objects live in.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The key of a segment file as uploaded: `<base-offset>-<epoch>.<ext>`.
    pub fn segment_key(&self, base_offset: u64, leader_epoch: i32, file: SegmentFile) -> Path {
        self.object_key(base_offset, leader_epoch, 0, file)
    }

    /// The key of a segment file of a generation: as uploaded for 0, and
    /// `<base-offset>-<epoch>-<generation>.<ext>` for the rewrites compaction made.
    pub fn object_key(
        &self,
        base_offset: u64,
        leader_epoch: i32,
        generation: u32,
        file: SegmentFile,
    ) -> Path {
        let ext = file.ext();
        let name = match generation {
            0 => format!("{base_offset:020}-{leader_epoch}.{ext}"),
            g => format!("{base_offset:020}-{leader_epoch}-{g}.{ext}"),
        };
        self.root.clone().join(name)
    }

    fn manifest_key(&self, version: u64) -> Path {
        self.root
            .clone()
            .join("manifest")
            .join(format!("{version:020}.json"))
    }

    /// Versions present, ascending.
    async fn versions(&self) -> Result<Vec<u64>, TierError> {
        let dir = self.root.clone().join("manifest");
        let metas: Vec<_> = self.store.list(Some(&dir)).try_collect().await?;
        let mut versions: Vec<u64> = metas
            .iter()
            .filter_map(|m| m.location.filename()?.strip_suffix(".json")?.parse().ok())
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    async fn read(&self, version: u64) -> Result<Manifest, TierError> {
        let key = self.manifest_key(version);
        let bytes = self.store.get(&key).await?.bytes().await?;
        serde_json::from_slice(&bytes).map_err(|source| TierError::Manifest {
            path: key.to_string(),
            source,
        })
    }

    /// The producer snapshot uploaded with `manifest`'s last segment (the producers' state
    /// at its end), if it has one.
    pub async fn producer_snapshot_at_end(
        &self,
        manifest: &Manifest,
    ) -> Result<Option<bytes::Bytes>, TierError> {
        let file = SegmentFile::ProducerSnapshot;
        let Some(last) = manifest.segments.last().filter(|s| s.has(file)) else {
            return Ok(None);
        };
        let got = self.store.get(&last.key(self, file)).await?;
        Ok(Some(got.bytes().await?))
    }

    /// The newest manifest, if any was committed.
    pub async fn latest(&self) -> Result<Option<Manifest>, TierError> {
        match self.versions().await?.last() {
            Some(v) => self.read(*v).await.map(Some),
            None => Ok(None),
        }
    }

    /// Commits the manifest `change` makes of the newest one, as leader of `epoch`. Fails
    /// with [`TierError::Fenced`] once a newer epoch has committed; on losing a race it
    /// re-reads and applies `change` again.
    pub async fn commit(
        &self,
        epoch: i32,
        change: impl Fn(&Manifest) -> Manifest,
    ) -> Result<Manifest, TierError> {
        for _ in 0..MAX_ATTEMPTS {
            let current = self.latest().await?.unwrap_or_default();
            if current.leader_epoch > epoch {
                return Err(TierError::Fenced {
                    ours: epoch,
                    current: current.leader_epoch,
                });
            }
            let mut next = change(&current);
            next.version = current.version + 1;
            next.leader_epoch = epoch;
            let body = serde_json::to_vec(&next).map_err(|source| TierError::Manifest {
                path: self.manifest_key(next.version).to_string(),
                source,
            })?;
            let put = self
                .store
                .put_opts(
                    &self.manifest_key(next.version),
                    PutPayload::from(body),
                    PutOptions::from(PutMode::Create),
                )
                .await;
            match put {
                Ok(_) => {
                    self.forget_before(next.version.saturating_sub(KEEP_VERSIONS))
                        .await;
                    return Ok(next);
                }
                Err(object_store::Error::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(TierError::Contended {
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Deletes manifest versions below `version` (best effort: a leftover is harmless).
    async fn forget_before(&self, version: u64) {
        let Ok(versions) = self.versions().await else {
            return;
        };
        for v in versions.into_iter().filter(|v| *v < version) {
            if let Err(e) = self.store.delete(&self.manifest_key(v)).await {
                tracing::debug!(version = v, error = %e, "old manifest not deleted");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;

    use super::*;

    fn seg(base: u64, end: u64, epoch: i32) -> RemoteSegment {
        RemoteSegment {
            base_offset: base,
            end_offset: end,
            max_timestamp: 0,
            size_bytes: end - base,
            leader_epoch: epoch,
            epochs: Vec::new(),
            last_batch_crc: 0,
            files: SegmentFile::LEGACY.to_vec(),
            open_txns: Vec::new(),
            generation: 0,
        }
    }

    #[test]
    fn the_epoch_history_joins_the_segments_epochs_and_skips_what_older_manifests_lack() {
        let mut legacy = seg(0, 10, 3);
        legacy.epochs.clear();
        let mut a = seg(10, 20, 3);
        a.epochs = vec![(1, 10), (2, 15)];
        let mut b = seg(20, 30, 5);
        b.epochs = vec![(2, 20), (4, 25)];
        let m = Manifest {
            segments: vec![legacy, a, b],
            ..Manifest::default()
        };
        assert_eq!(m.leader_epochs(), vec![(1, 10), (2, 15), (4, 25)]);
    }

    #[test]
    fn segments_name_their_files_and_older_manifests_mean_those_before_transactions() {
        let json = serde_json::to_string(&seg(0, 10, 1)).expect("encodes");
        assert!(
            json.contains(r#""files":["log","offset_index","time_index"]"#),
            "{json}"
        );
        let older = r#"{"base_offset":0,"end_offset":10,"max_timestamp":0,"size_bytes":10,
            "leader_epoch":1}"#;
        let parsed: RemoteSegment = serde_json::from_str(older).expect("parses");
        assert_eq!(parsed.files, SegmentFile::LEGACY.to_vec());
        assert!(parsed.has(SegmentFile::TimeIndex));
        assert!(!parsed.has(SegmentFile::TxnIndex));
    }

    fn objects() -> PartitionObjects {
        PartitionObjects::new(Arc::new(InMemory::new()), &Path::from("p"), Uuid::nil(), 0)
    }

    #[tokio::test]
    async fn commits_form_one_history_and_keys_follow_the_layout() {
        let o = objects();
        assert_eq!(o.latest().await.expect("list"), None);
        for i in 0..3u64 {
            let m = o
                .commit(1, |m| m.with_segment(seg(i * 10, i * 10 + 10, 1)))
                .await
                .expect("commit");
            assert_eq!(m.version, i + 1);
        }
        let m = o.latest().await.expect("read").expect("manifest");
        assert_eq!(m.end_offset(), 30);
        assert_eq!(m.segments.len(), 3);
        assert_eq!(
            o.segment_key(10, 1, SegmentFile::Log).as_ref(),
            "p/topics/00000000-0000-0000-0000-000000000000/0/00000000000000000010-1.log"
        );
    }

    #[tokio::test]
    async fn a_stale_leader_is_fenced() {
        let o = objects();
        o.commit(3, |m| m.with_segment(seg(0, 10, 3)))
            .await
            .expect("old leader");
        // The new leader (epoch 5) uploads 10..25.
        o.commit(5, |m| m.with_segment(seg(10, 25, 5)))
            .await
            .expect("new leader");
        // The old leader still thinks it leads and tries to add its own 10..20.
        let stale = o.commit(3, |m| m.with_segment(seg(10, 20, 3))).await;
        assert!(matches!(
            stale,
            Err(TierError::Fenced {
                ours: 3,
                current: 5
            })
        ));
        let m = o.latest().await.expect("read").expect("manifest");
        assert_eq!(m.segments, vec![seg(0, 10, 3), seg(10, 25, 5)]);
    }

    #[tokio::test]
    async fn racing_leaders_leave_one_history_with_the_current_leaders_segments() {
        // Both read the same version and race for the next; the store lets one win, the loser
        // re-reads: the stale one is then fenced, the new one commits on top.
        for round in 0..20 {
            let o = objects();
            o.commit(3, |m| m.with_segment(seg(0, 10, 3)))
                .await
                .expect("base");
            let (a, b) = (o.clone(), o.clone());
            let stale =
                tokio::spawn(async move { a.commit(3, |m| m.with_segment(seg(10, 20, 3))).await });
            let fresh =
                tokio::spawn(async move { b.commit(5, |m| m.with_segment(seg(10, 30, 5))).await });
            let fresh = fresh
                .await
                .expect("task")
                .expect("the current leader commits");
            let _ = stale.await.expect("task");
            let last = o.latest().await.expect("read").expect("manifest");
            assert!(last.version >= fresh.version, "round {round}");
            assert_eq!(last.leader_epoch, 5, "round {round}: {last:?}");
            assert!(
                last.segments.contains(&seg(10, 30, 5)),
                "round {round}: {last:?}"
            );
            assert!(
                !last.segments.contains(&seg(10, 20, 3)),
                "round {round}: {last:?}"
            );
        }
    }

    #[test]
    fn a_new_segment_replaces_what_it_covers_and_never_cuts_a_hole() {
        let m = Manifest {
            segments: vec![seg(0, 10, 1), seg(10, 20, 1), seg(20, 30, 2)],
            ..Manifest::default()
        };
        // A leader whose log starts at 25 (its disk was wiped when the remote end was 25)
        // uploads 25..40 under a newer epoch: 20..30 stays, or 20..25 would be gone (the
        // fault checker lost 32,000 acknowledged records this way).
        let next = m.with_segment(seg(25, 40, 3));
        assert_eq!(
            next.segments,
            vec![
                seg(0, 10, 1),
                seg(10, 20, 1),
                seg(20, 30, 2),
                seg(25, 40, 3)
            ]
        );
        // What a segment covers entirely goes; what only overlaps it stays.
        let wide = next.with_segment(seg(15, 45, 4));
        assert_eq!(
            wide.segments,
            vec![seg(0, 10, 1), seg(10, 20, 1), seg(15, 45, 4)]
        );
        // Nothing new: unchanged, and never duplicated.
        assert_eq!(wide.with_segment(seg(16, 30, 5)), wide);
        assert_eq!(wide.with_segment(seg(15, 45, 4)), wide);
        let ends: Vec<u64> = wide.segments.iter().map(|s| s.end_offset).collect();
        assert!(ends.is_sorted(), "sorted by end as by base: {ends:?}");
        // Read by spans, every offset once: 15..45 adds from 20 on.
        let spans = |m: &Manifest| -> Vec<(u64, u64)> {
            m.spans().map(|(s, from)| (from, s.end_offset)).collect()
        };
        assert_eq!(spans(&wide), vec![(0, 10), (10, 20), (20, 45)]);
        assert_eq!(spans(&next), vec![(0, 10), (10, 20), (20, 30), (30, 40)]);
        assert_eq!(next.span_start(&seg(25, 40, 3)), 30);
        assert_eq!(next.span_start(&seg(10, 20, 1)), 10);
    }
}
