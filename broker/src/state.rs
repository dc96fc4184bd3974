//! What a broker knows and holds, for the request handlers: the metadata image it follows,
//! the partitions it hosts, the group coordinator, tiering and admission. Nothing below the
//! handlers imports it; each of those parts is given what it needs when it is made.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use strata_controller::model::{PartitionRecord, TopicRecord};
use strata_controller::{ControllerClient, MetadataImage, MetadataUpdate};

use crate::admission::Admission;
use crate::config::BrokerConfig;
use crate::group::machine::Limits;
use crate::group::{Coordinator, GroupConfig};
use crate::lease::Lease;
use crate::metadata::MetadataView;
use crate::partition::Partition;
use crate::partition::registry::Partitions;
use crate::peers::Peers;
use crate::tiering::Tiering;
use crate::txn::{TxnConfig, TxnCoordinator};

/// The broker's shared state.
#[derive(Debug)]
pub(crate) struct BrokerState {
    pub(crate) config: BrokerConfig,
    pub(crate) id: i32,
    /// Registration epoch from the controller.
    pub(crate) epoch: AtomicU64,
    /// Set when shutdown begins: heartbeats stop asking to be unfenced.
    pub(crate) stopping: std::sync::atomic::AtomicBool,
    pub(crate) controller: Arc<ControllerClient>,
    /// The newest metadata version the controller leader reported in a heartbeat answer: the
    /// watch stream is stale while the applied image stays behind it.
    pub(crate) leader_version: AtomicU64,
    /// How long this broker may take writes as a leader without an answered heartbeat.
    pub(crate) lease: Arc<Lease>,
    pub(crate) metadata: Arc<MetadataView>,
    pub(crate) partitions: Arc<Partitions>,
    /// The unused part of the producer-id block from the controller: `next..end`.
    pub(crate) producer_ids: tokio::sync::Mutex<(i64, i64)>,
    /// The consumer group coordinator.
    pub(crate) groups: Arc<Coordinator>,
    /// The transaction coordinator.
    pub(crate) txns: Arc<TxnCoordinator>,
    /// Connections to the other brokers.
    pub(crate) peers: Peers,
    /// The object store and remote read path.
    pub(crate) tiering: Arc<Tiering>,
    /// Connection and memory limits.
    pub(crate) admission: Arc<Admission>,
    /// What this broker may hold: connections, partitions, open files.
    pub(crate) budget: crate::budget::Budget,
    /// The log cleaner of compacted topics.
    pub(crate) cleaner: Arc<crate::cleaner::Cleaner>,
    /// Counters and histograms for `/metrics`.
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// Whether the Kafka listener accepts connections.
    pub(crate) serving: std::sync::atomic::AtomicBool,
    /// Client telemetry subscriptions and pushed values (KIP-714).
    pub(crate) telemetry: crate::telemetry::Telemetry,
    /// Clients' and IPs' usage against their quotas.
    pub(crate) quotas: crate::quota::Quotas,
    /// OAUTHBEARER's token validation, when that mechanism is enabled.
    pub(crate) jwt: Option<Arc<crate::security::oauth::Jwt>>,
}

impl BrokerState {
    /// The replication factor of a topic created without one (see
    /// [`crate::topic::default_replication_factor`]).
    pub(crate) fn default_replication_factor(&self) -> i16 {
        crate::topic::default_replication_factor(
            self.config.topics.default_replication_factor,
            &self.image(),
        )
    }

    pub(crate) fn new(
        config: BrokerConfig,
        controller: ControllerClient,
        tiering: Arc<Tiering>,
        (admission, budget): (Admission, crate::budget::Budget),
        metrics: Arc<crate::metrics::Metrics>,
        (jwt, link): (Option<Arc<crate::security::oauth::Jwt>>, crate::peers::Link),
    ) -> Self {
        let controller = Arc::new(controller);
        let lease = Arc::new(Lease::new(Duration::from_millis(
            config.controller.session_timeout_ms,
        )));
        let metadata = Arc::new(MetadataView::default());
        let partitions = Arc::new(
            Partitions::new(
                config.node_id,
                config.log_dir(),
                tiering.store().clone(),
                tiering.prefix().clone(),
            )
            .with_limit(budget.partitions),
        );
        let g = &config.groups;
        // A quorum of n voters is taken to serve at least n brokers (so a cluster of three
        // brokers beside three controllers waits for the third before giving the internal
        // topics fewer copies).
        let expected_brokers = match config.controller.mode {
            crate::config::ControllerMode::Embedded => 1,
            _ => config.controller.voters.len(),
        };
        let groups = Arc::new(Coordinator::new(
            GroupConfig {
                limits: Limits {
                    min_session: Duration::from_millis(g.min_session_timeout_ms),
                    max_session: Duration::from_millis(g.max_session_timeout_ms),
                    initial_rebalance_delay: Duration::from_millis(g.initial_rebalance_delay_ms),
                    max_size: g.max_size,
                },
                consumer: crate::group::consumer::Settings {
                    session_timeout: Duration::from_millis(g.consumer_session_timeout_ms),
                    heartbeat_interval: Duration::from_millis(g.consumer_heartbeat_interval_ms),
                    assignors: g.consumer_assignors.clone(),
                    max_size: g.max_size,
                },
                offsets_partitions: g.offsets_topic_partitions,
                offsets_retention: Duration::from_secs(g.offsets_retention_minutes * 60),
                offsets_replication_factor: config.topics.default_replication_factor,
                expected_brokers,
                offsets_segment_bytes: g.offsets_topic_segment_bytes,
                offsets_tiered: config.object_store.tier_internal_topics,
                authorization: config.kafka.authorization.clone(),
            },
            config.node_id,
            metadata.clone(),
            controller.clone(),
            lease.clone(),
        ));
        let t = &config.transactions;
        let txns = Arc::new(TxnCoordinator::new(
            TxnConfig {
                state_partitions: t.state_topic_partitions,
                replication_factor: config.topics.default_replication_factor,
                expected_brokers,
                max_timeout_ms: i32::try_from(t.max_timeout_ms).unwrap_or(i32::MAX),
                id_expiration: Duration::from_millis(t.id_expiration_ms),
                segment_bytes: t.state_topic_segment_bytes,
                tiered: config.object_store.tier_internal_topics,
            },
            config.node_id,
            metadata.clone(),
            controller.clone(),
            lease.clone(),
        ));
        let cleaner = Arc::new(crate::cleaner::Cleaner::new(
            partitions.clone(),
            tiering.clone(),
            config.cleaner.clone(),
        ));
        Self {
            cleaner,
            groups,
            txns,
            telemetry: crate::telemetry::Telemetry::new(config.telemetry.clone()),
            quotas: crate::quota::Quotas::default(),
            jwt,
            peers: Peers::new(config.node_id, metadata.clone(), link),
            id: config.node_id,
            config,
            epoch: AtomicU64::new(0),
            stopping: std::sync::atomic::AtomicBool::new(false),
            controller,
            leader_version: AtomicU64::new(0),
            lease,
            metadata,
            partitions,
            producer_ids: tokio::sync::Mutex::new((0, 0)),
            tiering,
            admission: Arc::new(admission),
            budget,
            metrics,
            serving: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether the Kafka listener accepts connections.
    pub(crate) fn serving(&self) -> bool {
        self.serving.load(Ordering::SeqCst)
    }

    /// The current metadata image.
    pub(crate) fn image(&self) -> Arc<MetadataImage> {
        self.metadata.image()
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// The hosted partition, if any.
    pub(crate) fn partition(&self, topic_id: uuid::Uuid, index: i32) -> Option<Arc<Partition>> {
        self.partitions.get(topic_id, index)
    }

    /// See [`Partitions::led`].
    pub(crate) fn led_partition<'t>(
        &self,
        topic: &'t TopicRecord,
        index: i32,
        current_leader_epoch: i32,
    ) -> Result<(Arc<Partition>, &'t PartitionRecord), ResponseError> {
        self.partitions.led(topic, index, current_leader_epoch)
    }

    /// Waits until the local image reaches `version` (or `timeout` passes).
    pub(crate) async fn wait_for_version(&self, version: u64, timeout: Duration) -> bool {
        self.metadata.wait_for_version(version, timeout).await
    }

    /// Applies updates from the controller's watch stream: opens, closes and re-roles the
    /// hosted partitions (publishing the role changes), then makes the image current.
    /// Blocking: run it off the async threads.
    pub(crate) fn apply_updates(&self, updates: Vec<MetadataUpdate>) {
        let mut image = (*self.image()).clone();
        for u in updates {
            match u {
                MetadataUpdate::Image(i) => image = i,
                MetadataUpdate::Delta(d) => image.apply_delta(&d),
            }
        }
        self.partitions.apply(&image);
        self.metadata.publish(image);
    }
}
