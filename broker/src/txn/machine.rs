//! A transactional id's state and Kafka's transitions, as pure functions: each request is
//! checked against the current [`TxnMeta`] and yields the metadata to write (the caller
//! writes it to `__transaction_state` before answering and applying it) or an error code.
//!
//! States (Kafka's names): Empty → Ongoing (partitions added) → PrepareCommit/PrepareAbort
//! (EndTxn, or a timeout or a new producer instance aborting) → CompleteCommit/CompleteAbort
//! once every partition has its marker. Kafka's PrepareEpochFence is not a state here: the
//! fencing epoch bump and the abort it starts are one write (PrepareAbort at the bumped
//! epoch), so no load can find a fence half done.
//!
//! Epochs: a new producer instance (InitProducerId without an id) bumps the epoch, fencing
//! the previous one; an instance that knows its id and epoch (KIP-360) bumps it only if it
//! is current, and a retry of that bump (`last_epoch`) gets the same answer. Transaction
//! version 2 (KIP-890 part 2, EndTxn v5+) bumps the epoch at every end, and the markers
//! carry the new epoch, so a late write of the ended transaction is refused by each
//! partition. An epoch about to overflow moves the producer to a fresh id at epoch 0.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// Kafka error codes of the transaction APIs.
pub(crate) mod code {
    pub(crate) use crate::statelog::COORDINATOR_NOT_AVAILABLE;
    pub(crate) const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub(crate) const INVALID_TXN_STATE: i16 = 48;
    pub(crate) const INVALID_PRODUCER_ID_MAPPING: i16 = 49;
    pub(crate) const INVALID_TRANSACTION_TIMEOUT: i16 = 50;
    pub(crate) const CONCURRENT_TRANSACTIONS: i16 = 51;
    pub(crate) const TRANSACTIONAL_ID_NOT_FOUND: i16 = 105;
    pub(crate) const PRODUCER_FENCED: i16 = 90;
}

/// The last epoch before a producer must move to a new id (Kafka bumps while the epoch is
/// below `Short.MAX_VALUE - 1`).
const LAST_EPOCH: i16 = i16::MAX - 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl TxnState {
    /// Kafka's name, as DescribeTransactions and ListTransactions answer it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Empty => "Empty",
            Self::Ongoing => "Ongoing",
            Self::PrepareCommit => "PrepareCommit",
            Self::PrepareAbort => "PrepareAbort",
            Self::CompleteCommit => "CompleteCommit",
            Self::CompleteAbort => "CompleteAbort",
        }
    }

    fn preparing(self) -> bool {
        matches!(self, Self::PrepareCommit | Self::PrepareAbort)
    }

    /// The state a transaction ending this way prepares, and the one it completes in.
    fn ending(commit: bool) -> (Self, Self) {
        if commit {
            (Self::PrepareCommit, Self::CompleteCommit)
        } else {
            (Self::PrepareAbort, Self::CompleteAbort)
        }
    }
}

/// A transactional id's state, as written to `__transaction_state`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TxnMeta {
    pub(crate) producer_id: i64,
    /// The id before the last overflow to a new one, for retries (-1: none).
    pub(crate) prev_producer_id: i64,
    pub(crate) epoch: i16,
    /// The epoch an InitProducerId of this producer bumped from, or that the coordinator
    /// fenced when it aborted on its own (-1: none): a retry presenting it gets the current
    /// epoch, a producer whose transaction timed out can recover with it (KIP-360/588).
    pub(crate) last_epoch: i16,
    pub(crate) timeout_ms: i32,
    pub(crate) state: TxnState,
    /// (topic, partition) in the transaction.
    pub(crate) partitions: BTreeSet<(String, i32)>,
    /// While preparing: the producer id and epoch the markers carry.
    pub(crate) markers: Option<(i64, i16)>,
    /// When the transaction started (wall clock ms; -1 when none is open).
    pub(crate) start_ms: i64,
    pub(crate) update_ms: i64,
}

/// The outcome of InitProducerId.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Init {
    /// Write this and answer its producer id and epoch.
    Write(TxnMeta),
    /// A retry: answer the current id and epoch, nothing to write.
    Current,
    /// An open transaction must be aborted first: write this (PrepareAbort at a bumped
    /// epoch), send its markers, and answer CONCURRENT_TRANSACTIONS so the client retries.
    Abort(TxnMeta),
}

/// The outcome of EndTxn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Write this (a Prepare state), answer, then send its markers.
    Prepare(TxnMeta),
    /// Write this (an empty transaction aborted under transaction version 2: no markers).
    Complete(TxnMeta),
    /// Already ended this way: answer the current id and epoch.
    Current,
}

/// Whether InitProducerId on `existing` needs a fresh producer id (none yet, or its epoch
/// would overflow), which the caller allocates before calling [`init`].
pub(crate) fn needs_new_id(existing: Option<&TxnMeta>) -> bool {
    existing.is_none_or(|m| m.epoch >= LAST_EPOCH)
}

fn fresh(producer_id: i64, timeout_ms: i32, now_ms: i64) -> TxnMeta {
    TxnMeta {
        producer_id,
        prev_producer_id: -1,
        epoch: 0,
        last_epoch: -1,
        timeout_ms,
        state: TxnState::Empty,
        partitions: BTreeSet::new(),
        markers: None,
        start_ms: -1,
        update_ms: now_ms,
    }
}

/// `m` at the next epoch, or at epoch 0 of `new_id` when the epoch would overflow.
fn bumped(m: &TxnMeta, new_id: Option<i64>) -> Result<TxnMeta, i16> {
    let mut next = m.clone();
    if m.epoch >= LAST_EPOCH {
        next.prev_producer_id = m.producer_id;
        next.producer_id = new_id.ok_or(code::CONCURRENT_TRANSACTIONS)?;
        next.epoch = 0;
    } else {
        next.epoch = m.epoch + 1;
    }
    Ok(next)
}

/// The transaction aborted by the coordinator (a new producer instance, or a timeout): the
/// epoch is bumped first, fencing the producer that opened it, and the markers carry the
/// bumped epoch. `last_epoch` is what the fenced producer may recover with (-1: nothing).
fn fence_and_abort(m: &TxnMeta, last_epoch: i16, now_ms: i64) -> TxnMeta {
    let epoch = m.epoch.saturating_add(1);
    TxnMeta {
        epoch,
        last_epoch,
        state: TxnState::PrepareAbort,
        markers: Some((m.producer_id, epoch)),
        update_ms: now_ms,
        ..m.clone()
    }
}

/// InitProducerId for a transactional id: `existing` is its state (None if new),
/// `expected` the id and epoch the producer presents (KIP-360; None for a new instance),
/// `new_id` a fresh producer id when [`needs_new_id`] said so.
pub(crate) fn init(
    existing: Option<&TxnMeta>,
    timeout_ms: i32,
    expected: Option<(i64, i16)>,
    new_id: Option<i64>,
    now_ms: i64,
) -> Result<Init, i16> {
    let Some(m) = existing else {
        let id = new_id.ok_or(code::CONCURRENT_TRANSACTIONS)?;
        return Ok(Init::Write(fresh(id, timeout_ms, now_ms)));
    };
    if m.state.preparing() {
        return Err(code::CONCURRENT_TRANSACTIONS);
    }
    let last_epoch = match expected {
        None => -1,
        Some((id, epoch)) => {
            let retry_of_overflow =
                id == m.prev_producer_id && m.epoch == 0 && m.last_epoch == epoch;
            if id != m.producer_id && !retry_of_overflow {
                return Err(code::PRODUCER_FENCED);
            }
            if retry_of_overflow || (epoch != m.epoch && epoch == m.last_epoch) {
                return Ok(Init::Current);
            }
            if epoch != m.epoch {
                return Err(code::PRODUCER_FENCED);
            }
            epoch
        }
    };
    if m.state == TxnState::Ongoing {
        return Ok(Init::Abort(fence_and_abort(m, last_epoch, now_ms)));
    }
    let mut next = bumped(m, new_id)?;
    next.last_epoch = last_epoch;
    next.timeout_ms = timeout_ms;
    next.update_ms = now_ms;
    Ok(Init::Write(next))
}

/// Checks that `producer_id`/`epoch` is the producer `m` knows now.
fn check_producer(m: &TxnMeta, producer_id: i64, epoch: i16) -> Result<(), i16> {
    if producer_id != m.producer_id {
        return Err(code::INVALID_PRODUCER_ID_MAPPING);
    }
    if epoch == m.epoch {
        return Ok(());
    }
    // Fenced by the coordinator's own abort (a timeout): recoverable with InitProducerId.
    if epoch == m.last_epoch && matches!(m.state, TxnState::PrepareAbort | TxnState::CompleteAbort)
    {
        return Err(code::INVALID_PRODUCER_EPOCH);
    }
    Err(code::PRODUCER_FENCED)
}

/// AddPartitionsToTxn (and AddOffsetsToTxn, and the implicit add of transaction version 2):
/// `None` when every partition is already in the transaction.
pub(crate) fn add_partitions(
    m: &TxnMeta,
    producer_id: i64,
    epoch: i16,
    partitions: &[(String, i32)],
    now_ms: i64,
) -> Result<Option<TxnMeta>, i16> {
    check_producer(m, producer_id, epoch)?;
    if m.state.preparing() {
        return Err(code::CONCURRENT_TRANSACTIONS);
    }
    if m.state == TxnState::Ongoing && partitions.iter().all(|p| m.partitions.contains(p)) {
        return Ok(None);
    }
    let mut next = m.clone();
    if m.state != TxnState::Ongoing {
        next.partitions.clear();
        next.start_ms = now_ms;
    }
    next.partitions.extend(partitions.iter().cloned());
    next.state = TxnState::Ongoing;
    next.update_ms = now_ms;
    Ok(Some(next))
}

/// KIP-890 part 1: whether a partition leader may take `producer_id`/`epoch`'s first
/// transactional batch for `partition` (the transaction is open and holds it).
pub(crate) fn verify(
    m: &TxnMeta,
    producer_id: i64,
    epoch: i16,
    partition: &(String, i32),
) -> Result<(), i16> {
    check_producer(m, producer_id, epoch)?;
    if m.state == TxnState::Ongoing && m.partitions.contains(partition) {
        Ok(())
    } else {
        Err(code::INVALID_TXN_STATE)
    }
}

/// EndTxn: `v2` is transaction version 2 (EndTxn v5+), which bumps the epoch at every end;
/// `new_id` a fresh producer id for when that bump would overflow.
pub(crate) fn end(
    m: &TxnMeta,
    producer_id: i64,
    epoch: i16,
    commit: bool,
    v2: bool,
    new_id: Option<i64>,
    now_ms: i64,
) -> Result<End, i16> {
    let (prepare, complete) = TxnState::ending(commit);
    if v2 {
        // A retry of an end that already bumped the epoch (or moved to a new id).
        let retry = (producer_id == m.producer_id && epoch.checked_add(1) == Some(m.epoch))
            || (producer_id == m.prev_producer_id && m.epoch == 0 && epoch >= LAST_EPOCH);
        if retry {
            return match m.state {
                s if s == complete => Ok(End::Current),
                s if s == prepare => Err(code::CONCURRENT_TRANSACTIONS),
                // The coordinator aborted it meanwhile (a timeout): a commit is refused with
                // a code the producer recovers from.
                TxnState::CompleteAbort | TxnState::PrepareAbort => {
                    Err(code::INVALID_PRODUCER_EPOCH)
                }
                // Ended the other way (Kafka's answer).
                _ => Err(code::INVALID_TXN_STATE),
            };
        }
    }
    check_producer(m, producer_id, epoch)?;
    match m.state {
        TxnState::Ongoing => {
            let mut next = if v2 { bumped(m, new_id)? } else { m.clone() };
            next.markers = Some(if v2 && next.producer_id != m.producer_id {
                (m.producer_id, m.epoch.saturating_add(1))
            } else {
                (m.producer_id, next.epoch)
            });
            next.state = prepare;
            next.update_ms = now_ms;
            Ok(End::Prepare(next))
        }
        s if s.preparing() => Err(code::CONCURRENT_TRANSACTIONS),
        // Transaction version 2 lets a producer abort a transaction that wrote nothing.
        TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort if v2 && !commit => {
            let mut next = bumped(m, new_id)?;
            next.state = TxnState::CompleteAbort;
            next.partitions.clear();
            next.start_ms = -1;
            next.update_ms = now_ms;
            Ok(End::Complete(next))
        }
        s if s == complete && !v2 => Ok(End::Current),
        _ => Err(code::INVALID_TXN_STATE),
    }
}

/// Whether `m`'s transaction has outlived its timeout at `now_ms`.
pub(crate) fn timed_out(m: &TxnMeta, now_ms: i64) -> bool {
    m.state == TxnState::Ongoing && now_ms - m.start_ms > i64::from(m.timeout_ms)
}

/// The abort of a transaction that timed out: its producer is fenced, and may recover with
/// its old epoch (KIP-588).
pub(crate) fn abort_timed_out(m: &TxnMeta, now_ms: i64) -> TxnMeta {
    fence_and_abort(m, m.epoch, now_ms)
}

/// The transaction once every marker is written.
pub(crate) fn complete(m: &TxnMeta, now_ms: i64) -> TxnMeta {
    let state = if m.state == TxnState::PrepareCommit {
        TxnState::CompleteCommit
    } else {
        TxnState::CompleteAbort
    };
    TxnMeta {
        state,
        partitions: BTreeSet::new(),
        markers: None,
        start_ms: -1,
        update_ms: now_ms,
        ..m.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(topic: &str, i: i32) -> (String, i32) {
        (topic.to_string(), i)
    }

    fn initialised() -> TxnMeta {
        match init(None, 60_000, None, Some(7), 0) {
            Ok(Init::Write(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    fn ongoing() -> TxnMeta {
        let m = initialised();
        add_partitions(&m, 7, 0, &[p("t", 0), p("t", 1)], 10)
            .expect("add")
            .expect("a write")
    }

    #[test]
    fn a_new_id_starts_at_epoch_0_and_each_new_instance_fences_the_last() {
        let m = initialised();
        assert_eq!((m.producer_id, m.epoch, m.state), (7, 0, TxnState::Empty));
        let Ok(Init::Write(second)) = init(Some(&m), 60_000, None, None, 1) else {
            panic!("bump");
        };
        assert_eq!(second.epoch, 1);
        // The first instance is fenced everywhere it asks.
        assert_eq!(
            add_partitions(&second, 7, 0, &[p("t", 0)], 2),
            Err(code::PRODUCER_FENCED)
        );
        assert_eq!(
            init(Some(&second), 60_000, Some((7, 0)), None, 2),
            Err(code::PRODUCER_FENCED)
        );
    }

    #[test]
    fn a_new_instance_aborts_the_open_transaction_at_a_bumped_epoch() {
        let m = ongoing();
        let Ok(Init::Abort(fenced)) = init(Some(&m), 60_000, None, None, 20) else {
            panic!("abort first");
        };
        assert_eq!(fenced.state, TxnState::PrepareAbort);
        assert_eq!(fenced.markers, Some((7, 1)));
        assert_eq!(
            init(Some(&fenced), 60_000, None, None, 21),
            Err(code::CONCURRENT_TRANSACTIONS)
        );
        let done = complete(&fenced, 22);
        let Ok(Init::Write(next)) = init(Some(&done), 60_000, None, None, 23) else {
            panic!("then a new epoch");
        };
        assert_eq!((next.epoch, next.state), (2, TxnState::CompleteAbort));
        assert!(next.partitions.is_empty());
    }

    #[test]
    fn kip_360_bumps_only_the_current_epoch_and_answers_its_retry() {
        let m = initialised();
        let Ok(Init::Write(b)) = init(Some(&m), 60_000, Some((7, 0)), None, 1) else {
            panic!("bump");
        };
        assert_eq!((b.epoch, b.last_epoch), (1, 0));
        assert_eq!(
            init(Some(&b), 60_000, Some((7, 0)), None, 2),
            Ok(Init::Current)
        );
        assert_eq!(
            init(Some(&b), 60_000, Some((8, 1)), None, 2),
            Err(code::PRODUCER_FENCED)
        );
    }

    #[test]
    fn transaction_version_1_keeps_the_epoch_and_answers_retries() {
        let m = ongoing();
        let Ok(End::Prepare(prep)) = end(&m, 7, 0, true, false, None, 30) else {
            panic!("prepare");
        };
        assert_eq!(
            (prep.state, prep.markers),
            (TxnState::PrepareCommit, Some((7, 0)))
        );
        assert_eq!(
            end(&prep, 7, 0, true, false, None, 31),
            Err(code::CONCURRENT_TRANSACTIONS)
        );
        assert_eq!(
            add_partitions(&prep, 7, 0, &[p("t", 2)], 31),
            Err(code::CONCURRENT_TRANSACTIONS)
        );
        let done = complete(&prep, 32);
        assert_eq!(end(&done, 7, 0, true, false, None, 33), Ok(End::Current));
        assert_eq!(
            end(&done, 7, 0, false, false, None, 33),
            Err(code::INVALID_TXN_STATE)
        );
        // The next transaction starts fresh.
        let next = add_partitions(&done, 7, 0, &[p("u", 0)], 40)
            .expect("add")
            .expect("write");
        assert_eq!(next.partitions.len(), 1);
        assert_eq!(next.start_ms, 40);
    }

    #[test]
    fn transaction_version_2_bumps_at_every_end_and_fences_late_writes() {
        let m = ongoing();
        let Ok(End::Prepare(prep)) = end(&m, 7, 0, true, true, None, 30) else {
            panic!("prepare");
        };
        assert_eq!(prep.epoch, 1);
        assert_eq!(prep.markers, Some((7, 1)));
        let done = complete(&prep, 31);
        // The retry of the EndTxn gets the new epoch; the old epoch is fenced otherwise.
        assert_eq!(end(&done, 7, 0, true, true, None, 32), Ok(End::Current));
        assert_eq!(verify(&done, 7, 0, &p("t", 0)), Err(code::PRODUCER_FENCED));
        // An empty transaction may be aborted, bumping the epoch.
        let Ok(End::Complete(aborted)) = end(&done, 7, 1, false, true, None, 33) else {
            panic!("abort empty");
        };
        assert_eq!((aborted.epoch, aborted.state), (2, TxnState::CompleteAbort));
    }

    #[test]
    fn an_overflowing_epoch_moves_to_a_new_producer_id() {
        let mut m = ongoing();
        m.epoch = LAST_EPOCH;
        let Ok(End::Prepare(prep)) = end(&m, 7, LAST_EPOCH, false, true, Some(9), 30) else {
            panic!("prepare");
        };
        assert_eq!((prep.producer_id, prep.epoch), (9, 0));
        assert_eq!(prep.markers, Some((7, i16::MAX)));
        let done = complete(&prep, 31);
        assert_eq!(
            end(&done, 7, LAST_EPOCH, false, true, None, 32),
            Ok(End::Current)
        );
        assert!(needs_new_id(Some(&m)));
    }

    #[test]
    fn verification_needs_the_partition_in_the_open_transaction() {
        let m = ongoing();
        assert_eq!(verify(&m, 7, 0, &p("t", 1)), Ok(()));
        assert_eq!(verify(&m, 7, 0, &p("t", 5)), Err(code::INVALID_TXN_STATE));
        assert_eq!(
            verify(&m, 8, 0, &p("t", 1)),
            Err(code::INVALID_PRODUCER_ID_MAPPING)
        );
        let done = complete(&end_prepare(&m), 40);
        assert_eq!(
            verify(&done, 7, 0, &p("t", 1)),
            Err(code::INVALID_TXN_STATE)
        );
    }

    fn end_prepare(m: &TxnMeta) -> TxnMeta {
        match end(m, m.producer_id, m.epoch, true, false, None, 35) {
            Ok(End::Prepare(p)) => p,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_timed_out_transaction_is_aborted_and_its_producer_may_recover() {
        let m = ongoing();
        assert!(!timed_out(&m, 60_010));
        assert!(timed_out(&m, 60_011));
        let aborting = abort_timed_out(&m, 60_011);
        assert_eq!(aborting.markers, Some((7, 1)));
        assert_eq!(
            end(&aborting, 7, 0, true, false, None, 60_012),
            Err(code::INVALID_PRODUCER_EPOCH)
        );
        let done = complete(&aborting, 60_013);
        assert_eq!(
            end(&done, 7, 0, true, false, None, 60_014),
            Err(code::INVALID_PRODUCER_EPOCH)
        );
        assert_eq!(
            init(Some(&done), 60_000, Some((7, 0)), None, 60_015),
            Ok(Init::Current)
        );
    }
}
