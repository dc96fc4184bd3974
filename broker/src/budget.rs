//! How a broker shares out what its process may hold: open files (`ulimit -n`) and memory.
//!
//! Descriptors go to client connections (`kafka.max_connections`), hosted partitions (one
//! each: the active segment's log file; two with `topics.direct_writes`, which writes it
//! through a descriptor of its own), sealed segments' log files (a cache shared by every
//! log, `topics.open_sealed_segment_files`, see `strata_storage::handles`), and a reserve for
//! everything else (listeners, the controller, the object store's connections, the read
//! cache's files, files opened for a moment to be written). Partitions are also bounded by
//! memory, at a conservative estimate of what an idle one costs. Settings of 0 are derived
//! here; explicit ones the limit cannot serve stop start-up with a clear error, so a broker
//! never takes on partitions it would run out of descriptors for, as Redpanda bounds them by
//! memory and descriptors per shard.

use crate::config::BrokerConfig;
use crate::error::BrokerError;

/// Connections when neither the setting nor the open-file limit says.
const FALLBACK_MAX_CONNECTIONS: usize = 10_000;
/// Descriptors kept for everything but connections, partitions and sealed segments, at most.
const RESERVE: usize = 512;
/// Memory taken to be what a hosted partition costs at rest (its log's and producer table's
/// bookkeeping, indexes of sealed segments, channels, maps): measured at 5.5–7 KiB on an
/// idle partition (`cargo bench --bench partitions`), with room for the indexes and producer
/// state a busy one keeps.
pub(crate) const PARTITION_MEMORY: u64 = 64 << 10;

/// What the broker may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Budget {
    /// Client connections open at once.
    pub connections: usize,
    /// Sealed segments' log files open at once.
    pub sealed_files: usize,
    /// Partition replicas this broker may host; `None` when nothing bounds them.
    pub partitions: Option<usize>,
    /// Where `partitions` comes from, for the errors that quote it.
    pub partitions_from: String,
}

impl Budget {
    /// The budget of this process under `config`.
    pub(crate) fn of(config: &BrokerConfig) -> Result<Self, BrokerError> {
        Self::compute(
            config,
            crate::process::open_file_limit(),
            crate::process::memory_limit(),
        )
    }

    /// The budget under `config` for a process allowed `files` descriptors and `memory`
    /// bytes (`None`: unknown or unlimited).
    pub(crate) fn compute(
        config: &BrokerConfig,
        files: Option<usize>,
        memory: Option<u64>,
    ) -> Result<Self, BrokerError> {
        let refuse = |key: &str, reason: String| BrokerError::Config {
            key: key.into(),
            reason,
        };
        let reserve = files.map_or(RESERVE, |f| RESERVE.min(f / 8));
        let connections = match (config.kafka.max_connections, files) {
            (0, Some(f)) => (f / 4).max(1),
            (0, None) => FALLBACK_MAX_CONNECTIONS,
            (n, _) => n,
        };
        let sealed_files = match (config.topics.open_sealed_segment_files, files) {
            (0, Some(f)) => (f / 8).clamp(1, strata_storage::handles::DEFAULT_OPEN_SEALED),
            (0, None) => strata_storage::handles::DEFAULT_OPEN_SEALED,
            (n, _) => n,
        };
        let per_partition = if config.topics.direct_writes { 2 } else { 1 };
        let by_files = match files {
            Some(f) => {
                let left = f.checked_sub(connections + sealed_files + reserve);
                match left.map(|l| l / per_partition) {
                    Some(p) if p > 0 => Some(p),
                    _ => {
                        return Err(refuse(
                            "kafka.max_connections",
                            format!(
                                "{connections} connections and {sealed_files} sealed segment \
                                 files (topics.open_sealed_segment_files) leave no room for \
                                 partitions in the open-file limit of {f} (with {reserve} \
                                 kept for the broker itself); raise `ulimit -n` or lower the \
                                 settings"
                            ),
                        ));
                    }
                }
            }
            None => None,
        };
        let by_memory = memory.map(|m| {
            usize::try_from(m / 2 / PARTITION_MEMORY)
                .unwrap_or(usize::MAX)
                .max(1)
        });
        let from_memory = |m| {
            let why = format!(
                "half the memory limit of {} MiB at {} KiB a partition",
                memory.unwrap_or(0) >> 20,
                PARTITION_MEMORY >> 10
            );
            Some((m, why))
        };
        let derived = match (by_files, by_memory) {
            (Some(f), Some(m)) if m < f => from_memory(m),
            (Some(f), _) => Some((
                f,
                format!(
                    "the open-file limit of {} less {connections} connections, {sealed_files} \
                     sealed segment files and {reserve} for the broker itself, at \
                     {per_partition} a partition",
                    files.unwrap_or(0)
                ),
            )),
            (None, Some(m)) => from_memory(m),
            (None, None) => None,
        };
        let (partitions, partitions_from) = match (config.topics.max_partitions_per_broker, derived)
        {
            (0, Some((n, from))) => (Some(n), format!("{n}, derived from {from}")),
            (0, None) => (None, "no limit".to_owned()),
            (n, Some((most, from))) if n > most => {
                return Err(refuse(
                    "topics.max_partitions_per_broker",
                    format!(
                        "{n} partitions do not fit: this broker can hold {most} ({from}); raise \
                         `ulimit -n` or give the process more memory, or lower the setting"
                    ),
                ));
            }
            (n, _) => (Some(n), format!("{n}, topics.max_partitions_per_broker")),
        };
        Ok(Self {
            connections,
            sealed_files,
            partitions,
            partitions_from,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(edit: impl FnOnce(&mut BrokerConfig)) -> BrokerConfig {
        let mut c = BrokerConfig::default();
        edit(&mut c);
        c
    }

    #[test]
    fn twenty_thousand_descriptors_hold_ten_thousand_partitions() {
        let b = Budget::compute(&config(|_| {}), Some(20_000), Some(24 << 30)).expect("budget");
        assert_eq!(b.connections, 5_000);
        assert_eq!(b.sealed_files, 1_024);
        assert_eq!(b.partitions, Some(20_000 - 5_000 - 1_024 - 512));
        assert!(
            b.partitions_from.contains("open-file limit of 20000"),
            "{}",
            b.partitions_from
        );
    }

    #[test]
    fn direct_writes_take_two_descriptors_a_partition() {
        let direct = config(|c| c.topics.direct_writes = true);
        let b = Budget::compute(&direct, Some(20_000), Some(24 << 30)).expect("budget");
        assert_eq!(b.partitions, Some((20_000 - 5_000 - 1_024 - 512) / 2));
        assert!(
            b.partitions_from.contains("at 2 a partition"),
            "{}",
            b.partitions_from
        );
    }

    #[test]
    fn memory_bounds_partitions_in_a_small_container() {
        let b = Budget::compute(&config(|_| {}), Some(1 << 20), Some(512 << 20)).expect("budget");
        assert_eq!(
            b.partitions,
            Some(((256 << 20) / PARTITION_MEMORY) as usize)
        );
        assert!(
            b.partitions_from.contains("memory limit of 512 MiB"),
            "{}",
            b.partitions_from
        );
    }

    #[test]
    fn a_small_descriptor_limit_still_leaves_room_for_partitions() {
        let b = Budget::compute(&config(|_| {}), Some(1_024), None).expect("budget");
        assert_eq!(
            (b.connections, b.sealed_files, b.partitions),
            (256, 128, Some(1_024 - 256 - 128 - 128))
        );
    }

    #[test]
    fn settings_the_limits_cannot_serve_are_refused() {
        let too_many = config(|c| c.topics.max_partitions_per_broker = 15_000);
        let e = Budget::compute(&too_many, Some(20_000), None).expect_err("refused");
        assert!(
            e.to_string().contains("topics.max_partitions_per_broker"),
            "{e}"
        );
        let crowded = config(|c| c.kafka.max_connections = 19_000);
        let e = Budget::compute(&crowded, Some(20_000), None).expect_err("refused");
        assert!(e.to_string().contains("kafka.max_connections"), "{e}");
        // Within the limits, settings are what they say.
        let set = config(|c| {
            c.kafka.max_connections = 100;
            c.topics.max_partitions_per_broker = 55;
            c.topics.open_sealed_segment_files = 10;
        });
        let b = Budget::compute(&set, Some(20_000), None).expect("budget");
        assert_eq!(
            (b.connections, b.sealed_files, b.partitions),
            (100, 10, Some(55))
        );
        // Nothing known: no bound but the settings.
        let b = Budget::compute(&config(|_| {}), None, None).expect("budget");
        assert_eq!(b.partitions, None);
    }
}
