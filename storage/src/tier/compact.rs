//! Compaction of a partition's segments in object storage (Kafka refuses tiered storage on
//! compacted topics; Strata compacts both places with the same rules, see
//! [`crate::compact`]).
//!
//! A pass reads the remote segments through the read cache, filters their batches with the
//! pass's key map, writes each run of segments (merged while their sizes add up to
//! `segment.bytes`) as one new segment under a new *generation* of object keys, uploads it,
//! and commits one manifest version that replaces the runs and records where the pass's map
//! ended ([`Manifest::cleaned_offset`]). Old objects are left to orphan cleanup, after its
//! grace period, so a reader holding an older manifest keeps reading them. A crash before
//! the commit leaves only unreferenced new objects (orphans too); after it, the new
//! manifest stands.

use std::path::Path as FsPath;
use std::sync::Arc;

use object_store::ObjectStoreExt;

use super::TierError;
use super::manifest::{Manifest, PartitionObjects, RemoteSegment, Writer};
use super::read::RemoteReader;
use super::upload::upload_file;
use crate::SegmentFile;
use crate::batch::{self, BatchHeader};
use crate::compact::{Aborted, Filter, FilterStats, OffsetMap, Verdict};
use crate::segment::Segment;

/// Bytes asked of the read cache at a time.
const READ_CHUNK: usize = 1 << 20;

/// What a remote pass is to do.
#[derive(Debug)]
pub struct RemotePass<'a> {
    pub map: &'a OffsetMap,
    pub aborted: &'a Aborted,
    /// Where the pass's dirty section starts (see [`Filter::new`]).
    pub clean_below: u64,
    pub delete_horizon_ms: i64,
    /// Remote segments starting below this are cleaned (the local pass's bound: a segment
    /// base; records at or past it are kept unless the map supersedes them).
    pub to: u64,
    /// Runs of segments are merged up to this many bytes (`segment.bytes`).
    pub segment_bytes: u64,
    /// The leader epoch the manifest is committed under (and the new objects named by).
    pub epoch: i32,
    /// Where the new segments are built before their upload.
    pub scratch: &'a FsPath,
    /// Held by the partition's uploader from listing its local segments to committing their
    /// upload; the pass holds it from its last look at the manifest to its commit. (A
    /// segment the uploader listed before the local pass swapped in its cleaned copy goes up
    /// dirty; the pass cleans what was uploaded meanwhile before it records the partition
    /// clean, or that segment would stay dirty below `cleaned_offset` for good.)
    pub uploads: &'a tokio::sync::Mutex<()>,
}

/// What a remote pass did.
#[derive(Debug, Clone)]
pub struct RemoteClean {
    /// The manifest in force afterwards.
    pub manifest: Arc<Manifest>,
    /// Remote segments read, and segments written in their place.
    pub segments_in: usize,
    pub segments_out: usize,
    pub stats: FilterStats,
}

/// Adds the keys of the remote batches from `map.end()` up to `to` to `map`, until it is
/// full; `io(bytes)` after each read.
pub async fn map_remote(
    reader: &RemoteReader,
    objects: &PartitionObjects,
    manifest: &Manifest,
    map: &mut OffsetMap,
    to: u64,
    aborted: &Aborted,
    io: &mut (dyn FnMut(u64) + Send),
) -> Result<(), TierError> {
    let from = map.end().max(manifest.log_start_offset);
    for seg in manifest
        .segments
        .iter()
        .filter(|s| s.end_offset > from && s.base_offset < to)
    {
        let mut full = false;
        each_batch(reader, objects, manifest, seg, from, io, &mut |b, h| {
            if h.base_offset as u64 >= to {
                return Ok(false);
            }
            full = !map.add(b, aborted)?;
            Ok(!full)
        })
        .await?;
        if full {
            return Ok(());
        }
    }
    map.covered_to(to);
    Ok(())
}

/// Cleans the remote segments below `pass.to` and commits the result as leader of
/// `pass.epoch`, recording `cleaned_offset`; `publish` gets the new manifest before this
/// returns. `None` when there was nothing to clean.
pub async fn compact_remote(
    reader: &RemoteReader,
    objects: &PartitionObjects,
    pass: &RemotePass<'_>,
    cleaned_offset: u64,
    io: &mut (dyn FnMut(u64) + Send),
    publish: impl FnOnce(&Arc<Manifest>),
) -> Result<Option<RemoteClean>, TierError> {
    let Some(manifest) = objects.latest().await? else {
        return Ok(None);
    };
    let candidates: Vec<&RemoteSegment> = manifest
        .segments
        .iter()
        .map(AsRef::as_ref)
        .filter(|s| s.base_offset < pass.to)
        .collect();
    if candidates.is_empty() {
        return Ok(None);
    }
    let mut filter = Filter::new(
        pass.map,
        pass.aborted,
        pass.clean_below,
        pass.delete_horizon_ms,
    );
    let mut replaced: Vec<(Vec<RemoteSegment>, RemoteSegment)> = Vec::new();
    let mut segments_in = 0;
    for run in runs(&candidates, pass.segment_bytes) {
        segments_in += run.len();
        if let Some(new) =
            rewrite_run(reader, objects, &manifest, run, pass, &mut filter, io).await?
        {
            replaced.push((run.iter().map(|s| (*s).clone()).collect(), new));
        }
    }
    // What was uploaded while the pass ran: cleaned too, under the lock, so the commit
    // records nothing clean that is not.
    let _uploads = pass.uploads.lock().await;
    let latest = objects.latest().await?.unwrap_or_default();
    replaced.retain(|(old, _)| old.iter().all(|o| latest.holds(o)));
    let added: Vec<&RemoteSegment> = latest
        .segments
        .iter()
        .map(AsRef::as_ref)
        .filter(|s| s.base_offset < pass.to && !manifest.holds(s))
        .collect();
    for seg in added {
        segments_in += 1;
        let run = std::slice::from_ref(&seg);
        if let Some(new) = rewrite_run(reader, objects, &latest, run, pass, &mut filter, io).await?
        {
            replaced.push((run.iter().map(|s| (*s).clone()).collect(), new));
        }
    }
    let segments_out = replaced.len();
    let next = objects
        .commit(pass.epoch, |m| {
            let mut next = m.clone();
            for (old, new) in &replaced {
                next = next.replacing(old, new);
            }
            next.cleaned_offset = next.cleaned_offset.max(cleaned_offset);
            next
        })
        .await?;
    publish(&next);
    Ok(Some(RemoteClean {
        manifest: next,
        segments_in,
        segments_out,
        stats: filter.stats,
    }))
}

impl Manifest {
    /// This manifest with the run `old` replaced by `new`, when every segment of the run is
    /// still in it as it was (retention or another pass may have changed it meanwhile; then
    /// the run stays and `new`'s objects become orphans).
    pub fn replacing(&self, old: &[RemoteSegment], new: &RemoteSegment) -> Manifest {
        let mut next = self.clone();
        if !old.iter().all(|o| next.holds(o)) {
            return next;
        }
        next.segments
            .retain(|s| !old.iter().any(|o| o == s.as_ref()));
        next.segments.push(Arc::new(new.clone()));
        next.segments.sort_by_key(|s| s.base_offset);
        next
    }
}

/// Consecutive segments grouped while their sizes add up to at most `limit` (a segment
/// larger than that alone).
fn runs<'a>(segments: &'a [&'a RemoteSegment], limit: u64) -> Vec<&'a [&'a RemoteSegment]> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0u64);
    for (i, s) in segments.iter().enumerate() {
        if i > start && size + s.size_bytes > limit {
            out.push(&segments[start..i]);
            (start, size) = (i, 0);
        }
        size += s.size_bytes;
    }
    if start < segments.len() {
        out.push(&segments[start..]);
    }
    out
}

/// Writes and uploads the cleaned `run` as one segment; `None` when it is a single segment
/// the pass left as it was.
async fn rewrite_run(
    reader: &RemoteReader,
    objects: &PartitionObjects,
    manifest: &Manifest,
    run: &[&RemoteSegment],
    pass: &RemotePass<'_>,
    filter: &mut Filter<'_>,
    io: &mut (dyn FnMut(u64) + Send),
) -> Result<Option<RemoteSegment>, TierError> {
    let (first, last) = (run[0], run[run.len() - 1]);
    let local = |e: crate::StorageError| TierError::Local {
        path: pass.scratch.to_owned(),
        source: std::io::Error::other(e.to_string()),
    };
    std::fs::create_dir_all(pass.scratch).map_err(|source| TierError::Local {
        path: pass.scratch.to_owned(),
        source,
    })?;
    let mut out = Segment::create(pass.scratch, first.base_offset).map_err(local)?;
    let before = filter.stats;
    let mut last_crc = 0;
    for seg in run {
        let mut failed = None;
        each_batch(reader, objects, manifest, seg, 0, io, &mut |b, h| {
            let kept: &[u8] = match filter.judge(b)? {
                Verdict::Drop => return Ok(true),
                Verdict::Keep => b,
                Verdict::Rewrite(bytes) => {
                    let h = batch::check_frame(&bytes, 0)?;
                    if let Err(e) = out.append(&[&bytes], &[h], INDEX_INTERVAL) {
                        failed = Some(e);
                        return Ok(false);
                    }
                    last_crc = h.crc;
                    return Ok(true);
                }
            };
            if let Err(e) = out.append(&[kept], &[*h], INDEX_INTERVAL) {
                failed = Some(e);
                return Ok(false);
            }
            last_crc = h.crc;
            if h.is_control()
                && let Some(entry) = pass.aborted.ended_at(h.base_offset as u64)
                && let Err(e) = out.append_aborted(entry)
            {
                failed = Some(e);
                return Ok(false);
            }
            Ok(true)
        })
        .await?;
        if let Some(e) = failed {
            return Err(local(e));
        }
    }
    let unchanged = run.len() == 1
        && filter.stats.bytes_out - before.bytes_out == filter.stats.bytes_in - before.bytes_in;
    if unchanged {
        out.delete().map_err(local)?;
        return Ok(None);
    }
    out.seal(false).map_err(local)?;
    let info = out.info();
    let generation =
        manifest.generation_for(first.base_offset, last.end_offset, Writer::Compaction);
    let mut epochs: Vec<(i32, u64)> = Vec::new();
    for (epoch, start) in run.iter().flat_map(|s| s.epochs.iter().copied()) {
        if epochs.last().is_none_or(|(e, _)| epoch > *e) {
            epochs.push((epoch, start));
        }
    }
    let mut new = RemoteSegment {
        base_offset: first.base_offset,
        end_offset: last.end_offset,
        max_timestamp: run.iter().map(|s| s.max_timestamp).max().unwrap_or(-1),
        size_bytes: info.size_bytes,
        leader_epoch: pass.epoch,
        epochs,
        last_batch_crc: last_crc,
        files: info.files().iter().map(|(f, _)| *f).collect(),
        open_txns: last.open_txns.clone(),
        generation,
    };
    for (file, path) in info.files() {
        let handle = std::fs::File::open(path).map_err(|source| TierError::Local {
            path: path.to_owned(),
            source,
        })?;
        upload_file(objects, new.key(objects, file), handle, path).await?;
    }
    // The producers' state at the run's end is the last segment's: it ends there too.
    let snapshot = SegmentFile::ProducerSnapshot;
    if last.has(snapshot) {
        let store = objects.store();
        store
            .copy(&last.key(objects, snapshot), &new.key(objects, snapshot))
            .await?;
        new.files.push(snapshot);
    }
    out.delete().map_err(local)?;
    Ok(Some(new))
}

/// Index entries of rewritten remote segments: Kafka's default `index.interval.bytes`.
const INDEX_INTERVAL: u64 = 4096;

/// A visitor of batches: false stops the walk.
type Visit<'a> = dyn FnMut(&[u8], &BatchHeader) -> Result<bool, batch::BatchError> + Send + 'a;

/// Calls `f` with each batch of remote segment `seg` whose last offset is at or past `from`,
/// in order, until it answers false. Batches where `seg` overlaps the segment before it are
/// that one's ([`Manifest::spans`]).
async fn each_batch(
    reader: &RemoteReader,
    objects: &PartitionObjects,
    manifest: &Manifest,
    seg: &RemoteSegment,
    from: u64,
    io: &mut (dyn FnMut(u64) + Send),
    f: &mut Visit<'_>,
) -> Result<(), TierError> {
    let from = from.max(manifest.span_start(seg));
    let mut offset = from;
    while offset < seg.end_offset {
        let bytes = reader
            .read(objects, manifest, offset, READ_CHUNK)
            .await?
            .into_bytes();
        io(bytes.len() as u64);
        let mut at = 0;
        let mut next = None;
        while at + batch::HEADER_LEN <= bytes.len() {
            let h = batch::check_frame(&bytes[at..], at).map_err(|e| corrupt(seg, objects, e))?;
            // A read past a gap at the segment's end continues into the next segment.
            if h.base_offset as u64 >= seg.end_offset {
                return Ok(());
            }
            let b = &bytes[at..at + h.total_len()];
            if h.last_offset() as u64 >= from && !f(b, &h).map_err(|e| corrupt(seg, objects, e))? {
                return Ok(());
            }
            next = Some(h.last_offset() as u64 + 1);
            at += h.total_len();
        }
        match next {
            Some(n) => offset = n,
            None => return Ok(()),
        }
    }
    Ok(())
}

fn corrupt(seg: &RemoteSegment, objects: &PartitionObjects, e: batch::BatchError) -> TierError {
    TierError::Local {
        path: std::path::PathBuf::from(seg.key(objects, SegmentFile::Log).to_string()),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
    }
}
