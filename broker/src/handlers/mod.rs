//! Kafka API handlers: one function per API, dispatched by api key after the version check.

mod admin;
mod configs;
mod fetch;
mod groups;
mod groups_admin;
mod produce;
mod topics;

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, BrokerId, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::connection::Turn;
use crate::protocol::{Frame, FrameError, supported};
use crate::state::BrokerState;

/// Answers one request; `Ok(None)` means no response is sent (Produce with `acks=0`). An
/// error closes the connection.
pub(crate) async fn handle(
    state: &Arc<BrokerState>,
    frame: Frame,
    turn: Option<Turn>,
) -> Result<Option<Bytes>, FrameError> {
    if frame.api == ApiKey::ApiVersions {
        return admin::api_versions(&frame).map(Some);
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
    match frame.api {
        ApiKey::Metadata => admin::metadata(state, &frame).await.map(Some),
        ApiKey::CreateTopics => admin::create_topics(state, &frame).await.map(Some),
        ApiKey::InitProducerId => admin::init_producer_id(state, &frame).await.map(Some),
        ApiKey::DeleteTopics => topics::delete_topics(state, &frame).await.map(Some),
        ApiKey::CreatePartitions => topics::create_partitions(state, &frame).await.map(Some),
        ApiKey::DescribeConfigs => configs::describe_configs(state, &frame).await.map(Some),
        ApiKey::AlterConfigs => configs::alter_configs(state, &frame).await.map(Some),
        ApiKey::IncrementalAlterConfigs => configs::incremental_alter_configs(state, &frame)
            .await
            .map(Some),
        ApiKey::DescribeCluster => admin::describe_cluster(state, &frame).await.map(Some),
        ApiKey::FindCoordinator => groups::find_coordinator(state, &frame).await.map(Some),
        ApiKey::JoinGroup => groups::join_group(state, &frame).await.map(Some),
        ApiKey::SyncGroup => groups::sync_group(state, &frame).await.map(Some),
        ApiKey::Heartbeat => groups::heartbeat(state, &frame).await.map(Some),
        ApiKey::LeaveGroup => groups::leave_group(state, &frame).await.map(Some),
        ApiKey::OffsetCommit => groups::offset_commit(state, &frame).await.map(Some),
        ApiKey::OffsetFetch => groups::offset_fetch(state, &frame).await.map(Some),
        ApiKey::ListGroups => groups_admin::list_groups(state, &frame).await.map(Some),
        ApiKey::DescribeGroups => groups_admin::describe_groups(state, &frame).await.map(Some),
        ApiKey::DeleteGroups => groups_admin::delete_groups(state, &frame).await.map(Some),
        ApiKey::OffsetDelete => groups_admin::offset_delete(state, &frame).await.map(Some),
        ApiKey::OffsetForLeaderEpoch => fetch::offset_for_leader_epoch(state, &frame)
            .await
            .map(Some),
        ApiKey::Produce => produce::produce(state, &frame, turn).await,
        ApiKey::Fetch => fetch::fetch(state, &frame).await.map(Some),
        ApiKey::ListOffsets => fetch::list_offsets(state, &frame).await.map(Some),
        api => Err(FrameError::Unsupported {
            api,
            version: frame.version,
        }),
    }
}

pub(crate) fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

pub(crate) fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

pub(crate) fn broker_id(id: i32) -> BrokerId {
    BrokerId(id)
}
