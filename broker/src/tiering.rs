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
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use object_store::ObjectStore;
use object_store::path::Path;
use strata_storage::tier::background::{self, Background};
use strata_storage::tier::manifest::PartitionObjects;
use strata_storage::tier::read::RemoteReader;
use strata_storage::tier::{TierError, retention, store, upload};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use strata_storage::tier::metered::MeteredStore;

use crate::config::{BrokerConfig, ObjectStoreSettings};
use crate::error::BrokerError;
use crate::metrics::Metrics;
use crate::partition::Partition;
use crate::partition::registry::Partitions;
use crate::partition::role::Role;

/// How long start-up waits for the object store to answer the create-only check.
const PROBE_WAIT: Duration = Duration::from_secs(10);

/// The object store, where in it this cluster writes, and the remote read path.
pub(crate) struct Tiering {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    pub(crate) reader: RemoteReader,
    metrics: Arc<Metrics>,
    /// Where the passes, GETs and the store's HTTP connections run: threads of a lower CPU
    /// priority (`object_store.background_nice`).
    background: Background,
}

impl std::fmt::Debug for Tiering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tiering")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Tiering {
    /// Opens the configured store (or uses `injected`, at the root) and the read cache, and
    /// checks the store answers (a listing of the prefix). Requests to the store are counted
    /// in `metrics`.
    pub(crate) async fn open(
        config: &BrokerConfig,
        injected: Option<Arc<dyn ObjectStore>>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, BrokerError> {
        let o = &config.object_store;
        let background = Background::start(o.background_threads, o.background_nice)?;
        tracing::info!(
            threads = o.background_threads,
            nice = background.nice(),
            "object-store work runs on its own runtime"
        );
        let (store, prefix) = match injected {
            Some(store) => (store, Path::default()),
            None => {
                let sc = config.store_config()?;
                if config.object_store.create_bucket {
                    store::create_bucket(&sc).await?;
                }
                let (store, prefix) = store::open(&sc, Some(background.handle()))?;
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
        let reader = RemoteReader::open(config.cache_config())
            .await?
            .with_io(background.handle().clone());
        let store: Arc<dyn ObjectStore> = Arc::new(MeteredStore::new(store, metrics.store.clone()));
        Ok(Self {
            store,
            prefix,
            reader,
            metrics,
            background,
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

    /// Every interval, runs a pass over the hosted partitions, a bounded number at once: the
    /// leaders' upload and retention, the followers' local retention; a partition whose step
    /// failed waits out a doubling backoff. A partition whose log, high watermark, role,
    /// manifest and settings are as its last pass found them is passed over until `recheck` (Kafka's
    /// `log.retention.check.interval.ms`) has gone by: only time moved, and time-based
    /// retention is what that interval is for. So an idle partition costs no object-store
    /// request and no blocking task every interval (a pass reads the manifest twice: four
    /// requests), which for thousands of partitions was thousands of requests a second.
    pub(crate) async fn run(
        self: Arc<Self>,
        partitions: Arc<Partitions>,
        (settings, recheck): (ObjectStoreSettings, Duration),
        cancel: CancellationToken,
    ) {
        let every = Duration::from_millis(settings.upload_interval_ms);
        let timeout = Duration::from_millis(settings.operation_timeout_ms);
        let max_backoff = Duration::from_millis(settings.max_backoff_ms);
        let grace = Duration::from_millis(settings.orphan_grace_ms);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut health: HashMap<(Uuid, i32), Health> = HashMap::new();
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            let due: Vec<_> = partitions
                .hosted()
                .into_iter()
                .filter_map(|part| {
                    // Followers keep their local retention too (`None`: not leading).
                    let epoch = match part.role() {
                        Role::Leader { epoch } => Some(epoch),
                        Role::Follower { .. } => None,
                        Role::Offline => return None,
                    };
                    let h = health.get(&(part.topic_id, part.index));
                    if h.is_some_and(|h| h.retry_at > now) {
                        return None;
                    }
                    let orphans_due = h.is_none_or(|h| h.orphans_due <= now);
                    // Taken before the pass: a change while it runs brings another one.
                    let state = State::of(&part);
                    let unchanged = h
                        .and_then(|h| h.passed.as_ref())
                        .is_some_and(|(at, seen)| *seen == state && now < *at + recheck);
                    if unchanged && !orphans_due {
                        return None;
                    }
                    Some((part, epoch, orphans_due, state))
                })
                .collect();
            let results: Vec<_> = futures::stream::iter(due)
                .map(|(part, epoch, orphans_due, state)| {
                    let (this, p) = (self.clone(), part.clone());
                    let step =
                        async move { this.pass(&p, epoch, orphans_due.then_some(grace)).await };
                    let step = background::run_on(self.background.handle(), step);
                    async move {
                        let r = match tokio::time::timeout(timeout, step).await {
                            Ok(Ok(r)) => r,
                            Ok(Err(e)) => Err(e.to_string()),
                            Err(_) => Err(format!("timed out after {timeout:?}")),
                        };
                        (part, orphans_due, state, r)
                    }
                })
                .buffer_unordered(settings.max_concurrent_uploads)
                .take_until(cancel.cancelled())
                .collect()
                .await;
            let now = Instant::now();
            for (part, orphans_due, state, r) in results {
                let h = health.entry((part.topic_id, part.index)).or_insert(Health {
                    failures: 0,
                    retry_at: now,
                    orphans_due: now,
                    passed: None,
                });
                match r {
                    Ok(()) => {
                        h.failures = 0;
                        h.passed = Some((now, state));
                        if orphans_due {
                            h.orphans_due = now + grace;
                        }
                    }
                    Err(error) => {
                        h.failures += 1;
                        h.passed = None;
                        let backoff =
                            (every * 2u32.saturating_pow(h.failures.min(16))).min(max_backoff);
                        h.retry_at = now + backoff;
                        tracing::warn!(
                            topic = %part.topic, partition = part.index, %error,
                            failures = h.failures, retry_in = ?backoff,
                            "tiering step failed; local data is kept until it succeeds"
                        );
                    }
                }
            }
            health.retain(|(id, index), _| partitions.get(*id, *index).is_some());
        }
    }

    /// One partition's pass; see the module documentation for the order. With
    /// `orphans_after`, objects no manifest names that are older than it are deleted too.
    async fn pass(
        &self,
        part: &Arc<Partition>,
        epoch: Option<i32>,
        orphans_after: Option<Duration>,
    ) -> Result<(), String> {
        let settings = part.settings();
        let log = part.log.clone();
        if !settings.remote {
            return blocking(move || log.apply_retention().map(drop)).await;
        }
        let remote = &part.remote;
        if part.recovering() {
            part.recover().await.map_err(|e| e.to_string())?;
        }
        let Some(epoch) = epoch else {
            // A follower uploads nothing (its leader does) but keeps only its local tail:
            // what the leader's manifest covers goes by `local.retention.*`.
            let manifest = remote
                .objects
                .latest()
                .await
                .map_err(|e| e.to_string())?
                .unwrap_or_default();
            remote.publish(manifest.clone());
            part.producers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .forget_uploaded_below(manifest.end_offset());
            let (local_ms, local_bytes) =
                (settings.local_retention_ms, settings.local_retention_bytes);
            return blocking(move || {
                log.evict_uploaded(manifest.log_start_offset, Some(Duration::ZERO), None)?;
                log.evict_uploaded(manifest.end_offset(), local_ms, local_bytes)
                    .map(drop)
            })
            .await;
        };
        let objects = &remote.objects;
        let fenced = |e: TierError| match e {
            TierError::Fenced { ours, current } => {
                self.metrics.fenced.inc();
                format!("a newer leader (epoch {current}) owns the manifest; ours is {ours}")
            }
            e => e.to_string(),
        };
        let before = remote.manifest().unwrap_or_default();
        let replicated = *part.high_watermark.borrow();
        // Each segment records the transactions open at its end and the idempotent
        // producers' state there, for replicas that start there (see `Partition::recover`).
        let open_at = |end| {
            let producers = part.producers.lock().unwrap_or_else(|p| p.into_inner());
            upload::ProducersAt {
                open_txns: producers.open_at(end),
                snapshot: producers.snapshot_for_segment_ending(end),
            }
        };
        let uploaded = {
            let _uploads = remote.uploads.lock().await;
            upload::upload_sealed_below(&log, objects, epoch, replicated, &open_at).await
        }
        .map_err(fenced)?;
        let new: Vec<_> = uploaded
            .segments
            .iter()
            .filter(|s| s.base_offset >= before.end_offset())
            .collect();
        self.metrics.uploaded_segments.inc_by(new.len() as u64);
        self.metrics
            .uploaded_bytes
            .inc_by(new.iter().map(|s| s.size_bytes).sum());
        part.producers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .forget_uploaded_below(uploaded.end_offset());
        remote.publish(uploaded.clone());
        let local_beyond: u64 = log
            .segments()
            .iter()
            .filter(|s| s.next_offset > uploaded.end_offset())
            .map(|s| s.size_bytes)
            .sum();
        let config = &settings.log;
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
        self.metrics
            .manifest_commits
            .inc_by(manifest.version.saturating_sub(before.version));
        let (local_ms, local_bytes) = (settings.local_retention_ms, settings.local_retention_bytes);
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
        if let Some(grace) = orphans_after {
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
    /// When the last pass succeeded, and the partition as that pass found it.
    passed: Option<(Instant, State)>,
}

/// What a pass depends on besides time: a new segment sealed, made durable or replicated
/// past (uploads take only durable, replicated segments), the log start moved, leadership
/// changed, another manifest published, a recovery pending or the topic's settings changed.
#[derive(Debug, PartialEq)]
struct State {
    active_base: u64,
    durable: u64,
    log_start: u64,
    high_watermark: u64,
    role: Role,
    manifest: Option<u64>,
    recovering: bool,
    settings: Arc<crate::topic::TopicSettings>,
}

impl State {
    fn of(part: &Partition) -> Self {
        Self {
            active_base: part.log.active_base_offset(),
            durable: part.log.durable_offset(),
            log_start: part.log.log_start_offset(),
            high_watermark: *part.high_watermark.borrow(),
            role: part.role(),
            manifest: part.remote.manifest().map(|m| m.version),
            recovering: part.recovering(),
            settings: part.settings(),
        }
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
