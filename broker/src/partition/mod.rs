//! A replica of a partition on this broker, and the registry of those it hosts.
//!
//! - [`Partition`]: the log, the leader-epoch cache, the idempotent producers, the view of its
//!   segments in object storage ([`remote::RemoteView`]), the topic's settings and the role
//!   this broker plays for it ([`role::Role`]). A tiered partition is *recovering* until its
//!   manifest has been read ([`Partition::recovering`]); appends wait meanwhile.
//! - [`registry::Partitions`]: opens and closes partitions as metadata arrives, resolves a
//!   (topic, partition, leader epoch) for every API, and publishes role changes
//!   ([`role::RoleChange`]) to their subscribers: the group coordinator, tiering's recovery.

mod follow;
pub(crate) mod lead;
mod open;
mod read;
pub(crate) mod registry;
pub(crate) mod remote;
#[allow(dead_code)]
// The leader side of replication, wired in with the follower fetcher (issue 16).
pub(crate) mod replicas;
pub(crate) mod role;
#[cfg(test)]
pub(crate) mod tests;

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use strata_storage::Log;
use tokio::sync::watch;
use uuid::Uuid;

pub(crate) use self::read::{Read, Records};
use self::remote::RemoteView;
use self::replicas::Replicas;
use self::role::Role;
use crate::epochs::EpochCache;
use crate::lease::Lease;
use crate::producer::{self, ProducerTable};
use crate::topic::TopicSettings;

/// One partition replica hosted here.
#[derive(Debug)]
pub(crate) struct Partition {
    pub(crate) topic_id: Uuid,
    /// The topic's name, for logs.
    pub(crate) topic: String,
    pub(crate) index: i32,
    pub(crate) log: Arc<Log>,
    /// The log end offset, for followers' fetches waiting on new data.
    pub(crate) end: watch::Sender<u64>,
    /// The high watermark: the offset below which every in-sync replica holds the log.
    /// Consumers read below it and `acks=all` waits for it; with one replica it is the log
    /// end. Saved in `high-watermark` by the flusher and at shutdown, and read back (capped
    /// at the recovered log end) when the partition opens.
    pub(crate) high_watermark: watch::Sender<u64>,
    /// The high watermark last saved.
    saved_high_watermark: std::sync::atomic::AtomicU64,
    /// This broker's id.
    broker: i32,
    /// The replicas and in-sync replicas the metadata names.
    assignment: RwLock<Assignment>,
    /// As leader, what its followers have fetched.
    replicas: Mutex<Replicas>,
    /// Idempotent producers' sequences; held across check and append.
    pub(crate) producers: Mutex<ProducerTable>,
    /// Held from the encoding of a snapshot of `producers` until its file is written (by the
    /// flusher, at shutdown, by a recovery; the write is done outside the `producers` lock),
    /// and by whatever rewrites the table's history (a copy cut back or restarted, a
    /// recovery's reset), so a snapshot taken before a cut cannot land after it, named for
    /// offsets the cut log no longer holds (see [`SnapshotsHeld`]). Taken before `epochs`.
    producer_snapshots: Mutex<()>,
    /// Where each leader epoch started; held across an append that starts a new epoch.
    /// Taken before `producers` when both are held (a produce that starts an epoch holds it
    /// into the idempotence check; a follower's copy holds both), or a leader losing its role
    /// mid-append could deadlock with its own fetcher.
    pub(crate) epochs: Mutex<EpochCache>,
    /// Its segments in object storage.
    pub(crate) remote: RemoteView,
    settings: RwLock<Arc<TopicSettings>>,
    role: RwLock<Role>,
}

/// Proof that a partition's producer snapshots are held (see
/// [`Partition::hold_producer_snapshots`]).
pub(crate) struct SnapshotsHeld<'a> {
    _guard: std::sync::MutexGuard<'a, ()>,
}

/// File in a partition directory holding its high watermark.
const HIGH_WATERMARK_FILE: &str = "high-watermark";

/// The high watermark saved in `dir`, if any.
fn saved_high_watermark(dir: &std::path::Path) -> Option<u64> {
    std::fs::read_to_string(dir.join(HIGH_WATERMARK_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// How a wait for the in-sync replicas ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Replicated {
    Yes,
    /// This broker stopped leading the partition meanwhile.
    NotLeader,
    TimedOut,
}

/// A partition's replicas and in-sync replicas, as the metadata last gave them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Assignment {
    pub(crate) replicas: Vec<i32>,
    pub(crate) isr: Vec<i32>,
}

impl Partition {
    /// The role this broker plays for it.
    pub(crate) fn role(&self) -> Role {
        *self.role.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The last stable offset (Kafka's LSO): the high watermark, or the first offset of the
    /// earliest transaction still open if that is lower. read_committed consumers read to it.
    pub(crate) fn last_stable_offset(&self) -> u64 {
        let hw = (*self.high_watermark.borrow()).min(self.log.log_end_offset());
        let unstable = self
            .producers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .first_unstable_offset();
        unstable.map_or(hw, |u| u.min(hw))
    }

    /// Whether this broker leads the partition under `epoch` now. Appends check it while they
    /// hold the epochs lock, which the follower's truncation and copying hold too: once the
    /// role has changed, no append of the old term lands in the copy, where it would sit in
    /// the middle of what the new leader sends (seen in the fault checker: a group commit in
    /// flight when leadership moved, written just after the copy was cut back).
    pub(crate) fn leads_under(&self, epoch: i32) -> bool {
        self.role() == (Role::Leader { epoch })
    }

    fn set_role(&self, role: Role) {
        {
            let mut current = self.role.write().unwrap_or_else(|p| p.into_inner());
            if *current != role {
                // A new term: followers are judged on what they fetch from now on.
                self.lock_replicas().restart(Instant::now());
            }
            *current = role;
        }
        // A new leader alone in the ISR is replicated to its log end at once.
        self.advance_high_watermark();
    }

    fn lock_replicas(&self) -> std::sync::MutexGuard<'_, Replicas> {
        self.replicas.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The replicas and ISR the metadata names.
    pub(crate) fn assignment(&self) -> Assignment {
        self.assignment
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_assignment(&self, assignment: Assignment) {
        *self.assignment.write().unwrap_or_else(|p| p.into_inner()) = assignment;
        self.advance_high_watermark();
    }

    /// Publishes a grown log: wakes followers' fetches and, as leader, moves the high
    /// watermark (at once when no other replica is in sync).
    pub(crate) fn appended(&self) {
        self.end.send_replace(self.log.log_end_offset());
        self.advance_high_watermark();
    }

    /// Saves the high watermark when it moved since the last save (Kafka's
    /// `replication-offset-checkpoint`). Written by rename, not fsynced: one lost to a crash
    /// leaves an older, lower value, which only makes consumers wait for the followers again.
    pub(crate) fn save_high_watermark(&self) {
        use std::sync::atomic::Ordering;
        let hw = *self.high_watermark.borrow();
        if self.saved_high_watermark.load(Ordering::SeqCst) == hw {
            return;
        }
        let path = self.log.dir().join(HIGH_WATERMARK_FILE);
        let tmp = path.with_extension("tmp");
        let written =
            std::fs::write(&tmp, format!("{hw}\n")).and_then(|()| std::fs::rename(&tmp, &path));
        match written {
            Ok(()) => self.saved_high_watermark.store(hw, Ordering::SeqCst),
            Err(e) => tracing::warn!(dir = %self.log.dir().display(), error = %e,
                "saving the high watermark failed; a restart starts it lower"),
        }
    }

    /// As leader, moves the high watermark to what every in-sync replica holds.
    pub(super) fn advance_high_watermark(&self) {
        if self.role().leader_epoch().is_none() {
            return;
        }
        let end = self.log.log_end_offset();
        let current = *self.high_watermark.borrow();
        // Read in place: this runs on every append.
        let hw = {
            let assignment = self.assignment.read().unwrap_or_else(|p| p.into_inner());
            self.lock_replicas()
                .high_watermark(self.broker, &assignment.isr, end, current)
        };
        // Concurrent advances (an append, a follower's fetch) may finish in any order: the
        // leader's high watermark only ever moves forward.
        self.high_watermark.send_if_modified(|v| {
            let forward = hw > *v;
            if forward {
                *v = hw;
            }
            forward
        });
    }

    /// As leader, the ISR the followers' fetches call for (lagging ones out, caught-up ones
    /// in), when it differs from the metadata's.
    pub(crate) fn wanted_isr(&self, max_lag: Duration) -> Option<Vec<i32>> {
        self.role().leader_epoch()?;
        let Assignment { replicas, isr } = self.assignment();
        let hw = *self.high_watermark.borrow();
        let r = self.lock_replicas();
        let now = Instant::now();
        let out = r.lagging(self.broker, &isr, max_lag, now);
        let back = r.caught_up(&replicas, &isr, hw, max_lag, now);
        if out.is_empty() && back.is_empty() {
            return None;
        }
        let wanted: Vec<i32> = replicas
            .iter()
            .copied()
            .filter(|id| {
                *id == self.broker || (isr.contains(id) && !out.contains(id)) || back.contains(id)
            })
            .collect();
        (wanted != isr).then_some(wanted)
    }

    /// As leader, follower `replica`'s log end as its last fetch reported it.
    pub(crate) fn follower_log_end(&self, replica: i32) -> Option<u64> {
        self.lock_replicas().get(replica).map(|f| f.log_end)
    }

    /// Records a fetch by follower `replica` from `offset` (its log end), when this broker
    /// leads and `replica` is one of the partition's replicas; whether it was recorded.
    pub(crate) fn follower_fetched(&self, replica: i32, offset: u64) -> bool {
        if replica == self.broker
            || self.role().leader_epoch().is_none()
            || !self.assignment().replicas.contains(&replica)
        {
            return false;
        }
        let end = self.log.log_end_offset();
        self.lock_replicas()
            .fetched(replica, offset.min(end), end, Instant::now());
        self.advance_high_watermark();
        true
    }

    /// Waits up to `timeout` for the high watermark to reach `offset`, as long as this broker
    /// leads the partition and holds its `lease` (a leader that lost leadership answers at
    /// once: the new leader may not have the batch, and the client retries there).
    pub(crate) async fn replicated(
        &self,
        offset: u64,
        timeout: Duration,
        lease: &Lease,
    ) -> Replicated {
        /// How often a wait checks that this broker still leads.
        const CHECK_ROLE: Duration = Duration::from_millis(100);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.high_watermark.subscribe();
        loop {
            if *rx.borrow_and_update() >= offset {
                return Replicated::Yes;
            }
            if self.role().leader_epoch().is_none() || !lease.held() {
                return Replicated::NotLeader;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Replicated::TimedOut;
            }
            let slice = (deadline - now).min(CHECK_ROLE);
            tokio::select! {
                _ = tokio::time::timeout(slice, rx.changed()) => {}
                () = lease.lost() => {}
            }
        }
    }

    /// Its topic's settings.
    pub(crate) fn settings(&self) -> Arc<TopicSettings> {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Applies changed topic settings; a log config the log refuses leaves the old one.
    fn set_settings(&self, settings: TopicSettings) {
        if *self.settings() == settings {
            return;
        }
        if self.log.config() != settings.log
            && let Err(e) = self.log.set_config(settings.log.clone())
        {
            tracing::error!(topic = %self.topic, partition = self.index, error = %e,
                "the topic's new configs cannot be applied; the old ones stay");
            return;
        }
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(settings);
    }

    /// The log, when the partition is tiered: what [`ProducerTable::before_change`] notes
    /// segment ends for.
    pub(crate) fn tiered_log(&self) -> Option<&strata_storage::Log> {
        self.settings().remote.then_some(&self.log)
    }

    /// Whether the manifest of a tiered partition has not been read yet (appends wait).
    pub(crate) fn recovering(&self) -> bool {
        self.remote.recovering()
    }

    /// Saves the idempotent producers' table when it is due (see
    /// [`ProducerTable::save_due`]), or now with `force` (at shutdown).
    pub(crate) fn save_producers(&self, every: Duration, force: bool) {
        let held = self.hold_producer_snapshots();
        let Some((end, bytes)) = self.encode_producers(&held, every, force) else {
            return;
        };
        if let Err(e) = self.write_producer_snapshot(&held, end, &bytes) {
            tracing::warn!(dir = %self.log.dir().display(), error = %e,
                "saving the producer snapshot failed; a restart replays more of the log");
        }
    }

    /// The producers' table encoded as of the log end, and that end, if a save is due (or
    /// `force`d); what [`Self::save_producers`] writes while still `held`.
    fn encode_producers(
        &self,
        _held: &SnapshotsHeld<'_>,
        every: Duration,
        force: bool,
    ) -> Option<(u64, Vec<u8>)> {
        let now = Instant::now();
        let mut producers = self.producers.lock().unwrap_or_else(|p| p.into_inner());
        // Idempotent appends hold this lock, so every batch below the end is in the table.
        let end = self.log.log_end_offset();
        if !force && !producers.save_due(self.log.active_base_offset(), end, every, now) {
            return None;
        }
        // Ended transactions matter to uploads only where they span a segment end.
        let boundaries: Vec<u64> = if self.settings().remote {
            self.log.segments().iter().map(|s| s.base_offset).collect()
        } else {
            Vec::new()
        };
        producers.keep_ended_spanning(&boundaries);
        Some((end, producers.encode(end, now)))
    }

    /// Holds off snapshot saves (see `producer_snapshots`): taken before `epochs` and
    /// `producers`.
    pub(crate) fn hold_producer_snapshots(&self) -> SnapshotsHeld<'_> {
        SnapshotsHeld {
            _guard: self
                .producer_snapshots
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// Writes the producers' snapshot `bytes` as of `offset` (see [`producer::write_snapshot`]),
    /// encoded while `held` was.
    pub(crate) fn write_producer_snapshot(
        &self,
        _held: &SnapshotsHeld<'_>,
        offset: u64,
        bytes: &[u8],
    ) -> std::io::Result<()> {
        producer::write_snapshot(self.log.dir(), offset, bytes)
    }

    /// The first offset still retained, remotely or locally (Kafka's log start offset).
    pub(crate) fn log_start_offset(&self) -> u64 {
        let local = self.log.log_start_offset();
        match self.remote.manifest() {
            Some(m) if !m.segments.is_empty() => m.log_start_offset.min(local),
            _ => local,
        }
    }
}
