//! A topic's configs as the settings the broker applies: the log's, tiering's and the local
//! tail's retention. The controller reads a topic's configs into typed values
//! (`strata_controller::topic_config::TopicConfig`, Kafka's names and defaults, in one place)
//! and refuses what it cannot read; this maps those values onto the storage crate's settings.
//! Every value the controller accepts maps to settings the log accepts, so no topic config can
//! keep a partition from opening; a test below walks the controller's whole table to hold that.

use std::time::Duration;

use strata_controller::MetadataImage;
use strata_controller::model::TopicRecord;
use strata_controller::topic_config::TopicConfig;
use strata_storage::{FlushPolicy, HEADER_LEN, LogConfig, MAX_SEGMENT_BYTES, TimestampType};

/// `default.replication.factor` as it applies now: the configured value, or, unset, three
/// copies once three brokers are live and as many as are live before that (a single node
/// keeps one). Kafka's default is a fixed 1; three is what a cluster of three is run for.
pub(crate) fn default_replication_factor(configured: Option<i16>, image: &MetadataImage) -> i16 {
    configured.unwrap_or_else(|| {
        let live = image.brokers.values().filter(|b| !b.fenced).count();
        live.clamp(1, 3) as i16
    })
}

/// What a topic's configs ask of each partition of it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TopicSettings {
    pub(crate) log: LogConfig,
    /// Sealed segments go to the object store (`remote.storage.enable`). Internal topics
    /// are tiered only when created so (`object_store.tier_internal_topics`); they keep their
    /// whole log locally too (their coordinators replay it), so for them the bucket is the
    /// copy a broker with an empty disk restores from.
    pub(crate) remote: bool,
    /// Retention of the local tail once uploaded: Kafka's `local.retention.ms/bytes`, where
    /// -2 means "as `retention.*`", never looser than the whole log's.
    pub(crate) local_retention_ms: Option<Duration>,
    pub(crate) local_retention_bytes: Option<u64>,
    /// `min.insync.replicas`: an `acks=all` produce needs this many in-sync replicas.
    pub(crate) min_insync_replicas: i64,
    /// How the cleaner treats the topic, when `cleanup.policy` holds `compact`.
    pub(crate) compaction: Option<Compaction>,
}

/// A compacted topic's cleaning settings (Kafka's names).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Compaction {
    /// `min.cleanable.dirty.ratio`: clean once this share of the log is dirty.
    pub(crate) min_dirty_ratio: f64,
    /// `min.compaction.lag.ms`: records younger than this are not cleaned.
    pub(crate) min_lag: Duration,
    /// `max.compaction.lag.ms`: a record older than this is cleaned whatever the ratio.
    pub(crate) max_lag: Option<Duration>,
    /// `delete.retention.ms`: how long a tombstone outlives the pass that cleaned it.
    pub(crate) delete_retention: Duration,
}

impl TopicSettings {
    pub(crate) fn of(topic: &TopicRecord) -> Self {
        let c = TopicConfig::lenient(&topic.configs);
        let log = log_config(&c);
        let local_ms = match c.local_retention_ms {
            -2 => log.retention_ms,
            v if v < 0 => None,
            v => Some(Duration::from_millis(v as u64)),
        };
        let local_bytes = match c.local_retention_bytes {
            -2 => log.retention_bytes,
            v if v < 0 => None,
            v => Some(v as u64),
        };
        let compaction = c.compact.then(|| Compaction {
            min_dirty_ratio: c.min_cleanable_dirty_ratio,
            min_lag: Duration::from_millis(c.min_compaction_lag_ms.max(0) as u64),
            max_lag: bound(c.max_compaction_lag_ms),
            delete_retention: Duration::from_millis(c.delete_retention_ms.max(0) as u64),
        });
        let internal = is_internal(&topic.name);
        // An internal topic is tiered only when created so (`object_store.
        // tier_internal_topics`); ones created before that existed name no such config.
        let remote = match internal {
            true => topic
                .configs
                .get("remote.storage.enable")
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
            false => c.remote_storage,
        };
        Self {
            compaction,
            min_insync_replicas: c.min_insync_replicas,
            remote,
            local_retention_ms: tighter(local_ms, log.retention_ms).filter(|_| !internal),
            local_retention_bytes: tighter(local_bytes, log.retention_bytes).filter(|_| !internal),
            log,
        }
    }
}

/// Whether a topic's sealed segments go to the object store.
pub(crate) fn remote_enabled(topic: &TopicRecord) -> bool {
    TopicSettings::of(topic).remote
}

/// Topics the broker itself owns. Clients may read them, but not write, delete, re-create or
/// re-partition them, nor change how long they are kept: their coordinators depend on their
/// layout and on every record in them.
const INTERNAL_TOPICS: &[&str] = &["__consumer_offsets", "__transaction_state"];

/// Whether `topic` is one of [`INTERNAL_TOPICS`].
pub(crate) fn is_internal(topic: &str) -> bool {
    INTERNAL_TOPICS.contains(&topic)
}

/// The smaller of two optional limits (`None` = unlimited).
fn tighter<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A duration in ms, `None` for Kafka's "never" (`i64::MAX`).
fn bound(ms: i64) -> Option<Duration> {
    (ms != i64::MAX).then(|| Duration::from_millis(ms.max(0) as u64))
}

/// The log settings a topic's configs ask for.
fn log_config(t: &TopicConfig) -> LogConfig {
    let mut c = LogConfig {
        segment_bytes: t.segment_bytes.clamp(14, MAX_SEGMENT_BYTES as i64) as u64,
        // Only sealed segments are cleaned, so a compacted topic's active segment rolls by
        // `max.compaction.lag.ms` too (as Kafka does), or a quiet partition's updates would
        // wait for `segment.ms`.
        segment_ms: Some(Duration::from_millis(
            match t.compact {
                true => t.segment_ms.min(t.max_compaction_lag_ms),
                false => t.segment_ms,
            }
            .max(1) as u64,
        )),
        // Kafka never deletes a compact-only topic by time or size: the cleaner keeps the
        // latest value of every key.
        retention_ms: (t.delete && t.retention_ms >= 0)
            .then(|| Duration::from_millis(t.retention_ms as u64)),
        retention_bytes: (t.delete && t.retention_bytes >= 0).then_some(t.retention_bytes as u64),
        // Below a batch header no batch fits: every one is refused as too large, as in Kafka.
        max_batch_bytes: t
            .max_message_bytes
            .clamp(HEADER_LEN as i64, MAX_SEGMENT_BYTES as i64) as usize,
        // 0 asks for an entry per batch; any positive interval below a batch's size does that.
        index_interval_bytes: t.index_interval_bytes.max(1) as u64,
        // Kafka's defaults: one hour after, no bound before.
        timestamp_before_max: bound(t.timestamp_before_max_ms),
        timestamp_after_max: bound(t.timestamp_after_max_ms),
        flush: FlushPolicy::Os,
        // Kafka refuses keyless records on a compacted topic (INVALID_RECORD).
        keys_required: t.compact,
        ..LogConfig::default()
    };
    // `flush.ms` and `flush.messages` default to "never" (Long.MAX): the OS decides, and the
    // broker fsyncs sealed segments on a timer (see `crate::flusher`).
    match t.flush_ms {
        0 => c.flush = FlushPolicy::EveryAppend,
        v if v > 0 && v < i64::MAX => {
            c.flush = FlushPolicy::Interval(Duration::from_millis(v as u64))
        }
        _ => {}
    }
    match t.flush_messages {
        1 => c.flush = FlushPolicy::EveryAppend,
        v if v > 1 && v < i64::MAX => c.flush_messages = Some(v as u64),
        _ => {}
    }
    if t.log_append_time {
        c.timestamp_type = TimestampType::LogAppendTime;
    }
    c
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use strata_controller::topic_config::{ConfigKind, TOPIC_CONFIGS, validate_topic_config};

    use uuid::Uuid;

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
                if let Err(e) = TopicSettings::of(&topic).log.validate() {
                    panic!(
                        "{}={value} is accepted but the log refuses it: {e}",
                        def.name
                    );
                }
            }
        }
    }

    #[test]
    fn a_topic_without_configs_gets_the_logs_defaults_and_is_tiered() {
        let topic = |name: &str| TopicRecord {
            name: name.into(),
            id: Uuid::nil(),
            replication_factor: 1,
            configs: BTreeMap::new(),
            partitions: Vec::new(),
        };
        let s = TopicSettings::of(&topic("t"));
        // Kafka 4's default bound on timestamps from the future, the log's defaults otherwise.
        let expected = LogConfig {
            timestamp_after_max: Some(Duration::from_secs(3600)),
            ..LogConfig::default()
        };
        assert_eq!(s.log, expected);
        assert!(s.remote);
        assert_eq!(
            (s.local_retention_ms, s.local_retention_bytes),
            (s.log.retention_ms, None)
        );
        // Internal topics are tiered only when created so, and keep their whole log locally.
        let mut offsets = topic("__consumer_offsets");
        assert!(!TopicSettings::of(&offsets).remote);
        offsets.configs.extend([
            ("local.retention.ms".to_owned(), "0".to_owned()),
            ("remote.storage.enable".to_owned(), "true".to_owned()),
        ]);
        let internal = TopicSettings::of(&offsets);
        assert!(internal.remote);
        assert_eq!(
            (internal.local_retention_ms, internal.local_retention_bytes),
            (None, None)
        );
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
        let compact = TopicSettings::of(&topic("compact")).log;
        assert_eq!(
            (compact.retention_ms, compact.retention_bytes),
            (None, None)
        );
        let both = TopicSettings::of(&topic("compact,delete")).log;
        assert_eq!(both.retention_ms, Some(Duration::from_secs(1)));
        assert_eq!(both.retention_bytes, Some(1000));
    }
}
