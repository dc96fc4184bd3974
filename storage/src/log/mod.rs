//! A partition's log: an ordered run of segments (all sealed but the last, the active one),
//! the log start offset, group-committed durability and retention.
//!
//! Concurrency: one `RwLock` guards the segment list. Appends take it for writing only while
//! they patch offsets into the batch and copy it into the page cache; readers take it for
//! reading only to look up positions and clone file handles, then do their I/O without it.
//! fsync never runs under the lock, except when a segment is sealed on roll.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, RwLock};

use bytes::Bytes;

use crate::batch::{self, BatchHeader, HEADER_LEN};
use crate::checkpoint::{self, Checkpoint};
use crate::clock::{Clock, SystemClock};
use crate::config::{FlushPolicy, LogConfig, TimestampType};
use crate::error::{IoContext, StorageError};
use crate::segment::{NO_TIMESTAMP, Recovered, Segment, SegmentInfo};
use crate::txn_index::AbortedTxn;

pub use ranges::FileRange;

mod clean;
mod ranges;
mod replica;
mod swap;

pub use clean::LocalClean;
pub use swap::{PreparedRewrite, SegmentRewrite};

/// What an append assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub first_offset: u64,
    pub last_offset: u64,
    pub record_count: u64,
    /// Largest timestamp of the appended records (after log-append time was applied).
    pub max_timestamp: i64,
    /// The broker's time for `LogAppendTime` topics; `None` for `CreateTime`.
    pub log_append_time: Option<i64>,
    pub log_start_offset: u64,
}

/// A segment's description and its files, opened at one moment (see [`Log::open_segment`]).
#[derive(Debug)]
pub struct OpenSegment {
    pub info: SegmentInfo,
    pub files: Vec<(crate::SegmentFile, std::fs::File)>,
}

/// A partition log in one directory. See the crate documentation.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    clock: Arc<dyn Clock>,
    inner: RwLock<Inner>,
    sync: Mutex<SyncState>,
    synced: Condvar,
    /// Set once after a failed fsync: the page cache can no longer be trusted to reach disk,
    /// so the log refuses writes until it is reopened (Kafka takes the log dir offline).
    failure: OnceLock<String>,
}

#[derive(Debug)]
struct Inner {
    config: LogConfig,
    sealed: VecDeque<Segment>,
    active: Segment,
    log_start_offset: u64,
    /// Wall-clock time the active segment was created or opened: `segment.ms` counts from it
    /// when the segment's first batch carries no timestamp (Kafka uses the file's creation).
    active_since: i64,
    /// What the checkpoint file holds, when this log wrote or read it: an unchanged one is
    /// not written again (a broker flushes thousands of logs at shutdown).
    checkpointed: Option<Checkpoint>,
}

#[derive(Debug)]
struct SyncState {
    /// Every offset below this is on disk.
    durable: u64,
    in_progress: bool,
    /// Bumped when offsets are removed (truncate, reset) so an fsync that started before can
    /// not claim offsets that have since been reused.
    generation: u64,
    last_sync_ms: i64,
    /// Base offset of the active segment whose directory entry is known to be durable; a
    /// segment created since (a roll without fsync) needs a directory fsync before data in it
    /// is acknowledged.
    dir_synced_base: u64,
    /// Whether the log directory's own entry (in its parent) is known to be durable: not
    /// for a log created by this process until its first fsync syncs the parent too.
    parent_synced: bool,
}

impl Log {
    /// Opens (or creates) the log in `dir`, recovering it after a crash.
    pub fn open(dir: impl Into<PathBuf>, config: LogConfig) -> Result<Self, StorageError> {
        Self::open_with_clock(dir, config, Arc::new(SystemClock))
    }

    pub fn open_with_clock(
        dir: impl Into<PathBuf>,
        config: LogConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StorageError> {
        config.validate()?;
        let dir = dir.into();
        std::fs::create_dir_all(&dir).io_ctx("create", &dir)?;
        let stored = Checkpoint::read(&dir);
        let checkpoint = stored.unwrap_or_default();
        swap::recover(&dir)?;
        let mut segments = open_segments(&dir, &config, checkpoint.recovery_point)?;
        // Nothing on disk yet: a partition being created.
        let fresh = stored.is_none() && segments.is_empty();
        let active = match segments.pop_back() {
            Some(mut seg) => {
                seg.unseal()?;
                seg
            }
            None => Segment::create(&dir, checkpoint.log_start_offset)?,
        };
        for seg in segments.iter_mut().filter(|s| !s.sealed) {
            seg.seal(true)?;
        }
        let first_base = segments.front().unwrap_or(&active).base_offset;
        let log_end = active.next_offset;
        let log_start_offset = checkpoint
            .log_start_offset
            .clamp(first_base, log_end.max(first_base));
        let wanted = Checkpoint {
            recovery_point: log_end,
            log_start_offset,
        };
        // Everything below the stored recovery point is durable, its directory entries
        // included: after a clean stop (nothing past it) there is nothing to sync and the
        // checkpoint stays. Nor is there for a new, empty log, whose directory is synced by
        // its first fsync instead (`SyncState::dir_synced_base`, `parent_synced`). Thousands
        // of partitions open at start-up and at creation, at several fsyncs each otherwise.
        let mut checkpointed = stored;
        let dir_synced_base = if stored == Some(wanted) {
            active.base_offset
        } else if fresh {
            u64::MAX
        } else {
            checkpointed = Some(wanted);
            // What recovery kept is now made durable, so the recovery point can move to the
            // end; the checkpoint write syncs the directory, the active segment's entry too.
            active.files()?.sync(true)?;
            wanted.write(&dir)?;
            active.base_offset
        };
        let now = clock.now_ms();
        Ok(Self {
            dir,
            clock,
            inner: RwLock::new(Inner {
                config,
                sealed: segments,
                active,
                log_start_offset,
                active_since: now,
                checkpointed,
            }),
            sync: Mutex::new(SyncState {
                durable: log_end,
                in_progress: false,
                generation: 0,
                last_sync_ms: now,
                dir_synced_base,
                parent_synced: !fresh,
            }),
            synced: Condvar::new(),
            failure: OnceLock::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_start_offset(&self) -> u64 {
        self.read_inner().log_start_offset
    }

    /// The offset the next appended record will get.
    pub fn log_end_offset(&self) -> u64 {
        self.read_inner().active.next_offset
    }

    /// Offsets below this are on disk.
    pub fn durable_offset(&self) -> u64 {
        self.lock_sync().durable
    }

    /// Bytes of batches in all local segments.
    pub fn size_bytes(&self) -> u64 {
        self.read_inner().all().map(|s| s.size).sum()
    }

    pub fn config(&self) -> LogConfig {
        self.read_inner().config.clone()
    }

    /// Replaces the log's settings (topic config change); they apply from the next operation.
    pub fn set_config(&self, config: LogConfig) -> Result<(), StorageError> {
        config.validate()?;
        self.write_inner().config = config;
        Ok(())
    }

    /// Validates `records` (one or more v2 batches) and appends them, assigning offsets in
    /// a copy of each batch's header: the file gets the stamped headers and the records as
    /// they came, in one vectored write, so a produced batch is not copied to be stamped.
    /// On any error the log is unchanged.
    pub fn append(&self, records: &[u8], leader_epoch: i32) -> Result<AppendInfo, StorageError> {
        self.check_online()?;
        let (max_batch, keys_required) = {
            let inner = self.read_inner();
            (inner.config.max_batch_bytes, inner.config.keys_required)
        };
        let batches = batch::validate_keyed_batches(records, max_batch, keys_required)?;
        let record_count: u64 = batches.iter().map(|b| b.header.records_count as u64).sum();
        // Offsets within a segment are 32-bit: an append starting a fresh segment must fit.
        let max = u64::from(u32::MAX) + 1;
        if record_count > max {
            return Err(batch::BatchError::TooManyRecords {
                count: record_count,
                max,
            }
            .into());
        }
        let (info, flush) = {
            let mut inner = self.write_inner();
            let now = self.clock.now_ms();
            let first_offset = inner.active.next_offset;
            let last_offset = first_offset + record_count - 1;
            if inner.config.timestamp_type == TimestampType::CreateTime {
                check_timestamps(&batches, &inner.config, now)?;
            }
            let incoming_ts = match inner.config.timestamp_type {
                TimestampType::LogAppendTime => now,
                TimestampType::CreateTime => batches
                    .iter()
                    .map(|b| b.header.max_timestamp)
                    .max()
                    .unwrap_or(NO_TIMESTAMP),
            };
            if inner.roll_due(records.len() as u64, last_offset, incoming_ts, now) {
                self.roll_locked(&mut inner)?;
            }
            let log_append_time =
                (inner.config.timestamp_type == TimestampType::LogAppendTime).then_some(now);
            let mut headers = Vec::with_capacity(batches.len());
            let mut stamped = Vec::with_capacity(batches.len());
            let mut next = first_offset as i64;
            for b in &batches {
                let bytes = &records[b.pos..b.pos + b.len()];
                let (header, rest) = bytes.split_at(HEADER_LEN.min(bytes.len()));
                let mut header: [u8; HEADER_LEN] =
                    header
                        .try_into()
                        .map_err(|_| batch::BatchError::Truncated {
                            at: b.pos,
                            available: bytes.len(),
                        })?;
                batch::set_base_offset_and_epoch(&mut header, next, leader_epoch);
                let fix_max = match (log_append_time, b.records_max_timestamp) {
                    (Some(t), _) => Some(t),
                    (None, Some(m)) if m != b.header.max_timestamp => Some(m),
                    _ => None,
                };
                if let Some(ts) = fix_max {
                    batch::set_max_timestamp_apart(
                        &mut header,
                        rest,
                        ts,
                        log_append_time.is_some(),
                    );
                }
                let parsed = BatchHeader::parse(&header).ok_or(batch::BatchError::Truncated {
                    at: b.pos,
                    available: bytes.len(),
                })?;
                next = parsed.last_offset() + 1;
                headers.push(parsed);
                stamped.push((header, rest));
            }
            let pieces: Vec<&[u8]> = stamped
                .iter()
                .flat_map(|(h, rest)| [&h[..], *rest])
                .collect();
            let interval = inner.config.index_interval_bytes;
            inner.active.append(&pieces, &headers, interval)?;
            let info = AppendInfo {
                first_offset,
                last_offset,
                record_count,
                max_timestamp: headers
                    .iter()
                    .map(|h| h.max_timestamp)
                    .max()
                    .unwrap_or(NO_TIMESTAMP),
                log_append_time,
                log_start_offset: inner.log_start_offset,
            };
            (info, (inner.config.flush, inner.config.flush_messages))
        };
        self.flush_after_append(info, flush)
    }

    /// Applies the flush policy after an append of `info`.
    fn flush_after_append(
        &self,
        info: AppendInfo,
        (policy, messages): (FlushPolicy, Option<u64>),
    ) -> Result<AppendInfo, StorageError> {
        match (policy, messages) {
            (FlushPolicy::EveryAppend, _) => self.sync_to(info.last_offset + 1)?,
            (_, Some(n)) if info.last_offset + 1 - self.durable_offset() >= n => {
                self.sync_to(info.last_offset + 1)?;
            }
            (FlushPolicy::Interval(_), _) => self.maybe_flush()?,
            (FlushPolicy::Os, _) => {}
        }
        Ok(info)
    }

    /// Raw bytes of whole batches starting with the one that contains `from_offset`, up to
    /// `max_bytes` but always at least one batch (Kafka's fetch semantics). Reading at the log
    /// end returns no bytes; below the log start or past the end is `OffsetOutOfRange`.
    /// The caller bounds `max_bytes` (Kafka's `fetch.max.bytes`). An offline log (a failed
    /// fsync) serves nothing: its page cache may hold records the disk never got, and a
    /// consumer that read them would see their offsets reused after a crash (Kafka takes the
    /// log directory offline the same way).
    pub fn read(&self, from_offset: u64, max_bytes: usize) -> Result<Bytes, StorageError> {
        self.check_online()?;
        let (views, hint) = {
            let inner = self.read_inner();
            inner.check_range(from_offset)?;
            if from_offset == inner.active.next_offset {
                return Ok(Bytes::new());
            }
            let first = inner.index_of(from_offset);
            let hint = inner.get(first).offset_hint(from_offset);
            // The first segment's share is unknown until the batch is located, so only the
            // following segments count towards the budget when deciding how far to look.
            let mut views = vec![inner.get(first).view()?];
            let mut covered = 0u64;
            for seg in inner.all().skip(first + 1) {
                if covered >= max_bytes as u64 {
                    break;
                }
                covered += seg.size;
                views.push(seg.view()?);
            }
            (views, hint)
        };
        let mut out = Vec::new();
        let mut budget = max_bytes;
        for (k, view) in views.iter().enumerate() {
            let pos = if k == 0 {
                match view.locate(from_offset, hint)? {
                    Some((pos, _)) => pos,
                    None => continue,
                }
            } else {
                0
            };
            let before = out.len();
            let more = view.read_batches(pos, budget, out.is_empty(), &mut out)?;
            budget = budget.saturating_sub(out.len() - before);
            if !more || budget == 0 {
                break;
            }
        }
        Ok(crate::buffers::freeze(out))
    }

    /// The first offset at or after the log start whose record timestamp is at least
    /// `timestamp` (ListOffsets by time); `None` when every record is older. Exact to the record
    /// for uncompressed batches, to the batch for compressed ones.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<u64>, StorageError> {
        Ok(self
            .record_for_timestamp(timestamp)?
            .map(|(offset, _)| offset))
    }

    /// As [`Log::offset_for_timestamp`], with the timestamp of the record found (what
    /// ListOffsets answers).
    pub fn record_for_timestamp(&self, timestamp: i64) -> Result<Option<(u64, i64)>, StorageError> {
        self.check_online()?;
        let (views, log_start) = {
            let inner = self.read_inner();
            let Some(first) = inner.all().position(|s| s.max_timestamp >= timestamp) else {
                return Ok(None);
            };
            let hint = inner.get(first).time_hint(timestamp);
            let views = inner
                .all()
                .skip(first)
                .enumerate()
                .map(|(k, s)| Ok((s.view()?, (k == 0).then_some(hint))))
                .collect::<Result<Vec<_>, StorageError>>()?;
            (views, inner.log_start_offset as i64)
        };
        let qualifies =
            |h: &BatchHeader| h.max_timestamp >= timestamp && h.last_offset() >= log_start;
        for (view, hint) in views {
            let mut next = match hint {
                Some(hint) => view.find(hint, qualifies)?,
                None => view.find_from(0, qualifies)?,
            };
            while let Some((at, h)) = next {
                let bytes = view.read_batch(at, &h)?;
                let found = batch::first_record_where(&bytes, &h, |off, ts| {
                    off >= log_start && ts >= timestamp
                });
                if let Some((offset, ts)) = found {
                    return Ok(Some((offset as u64, ts)));
                }
                next = view.find_from(at + h.total_len() as u64, qualifies)?;
            }
        }
        Ok(None)
    }

    /// The largest record timestamp in the log and the first offset carrying it
    /// (ListOffsets `MAX_TIMESTAMP`); `None` for an empty log.
    pub fn max_timestamp(&self) -> Result<Option<(i64, u64)>, StorageError> {
        self.check_online()?;
        let (view, hint, max) = {
            let inner = self.read_inner();
            let Some(seg) = inner
                .all()
                .filter(|s| s.max_timestamp != NO_TIMESTAMP)
                .reduce(|best, s| {
                    if s.max_timestamp > best.max_timestamp {
                        s
                    } else {
                        best
                    }
                })
            else {
                return Ok(None);
            };
            (seg.view()?, seg.max_timestamp_hint(), seg.max_timestamp)
        };
        let Some((at, h)) = view.find(hint, |h| h.max_timestamp == max)? else {
            return Ok(None);
        };
        let bytes = view.read_batch(at, &h)?;
        let offset =
            batch::first_offset_where(&bytes, &h, |_, ts| ts == max).unwrap_or(h.base_offset);
        Ok(Some((max, offset as u64)))
    }

    /// All local segments, oldest first; every one but the last is sealed.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.read_inner().all().map(Segment::info).collect()
    }

    /// The segment at `base_offset` with its files opened together, so they are all of one
    /// version of it: a compaction swap replaces a segment's files under the same names, and
    /// a reader opening them one by one could pair a new index with an old log. Files stay
    /// readable through these handles after a swap or a deletion removes their names.
    pub fn open_segment(&self, base_offset: u64) -> Result<Option<OpenSegment>, StorageError> {
        let inner = self.read_inner();
        let Some(seg) = inner.all().find(|s| s.base_offset == base_offset) else {
            return Ok(None);
        };
        let info = seg.info();
        let mut files = Vec::new();
        for (kind, path) in info.files() {
            files.push((kind, std::fs::File::open(path).io_ctx("open", path)?));
        }
        Ok(Some(OpenSegment { info, files }))
    }

    /// Seals the active segment (if it holds anything) and starts a new one.
    pub fn roll(&self) -> Result<(), StorageError> {
        self.check_online()?;
        let mut inner = self.write_inner();
        if !inner.active.is_empty() {
            self.roll_locked(&mut inner)?;
        }
        Ok(())
    }

    /// Base offset of the segment holding `offset` (the last one based at or below it; the
    /// active segment's for offsets at or past the log end).
    pub fn segment_base_of(&self, offset: u64) -> u64 {
        let inner = self.read_inner();
        inner.get(inner.index_of(offset)).base_offset
    }

    /// Base offset of the active segment: every record below it is in a sealed segment.
    pub fn active_base_offset(&self) -> u64 {
        self.read_inner().active.base_offset
    }

    /// Makes everything appended so far durable and moves the recovery checkpoint up to it.
    pub fn flush(&self) -> Result<(), StorageError> {
        self.check_online()?;
        let end = self.log_end_offset();
        self.sync_to(end)?;
        let durable = self.durable_offset();
        self.write_inner().checkpoint(&self.dir, durable)
    }

    /// Makes every record below `offset` durable, sharing fsyncs with concurrent callers
    /// (group commit). Unlike [`Log::flush`] it does not move the recovery checkpoint, so it
    /// costs one fsync at most; a broker calls it before acknowledging `acks=all`.
    pub fn sync_through(&self, offset: u64) -> Result<(), StorageError> {
        self.check_online()?;
        self.sync_to(offset.min(self.log_end_offset()))
    }

    /// Makes every sealed segment durable and moves the recovery checkpoint past them, so
    /// they can be uploaded and a crash does not validate them again. Under
    /// [`FlushPolicy::Os`] a roll does not fsync, so a broker calls this from a timer.
    /// Returns whether anything had to be synced.
    pub fn flush_sealed(&self) -> Result<bool, StorageError> {
        self.check_online()?;
        let sealed_end = self.read_inner().active.base_offset;
        if self.durable_offset() >= sealed_end {
            return Ok(false);
        }
        self.sync_to(sealed_end)?;
        let durable = self.durable_offset();
        self.write_inner().checkpoint(&self.dir, durable)?;
        Ok(true)
    }

    /// Under [`FlushPolicy::Interval`], flushes when the last fsync is older than the interval
    /// and something is not yet durable. Meant to be called from a timer as well.
    pub fn maybe_flush(&self) -> Result<(), StorageError> {
        let FlushPolicy::Interval(every) = self.read_inner().config.flush else {
            return Ok(());
        };
        let due = {
            let st = self.lock_sync();
            self.clock.now_ms() - st.last_sync_ms >= every.as_millis() as i64
        };
        if due && self.durable_offset() < self.log_end_offset() {
            self.sync_to(self.log_end_offset())?;
        }
        Ok(())
    }

    /// Removes every record at or after `offset`, cutting at the start of the batch holding it;
    /// returns the new log end offset. Truncating below the log start empties the log and
    /// restarts it at `offset`.
    pub fn truncate_to(&self, offset: u64) -> Result<u64, StorageError> {
        self.check_online()?;
        let mut inner = self.write_inner();
        if offset >= inner.active.next_offset {
            return Ok(inner.active.next_offset);
        }
        let log_start = inner.log_start_offset;
        let cut_at = inner.cut_point(offset)?;
        let new_end = if offset < log_start || cut_at < log_start {
            inner.active_since = self.clock.now_ms();
            inner.reset(&self.dir, offset)?
        } else {
            inner.truncate(offset)?
        };
        self.forget_beyond(new_end);
        inner.checkpoint(&self.dir, self.durable_offset())?;
        Ok(new_end)
    }

    /// Records a transaction aborted by the marker at `entry.last_offset` in the
    /// aborted-transaction index of the segment holding that marker.
    pub fn append_aborted(&self, entry: AbortedTxn) -> Result<(), StorageError> {
        self.check_online()?;
        let mut inner = self.write_inner();
        let end = inner.active.next_offset;
        if entry.last_offset >= end || entry.last_offset < inner.log_start_offset {
            return Err(StorageError::OffsetOutOfRange {
                offset: entry.last_offset,
                log_start: inner.log_start_offset,
                log_end: end,
            });
        }
        let i = inner.index_of(entry.last_offset);
        match inner.sealed.get_mut(i) {
            Some(seg) => seg.append_aborted(entry),
            None => inner.active.append_aborted(entry),
        }
    }

    /// The aborted transactions whose records may lie in `[from, upper)` (what a
    /// read_committed fetch of that range returns), from the segment holding `from` on, until
    /// an entry shows the partition was stable past `upper`.
    pub fn aborted_txns(&self, from: u64, upper: u64) -> Result<Vec<AbortedTxn>, StorageError> {
        let inner = self.read_inner();
        let mut out = Vec::new();
        for seg in inner.all().filter(|s| s.next_offset > from) {
            if crate::txn_index::collect_aborted(&seg.aborted()?, from, upper, &mut out) {
                break;
            }
        }
        Ok(out)
    }

    /// Whether any segment has an aborted transaction (without one, a read_committed fetch
    /// has nothing to look up).
    pub fn has_aborted(&self) -> bool {
        self.read_inner().all().any(Segment::has_aborted)
    }

    /// Forgets the aborted transactions whose markers are at or after `offset` (a replay
    /// from there records them again).
    pub fn truncate_aborted(&self, offset: u64) -> Result<(), StorageError> {
        let mut inner = self.write_inner();
        let Inner { sealed, active, .. } = &mut *inner;
        for seg in sealed.iter_mut().chain(std::iter::once(active)) {
            if seg.next_offset > offset {
                seg.truncate_aborted(offset)?;
            }
        }
        Ok(())
    }

    /// Drops every segment and restarts the log, empty, at `offset` (a replica that starts from
    /// the object store's end, or one that fell behind the leader's log start).
    pub fn reset_to(&self, offset: u64) -> Result<(), StorageError> {
        self.check_online()?;
        let mut inner = self.write_inner();
        inner.active_since = self.clock.now_ms();
        inner.reset(&self.dir, offset)?;
        self.forget_beyond(offset);
        inner.checkpoint(&self.dir, offset)
    }

    /// Moves the log start offset to `offset` (DeleteRecords) and deletes the segments wholly
    /// below it. Returns the new log start offset.
    pub fn delete_before(&self, offset: u64) -> Result<u64, StorageError> {
        self.check_online()?;
        let mut inner = self.write_inner();
        let end = inner.active.next_offset;
        if offset > end {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                log_start: inner.log_start_offset,
                log_end: end,
            });
        }
        if offset <= inner.log_start_offset {
            return Ok(inner.log_start_offset);
        }
        if offset == end && !inner.active.is_empty() {
            self.roll_locked(&mut inner)?;
        }
        inner.log_start_offset = offset;
        inner.delete_sealed_while(|s| s.next_offset <= offset)?;
        inner.checkpoint(&self.dir, self.durable_offset())?;
        Ok(offset)
    }

    /// Deletes the oldest sealed segments that fall outside `retention.ms` (by their largest
    /// timestamp) or `retention.bytes` (by total size); returns what was deleted.
    pub fn apply_retention(&self) -> Result<Vec<SegmentInfo>, StorageError> {
        let (ms, bytes) = {
            let inner = self.read_inner();
            (inner.config.retention_ms, inner.config.retention_bytes)
        };
        self.retain(ms, bytes, u64::MAX)
    }

    /// Deletes the oldest sealed segments that end at or below `uploaded` (their data is in
    /// object storage) and fall outside the local retention (`local.retention.ms/bytes`, by
    /// the largest timestamp and by the local log's total size). Segments not yet uploaded are
    /// never deleted, whatever their age. Returns what was deleted.
    pub fn evict_uploaded(
        &self,
        uploaded: u64,
        local_retention_ms: Option<std::time::Duration>,
        local_retention_bytes: Option<u64>,
    ) -> Result<Vec<SegmentInfo>, StorageError> {
        self.retain(local_retention_ms, local_retention_bytes, uploaded)
    }

    fn retain(
        &self,
        retention_ms: Option<std::time::Duration>,
        retention_bytes: Option<u64>,
        deletable_below: u64,
    ) -> Result<Vec<SegmentInfo>, StorageError> {
        self.check_online()?;
        let now = self.clock.now_ms();
        let mut inner = self.write_inner();
        let by_time = retention_ms.map(|d| now.saturating_sub(d.as_millis() as i64));
        let mut excess = retention_bytes
            .map(|limit| inner.all().map(|s| s.size).sum::<u64>() as i128 - limit as i128);
        let deleted = inner.delete_sealed_while(|s| {
            if s.next_offset > deletable_below {
                return false;
            }
            let expired = by_time.is_some_and(|cutoff| s.retention_timestamp() < cutoff);
            let oversize = excess.is_some_and(|e| e - s.size as i128 >= 0);
            if expired || oversize {
                excess = excess.map(|e| e - s.size as i128);
                true
            } else {
                false
            }
        })?;
        if !deleted.is_empty() {
            inner.checkpoint(&self.dir, self.durable_offset())?;
        }
        Ok(deleted)
    }

    /// Flushes everything and records a recovery point at the log end, so the next open
    /// validates nothing.
    pub fn close(self) -> Result<(), StorageError> {
        self.flush()
    }

    fn check_online(&self) -> Result<(), StorageError> {
        match self.failure.get() {
            Some(reason) => Err(StorageError::Offline {
                dir: self.dir.clone(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Waits until offsets below `target` are durable, running the fsync itself when no other
    /// thread is: concurrent appenders share one fsync (group commit).
    fn sync_to(&self, target: u64) -> Result<(), StorageError> {
        let mut st = self.lock_sync();
        let generation = st.generation;
        loop {
            self.check_online()?;
            if st.durable >= target || st.generation != generation {
                return Ok(());
            }
            if !st.in_progress {
                break;
            }
            st = self.synced.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        st.in_progress = true;
        let durable = st.durable;
        let dir_synced_base = st.dir_synced_base;
        let parent_synced = st.parent_synced;
        drop(st);
        // Segments sealed without fsync since the last sync, then the active one.
        let (files, active_base, end) = {
            let inner = self.read_inner();
            let files = inner
                .sealed
                .iter()
                .filter(|s| s.next_offset > durable)
                .map(Segment::files)
                .collect::<Result<Vec<_>, StorageError>>()
                .and_then(|sealed| Ok((sealed, inner.active.files()?)));
            (files, inner.active.base_offset, inner.active.next_offset)
        };
        // A new file's directory entry is durable only after the directory is fsynced: needed
        // when segments were sealed or created since the last sync. A sealed segment whose
        // file the cache closed is opened again for its fsync (Linux reports a writeback
        // error to the next fsync of the file, whichever descriptor it comes through); an
        // open that fails leaves the sync to be retried, like one that could not start.
        let result = files.and_then(|(sealed, active)| {
            let new_files = !sealed.is_empty() || active_base != dir_synced_base;
            sealed
                .iter()
                .try_for_each(|f| f.sync(true))
                .and_then(|()| match new_files {
                    true => checkpoint::sync_dir(&self.dir),
                    false => Ok(()),
                })
                .and_then(|()| match (parent_synced, self.dir.parent()) {
                    (false, Some(parent)) => checkpoint::sync_dir(parent),
                    _ => Ok(()),
                })
                .and_then(|()| active.sync(false))
        });
        let mut st = self.lock_sync();
        st.in_progress = false;
        match &result {
            Ok(()) => {
                if st.generation == generation {
                    st.durable = st.durable.max(end);
                }
                st.dir_synced_base = active_base;
                st.parent_synced = true;
                st.last_sync_ms = self.clock.now_ms();
            }
            // Only a failed fsync leaves the page cache untrustworthy. An fsync that could
            // not start (no descriptor to open the directory with) is retried by the caller.
            Err(e @ StorageError::Io { op: "fsync", .. }) => {
                let _ = self.failure.set(e.to_string());
                tracing::error!(log = %self.dir.display(), error = %e, "fsync failed; log is offline");
            }
            Err(e) => {
                tracing::warn!(log = %self.dir.display(), error = %e, "fsync not attempted; retried later");
            }
        }
        self.synced.notify_all();
        result
    }

    /// Rolls, and when the policy fsyncs on seal, records the new durable offset while the
    /// write lock still excludes truncations.
    fn roll_locked(&self, inner: &mut Inner) -> Result<u64, StorageError> {
        let end = inner.active.next_offset;
        self.roll_locked_at(inner, end)
    }

    /// As [`Log::roll_locked`], starting the new segment at `base` (at or past the log end:
    /// a replica's next batch may follow a gap).
    fn roll_locked_at(&self, inner: &mut Inner, base: u64) -> Result<u64, StorageError> {
        let fsync = inner.config.flush != FlushPolicy::Os;
        let end = inner.roll(&self.dir, fsync, base)?;
        inner.active_since = self.clock.now_ms();
        if fsync {
            let parent_synced = self.lock_sync().parent_synced;
            if let (false, Some(parent)) = (parent_synced, self.dir.parent()) {
                checkpoint::sync_dir(parent)?;
            }
            let mut st = self.lock_sync();
            st.durable = st.durable.max(end);
            st.dir_synced_base = base;
            st.parent_synced = true;
        }
        Ok(end)
    }

    fn forget_beyond(&self, end: u64) {
        let mut st = self.lock_sync();
        st.generation += 1;
        st.durable = st.durable.min(end);
    }

    fn read_inner(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_inner(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_sync(&self) -> MutexGuard<'_, SyncState> {
        self.sync.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn all(&self) -> impl Iterator<Item = &Segment> {
        self.sealed.iter().chain(std::iter::once(&self.active))
    }

    fn get(&self, i: usize) -> &Segment {
        self.sealed.get(i).unwrap_or(&self.active)
    }

    /// Index (in `all()`) of the segment holding `offset`: the last one based at or below it.
    fn index_of(&self, offset: u64) -> usize {
        if offset >= self.active.base_offset {
            return self.sealed.len();
        }
        self.sealed
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1)
    }

    fn check_range(&self, offset: u64) -> Result<(), StorageError> {
        let end = self.active.next_offset;
        if offset < self.log_start_offset || offset > end {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                log_start: self.log_start_offset,
                log_end: end,
            });
        }
        Ok(())
    }

    /// Whether the active segment must roll before an append of `append_len` bytes ending at
    /// `last_offset` whose largest timestamp is `incoming_ts`: it is non-empty and would
    /// overflow its size, its relative offsets, or its age. As in Kafka, the age is the
    /// incoming timestamp minus the first batch's, so records stamped long ago (a migration, a
    /// replay) do not roll a segment per append; without timestamps it is wall-clock time
    /// since the segment was opened.
    fn roll_due(&self, append_len: u64, last_offset: u64, incoming_ts: i64, now: i64) -> bool {
        let a = &self.active;
        if a.is_empty() {
            return false;
        }
        let too_big = a.size + append_len > self.config.segment_bytes;
        let too_old = self.config.segment_ms.is_some_and(|ms| {
            let waited = match a.roll_timestamp {
                Some(t) if t >= 0 => incoming_ts.saturating_sub(t),
                _ => now.saturating_sub(self.active_since),
            };
            waited >= ms.as_millis() as i64
        });
        too_big || too_old || !a.can_hold(last_offset)
    }

    /// Seals the active segment and opens a new one at the log end; returns that offset. With
    /// `fsync` the sealed segment, the directory and the recovery checkpoint are made durable
    /// now; otherwise the next flush does it.
    fn roll(&mut self, dir: &Path, fsync: bool, base: u64) -> Result<u64, StorageError> {
        let end = self.active.next_offset;
        self.active.seal(fsync)?;
        let next = Segment::create(dir, base)?;
        let sealed = std::mem::replace(&mut self.active, next);
        self.sealed.push_back(sealed);
        if fsync {
            checkpoint::sync_dir(dir)?;
            self.checkpoint(dir, end)?;
        }
        tracing::debug!(log = %dir.display(), base_offset = base, "rolled segment");
        Ok(end)
    }

    /// Base offset of the batch holding `offset` (where a truncation to `offset` cuts).
    fn cut_point(&self, offset: u64) -> Result<u64, StorageError> {
        let seg = self.get(self.index_of(offset));
        if offset < seg.base_offset {
            return Ok(offset);
        }
        Ok(seg
            .view()?
            .locate(offset, seg.offset_hint(offset))?
            .map_or(offset, |(_, h)| h.base_offset as u64))
    }

    fn truncate(&mut self, offset: u64) -> Result<u64, StorageError> {
        let keep = self.index_of(offset);
        // Segments after the one holding `offset` go entirely, newest first.
        while self.sealed.len() > keep {
            let Some(prev) = self.sealed.pop_back() else {
                break;
            };
            let dropped = std::mem::replace(&mut self.active, prev);
            dropped.delete()?;
        }
        // A sealed segment that became the active one takes appends again, even when
        // nothing in it is cut (`offset` fell in a gap after its last batch).
        if self.active.sealed {
            self.active.unseal()?;
        }
        let interval = self.config.index_interval_bytes;
        self.active.truncate_to(offset, interval)
    }

    /// Empties the log and restarts it at `offset`. The checkpoint goes first, so a crash
    /// part-way leaves either old segments (the reset was never acknowledged) or a log that
    /// reopens empty at `offset`.
    fn reset(&mut self, dir: &Path, offset: u64) -> Result<u64, StorageError> {
        self.log_start_offset = offset;
        let reset = Checkpoint {
            recovery_point: offset,
            log_start_offset: offset,
        };
        self.checkpointed = None;
        reset.write(dir)?;
        self.checkpointed = Some(reset);
        // Creating truncates a same-named old segment, whose files then belong to the new one.
        let fresh = Segment::create(dir, offset)?;
        let old_active = std::mem::replace(&mut self.active, fresh);
        let old: Vec<Segment> = self
            .sealed
            .drain(..)
            .chain(std::iter::once(old_active))
            .collect();
        for seg in old.into_iter().filter(|s| s.base_offset != offset) {
            seg.delete()?;
        }
        checkpoint::sync_dir(dir)?;
        Ok(offset)
    }

    /// Deletes sealed segments from the oldest while `pred` holds, moving the log start
    /// offset past them.
    fn delete_sealed_while(
        &mut self,
        mut pred: impl FnMut(&Segment) -> bool,
    ) -> Result<Vec<SegmentInfo>, StorageError> {
        let mut deleted = Vec::new();
        while let Some(front) = self.sealed.front() {
            if !pred(front) {
                break;
            }
            let Some(seg) = self.sealed.pop_front() else {
                break;
            };
            deleted.push(seg.info());
            seg.delete()?;
        }
        let first = self.sealed.front().unwrap_or(&self.active).base_offset;
        self.log_start_offset = self.log_start_offset.max(first);
        Ok(deleted)
    }

    fn checkpoint(&mut self, dir: &Path, durable: u64) -> Result<(), StorageError> {
        self.active.persist_indexes()?;
        let next = Checkpoint {
            recovery_point: durable.min(self.active.next_offset),
            log_start_offset: self.log_start_offset,
        };
        if next.recovery_point == self.active.next_offset {
            // The next open trusts the whole active segment: it should end with its last
            // batch, not a direct write's padding (which that open would cut, as a torn tail).
            self.active.trim_padding()?;
        }
        if self.checkpointed == Some(next) {
            return Ok(());
        }
        // Unknown until the write is known to have finished.
        self.checkpointed = None;
        next.write(dir)?;
        self.checkpointed = Some(next);
        Ok(())
    }
}

/// Opens the segments found in `dir`, trusting those wholly before the recovery point and
/// validating the rest. A segment cut during recovery ends the log: later segments (and any
/// that would leave a gap, unless the log is marked as having gaps) are deleted.
fn open_segments(
    dir: &Path,
    config: &LogConfig,
    recovery_point: u64,
) -> Result<VecDeque<Segment>, StorageError> {
    let bases = list_segment_bases(dir)?;
    let recover_from = bases
        .iter()
        .rposition(|&b| b <= recovery_point)
        .unwrap_or(0);
    let interval = config.index_interval_bytes;
    let gaps = replica::allows_gaps(dir);
    let mut segments: VecDeque<Segment> = VecDeque::with_capacity(bases.len());
    for (i, &base) in bases.iter().enumerate() {
        let contiguous = segments
            .back()
            .is_none_or(|prev| prev.next_offset == base || (gaps && prev.next_offset < base));
        if !contiguous {
            tracing::warn!(log = %dir.display(), base_offset = base, "segment does not follow the previous one; dropping it and later ones");
            delete_segment_files(dir, &bases[i..])?;
            break;
        }
        let (seg, recovered) = if i < recover_from {
            Segment::open_trusted(dir, base, interval, gaps)?
        } else {
            Segment::open_recovering(dir, base, interval, gaps)?
        };
        segments.push_back(seg);
        if recovered != Recovered::Intact && i + 1 < bases.len() {
            tracing::warn!(log = %dir.display(), base_offset = base, "segment was cut during recovery; dropping later segments");
            delete_segment_files(dir, &bases[i + 1..])?;
            break;
        }
    }
    Ok(segments)
}

/// Base offsets of the `.log` files in `dir`, sorted; removes index files without a log and
/// leftover temporary files.
pub(super) fn list_segment_bases(dir: &Path) -> Result<Vec<u64>, StorageError> {
    let mut bases = Vec::new();
    let mut orphans = Vec::new();
    for entry in std::fs::read_dir(dir).io_ctx("list", dir)? {
        let path = entry.io_ctx("list", dir)?.path();
        let (Some(stem), Some(ext)) = (
            path.file_stem().and_then(|s| s.to_str()),
            path.extension().and_then(|s| s.to_str()),
        ) else {
            continue;
        };
        let base = (stem.len() == 20)
            .then(|| stem.parse::<u64>().ok())
            .flatten();
        match (base, ext) {
            (Some(base), "log") => bases.push(base),
            (Some(base), "index" | "timeindex" | "txnindex") => orphans.push((base, path)),
            _ if ext == "tmp" => orphans.push((u64::MAX, path)),
            _ => {}
        }
    }
    bases.sort_unstable();
    for (base, path) in orphans {
        if bases.binary_search(&base).is_err() {
            std::fs::remove_file(&path).io_ctx("delete", &path)?;
        }
    }
    Ok(bases)
}

fn delete_segment_files(dir: &Path, bases: &[u64]) -> Result<(), StorageError> {
    bases
        .iter()
        .try_for_each(|&base| crate::segment::delete_files(dir, base))
}

/// Refuses a batch stamped further from `now` than the log's timestamp bounds allow.
fn check_timestamps(
    batches: &[batch::ValidBatch],
    config: &LogConfig,
    now: i64,
) -> Result<(), StorageError> {
    let ms = |d: Option<std::time::Duration>| {
        d.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    };
    let (before, after) = (
        ms(config.timestamp_before_max),
        ms(config.timestamp_after_max),
    );
    for b in batches {
        let max = b.records_max_timestamp.unwrap_or(b.header.max_timestamp);
        let too_new = after.is_some_and(|a| max != NO_TIMESTAMP && max > now.saturating_add(a));
        let min = b.min_timestamp;
        let too_old = before.is_some_and(|d| min >= 0 && min < now.saturating_sub(d));
        if too_new || too_old {
            return Err(batch::BatchError::TimestampOutOfRange {
                at: b.pos,
                timestamp: if too_new { max } else { min },
            }
            .into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BatchBuilder;
    use crate::checkpoint::tests::DIR_SYNCS;

    fn batch() -> Vec<u8> {
        BatchBuilder::new()
            .record(crate::Record {
                key: None,
                value: Some(vec![7; 100]),
                headers: Vec::new(),
                timestamp: 1,
            })
            .build()
    }

    fn log(dir: &Path) -> Log {
        let config = LogConfig {
            flush: FlushPolicy::Os,
            segment_ms: None,
            retention_ms: None,
            ..LogConfig::default()
        };
        Log::open(dir, config).expect("open")
    }

    /// Audit A15: a sync that finished before a roll leaves the new segment's directory entry
    /// unsynced (a roll under `Os` does not sync), so the next sync of data in that segment
    /// must fsync the directory before it counts as durable.
    #[test]
    fn data_in_a_segment_created_after_the_last_sync_is_durable_only_with_its_directory_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = log(dir.path());
        log.append(&batch(), 0).expect("append");
        log.sync_through(1).expect("sync");
        log.roll().expect("roll");
        log.append(&batch(), 0).expect("append");
        let before = DIR_SYNCS.with(|n| n.get());
        log.sync_through(2).expect("sync");
        assert_eq!(log.durable_offset(), 2);
        assert_eq!(
            DIR_SYNCS.with(|n| n.get()) - before,
            1,
            "the new segment's directory entry is fsynced before offset 1 is durable"
        );
        log.append(&batch(), 0).expect("append");
        let before = DIR_SYNCS.with(|n| n.get());
        log.sync_through(3).expect("sync");
        assert_eq!(
            DIR_SYNCS.with(|n| n.get()),
            before,
            "no new file, no directory fsync"
        );
    }

    /// Opening a new log, or one closed cleanly, fsyncs nothing (a broker opens thousands at
    /// creation and start-up); the new log's first fsync makes its directory and the
    /// directory's own entry durable; a log with data past its checkpoint is synced at open.
    #[test]
    fn only_a_log_with_data_past_its_checkpoint_is_synced_when_opened() {
        let parent = tempfile::tempdir().expect("tempdir");
        let dir = parent.path().join("topic-0");
        let syncs = || DIR_SYNCS.with(|n| n.get());
        let before = syncs();
        let new = log(&dir);
        assert_eq!(syncs() - before, 0, "a new log");
        new.append(&batch(), 0).expect("append");
        let before = syncs();
        new.sync_through(1).expect("sync");
        assert_eq!(
            syncs() - before,
            2,
            "its directory, and its entry in the parent"
        );
        new.close().expect("close");
        let before = syncs();
        let reopened = log(&dir);
        assert_eq!(syncs() - before, 0, "a cleanly closed log");
        assert_eq!(reopened.log_end_offset(), 1);
        reopened.flush().expect("flush");
        assert_eq!(
            syncs() - before,
            0,
            "nothing new: the checkpoint is not written again"
        );
        reopened.append(&batch(), 0).expect("append");
        drop(reopened);
        let before = syncs();
        let recovered = log(&dir);
        assert_eq!(recovered.log_end_offset(), 2);
        assert_eq!(
            syncs() - before,
            1,
            "data past the checkpoint is made durable"
        );
    }

    /// Audit A16.1: after a failed fsync the page cache may hold records the disk never got;
    /// they are not served, and nothing more is appended.
    #[test]
    fn an_offline_log_takes_no_appends_and_serves_no_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = log(dir.path());
        log.append(&batch(), 0).expect("append");
        assert!(!log.read(0, 1 << 20).expect("read").is_empty());
        // What a failed fsync records (`sync_to`): from then on nothing is written or served.
        let _ = log.failure.set("fsync failed (test)".into());
        assert!(matches!(
            log.append(&batch(), 0),
            Err(StorageError::Offline { .. })
        ));
        assert!(matches!(
            log.sync_through(1),
            Err(StorageError::Offline { .. })
        ));
        assert!(matches!(
            log.read(0, 1 << 20),
            Err(StorageError::Offline { .. })
        ));
        assert!(matches!(
            log.max_timestamp(),
            Err(StorageError::Offline { .. })
        ));
        assert!(matches!(
            log.record_for_timestamp(0),
            Err(StorageError::Offline { .. })
        ));
    }
}
