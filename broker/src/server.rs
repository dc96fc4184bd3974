//! A running broker: the embedded controller (when configured), registration and heartbeats,
//! the metadata follower, and the Kafka listener.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use strata_controller::{
    Command, CommandError, ControllerClient, ControllerConfig, ControllerNode, MetadataUpdate,
    Outcome,
};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::admission::Admission;
use crate::config::{BrokerConfig, ControllerMode};
use crate::connection;
use crate::error::BrokerError;
use crate::partition::registry::RoleEvents;
use crate::partition::remote::RECOVERY_CONCURRENCY;
use crate::partition::role::Change;
use crate::security::config::ClientAuth;
use crate::security::tls::Tls;
use crate::security::{Listener, SecurityProtocol, Session};
use crate::state::BrokerState;
use crate::supervisor::{self, Backoff, Supervisor};
use crate::tiering::Tiering;
use object_store::ObjectStore;

/// How long shutdown waits for connections to finish their in-flight requests.
const DRAIN: Duration = Duration::from_secs(10);

/// How long start-up waits for its own unfencing to show in the local metadata, and for the
/// partitions it hosts to read their manifests.
const STARTUP_WAIT: Duration = Duration::from_secs(10);

/// A running broker. [`Broker::shutdown`] stops it gracefully.
#[derive(Debug)]
pub struct Broker {
    state: Arc<BrokerState>,
    local_addr: SocketAddr,
    /// Every listener's name and bound address, the main one first.
    listener_addrs: Vec<(String, SocketAddr)>,
    http_addr: Option<SocketAddr>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
    http_cancel: CancellationToken,
    http_task: JoinSet<()>,
    supervisor: Supervisor,
    controller: Option<ControllerNode>,
}

impl Broker {
    /// Starts a broker (and its embedded controller, if configured) and begins serving.
    pub async fn start(config: BrokerConfig) -> Result<Self, BrokerError> {
        config.validate()?;
        let listener =
            TcpListener::bind(&config.kafka.listen)
                .await
                .map_err(|e| BrokerError::Config {
                    key: "kafka.listen".into(),
                    reason: format!("cannot listen on {}: {e}", config.kafka.listen),
                })?;
        Self::start_with_listener(config, listener).await
    }

    /// Starts a broker on an already bound Kafka listener (tests bind port 0 first).
    pub async fn start_with_listener(
        config: BrokerConfig,
        listener: TcpListener,
    ) -> Result<Self, BrokerError> {
        Self::start_with_store(config, listener, None).await
    }

    /// Starts a broker on a bound listener whose tiered storage goes to `store` instead of
    /// the configured URL (tests wrap stores in fault-injecting layers).
    pub async fn start_with_store(
        mut config: BrokerConfig,
        listener: TcpListener,
        store: Option<Arc<dyn ObjectStore>>,
    ) -> Result<Self, BrokerError> {
        let local_addr = listener.local_addr().map_err(|source| BrokerError::Io {
            op: "reading listener address",
            path: config.data_dir.clone(),
            source,
        })?;
        if config.kafka.advertised.is_none() {
            config.kafka.advertised = Some(local_addr.to_string());
        }
        let main = Arc::new(Listener {
            name: config.kafka.listener_name.clone(),
            protocol: SecurityProtocol::Plaintext,
            client_auth: ClientAuth::None,
            inter_broker: true,
        });
        let mut listeners = vec![(main, listener)];
        for l in &mut config.kafka.listeners {
            let tcp = TcpListener::bind(&l.listen)
                .await
                .map_err(|e| BrokerError::Config {
                    key: format!("kafka.listeners.{}", l.name),
                    reason: format!("cannot listen on {}: {e}", l.listen),
                })?;
            if l.advertised.is_none() {
                let bound = tcp.local_addr().map_err(|source| BrokerError::Io {
                    op: "reading listener address",
                    path: PathBuf::new(),
                    source,
                })?;
                l.advertised = Some(bound.to_string());
            }
            let listener = Listener {
                name: l.name.clone(),
                protocol: l.protocol().unwrap_or(SecurityProtocol::Plaintext),
                client_auth: l.client_auth.unwrap_or(config.kafka.tls.client_auth),
                inter_broker: false,
            };
            listeners.push((Arc::new(listener), tcp));
        }
        config.validate()?;
        let tls = match listeners.iter().any(|(l, _)| l.protocol.tls()) {
            true => Some(Arc::new(Tls::load(&config.kafka.tls).map_err(
                |reason| BrokerError::Config {
                    key: "kafka.tls".into(),
                    reason,
                },
            )?)),
            false => None,
        };
        let jwt = match config
            .kafka
            .sasl
            .mechanisms
            .iter()
            .any(|m| m == "OAUTHBEARER")
        {
            true => Some(Arc::new(
                crate::security::oauth::Jwt::load(&config.kafka.sasl.oauthbearer).map_err(
                    |reason| BrokerError::Config {
                        key: "kafka.sasl.oauthbearer.jwks_file".into(),
                        reason,
                    },
                )?,
            )),
            false => None,
        };
        if config.controller.mode == ControllerMode::Dedicated {
            return Err(BrokerError::Config {
                key: "controller.mode".into(),
                reason: "a dedicated controller serves no Kafka clients; start it with \
                         strata_broker::run"
                    .into(),
            });
        }
        std::fs::create_dir_all(config.log_dir()).map_err(|source| BrokerError::Io {
            op: "creating",
            path: config.log_dir(),
            source,
        })?;
        let http = crate::http::bind(&config.http.listen).await?;
        let http_addr = crate::http::local_addr(&http);
        let metrics = Arc::new(crate::metrics::Metrics::default());
        // The object store first: when it is unusable, nothing else has started yet.
        let tiering = Arc::new(Tiering::open(&config, store, metrics.clone()).await?);
        let controller = start_controller(&config).await?;
        let addrs: Vec<String> = match &controller {
            Some(node) => vec![node.local_addr().to_string()],
            None => config.voters()?.into_values().collect(),
        };
        let budget = crate::budget::Budget::of(&config)?;
        strata_storage::handles::set_open_sealed_limit(budget.sealed_files)?;
        if config.topics.direct_writes {
            strata_storage::direct::probe(&config.log_dir()).map_err(|e| BrokerError::Config {
                key: "topics.direct_writes".into(),
                reason: format!(
                    "the log directory {} does not take direct I/O ({e}); turn the setting off \
                     or put the log directory on a filesystem that does",
                    config.log_dir().display()
                ),
            })?;
        }
        strata_storage::direct::set_direct_writes(config.topics.direct_writes);
        tracing::info!(connections = budget.connections, sealed_segment_files = budget.sealed_files,
            partitions = %budget.partitions_from, "budget");
        let admission = Admission::new(&config.kafka, budget.connections);
        let controller_tls = config.controller.tls.load()?;
        let link = crate::peers::Link::of(&config)?;
        let state = Arc::new(BrokerState::new(
            config,
            ControllerClient::new(addrs).with_tls(controller_tls),
            tiering.clone(),
            (admission, budget),
            metrics,
            (jwt, link),
        ));
        // Probes answer from the start, saying what is not ready yet.
        let http_cancel = CancellationToken::new();
        let mut http_task = JoinSet::new();
        if let Some(listener) = http {
            let quorum = controller.as_ref().map(|c| crate::scrape::QuorumMember {
                raft: c.raft_metrics(),
                commit_latency: c.commit_latency(),
            });
            let serve = crate::http::serve(
                listener,
                state.clone(),
                quorum,
                local_addr,
                http_cancel.clone(),
            );
            http_task.spawn(serve);
            http_task.spawn(crate::http::probe_store(state.clone(), http_cancel.clone()));
            tracing::info!(addr = ?http_addr, "serving /metrics, /healthz and /readyz");
        }

        register(&state).await?;
        let image = state.controller.read_metadata().await?;
        // Background work runs under the supervisor; connections under their own token, so
        // shutdown can stop taking requests before it stops the work they rely on.
        let mut supervisor = Supervisor::new(CancellationToken::new());
        let timeout = Duration::from_millis(state.config.object_store.operation_timeout_ms);
        let s = state.clone();
        supervisor.service("partition recovery", Backoff::default(), move |cancel| {
            let roles = s.partitions.subscribe();
            supervisor::until_cancelled(recover_partitions(roles, timeout, cancel.clone()), cancel)
        });
        apply(&state, vec![MetadataUpdate::Image(image)]).await?;
        // Hosted tiered partitions read their manifests, all at once and bounded in time,
        // before clients are served; one the store does not answer for keeps refusing
        // appends until the tiering pass has read it.
        if !state.partitions.recovered_within(STARTUP_WAIT).await {
            tracing::warn!("some partitions have not read their manifests yet; appends wait");
        }
        let s = state.clone();
        supervisor.service("metadata follower", Backoff::default(), move |cancel| {
            supervisor::until_cancelled(follow_metadata(s.clone(), cancel.clone()), cancel)
        });
        // Serve only once unfenced and the leadership that brings is visible here, so a
        // restarted broker does not answer its first clients with NOT_LEADER.
        let unfenced_at = heartbeat(&state, true).await?;
        if !state.wait_for_version(unfenced_at, STARTUP_WAIT).await {
            tracing::warn!(
                version = unfenced_at,
                "metadata not caught up at start; serving anyway"
            );
        }
        let s = state.clone();
        supervisor.service("heartbeats", Backoff::default(), move |cancel| {
            supervisor::until_cancelled(keep_heartbeating(s.clone(), cancel.clone()), cancel)
        });
        if state.config.object_store.recover_topics {
            // Before clients are served: one could otherwise create a recovered topic's name
            // afresh, under a new id that finds none of the old objects.
            let created =
                crate::catalog::recover_topics(&state.metadata, &tiering, &state.controller)
                    .await
                    .map_err(|reason| {
                        BrokerError::Tier(strata_storage::tier::TierError::Unreachable {
                            url: state.config.object_store.url.clone(),
                            reason: format!(
                                "recovering topics from the catalog: {reason} (set \
                             object_store.recover_topics = false to start without them)"
                            ),
                        })
                    })?;
            if created > 0 {
                tracing::info!(topics = created, "topics recovered from the object store");
            }
        }
        let s = state.clone();
        supervisor.service("group coordinator", Backoff::default(), move |cancel| {
            let roles = s.partitions.subscribe();
            supervisor::until_cancelled(s.groups.clone().run(roles, cancel.clone()), cancel)
        });
        let s = state.clone();
        supervisor.service(
            "transaction coordinator",
            Backoff::default(),
            move |cancel| {
                let roles = s.partitions.subscribe();
                let markers = crate::handlers::marker_writer(&s);
                supervisor::until_cancelled(
                    s.txns.clone().run(roles, markers, cancel.clone()),
                    cancel,
                )
            },
        );
        let s = state.clone();
        let t = tiering.clone();
        supervisor.service("tiering", Backoff::default(), move |cancel| {
            let recheck = Duration::from_millis(s.config.topics.retention_check_interval_ms);
            let run = t.clone().run(
                s.partitions.clone(),
                (s.config.object_store.clone(), recheck),
                cancel.clone(),
            );
            supervisor::until_cancelled(run, cancel)
        });
        let (s, sync) = (state.clone(), Arc::default());
        supervisor.every(
            "catalog",
            Duration::from_millis(state.config.object_store.upload_interval_ms),
            Backoff::default(),
            move || {
                crate::catalog::step(
                    Arc::clone(&sync),
                    tiering.clone(),
                    s.metadata.clone(),
                    s.id,
                    timeout,
                )
            },
        );
        let s = state.clone();
        supervisor.service("replica fetcher", Backoff::default(), move |cancel| {
            let roles = s.partitions.subscribe();
            let reach = (s.metadata.clone(), s.peers.link());
            let run = crate::follower::run(s.id, reach, roles, cancel.clone());
            supervisor::until_cancelled(run, cancel)
        });
        let s = state.clone();
        supervisor.every(
            "isr",
            Duration::from_millis((state.config.topics.replica_lag_time_max_ms / 4).max(100)),
            Backoff::default(),
            move || crate::isr::step(s.clone()),
        );
        let (partitions, idle) = (
            state.partitions.clone(),
            Duration::from_millis(state.config.topics.producer_id_expiration_ms),
        );
        supervisor.every(
            "flusher",
            Duration::from_millis(state.config.topics.flush_check_interval_ms),
            Backoff::default(),
            move || crate::flusher::step(partitions.clone(), idle),
        );
        if state.config.cleaner.enable {
            let cleaner = state.cleaner.clone();
            supervisor.every(
                "log cleaner",
                Duration::from_millis(state.config.cleaner.backoff_ms),
                Backoff::default(),
                move || cleaner.clone().step(),
            );
        }
        if let Some(tls) = &tls {
            let tls = tls.clone();
            supervisor.service("tls reload", Backoff::default(), move |cancel| {
                supervisor::until_cancelled(tls.clone().watch(cancel.clone()), cancel)
            });
        }
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let listener_addrs = listeners
            .iter()
            .filter_map(|(l, tcp)| Some((l.name.clone(), tcp.local_addr().ok()?)))
            .collect();
        for (listener, tcp) in listeners {
            let tls = tls.clone().filter(|_| listener.protocol.tls());
            let addr = tcp.local_addr().ok();
            tracing::info!(name = %listener.name, protocol = listener.protocol.name(), ?addr,
                "listener open");
            tasks.spawn(accept(state.clone(), listener, tcp, tls, cancel.clone()));
        }
        tracing::info!(broker = state.id, %local_addr, "strata broker serving Kafka clients");
        Ok(Self {
            state,
            local_addr,
            listener_addrs,
            http_addr,
            cancel,
            tasks,
            http_cancel,
            http_task,
            supervisor,
            controller,
        })
    }

    /// The Kafka listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound address of the listener named `name` (`kafka.listener_name` or one of
    /// `kafka.listeners`).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listener_addrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// The HTTP listener's address (`/metrics`, `/healthz`, `/readyz`), if it runs.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The embedded controller's gRPC address, if one runs in this process.
    pub fn controller_addr(&self) -> Option<SocketAddr> {
        self.controller.as_ref().map(ControllerNode::local_addr)
    }

    /// In order: hands back its leadership (controlled shutdown) and waits until its own
    /// metadata shows it, still serving meanwhile (followers keep copying, requests for moved
    /// partitions are answered NOT_LEADER and retried at the new leaders); stops accepting
    /// and lets connections finish their in-flight requests; stops the background work;
    /// flushes every log and saves its producers; stops the embedded controller.
    pub async fn shutdown(mut self) {
        self.state
            .stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(version) = controlled_shutdown(&self.state).await
            && !self.state.wait_for_version(version, HAND_BACK_WAIT).await
        {
            tracing::warn!("the leadership hand-back did not reach this broker in time");
        }
        self.cancel.cancel();
        let drained = tokio::time::timeout(DRAIN, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("connections still busy after {DRAIN:?}; closing them");
            self.tasks.abort_all();
        }
        self.supervisor.stop().await;
        self.state.cleaner.stop().await;
        let partitions = self.state.partitions.clone();
        let _ = tokio::task::spawn_blocking(move || partitions.flush_all()).await;
        if let Some(c) = self.controller.take() {
            c.shutdown().await;
        }
        self.http_cancel.cancel();
        while self.http_task.join_next().await.is_some() {}
        tracing::info!(broker = self.state.id, "strata broker stopped");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.http_cancel.cancel();
    }
}

/// How long shutdown waits for the controller to take back this broker's leadership.
const HAND_BACK_WAIT: Duration = Duration::from_secs(5);

/// Asks the controller to move this broker's leadership elsewhere now, rather than when its
/// lease runs out: clients of partitions with other in-sync replicas move on at once. Once
/// `stopping` is set (a heartbeat asking to be unfenced would undo it); an unreachable
/// controller only delays that to the lease's end. Returns the metadata version that holds
/// the change.
async fn controlled_shutdown(state: &BrokerState) -> Option<u64> {
    let command = Command::ShutdownBroker {
        id: state.id,
        epoch: state.epoch(),
    };
    match tokio::time::timeout(HAND_BACK_WAIT, state.controller.submit(&command)).await {
        Ok(Ok(Ok(applied))) => {
            tracing::info!(broker = state.id, outcome = ?applied.outcome, "leadership handed back");
            return Some(applied.version);
        }
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the controller refused the shutdown"),
        Ok(Err(e)) => tracing::warn!(error = %e, "leadership not handed back"),
        Err(_) => tracing::warn!(wait = ?HAND_BACK_WAIT, "leadership not handed back in time"),
    }
    None
}

/// Starts this process's member of the controller quorum, if its mode has one.
pub(crate) async fn start_controller(
    config: &BrokerConfig,
) -> Result<Option<ControllerNode>, BrokerError> {
    let mut c =
        ControllerConfig::single_node(config.controller_dir(), config.controller.listen.clone());
    c.tls = config.controller.tls.load()?;
    c.node_id = u64::try_from(config.node_id).unwrap_or(0);
    c.session_timeout = Duration::from_millis(config.controller.session_timeout_ms);
    let every = config.controller.leader_imbalance_check_interval_ms;
    c.leader_rebalance_interval = (every > 0).then(|| Duration::from_millis(every));
    c.leader_imbalance_percentage = config.controller.leader_imbalance_per_broker_percentage;
    match config.controller.mode {
        ControllerMode::Remote => return Ok(None),
        ControllerMode::Embedded => {
            c.voters = [(c.node_id, config.controller.listen.clone())].into();
        }
        ControllerMode::Combined | ControllerMode::Dedicated => c.voters = config.voters()?,
    }
    Ok(Some(ControllerNode::start(c).await?))
}

/// Registers this broker process with the controller and records its epoch.
async fn register(state: &BrokerState) -> Result<(), BrokerError> {
    let command = Command::RegisterBroker {
        id: state.id,
        endpoints: state.config.endpoints(),
        rack: state.config.rack.clone(),
        incarnation: Uuid::new_v4(),
    };
    match state.controller.submit(&command).await? {
        Ok(applied) => {
            if let Outcome::BrokerRegistered { epoch } = applied.outcome {
                state
                    .epoch
                    .store(epoch, std::sync::atomic::Ordering::SeqCst);
            }
            Ok(())
        }
        Err(e) => Err(BrokerError::Registration(e)),
    }
}

/// One heartbeat, answering the metadata version it saw; an answer that this broker is live
/// renews its lease. A broker the controller no longer knows under this epoch registers again.
async fn heartbeat(state: &BrokerState, want_unfence: bool) -> Result<u64, BrokerError> {
    let sent = tokio::time::Instant::now();
    match state
        .controller
        .heartbeat(state.id, state.epoch(), want_unfence)
        .await?
    {
        Ok(ack) => {
            if !ack.fenced {
                state.lease.renew(sent, ack.metadata_version);
            }
            state
                .leader_version
                .fetch_max(ack.metadata_version, std::sync::atomic::Ordering::SeqCst);
            Ok(ack.metadata_version)
        }
        Err(CommandError::StaleBrokerEpoch { .. } | CommandError::UnknownBroker { .. }) => {
            tracing::warn!(
                broker = state.id,
                "controller lost this registration; registering again"
            );
            register(state).await.map(|()| 0)
        }
        Err(e) => Err(BrokerError::Registration(e)),
    }
}

async fn keep_heartbeating(state: Arc<BrokerState>, cancel: CancellationToken) {
    let every = Duration::from_millis(state.config.controller.heartbeat_interval_ms);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        // A broker shutting down has handed its leadership back: not unfenced again.
        let unfence = !state.stopping.load(std::sync::atomic::Ordering::SeqCst);
        if let Err(e) = heartbeat(&state, unfence).await {
            tracing::warn!(error = %e, "heartbeat failed");
        }
    }
}

/// Applies metadata off the async threads.
async fn apply(state: &Arc<BrokerState>, updates: Vec<MetadataUpdate>) -> Result<(), BrokerError> {
    let s = state.clone();
    tokio::task::spawn_blocking(move || s.apply_updates(updates))
        .await
        .map_err(|e| BrokerError::Io {
            op: "applying metadata",
            path: state.config.log_dir(),
            source: std::io::Error::other(e),
        })
}

/// Recovers tiered partitions from their manifests as they come to be hosted, a bounded
/// number at once, so that applying metadata never waits on the object store.
async fn recover_partitions(roles: RoleEvents, timeout: Duration, cancel: CancellationToken) {
    let hosted = futures::stream::unfold(roles, |mut rx| async move {
        rx.recv()
            .await
            .map(|changes| (futures::stream::iter(changes.to_vec()), rx))
    })
    .flatten()
    .filter_map(|c| async move {
        let hosted = !matches!(c.change, Change::Stop { .. });
        (hosted && c.partition.recovering()).then_some(c.partition)
    })
    .take_until(cancel.cancelled_owned());
    hosted
        .for_each_concurrent(RECOVERY_CONCURRENCY, |part| async move {
            part.recover_logged(timeout).await;
        })
        .await;
}

/// How long the applied metadata may stay behind what the controller leader reported, with
/// no update arriving, before the watch stream is taken for stale (its controller cut off
/// from the quorum, or a connection that hangs) and opened again.
const STALE_WATCH: Duration = Duration::from_secs(1);

/// Follows the controller's metadata stream from the version applied last, reconnecting
/// when it breaks or stalls.
async fn follow_metadata(state: Arc<BrokerState>, cancel: CancellationToken) {
    loop {
        let version = state.image().version;
        let stream = tokio::select! {
            () = cancel.cancelled() => return,
            s = state.controller.watch(version) => s,
        };
        match stream {
            Ok(stream) => {
                let mut stream = Box::pin(stream.ready_chunks(256));
                let mut check = tokio::time::interval(STALE_WATCH / 4);
                let mut behind_since = None;
                loop {
                    let batch = tokio::select! {
                        () = cancel.cancelled() => return,
                        b = stream.next() => b,
                        now = check.tick() => {
                            let leader = state.leader_version.load(std::sync::atomic::Ordering::SeqCst);
                            if state.image().version >= leader {
                                behind_since = None;
                            } else if now - *behind_since.get_or_insert(now) >= STALE_WATCH {
                                tracing::warn!(
                                    applied = state.image().version,
                                    leader,
                                    "metadata stream stalled behind the controller leader; reconnecting"
                                );
                                break;
                            }
                            continue;
                        }
                    };
                    let Some(batch) = batch else { break };
                    // Updates flow: a stream that is behind but moving is not stalled.
                    behind_since = None;
                    let mut updates = Vec::with_capacity(batch.len());
                    let mut broken = false;
                    for u in batch {
                        match u {
                            Ok(u) => updates.push(u),
                            Err(e) => {
                                tracing::warn!(error = %e, "metadata stream broke");
                                broken = true;
                                break;
                            }
                        }
                    }
                    if let Err(e) = apply(&state, updates).await {
                        tracing::error!(error = %e, "applying metadata failed");
                    }
                    if broken {
                        break;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch metadata"),
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// Accepts connections on one listener until cancelled; on a TLS listener each connection
/// first completes its handshake (within `kafka.tls.handshake_timeout_ms`), and a client
/// certificate's subject becomes its principal.
async fn accept(
    state: Arc<BrokerState>,
    kind: Arc<Listener>,
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    cancel: CancellationToken,
) {
    let mut connections = JoinSet::new();
    state
        .serving
        .store(true, std::sync::atomic::Ordering::SeqCst);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match state.admission.admit(peer.ip()) {
                    Ok(slot) => {
                        let now = std::time::Instant::now();
                        if let Some(hold) = state.quotas.connection(&state.image(), peer.ip(), now) {
                            // Over the IP's connection_creation_rate: held for the throttle
                            // time, then closed unserved (Kafka's KIP-612).
                            state.metrics.connection(false);
                            tracing::debug!(%peer, ?hold, "connection refused: over the IP's connection_creation_rate");
                            let cancel = cancel.clone();
                            connections.spawn(async move {
                                tokio::select! {
                                    () = tokio::time::sleep(hold) => {}
                                    () = cancel.cancelled() => {}
                                }
                                drop((stream, slot));
                            });
                            continue;
                        }
                        state.metrics.connection(true);
                        let _ = stream.set_nodelay(true);
                        let (state, kind, tls, cancel) =
                            (state.clone(), kind.clone(), tls.clone(), cancel.clone());
                        connections.spawn(async move {
                            let Some(tls) = tls else {
                                let session = Arc::new(Session::new(kind, peer, None));
                                return connection::serve(state, stream, session, slot, cancel).await;
                            };
                            let Some(acceptor) = tls.acceptor(kind.client_auth) else {
                                tracing::error!(listener = %kind.name, "no TLS settings for this listener's client authentication");
                                return;
                            };
                            let handshake = acceptor.accept(stream);
                            let stream = match tokio::time::timeout(tls.handshake_timeout(), handshake).await {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    tracing::info!(%peer, listener = %kind.name, error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::info!(%peer, listener = %kind.name, "TLS handshake not finished in time");
                                    return;
                                }
                            };
                            let certificate = stream.get_ref().1.peer_certificates().and_then(|c| c.first());
                            let principal = match certificate.map(|c| tls.principal_of(c)) {
                                None => None,
                                Some(Ok(p)) => Some(p),
                                Some(Err(error)) => {
                                    tracing::info!(%peer, listener = %kind.name, %error, "client certificate refused");
                                    return;
                                }
                            };
                            let session = Arc::new(Session::new(kind, peer, principal));
                            connection::serve(state, stream, session, slot, cancel).await;
                        });
                    }
                    Err(full) => {
                        state.metrics.connection(false);
                        // Closed at once, as Kafka does past max.connections.
                        tracing::debug!(%peer, ?full, "connection refused: too many connections");
                        drop(stream);
                    }
                },
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    state
        .serving
        .store(false, std::sync::atomic::Ordering::SeqCst);
    drop(listener);
    while connections.join_next().await.is_some() {}
}
