//! DescribeLogDirs: the partitions this broker holds, their local sizes, and for compacted
//! topics the log cleaner's view as Strata's tagged fields (see `strata_client::logdirs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse};
use strata_client::logdirs::CleanerView;

use super::{str_bytes, topic_name};
use crate::protocol::{Frame, FrameError};
use crate::security::acl::{self, Resource};
use crate::state::BrokerState;

pub(super) async fn describe_log_dirs(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: DescribeLogDirsRequest = frame.decode()?;
    if !super::allowed(state, frame, acl::code::DESCRIBE, Resource::Cluster) {
        return frame
            .respond(&DescribeLogDirsResponse::default().with_error_code(
                kafka_protocol::ResponseError::ClusterAuthorizationFailed.code(),
            ));
    }
    // Null asks for every partition; otherwise the (topic, partition)s named.
    let wanted: Option<BTreeMap<String, Vec<i32>>> = req.topics.map(|topics| {
        topics
            .into_iter()
            .map(|t| (t.topic.0.to_string(), t.partitions))
            .collect()
    });
    let mut topics: BTreeMap<String, Vec<DescribeLogDirsPartition>> = BTreeMap::new();
    for part in state.partitions.hosted() {
        let asked = wanted.as_ref().is_none_or(|w| {
            w.get(&part.topic)
                .is_some_and(|ps| ps.contains(&part.index))
        });
        if !asked {
            continue;
        }
        let mut p = DescribeLogDirsPartition::default()
            .with_partition_index(part.index)
            .with_partition_size(part.log.size_bytes() as i64);
        if part.settings().compaction.is_some() && frame.version >= 2 {
            let status = state.cleaner.status(part.topic_id, part.index);
            p.unknown_tagged_fields = CleanerView {
                dirty_ratio: status.dirty_ratio,
                last_clean_ms: status.last_clean_ms,
                cleaned_offset: part.log.cleaned_offset() as i64,
            }
            .to_tags();
        }
        topics.entry(part.topic.clone()).or_default().push(p);
    }
    let topics = topics
        .into_iter()
        .map(|(name, mut partitions)| {
            partitions.sort_by_key(|p| p.partition_index);
            DescribeLogDirsTopic::default()
                .with_name(topic_name(&name))
                .with_partitions(partitions)
        })
        .collect();
    let dir = DescribeLogDirsResult::default()
        .with_log_dir(str_bytes(&state.config.log_dir().to_string_lossy()))
        .with_topics(topics)
        .with_total_bytes(-1)
        .with_usable_bytes(-1);
    frame.respond(&DescribeLogDirsResponse::default().with_results(vec![dir]))
}
