//! Kafka wire protocol edges: the API versions this broker implements, request header
//! decoding, response framing, and the one mapping from internal errors to Kafka error codes.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};
use strata_controller::CommandError;
use strata_storage::{BatchError, StorageError};

use crate::security::Session;

/// `(api, min, max)`: exactly the versions implemented, advertised by ApiVersions.
pub(crate) const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 12),
    (ApiKey::Fetch, 4, 16),
    (ApiKey::ListOffsets, 1, 9),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::DescribeLogDirs, 1, 4),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::ElectLeaders, 0, 2),
    (ApiKey::AlterPartitionReassignments, 0, 1),
    (ApiKey::ListPartitionReassignments, 0, 0),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::ConsumerGroupHeartbeat, 0, 1),
    (ApiKey::ConsumerGroupDescribe, 0, 1),
    (ApiKey::AddPartitionsToTxn, 0, 5),
    (ApiKey::AddOffsetsToTxn, 0, 4),
    (ApiKey::EndTxn, 0, 5),
    (ApiKey::TxnOffsetCommit, 0, 5),
    (ApiKey::WriteTxnMarkers, 1, 1),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::ListTransactions, 0, 1),
    (ApiKey::GetTelemetrySubscriptions, 0, 0),
    (ApiKey::PushTelemetry, 0, 0),
    // After a v0 handshake the tokens come as bare frames (librdkafka looks for v0 to
    // know the broker speaks SASL handshakes at all, then uses v1).
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::DescribeUserScramCredentials, 0, 0),
    (ApiKey::CreateAcls, 1, 3),
    (ApiKey::DescribeAcls, 1, 3),
    (ApiKey::DeleteAcls, 1, 3),
    (ApiKey::AlterUserScramCredentials, 0, 0),
];

/// The implemented version range of `api`, if it is implemented at all.
pub(crate) fn supported(api: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == api)
        .map(|(_, min, max)| (*min, *max))
}

/// Why a request cannot be answered; the connection is closed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("request shorter than its header ({0} bytes)")]
    Short(usize),
    #[error("unknown api key {0}")]
    UnknownApi(i16),
    #[error("malformed {api:?} v{version} request: {reason}")]
    Malformed {
        api: ApiKey,
        version: i16,
        reason: String,
    },
    #[error("{api:?} v{version} is not supported")]
    Unsupported { api: ApiKey, version: i16 },
    /// The connection may not send this request now (see `Session::admit`).
    #[error("{0}")]
    NotAdmitted(String),
}

/// A request's header and undecoded body.
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) api: ApiKey,
    pub(crate) version: i16,
    pub(crate) header: RequestHeader,
    pub(crate) body: Bytes,
    /// The connection's security state: who the request runs as.
    pub(crate) session: Arc<Session>,
}

/// Decodes the request header, checking the api key before anything else.
pub(crate) fn parse_frame(mut buf: Bytes, session: Arc<Session>) -> Result<Frame, FrameError> {
    if buf.len() < 8 {
        return Err(FrameError::Short(buf.len()));
    }
    let key = i16::from_be_bytes([buf[0], buf[1]]);
    let version = i16::from_be_bytes([buf[2], buf[3]]);
    let api = ApiKey::try_from(key).map_err(|_| FrameError::UnknownApi(key))?;
    let header_version = api.request_header_version(version);
    let header =
        RequestHeader::decode(&mut buf, header_version).map_err(|e| FrameError::Malformed {
            api,
            version,
            reason: e.to_string(),
        })?;
    Ok(Frame {
        api,
        version,
        header,
        body: buf,
        session,
    })
}

impl Frame {
    /// Decodes the body as `T`.
    pub(crate) fn decode<T: Decodable>(&self) -> Result<T, FrameError> {
        let mut body = self.body.clone();
        T::decode(&mut body, self.version).map_err(|e| FrameError::Malformed {
            api: self.api,
            version: self.version,
            reason: e.to_string(),
        })
    }

    /// Encodes `body` as this request's response, with the 4-byte size prefix.
    pub(crate) fn respond<T: Encodable>(&self, body: &T) -> Result<Bytes, FrameError> {
        // ApiVersions always answers with header v0, so a client can read it whatever it sent.
        let header_version = if self.api == ApiKey::ApiVersions {
            0
        } else {
            self.api.response_header_version(self.version)
        };
        let malformed = |e: String| FrameError::Malformed {
            api: self.api,
            version: self.version,
            reason: format!("encoding response: {e}"),
        };
        let mut out = BytesMut::with_capacity(256);
        out.put_u32(0);
        ResponseHeader::default()
            .with_correlation_id(self.header.correlation_id)
            .encode(&mut out, header_version)
            .map_err(|e| malformed(e.to_string()))?;
        body.encode(&mut out, self.version)
            .map_err(|e| malformed(e.to_string()))?;
        let len = u32::try_from(out.len() - 4).unwrap_or(u32::MAX);
        out[..4].copy_from_slice(&len.to_be_bytes());
        Ok(out.freeze())
    }
}

/// The Kafka error code for a refused controller command.
pub(crate) fn command_error_code(e: &CommandError) -> ResponseError {
    match e {
        CommandError::InvalidTopicName { .. } => ResponseError::InvalidTopicException,
        CommandError::TopicAlreadyExists { .. } => ResponseError::TopicAlreadyExists,
        CommandError::UnknownTopic { .. } | CommandError::UnknownPartition { .. } => {
            ResponseError::UnknownTopicOrPartition
        }
        CommandError::InvalidPartitions { .. } => ResponseError::InvalidPartitions,
        CommandError::InvalidReplicationFactor { .. }
        | CommandError::InsufficientBrokers { .. } => ResponseError::InvalidReplicationFactor,
        CommandError::InvalidConfig { .. } => ResponseError::InvalidConfig,
        CommandError::UnknownBroker { .. }
        | CommandError::StaleBrokerEpoch { .. }
        | CommandError::BrokerFenced { .. } => ResponseError::StaleBrokerEpoch,
        CommandError::NotPartitionLeader { .. } => ResponseError::NotLeaderOrFollower,
        CommandError::StaleLeaderEpoch { .. } => ResponseError::FencedLeaderEpoch,
        CommandError::StalePartitionEpoch { .. } => ResponseError::InvalidUpdateVersion,
        CommandError::InvalidIsr { .. } => ResponseError::InvalidRequest,
        CommandError::ProducerIdsExhausted => ResponseError::UnknownServerError,
        CommandError::InvalidReplicaAssignment { .. } => ResponseError::InvalidReplicaAssignment,
        CommandError::NoReassignmentInProgress { .. } => ResponseError::NoReassignmentInProgress,
    }
}

/// The Kafka error code for a log failure.
pub(crate) fn storage_error_code(e: &StorageError) -> ResponseError {
    match e {
        StorageError::InvalidBatch(BatchError::TooLarge { .. }) => ResponseError::MessageTooLarge,
        StorageError::InvalidBatch(BatchError::TimestampOutOfRange { .. }) => {
            ResponseError::InvalidTimestamp
        }
        StorageError::InvalidBatch(
            BatchError::TooManyRecords { .. } | BatchError::KeylessRecord { .. },
        ) => ResponseError::InvalidRecord,
        StorageError::InvalidBatch(_) => ResponseError::CorruptMessage,
        StorageError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        StorageError::Config { .. } => ResponseError::InvalidConfig,
        StorageError::Io { .. } | StorageError::Offline { .. } => ResponseError::KafkaStorageError,
    }
}
