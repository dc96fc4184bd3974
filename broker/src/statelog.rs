//! Coordinator state as records in an internal topic's partitions: the group coordinator's
//! `__consumer_offsets` and the transaction coordinator's `__transaction_state`.
//!
//! Both write small batches of keyed records (JSON keys and values; a null value deletes
//! the key) through the partition log, so they are flushed, replicated, recovered — and,
//! with tiering, uploaded and restored — like any other data; both replay a partition when
//! this broker starts leading it. This module holds what they share: writing as the leader
//! with acks=all, replaying batch by batch, and creating the topic.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::records::{Record as Decoded, RecordBatchDecoder};
use strata_controller::{Command, ControllerClient};
use strata_storage::{BatchBuilder, BatchHeader, ControlMarker, Log, Record, StorageError};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::lease::Lease;
use crate::metadata::MetadataView;
use crate::partition::lead::MarkerRefusal;
use crate::partition::role::{Change, RoleChange};
use crate::partition::{Partition, Replicated};

/// How long a write waits for the in-sync replicas (Kafka's `offsets.commit.timeout.ms`).
const REPLICATION_WAIT: Duration = Duration::from_secs(5);

/// The partition of an internal topic holding `key`, a group or transactional id (Kafka's choice: Java's
/// `String.hashCode`, absolute value with `MIN_VALUE` as 0, modulo the partition count).
pub(crate) fn partition_for(key: &str, partitions: i32) -> i32 {
    let mut h: i32 = 0;
    for unit in key.encode_utf16() {
        h = h.wrapping_mul(31).wrapping_add(i32::from(unit));
    }
    let abs = if h == i32::MIN { 0 } else { h.abs() };
    abs % partitions.max(1)
}

/// The wall clock in milliseconds since the epoch, as the coordinators stamp records.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One record to write: a key and its new value, or `None` to delete it.
pub(crate) type StateRecord = (Vec<u8>, Option<Vec<u8>>);

fn io(op: &'static str, path: &Path, e: impl std::fmt::Display) -> StorageError {
    StorageError::Io {
        op,
        path: path.to_owned(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// Encodes `records` as one uncompressed batch stamped `now_ms`; transactional for
/// `producer` (id, epoch) when given (the group coordinator's TxnOffsetCommit records).
pub(crate) fn batch(records: &[StateRecord], now_ms: i64, producer: Option<(i64, i16)>) -> Vec<u8> {
    let mut batch = BatchBuilder::new();
    if let Some((id, epoch)) = producer {
        batch = batch.producer(id, epoch, -1).transactional();
    }
    for (key, value) in records {
        batch = batch.record(Record {
            key: Some(key.clone()),
            value: value.clone(),
            headers: Vec::new(),
            timestamp: now_ms,
        });
    }
    batch.build()
}

/// Writes as `part`'s leader under `leader_epoch`: `append` runs off the async threads with
/// leadership held (see [`Partition::append_as_leader`]) and returns what it wants answered
/// and the log end it needs durable; then waits until every in-sync replica has it, as
/// Kafka's coordinators write with acks=all, so a new leader of the partition has every
/// acknowledged write.
pub(crate) async fn write<T: Send + 'static>(
    part: &Arc<Partition>,
    leader_epoch: i32,
    lease: &Lease,
    append: impl FnOnce(&Partition) -> Result<(T, u64), StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    let writer = part.clone();
    let (answer, end) = tokio::task::spawn_blocking(move || {
        let (answer, end) = writer
            .append_as_leader(leader_epoch, || append(&writer))
            .map_err(|e| io("writing coordinator records", writer.log.dir(), e))??;
        writer.log.sync_through(end)?;
        Ok::<_, StorageError>((answer, end))
    })
    .await
    .map_err(|e| io("writing coordinator records", part.log.dir(), e))??;
    part.appended();
    match part.replicated(end, REPLICATION_WAIT, lease).await {
        Replicated::Yes => Ok(answer),
        outcome => Err(StorageError::Io {
            op: "replicating coordinator records",
            path: part.log.dir().to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the in-sync replicas did not copy the records ({outcome:?})"),
            ),
        }),
    }
}

/// Appends `records` as one batch to `part`'s log (as leader under `leader_epoch`), durable
/// on every in-sync replica before it returns the log end after them.
pub(crate) async fn write_records(
    part: &Arc<Partition>,
    leader_epoch: i32,
    lease: &Lease,
    records: Vec<StateRecord>,
    now_ms: i64,
    producer: Option<(i64, i16)>,
) -> Result<u64, StorageError> {
    if records.is_empty() {
        return Ok(part.log.log_end_offset());
    }
    write(part, leader_epoch, lease, move |p| {
        let bytes = batch(&records, now_ms, producer);
        let info = p.log.append(&bytes, leader_epoch)?;
        let end = info.last_offset + 1;
        Ok((end, end))
    })
    .await
}

/// Why a transaction marker was not written.
#[derive(Debug)]
pub(crate) enum MarkerFailed {
    Refused(MarkerRefusal),
    Storage(StorageError),
}

/// Appends a transaction marker of `producer` (id, epoch) to `part` as its leader under
/// `leader_epoch` (see [`Partition::append_marker`]), durable on every in-sync replica
/// before it returns, as Kafka's leaders append markers with acks=all.
pub(crate) async fn write_marker(
    part: &Arc<Partition>,
    leader_epoch: i32,
    lease: &Lease,
    producer: (i64, i16),
    marker: ControlMarker,
) -> Result<(), MarkerFailed> {
    let now = now_ms();
    let written = write(part, leader_epoch, lease, move |p| {
        Ok(
            match p.append_marker(producer.0, producer.1, marker, leader_epoch, now)? {
                Ok(offset) => (Ok(()), offset + 1),
                // Nothing appended: nothing to wait for.
                Err(refusal) => (Err(refusal), 0),
            },
        )
    })
    .await;
    match written {
        Ok(Ok(())) => Ok(()),
        Ok(Err(refusal)) => Err(MarkerFailed::Refused(refusal)),
        Err(e) => Err(MarkerFailed::Storage(e)),
    }
}

/// What a replay hands its reader for each batch.
pub(crate) enum Replayed {
    /// A batch of records (decoded), from `producer` (id, epoch) if transactional.
    Records {
        records: Vec<Decoded>,
        producer: Option<(i64, i16)>,
    },
    /// A transaction marker of producer `producer_id`.
    Marker {
        producer_id: i64,
        marker: ControlMarker,
    },
}

/// Replays a whole partition, batch by batch, into `apply`. The coordinators write only
/// uncompressed batches, and clients cannot produce here; a batch that is compressed anyway
/// (nothing decompresses it, so it cannot be a decompression bomb) or does not decode is
/// skipped with a warning, and the replay carries on after it.
pub(crate) fn replay(log: &Log, mut apply: impl FnMut(Replayed)) -> Result<(), StorageError> {
    let end = log.log_end_offset();
    let mut offset = log.log_start_offset();
    while offset < end {
        let bytes = log.read(offset, 4 << 20)?;
        let next = replay_batches(&bytes, log.dir(), &mut apply);
        if next.is_none_or(|n| n <= offset) {
            break;
        }
        offset = next.unwrap_or(end);
    }
    Ok(())
}

/// Replays raw batches, as read from a log (the fuzz targets' entry).
pub(crate) fn replay_bytes(bytes: &[u8], apply: impl FnMut(Replayed)) {
    let mut apply = apply;
    replay_batches(
        &Bytes::copy_from_slice(bytes),
        Path::new("fuzz"),
        &mut apply,
    );
}

/// Applies the whole batches at the start of `bytes`; returns the offset after the last.
fn replay_batches(bytes: &Bytes, dir: &Path, apply: &mut impl FnMut(Replayed)) -> Option<u64> {
    let mut pos = 0;
    let mut next = None;
    while let Some(h) = bytes.get(pos..).and_then(BatchHeader::parse) {
        let Some(len) = Some(h.total_len()).filter(|l| pos + l <= bytes.len()) else {
            break;
        };
        let batch = bytes.slice(pos..pos + len);
        pos += len;
        next = u64::try_from(h.last_offset().saturating_add(1))
            .ok()
            .max(next);
        if h.is_control() {
            if let Some(marker) = strata_storage::control_marker(&batch) {
                apply(Replayed::Marker {
                    producer_id: h.producer_id,
                    marker,
                });
            }
            continue;
        }
        if h.compression() != 0 {
            tracing::warn!(dir = %dir.display(), base_offset = h.base_offset,
                "skipping a compressed batch the coordinator did not write");
            continue;
        }
        match RecordBatchDecoder::decode_all(&mut batch.clone()) {
            Ok(sets) => apply(Replayed::Records {
                records: sets.into_iter().flat_map(|s| s.records).collect(),
                producer: h
                    .is_transactional()
                    .then_some((h.producer_id, h.producer_epoch)),
            }),
            Err(e) => tracing::warn!(dir = %dir.display(), base_offset = h.base_offset,
                error = %e, "skipping an unreadable batch of coordinator records"),
        }
    }
    next
}

/// Where a coordinator's keys live: the internal topic's partition for a key, the broker
/// leading it by the metadata, and the partitions this broker leads and has loaded.
#[derive(Debug)]
pub(crate) struct Routes {
    topic: &'static str,
    partitions: i32,
    me: i32,
    metadata: Arc<MetadataView>,
    lease: Arc<Lease>,
    loaded: std::sync::Mutex<std::collections::HashMap<i32, Arc<Partition>>>,
}

/// Kafka's coordinator error codes.
pub(crate) const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
pub(crate) const COORDINATOR_NOT_AVAILABLE: i16 = 15;
pub(crate) const NOT_COORDINATOR: i16 = 16;

impl Routes {
    pub(crate) fn new(
        topic: &'static str,
        partitions: i32,
        me: i32,
        metadata: Arc<MetadataView>,
        lease: Arc<Lease>,
    ) -> Self {
        Self {
            topic,
            partitions,
            me,
            metadata,
            lease,
            loaded: std::sync::Mutex::default(),
        }
    }

    fn loaded(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<i32, Arc<Partition>>> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The partition holding `key`.
    pub(crate) fn partition_of(&self, key: &str) -> i32 {
        partition_for(key, self.partitions)
    }

    /// The live broker leading `key`'s partition by the metadata (what FindCoordinator
    /// answers on any broker); None when the topic does not exist yet.
    pub(crate) fn leader_of(&self, key: &str) -> Option<Result<i32, i16>> {
        let image = self.metadata.image();
        let topic = image.topics.get(self.topic)?;
        let p = self.partition_of(key);
        Some(
            usize::try_from(p)
                .ok()
                .and_then(|i| topic.partitions.get(i))
                .and_then(|meta| meta.leader)
                .filter(|l| image.brokers.get(l).is_some_and(|b| !b.fenced))
                .ok_or(COORDINATOR_NOT_AVAILABLE),
        )
    }

    /// `key`'s partition and its leader epoch if this broker leads it, has loaded it and
    /// holds a current lease (a broker back from a pause answers nothing from its cache
    /// until its metadata says whether it still leads); else COORDINATOR_LOAD_IN_PROGRESS
    /// (led here, the role change on its way), NOT_COORDINATOR or COORDINATOR_NOT_AVAILABLE.
    pub(crate) fn route(&self, key: &str) -> Result<(Arc<Partition>, i32), i16> {
        let p = self.partition_of(key);
        let image = self.metadata.image();
        let meta = image
            .topics
            .get(self.topic)
            .and_then(|t| usize::try_from(p).ok().and_then(|i| t.partitions.get(i)));
        if let Some(part) = self.loaded().get(&p).cloned()
            && let Some(epoch) = part.role().leader_epoch()
        {
            // The image, not only the partition's role: a broker back from a pause applies
            // the metadata that moved the leadership away before its role change reaches
            // the partition and the coordinator, and must not answer from what it loaded
            // in between (the fault checker saw a resumed coordinator answer an offset
            // its successor had since moved on).
            let still = meta.is_some_and(|m| m.leader == Some(self.me) && m.leader_epoch == epoch);
            if !self.lease.current(image.version) || !still {
                return Err(NOT_COORDINATOR);
            }
            return Ok((part, epoch));
        }
        let meta = meta.ok_or(COORDINATOR_NOT_AVAILABLE)?;
        if meta.leader == Some(self.me) {
            Err(COORDINATOR_LOAD_IN_PROGRESS)
        } else {
            Err(NOT_COORDINATOR)
        }
    }

    /// Whether `part` is the partition loaded under its index: Some(false) when another
    /// partition under that index is (the topic was re-created), None when none is.
    pub(crate) fn is_loaded(&self, part: &Arc<Partition>) -> Option<bool> {
        self.loaded().get(&part.index).map(|l| Arc::ptr_eq(l, part))
    }

    pub(crate) fn set_loaded(&self, part: &Arc<Partition>) {
        self.loaded().insert(part.index, part.clone());
    }

    /// Forgets partition `index`; whether it was loaded.
    pub(crate) fn unload(&self, index: i32) -> bool {
        self.loaded().remove(&index).is_some()
    }

    /// What `changes` mean for this coordinator: partitions of its topic this broker starts
    /// leading (to load) and those it stops leading (to drop), in order.
    pub(crate) fn leadership<'a>(
        &self,
        changes: &'a [RoleChange],
    ) -> impl Iterator<Item = Leadership<'a>> + 'a {
        let topic = self.topic;
        changes
            .iter()
            .filter(move |c| c.partition.topic == topic)
            .map(|c| match c.change {
                Change::BecomeLeader { .. } => Leadership::Gained(&c.partition),
                Change::BecomeFollower { .. } | Change::Stop { .. } => Leadership::Lost(c.index()),
            })
    }
}

/// A coordinator's part of a role change (see [`Routes::leadership`]).
pub(crate) enum Leadership<'a> {
    Gained(&'a Arc<Partition>),
    Lost(i32),
}

/// How long one attempt at a coordinator partition's recovery may take.
const RECOVERY_ATTEMPT: Duration = Duration::from_secs(10);

/// Replays `part`'s whole log with `load`, off the async threads. A tiered partition first
/// finishes its recovery (a broker with an empty disk restores an internal topic's log from
/// the bucket), retried while this broker still leads it.
pub(crate) async fn replay_partition<T: Send + 'static>(
    part: &Arc<Partition>,
    load: fn(&Log) -> Result<T, StorageError>,
) -> Result<T, crate::BrokerError> {
    while part.recovering() {
        // Bounded, so the recovery's lock is let go of while the store does not answer.
        let error = match tokio::time::timeout(RECOVERY_ATTEMPT, part.recover()).await {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {RECOVERY_ATTEMPT:?}"),
        };
        if part.role().leader_epoch().is_none() {
            return Err(crate::BrokerError::Io {
                op: "recovering a coordinator partition",
                path: part.log.dir().to_owned(),
                source: std::io::Error::other(error),
            });
        }
        tracing::warn!(topic = %part.topic, partition = part.index, %error,
            "recovering a coordinator partition from the object store failed; retrying");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let log = part.log.clone();
    tokio::task::spawn_blocking(move || load(&log))
        .await
        .map_err(|e| crate::BrokerError::Io {
            op: "replaying a coordinator partition",
            path: part.log.dir().to_owned(),
            source: std::io::Error::other(e),
        })?
        .map_err(Into::into)
}

/// An internal topic a coordinator creates at first need.
pub(crate) struct InternalTopic {
    pub(crate) name: &'static str,
    pub(crate) partitions: i32,
    /// Unset: the cluster's default (see [`crate::topic::default_replication_factor`]).
    pub(crate) replication_factor: Option<i16>,
    /// Brokers this one expects to see (the voters of a combined quorum): with an unset
    /// replication factor the topic waits a little for them, so a cluster starting together
    /// does not fix the topic at the one copy of the first broker up.
    pub(crate) expected_brokers: usize,
    /// Its `segment.bytes`.
    pub(crate) segment_bytes: u64,
    /// Its `remote.storage.enable` (`object_store.tier_internal_topics`).
    pub(crate) tiered: bool,
}

/// How long an internal topic waits for the brokers a cluster expects before it is created
/// with the copies there are.
const TOPIC_WAIT: Duration = Duration::from_secs(30);

/// Creates `topic` (compacted) unless it exists, retrying until it does or `cancel` fires.
pub(crate) async fn ensure_topic(
    topic: &InternalTopic,
    metadata: &MetadataView,
    controller: &ControllerClient,
    cancel: &CancellationToken,
) {
    let waiting_since = tokio::time::Instant::now();
    while !metadata.image().topics.contains_key(topic.name) {
        let image = metadata.image();
        let live = image.brokers.values().filter(|b| !b.fenced).count();
        let wanted = topic.expected_brokers.min(3);
        if topic.replication_factor.is_none()
            && live < wanted
            && waiting_since.elapsed() < TOPIC_WAIT
        {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(200)) => continue,
            }
        }
        let replication_factor =
            crate::topic::default_replication_factor(topic.replication_factor, &image);
        let command = Command::CreateTopic {
            name: topic.name.into(),
            id: Uuid::new_v4(),
            partitions: topic.partitions,
            replication_factor,
            configs: BTreeMap::from([
                ("cleanup.policy".to_string(), "compact".to_string()),
                ("segment.bytes".to_string(), topic.segment_bytes.to_string()),
                (
                    "remote.storage.enable".to_string(),
                    topic.tiered.to_string(),
                ),
            ]),
            first_leader_epoch: 0,
        };
        match controller.submit(&command).await {
            Ok(Ok(a)) => {
                metadata
                    .wait_for_version(a.version, Duration::from_secs(10))
                    .await;
            }
            Ok(Err(strata_controller::CommandError::TopicAlreadyExists { .. })) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot create {} yet", topic.name),
            Err(e) => tracing::warn!(error = %e, "controller unavailable for {}", topic.name),
        }
        if !metadata.image().topics.contains_key(topic.name) {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
