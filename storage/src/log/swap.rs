//! Replacing a run of sealed segments with rewritten ones, atomically: what compaction does
//! to a cleaned range. Readers see the old segments or the new ones, never a mix, and a crash
//! at any point leaves one of the two.
//!
//! On disk, in three steps:
//! 1. [`SegmentRewrite`] writes the new segments as `<base>.log.cleaned` files (batches keep
//!    their offsets; gaps are expected) and fsyncs them. A crash here leaves `.cleaned` files
//!    that the next open deletes: the old segments stand.
//! 2. [`SegmentRewrite::prepare`] creates the marker `<from>-<to>.swap` and fsyncs the
//!    directory. This is the commit point: from here on the swap is completed, by
//!    [`Log::apply_rewrite`] or, after a crash, by the next open.
//! 3. Completing deletes the old segments' files with base offsets in `from..to`, renames the
//!    marker to `.swapped`, renames the `.cleaned` files into place (their indexes are rebuilt
//!    from the batches) and removes the marker, fsyncing the directory between. The marker's
//!    name says which half is done, so a crash in the middle is completed the same way.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Inner, Log, replica};
use crate::batch::{self, BatchError};
use crate::checkpoint;
use crate::error::{IoContext, StorageError};
use crate::segment::{self, Segment};
use crate::txn_index::{AbortedTxn, TxnIndex};

const CLEANED: &str = "cleaned";
const MARKER: &str = "swap";
const SWAPPED: &str = "swapped";
/// The kinds of segment file a rewrite writes; the other indexes are rebuilt from the batches.
const LOG: &str = "log";
const TXN_INDEX: &str = "txnindex";

/// New segments for the sealed segments whose base offsets are in `from..to`, being written.
#[derive(Debug)]
pub struct SegmentRewrite {
    dir: PathBuf,
    from: u64,
    to: u64,
    segment_bytes: u64,
    /// Base offsets of the files written so far, in order; the last may still grow.
    bases: Vec<u64>,
    current: Option<(File, u64)>,
    next: u64,
    /// The segments being replaced, as they were when the rewrite started.
    replaced: Vec<(u64, u64, u64)>,
}

/// A rewrite past its commit point: applied now, or by the next open after a crash.
#[derive(Debug)]
pub struct PreparedRewrite {
    from: u64,
    to: u64,
}

impl Log {
    /// Starts rewriting the sealed segments whose base offsets are in `from..to`; `from` must
    /// be a segment's base and `to` a later segment's (the active one's at most). The new
    /// batches must lie in `from..to`.
    pub fn rewrite_segments(&self, from: u64, to: u64) -> Result<SegmentRewrite, StorageError> {
        self.check_online()?;
        let inner = self.read_inner();
        let is_base = |b: u64| inner.all().any(|s| s.base_offset == b);
        if from >= to || !is_base(from) || !is_base(to) || to > inner.active.base_offset {
            return Err(StorageError::Config {
                key: "rewrite range",
                reason: format!("{from}..{to} is not a run of sealed segments"),
            });
        }
        if pending(&self.dir)? {
            return Err(StorageError::Config {
                key: "rewrite",
                reason: "a prepared swap is not applied yet".into(),
            });
        }
        discard_cleaned(&self.dir)?;
        Ok(SegmentRewrite {
            dir: self.dir.clone(),
            from,
            to,
            segment_bytes: inner.config.segment_bytes,
            bases: Vec::new(),
            current: None,
            next: from,
            replaced: bases_in(&inner, from, to),
        })
    }

    /// Prepares and applies `rewrite` unless the segments it replaces changed since it
    /// started (retention, DeleteRecords or a truncation removed or cut some): then its files
    /// are discarded and the answer is false. Appends wait while the swap is committed and
    /// applied. (A log start moved inside the first segment leaves it as it was; what the
    /// rewrite keeps below the log start stays unread, as it was before.)
    pub fn commit_rewrite(&self, mut rewrite: SegmentRewrite) -> Result<bool, StorageError> {
        rewrite.finish_file()?;
        let mut inner = self.write_inner();
        let (from, to) = (rewrite.from, rewrite.to);
        if bases_in(&inner, from, to) != rewrite.replaced {
            drop(inner);
            discard_cleaned(&self.dir)?;
            return Ok(false);
        }
        let prepared = rewrite.prepare()?;
        apply_locked(&self.dir, &mut inner, prepared)?;
        Ok(true)
    }

    /// Completes a prepared rewrite: the old segments go, the new ones take their place. Reads
    /// already holding the old segments finish on them (their files stay open).
    pub fn apply_rewrite(&self, prepared: PreparedRewrite) -> Result<(), StorageError> {
        apply_locked(&self.dir, &mut self.write_inner(), prepared)
    }
}

fn apply_locked(
    dir: &Path,
    inner: &mut Inner,
    prepared: PreparedRewrite,
) -> Result<(), StorageError> {
    let (from, to) = (prepared.from, prepared.to);
    let bases = cleaned_bases_in(dir, from, to)?;
    complete(dir, from, to)?;
    let interval = inner.config.index_interval_bytes;
    inner
        .sealed
        .retain(|s| !(from..to).contains(&s.base_offset));
    for base in bases {
        let (mut seg, _) = Segment::open_recovering(dir, base, interval, true)?;
        seg.seal(true)?;
        inner.sealed.push_back(seg);
    }
    inner
        .sealed
        .make_contiguous()
        .sort_by_key(|s| s.base_offset);
    Ok(())
}

/// The log's segments in `from..to` (base offset, end offset, size): a truncation inside
/// one changes it as surely as retention removing one does.
fn bases_in(inner: &Inner, from: u64, to: u64) -> Vec<(u64, u64, u64)> {
    inner
        .all()
        .filter(|s| (from..to).contains(&s.base_offset))
        .map(|s| (s.base_offset, s.next_offset, s.size))
        .collect()
}

impl SegmentRewrite {
    /// Appends whole batches that keep their offsets, each past the previous one.
    pub fn append(&mut self, batches: &[u8]) -> Result<(), StorageError> {
        for b in batch::check_replicated_batches(batches)? {
            let base = b.header.base_offset;
            let last = b.header.last_offset();
            if base < 0 || (base as u64) < self.next || last as u64 >= self.to {
                return Err(BatchError::OffsetBehind {
                    at: b.pos,
                    offset: base,
                    expected: self.next,
                }
                .into());
            }
            let bytes = &batches[b.pos..b.pos + b.len()];
            let full = self.current.as_ref().is_some_and(|(_, size)| {
                *size > 0 && size + bytes.len() as u64 > self.segment_bytes
            });
            let far = self
                .bases
                .last()
                .is_some_and(|&start| last as u64 - start > u64::from(u32::MAX));
            if self.current.is_none() || full || far {
                self.start_file()?;
            }
            if let Some((file, size)) = &mut self.current {
                let path = cleaned_path(&self.dir, self.bases.last().copied().unwrap_or(0));
                file.write_all(bytes).io_ctx("write", &path)?;
                *size += bytes.len() as u64;
            }
            self.next = last as u64 + 1;
        }
        Ok(())
    }

    /// Records an aborted transaction whose marker the rewrite kept, in the index of the
    /// new segment holding the marker (the last one written so far).
    pub fn append_aborted(&mut self, entry: AbortedTxn) -> Result<(), StorageError> {
        let Some(&base) = self.bases.last() else {
            return Ok(());
        };
        let path = cleaned_file(&self.dir, base, TXN_INDEX);
        let mut index = TxnIndex::open(&path)?;
        index.append(entry)?;
        index.sync()
    }

    /// Starts the next file where the previous one ended (at `from` for the first), as
    /// Kafka names a cleaned segment after the first it replaces: the log start offset and
    /// the segments' ranges stay as they were, with the gaps inside segments.
    fn start_file(&mut self) -> Result<(), StorageError> {
        self.finish_file()?;
        let path = cleaned_path(&self.dir, self.next);
        let file = File::create(&path).io_ctx("create", &path)?;
        self.bases.push(self.next);
        self.current = Some((file, 0));
        Ok(())
    }

    fn finish_file(&mut self) -> Result<(), StorageError> {
        if let Some((file, _)) = self.current.take() {
            let path = cleaned_path(&self.dir, self.bases.last().copied().unwrap_or(0));
            file.sync_all().io_ctx("fsync", &path)?;
        }
        Ok(())
    }

    /// Makes the new segments durable and passes the commit point (see the module docs).
    pub fn prepare(mut self) -> Result<PreparedRewrite, StorageError> {
        if self.bases.is_empty() {
            // Nothing stays: an empty segment keeps the range's start.
            self.start_file()?;
        }
        self.finish_file()?;
        // Compaction leaves gaps; the log must accept them before any recovery sees them.
        replica::mark_gaps(&self.dir)?;
        checkpoint::sync_dir(&self.dir)?;
        let marker = marker_path(&self.dir, self.from, self.to, MARKER);
        File::create(&marker)
            .and_then(|f| f.sync_all())
            .io_ctx("create", &marker)?;
        checkpoint::sync_dir(&self.dir)?;
        Ok(PreparedRewrite {
            from: self.from,
            to: self.to,
        })
    }
}

/// On open: completes a swap that passed its commit point, and deletes the files of one that
/// did not.
pub(super) fn recover(dir: &Path) -> Result<(), StorageError> {
    for entry in std::fs::read_dir(dir).io_ctx("list", dir)? {
        let path = entry.io_ctx("list", dir)?.path();
        let ext = path.extension().and_then(|e| e.to_str());
        if ext != Some(MARKER) && ext != Some(SWAPPED) {
            continue;
        }
        let range = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.split_once('-'))
            .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
        match range {
            Some((from, to)) => {
                tracing::warn!(log = %dir.display(), from, to, "completing a segment swap a crash interrupted");
                complete(dir, from, to)?;
            }
            None => std::fs::remove_file(&path).io_ctx("delete", &path)?,
        }
    }
    discard_cleaned(dir)
}

/// Step 3, in two phases the marker's name records, so a crash part-way through is completed
/// by running the rest again: `.swap`, delete the old segments' files (no new file has its
/// final name yet, so every segment file in the range is old); `.swapped`, rename the new
/// files into place.
fn complete(dir: &Path, from: u64, to: u64) -> Result<(), StorageError> {
    let marker = marker_path(dir, from, to, MARKER);
    let swapped = marker_path(dir, from, to, SWAPPED);
    if marker.exists() {
        for base in super::list_segment_bases(dir)? {
            if (from..to).contains(&base) {
                segment::delete_files(dir, base)?;
            }
        }
        checkpoint::sync_dir(dir)?;
        std::fs::rename(&marker, &swapped).io_ctx("rename", &marker)?;
        checkpoint::sync_dir(dir)?;
    }
    if !swapped.exists() {
        return Err(StorageError::Config {
            key: "rewrite",
            reason: format!("no prepared swap of {from}..{to}"),
        });
    }
    for (base, ext, from_path) in cleaned_files(dir)? {
        if (from..to).contains(&base) {
            let to_path = dir.join(segment::file_name(base, ext));
            std::fs::rename(&from_path, &to_path).io_ctx("rename", &from_path)?;
        }
    }
    checkpoint::sync_dir(dir)?;
    std::fs::remove_file(&swapped).io_ctx("delete", &swapped)?;
    checkpoint::sync_dir(dir)
}

/// Base offsets of `.cleaned` files in `from..to`, sorted.
fn cleaned_bases_in(dir: &Path, from: u64, to: u64) -> Result<Vec<u64>, StorageError> {
    let mut bases: Vec<u64> = cleaned_files(dir)?
        .into_iter()
        .filter(|(base, ext, _)| *ext == LOG && (from..to).contains(base))
        .map(|(base, _, _)| base)
        .collect();
    bases.sort_unstable();
    Ok(bases)
}

/// Whether a swap past its commit point is waiting to be completed.
fn pending(dir: &Path) -> Result<bool, StorageError> {
    for entry in std::fs::read_dir(dir).io_ctx("list", dir)? {
        let path = entry.io_ctx("list", dir)?.path();
        let ext = path.extension().and_then(|e| e.to_str());
        if ext == Some(MARKER) || ext == Some(SWAPPED) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn discard_cleaned(dir: &Path) -> Result<(), StorageError> {
    for (_, _, path) in cleaned_files(dir)? {
        std::fs::remove_file(&path).io_ctx("delete", &path)?;
    }
    Ok(())
}

/// The `.cleaned` files in `dir`: base offset, kind (extension) and path.
fn cleaned_files(dir: &Path) -> Result<Vec<(u64, &'static str, PathBuf)>, StorageError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).io_ctx("list", dir)? {
        let path = entry.io_ctx("list", dir)?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        for ext in [LOG, TXN_INDEX] {
            if let Some(base) = name
                .strip_suffix(&format!(".{ext}.{CLEANED}"))
                .filter(|b| b.len() == 20)
                .and_then(|b| b.parse::<u64>().ok())
            {
                out.push((base, ext, path.clone()));
            }
        }
    }
    Ok(out)
}

fn cleaned_path(dir: &Path, base: u64) -> PathBuf {
    cleaned_file(dir, base, LOG)
}

fn cleaned_file(dir: &Path, base: u64, ext: &str) -> PathBuf {
    dir.join(format!("{}.{CLEANED}", segment::file_name(base, ext)))
}

fn marker_path(dir: &Path, from: u64, to: u64, phase: &str) -> PathBuf {
    dir.join(format!("{from:020}-{to:020}.{phase}"))
}
