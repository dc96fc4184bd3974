//! Produce: validate and append each partition's batches to its log, answering by `acks`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse};
use strata_storage::{AppendInfo, StorageError};

use super::str_bytes;
use crate::partition::lead::NotWritten;
use crate::partition::{Partition, Replicated};
use crate::producer::{self, ProducerBatch, Refusal, Verdict};
use crate::protocol::{Frame, FrameError, storage_error_code};
use crate::security::acl::{self, Resource};
use crate::state::BrokerState;
use crate::turnstile::Turn;
use crate::txn::machine::code;

/// The longest a produce waits for a partition to read its object-store manifest.
const MAX_RECOVERY_WAIT: Duration = Duration::from_secs(10);

pub(super) async fn produce(
    state: &Arc<BrokerState>,
    frame: &Frame,
    turn: Option<Turn>,
) -> Result<Option<Bytes>, FrameError> {
    let req: ProduceRequest = frame.decode()?;
    let acks = req.acks;
    let txn_id = req.transactional_id.as_ref().map(|s| s.0.to_string());
    let txn_id = txn_id.as_deref();
    // Transaction version 2 producers (v12+) leave adding partitions to the leaders.
    let implicit_add = frame.version >= 12;
    // A partition still reading its manifest is waited for, within the request's timeout.
    let recovery_wait =
        Duration::from_millis(u64::try_from(req.timeout_ms).unwrap_or(0)).min(MAX_RECOVERY_WAIT);
    let image = state.image();
    // A leader the controller may have fenced takes no writes (see `lease`).
    let leading = state.lease.held();
    let mut pending = Vec::new();
    let txn_denied = txn_id.is_some_and(|id| {
        !super::allowed(
            state,
            frame,
            acl::code::WRITE,
            Resource::TransactionalId(id),
        )
    });
    for topic in req.topic_data {
        let name = topic.name.0.to_string();
        let record = image.topics.get(&name);
        let writable = super::allowed(state, frame, acl::code::WRITE, Resource::Topic(&name));
        for p in topic.partition_data {
            let index = p.index;
            let target = match (acks, record) {
                _ if txn_denied => Err(ResponseError::TransactionalIdAuthorizationFailed),
                (-1..=1, _) if !writable => Err(ResponseError::TopicAuthorizationFailed),
                // Only the broker writes its internal topics (Kafka's rule).
                (-1..=1, Some(t)) if super::admin::is_internal(&t.name) => {
                    Err(ResponseError::InvalidTopicException)
                }
                (-1..=1, Some(_)) if !leading => Err(ResponseError::NotLeaderOrFollower),
                (-1..=1, Some(t)) => match state.led_partition(t, index, -1) {
                    // acks=all needs min.insync.replicas copies in sync (Kafka's rule).
                    Ok((part, meta))
                        if acks == -1
                            && (meta.isr.len() as i64) < part.settings().min_insync_replicas =>
                    {
                        Err(ResponseError::NotEnoughReplicas)
                    }
                    Ok((part, meta)) => Ok((part, meta.leader_epoch)),
                    Err(e) => Err(e),
                },
                (-1..=1, None) => Err(ResponseError::UnknownTopicOrPartition),
                _ => Err(ResponseError::InvalidRequiredAcks),
            };
            let records = p.records;
            pending.push((name.clone(), index, async move {
                let (part, leader_epoch) = target.map_err(|e| (e, None))?;
                let records = records.ok_or((ResponseError::CorruptMessage, None))?;
                let guard =
                    verify_transactional(state, txn_id, &part, &records, implicit_add).await?;
                let bytes = records.len() as u64;
                let appended = append(part, records, leader_epoch, recovery_wait, guard).await?;
                let (part, landed, last_offset) = &appended;
                let count = (last_offset + 1).saturating_sub(landed.base_offset);
                state.metrics.produced(&part.topic, count, bytes);
                Ok(appended)
            }));
        }
    }
    let (keys, futures): (Vec<_>, Vec<_>) = pending
        .into_iter()
        .map(|(name, index, fut)| ((name, index), fut))
        .unzip();
    // Append in this connection's request order; the fsync wait below may overlap.
    if let Some(turn) = &turn {
        turn.wait().await;
    }
    let appended = futures::future::join_all(futures).await;
    drop(turn);
    let replication_wait = Duration::from_millis(u64::try_from(req.timeout_ms).unwrap_or(0));
    let waiting = std::time::Instant::now();
    let outcomes = if acks == -1 {
        futures::future::join_all(appended.into_iter().map(|r| async move {
            let (part, landed, last_offset) = r?;
            sync(part.clone(), last_offset).await?;
            // Every in-sync replica has it (followers fetch only what they made durable).
            match part
                .replicated(last_offset + 1, replication_wait, &state.lease)
                .await
            {
                // Kafka's rule: the in-sync replicas that have it must still be at least
                // min.insync.replicas (they shrank while it waited: the leader dropped
                // followers that stopped fetching), or it is not acknowledged.
                Replicated::Yes if in_sync(state, &part) < part.settings().min_insync_replicas => {
                    Err((
                        ResponseError::NotEnoughReplicasAfterAppend,
                        Some("the in-sync replicas shrank below min.insync.replicas".into()),
                    ))
                }
                Replicated::Yes => Ok(landed),
                Replicated::NotLeader => Err((
                    ResponseError::NotLeaderOrFollower,
                    Some("leadership moved before the in-sync replicas had the batch".into()),
                )),
                Replicated::TimedOut => Err((
                    ResponseError::RequestTimedOut,
                    Some("the in-sync replicas did not copy the batch in time".into()),
                )),
            }
        }))
        .await
    } else {
        appended.into_iter().map(|r| r.map(|(_, l, _)| l)).collect()
    };
    // Waiting for the disk and the replicas is not the client's request time.
    frame.waited_for(waiting.elapsed());
    if acks == 0 {
        return Ok(None);
    }
    let mut responses: Vec<TopicProduceResponse> = Vec::new();
    for ((name, index), outcome) in keys.into_iter().zip(outcomes) {
        let resp = match outcome {
            Ok(info) => PartitionProduceResponse::default()
                .with_index(index)
                .with_base_offset(info.base_offset as i64)
                .with_log_append_time_ms(info.log_append_time.unwrap_or(-1))
                .with_log_start_offset(info.log_start_offset as i64),
            Err((code, message)) => {
                state.metrics.error_code(ApiKey::Produce, code.code());
                PartitionProduceResponse::default()
                    .with_index(index)
                    .with_error_code(code.code())
                    .with_base_offset(-1)
                    .with_log_append_time_ms(-1)
                    .with_log_start_offset(-1)
                    .with_error_message(message.map(|m| str_bytes(&m)))
            }
        };
        match responses.last_mut() {
            Some(t) if t.name.0.as_str() == name => t.partition_responses.push(resp),
            _ => responses.push(
                TopicProduceResponse::default()
                    .with_name(super::topic_name(&name))
                    .with_partition_responses(vec![resp]),
            ),
        }
    }
    frame
        .respond(&ProduceResponse::default().with_responses(responses))
        .map(Some)
}

/// Where a batch landed.
#[derive(Clone, Copy, Debug)]
pub(super) struct Landed {
    base_offset: u64,
    log_append_time: Option<i64>,
    log_start_offset: u64,
}

type Failure = (ResponseError, Option<String>);

/// KIP-890 part 1: a transactional batch that would open its producer's transaction on this
/// partition is checked with the transaction coordinator first (or, from a transaction
/// version 2 producer, added to the transaction there). Returns the guard the append must
/// present: a marker arriving meanwhile voids it, so a batch verified just before its
/// transaction ended cannot open a transaction nobody will end.
async fn verify_transactional(
    state: &Arc<BrokerState>,
    txn_id: Option<&str>,
    part: &Partition,
    records: &[u8],
    add: bool,
) -> Result<Option<u64>, Failure> {
    let Some(batch) = producer::batches(records)
        .next()
        .and_then(|(h, _)| ProducerBatch::of(&h))
        .filter(|b| b.transactional)
    else {
        return Ok(None);
    };
    let Some(id) = txn_id.filter(|id| !id.is_empty()) else {
        return Err((
            ResponseError::InvalidRequest,
            Some("transactional batches need the producer's transactional id".into()),
        ));
    };
    let token = {
        let mut producers = part.producers.lock().unwrap_or_else(|p| p.into_inner());
        if producers.in_txn(batch.producer_id, batch.epoch) {
            return Ok(None);
        }
        producers.guard(batch.producer_id)
    };
    let partition = (part.topic.clone(), part.index);
    super::txn::verify(state, id, batch.producer_id, batch.epoch, partition, add)
        .await
        .map_err(|code| {
            let error = match code {
                code::PRODUCER_FENCED | code::INVALID_PRODUCER_EPOCH => {
                    ResponseError::InvalidProducerEpoch
                }
                code::INVALID_TXN_STATE | code::INVALID_PRODUCER_ID_MAPPING => {
                    ResponseError::InvalidTxnState
                }
                // The coordinator is moving or busy: retriable for every client version.
                _ => ResponseError::NotEnoughReplicas,
            };
            let message = format!("the transaction coordinator refused the batch (error {code})");
            (error, Some(message))
        })?;
    Ok(Some(token))
}

/// Appends off the async threads. Batches from idempotent producers are checked against the
/// partition's producer state first, under its lock; `guard` is a transactional batch's
/// verification ([`verify_transactional`]).
async fn append(
    part: Arc<Partition>,
    records: Bytes,
    leader_epoch: i32,
    recovery_wait: Duration,
    guard: Option<u64>,
) -> Result<(Arc<Partition>, Landed, u64), Failure> {
    if part.remote.recovering() {
        // Answered below (retriable) if the manifest is still not read.
        part.remote.recovered_within(recovery_wait).await;
    }
    let p = part.clone();
    let (landed, last_offset) =
        tokio::task::spawn_blocking(move || append_blocking(&p, &records, leader_epoch, guard))
            .await
            .map_err(|e| (ResponseError::UnknownServerError, Some(e.to_string())))??;
    part.appended();
    Ok((part, landed, last_offset))
}

/// Waits until everything up to `last_offset` is fsynced (group commit), so an `acks=all`
/// answer survives a crash.
/// How many replicas the metadata holds in sync for `part` now (0 if it is gone).
fn in_sync(state: &BrokerState, part: &Partition) -> i64 {
    state
        .image()
        .topics
        .get(&part.topic)
        .filter(|t| t.id == part.topic_id)
        .and_then(|t| t.partitions.get(usize::try_from(part.index).ok()?))
        .map_or(0, |p| p.isr.len() as i64)
}

async fn sync(part: Arc<Partition>, last_offset: u64) -> Result<(), Failure> {
    tokio::task::spawn_blocking(move || part.log.sync_through(last_offset + 1))
        .await
        .map_err(|e| (ResponseError::UnknownServerError, Some(e.to_string())))?
        .map_err(|e| (storage_error_code(&e), Some(e.to_string())))
}

pub(super) fn append_blocking(
    part: &Partition,
    records: &[u8],
    leader_epoch: i32,
    guard: Option<u64>,
) -> Result<(Landed, u64), Failure> {
    if part.remote.recovering() {
        return Err((
            ResponseError::NotLeaderOrFollower,
            Some("the partition is still reading its object-store manifest".into()),
        ));
    }
    match part.append_as_leader(leader_epoch, || {
        append_checked(part, records, leader_epoch, guard)
    }) {
        Ok(appended) => appended,
        // The client retries with fresh metadata.
        Err(NotWritten::NotLeader(why)) => Err((ResponseError::NotLeaderOrFollower, Some(why))),
        Err(NotWritten::EpochUnrecorded(e)) => {
            tracing::error!(topic_id = %part.topic_id, error = %e, "recording leader epoch failed");
            Err((ResponseError::KafkaStorageError, Some(e.to_string())))
        }
    }
}

fn append_checked(
    part: &Partition,
    records: &[u8],
    leader_epoch: i32,
    guard: Option<u64>,
) -> Result<(Landed, u64), Failure> {
    let log = &part.log;
    let storage = |e: StorageError| {
        tracing::debug!(topic_id = %part.topic_id, error = %e, "append refused");
        (storage_error_code(&e), Some(e.to_string()))
    };
    let headers = producer::headers(records);
    if headers.iter().any(|h| h.is_control()) {
        return Err((
            ResponseError::InvalidRecord,
            Some("clients may not write control batches".into()),
        ));
    }
    let idempotent = headers.first().and_then(ProducerBatch::of);
    if idempotent.is_none() && headers.iter().any(|h| h.is_transactional()) {
        return Err((
            ResponseError::InvalidRecord,
            Some("a transactional batch needs a producer id and sequence".into()),
        ));
    }
    let (landed, last_offset) = match idempotent {
        None => {
            let info = log.append(records, leader_epoch).map_err(storage)?;
            (landed(&info), info.last_offset)
        }
        Some(batch) => {
            if headers.len() != 1 {
                return Err((
                    ResponseError::InvalidRecord,
                    Some("an idempotent produce carries one batch per partition".into()),
                ));
            }
            let mut producers = part.producers.lock().unwrap_or_else(|p| p.into_inner());
            match producers.check(&batch) {
                Ok(Verdict::Duplicate {
                    first_offset,
                    last_offset,
                    log_append_time,
                }) => (
                    Landed {
                        base_offset: first_offset,
                        log_append_time,
                        log_start_offset: log.log_start_offset(),
                    },
                    last_offset,
                ),
                Ok(Verdict::Append) => {
                    // The first batch of a transaction here must carry a verification no
                    // marker has voided since.
                    if batch.transactional
                        && !producers.in_txn(batch.producer_id, batch.epoch)
                        && !guard.is_some_and(|t| producers.take_guard(batch.producer_id, t))
                    {
                        return Err((
                            ResponseError::InvalidTxnState,
                            Some("the transaction ended before this batch could join it".into()),
                        ));
                    }
                    if batch.first_seq != 0 && producers.epoch_of(batch.producer_id).is_none() {
                        // Once per producer and partition: after this append it is known.
                        tracing::info!(topic = %part.topic, partition = part.index,
                            producer_id = batch.producer_id, epoch = batch.epoch,
                            first_seq = batch.first_seq,
                            "an idempotent producer this partition does not know continues \
                             mid-sequence (it expired, or its batches are older than the state \
                             rebuilt here): a retry of its earlier batches cannot be told apart");
                    }
                    let info = log.append(records, leader_epoch).map_err(storage)?;
                    producers.before_change(part.tiered_log(), info.first_offset);
                    producers.record(
                        &batch,
                        info.first_offset,
                        info.last_offset,
                        info.log_append_time,
                    );
                    (landed(&info), info.last_offset)
                }
                Err(Refusal::OutOfOrder { expected, got }) => {
                    return Err((
                        ResponseError::OutOfOrderSequenceNumber,
                        Some(format!("expected sequence {expected}, got {got}")),
                    ));
                }
                Err(Refusal::StaleEpoch { current, got }) => {
                    return Err((
                        ResponseError::InvalidProducerEpoch,
                        Some(format!("producer epoch {got} is older than {current}")),
                    ));
                }
            }
        }
    };
    Ok((landed, last_offset))
}

fn landed(info: &AppendInfo) -> Landed {
    Landed {
        base_offset: info.first_offset,
        log_append_time: info.log_append_time,
        log_start_offset: info.log_start_offset,
    }
}
