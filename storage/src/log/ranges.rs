//! Reads as ranges of segment files, for a connection that sends them with `sendfile`: the
//! records go from the page cache to the socket without being copied into the broker's
//! memory and out again (half of a consumer's CPU, measured, was those two copies).
//!
//! A range holds whole batches, exactly what [`Log::read`] would return for the same
//! arguments. Only batch headers are read to find where it ends: the sparse offset index
//! names a batch starting at or before the byte budget's end, and a short walk from there
//! finds the last one that fits; the cut before `upto` (the high watermark) is found as
//! reads find an offset.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

use super::Log;
use crate::batch::{self, BatchHeader, HEADER_LEN};
use crate::error::{IoContext, StorageError};
use crate::segment::{Hint, SegmentView, read_append_at, read_full_at};

/// Bytes read at once when walking batch headers: a few headers of small batches, or one of
/// a large batch.
const HEADER_WINDOW: usize = 4096;

/// How far apart the bytes are whose presence in the page cache is checked before a range
/// is sent from its file.
const PROBE_STRIDE: usize = 128 << 10;

/// Ranges of sealed segments held by answers not yet written. The cache of handles bounds
/// the sealed files the process keeps open; a range keeps its file open after the cache
/// closed it, so these are bounded too, to an eighth of the cache's bound (they come out of
/// the descriptors the broker reserves for files opened for a moment). Past it, reads are
/// made into memory.
static SENDING_SEALED: AtomicUsize = AtomicUsize::new(0);

/// A place among [`SENDING_SEALED`], given back when the last range holding it drops.
#[derive(Debug)]
struct Sending;

impl Sending {
    fn take() -> Option<Arc<Self>> {
        let limit = (crate::handles::open_sealed_limit() / 8).max(1);
        if SENDING_SEALED.fetch_add(1, Ordering::AcqRel) >= limit {
            SENDING_SEALED.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Arc::new(Self))
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        SENDING_SEALED.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whole batches of one segment file, to be sent from the file as they are.
#[derive(Clone, Debug)]
pub struct FileRange {
    file: Arc<File>,
    path: Arc<Path>,
    /// A sealed segment's place among the ranges held open.
    _sending: Option<Arc<Sending>>,
    /// Position of the range's first byte in the file.
    pub pos: u64,
    /// Its length in bytes.
    pub len: u64,
    /// Offsets from its first batch's base offset to the offset after its last batch: the
    /// records it holds, plus any gaps a compacted log left between them.
    pub offsets: u64,
}

impl FileRange {
    /// The open file (unlinked files stay readable through it).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Reads the range into memory, for a connection that cannot send from a file (TLS).
    /// Fails if the file no longer holds it (a truncation since).
    pub fn read(&self) -> Result<Bytes, StorageError> {
        let len = usize::try_from(self.len).unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let read =
            read_append_at(&self.file, &mut out, len, self.pos).io_ctx("read", &self.path)?;
        if read < len {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof))
                .io_ctx("read", &self.path);
        }
        Ok(crate::buffers::freeze(out))
    }

    /// Whether the range's pages are in the page cache, as far as one byte every
    /// [`PROBE_STRIDE`] and the last one tell. `sendfile` from pages that are not waits for
    /// the disk on the thread that calls it, a thread that answers requests; such a read is
    /// better made by the caller's blocking thread. (The headers read to find the range's
    /// ends brought their own pages in.)
    fn cached(&self) -> bool {
        let last = self.pos + self.len.saturating_sub(1);
        (self.pos..=last)
            .step_by(PROBE_STRIDE)
            .chain(std::iter::once(last))
            .all(|at| cached(&self.file, at))
    }
}

/// Whether a read of the byte at `pos` would not wait for the disk. A kernel or file system
/// that cannot tell without waiting says so with an error other than `EAGAIN`: taken as yes.
fn cached(file: &File, pos: u64) -> bool {
    let mut byte = [0u8; 1];
    let mut bufs = [std::io::IoSliceMut::new(&mut byte)];
    !matches!(
        rustix::io::preadv2(file, &mut bufs, pos, rustix::io::ReadWriteFlags::NOWAIT),
        Err(rustix::io::Errno::AGAIN)
    )
}

/// A segment to read from, as the log held it when the read began.
struct Source {
    view: SegmentView,
    base_offset: u64,
    next_offset: u64,
    /// Where to look for the first batch at or after the read's `upto`.
    upto_hint: Hint,
}

impl Log {
    /// The batches [`Log::read`] returns for `from_offset` and `max_bytes`, less those based
    /// at or after `upto`, as ranges of the segment files instead of bytes read. `None` when
    /// they are better read into memory: their pages are not in the page cache, or a header
    /// is not where the index says (a damaged index: [`Log::read`] copes with it).
    pub fn read_ranges(
        &self,
        from_offset: u64,
        max_bytes: usize,
        upto: u64,
    ) -> Result<Option<Vec<FileRange>>, StorageError> {
        self.check_online()?;
        let (sources, hint) = {
            let inner = self.read_inner();
            inner.check_range(from_offset)?;
            if from_offset == inner.active.next_offset || from_offset >= upto {
                return Ok(Some(Vec::new()));
            }
            let first = inner.index_of(from_offset);
            let hint = inner.get(first).offset_hint(from_offset);
            // As in `read`: the first segment's share is unknown until its batch is found.
            let mut sources = Vec::new();
            let mut covered = 0u64;
            for seg in inner.all().skip(first) {
                if !sources.is_empty() {
                    if covered >= max_bytes as u64 || seg.base_offset >= upto {
                        break;
                    }
                    covered += seg.size;
                }
                sources.push(Source {
                    view: seg.view()?,
                    base_offset: seg.base_offset,
                    next_offset: seg.next_offset,
                    upto_hint: seg.offset_hint(upto),
                });
            }
            (sources, hint)
        };
        let mut out: Vec<FileRange> = Vec::new();
        let mut budget = max_bytes as u64;
        for (k, s) in sources.iter().enumerate() {
            let view = &s.view;
            if view.size == 0 {
                continue; // An active segment just rolled.
            }
            let first = if k == 0 {
                view.locate(from_offset, hint)?
            } else {
                Headers::new(view).at(0)?.map(|h| (0, h))
            };
            let Some((pos, first)) = first else {
                if k == 0 {
                    continue;
                }
                // A segment whose first bytes are not a batch: `read` copes with it.
                return Ok(None);
            };
            let first_base = u64::try_from(first.base_offset).unwrap_or(0);
            if first_base >= upto {
                break;
            }
            // Batches never straddle `upto` (a high watermark or a last stable offset): the
            // range ends before the first batch based at or after it.
            let (mut end, mut end_offset) = (view.size, s.next_offset);
            if upto < s.next_offset
                && let Some((p, h)) = view.find(s.upto_hint, |h| h.base_offset >= upto as i64)?
            {
                (end, end_offset) = (p, u64::try_from(h.base_offset).unwrap_or(upto));
            }
            if end.saturating_sub(pos) > budget {
                let target = pos + budget;
                let floor = self.read_inner().position_hint(s.base_offset, target);
                match last_boundary(view, pos, floor, target)? {
                    None => return Ok(None),
                    Some((b, next)) if b > pos => {
                        end = b;
                        end_offset = next.map_or(s.next_offset, |h| h.base_offset as u64);
                    }
                    // Not even the first batch fits: Kafka returns it whole anyway, once.
                    Some(_) if out.is_empty() => {
                        end = pos + first.total_len() as u64;
                        end_offset = u64::try_from(first.last_offset()).unwrap_or(0) + 1;
                    }
                    Some(_) => break,
                }
            }
            if end <= pos {
                break;
            }
            let sending = match view.pinned {
                true => None,
                false => match Sending::take() {
                    Some(s) => Some(s),
                    None => return Ok(None),
                },
            };
            out.push(FileRange {
                file: view.file().clone(),
                path: view.path().clone(),
                _sending: sending,
                pos,
                len: end - pos,
                offsets: end_offset.saturating_sub(first_base),
            });
            budget = budget.saturating_sub(end - pos);
            if end < view.size || budget == 0 {
                break;
            }
        }
        Ok(out.iter().all(FileRange::cached).then_some(out))
    }
}

impl super::Inner {
    /// The offset index's last entry at or before `pos` in the segment based at
    /// `base_offset`; the segment's start if it is gone (retention, a truncation).
    fn position_hint(&self, base_offset: u64, pos: u64) -> Hint {
        let seg = self.get(self.index_of(base_offset));
        if seg.base_offset == base_offset {
            seg.position_hint(pos)
        } else {
            Hint::START
        }
    }
}

/// The last batch boundary at or before `target`, from `pos` (a boundary) on, and the header
/// of the batch starting there (`None` at the segment's end). The walk starts at the index
/// entry `floor` when it lies between the two; `None` when that entry does not name the
/// batch there, or the bytes do not frame batches.
fn last_boundary(
    view: &SegmentView,
    pos: u64,
    floor: Hint,
    target: u64,
) -> Result<Option<(u64, Option<BatchHeader>)>, StorageError> {
    let mut headers = Headers::new(view);
    let mut at = pos;
    if floor.pos() > pos && floor.pos() <= target {
        match headers.at(floor.pos())? {
            Some(h) if floor.matches(&h) => at = floor.pos(),
            _ => return Ok(None),
        }
    }
    loop {
        if at >= view.size {
            return Ok(Some((view.size, None)));
        }
        let Some(h) = headers.at(at)? else {
            return Ok(None);
        };
        let next = at + h.total_len() as u64;
        if next > view.size {
            return Ok(None);
        }
        if next > target {
            return Ok(Some((at, Some(h))));
        }
        at = next;
    }
}

/// Batch headers of a segment, read a window at a time.
struct Headers<'a> {
    view: &'a SegmentView,
    buf: Vec<u8>,
    /// File position of `buf[0]`.
    at: u64,
}

impl<'a> Headers<'a> {
    fn new(view: &'a SegmentView) -> Self {
        Self {
            view,
            buf: Vec::new(),
            at: 0,
        }
    }

    /// The header of the batch at `pos`; `None` when the bytes there are not one.
    fn at(&mut self, pos: u64) -> Result<Option<BatchHeader>, StorageError> {
        let held = pos >= self.at && pos + HEADER_LEN as u64 <= self.at + self.buf.len() as u64;
        if !held {
            let want = (self.view.size.saturating_sub(pos) as usize).min(HEADER_WINDOW);
            self.buf.resize(want, 0);
            let filled = read_full_at(self.view.file(), &mut self.buf, pos)
                .io_ctx("read", self.view.path())?;
            self.buf.truncate(filled);
            self.at = pos;
        }
        let from = (pos - self.at) as usize;
        Ok(self
            .buf
            .get(from..)
            .and_then(|b| batch::check_header(b, 0).ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FlushPolicy, LogConfig};

    fn config(segment_bytes: u64, index_interval_bytes: u64) -> LogConfig {
        LogConfig {
            flush: FlushPolicy::Os,
            segment_ms: None,
            retention_ms: None,
            segment_bytes,
            index_interval_bytes,
            ..LogConfig::default()
        }
    }

    /// A batch of `records` records of `size` bytes each.
    fn batch_of(records: usize, size: usize) -> Vec<u8> {
        let mut b = crate::BatchBuilder::new();
        for i in 0..records {
            b = b.record(crate::Record {
                key: None,
                value: Some(vec![i as u8; size]),
                headers: Vec::new(),
                timestamp: 1,
            });
        }
        b.build()
    }

    /// The ranges hold the bytes `read` returns, cut before `upto`: every start, budget and
    /// cut over batches of mixed sizes spread over several segments.
    #[test]
    fn ranges_hold_what_a_read_returns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Log::open(dir.path(), config(64 << 10, 4096)).expect("open");
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed >> 33
        };
        for _ in 0..300 {
            let records = 1 + (next() % 4) as usize;
            let size = [10, 300, 3000, 9000][(next() % 4) as usize];
            log.append(&batch_of(records, size), 0).expect("append");
        }
        // Reads that reach the end run into an empty active segment.
        log.roll().expect("roll");
        let end = log.log_end_offset();
        assert!(log.segments().len() > 4, "several segments");
        let mut compared = 0;
        for _ in 0..2000 {
            let from = next() % end;
            let budget = [0, 1, 100, 5000, 20_000, 70_000, 400_000][(next() % 7) as usize];
            let upto = from + next() % (end - from + 1);
            let read = log.read(from, budget).expect("read");
            // A fetch at or past `upto` gets nothing, whatever batch holds its offset.
            let want = if from < upto {
                below(&read, upto)
            } else {
                Vec::new()
            };
            let ranges = log
                .read_ranges(from, budget, upto)
                .expect("ranges")
                .expect("in the page cache");
            let mut got = Vec::new();
            for r in &ranges {
                got.extend_from_slice(&r.read().expect("range"));
            }
            assert_eq!(got, want, "from {from}, budget {budget}, upto {upto}");
            let offsets: u64 = ranges.iter().map(|r| r.offsets).sum();
            assert_eq!(offsets, records_in(&want), "from {from}, upto {upto}");
            compared += 1;
        }
        assert_eq!(compared, 2000);
    }

    /// An index entry that names another batch than the one at its position is not trusted.
    #[test]
    fn an_index_that_disagrees_with_the_log_falls_back_to_reading() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Log::open(dir.path(), config(1 << 20, 1)).expect("open");
        for _ in 0..10 {
            log.append(&batch_of(1, 1000), 0).expect("append");
        }
        let view = log.read_inner().active.view().expect("view");
        let good = log.read_inner().position_hint(0, 2500);
        assert!(good.pos() > 0, "an entry past the start");
        let found = last_boundary(&view, 0, good, 2500).expect("walk");
        assert_eq!(found.map(|f| f.0), Some(good.pos()));
        let wrong = Hint::checked(good.pos() + 1, 3);
        assert_eq!(
            last_boundary(&view, 0, wrong, 2500)
                .expect("walk")
                .map(|f| f.0),
            None
        );
    }

    /// Ranges whose pages left the page cache are not sent from the file (the thread that
    /// sends would wait for the disk): the read is made into memory instead.
    #[test]
    fn ranges_out_of_the_page_cache_are_read_instead() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Log::open(dir.path(), config(64 << 20, 4096)).expect("open");
        for _ in 0..2000 {
            log.append(&batch_of(1, 4000), 0).expect("append");
        }
        log.sync_through(2000).expect("sync");
        let file = File::open(dir.path().join(crate::segment::file_name(0, "log"))).expect("open");
        const TMPFS: u64 = 0x0102_1994;
        if rustix::fs::fstatfs(&file).expect("statfs").f_type as u64 == TMPFS {
            return; // tmpfs pages are the files themselves: they never leave memory.
        }
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).expect("fadvise");
        assert!(
            log.read_ranges(0, 4 << 20, 2000).expect("ranges").is_none(),
            "pages not in the page cache"
        );
        log.read(0, 4 << 20).expect("read");
        assert!(
            log.read_ranges(0, 4 << 20, 2000).expect("ranges").is_some(),
            "read into the page cache again"
        );
    }

    fn below(bytes: &[u8], upto: u64) -> Vec<u8> {
        let mut at = 0;
        while let Some(h) = BatchHeader::parse(&bytes[at..]) {
            if h.base_offset as u64 >= upto {
                break;
            }
            at += h.total_len();
        }
        bytes[..at].to_vec()
    }

    fn records_in(bytes: &[u8]) -> u64 {
        let mut at = 0;
        let mut n = 0;
        while let Some(h) = BatchHeader::parse(&bytes[at..]) {
            n += h.records_count as u64;
            at += h.total_len();
        }
        n
    }
}
