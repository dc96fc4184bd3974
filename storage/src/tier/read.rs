//! Reading remote segments: aligned byte ranges ("chunks") of segment objects through a foyer
//! hybrid cache (memory, and local disk when configured), with read-ahead for sequential
//! readers so a replay streams instead of waiting on one GET per fetch.
//!
//! A read locates its batch with the segment's remote offset index (fetched once, decoded and
//! kept), walks batch headers from there through the cached chunks and answers whole batches,
//! byte for byte as they were uploaded, as slices of the cached chunks (a read spanning
//! several is not copied into one buffer: a replay's answers are written from the cache; a
//! response holds its chunks until written, even once the cache has let them go). Concurrent
//! readers of one chunk share one GET (foyer's single-flight `get_or_fetch`); GETs are
//! bounded by a semaphore shared with read-ahead.

use std::collections::HashMap;
use std::hash::Hash;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use foyer::{BlockEngineConfig, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::TierError;
use super::manifest::{Manifest, PartitionObjects, RemoteSegment};
use crate::SegmentFile;
use crate::batch::{self, BatchHeader, HEADER_LEN, LOG_OVERHEAD};
use crate::index::{OffsetEntry, SparseIndex, TimeEntry};
use crate::txn_index::{AbortedTxn, collect_aborted, decode_entries};

/// GET attempts for one chunk before the error surfaces to the reader.
const GET_ATTEMPTS: u32 = 3;
/// At most this many chunks of one read are fetched at once ahead of its walk.
const SPAN_CHUNKS: u64 = 8;

/// Memory for decoded remote indexes, per kind; the map is cleared when it would grow past
/// this (a 1 GiB segment's offset index is ~2 MiB).
const INDEX_BYTES_KEPT: usize = 64 << 20;

/// Settings of the remote read path.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Bytes of chunks kept in memory.
    pub memory_bytes: usize,
    /// Bytes of chunks kept on local disk (0: memory only).
    pub disk_bytes: usize,
    /// Directory of the disk cache.
    pub disk_dir: Option<PathBuf>,
    /// Size (and alignment) of one ranged GET.
    pub chunk_bytes: u64,
    /// Chunks fetched ahead of a sequential reader.
    pub readahead_chunks: u64,
    /// GETs in flight at once, reads and read-ahead together.
    pub max_concurrent_gets: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            memory_bytes: 256 << 20,
            disk_bytes: 0,
            disk_dir: None,
            chunk_bytes: 4 << 20,
            readahead_chunks: 4,
            max_concurrent_gets: 16,
        }
    }
}

/// The cache key of one chunk: a segment object (by partition, base offset and the uploading
/// leader's epoch, which name it uniquely and immutably) and the chunk's number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkKey {
    topic_id: u128,
    partition: i32,
    base_offset: u64,
    epoch: i32,
    kind: u8,
    chunk: u64,
}

impl foyer::Code for ChunkKey {
    fn encode(&self, w: &mut impl std::io::Write) -> foyer::Result<()> {
        let mut b = [0u8; 41];
        b[..16].copy_from_slice(&self.topic_id.to_le_bytes());
        b[16..20].copy_from_slice(&self.partition.to_le_bytes());
        b[20..28].copy_from_slice(&self.base_offset.to_le_bytes());
        b[28..32].copy_from_slice(&self.epoch.to_le_bytes());
        b[32] = self.kind;
        b[33..41].copy_from_slice(&self.chunk.to_le_bytes());
        w.write_all(&b).map_err(foyer::Error::io_error)
    }

    fn decode(r: &mut impl std::io::Read) -> foyer::Result<Self> {
        let mut b = [0u8; 41];
        r.read_exact(&mut b).map_err(foyer::Error::io_error)?;
        let arr = |r: Range<usize>| -> [u8; 16] {
            let mut a = [0u8; 16];
            a[..r.len()].copy_from_slice(&b[r]);
            a
        };
        let a4 = |at: usize| [b[at], b[at + 1], b[at + 2], b[at + 3]];
        let a8 = |at: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[at..at + 8]);
            a
        };
        Ok(Self {
            topic_id: u128::from_le_bytes(arr(0..16)),
            partition: i32::from_le_bytes(a4(16)),
            base_offset: u64::from_le_bytes(a8(20)),
            epoch: i32::from_le_bytes(a4(28)),
            kind: b[32],
            chunk: u64::from_le_bytes(a8(33)),
        })
    }

    fn estimated_size(&self) -> usize {
        41
    }
}

/// Marks a [`ChunkKey`] whose `chunk` holds the generation in its upper 32 bits. Keys a
/// disk cache kept from earlier versions held it above bit 40 (where 2^24 rewrites of one
/// segment would have run out) and lack the mark, so they never match a key made now.
const GENERATION_ABOVE_32: u8 = 0x80;

type IndexKey = (Uuid, i32, u64, i32, u32);

/// How the chunk cache serves reads, for the broker's `/metrics`; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct CacheMetrics {
    hits: Counter,
    misses: Counter,
    hit_bytes: Counter,
    miss_bytes: Counter,
    readahead: Counter,
}

impl CacheMetrics {
    /// Adds the metrics to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let counters = [
            (
                "remote_cache_hits",
                "Remote chunk reads the cache answered (including ones a read-ahead was already fetching)",
                &self.hits,
            ),
            (
                "remote_cache_misses",
                "Remote chunk reads that waited for a GET from the object store",
                &self.misses,
            ),
            (
                "remote_cache_hit_bytes",
                "Bytes of remote chunks the cache answered",
                &self.hit_bytes,
            ),
            (
                "remote_cache_miss_bytes",
                "Bytes of remote chunks fetched for a waiting read",
                &self.miss_bytes,
            ),
            (
                "remote_readahead_chunks",
                "Chunks fetched ahead of sequential remote reads",
                &self.readahead,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
    }

    /// Cache hits and misses so far.
    pub fn hits_and_misses(&self) -> (u64, u64) {
        (self.hits.get(), self.misses.get())
    }
}

/// Whole batches read from a remote segment: slices of the cached chunks, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteBatches {
    /// The bytes, in pieces (one per chunk they span).
    pub pieces: Vec<Bytes>,
    /// How many records the batches hold.
    pub records: u64,
}

impl RemoteBatches {
    /// Their size in bytes.
    pub fn len(&self) -> usize {
        self.pieces.iter().map(Bytes::len).sum()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.pieces.iter().all(Bytes::is_empty)
    }

    /// The bytes in one buffer (a copy, unless they are in one piece).
    pub fn into_bytes(mut self) -> Bytes {
        if self.pieces.len() <= 1 {
            return self.pieces.pop().unwrap_or_default();
        }
        let mut out = BytesMut::with_capacity(self.len());
        for p in &self.pieces {
            out.extend_from_slice(p);
        }
        out.freeze()
    }
}

/// Reads remote segments through the chunk cache. One per broker, shared by all partitions.
pub struct RemoteReader {
    cache: HybridCache<ChunkKey, Bytes>,
    config: CacheConfig,
    gets: Arc<Semaphore>,
    offset_indexes: Mutex<HashMap<IndexKey, Arc<SparseIndex<OffsetEntry>>>>,
    time_indexes: Mutex<HashMap<IndexKey, Arc<SparseIndex<TimeEntry>>>>,
    /// Where each partition's last read ended: (segment base, byte position). A read that
    /// starts there is sequential and triggers read-ahead.
    last_read: Mutex<HashMap<(Uuid, i32), (u64, u64)>>,
    metrics: CacheMetrics,
    /// Where GETs and read-ahead run ([`super::background`]); the caller's runtime if None.
    io: Option<Handle>,
}

impl std::fmt::Debug for RemoteReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteReader")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The segment of `manifest` holding `offset`, or (when `offset` falls in a gap a compacted
/// log left between segments) the first one after it: a read there returns the next batch,
/// as a local read does.
fn segment_of(manifest: &Manifest, offset: u64) -> Option<(usize, &RemoteSegment)> {
    let i = manifest
        .segments
        .partition_point(|s| s.end_offset <= offset);
    let seg: &RemoteSegment = manifest.segments.get(i)?;
    (offset >= manifest.log_start_offset).then_some((i, seg))
}

impl RemoteReader {
    /// Builds the cache: memory always, a disk tier when `disk_bytes > 0`.
    pub async fn open(config: CacheConfig) -> Result<Self, TierError> {
        let cache_err = |e: foyer::Error| TierError::Cache(e.to_string());
        if config.chunk_bytes < HEADER_LEN as u64 {
            return Err(TierError::Config {
                key: "cache.chunk_bytes",
                reason: format!("{} is smaller than a batch header", config.chunk_bytes),
            });
        }
        let builder = HybridCacheBuilder::new()
            .with_name("strata-remote")
            .memory(config.memory_bytes.max(1))
            .with_weighter(|_: &ChunkKey, v: &Bytes| v.len())
            .storage();
        let cache = match (&config.disk_dir, config.disk_bytes) {
            (Some(dir), bytes) if bytes > 0 => {
                let device = FsDeviceBuilder::new(dir)
                    .with_capacity(bytes)
                    .build()
                    .map_err(cache_err)?;
                // A block holds whole entries: room for a chunk and its encoding overhead.
                let block = (config.chunk_bytes as usize + 4096).next_power_of_two();
                builder
                    .with_engine_config(BlockEngineConfig::new(device).with_block_size(block))
                    .build()
                    .await
            }
            _ => builder.build().await,
        }
        .map_err(cache_err)?;
        Ok(Self {
            cache,
            gets: Arc::new(Semaphore::new(config.max_concurrent_gets.max(1))),
            config,
            offset_indexes: Mutex::new(HashMap::new()),
            time_indexes: Mutex::new(HashMap::new()),
            last_read: Mutex::new(HashMap::new()),
            metrics: CacheMetrics::default(),
            io: None,
        })
    }

    /// Runs GETs (with the collecting of their bodies) and read-ahead on `io`: a reader
    /// waits for its chunk on its own runtime, and the work of getting it is done on `io`.
    #[must_use]
    pub fn with_io(mut self, io: Handle) -> Self {
        self.io = Some(io);
        self
    }

    /// How the cache has served reads.
    pub fn metrics(&self) -> &CacheMetrics {
        &self.metrics
    }

    /// Whole batches from the remote segment holding `from`, starting with the batch that
    /// contains it, up to `max_bytes` but at least one batch. Reads stop at the segment's end;
    /// the caller reads on from the next offset.
    pub async fn read(
        &self,
        objects: &PartitionObjects,
        manifest: &Manifest,
        from: u64,
        max_bytes: usize,
    ) -> Result<RemoteBatches, TierError> {
        let Some((mut i, _)) = segment_of(manifest, from) else {
            return Err(TierError::NotRemote { offset: from });
        };
        let mut from = from;
        loop {
            let seg = &manifest.segments[i];
            if let Some(bytes) = self
                .read_in(objects, manifest, i, seg, from, max_bytes)
                .await?
            {
                return Ok(bytes);
            }
            // Nothing at or after `from` in this segment (compaction left a gap at its end):
            // the next one's first batch.
            i += 1;
            let Some(next) = manifest.segments.get(i) else {
                return Ok(RemoteBatches::default());
            };
            // Where it overlaps this one, it holds the same batches: `from` still.
            from = next.base_offset.max(from);
        }
    }

    /// [`Self::read`] within segment `i`; `None` when no batch there reaches `from`.
    async fn read_in(
        &self,
        objects: &PartitionObjects,
        manifest: &Manifest,
        i: usize,
        seg: &RemoteSegment,
        from: u64,
        max_bytes: usize,
    ) -> Result<Option<RemoteBatches>, TierError> {
        let mut cursor = Cursor::new(self, objects, seg);
        let index = self.offset_index(objects, seg).await?;
        let rel = from
            .saturating_sub(seg.base_offset)
            .min(u64::from(u32::MAX)) as u32;
        let mut pos = index
            .floor(|e| e.rel_offset <= rel)
            .map_or(0, |e| u64::from(e.position));
        // The chunks this read will walk, fetched at once rather than one after another as
        // the walk below reaches them (errors surface there, after a retry).
        let size = self.config.chunk_bytes;
        let first = pos / size;
        let last = ((pos + max_bytes as u64).min(seg.size_bytes).max(1) - 1) / size;
        let span = first..=last.min(first + SPAN_CHUNKS - 1);
        futures::future::join_all(span.map(|n| self.chunk(objects, seg, SegmentFile::Log, n)))
            .await;
        // Find the batch holding `from`.
        loop {
            let Some(h) = cursor.header(pos).await? else {
                return Ok(None);
            };
            if h.last_offset() >= from as i64 {
                break;
            }
            pos += h.total_len() as u64;
        }
        let start = pos;
        let mut end = pos;
        let mut records = 0u64;
        while let Some(h) = cursor.header(end).await? {
            let len = h.total_len() as u64;
            if end > start && end + len - start > max_bytes as u64 {
                break;
            }
            end += len;
            records += u64::try_from(h.records_count).unwrap_or(0);
            if end - start >= max_bytes as u64 {
                break;
            }
        }
        let pieces = cursor.pieces(start..end).await?;
        self.after_read(objects, manifest, i, start, end);
        Ok(Some(RemoteBatches { pieces, records }))
    }

    /// The aborted transactions whose records may lie in `[from, upper)` of the remote
    /// segments, from their `.txnindex` objects (segments without one had no abort), as
    /// [`crate::Log::aborted_txns`] answers for local ones.
    pub async fn aborted_txns(
        &self,
        objects: &PartitionObjects,
        manifest: &Manifest,
        from: u64,
        upper: u64,
    ) -> Result<Vec<AbortedTxn>, TierError> {
        let mut out = Vec::new();
        for (seg, start) in manifest.spans().filter(|(s, _)| s.end_offset > from) {
            if !seg.has(SegmentFile::TxnIndex) {
                continue;
            }
            let bytes = self.chunk(objects, seg, SegmentFile::TxnIndex, 0).await?;
            // An abort in the overlap with the previous segment is that one's: listed twice,
            // a client would take a later transaction of the producer for aborted too.
            let mut entries = decode_entries(&bytes);
            entries.retain(|e| e.last_offset >= start);
            if collect_aborted(&entries, from, upper, &mut out) {
                break;
            }
        }
        Ok(out)
    }

    /// The first offset at or after `timestamp` in the remote segments (Kafka's ListOffsets by
    /// time), with the timestamp of the batch found; `None` when every remote record is older.
    pub async fn offset_for_timestamp(
        &self,
        objects: &PartitionObjects,
        manifest: &Manifest,
        timestamp: i64,
    ) -> Result<Option<u64>, TierError> {
        let found = self
            .record_for_timestamp(objects, manifest, timestamp)
            .await?;
        Ok(found.map(|(offset, _)| offset))
    }

    /// As [`RemoteReader::offset_for_timestamp`], with the timestamp of the record found.
    pub async fn record_for_timestamp(
        &self,
        objects: &PartitionObjects,
        manifest: &Manifest,
        timestamp: i64,
    ) -> Result<Option<(u64, i64)>, TierError> {
        let log_start = manifest.log_start_offset as i64;
        for seg in manifest.reaching(timestamp) {
            let times = self.time_index(objects, seg).await?;
            let offsets = self.offset_index(objects, seg).await?;
            let rel = times
                .floor(|e| e.timestamp < timestamp)
                .map_or(0, |e| e.rel_offset);
            let mut pos = offsets
                .floor(|e| e.rel_offset <= rel)
                .map_or(0, |e| u64::from(e.position));
            let mut cursor = Cursor::new(self, objects, seg);
            while let Some(h) = cursor.header(pos).await? {
                let len = h.total_len() as u64;
                if h.max_timestamp >= timestamp && h.last_offset() >= log_start {
                    let bytes = cursor.bytes(pos..pos + len).await?;
                    let found = batch::first_record_where(&bytes, &h, |off, ts| {
                        off >= log_start && ts >= timestamp
                    });
                    if let Some((off, ts)) = found {
                        return Ok(Some((off as u64, ts)));
                    }
                }
                pos += len;
            }
        }
        Ok(None)
    }

    /// Remembers where this read ended and, when it continued the previous one, fetches the
    /// next chunks (into the following segments too) in the background.
    fn after_read(
        &self,
        objects: &PartitionObjects,
        manifest: &Manifest,
        seg_index: usize,
        start: u64,
        end: u64,
    ) {
        let seg = &manifest.segments[seg_index];
        let key = (objects.topic_id(), objects.partition());
        let previous = {
            let mut last = self
                .last_read
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            last.insert(key, (seg.base_offset, end))
        };
        let sequential = match previous {
            Some((base, pos)) if base == seg.base_offset => pos == start,
            // The previous read ended a segment, this one starts the next.
            Some((base, _)) => {
                seg_index > 0 && manifest.segments[seg_index - 1].base_offset == base
            }
            None => false,
        };
        if !sequential || self.config.readahead_chunks == 0 {
            return;
        }
        let chunk = self.config.chunk_bytes;
        let mut want = self.config.readahead_chunks;
        let mut next = end.saturating_sub(1) / chunk + 1;
        for s in &manifest.segments[seg_index..] {
            let chunks = s.size_bytes.div_ceil(chunk);
            while next < chunks && want > 0 {
                let (key, path, range) = self.locate(objects, s, SegmentFile::Log, next);
                let fetch = self.fetcher(objects.store().clone(), path, range);
                let cache = self.cache.clone();
                self.metrics.readahead.inc();
                let ahead = async move {
                    if let Err(e) = cache.get_or_fetch(&key, fetch).await {
                        tracing::debug!(error = %e, "read-ahead failed; the reader will retry");
                    }
                };
                match &self.io {
                    Some(io) => drop(io.spawn(ahead)),
                    None => drop(tokio::spawn(ahead)),
                }
                next += 1;
                want -= 1;
            }
            if want == 0 {
                break;
            }
            next = 0;
        }
    }

    fn locate(
        &self,
        objects: &PartitionObjects,
        seg: &RemoteSegment,
        kind: SegmentFile,
        chunk: u64,
    ) -> (ChunkKey, Path, Range<u64>) {
        let key = ChunkKey {
            topic_id: objects.topic_id().as_u128(),
            partition: objects.partition(),
            base_offset: seg.base_offset,
            epoch: seg.leader_epoch,
            kind: kind as u8 | GENERATION_ABOVE_32,
            // Chunk numbers stay below 2^32 (a segment is at most 4 GiB, a chunk at least a
            // batch header); the object's generation takes the upper half, so the key's
            // encoding is unchanged.
            chunk: chunk | (u64::from(seg.generation) << 32),
        };
        let path = seg.key(objects, kind);
        let size = seg.size_bytes;
        let range =
            chunk * self.config.chunk_bytes..((chunk + 1) * self.config.chunk_bytes).min(size);
        (key, path, range)
    }

    /// A GET of `range` of `path` (the whole object for an empty range), retried with backoff,
    /// holding a permit of the shared GET budget.
    fn fetcher(
        &self,
        store: Arc<dyn ObjectStore>,
        path: Path,
        range: Range<u64>,
    ) -> impl FnOnce() -> futures::future::BoxFuture<'static, Result<Bytes, TierError>> + use<>
    {
        let gets = self.gets.clone();
        let io = self.io.clone();
        move || {
            let get = async move {
                let _permit = gets.acquire_owned().await.map_err(|_| TierError::Closed)?;
                let mut attempt = 0;
                loop {
                    let got = if range.is_empty() {
                        match store.get(&path).await {
                            Ok(r) => r.bytes().await,
                            Err(e) => Err(e),
                        }
                    } else {
                        store.get_range(&path, range.clone()).await
                    };
                    match got {
                        Ok(b) => return Ok(b),
                        Err(e @ object_store::Error::NotFound { .. }) => return Err(e.into()),
                        Err(e) if attempt + 1 >= GET_ATTEMPTS => return Err(e.into()),
                        Err(e) => {
                            attempt += 1;
                            tracing::debug!(%path, error = %e, attempt, "remote GET failed; retrying");
                            tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                        }
                    }
                }
            };
            // Spawned only once polled: foyer may make this future and drop it unpolled.
            Box::pin(async move {
                let Some(io) = io else {
                    return get.await;
                };
                super::background::run_on(&io, get).await?
            })
        }
    }

    /// One chunk of a segment object, from the cache or fetched into it.
    async fn chunk(
        &self,
        objects: &PartitionObjects,
        seg: &RemoteSegment,
        kind: SegmentFile,
        chunk: u64,
    ) -> Result<Bytes, TierError> {
        let (key, path, range) = self.locate(objects, seg, kind, chunk);
        if !seg.has(kind) {
            return Err(TierError::Corrupt {
                key: path.to_string(),
                position: 0,
                reason: "the manifest names no such object for the segment",
            });
        }
        // Indexes are fetched whole (their size is not in the manifest): an empty range.
        let range = if kind == SegmentFile::Log {
            range
        } else {
            0..0
        };
        let fetch = self.fetcher(objects.store().clone(), path, range);
        // Whether this read's own fetch ran (was polled; foyer may make the future and drop
        // it unpolled on a hit): a miss.
        let missed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let fetch = {
            let missed = missed.clone();
            move || -> futures::future::BoxFuture<'static, Result<Bytes, TierError>> {
                let fetching = fetch();
                Box::pin(async move {
                    missed.store(true, std::sync::atomic::Ordering::Relaxed);
                    fetching.await
                })
            }
        };
        let entry = self.cache.get_or_fetch(&key, fetch).await.map_err(|e| {
            TierError::Cache(
                e.downcast_ref::<TierError>()
                    .map_or_else(|| e.to_string(), ToString::to_string),
            )
        })?;
        let bytes = entry.value().clone();
        let (count, size) = match missed.load(std::sync::atomic::Ordering::Relaxed) {
            true => (&self.metrics.misses, &self.metrics.miss_bytes),
            false => (&self.metrics.hits, &self.metrics.hit_bytes),
        };
        count.inc();
        size.inc_by(bytes.len() as u64);
        Ok(bytes)
    }

    async fn offset_index(
        &self,
        objects: &PartitionObjects,
        seg: &RemoteSegment,
    ) -> Result<Arc<SparseIndex<OffsetEntry>>, TierError> {
        self.index(objects, seg, SegmentFile::OffsetIndex, &self.offset_indexes)
            .await
    }

    async fn time_index(
        &self,
        objects: &PartitionObjects,
        seg: &RemoteSegment,
    ) -> Result<Arc<SparseIndex<TimeEntry>>, TierError> {
        self.index(objects, seg, SegmentFile::TimeIndex, &self.time_indexes)
            .await
    }

    /// A segment's remote index, decoded once. An index that does not decode is replaced by
    /// an empty one: lookups then scan from the segment's start, slower but correct.
    async fn index<E: crate::index::Entry>(
        &self,
        objects: &PartitionObjects,
        seg: &RemoteSegment,
        kind: SegmentFile,
        kept: &Mutex<HashMap<IndexKey, Arc<SparseIndex<E>>>>,
    ) -> Result<Arc<SparseIndex<E>>, TierError> {
        let key = (
            objects.topic_id(),
            objects.partition(),
            seg.base_offset,
            seg.leader_epoch,
            seg.generation,
        );
        if let Some(i) = kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Ok(i.clone());
        }
        let bytes = self.chunk(objects, seg, kind, 0).await?;
        let index = Arc::new(SparseIndex::decode(&bytes, seg.size_bytes).unwrap_or_else(
            |reason| {
                tracing::warn!(base = seg.base_offset, %reason, "remote index unusable; scanning");
                SparseIndex::default()
            },
        ));
        let mut kept = kept.lock().unwrap_or_else(PoisonError::into_inner);
        let held: usize = kept.values().map(|i| i.heap_bytes()).sum();
        if held + index.heap_bytes() > INDEX_BYTES_KEPT {
            kept.clear();
        }
        kept.insert(key, index.clone());
        Ok(index)
    }
}

/// Walks one remote segment's bytes, holding the chunk last used.
struct Cursor<'a> {
    reader: &'a RemoteReader,
    objects: &'a PartitionObjects,
    seg: &'a RemoteSegment,
    held: Option<(u64, Bytes)>,
}

impl<'a> Cursor<'a> {
    fn new(
        reader: &'a RemoteReader,
        objects: &'a PartitionObjects,
        seg: &'a RemoteSegment,
    ) -> Self {
        Self {
            reader,
            objects,
            seg,
            held: None,
        }
    }

    async fn chunk(&mut self, n: u64) -> Result<Bytes, TierError> {
        if let Some((held, bytes)) = &self.held
            && *held == n
        {
            return Ok(bytes.clone());
        }
        let bytes = self
            .reader
            .chunk(self.objects, self.seg, SegmentFile::Log, n)
            .await?;
        let want = (self.seg.size_bytes - n * self.reader.config.chunk_bytes)
            .min(self.reader.config.chunk_bytes);
        if bytes.len() as u64 != want {
            return Err(self.corrupt(n * self.reader.config.chunk_bytes, "short chunk"));
        }
        self.held = Some((n, bytes.clone()));
        Ok(bytes)
    }

    /// The bytes of `range`, as a slice of each chunk it spans.
    async fn pieces(&mut self, range: Range<u64>) -> Result<Vec<Bytes>, TierError> {
        let size = self.reader.config.chunk_bytes;
        let mut out = Vec::new();
        let mut at = range.start;
        while at < range.end {
            let n = at / size;
            let c = self.chunk(n).await?;
            let to = range.end.min((n + 1) * size);
            out.push(c.slice((at - n * size) as usize..(to - n * size) as usize));
            at = to;
        }
        Ok(out)
    }

    /// The bytes of `range`: a slice of one chunk, or a copy joining several.
    async fn bytes(&mut self, range: Range<u64>) -> Result<Bytes, TierError> {
        let pieces = self.pieces(range).await?;
        Ok(RemoteBatches { pieces, records: 0 }.into_bytes())
    }

    /// The header of the batch at `pos`; `None` at the segment's end. A header that does not
    /// fit the object is corruption, reported rather than followed.
    async fn header(&mut self, pos: u64) -> Result<Option<BatchHeader>, TierError> {
        let size = self.seg.size_bytes;
        if pos >= size {
            return Ok(None);
        }
        if pos + HEADER_LEN as u64 > size {
            return Err(self.corrupt(pos, "truncated batch header"));
        }
        let bytes = self.bytes(pos..pos + HEADER_LEN as u64).await?;
        let h = BatchHeader::parse(&bytes).ok_or_else(|| self.corrupt(pos, "short header"))?;
        if (h.batch_length as i64) < (HEADER_LEN - LOG_OVERHEAD) as i64
            || pos + h.total_len() as u64 > size
        {
            return Err(self.corrupt(pos, "batch length outside the segment"));
        }
        Ok(Some(h))
    }

    fn corrupt(&self, pos: u64, what: &'static str) -> TierError {
        TierError::Corrupt {
            key: self.seg.key(self.objects, SegmentFile::Log).to_string(),
            position: pos,
            reason: what,
        }
    }
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;

    use super::*;
    use crate::tier::upload::upload_sealed;
    use crate::{BatchBuilder, Log, LogConfig};

    /// A log of `n` batches (two records each, timestamps 1000 + 10·i) with small segments,
    /// uploaded; returns it with its manifest.
    async fn uploaded(n: i64) -> (tempfile::TempDir, Log, PartitionObjects, Arc<Manifest>) {
        uploaded_with(n, |_| ()).await
    }

    /// As [`uploaded`], with `before` run on the log before its segments are sealed and
    /// uploaded.
    async fn uploaded_with(
        n: i64,
        before: impl FnOnce(&Log),
    ) -> (tempfile::TempDir, Log, PartitionObjects, Arc<Manifest>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Log::open(
            dir.path(),
            LogConfig {
                segment_bytes: 8 * 1024,
                index_interval_bytes: 512,
                segment_ms: None,
                ..LogConfig::default()
            },
        )
        .expect("open");
        for i in 0..n {
            let v = vec![(i % 251) as u8; 300 + (i as usize % 7) * 40];
            let b = BatchBuilder::new()
                .value(Some(b"k"), &v, 1000 + 10 * i)
                .value(None, &v[..10], 1000 + 10 * i + 5)
                .build();
            log.append(&b, 1).expect("append");
        }
        before(&log);
        log.roll().expect("roll");
        log.flush().expect("flush");
        let objects =
            PartitionObjects::new(Arc::new(InMemory::new()), &Path::from("r"), Uuid::nil(), 0);
        let m = upload_sealed(&log, &objects, 1).await.expect("upload");
        (dir, log, objects, m)
    }

    fn small_chunks() -> CacheConfig {
        // Chunks smaller than a segment, not aligned to batches: reads cross chunk edges.
        CacheConfig {
            chunk_bytes: 1000,
            readahead_chunks: 2,
            memory_bytes: 1 << 20,
            ..CacheConfig::default()
        }
    }

    /// Segments where transactions aborted upload their `.txnindex`, the others none, and
    /// the remote answer for any range is the local one.
    #[tokio::test]
    async fn remote_aborted_transactions_answer_what_the_local_indexes_hold() {
        let aborts = [(1, 3, 5, 10), (2, 40, 44, 45), (3, 46, 80, 81)];
        let (_dir, log, objects, m) = uploaded_with(120, |log| {
            for (producer_id, first, last, lso) in aborts {
                log.append_aborted(crate::AbortedTxn {
                    producer_id,
                    first_offset: first,
                    last_offset: last,
                    last_stable_offset: lso,
                })
                .expect("abort");
            }
        })
        .await;
        let with_index = m
            .segments
            .iter()
            .filter(|s| s.has(SegmentFile::TxnIndex))
            .count();
        assert!(
            (2..=3).contains(&with_index) && with_index < m.segments.len(),
            "{with_index} of {} segments have an index",
            m.segments.len()
        );
        let reader = RemoteReader::open(small_chunks()).await.expect("cache");
        for (from, upto) in [(0, 4), (0, 50), (6, 45), (45, 120), (81, 120), (0, 240)] {
            let remote = reader
                .aborted_txns(&objects, &m, from, upto)
                .await
                .expect("remote");
            let local = log.aborted_txns(from, upto).expect("local");
            assert_eq!(remote, local, "{from}..{upto}");
        }
        // 0..46 reads the first two transactions' records; the third starts at 46.
        let first_two = reader
            .aborted_txns(&objects, &m, 0, 46)
            .await
            .expect("remote");
        assert_eq!(first_two.len(), 2);
    }

    /// A replica whose segments were cut elsewhere uploaded after the first leader, so its
    /// first new segment overlaps that one's last: an abort recorded in both is listed once
    /// (twice, a client would take the producer's next transaction for aborted too), and
    /// every offset reads as the log holds it.
    #[tokio::test]
    async fn overlapping_remote_segments_list_each_abort_once() {
        let aborts = |log: &Log| {
            for k in 0..60 {
                let first = 2 * k as u64;
                log.append_aborted(crate::AbortedTxn {
                    producer_id: k,
                    first_offset: first,
                    last_offset: first + 1,
                    last_stable_offset: first + 2,
                })
                .expect("abort");
            }
        };
        let (_dir, log, _, _) = uploaded_with(120, aborts).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let replica = Log::open(
            dir.path(),
            LogConfig {
                segment_bytes: 3 * 1024,
                index_interval_bytes: 512,
                segment_ms: None,
                ..LogConfig::default()
            },
        )
        .expect("open");
        let all = log.read(0, usize::MAX / 2).expect("read");
        let mut at = 0;
        while let Some(h) = BatchHeader::parse(&all[at..]) {
            let len = h.total_len();
            replica.append_replica(&all[at..at + len]).expect("replica");
            at += len;
        }
        aborts(&replica);
        replica.roll().expect("roll");
        replica.flush().expect("flush");
        let objects =
            PartitionObjects::new(Arc::new(InMemory::new()), &Path::from("o"), Uuid::nil(), 0);
        let upto = log.segments()[3].base_offset;
        crate::tier::upload::upload_sealed_below(&log, &objects, 1, upto, &|_| Default::default())
            .await
            .expect("first leader");
        let m = upload_sealed(&replica, &objects, 2).await.expect("replica");
        crate::tier::upload::two_leaders::assert_overlapping(&m);
        let reader = RemoteReader::open(small_chunks()).await.expect("cache");
        for (from, upto) in [(0, 120), (upto - 10, upto + 10), (upto, 120)] {
            let remote = reader
                .aborted_txns(&objects, &m, from, upto)
                .await
                .expect("remote");
            assert_eq!(remote, log.aborted_txns(from, upto).expect("local"));
        }
        for from in 0..m.end_offset() {
            let remote = reader
                .read(&objects, &m, from, 700)
                .await
                .expect("remote")
                .into_bytes();
            let local = log.read(from, remote.len()).expect("local");
            assert_eq!(&local[..], &remote[..], "offset {from}");
        }
    }

    #[tokio::test]
    async fn remote_reads_answer_the_bytes_the_local_log_holds_from_every_offset() {
        let (_dir, log, objects, m) = uploaded(120).await;
        assert_eq!(m.end_offset(), log.log_end_offset());
        assert!(m.segments.len() > 5, "{} segments", m.segments.len());
        let reader = RemoteReader::open(small_chunks()).await.expect("cache");
        same_as_local(&reader, &log, &objects, &m).await;
        // The same with GETs and read-ahead on a niced runtime of their own.
        let io = crate::tier::background::Background::start(1, 5).expect("runtime");
        let reader = RemoteReader::open(small_chunks())
            .await
            .expect("cache")
            .with_io(io.handle().clone());
        same_as_local(&reader, &log, &objects, &m).await;
        assert!(reader.metrics().hits_and_misses().1 > 0, "fetched there");
    }

    /// A GET runs on the reader's `io` runtime, not the caller's: one that hangs there ends,
    /// with an error, when that runtime is shut down.
    #[tokio::test]
    async fn gets_run_on_the_io_runtime() {
        use crate::tier::fault::{Fault, FaultyStore};

        let (_dir, _log, objects, m) = uploaded(20).await;
        let (faulty, switch) = FaultyStore::new(objects.store().clone());
        let objects = PartitionObjects::new(Arc::new(faulty), &Path::from("r"), Uuid::nil(), 0);
        switch.set(Fault::Hang);
        let io = crate::tier::background::Background::start(1, 0).expect("runtime");
        let reader = Arc::new(
            RemoteReader::open(small_chunks())
                .await
                .expect("cache")
                .with_io(io.handle().clone()),
        );
        let read = {
            let (reader, m) = (reader.clone(), m.clone());
            tokio::spawn(async move { reader.read(&objects, &m, 0, 1000).await.map(drop) })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!read.is_finished(), "the GET hangs");
        drop(io);
        let ended = tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("ended with its runtime")
            .expect("task");
        assert!(ended.is_err(), "{ended:?}");
    }

    async fn same_as_local(
        reader: &RemoteReader,
        log: &Log,
        objects: &PartitionObjects,
        m: &Manifest,
    ) {
        let mut in_pieces = 0;
        for from in 0..m.end_offset() {
            for max in [1, 700, 5000] {
                let batches = reader.read(objects, m, from, max).await.expect("remote");
                // Reads across chunk edges answer slices of the chunks, not a copy.
                in_pieces += usize::from(batches.pieces.len() > 1);
                let records = batches.records;
                let remote = batches.into_bytes();
                let mut counted = 0;
                let mut at = 0;
                while let Some(h) = BatchHeader::parse(&remote[at..]) {
                    counted += h.records_count as u64;
                    at += h.total_len();
                }
                assert_eq!(records, counted, "offset {from} max {max}");
                let local = log.read(from, max).expect("local");
                // The remote read stops at its segment's end; the local one may go on.
                assert!(!remote.is_empty(), "offset {from}");
                assert_eq!(
                    &local[..remote.len()],
                    &remote[..],
                    "offset {from} max {max}"
                );
            }
        }
        assert!(in_pieces > 0, "no read crossed a chunk edge");
        let past = reader.read(objects, m, m.end_offset(), 100).await;
        assert!(matches!(past, Err(TierError::NotRemote { .. })));
    }

    /// A copy with gaps (what compaction leaves: every third batch gone, so offsets jump inside
    /// segments and between them) reads remotely as it does locally, from every offset.
    #[tokio::test]
    async fn remote_reads_of_a_log_with_gaps_return_the_next_batch_from_a_gap() {
        let (_dir, leader, _, _) = uploaded(90).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let copy = Log::open(
            dir.path(),
            LogConfig {
                segment_bytes: 4 * 1024,
                index_interval_bytes: 512,
                segment_ms: None,
                ..LogConfig::default()
            },
        )
        .expect("open");
        let all = leader.read(0, usize::MAX / 2).expect("read");
        let mut at = 0;
        let mut i = 0;
        while let Some(h) = BatchHeader::parse(&all[at..]) {
            let len = h.total_len();
            if i % 3 != 1 {
                copy.append_replica(&all[at..at + len]).expect("replica");
            }
            at += len;
            i += 1;
        }
        copy.roll().expect("roll");
        copy.flush().expect("flush");
        let objects =
            PartitionObjects::new(Arc::new(InMemory::new()), &Path::from("g"), Uuid::nil(), 0);
        // A gap at a segment's end: the remote segment's range covers it up to the next
        // base, and a read there continues in the next segment.
        assert!(
            copy.segments()
                .windows(2)
                .any(|w| w[0].next_offset < w[1].base_offset),
            "a segment ends in a gap"
        );
        let m = upload_sealed(&copy, &objects, 1).await.expect("upload");
        assert!(
            m.segments
                .windows(2)
                .all(|w| w[0].end_offset == w[1].base_offset),
            "remote ranges follow each other"
        );
        let reader = RemoteReader::open(small_chunks()).await.expect("cache");
        for from in 0..m.end_offset() {
            let remote = reader
                .read(&objects, &m, from, 700)
                .await
                .expect("remote")
                .into_bytes();
            let local = copy.read(from, 700).expect("local");
            assert!(!remote.is_empty(), "offset {from}");
            assert_eq!(&local[..remote.len()], &remote[..], "offset {from}");
        }
    }

    /// The offset after the last whole batch in `bytes`.
    fn next_offset(bytes: &[u8]) -> u64 {
        let mut at = 0;
        let mut next = 0;
        while let Some(h) = BatchHeader::parse(&bytes[at..]) {
            next = h.last_offset() as u64 + 1;
            at += h.total_len();
            if at >= bytes.len() {
                break;
            }
        }
        next
    }

    #[tokio::test]
    async fn a_sequential_reader_finds_the_next_chunks_already_fetched() {
        let (_dir, log, objects, m) = uploaded(120).await;
        let (faulty, switch) = crate::tier::fault::FaultyStore::new(objects.store().clone());
        let objects = PartitionObjects::new(Arc::new(faulty), &Path::from("r"), Uuid::nil(), 0);
        let reader = RemoteReader::open(small_chunks()).await.expect("cache");
        // Two reads, the second continuing the first: read-ahead starts.
        let first = reader
            .read(&objects, &m, 0, 700)
            .await
            .expect("read")
            .into_bytes();
        let from = next_offset(&first);
        let second = reader
            .read(&objects, &m, from, 700)
            .await
            .expect("read")
            .into_bytes();
        let from = next_offset(&second);
        tokio::time::sleep(Duration::from_millis(300)).await;
        // With the store failing, the next read is served from what read-ahead fetched.
        switch.set(crate::tier::fault::Fault::Fail);
        let third = reader
            .read(&objects, &m, from, 700)
            .await
            .expect("read-ahead")
            .into_bytes();
        let local = log.read(from, 700).expect("local");
        assert_eq!(&local[..third.len()], &third[..]);
        // A read elsewhere needs the store, and says so.
        let far = m.segments[m.segments.len() - 1].base_offset;
        assert!(reader.read(&objects, &m, far, 700).await.is_err());
    }

    #[tokio::test]
    async fn a_second_read_of_the_same_bytes_is_a_cache_hit() {
        let (_dir, _log, objects, m) = uploaded(120).await;
        let reader = RemoteReader::open(small_chunks()).await.expect("cache");
        let first = reader
            .read(&objects, &m, 0, 700)
            .await
            .expect("read")
            .into_bytes();
        let (hits, misses) = reader.metrics().hits_and_misses();
        assert!(misses >= 1, "a cold read misses");
        let again = reader
            .read(&objects, &m, 0, 700)
            .await
            .expect("read")
            .into_bytes();
        assert_eq!(first, again);
        let (hits_after, misses_after) = reader.metrics().hits_and_misses();
        assert_eq!(misses_after, misses, "nothing missed the second time");
        assert!(hits_after > hits, "the second read hit");
    }

    #[tokio::test]
    async fn remote_time_lookups_match_the_local_log() {
        let (_dir, log, objects, m) = uploaded(80).await;
        let reader = RemoteReader::open(small_chunks()).await.expect("cache");
        for ts in [0, 1000, 1004, 1005, 1006, 1333, 1555, 1795, 1796, 5000] {
            assert_eq!(
                reader
                    .offset_for_timestamp(&objects, &m, ts)
                    .await
                    .expect("remote"),
                log.offset_for_timestamp(ts).expect("local"),
                "timestamp {ts}"
            );
        }
    }

    #[tokio::test]
    async fn a_corrupt_segment_is_reported_not_followed() {
        let (_dir, _log, objects, m) = uploaded(20).await;
        let seg = &m.segments[0];
        let key = objects.segment_key(seg.base_offset, seg.leader_epoch, SegmentFile::Log);
        let mut bytes = objects
            .store()
            .get(&key)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes")
            .to_vec();
        // The batch's length field claims more than the segment holds.
        bytes[8..12].copy_from_slice(&i32::MAX.to_be_bytes());
        objects.store().put(&key, bytes.into()).await.expect("put");
        let reader = RemoteReader::open(small_chunks()).await.expect("cache");
        let got = reader.read(&objects, &m, seg.base_offset, 1 << 20).await;
        assert!(matches!(got, Err(TierError::Corrupt { .. })), "{got:?}");
    }
}
