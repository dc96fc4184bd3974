//! The transaction APIs over the coordinator in `crate::txn`: InitProducerId with a
//! transactional id, AddPartitionsToTxn, AddOffsetsToTxn, EndTxn, TxnOffsetCommit,
//! DescribeTransactions and ListTransactions; and the partition leaders' side: the markers
//! (WriteTxnMarkers, or in process when the coordinator is here) and the KIP-890 check of a
//! producer's first transactional batch on a partition.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use futures::future::BoxFuture;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_request::{
    AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
};
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::describe_transactions_response::{
    TopicData, TransactionState as Described,
};
use kafka_protocol::messages::list_transactions_response::TransactionState as Listed;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, DescribeTransactionsRequest, DescribeTransactionsResponse,
    EndTxnRequest, EndTxnResponse, InitProducerIdRequest, InitProducerIdResponse,
    ListTransactionsRequest, ListTransactionsResponse, ProducerId, TransactionalId,
    TxnOffsetCommitRequest, TxnOffsetCommitResponse, WriteTxnMarkersRequest,
    WriteTxnMarkersResponse,
};
use kafka_protocol::protocol::StrBytes;
use strata_storage::ControlMarker;

use super::{str_bytes, topic_name};
use crate::group::now_ms;
use crate::group::store::{Committed, OFFSETS_TOPIC};
use crate::protocol::{Frame, FrameError, storage_error_code};
use crate::security::acl::{self, Resource};
use crate::state::BrokerState;
use crate::statelog::{self, MarkerFailed};
use crate::txn::machine::code;
use crate::txn::{MarkerWriter, Markers};

use super::groups::{MAX_METADATA, OFFSET_METADATA_TOO_LARGE, UNKNOWN_TOPIC_OR_PARTITION};

const OPERATION_NOT_ATTEMPTED: i16 = 55;

/// A topic partition.
type Tp = (String, i32);
/// Per topic, per partition: the offset to commit in the transaction, or why not.
type TxnCommitPlan = Vec<(String, Vec<(i32, Result<Committed, i16>)>)>;

/// PRODUCER_FENCED exists from these request versions on; older ones get
/// INVALID_PRODUCER_EPOCH (Kafka's mapping).
fn fenced_for(code: i16, version: i16, since: i16) -> i16 {
    if code == code::PRODUCER_FENCED && version < since {
        code::INVALID_PRODUCER_EPOCH
    } else {
        code
    }
}

fn txn_id(id: &str) -> TransactionalId {
    TransactionalId(StrBytes::from_string(id.to_owned()))
}

/// InitProducerId for a transactional producer.
pub(super) async fn init_producer_id(
    state: &Arc<BrokerState>,
    frame: &Frame,
    req: InitProducerIdRequest,
) -> Result<Bytes, FrameError> {
    let id = req
        .transactional_id
        .as_ref()
        .map(|s| s.0.to_string())
        .unwrap_or_default();
    let fail = |code: i16| {
        frame.respond(
            &InitProducerIdResponse::default()
                .with_error_code(fenced_for(code, frame.version, 4))
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        )
    };
    if id.is_empty() {
        return fail(ResponseError::InvalidRequest.code());
    }
    if !super::allowed(
        state,
        frame,
        acl::code::WRITE,
        Resource::TransactionalId(&id),
    ) {
        return fail(acl::code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
    }
    let new_id = match state.txns.needs_new_id(&id) {
        Err(code) => return fail(code),
        Ok(false) => None,
        Ok(true) => match super::admin::allocate_producer_id(state).await {
            Ok(id) => Some(id),
            Err(e) => return fail(e.code()),
        },
    };
    let expected = (req.producer_id.0 >= 0 && req.producer_epoch >= 0)
        .then_some((req.producer_id.0, req.producer_epoch));
    match state
        .txns
        .init_producer_id(&id, req.transaction_timeout_ms, expected, new_id)
        .await
    {
        Ok((producer_id, epoch)) => frame.respond(
            &InitProducerIdResponse::default()
                .with_producer_id(ProducerId(producer_id))
                .with_producer_epoch(epoch),
        ),
        Err(code) => fail(code),
    }
}

/// The partitions of `topics` that exist, and the error for those that do not.
fn known_partitions(
    state: &BrokerState,
    topics: &[AddPartitionsToTxnTopic],
) -> (Vec<Tp>, Vec<(Tp, i16)>) {
    let image = state.image();
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for t in topics {
        let name = t.name.0.to_string();
        let count = image.topics.get(&name).map_or(0, |r| r.partitions.len());
        for &p in &t.partitions {
            if usize::try_from(p).is_ok_and(|i| i < count) {
                known.push((name.clone(), p));
            } else {
                unknown.push(((name.clone(), p), UNKNOWN_TOPIC_OR_PARTITION));
            }
        }
    }
    (known, unknown)
}

/// Results by topic, as AddPartitionsToTxn answers them.
fn topic_results(results: Vec<((String, i32), i16)>) -> Vec<AddPartitionsToTxnTopicResult> {
    let mut by_topic: BTreeMap<String, Vec<AddPartitionsToTxnPartitionResult>> = BTreeMap::new();
    for ((topic, p), code) in results {
        by_topic.entry(topic).or_default().push(
            AddPartitionsToTxnPartitionResult::default()
                .with_partition_index(p)
                .with_partition_error_code(code),
        );
    }
    by_topic
        .into_iter()
        .map(|(t, ps)| {
            AddPartitionsToTxnTopicResult::default()
                .with_name(topic_name(&t))
                .with_results_by_partition(ps)
        })
        .collect()
}

/// One transaction's AddPartitionsToTxn: all its partitions added, or none (an unknown one
/// makes the rest OPERATION_NOT_ATTEMPTED, as in Kafka); `verify_only` (v4+, from partition
/// leaders) checks each partition instead.
async fn add_or_verify(
    state: &Arc<BrokerState>,
    frame: &Frame,
    t: &AddPartitionsToTxnTransaction,
    version: i16,
) -> Vec<((String, i32), i16)> {
    let id = t.transactional_id.0.to_string();
    // Brokers verify (CLUSTER_ACTION); producers add, with WRITE on the transactional id
    // and on each topic.
    let refused = match t.verify_only {
        true => (!super::allowed(state, frame, acl::code::CLUSTER_ACTION, Resource::Cluster))
            .then_some(acl::code::CLUSTER_AUTHORIZATION_FAILED),
        false => (!super::allowed(
            state,
            frame,
            acl::code::WRITE,
            Resource::TransactionalId(&id),
        ))
        .then_some(acl::code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED),
    };
    if t.verify_only && refused.is_none() {
        // A partition leader's check is a cluster action: not a client's usage.
        frame.exempt_from_quotas();
    }
    let unwritable: Vec<&str> = t
        .topics
        .iter()
        .map(|topic| topic.name.0.as_str())
        .filter(|n| !super::allowed(state, frame, acl::code::WRITE, Resource::Topic(n)))
        .collect();
    if refused.is_some() || (!t.verify_only && !unwritable.is_empty()) {
        return t
            .topics
            .iter()
            .flat_map(|topic| {
                let name = topic.name.0.to_string();
                let code = match refused {
                    Some(code) => code,
                    None if unwritable.contains(&name.as_str()) => {
                        acl::code::TOPIC_AUTHORIZATION_FAILED
                    }
                    None => OPERATION_NOT_ATTEMPTED,
                };
                topic
                    .partitions
                    .iter()
                    .map(move |p| ((name.clone(), *p), code))
            })
            .collect();
    }
    let (known, mut unknown) = known_partitions(state, &t.topics);
    let (pid, epoch) = (t.producer_id.0, t.producer_epoch);
    if t.verify_only {
        let mut results: Vec<_> = known
            .into_iter()
            .map(|p| {
                let code = state.txns.verify(&id, pid, epoch, &p).err().unwrap_or(0);
                (p, code)
            })
            .collect();
        results.append(&mut unknown);
        return results;
    }
    if !unknown.is_empty() {
        let mut results: Vec<_> = known
            .into_iter()
            .map(|p| (p, OPERATION_NOT_ATTEMPTED))
            .collect();
        results.append(&mut unknown);
        return results;
    }
    let code = match state.txns.add_partitions(&id, pid, epoch, &known).await {
        Ok(()) => 0,
        Err(code) => fenced_for(code, version, 2),
    };
    known.into_iter().map(|p| (p, code)).collect()
}

pub(super) async fn add_partitions_to_txn(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: AddPartitionsToTxnRequest = frame.decode()?;
    if frame.version <= 3 {
        let t = AddPartitionsToTxnTransaction::default()
            .with_transactional_id(req.v3_and_below_transactional_id.clone())
            .with_producer_id(req.v3_and_below_producer_id)
            .with_producer_epoch(req.v3_and_below_producer_epoch)
            .with_topics(req.v3_and_below_topics.clone());
        let results = add_or_verify(state, frame, &t, frame.version).await;
        return frame.respond(
            &AddPartitionsToTxnResponse::default()
                .with_results_by_topic_v3_and_below(topic_results(results)),
        );
    }
    let mut answers = Vec::new();
    for t in &req.transactions {
        let results = add_or_verify(state, frame, t, frame.version).await;
        answers.push(
            AddPartitionsToTxnResult::default()
                .with_transactional_id(t.transactional_id.clone())
                .with_topic_results(topic_results(results)),
        );
    }
    frame.respond(&AddPartitionsToTxnResponse::default().with_results_by_transaction(answers))
}

pub(super) async fn add_offsets_to_txn(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: AddOffsetsToTxnRequest = frame.decode()?;
    let txn = Resource::TransactionalId(req.transactional_id.0.as_str());
    let refused = if !super::allowed(state, frame, acl::code::WRITE, txn) {
        Some(acl::code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
    } else {
        super::groups::group_denied(state, frame, req.group_id.0.as_str(), acl::code::READ)
    };
    if let Some(code) = refused {
        return frame.respond(&AddOffsetsToTxnResponse::default().with_error_code(code));
    }
    let partition = (
        OFFSETS_TOPIC.to_string(),
        state.groups.partition_of(req.group_id.0.as_str()),
    );
    let code = match state
        .txns
        .add_partitions(
            req.transactional_id.0.as_str(),
            req.producer_id.0,
            req.producer_epoch,
            &[partition],
        )
        .await
    {
        Ok(()) => 0,
        Err(code) => fenced_for(code, frame.version, 2),
    };
    frame.respond(&AddOffsetsToTxnResponse::default().with_error_code(code))
}

pub(super) async fn end_txn(state: &Arc<BrokerState>, frame: &Frame) -> Result<Bytes, FrameError> {
    let req: EndTxnRequest = frame.decode()?;
    let id = req.transactional_id.0.to_string();
    if !super::allowed(
        state,
        frame,
        acl::code::WRITE,
        Resource::TransactionalId(&id),
    ) {
        return frame.respond(
            &EndTxnResponse::default()
                .with_error_code(acl::code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED),
        );
    }
    // Transaction version 2 (KIP-890 part 2): the epoch is bumped at every end.
    let v2 = frame.version >= 5;
    let fail = |code: i16| {
        frame.respond(
            &EndTxnResponse::default()
                .with_error_code(fenced_for(code, frame.version, 2))
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        )
    };
    let new_id = match v2.then(|| state.txns.needs_new_id(&id)) {
        Some(Err(code)) => return fail(code),
        Some(Ok(true)) => match super::admin::allocate_producer_id(state).await {
            Ok(id) => Some(id),
            Err(e) => return fail(e.code()),
        },
        _ => None,
    };
    match state
        .txns
        .end_txn(
            &id,
            req.producer_id.0,
            req.producer_epoch,
            req.committed,
            v2,
            new_id,
        )
        .await
    {
        Ok((producer_id, epoch)) => frame.respond(
            &EndTxnResponse::default()
                .with_producer_id(ProducerId(producer_id))
                .with_producer_epoch(epoch),
        ),
        Err(code) => fail(code),
    }
}

pub(super) async fn txn_offset_commit(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: TxnOffsetCommitRequest = frame.decode()?;
    let group = req.group_id.0.to_string();
    let now = now_ms();
    let image = state.image();
    let txn = Resource::TransactionalId(req.transactional_id.0.as_str());
    let txn_allowed = super::allowed(state, frame, acl::code::WRITE, txn);
    let group_refused = super::groups::group_denied(state, frame, &group, acl::code::READ);
    let check = async {
        if !txn_allowed {
            return Err(acl::code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
        }
        if let Some(code) = group_refused {
            return Err(code);
        }
        let (part, epoch) = state.groups.route(&group)?;
        // KIP-447: a member's commit is checked against the group's generation.
        if req.generation_id >= 0 {
            state.groups.with_group(&group, |e| {
                e.check_commit(
                    req.member_id.as_str(),
                    req.group_instance_id.as_ref().map(StrBytes::as_str),
                    req.generation_id,
                    &[],
                )
            })?;
        }
        // The offsets partition must be in the transaction (KIP-890: added by
        // AddOffsetsToTxn, or implicitly from v5 under transaction version 2).
        let partition = (OFFSETS_TOPIC.to_string(), part.index);
        verify(
            state,
            req.transactional_id.0.as_str(),
            req.producer_id.0,
            req.producer_epoch,
            partition,
            frame.version >= 5,
        )
        .await
        .map_err(|c| fenced_for(c, frame.version, 3))?;
        Ok::<_, i16>((part, epoch))
    }
    .await;
    let mut results: TxnCommitPlan = Vec::new();
    for t in &req.topics {
        let name = t.name.0.to_string();
        let count = image.topics.get(&name).map_or(0, |r| r.partitions.len());
        let readable = super::allowed(state, frame, acl::code::READ, Resource::Topic(&name));
        let ps = t
            .partitions
            .iter()
            .map(|p| {
                let metadata = p.committed_metadata.as_ref().map(|m| m.to_string());
                let r = match &check {
                    Err(e) => Err(*e),
                    Ok(_) if !readable => Err(acl::code::TOPIC_AUTHORIZATION_FAILED),
                    Ok(_) if !usize::try_from(p.partition_index).is_ok_and(|i| i < count) => {
                        Err(UNKNOWN_TOPIC_OR_PARTITION)
                    }
                    Ok(_) if metadata.as_ref().is_some_and(|m| m.len() > MAX_METADATA) => {
                        Err(OFFSET_METADATA_TOO_LARGE)
                    }
                    Ok(_) => Ok(Committed {
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata,
                        commit_ms: now,
                    }),
                };
                (p.partition_index, r)
            })
            .collect();
        results.push((name, ps));
    }
    if let Ok((part, epoch)) = check {
        let offsets: Vec<((String, i32), Committed)> = results
            .iter()
            .flat_map(|(t, ps)| {
                ps.iter()
                    .filter_map(|(p, r)| r.as_ref().ok().map(|c| ((t.clone(), *p), c.clone())))
            })
            .collect();
        if !offsets.is_empty() {
            let producer = (req.producer_id.0, req.producer_epoch);
            if let Err(e) = state
                .groups
                .commit_in_txn(part, epoch, &group, producer, offsets)
                .await
            {
                let code = storage_error_code(&e).code();
                for r in results.iter_mut().flat_map(|(_, ps)| ps.iter_mut()) {
                    if r.1.is_ok() {
                        r.1 = Err(code);
                    }
                }
            }
        }
    }
    let topics = results
        .into_iter()
        .map(|(name, ps)| {
            TxnOffsetCommitResponseTopic::default()
                .with_name(topic_name(&name))
                .with_partitions(
                    ps.into_iter()
                        .map(|(p, r)| {
                            TxnOffsetCommitResponsePartition::default()
                                .with_partition_index(p)
                                .with_error_code(r.err().unwrap_or(0))
                        })
                        .collect(),
                )
        })
        .collect();
    frame.respond(&TxnOffsetCommitResponse::default().with_topics(topics))
}

pub(super) async fn describe_transactions(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: DescribeTransactionsRequest = frame.decode()?;
    let states = req
        .transactional_ids
        .iter()
        .map(|id| {
            let d = Described::default()
                .with_transactional_id(id.clone())
                .with_transaction_state(str_bytes(""))
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
                .with_transaction_start_time_ms(-1);
            let txn = Resource::TransactionalId(id.0.as_str());
            if !super::allowed(state, frame, acl::code::DESCRIBE, txn) {
                return d.with_error_code(acl::code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
            }
            match state.txns.state_of(id.0.as_str()) {
                Err(code) => d.with_error_code(code),
                Ok(None) => d.with_error_code(code::TRANSACTIONAL_ID_NOT_FOUND),
                Ok(Some(m)) => {
                    let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
                    for (t, p) in &m.partitions {
                        topics.entry(t).or_default().push(*p);
                    }
                    d.with_transaction_state(str_bytes(m.state.name()))
                        .with_transaction_timeout_ms(m.timeout_ms)
                        .with_transaction_start_time_ms(m.start_ms)
                        .with_producer_id(ProducerId(m.producer_id))
                        .with_producer_epoch(m.epoch)
                        .with_topics(
                            topics
                                .into_iter()
                                .map(|(t, ps)| {
                                    TopicData::default()
                                        .with_topic(topic_name(t))
                                        .with_partitions(ps)
                                })
                                .collect(),
                        )
                }
            }
        })
        .collect();
    frame.respond(&DescribeTransactionsResponse::default().with_transaction_states(states))
}

pub(super) async fn list_transactions(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: ListTransactionsRequest = frame.decode()?;
    const STATES: [&str; 6] = [
        "Empty",
        "Ongoing",
        "PrepareCommit",
        "PrepareAbort",
        "CompleteCommit",
        "CompleteAbort",
    ];
    let wanted: Vec<&str> = req.state_filters.iter().map(StrBytes::as_str).collect();
    let unknown: Vec<StrBytes> = req
        .state_filters
        .iter()
        .filter(|s| !STATES.contains(&s.as_str()))
        .cloned()
        .collect();
    let now = now_ms();
    let mut listed: Vec<_> = state
        .txns
        .list()
        .into_iter()
        .filter(|(id, _)| {
            super::allowed(
                state,
                frame,
                acl::code::DESCRIBE,
                Resource::TransactionalId(id),
            )
        })
        .filter(|(_, m)| wanted.is_empty() || wanted.contains(&m.state.name()))
        .filter(|(_, m)| {
            req.producer_id_filters.is_empty()
                || req.producer_id_filters.contains(&ProducerId(m.producer_id))
        })
        // v1: only transactions running longer than this (ms).
        .filter(|(_, m)| {
            req.duration_filter < 0 || (m.start_ms >= 0 && now - m.start_ms > req.duration_filter)
        })
        .collect();
    listed.sort_by(|a, b| a.0.cmp(&b.0));
    let states = listed
        .into_iter()
        .map(|(id, m)| {
            Listed::default()
                .with_transactional_id(txn_id(&id))
                .with_producer_id(ProducerId(m.producer_id))
                .with_transaction_state(str_bytes(m.state.name()))
        })
        .collect();
    frame.respond(
        &ListTransactionsResponse::default()
            .with_unknown_state_filters(unknown)
            .with_transaction_states(states),
    )
}

/// WriteTxnMarkers: a transaction coordinator (on another broker) has this broker, the
/// partitions' leader, append markers.
pub(super) async fn write_txn_markers(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: WriteTxnMarkersRequest = frame.decode()?;
    if !super::allowed(state, frame, acl::code::CLUSTER_ACTION, Resource::Cluster) {
        return Err(FrameError::NotAdmitted(
            "WriteTxnMarkers needs CLUSTER_ACTION on the cluster".into(),
        ));
    }
    let mut answers = Vec::new();
    for m in &req.markers {
        let markers = Markers {
            producer_id: m.producer_id.0,
            producer_epoch: m.producer_epoch,
            commit: m.transaction_result,
            coordinator_epoch: m.coordinator_epoch,
            partitions: m
                .topics
                .iter()
                .flat_map(|t| {
                    let name = t.name.0.to_string();
                    t.partition_indexes.iter().map(move |p| (name.clone(), *p))
                })
                .collect(),
        };
        let results = write_local(state, &markers).await;
        let mut by_topic: BTreeMap<String, Vec<WritableTxnMarkerPartitionResult>> = BTreeMap::new();
        for ((t, p), code) in results {
            by_topic.entry(t).or_default().push(
                WritableTxnMarkerPartitionResult::default()
                    .with_partition_index(p)
                    .with_error_code(code),
            );
        }
        answers.push(
            WritableTxnMarkerResult::default()
                .with_producer_id(m.producer_id)
                .with_topics(
                    by_topic
                        .into_iter()
                        .map(|(t, ps)| {
                            WritableTxnMarkerTopicResult::default()
                                .with_name(topic_name(&t))
                                .with_partitions(ps)
                        })
                        .collect(),
                ),
        );
    }
    frame.respond(&WriteTxnMarkersResponse::default().with_markers(answers))
}

/// Appends `markers` on the partitions this broker leads, concurrently.
async fn write_local(state: &Arc<BrokerState>, markers: &Markers) -> Vec<((String, i32), i16)> {
    let writes = markers.partitions.iter().map(|(topic, index)| async move {
        let code = write_one(state, markers, topic, *index).await;
        ((topic.clone(), *index), code)
    });
    futures::future::join_all(writes).await
}

async fn write_one(state: &Arc<BrokerState>, m: &Markers, topic: &str, index: i32) -> i16 {
    let image = state.image();
    let Some(record) = image.topics.get(topic) else {
        return UNKNOWN_TOPIC_OR_PARTITION;
    };
    let (part, meta) = match state.led_partition(record, index, -1) {
        Ok(led) => led,
        Err(e) => return e.code(),
    };
    if part.remote.recovering() {
        return ResponseError::NotLeaderOrFollower.code();
    }
    let marker = ControlMarker {
        commit: m.commit,
        coordinator_epoch: m.coordinator_epoch,
    };
    let leader_epoch = meta.leader_epoch;
    let producer = (m.producer_id, m.producer_epoch);
    let written = if topic == OFFSETS_TOPIC {
        state
            .groups
            .write_marker(part, leader_epoch, producer, marker)
            .await
    } else {
        statelog::write_marker(&part, leader_epoch, &state.lease, producer, marker).await
    };
    match written {
        Ok(()) => 0,
        Err(MarkerFailed::Refused(r)) => {
            tracing::info!(topic, partition = index, refusal = ?r, "transaction marker refused");
            ResponseError::InvalidProducerEpoch.code()
        }
        Err(MarkerFailed::Storage(e)) => {
            tracing::warn!(topic, partition = index, error = %e, "writing a transaction marker failed");
            storage_error_code(&e).code()
        }
    }
}

/// KIP-890 part 1: asks `id`'s coordinator (here or on another broker) whether producer
/// `producer_id`/`epoch` may write `partition` in its open transaction; with `add` (a
/// transaction version 2 producer), adds the partition to it instead.
pub(super) async fn verify(
    state: &Arc<BrokerState>,
    id: &str,
    producer_id: i64,
    epoch: i16,
    partition: (String, i32),
    add: bool,
) -> Result<(), i16> {
    let coordinator = state.txns.coordinator_of(id)?;
    if coordinator == state.id {
        return if add {
            state
                .txns
                .add_partitions(id, producer_id, epoch, &[partition])
                .await
        } else {
            state.txns.verify(id, producer_id, epoch, &partition)
        };
    }
    let req = AddPartitionsToTxnRequest::default().with_transactions(vec![
        AddPartitionsToTxnTransaction::default()
            .with_transactional_id(txn_id(id))
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(epoch)
            .with_verify_only(!add)
            .with_topics(vec![
                AddPartitionsToTxnTopic::default()
                    .with_name(topic_name(&partition.0))
                    .with_partitions(vec![partition.1]),
            ]),
    ]);
    let resp = state.peers.send(coordinator, &req).await.map_err(|e| {
        tracing::debug!(transactional_id = id, error = %e, "verifying with the coordinator failed");
        code::COORDINATOR_NOT_AVAILABLE
    })?;
    if resp.error_code != 0 {
        return Err(resp.error_code);
    }
    let found = resp
        .results_by_transaction
        .iter()
        .flat_map(|t| &t.topic_results)
        .flat_map(|t| &t.results_by_partition)
        .map(|p| p.partition_error_code)
        .next();
    match found {
        Some(0) => Ok(()),
        Some(code) => Err(code),
        None => Err(code::COORDINATOR_NOT_AVAILABLE),
    }
}

/// The coordinator's way to the partition leaders: in process for partitions led here,
/// WriteTxnMarkers to the others.
#[derive(Debug)]
struct Writer(Weak<BrokerState>);

/// The [`MarkerWriter`] of this broker's transaction coordinator.
pub(crate) fn marker_writer(state: &Arc<BrokerState>) -> Arc<dyn MarkerWriter> {
    Arc::new(Writer(Arc::downgrade(state)))
}

impl MarkerWriter for Writer {
    fn write(&self, markers: Markers) -> BoxFuture<'_, Vec<((String, i32), i16)>> {
        Box::pin(async move {
            let Some(state) = self.0.upgrade() else {
                return Vec::new();
            };
            let image = state.image();
            let mut by_leader: BTreeMap<i32, Vec<(String, i32)>> = BTreeMap::new();
            let mut results = Vec::new();
            for (topic, index) in &markers.partitions {
                let leader = image
                    .topics
                    .get(topic)
                    .and_then(|t| {
                        usize::try_from(*index)
                            .ok()
                            .and_then(|i| t.partitions.get(i))
                    })
                    .map(|p| p.leader);
                match leader {
                    None => results.push(((topic.clone(), *index), UNKNOWN_TOPIC_OR_PARTITION)),
                    Some(None) => results.push((
                        (topic.clone(), *index),
                        ResponseError::LeaderNotAvailable.code(),
                    )),
                    Some(Some(l)) => by_leader
                        .entry(l)
                        .or_default()
                        .push((topic.clone(), *index)),
                }
            }
            let sends = by_leader.into_iter().map(|(leader, partitions)| {
                let state = state.clone();
                let markers = Markers {
                    partitions,
                    ..markers.clone()
                };
                async move {
                    if leader == state.id {
                        write_local(&state, &markers).await
                    } else {
                        write_remote(&state, leader, &markers).await
                    }
                }
            });
            for r in futures::future::join_all(sends).await {
                results.extend(r);
            }
            results
        })
    }
}

/// WriteTxnMarkers to `leader` for `markers`' partitions.
async fn write_remote(
    state: &BrokerState,
    leader: i32,
    markers: &Markers,
) -> Vec<((String, i32), i16)> {
    let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in &markers.partitions {
        topics.entry(t).or_default().push(*p);
    }
    let req = WriteTxnMarkersRequest::default().with_markers(vec![
        WritableTxnMarker::default()
            .with_producer_id(ProducerId(markers.producer_id))
            .with_producer_epoch(markers.producer_epoch)
            .with_transaction_result(markers.commit)
            .with_coordinator_epoch(markers.coordinator_epoch)
            .with_topics(
                topics
                    .into_iter()
                    .map(|(t, ps)| {
                        WritableTxnMarkerTopic::default()
                            .with_name(topic_name(t))
                            .with_partition_indexes(ps)
                    })
                    .collect(),
            ),
    ]);
    match state.peers.send(leader, &req).await {
        Ok(resp) => resp
            .markers
            .iter()
            .flat_map(|m| &m.topics)
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| ((t.name.0.to_string(), p.partition_index), p.error_code))
            })
            .collect(),
        Err(e) => {
            tracing::debug!(leader, error = %e, "WriteTxnMarkers failed");
            markers
                .partitions
                .iter()
                .map(|p| (p.clone(), ResponseError::NetworkException.code()))
                .collect()
        }
    }
}
