//! The storage crate's one error type.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::batch::BatchError;

/// Everything that can go wrong in the log. The broker maps these to Kafka error codes in one
/// place (`InvalidBatch` → CORRUPT_MESSAGE / INVALID_RECORD, or MESSAGE_TOO_LARGE for
/// [`BatchError::TooLarge`]; `OffsetOutOfRange` → OFFSET_OUT_OF_RANGE; the rest →
/// KAFKA_STORAGE_ERROR).
#[derive(Debug, Error)]
pub enum StorageError {
    #[error("invalid record batch: {0}")]
    InvalidBatch(#[source] BatchError),
    #[error("offset {offset} is outside the log's range {log_start}..={log_end}")]
    OffsetOutOfRange {
        offset: u64,
        log_start: u64,
        log_end: u64,
    },
    #[error("invalid log config `{key}`: {reason}")]
    Config { key: &'static str, reason: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("log {dir} is offline after an earlier disk failure: {reason}")]
    Offline { dir: PathBuf, reason: String },
}

impl From<BatchError> for StorageError {
    fn from(e: BatchError) -> Self {
        StorageError::InvalidBatch(e)
    }
}

/// Attaches the failed operation and path to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn io_ctx(self, op: &'static str, path: &std::path::Path) -> Result<T, StorageError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn io_ctx(self, op: &'static str, path: &std::path::Path) -> Result<T, StorageError> {
        self.map_err(|source| StorageError::Io {
            op,
            path: path.to_path_buf(),
            source,
        })
    }
}
