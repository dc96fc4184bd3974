//! Kafka wire protocol edges: the API versions this broker implements, request header
//! decoding, response framing, and the one mapping from internal errors to Kafka error codes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{ApiKey, FetchResponse, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};
use strata_controller::CommandError;
use strata_storage::{BatchError, StorageError};

use crate::response::{Response, Taken};
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
    (ApiKey::DescribeClientQuotas, 0, 1),
    (ApiKey::AlterClientQuotas, 0, 1),
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
    /// The request's size in bytes, header included (what `producer_byte_rate` counts).
    pub(crate) size: usize,
    /// How long the client is throttled for by its quotas, in milliseconds: the response's
    /// `throttle_time_ms`, and how long the connection then goes unread (see `crate::quota`).
    throttle_ms: AtomicU32,
    /// Time the handler spent waiting (for data, for replicas), which request-time quotas
    /// do not count, in microseconds.
    waited_us: AtomicU64,
    /// Set by the handler when the request is exempt from quotas (a replica's fetch).
    exempt: AtomicBool,
}

/// Decodes the request header, checking the api key before anything else.
pub(crate) fn parse_frame(mut buf: Bytes, session: Arc<Session>) -> Result<Frame, FrameError> {
    if buf.len() < 8 {
        return Err(FrameError::Short(buf.len()));
    }
    let size = buf.len();
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
    let mut frame = Frame::new(api, version, header, buf, session);
    frame.size = size;
    Ok(frame)
}

impl Frame {
    /// A request of `api` at `version` with this header and body, its size the body's.
    pub(crate) fn new(
        api: ApiKey,
        version: i16,
        header: RequestHeader,
        body: Bytes,
        session: Arc<Session>,
    ) -> Self {
        Self {
            api,
            version,
            size: body.len(),
            header,
            body,
            session,
            throttle_ms: AtomicU32::new(0),
            waited_us: AtomicU64::new(0),
            exempt: AtomicBool::new(false),
        }
    }

    /// Decodes the body as `T`.
    pub(crate) fn decode<T: Decodable>(&self) -> Result<T, FrameError> {
        let mut body = self.body.clone();
        T::decode(&mut body, self.version).map_err(|e| FrameError::Malformed {
            api: self.api,
            version: self.version,
            reason: e.to_string(),
        })
    }

    /// Throttles the client for at least `throttle` (the longest of its quotas' answers).
    pub(crate) fn throttle(&self, throttle: Duration) {
        if throttle.is_zero() {
            return;
        }
        let ms = u32::try_from(throttle.as_millis()).unwrap_or(u32::MAX);
        self.throttle_ms.fetch_max(ms, Ordering::Relaxed);
        self.session
            .throttle_until(tokio::time::Instant::now() + throttle);
    }

    /// How long the client is throttled for.
    pub(crate) fn throttled(&self) -> Duration {
        Duration::from_millis(u64::from(self.throttle_ms.load(Ordering::Relaxed)))
    }

    /// Notes time spent waiting rather than working.
    pub(crate) fn waited_for(&self, waited: Duration) {
        let us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        self.waited_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Time spent waiting.
    pub(crate) fn waited(&self) -> Duration {
        Duration::from_micros(self.waited_us.load(Ordering::Relaxed))
    }

    /// Exempts the request from quotas: nothing is charged, nothing throttled.
    pub(crate) fn exempt_from_quotas(&self) {
        self.exempt.store(true, Ordering::Relaxed);
        self.throttle_ms.store(0, Ordering::Relaxed);
    }

    /// Whether the request is exempt from quotas.
    pub(crate) fn exempt(&self) -> bool {
        self.exempt.load(Ordering::Relaxed)
    }

    /// Encodes `body` as this request's response, with the 4-byte size prefix, and with
    /// the client's throttle time in it.
    pub(crate) fn respond<T: Encodable + Throttle + Clone>(
        &self,
        body: &T,
    ) -> Result<Bytes, FrameError> {
        let ms = self.throttle_ms.load(Ordering::Relaxed);
        if ms > 0 {
            let mut throttled = body.clone();
            throttled.set_throttle(i32::try_from(ms).unwrap_or(i32::MAX));
            return self.encode(&throttled);
        }
        self.encode(body)
    }

    /// Encodes a Fetch answer as [`Frame::respond`] does, with each large record set
    /// written from the buffer it was read into rather than copied into the frame.
    /// The answer to a Fetch whose record sets were `taken` out of `body` (each replaced by
    /// its marker, in the order the encoding writes them).
    pub(crate) fn respond_fetch(
        &self,
        mut body: FetchResponse,
        taken: Taken,
    ) -> Result<Response, FrameError> {
        let ms = self.throttle_ms.load(Ordering::Relaxed);
        if ms > 0 {
            body.set_throttle(i32::try_from(ms).unwrap_or(i32::MAX));
        }
        let out = self.encode_unsized(&body)?;
        // Fetch v12 and later are flexible versions: compact byte strings.
        taken
            .splice(out, self.version >= 12)
            .map_err(|reason| self.malformed(reason))
    }

    fn malformed(&self, reason: String) -> FrameError {
        FrameError::Malformed {
            api: self.api,
            version: self.version,
            reason: format!("encoding response: {reason}"),
        }
    }

    fn encode<T: Encodable>(&self, body: &T) -> Result<Bytes, FrameError> {
        let mut out = self.encode_unsized(body)?;
        let len = u32::try_from(out.len() - 4).unwrap_or(u32::MAX);
        out[..4].copy_from_slice(&len.to_be_bytes());
        Ok(out.freeze())
    }

    /// The response frame of `body`, its 4-byte size prefix left to fill in.
    fn encode_unsized<T: Encodable>(&self, body: &T) -> Result<BytesMut, FrameError> {
        // ApiVersions always answers with header v0, so a client can read it whatever it sent.
        let header_version = if self.api == ApiKey::ApiVersions {
            0
        } else {
            self.api.response_header_version(self.version)
        };
        let mut out = BytesMut::with_capacity(256);
        out.put_u32(0);
        ResponseHeader::default()
            .with_correlation_id(self.header.correlation_id)
            .encode(&mut out, header_version)
            .map_err(|e| self.malformed(e.to_string()))?;
        body.encode(&mut out, self.version)
            .map_err(|e| self.malformed(e.to_string()))?;
        Ok(out)
    }
}

/// A response that can tell the client it is throttled.
pub(crate) trait Throttle {
    /// Sets its `throttle_time_ms`; responses without one ignore it (the connection's
    /// muting throttles those clients all the same).
    fn set_throttle(&mut self, ms: i32);
}

macro_rules! throttle_time_ms {
    ($($t:ident),* $(,)?) => {
        $(impl Throttle for kafka_protocol::messages::$t {
            fn set_throttle(&mut self, ms: i32) {
                self.throttle_time_ms = ms;
            }
        })*
    };
}

macro_rules! no_throttle_time_ms {
    ($($t:ident),* $(,)?) => {
        $(impl Throttle for kafka_protocol::messages::$t {
            fn set_throttle(&mut self, _: i32) {}
        })*
    };
}

throttle_time_ms!(
    ProduceResponse,
    FetchResponse,
    ListOffsetsResponse,
    DeleteRecordsResponse,
    DescribeLogDirsResponse,
    MetadataResponse,
    ApiVersionsResponse,
    CreateTopicsResponse,
    InitProducerIdResponse,
    DeleteTopicsResponse,
    CreatePartitionsResponse,
    ElectLeadersResponse,
    AlterPartitionReassignmentsResponse,
    ListPartitionReassignmentsResponse,
    DescribeConfigsResponse,
    AlterConfigsResponse,
    IncrementalAlterConfigsResponse,
    DescribeClusterResponse,
    OffsetForLeaderEpochResponse,
    FindCoordinatorResponse,
    JoinGroupResponse,
    SyncGroupResponse,
    HeartbeatResponse,
    LeaveGroupResponse,
    OffsetCommitResponse,
    OffsetFetchResponse,
    ListGroupsResponse,
    DescribeGroupsResponse,
    DeleteGroupsResponse,
    OffsetDeleteResponse,
    ConsumerGroupHeartbeatResponse,
    ConsumerGroupDescribeResponse,
    AddPartitionsToTxnResponse,
    AddOffsetsToTxnResponse,
    EndTxnResponse,
    TxnOffsetCommitResponse,
    DescribeTransactionsResponse,
    ListTransactionsResponse,
    GetTelemetrySubscriptionsResponse,
    PushTelemetryResponse,
    DescribeUserScramCredentialsResponse,
    AlterUserScramCredentialsResponse,
    CreateAclsResponse,
    DescribeAclsResponse,
    DeleteAclsResponse,
    DescribeClientQuotasResponse,
    AlterClientQuotasResponse,
);

no_throttle_time_ms!(
    WriteTxnMarkersResponse,
    SaslHandshakeResponse,
    SaslAuthenticateResponse,
);

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

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::messages::fetch_response::{
        AbortedTransaction, FetchableTopicResponse, PartitionData,
    };
    use kafka_protocol::protocol::StrBytes;

    use super::*;

    /// A Fetch answer written from the record sets' own buffers and from segment files is
    /// byte for byte the one encoded whole, at every version served: sets above and below
    /// the splicing size, absent ones, sets in files, aborted transactions after a spliced
    /// set, and a throttle.
    #[test]
    fn a_spliced_fetch_response_is_the_whole_encoding() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = strata_storage::Log::open(dir.path(), strata_storage::LogConfig::default())
            .expect("log");
        for i in 0..20u8 {
            let batch = strata_storage::BatchBuilder::new()
                .record(strata_storage::Record {
                    key: None,
                    value: Some(vec![i; 700]),
                    headers: Vec::new(),
                    timestamp: 1,
                })
                .build();
            log.append(&batch, 0).expect("append");
        }
        let files = log
            .read_ranges(0, 1 << 20, 20)
            .expect("ranges")
            .expect("cached");
        let in_files = log.read(0, 1 << 20).expect("read");
        let records = |n: usize, seed: u8| {
            Some(Bytes::from(
                (0..n)
                    .map(|i| (i as u8).wrapping_mul(seed))
                    .collect::<Vec<u8>>(),
            ))
        };
        let partition = |index: i32, records: Option<Bytes>| {
            PartitionData::default()
                .with_partition_index(index)
                .with_high_watermark(1 << 40)
                .with_aborted_transactions(Some(vec![
                    AbortedTransaction::default()
                        .with_producer_id(kafka_protocol::messages::ProducerId(7))
                        .with_first_offset(9),
                ]))
                .with_records(records)
        };
        let body = FetchResponse::default().with_responses(vec![
            FetchableTopicResponse::default()
                .with_topic(TopicName(StrBytes::from_static_str("a")))
                .with_partitions(vec![
                    partition(0, records(200_000, 3)),
                    partition(1, records(10, 5)),
                    partition(2, None),
                    partition(3, records(crate::response::SPLICED_RECORDS, 7)),
                    partition(4, Some(in_files.clone())),
                ]),
            FetchableTopicResponse::default()
                .with_topic(TopicName(StrBytes::from_static_str("b")))
                .with_partitions(vec![partition(0, records(70_000, 11))]),
        ]);
        for version in 4..=16 {
            let frame = Frame::new(
                ApiKey::Fetch,
                version,
                RequestHeader::default().with_correlation_id(42),
                Bytes::new(),
                Session::detached(),
            );
            frame.throttle(Duration::from_millis(5));
            let whole = frame.respond(&body).expect("encode");
            let mut taken = Taken::default();
            let mut spliced = body.clone();
            for p in spliced
                .responses
                .iter_mut()
                .flat_map(|t| t.partitions.iter_mut())
            {
                match p.records.as_mut() {
                    Some(r) if *r == in_files => taken.take_files(&mut p.records, files.clone()),
                    // As a remote read answers: slices of the chunks it spans.
                    Some(r) if r.len() == 70_000 => {
                        let r = r.clone();
                        let pieces = vec![r.slice(..1), r.slice(1..40_000), r.slice(40_000..)];
                        taken.take_pieces(&mut p.records, pieces);
                    }
                    Some(r) => taken.take(r),
                    None => {}
                }
            }
            let spliced = frame.respond_fetch(spliced, taken).expect("splice");
            assert_eq!(spliced.to_bytes(), whole, "version {version}");
        }
    }
}
