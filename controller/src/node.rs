//! One running controller: Raft with its disk storage, the gRPC server, and the lease keeper.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InitializeError, RaftError};
use openraft::{BasicNode, RaftMetrics, SnapshotPolicy};
use prometheus_client::metrics::histogram::Histogram;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

use crate::command::Command;
use crate::config::ControllerConfig;
use crate::error::ControllerError;
use crate::lease::Leases;
use crate::model::{MetadataImage, NodeId};
use crate::network::{self, NetworkFactory};
use crate::placement;
use crate::proto::metadata_server::MetadataServer;
use crate::proto::raft_server::RaftServer;
use crate::raft_log::RaftLogStore;
use crate::raft_types::Raft;
use crate::service::{MetadataService, RaftService};
use crate::state_machine::{SharedMetadata, StateMachineStore};

/// How long shutdown waits for in-flight calls before aborting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running controller. Dropping it stops its tasks; [`ControllerNode::shutdown`] stops them
/// gracefully.
pub struct ControllerNode {
    id: NodeId,
    raft: Raft,
    metadata: SharedMetadata,
    local_addr: SocketAddr,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
    commit_latency: Histogram,
}

/// Commit latency buckets: 100 µs to ~3 s (a commit is a quorum's fsync and round trip).
fn commit_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 15,
    ))
}

impl std::fmt::Debug for ControllerNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerNode")
            .field("id", &self.id)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl ControllerNode {
    /// Starts a controller listening on its own address from `config.voters`.
    pub async fn start(config: ControllerConfig) -> Result<Self, ControllerError> {
        let addr = config
            .voters
            .get(&config.node_id)
            .cloned()
            .unwrap_or_default();
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|e| ControllerError::Config {
                key: "controller.listener",
                reason: format!("cannot listen on {addr:?}: {e}"),
            })?;
        Self::start_with_listener(config, listener).await
    }

    /// Starts a controller serving on an already bound listener.
    pub async fn start_with_listener(
        config: ControllerConfig,
        listener: TcpListener,
    ) -> Result<Self, ControllerError> {
        config.validate()?;
        let raft_dir = config.data_dir.join("raft");
        let io = |op| {
            let path = raft_dir.clone();
            move |source| ControllerError::Io { op, path, source }
        };
        let log_store = RaftLogStore::open(&raft_dir).map_err(io("opening raft log"))?;
        let state_machine = StateMachineStore::open(&raft_dir).map_err(io("opening snapshot"))?;
        let metadata = state_machine.shared();

        let mut peers = BTreeMap::new();
        for (id, addr) in config
            .voters
            .iter()
            .filter(|(id, _)| **id != config.node_id)
        {
            let channel = network::channel(addr, config.tls.as_ref()).map_err(|e| {
                ControllerError::Config {
                    key: "controller.quorum.voters",
                    reason: format!("bad address {addr:?} for node {id}: {e}"),
                }
            })?;
            peers.insert(*id, channel);
        }
        let network = NetworkFactory::new(peers, config.heartbeat_interval, config.tls.clone());

        let raft_config = openraft::Config {
            cluster_name: "strata".into(),
            heartbeat_interval: millis(config.heartbeat_interval),
            election_timeout_min: millis(config.election_timeout.0),
            election_timeout_max: millis(config.election_timeout.1),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: config.keep_log_entries,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ControllerError::Config {
            key: "controller.election.timeout.ms",
            reason: e.to_string(),
        })?;
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            network,
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| ControllerError::Fatal(Box::new(e)))?;

        let members: BTreeMap<NodeId, BasicNode> = config
            .voters
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr)))
            .collect();
        // Every voter proposes the same initial membership; only an empty log accepts it.
        match raft.initialize(members).await {
            Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
            Err(RaftError::APIError(e)) => {
                return Err(ControllerError::Config {
                    key: "controller.quorum.voters",
                    reason: e.to_string(),
                });
            }
            Err(RaftError::Fatal(e)) => return Err(ControllerError::Fatal(Box::new(e))),
        }

        let local_addr = listener
            .local_addr()
            .map_err(|source| ControllerError::Io {
                op: "reading listener address",
                path: config.data_dir.clone(),
                source,
            })?;
        let cancel = CancellationToken::new();
        let leases = Arc::new(Leases::new(config.session_timeout));
        let mut tasks = JoinSet::new();
        let commit_latency = commit_histogram();

        let metadata_service = MetadataService {
            id: config.node_id,
            raft: raft.clone(),
            metadata: metadata.clone(),
            leases: leases.clone(),
            voters: Arc::new(config.voters.clone()),
            cancel: cancel.clone(),
            commit_latency: commit_latency.clone(),
        };
        let mut builder = Server::builder();
        if let Some(tls) = &config.tls {
            builder = builder
                .tls_config(tls.server())
                .map_err(|e| ControllerError::Config {
                    key: "controller.tls",
                    reason: e.to_string(),
                })?;
        }
        let server = builder
            .add_service(RaftServer::new(RaftService { raft: raft.clone() }))
            .add_service(MetadataServer::new(metadata_service))
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
                cancel.clone().cancelled_owned(),
            );
        tasks.spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "controller gRPC server failed");
            }
        });
        tasks.spawn(keep_leases(
            config.node_id,
            raft.clone(),
            metadata.clone(),
            leases,
            Timers {
                period: (config.session_timeout / 4).max(Duration::from_millis(20)),
                rebalance: config
                    .leader_rebalance_interval
                    .map(|every| (every, config.leader_imbalance_percentage)),
            },
            cancel.clone(),
        ));
        tracing::info!(node = config.node_id, %local_addr, voters = config.voters.len(), "controller started");
        Ok(Self {
            id: config.node_id,
            raft,
            metadata,
            local_addr,
            cancel,
            tasks,
            commit_latency,
        })
    }

    /// How long this node took to commit commands while it led the quorum (proposed to
    /// applied, in seconds); shared, so it keeps counting.
    pub fn commit_latency(&self) -> Histogram {
        self.commit_latency.clone()
    }

    /// This controller's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The address the gRPC server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Raft's view of this node: term, leader, log and applied positions.
    pub fn raft_metrics(&self) -> watch::Receiver<RaftMetrics<NodeId, BasicNode>> {
        self.raft.metrics()
    }

    /// The quorum leader this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// The metadata as this node has applied it (may trail the leader).
    pub fn image(&self) -> MetadataImage {
        self.metadata.image()
    }

    /// The applied metadata, for an embedded broker in the same process.
    pub fn metadata(&self) -> SharedMetadata {
        self.metadata.clone()
    }

    /// Stops serving, stops Raft, and waits (boundedly) for in-flight work.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not stop cleanly");
        }
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            self.tasks.abort_all();
        }
    }
}

impl Drop for ControllerNode {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What the leader's housekeeping runs on.
struct Timers {
    /// How often leases are checked.
    period: Duration,
    /// How often leaders are moved back to preferred replicas, and the imbalance that does.
    rebalance: Option<(Duration, u32)>,
}

/// While this node leads: sets the cluster id once, fences brokers whose lease ran out, and
/// now and then moves leadership back to preferred replicas.
async fn keep_leases(
    id: NodeId,
    raft: Raft,
    metadata: SharedMetadata,
    leases: Arc<Leases>,
    Timers { period, rebalance }: Timers,
    cancel: CancellationToken,
) {
    let mut leading_term = None;
    // A new leader waits a whole interval first: brokers may just be coming back.
    let mut rebalanced = Instant::now();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Until a new quorum has its cluster id, look every few milliseconds instead of every
        // period: brokers stamp their catalog entries with it, so it must not lag the first
        // topics by a whole lease period.
        let unnamed = metadata.with_state(|s| s.image().cluster_id.is_none());
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick(), if !unnamed => {}
            () = tokio::time::sleep(Duration::from_millis(20)), if unnamed => {}
        }
        let (leader, term) = {
            let m = raft.metrics();
            let m = m.borrow();
            (m.current_leader, m.current_term)
        };
        if leader != Some(id) {
            leading_term = None;
            continue;
        }
        if leading_term != Some(term) {
            leases.reset();
            leading_term = Some(term);
            rebalanced = Instant::now();
        }
        let mut proposals = Vec::new();
        if metadata.with_state(|s| s.image().cluster_id.is_none()) {
            proposals.push(Command::InitCluster {
                cluster_id: uuid::Uuid::new_v4(),
            });
        }
        let expired = metadata.with_state(|s| leases.expired(s.image(), Instant::now()));
        if !expired.is_empty() {
            tracing::warn!(brokers = ?expired, "broker leases expired; fencing");
            proposals.push(Command::FenceBrokers { ids: expired });
        }
        if let Some((every, percentage)) = rebalance
            && rebalanced.elapsed() >= every
        {
            rebalanced = Instant::now();
            let moves =
                metadata.with_state(|s| placement::preferred_elections(s.image(), percentage));
            if !moves.is_empty() {
                tracing::info!(
                    partitions = moves.len(),
                    "moving leaders back to preferred replicas"
                );
                proposals.push(Command::ElectLeaders {
                    partitions: Some(moves),
                    unclean: false,
                });
            }
        }
        for command in proposals {
            tokio::select! {
                () = cancel.cancelled() => return,
                r = raft.client_write(command) => match r {
                    Ok(reply) => tracing::debug!(result = ?reply.data, "controller command applied"),
                    Err(e) => tracing::info!(error = %e, "controller command not applied"),
                },
            }
        }
    }
}
