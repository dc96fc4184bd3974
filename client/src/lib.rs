//! strata-client: an async Kafka-protocol client library on the `kafka-protocol` crate, used
//! by `stratactl` and by tests (and meant for the broker's follower fetching). It holds no
//! CLI concerns: those live in `cli`, behind the default `cli` feature.
//!
//! Connections with pipelined requests and ApiVersions negotiation ([`conn`]), cluster
//! metadata and topic administration (here), single-batch produce, fetch and ListOffsets
//! ([`data`]), a batching, compressing [`producer`], a [`consumer`] with pipelined fetches,
//! and consumer-group administration ([`groups`]).

pub mod acls;
#[cfg(feature = "cli")]
pub mod cli;
pub mod conn;
pub mod consumer;
pub mod data;
pub mod groups;
pub mod logdirs;
pub mod producer;
pub mod quotas;
pub mod scram;
pub mod security;
pub mod tiering;
pub mod transactions;
pub mod users;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, CreateTopicsRequest, DeleteTopicsRequest,
    DescribeConfigsRequest, ElectLeadersRequest, ListPartitionReassignmentsRequest,
    MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::{Request, StrBytes};
use thiserror::Error;

pub use conn::Connection;
pub use data::{FetchedRecord, NewRecord};

/// What can go wrong talking to a broker. Each names the cause and, where one exists, what
/// to do.
#[derive(Debug, Error)]
pub enum ClientError {
    /// No bootstrap broker accepted a connection.
    #[error("cannot reach {addr}: {source} (is a broker listening there? check --bootstrap)")]
    Unreachable {
        /// The address tried.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The connection broke or the broker answered out of order.
    #[error("connection lost: {0}")]
    Closed(String),
    /// No answer in time; the connection was given up.
    #[error("{what}: no answer within {after:?} (is the broker overloaded or cut off?)")]
    TimedOut {
        /// What was waiting: the broker and the request.
        what: String,
        /// The timeout.
        after: std::time::Duration,
    },
    /// The broker does not offer an API, or no version both sides speak.
    #[error("{api} is not supported: {reason}")]
    Unsupported {
        /// The API.
        api: String,
        /// Why.
        reason: String,
    },
    /// A request could not be encoded.
    #[error("encoding a request: {0}")]
    Encode(String),
    /// A response could not be decoded.
    #[error("malformed response: {0}")]
    Decode(String),
    /// The broker answered with a Kafka error code.
    #[error("{what}: {}", describe_code(*code))]
    Broker {
        /// What was asked.
        what: String,
        /// The Kafka error code.
        code: i16,
    },
    /// A produced record was not delivered (shared by every record of its batch).
    #[error(transparent)]
    Delivery(Arc<ClientError>),
    /// The topic does not exist.
    #[error("topic {0:?} does not exist (list topics with `stratactl topic list`)")]
    UnknownTopic(String),
    /// What was asked does not apply to what the cluster holds (the text says why).
    #[error("{0}")]
    NotApplicable(String),
    /// The TLS handshake or SASL authentication failed.
    #[error("authenticating to {broker}: {reason}")]
    Authentication {
        /// The broker.
        broker: String,
        /// What it said, or what went wrong.
        reason: String,
    },
}

/// A Kafka error code as its name and meaning.
pub fn describe_code(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        Some(e) => format!("{e:?} ({e})"),
        None => format!("error code {code}"),
    }
}

/// A request the broker refused, for `what`, with its code and message.
pub(crate) fn refused(what: &str, code: i16, message: Option<StrBytes>) -> ClientError {
    ClientError::NotApplicable(format!(
        "{what}: {}{}",
        describe_code(code),
        message
            .map(|m| format!(": {}", m.as_str()))
            .unwrap_or_default()
    ))
}

fn check(what: impl Into<String>, code: i16) -> Result<(), ClientError> {
    if code == 0 {
        Ok(())
    } else {
        Err(ClientError::Broker {
            what: what.into(),
            code,
        })
    }
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

/// A broker in the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerInfo {
    /// Its id.
    pub id: i32,
    /// Where clients reach it.
    pub host: String,
    /// Its Kafka port.
    pub port: i32,
    /// Its rack, when it has one.
    pub rack: Option<String>,
}

/// A partition's placement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Its index.
    pub partition: i32,
    /// The leader's id (-1: none).
    pub leader: i32,
    /// The leader epoch.
    pub leader_epoch: i32,
    /// Replica ids.
    pub replicas: Vec<i32>,
    /// In-sync replica ids.
    pub isr: Vec<i32>,
}

/// A partition reassignment in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reassignment {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// Its replicas now (the target's and the leaving ones).
    pub replicas: Vec<i32>,
    /// Replicas being added.
    pub adding: Vec<i32>,
    /// Replicas being removed.
    pub removing: Vec<i32>,
}

/// A topic as Metadata reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicInfo {
    /// Its name.
    pub name: String,
    /// Its id.
    pub id: String,
    /// Internal topics (`__consumer_offsets`).
    pub internal: bool,
    /// Its partitions, by index.
    pub partitions: Vec<PartitionInfo>,
}

/// A topic config entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigEntry {
    /// The key, Kafka's name.
    pub name: String,
    /// The value (`None` for sensitive values).
    pub value: Option<String>,
    /// Set on the topic, not inherited.
    pub explicit: bool,
}

/// A client of one cluster: a connection to some broker for metadata and admin (the first
/// bootstrap address that answered, replaced by another broker when it closes), and a
/// connection per partition leader for data.
#[derive(Debug)]
pub struct Client {
    conn: std::sync::Mutex<Arc<Connection>>,
    /// The bootstrap list, for finding the cluster again.
    bootstrap: String,
    /// Connections by broker id.
    brokers: tokio::sync::Mutex<HashMap<i32, Arc<Connection>>>,
    /// Leader id of each partition, by topic; dropped when a call to it fails.
    leaders: std::sync::Mutex<HashMap<String, Vec<i32>>>,
    /// Broker addresses by id, from the latest Metadata.
    addresses: std::sync::Mutex<HashMap<i32, String>>,
    /// How long connecting and each request may take.
    timeout: std::time::Duration,
    /// TLS and SASL of every connection.
    security: security::Security,
}

impl Client {
    /// Connects to the first of `bootstrap` (comma-separated `host:port`s) that answers.
    pub async fn connect(bootstrap: &str) -> Result<Self, ClientError> {
        Self::connect_with_timeout(bootstrap, conn::DEFAULT_REQUEST_TIMEOUT).await
    }

    /// Like [`connect`](Self::connect), with every connection's requests (and connecting)
    /// answered within `timeout` or failed with [`ClientError::TimedOut`].
    pub async fn connect_with_timeout(
        bootstrap: &str,
        timeout: std::time::Duration,
    ) -> Result<Self, ClientError> {
        Self::connect_secured(bootstrap, timeout, security::Security::default()).await
    }

    /// Like [`connect_with_timeout`](Self::connect_with_timeout), every connection secured
    /// as `security` says (TLS, SASL).
    pub async fn connect_secured(
        bootstrap: &str,
        timeout: std::time::Duration,
        security: security::Security,
    ) -> Result<Self, ClientError> {
        let mut last = None;
        for addr in bootstrap
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            match Connection::connect_secured(addr, "strata-client", timeout, &security).await {
                Ok(conn) => {
                    return Ok(Self {
                        conn: std::sync::Mutex::new(Arc::new(conn)),
                        bootstrap: bootstrap.to_owned(),
                        brokers: tokio::sync::Mutex::default(),
                        leaders: std::sync::Mutex::default(),
                        addresses: std::sync::Mutex::default(),
                        timeout,
                        security,
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Unreachable {
            addr: bootstrap.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address given"),
        }))
    }

    /// The connection (for requests this client has no helper for yet).
    pub fn connection(&self) -> Arc<Connection> {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A live connection for cluster-wide requests: the current one, or (when its broker went
    /// away) a new one to any broker the metadata named or the bootstrap list gives, as Kafka
    /// clients re-bootstrap.
    pub(crate) async fn any_conn(&self) -> Result<Arc<Connection>, ClientError> {
        let current = self.connection();
        if !current.is_closed() {
            return Ok(current);
        }
        self.rebootstrap(current.addr()).await
    }

    /// Sends a request that reads (and so may be repeated) for the whole cluster; when the
    /// broker behind the connection went away under it (before this client noticed), once
    /// more to another broker.
    async fn cluster_read<R: Request>(&self, req: &R) -> Result<R::Response, ClientError> {
        let conn = self.any_conn().await?;
        match conn.send(req).await {
            Err(ClientError::Closed(_) | ClientError::TimedOut { .. }) => {
                self.rebootstrap(conn.addr()).await?.send(req).await
            }
            r => r,
        }
    }

    /// A new cluster-wide connection to any broker but `gone`: one the metadata named, or
    /// from the bootstrap list.
    async fn rebootstrap(&self, gone: &str) -> Result<Arc<Connection>, ClientError> {
        let mut candidates: Vec<String> = self
            .addresses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        candidates.extend(
            self.bootstrap
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_owned),
        );
        let mut last = None;
        for addr in candidates.into_iter().filter(|a| a != gone) {
            match Connection::connect_secured(&addr, "strata-client", self.timeout, &self.security)
                .await
            {
                Ok(conn) => {
                    let conn = Arc::new(conn);
                    *self
                        .conn
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = conn.clone();
                    return Ok(conn);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Unreachable {
            addr: self.bootstrap.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotConnected, "no broker answers"),
        }))
    }

    /// How many partitions `topic` has.
    pub async fn partition_count(&self, topic: &str) -> Result<i32, ClientError> {
        Ok(self.leaders_of(topic).await?.len() as i32)
    }

    /// The leader id of each of `topic`'s partitions (-1: none), cached.
    pub(crate) async fn leaders_of(&self, topic: &str) -> Result<Vec<i32>, ClientError> {
        if let Some(l) = self
            .leaders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(topic)
        {
            return Ok(l.clone());
        }
        let (m, info) = self.topic_metadata(topic).await?;
        let leaders: Vec<i32> = info.partitions.iter().map(|p| p.leader).collect();
        let mut known = self.brokers.lock().await;
        // The cluster-wide connection serves the broker it reached.
        let conn = self.connection();
        for b in &m.brokers {
            if format!("{}:{}", b.host, b.port) == conn.addr() {
                known.entry(b.node_id.0).or_insert_with(|| conn.clone());
            }
        }
        drop(known);
        self.addresses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(
                m.brokers
                    .iter()
                    .map(|b| (b.node_id.0, format!("{}:{}", b.host, b.port))),
            );
        self.leaders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(topic.to_owned(), leaders.clone());
        Ok(leaders)
    }

    /// The connection to the leader of `topic`/`partition`.
    pub(crate) async fn leader(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Arc<Connection>, ClientError> {
        let id = self.leader_id(topic, partition).await?;
        self.broker(id).await
    }

    /// The id of the broker leading `topic`/`partition`.
    pub(crate) async fn leader_id(&self, topic: &str, partition: i32) -> Result<i32, ClientError> {
        let leaders = self.leaders_of(topic).await?;
        leaders
            .get(usize::try_from(partition).unwrap_or(usize::MAX))
            .copied()
            .ok_or_else(|| ClientError::Broker {
                what: format!(
                    "{topic} has {} partitions, not {}",
                    leaders.len(),
                    partition + 1
                ),
                code: ResponseError::UnknownTopicOrPartition.code(),
            })
    }

    /// The connection to broker `id`, by the address the latest Metadata gave.
    pub(crate) async fn broker(&self, id: i32) -> Result<Arc<Connection>, ClientError> {
        let mut conns = self.brokers.lock().await;
        if let Some(c) = conns.get(&id).filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let addr = self
            .addresses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
            .cloned()
            .ok_or_else(|| ClientError::Broker {
                what: format!("broker {id} is not in the cluster metadata; retry shortly"),
                code: ResponseError::LeaderNotAvailable.code(),
            })?;
        let c = Connection::connect_secured(&addr, "strata-client", self.timeout, &self.security);
        let c = Arc::new(c.await?);
        conns.insert(id, c.clone());
        Ok(c)
    }

    /// The connection to broker `id` at `addr` (from a response naming it).
    pub(crate) async fn node(&self, id: i32, addr: &str) -> Result<Arc<Connection>, ClientError> {
        self.addresses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, addr.to_owned());
        self.broker(id).await
    }

    /// Forgets what is known of `topic`'s leaders (after a failed call).
    pub(crate) fn forget(&self, topic: &str) {
        self.leaders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(topic);
    }

    /// Metadata of one topic: the whole response (for the brokers) and the topic's part.
    async fn topic_metadata(
        &self,
        topic: &str,
    ) -> Result<(MetadataResponse, TopicInfo), ClientError> {
        let m = self.metadata(Some(&[topic])).await?;
        let t = m
            .topics
            .first()
            .ok_or_else(|| ClientError::UnknownTopic(topic.to_owned()))?;
        if t.error_code == ResponseError::UnknownTopicOrPartition.code() {
            return Err(ClientError::UnknownTopic(topic.to_owned()));
        }
        check(format!("metadata of {topic}"), t.error_code)?;
        let info = topic_info(t);
        Ok((m, info))
    }

    async fn metadata(&self, topics: Option<&[&str]>) -> Result<MetadataResponse, ClientError> {
        let req = MetadataRequest::default()
            .with_allow_auto_topic_creation(false)
            .with_topics(topics.map(|ts| {
                ts.iter()
                    .map(|t| MetadataRequestTopic::default().with_name(Some(name(t))))
                    .collect()
            }));
        self.cluster_read(&req).await
    }

    /// The brokers and the controller's id.
    pub async fn cluster(&self) -> Result<(Vec<BrokerInfo>, i32), ClientError> {
        let m = self.metadata(Some(&[])).await?;
        let brokers = m
            .brokers
            .iter()
            .map(|b| BrokerInfo {
                id: b.node_id.0,
                host: b.host.to_string(),
                port: b.port,
                rack: b.rack.as_ref().map(|r| r.to_string()),
            })
            .collect();
        Ok((brokers, m.controller_id.0))
    }

    /// Every topic (internal ones included), sorted by name.
    pub async fn topics(&self) -> Result<Vec<TopicInfo>, ClientError> {
        let m = self.metadata(None).await?;
        let mut out = Vec::with_capacity(m.topics.len());
        for t in &m.topics {
            let n = t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
            check(format!("metadata of {n}"), t.error_code)?;
            out.push(topic_info(t));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// One topic's placement and its configs.
    pub async fn describe_topic(
        &self,
        topic: &str,
    ) -> Result<(TopicInfo, Vec<ConfigEntry>), ClientError> {
        let (_, info) = self.topic_metadata(topic).await?;
        let req = DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_string(topic.to_owned()))
                // Null asks for every key (the codec's default is an empty list: none).
                .with_configuration_keys(None),
        ]);
        let resp = self.cluster_read(&req).await?;
        let r = resp
            .results
            .first()
            .ok_or_else(|| ClientError::Decode("DescribeConfigs answered nothing".into()))?;
        check(format!("configs of {topic}"), r.error_code)?;
        let configs = r
            .configs
            .iter()
            .map(|c| ConfigEntry {
                name: c.name.to_string(),
                value: c.value.as_ref().map(ToString::to_string),
                explicit: c.config_source == 1,
            })
            .collect();
        Ok((info, configs))
    }

    /// Creates a topic; `partitions` / `replication` of -1 take the broker's defaults.
    pub async fn create_topic(
        &self,
        topic: &str,
        partitions: i32,
        replication: i16,
        configs: &BTreeMap<String, String>,
    ) -> Result<(), ClientError> {
        let req = CreateTopicsRequest::default()
            .with_timeout_ms(30_000)
            .with_topics(vec![
                CreatableTopic::default()
                    .with_name(name(topic))
                    .with_num_partitions(partitions)
                    .with_replication_factor(replication)
                    .with_configs(
                        configs
                            .iter()
                            .map(|(k, v)| {
                                CreatableTopicConfig::default()
                                    .with_name(StrBytes::from_string(k.clone()))
                                    .with_value(Some(StrBytes::from_string(v.clone())))
                            })
                            .collect(),
                    ),
            ]);
        let resp = self.any_conn().await?.send(&req).await?;
        let t = resp
            .topics
            .first()
            .ok_or_else(|| ClientError::Decode("CreateTopics answered nothing".into()))?;
        if t.error_code != 0 {
            let detail = t.error_message.as_ref().map(ToString::to_string);
            return Err(ClientError::Broker {
                what: match detail {
                    Some(m) if !m.is_empty() => format!("creating {topic}: {m}"),
                    _ => format!("creating {topic}"),
                },
                code: t.error_code,
            });
        }
        Ok(())
    }

    /// Sets configs of `topic` and removes others (back to the broker's defaults), in one
    /// IncrementalAlterConfigs call.
    pub async fn alter_topic_config(
        &self,
        topic: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<(), ClientError> {
        use kafka_protocol::messages::IncrementalAlterConfigsRequest;
        use kafka_protocol::messages::incremental_alter_configs_request::{
            AlterConfigsResource, AlterableConfig,
        };
        let configs = set
            .iter()
            .map(|(k, v)| (k, 0, Some(StrBytes::from_string(v.clone()))))
            .chain(remove.iter().map(|k| (k, 1, None)))
            .map(|(k, op, value)| {
                AlterableConfig::default()
                    .with_name(StrBytes::from_string(k.clone()))
                    .with_config_operation(op)
                    .with_value(value)
            })
            .collect();
        let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_string(topic.to_owned()))
                .with_configs(configs),
        ]);
        let resp = self.any_conn().await?.send(&req).await?;
        let r = resp.responses.first().ok_or_else(|| {
            ClientError::Decode("IncrementalAlterConfigs answered nothing".into())
        })?;
        if r.error_code == ResponseError::UnknownTopicOrPartition.code() {
            return Err(ClientError::UnknownTopic(topic.to_owned()));
        }
        let what = match r.error_message.as_ref().filter(|m| !m.is_empty()) {
            Some(m) => format!("altering configs of {topic}: {m}"),
            None => format!("altering configs of {topic}"),
        };
        check(what, r.error_code)
    }

    /// Deletes a topic.
    pub async fn delete_topic(&self, topic: &str) -> Result<(), ClientError> {
        let req = DeleteTopicsRequest::default().with_timeout_ms(30_000);
        // v6 names topics in `topics` (by name or id), older versions in `topic_names`.
        let req = if self.connection().version_for::<DeleteTopicsRequest>()? >= 6 {
            req.with_topics(vec![
                DeleteTopicState::default().with_name(Some(name(topic))),
            ])
        } else {
            req.with_topic_names(vec![name(topic)])
        };
        let resp = self.any_conn().await?.send(&req).await?;
        let r = resp
            .responses
            .first()
            .ok_or_else(|| ClientError::Decode("DeleteTopics answered nothing".into()))?;
        if r.error_code == ResponseError::UnknownTopicOrPartition.code() {
            return Err(ClientError::UnknownTopic(topic.to_owned()));
        }
        check(format!("deleting {topic}"), r.error_code)
    }

    /// Starts (`Some(replicas)`) or cancels (`None`) reassignments of partitions
    /// (AlterPartitionReassignments); returns each partition's error code and message.
    pub async fn reassign_partitions(
        &self,
        changes: &[(String, i32, Option<Vec<i32>>)],
    ) -> Result<Vec<(String, i32, i16, Option<String>)>, ClientError> {
        use kafka_protocol::messages::BrokerId;
        use kafka_protocol::messages::alter_partition_reassignments_request::{
            ReassignablePartition, ReassignableTopic,
        };
        let mut by_topic: BTreeMap<&str, Vec<ReassignablePartition>> = BTreeMap::new();
        for (t, p, replicas) in changes {
            by_topic.entry(t).or_default().push(
                ReassignablePartition::default()
                    .with_partition_index(*p)
                    .with_replicas(
                        replicas
                            .as_ref()
                            .map(|r| r.iter().map(|b| BrokerId(*b)).collect()),
                    ),
            );
        }
        let topics = by_topic
            .into_iter()
            .map(|(t, partitions)| {
                ReassignableTopic::default()
                    .with_name(name(t))
                    .with_partitions(partitions)
            })
            .collect();
        let req = AlterPartitionReassignmentsRequest::default()
            .with_timeout_ms(30_000)
            .with_allow_replication_factor_change(true)
            .with_topics(topics);
        let resp = self.any_conn().await?.send(&req).await?;
        check("reassigning partitions".to_owned(), resp.error_code)?;
        Ok(resp
            .responses
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(|p| {
                    let message = p.error_message.as_ref().map(|m| m.to_string());
                    (
                        t.name.0.to_string(),
                        p.partition_index,
                        p.error_code,
                        message,
                    )
                })
            })
            .collect())
    }

    /// Reassignments in progress: `(topic, partition, replicas, adding, removing)`.
    pub async fn list_reassignments(&self) -> Result<Vec<Reassignment>, ClientError> {
        let req = ListPartitionReassignmentsRequest::default().with_timeout_ms(30_000);
        let resp = self.any_conn().await?.send(&req).await?;
        check("listing reassignments".to_owned(), resp.error_code)?;
        let ids = |v: &[kafka_protocol::messages::BrokerId]| v.iter().map(|b| b.0).collect();
        Ok(resp
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(|p| Reassignment {
                    topic: t.name.0.to_string(),
                    partition: p.partition_index,
                    replicas: ids(&p.replicas),
                    adding: ids(&p.adding_replicas),
                    removing: ids(&p.removing_replicas),
                })
            })
            .collect())
    }

    /// Moves leadership back to preferred replicas (ElectLeaders, preferred): of `partitions`,
    /// or of every partition when `None`. Returns each partition answered with its error code
    /// (0: elected; ELECTION_NOT_NEEDED and PREFERRED_LEADER_NOT_AVAILABLE say why not).
    pub async fn elect_preferred_leaders(
        &self,
        partitions: Option<&[(String, i32)]>,
    ) -> Result<Vec<(String, i32, i16)>, ClientError> {
        self.elect_leaders(partitions, false).await
    }

    /// ElectLeaders of `partitions` (every partition when `None`): preferred, or with
    /// `unclean` Kafka's unclean election, which gives a leaderless partition a live replica
    /// from outside its ISR (acknowledged records it lacks, and the object store lacks, are
    /// lost). Returns each partition answered with its error code.
    pub async fn elect_leaders(
        &self,
        partitions: Option<&[(String, i32)]>,
        unclean: bool,
    ) -> Result<Vec<(String, i32, i16)>, ClientError> {
        use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
        let named = partitions.map(|ps| {
            let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
            for (t, p) in ps {
                by_topic.entry(t).or_default().push(*p);
            }
            by_topic
                .into_iter()
                .map(|(t, ps)| {
                    TopicPartitions::default()
                        .with_topic(name(t))
                        .with_partitions(ps)
                })
                .collect()
        });
        let req = ElectLeadersRequest::default()
            .with_election_type(i8::from(unclean))
            .with_timeout_ms(30_000)
            .with_topic_partitions(named);
        let resp = self.any_conn().await?.send(&req).await?;
        check("electing leaders".to_owned(), resp.error_code)?;
        Ok(resp
            .replica_election_results
            .iter()
            .flat_map(|t| {
                t.partition_result
                    .iter()
                    .map(|p| (t.topic.0.to_string(), p.partition_id, p.error_code))
            })
            .collect())
    }
}

fn topic_info(t: &kafka_protocol::messages::metadata_response::MetadataResponseTopic) -> TopicInfo {
    let mut partitions: Vec<PartitionInfo> = t
        .partitions
        .iter()
        .map(|p| PartitionInfo {
            partition: p.partition_index,
            leader: p.leader_id.0,
            leader_epoch: p.leader_epoch,
            replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
            isr: p.isr_nodes.iter().map(|b| b.0).collect(),
        })
        .collect();
    partitions.sort_by_key(|p| p.partition);
    TopicInfo {
        name: t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default(),
        id: t.topic_id.to_string(),
        internal: t.is_internal,
        partitions,
    }
}
