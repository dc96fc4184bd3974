//! Sparse offset and time indexes of one segment, in Kafka's file layout.
//!
//! Offset index entries are 8 bytes: the batch's base offset relative to the segment's base
//! (u32) and the batch's byte position in the `.log` file (u32). Time index entries are 12
//! bytes: a max timestamp (i64) and the relative base offset of the first batch that reached it
//! (u32). All big-endian. Strata indexes a batch by its *base* offset (Kafka writes the last
//! offset; both read as "start scanning here"), so a lookup of any offset inside an indexed
//! batch lands on that batch directly.
//!
//! Entries live in memory for lookups; the files are written behind (on flush, roll, close) and
//! rebuilt from the log when missing or inconsistent, so they never need their own fsync on the
//! append path.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// One fixed-size index entry.
pub(crate) trait Entry: Copy + std::fmt::Debug {
    const SIZE: usize;
    fn encode(&self, out: &mut Vec<u8>);
    fn decode(b: &[u8]) -> Self;
    /// Whether `self` may follow `prev` in a file for a segment of `log_size` bytes.
    fn follows(&self, prev: Option<&Self>, log_size: u64) -> bool;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    pub rel_offset: u32,
    pub position: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub timestamp: i64,
    pub rel_offset: u32,
}

impl Entry for OffsetEntry {
    const SIZE: usize = 8;
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.rel_offset.to_be_bytes());
        out.extend_from_slice(&self.position.to_be_bytes());
    }
    fn decode(b: &[u8]) -> Self {
        Self {
            rel_offset: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            position: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
    fn follows(&self, prev: Option<&Self>, log_size: u64) -> bool {
        u64::from(self.position) < log_size
            && prev.is_none_or(|p| p.rel_offset < self.rel_offset && p.position < self.position)
    }
}

impl Entry for TimeEntry {
    const SIZE: usize = 12;
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.rel_offset.to_be_bytes());
    }
    fn decode(b: &[u8]) -> Self {
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&b[..8]);
        Self {
            timestamp: i64::from_be_bytes(ts),
            rel_offset: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        }
    }
    fn follows(&self, prev: Option<&Self>, _log_size: u64) -> bool {
        prev.is_none_or(|p| p.timestamp < self.timestamp && p.rel_offset <= self.rel_offset)
    }
}

/// An in-memory sparse index with a write-behind file image.
#[derive(Debug)]
pub(crate) struct SparseIndex<E: Entry> {
    entries: Vec<E>,
    /// Entries already written to the file.
    persisted: usize,
    /// The file holds more entries than memory (after a truncation) and must be cut.
    cut_file: bool,
}

impl<E: Entry> Default for SparseIndex<E> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            persisted: 0,
            cut_file: false,
        }
    }
}

impl<E: Entry> SparseIndex<E> {
    /// Decodes a file image, or says why it cannot be trusted.
    pub fn decode(bytes: &[u8], log_size: u64) -> Result<Self, String> {
        if !bytes.len().is_multiple_of(E::SIZE) {
            return Err(format!(
                "{} bytes is not a whole number of {}-byte entries",
                bytes.len(),
                E::SIZE
            ));
        }
        let mut entries: Vec<E> = Vec::with_capacity(bytes.len() / E::SIZE);
        for chunk in bytes.chunks_exact(E::SIZE) {
            let e = E::decode(chunk);
            if !e.follows(entries.last(), log_size) {
                return Err(format!("entry {} ({e:?}) is out of order", entries.len()));
            }
            entries.push(e);
        }
        let persisted = entries.len();
        Ok(Self {
            entries,
            persisted,
            cut_file: false,
        })
    }

    #[cfg(test)]
    pub fn entries(&self) -> &[E] {
        &self.entries
    }

    /// Memory the entries take.
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<E>()
    }

    pub fn last(&self) -> Option<&E> {
        self.entries.last()
    }

    pub fn push(&mut self, e: E) {
        debug_assert!(e.follows(self.entries.last(), u64::MAX));
        self.entries.push(e);
    }

    /// The last entry for which `le(entry)` holds, given that it holds for a prefix.
    pub fn floor(&self, le: impl Fn(&E) -> bool) -> Option<&E> {
        let n = self.entries.partition_point(le);
        n.checked_sub(1).map(|i| &self.entries[i])
    }

    /// Keeps only the entries for which `keep` holds (a prefix).
    pub fn truncate_where(&mut self, keep: impl Fn(&E) -> bool) {
        let n = self.entries.partition_point(keep);
        if n < self.entries.len() {
            self.entries.truncate(n);
            if self.persisted > n {
                self.persisted = n;
                self.cut_file = true;
            }
        }
    }

    pub fn clear(&mut self) {
        self.truncate_where(|_| false);
    }

    /// Whether the file lacks entries, or holds some no longer here.
    pub fn needs_persist(&self) -> bool {
        self.cut_file || self.persisted < self.entries.len()
    }

    /// Writes the entries the file lacks (and cuts it after a truncation).
    pub fn persist(&mut self, file: &File) -> std::io::Result<()> {
        if self.cut_file {
            file.set_len((self.persisted * E::SIZE) as u64)?;
            self.cut_file = false;
        }
        if self.persisted < self.entries.len() {
            let mut buf = Vec::with_capacity((self.entries.len() - self.persisted) * E::SIZE);
            for e in &self.entries[self.persisted..] {
                e.encode(&mut buf);
            }
            file.write_all_at(&buf, (self.persisted * E::SIZE) as u64)?;
            self.persisted = self.entries.len();
        }
        Ok(())
    }

    /// Forgets what the file holds, so the next `persist` rewrites it whole.
    pub fn mark_unpersisted(&mut self) {
        self.persisted = 0;
        self.cut_file = true;
    }
}

pub(crate) type OffsetIndex = SparseIndex<OffsetEntry>;
pub(crate) type TimeIndex = SparseIndex<TimeEntry>;

#[cfg(test)]
mod tests {
    use super::*;

    fn image<E: Entry>(entries: &[E]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in entries {
            e.encode(&mut out);
        }
        out
    }

    #[test]
    fn offset_index_floor_finds_the_last_entry_not_after_the_target() {
        let mut idx = OffsetIndex::default();
        for (rel, pos) in [(0, 0), (10, 4096), (20, 8192)] {
            idx.push(OffsetEntry {
                rel_offset: rel,
                position: pos,
            });
        }
        let floor = |t| idx.floor(|e| e.rel_offset <= t).map(|e| e.position);
        assert_eq!(floor(5), Some(0));
        assert_eq!(floor(10), Some(4096));
        assert_eq!(floor(1000), Some(8192));
    }

    #[test]
    fn decode_rejects_partial_entries_and_disorder() {
        let good = [
            OffsetEntry {
                rel_offset: 1,
                position: 10,
            },
            OffsetEntry {
                rel_offset: 2,
                position: 20,
            },
        ];
        let bytes = image(&good);
        assert_eq!(
            OffsetIndex::decode(&bytes, 100).expect("valid").entries(),
            &good
        );
        assert!(OffsetIndex::decode(&bytes[..11], 100).is_err());
        assert!(
            OffsetIndex::decode(&bytes, 15).is_err(),
            "position past log end"
        );
        let reversed = image(&[good[1], good[0]]);
        assert!(OffsetIndex::decode(&reversed, 100).is_err());
        let times = image(&[
            TimeEntry {
                timestamp: 5,
                rel_offset: 0,
            },
            TimeEntry {
                timestamp: 5,
                rel_offset: 1,
            },
        ]);
        assert!(
            TimeIndex::decode(&times, 100).is_err(),
            "timestamps must rise"
        );
    }

    #[test]
    fn persist_writes_behind_and_cuts_after_truncation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.index");
        let file = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .expect("open");
        let mut idx = OffsetIndex::default();
        for i in 0..4u32 {
            idx.push(OffsetEntry {
                rel_offset: i,
                position: i * 100,
            });
        }
        idx.persist(&file).expect("persist");
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), 32);
        idx.truncate_where(|e| e.rel_offset < 2);
        idx.push(OffsetEntry {
            rel_offset: 7,
            position: 700,
        });
        idx.persist(&file).expect("persist");
        let bytes = std::fs::read(&path).expect("read");
        let back = OffsetIndex::decode(&bytes, 1000).expect("valid");
        assert_eq!(back.entries(), idx.entries());
    }
}
