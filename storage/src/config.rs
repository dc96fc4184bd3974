//! Per-log settings, named after the Kafka topic configs they implement.

use std::time::Duration;

use crate::error::StorageError;

/// When appended data is forced to disk with fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Every append returns only once it is on disk. Concurrent appenders share fsyncs
    /// (group commit), so throughput grows with the number of writers.
    EveryAppend,
    /// An append that finds the last fsync older than this interval forces one; Kafka's
    /// `flush.ms`. A caller may also call [`crate::Log::maybe_flush`] from a timer.
    Interval(Duration),
    /// Left to the operating system; data is fsynced on roll, on `flush()` and on close.
    /// Kafka's default (durability comes from replication and the object store).
    Os,
}

/// Whether a record's timestamp is the producer's or the broker's (`message.timestamp.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

/// Settings of one partition log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `segment.bytes`: the active segment rolls before it would exceed this size.
    pub segment_bytes: u64,
    /// `segment.ms`: the active segment rolls once its first batch is this old.
    pub segment_ms: Option<Duration>,
    /// `index.interval.bytes`: bytes of batches between two sparse index entries.
    pub index_interval_bytes: u64,
    /// `max.message.bytes`: the largest batch accepted.
    pub max_batch_bytes: usize,
    /// `retention.ms` for this log (`None` keeps forever).
    pub retention_ms: Option<Duration>,
    /// `retention.bytes` for this log (`None` keeps forever).
    pub retention_bytes: Option<u64>,
    pub flush: FlushPolicy,
    /// `flush.messages`: an append that leaves at least this many records not yet fsynced
    /// forces an fsync, whatever the flush policy (`None`: no such limit).
    pub flush_messages: Option<u64>,
    /// `message.timestamp.before.max.ms` / `after.max.ms`: under CreateTime, a batch with a
    /// record stamped further than this before / after the broker's clock is refused
    /// (`None`: no bound). Records without a timestamp (-1) are not checked.
    pub timestamp_before_max: Option<Duration>,
    pub timestamp_after_max: Option<Duration>,
    pub timestamp_type: TimestampType,
    /// `cleanup.policy` holds `compact`: every record an append takes needs a key.
    pub keys_required: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 1 << 30,
            segment_ms: Some(Duration::from_secs(7 * 24 * 3600)),
            index_interval_bytes: 4096,
            max_batch_bytes: 1_048_588,
            retention_ms: Some(Duration::from_secs(7 * 24 * 3600)),
            retention_bytes: None,
            flush: FlushPolicy::Os,
            flush_messages: None,
            timestamp_before_max: None,
            timestamp_after_max: None,
            timestamp_type: TimestampType::CreateTime,
            keys_required: false,
        }
    }
}

/// Segment positions are 32-bit in the index, as in Kafka.
pub const MAX_SEGMENT_BYTES: u64 = i32::MAX as u64;

impl LogConfig {
    /// Rejects settings the log cannot honour, naming the Kafka config key.
    pub fn validate(&self) -> Result<(), StorageError> {
        let bad = |key: &'static str, reason: String| Err(StorageError::Config { key, reason });
        if self.segment_bytes < 14 || self.segment_bytes > MAX_SEGMENT_BYTES {
            return bad(
                "segment.bytes",
                format!("{} is outside 14..={MAX_SEGMENT_BYTES}", self.segment_bytes),
            );
        }
        if self.segment_ms.is_some_and(|d| d.is_zero()) {
            return bad("segment.ms", "must be at least 1 ms".into());
        }
        if self.index_interval_bytes == 0 {
            return bad("index.interval.bytes", "must be positive".into());
        }
        if self.max_batch_bytes < crate::batch::HEADER_LEN
            || self.max_batch_bytes as u64 > MAX_SEGMENT_BYTES
        {
            return bad(
                "max.message.bytes",
                format!("{} is not a usable batch size", self.max_batch_bytes),
            );
        }
        if self.flush_messages == Some(0) {
            return bad("flush.messages", "must be at least 1".into());
        }
        if let FlushPolicy::Interval(d) = self.flush
            && d.is_zero()
        {
            return bad(
                "flush.ms",
                "use the every-append policy instead of 0".into(),
            );
        }
        Ok(())
    }
}
