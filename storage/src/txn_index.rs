//! A segment's aborted-transaction index (`.txnindex`), in Kafka's file format so the files
//! mean the same to anyone who reads them: one 34-byte entry per transaction aborted in the
//! segment (its abort marker is in it), in marker order — version (i16, 0), producer id
//! (i64), first offset, last offset (the marker's), and the partition's last stable offset
//! once the abort was written (i64 each).
//!
//! A read_committed fetch collects, from the segment holding its offset onward, the aborted
//! transactions overlapping what it returns, so the client can drop their records; an entry's
//! last stable offset tells when later segments cannot add any (Kafka's
//! `TransactionIndex.collectAbortedTxns`). Entries are few (one per aborted transaction that
//! wrote to the partition), so a query reads the file whole.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, StorageError};

/// Bytes per entry.
pub const ENTRY_BYTES: usize = 34;
const VERSION: i16 = 0;

/// One aborted transaction of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: u64,
    /// The abort marker's offset.
    pub last_offset: u64,
    /// The partition's last stable offset once the abort was written.
    pub last_stable_offset: u64,
}

impl AbortedTxn {
    fn encode(&self) -> [u8; ENTRY_BYTES] {
        let mut out = [0u8; ENTRY_BYTES];
        out[..2].copy_from_slice(&VERSION.to_be_bytes());
        out[2..10].copy_from_slice(&self.producer_id.to_be_bytes());
        for (i, v) in [self.first_offset, self.last_offset, self.last_stable_offset]
            .into_iter()
            .enumerate()
        {
            let at = 10 + i * 8;
            out[at..at + 8].copy_from_slice(&(v as i64).to_be_bytes());
        }
        out
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let i64_at = |at: usize| Some(i64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?));
        let u64_at = |at: usize| u64::try_from(i64_at(at)?).ok();
        if i16::from_be_bytes(b.get(..2)?.try_into().ok()?) != VERSION {
            return None;
        }
        Some(Self {
            producer_id: i64_at(2)?,
            first_offset: u64_at(10)?,
            last_offset: u64_at(18)?,
            last_stable_offset: u64_at(26)?,
        })
    }

    /// Whether records of this transaction may lie in `[from, upper)`.
    fn overlaps(&self, from: u64, upper: u64) -> bool {
        self.last_offset >= from && self.first_offset < upper
    }
}

/// The entries of an index file's bytes, up to the first that does not decode (a torn or
/// damaged tail).
pub fn decode_entries(bytes: &[u8]) -> Vec<AbortedTxn> {
    bytes
        .chunks_exact(ENTRY_BYTES)
        .map_while(AbortedTxn::decode)
        .collect()
}

/// Adds the entries of `entries` overlapping `[from, upper)` to `out`; whether that is all
/// there is (an entry shows the partition was stable past `upper`, so later segments can add
/// nothing).
pub fn collect_aborted(
    entries: &[AbortedTxn],
    from: u64,
    upper: u64,
    out: &mut Vec<AbortedTxn>,
) -> bool {
    let mut complete = false;
    for e in entries {
        if e.overlaps(from, upper) {
            out.push(*e);
        }
        if e.last_stable_offset >= upper {
            complete = true;
            break;
        }
    }
    complete
}

/// One segment's index file, opened only to be written or read (aborts are rare, and a
/// segment holding no descriptor is what keeps a broker's open files bounded).
#[derive(Debug)]
pub struct TxnIndex {
    path: PathBuf,
    /// Entries in the file (whole ones).
    count: u64,
    /// The last entry's marker offset: entries are appended in marker order.
    last_offset: Option<u64>,
}

impl TxnIndex {
    /// Opens (or creates) the index at `path`, cutting off a torn or damaged tail.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .io_ctx("open", path)?;
        let bytes = std::fs::read(path).io_ctx("read", path)?;
        let entries = decode_entries(&bytes);
        let whole = (entries.len() * ENTRY_BYTES) as u64;
        if whole != bytes.len() as u64 {
            file.set_len(whole).io_ctx("truncate", path)?;
        }
        Ok(Self {
            path: path.to_owned(),
            count: entries.len() as u64,
            last_offset: entries.last().map(|e| e.last_offset),
        })
    }

    /// Appends `entry`, whose marker must come after every entry's already here.
    pub fn append(&mut self, entry: AbortedTxn) -> Result<(), StorageError> {
        if self.last_offset.is_some_and(|l| entry.last_offset <= l) {
            return Err(StorageError::Io {
                op: "append to",
                path: self.path.clone(),
                source: std::io::Error::other(format!(
                    "aborted transaction ending at {} is not after the last one",
                    entry.last_offset
                )),
            });
        }
        self.file()?
            .write_all(&entry.encode())
            .io_ctx("write", &self.path)?;
        self.count += 1;
        self.last_offset = Some(entry.last_offset);
        Ok(())
    }

    /// Every entry, read from the file.
    pub fn entries(&self) -> Result<Vec<AbortedTxn>, StorageError> {
        let bytes = std::fs::read(&self.path).io_ctx("read", &self.path)?;
        let mut entries = decode_entries(&bytes);
        entries.truncate(self.count as usize);
        Ok(entries)
    }

    /// Drops the entries of transactions aborted at or after `offset` (the log was cut
    /// back there).
    pub fn truncate_to(&mut self, offset: u64) -> Result<(), StorageError> {
        if self.last_offset.is_none_or(|l| l < offset) {
            return Ok(());
        }
        let kept: Vec<AbortedTxn> = self
            .entries()?
            .into_iter()
            .take_while(|e| e.last_offset < offset)
            .collect();
        self.file()?
            .set_len((kept.len() * ENTRY_BYTES) as u64)
            .io_ctx("truncate", &self.path)?;
        self.count = kept.len() as u64;
        self.last_offset = kept.last().map(|e| e.last_offset);
        Ok(())
    }

    /// fsyncs the file.
    pub fn sync(&self) -> Result<(), StorageError> {
        self.file()?.sync_all().io_ctx("fsync", &self.path)
    }

    /// The file, opened for appends.
    fn file(&self) -> Result<File, StorageError> {
        OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)
            .io_ctx("open", &self.path)
    }

    /// Whether it holds no entry (a segment without aborted transactions needs no file in
    /// object storage).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(first: u64, last: u64, lso: u64) -> AbortedTxn {
        AbortedTxn {
            producer_id: first as i64,
            first_offset: first,
            last_offset: last,
            last_stable_offset: lso,
        }
    }

    #[test]
    fn entries_survive_a_reopen_a_torn_tail_is_cut_and_truncation_drops_later_aborts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("00000000000000000000.txnindex");
        let mut index = TxnIndex::open(&path).expect("open");
        assert!(index.is_empty());
        index.append(txn(0, 5, 6)).expect("append");
        index.append(txn(3, 9, 10)).expect("append");
        assert!(
            index.append(txn(1, 9, 10)).is_err(),
            "not after the last marker"
        );
        index.sync().expect("sync");
        drop(index);
        // Kafka's layout: 34 bytes an entry, version 0 first.
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(bytes.len(), 2 * ENTRY_BYTES);
        assert_eq!(&bytes[..10], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        // A torn write leaves part of an entry: it is cut at the reopen.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(&[0, 0, 1]))
            .expect("torn tail");
        let mut index = TxnIndex::open(&path).expect("reopen");
        assert_eq!(
            index.entries().expect("entries"),
            [txn(0, 5, 6), txn(3, 9, 10)]
        );
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), 68);
        index.truncate_to(9).expect("truncate");
        assert_eq!(index.entries().expect("entries"), [txn(0, 5, 6)]);
        index
            .append(txn(7, 8, 9))
            .expect("after the cut, in order again");
    }

    #[test]
    fn a_query_collects_overlapping_aborts_and_knows_when_it_is_complete() {
        let entries = [txn(0, 5, 6), txn(10, 20, 12), txn(15, 30, 40)];
        let mut out = Vec::new();
        // Records 6..12: only the second transaction's; the partition was stable up to 12
        // after it, so no later segment can add one.
        assert!(collect_aborted(&entries, 6, 12, &mut out));
        assert_eq!(out, [txn(10, 20, 12)]);
        out.clear();
        // 12..50: the last two, and the search must go on to later segments.
        assert!(!collect_aborted(&entries, 12, 50, &mut out));
        assert_eq!(out, [txn(10, 20, 12), txn(15, 30, 40)]);
        assert_eq!(decode_entries(&txn(1, 2, 3).encode()), [txn(1, 2, 3)]);
    }
}
