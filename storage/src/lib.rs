//! strata-storage: the partition log every other part of Strata writes to and reads from.
//!
//! A [`Log`] is a directory of segments in Kafka's on-disk layout: `<20-digit base
//! offset>.log` files holding Kafka v2 record batches exactly as producers sent them, each with a
//! sparse `.index` (offset → byte position) and `.timeindex` (timestamp → offset). Appends
//! validate batches (magic, CRC-32C, lengths, record count) and assign offsets by rewriting the
//! batch header in place; reads return raw bytes of whole batches. Sealed segments are immutable
//! and listed with their offset and time ranges for tiering to object storage.
//!
//! Durability follows a [`FlushPolicy`]: fsync on every append (shared between concurrent
//! appenders by group commit), on an interval, or left to the OS. A checkpoint records the
//! recovery point; on open, segments after it are validated batch by batch, a torn tail is cut
//! off, and missing or inconsistent indexes are rebuilt. A flushed batch is never lost.

mod batch;
mod buffers;
mod checkpoint;
mod clock;
mod codec;
pub mod compact;
mod config;
pub mod direct;
mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod handles;
mod index;
mod log;
mod segment;
mod txn_index;

pub use batch::{
    BatchBuilder, BatchError, BatchHeader, ControlMarker, HEADER_LEN, LOG_OVERHEAD, MAGIC_V2,
    Record, control_marker,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use codec::{compress, decompress_all};
pub use config::{FlushPolicy, LogConfig, MAX_SEGMENT_BYTES, TimestampType};
pub use error::StorageError;
pub use log::{
    AppendInfo, FileRange, LocalClean, Log, OpenSegment, PreparedRewrite, SegmentRewrite,
};
pub use segment::{SegmentFile, SegmentInfo};
pub use txn_index::{AbortedTxn, TxnIndex, collect_aborted, decode_entries};

pub mod tier;
