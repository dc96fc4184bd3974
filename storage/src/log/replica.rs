//! The replica's append: batches keep the offsets, leader epochs and timestamps they arrive
//! with, for a follower copying its leader and for a log rebuilt from object storage.
//!
//! A leader's log is dense: every offset up to the end is in some batch, and recovery treats
//! a base offset that does not follow the previous batch as damage (the base offset is outside
//! the CRC). Copies of a compacted leader have gaps, so the first append that leaves one marks
//! the log (an `offset-gaps` file, written and fsynced before the data) and from then on its
//! recovery only requires offsets to increase.

use std::path::Path;

use super::{Log, NO_TIMESTAMP};
use crate::batch::{self, BatchError};
use crate::checkpoint;
use crate::error::{IoContext, StorageError};
use crate::log::AppendInfo;

/// Present in a log directory whose offsets may have gaps.
const GAPS_MARKER: &str = "offset-gaps";

/// Whether the log in `dir` may have gaps between its batches.
pub(super) fn allows_gaps(dir: &Path) -> bool {
    dir.join(GAPS_MARKER).exists()
}

impl Log {
    /// Appends `records` (one or more v2 batches) as they are: their base offsets, leader
    /// epochs and timestamps are kept. The first must start at or after the log end and each
    /// one after the one before; a gap is allowed (see the module documentation). The batches'
    /// frames, CRCs and counts are checked, not their records (their leader judged those). On
    /// any error the log is unchanged.
    pub fn append_replica(&self, records: &[u8]) -> Result<AppendInfo, StorageError> {
        self.check_online()?;
        let batches = batch::check_replicated_batches(records)?;
        let (info, flush) = {
            let mut inner = self.write_inner();
            let end = inner.active.next_offset;
            let mut next = end;
            let mut dense = true;
            for b in &batches {
                let base = u64::try_from(b.header.base_offset).unwrap_or(0);
                if b.header.base_offset < 0 || base < next {
                    return Err(BatchError::OffsetBehind {
                        at: b.pos,
                        offset: b.header.base_offset,
                        expected: next,
                    }
                    .into());
                }
                dense &= base == next;
                next = b.header.last_offset() as u64 + 1;
            }
            let first = u64::try_from(batches[0].header.base_offset).unwrap_or(end);
            let last = next - 1;
            let max = u64::from(u32::MAX);
            if last - first > max {
                return Err(BatchError::TooManyRecords {
                    count: last - first + 1,
                    max: max + 1,
                }
                .into());
            }
            if !dense {
                mark_gaps(&self.dir)?;
            }
            let incoming_ts = batches
                .iter()
                .map(|b| b.header.max_timestamp)
                .max()
                .unwrap_or(NO_TIMESTAMP);
            let now = self.clock.now_ms();
            if inner.active.is_empty() && inner.active.base_offset != first {
                // Nothing in the active segment yet: start it where the batches start.
                let old = std::mem::replace(
                    &mut inner.active,
                    crate::segment::Segment::create(&self.dir, first)?,
                );
                old.delete()?;
                inner.active_since = now;
                self.lock_sync().dir_synced_base = u64::MAX;
            } else if inner.roll_due(records.len() as u64, last, incoming_ts, now) {
                self.roll_locked_at(&mut inner, first)?;
            }
            let headers: Vec<_> = batches.iter().map(|b| b.header).collect();
            let interval = inner.config.index_interval_bytes;
            inner.active.append(&[records], &headers, interval)?;
            let info = AppendInfo {
                first_offset: first,
                last_offset: last,
                record_count: headers.iter().map(|h| h.records_count as u64).sum(),
                max_timestamp: incoming_ts,
                log_append_time: None,
                log_start_offset: inner.log_start_offset,
            };
            (info, (inner.config.flush, inner.config.flush_messages))
        };
        self.flush_after_append(info, flush)
    }
}

impl Log {
    /// Moves the log end up to `offset`, past a gap: the next append starts there. What
    /// follows a copy that ends in a gap (a compacted log restored from object storage ends
    /// where its manifest does, after its last batch).
    pub fn skip_to(&self, offset: u64) -> Result<(), StorageError> {
        self.check_online()?;
        {
            let mut inner = self.write_inner();
            if offset <= inner.active.next_offset {
                return Ok(());
            }
            mark_gaps(&self.dir)?;
            if inner.active.is_empty() {
                let old = std::mem::replace(
                    &mut inner.active,
                    crate::segment::Segment::create(&self.dir, offset)?,
                );
                old.delete()?;
                inner.active_since = self.clock.now_ms();
                self.lock_sync().dir_synced_base = u64::MAX;
            } else {
                self.roll_locked_at(&mut inner, offset)?;
            }
        }
        self.flush()
    }
}

/// Marks the log in `dir` as one with gaps, durably, before the first gap is written.
pub(super) fn mark_gaps(dir: &Path) -> Result<(), StorageError> {
    if allows_gaps(dir) {
        return Ok(());
    }
    let path = dir.join(GAPS_MARKER);
    std::fs::File::create(&path)
        .and_then(|f| f.sync_all())
        .io_ctx("create", &path)?;
    checkpoint::sync_dir(dir)
}
