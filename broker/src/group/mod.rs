//! The group coordinator: consumer groups' membership and committed offsets.
//!
//! A group lives in the `__consumer_offsets` partition its id hashes to, and this broker
//! coordinates it when it leads that partition. The membership state machine
//! ([`machine::Group`]) runs under one lock that is never held across an `.await`; requests
//! that must wait hold a oneshot receiver instead. Offsets and membership are persisted to the
//! partition ([`store`]) before they are acknowledged, and replayed when this broker becomes
//! the partition's leader: the coordinator follows the partitions' role changes, loading an
//! offsets partition's groups when it starts leading it and dropping them (members are told
//! NOT_COORDINATOR) when it stops.

pub(crate) mod machine;
pub(crate) mod store;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use strata_controller::{Command, ControllerClient};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use self::machine::{Group, Limits, Phase};
use self::store::{Committed, OFFSETS_TOPIC, Write};
use crate::lease::Lease;
use crate::metadata::MetadataView;
use crate::partition::registry::RoleEvents;
use crate::partition::role::{Change, RoleChange};
use crate::partition::{Partition, Replicated};

/// Kafka error codes of the coordinator's own.
pub(crate) mod code {
    pub(crate) const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub(crate) const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub(crate) const NOT_COORDINATOR: i16 = 16;
    pub(crate) const INVALID_GROUP_ID: i16 = 24;
    pub(crate) const GROUP_ID_NOT_FOUND: i16 = 69;
}

/// How long a commit waits for the in-sync replicas (Kafka's `offsets.commit.timeout.ms`).
const COMMIT_REPLICATION_WAIT: Duration = Duration::from_secs(5);

/// How often sessions and rebalance deadlines are checked.
const TICK: Duration = Duration::from_millis(100);

/// Coordinator settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GroupConfig {
    pub(crate) limits: Limits,
    pub(crate) offsets_partitions: i32,
    pub(crate) offsets_retention: Duration,
    /// Of `__consumer_offsets`, when this broker creates it (unset: the cluster's default,
    /// see [`crate::topic::default_replication_factor`]).
    pub(crate) offsets_replication_factor: Option<i16>,
    /// Brokers this one expects to see (the voters of a combined quorum): with an unset
    /// replication factor the offsets topic waits a little for them, so a cluster starting
    /// together does not fix its offsets topic at the one copy of the first broker up.
    pub(crate) expected_brokers: usize,
}

/// How long the offsets topic waits for the brokers a cluster expects before it is created
/// with the copies there are.
const OFFSETS_TOPIC_WAIT: Duration = Duration::from_secs(30);

/// A group and its committed offsets.
#[derive(Debug, Default)]
pub(crate) struct Entry {
    pub(crate) group: Group,
    pub(crate) offsets: BTreeMap<(String, i32), Committed>,
    /// When the group last became empty (wall clock), for offset expiry.
    empty_since_ms: Option<i64>,
}

/// The coordinator for the groups whose offsets partitions this broker leads.
#[derive(Debug)]
pub(crate) struct Coordinator {
    pub(crate) config: GroupConfig,
    /// This broker's id.
    me: i32,
    metadata: Arc<MetadataView>,
    controller: Arc<ControllerClient>,
    /// Commits wait for the in-sync replicas only while this broker may lead.
    lease: Arc<Lease>,
    groups: Mutex<HashMap<String, Entry>>,
    /// The offsets partitions whose groups are loaded: those this broker leads.
    loaded: Mutex<HashMap<i32, Arc<Partition>>>,
    /// Serialises persisting and applying offset commits, per offsets partition.
    write_locks: Vec<tokio::sync::Mutex<()>>,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Coordinator {
    pub(crate) fn new(
        config: GroupConfig,
        me: i32,
        metadata: Arc<MetadataView>,
        controller: Arc<ControllerClient>,
        lease: Arc<Lease>,
    ) -> Self {
        Self {
            config,
            me,
            metadata,
            controller,
            lease,
            groups: Mutex::new(HashMap::new()),
            loaded: Mutex::new(HashMap::new()),
            write_locks: (0..config.offsets_partitions.max(1))
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn partition_of(&self, group: &str) -> i32 {
        store::partition_for(group, self.config.offsets_partitions)
    }

    /// The broker that coordinates `group` by the metadata: the live leader of its offsets
    /// partition (what FindCoordinator answers on any broker), else the error code.
    pub(crate) fn coordinator_of(&self, group: &str) -> Result<i32, i16> {
        if group.is_empty() {
            return Err(code::INVALID_GROUP_ID);
        }
        let p = self.partition_of(group);
        let image = self.metadata.image();
        image
            .topics
            .get(OFFSETS_TOPIC)
            .and_then(|t| usize::try_from(p).ok().and_then(|i| t.partitions.get(i)))
            .and_then(|meta| meta.leader)
            .filter(|l| image.brokers.get(l).is_some_and(|b| !b.fenced))
            .ok_or(code::COORDINATOR_NOT_AVAILABLE)
    }

    /// The offsets partition for `group` and its leader epoch if this broker coordinates
    /// it, else the error code.
    pub(crate) fn route(&self, group: &str) -> Result<(Arc<Partition>, i32), i16> {
        if group.is_empty() {
            return Err(code::INVALID_GROUP_ID);
        }
        let p = self.partition_of(group);
        let loaded = self
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&p)
            .cloned();
        if let Some(part) = loaded
            && let Some(epoch) = part.role().leader_epoch()
        {
            return Ok((part, epoch));
        }
        let image = self.metadata.image();
        let meta = image
            .topics
            .get(OFFSETS_TOPIC)
            .and_then(|t| usize::try_from(p).ok().and_then(|i| t.partitions.get(i)))
            .ok_or(code::COORDINATOR_NOT_AVAILABLE)?;
        // Led here by the metadata but not loaded yet: the role change is on its way.
        if meta.leader == Some(self.me) {
            Err(code::COORDINATOR_LOAD_IN_PROGRESS)
        } else {
            Err(code::NOT_COORDINATOR)
        }
    }

    /// Runs `f` on the group's entry (created empty if new), under the coordinator lock.
    pub(crate) fn with_group<T>(&self, group: &str, f: impl FnOnce(&mut Entry) -> T) -> T {
        let mut groups = self.lock();
        f(groups.entry(group.to_owned()).or_default())
    }

    /// Runs `f` on the group's entry if it exists.
    pub(crate) fn with_existing<T>(
        &self,
        group: &str,
        f: impl FnOnce(&mut Entry) -> T,
    ) -> Option<T> {
        self.lock().get_mut(group).map(f)
    }

    /// Every group id with its phase and protocol type.
    pub(crate) fn list(&self) -> Vec<(String, Phase, Option<String>)> {
        self.lock()
            .iter()
            .map(|(id, e)| {
                (
                    id.clone(),
                    e.group.phase(),
                    e.group.protocol_type().map(str::to_owned),
                )
            })
            .collect()
    }

    /// Forgets a group entirely (DeleteGroups), after its tombstone is durable.
    pub(crate) fn remove(&self, group: &str) {
        self.lock().remove(group);
    }

    /// Persists `writes` durably in the group's offsets partition, then runs `apply` on the
    /// group under the coordinator lock: commits are acknowledged only once durable, and
    /// applied in the order they were written.
    pub(crate) async fn persist_then<T>(
        &self,
        part: Arc<Partition>,
        leader_epoch: i32,
        group: &str,
        writes: Vec<Write>,
        apply: impl FnOnce(&mut Entry) -> T,
    ) -> Result<T, strata_storage::StorageError> {
        let p = usize::try_from(self.partition_of(group)).unwrap_or(0);
        let _order = match self.write_locks.get(p) {
            Some(l) => Some(l.lock().await),
            None => None,
        };
        let now = now_ms();
        let writer = part.clone();
        tokio::task::spawn_blocking(move || {
            // The first write of a leader epoch records where it starts, as a produce does
            // (held across the append): followers truncate by these epochs, and without them
            // a follower of an offsets partition kept a diverged tail (seen in the fault
            // checker as a copy ending inside one of the leader's batches).
            let mut epochs = writer.epochs.lock().unwrap_or_else(|p| p.into_inner());
            let refused = if !writer.leads_under(leader_epoch) {
                Some(format!("no longer the leader under epoch {leader_epoch}"))
            } else if epochs.latest().is_some_and(|l| l > leader_epoch) {
                Some(format!(
                    "leader epoch {leader_epoch} is older than the log's"
                ))
            } else {
                None
            };
            if let Some(why) = refused {
                return Err(strata_storage::StorageError::Io {
                    op: "persisting group records",
                    path: writer.log.dir().to_owned(),
                    source: std::io::Error::other(why),
                });
            }
            epochs
                .assign(leader_epoch, writer.log.log_end_offset())
                .map_err(|source| strata_storage::StorageError::Io {
                    op: "recording leader epochs",
                    path: writer.log.dir().to_owned(),
                    source,
                })?;
            store::append(&writer.log, leader_epoch, &writes, now)
        })
        .await
        .map_err(|e| strata_storage::StorageError::Io {
            op: "persisting group records",
            path: part.log.dir().to_owned(),
            source: std::io::Error::other(e),
        })??;
        part.appended();
        // As Kafka's coordinator writes with acks=all: acknowledged only once every in-sync
        // replica has it, so a new leader of the partition has every acknowledged commit.
        let end = part.log.log_end_offset();
        if part
            .replicated(end, COMMIT_REPLICATION_WAIT, &self.lease)
            .await
            != Replicated::Yes
        {
            return Err(strata_storage::StorageError::Io {
                op: "replicating group records",
                path: part.log.dir().to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the in-sync replicas did not copy the records in time",
                ),
            });
        }
        Ok(self.with_group(group, apply))
    }

    /// Creates the offsets topic if need be, then follows `roles` (loading and dropping
    /// offsets partitions' groups as leadership moves) and keeps sessions, rebalances and
    /// offset expiry moving until cancelled.
    pub(crate) async fn run(self: Arc<Self>, mut roles: RoleEvents, cancel: CancellationToken) {
        // Creating the topic waits on the controller and the metadata follower; a shutdown
        // stops both, so it must not wait for them.
        tokio::select! {
            () = cancel.cancelled() => return,
            () = self.ensure_offsets_topic(&cancel) => {}
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                changes = roles.recv() => match changes {
                    Some(changes) => self.follow(&changes).await,
                    None => break,
                },
                _ = tick.tick() => self.tick().await,
            }
        }
        for e in self.lock().values_mut() {
            e.group.abandon(code::NOT_COORDINATOR);
        }
    }

    async fn ensure_offsets_topic(&self, cancel: &CancellationToken) {
        let waiting_since = tokio::time::Instant::now();
        while !self.metadata.image().topics.contains_key(OFFSETS_TOPIC) {
            let image = self.metadata.image();
            let live = image.brokers.values().filter(|b| !b.fenced).count();
            let wanted = self.config.expected_brokers.min(3);
            if self.config.offsets_replication_factor.is_none()
                && live < wanted
                && waiting_since.elapsed() < OFFSETS_TOPIC_WAIT
            {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(200)) => continue,
                }
            }
            let replication_factor = crate::topic::default_replication_factor(
                self.config.offsets_replication_factor,
                &image,
            );
            let command = Command::CreateTopic {
                name: OFFSETS_TOPIC.into(),
                id: Uuid::new_v4(),
                partitions: self.config.offsets_partitions,
                replication_factor,
                configs: BTreeMap::from([("cleanup.policy".to_string(), "compact".to_string())]),
                first_leader_epoch: 0,
            };
            match self.controller.submit(&command).await {
                Ok(Ok(a)) => {
                    self.metadata
                        .wait_for_version(a.version, Duration::from_secs(10))
                        .await;
                }
                Ok(Err(strata_controller::CommandError::TopicAlreadyExists { .. })) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot create {OFFSETS_TOPIC} yet"),
                Err(e) => tracing::warn!(error = %e, "controller unavailable for {OFFSETS_TOPIC}"),
            }
            if !self.metadata.image().topics.contains_key(OFFSETS_TOPIC) {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }

    /// Loads the groups of offsets partitions this broker starts leading and drops those of
    /// partitions it stops leading.
    pub(crate) async fn follow(&self, changes: &[RoleChange]) {
        for c in changes {
            if c.partition.topic != OFFSETS_TOPIC {
                continue;
            }
            let index = c.index();
            match c.change {
                Change::BecomeLeader { .. } => {
                    if let Err(e) = self.load(&c.partition).await {
                        tracing::error!(partition = index, error = %e,
                            "loading groups failed; they stay unavailable");
                    }
                }
                Change::BecomeFollower { .. } | Change::Stop { .. } => self.unload(index),
            }
        }
    }

    /// Replays an offsets partition into the groups it holds; a partition already loaded
    /// (a new leader epoch of the same leader) keeps what it has.
    async fn load(&self, part: &Arc<Partition>) -> Result<(), crate::BrokerError> {
        let index = part.index;
        let current = self
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&index)
            .map(|c| Arc::ptr_eq(c, part));
        match current {
            Some(true) => return Ok(()),
            // Another partition under this index (the topic was re-created): its groups go.
            Some(false) => self.unload(index),
            None => {}
        }
        let log = part.log.clone();
        let replayed = tokio::task::spawn_blocking(move || store::load(&log))
            .await
            .map_err(|e| crate::BrokerError::Io {
                op: "loading groups",
                path: part.log.dir().to_owned(),
                source: std::io::Error::other(e),
            })??;
        let now = Instant::now();
        let mut groups = self.lock();
        let count = replayed.groups.len();
        for (id, snapshot) in replayed.groups {
            groups.entry(id).or_default().group = Group::restore(snapshot, now);
        }
        for (id, offsets) in replayed.offsets {
            groups.entry(id).or_default().offsets = offsets;
        }
        drop(groups);
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(index, part.clone());
        tracing::info!(
            partition = index,
            groups = count,
            "offsets partition loaded"
        );
        Ok(())
    }

    /// Forgets the groups of an offsets partition this broker no longer leads; their members
    /// are answered NOT_COORDINATOR and find the new coordinator.
    fn unload(&self, index: i32) {
        let was_loaded = self
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&index)
            .is_some();
        if !was_loaded {
            return;
        }
        let mut groups = self.lock();
        groups.retain(|id, e| {
            if self.partition_of(id) != index {
                return true;
            }
            e.group.abandon(code::NOT_COORDINATOR);
            false
        });
        tracing::info!(partition = index, "offsets partition unloaded");
    }

    /// The locked part of a tick: advances timers and returns, per group, the records to
    /// persist and whether they expire the group.
    fn advance(&self, now: Instant, wall: i64) -> BTreeMap<String, (Vec<Write>, bool)> {
        let retention = self.config.offsets_retention.as_millis() as i64;
        let mut writes: BTreeMap<String, (Vec<Write>, bool)> = BTreeMap::new();
        let mut groups = self.lock();
        for (id, e) in groups.iter_mut() {
            e.group.tick(&self.config.limits, now);
            let empty = e.group.phase() == Phase::Empty && e.group.is_empty();
            match (empty, e.empty_since_ms) {
                (true, None) => e.empty_since_ms = Some(wall),
                (false, Some(_)) => e.empty_since_ms = None,
                _ => {}
            }
            let expired = e.empty_since_ms.is_some_and(|t| wall - t >= retention);
            if expired {
                let mut w: Vec<Write> = e
                    .offsets
                    .keys()
                    .map(|(topic, partition)| Write::Offset {
                        group: id.clone(),
                        topic: topic.clone(),
                        partition: *partition,
                        value: None,
                    })
                    .collect();
                w.push(Write::Group {
                    group: id.clone(),
                    value: None,
                });
                writes.insert(id.clone(), (w, true));
            } else if e.group.take_dirty() {
                writes.insert(
                    id.clone(),
                    (
                        vec![Write::Group {
                            group: id.clone(),
                            value: Some(e.group.snapshot()),
                        }],
                        false,
                    ),
                );
            }
        }
        writes
    }

    /// Advances every group's timers; persists membership changes; expires the offsets of
    /// groups empty for longer than the retention.
    async fn tick(&self) {
        let writes = self.advance(Instant::now(), now_ms());
        for (id, (w, expire)) in writes {
            let Ok((part, epoch)) = self.route(&id) else {
                continue;
            };
            let result = self.persist_then(part, epoch, &id, w, |_| ()).await;
            match result {
                Ok(()) if expire => {
                    tracing::info!(group = %id, "offsets expired");
                    let mut groups = self.lock();
                    if groups
                        .get(&id)
                        .is_some_and(|e| e.group.phase() == Phase::Empty && e.group.is_empty())
                    {
                        groups.remove(&id);
                    }
                }
                Ok(()) => {}
                Err(e) => tracing::error!(group = %id, error = %e, "persisting group state failed"),
            }
        }
    }
}
