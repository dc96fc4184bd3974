//! Idempotent producers: per partition, each producer id's epoch and its last few batches, so
//! a retried batch gets its original offsets back, a gap is refused, and an old epoch is fenced.
//!
//! Kafka's rules (ProducerStateManager): sequences count records per partition from 0 and
//! wrap at `i32::MAX`; a new epoch starts at sequence 0; the last 5 batches are remembered,
//! because a producer has at most 5 requests in flight per connection when idempotent. A
//! producer the partition does not know (never seen, expired, or older than the log the
//! state was rebuilt from) may start at any sequence, as in Kafka.
//!
//! The table is saved to a snapshot file in the partition directory (after a segment rolls,
//! every so often while the log grows, and at shutdown), so a restart reads the snapshot and
//! replays only the batches after it instead of rescanning the log.
//!
//! Transactions: a producer's first transactional batch on the partition opens its
//! transaction there (its offset is kept); the control batch the coordinator has appended
//! ends it, committed or aborted. The smallest open first offset is the partition's first
//! unstable offset, which bounds the last stable offset read_committed consumers read to.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use strata_storage::BatchHeader;

/// Batches remembered per producer for duplicate detection.
const REMEMBERED: usize = 5;

/// Most producers remembered per partition. Producer ids come from clients, so without a
/// bound a client could grow the table with made-up ids; past it the longest idle are
/// forgotten first (they then count as unknown, which only costs duplicate detection for a
/// producer that was idle anyway).
const MAX_PRODUCERS: usize = 10_000;

/// The snapshot file of versions before snapshots were kept by offset; still read.
const LEGACY_SNAPSHOT_FILE: &str = "producers.snapshot";
/// Snapshots kept per partition. One is written at the log end, which need not be durable
/// yet: a crash that cuts the log below the newest falls back to an older one rather than
/// to replaying only the last segments (which would miss a transaction begun before them).
const SNAPSHOTS_KEPT: usize = 3;

/// The snapshot of the table as of `offset` in partition directory `dir`.
fn snapshot_path(dir: &Path, offset: u64) -> std::path::PathBuf {
    dir.join(format!("producers-{offset:020}.snapshot"))
}

/// The snapshot files in `dir` by offset, newest first (the legacy file last).
fn snapshot_files(dir: &Path) -> Vec<(Option<u64>, std::path::PathBuf)> {
    let mut files: Vec<(Option<u64>, std::path::PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let offset = name
                .strip_prefix("producers-")?
                .strip_suffix(".snapshot")?
                .parse::<u64>()
                .ok()?;
            Some((Some(offset), e.path()))
        })
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    let legacy = dir.join(LEGACY_SNAPSHOT_FILE);
    if legacy.exists() {
        files.push((None, legacy));
    }
    files
}
/// The offset of the newest producer snapshot in partition directory `dir`: every batch
/// below it is accounted for in a saved table.
pub(crate) fn newest_snapshot_offset(dir: &Path) -> Option<u64> {
    snapshot_files(dir)
        .into_iter()
        .find_map(|(offset, _)| offset)
}

/// Version 2 adds each producer's open transaction; version 1 snapshots (none open) load.
const SNAPSHOT_VERSION: u32 = 2;

/// The producer fields of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProducerBatch {
    pub(crate) producer_id: i64,
    pub(crate) epoch: i16,
    pub(crate) first_seq: i32,
    pub(crate) last_seq: i32,
    /// Part of the producer's transaction.
    pub(crate) transactional: bool,
}

impl ProducerBatch {
    /// The producer fields of the batch header, if it comes from an idempotent producer
    /// (control batches carry no sequence and are not).
    pub(crate) fn of(header: &BatchHeader) -> Option<Self> {
        (header.producer_id >= 0 && header.base_sequence >= 0 && !header.is_control()).then(|| {
            Self {
                producer_id: header.producer_id,
                epoch: header.producer_epoch,
                first_seq: header.base_sequence,
                last_seq: add_seq(header.base_sequence, header.last_offset_delta),
                transactional: header.is_transactional(),
            }
        })
    }
}

/// A transaction that ended on this partition: what the aborted-transaction index records
/// for aborted ones (Kafka's `CompletedTxn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CompletedTxn {
    pub(crate) producer_id: i64,
    pub(crate) first_offset: u64,
    /// The marker's offset.
    pub(crate) last_offset: u64,
    pub(crate) aborted: bool,
}

fn add_seq(seq: i32, n: i32) -> i32 {
    ((i64::from(seq) + i64::from(n)) % (i64::from(i32::MAX) + 1)) as i32
}

/// The headers of the batches in `records`, in order (stops at the first incomplete one).
pub(crate) fn headers(records: &[u8]) -> Vec<BatchHeader> {
    batches(records).map(|(h, _)| h).collect()
}

/// The batches in `records` with their headers, in order (stops at the first incomplete
/// one).
pub(crate) fn batches(records: &[u8]) -> impl Iterator<Item = (BatchHeader, &[u8])> {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let h = records.get(pos..).and_then(BatchHeader::parse)?;
        let len = usize::try_from(h.batch_length).ok()?.checked_add(12)?;
        let end = pos.checked_add(len).filter(|e| *e <= records.len())?;
        let batch = &records[pos..end];
        pos = end;
        Some((h, batch))
    })
}

/// Replays one batch of `log` (appended there) into `table` as its leader recorded it: an
/// idempotent batch as appended at its offsets, a control batch as the end of its producer's
/// transaction, an aborted one entered in the log's aborted-transaction index. For a
/// follower's copy and for the log read back at start-up.
pub(crate) fn replay(
    table: &mut ProducerTable,
    log: &strata_storage::Log,
    tiered: bool,
    header: &BatchHeader,
    batch: &[u8],
) -> Result<(), strata_storage::StorageError> {
    let first = u64::try_from(header.base_offset).unwrap_or(0);
    table.before_change(tiered.then_some(log), first);
    if let Some(b) = ProducerBatch::of(header) {
        let last = first + u64::try_from(header.last_offset_delta).unwrap_or(0);
        let append_time = header.is_log_append_time().then_some(header.max_timestamp);
        table.record(&b, first, last, append_time);
    } else if let Some(marker) = strata_storage::control_marker(batch)
        && let Some(done) = table.end_txn(
            header.producer_id,
            header.producer_epoch,
            first,
            marker.commit,
        )
        && done.aborted
    {
        log.append_aborted(table.aborted_entry(&done))?;
    }
    Ok(())
}

/// What to do with a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Append it.
    Append,
    /// Already appended at these offsets (and, for log-append-time topics, at this time):
    /// answer them again, append nothing.
    Duplicate {
        first_offset: u64,
        last_offset: u64,
        log_append_time: Option<i64>,
    },
}

/// Why a batch is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A sequence gap (or a new producer/epoch not starting at 0).
    OutOfOrder { expected: i32, got: i32 },
    /// The producer's epoch is older than one already seen.
    StaleEpoch { current: i16, got: i16 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Appended {
    first_seq: i32,
    last_seq: i32,
    first_offset: u64,
    last_offset: u64,
    /// The broker's timestamp, for log-append-time topics.
    log_append_time: Option<i64>,
}

#[derive(Debug)]
struct Entry {
    epoch: i16,
    recent: VecDeque<Appended>,
    /// When it last appended (or was rebuilt at start-up).
    last_seen: Instant,
    /// The first offset of its transaction open on this partition.
    txn_first_offset: Option<u64>,
}

/// A transaction that ended at `marker_offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Ended {
    txn: strata_storage::tier::manifest::OpenTxn,
    marker_offset: u64,
}

/// Producer state of one partition.
#[derive(Debug, Default)]
pub(crate) struct ProducerTable {
    producers: HashMap<i64, Entry>,
    /// KIP-890 verification guards: producers whose first transactional batch here is being
    /// checked with the transaction coordinator, by token. A marker clears a producer's
    /// guard, so a batch verified before its transaction ended cannot open a new one here.
    verifying: HashMap<i64, u64>,
    next_guard: u64,
    /// Transactions ended here whose markers are above what is uploaded, oldest first:
    /// [`Self::open_at`] the end of a segment still to upload includes them.
    ended: VecDeque<Ended>,
    /// The offset and time of the last save to (or load from) the snapshot file.
    saved: Option<(u64, Instant)>,
    /// For a tiered partition, the table as it stood where each segment still to upload
    /// ends ([`Self::before_change`]); `None` while changes are not being noted.
    at_ends: Option<SegmentEnds>,
}

/// Snapshots of the idempotent producers at segment ends, for uploads. Kafka writes its
/// producer snapshot when a segment rolls and uploads that one; building it at upload time
/// from what the table still remembers would leave out a producer that has sent more than
/// [`REMEMBERED`] batches since the segment ended (uploads lag, the table moves on), and an
/// empty-disk recovery from that segment would then append that producer's retries again.
#[derive(Debug)]
struct SegmentEnds {
    /// The segment every change has been noted from (or the end uploads have passed, below
    /// which nothing is kept): ends above it are exact.
    since: u64,
    /// The base of the segment of the last change noted.
    last: u64,
    /// By segment base: the table's snapshot ([`ProducerTable::snapshot_at`]) taken before the
    /// first change in that segment, which is the table at the end of every segment since
    /// the previous key.
    taken: std::collections::BTreeMap<u64, Option<Vec<u8>>>,
}

impl ProducerTable {
    /// Checks `batch` against what this partition has seen from its producer.
    pub(crate) fn check(&self, batch: &ProducerBatch) -> Result<Verdict, Refusal> {
        let Some(entry) = self.producers.get(&batch.producer_id) else {
            return Ok(Verdict::Append);
        };
        if batch.epoch < entry.epoch {
            return Err(Refusal::StaleEpoch {
                current: entry.epoch,
                got: batch.epoch,
            });
        }
        if batch.epoch > entry.epoch {
            return if batch.first_seq == 0 {
                Ok(Verdict::Append)
            } else {
                Err(Refusal::OutOfOrder {
                    expected: 0,
                    got: batch.first_seq,
                })
            };
        }
        if let Some(a) = entry
            .recent
            .iter()
            .find(|a| a.first_seq == batch.first_seq && a.last_seq == batch.last_seq)
        {
            return Ok(Verdict::Duplicate {
                first_offset: a.first_offset,
                last_offset: a.last_offset,
                log_append_time: a.log_append_time,
            });
        }
        let expected = entry.recent.back().map_or(0, |a| add_seq(a.last_seq, 1));
        if batch.first_seq == expected {
            Ok(Verdict::Append)
        } else {
            Err(Refusal::OutOfOrder {
                expected,
                got: batch.first_seq,
            })
        }
    }

    /// The epoch this partition last saw from producer `id`, if it knows the producer.
    pub(crate) fn epoch_of(&self, id: i64) -> Option<i16> {
        self.producers.get(&id).map(|e| e.epoch)
    }

    /// Whether producer `id` has a transaction open here under `epoch`: its batches join it
    /// without asking the coordinator again.
    pub(crate) fn in_txn(&self, id: i64, epoch: i16) -> bool {
        self.producers
            .get(&id)
            .is_some_and(|e| e.epoch == epoch && e.txn_first_offset.is_some())
    }

    /// Starts verifying producer `id`'s first transactional batch here; the token is
    /// presented at the append ([`Self::take_guard`]). Batches verified at the same time
    /// share the guard: the first appended opens the transaction, which the others join.
    pub(crate) fn guard(&mut self, id: i64) -> u64 {
        if let Some(token) = self.verifying.get(&id) {
            return *token;
        }
        self.next_guard += 1;
        if self.verifying.len() >= MAX_PRODUCERS {
            self.verifying.clear();
        }
        self.verifying.insert(id, self.next_guard);
        self.next_guard
    }

    /// Whether `token` is still producer `id`'s guard (no marker came in between); consumes
    /// it.
    pub(crate) fn take_guard(&mut self, id: i64, token: u64) -> bool {
        if self.verifying.get(&id) == Some(&token) {
            self.verifying.remove(&id);
            true
        } else {
            false
        }
    }

    /// Notes a change about to be made to the table by a batch at `offset` of `log`, the
    /// partition's log when it is tiered (`None`: it is not, and nothing is noted): the first
    /// change in a segment takes the snapshot of the table that an upload of the segments
    /// before it records ([`Self::snapshot_for_segment_ending`]). Called with the producers'
    /// lock held from before the change's append, so no change above a segment's base can
    /// precede the snapshot taken there.
    pub(crate) fn before_change(&mut self, log: Option<&strata_storage::Log>, offset: u64) {
        let Some(log) = log else {
            self.at_ends = None;
            return;
        };
        let base = log.segment_base_of(offset);
        match &self.at_ends {
            Some(ends) if base == ends.last => {}
            Some(ends) if base > ends.last => {
                let snapshot = self.snapshot_at(base);
                if let Some(ends) = &mut self.at_ends {
                    ends.taken.insert(base, snapshot);
                    ends.last = base;
                }
            }
            // The first change noted (or the log was cut back below the last one): what
            // happened earlier in this segment was not noted.
            _ => {
                self.at_ends = Some(SegmentEnds {
                    since: base,
                    last: base,
                    taken: Default::default(),
                })
            }
        }
    }

    /// The snapshot an uploaded segment ending at `end` records: the one taken before the
    /// first change at or above `end` ([`Self::before_change`]), or, when no change has
    /// been noted there, the table now. Where changes were not noted (a segment that ended
    /// before a restart or before the topic was tiered), the table's recent batches below
    /// `end` ([`Self::snapshot_at`]) are the best there is.
    pub(crate) fn snapshot_for_segment_ending(&self, end: u64) -> Option<Vec<u8>> {
        if let Some(ends) = &self.at_ends
            && end > ends.since
            && let Some((_, snapshot)) = ends.taken.range(end..).next()
        {
            return snapshot.clone();
        }
        self.snapshot_at(end)
    }

    /// Records an appended batch and the broker's timestamp for it, if the topic uses log
    /// append time.
    pub(crate) fn record(
        &mut self,
        batch: &ProducerBatch,
        first_offset: u64,
        last_offset: u64,
        log_append_time: Option<i64>,
    ) {
        if self.producers.len() >= MAX_PRODUCERS && !self.producers.contains_key(&batch.producer_id)
        {
            self.forget_longest_idle(MAX_PRODUCERS / 10);
        }
        let entry = self
            .producers
            .entry(batch.producer_id)
            .or_insert_with(|| Entry {
                epoch: batch.epoch,
                recent: VecDeque::new(),
                last_seen: Instant::now(),
                txn_first_offset: None,
            });
        entry.last_seen = Instant::now();
        if batch.transactional && entry.txn_first_offset.is_none() {
            entry.txn_first_offset = Some(first_offset);
        }
        if batch.epoch != entry.epoch {
            entry.epoch = batch.epoch;
            entry.recent.clear();
        }
        if entry.recent.len() == REMEMBERED {
            entry.recent.pop_front();
        }
        entry.recent.push_back(Appended {
            first_seq: batch.first_seq,
            last_seq: batch.last_seq,
            first_offset,
            last_offset,
            log_append_time,
        });
    }

    /// Ends producer `id`'s transaction on this partition with the marker at `offset`
    /// (epoch `epoch`); what ended, if one was open. A marker for a producer the table does
    /// not know (its transaction wrote nothing here) still records its epoch.
    pub(crate) fn end_txn(
        &mut self,
        id: i64,
        epoch: i16,
        offset: u64,
        commit: bool,
    ) -> Option<CompletedTxn> {
        let entry = self.producers.entry(id).or_insert_with(|| Entry {
            epoch,
            recent: VecDeque::new(),
            last_seen: Instant::now(),
            txn_first_offset: None,
        });
        entry.last_seen = Instant::now();
        let txn_epoch = entry.epoch;
        if epoch > entry.epoch {
            entry.epoch = epoch;
            entry.recent.clear();
        }
        self.verifying.remove(&id);
        let first_offset = entry.txn_first_offset.take()?;
        if self.ended.len() >= MAX_PRODUCERS {
            self.ended.pop_front();
        }
        self.ended.push_back(Ended {
            txn: strata_storage::tier::manifest::OpenTxn {
                producer_id: id,
                producer_epoch: txn_epoch,
                first_offset,
            },
            marker_offset: offset,
        });
        Some(CompletedTxn {
            producer_id: id,
            first_offset,
            last_offset: offset,
            aborted: !commit,
        })
    }

    /// The transactions open at offset `end` (begun below it, not ended below it): those
    /// open now, and those that ended since (remembered until uploads pass their markers,
    /// [`Self::forget_uploaded_below`]). What an uploaded segment ending at `end` records.
    pub(crate) fn open_at(&self, end: u64) -> Vec<strata_storage::tier::manifest::OpenTxn> {
        let open = self.producers.iter().filter_map(|(id, e)| {
            e.txn_first_offset
                .filter(|first| *first < end)
                .map(|first| strata_storage::tier::manifest::OpenTxn {
                    producer_id: *id,
                    producer_epoch: e.epoch,
                    first_offset: first,
                })
        });
        let ended = self
            .ended
            .iter()
            .filter(|x| x.txn.first_offset < end && x.marker_offset >= end)
            .map(|x| x.txn);
        let mut all: Vec<_> = open.chain(ended).collect();
        all.sort_by_key(|t| (t.first_offset, t.producer_id));
        all
    }

    /// Forgets what only uploads of segments ending at or below `offset` need (they are
    /// uploaded): ended transactions whose markers are below it, snapshots taken at or below it.
    pub(crate) fn forget_uploaded_below(&mut self, offset: u64) {
        self.ended.retain(|x| x.marker_offset >= offset);
        if let Some(ends) = &mut self.at_ends {
            ends.taken.retain(|base, _| *base > offset);
            ends.since = ends.since.max(offset);
        }
    }

    /// Keeps only the ended transactions that span one of `boundaries` (segment base
    /// offsets): only a segment end inside a transaction makes [`Self::open_at`] need it.
    pub(crate) fn keep_ended_spanning(&mut self, boundaries: &[u64]) {
        self.ended.retain(|x| {
            boundaries
                .iter()
                .any(|b| x.txn.first_offset < *b && *b <= x.marker_offset)
        });
    }

    /// A table for a log that starts at an uploaded segment's end: the idempotent producers
    /// that segment's snapshot recorded ([`Self::snapshot_at`]; `None`: nothing is known of
    /// them) and the transactions open there.
    pub(crate) fn starting_with(
        snapshot: Option<&[u8]>,
        open: &[strata_storage::tier::manifest::OpenTxn],
    ) -> Self {
        let mut table = snapshot
            .and_then(|bytes| serde_json::from_slice::<Snapshot>(bytes).ok())
            .filter(|s| (1..=SNAPSHOT_VERSION).contains(&s.version))
            .map(Self::from_snapshot)
            .unwrap_or_default();
        let now = Instant::now();
        for t in open {
            let entry = table.producers.entry(t.producer_id).or_insert(Entry {
                epoch: t.producer_epoch,
                recent: VecDeque::new(),
                last_seen: now,
                txn_first_offset: None,
            });
            entry.txn_first_offset = Some(t.first_offset);
        }
        table
    }

    /// The idempotent producers' state as it stood once every batch below `end` was
    /// recorded, encoded: each producer's remembered batches below `end` (a producer's epoch
    /// changes only with a batch, and that clears what it remembers, so the epoch of those
    /// batches is its epoch). Transactions are not in it (see [`Self::open_at`]). `None` when
    /// no producer appended below `end`.
    pub(crate) fn snapshot_at(&self, end: u64) -> Option<Vec<u8>> {
        let producers: Vec<SavedProducer> = self
            .producers
            .iter()
            .filter_map(|(id, e)| {
                let recent: Vec<Appended> = e
                    .recent
                    .iter()
                    .filter(|a| a.last_offset < end)
                    .copied()
                    .collect();
                (!recent.is_empty()).then_some(SavedProducer {
                    id: *id,
                    epoch: e.epoch,
                    recent,
                    txn_first_offset: None,
                })
            })
            .collect();
        if producers.is_empty() {
            return None;
        }
        let snapshot = Snapshot {
            version: SNAPSHOT_VERSION,
            offset: end,
            producers,
            ended: VecDeque::new(),
        };
        serde_json::to_vec(&snapshot).ok()
    }

    /// The aborted-transaction index entry for `done`, just ended: the last stable offset
    /// after it is the earliest transaction still open, or the offset after its marker
    /// (Kafka's `ProducerStateManager.lastStableOffset`).
    pub(crate) fn aborted_entry(&self, done: &CompletedTxn) -> strata_storage::AbortedTxn {
        strata_storage::AbortedTxn {
            producer_id: done.producer_id,
            first_offset: done.first_offset,
            last_offset: done.last_offset,
            last_stable_offset: self.first_unstable_offset().unwrap_or(done.last_offset + 1),
        }
    }

    /// The first offset of the earliest transaction still open here: read_committed
    /// consumers read no further.
    pub(crate) fn first_unstable_offset(&self) -> Option<u64> {
        self.producers
            .values()
            .filter_map(|e| e.txn_first_offset)
            .min()
    }

    /// Forgets the `n` producers idle the longest (never one with a transaction open).
    fn forget_longest_idle(&mut self, n: usize) {
        let mut seen: Vec<(Instant, i64)> = self
            .producers
            .iter()
            .filter(|(_, e)| e.txn_first_offset.is_none())
            .map(|(id, e)| (e.last_seen, *id))
            .collect();
        if n < seen.len() {
            seen.select_nth_unstable(n);
        }
        for (_, id) in seen.iter().take(n) {
            self.producers.remove(id);
        }
    }
}

impl ProducerTable {
    /// Forgets producers that have not appended for `idle` by `now` (Kafka's
    /// `producer.id.expiration.ms`), so the table stays bounded whatever ids clients send. A
    /// forgotten producer that comes back must start a new epoch at sequence 0, as in Kafka.
    pub(crate) fn expire_idle(&mut self, idle: Duration, now: Instant) {
        // One with a transaction open stays until its marker (the coordinator aborts a
        // transaction that outlives its timeout), as in Kafka.
        self.producers.retain(|_, e| {
            e.txn_first_offset.is_some() || now.saturating_duration_since(e.last_seen) < idle
        });
    }

    /// How many producers are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.producers.len()
    }
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    /// The table holds every idempotent batch below this offset that it remembers.
    offset: u64,
    producers: Vec<SavedProducer>,
    /// Transactions ended but not yet passed by uploads (see [`ProducerTable::open_at`]).
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    ended: VecDeque<Ended>,
}

#[derive(Serialize, Deserialize)]
struct SavedProducer {
    id: i64,
    epoch: i16,
    recent: Vec<Appended>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    txn_first_offset: Option<u64>,
}

impl ProducerTable {
    /// Whether the table should be saved: a segment rolled since the last save (so a restart
    /// replays at most the active segment, as Kafka's per-segment snapshots do), or the log
    /// grew and the last save is older than `every` (so a long-lived active segment does not
    /// have to be replayed whole).
    pub(crate) fn save_due(
        &self,
        active_base: u64,
        log_end: u64,
        every: Duration,
        now: Instant,
    ) -> bool {
        match self.saved {
            None => true,
            Some((offset, when)) => {
                active_base > offset
                    || (log_end > offset && now.saturating_duration_since(when) >= every)
            }
        }
    }

    /// The table as it stands once every batch below `offset` is recorded in it, encoded for
    /// [`write_snapshot`]; notes the save.
    pub(crate) fn encode(&mut self, offset: u64, now: Instant) -> Vec<u8> {
        self.saved = Some((offset, now));
        let snapshot = Snapshot {
            version: SNAPSHOT_VERSION,
            offset,
            producers: self
                .producers
                .iter()
                .map(|(id, e)| SavedProducer {
                    id: *id,
                    epoch: e.epoch,
                    recent: e.recent.iter().copied().collect(),
                    txn_first_offset: e.txn_first_offset,
                })
                .collect(),
            ended: self.ended.clone(),
        };
        // Plain data with string-free fields: serializing cannot fail.
        serde_json::to_vec(&snapshot).unwrap_or_default()
    }

    /// The newest table saved in `dir` that the log still holds, and the offset it was
    /// saved at: a snapshot past `log_end` describes batches a crash took away, and is
    /// deleted so it can never be mistaken for the log's state later, when new batches have
    /// filled those offsets again; an unreadable one is skipped for the next older.
    pub(crate) fn load(dir: &Path, log_end: u64) -> Option<(Self, u64)> {
        let mut found = None;
        for (named, path) in snapshot_files(dir) {
            if named.is_some_and(|o| o > log_end) {
                remove_stale(dir, &path, log_end);
                continue;
            }
            let snapshot = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Snapshot>(&bytes).ok())
                .filter(|s| (1..=SNAPSHOT_VERSION).contains(&s.version));
            match snapshot {
                Some(s) if s.offset > log_end => remove_stale(dir, &path, log_end),
                Some(s) => {
                    found = Some(s);
                    break;
                }
                None => {
                    tracing::warn!(path = %path.display(), "producer snapshot unreadable; trying an older one");
                }
            }
        }
        let snapshot = found?;
        let offset = snapshot.offset;
        Some((Self::from_snapshot(snapshot), offset))
    }

    /// The table a snapshot holds, every producer seen now.
    fn from_snapshot(snapshot: Snapshot) -> Self {
        let now = Instant::now();
        let producers = snapshot
            .producers
            .into_iter()
            .map(|p| {
                let entry = Entry {
                    epoch: p.epoch,
                    recent: p.recent.into_iter().rev().take(REMEMBERED).rev().collect(),
                    last_seen: now,
                    txn_first_offset: p.txn_first_offset,
                };
                (p.id, entry)
            })
            .collect();
        Self {
            producers,
            saved: Some((snapshot.offset, now)),
            ended: snapshot.ended,
            ..Self::default()
        }
    }
}

/// Deletes a snapshot past the recovered log end.
fn remove_stale(dir: &Path, path: &Path, log_end: u64) {
    tracing::info!(path = %path.display(), log_end,
        "producer snapshot is past the recovered log end; using an older one");
    let removed = std::fs::remove_file(path).and_then(|()| std::fs::File::open(dir)?.sync_all());
    if let Err(e) = removed {
        tracing::warn!(path = %path.display(), error = %e, "removing a stale producer snapshot failed");
    }
}

/// Writes a table encoded as of `offset` to a temporary file renamed into place, so a crash
/// leaves whole files only, then deletes all but the newest [`SNAPSHOTS_KEPT`]. Not
/// fsynced: a snapshot lost or torn by a power failure only means an older one is used and
/// more of the log is replayed (see [`ProducerTable::load`]).
pub(crate) fn write_snapshot(dir: &Path, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join("producers.snapshot.tmp");
    std::fs::File::create(&tmp)?.write_all(bytes)?;
    std::fs::rename(&tmp, snapshot_path(dir, offset))?;
    for (_, old) in snapshot_files(dir).into_iter().skip(SNAPSHOTS_KEPT) {
        std::fs::remove_file(old)?;
    }
    Ok(())
}

/// Every snapshot in partition directory `dir` that reads, by offset, newest first.
#[cfg(test)]
pub(crate) fn saved_tables(dir: &Path) -> Vec<(u64, ProducerTable)> {
    snapshot_files(dir)
        .into_iter()
        .filter_map(|(_, path)| {
            let bytes = std::fs::read(path).ok()?;
            let snapshot = serde_json::from_slice::<Snapshot>(&bytes).ok()?;
            Some((snapshot.offset, ProducerTable::from_snapshot(snapshot)))
        })
        .collect()
}

/// Deletes every producer snapshot in partition directory `dir` (the log they describe is
/// going), durably: one back after a crash would be read as the new log's state.
pub(crate) fn remove_snapshots(dir: &Path) -> std::io::Result<()> {
    let files = snapshot_files(dir);
    if files.is_empty() {
        return Ok(());
    }
    for (_, path) in files {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Producer `id`'s first batch, of one record.
    fn b(id: i64) -> ProducerBatch {
        ProducerBatch {
            producer_id: id,
            epoch: 0,
            first_seq: 0,
            last_seq: 0,
            transactional: false,
        }
    }

    #[test]
    fn producers_idle_past_the_expiration_are_forgotten() {
        let mut t = ProducerTable::default();
        t.record(&b(1), 0, 0, None);
        t.record(&b(2), 1, 1, None);
        let day = Duration::from_secs(86_400);
        t.expire_idle(day, Instant::now());
        assert_eq!(t.len(), 2, "both appended just now");
        t.expire_idle(day, Instant::now() + day * 2);
        assert_eq!(t.len(), 0);
        // A forgotten producer is unknown: it may carry on from any sequence.
        assert_eq!(
            t.check(&ProducerBatch {
                first_seq: 9,
                last_seq: 9,
                ..b(1)
            }),
            Ok(Verdict::Append)
        );
    }

    fn batch(epoch: i16, first_seq: i32, records: i32) -> ProducerBatch {
        ProducerBatch {
            producer_id: 7,
            epoch,
            first_seq,
            last_seq: add_seq(first_seq, records - 1),
            transactional: false,
        }
    }

    /// The snapshot an uploaded segment records is the table at that segment's end, however
    /// far the table has moved on since: a producer that sent more than it remembers after
    /// the segment ended, or that began a new epoch, is still in it as it stood there.
    #[test]
    fn a_segment_end_snapshot_is_the_table_where_the_segment_ended() {
        use strata_storage::BatchBuilder;
        let dir = tempfile::tempdir().expect("tempdir");
        let config = strata_storage::LogConfig {
            segment_bytes: 200,
            ..Default::default()
        };
        let log = strata_storage::Log::open(dir.path(), config).expect("log");
        let mut t = ProducerTable::default();
        let append = |t: &mut ProducerTable, id: i64, epoch: i16, seq: i32| {
            let bytes = BatchBuilder::new()
                .producer(id, epoch, seq)
                .value(None, &[0; 100], 1)
                .build();
            let info = log.append(&bytes, 0).expect("append");
            t.before_change(Some(&log), info.first_offset);
            let b = ProducerBatch {
                producer_id: id,
                epoch,
                first_seq: seq,
                last_seq: seq,
                transactional: false,
            };
            t.record(&b, info.first_offset, info.last_offset, None);
            info.first_offset
        };
        // Each batch fills a segment: producer 1 at offset 0, producer 2 at 1, then producer
        // 1 sends ten more and producer 2 starts a new epoch.
        assert_eq!(append(&mut t, 1, 0, 0), 0);
        assert_eq!(append(&mut t, 2, 0, 0), 1);
        for seq in 1..=10 {
            append(&mut t, 1, 0, seq);
        }
        append(&mut t, 2, 1, 0);
        assert!(log.segments().len() > 10, "each batch rolled a segment");
        assert_eq!(
            t.snapshot_at(1),
            None,
            "the recent batches alone no longer reach back to offset 0"
        );
        let at = |end| {
            let bytes = t.snapshot_for_segment_ending(end).expect("a snapshot");
            ProducerTable::starting_with(Some(&bytes), &[])
        };
        let first = at(1);
        assert_eq!(
            first.check(&b(1)),
            Ok(Verdict::Duplicate {
                first_offset: 0,
                last_offset: 0,
                log_append_time: None
            }),
            "producer 1's first batch is known at the end of its segment"
        );
        assert_eq!(first.epoch_of(2), None);
        let second = at(2);
        assert_eq!(second.epoch_of(2), Some(0), "producer 2 at its first epoch");
        assert!(matches!(
            second.check(&b(2)),
            Ok(Verdict::Duplicate {
                first_offset: 1,
                ..
            })
        ));
        // Once uploaded, the segment's snapshot is no longer kept.
        t.forget_uploaded_below(2);
        assert_eq!(t.snapshot_for_segment_ending(2), t.snapshot_at(2));
        assert_ne!(t.snapshot_for_segment_ending(3), t.snapshot_at(3));
        // Without tiering nothing is kept.
        t.before_change(None, 13);
        assert_eq!(t.snapshot_for_segment_ending(3), t.snapshot_at(3));
    }

    #[test]
    fn in_order_batches_append_and_retries_get_their_offsets_back() {
        let mut t = ProducerTable::default();
        let mut offset = 0;
        for i in 0..8 {
            let b = batch(0, i * 3, 3);
            assert_eq!(t.check(&b), Ok(Verdict::Append));
            t.record(&b, offset, offset + 2, None);
            offset += 3;
        }
        // The last 5 are remembered: a retry of batch 6 is a duplicate with its offsets.
        assert_eq!(
            t.check(&batch(0, 18, 3)),
            Ok(Verdict::Duplicate {
                first_offset: 18,
                last_offset: 20,
                log_append_time: None,
            })
        );
        // Too old to remember: neither the next sequence nor a duplicate, so a gap.
        assert!(matches!(
            t.check(&batch(0, 0, 3)),
            Err(Refusal::OutOfOrder { .. })
        ));
    }

    /// A replica that continues from an uploaded segment's end (an empty disk) gets the
    /// producers' state there from the segment's snapshot: a retry of a batch below it is
    /// answered with its offsets, not appended again (unknown producers start anywhere).
    #[test]
    fn a_snapshot_at_a_segment_end_dedupes_retries_below_it() {
        let mut t = ProducerTable::default();
        let mut offset = 0;
        for i in 0..8 {
            let b = batch(0, i * 3, 3);
            t.record(&b, offset, offset + 2, None);
            offset += 3;
        }
        assert_eq!(t.snapshot_at(0), None, "nothing below offset 0");
        let snapshot = t.snapshot_at(12).expect("batches below 12");
        let replica = ProducerTable::starting_with(Some(&snapshot), &[]);
        assert_eq!(
            replica.check(&batch(0, 9, 3)),
            Ok(Verdict::Duplicate {
                first_offset: 9,
                last_offset: 11,
                log_append_time: None,
            })
        );
        assert_eq!(replica.check(&batch(0, 12, 3)), Ok(Verdict::Append));
        assert!(
            matches!(
                replica.check(&batch(0, 15, 3)),
                Err(Refusal::OutOfOrder { expected: 12, .. })
            ),
            "what lies past the end comes from the leader"
        );
        // Without it, the retry would be appended again.
        let blind = ProducerTable::starting_with(None, &[]);
        assert_eq!(blind.check(&batch(0, 9, 3)), Ok(Verdict::Append));
    }

    #[test]
    fn gaps_new_producers_and_epochs() {
        let mut t = ProducerTable::default();
        // Unknown producers start anywhere (Kafka: their state may have gone with the log).
        assert_eq!(t.check(&batch(0, 5, 1)), Ok(Verdict::Append));
        let b = batch(0, 0, 2);
        t.record(&b, 0, 1, None);
        assert_eq!(
            t.check(&batch(0, 3, 1)),
            Err(Refusal::OutOfOrder {
                expected: 2,
                got: 3
            })
        );
        // A bumped epoch restarts at 0; the old epoch is then fenced.
        assert!(t.check(&batch(1, 2, 1)).is_err());
        let b1 = batch(1, 0, 1);
        assert_eq!(t.check(&b1), Ok(Verdict::Append));
        t.record(&b1, 2, 2, None);
        assert_eq!(
            t.check(&batch(0, 2, 1)),
            Err(Refusal::StaleEpoch { current: 1, got: 0 })
        );
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        let mut t = ProducerTable::default();
        let b = ProducerBatch {
            producer_id: 7,
            epoch: 0,
            first_seq: 1,
            last_seq: i32::MAX,
            transactional: false,
        };
        t.record(&b, 1, 1, None);
        assert_eq!(t.check(&batch(0, 0, 1)), Ok(Verdict::Append));
    }

    #[test]
    fn duplicates_answer_the_append_time_of_the_original() {
        let mut t = ProducerTable::default();
        let b = batch(0, 0, 2);
        t.record(&b, 10, 11, Some(1_700_000_000_000));
        assert_eq!(
            t.check(&b),
            Ok(Verdict::Duplicate {
                first_offset: 10,
                last_offset: 11,
                log_append_time: Some(1_700_000_000_000),
            })
        );
    }

    #[test]
    fn the_table_is_bounded_and_forgets_the_longest_idle_first() {
        let mut t = ProducerTable::default();
        for id in 0..MAX_PRODUCERS as i64 {
            t.record(&b(id), id as u64, id as u64, None);
        }
        assert_eq!(t.len(), MAX_PRODUCERS);
        // Producer 0 appends again, so it is the most recent; the next new one evicts a tenth.
        std::thread::sleep(Duration::from_millis(2));
        t.record(
            &ProducerBatch {
                first_seq: 1,
                last_seq: 1,
                ..b(0)
            },
            1,
            1,
            None,
        );
        t.record(&b(-5 + MAX_PRODUCERS as i64 * 2), 0, 0, None);
        assert_eq!(t.len(), MAX_PRODUCERS - MAX_PRODUCERS / 10 + 1);
        assert!(
            t.producers.contains_key(&0),
            "recently active producers stay"
        );
    }

    #[test]
    fn snapshots_round_trip_and_one_past_the_log_end_is_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut t = ProducerTable::default();
        for i in 0..7 {
            t.record(&batch(0, i * 2, 2), i as u64 * 2, i as u64 * 2 + 1, None);
        }
        t.record(&batch(3, 0, 1), 14, 14, Some(5));
        write_snapshot(dir.path(), 15, &t.encode(15, Instant::now())).expect("save");
        let (loaded, offset) = ProducerTable::load(dir.path(), 20).expect("load");
        assert_eq!(offset, 15);
        assert_eq!(loaded.len(), 1);
        // Saved again after a roll, or after `every` once the log grew.
        let (now, minute) = (Instant::now(), Duration::from_secs(60));
        assert!(!loaded.save_due(10, 15, minute, now));
        assert!(loaded.save_due(16, 16, minute, now), "a segment rolled");
        assert!(!loaded.save_due(10, 20, minute, now));
        assert!(
            loaded.save_due(10, 20, minute, now + minute),
            "grew, a minute on"
        );
        assert!(
            !loaded.save_due(10, 15, minute, now + minute),
            "nothing new"
        );
        assert_eq!(
            loaded.check(&batch(3, 0, 1)),
            Ok(Verdict::Duplicate {
                first_offset: 14,
                last_offset: 14,
                log_append_time: Some(5),
            })
        );
        // A crash left the log shorter than the snapshot: it is not used, and it is gone.
        assert!(ProducerTable::load(dir.path(), 14).is_none());
        assert!(!snapshot_path(dir.path(), 15).exists());
        // Garbage is ignored.
        let legacy = dir.path().join(LEGACY_SNAPSHOT_FILE);
        std::fs::write(&legacy, b"{not json").expect("write");
        assert!(ProducerTable::load(dir.path(), 20).is_none());
        // A version 1 snapshot (before transactions, in the file named before offsets) loads.
        let v1 = r#"{"version":1,"offset":3,"producers":[{"id":7,"epoch":0,"recent":[]}]}"#;
        std::fs::write(&legacy, v1).expect("write");
        let (old, _) = ProducerTable::load(dir.path(), 20).expect("a version 1 snapshot");
        assert_eq!((old.len(), old.first_unstable_offset()), (1, None));
    }

    /// Snapshots are kept by offset: a crash that cuts the log below the newest falls back to
    /// the newest one the log still holds, which still knows a transaction opened long before.
    #[test]
    fn a_log_cut_below_the_newest_snapshot_falls_back_to_an_older_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut t = ProducerTable::default();
        t.record(&txn(1, 0), 2, 2, None);
        for (i, offset) in [10u64, 20, 30, 40].into_iter().enumerate() {
            t.record(&b(9 + i as i64), offset - 1, offset - 1, None);
            write_snapshot(dir.path(), offset, &t.encode(offset, Instant::now())).expect("save");
        }
        let kept: Vec<Option<u64>> = snapshot_files(dir.path()).iter().map(|f| f.0).collect();
        assert_eq!(kept, vec![Some(40), Some(30), Some(20)], "the newest three");
        // The log's tail from 25 on was lost: 40 and 30 are past it, 20 is used.
        let (loaded, offset) = ProducerTable::load(dir.path(), 25).expect("an older snapshot");
        assert_eq!(offset, 20);
        assert_eq!(loaded.first_unstable_offset(), Some(2));
        assert_eq!(loaded.len(), 3);
        let left: Vec<Option<u64>> = snapshot_files(dir.path()).iter().map(|f| f.0).collect();
        assert_eq!(left, vec![Some(20)], "those past the log end are deleted");
    }

    fn txn(id: i64, first_seq: i32) -> ProducerBatch {
        ProducerBatch {
            transactional: true,
            first_seq,
            last_seq: first_seq,
            ..b(id)
        }
    }

    /// A producer's first transactional batch opens its transaction at its offset; later ones
    /// do not move it; its marker ends it. The first unstable offset is the earliest open
    /// one, and an open transaction survives a snapshot, expiry and eviction.
    #[test]
    fn transactions_open_at_their_first_batch_and_end_at_their_marker() {
        let mut t = ProducerTable::default();
        t.record(&b(9), 0, 0, None);
        assert_eq!(t.first_unstable_offset(), None, "not transactional");
        t.record(&txn(1, 0), 1, 1, None);
        t.record(&txn(2, 0), 2, 2, None);
        t.record(&txn(1, 1), 3, 3, None);
        assert_eq!(t.first_unstable_offset(), Some(1));

        let dir = tempfile::tempdir().expect("tempdir");
        write_snapshot(dir.path(), 4, &t.encode(4, Instant::now())).expect("save");
        let (mut t, _) = ProducerTable::load(dir.path(), 4).expect("load");
        assert_eq!(t.first_unstable_offset(), Some(1), "kept by the snapshot");

        let week = Duration::from_secs(7 * 86_400);
        t.expire_idle(week, Instant::now() + week * 2);
        assert_eq!(t.len(), 2, "only producers with open transactions stay");

        let ended = t.end_txn(1, 0, 4, false);
        assert_eq!(
            ended,
            Some(CompletedTxn {
                producer_id: 1,
                first_offset: 1,
                last_offset: 4,
                aborted: true,
            })
        );
        assert_eq!(t.first_unstable_offset(), Some(2));
        assert_eq!(t.end_txn(1, 0, 5, true), None, "nothing open any more");
        assert!(t.end_txn(2, 0, 6, true).is_some_and(|c| !c.aborted));
        assert_eq!(t.first_unstable_offset(), None);
    }

    /// What a follower and a restart replay: real batches, the control batch included.
    #[test]
    fn transactions_open_at_a_segment_end_include_those_ended_since() {
        let mut t = ProducerTable::default();
        // Producer 1: offsets 10..=11 then its marker at 30; producer 2 opens at 20, still open.
        t.record(&txn(1, 0), 10, 11, None);
        t.record(&txn(2, 0), 20, 20, None);
        t.end_txn(1, 0, 30, false);
        let open = |t: &ProducerTable, end| -> Vec<(i64, u64)> {
            t.open_at(end)
                .iter()
                .map(|x| (x.producer_id, x.first_offset))
                .collect()
        };
        assert_eq!(open(&t, 10), Vec::<(i64, u64)>::new());
        assert_eq!(open(&t, 15), vec![(1, 10)]);
        assert_eq!(open(&t, 25), vec![(1, 10), (2, 20)]);
        assert_eq!(open(&t, 31), vec![(2, 20)], "ended by then");
        // Uploads past the marker forget it; so does pruning to boundaries it does not span.
        let mut pruned = ProducerTable::default();
        pruned.record(&txn(1, 0), 10, 11, None);
        pruned.end_txn(1, 0, 30, true);
        pruned.keep_ended_spanning(&[0, 12]);
        assert_eq!(open(&pruned, 12), vec![(1, 10)], "spans the boundary at 12");
        pruned.keep_ended_spanning(&[40]);
        assert!(open(&pruned, 12).is_empty());
        t.forget_uploaded_below(31);
        assert_eq!(open(&t, 25), vec![(2, 20)]);
        // A replica starting at 25 knows the open one, and indexes its abort correctly.
        let mut replica = ProducerTable::starting_with(None, &t.open_at(25));
        assert!(replica.in_txn(2, 0));
        let done = replica.end_txn(2, 0, 40, false).expect("ended");
        assert_eq!((done.first_offset, done.last_offset), (20, 40));
    }

    #[test]
    fn a_marker_voids_a_verification_guard() {
        let mut t = ProducerTable::default();
        let first = t.guard(7);
        assert_eq!(
            t.guard(7),
            first,
            "concurrent verifications share the guard"
        );
        assert!(t.take_guard(7, first));
        assert!(!t.take_guard(7, first), "a guard opens one transaction");
        let second = t.guard(7);
        assert_ne!(second, first);
        t.end_txn(7, 0, 10, false);
        assert!(
            !t.take_guard(7, second),
            "the marker came between verify and append"
        );
    }

    #[test]
    fn replayed_batches_open_and_end_transactions() {
        use strata_storage::{BatchBuilder, ControlMarker};
        let mut log = Vec::new();
        let mut data = BatchBuilder::new()
            .producer(5, 0, 0)
            .transactional()
            .value(None, b"v", 1)
            .build();
        data[..8].copy_from_slice(&10i64.to_be_bytes());
        log.extend_from_slice(&data);
        let marker = ControlMarker {
            commit: false,
            coordinator_epoch: 0,
        };
        let mut control = BatchBuilder::control(5, 0, marker, 2);
        control[..8].copy_from_slice(&11i64.to_be_bytes());
        let dir = tempfile::tempdir().expect("tempdir");
        let stored = strata_storage::Log::open(dir.path(), Default::default()).expect("log");
        stored.reset_to(10).expect("start at 10");
        stored.append_replica(&log).expect("copy");
        stored.append_replica(&control).expect("copy");
        let mut t = ProducerTable::default();
        for (h, bytes) in batches(&log) {
            replay(&mut t, &stored, false, &h, bytes).expect("replay");
        }
        assert_eq!(t.first_unstable_offset(), Some(10));
        for (h, bytes) in batches(&control) {
            replay(&mut t, &stored, false, &h, bytes).expect("replay");
        }
        assert_eq!(t.first_unstable_offset(), None);
        assert_eq!(
            t.len(),
            1,
            "the control batch is no idempotent batch of its own"
        );
        // The abort is in the log's index, for read_committed fetches.
        assert_eq!(
            stored.aborted_txns(10, 12).expect("query"),
            [strata_storage::AbortedTxn {
                producer_id: 5,
                first_offset: 10,
                last_offset: 11,
                last_stable_offset: 12,
            }]
        );
    }
}
