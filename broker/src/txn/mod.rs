//! The transaction coordinator: transactional ids' producer ids, epochs and open
//! transactions, and the markers that end them on every partition they wrote.
//!
//! A transactional id lives in the `__transaction_state` partition it hashes to (Kafka's
//! rule, as for groups), and this broker coordinates it when it leads that partition: the
//! coordinator follows the partitions' role changes like the group coordinator, replaying a
//! partition when it starts leading it and dropping its ids when it stops. The topic is
//! created at the first FindCoordinator for a transactional id, so clusters that never use
//! transactions do not carry it.
//!
//! Every transition ([`machine`]) is computed and written under the partition's write lock,
//! durable on every in-sync replica before it is applied and answered. A transaction that
//! prepares to commit or abort is then completed in the background: the markers are written
//! on each partition's leader (through a [`MarkerWriter`]: in process, or WriteTxnMarkers to
//! another broker), retried until every partition has one, and the Complete state written.
//! A new coordinator that loads a Prepare state finishes it the same way, and so does the
//! coordinator's tick when a completion stopped early while this broker kept the partition
//! (its lease lapsed for a moment, or writing the Complete state failed). Transactions open
//! past their `transaction.timeout.ms` are aborted, and ids idle in a finished state past
//! `transactional.id.expiration.ms` are forgotten.

pub(crate) mod machine;
pub(crate) mod store;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use strata_controller::ControllerClient;
use tokio_util::sync::CancellationToken;

use self::machine::{End, Init, TxnMeta, TxnState, code};
use self::store::TXN_TOPIC;
use crate::lease::Lease;
use crate::metadata::MetadataView;
use crate::partition::Partition;
use crate::partition::registry::RoleEvents;
use crate::partition::role::RoleChange;
use crate::statelog::{self, InternalTopic, Leadership, Routes, now_ms};

/// How often timeouts and expiry are checked.
const TICK: Duration = Duration::from_secs(1);
/// How long EndTxn (and an InitProducerId that aborts) waits for the markers before
/// answering anyway.
const COMPLETION_WAIT: Duration = Duration::from_secs(5);
/// The longest wait between attempts to write a transaction's markers.
const MAX_MARKER_BACKOFF: Duration = Duration::from_secs(2);

/// Coordinator settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TxnConfig {
    /// Partitions of `__transaction_state` (Kafka's `transaction.state.log.num.partitions`).
    pub(crate) state_partitions: i32,
    pub(crate) replication_factor: Option<i16>,
    pub(crate) expected_brokers: usize,
    /// Kafka's `transaction.max.timeout.ms`.
    pub(crate) max_timeout_ms: i32,
    /// Kafka's `transactional.id.expiration.ms`.
    pub(crate) id_expiration: Duration,
    /// `segment.bytes` of `__transaction_state` when this broker creates it.
    pub(crate) segment_bytes: u64,
    /// Whether it is created tiered.
    pub(crate) tiered: bool,
}

/// The markers ending one transaction, for the partitions still without one.
#[derive(Clone, Debug)]
pub(crate) struct Markers {
    pub(crate) producer_id: i64,
    pub(crate) producer_epoch: i16,
    pub(crate) commit: bool,
    /// The coordinator's epoch: its `__transaction_state` partition's leader epoch.
    pub(crate) coordinator_epoch: i32,
    pub(crate) partitions: Vec<(String, i32)>,
}

/// Writes markers on the partitions' leaders, answering an error code per partition (0 when
/// the marker is written and replicated).
pub(crate) trait MarkerWriter: Send + Sync + std::fmt::Debug {
    fn write(&self, markers: Markers) -> BoxFuture<'_, Vec<((String, i32), i16)>>;
}

/// A change to a transactional id's state.
enum Put {
    Nothing,
    State(TxnMeta),
    Forget,
}

#[derive(Debug)]
pub(crate) struct TxnCoordinator {
    pub(crate) config: TxnConfig,
    metadata: Arc<MetadataView>,
    controller: Arc<ControllerClient>,
    lease: Arc<Lease>,
    txns: Mutex<HashMap<String, TxnMeta>>,
    /// The state partitions, and those loaded: those this broker leads.
    routes: Routes,
    /// Serialises transitions, per state partition.
    write_locks: Vec<tokio::sync::Mutex<()>>,
    /// Transactions whose markers are being written.
    completing: Mutex<HashSet<String>>,
    /// Notified whenever a transaction's Complete state is written.
    completed: tokio::sync::Notify,
    /// Set once the topic has been asked for.
    topic_wanted: AtomicBool,
    wanted: tokio::sync::Notify,
    markers: OnceLock<Arc<dyn MarkerWriter>>,
    cancel: OnceLock<CancellationToken>,
}

impl TxnCoordinator {
    pub(crate) fn new(
        config: TxnConfig,
        me: i32,
        metadata: Arc<MetadataView>,
        controller: Arc<ControllerClient>,
        lease: Arc<Lease>,
    ) -> Self {
        Self {
            config,
            metadata: metadata.clone(),
            controller,
            lease: lease.clone(),
            txns: Mutex::new(HashMap::new()),
            routes: Routes::new(
                TXN_TOPIC,
                config.state_partitions,
                me,
                metadata.clone(),
                lease.clone(),
            ),
            write_locks: (0..config.state_partitions.max(1))
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            completing: Mutex::new(HashSet::new()),
            completed: tokio::sync::Notify::new(),
            topic_wanted: AtomicBool::new(false),
            wanted: tokio::sync::Notify::new(),
            markers: OnceLock::new(),
            cancel: OnceLock::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, TxnMeta>> {
        self.txns.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn partition_of(&self, id: &str) -> i32 {
        self.routes.partition_of(id)
    }

    /// The broker coordinating `id` by the metadata (FindCoordinator's answer on any
    /// broker). The first ask creates the topic.
    pub(crate) fn coordinator_of(&self, id: &str) -> Result<i32, i16> {
        self.routes.leader_of(id).unwrap_or_else(|| {
            if !self.topic_wanted.swap(true, Ordering::SeqCst) {
                self.wanted.notify_one();
            }
            Err(code::COORDINATOR_NOT_AVAILABLE)
        })
    }

    /// The state partition of `id` and its leader epoch if this broker coordinates it.
    fn route(&self, id: &str) -> Result<(Arc<Partition>, i32), i16> {
        self.routes.route(id)
    }

    /// `id`'s state, if this broker coordinates it (None: unknown id).
    pub(crate) fn state_of(&self, id: &str) -> Result<Option<TxnMeta>, i16> {
        self.route(id)?;
        Ok(self.lock().get(id).cloned())
    }

    /// Every transactional id this broker coordinates, with its state.
    pub(crate) fn list(&self) -> Vec<(String, TxnMeta)> {
        self.lock()
            .iter()
            .map(|(id, m)| (id.clone(), m.clone()))
            .collect()
    }

    /// Computes and writes one transition of `id` under its partition's write lock; a
    /// Prepare state written starts the markers.
    async fn transition<T>(
        self: &Arc<Self>,
        id: &str,
        f: impl FnOnce(Option<&TxnMeta>) -> Result<(Put, T), i16>,
    ) -> Result<T, i16> {
        let p = self.partition_of(id);
        let _order = match self.write_locks.get(usize::try_from(p).unwrap_or(0)) {
            Some(l) => Some(l.lock().await),
            None => None,
        };
        let (part, leader_epoch) = self.route(id)?;
        let current = self.lock().get(id).cloned();
        let (put, answer) = f(current.as_ref())?;
        let meta = match put {
            Put::Nothing => return Ok(answer),
            Put::State(m) => Some(m),
            Put::Forget => None,
        };
        let record = store::record(id, meta.as_ref());
        if let Err(e) = statelog::write_records(
            &part,
            leader_epoch,
            &self.lease,
            vec![record],
            now_ms(),
            None,
        )
        .await
        {
            tracing::warn!(transactional_id = id, error = %e, "writing transaction state failed");
            return Err(if part.role().leader_epoch() == Some(leader_epoch) {
                code::COORDINATOR_NOT_AVAILABLE
            } else {
                statelog::NOT_COORDINATOR
            });
        }
        // Applied only while the partition is still the one loaded (not dropped meanwhile).
        if self.routes.is_loaded(&part) == Some(true) {
            let mut txns = self.lock();
            match &meta {
                Some(m) => txns.insert(id.to_owned(), m.clone()),
                None => txns.remove(id),
            };
        }
        if meta.as_ref().is_some_and(|m| m.markers.is_some()) {
            self.start_completion(id);
        }
        Ok(answer)
    }

    /// InitProducerId with a transactional id: the producer id and epoch to use, or why not.
    /// `new_id` is a fresh producer id when [`Self::needs_new_id`] said so.
    pub(crate) async fn init_producer_id(
        self: &Arc<Self>,
        id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
        new_id: Option<i64>,
    ) -> Result<(i64, i16), i16> {
        if timeout_ms <= 0 || timeout_ms > self.config.max_timeout_ms {
            return Err(code::INVALID_TRANSACTION_TIMEOUT);
        }
        let first = self.init_once(id, timeout_ms, expected, new_id).await;
        if first != Err(code::CONCURRENT_TRANSACTIONS) {
            return first;
        }
        // An open transaction is being aborted (by this request, or before it): answered
        // once that is done rather than have the producer retry after its backoff.
        self.await_completion(id).await;
        self.init_once(id, timeout_ms, expected, None).await
    }

    async fn init_once(
        self: &Arc<Self>,
        id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
        new_id: Option<i64>,
    ) -> Result<(i64, i16), i16> {
        let now = now_ms();
        self.transition(id, |m| {
            Ok(match machine::init(m, timeout_ms, expected, new_id, now)? {
                Init::Write(n) => {
                    let answer = Ok((n.producer_id, n.epoch));
                    (Put::State(n), answer)
                }
                Init::Current => {
                    let m = m.ok_or(code::INVALID_TXN_STATE)?;
                    (Put::Nothing, Ok((m.producer_id, m.epoch)))
                }
                Init::Abort(n) => (Put::State(n), Err(code::CONCURRENT_TRANSACTIONS)),
            })
        })
        .await?
    }

    /// Whether InitProducerId (or a transaction version 2 EndTxn) of `id` needs a fresh
    /// producer id, which the caller allocates first.
    pub(crate) fn needs_new_id(&self, id: &str) -> Result<bool, i16> {
        Ok(machine::needs_new_id(self.state_of(id)?.as_ref()))
    }

    /// AddPartitionsToTxn / AddOffsetsToTxn, and the implicit add of transaction version 2.
    pub(crate) async fn add_partitions(
        self: &Arc<Self>,
        id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, i32)],
    ) -> Result<(), i16> {
        let now = now_ms();
        self.transition(id, |m| {
            let m = m.ok_or(code::INVALID_PRODUCER_ID_MAPPING)?;
            Ok(
                match machine::add_partitions(m, producer_id, epoch, partitions, now)? {
                    Some(n) => (Put::State(n), ()),
                    None => (Put::Nothing, ()),
                },
            )
        })
        .await
    }

    /// KIP-890 part 1: may a partition leader take this producer's first transactional batch
    /// for `partition`?
    pub(crate) fn verify(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        partition: &(String, i32),
    ) -> Result<(), i16> {
        let m = self
            .state_of(id)?
            .ok_or(code::INVALID_PRODUCER_ID_MAPPING)?;
        machine::verify(&m, producer_id, epoch, partition)
    }

    /// EndTxn: the producer id and epoch to go on with.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn end_txn(
        self: &Arc<Self>,
        id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        v2: bool,
        new_id: Option<i64>,
    ) -> Result<(i64, i16), i16> {
        let now = now_ms();
        let answer = self
            .transition(id, |m| {
                let m = m.ok_or(code::INVALID_PRODUCER_ID_MAPPING)?;
                Ok(
                    match machine::end(m, producer_id, epoch, commit, v2, new_id, now)? {
                        End::Prepare(n) | End::Complete(n) => {
                            let answer = (n.producer_id, n.epoch);
                            (Put::State(n), answer)
                        }
                        End::Current => (Put::Nothing, (m.producer_id, m.epoch)),
                    },
                )
            })
            .await?;
        // The outcome is decided once the Prepare state is durable, and Kafka answers then;
        // but a producer whose next transaction starts before the markers are written is
        // told CONCURRENT_TRANSACTIONS and backs off (librdkafka for 100 ms), so the answer
        // waits a little for the markers.
        self.await_completion(id).await;
        Ok(answer)
    }

    /// Waits (at most [`COMPLETION_WAIT`]) until `id` has no transaction preparing.
    async fn await_completion(&self, id: &str) {
        let deadline = tokio::time::Instant::now() + COMPLETION_WAIT;
        loop {
            let completed = self.completed.notified();
            tokio::pin!(completed);
            completed.as_mut().enable();
            if self.lock().get(id).is_none_or(|m| m.markers.is_none()) {
                return;
            }
            if tokio::time::timeout_at(deadline, completed).await.is_err() {
                return;
            }
        }
    }

    /// Writes `id`'s markers in the background, unless that is under way already.
    fn start_completion(self: &Arc<Self>, id: &str) {
        let Some(cancel) = self.cancel.get().cloned() else {
            return;
        };
        if !self
            .completing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned())
        {
            return;
        }
        let this = self.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                () = this.complete(&id) => {}
            }
            this.completing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        });
    }

    /// Writes the markers of `id`'s prepared transaction until every partition has one, then
    /// its Complete state. Stops if this broker stops coordinating `id`.
    async fn complete(self: &Arc<Self>, id: &str) {
        let Some(writer) = self.markers.get().cloned() else {
            return;
        };
        let mut backoff = Duration::from_millis(50);
        let mut done: HashSet<(String, i32)> = HashSet::new();
        let prepared = loop {
            let Ok((_, coordinator_epoch)) = self.route(id) else {
                return;
            };
            let Some(m) = self.lock().get(id).cloned() else {
                return;
            };
            let Some((producer_id, producer_epoch)) = m.markers else {
                return;
            };
            let partitions: Vec<(String, i32)> = m
                .partitions
                .iter()
                .filter(|p| !done.contains(*p))
                .cloned()
                .collect();
            if partitions.is_empty() {
                break m;
            }
            let answers = writer
                .write(Markers {
                    producer_id,
                    producer_epoch,
                    commit: m.state == TxnState::PrepareCommit,
                    coordinator_epoch,
                    partitions,
                })
                .await;
            let image = self.metadata.image();
            for ((topic, index), error) in answers {
                let gone = image.topics.get(&topic).is_none_or(|t| {
                    usize::try_from(index).map_or(true, |i| i >= t.partitions.len())
                });
                // Written; or the partition has a newer epoch of the producer (a marker of
                // this transaction that was written before); or the topic is gone.
                if error == 0 || error == code::INVALID_PRODUCER_EPOCH || gone {
                    if error != 0 {
                        tracing::info!(
                            transactional_id = id,
                            topic,
                            partition = index,
                            error,
                            "no marker needed on this partition"
                        );
                    }
                    done.insert((topic, index));
                } else {
                    tracing::debug!(
                        transactional_id = id,
                        topic,
                        partition = index,
                        error,
                        "marker not written yet; retrying"
                    );
                }
            }
            if m.partitions.iter().all(|p| done.contains(p)) {
                break m;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_MARKER_BACKOFF);
        };
        let now = now_ms();
        let written = self
            .transition(id, |m| match m {
                // Still the transaction these markers end.
                Some(m) if m.markers == prepared.markers && m.state == prepared.state => {
                    Ok((Put::State(machine::complete(m, now)), ()))
                }
                _ => Ok((Put::Nothing, ())),
            })
            .await;
        if let Err(e) = written {
            // The Prepare state stays; whoever coordinates the id next finishes it.
            tracing::warn!(
                transactional_id = id,
                error = e,
                "completing the transaction failed"
            );
        }
        self.completed.notify_waiters();
    }

    /// Follows `roles` (loading and dropping state partitions as leadership moves), creates
    /// the topic when first asked for, and aborts timed-out transactions until cancelled.
    pub(crate) async fn run(
        self: Arc<Self>,
        mut roles: RoleEvents,
        markers: Arc<dyn MarkerWriter>,
        cancel: CancellationToken,
    ) {
        let _ = self.markers.set(markers);
        let _ = self.cancel.set(cancel.clone());
        // Asked for before a restart of this service: ask again.
        if self.topic_wanted.load(Ordering::SeqCst) {
            self.wanted.notify_one();
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let creating = CancellationToken::new();
        let _stop_creating = creating.clone().drop_guard();
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                changes = roles.recv() => match changes {
                    Some(changes) => self.follow(&changes).await,
                    None => break,
                },
                () = self.wanted.notified() => {
                    let this = self.clone();
                    let creating = creating.clone();
                    tokio::spawn(async move {
                        let topic = InternalTopic {
                            name: TXN_TOPIC,
                            partitions: this.config.state_partitions,
                            replication_factor: this.config.replication_factor,
                            expected_brokers: this.config.expected_brokers,
                            segment_bytes: this.config.segment_bytes,
                            tiered: this.config.tiered,
                        };
                        statelog::ensure_topic(&topic, &this.metadata, &this.controller, &creating)
                            .await;
                    });
                }
                _ = tick.tick() => self.tick().await,
            }
        }
    }

    async fn follow(self: &Arc<Self>, changes: &[RoleChange]) {
        for change in self.routes.leadership(changes) {
            match change {
                Leadership::Gained(part) => {
                    if let Err(e) = self.load(part).await {
                        tracing::error!(partition = part.index, error = %e,
                            "loading transactions failed; they stay unavailable");
                    }
                }
                Leadership::Lost(index) => self.unload(index),
            }
        }
    }

    /// Replays a state partition; prepared transactions found are completed.
    async fn load(self: &Arc<Self>, part: &Arc<Partition>) -> Result<(), crate::BrokerError> {
        let index = part.index;
        match self.routes.is_loaded(part) {
            Some(true) => return Ok(()),
            Some(false) => self.unload(index),
            None => {}
        }
        let replayed = statelog::replay_partition(part, store::load).await?;
        let prepared: Vec<String> = replayed
            .iter()
            .filter(|(_, m)| m.markers.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        let count = replayed.len();
        self.lock().extend(replayed);
        self.routes.set_loaded(part);
        tracing::info!(
            partition = index,
            transactional_ids = count,
            "transaction state partition loaded"
        );
        for id in prepared {
            self.start_completion(&id);
        }
        Ok(())
    }

    fn unload(&self, index: i32) {
        if !self.routes.unload(index) {
            return;
        }
        self.lock().retain(|id, _| self.partition_of(id) != index);
        tracing::info!(partition = index, "transaction state partition unloaded");
    }

    /// Aborts transactions past their timeout; forgets ids idle past the expiration;
    /// finishes prepared transactions whose completion stopped.
    async fn tick(self: &Arc<Self>) {
        let now = now_ms();
        let expiry = i64::try_from(self.config.id_expiration.as_millis()).unwrap_or(i64::MAX);
        let (timed_out, idle, prepared): (Vec<String>, Vec<String>, Vec<String>) = {
            let txns = self.lock();
            let timed_out = txns
                .iter()
                .filter(|(_, m)| machine::timed_out(m, now))
                .map(|(id, _)| id.clone())
                .collect();
            let idle = txns
                .iter()
                .filter(|(_, m)| idle_past(m, now, expiry))
                .map(|(id, _)| id.clone())
                .collect();
            let prepared = txns
                .iter()
                .filter(|(_, m)| m.markers.is_some())
                .map(|(id, _)| id.clone())
                .collect();
            (timed_out, idle, prepared)
        };
        // A completion that stopped with its transaction still prepared (the lease lapsed
        // while the controller was away, or the Complete state could not be written) while
        // this broker kept the partition: no role change will start it again, and the
        // producer is told CONCURRENT_TRANSACTIONS until it finishes. Started again here;
        // one already under way is left alone.
        for id in prepared {
            self.start_completion(&id);
        }
        for id in timed_out {
            let aborted = self
                .transition(&id, |m| match m {
                    Some(m) if machine::timed_out(m, now) => {
                        Ok((Put::State(machine::abort_timed_out(m, now)), true))
                    }
                    _ => Ok((Put::Nothing, false)),
                })
                .await;
            if aborted == Ok(true) {
                tracing::info!(transactional_id = %id, "transaction timed out; aborting it");
            }
        }
        for id in idle {
            let _ = self
                .transition(&id, |m| match m {
                    Some(m) if idle_past(m, now, expiry) => Ok((Put::Forget, ())),
                    _ => Ok((Put::Nothing, ())),
                })
                .await;
        }
    }
}

/// Whether `m` is a finished transactional id nobody has used for `expiry` ms.
fn idle_past(m: &TxnMeta, now: i64, expiry: i64) -> bool {
    matches!(
        m.state,
        TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
    ) && now.saturating_sub(m.update_ms) > expiry
}
