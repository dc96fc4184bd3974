//! The openraft type configuration: commands are the log's payload, command results the
//! state machine's answers, and snapshots are JSON images held in memory.

use std::io::Cursor;

use crate::command::{Command, CommandResult};

openraft::declare_raft_types!(
    /// Strata's Raft types.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle for a controller.
pub type Raft = openraft::Raft<TypeConfig>;
