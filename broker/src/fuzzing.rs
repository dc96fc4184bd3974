//! Entry points for the fuzz targets under `fuzz/` (not a stable API): each runs one of the
//! decoders a client's bytes reach, and must return, never panic or allocate beyond its
//! input.

use bytes::Bytes;
use kafka_protocol::messages::{self, ApiKey};

use crate::protocol::{Frame, SUPPORTED, parse_frame};
use crate::security::Session;

/// Parses a request frame (header included) and decodes its body as the broker would for its
/// api key and version, when the broker implements that version.
pub fn decode_request(frame: &[u8]) {
    let Ok(frame) = parse_frame(Bytes::copy_from_slice(frame), Session::detached()) else {
        return;
    };
    let implemented = SUPPORTED
        .iter()
        .any(|(api, min, max)| *api == frame.api && (*min..=*max).contains(&frame.version));
    if implemented {
        decode_body(&frame);
    }
}

/// Decodes `body` as a request of `api` at `version` (any version, implemented or not).
pub fn decode_body_as(api: i16, version: i16, body: &[u8]) {
    let Ok(api) = ApiKey::try_from(api) else {
        return;
    };
    let frame = Frame::new(
        api,
        version,
        messages::RequestHeader::default(),
        Bytes::copy_from_slice(body),
        Session::detached(),
    );
    if SUPPORTED
        .iter()
        .any(|(a, min, max)| *a == api && (*min..=*max).contains(&version))
    {
        decode_body(&frame);
    }
}

/// Decodes the frame's body for its api; false for an api it has no decoder for.
fn decode_body(frame: &Frame) -> bool {
    use messages::*;
    let decoded = match frame.api {
        ApiKey::Produce => frame.decode::<ProduceRequest>().map(drop),
        ApiKey::Fetch => frame.decode::<FetchRequest>().map(drop),
        ApiKey::ListOffsets => frame.decode::<ListOffsetsRequest>().map(drop),
        ApiKey::Metadata => frame.decode::<MetadataRequest>().map(drop),
        ApiKey::ApiVersions => frame.decode::<ApiVersionsRequest>().map(drop),
        ApiKey::CreateTopics => frame.decode::<CreateTopicsRequest>().map(drop),
        ApiKey::InitProducerId => frame.decode::<InitProducerIdRequest>().map(drop),
        ApiKey::DeleteTopics => frame.decode::<DeleteTopicsRequest>().map(drop),
        ApiKey::DeleteRecords => frame.decode::<DeleteRecordsRequest>().map(drop),
        ApiKey::DescribeLogDirs => frame.decode::<DescribeLogDirsRequest>().map(drop),
        ApiKey::CreatePartitions => frame.decode::<CreatePartitionsRequest>().map(drop),
        ApiKey::ElectLeaders => frame.decode::<ElectLeadersRequest>().map(drop),
        ApiKey::AlterPartitionReassignments => frame
            .decode::<AlterPartitionReassignmentsRequest>()
            .map(drop),
        ApiKey::ListPartitionReassignments => frame
            .decode::<ListPartitionReassignmentsRequest>()
            .map(drop),
        ApiKey::DescribeConfigs => frame.decode::<DescribeConfigsRequest>().map(drop),
        ApiKey::AlterConfigs => frame.decode::<AlterConfigsRequest>().map(drop),
        ApiKey::IncrementalAlterConfigs => {
            frame.decode::<IncrementalAlterConfigsRequest>().map(drop)
        }
        ApiKey::DescribeCluster => frame.decode::<DescribeClusterRequest>().map(drop),
        ApiKey::OffsetForLeaderEpoch => frame.decode::<OffsetForLeaderEpochRequest>().map(drop),
        ApiKey::FindCoordinator => frame.decode::<FindCoordinatorRequest>().map(drop),
        ApiKey::JoinGroup => frame.decode::<JoinGroupRequest>().map(drop),
        ApiKey::SyncGroup => frame.decode::<SyncGroupRequest>().map(drop),
        ApiKey::Heartbeat => frame.decode::<HeartbeatRequest>().map(drop),
        ApiKey::LeaveGroup => frame.decode::<LeaveGroupRequest>().map(drop),
        ApiKey::OffsetCommit => frame.decode::<OffsetCommitRequest>().map(drop),
        ApiKey::OffsetFetch => frame.decode::<OffsetFetchRequest>().map(drop),
        ApiKey::ListGroups => frame.decode::<ListGroupsRequest>().map(drop),
        ApiKey::DescribeGroups => frame.decode::<DescribeGroupsRequest>().map(drop),
        ApiKey::DeleteGroups => frame.decode::<DeleteGroupsRequest>().map(drop),
        ApiKey::OffsetDelete => frame.decode::<OffsetDeleteRequest>().map(drop),
        ApiKey::ConsumerGroupHeartbeat => frame.decode::<ConsumerGroupHeartbeatRequest>().map(drop),
        ApiKey::ConsumerGroupDescribe => frame.decode::<ConsumerGroupDescribeRequest>().map(drop),
        ApiKey::AddPartitionsToTxn => frame.decode::<AddPartitionsToTxnRequest>().map(drop),
        ApiKey::AddOffsetsToTxn => frame.decode::<AddOffsetsToTxnRequest>().map(drop),
        ApiKey::EndTxn => frame.decode::<EndTxnRequest>().map(drop),
        ApiKey::TxnOffsetCommit => frame.decode::<TxnOffsetCommitRequest>().map(drop),
        ApiKey::WriteTxnMarkers => frame.decode::<WriteTxnMarkersRequest>().map(drop),
        ApiKey::DescribeTransactions => frame.decode::<DescribeTransactionsRequest>().map(drop),
        ApiKey::ListTransactions => frame.decode::<ListTransactionsRequest>().map(drop),
        ApiKey::GetTelemetrySubscriptions => {
            frame.decode::<GetTelemetrySubscriptionsRequest>().map(drop)
        }
        ApiKey::PushTelemetry => frame.decode::<PushTelemetryRequest>().map(drop),
        ApiKey::SaslHandshake => frame.decode::<SaslHandshakeRequest>().map(drop),
        ApiKey::CreateAcls => frame.decode::<CreateAclsRequest>().map(drop),
        ApiKey::DescribeAcls => frame.decode::<DescribeAclsRequest>().map(drop),
        ApiKey::DescribeClientQuotas => frame.decode::<DescribeClientQuotasRequest>().map(drop),
        ApiKey::AlterClientQuotas => frame.decode::<AlterClientQuotasRequest>().map(drop),
        ApiKey::DeleteAcls => frame.decode::<DeleteAclsRequest>().map(drop),
        ApiKey::SaslAuthenticate => frame.decode::<SaslAuthenticateRequest>().map(drop),
        ApiKey::DescribeUserScramCredentials => frame
            .decode::<DescribeUserScramCredentialsRequest>()
            .map(drop),
        ApiKey::AlterUserScramCredentials => {
            frame.decode::<AlterUserScramCredentialsRequest>().map(drop)
        }
        _ => return false,
    };
    drop(decoded);
    true
}

/// Reads a topic catalog entry as the broker does when recovering topics from a bucket.
pub fn decode_catalog_entry(json: &[u8]) {
    let _ = serde_json::from_slice::<crate::catalog::CatalogEntry>(json);
}

/// Replays bytes as a partition of `__consumer_offsets` (whatever batches they hold).
pub fn load_group_records(batches: &[u8]) {
    crate::group::store::load_bytes(batches);
}

/// Replays bytes as a partition of `__transaction_state` (whatever batches they hold).
pub fn load_txn_records(batches: &[u8]) {
    crate::txn::store::load_bytes(batches);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_implemented_api_has_a_decoder_here() {
        // An api the match above forgets would silently never be fuzzed.
        for (api, _, max) in SUPPORTED {
            let frame = Frame::new(
                *api,
                *max,
                messages::RequestHeader::default(),
                Bytes::new(),
                Session::detached(),
            );
            assert!(decode_body(&frame), "{api:?} has no decoder in fuzzing.rs");
        }
    }
}
