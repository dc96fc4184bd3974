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

pub(crate) mod assignor;
pub(crate) mod consumer;
pub(crate) mod machine;
pub(crate) mod store;

#[cfg(test)]
mod tests;

use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use strata_controller::ControllerClient;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::consumer::{ConsumerGroup, Heartbeat, HeartbeatReply, Refusal};
use self::machine::{Answer, Group, Join, JoinReply, Limits, Phase, SyncReply};
use self::store::{Committed, OFFSETS_TOPIC, Write};
use crate::lease::Lease;
use crate::metadata::MetadataView;
use crate::partition::Partition;
use crate::partition::registry::RoleEvents;
use crate::partition::role::RoleChange;
use crate::statelog::{self, InternalTopic, Leadership, MarkerFailed, Routes};

/// Kafka error codes of the coordinator's own.
pub(crate) mod code {
    #[cfg(test)]
    pub(crate) use crate::statelog::COORDINATOR_LOAD_IN_PROGRESS;
    pub(crate) use crate::statelog::{COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR};
    pub(crate) const INVALID_GROUP_ID: i16 = 24;
    pub(crate) const GROUP_ID_NOT_FOUND: i16 = 69;
}

/// How often sessions and rebalance deadlines are checked.
const TICK: Duration = Duration::from_millis(100);

/// What a tick persists for one group.
struct Persist {
    writes: Vec<Write>,
    /// The writes expire the group (its offsets and membership go).
    expire: bool,
    /// The generation a membership snapshot among the writes holds.
    generation: Option<i32>,
    /// The group's consumer-protocol state is to be persisted (taken when written, see
    /// [`Coordinator::persist_consumer`]).
    consumer: bool,
}

/// Coordinator settings.
#[derive(Clone, Debug)]
pub(crate) struct GroupConfig {
    pub(crate) limits: Limits,
    /// KIP-848 consumer groups'.
    pub(crate) consumer: consumer::Settings,
    pub(crate) offsets_partitions: i32,
    pub(crate) offsets_retention: Duration,
    /// Of `__consumer_offsets`, when this broker creates it (unset: the cluster's default,
    /// see [`crate::topic::default_replication_factor`]).
    pub(crate) offsets_replication_factor: Option<i16>,
    /// Brokers this one expects to see (the voters of a combined quorum): with an unset
    /// replication factor the offsets topic waits a little for them, so a cluster starting
    /// together does not fix its offsets topic at the one copy of the first broker up.
    pub(crate) expected_brokers: usize,
    /// `segment.bytes` of `__consumer_offsets` when this broker creates it.
    pub(crate) offsets_segment_bytes: u64,
    /// Whether it is created tiered.
    pub(crate) offsets_tiered: bool,
    /// Which topics a member's regular expression may match: those it may describe.
    pub(crate) authorization: crate::security::config::AuthorizationConfig,
}

/// The metadata as a consumer group resolves subscriptions against it, with the members'
/// authorization (see [`consumer::Catalog::describable`]).
struct Visible<'a> {
    image: &'a strata_controller::MetadataImage,
    authorization: &'a crate::security::config::AuthorizationConfig,
}

impl consumer::Catalog for Visible<'_> {
    fn version(&self) -> u64 {
        self.image.version()
    }
    fn topic(&self, name: &str) -> Option<(uuid::Uuid, i32)> {
        self.image.topic(name)
    }
    fn each_public(&self, f: &mut dyn FnMut(&str, uuid::Uuid, i32)) {
        self.image.each_public(f)
    }
    fn describable(&self, who: Option<&crate::security::acl::Requester>, topic: &str) -> bool {
        who.is_none_or(|who| {
            crate::security::acl::authorize_as(
                self.authorization,
                &self.image.acls,
                who,
                crate::security::acl::code::DESCRIBE,
                crate::security::acl::Resource::Topic(topic),
            )
        })
    }
}

impl Coordinator {
    /// The catalog consumer groups resolve against now.
    fn visible<'a>(&'a self, image: &'a strata_controller::MetadataImage) -> Visible<'a> {
        Visible {
            image,
            authorization: &self.config.authorization,
        }
    }
}

/// A group and its committed offsets.
#[derive(Debug, Default)]
pub(crate) struct Entry {
    /// The classic protocol's membership; empty while the group is a consumer group.
    pub(crate) group: Group,
    /// Set while the group uses KIP-848's consumer protocol (ConsumerGroupHeartbeat).
    pub(crate) consumer: Option<ConsumerGroup>,
    pub(crate) offsets: BTreeMap<(String, i32), Committed>,
    /// When the group last became empty (wall clock), for offset expiry.
    empty_since_ms: Option<i64>,
    /// Offsets committed in transactions not ended yet, per producer id (TxnOffsetCommit):
    /// they count when the commit marker reaches this group's offsets partition.
    pub(crate) pending: BTreeMap<i64, BTreeMap<(String, i32), Committed>>,
    /// Partitions with an OffsetCommit being written, and how many (see [`Committing`]).
    committing: BTreeMap<(String, i32), u32>,
}

impl Entry {
    /// Whether nobody is a member, under either protocol.
    pub(crate) fn is_empty(&self) -> bool {
        self.group.phase() == Phase::Empty
            && self.group.is_empty()
            && self.consumer.as_ref().is_none_or(ConsumerGroup::is_empty)
    }

    /// Whether an offset commit from this member, generation or member epoch, for
    /// `partitions` (topic id, partition), is allowed.
    pub(crate) fn check_commit(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        partitions: &[(uuid::Uuid, i32)],
    ) -> Result<(), i16> {
        match &self.consumer {
            Some(c) => c.check_member(member_id, generation, partitions),
            None => self.group.check_commit(member_id, instance_id, generation),
        }
    }

    /// The consumer group, while it has members: classic-protocol requests then go to it
    /// (see [`consumer::classic`]); an empty one goes back to the classic protocol at the
    /// next JoinGroup (its committed offsets stay).
    fn consumer_with_members(&mut self) -> Option<&mut ConsumerGroup> {
        self.consumer.as_mut().filter(|c| !c.is_empty())
    }

    /// Heartbeat (the classic protocol's).
    pub(crate) fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: Instant,
    ) -> i16 {
        match self.consumer_with_members() {
            Some(c) => c.classic_heartbeat(member_id, instance_id, generation, now),
            None => self
                .group
                .heartbeat(member_id, instance_id, generation, now),
        }
    }

    /// The partitions whose committed offset is about to change: a transactional commit
    /// waits for its marker, or a commit is being written. A fetch that requires stable
    /// offsets (KIP-447) is answered UNSTABLE_OFFSET_COMMIT for them.
    pub(crate) fn unstable(&self) -> BTreeSet<(String, i32)> {
        let pending = self.pending.values().flat_map(|p| p.keys());
        pending.chain(self.committing.keys()).cloned().collect()
    }
}

/// An OffsetCommit of a group's partitions being written, until dropped. Kafka's coordinator
/// keeps such commits pending, and a consumer that requires stable offsets (librdkafka's
/// read_committed default) is told to ask again: without that, a member that takes a
/// partition over in a rebalance reads the offset from before a commit still waiting for
/// the in-sync replicas, and commits its position from there, so the group's committed
/// offset goes back (the fault checker saw it when the offsets partition was slow to
/// replicate).
pub(crate) struct Committing<'a> {
    coordinator: &'a Coordinator,
    group: String,
    partitions: Vec<(String, i32)>,
}

impl Drop for Committing<'_> {
    fn drop(&mut self) {
        self.coordinator.with_existing(&self.group, |e| {
            for p in &self.partitions {
                if let Some(n) = e.committing.get_mut(p) {
                    *n -= 1;
                    if *n == 0 {
                        e.committing.remove(p);
                    }
                }
            }
        });
    }
}

/// The consumer group a classic group with members becomes when a member joins it with
/// ConsumerGroupHeartbeat (KIP-848's online upgrade), or the refusal. The classic members'
/// waiting JoinGroup and SyncGroup requests are told to rejoin, which they then do as classic
/// members of the consumer group.
fn upgrade(
    id: &str,
    group: &mut Group,
    catalog: &dyn consumer::Catalog,
    settings: &consumer::Settings,
) -> Result<ConsumerGroup, Refusal> {
    let refuse = |why: String| {
        tracing::info!(
            group = id,
            why,
            "a classic group is not upgraded to a consumer group"
        );
        Err(Refusal {
            code: code::GROUP_ID_NOT_FOUND,
            message: format!("classic group {id} cannot become a consumer group: {why}"),
        })
    };
    let snapshot = group.snapshot();
    if snapshot.members.len() >= settings.max_size {
        return refuse(format!("it has {} members", snapshot.members.len()));
    }
    match ConsumerGroup::from_classic(&snapshot, catalog, Instant::now()) {
        Err(why) => refuse(why),
        Ok(upgraded) => {
            group.abandon(machine::code::REBALANCE_IN_PROGRESS);
            *group = Group::default();
            tracing::info!(
                group = id,
                generation = snapshot.generation,
                members = snapshot.members.len(),
                "classic group upgraded to a consumer group"
            );
            Ok(upgraded)
        }
    }
}

/// A group as ListGroups shows it.
#[derive(Clone, Debug)]
pub(crate) struct Listed {
    pub(crate) id: String,
    /// `classic` or `consumer` (KIP-848).
    pub(crate) kind: &'static str,
    pub(crate) state: &'static str,
    pub(crate) protocol_type: Option<String>,
}

/// A partition (topic, index) and the offset a group committed for it.
pub(crate) type CommittedOffset = ((String, i32), i64);

/// The coordinator for the groups whose offsets partitions this broker leads.
#[derive(Debug)]
pub(crate) struct Coordinator {
    pub(crate) config: GroupConfig,
    metadata: Arc<MetadataView>,
    controller: Arc<ControllerClient>,
    /// Commits wait for the in-sync replicas only while this broker may lead.
    lease: Arc<Lease>,
    groups: Mutex<HashMap<String, Entry>>,
    /// The offsets partitions, and those whose groups are loaded: those this broker leads.
    routes: Routes,
    /// Serialises persisting and applying offset commits, per offsets partition.
    write_locks: Vec<tokio::sync::Mutex<()>>,
    /// Wakes the tick early: a generation's SyncGroup answers wait for its persisting.
    persist_now: tokio::sync::Notify,
}

pub(crate) use crate::statelog::now_ms;

impl Coordinator {
    pub(crate) fn new(
        config: GroupConfig,
        me: i32,
        metadata: Arc<MetadataView>,
        controller: Arc<ControllerClient>,
        lease: Arc<Lease>,
    ) -> Self {
        let partitions = config.offsets_partitions;
        Self {
            config,
            metadata: metadata.clone(),
            controller,
            lease: lease.clone(),
            groups: Mutex::new(HashMap::new()),
            routes: Routes::new(
                OFFSETS_TOPIC,
                partitions,
                me,
                metadata.clone(),
                lease.clone(),
            ),
            write_locks: (0..partitions.max(1))
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            persist_now: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn partition_of(&self, group: &str) -> i32 {
        self.routes.partition_of(group)
    }

    /// The broker that coordinates `group` by the metadata: the live leader of its offsets
    /// partition (what FindCoordinator answers on any broker), else the error code.
    pub(crate) fn coordinator_of(&self, group: &str) -> Result<i32, i16> {
        if group.is_empty() {
            return Err(code::INVALID_GROUP_ID);
        }
        self.routes
            .leader_of(group)
            .unwrap_or(Err(code::COORDINATOR_NOT_AVAILABLE))
    }

    /// The offsets partition for `group` and its leader epoch if this broker coordinates
    /// it, else the error code.
    pub(crate) fn route(&self, group: &str) -> Result<(Arc<Partition>, i32), i16> {
        if group.is_empty() {
            return Err(code::INVALID_GROUP_ID);
        }
        self.routes.route(group)
    }

    /// Runs `f` on the group's entry (created empty if new), under the coordinator lock.
    pub(crate) fn with_group<T>(&self, group: &str, f: impl FnOnce(&mut Entry) -> T) -> T {
        let mut groups = self.lock();
        f(groups.entry(group.to_owned()).or_default())
    }

    /// JoinGroup: the classic protocol's, or translated for a consumer group with members
    /// (and then persisted before the answer, as a ConsumerGroupHeartbeat's changes are).
    pub(crate) async fn join(&self, group: &str, join: Join) -> JoinReply {
        let failed = |error, member_id: &str| JoinReply {
            error,
            generation: -1,
            member_id: member_id.to_owned(),
            ..JoinReply::default()
        };
        let (part, epoch) = match self.route(group) {
            Ok(r) => r,
            Err(e) => return failed(e, &join.member_id),
        };
        let member_id = join.member_id.clone();
        let image = self.metadata.image();
        let (limits, settings) = (&self.config.limits, &self.config.consumer);
        let now = Instant::now();
        // The classic protocol's answer, or a consumer group's (to persist first).
        let answer = self.with_group(group, |e| match e.consumer_with_members() {
            Some(c) => (
                Answer::Now(c.classic_join(&join, &self.visible(&image), settings, limits, now)),
                true,
            ),
            None => {
                e.consumer = None;
                (e.group.join(join, limits, now), false)
            }
        });
        match answer {
            (Answer::Now(reply), false) => reply,
            (Answer::Later(rx), _) => rx
                .await
                .unwrap_or_else(|_| failed(code::NOT_COORDINATOR, &member_id)),
            (Answer::Now(reply), true) if reply.error != machine::code::NONE => reply,
            (Answer::Now(reply), true) => match self.persist_consumer(group, part, epoch).await {
                Ok(()) => reply,
                Err(e) => {
                    tracing::warn!(group, error = %e, "persisting the group failed");
                    failed(code::COORDINATOR_NOT_AVAILABLE, &reply.member_id)
                }
            },
        }
    }

    /// LeaveGroup for each of `leaving` (member id, instance id): an error code each, or
    /// `None` if the group does not exist. A consumer group's change is persisted first.
    pub(crate) async fn leave(
        &self,
        group: &str,
        leaving: &[(String, Option<String>)],
    ) -> Option<Vec<i16>> {
        let limits = &self.config.limits;
        let now = Instant::now();
        let (codes, consumer) = self.with_existing(group, |e| {
            let codes = leaving
                .iter()
                .map(|(id, instance)| match e.consumer_with_members() {
                    Some(c) => c.classic_leave(id, instance.as_deref()),
                    None => e.group.leave(id, instance.as_deref(), limits, now),
                })
                .collect::<Vec<i16>>();
            (codes, e.consumer.is_some())
        })?;
        if consumer
            && let Ok((part, epoch)) = self.route(group)
            && let Err(e) = self.persist_consumer(group, part, epoch).await
        {
            tracing::warn!(group, error = %e, "persisting the group failed");
            return Some(vec![code::COORDINATOR_NOT_AVAILABLE; codes.len()]);
        }
        Some(codes)
    }

    /// SyncGroup: the leader's assignments, or a member's wait for them; the answers of a
    /// new generation come once it is persisted (see `machine::Group::persisted`). A classic
    /// member of a consumer group gets what it holds at once.
    pub(crate) fn sync(
        &self,
        group: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> Answer<SyncReply> {
        let now = Instant::now();
        let (answer, persist) = self.with_group(group, |e| {
            if let Some(c) = e.consumer_with_members() {
                let reply = c.classic_sync(member_id, instance_id, generation, now);
                return (Answer::Now(reply), false);
            }
            let answer = e
                .group
                .sync(member_id, instance_id, generation, assignments);
            (answer, e.group.awaits_persist())
        });
        if persist {
            self.persist_now.notify_one();
        }
        answer
    }

    /// Marks `partitions` of `group` as being committed until the guard is dropped.
    pub(crate) fn committing(&self, group: &str, partitions: Vec<(String, i32)>) -> Committing<'_> {
        self.with_group(group, |e| {
            for p in &partitions {
                *e.committing.entry(p.clone()).or_default() += 1;
            }
        });
        Committing {
            coordinator: self,
            group: group.to_owned(),
            partitions,
        }
    }

    /// Runs `f` on the group's entry if it exists.
    pub(crate) fn with_existing<T>(
        &self,
        group: &str,
        f: impl FnOnce(&mut Entry) -> T,
    ) -> Option<T> {
        self.lock().get_mut(group).map(f)
    }

    /// Every group: id, type (`classic` or `consumer`), state and protocol type.
    pub(crate) fn list(&self) -> Vec<Listed> {
        self.lock()
            .iter()
            .map(|(id, e)| match &e.consumer {
                Some(c) => Listed {
                    id: id.clone(),
                    kind: "consumer",
                    state: c.state(),
                    protocol_type: Some("consumer".to_owned()),
                },
                None => Listed {
                    id: id.clone(),
                    kind: "classic",
                    state: e.group.phase().kafka_name(),
                    protocol_type: e.group.protocol_type().map(str::to_owned),
                },
            })
            .collect()
    }

    /// ConsumerGroupHeartbeat: runs it on the group (a new group, or a classic one of
    /// Kafka consumers, becomes a consumer group: see [`consumer::classic`]), persists what
    /// it changed, then answers, so a member acts only on an epoch and assignment that
    /// survive a coordinator failover.
    pub(crate) async fn consumer_heartbeat(
        &self,
        group: &str,
        hb: Heartbeat,
    ) -> Result<HeartbeatReply, Refusal> {
        let (part, epoch) = self.route(group).map_err(|code| Refusal {
            code,
            message: String::new(),
        })?;
        let image = self.metadata.image();
        let settings = &self.config.consumer;
        let reply = self.with_group(group, |e| {
            let existed = e.consumer.is_some();
            let mut c = match e.consumer.take() {
                Some(c) => c,
                None if e.is_empty() => ConsumerGroup::default(),
                // Only a member joining upgrades a classic group, as in Kafka.
                None if hb.member_epoch == 0 => {
                    upgrade(group, &mut e.group, &self.visible(&image), settings)?
                }
                None => {
                    return Err(Refusal {
                        code: code::GROUP_ID_NOT_FOUND,
                        message: format!("group {group} is a classic group"),
                    });
                }
            };
            let reply = c.heartbeat(hb, &self.visible(&image), settings, Instant::now());
            // An upgraded group stays one even if the heartbeat is refused.
            if existed || reply.is_ok() || !c.is_empty() {
                e.consumer = Some(c);
            }
            reply
        })?;
        self.persist_consumer(group, part, epoch)
            .await
            .map_err(|e| Refusal {
                code: code::COORDINATOR_NOT_AVAILABLE,
                message: format!("persisting the group failed: {e}"),
            })?;
        Ok(reply)
    }

    /// Persists the consumer group's state as it is when the write starts, unless that is
    /// already durable. Taken under the partition's write lock, so a newer state is never
    /// followed in the log by an older one.
    async fn persist_consumer(
        &self,
        group: &str,
        part: Arc<Partition>,
        leader_epoch: i32,
    ) -> Result<(), strata_storage::StorageError> {
        let _order = self.write_lock(part.index).await;
        let taken = self.with_existing(group, |e| {
            let c = e.consumer.as_ref().filter(|c| c.dirty())?;
            Some((c.snapshot(), c.version()))
        });
        let Some((snapshot, version)) = taken.flatten() else {
            return Ok(());
        };
        let writes = [Write::ConsumerGroup {
            group: group.to_owned(),
            value: Some(snapshot),
        }];
        let records = store::records(&writes)?;
        statelog::write_records(&part, leader_epoch, &self.lease, records, now_ms(), None).await?;
        self.with_existing(group, |e| {
            if let Some(c) = e.consumer.as_mut() {
                c.persisted(version);
            }
        });
        Ok(())
    }

    /// Every group's committed offsets (for `/metrics`' group lag).
    pub(crate) fn committed(&self) -> Vec<(String, Vec<CommittedOffset>)> {
        self.lock()
            .iter()
            .map(|(id, e)| {
                let offsets = e
                    .offsets
                    .iter()
                    .map(|(tp, c)| (tp.clone(), c.offset))
                    .collect();
                (id.clone(), offsets)
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
        let _order = self.write_lock(self.partition_of(group)).await;
        let records = store::records(&writes)?;
        let end =
            statelog::write_records(&part, leader_epoch, &self.lease, records, now_ms(), None)
                .await?;
        // What a failover's investigation compares with what the next coordinator loads.
        tracing::debug!(group, end, leader_epoch, offsets = ?store::offsets_of(&writes),
            generation = ?writes.iter().find_map(|w| match w {
                Write::Group { value: Some(s), .. } => Some(s.generation),
                _ => None,
            }),
            "group records durable");
        Ok(self.with_group(group, apply))
    }

    /// TxnOffsetCommit: writes `offsets` for `group` in a transactional batch of producer
    /// `producer` (id, epoch), pending until that transaction's marker.
    pub(crate) async fn commit_in_txn(
        &self,
        part: Arc<Partition>,
        leader_epoch: i32,
        group: &str,
        producer: (i64, i16),
        offsets: Vec<((String, i32), Committed)>,
    ) -> Result<(), strata_storage::StorageError> {
        let _order = self.write_lock(part.index).await;
        let writes: Vec<Write> = offsets
            .iter()
            .map(|((topic, partition), c)| Write::Offset {
                group: group.to_owned(),
                topic: topic.clone(),
                partition: *partition,
                value: Some(c.clone()),
            })
            .collect();
        let records = store::records(&writes)?;
        statelog::write_records(
            &part,
            leader_epoch,
            &self.lease,
            records,
            now_ms(),
            Some(producer),
        )
        .await?;
        self.with_group(group, |e| {
            e.pending.entry(producer.0).or_default().extend(offsets);
        });
        Ok(())
    }

    /// Appends a transaction marker to offsets partition `part` (as its leader under
    /// `leader_epoch`) and applies it: the producer's pending offsets in the partition's
    /// groups are committed or dropped.
    pub(crate) async fn write_marker(
        &self,
        part: Arc<Partition>,
        leader_epoch: i32,
        producer: (i64, i16),
        marker: strata_storage::ControlMarker,
    ) -> Result<(), MarkerFailed> {
        let _order = self.write_lock(part.index).await;
        statelog::write_marker(&part, leader_epoch, &self.lease, producer, marker).await?;
        let mut groups = self.lock();
        for (id, e) in groups.iter_mut() {
            if self.partition_of(id) != part.index {
                continue;
            }
            if let Some(offsets) = e.pending.remove(&producer.0)
                && marker.commit
            {
                e.offsets.extend(offsets);
            }
        }
        Ok(())
    }

    async fn write_lock(&self, index: i32) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.write_locks.get(usize::try_from(index).unwrap_or(0)) {
            Some(l) => Some(l.lock().await),
            None => None,
        }
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
                () = self.persist_now.notified() => self.tick().await,
            }
        }
        for e in self.lock().values_mut() {
            e.group.abandon(code::NOT_COORDINATOR);
        }
    }

    async fn ensure_offsets_topic(&self, cancel: &CancellationToken) {
        let topic = InternalTopic {
            name: OFFSETS_TOPIC,
            partitions: self.config.offsets_partitions,
            replication_factor: self.config.offsets_replication_factor,
            expected_brokers: self.config.expected_brokers,
            segment_bytes: self.config.offsets_segment_bytes,
            tiered: self.config.offsets_tiered,
        };
        statelog::ensure_topic(&topic, &self.metadata, &self.controller, cancel).await;
    }

    /// Loads the groups of offsets partitions this broker starts leading and drops those of
    /// partitions it stops leading.
    pub(crate) async fn follow(&self, changes: &[RoleChange]) {
        for change in self.routes.leadership(changes) {
            match change {
                Leadership::Gained(part) => {
                    if let Err(e) = self.load(part).await {
                        tracing::error!(partition = part.index, error = %e,
                            "loading groups failed; they stay unavailable");
                    }
                }
                Leadership::Lost(index) => self.unload(index),
            }
        }
    }

    /// Replays an offsets partition into the groups it holds; a partition already loaded
    /// (a new leader epoch of the same leader) keeps what it has.
    async fn load(&self, part: &Arc<Partition>) -> Result<(), crate::BrokerError> {
        let index = part.index;
        match self.routes.is_loaded(part) {
            Some(true) => return Ok(()),
            // Another partition under this index (the topic was re-created): its groups go.
            Some(false) => self.unload(index),
            None => {}
        }
        let replayed = statelog::replay_partition(part, store::load).await?;
        let replayed_to = replayed.end;
        let now = Instant::now();
        let mut groups = self.lock();
        let count = replayed.groups.len();
        for (id, snapshot) in replayed.groups {
            tracing::debug!(partition = index, group = %id, generation = snapshot.generation,
                members = snapshot.members.len(), "group restored");
            groups.entry(id).or_default().group = Group::restore(snapshot, now);
        }
        for (id, snapshot) in replayed.consumer_groups {
            let e = groups.entry(id).or_default();
            // A group back on the classic protocol may leave its last (empty) consumer
            // snapshot behind; its classic members win. A consumer group with members was
            // upgraded from the classic group snapshot (if any) left behind, so it wins.
            if snapshot.members.is_empty() && !e.group.is_empty() {
                continue;
            }
            if !snapshot.members.is_empty() {
                e.group = Group::default();
            }
            e.consumer = Some(ConsumerGroup::restore(snapshot, now));
        }
        let mut loaded_offsets = Vec::new();
        for (id, offsets) in replayed.offsets {
            loaded_offsets.push((
                id.clone(),
                offsets
                    .iter()
                    .map(|((t, p), c)| (format!("{t}-{p}"), c.offset))
                    .collect::<Vec<_>>(),
            ));
            groups.entry(id).or_default().offsets = offsets;
        }
        for (producer, by_group) in replayed.pending {
            for (id, offsets) in by_group {
                groups
                    .entry(id)
                    .or_default()
                    .pending
                    .insert(producer, offsets);
            }
        }
        drop(groups);
        for (group, offsets) in &loaded_offsets {
            tracing::debug!(
                partition = index,
                group,
                ?offsets,
                "committed offsets loaded"
            );
        }
        self.routes.set_loaded(part);
        // Where the replay ended and the leader epoch it serves: what a failover's
        // investigation compares with the other replicas' ends.
        tracing::info!(
            partition = index,
            groups = count,
            replayed_to,
            end = part.log.log_end_offset(),
            high_watermark = *part.high_watermark.borrow(),
            epoch = ?part.role().leader_epoch(),
            "offsets partition loaded"
        );
        Ok(())
    }

    /// Forgets the groups of an offsets partition this broker no longer leads; their members
    /// are answered NOT_COORDINATOR and find the new coordinator.
    fn unload(&self, index: i32) {
        if !self.routes.unload(index) {
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

    /// The locked part of a tick: advances timers and returns, per group, what to persist.
    fn advance(&self, now: Instant, wall: i64) -> BTreeMap<String, Persist> {
        let retention = self.config.offsets_retention.as_millis() as i64;
        let mut writes: BTreeMap<String, Persist> = BTreeMap::new();
        let image = self.metadata.image();
        let mut groups = self.lock();
        for (id, e) in groups.iter_mut() {
            e.group.tick(&self.config.limits, now);
            if let Some(c) = e.consumer.as_mut() {
                c.tick(&self.visible(&image), &self.config.consumer, now);
            }
            let empty = e.is_empty();
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
                if e.consumer.is_some() {
                    w.push(Write::ConsumerGroup {
                        group: id.clone(),
                        value: None,
                    });
                }
                writes.insert(
                    id.clone(),
                    Persist {
                        writes: w,
                        expire: true,
                        generation: None,
                        consumer: false,
                    },
                );
            } else if e.consumer.as_ref().is_some_and(ConsumerGroup::dirty) {
                writes.insert(
                    id.clone(),
                    Persist {
                        writes: Vec::new(),
                        expire: false,
                        generation: None,
                        consumer: true,
                    },
                );
            } else if matches!(e.group.phase(), Phase::Stable | Phase::Empty)
                && e.group.take_dirty()
            {
                // Mid-rebalance membership is not persisted (as in Kafka): a snapshot holds a
                // generation with its assignments, which a restored group serves.
                let snapshot = e.group.snapshot();
                writes.insert(
                    id.clone(),
                    Persist {
                        generation: Some(snapshot.generation),
                        writes: vec![Write::Group {
                            group: id.clone(),
                            value: Some(snapshot),
                        }],
                        expire: false,
                        consumer: false,
                    },
                );
            }
        }
        writes
    }

    /// Advances every group's timers; persists membership changes; expires the offsets of
    /// groups empty for longer than the retention.
    async fn tick(&self) {
        let writes = self.advance(Instant::now(), now_ms());
        for (id, persist) in writes {
            let Ok((part, epoch)) = self.route(&id) else {
                continue;
            };
            let Persist {
                writes,
                expire,
                generation,
                consumer,
            } = persist;
            if consumer {
                if let Err(e) = self.persist_consumer(&id, part, epoch).await {
                    tracing::error!(group = %id, error = %e, "persisting group state failed; retrying");
                }
                continue;
            }
            let result = self
                .persist_then(part, epoch, &id, writes, |e| {
                    if let Some(g) = generation {
                        e.group.persisted(g);
                    }
                })
                .await;
            match result {
                Ok(()) if expire => {
                    tracing::info!(group = %id, "offsets expired");
                    let mut groups = self.lock();
                    if groups.get(&id).is_some_and(Entry::is_empty) {
                        groups.remove(&id);
                    }
                }
                Ok(()) => {}
                Err(e) => {
                    tracing::error!(group = %id, error = %e, "persisting group state failed; retrying");
                    self.with_group(&id, |e| e.group.mark_dirty());
                }
            }
        }
    }
}
