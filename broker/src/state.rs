//! What a broker knows and holds: the metadata image it follows from the controller, and the
//! partitions it hosts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use strata_controller::model::{PartitionRecord, TopicRecord};
use strata_controller::topic_config::topic_config;
use strata_controller::{ControllerClient, MetadataImage, MetadataUpdate};
use strata_storage::{FlushPolicy, HEADER_LEN, Log, LogConfig, MAX_SEGMENT_BYTES, TimestampType};
use tokio::sync::watch;
use uuid::Uuid;

use crate::admission::Admission;
use crate::config::BrokerConfig;
use crate::epochs::EpochCache;
use crate::error::BrokerError;
use crate::group::machine::Limits;
use crate::group::{Coordinator, GroupConfig};
use crate::producer::{self, ProducerBatch, ProducerTable};
use crate::tiering::{RemoteView, Tiering, remote_enabled};

/// File in a partition directory naming the topic id it belongs to.
const PARTITION_METADATA: &str = "partition.metadata";

/// One partition replica hosted here.
#[derive(Debug)]
pub(crate) struct Partition {
    pub(crate) topic_id: Uuid,
    pub(crate) log: Arc<Log>,
    /// The log end offset, for fetches waiting on new data.
    pub(crate) end: watch::Sender<u64>,
    /// Idempotent producers' sequences; held across check and append.
    pub(crate) producers: Mutex<ProducerTable>,
    /// Where each leader epoch started; held across an append that starts a new epoch.
    pub(crate) epochs: Mutex<EpochCache>,
    /// Its segments in object storage.
    pub(crate) remote: RemoteView,
}

impl Partition {
    /// Saves the idempotent producers' table when it is due (see
    /// [`ProducerTable::save_due`]), or now with `force` (at shutdown).
    pub(crate) fn save_producers(&self, every: Duration, force: bool) {
        let now = Instant::now();
        let bytes = {
            let mut producers = self.producers.lock().unwrap_or_else(|p| p.into_inner());
            // Idempotent appends hold this lock, so every batch below the end is in the table.
            let end = self.log.log_end_offset();
            if !force && !producers.save_due(self.log.active_base_offset(), end, every, now) {
                return;
            }
            producers.encode(end, now)
        };
        if let Err(e) = producer::write_snapshot(self.log.dir(), &bytes) {
            tracing::warn!(dir = %self.log.dir().display(), error = %e,
                "saving the producer snapshot failed; a restart replays more of the log");
        }
    }

    /// The first offset still retained, remotely or locally (Kafka's log start offset).
    pub(crate) fn log_start_offset(&self) -> u64 {
        let local = self.log.log_start_offset();
        match self.remote.manifest() {
            Some(m) if !m.segments.is_empty() => m.log_start_offset.min(local),
            _ => local,
        }
    }
}

/// The broker's shared state.
#[derive(Debug)]
pub(crate) struct BrokerState {
    pub(crate) config: BrokerConfig,
    pub(crate) id: i32,
    /// Registration epoch from the controller.
    pub(crate) epoch: AtomicU64,
    pub(crate) controller: ControllerClient,
    image: RwLock<Arc<MetadataImage>>,
    version: watch::Sender<u64>,
    partitions: RwLock<HashMap<(Uuid, i32), Arc<Partition>>>,
    /// The unused part of the producer-id block from the controller: `next..end`.
    pub(crate) producer_ids: tokio::sync::Mutex<(i64, i64)>,
    /// The consumer group coordinator.
    pub(crate) groups: Arc<Coordinator>,
    /// The object store and remote read path.
    pub(crate) tiering: Arc<Tiering>,
    /// Connection and memory limits.
    pub(crate) admission: Arc<Admission>,
}

impl BrokerState {
    pub(crate) fn new(
        config: BrokerConfig,
        controller: ControllerClient,
        tiering: Arc<Tiering>,
        admission: Admission,
    ) -> Self {
        let g = &config.groups;
        let groups = Arc::new(Coordinator::new(GroupConfig {
            limits: Limits {
                min_session: Duration::from_millis(g.min_session_timeout_ms),
                max_session: Duration::from_millis(g.max_session_timeout_ms),
                initial_rebalance_delay: Duration::from_millis(g.initial_rebalance_delay_ms),
                max_size: g.max_size,
            },
            offsets_partitions: g.offsets_topic_partitions,
            offsets_retention: Duration::from_secs(g.offsets_retention_minutes * 60),
        }));
        Self {
            groups,
            id: config.node_id,
            config,
            epoch: AtomicU64::new(0),
            controller,
            image: RwLock::new(Arc::new(MetadataImage::default())),
            version: watch::channel(0).0,
            partitions: RwLock::new(HashMap::new()),
            producer_ids: tokio::sync::Mutex::new((0, 0)),
            tiering,
            admission: Arc::new(admission),
        }
    }

    /// The current metadata image.
    pub(crate) fn image(&self) -> Arc<MetadataImage> {
        self.image.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// The hosted partition, if any.
    pub(crate) fn partition(&self, topic_id: Uuid, index: i32) -> Option<Arc<Partition>> {
        self.partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(topic_id, index))
            .cloned()
    }

    /// The hosted partition `index` of `topic` and its metadata, when this broker leads it
    /// and the client's `current_leader_epoch` (-1: not given) is the current one; otherwise
    /// the Kafka error a client acts on. The one leadership check of every partition API.
    pub(crate) fn led_partition<'t>(
        &self,
        topic: &'t TopicRecord,
        index: i32,
        current_leader_epoch: i32,
    ) -> Result<(Arc<Partition>, &'t PartitionRecord), ResponseError> {
        let meta = usize::try_from(index)
            .ok()
            .and_then(|i| topic.partitions.get(i))
            .ok_or(ResponseError::UnknownTopicOrPartition)?;
        if meta.leader != Some(self.id) {
            return Err(ResponseError::NotLeaderOrFollower);
        }
        // A client ahead of this broker's metadata retries; one behind refreshes its own.
        if current_leader_epoch > meta.leader_epoch {
            return Err(ResponseError::UnknownLeaderEpoch);
        }
        if current_leader_epoch >= 0 && current_leader_epoch < meta.leader_epoch {
            return Err(ResponseError::FencedLeaderEpoch);
        }
        let part = self
            .partition(topic.id, index)
            .ok_or(ResponseError::NotLeaderOrFollower)?;
        Ok((part, meta))
    }

    /// Waits until the local image reaches `version` (or `timeout` passes).
    pub(crate) async fn wait_for_version(&self, version: u64, timeout: Duration) -> bool {
        let mut rx = self.version.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|v| *v >= version))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Applies updates from the controller's watch stream, then opens and closes partition
    /// logs to match. Returns the newly opened partitions of tiered topics: they refuse
    /// appends until [`BrokerState::recover_all`] has read their manifests, which the caller
    /// runs in the background, so applying metadata never waits on the object store.
    /// Blocking: run it off the async threads.
    pub(crate) fn apply_updates(&self, updates: Vec<MetadataUpdate>) -> Vec<Arc<Partition>> {
        let mut image = (*self.image()).clone();
        for u in updates {
            match u {
                MetadataUpdate::Image(i) => image = i,
                MetadataUpdate::Delta(d) => image.apply_delta(&d),
            }
        }
        let opened = self.open_partitions(&image);
        let version = image.version;
        *self.image.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(image);
        self.version.send_replace(version);
        opened
    }

    /// Opens and closes partition logs to match `image`; returns the newly opened partitions
    /// of tiered topics. A partition that cannot be opened (a disk error, say) is logged and
    /// left out, so it never keeps the rest of the image from being applied; the next image
    /// tries it again.
    fn open_partitions(&self, image: &MetadataImage) -> Vec<Arc<Partition>> {
        let log_dir = self.config.log_dir();
        let mut opened = Vec::new();
        let mut partitions = self.partitions.write().unwrap_or_else(|p| p.into_inner());
        // Topics that are gone (or re-created under a new id): close and delete.
        let gone: Vec<(Uuid, i32)> = partitions
            .keys()
            .filter(|(id, _)| image.topic_by_id(*id).is_none())
            .copied()
            .collect();
        for key in gone {
            if let Some(p) = partitions.remove(&key) {
                let dir = p.log.dir().to_owned();
                drop(p);
                if let Err(e) = remove_dir(&dir) {
                    tracing::error!(error = %e, "removing a deleted topic's partition failed");
                }
            }
        }
        for topic in image.topics.values() {
            let config = log_config(topic);
            for (i, p) in topic.partitions.iter().enumerate() {
                let index = i as i32;
                if !p.replicas.contains(&self.id) {
                    continue;
                }
                if let Some(existing) = partitions.get(&(topic.id, index)) {
                    if existing.log.config() != config
                        && let Err(e) = existing.log.set_config(config.clone())
                    {
                        tracing::error!(topic = %topic.name, partition = index, error = %e,
                            "the topic's new configs cannot be applied; the old ones stay");
                    }
                    continue;
                }
                match self.open_partition(&log_dir, topic, index, &config) {
                    Ok((part, tiered)) => {
                        if tiered {
                            opened.push(part.clone());
                        }
                        partitions.insert((topic.id, index), part);
                    }
                    Err(e) => tracing::error!(topic = %topic.name, partition = index, error = %e,
                        "opening the partition failed; it stays offline"),
                }
            }
        }
        opened
    }

    /// Opens one hosted partition's log and side state; says whether its topic is tiered.
    fn open_partition(
        &self,
        log_dir: &Path,
        topic: &TopicRecord,
        index: i32,
        config: &LogConfig,
    ) -> Result<(Arc<Partition>, bool), BrokerError> {
        let dir = log_dir.join(format!("{}-{index}", topic.name));
        claim_dir(&dir, topic.id)?;
        let log = Log::open(&dir, config.clone())?;
        let end = log.log_end_offset();
        let producers = rebuild_producers(&log)?;
        let epochs = EpochCache::open(&dir, &log).map_err(|source| BrokerError::Io {
            op: "opening leader epochs",
            path: dir.clone(),
            source,
        })?;
        let remote = RemoteView::new(self.tiering.objects(topic.id, index));
        let tiered = remote_enabled(topic);
        if tiered {
            remote.await_recovery();
        } else {
            remote.mark_local_only();
        }
        let part = Arc::new(Partition {
            topic_id: topic.id,
            log: Arc::new(log),
            end: watch::channel(end).0,
            producers: Mutex::new(producers),
            epochs: Mutex::new(epochs),
            remote,
        });
        Ok((part, tiered))
    }

    /// Every hosted partition.
    pub(crate) fn hosted(&self) -> Vec<Arc<Partition>> {
        self.partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Flushes every hosted log and saves its producers (graceful shutdown).
    pub(crate) fn flush_all(&self) {
        for p in self.hosted() {
            if let Err(e) = p.log.flush() {
                tracing::error!(dir = %p.log.dir().display(), error = %e, "flush at shutdown failed");
                continue;
            }
            p.save_producers(Duration::ZERO, true);
        }
    }
}

/// Idempotent producers' recent batches, so a producer retrying across a broker restart
/// still gets its original offsets: the table saved in the partition directory, brought up to
/// date from the batches after it. Without a usable snapshot (a first start, or a crash that
/// cut the log below it) the last two segments are read instead; producers idle for longer
/// are unknown, and as in Kafka an unknown producer may carry on from any sequence.
fn rebuild_producers(log: &Log) -> Result<ProducerTable, BrokerError> {
    let end = log.log_end_offset();
    let (mut table, from) = match ProducerTable::load(log.dir(), end) {
        Some((table, offset)) => (table, offset),
        None => {
            let segments = log.segments();
            let from = segments
                .iter()
                .rev()
                .nth(1)
                .or(segments.first())
                .map_or(log.log_start_offset(), |s| s.base_offset);
            (ProducerTable::default(), from)
        }
    };
    let mut offset = from.max(log.log_start_offset());
    while offset < end {
        let bytes = log.read(offset, 1 << 20)?;
        let headers = producer::headers(&bytes);
        let Some(last) = headers.last() else { break };
        for h in &headers {
            if let Some(b) = ProducerBatch::of(h) {
                let first = u64::try_from(h.base_offset).unwrap_or(0);
                let last = first + u64::try_from(h.last_offset_delta).unwrap_or(0);
                let append_time = h.is_log_append_time().then_some(h.max_timestamp);
                table.record(&b, first, last, append_time);
            }
        }
        offset =
            u64::try_from(last.base_offset + i64::from(last.last_offset_delta) + 1).unwrap_or(end);
    }
    Ok(table)
}

/// The log settings a topic's configs ask for. Every value the controller accepts
/// (`strata_controller::topic_config`) maps to settings the log accepts, so no topic config
/// can keep a partition from opening.
pub(crate) fn log_config(topic: &TopicRecord) -> LogConfig {
    let mut c = LogConfig {
        flush: FlushPolicy::Os,
        ..LogConfig::default()
    };
    let get = |k: &str| {
        topic
            .configs
            .get(k)
            .and_then(|v| v.trim().parse::<i64>().ok())
    };
    if let Some(v) = get("segment.bytes") {
        c.segment_bytes = v.clamp(14, MAX_SEGMENT_BYTES as i64) as u64;
    }
    if let Some(v) = get("segment.ms") {
        c.segment_ms = Some(Duration::from_millis(v.max(1) as u64));
    }
    // Kafka never deletes a compact-only topic by time or size. Until the cleaner exists,
    // such a topic keeps everything.
    let compact_only = topic.configs.get("cleanup.policy").map(String::as_str) == Some("compact");
    if let Some(v) = get("retention.ms") {
        c.retention_ms = (v >= 0).then(|| Duration::from_millis(v as u64));
    }
    if let Some(v) = get("retention.bytes") {
        c.retention_bytes = (v >= 0).then_some(v as u64);
    }
    if compact_only {
        c.retention_ms = None;
        c.retention_bytes = None;
    }
    if let Some(v) = get("max.message.bytes") {
        // Below a batch header no batch fits: every one is refused as too large, as in Kafka.
        c.max_batch_bytes = v.clamp(HEADER_LEN as i64, MAX_SEGMENT_BYTES as i64) as usize;
    }
    if let Some(v) = get("index.interval.bytes") {
        // 0 asks for an entry per batch; any positive interval below a batch's size does that.
        c.index_interval_bytes = v.max(1) as u64;
    }
    // `flush.ms` and `flush.messages` default to "never" (Long.MAX): the OS decides, and the
    // broker fsyncs sealed segments on a timer (see `crate::flusher`).
    match get("flush.ms") {
        Some(0) => c.flush = FlushPolicy::EveryAppend,
        Some(v) if v > 0 && v < i64::MAX => {
            c.flush = FlushPolicy::Interval(Duration::from_millis(v as u64));
        }
        _ => {}
    }
    match get("flush.messages") {
        Some(1) => c.flush = FlushPolicy::EveryAppend,
        Some(v) if v > 1 && v < i64::MAX => c.flush_messages = Some(v as u64),
        _ => {}
    }
    // The topic's value, or the default the config table shows (Kafka's: one hour after,
    // no bound before).
    let bound = |key: &str| {
        let default = || topic_config(key).and_then(|d| d.default.parse::<i64>().ok());
        match get(key).or_else(default) {
            None | Some(i64::MAX) => None,
            Some(v) => Some(Duration::from_millis(v.max(0) as u64)),
        }
    };
    c.timestamp_before_max = bound("message.timestamp.before.max.ms");
    c.timestamp_after_max = bound("message.timestamp.after.max.ms");
    if topic
        .configs
        .get("message.timestamp.type")
        .map(String::as_str)
        == Some("LogAppendTime")
    {
        c.timestamp_type = TimestampType::LogAppendTime;
    }
    c
}

/// Makes `dir` belong to topic `id`: a directory left by a deleted topic of the same name (or
/// without a topic id at all) is removed first.
fn claim_dir(dir: &Path, id: Uuid) -> Result<(), BrokerError> {
    let meta = dir.join(PARTITION_METADATA);
    let io = |op, path: PathBuf| move |source| BrokerError::Io { op, path, source };
    match std::fs::read_to_string(&meta) {
        Ok(s) if s.trim() == id.to_string() => return Ok(()),
        Ok(_) => remove_dir(dir)?,
        // Every partition directory gets its metadata file before any segment, so one without
        // it is a leftover (a deletion cut short by a crash): never adopt its segments.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => remove_dir(dir)?,
        Err(e) => return Err(io("reading", meta.clone())(e)),
    }
    std::fs::create_dir_all(dir).map_err(io("creating", dir.to_owned()))?;
    std::fs::write(&meta, format!("{id}\n")).map_err(io("writing", meta.clone()))
}

fn remove_dir(dir: &Path) -> Result<(), BrokerError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BrokerError::Io {
            op: "removing",
            path: dir.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use strata_controller::topic_config::{ConfigKind, TOPIC_CONFIGS, validate_topic_config};

    use super::*;

    /// Values at the edges of what the controller accepts for each config.
    fn accepted_values(kind: ConfigKind) -> Vec<String> {
        match kind {
            ConfigKind::Long { min } => vec![min, min.saturating_add(1), 4096, i64::MAX],
            ConfigKind::Int { min } => vec![min, min.saturating_add(1), 4096, i32::MAX]
                .into_iter()
                .map(i64::from)
                .collect(),
            ConfigKind::Ratio => return vec!["0".into(), "0.5".into(), "1".into()],
            ConfigKind::Bool => return vec!["true".into(), "false".into()],
            ConfigKind::Enum(options) => return options.iter().map(|o| (*o).into()).collect(),
        }
        .into_iter()
        .map(|v| v.to_string())
        .collect()
    }

    #[test]
    fn every_topic_config_the_controller_accepts_is_one_the_log_accepts() {
        for def in TOPIC_CONFIGS {
            for value in accepted_values(def.kind) {
                validate_topic_config(def.name, &value).expect("the controller accepts it");
                let topic = TopicRecord {
                    name: "t".into(),
                    id: Uuid::nil(),
                    replication_factor: 1,
                    configs: BTreeMap::from([(def.name.to_owned(), value.clone())]),
                    partitions: Vec::new(),
                };
                if let Err(e) = log_config(&topic).validate() {
                    panic!(
                        "{}={value} is accepted but the log refuses it: {e}",
                        def.name
                    );
                }
            }
        }
    }

    #[test]
    fn compact_only_topics_are_never_deleted_by_retention() {
        let topic = |policy: &str| TopicRecord {
            name: "t".into(),
            id: Uuid::nil(),
            replication_factor: 1,
            configs: BTreeMap::from([
                ("cleanup.policy".to_owned(), policy.to_owned()),
                ("retention.ms".to_owned(), "1000".to_owned()),
                ("retention.bytes".to_owned(), "1000".to_owned()),
            ]),
            partitions: Vec::new(),
        };
        let compact = log_config(&topic("compact"));
        assert_eq!(
            (compact.retention_ms, compact.retention_bytes),
            (None, None)
        );
        let both = log_config(&topic("compact,delete"));
        assert_eq!(both.retention_ms, Some(Duration::from_secs(1)));
        assert_eq!(both.retention_bytes, Some(1000));
    }
}
