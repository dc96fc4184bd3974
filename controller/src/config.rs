//! Controller settings.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::ControllerError;
use crate::model::NodeId;

/// How one controller runs.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// This controller's id in the quorum.
    pub node_id: NodeId,
    /// Where the Raft log, vote and snapshots live.
    pub data_dir: PathBuf,
    /// Every voter's `host:port`, this one's included (Kafka's `controller.quorum.voters`).
    /// One entry is the embedded single-node quorum; production quorums have 3 or 5.
    pub voters: BTreeMap<NodeId, String>,
    /// How often the leader sends Raft heartbeats.
    pub heartbeat_interval: Duration,
    /// A follower that hears no leader for a random time in this range starts an election.
    pub election_timeout: (Duration, Duration),
    /// A broker without heartbeats for this long is fenced (`broker.session.timeout.ms`).
    pub session_timeout: Duration,
    /// Log entries between snapshots.
    pub snapshot_every: u64,
    /// Entries kept behind a snapshot, so a briefly lagging follower catches up from the log.
    pub keep_log_entries: u64,
    /// How often the leader moves leadership back to preferred replicas
    /// (`leader.imbalance.check.interval.seconds`); `None` turns it off
    /// (`auto.leader.rebalance.enable=false`).
    pub leader_rebalance_interval: Option<Duration>,
    /// A broker's share of preferred partitions led elsewhere that triggers a rebalance
    /// (`leader.imbalance.per.broker.percentage`).
    pub leader_imbalance_percentage: u32,
    /// TLS for the gRPC of this node (server, and client of its peers); `None`: plaintext.
    pub tls: Option<crate::tls::GrpcTls>,
}

impl ControllerConfig {
    /// The embedded default: a one-node quorum at `addr`.
    pub fn single_node(data_dir: impl Into<PathBuf>, addr: impl Into<String>) -> Self {
        Self {
            node_id: 1,
            data_dir: data_dir.into(),
            voters: BTreeMap::from([(1, addr.into())]),
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(500), Duration::from_millis(1000)),
            session_timeout: Duration::from_secs(9),
            snapshot_every: 10_000,
            keep_log_entries: 1_000,
            leader_rebalance_interval: Some(Duration::from_secs(300)),
            leader_imbalance_percentage: 10,
            tls: None,
        }
    }

    /// Checks the settings, naming the first bad one.
    pub fn validate(&self) -> Result<(), ControllerError> {
        let bad = |key, reason: String| Err(ControllerError::Config { key, reason });
        if !self.voters.contains_key(&self.node_id) {
            return bad(
                "controller.quorum.voters",
                format!("does not list this node ({})", self.node_id),
            );
        }
        if self.voters.len().is_multiple_of(2) {
            tracing::warn!(
                voters = self.voters.len(),
                "an even number of voters tolerates no more failures than one fewer"
            );
        }
        let (min, max) = self.election_timeout;
        if self.heartbeat_interval.is_zero() || min <= self.heartbeat_interval * 2 || max <= min {
            return bad(
                "controller.election.timeout.ms",
                format!(
                    "need heartbeat ({:?}) * 2 < min ({min:?}) < max ({max:?})",
                    self.heartbeat_interval
                ),
            );
        }
        if self.session_timeout <= self.heartbeat_interval {
            return bad(
                "broker.session.timeout.ms",
                "must exceed the controller heartbeat interval".to_owned(),
            );
        }
        if self.snapshot_every == 0 {
            return bad("controller.snapshot.every", "must be positive".to_owned());
        }
        Ok(())
    }
}
