//! Writing as the leader: every append a leader makes (a client's produce, a coordinator's
//! records, a transaction marker) goes through [`Partition::append_as_leader`], which holds
//! the epochs lock across the append so leadership cannot move under it; and the
//! transaction markers a coordinator has the leader append ([`Partition::append_marker`]).

use strata_storage::{BatchBuilder, ControlMarker};

use super::Partition;

/// Why an append as leader was not attempted.
#[derive(Debug)]
pub(crate) enum NotWritten {
    /// This broker no longer leads under the epoch, or the log has seen a newer one.
    NotLeader(String),
    /// The epoch's start could not be recorded (nothing was appended).
    EpochUnrecorded(std::io::Error),
}

impl std::fmt::Display for NotWritten {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotLeader(why) => f.write_str(why),
            Self::EpochUnrecorded(e) => write!(f, "recording the leader epoch failed: {e}"),
        }
    }
}

/// How a marker append ended, short of an I/O failure.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum MarkerRefusal {
    /// The partition has seen a newer epoch of the producer (Kafka's INVALID_PRODUCER_EPOCH):
    /// a coordinator that was fenced, or a retry of a marker already superseded.
    StaleEpoch { current: i16, got: i16 },
}

impl Partition {
    /// Runs `append` as this partition's leader under `leader_epoch`: refused when this
    /// broker no longer leads under it or the log has seen a newer epoch. The first append
    /// of an epoch records where it starts (before appending: if recording fails nothing was
    /// written, so the error is true and a retry cannot duplicate). The epochs lock is held
    /// across `append`, which the follower's truncation and copying take too, so no append
    /// of an old term lands in a copy being cut back.
    pub(crate) fn append_as_leader<T>(
        &self,
        leader_epoch: i32,
        append: impl FnOnce() -> T,
    ) -> Result<T, NotWritten> {
        let mut epochs = self.epochs.lock().unwrap_or_else(|p| p.into_inner());
        if !self.leads_under(leader_epoch) {
            return Err(NotWritten::NotLeader(format!(
                "this broker no longer leads under epoch {leader_epoch}"
            )));
        }
        match epochs.latest() {
            // This view of the leadership is older than the log's: stamping it would make
            // epochs go backwards in the log.
            Some(latest) if latest > leader_epoch => {
                return Err(NotWritten::NotLeader(format!(
                    "leader epoch {leader_epoch} is older than the log's {latest}"
                )));
            }
            Some(latest) if latest == leader_epoch => {}
            _ => {
                let start = self.log.log_end_offset();
                epochs
                    .assign(leader_epoch, start)
                    .map_err(NotWritten::EpochUnrecorded)?;
            }
        }
        Ok(append())
    }

    /// Appends the control batch ending producer `producer_id`'s transaction here (epoch
    /// `producer_epoch`, committed or aborted as `marker` says), ends it in the producer
    /// table and, for an abort, records it in the aborted-transaction index. Returns the
    /// marker's offset. Kafka's check: a marker older than the producer's epoch here is
    /// refused. The caller holds leadership (see [`Self::append_as_leader`]).
    pub(crate) fn append_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        marker: ControlMarker,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<Result<u64, MarkerRefusal>, strata_storage::StorageError> {
        let mut producers = self.producers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(current) = producers.epoch_of(producer_id)
            && current > producer_epoch
        {
            return Ok(Err(MarkerRefusal::StaleEpoch {
                current,
                got: producer_epoch,
            }));
        }
        let batch = BatchBuilder::control(producer_id, producer_epoch, marker, now_ms);
        let info = self.log.append(&batch, leader_epoch)?;
        let offset = info.first_offset;
        producers.before_change(self.tiered_log(), offset);
        if let Some(done) = producers.end_txn(producer_id, producer_epoch, offset, marker.commit)
            && done.aborted
        {
            self.log.append_aborted(producers.aborted_entry(&done))?;
        }
        Ok(Ok(offset))
    }
}
