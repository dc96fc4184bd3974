//! Compaction's pure parts: the map from key to its latest offset, and the decision, batch by
//! batch, of what a cleaned log keeps. Local ([`crate::Log::clean_with`]) and remote
//! cleaning feed batches through the same [`Filter`].
//!
//! One pass over a partition:
//! 1. [`OffsetMap`] reads the *dirty* section (from the first offset the last pass did not
//!    map to the end of what may be cleaned) and remembers, for each key, its last offset.
//!    The map has a memory bound; when it is full the pass maps less and the rest waits for
//!    the next one.
//! 2. [`Filter`] walks every batch from the log start to that end, in order, and keeps a
//!    record unless the map holds a later offset for its key. Batches keep their offsets, so
//!    the log gets gaps; a batch that loses some records is rebuilt with what is left.
//!
//! Kafka's rules for tombstones and transactions:
//! - A tombstone (null value) that is the latest for its key stays until it is both in the
//!   already-clean section (a previous pass, which removed every older value of its key,
//!   completed) and older than `delete.retention.ms`, so a consumer reading from the start
//!   has that long to see the delete.
//! - Aborted transactional batches (known from the aborted-transaction index) go, and never
//!   enter the map: the latest *committed* value wins. Control batches never enter the map.
//! - A transaction marker stays while any batch of its transaction is left in front of it
//!   (readers need it to know the data is committed or aborted, and a replica rebuilding
//!   producer state from the log needs it to close the transaction); once none is, it goes
//!   like a tombstone does.
//!
//! **Departure:** Kafka keeps the header of each producer's last batch even when all its
//! records go, so a replica rebuilding producer state from the log keeps its sequence
//! numbers. Strata drops empty batches: producer state survives in the snapshots the
//! broker keeps above the cleaned range, and a producer a replica does not know may carry on
//! from any sequence (as in Kafka after producer-id expiry).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::batch::{self, BatchError, BatchHeader, StoredRecord};
use crate::txn_index::AbortedTxn;

/// Bytes one entry of the map costs: a 16-byte key hash, an 8-byte offset, and the table's
/// control byte.
pub const MAP_ENTRY_BYTES: usize = 25;

/// How much the records of one compressed batch may decompress to while cleaning.
const DECOMPRESS_BUDGET: u64 = 1 << 30;

/// Key hash → the key's last offset in the mapped range. Keys are hashed to 128 bits (as
/// Kafka's MD5-based map does), so two keys collide with negligible probability.
#[derive(Debug)]
pub struct OffsetMap {
    map: HashMap<u128, u64, BuildHasherDefault<KeyHashHasher>>,
    max_entries: usize,
    /// The first offset not mapped: everything in `[start, end)` of the dirty section is.
    end: u64,
}

impl OffsetMap {
    /// A map that never holds more than `bytes` of table.
    pub fn with_memory(bytes: usize, start: u64) -> Self {
        // The table has a power-of-two number of slots and fills them to 7/8.
        let slots = (bytes / MAP_ENTRY_BYTES).max(8);
        let slots = if slots.is_power_of_two() {
            slots
        } else {
            slots.next_power_of_two() / 2
        };
        Self {
            map: HashMap::default(),
            max_entries: slots / 8 * 7,
            end: start,
        }
    }

    /// Adds the keys of `batch` (a complete stored batch at or after [`Self::end`]). Returns
    /// false, mapping nothing, when the batch might not fit: the map is full and the pass
    /// stops here.
    pub fn add(&mut self, batch: &[u8], aborted: &Aborted) -> Result<bool, BatchError> {
        let header = batch::check_frame(batch, 0)?;
        if self.map.len() + header.records_count.max(0) as usize > self.max_entries {
            return Ok(false);
        }
        let next = header.last_offset() as u64 + 1;
        if !header.is_control() && !aborted.holds(&header) {
            let mut scratch = Vec::new();
            for r in batch::stored_records(batch, &header, &mut scratch, DECOMPRESS_BUDGET)? {
                if let Some(key) = r.key {
                    let offset = header.base_offset as u64 + r.offset_delta as u64;
                    self.map.insert(key_hash(key), offset);
                }
            }
        }
        self.end = self.end.max(next);
        Ok(true)
    }

    /// Records that every batch below `offset` was given to the map (the rest of the range
    /// was gaps).
    pub fn covered_to(&mut self, offset: u64) {
        self.end = self.end.max(offset);
    }

    /// The last offset of `key` in the mapped range.
    pub fn latest(&self, key: &[u8]) -> Option<u64> {
        self.map.get(&key_hash(key)).copied()
    }

    /// The first offset the map does not cover.
    pub fn end(&self) -> u64 {
        self.end
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The most keys this map takes.
    pub fn capacity(&self) -> usize {
        self.max_entries
    }
}

/// The aborted transactions of the range being cleaned.
#[derive(Debug, Default, Clone)]
pub struct Aborted(Vec<AbortedTxn>);

impl Aborted {
    pub fn new(entries: Vec<AbortedTxn>) -> Self {
        Self(entries)
    }

    /// Whether `header` is a transactional data batch of an aborted transaction.
    pub fn holds(&self, header: &BatchHeader) -> bool {
        header.is_transactional()
            && !header.is_control()
            && self.0.iter().any(|t| {
                t.producer_id == header.producer_id
                    && (t.first_offset..=t.last_offset).contains(&(header.base_offset as u64))
            })
    }

    /// The entry of the abort marker at `offset`, if this is one.
    pub fn ended_at(&self, offset: u64) -> Option<AbortedTxn> {
        self.0.iter().find(|t| t.last_offset == offset).copied()
    }
}

/// What the cleaner does with one batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    Drop,
    /// Keep these bytes instead: the batch without the records that go.
    Rewrite(Vec<u8>),
}

/// Decides, batch by batch in offset order from the start of the cleaned range, what stays.
#[derive(Debug)]
pub struct Filter<'a> {
    map: &'a OffsetMap,
    aborted: &'a Aborted,
    /// Offsets below this were cleaned by a completed pass (the dirty section starts here).
    clean_below: u64,
    /// Tombstones and empty transactions' markers older than this may go.
    delete_horizon_ms: i64,
    /// Producers with a transactional batch seen since their last marker: whether any of
    /// them stayed.
    open: HashMap<i64, bool>,
    pub stats: FilterStats,
}

/// What a filter saw and kept.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FilterStats {
    pub batches_in: u64,
    pub batches_out: u64,
    pub records_in: u64,
    pub records_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The oldest timestamp of a tombstone or transaction marker that stayed only because
    /// it was too young or not yet clean: a later pass may drop it once
    /// `delete.retention.ms` has passed since.
    pub oldest_delete_ms: Option<i64>,
}

impl<'a> Filter<'a> {
    pub fn new(
        map: &'a OffsetMap,
        aborted: &'a Aborted,
        clean_below: u64,
        delete_horizon_ms: i64,
    ) -> Self {
        Self {
            map,
            aborted,
            clean_below,
            delete_horizon_ms,
            open: HashMap::new(),
            stats: FilterStats::default(),
        }
    }

    /// What to do with `batch` (one complete stored batch).
    pub fn judge(&mut self, batch: &[u8]) -> Result<Verdict, BatchError> {
        let header = batch::check_frame(batch, 0)?;
        let bytes = &batch[..header.total_len()];
        let verdict = self.decide(bytes, &header)?;
        self.stats.batches_in += 1;
        self.stats.records_in += header.records_count.max(0) as u64;
        self.stats.bytes_in += bytes.len() as u64;
        let (count, len) = match &verdict {
            Verdict::Keep => (header.records_count.max(0) as u64, bytes.len()),
            Verdict::Drop => (0, 0),
            Verdict::Rewrite(b) => (
                BatchHeader::parse(b).map_or(0, |h| h.records_count as u64),
                b.len(),
            ),
        };
        if len > 0 {
            self.stats.batches_out += 1;
        }
        self.stats.records_out += count;
        self.stats.bytes_out += len as u64;
        Ok(verdict)
    }

    fn decide(&mut self, batch: &[u8], header: &BatchHeader) -> Result<Verdict, BatchError> {
        let pid = header.producer_id;
        if header.is_control() {
            let stays = self.open.remove(&pid).unwrap_or(true);
            if stays {
                return Ok(Verdict::Keep);
            }
            let clean = self.clean_below > header.last_offset() as u64;
            if clean && self.expired(header.max_timestamp) {
                return Ok(Verdict::Drop);
            }
            self.note_delete(header.max_timestamp);
            return Ok(Verdict::Keep);
        }
        if self.aborted.holds(header) {
            self.open.entry(pid).or_insert(false);
            return Ok(Verdict::Drop);
        }
        let mut scratch = Vec::new();
        let records = batch::stored_records(batch, header, &mut scratch, DECOMPRESS_BUDGET)?;
        let mut kept: Vec<StoredRecord<'_>> = Vec::with_capacity(records.len());
        for r in &records {
            if self.keeps(header, r) {
                if r.key.is_some() && r.value.is_none() {
                    self.note_delete(r.timestamp);
                }
                kept.push(*r);
            }
        }
        if header.is_transactional() {
            *self.open.entry(pid).or_insert(false) |= !kept.is_empty();
        }
        Ok(if kept.len() == records.len() {
            Verdict::Keep
        } else if kept.is_empty() {
            Verdict::Drop
        } else {
            let rebuilt = batch::rebuild(batch, header, &kept).map_err(|e| {
                BatchError::BadCompressedRecords {
                    at: 0,
                    reason: format!("recompressing the cleaned batch: {e}"),
                }
            })?;
            Verdict::Rewrite(rebuilt)
        })
    }

    fn keeps(&self, header: &BatchHeader, r: &StoredRecord<'_>) -> bool {
        let offset = header.base_offset as u64 + r.offset_delta as u64;
        let Some(key) = r.key else {
            // Keyless records predate the topic's compaction (they are refused now): kept.
            return true;
        };
        if self.map.latest(key).is_some_and(|latest| latest > offset) {
            return false;
        }
        !(r.value.is_none() && offset < self.clean_below && self.expired(r.timestamp))
    }

    fn note_delete(&mut self, timestamp: i64) {
        let oldest = &mut self.stats.oldest_delete_ms;
        *oldest = Some(oldest.map_or(timestamp, |t| t.min(timestamp)));
    }

    fn expired(&self, timestamp: i64) -> bool {
        timestamp < self.delete_horizon_ms
    }
}

/// One record of a stored batch, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedRecord {
    pub offset: u64,
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    /// `None`: a tombstone.
    pub value: Option<Vec<u8>>,
}

/// The records of one complete stored batch (compressed or not, compacted or not).
pub fn decode(batch: &[u8]) -> Result<Vec<KeyedRecord>, BatchError> {
    let header = batch::check_frame(batch, 0)?;
    let mut scratch = Vec::new();
    let records = batch::stored_records(batch, &header, &mut scratch, DECOMPRESS_BUDGET)?;
    Ok(records
        .iter()
        .map(|r| KeyedRecord {
            offset: header.base_offset as u64 + r.offset_delta as u64,
            timestamp: r.timestamp,
            key: r.key.map(<[u8]>::to_vec),
            value: r.value.map(<[u8]>::to_vec),
        })
        .collect())
}

fn key_hash(key: &[u8]) -> u128 {
    let half = |salt: u8| {
        let mut h = std::hash::DefaultHasher::new();
        h.write_u8(salt);
        h.write(key);
        h.finish()
    };
    (u128::from(half(0)) << 64) | u128::from(half(1))
}

/// The map's keys are already hashes: the table uses their low bits as they are.
#[derive(Debug, Default)]
struct KeyHashHasher(u64);

impl Hasher for KeyHashHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes.iter().take(8) {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BatchBuilder, Record};

    fn at(mut batch: Vec<u8>, base: i64) -> Vec<u8> {
        batch::set_base_offset_and_epoch(&mut batch, base, 0);
        batch
    }

    fn put(base: i64, key: &str, value: Option<&str>, ts: i64) -> Vec<u8> {
        let b = BatchBuilder::new().record(Record {
            key: Some(key.as_bytes().to_vec()),
            value: value.map(|v| v.as_bytes().to_vec()),
            headers: vec![("h".into(), Some(b"x".to_vec()))],
            timestamp: ts,
        });
        at(b.build(), base)
    }

    fn map_of(batches: &[Vec<u8>], start: u64) -> OffsetMap {
        let mut map = OffsetMap::with_memory(1 << 20, start);
        for b in batches {
            let first = BatchHeader::parse(b).map_or(0, |h| h.base_offset as u64);
            if first >= start {
                assert!(map.add(b, &Aborted::default()).expect("maps"));
            }
        }
        map
    }

    #[test]
    fn only_the_latest_value_of_a_key_stays_and_a_fresh_tombstone_too() {
        let log = [
            put(0, "a", Some("1"), 10),
            put(1, "b", Some("1"), 10),
            put(2, "a", Some("2"), 10),
            put(3, "b", None, 10),
        ];
        let map = map_of(&log, 0);
        let aborted = Aborted::default();
        let mut f = Filter::new(&map, &aborted, 0, 1_000);
        let verdicts: Vec<_> = log.iter().map(|b| f.judge(b).expect("judged")).collect();
        assert_eq!(
            verdicts,
            [Verdict::Drop, Verdict::Drop, Verdict::Keep, Verdict::Keep]
        );
        // Next pass: the tombstone is clean and old, so it goes; "a" stays.
        let mut f = Filter::new(&map, &aborted, 4, 1_000);
        assert_eq!(f.judge(&log[3]).expect("judged"), Verdict::Drop);
        assert_eq!(f.judge(&log[2]).expect("judged"), Verdict::Keep);
        // A tombstone younger than the horizon stays.
        let mut f = Filter::new(&map, &aborted, 4, 5);
        assert_eq!(f.judge(&log[3]).expect("judged"), Verdict::Keep);
    }

    #[test]
    fn a_batch_losing_some_records_keeps_its_offsets_and_is_still_valid() {
        for codec in 0..=4i16 {
            let mut b = BatchBuilder::new().producer(7, 1, 100);
            for (k, v) in [("a", "1"), ("b", "1"), ("a", "2"), ("c", "1")] {
                b = b.value(Some(k.as_bytes()), v.as_bytes(), 50);
            }
            let batch = at(compressed(b.build(), codec), 20);
            let map = map_of(std::slice::from_ref(&batch), 20);
            let aborted = Aborted::default();
            let mut f = Filter::new(&map, &aborted, 20, 0);
            let Verdict::Rewrite(out) = f.judge(&batch).expect("judged") else {
                panic!("codec {codec}: one record goes");
            };
            let h = batch::check_replicated_batches(&out).expect("valid")[0].header;
            assert_eq!((h.base_offset, h.last_offset_delta), (20, 3));
            assert_eq!(
                (h.records_count, h.base_sequence, h.compression()),
                (3, 100, codec)
            );
            let mut scratch = Vec::new();
            let deltas: Vec<i32> = batch::stored_records(&out, &h, &mut scratch, 1 << 20)
                .expect("records")
                .iter()
                .map(|r| r.offset_delta)
                .collect();
            assert_eq!(deltas, [1, 2, 3], "codec {codec}");
        }
    }

    /// `batch` (uncompressed, from the builder) with its records compressed by `codec`.
    fn compressed(batch: Vec<u8>, codec: i16) -> Vec<u8> {
        if codec == 0 {
            return batch;
        }
        let body = crate::codec::compress(codec, &batch[batch::HEADER_LEN..]).expect("compress");
        let mut out = batch[..batch::HEADER_LEN].to_vec();
        out.extend_from_slice(&body);
        let attributes = i16::from_be_bytes([out[21], out[22]]) | codec;
        out[21..23].copy_from_slice(&attributes.to_be_bytes());
        let len = (out.len() - batch::LOG_OVERHEAD) as i32;
        out[8..12].copy_from_slice(&len.to_be_bytes());
        let crc = crc32c::crc32c(&out[21..]);
        out[17..21].copy_from_slice(&crc.to_be_bytes());
        out
    }

    #[test]
    fn aborted_data_goes_and_does_not_hide_the_committed_value() {
        let mut txn = BatchBuilder::new()
            .producer(9, 0, 0)
            .transactional()
            .value(Some(b"a"), b"aborted", 10)
            .build();
        txn = at(txn, 1);
        let marker = at(
            BatchBuilder::control(
                9,
                0,
                batch::ControlMarker {
                    commit: false,
                    coordinator_epoch: 0,
                },
                10,
            ),
            2,
        );
        let log = [put(0, "a", Some("committed"), 10), txn, marker];
        let aborted = Aborted::new(vec![AbortedTxn {
            producer_id: 9,
            first_offset: 1,
            last_offset: 2,
            last_stable_offset: 3,
        }]);
        let mut map = OffsetMap::with_memory(1 << 20, 0);
        for b in &log {
            assert!(map.add(b, &aborted).expect("maps"));
        }
        assert_eq!(map.latest(b"a"), Some(0));
        let mut f = Filter::new(&map, &aborted, 0, 100);
        let verdicts: Vec<_> = log.iter().map(|b| f.judge(b).expect("judged")).collect();
        // The marker stays until a later pass finds it clean and old.
        assert_eq!(verdicts, [Verdict::Keep, Verdict::Drop, Verdict::Keep]);
        let mut f = Filter::new(&map, &aborted, 3, 100);
        let verdicts: Vec<_> = log.iter().map(|b| f.judge(b).expect("judged")).collect();
        assert_eq!(verdicts, [Verdict::Keep, Verdict::Drop, Verdict::Drop]);
    }

    #[test]
    fn a_full_map_stops_the_pass_at_a_batch() {
        let mut map = OffsetMap::with_memory(MAP_ENTRY_BYTES * 16, 0);
        assert_eq!(map.capacity(), 14);
        let mut mapped = 0;
        for i in 0..20 {
            if !map
                .add(&put(i, &format!("k{i}"), Some("v"), 0), &Aborted::default())
                .expect("maps")
            {
                break;
            }
            mapped += 1;
        }
        assert_eq!((mapped, map.end()), (14, 14));
    }
}
