//! Where each partition's records are: which offsets are in object storage and which on the
//! broker's disk, and how far uploads lag the log's end. Read with ListOffsets' special
//! timestamps (KIP-1005: -4 the local log's start, -5 the last tiered offset), so any broker
//! that answers v9 can be asked.

use crate::{Client, ClientError};

/// One partition's ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionTiering {
    pub partition: i32,
    /// The log's first offset, wherever it is.
    pub log_start: i64,
    /// The first offset on the leader's disk.
    pub local_start: i64,
    /// One past the last offset in object storage; None when nothing is uploaded.
    pub remote_end: Option<i64>,
    /// The log's end.
    pub log_end: i64,
    /// Records past what is uploaded; None for a topic that is not tiered.
    pub upload_lag: Option<i64>,
}

/// A topic's partitions' ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicTiering {
    /// Whether the topic is tiered (`remote.storage.enable`).
    pub tiered: bool,
    pub partitions: Vec<PartitionTiering>,
}

impl Client {
    /// Where `topic`'s records are, partition by partition.
    pub async fn tiering_status(&self, topic: &str) -> Result<TopicTiering, ClientError> {
        use kafka_protocol::messages::ListOffsetsRequest;
        if self.connection().version_for::<ListOffsetsRequest>()? < 9 {
            return Err(ClientError::Unsupported {
                api: "ListOffsets v9 (the last tiered offset, KIP-1005)".into(),
                reason: format!(
                    "{} does not report what it holds in object storage",
                    self.connection().addr()
                ),
            });
        }
        let (info, configs) = self.describe_topic(topic).await?;
        let tiered = !configs
            .iter()
            .any(|c| c.name == "remote.storage.enable" && c.value.as_deref() == Some("false"));
        let parts: Vec<i32> = info.partitions.iter().map(|p| p.partition).collect();
        let start = self.list_offsets(topic, &parts, -2).await?;
        let local = self.list_offsets(topic, &parts, -4).await?;
        let last_tiered = self.list_offsets(topic, &parts, -5).await?;
        let end = self.list_offsets(topic, &parts, -1).await?;
        let partitions = parts
            .into_iter()
            .map(|p| {
                let (log_start, log_end) = (start[&p], end[&p]);
                // -5 answers the last offset uploaded, -1 when none is.
                let remote_end = match last_tiered[&p] {
                    -1 => None,
                    last => Some(last + 1),
                };
                PartitionTiering {
                    partition: p,
                    log_start,
                    local_start: local[&p],
                    remote_end,
                    log_end,
                    upload_lag: tiered
                        .then(|| log_end - remote_end.unwrap_or(log_start).max(log_start)),
                }
            })
            .collect();
        Ok(TopicTiering { tiered, partitions })
    }
}
