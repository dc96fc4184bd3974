//! The gRPC services a controller serves: Raft for peers, Metadata for brokers.
//!
//! Errors become gRPC statuses here and only here. A call that needs the leader and reaches a
//! follower gets `UNAVAILABLE` with the leader in the `strata-leader` (id) and
//! `strata-leader-addr` metadata keys, which [`crate::ControllerClient`] follows.

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use openraft::BasicNode;
use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::command::{Command, CommandError, CommandResult};
use crate::lease::Leases;
use crate::model::{BrokerId, HeartbeatAck, MetadataUpdate, NodeId};
use crate::proto::metadata_server::Metadata;
use crate::proto::raft_server::Raft as RaftRpc;
use crate::proto::{HeartbeatRequest, Json, ReadRequest, StatusReply, StatusRequest, WatchRequest};
use crate::raft_types::Raft;
use crate::state_machine::SharedMetadata;

/// Metadata key naming the leader's id in a not-leader answer.
pub const LEADER_ID_KEY: &str = "strata-leader";
/// Metadata key naming the leader's address in a not-leader answer.
pub const LEADER_ADDR_KEY: &str = "strata-leader-addr";

fn encode<T: Serialize>(value: &T) -> Result<Response<Json>, Status> {
    serde_json::to_vec(value)
        .map(|json| Response::new(Json { json }))
        .map_err(|e| Status::internal(format!("encoding reply: {e}")))
}

fn decode<T: serde::de::DeserializeOwned>(req: Request<Json>) -> Result<T, Status> {
    serde_json::from_slice(&req.into_inner().json)
        .map_err(|e| Status::invalid_argument(format!("malformed payload: {e}")))
}

/// Raft RPCs from peer controllers, handed to the local Raft.
#[derive(Clone)]
pub(crate) struct RaftService {
    pub(crate) raft: Raft,
}

impl std::fmt::Debug for RaftService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftService").finish_non_exhaustive()
    }
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(&self, req: Request<Json>) -> Result<Response<Json>, Status> {
        encode(&self.raft.append_entries(decode(req)?).await)
    }

    async fn vote(&self, req: Request<Json>) -> Result<Response<Json>, Status> {
        encode(&self.raft.vote(decode(req)?).await)
    }

    async fn install_snapshot(&self, req: Request<Json>) -> Result<Response<Json>, Status> {
        encode(&self.raft.install_snapshot(decode(req)?).await)
    }
}

/// The broker-facing service.
#[derive(Clone)]
pub(crate) struct MetadataService {
    pub(crate) id: NodeId,
    pub(crate) raft: Raft,
    pub(crate) metadata: SharedMetadata,
    pub(crate) leases: Arc<Leases>,
    /// This controller's address book, for leader hints.
    pub(crate) voters: Arc<BTreeMap<NodeId, String>>,
    pub(crate) cancel: CancellationToken,
    /// How long committing a command took here as leader (proposed to applied).
    pub(crate) commit_latency: prometheus_client::metrics::histogram::Histogram,
}

impl std::fmt::Debug for MetadataService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataService")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl MetadataService {
    fn not_leader(&self, f: &ForwardToLeader<NodeId, BasicNode>) -> Status {
        let mut status = Status::unavailable("not the controller leader");
        if let Some(id) = f.leader_id {
            let addr = self
                .voters
                .get(&id)
                .cloned()
                .or_else(|| f.leader_node.as_ref().map(|n| n.addr.clone()));
            if let Ok(v) = id.to_string().parse() {
                status.metadata_mut().insert(LEADER_ID_KEY, v);
            }
            if let Some(v) = addr.and_then(|a| a.parse().ok()) {
                status.metadata_mut().insert(LEADER_ADDR_KEY, v);
            }
        }
        status
    }

    /// Proposes `command` and waits until it is committed and applied.
    async fn propose(&self, command: Command) -> Result<CommandResult, Status> {
        let started = Instant::now();
        match self.raft.client_write(command).await {
            Ok(reply) => {
                self.commit_latency.observe(started.elapsed().as_secs_f64());
                Ok(reply.data)
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(self.not_leader(&f))
            }
            Err(RaftError::APIError(e)) => Err(Status::failed_precondition(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(Status::unavailable(format!("raft stopped: {e}"))),
        }
    }

    async fn ensure_leader(&self) -> Result<(), Status> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(self.not_leader(&f))
            }
            Err(RaftError::APIError(e)) => Err(Status::unavailable(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(Status::unavailable(format!("raft stopped: {e}"))),
        }
    }

    fn heartbeat_checked(
        &self,
        broker: BrokerId,
        epoch: u64,
    ) -> Result<Result<bool, CommandError>, Status> {
        Ok(self
            .metadata
            .with_state(|s| match s.image().brokers.get(&broker) {
                None => Err(CommandError::UnknownBroker { id: broker }),
                Some(b) if b.epoch != epoch => Err(CommandError::StaleBrokerEpoch {
                    id: broker,
                    current: b.epoch,
                    got: epoch,
                }),
                Some(b) => Ok(b.fenced),
            }))
    }
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<Json, Status>> + Send>>;

#[tonic::async_trait]
impl Metadata for MetadataService {
    async fn submit(&self, req: Request<Json>) -> Result<Response<Json>, Status> {
        let command: Command = decode(req)?;
        if matches!(
            command,
            Command::InitCluster { .. }
                | Command::FenceBrokers { .. }
                | Command::UnfenceBroker { .. }
        ) {
            return Err(Status::invalid_argument(
                "this command is issued by the controller itself",
            ));
        }
        let registering = match &command {
            Command::RegisterBroker { id, .. } => Some(*id),
            _ => None,
        };
        let result = self.propose(command).await?;
        if let (Some(id), Ok(_)) = (registering, &result) {
            self.leases.renew(id, Instant::now());
        }
        encode(&result)
    }

    async fn heartbeat(&self, req: Request<HeartbeatRequest>) -> Result<Response<Json>, Status> {
        let HeartbeatRequest {
            broker_id,
            broker_epoch,
            want_unfence,
        } = req.into_inner();
        self.ensure_leader().await?;
        let fenced = match self.heartbeat_checked(broker_id, broker_epoch)? {
            Ok(fenced) => fenced,
            Err(e) => return encode(&Err::<HeartbeatAck, _>(e)),
        };
        self.leases.renew(broker_id, Instant::now());
        let result: Result<HeartbeatAck, CommandError> = if fenced && want_unfence {
            self.propose(Command::UnfenceBroker {
                id: broker_id,
                epoch: broker_epoch,
            })
            .await?
            .map(|applied| HeartbeatAck {
                fenced: false,
                metadata_version: applied.version,
            })
        } else {
            Ok(HeartbeatAck {
                fenced,
                metadata_version: self.metadata.with_state(|s| s.image().version),
            })
        };
        encode(&result)
    }

    async fn read_metadata(&self, _req: Request<ReadRequest>) -> Result<Response<Json>, Status> {
        self.ensure_leader().await?;
        encode(&self.metadata.image())
    }

    type WatchMetadataStream = UpdateStream;

    async fn watch_metadata(
        &self,
        req: Request<WatchRequest>,
    ) -> Result<Response<UpdateStream>, Status> {
        let watcher = Watcher {
            metadata: self.metadata.clone(),
            changed: self.metadata.subscribe(),
            version: req.into_inner().from_version,
            pending: VecDeque::new(),
            cancel: self.cancel.clone(),
        };
        let stream = futures::stream::unfold(watcher, |mut w| async move {
            let update = w.next().await?;
            let item = serde_json::to_vec(&update)
                .map(|json| Json { json })
                .map_err(|e| Status::internal(format!("encoding update: {e}")));
            Some((item, w))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn status(&self, _req: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        let m = self.raft.metrics().borrow().clone();
        Ok(Response::new(StatusReply {
            node_id: self.id,
            leader_id: m.current_leader,
            term: m.current_term,
            metadata_version: self.metadata.with_state(|s| s.image().version),
            last_applied_index: m.last_applied.map(|l| l.index),
        }))
    }
}

/// One watch stream's position.
struct Watcher {
    metadata: SharedMetadata,
    changed: watch::Receiver<u64>,
    version: u64,
    pending: VecDeque<MetadataUpdate>,
    cancel: CancellationToken,
}

impl Watcher {
    /// The next update after `version`, waiting for one; `None` when the server shuts down.
    async fn next(&mut self) -> Option<MetadataUpdate> {
        loop {
            if let Some(u) = self.pending.pop_front() {
                self.version = match &u {
                    MetadataUpdate::Image(i) => i.version,
                    MetadataUpdate::Delta(d) => d.version,
                };
                return Some(u);
            }
            self.changed.mark_unchanged();
            let updates = self.metadata.with_state(|s| s.updates_since(self.version));
            if !updates.is_empty() {
                self.pending.extend(updates);
                continue;
            }
            tokio::select! {
                r = self.changed.changed() => r.ok()?,
                () = self.cancel.cancelled() => return None,
            }
        }
    }
}
