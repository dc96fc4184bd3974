//! The broker crate's error type. Kafka error codes are produced from these (and from
//! controller command refusals) in one place, [`crate::protocol::error_code`].

use std::path::PathBuf;

use strata_controller::ControllerError;
use strata_storage::StorageError;

/// Errors from starting or running a broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A configuration value is missing, malformed or out of range.
    #[error("invalid config {key}: {reason}")]
    Config {
        /// The dotted config key (or the file, for a file that does not parse).
        key: String,
        /// Why.
        reason: String,
    },
    /// Local disk I/O failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The controller could not be started or reached.
    #[error("controller: {0}")]
    Controller(#[from] ControllerError),
    /// A partition log failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// The object store is misconfigured or unreachable.
    #[error("object store: {0}")]
    Tier(#[from] strata_storage::tier::TierError),
    /// The controller refused this broker's registration.
    #[error("registration refused: {0}")]
    Registration(strata_controller::CommandError),
}
