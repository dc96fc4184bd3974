//! Kafka API handlers: one function per API, dispatched by api key after the version check.

mod acls;
mod admin;
mod configs;
mod consumer_groups;
mod fetch;
mod groups;
mod groups_admin;
mod logdirs;
mod produce;
mod quotas;
mod records;
mod sasl;
mod telemetry;
mod topics;
mod txn;

pub(crate) use sasl::sasl_token;
pub(crate) use txn::marker_writer;

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, BrokerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::OwnedSemaphorePermit;

use crate::protocol::{Frame, FrameError, supported};
use crate::quota::Kind;
use crate::response::Response;
use crate::security::acl::{self, Resource};

/// A Produce's append to `part` under `leader_epoch`, as the handler makes it (`guard`: a
/// transactional batch's verification, see `produce::verify_transactional`): the offset
/// after the batch, or the error the client would get.
#[cfg(test)]
pub(crate) fn produce_append(
    part: &crate::partition::Partition,
    records: &[u8],
    leader_epoch: i32,
    guard: Option<u64>,
) -> Result<u64, kafka_protocol::ResponseError> {
    produce::append_blocking(part, records, leader_epoch, guard)
        .map(|(_, last)| last + 1)
        .map_err(|(e, _)| e)
}
use crate::state::BrokerState;
use crate::turnstile::Turn;

/// A response, and the share of the broker's memory budget it holds until it is written.
pub(crate) struct Reply {
    pub(crate) response: Response,
    pub(crate) held: Option<OwnedSemaphorePermit>,
}

impl From<Bytes> for Reply {
    fn from(bytes: Bytes) -> Self {
        Self {
            response: bytes.into(),
            held: None,
        }
    }
}

/// Answers one request; `Ok(None)` means no response is sent (Produce with `acks=0`). An
/// error closes the connection. The client's quotas are charged for it, and its throttle
/// time is left in `frame` (see [`crate::quota`]).
pub(crate) async fn handle(
    state: &Arc<BrokerState>,
    frame: &Frame,
    turn: Option<Turn>,
) -> Result<Option<Reply>, FrameError> {
    if frame.api == ApiKey::ApiVersions {
        return admin::api_versions(frame).map(|b| Some(b.into()));
    }
    match supported(frame.api) {
        Some((min, max)) if (min..=max).contains(&frame.version) => {}
        _ => {
            return Err(FrameError::Unsupported {
                api: frame.api,
                version: frame.version,
            });
        }
    }
    let started = std::time::Instant::now();
    let image = state.image();
    // The brokers' own markers are not counted (Kafka exempts cluster actions); without any
    // quota nothing is (no per-request work on the common path).
    let charged = frame.api != ApiKey::WriteTxnMarkers && !image.quotas.is_empty();
    let who = charged.then(|| quota_id(frame));
    let who = who.as_ref().map(|(user, client)| (user.as_str(), *client));
    if let Some(who) = who {
        frame.throttle(state.quotas.throttled(&image, Kind::Request, who, started));
        if frame.api == ApiKey::Produce {
            let bytes = frame.size as f64;
            frame.throttle(
                state
                    .quotas
                    .record(&image, Kind::Produce, who, bytes, started),
            );
        }
    }
    let answer = dispatch(state, frame, turn).await;
    if let Some(who) = who.filter(|_| !frame.exempt()) {
        let busy = started.elapsed().saturating_sub(frame.waited());
        // Percent of one thread: each second busy is 100.
        let percent = busy.as_secs_f64() * 100.0;
        let now = std::time::Instant::now();
        state
            .quotas
            .record(&image, Kind::Request, who, percent, now);
    }
    answer
}

/// Who a request's quotas are for: its principal's user name and its client id.
pub(crate) fn quota_id(frame: &Frame) -> (String, &str) {
    let principal = frame.session.principal();
    let user = crate::quota::user_of(&principal).to_owned();
    (user, frame.header.client_id.as_deref().unwrap_or(""))
}

async fn dispatch(
    state: &Arc<BrokerState>,
    frame: &Frame,
    turn: Option<Turn>,
) -> Result<Option<Reply>, FrameError> {
    let answer = match frame.api {
        ApiKey::Produce => return Ok(produce::produce(state, frame, turn).await?.map(Reply::from)),
        ApiKey::Fetch => return fetch::fetch(state, frame).await.map(Some),
        ApiKey::Metadata => admin::metadata(state, frame).await,
        ApiKey::CreateTopics => admin::create_topics(state, frame).await,
        ApiKey::InitProducerId => admin::init_producer_id(state, frame).await,
        ApiKey::DeleteTopics => topics::delete_topics(state, frame).await,
        ApiKey::CreatePartitions => topics::create_partitions(state, frame).await,
        ApiKey::ElectLeaders => topics::elect_leaders(state, frame).await,
        ApiKey::AlterPartitionReassignments => {
            topics::alter_partition_reassignments(state, frame).await
        }
        ApiKey::ListPartitionReassignments => {
            topics::list_partition_reassignments(state, frame).await
        }
        ApiKey::DescribeConfigs => configs::describe_configs(state, frame).await,
        ApiKey::AlterConfigs => configs::alter_configs(state, frame).await,
        ApiKey::IncrementalAlterConfigs => configs::incremental_alter_configs(state, frame).await,
        ApiKey::DescribeCluster => admin::describe_cluster(state, frame).await,
        ApiKey::FindCoordinator => groups::find_coordinator(state, frame).await,
        ApiKey::JoinGroup => groups::join_group(state, frame).await,
        ApiKey::SyncGroup => groups::sync_group(state, frame).await,
        ApiKey::Heartbeat => groups::heartbeat(state, frame).await,
        ApiKey::LeaveGroup => groups::leave_group(state, frame).await,
        ApiKey::OffsetCommit => groups::offset_commit(state, frame).await,
        ApiKey::OffsetFetch => groups::offset_fetch(state, frame).await,
        ApiKey::ConsumerGroupHeartbeat => {
            consumer_groups::consumer_group_heartbeat(state, frame).await
        }
        ApiKey::ConsumerGroupDescribe => {
            consumer_groups::consumer_group_describe(state, frame).await
        }
        ApiKey::ListGroups => groups_admin::list_groups(state, frame).await,
        ApiKey::DescribeGroups => groups_admin::describe_groups(state, frame).await,
        ApiKey::DeleteGroups => groups_admin::delete_groups(state, frame).await,
        ApiKey::OffsetDelete => groups_admin::offset_delete(state, frame).await,
        ApiKey::OffsetForLeaderEpoch => fetch::offset_for_leader_epoch(state, frame).await,
        ApiKey::ListOffsets => fetch::list_offsets(state, frame).await,
        ApiKey::DeleteRecords => records::delete_records(state, frame).await,
        ApiKey::DescribeLogDirs => logdirs::describe_log_dirs(state, frame).await,
        ApiKey::AddPartitionsToTxn => txn::add_partitions_to_txn(state, frame).await,
        ApiKey::AddOffsetsToTxn => txn::add_offsets_to_txn(state, frame).await,
        ApiKey::EndTxn => txn::end_txn(state, frame).await,
        ApiKey::TxnOffsetCommit => txn::txn_offset_commit(state, frame).await,
        ApiKey::WriteTxnMarkers => txn::write_txn_markers(state, frame).await,
        ApiKey::DescribeTransactions => txn::describe_transactions(state, frame).await,
        ApiKey::ListTransactions => txn::list_transactions(state, frame).await,
        ApiKey::GetTelemetrySubscriptions => {
            telemetry::get_telemetry_subscriptions(state, frame).await
        }
        ApiKey::PushTelemetry => telemetry::push_telemetry(state, frame).await,
        ApiKey::CreateAcls => acls::create_acls(state, frame).await,
        ApiKey::DescribeAcls => acls::describe_acls(state, frame).await,
        ApiKey::DeleteAcls => acls::delete_acls(state, frame).await,
        ApiKey::SaslHandshake => sasl::sasl_handshake(state, frame).await,
        ApiKey::SaslAuthenticate => sasl::sasl_authenticate(state, frame).await,
        ApiKey::DescribeUserScramCredentials => {
            sasl::describe_user_scram_credentials(state, frame).await
        }
        ApiKey::AlterUserScramCredentials => sasl::alter_user_scram_credentials(state, frame).await,
        ApiKey::DescribeClientQuotas => quotas::describe_client_quotas(state, frame).await,
        ApiKey::AlterClientQuotas => quotas::alter_client_quotas(state, frame).await,
        api => Err(FrameError::Unsupported {
            api,
            version: frame.version,
        }),
    };
    answer.map(|bytes| Some(bytes.into()))
}

pub(crate) fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

pub(crate) fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

/// Whether the request's principal may do `op` (an [`acl::code`] operation) on `resource`;
/// always, with authorization off.
pub(crate) fn allowed(state: &BrokerState, frame: &Frame, op: i8, resource: Resource<'_>) -> bool {
    let config = &state.config.kafka.authorization;
    !config.enable || acl::authorize(config, &state.image().acls, &frame.session, op, resource)
}

/// Where clients on `listener` reach broker `b`.
pub(crate) fn endpoint<'a>(
    b: &'a strata_controller::model::BrokerRecord,
    listener: &str,
) -> Option<&'a strata_controller::model::Endpoint> {
    b.endpoints.iter().find(|e| e.listener == listener)
}

pub(crate) fn broker_id(id: i32) -> BrokerId {
    BrokerId(id)
}
