//! The role this broker plays for a partition, and the events that change it.

use std::sync::Arc;

use super::Partition;
use strata_controller::model::PartitionRecord;

/// What this broker is for a partition it hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// It leads the partition under `epoch`: it takes appends and serves reads.
    Leader { epoch: i32 },
    /// It holds a replica; `leader` (if any) leads under `epoch`.
    Follower { leader: Option<i32>, epoch: i32 },
    /// No longer hosted (its topic was deleted or the replica moved away); kept only by
    /// whoever still holds the partition.
    Offline,
}

impl Role {
    /// The role the metadata gives broker `me` for a partition, `None` when `me` holds no
    /// replica of it.
    pub(crate) fn assigned(meta: &PartitionRecord, me: i32) -> Option<Self> {
        if !meta.replicas.contains(&me) {
            return None;
        }
        Some(if meta.leader == Some(me) {
            Self::Leader {
                epoch: meta.leader_epoch,
            }
        } else {
            Self::Follower {
                leader: meta.leader,
                epoch: meta.leader_epoch,
            }
        })
    }

    /// The leader epoch, when this broker leads.
    pub(crate) fn leader_epoch(self) -> Option<i32> {
        match self {
            Self::Leader { epoch } => Some(epoch),
            _ => None,
        }
    }
}

/// What happened to one hosted partition: metadata application computes these and every
/// subscriber of [`super::registry::Partitions::subscribe`] gets them in order.
#[derive(Clone, Debug)]
pub(crate) struct RoleChange {
    pub(crate) partition: Arc<Partition>,
    pub(crate) change: Change,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// This broker now leads the partition (newly, or under a new epoch).
    BecomeLeader { epoch: i32 },
    /// This broker now follows `leader` (newly, or under a new epoch).
    BecomeFollower { leader: Option<i32>, epoch: i32 },
    /// This broker no longer hosts the partition; `deleted` when its topic is gone (its
    /// directory is removed).
    Stop { deleted: bool },
}

impl Change {
    /// The change that takes a partition to `role`.
    pub(crate) fn to(role: Role, deleted: bool) -> Self {
        match role {
            Role::Leader { epoch } => Self::BecomeLeader { epoch },
            Role::Follower { leader, epoch } => Self::BecomeFollower { leader, epoch },
            Role::Offline => Self::Stop { deleted },
        }
    }
}

impl RoleChange {
    pub(crate) fn index(&self) -> i32 {
        self.partition.index
    }
}
