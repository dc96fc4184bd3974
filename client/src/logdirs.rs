//! What brokers hold on disk (DescribeLogDirs), and the log cleaner's view of compacted
//! partitions.
//!
//! Kafka's DescribeLogDirs has no field for the cleaner, so a Strata broker adds its view to
//! each partition of a compacted topic as tagged fields (flexible versions, v2 and up; a
//! client that does not know the tags skips them, as KIP-482 has every client do). The tags
//! are far above any number Kafka assigns.

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::messages::describe_log_dirs_request::DescribableLogDirTopic;
use kafka_protocol::messages::{DescribeLogDirsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::{Client, ClientError, check};

/// The dirty share of the cleanable log at the cleaner's last check (f64, big-endian).
pub const TAG_DIRTY_RATIO: i32 = 10_000;
/// When a pass last completed, Unix ms (i64, big-endian).
pub const TAG_LAST_CLEAN_MS: i32 = 10_001;
/// Below this offset the log is cleaned: where the dirty section starts (i64, big-endian).
pub const TAG_CLEANED_OFFSET: i32 = 10_002;

/// The log cleaner's view of one partition replica.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CleanerView {
    pub dirty_ratio: f64,
    pub last_clean_ms: Option<i64>,
    pub cleaned_offset: i64,
}

impl CleanerView {
    /// The view as tagged fields of a DescribeLogDirs partition.
    pub fn to_tags(&self) -> BTreeMap<i32, Bytes> {
        let mut tags = BTreeMap::from([
            (
                TAG_DIRTY_RATIO,
                Bytes::copy_from_slice(&self.dirty_ratio.to_be_bytes()),
            ),
            (
                TAG_CLEANED_OFFSET,
                Bytes::copy_from_slice(&self.cleaned_offset.to_be_bytes()),
            ),
        ]);
        if let Some(t) = self.last_clean_ms {
            tags.insert(TAG_LAST_CLEAN_MS, Bytes::copy_from_slice(&t.to_be_bytes()));
        }
        tags
    }

    /// The view in a partition's tagged fields, if a Strata broker put one there.
    pub fn from_tags(tags: &BTreeMap<i32, Bytes>) -> Option<Self> {
        let eight = |tag| -> Option<[u8; 8]> { tags.get(&tag)?.as_ref().try_into().ok() };
        Some(Self {
            dirty_ratio: f64::from_be_bytes(eight(TAG_DIRTY_RATIO)?),
            cleaned_offset: i64::from_be_bytes(eight(TAG_CLEANED_OFFSET)?),
            last_clean_ms: eight(TAG_LAST_CLEAN_MS).map(i64::from_be_bytes),
        })
    }
}

/// One partition replica as its broker describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct PartitionDir {
    pub partition: i32,
    /// The broker asked (the partition's leader).
    pub broker: i32,
    /// Bytes of its local log.
    pub size_bytes: i64,
    /// The cleaner's view, for a compacted topic on a Strata broker.
    pub cleaner: Option<CleanerView>,
}

impl Client {
    /// How each partition of `topic` is held on disk by its leader.
    pub async fn log_dirs(&self, topic: &str) -> Result<Vec<PartitionDir>, ClientError> {
        let leaders = self.leaders_of(topic).await?;
        let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for (p, leader) in leaders.iter().enumerate() {
            by_leader.entry(*leader).or_default().push(p as i32);
        }
        let mut out = Vec::new();
        for (leader, partitions) in by_leader {
            let req = DescribeLogDirsRequest::default().with_topics(Some(vec![
                DescribableLogDirTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
                    .with_partitions(partitions.clone()),
            ]));
            let resp = self.broker(leader).await?.send(&req).await?;
            check(format!("describing log dirs of {topic}"), resp.error_code)?;
            for dir in &resp.results {
                check(
                    format!("describing {}", dir.log_dir.as_str()),
                    dir.error_code,
                )?;
                for p in dir.topics.iter().flat_map(|t| &t.partitions) {
                    out.push(PartitionDir {
                        partition: p.partition_index,
                        broker: leader,
                        size_bytes: p.partition_size,
                        cleaner: CleanerView::from_tags(&p.unknown_tagged_fields),
                    });
                }
            }
        }
        out.sort_by_key(|d| d.partition);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cleaner_view_survives_its_tags() {
        let view = CleanerView {
            dirty_ratio: 0.25,
            last_clean_ms: Some(1_700_000_000_000),
            cleaned_offset: 4096,
        };
        assert_eq!(CleanerView::from_tags(&view.to_tags()), Some(view));
        let never = CleanerView {
            last_clean_ms: None,
            ..view
        };
        assert_eq!(CleanerView::from_tags(&never.to_tags()), Some(never));
        assert_eq!(CleanerView::from_tags(&BTreeMap::new()), None);
    }
}
