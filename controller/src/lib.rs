//! strata-controller: Strata's cluster metadata (brokers, topics, partitions, leader epochs,
//! in-sync replicas, producer-id blocks) kept by an openraft state machine and served over
//! tonic gRPC to brokers and peer controllers.
//!
//! The layers, from the inside out:
//! - [`model`], [`command`], [`state`], [`placement`], [`topic_config`]: the metadata and the
//!   pure, deterministic state machine that every controller applies in log order.
//! - `raft_log` and `state_machine`: openraft's storage on the controller's local disk.
//! - `network` and `service`: gRPC for Raft between controllers and for brokers.
//! - [`ControllerNode`]: one controller process (or the embedded one-node quorum).

pub mod command;
pub mod model;
pub mod placement;
pub mod state;
pub mod topic_config;

pub use command::{Applied, Command, CommandError, CommandResult, Outcome};
pub use model::{BrokerId, MetadataDelta, MetadataImage, MetadataUpdate, NodeId};
