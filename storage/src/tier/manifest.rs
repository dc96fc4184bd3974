//! The partition manifest: which segments of a partition live in object storage.
//!
//! Each commit writes a new immutable object `manifest/<version>.json` (20-digit version) with
//! a create-only conditional put, so exactly one writer wins each version and the versions
//! form a single history. Every manifest records the leader epoch of its writer; a writer
//! whose epoch is older than the newest manifest's is fenced and commits nothing. A new
//! leader's commit drops remote segments of older epochs that overlap its own, so its data
//! wins where a stale leader's diverged.
//!
//! A partition may hold years of segments, so a version does not write its whole segment list:
//! runs of [`CHUNK`] segments are sealed into immutable chunk objects
//! (`manifest/chunks/<first-base>-<uuid>.json`) that later versions name again as long as
//! their segments are unchanged, and the version object holds only the chunk references and
//! the segments after the last chunk. A commit writes the version object plus the chunks
//! whose segments changed (the last one, when a run fills; the ones retention or a remote
//! clean touched), so its cost does not grow with the segments already held. A
//! [`PartitionObjects`] keeps the newest manifest it read or committed, and loads only the
//! chunks that one does not already have.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};

use futures::{StreamExt, TryStreamExt};
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
/// Segments per chunk object: a version object holds fewer than this many segments after
/// its chunks (about 256 bytes each), and one chunk reference per this many before.
pub const CHUNK: usize = 512;
/// Chunk objects read at once when a manifest is loaded.
const CHUNK_READS: usize = 64;

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

    /// What names its objects: `(base offset, leader epoch, generation)`.
    pub fn name(&self) -> (u64, i32, u32) {
        (self.base_offset, self.leader_epoch, self.generation)
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
    /// Remote segments in offset order, shared by the versions that hold them: a commit
    /// copies the list, not the segments.
    pub segments: Vec<Arc<RemoteSegment>>,
    /// How the version this was read as or committed as splits `segments` into chunk
    /// objects (see the module doc); not part of the manifest's content (a manifest changed
    /// in memory keeps its source's layout until it is committed).
    #[serde(skip)]
    pub layout: Layout,
}

/// The chunk objects of a stored manifest version, in order: chunk `i` holds the
/// `count` segments after those of the chunks before it; the version object holds the rest.
/// Equal to every other layout, as it describes storage, not content.
#[derive(Clone, Debug, Default)]
pub struct Layout(Vec<ChunkRef>);

impl PartialEq for Layout {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Layout {}

impl Layout {
    /// The chunk objects' names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|c| c.name.as_str())
    }
}

/// A chunk object named by a manifest version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ChunkRef {
    /// Its file name under `manifest/chunks/`.
    name: String,
    /// Segments it holds.
    count: usize,
    /// Its first segment's base offset and its last one's end offset, checked on load.
    base_offset: u64,
    end_offset: u64,
}

/// A manifest version as stored: its segments after the chunks' inline, as `tail`. Versions
/// written before chunks hold every segment as `segments`, which is never written now: a
/// broker from before chunks finds no `segments` in a newer version and refuses it (an
/// error it retries) rather than taking the tail for the whole list, which would hide the
/// older segments from its reads and drop them at its next commit.
#[derive(Serialize, Deserialize)]
struct Stored {
    version: u64,
    leader_epoch: i32,
    log_start_offset: u64,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    cleaned_offset: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    chunks: Vec<ChunkRef>,
    /// Every segment, in versions written before chunks.
    #[serde(default, skip_serializing)]
    segments: Vec<Arc<RemoteSegment>>,
    /// The segments after the chunks'.
    #[serde(default)]
    tail: Vec<Arc<RemoteSegment>>,
}

/// A chunk object's content.
#[derive(Serialize, Deserialize)]
struct Chunk {
    segments: Vec<Arc<RemoteSegment>>,
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

    /// The retained segments whose records reach `timestamp` (largest timestamp at or after
    /// it), in offset order: where a search for the first record at or after `timestamp`
    /// looks, the first of them first.
    pub fn reaching(&self, timestamp: i64) -> impl Iterator<Item = &RemoteSegment> {
        self.segments
            .iter()
            .map(AsRef::as_ref)
            .filter(move |s| s.end_offset > self.log_start_offset && s.max_timestamp >= timestamp)
    }

    /// Whether `segment` is one of this manifest's segments.
    pub fn holds(&self, segment: &RemoteSegment) -> bool {
        self.segments.iter().any(|s| s.as_ref() == segment)
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
            .map(|(s, end)| (s.as_ref(), s.base_offset.max(end)))
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
        // The usual upload: past the last segment's end, so it covers and is covered by none.
        if next
            .segments
            .last()
            .is_none_or(|last| last.end_offset <= segment.base_offset)
        {
            next.segments.push(Arc::new(segment));
            return next;
        }
        if next.segments.iter().any(|s| covers(s, &segment)) {
            return next;
        }
        next.segments.retain(|s| !covers(&segment, s));
        next.segments.push(Arc::new(segment));
        next.segments.sort_by_key(|s| s.base_offset);
        next
    }
}

/// How a commit stores a manifest: the chunk objects it names, which of them are new (with
/// the range of segments each holds), and where the segments held inline begin.
struct Plan {
    chunks: Vec<ChunkRef>,
    new: Vec<(ChunkRef, Range<usize>)>,
    inline: usize,
}

impl Plan {
    /// How to store `next`, made from `current` (as read or committed, with its layout):
    /// every chunk of `current` whose segments `next` still holds, unchanged and in place,
    /// is named again, and the segments between those go into new chunks; after the last
    /// chunk kept, whole runs of [`CHUNK`] segments are sealed and the rest stays inline.
    /// Neighbouring chunks that fit in one are merged into one, so retention and remote
    /// cleans cannot leave ever more, ever smaller chunks.
    fn of(current: &Manifest, next: &Manifest) -> Plan {
        let segments = &next.segments;
        // Pieces covering `segments[..covered]`: chunks kept, and the runs between them.
        let mut pieces: Vec<(Range<usize>, Option<&ChunkRef>)> = Vec::new();
        let (mut covered, mut from) = (0, 0);
        for c in &current.layout.0 {
            let old = current.segments.get(from..from + c.count);
            from += c.count;
            let Some(first) = old.and_then(|o| o.first()) else {
                continue;
            };
            let at = covered
                + segments[covered..].partition_point(|s| s.base_offset < first.base_offset);
            if segments.get(at..at + c.count) == old {
                if at > covered {
                    pieces.push((covered..at, None));
                }
                pieces.push((at..at + c.count, Some(c)));
                covered = at + c.count;
            }
        }
        let inline = covered + (segments.len() - covered) / CHUNK * CHUNK;
        if inline > covered {
            pieces.push((covered..inline, None));
        }
        let mut plan = Plan {
            chunks: Vec::new(),
            new: Vec::new(),
            inline,
        };
        let mut group: Option<(Range<usize>, Option<&ChunkRef>)> = None;
        for (range, kept) in pieces {
            let parts: Vec<_> = match kept {
                Some(c) => vec![(range, Some(c))],
                None => range
                    .clone()
                    .step_by(CHUNK)
                    .map(|s| (s..range.end.min(s + CHUNK), None))
                    .collect(),
            };
            for (r, c) in parts {
                group = match group.take() {
                    Some((g, _)) if g.len() + r.len() <= CHUNK => Some((g.start..r.end, None)),
                    Some(full) => {
                        plan.push(segments, full);
                        Some((r, c))
                    }
                    None => Some((r, c)),
                };
            }
        }
        if let Some(last) = group {
            plan.push(segments, last);
        }
        plan
    }

    /// Names chunk `kept` again, or a new chunk of `segments[range]`.
    fn push(
        &mut self,
        segments: &[Arc<RemoteSegment>],
        (range, kept): (Range<usize>, Option<&ChunkRef>),
    ) {
        if let Some(c) = kept {
            self.chunks.push(c.clone());
            return;
        }
        let run = &segments[range.clone()];
        let (Some(first), Some(last)) = (run.first(), run.last()) else {
            return;
        };
        let chunk = ChunkRef {
            name: format!("{:020}-{}.json", first.base_offset, Uuid::new_v4().simple()),
            count: run.len(),
            base_offset: first.base_offset,
            end_offset: last.end_offset,
        };
        self.new.push((chunk.clone(), range));
        self.chunks.push(chunk);
    }
}

/// The manifests and segment objects of one partition. Clones share the newest manifest
/// read or committed through any of them.
#[derive(Debug, Clone)]
pub struct PartitionObjects {
    store: Arc<dyn ObjectStore>,
    root: Path,
    topic_id: Uuid,
    partition: i32,
    newest: Arc<Mutex<Option<Arc<Manifest>>>>,
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
            newest: Arc::default(),
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

    /// The prefix chunk objects live under.
    pub fn chunks_dir(&self) -> Path {
        self.root.clone().join("manifest").join("chunks")
    }

    fn chunk_key(&self, name: &str) -> Path {
        self.chunks_dir().join(name)
    }

    /// Versions present, ascending.
    async fn versions(&self) -> Result<Vec<u64>, TierError> {
        let dir = self.root.clone().join("manifest");
        // Not recursive: the chunks under `manifest/chunks/` are not versions.
        let listed = self.store.list_with_delimiter(Some(&dir)).await?;
        let mut versions: Vec<u64> = listed
            .objects
            .iter()
            .filter_map(|m| m.location.filename()?.strip_suffix(".json")?.parse().ok())
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    /// The version object of `version`, decoded.
    async fn read_stored(&self, version: u64) -> Result<Stored, TierError> {
        let key = self.manifest_key(version);
        let bytes = self.store.get(&key).await?.bytes().await?;
        serde_json::from_slice(&bytes).map_err(|source| TierError::Manifest {
            path: key.to_string(),
            source,
        })
    }

    /// The chunk objects' names that the versions present name (what a reader may still be
    /// loading).
    pub async fn named_chunks(&self) -> Result<HashSet<String>, TierError> {
        let mut names = HashSet::new();
        for v in self.versions().await? {
            match self.read_stored(v).await {
                Ok(stored) => names.extend(stored.chunks.into_iter().map(|c| c.name)),
                // Deleted since the listing: a newer version names what it still uses.
                Err(TierError::Store(object_store::Error::NotFound { .. })) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(names)
    }

    /// Manifest version `version`, its chunks taken from `known` where it has them (a chunk
    /// object never changes) and read otherwise.
    async fn read(&self, version: u64, known: Option<&Manifest>) -> Result<Manifest, TierError> {
        let stored = self.read_stored(version).await?;
        let mut have: HashMap<&str, &[Arc<RemoteSegment>]> = HashMap::new();
        if let Some(known) = known {
            let mut at = 0;
            for c in &known.layout.0 {
                if let Some(segments) = known.segments.get(at..at + c.count) {
                    have.insert(c.name.as_str(), segments);
                }
                at += c.count;
            }
        }
        // Each read owns what it uses: the futures run concurrently, borrowing nothing.
        let reads: Vec<_> = stored
            .chunks
            .iter()
            .map(|c| {
                let have = have.get(c.name.as_str()).map(|s| s.to_vec());
                let (c, objects) = (c.clone(), self.clone());
                async move {
                    let segments = match have {
                        Some(segments) => segments,
                        None => objects.read_chunk(&c).await?,
                    };
                    let matches = segments.len() == c.count
                        && segments.first().map(|s| s.base_offset) == Some(c.base_offset)
                        && segments.last().map(|s| s.end_offset) == Some(c.end_offset);
                    if !matches {
                        return Err(TierError::Corrupt {
                            key: objects.chunk_key(&c.name).to_string(),
                            position: 0,
                            reason: "the chunk does not hold the segments its manifest names",
                        });
                    }
                    Ok(segments)
                }
            })
            .collect();
        let loaded: Vec<Vec<Arc<RemoteSegment>>> = futures::stream::iter(reads)
            .buffered(CHUNK_READS)
            .try_collect()
            .await?;
        let inline = stored.segments.len() + stored.tail.len();
        let mut segments = Vec::with_capacity(loaded.iter().map(Vec::len).sum::<usize>() + inline);
        loaded.into_iter().for_each(|c| segments.extend(c));
        segments.extend(stored.segments);
        segments.extend(stored.tail);
        Ok(Manifest {
            version: stored.version,
            leader_epoch: stored.leader_epoch,
            log_start_offset: stored.log_start_offset,
            cleaned_offset: stored.cleaned_offset,
            segments,
            layout: Layout(stored.chunks),
        })
    }

    async fn read_chunk(&self, c: &ChunkRef) -> Result<Vec<Arc<RemoteSegment>>, TierError> {
        let key = self.chunk_key(&c.name);
        let bytes = self.store.get(&key).await?.bytes().await?;
        let chunk: Chunk =
            serde_json::from_slice(&bytes).map_err(|source| TierError::Manifest {
                path: key.to_string(),
                source,
            })?;
        Ok(chunk.segments)
    }

    /// The newest manifest this handle (or a clone) read or committed.
    fn known(&self) -> Option<Arc<Manifest>> {
        self.newest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Keeps `manifest` as the newest known, unless a newer one is.
    fn remember(&self, manifest: &Arc<Manifest>) {
        let mut newest = self.newest.lock().unwrap_or_else(PoisonError::into_inner);
        if newest
            .as_ref()
            .is_none_or(|n| n.version <= manifest.version)
        {
            *newest = Some(manifest.clone());
        }
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
    pub async fn latest(&self) -> Result<Option<Arc<Manifest>>, TierError> {
        Ok(self.newest().await?.1)
    }

    /// The versions present and the newest manifest, from one listing.
    async fn newest(&self) -> Result<(Vec<u64>, Option<Arc<Manifest>>), TierError> {
        let versions = self.versions().await?;
        let Some(version) = versions.last().copied() else {
            return Ok((versions, None));
        };
        let known = self.known();
        if let Some(known) = known.as_ref().filter(|k| k.version == version) {
            return Ok((versions, Some(known.clone())));
        }
        let read = Arc::new(self.read(version, known.as_deref()).await?);
        self.remember(&read);
        Ok((versions, Some(read)))
    }

    /// Commits the manifest `change` makes of the newest one, as leader of `epoch`. Fails
    /// with [`TierError::Fenced`] once a newer epoch has committed; on losing a race it
    /// re-reads and applies `change` again.
    pub async fn commit(
        &self,
        epoch: i32,
        change: impl Fn(&Manifest) -> Manifest,
    ) -> Result<Arc<Manifest>, TierError> {
        for _ in 0..MAX_ATTEMPTS {
            let (present, current) = self.newest().await?;
            let current = current.unwrap_or_default();
            if current.leader_epoch > epoch {
                return Err(TierError::Fenced {
                    ours: epoch,
                    current: current.leader_epoch,
                });
            }
            let mut next = change(&current);
            next.version = current.version + 1;
            next.leader_epoch = epoch;
            let plan = Plan::of(&current, &next);
            next.layout = Layout(plan.chunks.clone());
            for (chunk, range) in &plan.new {
                let body = Chunk {
                    segments: next.segments[range.clone()].to_vec(),
                };
                self.put_json(&self.chunk_key(&chunk.name), &body, PutMode::Overwrite)
                    .await?;
            }
            let stored = Stored {
                version: next.version,
                leader_epoch: next.leader_epoch,
                log_start_offset: next.log_start_offset,
                cleaned_offset: next.cleaned_offset,
                chunks: plan.chunks,
                segments: Vec::new(),
                tail: next.segments[plan.inline..].to_vec(),
            };
            let put = self
                .put_json(&self.manifest_key(next.version), &stored, PutMode::Create)
                .await;
            match put {
                Ok(()) => {
                    let next = Arc::new(next);
                    self.remember(&next);
                    let keep_from = next.version.saturating_sub(KEEP_VERSIONS);
                    self.forget(present.into_iter().filter(|v| *v < keep_from))
                        .await;
                    return Ok(next);
                }
                Err(TierError::Store(object_store::Error::AlreadyExists { .. })) => {
                    // Lost the race: the chunks written for this attempt are named by no
                    // version (the orphan sweep would delete them later).
                    for (chunk, _) in &plan.new {
                        let _ = self.store.delete(&self.chunk_key(&chunk.name)).await;
                    }
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        Err(TierError::Contended {
            attempts: MAX_ATTEMPTS,
        })
    }

    async fn put_json(
        &self,
        key: &Path,
        value: &impl Serialize,
        mode: PutMode,
    ) -> Result<(), TierError> {
        let body = serde_json::to_vec(value).map_err(|source| TierError::Manifest {
            path: key.to_string(),
            source,
        })?;
        self.store
            .put_opts(key, PutPayload::from(body), PutOptions::from(mode))
            .await?;
        Ok(())
    }

    /// Deletes the manifest `versions` (best effort: a leftover is harmless, and one another
    /// writer deleted first is no error). A commit passes the old ones it listed before it.
    async fn forget(&self, versions: impl Iterator<Item = u64>) {
        for v in versions {
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
            segments: [legacy, a, b].map(Arc::new).to_vec(),
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
        assert_eq!(m.segments, [seg(0, 10, 3), seg(10, 25, 5)].map(Arc::new));
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
            assert!(last.holds(&seg(10, 30, 5)), "round {round}: {last:?}");
            assert!(!last.holds(&seg(10, 20, 3)), "round {round}: {last:?}");
        }
    }

    #[test]
    fn a_new_segment_replaces_what_it_covers_and_never_cuts_a_hole() {
        let m = Manifest {
            segments: [seg(0, 10, 1), seg(10, 20, 1), seg(20, 30, 2)]
                .map(Arc::new)
                .to_vec(),
            ..Manifest::default()
        };
        // A leader whose log starts at 25 (its disk was wiped when the remote end was 25)
        // uploads 25..40 under a newer epoch: 20..30 stays, or 20..25 would be gone (the
        // fault checker lost 32,000 acknowledged records this way).
        let next = m.with_segment(seg(25, 40, 3));
        assert_eq!(
            next.segments,
            [
                seg(0, 10, 1),
                seg(10, 20, 1),
                seg(20, 30, 2),
                seg(25, 40, 3)
            ]
            .map(Arc::new)
        );
        // What a segment covers entirely goes; what only overlaps it stays.
        let wide = next.with_segment(seg(15, 45, 4));
        assert_eq!(
            wide.segments,
            [seg(0, 10, 1), seg(10, 20, 1), seg(15, 45, 4)].map(Arc::new)
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

    /// A partition whose store counts bytes, and a reader of the same store that has read
    /// nothing yet.
    fn metered() -> (PartitionObjects, super::super::metered::StoreMetrics) {
        let metrics = super::super::metered::StoreMetrics::default();
        let store: Arc<dyn ObjectStore> = Arc::new(super::super::metered::MeteredStore::new(
            Arc::new(InMemory::new()),
            metrics.clone(),
        ));
        let o = PartitionObjects::new(store, &Path::from("p"), Uuid::nil(), 0);
        (o, metrics)
    }

    /// What a broker that has read nothing finds: the same segments, every time.
    async fn reread(o: &PartitionObjects) -> Arc<Manifest> {
        let fresh = PartitionObjects::new(o.store().clone(), &Path::from("p"), Uuid::nil(), 0);
        fresh.latest().await.expect("read").expect("manifest")
    }

    async fn chunk_objects(o: &PartitionObjects) -> usize {
        let listed: Vec<_> = o
            .store()
            .list(Some(&o.chunks_dir()))
            .try_collect()
            .await
            .expect("list");
        listed.len()
    }

    #[tokio::test]
    async fn a_commit_writes_what_changed_not_every_segment_held() {
        let (o, metrics) = metered();
        let held = 20 * CHUNK as u64 + 7;
        o.commit(1, |_| Manifest {
            segments: (0..held)
                .map(|i| Arc::new(seg(i * 10, i * 10 + 10, 1)))
                .collect(),
            ..Manifest::default()
        })
        .await
        .expect("commit");
        assert_eq!(chunk_objects(&o).await, 20);
        let one_chunk = metrics.bytes("put") / 21;
        for i in held..held + 3 * CHUNK as u64 {
            let (put, get) = (metrics.bytes("put"), metrics.bytes("get"));
            let m = o
                .commit(1, |m| m.with_segment(seg(i * 10, i * 10 + 10, 1)))
                .await
                .expect("commit");
            // The version object (chunk references and fewer than CHUNK segments) and, when
            // a run fills, one chunk: never the 10,000 segments before.
            let put = metrics.bytes("put") - put;
            assert!(put <= 2 * one_chunk + 4096, "{put} bytes put at {i}");
            assert_eq!(
                metrics.bytes("get") - get,
                0,
                "the newest manifest is known"
            );
            assert_eq!(m.segments.len() as u64, i + 1);
        }
        assert_eq!(chunk_objects(&o).await, 23);
        let read = reread(&o).await;
        assert_eq!(
            read.segments,
            o.latest().await.expect("read").expect("m").segments
        );
        assert_eq!(read.end_offset(), (held + 3 * CHUNK as u64) * 10);
    }

    #[tokio::test]
    async fn every_change_reads_back_the_same_from_an_empty_broker() {
        // Uploads, retention, DeleteRecords, remote cleans of runs anywhere and segments
        // that overlap, in a pseudo-random order: each version reads back exactly, and
        // chunks stay whole or small ones merge.
        let (o, _) = metered();
        let mut rng = 0x5eed_u64;
        let mut next = || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            rng >> 33
        };
        let mut end = 0u64;
        for round in 0..300 {
            let current = o.latest().await.expect("read").unwrap_or_default();
            let n = current.segments.len() as u64;
            let op = next() % 10;
            let m = match op {
                // Uploads, some many at once (a migration, a catch-up).
                0..=5 => {
                    let count = if op == 0 {
                        next() % (3 * CHUNK as u64)
                    } else {
                        1 + next() % 5
                    };
                    let added: Vec<_> = (0..count)
                        .map(|i| seg(end + i * 10, end + i * 10 + 10, 1))
                        .collect();
                    end += count * 10;
                    o.commit(1, |m| {
                        added
                            .iter()
                            .fold(m.clone(), |m, s| m.with_segment(s.clone()))
                    })
                    .await
                }
                6 if n > 0 => {
                    let to = current.segments[(next() % n) as usize].end_offset;
                    o.commit(1, |m| m.starting_at(to)).await
                }
                _ if n > 1 => {
                    let i = (next() % n) as usize;
                    let len = (1 + next() % 40).min(n - i as u64) as usize;
                    let old: Vec<RemoteSegment> = current.segments[i..i + len]
                        .iter()
                        .map(|s| s.as_ref().clone())
                        .collect();
                    let (first, last) = (&old[0], &old[len - 1]);
                    let mut new = seg(first.base_offset, last.end_offset, 1);
                    new.generation = current.generation_for(
                        first.base_offset,
                        last.end_offset,
                        Writer::Compaction,
                    );
                    o.commit(1, |m| m.replacing(&old, &new)).await
                }
                _ => continue,
            }
            .expect("commit");
            let read = reread(&o).await;
            assert_eq!(read.segments, m.segments, "round {round}");
            assert_eq!(read.log_start_offset, m.log_start_offset, "round {round}");
            let counts: Vec<usize> = read.layout.0.iter().map(|c| c.count).collect();
            assert!(
                counts.iter().sum::<usize>() <= read.segments.len(),
                "round {round}"
            );
            assert!(
                read.segments.len() - counts.iter().sum::<usize>() < CHUNK,
                "round {round}: fewer than a chunk inline"
            );
            assert!(
                counts.windows(2).all(|w| w[0] + w[1] > CHUNK),
                "round {round}: neighbours that fit in one chunk are one: {counts:?}"
            );
        }
    }

    #[tokio::test]
    async fn manifests_written_before_chunks_are_read_and_chunked_at_the_next_commit() {
        let (o, _) = metered();
        let old = Manifest {
            version: 4,
            leader_epoch: 2,
            segments: (0..CHUNK as u64 + 3)
                .map(|i| Arc::new(seg(i, i + 1, 2)))
                .collect(),
            ..Manifest::default()
        };
        let body = serde_json::to_vec(&old).expect("encode");
        assert!(!String::from_utf8_lossy(&body).contains("chunks"));
        o.store()
            .put(&o.manifest_key(4), PutPayload::from(body))
            .await
            .expect("put");
        assert_eq!(reread(&o).await.segments, old.segments);
        let m = o
            .commit(2, |m| {
                m.with_segment(seg(CHUNK as u64 + 3, CHUNK as u64 + 4, 2))
            })
            .await
            .expect("commit");
        assert_eq!((m.version, m.segments.len()), (5, CHUNK + 4));
        assert_eq!(chunk_objects(&o).await, 1);
        assert_eq!(reread(&o).await.segments, m.segments);
        // A broker from before chunks decodes a version as a `Manifest`: it must fail on one
        // written now, not take its inline tail for every segment.
        let body = o
            .store()
            .get(&o.manifest_key(5))
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        let err = serde_json::from_slice::<Manifest>(&body).expect_err("older brokers refuse it");
        assert!(err.to_string().contains("segments"), "{err}");
    }

    #[tokio::test]
    async fn a_chunk_that_does_not_hold_what_its_manifest_names_is_refused() {
        let (o, _) = metered();
        let m = o
            .commit(1, |_| Manifest {
                segments: (0..CHUNK as u64)
                    .map(|i| Arc::new(seg(i, i + 1, 1)))
                    .collect(),
                ..Manifest::default()
            })
            .await
            .expect("commit");
        let name = m.layout.names().next().expect("a chunk").to_owned();
        let other = Chunk {
            segments: (0..CHUNK as u64)
                .map(|i| Arc::new(seg(i + 1, i + 2, 1)))
                .collect(),
        };
        o.put_json(&o.chunk_key(&name), &other, PutMode::Overwrite)
            .await
            .expect("put");
        let fresh = PartitionObjects::new(o.store().clone(), &Path::from("p"), Uuid::nil(), 0);
        assert!(matches!(
            fresh.latest().await,
            Err(TierError::Corrupt { .. })
        ));
    }
}
