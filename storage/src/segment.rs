//! One segment of a partition log: a `.log` file of v2 batches, named by its 20-digit base
//! offset, with its sparse `.index` and `.timeindex`.
//!
//! The log file is written with positional writes at `size`, the number of bytes of whole
//! batches; readers get a [`SegmentView`] (a shared file handle and the size at that moment)
//! and read with positional reads, so they never hold the log's lock while doing I/O. Only
//! the active segment holds its file open; sealed ones open theirs through the process's
//! bounded cache (see [`crate::handles`]), and index files are opened to be written.

use std::fs::File;
use std::io;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::batch::{self, BatchHeader, HEADER_LEN, LOG_OVERHEAD};
use crate::direct::DirectWriter;
use crate::error::{IoContext, StorageError};
use crate::handles::Handle;
use crate::index::{Entry, OffsetEntry, OffsetIndex, TimeEntry, TimeIndex};
use crate::txn_index::{AbortedTxn, TxnIndex};

/// Kafka's "no timestamp".
pub(crate) const NO_TIMESTAMP: i64 = -1;
/// Bytes read per step when walking batch headers.
const WALK_CHUNK: usize = 64 * 1024;

pub(crate) fn file_name(base_offset: u64, ext: &str) -> String {
    format!("{base_offset:020}.{ext}")
}

/// The files of a segment, in the order they are uploaded (the batches first). The uploader,
/// the remote reader and remote retention iterate this list, so a new per-segment file (the
/// aborted-transaction index, a leader-epoch or producer-state snapshot as of the segment's
/// end) is one variant here, a path in [`SegmentInfo::files`] and a name in the manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SegmentFile {
    // The values are part of the remote read cache's keys: keep them.
    /// The record batches (`.log`).
    Log = 0,
    /// The sparse offset index (`.index`).
    OffsetIndex = 1,
    /// The sparse time index (`.timeindex`).
    TimeIndex = 2,
    /// The aborted-transaction index (`.txnindex`), only for segments where a transaction
    /// was aborted.
    TxnIndex = 3,
    /// The idempotent producers' state as of the segment's end (`.snapshot`), in object
    /// storage only: what a replica that continues from there (an empty disk) dedupes
    /// producers' retries with. Written by the broker, opaque here.
    ProducerSnapshot = 4,
}

impl SegmentFile {
    /// Every kind of segment file there is.
    pub const ALL: [Self; 5] = [
        Self::Log,
        Self::OffsetIndex,
        Self::TimeIndex,
        Self::TxnIndex,
        Self::ProducerSnapshot,
    ];
    /// What every segment had before transactions: a manifest that names no files means
    /// these.
    pub const LEGACY: [Self; 3] = [Self::Log, Self::OffsetIndex, Self::TimeIndex];

    /// The file name extension, locally and in object keys.
    pub fn ext(self) -> &'static str {
        match self {
            Self::Log => "log",
            Self::OffsetIndex => "index",
            Self::TimeIndex => "timeindex",
            Self::TxnIndex => "txnindex",
            Self::ProducerSnapshot => "snapshot",
        }
    }

    /// The kind a file name extension names.
    pub fn from_ext(ext: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.ext() == ext)
    }
}

/// Offsets and times of a segment, as listed for tiering and operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    pub base_offset: u64,
    /// One past the last offset the segment holds (equal to `base_offset` when empty).
    pub next_offset: u64,
    pub size_bytes: u64,
    /// Timestamp of the segment's first batch.
    pub first_timestamp: Option<i64>,
    /// Largest record timestamp in the segment.
    pub max_timestamp: Option<i64>,
    /// Sealed segments are immutable; the active segment is not. A sealed segment is on disk
    /// once the log's durable offset passes it (at once when it was sealed under a flush
    /// policy that fsyncs).
    pub sealed: bool,
    pub log_path: PathBuf,
    pub offset_index_path: PathBuf,
    pub time_index_path: PathBuf,
    /// Its aborted-transaction index, when a transaction was aborted in it.
    pub txn_index_path: Option<PathBuf>,
}

impl SegmentInfo {
    /// The segment's files, by kind, in upload order.
    pub fn files(&self) -> Vec<(SegmentFile, &Path)> {
        let mut files = vec![
            (SegmentFile::Log, self.log_path.as_path()),
            (SegmentFile::OffsetIndex, self.offset_index_path.as_path()),
            (SegmentFile::TimeIndex, self.time_index_path.as_path()),
        ];
        if let Some(path) = &self.txn_index_path {
            files.push((SegmentFile::TxnIndex, path.as_path()));
        }
        files
    }

    /// The time retention ages the segment by; see `Segment::retention_timestamp`.
    pub fn retention_timestamp(&self) -> i64 {
        match self.max_timestamp {
            Some(t) if t >= 0 => t,
            _ => modified_ms(std::fs::metadata(&self.log_path).and_then(|m| m.modified())),
        }
    }
}

/// A file's modification time in Unix milliseconds; when the file system cannot say, the
/// far future, so that retention keeps the segment rather than deleting it early.
fn modified_ms(modified: std::io::Result<std::time::SystemTime>) -> i64 {
    modified
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(i64::MAX, |d| d.as_millis() as i64)
}

#[derive(Debug)]
pub(crate) struct Segment {
    pub base_offset: u64,
    log_path: Arc<Path>,
    index_path: PathBuf,
    time_index_path: PathBuf,
    /// Pinned open while the segment takes appends.
    log: Handle,
    offset_index: OffsetIndex,
    time_index: TimeIndex,
    txn_index_path: PathBuf,
    /// Opened when the segment has one (created by its first aborted transaction).
    txn_index: Option<TxnIndex>,
    /// Bytes of whole batches in the log file.
    pub size: u64,
    /// One past the last offset in the segment.
    pub next_offset: u64,
    /// Largest batch max timestamp, or [`NO_TIMESTAMP`].
    pub max_timestamp: i64,
    /// Relative base offset of the first batch that reached `max_timestamp`.
    max_timestamp_rel: u32,
    pub first_timestamp: Option<i64>,
    /// Max timestamp of the first batch; `segment.ms` counts from it, as in Kafka.
    pub roll_timestamp: Option<i64>,
    bytes_since_index: u64,
    pub sealed: bool,
    /// How an active segment writes when the process asked for direct I/O (see
    /// [`crate::direct`]); `None` for buffered writes and for sealed segments.
    direct: Option<DirectWriter>,
}

/// The outcome of recovering a segment from its bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Recovered {
    Intact,
    /// Bytes from `at` on were not valid batches and were cut off.
    Truncated {
        at: u64,
        dropped: u64,
    },
}

impl Segment {
    /// Creates empty files for a new segment at `base_offset` (replacing leftovers of a crash).
    pub fn create(dir: &Path, base_offset: u64) -> Result<Self, StorageError> {
        let mut seg = Self::open_files(dir, base_offset, true)?;
        seg.next_offset = base_offset;
        seg.attach_direct()?;
        Ok(seg)
    }

    fn open_files(dir: &Path, base_offset: u64, truncate: bool) -> Result<Self, StorageError> {
        let log_path: Arc<Path> = dir.join(file_name(base_offset, "log")).into();
        let log = Handle::open(Arc::clone(&log_path), true, truncate)?;
        let index_path = dir.join(file_name(base_offset, "index"));
        let time_index_path = dir.join(file_name(base_offset, "timeindex"));
        // Index files are written when the segment is sealed (or checkpointed): a partition
        // being created costs one file, not three. A new segment drops any left by a crash.
        if truncate {
            remove_if_present(&index_path)?;
            remove_if_present(&time_index_path)?;
        }
        let txn_index_path = dir.join(file_name(base_offset, SegmentFile::TxnIndex.ext()));
        let txn_index = if truncate {
            remove_if_present(&txn_index_path)?;
            None
        } else if txn_index_path.exists() {
            Some(TxnIndex::open(&txn_index_path)?)
        } else {
            None
        };
        Ok(Self {
            base_offset,
            log_path,
            index_path,
            time_index_path,
            log,
            offset_index: OffsetIndex::default(),
            time_index: TimeIndex::default(),
            txn_index_path,
            txn_index,
            size: 0,
            next_offset: base_offset,
            max_timestamp: NO_TIMESTAMP,
            max_timestamp_rel: 0,
            first_timestamp: None,
            roll_timestamp: None,
            bytes_since_index: 0,
            sealed: false,
            direct: None,
        })
    }

    /// Opens a segment known to have been sealed and fsynced before the last recovery
    /// checkpoint: its indexes are loaded (rebuilt from batch headers when inconsistent) and
    /// the tail after the last index entry is checked to end on a batch boundary. When that
    /// check fails the segment is recovered in full instead.
    pub fn open_trusted(
        dir: &Path,
        base_offset: u64,
        index_interval: u64,
        gaps: bool,
    ) -> Result<(Self, Recovered), StorageError> {
        let mut seg = Self::open_files(dir, base_offset, false)?;
        let log = seg.log.file()?;
        let file_len = log.metadata().io_ctx("stat", &seg.log_path)?.len();
        let offsets = read_index::<OffsetEntry>(&seg.index_path, file_len);
        let times = read_index::<TimeEntry>(&seg.time_index_path, file_len);
        let (Some(offsets), Some(times)) = (offsets, times) else {
            tracing::info!(segment = %seg.log_path.display(), "index missing or inconsistent; rebuilding");
            return seg.recover(index_interval, gaps).map(|r| (seg, r));
        };
        // Check the tail after the last indexed batch and learn the segment's end offset.
        let start = offsets.last().map_or(0, |e| u64::from(e.position));
        let mut last: Option<BatchHeader> = None;
        let mut tail_max = NO_TIMESTAMP;
        let stop = walk_headers(&log, start, file_len, |_, h, _| {
            last = Some(*h);
            tail_max = tail_max.max(h.max_timestamp);
            ControlFlow::Continue(())
        })
        .io_ctx("read", &seg.log_path)?;
        let next_offset = last.map_or(base_offset, |h| h.last_offset().max(0) as u64 + 1);
        // Sealing always leaves a final time entry holding the segment's max timestamp.
        let time_index_ok = match times.last() {
            None => file_len == 0,
            Some(t) => {
                base_offset + u64::from(t.rel_offset) < next_offset && tail_max <= t.timestamp
            }
        };
        let consistent = stop == Walk::End
            && last.is_none_or(|h| h.base_offset >= base_offset as i64)
            && time_index_ok;
        if !consistent {
            tracing::warn!(segment = %seg.log_path.display(), "sealed segment has a damaged tail; recovering it");
            return seg.recover(index_interval, gaps).map(|r| (seg, r));
        }
        let first = read_header(&log, 0).io_ctx("read", &seg.log_path)?;
        seg.size = file_len;
        seg.next_offset = next_offset;
        if let Some(t) = times.last() {
            seg.max_timestamp = t.timestamp;
            seg.max_timestamp_rel = t.rel_offset;
        }
        seg.first_timestamp = first.map(|h| first_timestamp(&h));
        seg.roll_timestamp = first.map(|h| h.max_timestamp);
        seg.offset_index = offsets;
        seg.time_index = times;
        seg.sealed = true;
        seg.log.unpin();
        Ok((seg, Recovered::Intact))
    }

    /// Opens a segment whose bytes may be torn (at or after the recovery checkpoint): every
    /// batch is validated (frame, CRC, offsets: contiguous, or only increasing when the log
    /// may have `gaps`), the file is cut at the first bad one, and the indexes are rebuilt.
    pub fn open_recovering(
        dir: &Path,
        base_offset: u64,
        index_interval: u64,
        gaps: bool,
    ) -> Result<(Self, Recovered), StorageError> {
        let mut seg = Self::open_files(dir, base_offset, false)?;
        let recovered = seg.recover(index_interval, gaps)?;
        Ok((seg, recovered))
    }

    fn recover(&mut self, index_interval: u64, gaps: bool) -> Result<Recovered, StorageError> {
        let log = self.log.file()?;
        let file_len = log.metadata().io_ctx("stat", &self.log_path)?.len();
        self.reset_state();
        self.offset_index.mark_unpersisted();
        self.time_index.mark_unpersisted();
        let mut expected = self.base_offset as i64;
        let mut valid_end = 0u64;
        let mut body = Vec::new();
        let mut failure: Option<io::Error> = None;
        walk_headers(&log, 0, file_len, |pos, h, bytes| {
            // The base offset is outside the CRC: in a dense log only the expected one is
            // trusted; with gaps, anything past the previous batch that a segment can index.
            let placed = match gaps {
                false => h.base_offset == expected,
                true => {
                    h.base_offset >= expected
                        && h.last_offset() - self.base_offset as i64 <= i64::from(u32::MAX)
                }
            };
            if !placed || h.records_count <= 0 || h.last_offset_delta < 0 {
                return ControlFlow::Break(());
            }
            let bytes = match bytes {
                Some(b) => b,
                None => {
                    body.resize(h.total_len(), 0);
                    if let Err(e) = log.read_exact_at(&mut body, pos) {
                        failure = Some(e);
                        return ControlFlow::Break(());
                    }
                    &body[..]
                }
            };
            if batch::check_crc(bytes, h, 0).is_err() {
                return ControlFlow::Break(());
            }
            self.track(pos, h, index_interval);
            expected = h.last_offset() + 1;
            valid_end = pos + h.total_len() as u64;
            ControlFlow::Continue(())
        })
        .io_ctx("read", &self.log_path)?;
        if let Some(e) = failure {
            return Err(e).io_ctx("read", &self.log_path);
        }
        if valid_end < file_len {
            let padding = padding_only(&log, valid_end, file_len).io_ctx("read", &self.log_path)?;
            if padding {
                tracing::debug!(segment = %self.log_path.display(), at = valid_end,
                    "cut the zeros a direct write left after the last batch");
            } else {
                tracing::warn!(
                    segment = %self.log_path.display(),
                    at = valid_end,
                    dropped = file_len - valid_end,
                    "cut a torn or corrupt tail during recovery"
                );
            }
            log.set_len(valid_end).io_ctx("truncate", &self.log_path)?;
            if padding {
                // Nothing was lost: the segment ends with its last batch, as the segments
                // after it (if any) expect. A sealed segment keeps its padding when the cut
                // made as it was sealed had not reached the disk before a crash.
                return Ok(Recovered::Intact);
            }
            return Ok(Recovered::Truncated {
                at: valid_end,
                dropped: file_len - valid_end,
            });
        }
        Ok(Recovered::Intact)
    }

    fn reset_state(&mut self) {
        self.offset_index.clear();
        self.time_index.clear();
        self.size = 0;
        self.next_offset = self.base_offset;
        self.max_timestamp = NO_TIMESTAMP;
        self.max_timestamp_rel = 0;
        self.first_timestamp = None;
        self.roll_timestamp = None;
        self.bytes_since_index = 0;
    }

    /// Updates sizes, offsets, timestamps and the sparse indexes for a batch now at `pos`.
    fn track(&mut self, pos: u64, h: &BatchHeader, index_interval: u64) {
        let rel = (h.base_offset as u64 - self.base_offset) as u32;
        let indexed = self.bytes_since_index >= index_interval;
        if indexed {
            self.offset_index.push(OffsetEntry {
                rel_offset: rel,
                position: pos as u32,
            });
            self.bytes_since_index = 0;
        }
        if self.first_timestamp.is_none() {
            self.first_timestamp = Some(first_timestamp(h));
            self.roll_timestamp = Some(h.max_timestamp);
        }
        if h.max_timestamp > self.max_timestamp {
            self.max_timestamp = h.max_timestamp;
            self.max_timestamp_rel = rel;
        }
        if indexed {
            self.push_time_entry();
        }
        let len = h.total_len() as u64;
        self.bytes_since_index += len;
        self.size = pos + len;
        self.next_offset = h.last_offset() as u64 + 1;
    }

    fn push_time_entry(&mut self) {
        if self
            .time_index
            .last()
            .is_none_or(|e| e.timestamp < self.max_timestamp)
            && self.max_timestamp != NO_TIMESTAMP
        {
            self.time_index.push(TimeEntry {
                timestamp: self.max_timestamp,
                rel_offset: self.max_timestamp_rel,
            });
        }
    }

    /// Appends validated batches whose headers now carry their final offsets. On a write error
    /// the segment is unchanged (a partial write past `size` is cut off again).
    pub fn append(
        &mut self,
        pieces: &[&[u8]],
        headers: &[BatchHeader],
        index_interval: u64,
    ) -> Result<(), StorageError> {
        debug_assert!(!self.sealed);
        let log = self.log.file()?;
        let written = match &mut self.direct {
            Some(direct) => direct.write(&log, self.size, pieces),
            None => write_all_vectored_at(&log, pieces, self.size),
        };
        if let Err(e) = written {
            // Best effort: the next append overwrites from `size` anyway, and recovery cuts
            // anything past the last valid batch.
            let _ = log.set_len(self.size);
            return Err(e).io_ctx("write", &self.log_path);
        }
        let mut pos = self.size;
        for h in headers {
            self.track(pos, h, index_interval);
            pos += h.total_len() as u64;
        }
        Ok(())
    }

    /// Whether offsets up to `last_offset` can still be indexed relative to this base.
    pub fn can_hold(&self, last_offset: u64) -> bool {
        last_offset - self.base_offset <= u64::from(u32::MAX)
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Makes the segment immutable: final time index entry and indexes written; fsynced too
    /// when `fsync` (otherwise the next flush syncs it, see [`SegmentFiles`]).
    pub fn seal(&mut self, fsync: bool) -> Result<(), StorageError> {
        self.trim_padding()?;
        self.direct = None;
        self.push_time_entry();
        // A sealed segment always has both index files, empty ones included (they are
        // uploaded with it, and an index found missing is rebuilt at the next start).
        persist(&mut self.offset_index, &self.index_path, true)?;
        persist(&mut self.time_index, &self.time_index_path, true)?;
        if fsync {
            self.files()?.sync(true)?;
        }
        self.sealed = true;
        self.log.unpin();
        Ok(())
    }

    /// Makes a sealed segment the active one again (the log was cut back into it).
    pub fn unseal(&mut self) -> Result<(), StorageError> {
        self.log.pin()?;
        self.sealed = false;
        self.attach_direct()
    }

    /// Opens the direct-I/O descriptor an active segment writes with, when the process
    /// asks for direct writes and the segment has none yet.
    fn attach_direct(&mut self) -> Result<(), StorageError> {
        if self.direct.is_none() && crate::direct::direct_writes() {
            let writer =
                DirectWriter::open(&self.log_path, false).io_ctx("open", &self.log_path)?;
            self.direct = Some(writer);
        }
        Ok(())
    }

    /// Cuts the zeros a direct write left after the last batch (see [`crate::direct`]).
    pub fn trim_padding(&mut self) -> Result<(), StorageError> {
        if let Some(direct) = self.direct.as_mut().filter(|d| d.padded()) {
            let log = self.log.file()?;
            log.set_len(self.size).io_ctx("truncate", &self.log_path)?;
            direct.trimmed();
        }
        Ok(())
    }

    /// Handles for fsyncing the segment without holding the log's lock.
    pub fn files(&self) -> Result<SegmentFiles, StorageError> {
        Ok(SegmentFiles {
            log: self.log.file()?,
            indexes: [self.index_path.clone(), self.time_index_path.clone()],
            path: Arc::clone(&self.log_path),
        })
    }

    /// Writes what the index files lack (each opened only when it does).
    pub fn persist_indexes(&mut self) -> Result<(), StorageError> {
        persist(&mut self.offset_index, &self.index_path, false)?;
        persist(&mut self.time_index, &self.time_index_path, false)
    }

    /// Removes every batch from the one containing `offset` on; returns the new next offset.
    pub fn truncate_to(&mut self, offset: u64, index_interval: u64) -> Result<u64, StorageError> {
        let view = self.view()?;
        let cut = view.locate(offset, self.offset_hint(offset))?;
        let Some((pos, _)) = cut else {
            return Ok(self.next_offset);
        };
        let log = view.file;
        log.set_len(pos).io_ctx("truncate", &self.log_path)?;
        if let Some(direct) = &mut self.direct {
            direct.forget();
        }
        // Rebuild the bookkeeping from the remaining headers; truncation is rare.
        self.reset_state();
        walk_headers(&log, 0, pos, |p, h, _| {
            self.track(p, h, index_interval);
            ControlFlow::Continue(())
        })
        .io_ctx("read", &self.log_path)?;
        self.offset_index.mark_unpersisted();
        self.time_index.mark_unpersisted();
        self.unseal()?;
        let end = self.next_offset;
        self.truncate_aborted(end)?;
        Ok(end)
    }

    /// Where to start scanning for `offset`: the last indexed batch starting at or before it.
    pub fn offset_hint(&self, offset: u64) -> Hint {
        let rel = offset
            .saturating_sub(self.base_offset)
            .min(u64::from(u32::MAX)) as u32;
        self.offset_index
            .floor(|e| e.rel_offset <= rel)
            .map_or(Hint::START, |e| Hint {
                pos: u64::from(e.position),
                checked: true,
                base_offset: self.base_offset + u64::from(e.rel_offset),
                max_timestamp: None,
            })
    }

    /// Where to start scanning for the first batch with a timestamp at or after `ts`.
    pub fn time_hint(&self, ts: i64) -> Hint {
        let Some(t) = self.time_index.floor(|e| e.timestamp <= ts) else {
            return Hint::START;
        };
        let target = self.base_offset + u64::from(t.rel_offset);
        let hint = self.offset_hint(target);
        if hint.base_offset == target {
            // The entry names the first batch to reach its timestamp: check that too.
            Hint {
                max_timestamp: Some(t.timestamp),
                ..hint
            }
        } else {
            hint
        }
    }

    /// The last index entry at or before file position `pos`: a batch known to start there.
    pub fn position_hint(&self, pos: u64) -> Hint {
        self.offset_index
            .floor(|e| u64::from(e.position) <= pos)
            .map_or(Hint::START, |e| Hint {
                pos: u64::from(e.position),
                checked: true,
                base_offset: self.base_offset + u64::from(e.rel_offset),
                max_timestamp: None,
            })
    }

    /// Where to start scanning for the first batch that reached the segment's max timestamp.
    pub fn max_timestamp_hint(&self) -> Hint {
        self.offset_hint(self.base_offset + u64::from(self.max_timestamp_rel))
    }

    /// A reader's view; opens a sealed segment's file if the cache no longer has it.
    pub fn view(&self) -> Result<SegmentView, StorageError> {
        Ok(SegmentView {
            file: self.log.file()?,
            direct: self.direct.as_ref().map(|d| Arc::clone(d.file())),
            pinned: self.log.pinned(),
            path: Arc::clone(&self.log_path),
            size: self.size,
        })
    }

    /// The time retention ages the segment by: its largest record timestamp or, when no
    /// record carries one (timestamp -1), the log file's last modification, as in Kafka.
    pub fn retention_timestamp(&self) -> i64 {
        if self.max_timestamp >= 0 {
            return self.max_timestamp;
        }
        modified_ms(std::fs::metadata(&self.log_path).and_then(|m| m.modified()))
    }

    pub fn info(&self) -> SegmentInfo {
        SegmentInfo {
            base_offset: self.base_offset,
            next_offset: self.next_offset,
            size_bytes: self.size,
            first_timestamp: self.first_timestamp,
            max_timestamp: (self.max_timestamp != NO_TIMESTAMP).then_some(self.max_timestamp),
            sealed: self.sealed,
            log_path: self.log_path.to_path_buf(),
            offset_index_path: self.index_path.clone(),
            time_index_path: self.time_index_path.clone(),
            txn_index_path: self
                .txn_index
                .as_ref()
                .filter(|t| !t.is_empty())
                .map(|_| self.txn_index_path.clone()),
        }
    }

    /// Records a transaction aborted by a marker in this segment, durably (the marker's
    /// batch is fsynced by the append path; the entry is fsynced here, as aborts are rare).
    pub fn append_aborted(&mut self, entry: AbortedTxn) -> Result<(), StorageError> {
        if self.txn_index.is_none() {
            self.txn_index = Some(TxnIndex::open(&self.txn_index_path)?);
        }
        let index = self.txn_index.as_mut().expect("opened above");
        index.append(entry)?;
        index.sync()
    }

    /// Whether a transaction was aborted in this segment.
    pub fn has_aborted(&self) -> bool {
        self.txn_index.as_ref().is_some_and(|t| !t.is_empty())
    }

    /// The transactions aborted in this segment, in marker order.
    pub fn aborted(&self) -> Result<Vec<AbortedTxn>, StorageError> {
        self.txn_index
            .as_ref()
            .map_or(Ok(Vec::new()), TxnIndex::entries)
    }

    /// Drops the entries of transactions aborted at or after `offset`.
    pub fn truncate_aborted(&mut self, offset: u64) -> Result<(), StorageError> {
        match self.txn_index.as_mut() {
            Some(index) => index.truncate_to(offset),
            None => Ok(()),
        }
    }

    /// Deletes the segment's files. Readers holding a view keep reading the unlinked file.
    pub fn delete(self) -> Result<(), StorageError> {
        // The index files are removed after the log, so a crash in between leaves only orphan
        // indexes, which opening the log removes.
        for path in [
            &*self.log_path,
            &self.index_path,
            &self.time_index_path,
            &self.txn_index_path,
        ] {
            remove_if_present(path)?;
        }
        Ok(())
    }
}

/// Deletes the files of the segment based at `base_offset` in `dir`, whether open or not.
pub(crate) fn delete_files(dir: &Path, base_offset: u64) -> Result<(), StorageError> {
    for ext in ["log", "index", "timeindex", "txnindex"] {
        remove_if_present(&dir.join(file_name(base_offset, ext)))?;
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> Result<(), StorageError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e).io_ctx("delete", path),
        _ => Ok(()),
    }
}

fn first_timestamp(h: &BatchHeader) -> i64 {
    if h.is_log_append_time() {
        h.max_timestamp
    } else {
        h.base_timestamp
    }
}

/// Writes the entries `index` has not written to `path` yet, opening it only when there are
/// (or when the file must exist, `always`).
fn persist<E: Entry>(
    index: &mut crate::index::SparseIndex<E>,
    path: &Path,
    always: bool,
) -> Result<(), StorageError> {
    if !index.needs_persist() && !always {
        return Ok(());
    }
    let file = File::options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .io_ctx("open", path)?;
    index.persist(&file).io_ctx("write", path)
}

fn read_index<E: Entry>(path: &Path, log_size: u64) -> Option<crate::index::SparseIndex<E>> {
    let bytes = std::fs::read(path).ok()?;
    match crate::index::SparseIndex::<E>::decode(&bytes, log_size) {
        Ok(idx) => Some(idx),
        Err(reason) => {
            tracing::warn!(index = %path.display(), %reason, "ignoring inconsistent index");
            None
        }
    }
}

fn read_header(file: &File, pos: u64) -> io::Result<Option<BatchHeader>> {
    let mut buf = [0u8; HEADER_LEN];
    let n = read_full_at(file, &mut buf, pos)?;
    Ok(BatchHeader::parse(&buf[..n]))
}

/// Reads as much of `buf` as the file holds at `pos`; returns the number of bytes read.
pub(crate) fn read_full_at(file: &File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], pos + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Whether the file's bytes from `from` to `to` are the padding a direct write leaves after
/// the last batch: fewer than a block, all zero, up to a block boundary.
fn padding_only(file: &File, from: u64, to: u64) -> io::Result<bool> {
    let block = crate::direct::BLOCK as u64;
    if to - from >= block || !to.is_multiple_of(block) {
        return Ok(false);
    }
    let mut bytes = vec![0xFF; (to - from) as usize];
    let n = read_full_at(file, &mut bytes, from)?;
    Ok(bytes[..n].iter().all(|&b| b == 0))
}

/// Writes `pieces` one after another at `pos` with as few `pwritev` calls as the kernel
/// allows (it takes at most `IOV_MAX` pieces and may write less than asked).
fn write_all_vectored_at(file: &File, pieces: &[&[u8]], mut pos: u64) -> io::Result<()> {
    const IOV_MAX: usize = 1024;
    for group in pieces.chunks(IOV_MAX) {
        let mut slices: Vec<io::IoSlice<'_>> = group.iter().map(|p| io::IoSlice::new(p)).collect();
        let mut left: &mut [io::IoSlice<'_>] = &mut slices;
        while !left.is_empty() {
            match rustix::io::pwritev(file, left, pos) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    pos += n as u64;
                    io::IoSlice::advance_slices(&mut left, n);
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Appends to `out` up to `want` bytes of `file` from `pos` (fewer where the file ends),
/// reading straight into `out`'s spare capacity (an empty `out` takes a pooled buffer, see
/// `buffers`): a fetch reads up to megabytes a partition, and zeroing a buffer before reading
/// into it cost as much CPU as the read itself.
pub(crate) fn read_append_at(
    file: &File,
    out: &mut Vec<u8>,
    want: usize,
    pos: u64,
) -> io::Result<usize> {
    crate::buffers::ensure(out, want);
    let start = out.len();
    let end = start + want;
    out.reserve_exact(want);
    while out.len() < end {
        let at = pos + (out.len() - start) as u64;
        // Fills the spare capacity, which may hold more than `want`: the excess is cut below.
        match rustix::io::pread(file, rustix::buffer::spare_capacity(out), at) {
            Ok(0) => break,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    out.truncate(end);
    Ok(out.len() - start)
}

/// How a header walk ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Walk {
    /// Reached `end` exactly on a batch boundary, or the visitor stopped.
    End,
    /// Bytes at this position do not start a plausible batch that ends by `end`.
    Broken(u64),
}

/// Visits the batch headers of a log file from `pos` (a batch boundary) up to `end`, reading
/// in chunks. The visitor gets the position, the header and, when the chunk holds all of it,
/// the whole batch. Only framing is checked here (magic, length within `end`).
pub(crate) fn walk_headers(
    file: &File,
    mut pos: u64,
    end: u64,
    mut visit: impl FnMut(u64, &BatchHeader, Option<&[u8]>) -> ControlFlow<()>,
) -> io::Result<Walk> {
    let mut buf = vec![0u8; WALK_CHUNK.min((end.saturating_sub(pos)) as usize)];
    while pos < end {
        let want = buf.len().min((end - pos) as usize);
        let filled = read_full_at(file, &mut buf[..want], pos)?;
        let chunk = &buf[..filled];
        let mut off = 0usize;
        while off + HEADER_LEN <= chunk.len() {
            let Ok(h) = batch::check_header(&chunk[off..], 0) else {
                return Ok(Walk::Broken(pos + off as u64));
            };
            let total = h.total_len();
            if pos + (off + total) as u64 > end {
                return Ok(Walk::Broken(pos + off as u64));
            }
            let whole = chunk.get(off..off + total);
            if visit(pos + off as u64, &h, whole).is_break() {
                return Ok(Walk::End);
            }
            off += total;
        }
        if off == 0 {
            // Not even a header's worth of bytes left before `end` (or the file is short).
            return Ok(Walk::Broken(pos));
        }
        pos += off as u64;
    }
    Ok(Walk::End)
}

/// A segment's open files, for fsync outside the log's lock.
#[derive(Debug, Clone)]
pub(crate) struct SegmentFiles {
    log: Arc<File>,
    /// The offset and time indexes, opened to be fsynced (where they were written).
    indexes: [PathBuf; 2],
    path: Arc<Path>,
}

impl SegmentFiles {
    /// fsyncs the log's data, and with `whole` its metadata and both indexes as well.
    pub fn sync(&self, whole: bool) -> Result<(), StorageError> {
        if !whole {
            return self.log.sync_data().io_ctx("fsync", &self.path);
        }
        self.log.sync_all().io_ctx("fsync", &self.path)?;
        for path in &self.indexes {
            match File::open(path) {
                Ok(file) => file.sync_all().io_ctx("fsync", path)?,
                // Not written yet: an empty segment's indexes are written when it is sealed.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).io_ctx("open", path),
            }
        }
        Ok(())
    }
}

/// Where an index says a scan may start, and what the batch there must look like.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hint {
    pos: u64,
    /// Checked hints come from an index; unchecked ones are known batch boundaries.
    checked: bool,
    base_offset: u64,
    max_timestamp: Option<i64>,
}

impl Hint {
    pub(crate) const START: Hint = Hint::at(0);

    /// An index entry's claim that the batch based at `base_offset` starts at `pos`.
    #[cfg(test)]
    pub(crate) const fn checked(pos: u64, base_offset: u64) -> Hint {
        Hint {
            pos,
            checked: true,
            base_offset,
            max_timestamp: None,
        }
    }

    /// A position known to start a batch.
    pub(crate) const fn at(pos: u64) -> Hint {
        Hint {
            pos,
            checked: false,
            base_offset: 0,
            max_timestamp: None,
        }
    }

    /// The position it names.
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// Whether `h`, read at the hint's position, is the batch the index said starts there.
    pub(crate) fn matches(&self, h: &BatchHeader) -> bool {
        !self.checked
            || (h.base_offset == self.base_offset as i64
                && self.max_timestamp.is_none_or(|t| t == h.max_timestamp))
    }
}

#[derive(Debug)]
enum Scan {
    Found(u64, BatchHeader),
    NotFound,
    BadHint,
}

/// A reader's snapshot of a segment: the file and how many bytes of it are whole batches.
#[derive(Debug, Clone)]
pub(crate) struct SegmentView {
    file: Arc<File>,
    /// The active segment's direct-I/O descriptor, when it writes with one: bulk reads go
    /// through it (see [`crate::direct`]).
    direct: Option<Arc<File>>,
    /// The segment keeps the file open itself (the active one), not the cache of handles.
    pub pinned: bool,
    path: Arc<Path>,
    pub size: u64,
}

impl SegmentView {
    /// The open log file.
    pub(crate) fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// The log file's path (for errors).
    pub(crate) fn path(&self) -> &Arc<Path> {
        &self.path
    }

    /// Position and header of the first batch, scanning from `hint`, whose last offset is at
    /// least `offset`; `None` when the segment ends first.
    pub fn locate(
        &self,
        offset: u64,
        hint: Hint,
    ) -> Result<Option<(u64, BatchHeader)>, StorageError> {
        self.find(hint, |h| h.last_offset() >= offset as i64)
    }

    /// Position and header of the first batch from `hint` on for which `pred` holds. An index
    /// entry that does not match the batch it points at (a damaged sealed index) is not
    /// trusted: the scan restarts at the segment's start.
    pub fn find(
        &self,
        hint: Hint,
        pred: impl Fn(&BatchHeader) -> bool,
    ) -> Result<Option<(u64, BatchHeader)>, StorageError> {
        match self.scan(hint, &pred)? {
            Scan::Found(pos, h) => Ok(Some((pos, h))),
            Scan::NotFound => Ok(None),
            Scan::BadHint => {
                tracing::warn!(segment = %self.path.display(), position = hint.pos, "index entry does not match the log; scanning the segment from its start");
                match self.scan(Hint::START, &pred)? {
                    Scan::Found(pos, h) => Ok(Some((pos, h))),
                    Scan::NotFound | Scan::BadHint => Ok(None),
                }
            }
        }
    }

    /// Like [`Self::find`], from `pos`, a known batch boundary.
    pub fn find_from(
        &self,
        pos: u64,
        pred: impl Fn(&BatchHeader) -> bool,
    ) -> Result<Option<(u64, BatchHeader)>, StorageError> {
        self.find(Hint::at(pos), pred)
    }

    fn scan(&self, hint: Hint, pred: &impl Fn(&BatchHeader) -> bool) -> Result<Scan, StorageError> {
        let mut result = Scan::NotFound;
        let mut visited = false;
        walk_headers(&self.file, hint.pos, self.size, |pos, h, _| {
            if !visited {
                visited = true;
                if !hint.matches(h) {
                    result = Scan::BadHint;
                    return ControlFlow::Break(());
                }
            }
            if pred(h) {
                result = Scan::Found(pos, *h);
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .io_ctx("read", &self.path)?;
        if !visited && hint.checked {
            return Ok(Scan::BadHint);
        }
        Ok(result)
    }

    /// Reads the whole batch at `pos`.
    pub fn read_batch(&self, pos: u64, header: &BatchHeader) -> Result<Vec<u8>, StorageError> {
        let mut buf = vec![0u8; header.total_len()];
        self.file
            .read_exact_at(&mut buf, pos)
            .io_ctx("read", &self.path)?;
        Ok(buf)
    }

    /// Appends up to `want` bytes from `pos` to `out`, directly when the segment writes so.
    fn read_append_at(
        &self,
        out: &mut Vec<u8>,
        want: usize,
        pos: u64,
    ) -> Result<usize, StorageError> {
        match &self.direct {
            Some(direct) => crate::direct::read_append_at(direct, out, want, pos),
            None => read_append_at(&self.file, out, want, pos),
        }
        .io_ctx("read", &self.path)
    }

    /// Appends to `out` the whole batches from `pos` that fit in `budget` bytes (at least one
    /// when `at_least_one`). Returns whether the reader may continue into the next segment
    /// (the segment's end was reached within budget).
    pub fn read_batches(
        &self,
        pos: u64,
        budget: usize,
        at_least_one: bool,
        out: &mut Vec<u8>,
    ) -> Result<bool, StorageError> {
        let available = self.size.saturating_sub(pos);
        if available == 0 {
            return Ok(true);
        }
        // Read at least a batch's length prefix, so a tiny budget still finds the first batch.
        let want = (budget.max(LOG_OVERHEAD) as u64).min(available) as usize;
        let start = out.len();
        let filled = self.read_append_at(out, want, pos)?;
        let whole = whole_batches_len(&out[start..start + filled]);
        if whole > 0 || !at_least_one {
            out.truncate(start + whole);
            return Ok(whole as u64 == available);
        }
        // The first batch alone is larger than the budget: Kafka returns it whole anyway.
        let Some(first) = batch_len_prefix(&out[start..start + filled]) else {
            out.truncate(start);
            return Ok(false);
        };
        if first as u64 > available {
            out.truncate(start);
            return Ok(false);
        }
        out.truncate(start);
        let read = self.read_append_at(out, first, pos)?;
        if read < first {
            out.truncate(start);
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof)).io_ctx("read", &self.path);
        }
        Ok(first as u64 == available)
    }
}

/// Total length of a batch from its first 12 bytes, if they are there and plausible.
fn batch_len_prefix(buf: &[u8]) -> Option<usize> {
    let len = i32::from_be_bytes(buf.get(8..LOG_OVERHEAD)?.try_into().ok()?);
    (len >= (HEADER_LEN - LOG_OVERHEAD) as i32).then(|| LOG_OVERHEAD + len as usize)
}

/// Length of the longest prefix of `buf` made of whole batches.
fn whole_batches_len(buf: &[u8]) -> usize {
    let mut off = 0;
    while let Some(len) = batch_len_prefix(&buf[off..]) {
        if off + len > buf.len() {
            break;
        }
        off += len;
    }
    off
}
