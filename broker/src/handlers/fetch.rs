//! Fetch (with long polling) and ListOffsets.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{
    BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse, ProducerId,
};
use tokio::time::Instant;

use super::Reply;
use crate::partition::{Partition, Read, Records};
use crate::protocol::{Frame, FrameError};
use crate::quota::{Kind, Quotas};
use crate::response::Taken;
use crate::security::acl::{self, Resource};
use crate::state::BrokerState;

/// Longest a fetch may wait for data, whatever the client asks.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// One partition of a fetch, resolved against the metadata.
struct Wanted {
    topic: usize,
    index: i32,
    offset: i64,
    max_bytes: usize,
    target: Result<Arc<Partition>, ResponseError>,
    /// A replica of the partition fetching to copy it (reads to the log end, not the high
    /// watermark, and its fetch offset moves the high watermark).
    follower: bool,
    /// For a consumer in another rack than this leader: an in-sync replica in its rack, which
    /// it is told to read from instead (KIP-392), with no records.
    preferred: Option<i32>,
    /// A read_committed consumer (isolation level 1): reads to the last stable offset.
    read_committed: bool,
}

impl Wanted {
    /// What the fetch waits on: the log end for a follower, the high watermark otherwise.
    fn watch(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        let part = self.target.as_ref().ok()?;
        Some(if self.follower {
            part.end.subscribe()
        } else {
            part.high_watermark.subscribe()
        })
    }
}

pub(super) async fn fetch(state: &Arc<BrokerState>, frame: &Frame) -> Result<Reply, FrameError> {
    let req: FetchRequest = frame.decode()?;
    let mut cap = state.config.kafka.fetch_max_bytes as usize;
    let image = state.image();
    let by_id = frame.version >= 13;
    // Brokers copying partitions send their id (in `replica_state` from v15); consumers -1.
    let replica = if frame.version >= 15 {
        req.replica_state.replica_id.0
    } else {
        req.replica_id.0
    };
    // Consumers from v11 on may read from any replica (KIP-392), and say their rack.
    let closest = replica < 0 && frame.version >= 11;
    let client_rack = req.rack_id.as_str();
    let mut topics: Vec<FetchableTopicResponse> = Vec::with_capacity(req.topics.len());
    let mut wanted = Vec::new();
    // Replicas need CLUSTER_ACTION, consumers READ on each topic.
    let replica_denied =
        replica >= 0 && !super::allowed(state, frame, acl::code::CLUSTER_ACTION, Resource::Cluster);
    let who = match image.quotas.is_empty() {
        true => (String::new(), ""),
        false => super::quota_id(frame),
    };
    let who = (who.0.as_str(), who.1);
    if (replica >= 0 && !replica_denied) || image.quotas.is_empty() {
        // Replication is not a client's usage; without quotas there is nothing to charge.
        frame.exempt_from_quotas();
    } else if let Some(most) = Quotas::max_in_window(&image, Kind::Fetch, who) {
        // A consumer still making up for what it used (on another connection: this one was
        // not read until then) is answered empty (Kafka's rule for a throttled fetch).
        let now = std::time::Instant::now();
        frame.throttle(state.quotas.throttled(&image, Kind::Fetch, who, now));
        if !frame.throttled().is_zero() {
            return Ok(frame.respond(&FetchResponse::default())?.into());
        }
        // One response holds no more than the consumer's full allowance (beyond the first
        // batch, which is always whole).
        cap = cap.min(most as usize).max(1);
    }
    for t in &req.topics {
        let record = if by_id {
            image.topic_by_id(t.topic_id)
        } else {
            image.topics.get(t.topic.0.as_str())
        };
        let name = record.map_or(t.topic.0.as_str(), |r| r.name.as_str());
        let denied = match replica_denied {
            true => Some(ResponseError::ClusterAuthorizationFailed),
            // An unknown topic id names nothing to authorize: UNKNOWN_TOPIC_ID below.
            false if by_id && record.is_none() => None,
            false => (replica < 0
                && !super::allowed(state, frame, acl::code::READ, Resource::Topic(name)))
            .then_some(ResponseError::TopicAuthorizationFailed),
        };
        topics.push(
            FetchableTopicResponse::default()
                .with_topic(t.topic.clone())
                .with_topic_id(t.topic_id),
        );
        for p in &t.partitions {
            let target = match (denied, record) {
                (Some(e), _) => Err(e),
                (None, None) if by_id => Err(ResponseError::UnknownTopicId),
                (None, None) => Err(ResponseError::UnknownTopicOrPartition),
                (None, Some(r)) if closest => state
                    .partitions
                    .replica(r, p.partition, p.current_leader_epoch)
                    .map(|(part, _)| part),
                (None, Some(r)) => state
                    .led_partition(r, p.partition, p.current_leader_epoch)
                    .map(|(part, _)| part),
            };
            let preferred = match (&target, record) {
                (Ok(part), Some(r)) if closest && !client_rack.is_empty() => closest_replica(
                    state,
                    &image,
                    part,
                    r,
                    p.partition,
                    client_rack,
                    p.fetch_offset,
                ),
                _ => None,
            };
            // A follower's fetch offset is its log end; one that is not a replica of the
            // partition is read like a consumer.
            let follower = replica >= 0
                && target.as_ref().is_ok_and(|part| {
                    u64::try_from(p.fetch_offset)
                        .is_ok_and(|offset| part.follower_fetched(replica, offset))
                });
            wanted.push(Wanted {
                topic: topics.len() - 1,
                index: p.partition,
                offset: p.fetch_offset,
                max_bytes: usize::try_from(p.partition_max_bytes).unwrap_or(0).min(cap),
                target,
                follower,
                preferred,
                read_committed: req.isolation_level == 1,
            });
        }
    }
    // The broker's fetch.max.bytes bounds every response, whatever the client asks.
    let max_bytes = usize::try_from(req.max_bytes).unwrap_or(0).min(cap);
    let min_bytes = usize::try_from(req.min_bytes)
        .unwrap_or(0)
        .clamp(1, max_bytes.max(1));
    let wait = Duration::from_millis(u64::try_from(req.max_wait_ms).unwrap_or(0)).min(MAX_WAIT);
    let deadline = Instant::now() + wait;
    let wanted = Arc::new(wanted);
    // Plaintext connections may send local records from the segment files (`sendfile`);
    // TLS has to encrypt them in memory.
    let files = state.config.kafka.sendfile && !frame.session.listener.protocol.tls();
    loop {
        // Subscribe before reading so an append between the read and the wait wakes us.
        let mut watchers: Vec<_> = wanted.iter().filter_map(Wanted::watch).collect();
        // What the read may return is reserved in the broker's memory budget first; what
        // it did return stays reserved until the response is written.
        let waiting = Instant::now();
        let mut held = state.admission.reserve(max_bytes).await;
        frame.waited_for(waiting.elapsed());
        // Only a fetch that wants more than one byte needs to know how much arrived; the
        // common min_bytes=1 re-reads on the first append and skips this per-read walk.
        let sizes_before = (min_bytes > 1).then(|| log_sizes(&wanted));
        let w = wanted.clone();
        let slots = tokio::task::spawn_blocking(move || read_local(&w, max_bytes, files))
            .await
            .map_err(|e| FrameError::Malformed {
                api: frame.api,
                version: frame.version,
                reason: format!("fetch task failed: {e}"),
            })?;
        let results = read_remote(state, slots, max_bytes).await;
        let bytes: usize = results.iter().map(Answer::bytes).sum();
        // An error, or a consumer sent to a closer replica, is answered at once.
        let errors = results
            .iter()
            .any(|r| r.data.error_code != 0 || r.data.preferred_read_replica.0 >= 0);
        if bytes >= min_bytes || errors || Instant::now() >= deadline || watchers.is_empty() {
            let results = with_aborted(state, &wanted, results).await;
            let mut topics = topics;
            // Record sets leave the encoding in the order it writes them: partitions in
            // order within topics in order, as `wanted` lists them.
            let mut taken = Taken::default();
            for (w, Answer { mut data, records }) in wanted.iter().zip(results) {
                count(state, w, &data, records.as_ref());
                match records {
                    Some(Records::Bytes(b)) => data.records = Some(b),
                    Some(Records::Files(f)) => taken.take_files(&mut data.records, f),
                    Some(Records::Remote(r)) if r.pieces.len() > 1 => {
                        taken.take_pieces(&mut data.records, r.pieces);
                    }
                    Some(Records::Remote(r)) => data.records = Some(r.into_bytes()),
                    None => {}
                }
                if let Some(records) = data.records.as_mut() {
                    taken.take(records);
                }
                topics[w.topic].partitions.push(data);
            }
            let kept = held
                .as_mut()
                .and_then(|h| h.split(bytes.min(h.num_permits())));
            drop(held);
            if !frame.exempt() {
                // Charged for the records it carries: the consumer then waits out what it
                // took beyond its allowance.
                let now = std::time::Instant::now();
                let size = bytes as f64;
                frame.throttle(state.quotas.record(&image, Kind::Fetch, who, size, now));
            }
            let response =
                frame.respond_fetch(FetchResponse::default().with_responses(topics), taken)?;
            return Ok(Reply {
                response,
                held: kept,
            });
        }
        drop((results, held));
        // Wait until enough may have arrived: appends wake us, but a read happens only once
        // the logs grew by what is missing (or at the deadline), not on every append.
        let missing = (min_bytes - bytes) as u64;
        loop {
            let changed =
                futures::future::select_all(watchers.iter_mut().map(|rx| Box::pin(rx.changed())));
            let waiting = Instant::now();
            let woken = tokio::time::timeout_at(deadline, changed).await;
            frame.waited_for(waiting.elapsed());
            if woken.is_err() {
                break; // Deadline: one last read answers with whatever arrived.
            }
            if sizes_before
                .as_ref()
                .is_none_or(|before| grown(before, &log_sizes(&wanted)) >= missing)
            {
                break;
            }
        }
    }
}

/// Counts what one partition's answer carries for `/metrics`.
fn count(state: &BrokerState, w: &Wanted, data: &PartitionData, records: Option<&Records>) {
    state
        .metrics
        .error_code(kafka_protocol::messages::ApiKey::Fetch, data.error_code);
    let (Ok(part), Some(records)) = (&w.target, records) else {
        return;
    };
    let bytes = records.len() as u64;
    if bytes > 0 {
        let count = records.count();
        state.metrics.fetched(&part.topic, count, bytes, w.follower);
    }
}

/// KIP-392: the replica a consumer in `rack` should read partition `index` of `topic` from,
/// when this broker leads it from another rack: a live in-sync follower in that rack that
/// already holds `offset` (Kafka's rule), lowest id first. `None`: read here.
fn closest_replica(
    state: &BrokerState,
    image: &strata_controller::MetadataImage,
    part: &Partition,
    topic: &strata_controller::model::TopicRecord,
    index: i32,
    rack: &str,
    offset: i64,
) -> Option<i32> {
    let meta = topic.partitions.get(usize::try_from(index).ok()?)?;
    if meta.leader != Some(state.id) || state.config.rack.as_deref() == Some(rack) {
        return None;
    }
    let offset = u64::try_from(offset).ok()?;
    meta.isr
        .iter()
        .copied()
        .filter(|r| *r != state.id)
        .filter(|r| {
            image
                .brokers
                .get(r)
                .is_some_and(|b| !b.fenced && b.rack.as_deref() == Some(rack))
        })
        .find(|r| part.follower_log_end(*r).is_some_and(|end| end >= offset))
}

/// The size of each wanted partition's log (0 where there is none).
fn log_sizes(wanted: &[Wanted]) -> Vec<u64> {
    wanted
        .iter()
        .map(|w| w.target.as_ref().map_or(0, |p| p.log.size_bytes()))
        .collect()
}

/// Bytes appended since `before`, as far as sizes tell (retention may shrink a log).
fn grown(before: &[u64], now: &[u64]) -> u64 {
    before
        .iter()
        .zip(now)
        .map(|(b, n)| n.saturating_sub(*b))
        .sum()
}

/// A partition's answer, or the read that will give it.
enum Slot {
    Done(PartitionData),
    Reading(PartitionData, Read),
}

/// A partition's answer, its records apart until the response is encoded.
struct Answer {
    data: PartitionData,
    records: Option<Records>,
}

impl Answer {
    fn bytes(&self) -> usize {
        self.records.as_ref().map_or(0, Records::len)
    }
}

/// Begins every wanted partition's read, within the response's byte budget. The first
/// partition with data may exceed it by one batch (Kafka's rule, so a large batch cannot block
/// a consumer); a read from object storage counts at its limit. With `files`, local records
/// are answered as ranges of their segment files (see [`Partition::read`]).
fn read_local(wanted: &[Wanted], max_bytes: usize, files: bool) -> Vec<Slot> {
    let mut budget = max_bytes;
    let mut any = false;
    wanted
        .iter()
        .map(|w| {
            let data = PartitionData::default()
                .with_partition_index(w.index)
                .with_high_watermark(-1)
                .with_last_stable_offset(-1)
                .with_log_start_offset(-1);
            let part = match &w.target {
                Ok(p) => p,
                Err(e) => return Slot::Done(data.with_error_code(e.code())),
            };
            let end = part.log.log_end_offset();
            let hw = (*part.high_watermark.borrow()).min(end);
            let lso = part.last_stable_offset();
            let data = data
                .with_high_watermark(hw as i64)
                .with_last_stable_offset(lso as i64)
                .with_log_start_offset(part.log_start_offset() as i64);
            if let Some(id) = w.preferred {
                return Slot::Done(
                    data.with_preferred_read_replica(BrokerId(id))
                        .with_records(Some(Bytes::new())),
                );
            }
            let Ok(offset) = u64::try_from(w.offset) else {
                return Slot::Done(data.with_error_code(ResponseError::OffsetOutOfRange.code()));
            };
            let limit = w.max_bytes.min(if any { budget } else { budget.max(1) });
            if limit == 0 {
                return Slot::Done(data.with_records(Some(Bytes::new())));
            }
            let upto = match (w.follower, w.read_committed) {
                (true, _) => end,
                (false, true) => lso,
                (false, false) => hw,
            };
            match part.read(offset, limit, upto, files) {
                Ok(read) => {
                    let n = read.size_bound();
                    if n > 0 {
                        any = true;
                        budget = budget.saturating_sub(n);
                    }
                    Slot::Reading(data, read)
                }
                Err(e) => Slot::Done(data.with_error_code(e.code())),
            }
        })
        .collect()
}

/// Adds to each read_committed consumer's answer the transactions aborted in what it reads
/// (up to the last stable offset), so it can drop their records: from the segments' indexes,
/// local or in object storage.
async fn with_aborted(state: &BrokerState, wanted: &[Wanted], results: Vec<Answer>) -> Vec<Answer> {
    let answers = wanted.iter().zip(results).map(|(w, answer)| async move {
        let Answer { data, records } = answer;
        let part = match &w.target {
            Ok(p) if w.read_committed && !w.follower && data.error_code == 0 => p,
            _ => return Answer { data, records },
        };
        if records.as_ref().is_none_or(|r| r.len() == 0) {
            let data = data.with_aborted_transactions(Some(Vec::new()));
            return Answer { data, records };
        }
        let (Ok(from), Ok(upto)) = (
            u64::try_from(w.offset),
            u64::try_from(data.last_stable_offset),
        ) else {
            return Answer { data, records };
        };
        match part.aborted_txns(&state.tiering.reader, from, upto).await {
            Ok(list) => Answer {
                data: data.with_aborted_transactions(Some(
                    list.into_iter()
                        .map(|a| {
                            AbortedTransaction::default()
                                .with_producer_id(ProducerId(a.producer_id))
                                .with_first_offset(a.first_offset as i64)
                        })
                        .collect(),
                )),
                records,
            },
            Err(e) => Answer {
                data: data.with_records(None).with_error_code(e.code()),
                records: None,
            },
        }
    });
    futures::future::join_all(answers).await
}

/// Completes the reads of a fetch concurrently (those from object storage come from the
/// chunk cache or the store, off the blocking threads), then applies the response budget in
/// partition order.
async fn read_remote(state: &BrokerState, slots: Vec<Slot>, max_bytes: usize) -> Vec<Answer> {
    let reader = &state.tiering.reader;
    let answers = futures::future::join_all(slots.into_iter().map(|slot| async move {
        match slot {
            // Answered without a read: its records (none, or an empty set) stay in `data`.
            Slot::Done(data) => Answer {
                data,
                records: None,
            },
            Slot::Reading(data, read) => match read.records(reader).await {
                Ok(records) => Answer {
                    data,
                    records: Some(records),
                },
                Err(e) => Answer {
                    data: data.with_error_code(e.code()),
                    records: None,
                },
            },
        }
    }))
    .await;
    let mut total = 0usize;
    answers
        .into_iter()
        .map(|answer| {
            let n = answer.bytes();
            if n > 0 && total > 0 && total + n > max_bytes {
                return Answer {
                    records: Some(Records::Bytes(Bytes::new())),
                    ..answer
                };
            }
            total += n;
            answer
        })
        .collect()
}

pub(super) async fn list_offsets(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: ListOffsetsRequest = frame.decode()?;
    let image = state.image();
    // Versions before 4 have no leader epoch in the answer (kafka-python, aiokafka and
    // kcat's librdkafka 2.0 ask with v1 to v3): setting it fails the encoding.
    let answer_epoch = |epoch: i32| if frame.version >= 4 { epoch } else { -1 };
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let record = image.topics.get(t.name.0.as_str());
        let described = super::allowed(
            state,
            frame,
            acl::code::DESCRIBE,
            Resource::Topic(t.name.0.as_str()),
        );
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let resp = ListOffsetsPartitionResponse::default()
                .with_partition_index(p.partition_index)
                .with_timestamp(-1)
                .with_offset(-1)
                .with_leader_epoch(-1);
            let target = record
                .filter(|_| described)
                .ok_or(match described {
                    true => ResponseError::UnknownTopicOrPartition,
                    false => ResponseError::TopicAuthorizationFailed,
                })
                .and_then(|r| {
                    let (part, meta) =
                        state.led_partition(r, p.partition_index, p.current_leader_epoch)?;
                    Ok((part, meta.leader_epoch))
                });
            let resp = match target {
                Err(e) => resp.with_error_code(e.code()),
                Ok((part, epoch)) => {
                    // A read_committed consumer's "latest" is the last stable offset.
                    let found = if p.timestamp == -1 && req.isolation_level == 1 {
                        Ok(Some((part.last_stable_offset() as i64, -1)))
                    } else {
                        part.offset_for_time(&state.tiering.reader, p.timestamp)
                            .await
                    };
                    match found {
                        Ok(Some((offset, timestamp))) => resp
                            .with_offset(offset)
                            .with_timestamp(timestamp)
                            .with_leader_epoch(answer_epoch(epoch)),
                        Ok(None) => resp.with_leader_epoch(answer_epoch(epoch)),
                        Err(e) => resp.with_error_code(e.code()),
                    }
                }
            };
            partitions.push(resp);
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    frame.respond(&ListOffsetsResponse::default().with_topics(topics))
}

/// Where a leader epoch ended in each partition's log (KIP-320: consumers check their position
/// after a leader change).
pub(super) async fn offset_for_leader_epoch(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    use kafka_protocol::messages::offset_for_leader_epoch_response::{
        EpochEndOffset, OffsetForLeaderTopicResult,
    };
    use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
    let req: OffsetForLeaderEpochRequest = frame.decode()?;
    let image = state.image();
    let topics = req
        .topics
        .iter()
        .map(|t| {
            let record = image.topics.get(t.topic.0.as_str());
            // Followers ask as brokers (CLUSTER_ACTION), consumers to truncate (DESCRIBE).
            let described =
                super::allowed(state, frame, acl::code::CLUSTER_ACTION, Resource::Cluster)
                    || super::allowed(
                        state,
                        frame,
                        acl::code::DESCRIBE,
                        Resource::Topic(t.topic.0.as_str()),
                    );
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let resp = EpochEndOffset::default()
                        .with_partition(p.partition)
                        .with_leader_epoch(-1)
                        .with_end_offset(-1);
                    let led = match (described, record) {
                        (false, _) => Err(ResponseError::TopicAuthorizationFailed),
                        (true, None) => Err(ResponseError::UnknownTopicOrPartition),
                        (true, Some(r)) => {
                            state.led_partition(r, p.partition, p.current_leader_epoch)
                        }
                    };
                    let (part, meta) = match led {
                        Ok(led) => led,
                        Err(e) => return resp.with_error_code(e.code()),
                    };
                    let end = part.log.log_end_offset();
                    let (epoch, offset) = part
                        .epochs
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .end_offset_for(p.leader_epoch, meta.leader_epoch, end);
                    resp.with_leader_epoch(epoch).with_end_offset(offset)
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic.clone())
                .with_partitions(partitions)
        })
        .collect();
    frame.respond(&OffsetForLeaderEpochResponse::default().with_topics(topics))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::tests::{COPYING, followed_copy, with_open_txn};

    /// A read_committed consumer reads to the last stable offset (the open transaction's
    /// first offset) and is told it; a read_uncommitted one reads to the high watermark.
    #[test]
    fn read_committed_consumers_stop_at_the_last_stable_offset() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_parts, copy) = followed_copy(&dir, uuid::Uuid::new_v4());
        copy.append_copied(&with_open_txn(), COPYING)
            .expect("copied");
        copy.follow_high_watermark(3);
        let all = copy.log.read(0, 1 << 20).expect("read").len();
        let first = copy.log.read(0, 1).expect("read").len();
        assert!(first < all);
        for (read_committed, expected) in [(true, first), (false, all)] {
            let wanted = Wanted {
                topic: 0,
                index: 0,
                offset: 0,
                max_bytes: 1 << 20,
                target: Ok(copy.clone()),
                follower: false,
                preferred: None,
                read_committed,
            };
            let slots = read_local(&[wanted], 1 << 20, true);
            let Some(Slot::Reading(data, read)) = slots.first() else {
                panic!("a local read");
            };
            assert_eq!((data.high_watermark, data.last_stable_offset), (3, 1));
            assert_eq!(
                read.size_bound(),
                expected,
                "read_committed {read_committed}"
            );
        }
    }
}
