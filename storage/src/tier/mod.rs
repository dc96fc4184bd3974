//! Tiered storage: sealed segments in object storage, described by a versioned partition
//! manifest.
//!
//! - [`store`] opens the object store a URL names (`file://`, `s3://`, `memory://`).
//! - [`background`] runs the object-store work on threads of a lower CPU priority.
//! - [`read`] serves remote segments through a foyer chunk cache with read-ahead.
//! - [`upload`] puts sealed, durable segments and commits them to the manifest.
//! - [`fault`] wraps a store to fail, hang, slow down or ignore conditional puts (tests).
//! - [`metered`] wraps a store to count its requests, errors, latency and bytes.
//! - [`retention`] drops remote segments outside `retention.ms/bytes` and objects no manifest
//!   names.
//! - [`manifest`] keeps each partition's list of remote segments as immutable, numbered
//!   manifest objects written with a create-only conditional put and carrying the writer's
//!   leader epoch, so two writers can never both commit a version and a fenced (older-epoch)
//!   leader cannot commit over a newer one.
//!
//! Object layout, keyed by topic id so a re-created topic name never mixes data:
//! `<prefix>/topics/<topic-id>/<partition>/<base-offset>-<epoch>.{log,index,timeindex}`,
//! `<prefix>/topics/<topic-id>/<partition>/manifest/<version>.json` and the manifests' chunks,
//! `<prefix>/topics/<topic-id>/<partition>/manifest/chunks/<first-base>-<uuid>.json`.

pub mod background;
pub mod compact;
pub mod fault;
pub mod manifest;
pub mod metered;
pub mod read;
pub mod restore;
pub mod retention;
pub mod store;
pub mod upload;

use thiserror::Error;

/// Errors of the tiering layer.
#[derive(Debug, Error)]
pub enum TierError {
    /// The object store URL or its options are invalid.
    #[error("invalid object store config {key}: {reason}")]
    Config {
        /// The setting.
        key: &'static str,
        /// Why.
        reason: String,
    },
    /// The object store failed (retried by the caller's policy before surfacing).
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// A manifest object could not be decoded.
    #[error("manifest {path}: {source}")]
    Manifest {
        /// Its key.
        path: String,
        /// The decode error.
        #[source]
        source: serde_json::Error,
    },
    /// A newer leader has committed: this writer's epoch is stale.
    #[error("fenced: leader epoch {ours} is older than the manifest's {current}")]
    Fenced {
        /// This writer's epoch.
        ours: i32,
        /// The epoch of the newest manifest.
        current: i32,
    },
    /// A local segment file could not be read for upload.
    #[error("reading {path} for upload: {source}")]
    Local {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The object store cannot be used at start-up (no such bucket, refused, bad credentials).
    #[error("object store {url} is not usable: {reason}")]
    Unreachable {
        /// The store.
        url: String,
        /// What failed, and what to do about it.
        reason: String,
    },
    /// The chunk cache failed.
    #[error("remote read cache: {0}")]
    Cache(String),
    /// The offset is not in any remote segment.
    #[error("offset {offset} is not in object storage")]
    NotRemote {
        /// The offset asked for.
        offset: u64,
    },
    /// A remote segment's bytes do not hold whole batches where they should.
    #[error("remote segment {key} is corrupt at byte {position}: {reason}")]
    Corrupt {
        /// The object.
        key: String,
        /// Where.
        position: u64,
        /// What was wrong.
        reason: &'static str,
    },
    /// The local log refused what was read back from object storage.
    #[error("local log: {0}")]
    Log(#[from] crate::StorageError),
    /// The reader is shutting down.
    #[error("remote reader closed")]
    Closed,
    /// Every attempt lost the race to another writer.
    #[error("manifest commit kept losing races after {attempts} attempts")]
    Contended {
        /// Attempts made.
        attempts: usize,
    },
}
