//! Topic configs Strata knows, under Kafka's names, with their defaults and validation.
//!
//! The controller refuses unknown keys and bad values when a topic is created or altered; the
//! broker uses the same table to answer DescribeConfigs with defaults. [`TopicConfig`] is the
//! one reading of a topic's whole set as typed values: the controller parses every set it
//! commits with it, and brokers apply what it reads.

use std::collections::BTreeMap;

use crate::command::CommandError;

/// The type and range of a config value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigKind {
    /// A 64-bit integer, at least `min`.
    Long {
        /// Smallest legal value.
        min: i64,
    },
    /// A 32-bit integer, at least `min`.
    Int {
        /// Smallest legal value.
        min: i32,
    },
    /// A ratio between 0 and 1.
    Ratio,
    /// `true` or `false`.
    Bool,
    /// One of the listed values.
    Enum(&'static [&'static str]),
}

/// One topic config.
#[derive(Clone, Copy, Debug)]
pub struct ConfigDef {
    /// Kafka's name.
    pub name: &'static str,
    /// Type and range.
    pub kind: ConfigKind,
    /// Value when the topic does not set it.
    pub default: &'static str,
}

const fn def(name: &'static str, kind: ConfigKind, default: &'static str) -> ConfigDef {
    ConfigDef {
        name,
        kind,
        default,
    }
}

const LONG_MAX: &str = "9223372036854775807";

/// Every topic config Strata accepts, sorted by name.
pub const TOPIC_CONFIGS: &[ConfigDef] = &[
    def(
        "cleanup.policy",
        ConfigKind::Enum(&["delete", "compact", "compact,delete", "delete,compact"]),
        "delete",
    ),
    def(
        "compression.type",
        ConfigKind::Enum(&["producer", "uncompressed", "gzip", "snappy", "lz4", "zstd"]),
        "producer",
    ),
    def(
        "delete.retention.ms",
        ConfigKind::Long { min: 0 },
        "86400000",
    ),
    def("file.delete.delay.ms", ConfigKind::Long { min: 0 }, "60000"),
    def("flush.messages", ConfigKind::Long { min: 1 }, LONG_MAX),
    def("flush.ms", ConfigKind::Long { min: 0 }, LONG_MAX),
    def("index.interval.bytes", ConfigKind::Int { min: 0 }, "4096"),
    def("local.retention.bytes", ConfigKind::Long { min: -2 }, "-2"),
    def("local.retention.ms", ConfigKind::Long { min: -2 }, "-2"),
    def(
        "max.compaction.lag.ms",
        ConfigKind::Long { min: 1 },
        LONG_MAX,
    ),
    def("max.message.bytes", ConfigKind::Int { min: 0 }, "1048588"),
    def(
        "message.timestamp.after.max.ms",
        ConfigKind::Long { min: 0 },
        "3600000",
    ),
    def(
        "message.timestamp.before.max.ms",
        ConfigKind::Long { min: 0 },
        LONG_MAX,
    ),
    def(
        "message.timestamp.type",
        ConfigKind::Enum(&["CreateTime", "LogAppendTime"]),
        "CreateTime",
    ),
    def("min.cleanable.dirty.ratio", ConfigKind::Ratio, "0.5"),
    def("min.compaction.lag.ms", ConfigKind::Long { min: 0 }, "0"),
    def("min.insync.replicas", ConfigKind::Int { min: 1 }, "1"),
    def("preallocate", ConfigKind::Bool, "false"),
    def("remote.storage.enable", ConfigKind::Bool, "true"),
    def("retention.bytes", ConfigKind::Long { min: -1 }, "-1"),
    def("retention.ms", ConfigKind::Long { min: -1 }, "604800000"),
    def("segment.bytes", ConfigKind::Int { min: 14 }, "1073741824"),
    def("segment.jitter.ms", ConfigKind::Long { min: 0 }, "0"),
    def("segment.ms", ConfigKind::Long { min: 1 }, "604800000"),
    def("unclean.leader.election.enable", ConfigKind::Bool, "false"),
];

/// The definition of a topic config, if Strata knows it.
pub fn topic_config(name: &str) -> Option<&'static ConfigDef> {
    TOPIC_CONFIGS
        .binary_search_by(|d| d.name.cmp(name))
        .ok()
        .map(|i| &TOPIC_CONFIGS[i])
}

/// Checks one `key=value` pair.
pub fn validate_topic_config(key: &str, value: &str) -> Result<(), CommandError> {
    let refuse = |reason: String| CommandError::InvalidConfig {
        key: key.to_owned(),
        value: value.to_owned(),
        reason,
    };
    let Some(def) = topic_config(key) else {
        return Err(refuse("unknown topic config".to_owned()));
    };
    match def.kind {
        ConfigKind::Long { min } => match value.trim().parse::<i64>() {
            Ok(v) if v >= min => Ok(()),
            Ok(_) => Err(refuse(format!("must be at least {min}"))),
            Err(_) => Err(refuse("not a 64-bit integer".to_owned())),
        },
        ConfigKind::Int { min } => match value.trim().parse::<i32>() {
            Ok(v) if v >= min => Ok(()),
            Ok(_) => Err(refuse(format!("must be at least {min}"))),
            Err(_) => Err(refuse("not a 32-bit integer".to_owned())),
        },
        ConfigKind::Ratio => match value.trim().parse::<f64>() {
            Ok(v) if (0.0..=1.0).contains(&v) => Ok(()),
            _ => Err(refuse("must be a number between 0 and 1".to_owned())),
        },
        ConfigKind::Bool => match value.trim().to_ascii_lowercase().as_str() {
            "true" | "false" => Ok(()),
            _ => Err(refuse("must be true or false".to_owned())),
        },
        ConfigKind::Enum(options) => {
            if options.contains(&value.trim()) {
                Ok(())
            } else {
                Err(refuse(format!("must be one of {}", options.join(", "))))
            }
        }
    }
}

/// A topic's configs as typed values, unset keys at their defaults. Numbers keep Kafka's
/// sentinels: -1 for "unlimited" retention, -2 for "as `retention.*`" local retention,
/// `i64::MAX` for "never" (`flush.*`, `message.timestamp.before.max.ms`).
#[derive(Clone, Debug, PartialEq)]
pub struct TopicConfig {
    /// `cleanup.policy` holds `compact`.
    pub compact: bool,
    /// `cleanup.policy` holds `delete`.
    pub delete: bool,
    /// `segment.bytes`.
    pub segment_bytes: i64,
    /// `segment.ms`.
    pub segment_ms: i64,
    /// `retention.ms`.
    pub retention_ms: i64,
    /// `retention.bytes`.
    pub retention_bytes: i64,
    /// `local.retention.ms`.
    pub local_retention_ms: i64,
    /// `local.retention.bytes`.
    pub local_retention_bytes: i64,
    /// `max.message.bytes`.
    pub max_message_bytes: i64,
    /// `index.interval.bytes`.
    pub index_interval_bytes: i64,
    /// `flush.ms`.
    pub flush_ms: i64,
    /// `flush.messages`.
    pub flush_messages: i64,
    /// `message.timestamp.type` is `LogAppendTime`.
    pub log_append_time: bool,
    /// `message.timestamp.before.max.ms`.
    pub timestamp_before_max_ms: i64,
    /// `message.timestamp.after.max.ms`.
    pub timestamp_after_max_ms: i64,
    /// `remote.storage.enable`.
    pub remote_storage: bool,
    /// `min.insync.replicas`.
    pub min_insync_replicas: i64,
    /// `unclean.leader.election.enable`: a partition with no live in-sync replica takes any
    /// live replica as leader.
    pub unclean_leader_election: bool,
    /// `min.cleanable.dirty.ratio`.
    pub min_cleanable_dirty_ratio: f64,
    /// `min.compaction.lag.ms`.
    pub min_compaction_lag_ms: i64,
    /// `max.compaction.lag.ms`.
    pub max_compaction_lag_ms: i64,
    /// `delete.retention.ms`.
    pub delete_retention_ms: i64,
}

impl TopicConfig {
    /// Reads a topic's configs; refuses an unknown key or a bad value.
    pub fn parse(configs: &BTreeMap<String, String>) -> Result<Self, CommandError> {
        for (k, v) in configs {
            validate_topic_config(k, v)?;
        }
        Ok(Self::lenient(configs))
    }

    /// Reads a topic's configs, a value this version does not accept taking its default (a
    /// broker applying what a newer or older controller committed must not stop for it).
    pub fn lenient(configs: &BTreeMap<String, String>) -> Self {
        let value = |key: &str| -> &str {
            let given = configs
                .get(key)
                .map(|v| v.trim())
                .filter(|v| validate_topic_config(key, v).is_ok());
            given.unwrap_or_else(|| topic_config(key).map_or("", |d| d.default))
        };
        let num = |key: &str| value(key).parse::<i64>().unwrap_or_default();
        let policy = value("cleanup.policy");
        Self {
            compact: policy.contains("compact"),
            delete: policy.contains("delete"),
            segment_bytes: num("segment.bytes"),
            segment_ms: num("segment.ms"),
            retention_ms: num("retention.ms"),
            retention_bytes: num("retention.bytes"),
            local_retention_ms: num("local.retention.ms"),
            local_retention_bytes: num("local.retention.bytes"),
            max_message_bytes: num("max.message.bytes"),
            index_interval_bytes: num("index.interval.bytes"),
            flush_ms: num("flush.ms"),
            flush_messages: num("flush.messages"),
            log_append_time: value("message.timestamp.type") == "LogAppendTime",
            timestamp_before_max_ms: num("message.timestamp.before.max.ms"),
            timestamp_after_max_ms: num("message.timestamp.after.max.ms"),
            remote_storage: value("remote.storage.enable").eq_ignore_ascii_case("true"),
            min_insync_replicas: num("min.insync.replicas"),
            unclean_leader_election: value("unclean.leader.election.enable")
                .eq_ignore_ascii_case("true"),
            min_cleanable_dirty_ratio: value("min.cleanable.dirty.ratio").parse().unwrap_or(0.5),
            min_compaction_lag_ms: num("min.compaction.lag.ms"),
            max_compaction_lag_ms: num("max.compaction.lag.ms"),
            delete_retention_ms: num("delete.retention.ms"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_so_lookup_finds_every_entry() {
        for d in TOPIC_CONFIGS {
            assert_eq!(topic_config(d.name).map(|f| f.name), Some(d.name));
            validate_topic_config(d.name, d.default).expect("defaults are valid");
        }
    }

    #[test]
    fn values_are_checked_by_kind() {
        assert!(validate_topic_config("retention.ms", "-1").is_ok());
        assert!(validate_topic_config("retention.ms", "-2").is_err());
        assert!(validate_topic_config("retention.ms", "ten").is_err());
        assert!(validate_topic_config("segment.bytes", "3000000000").is_err());
        assert!(validate_topic_config("remote.storage.enable", "maybe").is_err());
        assert!(validate_topic_config("min.cleanable.dirty.ratio", "1.5").is_err());
        assert!(validate_topic_config("message.timestamp.type", "LogAppendTime").is_ok());
        let err = validate_topic_config("no.such.key", "1").expect_err("unknown key");
        assert!(matches!(err, CommandError::InvalidConfig { key, .. } if key == "no.such.key"));
    }

    #[test]
    fn a_topics_configs_read_as_typed_values_with_defaults() {
        let defaults = TopicConfig::parse(&BTreeMap::new()).expect("defaults");
        assert_eq!(defaults.retention_ms, 604_800_000);
        assert_eq!(defaults.flush_ms, i64::MAX);
        assert!(defaults.delete && !defaults.compact && defaults.remote_storage);
        let set = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let c = TopicConfig::parse(&set(&[
            ("cleanup.policy", "compact,delete"),
            ("retention.bytes", " 4096 "),
            ("remote.storage.enable", "FALSE"),
            ("message.timestamp.type", "LogAppendTime"),
        ]))
        .expect("valid");
        assert!(c.compact && c.delete && !c.remote_storage && c.log_append_time);
        assert_eq!(c.retention_bytes, 4096);
        // Strict for the controller, lenient for a broker applying what was committed.
        let bad = set(&[("retention.ms", "soon"), ("no.such.key", "1")]);
        assert!(TopicConfig::parse(&bad).is_err());
        assert_eq!(TopicConfig::lenient(&bad), defaults);
    }
}
