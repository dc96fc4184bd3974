//! The partitions this broker hosts: opened and closed as metadata arrives, resolved for
//! every API, and their role changes published in order.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use object_store::ObjectStore;
use object_store::path::Path;
use strata_controller::model::{MetadataImage, PartitionRecord, TopicRecord};
use strata_storage::tier::manifest::PartitionObjects;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::open::remove_dir;
use super::role::{Change, Role, RoleChange};
use super::{Assignment, Partition};
use crate::topic::TopicSettings;

/// Role changes in the order they happened, as a subscriber receives them.
pub(crate) type RoleEvents = mpsc::UnboundedReceiver<Arc<[RoleChange]>>;

/// Every partition replica this broker hosts.
#[derive(Debug)]
pub(crate) struct Partitions {
    me: i32,
    log_dir: PathBuf,
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    map: RwLock<HashMap<(Uuid, i32), Arc<Partition>>>,
    /// Partitions this broker opens at most (`budget`); `None`: no bound.
    limit: Option<usize>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<Arc<[RoleChange]>>>>,
}

impl Partitions {
    /// Partitions of broker `me`, their logs under `log_dir`, their remote segments in
    /// `store` under `prefix`.
    pub(crate) fn new(
        me: i32,
        log_dir: PathBuf,
        store: Arc<dyn ObjectStore>,
        prefix: Path,
    ) -> Self {
        Self {
            me,
            log_dir,
            store,
            prefix,
            map: RwLock::new(HashMap::new()),
            limit: None,
            subscribers: Mutex::new(Vec::new()),
        }
    }

    /// Opens no more than `limit` partitions: one assigned past it stays offline (logged),
    /// rather than taking descriptors the broker needs to run at all.
    pub(crate) fn with_limit(self, limit: Option<usize>) -> Self {
        Self { limit, ..self }
    }

    /// The hosted partition, if any.
    pub(crate) fn get(&self, topic_id: Uuid, index: i32) -> Option<Arc<Partition>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(topic_id, index))
            .cloned()
    }

    /// Every hosted partition.
    pub(crate) fn hosted(&self) -> Vec<Arc<Partition>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The hosted partition `index` of `topic` and its metadata, when this broker leads it
    /// and the client's `current_leader_epoch` (-1: not given) is the current one; otherwise
    /// the Kafka error a client acts on. The one leadership check of every partition API.
    pub(crate) fn led<'t>(
        &self,
        topic: &'t TopicRecord,
        index: i32,
        current_leader_epoch: i32,
    ) -> Result<(Arc<Partition>, &'t PartitionRecord), ResponseError> {
        self.copy(topic, index, current_leader_epoch, true)
    }

    /// Like [`Partitions::led`], for a partition this broker leads or follows: a consumer
    /// that reads from the closest replica (KIP-392) is served by a follower too.
    pub(crate) fn replica<'t>(
        &self,
        topic: &'t TopicRecord,
        index: i32,
        current_leader_epoch: i32,
    ) -> Result<(Arc<Partition>, &'t PartitionRecord), ResponseError> {
        self.copy(topic, index, current_leader_epoch, false)
    }

    fn copy<'t>(
        &self,
        topic: &'t TopicRecord,
        index: i32,
        current_leader_epoch: i32,
        leading: bool,
    ) -> Result<(Arc<Partition>, &'t PartitionRecord), ResponseError> {
        let meta = usize::try_from(index)
            .ok()
            .and_then(|i| topic.partitions.get(i))
            .ok_or(ResponseError::UnknownTopicOrPartition)?;
        let holds = if leading {
            meta.leader == Some(self.me)
        } else {
            meta.leader.is_some() && meta.replicas.contains(&self.me)
        };
        if !holds {
            return Err(ResponseError::NotLeaderOrFollower);
        }
        // A client ahead of this broker's metadata retries; one behind refreshes its own.
        if current_leader_epoch > meta.leader_epoch {
            return Err(ResponseError::UnknownLeaderEpoch);
        }
        if current_leader_epoch >= 0 && current_leader_epoch < meta.leader_epoch {
            return Err(ResponseError::FencedLeaderEpoch);
        }
        let part = self
            .get(topic.id, index)
            .ok_or(ResponseError::NotLeaderOrFollower)?;
        Ok((part, meta))
    }

    /// Role changes from now on, starting with one per hosted partition that takes a new
    /// subscriber from nothing to its current role.
    pub(crate) fn subscribe(&self) -> RoleEvents {
        let (tx, rx) = mpsc::unbounded_channel();
        // Under the map's lock, so no change is published between the snapshot and joining.
        let map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let now: Vec<RoleChange> = map
            .values()
            .map(|p| RoleChange {
                partition: p.clone(),
                change: Change::to(p.role(), false),
            })
            .collect();
        if !now.is_empty() {
            let _ = tx.send(now.into());
        }
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        rx
    }

    /// Opens, closes and re-roles partitions to match `image`, and publishes what changed.
    /// A partition that cannot be opened (a disk error, say) is logged and left out, so it
    /// never keeps the rest of the image from being applied; the next image tries it again.
    /// Blocking (it opens logs): run it off the async threads.
    pub(crate) fn apply(&self, image: &MetadataImage) -> Vec<RoleChange> {
        let mut changes = Vec::new();
        let by_id: HashMap<Uuid, &TopicRecord> = image.topics.values().map(|t| (t.id, t)).collect();
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        // Topics that are gone (or re-created under a new id) and replicas moved away.
        let stopped: Vec<((Uuid, i32), bool)> = map
            .keys()
            .filter_map(|&(id, index)| {
                let Some(topic) = by_id.get(&id) else {
                    return Some(((id, index), true));
                };
                let assigned = usize::try_from(index)
                    .ok()
                    .and_then(|i| topic.partitions.get(i))
                    .and_then(|meta| Role::assigned(meta, self.me));
                assigned.is_none().then_some(((id, index), false))
            })
            .collect();
        for (key, deleted) in stopped {
            let Some(p) = map.remove(&key) else { continue };
            p.set_role(Role::Offline);
            // A deleted topic's partition, or a replica reassigned away: the local copy goes
            // (for a move, the other replicas and the object store hold the data; remote
            // data is only ever removed with its topic, by the catalog's cleanup).
            if let Err(e) = remove_dir(p.log.dir()) {
                tracing::error!(error = %e, deleted, "removing a stopped partition's copy failed");
            }
            changes.push(RoleChange {
                partition: p,
                change: Change::Stop { deleted },
            });
        }
        let mut over_limit = 0usize;
        let mut to_open: Vec<(&TopicRecord, i32, Role, Assignment)> = Vec::new();
        // The broker's own topics first: past the limit, groups and transactions still work.
        let (internal, others): (Vec<&TopicRecord>, Vec<&TopicRecord>) = image
            .topics
            .values()
            .partition(|t| crate::topic::is_internal(&t.name));
        for topic in internal.into_iter().chain(others) {
            let mut settings = None;
            for (i, meta) in topic.partitions.iter().enumerate() {
                let index = i as i32;
                let Some(role) = Role::assigned(meta, self.me) else {
                    continue;
                };
                let settings = settings.get_or_insert_with(|| TopicSettings::of(topic));
                let assignment = Assignment {
                    replicas: meta.replicas.clone(),
                    isr: meta.isr.clone(),
                };
                if let Some(existing) = map.get(&(topic.id, index)) {
                    existing.set_settings(settings.clone());
                    if existing.role() != role {
                        // Elected from outside the ISR: its log may be behind the object
                        // store, which it then continues from, before it takes appends.
                        if meta.unclean && role.leader_epoch().is_some() && settings.remote {
                            existing.remote.await_recovery();
                        }
                        existing.set_role(role);
                        changes.push(RoleChange {
                            partition: existing.clone(),
                            change: Change::to(role, false),
                        });
                    }
                    if existing.assignment() != assignment {
                        existing.set_assignment(assignment);
                    }
                    continue;
                }
                if self
                    .limit
                    .is_some_and(|limit| map.len() + to_open.len() >= limit)
                {
                    over_limit += 1;
                    continue;
                }
                to_open.push((topic, index, role, assignment));
            }
        }
        // Opening is mostly waiting on the disk (recovering an active segment after a crash,
        // syncing what it kept): thousands of partitions open on several threads at once.
        let opened = on_threads(&to_open, |&(topic, index, role, ref assignment)| {
            let objects = PartitionObjects::new(self.store.clone(), &self.prefix, topic.id, index);
            Partition::open(
                &self.log_dir,
                topic,
                index,
                self.me,
                role,
                assignment.clone(),
                objects,
            )
        });
        for ((topic, index, role, _), opened) in to_open.iter().zip(opened) {
            match opened {
                Ok(part) => {
                    // A leader alone in the ISR is replicated to its log end.
                    part.advance_high_watermark();
                    map.insert((topic.id, *index), part.clone());
                    changes.push(RoleChange {
                        partition: part,
                        change: Change::to(*role, false),
                    });
                }
                Err(e) => tracing::error!(topic = %topic.name, partition = index, error = %e,
                    "opening the partition failed; it stays offline"),
            }
        }
        if over_limit > 0 {
            tracing::error!(
                not_opened = over_limit,
                limit = self.limit,
                "partitions assigned to this broker stay offline: it already hosts as many as \
                 topics.max_partitions_per_broker allows (derived from `ulimit -n` and memory \
                 when 0); raise the limits and restart, or move them to other brokers"
            );
        }
        if !changes.is_empty() {
            let batch: Arc<[RoleChange]> = changes.clone().into();
            // Still under the map's lock, so subscribers see changes in the order made.
            self.subscribers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|tx| tx.send(batch.clone()).is_ok());
        }
        changes
    }

    /// Waits up to `wait` for every hosted partition to finish recovering; whether they did.
    pub(crate) async fn recovered_within(&self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        for p in self.hosted() {
            let left = deadline.saturating_duration_since(Instant::now());
            if !p.remote.recovered_within(left).await {
                return false;
            }
        }
        true
    }

    /// Flushes every hosted log and saves its producers (graceful shutdown), several at
    /// once.
    pub(crate) fn flush_all(&self) {
        on_threads(&self.hosted(), |p| {
            if let Err(e) = p.log.flush() {
                tracing::error!(dir = %p.log.dir().display(), error = %e, "flush at shutdown failed");
                return;
            }
            p.save_producers(Duration::ZERO, true);
            p.save_high_watermark();
        });
    }
}

/// Partitions opened (or flushed) at once when many are: start-up, a large CreateTopics,
/// shutdown. The work is mostly waiting on the disk.
const DISK_THREADS: usize = 8;

/// `f` applied to every item of `items`, on up to [`DISK_THREADS`] threads; results in the
/// order of `items`.
fn on_threads<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = DISK_THREADS.min(items.len());
    if threads <= 1 {
        return items.iter().map(&f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    // The threads see the runtime the caller runs beside, as a blocking task would.
    let runtime = tokio::runtime::Handle::try_current().ok();
    let mut results: Vec<(usize, R)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let _entered = runtime.as_ref().map(tokio::runtime::Handle::enter);
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        done.push((i, f(item)));
                    }
                    done
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}
