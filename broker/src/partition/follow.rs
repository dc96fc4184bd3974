//! What a follower does to its copy of a partition: append the batches its leader sent,
//! keeping their offsets and epochs and making them durable before it asks for more (its next
//! fetch offset tells the leader what it holds), and cut back what its leader does not have.

use super::Partition;
use super::open::rebuild_producers;
use super::role::Role;
use crate::error::BrokerError;
use crate::producer;

impl Partition {
    /// Appends batches copied from the leader (whole batches, starting at this log's end),
    /// fsyncs them, and records their leader epochs and idempotent producers, so this copy
    /// can lead with the same history. Nothing is appended unless this broker still follows
    /// as `copying` says (a fetch answered after a leader change is stale). Returns the new
    /// log end. Blocking.
    pub(crate) fn append_copied(&self, records: &[u8], copying: Role) -> Result<u64, BrokerError> {
        if records.is_empty() || self.role() != copying {
            return Ok(self.log.log_end_offset());
        }
        let batches: Vec<_> = producer::batches(records).collect();
        // The leader answers a fetch from this copy's end with the batch holding that offset;
        // one that starts below the end means this copy's last batches differ from the
        // leader's there (truncation by epochs did not see it). The leader's history wins:
        // cut back to its batch, or the copy would refuse it on every fetch and never catch
        // up (seen in the fault checker: a replica kept out of the ISR for good).
        let end = self.log.log_end_offset();
        if let Some(base) = batches
            .first()
            .and_then(|(h, _)| u64::try_from(h.base_offset).ok())
            .filter(|base| *base < end)
        {
            tracing::warn!(topic = %self.topic, partition = self.index, base, end,
                "the leader's batch starts inside this copy's last batch; cutting back to it");
            self.truncate_copy(base, copying)?;
        }
        {
            // Held across the append, as the leader's append holds them (epochs first).
            let mut epochs = self.epochs.lock().unwrap_or_else(|p| p.into_inner());
            // Checked again under the lock a leader's append takes: once this broker leads,
            // its log is the partition's and no stale copy joins it.
            if self.role() != copying {
                return Ok(self.log.log_end_offset());
            }
            let mut producers = self.producers.lock().unwrap_or_else(|p| p.into_inner());
            for (h, _) in &batches {
                let base = u64::try_from(h.base_offset).unwrap_or(0);
                epochs
                    .assign(h.partition_leader_epoch, base)
                    .map_err(|source| self.io("recording leader epochs", source))?;
            }
            self.log.append_replica(records)?;
            let tiered = self.settings().remote;
            for (h, batch) in &batches {
                producer::replay(&mut producers, &self.log, tiered, h, batch)?;
            }
        }
        let end = self.log.log_end_offset();
        self.log.sync_through(end)?;
        self.appended();
        Ok(end)
    }

    /// Cuts this copy back to `offset` (what the leader holds of the epochs this copy has),
    /// with the epochs and producer state that went with the removed batches, if this broker
    /// still follows as `copying` says (a cut worked out before it was elected would take
    /// away what it has appended as leader since). Returns the log end. Blocking.
    pub(crate) fn truncate_copy(&self, offset: u64, copying: Role) -> Result<u64, BrokerError> {
        let _held = self.hold_producer_snapshots();
        let mut epochs = self.epochs.lock().unwrap_or_else(|p| p.into_inner());
        // A leader's append holds the epochs lock, so none lands between this and the cut.
        if self.role() != copying {
            return Ok(self.log.log_end_offset());
        }
        let mut producers = self.producers.lock().unwrap_or_else(|p| p.into_inner());
        let end = self.log.truncate_to(offset)?;
        epochs
            .truncate(end)
            .map_err(|source| self.io("truncating leader epochs", source))?;
        let (table, snapshot) = rebuild_producers(&self.log, self.settings().remote)?;
        *producers = table;
        drop((producers, epochs));
        tracing::info!(topic = %self.topic, partition = self.index, end, snapshot,
            "cut back; producer state rebuilt from the snapshot and the log above it");
        self.end.send_replace(end);
        let hw = (*self.high_watermark.borrow()).min(end);
        self.high_watermark.send_replace(hw);
        Ok(end)
    }

    /// Restarts this copy, empty, at `offset` (the leader no longer has anything below it),
    /// forgetting the epochs of what it held, and its producers' state with the snapshots
    /// of it (they describe the history below `offset`, which a later cut would otherwise
    /// read back): the leader's batches bring their own. Only while this broker follows as
    /// `copying` says.
    pub(crate) fn restart_copy_at(&self, offset: u64, copying: Role) -> Result<(), BrokerError> {
        let _held = self.hold_producer_snapshots();
        let mut epochs = self.epochs.lock().unwrap_or_else(|p| p.into_inner());
        if self.role() != copying {
            return Ok(());
        }
        let mut producers = self.producers.lock().unwrap_or_else(|p| p.into_inner());
        // Before the reset: a crash between the two then finds the old log without
        // snapshots (more of it replayed), never the new one with the old log's.
        producer::remove_snapshots(self.log.dir())
            .map_err(|source| self.io("removing producer snapshots", source))?;
        self.log.reset_to(offset)?;
        epochs
            .replace(Vec::new())
            .map_err(|source| self.io("forgetting leader epochs", source))?;
        *producers = Default::default();
        drop((producers, epochs));
        self.end.send_replace(offset);
        self.high_watermark.send_replace(offset);
        Ok(())
    }

    /// As follower: the leader's high watermark, as far as this copy reaches.
    pub(crate) fn follow_high_watermark(&self, leader_hw: u64) {
        let hw = leader_hw.min(self.log.log_end_offset());
        self.high_watermark.send_if_modified(|current| {
            let changed = *current != hw;
            *current = hw;
            changed
        });
    }

    fn io(&self, op: &'static str, source: std::io::Error) -> BrokerError {
        BrokerError::Io {
            op,
            path: self.log.dir().to_owned(),
            source,
        }
    }
}
