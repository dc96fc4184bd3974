//! Raft RPCs to peer controllers over gRPC.
//!
//! One tonic [`Channel`] per peer, made when the controller starts and shared by every Raft
//! replication stream to that peer: a persistent HTTP/2 connection that reconnects on its own,
//! not a new connection per call. Peers are addressed through this controller's own voter list
//! (like Kafka's `controller.quorum.voters`).

use std::collections::BTreeMap;
use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};

use crate::model::NodeId;
use crate::proto::Json;
use crate::proto::raft_client::RaftClient;
use crate::raft_types::TypeConfig;
use crate::tls::GrpcTls;

/// A lazily connecting channel to `addr` (`host:port`), over TLS with `tls`.
pub(crate) fn channel(
    addr: &str,
    tls: Option<&GrpcTls>,
) -> Result<Channel, tonic::transport::Error> {
    let endpoint = match tls {
        Some(tls) => Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls.client())?,
        None => Endpoint::from_shared(format!("http://{addr}"))?,
    };
    Ok(endpoint
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// Makes Raft clients for peers from the channels opened at start.
#[derive(Clone, Debug)]
pub(crate) struct NetworkFactory {
    peers: Arc<BTreeMap<NodeId, Channel>>,
    retry_after: Duration,
    tls: Option<GrpcTls>,
}

impl NetworkFactory {
    pub(crate) fn new(
        peers: BTreeMap<NodeId, Channel>,
        retry_after: Duration,
        tls: Option<GrpcTls>,
    ) -> Self {
        Self {
            peers: Arc::new(peers),
            retry_after,
            tls,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        let channel = match self.peers.get(&target) {
            Some(c) => Some(c.clone()),
            None => channel(&node.addr, self.tls.as_ref()).ok(),
        };
        PeerClient {
            target,
            client: channel.map(RaftClient::new),
            retry_after: self.retry_after,
        }
    }
}

/// Raft RPCs to one peer.
#[derive(Debug)]
pub(crate) struct PeerClient {
    target: NodeId,
    client: Option<RaftClient<Channel>>,
    retry_after: Duration,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, E>>;

impl PeerClient {
    /// Sends `req` as JSON through `call` and decodes the peer's `Result<T, E>`.
    async fn call<Req, T, E, F, Fut>(
        &mut self,
        req: &Req,
        option: &RPCOption,
        call: F,
    ) -> RpcResult<T, E>
    where
        Req: Serialize,
        T: DeserializeOwned,
        E: Error + DeserializeOwned,
        F: FnOnce(RaftClient<Channel>, tonic::Request<Json>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Json>, tonic::Status>>,
    {
        let Some(client) = self.client.clone() else {
            let e = std::io::Error::other(format!("no address for controller {}", self.target));
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        };
        let json = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(Json { json });
        request.set_timeout(option.hard_ttl());
        let reply = call(client, request).await.map_err(rpc_error)?;
        let decoded: Result<T, E> = serde_json::from_slice(&reply.into_inner().json)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// The Raft error for a failed call. A peer's own answers (refusals included) travel inside
/// the reply, so a status is about the connection: a peer that is down or whose connection
/// broke (unavailable, or hyper's "transport error" / "operation was canceled") is
/// *unreachable*, which openraft retries after [`RaftNetwork::backoff`]; as a plain network
/// error it would retry at once, and a leader spun replicating to a killed voter.
fn rpc_error<E: Error>(status: tonic::Status) -> RPCError<NodeId, BasicNode, E> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
            RPCError::Unreachable(Unreachable::new(&status))
        }
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        self.call(&rpc, &option, |mut c, r| async move {
            c.append_entries(r).await
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        self.call(&rpc, &option, |mut c, r| async move {
            c.install_snapshot(r).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, RaftError<NodeId>> {
        self.call(&rpc, &option, |mut c, r| async move { c.vote(r).await })
            .await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.retry_after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_or_refused_connection_is_unreachable_and_so_backed_off() {
        type E = RPCError<NodeId, BasicNode, RaftError<NodeId>>;
        for status in [
            tonic::Status::unavailable("connection refused"),
            tonic::Status::unknown("transport error"),
            tonic::Status::cancelled("operation was canceled"),
        ] {
            let e: E = rpc_error(status);
            assert!(matches!(e, RPCError::Unreachable(_)), "{e:?}");
        }
        let e: E = rpc_error(tonic::Status::deadline_exceeded("slow"));
        assert!(matches!(e, RPCError::Network(_)), "{e:?}");
    }
}
