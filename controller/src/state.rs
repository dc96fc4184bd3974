//! The metadata state machine: applies [`Command`]s to the [`MetadataImage`].
//!
//! Pure and deterministic: no I/O, no clock, no randomness. A refused command leaves the image
//! untouched and does not advance the version; an applied one advances it by exactly one and
//! records a [`MetadataDelta`] so watchers can follow without re-reading the whole image.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::command::{Applied, Command, CommandError, CommandResult, Outcome, PRODUCER_ID_BLOCK};
use crate::model::{
    BrokerId, BrokerRecord, Change, MetadataDelta, MetadataImage, MetadataUpdate, PartitionRecord,
    TopicRecord,
};
use crate::placement::{self, Candidate};
use crate::topic_config::{TopicConfig, topic_config};

/// Longest legal topic name, as in Kafka.
pub const MAX_TOPIC_NAME_LEN: usize = 249;

/// Most partitions a topic may have; bounds what one command can make the controller allocate.
pub const MAX_PARTITIONS: i32 = 100_000;

/// Deltas kept for watchers; one further behind gets the whole image.
const RETAINED_DELTAS: usize = 4096;

/// The image plus the recent deltas that produced it.
#[derive(Clone, Debug, Default)]
pub struct MetadataState {
    image: MetadataImage,
    deltas: VecDeque<MetadataDelta>,
}

/// Checks a topic name against Kafka's rules.
pub fn validate_topic_name(name: &str) -> Result<(), CommandError> {
    let refuse = |reason: &str| {
        Err(CommandError::InvalidTopicName {
            name: name.to_owned(),
            reason: reason.to_owned(),
        })
    };
    if name.is_empty() {
        return refuse("empty");
    }
    if name == "." || name == ".." {
        return refuse("'.' and '..' are not allowed");
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return refuse("longer than 249 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return refuse("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// Kafka refuses names that differ only by '.' versus '_', since both map to the same metric name.
fn collision_key(name: &str) -> String {
    name.replace('.', "_")
}

impl MetadataState {
    /// A state holding `image`, with no retained deltas (after a restart or snapshot install).
    pub fn from_image(image: MetadataImage) -> Self {
        Self {
            image,
            deltas: VecDeque::new(),
        }
    }

    /// The current image.
    pub fn image(&self) -> &MetadataImage {
        &self.image
    }

    /// What a watcher at `from_version` needs to reach the current version: nothing when it is
    /// current, the deltas after it when they are retained, else the whole image.
    pub fn updates_since(&self, from_version: u64) -> Vec<MetadataUpdate> {
        if from_version >= self.image.version {
            return Vec::new();
        }
        match self.deltas.front() {
            Some(first) if first.version <= from_version + 1 => self
                .deltas
                .iter()
                .filter(|d| d.version > from_version)
                .cloned()
                .map(MetadataUpdate::Delta)
                .collect(),
            _ => vec![MetadataUpdate::Image(self.image.clone())],
        }
    }

    /// Applies one command. A refused command changes nothing.
    pub fn apply(&mut self, command: &Command) -> CommandResult {
        let mut changes = Vec::new();
        let outcome = self.execute(command, &mut changes)?;
        if !changes.is_empty() {
            self.image.version += 1;
            if self.deltas.len() == RETAINED_DELTAS {
                self.deltas.pop_front();
            }
            self.deltas.push_back(MetadataDelta {
                version: self.image.version,
                changes,
            });
        }
        Ok(Applied {
            version: self.image.version,
            outcome,
        })
    }

    fn execute(
        &mut self,
        command: &Command,
        changes: &mut Vec<Change>,
    ) -> Result<Outcome, CommandError> {
        match command {
            Command::InitCluster { cluster_id } => {
                if self.image.cluster_id.is_some() {
                    return Ok(Outcome::Unchanged);
                }
                self.image.cluster_id = Some(*cluster_id);
                changes.push(Change::Cluster {
                    cluster_id: *cluster_id,
                });
                Ok(Outcome::ClusterInitialized {
                    cluster_id: *cluster_id,
                })
            }
            Command::RegisterBroker {
                id,
                endpoints,
                rack,
                incarnation,
            } => {
                let epoch = self.image.version + 1;
                let record = BrokerRecord {
                    id: *id,
                    endpoints: endpoints.clone(),
                    rack: rack.clone(),
                    epoch,
                    incarnation: *incarnation,
                    fenced: true,
                };
                // A re-registration is a restart: whatever the old incarnation led is fenced off.
                let was_live = self.image.brokers.get(id).is_some_and(|b| !b.fenced);
                self.image.brokers.insert(*id, record.clone());
                if was_live {
                    self.move_leadership_off(&BTreeSet::from([*id]), changes);
                }
                changes.push(Change::Broker(record));
                Ok(Outcome::BrokerRegistered { epoch })
            }
            Command::UnfenceBroker { id, epoch } => {
                let broker = self.live_broker_epoch(*id, *epoch, false)?;
                if !broker.fenced {
                    return Ok(Outcome::Unchanged);
                }
                broker.fenced = false;
                changes.push(Change::Broker(broker.clone()));
                self.elect_leaderless(changes);
                Ok(Outcome::BrokerUnfenced)
            }
            Command::FenceBrokers { ids } => {
                let mut fenced = BTreeSet::new();
                for id in ids {
                    let broker = self
                        .image
                        .brokers
                        .get_mut(id)
                        .ok_or(CommandError::UnknownBroker { id: *id })?;
                    if !broker.fenced {
                        fenced.insert(*id);
                    }
                }
                for id in &fenced {
                    if let Some(b) = self.image.brokers.get_mut(id) {
                        b.fenced = true;
                        changes.push(Change::Broker(b.clone()));
                    }
                }
                let leader_changes = self.move_leadership_off(&fenced, changes);
                Ok(Outcome::BrokersFenced { leader_changes })
            }
            Command::ShutdownBroker { id, epoch } => {
                let broker = self.live_broker_epoch(*id, *epoch, false)?;
                if broker.fenced {
                    return Ok(Outcome::Unchanged);
                }
                broker.fenced = true;
                changes.push(Change::Broker(broker.clone()));
                let leader_changes = self.move_leadership_off(&BTreeSet::from([*id]), changes);
                Ok(Outcome::BrokersFenced { leader_changes })
            }
            Command::CreateTopic {
                name,
                id,
                partitions,
                replication_factor,
                configs,
                first_leader_epoch,
            } => {
                validate_topic_name(name)?;
                let key = collision_key(name);
                if self.image.topics.keys().any(|t| collision_key(t) == key) {
                    return Err(CommandError::TopicAlreadyExists { name: name.clone() });
                }
                check_partition_count(*partitions)?;
                TopicConfig::parse(configs)?;
                if *first_leader_epoch < 0 {
                    return Err(CommandError::InvalidConfig {
                        key: "first_leader_epoch".into(),
                        value: first_leader_epoch.to_string(),
                        reason: "a leader epoch is never negative".into(),
                    });
                }
                let assignment = self.place(None, 0, *partitions, *replication_factor)?;
                let partitions: Vec<PartitionRecord> = assignment
                    .into_iter()
                    .map(|replicas| PartitionRecord {
                        leader_epoch: *first_leader_epoch,
                        ..new_partition(replicas)
                    })
                    .collect();
                let topic = TopicRecord {
                    name: name.clone(),
                    id: *id,
                    replication_factor: *replication_factor,
                    configs: configs.clone(),
                    partitions: partitions.clone(),
                };
                self.image.topics.insert(name.clone(), topic.clone());
                changes.push(Change::Topic(topic));
                Ok(Outcome::TopicCreated {
                    id: *id,
                    partitions,
                })
            }
            Command::DeleteTopic { name } => {
                let topic = self
                    .image
                    .topics
                    .remove(name)
                    .ok_or_else(|| CommandError::UnknownTopic { name: name.clone() })?;
                changes.push(Change::TopicDeleted {
                    name: name.clone(),
                    id: topic.id,
                });
                Ok(Outcome::TopicDeleted { id: topic.id })
            }
            Command::CreatePartitions { topic, count } => {
                let (current, rf) = {
                    let t = self.topic(topic)?;
                    (t.partitions.len() as i32, t.replication_factor)
                };
                check_partition_count(*count)?;
                if *count <= current {
                    return Err(CommandError::InvalidPartitions {
                        count: *count,
                        reason: format!("topic already has {current} partitions"),
                    });
                }
                let assignment = self.place(Some(topic), current, count - current, rf)?;
                let t = self.topic_mut(topic)?;
                t.partitions
                    .extend(assignment.into_iter().map(new_partition));
                changes.push(Change::Topic(t.clone()));
                Ok(Outcome::PartitionsCreated)
            }
            Command::AlterConfigs {
                topic,
                set,
                delete,
                replace,
            } => {
                if let Some(k) = delete.iter().find(|k| topic_config(k).is_none()) {
                    return Err(CommandError::InvalidConfig {
                        key: k.clone(),
                        value: String::new(),
                        reason: "unknown topic config".to_owned(),
                    });
                }
                let t = self.topic_mut(topic)?;
                let mut configs = if *replace {
                    BTreeMap::new()
                } else {
                    t.configs.clone()
                };
                for k in delete {
                    configs.remove(k);
                }
                for (k, v) in set {
                    configs.insert(k.clone(), v.trim().to_owned());
                }
                // The whole set as brokers will read it, not only the keys changed.
                TopicConfig::parse(&configs)?;
                t.configs = configs;
                changes.push(Change::Topic(t.clone()));
                Ok(Outcome::ConfigsAltered)
            }
            Command::AlterIsr {
                topic,
                partition,
                broker_id,
                broker_epoch,
                leader_epoch,
                partition_epoch,
                isr,
            } => {
                self.live_broker_epoch(*broker_id, *broker_epoch, true)?;
                let live: BTreeSet<BrokerId> = self.live_brokers().map(|b| b.id).collect();
                let p = self.partition_mut(topic, *partition)?;
                if *leader_epoch != p.leader_epoch {
                    return Err(CommandError::StaleLeaderEpoch {
                        topic: topic.clone(),
                        partition: *partition,
                        current: p.leader_epoch,
                        got: *leader_epoch,
                    });
                }
                if p.leader != Some(*broker_id) {
                    return Err(CommandError::NotPartitionLeader {
                        topic: topic.clone(),
                        partition: *partition,
                        broker_id: *broker_id,
                    });
                }
                if *partition_epoch != p.partition_epoch {
                    return Err(CommandError::StalePartitionEpoch {
                        topic: topic.clone(),
                        partition: *partition,
                        current: p.partition_epoch,
                        got: *partition_epoch,
                    });
                }
                let invalid = |reason: String| CommandError::InvalidIsr {
                    topic: topic.clone(),
                    partition: *partition,
                    reason,
                };
                let unique: BTreeSet<BrokerId> = isr.iter().copied().collect();
                if unique.len() != isr.len() {
                    return Err(invalid("duplicate broker".to_owned()));
                }
                if !unique.contains(broker_id) {
                    return Err(invalid("the leader must stay in the ISR".to_owned()));
                }
                if let Some(id) = isr.iter().find(|id| !p.replicas.contains(id)) {
                    return Err(invalid(format!("broker {id} is not a replica")));
                }
                if let Some(id) = isr.iter().find(|id| !live.contains(id)) {
                    return Err(invalid(format!("broker {id} is fenced")));
                }
                p.isr = isr.clone();
                p.partition_epoch += 1;
                // A reassignment waiting for its new replicas completes once they are in sync.
                complete_reassignment(p, &live);
                let partition_record = p.clone();
                let t = self.topic(topic)?.clone();
                changes.push(Change::Topic(t));
                Ok(Outcome::IsrAltered {
                    partition: partition_record,
                })
            }
            Command::CreateAcls { acls } | Command::DeleteAcls { acls } => {
                let before = self.image.acls.clone();
                for acl in acls {
                    match command {
                        Command::CreateAcls { .. } => self.image.acls.insert(acl.clone()),
                        _ => self.image.acls.remove(acl),
                    };
                }
                if self.image.acls != before {
                    changes.push(Change::Acls {
                        acls: self.image.acls.clone(),
                    });
                }
                Ok(Outcome::AclsAltered)
            }
            Command::AlterClientQuotas { entries } => {
                for (entity, ops) in entries {
                    let before = self.image.quotas_of(entity).cloned().unwrap_or_default();
                    let mut values = before.clone();
                    for (name, value) in ops {
                        match value {
                            Some(v) => values.insert(name.clone(), *v),
                            None => values.remove(name),
                        };
                    }
                    if values != before {
                        self.image.set_quotas(entity, values.clone());
                        changes.push(Change::ClientQuota {
                            entity: entity.clone(),
                            values,
                        });
                    }
                }
                Ok(Outcome::QuotasAltered)
            }
            Command::AlterScramCredentials { upsert, delete } => {
                let mut touched: BTreeMap<&str, ()> = BTreeMap::new();
                for (user, mechanism) in delete {
                    if let Some(creds) = self.image.scram.get_mut(user) {
                        creds.remove(mechanism);
                        touched.insert(user, ());
                    }
                }
                for (user, mechanism, credential) in upsert {
                    self.image
                        .scram
                        .entry(user.clone())
                        .or_default()
                        .insert(mechanism.clone(), credential.clone());
                    touched.insert(user, ());
                }
                for user in touched.into_keys() {
                    let credentials = self.image.scram.get(user).cloned().unwrap_or_default();
                    if credentials.is_empty() {
                        self.image.scram.remove(user);
                    }
                    changes.push(Change::ScramUser {
                        user: user.to_owned(),
                        credentials,
                    });
                }
                Ok(Outcome::ScramAltered)
            }
            Command::AllocateProducerIds {
                broker_id,
                broker_epoch,
            } => {
                self.live_broker_epoch(*broker_id, *broker_epoch, true)?;
                let first = self.image.next_producer_id;
                let next = first
                    .checked_add(i64::from(PRODUCER_ID_BLOCK))
                    .ok_or(CommandError::ProducerIdsExhausted)?;
                self.image.next_producer_id = next;
                changes.push(Change::ProducerIds { next });
                Ok(Outcome::ProducerIds {
                    first,
                    count: PRODUCER_ID_BLOCK,
                })
            }
            Command::ElectLeaders {
                partitions,
                unclean,
            } => {
                let wanted: Option<BTreeSet<(&str, i32)>> = partitions
                    .as_ref()
                    .map(|ps| ps.iter().map(|(t, p)| (t.as_str(), *p)).collect());
                if let Some(ps) = partitions {
                    for (t, p) in ps {
                        self.partition_mut(t, *p)?;
                    }
                }
                let live: BTreeSet<BrokerId> = self.live_brokers().map(|b| b.id).collect();
                let mut elected = Vec::new();
                for t in self.image.topics.values_mut() {
                    let mut touched = false;
                    for (i, p) in t.partitions.iter_mut().enumerate() {
                        let i = i as i32;
                        if wanted
                            .as_ref()
                            .is_some_and(|w| !w.contains(&(t.name.as_str(), i)))
                        {
                            continue;
                        }
                        let eligible = |r: &&BrokerId| p.isr.contains(r) && live.contains(r);
                        // A led partition moves only to its preferred replica (as Kafka's
                        // preferred election); a leaderless one takes any live in-sync one,
                        // or in an unclean election any live one.
                        let preferred = match p.leader {
                            Some(_) if *unclean => None,
                            Some(_) => p.replicas.first().filter(eligible).copied(),
                            None => p.replicas.iter().find(eligible).copied(),
                        };
                        if let Some(leader) = preferred
                            && p.leader != Some(leader)
                        {
                            set_leader(p, Some(leader));
                            elected.push((t.name.clone(), i, leader));
                            touched = true;
                        } else if *unclean
                            && p.leader.is_none()
                            && let Some(leader) = elect_unclean(p, &live, &t.name, i)
                        {
                            elected.push((t.name.clone(), i, leader));
                            touched = true;
                        }
                    }
                    if touched {
                        changes.push(Change::Topic(t.clone()));
                    }
                }
                Ok(Outcome::LeadersElected { elected })
            }
            Command::AlterReassignments { changes: wanted } => {
                let live: BTreeSet<BrokerId> = self.live_brokers().map(|b| b.id).collect();
                let registered: BTreeSet<BrokerId> = self.image.brokers.keys().copied().collect();
                let mut refused = Vec::new();
                let mut touched = BTreeSet::new();
                for (topic, partition, target) in wanted {
                    let invalid = |reason: String| CommandError::InvalidReplicaAssignment {
                        topic: topic.clone(),
                        partition: *partition,
                        reason,
                    };
                    if let Some(target) = target {
                        let unique: BTreeSet<BrokerId> = target.iter().copied().collect();
                        let why = if target.is_empty() {
                            Some("no replicas".to_owned())
                        } else if unique.len() != target.len() {
                            Some("a broker is named twice".to_owned())
                        } else {
                            target
                                .iter()
                                .find(|r| !registered.contains(r))
                                .map(|r| format!("broker {r} is not registered"))
                        };
                        if let Some(why) = why {
                            refused.push((topic.clone(), *partition, invalid(why)));
                            continue;
                        }
                    }
                    let p = match self.partition_mut(topic, *partition) {
                        Ok(p) => p,
                        Err(e) => {
                            refused.push((topic.clone(), *partition, e));
                            continue;
                        }
                    };
                    if !reassign(p, target.as_deref(), &live) {
                        let e = CommandError::NoReassignmentInProgress {
                            topic: topic.clone(),
                            partition: *partition,
                        };
                        refused.push((topic.clone(), *partition, e));
                        continue;
                    }
                    touched.insert(topic.clone());
                }
                for name in touched {
                    changes.push(Change::Topic(self.topic(&name)?.clone()));
                }
                Ok(Outcome::ReassignmentsAltered { refused })
            }
        }
    }

    /// Replicas for partitions `first..first + count` of a new topic or of `existing`.
    fn place(
        &self,
        existing: Option<&str>,
        first: i32,
        count: i32,
        replication_factor: i16,
    ) -> Result<Vec<Vec<BrokerId>>, CommandError> {
        let candidates: Vec<Candidate> = self
            .live_brokers()
            .map(|b| Candidate {
                id: b.id,
                rack: b.rack.clone(),
            })
            .collect();
        let mut load = BTreeMap::new();
        for p in self.image.topics.values().flat_map(|t| &t.partitions) {
            if let Some(l) = p.leader {
                *load.entry(l).or_default() += 1;
            }
        }
        let mut topic_load = BTreeMap::new();
        let existing = existing.and_then(|name| self.image.topics.get(name));
        for p in existing.iter().flat_map(|t| &t.partitions) {
            if let Some(l) = p.leader {
                *topic_load.entry(l).or_default() += 1;
            }
        }
        placement::assign(
            &candidates,
            first,
            count,
            replication_factor,
            &mut topic_load,
            &mut load,
        )
    }

    fn live_brokers(&self) -> impl Iterator<Item = &BrokerRecord> {
        self.image.brokers.values().filter(|b| !b.fenced)
    }

    /// The broker, checked to be registered under `epoch` and, with `require_unfenced`, live.
    fn live_broker_epoch(
        &mut self,
        id: BrokerId,
        epoch: u64,
        require_unfenced: bool,
    ) -> Result<&mut BrokerRecord, CommandError> {
        let broker = self
            .image
            .brokers
            .get_mut(&id)
            .ok_or(CommandError::UnknownBroker { id })?;
        if broker.epoch != epoch {
            return Err(CommandError::StaleBrokerEpoch {
                id,
                current: broker.epoch,
                got: epoch,
            });
        }
        if require_unfenced && broker.fenced {
            return Err(CommandError::BrokerFenced { id });
        }
        Ok(broker)
    }

    fn topic(&self, name: &str) -> Result<&TopicRecord, CommandError> {
        self.image
            .topics
            .get(name)
            .ok_or_else(|| CommandError::UnknownTopic {
                name: name.to_owned(),
            })
    }

    fn topic_mut(&mut self, name: &str) -> Result<&mut TopicRecord, CommandError> {
        self.image
            .topics
            .get_mut(name)
            .ok_or_else(|| CommandError::UnknownTopic {
                name: name.to_owned(),
            })
    }

    fn partition_mut(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<&mut PartitionRecord, CommandError> {
        let t = self.topic_mut(topic)?;
        usize::try_from(partition)
            .ok()
            .and_then(|i| t.partitions.get_mut(i))
            .ok_or_else(|| CommandError::UnknownPartition {
                topic: topic.to_owned(),
                partition,
            })
    }

    /// Takes leadership and ISR membership away from `gone`: each partition they led gets the
    /// first live in-sync replica as leader with a higher epoch, or no leader when none is left
    /// (the last leader then stays the sole ISR member). Returns the leader changes made.
    fn move_leadership_off(
        &mut self,
        gone: &BTreeSet<BrokerId>,
        changes: &mut Vec<Change>,
    ) -> usize {
        if gone.is_empty() {
            return 0;
        }
        let live: BTreeSet<BrokerId> = self.live_brokers().map(|b| b.id).collect();
        let mut leader_changes = 0;
        for t in self.image.topics.values_mut() {
            let mut touched = false;
            let unclean = TopicConfig::lenient(&t.configs).unclean_leader_election;
            for (i, p) in t.partitions.iter_mut().enumerate() {
                if !p.replicas.iter().any(|r| gone.contains(r)) {
                    continue;
                }
                let remaining: Vec<BrokerId> = p
                    .isr
                    .iter()
                    .copied()
                    .filter(|r| !gone.contains(r))
                    .collect();
                let led_by_gone = p.leader.is_some_and(|l| gone.contains(&l));
                if led_by_gone {
                    let next = p
                        .replicas
                        .iter()
                        .copied()
                        .find(|r| remaining.contains(r) && live.contains(r));
                    p.isr = match (next, p.leader) {
                        (Some(_), _) => remaining,
                        // Nobody else is in sync: the last leader stays the only ISR member.
                        (None, Some(last)) => vec![last],
                        (None, None) => std::mem::take(&mut p.isr),
                    };
                    set_leader(p, next);
                    if next.is_none() && unclean {
                        elect_unclean(p, &live, &t.name, i as i32);
                    }
                    leader_changes += 1;
                    touched = true;
                } else if remaining.len() != p.isr.len() && !remaining.is_empty() {
                    p.isr = remaining;
                    p.partition_epoch += 1;
                    touched = true;
                }
            }
            if touched {
                changes.push(Change::Topic(t.clone()));
            }
        }
        leader_changes
    }

    /// Gives a leader to every leaderless partition that has a live in-sync replica (or any
    /// live replica, where its topic allows unclean elections).
    fn elect_leaderless(&mut self, changes: &mut Vec<Change>) {
        let live: BTreeSet<BrokerId> = self.live_brokers().map(|b| b.id).collect();
        for t in self.image.topics.values_mut() {
            let mut touched = false;
            let unclean = TopicConfig::lenient(&t.configs).unclean_leader_election;
            for (i, p) in t.partitions.iter_mut().enumerate() {
                if p.leader.is_some() {
                    continue;
                }
                let next = p
                    .replicas
                    .iter()
                    .copied()
                    .find(|r| p.isr.contains(r) && live.contains(r));
                if next.is_some() {
                    set_leader(p, next);
                    touched = true;
                } else if unclean && elect_unclean(p, &live, &t.name, i as i32).is_some() {
                    touched = true;
                }
            }
            if touched {
                changes.push(Change::Topic(t.clone()));
            }
        }
    }
}

fn check_partition_count(count: i32) -> Result<(), CommandError> {
    if !(1..=MAX_PARTITIONS).contains(&count) {
        return Err(CommandError::InvalidPartitions {
            count,
            reason: format!("must be between 1 and {MAX_PARTITIONS}"),
        });
    }
    Ok(())
}

fn new_partition(replicas: Vec<BrokerId>) -> PartitionRecord {
    PartitionRecord {
        leader: replicas.first().copied(),
        isr: replicas.clone(),
        replicas,
        leader_epoch: 0,
        partition_epoch: 0,
        adding: Vec::new(),
        removing: Vec::new(),
        unclean: false,
    }
}

/// Starts a reassignment of `p` to `target`, or cancels the one in progress (`None`); then
/// completes it at once if it can. False when there is nothing to cancel.
fn reassign(
    p: &mut PartitionRecord,
    target: Option<&[BrokerId]>,
    live: &BTreeSet<BrokerId>,
) -> bool {
    let original = p.original_replicas();
    match target {
        None => {
            if !p.reassigning() {
                return false;
            }
            p.replicas = original;
        }
        Some(target) => {
            let mut replicas = target.to_vec();
            replicas.extend(original.iter().filter(|r| !target.contains(r)));
            p.adding = target
                .iter()
                .copied()
                .filter(|r| !original.contains(r))
                .collect();
            p.removing = original
                .iter()
                .copied()
                .filter(|r| !target.contains(r))
                .collect();
            p.replicas = replicas;
        }
    }
    if target.is_none() {
        p.adding.clear();
        p.removing.clear();
    }
    p.partition_epoch += 1;
    settle_replicas(p, live);
    complete_reassignment(p, live);
    true
}

/// Finishes `p`'s reassignment once every replica of its target is in sync: the partition
/// keeps only those. Returns whether it did.
fn complete_reassignment(p: &mut PartitionRecord, live: &BTreeSet<BrokerId>) -> bool {
    if !p.reassigning() {
        return false;
    }
    let target = p.target_replicas();
    if !target.iter().all(|r| p.isr.contains(r)) {
        return false;
    }
    p.replicas = target;
    p.adding.clear();
    p.removing.clear();
    p.partition_epoch += 1;
    settle_replicas(p, live);
    true
}

/// Keeps the ISR within the replicas, and moves leadership to the first live in-sync replica
/// when the leader is no longer one.
fn settle_replicas(p: &mut PartitionRecord, live: &BTreeSet<BrokerId>) {
    let replicas = p.replicas.clone();
    p.isr.retain(|r| replicas.contains(r));
    if p.leader.is_some_and(|l| !replicas.contains(&l)) {
        let next = replicas
            .iter()
            .copied()
            .find(|r| p.isr.contains(r) && live.contains(r));
        set_leader(p, next);
    }
}

fn set_leader(p: &mut PartitionRecord, leader: Option<BrokerId>) {
    p.leader = leader;
    p.leader_epoch += 1;
    p.partition_epoch += 1;
    p.unclean = false;
}

/// Kafka's unclean election of a leaderless partition with no live in-sync replica: its first
/// live replica leads, alone in the ISR, and is marked `unclean` (it continues from the object
/// store's end when behind it). Logged, as acknowledged records it lacks are gone.
fn elect_unclean(
    p: &mut PartitionRecord,
    live: &BTreeSet<BrokerId>,
    topic: &str,
    partition: i32,
) -> Option<BrokerId> {
    let leader = p.replicas.iter().copied().find(|r| live.contains(r))?;
    tracing::warn!(
        topic, partition, leader, last_isr = ?p.isr,
        "unclean leader election: a replica outside the ISR leads; records only the last \
         in-sync replicas had and the object store lacks are lost"
    );
    set_leader(p, Some(leader));
    p.isr = vec![leader];
    p.unclean = true;
    // Re-homing: a reassignment onto live brokers waits for a leader, and may be complete now.
    complete_reassignment(p, live);
    Some(leader)
}
