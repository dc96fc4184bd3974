//! A topic's configs (Kafka's names, as the controller stores and validates them) as the typed
//! settings the broker applies: the log's, tiering's and the local tail's retention. Every
//! value the controller accepts (`strata_controller::topic_config`) maps to settings the log
//! accepts, so no topic config can keep a partition from opening; a test below walks the
//! controller's whole table to hold that.

use std::time::Duration;

use strata_controller::model::TopicRecord;
use strata_controller::topic_config::topic_config;
use strata_storage::{FlushPolicy, HEADER_LEN, LogConfig, MAX_SEGMENT_BYTES, TimestampType};

/// What a topic's configs ask of each partition of it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TopicSettings {
    pub(crate) log: LogConfig,
    /// Sealed segments go to the object store (`remote.storage.enable`; internal topics
    /// never: their coordinators replay them from the local log).
    pub(crate) remote: bool,
    /// Retention of the local tail once uploaded: Kafka's `local.retention.ms/bytes`, where
    /// -2 means "as `retention.*`", never looser than the whole log's.
    pub(crate) local_retention_ms: Option<Duration>,
    pub(crate) local_retention_bytes: Option<u64>,
}

impl TopicSettings {
    pub(crate) fn of(topic: &TopicRecord) -> Self {
        let log = log_config(topic);
        let get = |k: &str| int(topic, k).unwrap_or(-2);
        let local_ms = match get("local.retention.ms") {
            -2 => log.retention_ms,
            v if v < 0 => None,
            v => Some(Duration::from_millis(v as u64)),
        };
        let local_bytes = match get("local.retention.bytes") {
            -2 => log.retention_bytes,
            v if v < 0 => None,
            v => Some(v as u64),
        };
        Self {
            remote: remote_enabled(topic),
            local_retention_ms: tighter(local_ms, log.retention_ms),
            local_retention_bytes: tighter(local_bytes, log.retention_bytes),
            log,
        }
    }
}

/// Whether a topic's sealed segments go to the object store.
pub(crate) fn remote_enabled(topic: &TopicRecord) -> bool {
    !topic.name.starts_with("__")
        && topic
            .configs
            .get("remote.storage.enable")
            .map(String::as_str)
            != Some("false")
}

fn int(topic: &TopicRecord, key: &str) -> Option<i64> {
    topic
        .configs
        .get(key)
        .and_then(|v| v.trim().parse::<i64>().ok())
}

/// The smaller of two optional limits (`None` = unlimited).
fn tighter<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The log settings a topic's configs ask for.
fn log_config(topic: &TopicRecord) -> LogConfig {
    let mut c = LogConfig {
        flush: FlushPolicy::Os,
        ..LogConfig::default()
    };
    let get = |k: &str| int(topic, k);
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
