//! The controller crate's error type. Command refusals are not errors of the controller: they
//! are [`crate::CommandError`] results of an applied command.

use std::path::PathBuf;

use crate::model::NodeId;

/// Errors from running a controller or calling one.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// This controller is not the Raft leader; try the leader.
    #[error("not the controller leader (leader: {})", leader_display(*.leader_id, .leader_addr.as_deref()))]
    NotLeader {
        /// The leader's id, when known.
        leader_id: Option<NodeId>,
        /// The leader's address, when known.
        leader_addr: Option<String>,
    },
    /// No controller answered in time (no quorum, or all unreachable).
    #[error("controller unavailable: {reason}")]
    Unavailable {
        /// What was tried and what failed.
        reason: String,
    },
    /// A configuration value is invalid.
    #[error("invalid controller config {key}: {reason}")]
    Config {
        /// The config key.
        key: &'static str,
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
    /// Raft stopped on a fatal error (storage failure or shutdown).
    #[error("raft stopped: {0}")]
    Fatal(#[source] Box<openraft::error::Fatal<NodeId>>),
    /// A peer or the server answered with an unexpected gRPC status.
    #[error("rpc failed: {0}")]
    Rpc(#[source] Box<tonic::Status>),
    /// A payload could not be encoded or decoded.
    #[error("bad payload: {0}")]
    Codec(#[from] serde_json::Error),
}

fn leader_display(id: Option<NodeId>, addr: Option<&str>) -> String {
    match (id, addr) {
        (Some(id), Some(addr)) => format!("{id} at {addr}"),
        (Some(id), None) => id.to_string(),
        _ => "unknown".to_owned(),
    }
}
