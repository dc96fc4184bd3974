//! The cluster metadata image: what the controller replicates and what brokers act on.
//!
//! These are plain data types. [`crate::state::MetadataState`] changes them by applying
//! commands; brokers keep a copy current by applying [`MetadataDelta`]s from the watch stream.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A broker id, as Kafka's wire protocol carries it (`int32`).
pub type BrokerId = i32;

/// A controller's id in the Raft quorum.
pub type NodeId = u64;

/// One listener a broker serves clients on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Listener name, e.g. `PLAINTEXT`.
    pub listener: String,
    /// Advertised host.
    pub host: String,
    /// Advertised port.
    pub port: u16,
}

/// A registered broker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRecord {
    /// Broker id.
    pub id: BrokerId,
    /// Advertised listeners.
    pub endpoints: Vec<Endpoint>,
    /// Rack, when the operator set one; placement spreads replicas over racks.
    pub rack: Option<String>,
    /// Registration epoch: the metadata version of the broker's latest registration. Requests
    /// carrying an older epoch come from a previous incarnation and are refused.
    pub epoch: u64,
    /// Random id of the broker process that registered, so a restart is told from a duplicate.
    pub incarnation: Uuid,
    /// A fenced broker leads nothing and is not eligible for new replicas or the ISR.
    pub fenced: bool,
}

/// One partition's replica set and leadership.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    /// Replicas in preference order; the first is the preferred leader.
    pub replicas: Vec<BrokerId>,
    /// In-sync replicas. When every replica is fenced the last leader stays here, so it (and
    /// only it) can lead again without losing acknowledged data.
    pub isr: Vec<BrokerId>,
    /// Current leader, `None` when no in-sync replica is live.
    pub leader: Option<BrokerId>,
    /// Increases with every leader change; fences requests from an older leader.
    pub leader_epoch: i32,
    /// Increases with every change to this record; guards ISR updates against lost races.
    pub partition_epoch: i32,
    /// Replicas a reassignment in progress adds (KIP-455); they are in `replicas` too, and the
    /// reassignment completes once every replica of its target is in sync.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adding: Vec<BrokerId>,
    /// Replicas a reassignment in progress removes once it completes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removing: Vec<BrokerId>,
    /// The leader was elected from outside the ISR (an unclean election): it may lack
    /// acknowledged records, and continues from the object store's end when its log is
    /// behind it. Cleared by the next leader change.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unclean: bool,
}

impl PartitionRecord {
    /// Whether a reassignment is in progress.
    pub fn reassigning(&self) -> bool {
        !self.adding.is_empty() || !self.removing.is_empty()
    }

    /// The replica set a reassignment in progress moves to (the replicas when none is).
    pub fn target_replicas(&self) -> Vec<BrokerId> {
        let removing = &self.removing;
        self.replicas
            .iter()
            .copied()
            .filter(|r| !removing.contains(r))
            .collect()
    }

    /// The replica set before the reassignment in progress (the replicas when none is).
    pub fn original_replicas(&self) -> Vec<BrokerId> {
        let adding = &self.adding;
        self.replicas
            .iter()
            .copied()
            .filter(|r| !adding.contains(r))
            .collect()
    }
}

/// A topic with its partitions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    /// Topic name.
    pub name: String,
    /// Topic id; data in object storage is keyed by it, so a re-created name never mixes data.
    pub id: Uuid,
    /// Replicas per partition.
    pub replication_factor: i16,
    /// Topic configs that differ from the defaults, under Kafka's names.
    pub configs: BTreeMap<String, String>,
    /// Partitions, indexed by partition number.
    pub partitions: Vec<PartitionRecord>,
}

/// The whole cluster metadata at one version.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataImage {
    /// Increases by one with every change.
    pub version: u64,
    /// Set once, by the first leader of a new quorum.
    pub cluster_id: Option<Uuid>,
    /// Registered brokers by id.
    pub brokers: BTreeMap<BrokerId, BrokerRecord>,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicRecord>,
    /// First producer id of the next block handed out.
    pub next_producer_id: i64,
    /// SCRAM credentials: user → mechanism (`SCRAM-SHA-256`, `SCRAM-SHA-512`) → credential.
    #[serde(default)]
    pub scram: BTreeMap<String, BTreeMap<String, ScramCredential>>,
    /// Access control lists.
    #[serde(default)]
    pub acls: BTreeSet<AclBinding>,
    /// Client quotas, one entry per entity that has any, ordered by entity.
    #[serde(default)]
    pub quotas: Vec<ClientQuota>,
}

/// What a client quota applies to (Kafka's ClientQuotaEntity): entity type (`user`,
/// `client-id`, `ip`) → name, where `None` is that type's default. Valid shapes are `user`,
/// `client-id`, `user` with `client-id`, and `ip`; the broker checks them.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QuotaEntity(pub BTreeMap<String, Option<String>>);

/// A quota's bound: bytes per second, percent of a thread, connections per second.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct QuotaValue(pub f64);

// Quotas are positive finite numbers (the broker refuses others), for which `==` is an
// equivalence.
impl Eq for QuotaValue {}

/// The quotas set on one entity, by Kafka's quota names (`producer_byte_rate`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientQuota {
    /// The entity.
    pub entity: QuotaEntity,
    /// Its quotas.
    pub values: BTreeMap<String, QuotaValue>,
}

/// One ACL (Kafka's AclBinding), with Kafka's numeric codes for the resource type, pattern
/// type, operation and permission.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AclBinding {
    /// Topic 2, group 3, cluster 4, transactional id 5.
    pub resource_type: i8,
    /// The resource's name (`*`: every one), or a prefix.
    pub resource_name: String,
    /// Literal 3 or prefixed 4.
    pub pattern_type: i8,
    /// `User:alice`, or `User:*`.
    pub principal: String,
    /// A client address, or `*`.
    pub host: String,
    /// Kafka's operation code (All 2, Read 3, Write 4, ...).
    pub operation: i8,
    /// Deny 2 or allow 3.
    pub permission: i8,
}

/// What verifies a user's SCRAM password without holding it (RFC 5802): the salt and
/// iteration count the client derives its salted password with, and the keys derived from
/// that salted password.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramCredential {
    /// Salt.
    pub salt: Vec<u8>,
    /// H(HMAC(SaltedPassword, "Client Key")).
    pub stored_key: Vec<u8>,
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: Vec<u8>,
    /// Iterations of the salted password's derivation.
    pub iterations: i32,
}

impl MetadataImage {
    /// The topic with this id, if any.
    pub fn topic_by_id(&self, id: Uuid) -> Option<&TopicRecord> {
        self.topics.values().find(|t| t.id == id)
    }

    /// The quotas set on `entity`, if any.
    pub fn quotas_of(&self, entity: &QuotaEntity) -> Option<&BTreeMap<String, QuotaValue>> {
        self.quotas
            .binary_search_by(|q| q.entity.cmp(entity))
            .ok()
            .map(|i| &self.quotas[i].values)
    }

    /// Replaces `entity`'s quotas with `values` (none: the entity is dropped).
    pub fn set_quotas(&mut self, entity: &QuotaEntity, values: BTreeMap<String, QuotaValue>) {
        match (
            self.quotas.binary_search_by(|q| q.entity.cmp(entity)),
            values.is_empty(),
        ) {
            (Ok(i), true) => {
                self.quotas.remove(i);
            }
            (Ok(i), false) => self.quotas[i].values = values,
            (Err(_), true) => {}
            (Err(i), false) => self.quotas.insert(
                i,
                ClientQuota {
                    entity: entity.clone(),
                    values,
                },
            ),
        }
    }

    /// Brings the image to `delta.version` by applying one delta from the watch stream.
    pub fn apply_delta(&mut self, delta: &MetadataDelta) {
        for change in &delta.changes {
            match change {
                Change::Cluster { cluster_id } => self.cluster_id = Some(*cluster_id),
                Change::Broker(b) => {
                    self.brokers.insert(b.id, b.clone());
                }
                Change::Topic(t) => {
                    self.topics.insert(t.name.clone(), t.clone());
                }
                Change::TopicDeleted { name, .. } => {
                    self.topics.remove(name);
                }
                Change::ProducerIds { next } => self.next_producer_id = *next,
                Change::Acls { acls } => self.acls = acls.clone(),
                Change::ClientQuota { entity, values } => self.set_quotas(entity, values.clone()),
                Change::ScramUser { user, credentials } => match credentials.is_empty() {
                    true => {
                        self.scram.remove(user);
                    }
                    false => {
                        self.scram.insert(user.clone(), credentials.clone());
                    }
                },
            }
        }
        self.version = delta.version;
    }
}

/// One changed entity, carried whole so a delta is applied by replacement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// The cluster id was set.
    Cluster {
        /// The new cluster id.
        cluster_id: Uuid,
    },
    /// A broker was registered, fenced or unfenced.
    Broker(BrokerRecord),
    /// A topic was created or changed (partitions, leaders, ISR, configs).
    Topic(TopicRecord),
    /// A topic was deleted.
    TopicDeleted {
        /// Its name.
        name: String,
        /// Its id.
        id: Uuid,
    },
    /// A producer-id block was handed out.
    ProducerIds {
        /// The next unallocated producer id.
        next: i64,
    },
    /// The ACLs changed; all of them, as they are now.
    Acls {
        /// Every ACL.
        acls: BTreeSet<AclBinding>,
    },
    /// An entity's client quotas changed; all of them, as they are now (none: removed).
    ClientQuota {
        /// The entity.
        entity: QuotaEntity,
        /// Its quotas.
        values: BTreeMap<String, QuotaValue>,
    },
    /// A user's SCRAM credentials changed; none left means the user is gone.
    ScramUser {
        /// User name.
        user: String,
        /// Its credentials by mechanism.
        credentials: BTreeMap<String, ScramCredential>,
    },
}

/// The changes one command made, taking the image from `version - 1` to `version`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataDelta {
    /// Version after the change.
    pub version: u64,
    /// The entities it changed.
    pub changes: Vec<Change>,
}

/// What the watch stream sends: the whole image when the watcher is too far behind for the
/// retained deltas, then deltas in version order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataUpdate {
    /// Replace the local image with this one.
    Image(MetadataImage),
    /// Apply this delta to an image at `version - 1`.
    Delta(MetadataDelta),
}

/// The controller's answer to a broker heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// Whether the broker is fenced (it must not lead anything).
    pub fenced: bool,
    /// The metadata version at the controller.
    pub metadata_version: u64,
}
