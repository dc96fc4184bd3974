//! ApiVersions, Metadata, DescribeCluster, CreateTopics and InitProducerId (with the
//! producer-id block taken from the controller), and the helpers the other admin handlers
//! share: submitting a controller command and waiting for it locally, dry runs, topic creation.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::{
    ApiVersion, FinalizedFeatureKey, SupportedFeatureKey,
};
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, CreateTopicsRequest, CreateTopicsResponse, DescribeClusterRequest,
    DescribeClusterResponse, InitProducerIdRequest, InitProducerIdResponse, MetadataRequest,
    MetadataResponse, ProducerId,
};
use kafka_protocol::protocol::StrBytes;
use strata_controller::model::TopicRecord;
use strata_controller::state::MetadataState;
use strata_controller::{Applied, Command, MetadataImage, Outcome};
use uuid::Uuid;

use super::{broker_id, str_bytes, topic_name};
use crate::protocol::{Frame, FrameError, SUPPORTED, command_error_code};
use crate::security::acl::{self, Resource};
use crate::state::BrokerState;

/// How long a topic change waits to reach this broker's metadata before answering.
const PROPAGATION_WAIT: Duration = Duration::from_secs(10);

/// How long CreateTopics waits for its new partitions to read their manifests.
const NEW_PARTITION_WAIT: Duration = Duration::from_secs(2);

pub(super) fn api_versions(frame: &Frame) -> Result<Bytes, FrameError> {
    let api_keys = SUPPORTED
        .iter()
        .map(|(k, min, max)| {
            ApiVersion::default()
                .with_api_key(*k as i16)
                .with_min_version(*min)
                .with_max_version(*max)
        })
        .collect();
    let (min, max) = crate::protocol::supported(ApiKey::ApiVersions).unwrap_or((0, 0));
    if !(min..=max).contains(&frame.version) {
        // Kafka's rule: answer an unknown ApiVersions version with a v0 response carrying
        // UNSUPPORTED_VERSION and the ranges, so the client can pick a version it shares.
        let v0 = Frame::new(
            frame.api,
            0,
            frame.header.clone(),
            Bytes::new(),
            frame.session.clone(),
        );
        return v0.respond(
            &ApiVersionsResponse::default()
                .with_error_code(ResponseError::UnsupportedVersion.code())
                .with_api_keys(api_keys),
        );
    }
    // Transaction version 2 (KIP-890 part 2): clients that gate it on the finalized feature
    // (the Java client from Kafka 4.0) then bump the epoch at every end and leave adding
    // partitions to the leaders.
    let feature = kafka_protocol::protocol::StrBytes::from_static_str("transaction.version");
    frame.respond(
        &ApiVersionsResponse::default()
            .with_api_keys(api_keys)
            .with_supported_features(vec![
                SupportedFeatureKey::default()
                    .with_name(feature.clone())
                    .with_min_version(0)
                    .with_max_version(2),
            ])
            .with_finalized_features_epoch(1)
            .with_finalized_features(vec![
                FinalizedFeatureKey::default()
                    .with_name(feature)
                    .with_min_version_level(2)
                    .with_max_version_level(2),
            ]),
    )
}

pub(super) use crate::topic::is_internal;

/// Refuses what a client may not ask for: more than one copy of a partition (replication is
/// not built yet, and accepting a factor nobody replicates would promise what is not kept),
/// and changes to internal topics (Kafka refuses these too; its tools say why). Config
/// changes of internal topics other than `cleanup.policy` stay allowed, as in Kafka.
fn refuse_client_command(command: &Command) -> Result<(), (ResponseError, String)> {
    let refused = |topic: &str, what: &str| {
        Err((
            ResponseError::TopicAuthorizationFailed,
            format!("{topic} is an internal topic: clients may not {what} it"),
        ))
    };
    match command {
        Command::CreateTopic { name, .. } if is_internal(name) => Err((
            ResponseError::InvalidRequest,
            format!("{name} is an internal topic; the broker creates it"),
        )),
        Command::DeleteTopic { name } if is_internal(name) => refused(name, "delete"),
        Command::CreatePartitions { topic, .. } if is_internal(topic) => {
            refused(topic, "add partitions to")
        }
        Command::AlterConfigs {
            topic,
            set,
            delete,
            replace,
        } if is_internal(topic)
            && match set.get("cleanup.policy") {
                Some(policy) => policy != "compact",
                None => *replace || delete.iter().any(|k| k == "cleanup.policy"),
            } =>
        {
            Err((
                ResponseError::InvalidConfig,
                format!("the cleanup.policy of internal topic {topic} cannot be changed"),
            ))
        }
        _ => Ok(()),
    }
}

/// Refuses new partitions past what each broker may host (`budget`) times the live brokers:
/// every hosted partition keeps its active segment's file open and some memory, so a topic of
/// a hundred thousand partitions would take the descriptors every connection and log needs.
fn within_partition_budget(
    state: &BrokerState,
    command: &Command,
) -> Result<(), (ResponseError, String)> {
    let (added, rf) = match command {
        Command::CreateTopic {
            partitions,
            replication_factor,
            ..
        } => (i64::from(*partitions), i64::from(*replication_factor)),
        Command::CreatePartitions { topic, count } => {
            let image = state.image();
            let Some(t) = image.topics.get(topic) else {
                return Ok(());
            };
            let current = t.partitions.len() as i64;
            (i64::from(*count) - current, i64::from(t.replication_factor))
        }
        _ => return Ok(()),
    };
    let Some(per_broker) = state.budget.partitions else {
        return Ok(());
    };
    let image = state.image();
    let brokers = image.brokers.values().filter(|b| !b.fenced).count().max(1) as i64;
    let held: i64 = image
        .topics
        .values()
        .flat_map(|t| &t.partitions)
        .map(|p| p.replicas.len() as i64)
        .sum();
    let wanted = held + added.max(0) * rf.max(1);
    let budget = per_broker as i64 * brokers;
    if wanted > budget {
        return Err((
            ResponseError::PolicyViolation,
            format!(
                "the cluster would hold {wanted} partition replicas, over {brokers} live \
                 brokers times the partitions each may host: topics.max_partitions_per_broker \
                 = {}",
                state.budget.partitions_from
            ),
        ));
    }
    Ok(())
}

/// Proposes a client's `command` and waits until this broker's metadata reflects it.
pub(super) async fn submit_and_wait(
    state: &BrokerState,
    command: &Command,
) -> Result<Applied, (ResponseError, String)> {
    refuse_client_command(command)?;
    within_partition_budget(state, command)?;
    match state.controller.submit(command).await {
        Ok(Ok(applied)) => {
            if !state
                .wait_for_version(applied.version, PROPAGATION_WAIT)
                .await
            {
                return Err((
                    ResponseError::RequestTimedOut,
                    "applied but not yet visible on this broker".into(),
                ));
            }
            Ok(applied)
        }
        Ok(Err(e)) => Err((command_error_code(&e), e.to_string())),
        Err(e) => Err((ResponseError::RequestTimedOut, e.to_string())),
    }
}

/// Checks `command` against this broker's copy of the metadata without proposing it
/// (`validate_only`).
pub(super) fn dry_run(
    state: &BrokerState,
    command: &Command,
) -> Result<Applied, (ResponseError, String)> {
    refuse_client_command(command)?;
    within_partition_budget(state, command)?;
    MetadataState::from_image((*state.image()).clone())
        .apply(command)
        .map_err(|e| (command_error_code(&e), e.to_string()))
}

/// Creates a topic through the controller and waits until this broker's metadata has it.
pub(super) async fn create_topic(
    state: &BrokerState,
    command: Command,
) -> Result<Uuid, (ResponseError, String)> {
    let applied = submit_and_wait(state, &command).await?;
    match applied.outcome {
        Outcome::TopicCreated { id, partitions } => {
            // A healthy store answers at once: let the new partitions read their manifests
            // (a re-created id may have data) so the first produce need not wait. A slow
            // store only delays appends, never the answer, beyond this.
            let deadline = tokio::time::Instant::now() + NEW_PARTITION_WAIT;
            for index in 0..partitions.len() as i32 {
                if let Some(part) = state.partition(id, index) {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    part.remote.recovered_within(left).await;
                }
            }
            Ok(id)
        }
        _ => Err((
            ResponseError::UnknownServerError,
            "unexpected outcome".into(),
        )),
    }
}

fn new_topic_command(state: &BrokerState, name: &str) -> Command {
    Command::CreateTopic {
        name: name.to_owned(),
        id: Uuid::new_v4(),
        partitions: state.config.topics.default_partitions,
        replication_factor: state.default_replication_factor(),
        configs: BTreeMap::new(),
        first_leader_epoch: 0,
    }
}

pub(super) async fn metadata(state: &Arc<BrokerState>, frame: &Frame) -> Result<Bytes, FrameError> {
    let req: MetadataRequest = frame.decode()?;
    let mut image = state.image();
    // Names asked for (None = all topics). v10+ may name topics by id instead.
    let wanted: Option<Vec<(Option<String>, Uuid)>> = req.topics.as_ref().map(|ts| {
        ts.iter()
            .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id))
            .collect()
    });
    // v4+ carries allow_auto_topic_creation; earlier versions always allow it.
    let allow_auto = frame.version < 4 || req.allow_auto_topic_creation;
    let mut creation_errors: BTreeMap<String, ResponseError> = BTreeMap::new();
    if let Some(wanted) = &wanted
        && allow_auto
        && state.config.topics.auto_create
    {
        for name in wanted.iter().filter_map(|(n, _)| n.as_deref()) {
            if image.topics.contains_key(name) {
                continue;
            }
            // Auto-creation needs CREATE on the cluster or the topic, as CreateTopics does.
            if !may_create(state, frame, name) {
                creation_errors.insert(name.to_owned(), ResponseError::TopicAuthorizationFailed);
                continue;
            }
            match create_topic(state, new_topic_command(state, name)).await {
                Ok(_) | Err((ResponseError::TopicAlreadyExists, _)) => {}
                Err((code, msg)) => {
                    tracing::info!(topic = name, error = %msg, "auto-create failed");
                    creation_errors.insert(name.to_owned(), code);
                }
            }
        }
        image = state.image();
    }
    // Topics the principal may not DESCRIBE are left out of an all-topics answer, and
    // named ones answer TOPIC_AUTHORIZATION_FAILED (Kafka's rules).
    let described =
        |name: &str| super::allowed(state, frame, acl::code::DESCRIBE, Resource::Topic(name));
    let topics: Vec<MetadataResponseTopic> = match &wanted {
        None => image
            .topics
            .values()
            .filter(|t| described(&t.name))
            .map(|t| topic_metadata(&image, t))
            .collect(),
        Some(wanted) => wanted
            .iter()
            .map(|(name, id)| {
                let found = match name {
                    Some(n) => image.topics.get(n),
                    None => image.topic_by_id(*id),
                };
                let refused = match (found, name) {
                    (Some(t), _) => !described(&t.name),
                    (None, Some(n)) => {
                        !described(n)
                            || creation_errors.get(n)
                                == Some(&ResponseError::TopicAuthorizationFailed)
                    }
                    (None, None) => false,
                };
                match found {
                    _ if refused => MetadataResponseTopic::default()
                        .with_error_code(ResponseError::TopicAuthorizationFailed.code())
                        .with_name(name.as_deref().map(topic_name))
                        .with_topic_id(*id),
                    Some(t) => topic_metadata(&image, t),
                    None => {
                        let code = name
                            .as_ref()
                            .and_then(|n| creation_errors.get(n))
                            .copied()
                            .unwrap_or(ResponseError::UnknownTopicOrPartition);
                        let code = if code == ResponseError::InvalidTopicException {
                            code
                        } else {
                            ResponseError::UnknownTopicOrPartition
                        };
                        MetadataResponseTopic::default()
                            .with_error_code(code.code())
                            .with_name(name.as_deref().map(topic_name))
                            .with_topic_id(*id)
                    }
                }
            })
            .collect(),
    };
    let brokers = live_brokers(&image, &frame.session.listener.name)
        .map(|(id, host, port, rack)| {
            MetadataResponseBroker::default()
                .with_node_id(broker_id(id))
                .with_host(host)
                .with_port(port)
                .with_rack(rack)
        })
        .collect();
    frame.respond(
        &MetadataResponse::default()
            .with_brokers(brokers)
            .with_cluster_id(image.cluster_id.map(|id| str_bytes(&id.to_string())))
            .with_controller_id(broker_id(state.id))
            .with_topics(topics),
    )
}

/// Whether the principal may create topic `name`: CREATE on the cluster or on the topic.
pub(super) fn may_create(state: &BrokerState, frame: &Frame, name: &str) -> bool {
    super::allowed(state, frame, acl::code::CREATE, Resource::Cluster)
        || super::allowed(state, frame, acl::code::CREATE, Resource::Topic(name))
}

/// Unfenced brokers as clients on `listener` should reach them: id, host, port, rack.
/// A broker without that listener is left out, as Kafka does.
fn live_brokers<'a>(
    image: &'a MetadataImage,
    listener: &'a str,
) -> impl Iterator<Item = (i32, StrBytes, i32, Option<StrBytes>)> + 'a {
    image
        .brokers
        .values()
        .filter(|b| !b.fenced)
        .filter_map(move |b| {
            let e = super::endpoint(b, listener)?;
            Some((
                b.id,
                str_bytes(&e.host),
                i32::from(e.port),
                b.rack.as_deref().map(str_bytes),
            ))
        })
}

fn topic_metadata(image: &MetadataImage, t: &TopicRecord) -> MetadataResponseTopic {
    let fenced = |id: &i32| image.brokers.get(id).is_none_or(|b| b.fenced);
    let partitions = t
        .partitions
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let code = if p.leader.is_some() {
                0
            } else {
                ResponseError::LeaderNotAvailable.code()
            };
            MetadataResponsePartition::default()
                .with_error_code(code)
                .with_partition_index(i as i32)
                .with_leader_id(broker_id(p.leader.unwrap_or(-1)))
                .with_leader_epoch(p.leader_epoch)
                .with_replica_nodes(p.replicas.iter().copied().map(broker_id).collect())
                .with_isr_nodes(p.isr.iter().copied().map(broker_id).collect())
                .with_offline_replicas(
                    p.replicas
                        .iter()
                        .filter(|r| fenced(r))
                        .copied()
                        .map(broker_id)
                        .collect(),
                )
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(topic_name(&t.name)))
        .with_topic_id(t.id)
        .with_is_internal(is_internal(&t.name))
        .with_partitions(partitions)
}

pub(super) async fn create_topics(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: CreateTopicsRequest = frame.decode()?;
    let mut seen = BTreeSet::new();
    let duplicates: BTreeSet<String> = req
        .topics
        .iter()
        .map(|t| t.name.0.to_string())
        .filter(|n| !seen.insert(n.clone()))
        .collect();
    let mut results = Vec::with_capacity(req.topics.len());
    for t in &req.topics {
        let name = t.name.0.to_string();
        let result = CreatableTopicResult::default().with_name(t.name.clone());
        let fail = |code: ResponseError, msg: String| {
            result
                .clone()
                .with_error_code(code.code())
                .with_error_message(Some(str_bytes(&msg)))
        };
        if duplicates.contains(&name) {
            results.push(fail(
                ResponseError::InvalidRequest,
                "topic named twice".into(),
            ));
            continue;
        }
        if !may_create(state, frame, &name) {
            results.push(fail(
                ResponseError::TopicAuthorizationFailed,
                "CREATE on the cluster or the topic is needed".into(),
            ));
            continue;
        }
        if !t.assignments.is_empty() {
            results.push(fail(
                ResponseError::InvalidRequest,
                "manual replica assignment is not supported; let Strata place replicas".into(),
            ));
            continue;
        }
        let partitions = if t.num_partitions == -1 {
            state.config.topics.default_partitions
        } else {
            t.num_partitions
        };
        let replication_factor = if t.replication_factor == -1 {
            state.default_replication_factor()
        } else {
            t.replication_factor
        };
        let configs: BTreeMap<String, String> = t
            .configs
            .iter()
            .filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string())))
            .collect();
        let command = Command::CreateTopic {
            name: name.clone(),
            id: Uuid::new_v4(),
            partitions,
            replication_factor,
            configs,
            first_leader_epoch: 0,
        };
        let outcome = if req.validate_only {
            dry_run(state, &command).map(|_| Uuid::nil())
        } else {
            create_topic(state, command).await
        };
        results.push(match outcome {
            Ok(id) => result
                .with_topic_id(id)
                .with_num_partitions(partitions)
                .with_replication_factor(replication_factor),
            Err((code, msg)) => fail(code, msg),
        });
    }
    frame.respond(&CreateTopicsResponse::default().with_topics(results))
}

/// Hands an idempotent producer an id (epoch 0), or bumps the epoch of the id it has (KIP-360).
/// Transactions are not supported: a transactional id is refused.
pub(super) async fn init_producer_id(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: InitProducerIdRequest = frame.decode()?;
    let reply = InitProducerIdResponse::default();
    if req.transactional_id.is_some() {
        return super::txn::init_producer_id(state, frame, req).await;
    }
    // An idempotent producer needs IDEMPOTENT_WRITE on the cluster, or WRITE on some topic
    // (KIP-679).
    let image = state.image();
    let may = super::allowed(state, frame, acl::code::IDEMPOTENT_WRITE, Resource::Cluster)
        || image
            .topics
            .keys()
            .any(|t| super::allowed(state, frame, acl::code::WRITE, Resource::Topic(t)));
    if !may {
        return frame
            .respond(&reply.with_error_code(ResponseError::ClusterAuthorizationFailed.code()));
    }
    if req.producer_id.0 >= 0 && req.producer_epoch >= 0 {
        return match req.producer_epoch.checked_add(1).filter(|e| *e < i16::MAX) {
            Some(epoch) => frame.respond(
                &reply
                    .with_producer_id(req.producer_id)
                    .with_producer_epoch(epoch),
            ),
            None => new_producer_id(state, frame, reply).await,
        };
    }
    new_producer_id(state, frame, reply).await
}

async fn new_producer_id(
    state: &Arc<BrokerState>,
    frame: &Frame,
    reply: InitProducerIdResponse,
) -> Result<Bytes, FrameError> {
    match allocate_producer_id(state).await {
        Ok(id) => frame.respond(
            &reply
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(0),
        ),
        Err(e) => frame.respond(&reply.with_error_code(e.code())),
    }
}

/// A producer id never handed out before, from the block this broker took from the
/// controller (a new block of 1,000 when it is used up).
pub(super) async fn allocate_producer_id(state: &BrokerState) -> Result<i64, ResponseError> {
    let mut block = state.producer_ids.lock().await;
    if block.0 >= block.1 {
        let command = Command::AllocateProducerIds {
            broker_id: state.id,
            broker_epoch: state.epoch(),
        };
        match state.controller.submit(&command).await {
            Ok(Ok(applied)) => {
                if let Outcome::ProducerIds { first, count } = applied.outcome {
                    *block = (first, first + i64::from(count));
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "producer id block refused");
                return Err(command_error_code(&e));
            }
            Err(e) => {
                tracing::warn!(error = %e, "controller unreachable for producer ids");
                return Err(ResponseError::CoordinatorNotAvailable);
            }
        }
    }
    if block.0 >= block.1 {
        return Err(ResponseError::UnknownServerError);
    }
    let id = block.0;
    block.0 += 1;
    Ok(id)
}

pub(super) async fn describe_cluster(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: DescribeClusterRequest = frame.decode()?;
    if req.endpoint_type != 1 {
        // Only broker endpoints are described (endpoint type 1); controllers are not Kafka
        // endpoints in Strata.
        return frame.respond(
            &DescribeClusterResponse::default()
                .with_error_code(ResponseError::UnsupportedEndpointType.code())
                .with_endpoint_type(req.endpoint_type),
        );
    }
    if !super::allowed(state, frame, acl::code::DESCRIBE, Resource::Cluster) {
        return frame.respond(
            &DescribeClusterResponse::default()
                .with_error_code(ResponseError::ClusterAuthorizationFailed.code()),
        );
    }
    let image = state.image();
    let brokers = live_brokers(&image, &frame.session.listener.name)
        .map(|(id, host, port, rack)| {
            DescribeClusterBroker::default()
                .with_broker_id(broker_id(id))
                .with_host(host)
                .with_port(port)
                .with_rack(rack)
        })
        .collect();
    frame.respond(
        &DescribeClusterResponse::default()
            .with_endpoint_type(1)
            .with_cluster_id(str_bytes(
                &image
                    .cluster_id
                    .map(|id| id.to_string())
                    .unwrap_or_default(),
            ))
            .with_controller_id(broker_id(state.id))
            .with_brokers(brokers),
    )
}
