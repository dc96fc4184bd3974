//! DeleteRecords: move a partition's log start offset up, locally and in object storage.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use strata_storage::tier::retention;

use crate::partition::Partition;
use crate::protocol::{Frame, FrameError, storage_error_code};
use crate::security::acl::{self, Resource};
use crate::state::BrokerState;
use crate::topic::remote_enabled;

pub(super) async fn delete_records(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: DeleteRecordsRequest = frame.decode()?;
    let image = state.image();
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let record = image.topics.get(t.name.0.as_str());
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let result = DeleteRecordsPartitionResult::default()
                .with_partition_index(p.partition_index)
                .with_low_watermark(-1);
            let target = record
                .ok_or(ResponseError::UnknownTopicOrPartition)
                .and_then(|r| {
                    if !super::allowed(state, frame, acl::code::DELETE, Resource::Topic(&r.name)) {
                        return Err(ResponseError::TopicAuthorizationFailed);
                    }
                    if super::admin::is_internal(&r.name) {
                        return Err(ResponseError::TopicAuthorizationFailed);
                    }
                    let (part, meta) = state.led_partition(r, p.partition_index, -1)?;
                    Ok((part, meta.leader_epoch, remote_enabled(r)))
                });
            let outcome = match target {
                Err(e) => Err(e),
                Ok((part, epoch, tiered)) => delete_before(part, epoch, tiered, p.offset).await,
            };
            partitions.push(match outcome {
                Ok(low) => result.with_low_watermark(low as i64),
                Err(e) => result.with_error_code(e.code()),
            });
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    frame.respond(&DeleteRecordsResponse::default().with_topics(topics))
}

/// Moves the partition's log start up to `offset` (-1: its end), remotely first so the
/// remote view never starts below the local one; returns the new log start.
async fn delete_before(
    part: Arc<Partition>,
    epoch: i32,
    tiered: bool,
    offset: i64,
) -> Result<u64, ResponseError> {
    if part.remote.recovering() {
        return Err(ResponseError::NotLeaderOrFollower);
    }
    let end = part.log.log_end_offset();
    let offset = match offset {
        -1 => end,
        o => u64::try_from(o).map_err(|_| ResponseError::OffsetOutOfRange)?,
    };
    if offset > end {
        return Err(ResponseError::OffsetOutOfRange);
    }
    if tiered {
        let remote = &part.remote;
        retention::delete_records_before(&remote.objects, epoch, offset, |m| {
            remote.publish(m.clone());
        })
        .await
        .map_err(|e| {
            tracing::warn!(topic_id = %part.topic_id, error = %e, "DeleteRecords in the object store failed");
            ResponseError::KafkaStorageError
        })?;
    }
    let p = part.clone();
    tokio::task::spawn_blocking(move || {
        if offset > p.log.log_start_offset() {
            p.log.delete_before(offset)?;
        }
        Ok(p.log_start_offset())
    })
    .await
    .map_err(|_| ResponseError::UnknownServerError)?
    .map_err(|e| storage_error_code(&e))
}
