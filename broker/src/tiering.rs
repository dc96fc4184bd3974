//! Tiered storage in the broker: each hosted partition's view of its remote segments, and the
//! background task that uploads sealed segments, applies retention (whole log remotely, the
//! local tail on disk) and cleans up crash leftovers.
//!
//! Order of a pass for one partition, each step only after the previous one committed:
//! upload sealed segments → commit the manifest → publish it to readers → delete remote
//! segments outside `retention.*` → delete local segments the manifest covers that are
//! outside `local.retention.*`. A local segment is therefore deleted only once a committed
//! manifest names it and readers can find it remotely.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use object_store::ObjectStore;
use object_store::path::Path;
use strata_controller::model::TopicRecord;
use strata_storage::tier::manifest::{Manifest, PartitionObjects};
use strata_storage::tier::read::RemoteReader;
use strata_storage::tier::{TierError, retention, store, upload};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::state::{BrokerState, Partition};

/// How long start-up waits for the object store to answer the create-only check.
const PROBE_WAIT: Duration = Duration::from_secs(10);

/// The object store, where in it this cluster writes, and the remote read path.
pub(crate) struct Tiering {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    pub(crate) reader: RemoteReader,
}

impl std::fmt::Debug for Tiering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tiering")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A partition's view of its remote segments.
#[derive(Debug)]
pub(crate) struct RemoteView {
    pub(crate) objects: PartitionObjects,
    /// The newest committed manifest this broker knows; `None` until it has been read.
    manifest: RwLock<Option<Arc<Manifest>>>,
    /// Whether the manifest has been read and the local log made to continue from it. Until
    /// then appends wait: an empty log would start at offset 0 over data that exists
    /// remotely, and a log behind the object store is about to be reset to the remote end,
    /// which would delete what they appended.
    recovered: watch::Sender<bool>,
    /// Held by the one recovery running (background and tiering pass may both try).
    recovery: tokio::sync::Mutex<()>,
}

impl RemoteView {
    pub(crate) fn new(objects: PartitionObjects) -> Self {
        Self {
            objects,
            manifest: RwLock::new(None),
            recovered: watch::channel(true).0,
            recovery: tokio::sync::Mutex::new(()),
        }
    }

    pub(crate) fn manifest(&self) -> Option<Arc<Manifest>> {
        self.manifest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn publish(&self, manifest: Manifest) {
        *self.manifest.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(manifest));
    }

    /// Marks the view of a topic that is not tiered: nothing is remote, so an offset below
    /// the local log start is out of range rather than "not read yet".
    pub(crate) fn mark_local_only(&self) {
        self.publish(Manifest::default());
    }

    /// Marks the view as guarding its log until the manifest is read.
    pub(crate) fn await_recovery(&self) {
        self.recovered.send_replace(false);
    }

    /// Whether appends must wait for the manifest (see `recovered`).
    pub(crate) fn recovering(&self) -> bool {
        !*self.recovered.borrow()
    }

    /// Waits up to `wait` for the manifest to be read; whether it was.
    pub(crate) async fn recovered_within(&self, wait: Duration) -> bool {
        let mut rx = self.recovered.subscribe();
        tokio::time::timeout(wait, rx.wait_for(|done| *done))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Whether a topic's sealed segments go to the object store. Internal topics stay local:
/// their coordinators replay them from the local log.
pub(crate) fn remote_enabled(topic: &TopicRecord) -> bool {
    !topic.name.starts_with("__")
        && topic
            .configs
            .get("remote.storage.enable")
            .map(String::as_str)
            != Some("false")
}

impl Tiering {
    /// Opens the configured store (or uses `injected`, at the root) and the read cache, and
    /// checks the store answers (a listing of the prefix).
    pub(crate) async fn open(
        config: &BrokerConfig,
        injected: Option<Arc<dyn ObjectStore>>,
    ) -> Result<Self, BrokerError> {
        let (store, prefix) = match injected {
            Some(store) => (store, Path::default()),
            None => {
                let sc = config.store_config()?;
                if config.object_store.create_bucket {
                    store::create_bucket(&sc).await?;
                }
                let (store, prefix) = store::open(&sc)?;
                if let Some(Err(e)) = store.list(Some(&prefix)).next().await {
                    let hint = if config.object_store.create_bucket {
                        ""
                    } else {
                        " (if the bucket does not exist, create it or set \
                         object_store.create_bucket = true)"
                    };
                    return Err(BrokerError::Tier(TierError::Unreachable {
                        url: sc.url,
                        reason: format!("listing {prefix}: {e}{hint}"),
                    }));
                }
                (store, prefix)
            }
        };
        if config.object_store.verify_create_only {
            // A store that does not answer now is not refused for it (the listing above
            // already refuses a configured store that is down); one that answers wrongly is.
            let wait =
                Duration::from_millis(config.object_store.operation_timeout_ms).min(PROBE_WAIT);
            let probe = store::check_create_only(store.as_ref(), &prefix, &config.object_store.url);
            match tokio::time::timeout(wait, probe).await {
                Ok(Ok(())) => {}
                Ok(Err(e @ TierError::Unreachable { .. })) => return Err(e.into()),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "could not check that the object store honours create-only puts")
                }
                Err(_) => tracing::warn!(
                    ?wait,
                    "the object store did not answer the create-only check; starting without it"
                ),
            }
        }
        let reader = RemoteReader::open(config.cache_config()).await?;
        Ok(Self {
            store,
            prefix,
            reader,
        })
    }

    pub(crate) fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Where in the store this cluster writes.
    pub(crate) fn prefix(&self) -> &Path {
        &self.prefix
    }

    pub(crate) fn objects(&self, topic_id: Uuid, partition: i32) -> PartitionObjects {
        PartitionObjects::new(self.store.clone(), &self.prefix, topic_id, partition)
    }

    /// Every interval, runs a pass over the partitions this broker leads, a bounded number
    /// at once; a partition whose step failed waits out a doubling backoff.
    pub(crate) async fn run(self: Arc<Self>, state: Arc<BrokerState>, cancel: CancellationToken) {
        let o = &state.config.object_store;
        let every = Duration::from_millis(o.upload_interval_ms);
        let timeout = Duration::from_millis(o.operation_timeout_ms);
        let max_backoff = Duration::from_millis(o.max_backoff_ms);
        let parallel = o.max_concurrent_uploads;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut health: HashMap<(Uuid, i32), Health> = HashMap::new();
        let mut catalog = crate::catalog::CatalogSync::default();
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let image = state.image();
            if tokio::time::timeout(timeout, catalog.pass(&self, &image, state.id))
                .await
                .is_err()
            {
                tracing::warn!(?timeout, "catalog pass timed out; retried next pass");
            }
            let now = Instant::now();
            let mut due = Vec::new();
            for topic in image.topics.values() {
                for (i, meta) in topic.partitions.iter().enumerate() {
                    let key = (topic.id, i as i32);
                    if meta.leader != Some(state.id)
                        || health.get(&key).is_some_and(|h| h.retry_at > now)
                    {
                        continue;
                    }
                    if let Some(part) = state.partition(topic.id, i as i32) {
                        let orphans_due = health.get(&key).is_none_or(|h| h.orphans_due <= now);
                        due.push((
                            topic.clone(),
                            i as i32,
                            meta.leader_epoch,
                            part,
                            orphans_due,
                        ));
                    }
                }
            }
            let results: Vec<_> = futures::stream::iter(due)
                .map(|(topic, index, epoch, part, orphans_due)| {
                    let state = state.clone();
                    let this = self.clone();
                    async move {
                        let step = this.pass(&state, &topic, &part, epoch, orphans_due);
                        let r = match tokio::time::timeout(timeout, step).await {
                            Ok(r) => r,
                            Err(_) => Err(format!("timed out after {timeout:?}")),
                        };
                        (topic, index, orphans_due, r)
                    }
                })
                .buffer_unordered(parallel)
                .take_until(cancel.cancelled())
                .collect()
                .await;
            let now = Instant::now();
            for (topic, index, orphans_due, r) in results {
                let h = health.entry((topic.id, index)).or_insert(Health {
                    failures: 0,
                    retry_at: now,
                    orphans_due: now,
                });
                match r {
                    Ok(()) => {
                        h.failures = 0;
                        if orphans_due {
                            h.orphans_due = now
                                + Duration::from_millis(state.config.object_store.orphan_grace_ms);
                        }
                    }
                    Err(error) => {
                        h.failures += 1;
                        let backoff =
                            (every * 2u32.saturating_pow(h.failures.min(16))).min(max_backoff);
                        h.retry_at = now + backoff;
                        tracing::warn!(
                            topic = %topic.name, partition = index, %error,
                            failures = h.failures, retry_in = ?backoff,
                            "tiering step failed; local data is kept until it succeeds"
                        );
                    }
                }
            }
        }
    }

    /// One partition's pass; see the module documentation for the order.
    async fn pass(
        &self,
        state: &BrokerState,
        topic: &TopicRecord,
        part: &Arc<Partition>,
        epoch: i32,
        orphans_due: bool,
    ) -> Result<(), String> {
        let config = part.log.config();
        let log = part.log.clone();
        if !remote_enabled(topic) {
            return blocking(move || log.apply_retention().map(drop)).await;
        }
        let remote = &part.remote;
        if remote.recovering() {
            state.recover(part).await.map_err(|e| e.to_string())?;
        }
        let objects = &remote.objects;
        let fenced = |e: TierError| match e {
            TierError::Fenced { ours, current } => {
                format!("a newer leader (epoch {current}) owns the manifest; ours is {ours}")
            }
            e => e.to_string(),
        };
        let uploaded = upload::upload_sealed(&log, objects, epoch)
            .await
            .map_err(fenced)?;
        remote.publish(uploaded.clone());
        let local_beyond: u64 = log
            .segments()
            .iter()
            .filter(|s| s.next_offset > uploaded.end_offset())
            .map(|s| s.size_bytes)
            .sum();
        let (manifest, _) = retention::apply_remote_retention(
            objects,
            epoch,
            crate::group::now_ms(),
            config.retention_ms,
            config.retention_bytes,
            local_beyond,
            |m| remote.publish(m.clone()),
        )
        .await
        .map_err(fenced)?;
        let (local_ms, local_bytes) = local_retention(topic, &config);
        let covered = manifest.end_offset();
        blocking(move || {
            // Below the whole log's start nothing is kept locally either.
            let below_start =
                log.evict_uploaded(manifest.log_start_offset, Some(Duration::ZERO), None)?;
            let evicted = log.evict_uploaded(covered, local_ms, local_bytes)?;
            if !below_start.is_empty() || !evicted.is_empty() {
                tracing::debug!(
                    segments = below_start.len() + evicted.len(),
                    local_start = log.log_start_offset(),
                    "uploaded segments evicted from local disk"
                );
            }
            Ok(())
        })
        .await?;
        if orphans_due {
            let grace = Duration::from_millis(state.config.object_store.orphan_grace_ms);
            let current = remote.manifest().unwrap_or_default();
            retention::clean_orphans(objects, &current, grace)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

struct Health {
    failures: u32,
    retry_at: Instant,
    orphans_due: Instant,
}

/// The local tail's retention: Kafka's `local.retention.ms/bytes`, where -2 means "as
/// `retention.*`" and a local limit never exceeds the whole log's.
fn local_retention(
    topic: &TopicRecord,
    config: &strata_storage::LogConfig,
) -> (Option<Duration>, Option<u64>) {
    let get = |k: &str| {
        topic
            .configs
            .get(k)
            .and_then(|v| v.trim().parse::<i64>().ok())
            .unwrap_or(-2)
    };
    let ms = match get("local.retention.ms") {
        -2 => config.retention_ms,
        v if v < 0 => None,
        v => Some(Duration::from_millis(v as u64)),
    };
    let bytes = match get("local.retention.bytes") {
        -2 => config.retention_bytes,
        v if v < 0 => None,
        v => Some(v as u64),
    };
    (
        tighter(ms, config.retention_ms),
        tighter(bytes, config.retention_bytes),
    )
}

/// The smaller of two optional limits (`None` = unlimited).
fn tighter<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn blocking(
    f: impl FnOnce() -> Result<(), strata_storage::StorageError> + Send + 'static,
) -> Result<(), String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// How many partitions read their manifests at once.
pub(crate) const RECOVERY_CONCURRENCY: usize = 16;

impl BrokerState {
    /// Recovers newly opened tiered partitions from their manifests, a bounded number at
    /// once (see [`BrokerState::recover_logged`]).
    pub(crate) async fn recover_all(&self, parts: impl IntoIterator<Item = Arc<Partition>>) {
        futures::stream::iter(parts)
            .for_each_concurrent(RECOVERY_CONCURRENCY, |part| self.recover_logged(part))
            .await;
    }

    /// Recovers one partition within the store's operation timeout. One that fails keeps
    /// refusing appends; the tiering pass retries it.
    pub(crate) async fn recover_logged(&self, part: Arc<Partition>) {
        let timeout = Duration::from_millis(self.config.object_store.operation_timeout_ms);
        let error = match tokio::time::timeout(timeout, self.recover(&part)).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("timed out after {timeout:?}"),
        };
        tracing::warn!(
            topic_id = %part.topic_id, partition = part.remote.objects.partition(), %error,
            "reading the partition's manifest failed; appends wait while the tiering pass retries"
        );
    }

    /// Reads a partition's manifest and makes the local log continue from the remote end: a
    /// log that is empty (a wiped disk) or behind the object store is restarted at the
    /// manifest's end, and the leader-epoch history is seeded from the remote segments.
    pub(crate) async fn recover(&self, part: &Partition) -> Result<(), BrokerError> {
        // One recovery at a time, and none once appends are allowed: a reset racing them
        // would delete what they appended.
        let _one = part.remote.recovery.lock().await;
        if !part.remote.recovering() {
            return Ok(());
        }
        let manifest = part.remote.objects.latest().await?.unwrap_or_default();
        let end = manifest.end_offset();
        let log = &part.log;
        if log.log_end_offset() < end {
            tracing::info!(
                topic_id = %part.topic_id, partition = part.remote.objects.partition(),
                local_end = log.log_end_offset(), remote_end = end,
                "local log is behind the object store; continuing from the remote end"
            );
            log.reset_to(end)?;
            let mut epochs = part.epochs.lock().unwrap_or_else(|p| p.into_inner());
            for s in &manifest.segments {
                epochs
                    .assign(s.leader_epoch, s.base_offset)
                    .map_err(|source| BrokerError::Io {
                        op: "recording leader epochs",
                        path: log.dir().to_owned(),
                        source,
                    })?;
            }
            part.end.send_replace(end);
        }
        part.remote.publish(manifest);
        part.remote.recovered.send_replace(true);
        Ok(())
    }
}
