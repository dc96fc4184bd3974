//! strata-controller: Strata's cluster metadata (brokers, topics, partitions, leader epochs,
//! in-sync replicas, producer-id blocks) kept by an openraft state machine and served over
//! tonic gRPC to brokers and peer controllers.
//!
//! The layers, from the inside out:
//! - [`model`], [`command`], [`state`], [`placement`], [`topic_config`]: the metadata and the
//!   pure, deterministic state machine every controller applies in log order.
//! - `raft_log` and `state_machine`: openraft's storage on the controller's local disk.
//! - `network` and `service`: gRPC for Raft between controllers and for brokers; `lease`
//!   fences brokers that stop heartbeating.
//! - [`ControllerNode`] runs one controller (or the embedded one-node quorum);
//!   [`ControllerClient`] calls the quorum from brokers and tools.

pub mod command;
pub mod model;
pub mod placement;
pub mod state;
pub mod tls;
pub mod topic_config;

mod client;
mod config;
mod error;
mod lease;
mod network;
mod node;
mod raft_log;
mod raft_types;
mod service;
mod state_machine;

/// Generated gRPC code (see `proto/controller.proto`).
#[allow(missing_docs, missing_debug_implementations, clippy::all)]
pub mod proto {
    tonic::include_proto!("strata.controller.v1");
}

pub use client::ControllerClient;
pub use command::{Applied, Command, CommandError, CommandResult, Outcome};
pub use config::ControllerConfig;
pub use error::ControllerError;
pub use model::{BrokerId, HeartbeatAck, MetadataDelta, MetadataImage, MetadataUpdate, NodeId};
pub use node::ControllerNode;
pub use service::{LEADER_ADDR_KEY, LEADER_ID_KEY};
pub use state_machine::SharedMetadata;
