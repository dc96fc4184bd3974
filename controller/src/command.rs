//! Commands that change cluster metadata, their outcomes, and the typed reasons a command is
//! refused.
//!
//! Commands are entries of the Raft log: every controller applies the same sequence and must
//! reach the same state, so a command carries everything that is not a function of the state
//! (a new topic's UUID, a broker's incarnation) and applying it reads no clock and no randomness.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::{
    AclBinding, BrokerId, Endpoint, PartitionRecord, QuotaEntity, QuotaValue, ScramCredential,
};

/// A change to cluster metadata, replicated through the Raft log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Sets the cluster id; proposed once by the first leader, ignored once set.
    InitCluster {
        /// The new cluster's id.
        cluster_id: Uuid,
    },
    /// Registers (or re-registers after a restart) a broker. It starts fenced and is unfenced by
    /// its first heartbeat that asks for it.
    RegisterBroker {
        /// Broker id.
        id: BrokerId,
        /// Advertised listeners.
        endpoints: Vec<Endpoint>,
        /// Rack, if any.
        rack: Option<String>,
        /// The registering process's random id.
        incarnation: Uuid,
    },
    /// Unfences a broker whose heartbeat asked for it; it becomes eligible to lead again.
    UnfenceBroker {
        /// Broker id.
        id: BrokerId,
        /// Its registration epoch.
        epoch: u64,
    },
    /// Fences brokers whose lease expired; their partitions get new leaders.
    FenceBrokers {
        /// Brokers to fence.
        ids: Vec<BrokerId>,
    },
    /// A broker about to stop hands back its leadership (Kafka's controlled shutdown): it is
    /// fenced, as if its lease had run out, so its partitions get new leaders from their other
    /// in-sync replicas at once (or none, keeping it as their last leader) instead of one
    /// session timeout later. Its next registration brings it back.
    ShutdownBroker {
        /// Broker id.
        id: BrokerId,
        /// Its registration epoch: an older incarnation cannot fence a newer one.
        epoch: u64,
    },
    /// Creates a topic, placing its replicas over live brokers.
    CreateTopic {
        /// Topic name.
        name: String,
        /// Topic id, chosen by the proposer.
        id: Uuid,
        /// Number of partitions.
        partitions: i32,
        /// Replicas per partition.
        replication_factor: i16,
        /// Topic configs under Kafka's names.
        configs: BTreeMap<String, String>,
        /// The leader epoch every partition starts at (0 for a new topic). A topic re-created
        /// from the object store's catalog starts above the epochs its manifests were
        /// committed with, so its new leaders are not fenced by its own past.
        #[serde(default)]
        first_leader_epoch: i32,
    },
    /// Deletes a topic.
    DeleteTopic {
        /// Topic name.
        name: String,
    },
    /// Grows a topic to `count` partitions.
    CreatePartitions {
        /// Topic name.
        topic: String,
        /// New total number of partitions.
        count: i32,
    },
    /// Changes topic configs: incrementally (set and delete keys) or, with `replace`, setting
    /// exactly the given keys (Kafka's legacy AlterConfigs).
    AlterConfigs {
        /// Topic name.
        topic: String,
        /// Keys to set.
        set: BTreeMap<String, String>,
        /// Keys to return to their defaults.
        delete: Vec<String>,
        /// Whether keys not named in `set` return to their defaults.
        replace: bool,
    },
    /// A partition leader changes its ISR.
    AlterIsr {
        /// Topic name.
        topic: String,
        /// Partition number.
        partition: i32,
        /// The leader asking.
        broker_id: BrokerId,
        /// The leader's registration epoch.
        broker_epoch: u64,
        /// The leader epoch it leads under.
        leader_epoch: i32,
        /// The partition epoch its view is based on.
        partition_epoch: i32,
        /// The new ISR.
        isr: Vec<BrokerId>,
    },
    /// Hands a block of producer ids to a broker.
    AllocateProducerIds {
        /// Broker asking.
        broker_id: BrokerId,
        /// Its registration epoch.
        broker_epoch: u64,
    },
    /// Moves leadership to each partition's preferred replica (its first) where that is live
    /// and in sync, and elects a leader for leaderless partitions that have a live in-sync
    /// replica.
    ElectLeaders {
        /// Partitions to consider; `None` means all.
        partitions: Option<Vec<(String, i32)>>,
        /// Kafka's unclean election: a leaderless partition with no live in-sync replica takes
        /// its first live replica, in sync or not (an operator's explicit choice: acknowledged
        /// records the new leader lacks are gone, except what the object store holds).
        #[serde(default)]
        unclean: bool,
    },
    /// Moves partitions to new replica sets (KIP-455): each `(topic, partition, target)`
    /// starts a reassignment to `target` (replacing one in progress), or with `None` cancels
    /// the one in progress. The new replicas join as followers; once every replica of the
    /// target is in sync the partition keeps only those, and leadership moves to the first of
    /// them if its leader is leaving. Each partition succeeds or fails on its own.
    AlterReassignments {
        /// `(topic, partition, target replicas or None to cancel)`.
        changes: Vec<(String, i32, Option<Vec<BrokerId>>)>,
    },
    /// Adds ACLs (CreateAcls); ones already there change nothing.
    CreateAcls {
        /// The ACLs.
        acls: Vec<AclBinding>,
    },
    /// Removes these ACLs (the broker matched DeleteAcls' filters); ones not there change
    /// nothing.
    DeleteAcls {
        /// The ACLs.
        acls: Vec<AclBinding>,
    },
    /// Sets and removes client quotas (AlterClientQuotas); the broker has checked the
    /// entities, names and values.
    AlterClientQuotas {
        /// Per entity, `(quota name, value)` to set, or with `None` to remove.
        entries: Vec<(QuotaEntity, QuotaOps)>,
    },
    /// Sets and removes users' SCRAM credentials (AlterUserScramCredentials); the broker has
    /// checked them. Removing one that is not there changes nothing.
    AlterScramCredentials {
        /// `(user, mechanism, credential)` to set.
        upsert: Vec<(String, String, ScramCredential)>,
        /// `(user, mechanism)` to remove.
        delete: Vec<(String, String)>,
    },
}

/// Changes to one entity's quotas: `(quota name, value)` to set, or with `None` to remove.
pub type QuotaOps = Vec<(String, Option<QuotaValue>)>;

/// Number of producer ids in one block.
pub const PRODUCER_ID_BLOCK: i32 = 1000;

/// What an applied command did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Nothing changed (a Raft membership or blank entry, or a repeated `InitCluster`).
    Unchanged,
    /// The cluster id was set.
    ClusterInitialized {
        /// The id.
        cluster_id: Uuid,
    },
    /// The broker is registered under this epoch.
    BrokerRegistered {
        /// Its registration epoch.
        epoch: u64,
    },
    /// The broker is unfenced.
    BrokerUnfenced,
    /// The brokers are fenced.
    BrokersFenced {
        /// Partitions that got a new leader or lost theirs.
        leader_changes: usize,
    },
    /// The topic exists with these partitions.
    TopicCreated {
        /// Topic id.
        id: Uuid,
        /// Its partitions.
        partitions: Vec<PartitionRecord>,
    },
    /// The topic is gone.
    TopicDeleted {
        /// Its id.
        id: Uuid,
    },
    /// The topic has the requested number of partitions.
    PartitionsCreated,
    /// The topic's configs changed.
    ConfigsAltered,
    /// The partition after the ISR change.
    IsrAltered {
        /// The partition record.
        partition: PartitionRecord,
    },
    /// A block of producer ids.
    ProducerIds {
        /// First id of the block.
        first: i64,
        /// Ids in the block.
        count: i32,
    },
    /// Reassignments started, replaced or cancelled; the partitions listed were refused.
    ReassignmentsAltered {
        /// `(topic, partition, why)` of each refused change.
        refused: Vec<(String, i32, CommandError)>,
    },
    /// SCRAM credentials were set and removed.
    ScramAltered,
    /// ACLs were added or removed.
    AclsAltered,
    /// Client quotas were set or removed.
    QuotasAltered,
    /// Partitions whose leader changed, with the new leader.
    LeadersElected {
        /// `(topic, partition, leader)`.
        elected: Vec<(String, i32, BrokerId)>,
    },
}

/// A command the state machine applied, and the metadata version after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Metadata version after the command.
    pub version: u64,
    /// What it did.
    pub outcome: Outcome,
}

/// The result every log entry produces: applied, or refused with the state unchanged.
pub type CommandResult = Result<Applied, CommandError>;

/// Why a command was refused. Each maps to a Kafka error code at the broker's edge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CommandError {
    /// The topic name breaks Kafka's rules.
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopicName {
        /// The name.
        name: String,
        /// Which rule.
        reason: String,
    },
    /// A topic with this name (or one that collides with it) exists.
    #[error("topic {name:?} already exists")]
    TopicAlreadyExists {
        /// The name.
        name: String,
    },
    /// No topic with this name.
    #[error("unknown topic {name:?}")]
    UnknownTopic {
        /// The name.
        name: String,
    },
    /// No such partition.
    #[error("unknown partition {topic}-{partition}")]
    UnknownPartition {
        /// Topic name.
        topic: String,
        /// Partition number.
        partition: i32,
    },
    /// The partition count is out of range.
    #[error("invalid partition count {count}: {reason}")]
    InvalidPartitions {
        /// The requested count.
        count: i32,
        /// Why it is refused.
        reason: String,
    },
    /// The replication factor is below 1 or above the limit.
    #[error("invalid replication factor {replication_factor}")]
    InvalidReplicationFactor {
        /// The requested factor.
        replication_factor: i16,
    },
    /// Fewer live brokers than the replication factor.
    #[error("replication factor {required} needs {required} live brokers, {available} available")]
    InsufficientBrokers {
        /// Brokers needed.
        required: usize,
        /// Live, unfenced brokers.
        available: usize,
    },
    /// A topic config key is unknown or its value is invalid.
    #[error("invalid config {key}={value:?}: {reason}")]
    InvalidConfig {
        /// Config name.
        key: String,
        /// Offered value.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// The broker id is not registered.
    #[error("unknown broker {id}")]
    UnknownBroker {
        /// Broker id.
        id: BrokerId,
    },
    /// The request carries an old registration epoch: it comes from a previous incarnation.
    #[error("stale broker epoch {got} for broker {id}, current {current}")]
    StaleBrokerEpoch {
        /// Broker id.
        id: BrokerId,
        /// Current registration epoch.
        current: u64,
        /// Epoch in the request.
        got: u64,
    },
    /// The broker is fenced.
    #[error("broker {id} is fenced")]
    BrokerFenced {
        /// Broker id.
        id: BrokerId,
    },
    /// The broker does not lead the partition.
    #[error("broker {broker_id} is not the leader of {topic}-{partition}")]
    NotPartitionLeader {
        /// Topic name.
        topic: String,
        /// Partition number.
        partition: i32,
        /// The broker asking.
        broker_id: BrokerId,
    },
    /// The request is based on an older leader epoch.
    #[error("stale leader epoch {got} for {topic}-{partition}, current {current}")]
    StaleLeaderEpoch {
        /// Topic name.
        topic: String,
        /// Partition number.
        partition: i32,
        /// Current leader epoch.
        current: i32,
        /// Epoch in the request.
        got: i32,
    },
    /// The request is based on an older partition epoch (it lost a race with another change).
    #[error("stale partition epoch {got} for {topic}-{partition}, current {current}")]
    StalePartitionEpoch {
        /// Topic name.
        topic: String,
        /// Partition number.
        partition: i32,
        /// Current partition epoch.
        current: i32,
        /// Epoch in the request.
        got: i32,
    },
    /// The proposed ISR is not acceptable.
    #[error("invalid ISR for {topic}-{partition}: {reason}")]
    InvalidIsr {
        /// Topic name.
        topic: String,
        /// Partition number.
        partition: i32,
        /// Why.
        reason: String,
    },
    /// The producer-id space is exhausted.
    #[error("producer ids exhausted")]
    ProducerIdsExhausted,
    /// A reassignment's target replicas are not acceptable.
    #[error("invalid replicas for {topic}-{partition}: {reason}")]
    InvalidReplicaAssignment {
        /// Topic name.
        topic: String,
        /// Partition number.
        partition: i32,
        /// Why.
        reason: String,
    },
    /// A cancellation found no reassignment in progress.
    #[error("no reassignment of {topic}-{partition} is in progress")]
    NoReassignmentInProgress {
        /// Topic name.
        topic: String,
        /// Partition number.
        partition: i32,
    },
}
