//! A client of the controller quorum, for brokers, tools and tests.
//!
//! It keeps one channel per controller address, sends leader-only calls to the last known
//! leader, and follows a follower's `strata-leader-addr` hint or tries the next controller
//! until the call succeeds or the deadline passes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use tonic::transport::Channel;

use crate::tls::GrpcTls;
use tonic::{Code, Status};

use crate::command::{Command, CommandError, CommandResult};
use crate::error::ControllerError;
use crate::model::{BrokerId, HeartbeatAck, MetadataImage, MetadataUpdate};
use crate::network;
use crate::proto::metadata_client::MetadataClient;
use crate::proto::{HeartbeatRequest, Json, ReadRequest, StatusReply, StatusRequest, WatchRequest};
use crate::service::LEADER_ADDR_KEY;

/// Pause between rounds over every controller when none answered.
const ROUND_PAUSE: Duration = Duration::from_millis(50);

/// How long one controller gets to answer a call that is safe to repeat (a heartbeat, a read,
/// opening a watch) before the next one is asked. A deposed leader cut off from its quorum
/// holds such calls open; without this bound a broker would keep asking it until its lease ran
/// out everywhere else.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a controller that held a call without answering is asked last.
const SILENT_FOR: Duration = Duration::from_secs(30);

/// Whether a call may be sent to another controller after one held it without answering.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// Reads and heartbeats: asking twice does no harm.
    Safe,
    /// A proposal that timed out may still commit: not sent again.
    Never,
}

/// A client of the controller quorum.
#[derive(Debug)]
pub struct ControllerClient {
    addrs: Vec<String>,
    channels: Mutex<HashMap<String, Channel>>,
    leader: Mutex<Option<String>>,
    /// Controllers that last held a call without answering, and when: asked last for a while,
    /// so a deposed leader cut off from its quorum does not cost every call its timeout.
    silent: Mutex<HashMap<String, tokio::time::Instant>>,
    deadline: Duration,
    tls: Option<GrpcTls>,
}

impl ControllerClient {
    /// A client of the controllers at `addrs` (`host:port`), retrying a call for up to 10 s.
    pub fn new(addrs: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            addrs: addrs.into_iter().map(Into::into).collect(),
            channels: Mutex::new(HashMap::new()),
            leader: Mutex::new(None),
            silent: Mutex::new(HashMap::new()),
            deadline: Duration::from_secs(10),
            tls: None,
        }
    }

    /// Calls the controllers over TLS with `tls` (`None`: plaintext).
    pub fn with_tls(mut self, tls: Option<GrpcTls>) -> Self {
        self.tls = tls;
        self
    }

    /// Changes how long a call keeps retrying.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    fn client(&self, addr: &str) -> Result<MetadataClient<Channel>, ControllerError> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(addr) {
            return Ok(MetadataClient::new(c.clone()));
        }
        let c = network::channel(addr, self.tls.as_ref()).map_err(|e| ControllerError::Config {
            key: "controller.quorum.voters",
            reason: format!("bad controller address {addr:?}: {e}"),
        })?;
        channels.insert(addr.to_owned(), c.clone());
        Ok(MetadataClient::new(c))
    }

    /// Forgets `addr` as the leader, so that the next call starts from the other controllers.
    fn forget_leader(&self, addr: &str) {
        let mut leader = self.leader.lock().unwrap_or_else(|p| p.into_inner());
        if leader.as_deref() == Some(addr) {
            *leader = None;
        }
    }

    /// The controllers to ask, in order: the known leader, then the others, each once, those
    /// that recently held a call without answering last.
    fn candidates(&self) -> Vec<String> {
        let known = self
            .leader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut all: Vec<String> = known.into_iter().collect();
        for a in &self.addrs {
            if !all.contains(a) {
                all.push(a.clone());
            }
        }
        let now = tokio::time::Instant::now();
        let mut silent = self.silent.lock().unwrap_or_else(|p| p.into_inner());
        silent.retain(|_, at| now.duration_since(*at) < SILENT_FOR);
        // Stable: the known leader stays first among those that answer.
        all.sort_by_key(|a| silent.contains_key(a));
        all
    }

    /// Calls the leader: the last known one first, then each controller, following hints.
    async fn on_leader<T, F, Fut>(&self, repeat: Repeat, call: F) -> Result<T, ControllerError>
    where
        F: Fn(MetadataClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let give_up = tokio::time::Instant::now() + self.deadline;
        let mut last_error = String::from("no controller addresses configured");
        loop {
            let mut candidates = self.candidates();
            let mut i = 0;
            while i < candidates.len() {
                let addr = candidates[i].clone();
                i += 1;
                let remaining = give_up.saturating_duration_since(tokio::time::Instant::now());
                let wait = match repeat {
                    Repeat::Safe => remaining.min(ATTEMPT_TIMEOUT),
                    Repeat::Never => remaining,
                };
                let reply = match tokio::time::timeout(wait, call(self.client(&addr)?)).await {
                    Ok(reply) => reply,
                    Err(_) => {
                        self.forget_leader(&addr);
                        self.silent
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(addr.clone(), tokio::time::Instant::now());
                        last_error = format!("{addr}: no answer within {wait:?}");
                        if repeat == Repeat::Never || wait == remaining {
                            return Err(ControllerError::Unavailable { reason: last_error });
                        }
                        continue;
                    }
                };
                match reply {
                    Ok(v) => {
                        self.silent
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&addr);
                        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr);
                        return Ok(v);
                    }
                    Err(status) if worth_another_controller(&status) => {
                        let hint = status
                            .metadata()
                            .get(LEADER_ADDR_KEY)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        last_error = format!("{addr}: {}", status.message());
                        self.forget_leader(&addr);
                        if let Some(hint) = hint.filter(|h| *h != addr) {
                            candidates.insert(i, hint);
                        }
                    }
                    Err(status) => return Err(ControllerError::Rpc(Box::new(status))),
                }
            }
            if tokio::time::Instant::now() + ROUND_PAUSE > give_up {
                return Err(ControllerError::Unavailable { reason: last_error });
            }
            tokio::time::sleep(ROUND_PAUSE).await;
        }
    }

    /// Proposes `command`; answers once it is committed and applied, with its result.
    pub async fn submit(&self, command: &Command) -> Result<CommandResult, ControllerError> {
        let json = serde_json::to_vec(command)?;
        let reply = self
            .on_leader(Repeat::Never, |mut c| {
                let json = json.clone();
                async move { c.submit(Json { json }).await }
            })
            .await?;
        decode(reply.into_inner())
    }

    /// Renews a broker's lease; with `want_unfence`, a fenced broker asks to be unfenced.
    pub async fn heartbeat(
        &self,
        broker_id: BrokerId,
        broker_epoch: u64,
        want_unfence: bool,
    ) -> Result<Result<HeartbeatAck, CommandError>, ControllerError> {
        let req = HeartbeatRequest {
            broker_id,
            broker_epoch,
            want_unfence,
        };
        let reply = self
            .on_leader(Repeat::Safe, |mut c| async move { c.heartbeat(req).await })
            .await?;
        decode(reply.into_inner())
    }

    /// A linearizable read of the whole metadata image.
    pub async fn read_metadata(&self) -> Result<MetadataImage, ControllerError> {
        let reply = self
            .on_leader(Repeat::Safe, |mut c| async move {
                c.read_metadata(ReadRequest {}).await
            })
            .await?;
        decode(reply.into_inner())
    }

    /// Updates after `from_version`, then each later one as it is applied. Served by the
    /// leader (so the stream is never behind a committed change for long).
    pub async fn watch(
        &self,
        from_version: u64,
    ) -> Result<impl Stream<Item = Result<MetadataUpdate, ControllerError>> + use<>, ControllerError>
    {
        let stream = self
            .on_leader(Repeat::Safe, |mut c| async move {
                c.watch_metadata(WatchRequest { from_version }).await
            })
            .await?
            .into_inner();
        Ok(stream.map(|item| match item {
            Ok(json) => decode(json),
            Err(status) => Err(ControllerError::Rpc(Box::new(status))),
        }))
    }

    /// One controller's view of the quorum.
    pub async fn status(&self, addr: &str) -> Result<StatusReply, ControllerError> {
        self.client(addr)?
            .status(StatusRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| ControllerError::Rpc(Box::new(s)))
    }
}

/// A not-leader answer, or a connection that failed: another controller may answer. (A call
/// cut off mid-flight may still have been applied; Raft commands are not deduplicated.)
fn worth_another_controller(status: &Status) -> bool {
    status.code() == Code::Unavailable
        || std::error::Error::source(status).is_some_and(|s| s.is::<tonic::transport::Error>())
}

fn decode<T: DeserializeOwned>(json: Json) -> Result<T, ControllerError> {
    Ok(serde_json::from_slice(&json.json)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_known_leader_goes_first_and_a_silent_controller_last() {
        let c = ControllerClient::new(["a:1", "b:1", "c:1"]);
        assert_eq!(c.candidates(), ["a:1", "b:1", "c:1"]);
        *c.leader.lock().expect("lock") = Some("c:1".to_owned());
        assert_eq!(c.candidates(), ["c:1", "a:1", "b:1"], "each once");
        c.silent
            .lock()
            .expect("lock")
            .insert("a:1".to_owned(), tokio::time::Instant::now());
        assert_eq!(c.candidates(), ["c:1", "b:1", "a:1"]);
        c.forget_leader("c:1");
        assert_eq!(c.candidates(), ["b:1", "c:1", "a:1"]);
    }
}
