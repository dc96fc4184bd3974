//! Idempotent producers: per partition, each producer id's epoch and its last few batches, so
//! a retried batch gets its original offsets back, a gap is refused, and an old epoch is fenced.
//!
//! Kafka's rules (ProducerStateManager): sequences count records per partition from 0 and
//! wrap at `i32::MAX`; a new epoch starts at sequence 0; the last 5 batches are remembered,
//! because a producer has at most 5 requests in flight per connection when idempotent.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use strata_storage::BatchHeader;

/// Batches remembered per producer for duplicate detection.
const REMEMBERED: usize = 5;

/// The producer fields of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProducerBatch {
    pub(crate) producer_id: i64,
    pub(crate) epoch: i16,
    pub(crate) first_seq: i32,
    pub(crate) last_seq: i32,
}

impl ProducerBatch {
    /// The producer fields of the batch header, if it comes from an idempotent producer.
    pub(crate) fn of(header: &BatchHeader) -> Option<Self> {
        (header.producer_id >= 0 && header.base_sequence >= 0).then(|| Self {
            producer_id: header.producer_id,
            epoch: header.producer_epoch,
            first_seq: header.base_sequence,
            last_seq: add_seq(header.base_sequence, header.last_offset_delta),
        })
    }
}

fn add_seq(seq: i32, n: i32) -> i32 {
    ((i64::from(seq) + i64::from(n)) % (i64::from(i32::MAX) + 1)) as i32
}

/// The headers of the batches in `records`, in order (stops at the first incomplete one).
pub(crate) fn headers(records: &[u8]) -> Vec<BatchHeader> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while let Some(h) = records.get(pos..).and_then(BatchHeader::parse) {
        let Some(len) = usize::try_from(h.batch_length)
            .ok()
            .and_then(|l| l.checked_add(12))
        else {
            break;
        };
        out.push(h);
        pos = match pos.checked_add(len) {
            Some(p) if p <= records.len() => p,
            _ => break,
        };
    }
    out
}

/// What to do with a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Append it.
    Append,
    /// Already appended at these offsets: answer them again, append nothing.
    Duplicate { first_offset: u64, last_offset: u64 },
}

/// Why a batch is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A sequence gap (or a new producer/epoch not starting at 0).
    OutOfOrder { expected: i32, got: i32 },
    /// The producer's epoch is older than one already seen.
    StaleEpoch { current: i16, got: i16 },
}

#[derive(Clone, Copy, Debug)]
struct Appended {
    first_seq: i32,
    last_seq: i32,
    first_offset: u64,
    last_offset: u64,
}

#[derive(Debug)]
struct Entry {
    epoch: i16,
    recent: VecDeque<Appended>,
    /// When it last appended (or was rebuilt at start-up).
    last_seen: Instant,
}

/// Producer state of one partition.
#[derive(Debug, Default)]
pub(crate) struct ProducerTable {
    producers: HashMap<i64, Entry>,
}

impl ProducerTable {
    /// Checks `batch` against what this partition has seen from its producer.
    pub(crate) fn check(&self, batch: &ProducerBatch) -> Result<Verdict, Refusal> {
        let Some(entry) = self.producers.get(&batch.producer_id) else {
            return if batch.first_seq == 0 {
                Ok(Verdict::Append)
            } else {
                Err(Refusal::OutOfOrder {
                    expected: 0,
                    got: batch.first_seq,
                })
            };
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

    /// Records an appended batch.
    pub(crate) fn record(&mut self, batch: &ProducerBatch, first_offset: u64, last_offset: u64) {
        let entry = self
            .producers
            .entry(batch.producer_id)
            .or_insert_with(|| Entry {
                epoch: batch.epoch,
                recent: VecDeque::new(),
                last_seen: Instant::now(),
            });
        entry.last_seen = Instant::now();
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
        });
    }
}

impl ProducerTable {
    /// Forgets producers that have not appended for `idle` by `now` (Kafka's
    /// `producer.id.expiration.ms`), so the table stays bounded whatever ids clients send. A
    /// forgotten producer that comes back must start a new epoch at sequence 0, as in Kafka.
    pub(crate) fn expire_idle(&mut self, idle: Duration, now: Instant) {
        self.producers
            .retain(|_, e| now.saturating_duration_since(e.last_seen) < idle);
    }

    /// How many producers are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.producers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producers_idle_past_the_expiration_are_forgotten() {
        let mut t = ProducerTable::default();
        let b = |id| ProducerBatch {
            producer_id: id,
            epoch: 0,
            first_seq: 0,
            last_seq: 0,
        };
        t.record(&b(1), 0, 0);
        t.record(&b(2), 1, 1);
        let day = Duration::from_secs(86_400);
        t.expire_idle(day, Instant::now());
        assert_eq!(t.len(), 2, "both appended just now");
        t.expire_idle(day, Instant::now() + day * 2);
        assert_eq!(t.len(), 0);
        // A forgotten producer starts over at sequence 0.
        assert_eq!(t.check(&b(1)), Ok(Verdict::Append));
    }

    fn batch(epoch: i16, first_seq: i32, records: i32) -> ProducerBatch {
        ProducerBatch {
            producer_id: 7,
            epoch,
            first_seq,
            last_seq: add_seq(first_seq, records - 1),
        }
    }

    #[test]
    fn in_order_batches_append_and_retries_get_their_offsets_back() {
        let mut t = ProducerTable::default();
        let mut offset = 0;
        for i in 0..8 {
            let b = batch(0, i * 3, 3);
            assert_eq!(t.check(&b), Ok(Verdict::Append));
            t.record(&b, offset, offset + 2);
            offset += 3;
        }
        // The last 5 are remembered: a retry of batch 6 is a duplicate with its offsets.
        assert_eq!(
            t.check(&batch(0, 18, 3)),
            Ok(Verdict::Duplicate {
                first_offset: 18,
                last_offset: 20
            })
        );
        // Too old to remember: neither the next sequence nor a duplicate, so a gap.
        assert!(matches!(
            t.check(&batch(0, 0, 3)),
            Err(Refusal::OutOfOrder { .. })
        ));
    }

    #[test]
    fn gaps_new_producers_and_epochs() {
        let mut t = ProducerTable::default();
        assert_eq!(
            t.check(&batch(0, 5, 1)),
            Err(Refusal::OutOfOrder {
                expected: 0,
                got: 5
            })
        );
        let b = batch(0, 0, 2);
        t.record(&b, 0, 1);
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
        t.record(&b1, 2, 2);
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
        };
        t.record(&b, 1, 1);
        assert_eq!(t.check(&batch(0, 0, 1)), Ok(Verdict::Append));
    }
}
