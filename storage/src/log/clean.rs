//! Cleaning a compacted log's sealed segments (see [`crate::compact`] for the rules): map the
//! dirty section, rewrite the segments from the log start with what stays, swap them in.
//!
//! The cleaner reads sealed segment files through its own handles, without the log's lock;
//! they are immutable, and one retention deletes meanwhile stays readable through the open
//! handle (the commit then sees the change and gives the pass up). Only the swap takes the
//! write lock.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::Log;
use crate::batch::{self, HEADER_LEN};
use crate::compact::{Aborted, Filter, FilterStats, OffsetMap, Verdict};
use crate::error::{IoContext, StorageError};
use crate::segment::SegmentInfo;

/// Bytes read from a segment file at a time.
const READ_CHUNK: usize = 1 << 20;

/// What a local clean did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalClean {
    /// The segments rewritten: base offsets `from..to`.
    pub from: u64,
    pub to: u64,
    pub stats: FilterStats,
    /// False when the segments changed under the pass (retention ran) and it was given up.
    pub applied: bool,
}

/// File in a log directory holding the offset below which a completed pass cleaned the log.
const CLEANED_FILE: &str = "cleaner-offset";

impl Log {
    /// The offset below which a completed pass cleaned the log (the dirty section starts
    /// there): 0 when none has, never past the log end (a truncation may have cut it).
    /// Losing the file costs only work: a pass that maps from lower cleans the same way.
    pub fn cleaned_offset(&self) -> u64 {
        self.cleaner_checkpoint().0.min(self.log_end_offset())
    }

    /// [`Self::cleaned_offset`], and the timestamp (Unix ms) of the oldest tombstone or marker
    /// the last pass kept (see [`crate::compact::FilterStats::oldest_delete_ms`]): a pass is
    /// due once that is older than the topic's `delete.retention.ms` (as it is then, so a
    /// lowered setting applies at once) even if little is dirty. One read of the file.
    pub fn cleaner_state(&self) -> (u64, Option<i64>) {
        let (offset, due) = self.cleaner_checkpoint();
        (offset.min(self.log_end_offset()), due)
    }

    fn cleaner_checkpoint(&self) -> (u64, Option<i64>) {
        let text = std::fs::read_to_string(self.dir.join(CLEANED_FILE)).unwrap_or_default();
        let mut fields = text.split_whitespace();
        let offset = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        (offset, fields.next().and_then(|s| s.parse().ok()))
    }

    /// Records that a pass cleaned everything below `offset`, and the timestamp of the oldest
    /// delete it kept; written after its swap is durable, atomically (a crash leaves the old
    /// value).
    pub fn set_cleaned_offset(
        &self,
        offset: u64,
        oldest_delete_ms: Option<i64>,
    ) -> Result<(), StorageError> {
        let path = self.dir.join(CLEANED_FILE);
        let tmp = self.dir.join(format!("{CLEANED_FILE}.tmp"));
        let oldest = oldest_delete_ms.map_or(String::new(), |t| format!(" {t}"));
        std::fs::write(&tmp, format!("{offset}{oldest}\n")).io_ctx("write", &tmp)?;
        std::fs::rename(&tmp, &path).io_ctx("rename", &tmp)
    }

    /// Where a clean that must not reach `limit` ends: the base offset of the first segment
    /// holding an offset at or past `limit` (the active one at most). Everything below it is
    /// in sealed segments.
    pub fn clean_bound(&self, limit: u64) -> u64 {
        let inner = self.read_inner();
        let active = inner.active.base_offset;
        inner
            .all()
            .find(|s| s.base_offset == active || s.next_offset > limit)
            .map_or(active, |s| s.base_offset)
    }

    /// Bytes of the local segments below `to` that hold offsets below `first_dirty` (clean)
    /// and that do not (dirty): the parts of the dirty ratio.
    pub fn clean_and_dirty_bytes(&self, first_dirty: u64, to: u64) -> (u64, u64) {
        let (mut clean, mut dirty) = (0, 0);
        for s in self.read_inner().all().filter(|s| s.next_offset <= to) {
            match s.next_offset <= first_dirty {
                true => clean += s.size,
                false => dirty += s.size,
            }
        }
        (clean, dirty)
    }

    /// Adds the keys of the local batches from `map.end()` up to `to` to `map`, in order,
    /// until it is full. `io(bytes)` is called after each read (the cleaner's rate limit).
    pub fn map_dirty(
        &self,
        map: &mut OffsetMap,
        to: u64,
        aborted: &Aborted,
        io: &mut dyn FnMut(u64),
    ) -> Result<(), StorageError> {
        let from = map.end().max(self.log_start_offset());
        let mut full = false;
        for seg in self.sealed_in(from, to) {
            each_batch(&seg, from, io, &mut |batch| {
                full = !map.add(batch, aborted)?;
                Ok(!full)
            })?;
            if full {
                return Ok(());
            }
        }
        map.covered_to(to);
        Ok(())
    }

    /// The aborted transactions the local segments below `to` know.
    pub fn aborted_below(&self, to: u64) -> Result<Aborted, StorageError> {
        Ok(Aborted::new(self.aborted_txns(0, to)?))
    }

    /// Rewrites the sealed segments below `to` (a [`Self::clean_bound`]) keeping what `map`
    /// says stays, and swaps them in; `io(bytes)` is called after each read and write. `clean_below` is where this pass's dirty section started; tombstones and empty
    /// transactions' markers older than `delete_horizon_ms` below it go. `None` when there is
    /// nothing below `to`.
    pub fn clean_with(
        &self,
        map: &OffsetMap,
        aborted: &Aborted,
        clean_below: u64,
        delete_horizon_ms: i64,
        to: u64,
        io: &mut dyn FnMut(u64),
    ) -> Result<Option<LocalClean>, StorageError> {
        let segments = self.sealed_in(0, to);
        let Some(from) = segments.first().map(|s| s.base_offset) else {
            return Ok(None);
        };
        let mut rewrite = self.rewrite_segments(from, to)?;
        let mut filter = Filter::new(map, aborted, clean_below, delete_horizon_ms);
        for seg in &segments {
            let written = filter.stats.bytes_out;
            each_batch(seg, 0, io, &mut |batch| {
                let verdict = filter.judge(batch)?;
                let kept: &[u8] = match &verdict {
                    Verdict::Keep => batch,
                    Verdict::Drop => return Ok(true),
                    Verdict::Rewrite(bytes) => bytes,
                };
                rewrite.append(kept)?;
                let header = batch::check_frame(kept, 0)?;
                if header.is_control()
                    && let Some(entry) = aborted.ended_at(header.base_offset as u64)
                {
                    rewrite.append_aborted(entry)?;
                }
                Ok(true)
            })?;
            io(filter.stats.bytes_out - written);
        }
        let applied = self.commit_rewrite(rewrite)?;
        Ok(Some(LocalClean {
            from,
            to,
            stats: filter.stats,
            applied,
        }))
    }

    /// The sealed segments below the segment base `to` that hold offsets at or past `from`.
    fn sealed_in(&self, from: u64, to: u64) -> Vec<SegmentInfo> {
        let inner = self.read_inner();
        inner
            .sealed
            .iter()
            .filter(|s| s.next_offset > from && s.base_offset < to)
            .map(|s| s.info())
            .collect()
    }
}

/// Calls `f` with each whole batch of the sealed segment `seg` whose last offset is at or
/// past `from`, until it answers false.
fn each_batch(
    seg: &SegmentInfo,
    from: u64,
    io: &mut dyn FnMut(u64),
    f: &mut dyn FnMut(&[u8]) -> Result<bool, StorageError>,
) -> Result<(), StorageError> {
    let path: &Path = &seg.log_path;
    let file = File::open(path).io_ctx("open", path)?;
    let mut buf = vec![0u8; READ_CHUNK];
    let mut pos = 0u64;
    while pos < seg.size_bytes {
        let want = ((seg.size_bytes - pos) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..want], pos)
            .io_ctx("read", path)?;
        io(want as u64);
        let mut at = 0;
        while at + HEADER_LEN <= want {
            let header = batch::check_header(&buf[at..want], at)?;
            let len = header.total_len();
            if at + len > want {
                break;
            }
            if header.last_offset() as u64 >= from && !f(&buf[at..at + len])? {
                return Ok(());
            }
            at += len;
        }
        if at == 0 {
            // One batch larger than the buffer: read it whole (a sealed segment ends with a
            // whole batch, so anything else is damage).
            let header = batch::check_header(&buf[..want], pos as usize)?;
            if header.total_len() <= buf.len() {
                return Err(batch::BatchError::Truncated {
                    at: pos as usize,
                    available: want,
                }
                .into());
            }
            buf.resize(header.total_len(), 0);
            continue;
        }
        pos += at as u64;
    }
    Ok(())
}
