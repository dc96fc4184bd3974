//! The log cleaner: compacts the hosted partitions of compacted topics (Kafka's
//! `LogCleaner`). The rules are the storage crate's (`strata_storage::compact`); this decides
//! when and how far.
//!
//! Every `cleaner.backoff_ms` a pass looks at each hosted replica (leader or follower: as in
//! Kafka, every replica cleans its own copy; offsets are kept, so copies stay
//! interchangeable) of a topic whose `cleanup.policy` holds `compact`, and cleans the
//! dirtiest first, `cleaner.threads` at once. A partition is cleaned up to the first of:
//! - the last stable offset (no open transaction is cleaned, and nothing above the high
//!   watermark, which a new leader could cut);
//! - the newest producer snapshot (a restart rebuilds producer state from the snapshot and
//!   the batches after it, which must be whole);
//! - the first segment with a record younger than `min.compaction.lag.ms`;
//! - the active segment (only sealed segments are rewritten).
//!
//! It is due when the dirty part is at least `min.cleanable.dirty.ratio` of that, when its
//! oldest dirty record is older than `max.compaction.lag.ms`, or when a tombstone or marker
//! the last pass kept has outlived `delete.retention.ms` (Kafka's KIP-534). The key maps share
//! `cleaner.dedupe_buffer_bytes`; reads and writes together are held to
//! `cleaner.io_max_bytes_per_second`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::collections::HashMap;

use strata_storage::compact::{Aborted, FilterStats, OffsetMap};
use strata_storage::tier::compact::{RemotePass, compact_remote, map_remote};
use strata_storage::tier::manifest::Manifest;
use tokio_util::sync::CancellationToken;

use crate::config::CleanerSettings;
use crate::partition::Partition;
use crate::partition::registry::Partitions;
use crate::supervisor::Outcome;
use crate::tiering::Tiering;
use crate::topic::Compaction;
use uuid::Uuid;

/// The cleaner: what it is allowed, and the partitions it looks at.
#[derive(Debug)]
pub(crate) struct Cleaner {
    partitions: Arc<Partitions>,
    tiering: Arc<Tiering>,
    settings: CleanerSettings,
    limiter: RateLimiter,
    status: Mutex<HashMap<(Uuid, i32), CleanStatus>>,
    /// Fired by [`Self::stop`]: passes take no further partition and give up their
    /// object-store reads and writes.
    stopping: CancellationToken,
    /// Held by the pass running, on its blocking thread (cancelling the periodic step does
    /// not end it).
    running: Arc<tokio::sync::Mutex<()>>,
}

/// What the cleaner last knew of a partition, for operators (DescribeLogDirs).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct CleanStatus {
    /// The dirty share of the cleanable log at the last check.
    pub(crate) dirty_ratio: f64,
    /// When a pass last completed here (Unix ms).
    pub(crate) last_clean_ms: Option<i64>,
}

/// One partition's next pass.
#[derive(Debug)]
struct Plan {
    part: Arc<Partition>,
    compaction: Compaction,
    /// Where the dirty section starts: below it, a completed pass cleaned this replica's
    /// log and, for a tiered topic, the remote segments too (the smaller of the two marks),
    /// so a tombstone below it has no older value left anywhere.
    first_dirty: u64,
    /// A local segment base: everything below is cleaned, remote segments starting below
    /// it too.
    to: u64,
    /// As leader of a tiered partition: the manifest and the epoch to commit under.
    remote: Option<(Arc<Manifest>, i32)>,
    ratio: f64,
}

impl Cleaner {
    pub(crate) fn new(
        partitions: Arc<Partitions>,
        tiering: Arc<Tiering>,
        settings: CleanerSettings,
    ) -> Self {
        Self {
            partitions,
            tiering,
            limiter: RateLimiter::new(settings.io_max_bytes_per_second),
            settings,
            status: Mutex::new(HashMap::new()),
            stopping: CancellationToken::new(),
            running: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Ends the pass running, if any, and waits for it: its object-store I/O goes through
    /// the runtime, which must not shut down under it (a cache fetch spawned then deadlocks
    /// in the read cache, and the runtime's shutdown waits for it for good). A local clean
    /// in progress completes first.
    pub(crate) async fn stop(&self) {
        self.stopping.cancel();
        let _idle = self.running.lock().await;
    }

    /// `work` on the runtime, given up (as an error) once the cleaner is stopping.
    fn block_on<T, E: std::fmt::Display>(
        &self,
        runtime: &tokio::runtime::Handle,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, String> {
        runtime.block_on(async {
            tokio::select! {
                done = work => done.map_err(|e| e.to_string()),
                () = self.stopping.cancelled() => Err("the broker is stopping".to_owned()),
            }
        })
    }

    /// What the cleaner last knew of a partition (defaults before its first check).
    pub(crate) fn status(&self, topic_id: Uuid, partition: i32) -> CleanStatus {
        self.lock_status()
            .get(&(topic_id, partition))
            .copied()
            .unwrap_or_default()
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, HashMap<(Uuid, i32), CleanStatus>> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One pass, off the async threads (remote segments are read and written from them
    /// through the runtime's handle).
    pub(crate) async fn step(self: Arc<Self>) -> Outcome {
        let runtime = tokio::runtime::Handle::current();
        let running = self.running.clone().lock_owned().await;
        if self.stopping.is_cancelled() {
            return Outcome::Ok;
        }
        let pass = move || {
            self.pass(&runtime);
            drop(running);
        };
        match tokio::task::spawn_blocking(pass).await {
            Ok(()) => Outcome::Ok,
            Err(e) => Outcome::Retry(e.to_string()),
        }
    }

    fn pass(&self, runtime: &tokio::runtime::Handle) {
        let now = crate::statelog::now_ms();
        let mut due: Vec<Plan> = self
            .partitions
            .hosted()
            .into_iter()
            .filter_map(|part| self.plan(part, now))
            .collect();
        due.sort_by(|a, b| b.ratio.total_cmp(&a.ratio));
        let queue = Mutex::new(due);
        let map_bytes = (self.settings.dedupe_buffer_bytes / self.settings.threads as u64) as usize;
        std::thread::scope(|scope| {
            for _ in 0..self.settings.threads {
                scope.spawn(|| {
                    while let Some(plan) = next(&queue).filter(|_| !self.stopping.is_cancelled()) {
                        self.clean(plan, map_bytes, runtime);
                    }
                });
            }
        });
    }

    /// The partition's next pass if one is due.
    fn plan(&self, part: Arc<Partition>, now: i64) -> Option<Plan> {
        let settings = part.settings();
        let compaction = settings.compaction?;
        if part.recovering() {
            return None;
        }
        let log = &part.log;
        // The published manifest (a follower's tiering pass keeps it current too).
        let manifest = settings
            .remote
            .then(|| part.remote.manifest())
            .flatten()
            .filter(|m| !m.segments.is_empty());
        let (cleaned, oldest_delete_ms) = log.cleaner_state();
        let first_dirty = match &manifest {
            Some(m) => cleaned.min(m.cleaned_offset),
            None => cleaned,
        };
        let segments = log.segments();
        let snapshot = crate::producer::newest_snapshot_offset(log.dir()).unwrap_or(0);
        let young = now.saturating_sub(compaction.min_lag.as_millis() as i64);
        let settled = match compaction.min_lag.is_zero() {
            true => u64::MAX,
            false => segments
                .iter()
                .find(|s| s.max_timestamp.is_none_or(|t| t > young))
                .map_or(u64::MAX, |s| s.base_offset),
        };
        let limit = part.last_stable_offset().min(snapshot).min(settled);
        let to = log.clean_bound(limit);
        let (mut clean, mut dirty) = log.clean_and_dirty_bytes(first_dirty, to);
        let local_start = log.log_start_offset();
        for s in manifest.iter().flat_map(|m| &m.segments) {
            if s.base_offset < to.min(local_start) {
                match s.end_offset <= first_dirty {
                    true => clean += s.size_bytes,
                    false => dirty += s.size_bytes,
                }
            }
        }
        let ratio = match clean + dirty {
            0 => 0.0,
            total => dirty as f64 / total as f64,
        };
        self.lock_status()
            .entry((part.topic_id, part.index))
            .or_default()
            .dirty_ratio = ratio;
        let retention = compaction.delete_retention.as_millis() as i64;
        let deletes_due = oldest_delete_ms.is_some_and(|t| t.saturating_add(retention) <= now);
        if dirty == 0 && !deletes_due {
            return None;
        }
        let overdue = compaction.max_lag.is_some_and(|lag| {
            let horizon = now.saturating_sub(lag.as_millis() as i64);
            segments
                .iter()
                .find(|s| s.next_offset > first_dirty)
                .and_then(|s| s.first_timestamp)
                .is_some_and(|t| t >= 0 && t < horizon)
        });
        let remote = manifest.zip(part.role().leader_epoch());
        (ratio >= compaction.min_dirty_ratio || overdue || deletes_due).then_some(Plan {
            part,
            compaction,
            first_dirty,
            to,
            remote,
            ratio,
        })
    }

    /// Runs one pass over a partition; a failure is logged and the next pass tries again.
    /// Order: the local segments, then (as leader of a tiered partition) the remote ones with
    /// a manifest that records the map's end, then the local record of it; a pass cut short
    /// anywhere is redone whole from the same start, which changes nothing already clean.
    fn clean(&self, plan: Plan, map_bytes: usize, runtime: &tokio::runtime::Handle) {
        let part = &plan.part;
        let started = Instant::now();
        let retention = plan.compaction.delete_retention.as_millis() as i64;
        let horizon = crate::statelog::now_ms() - retention;
        let result = self.run(&plan, map_bytes, horizon, runtime);
        match result {
            Ok(Some(done)) => {
                let oldest = done.stats.oldest_delete_ms;
                if let Err(e) = part.log.set_cleaned_offset(done.cleaned, oldest) {
                    tracing::warn!(topic = %part.topic, partition = part.index, error = %e,
                        "recording the clean failed; the next pass redoes it");
                    return;
                }
                let now = crate::statelog::now_ms();
                let mut status = self.lock_status();
                let entry = status.entry((part.topic_id, part.index)).or_default();
                entry.last_clean_ms = Some(now);
                entry.dirty_ratio = 0.0;
                drop(status);
                let s = done.stats;
                tracing::info!(topic = %part.topic, partition = part.index,
                    cleaned = done.cleaned, remote_segments = done.remote_segments,
                    bytes_in = s.bytes_in, bytes_out = s.bytes_out, records_in = s.records_in,
                    records_out = s.records_out, ms = started.elapsed().as_millis() as u64,
                    "cleaned");
            }
            Ok(None) => tracing::debug!(topic = %part.topic, partition = part.index,
                "the log changed under the clean; the next pass tries again"),
            Err(e) => tracing::warn!(topic = %part.topic, partition = part.index, error = %e,
                "cleaning failed; the next pass tries again"),
        }
    }

    /// The pass itself; `None` when it was given up because the log changed under it.
    fn run(
        &self,
        plan: &Plan,
        map_bytes: usize,
        horizon: i64,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Option<Cleaned>, String> {
        let part = &plan.part;
        let log = &part.log;
        let mut io = |bytes: u64| self.limiter.take(bytes);
        let objects = &part.remote.objects;
        let reader = &self.tiering.reader;
        let local_start = log.log_start_offset();
        let mut entries = log.aborted_txns(0, plan.to).map_err(|e| e.to_string())?;
        // Only the leader reads remote segments; a follower maps its own log.
        let start = match plan.remote {
            Some(_) => plan.first_dirty,
            None => plan.first_dirty.max(local_start),
        };
        let mut map = OffsetMap::with_memory(map_bytes, start);
        if let Some((manifest, _)) = &plan.remote {
            entries.extend(
                self.block_on(runtime, reader.aborted_txns(objects, manifest, 0, plan.to))?,
            );
        }
        let aborted = Aborted::new(entries);
        if let Some((manifest, _)) = &plan.remote {
            let below = plan.to.min(local_start);
            self.block_on(
                runtime,
                map_remote(
                    reader, objects, manifest, &mut map, below, &aborted, &mut io,
                ),
            )?;
        }
        if map.end() >= local_start {
            log.map_dirty(&mut map, plan.to, &aborted, &mut io)
                .map_err(|e| e.to_string())?;
        }
        let local = log
            .clean_with(&map, &aborted, plan.first_dirty, horizon, plan.to, &mut io)
            .map_err(|e| e.to_string())?;
        if local.is_some_and(|l| !l.applied) {
            return Ok(None);
        }
        let mut stats = local.map(|l| l.stats).unwrap_or_default();
        let mut remote_segments = 0;
        if let Some((_, epoch)) = plan.remote {
            let scratch = log.dir().join(REMOTE_SCRATCH);
            let pass = RemotePass {
                map: &map,
                aborted: &aborted,
                clean_below: plan.first_dirty,
                delete_horizon_ms: horizon,
                to: plan.to,
                segment_bytes: part.settings().log.segment_bytes,
                epoch,
                scratch: &scratch,
                uploads: &part.remote.uploads,
            };
            let publish = |m: &Arc<Manifest>| part.remote.publish(m.clone());
            let done = self.block_on(
                runtime,
                compact_remote(reader, objects, &pass, map.end(), &mut io, publish),
            )?;
            if let Some(r) = done {
                remote_segments = r.segments_in;
                stats.bytes_in += r.stats.bytes_in;
                stats.bytes_out += r.stats.bytes_out;
                stats.records_in += r.stats.records_in;
                stats.records_out += r.stats.records_out;
                stats.oldest_delete_ms = match (stats.oldest_delete_ms, r.stats.oldest_delete_ms) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
        Ok(Some(Cleaned {
            cleaned: map.end(),
            remote_segments,
            stats,
        }))
    }
}

/// What a completed pass did.
#[derive(Debug)]
struct Cleaned {
    /// Where the next pass's dirty section starts.
    cleaned: u64,
    remote_segments: usize,
    stats: FilterStats,
}

/// Directory in a partition's log directory where remote segments are rebuilt.
const REMOTE_SCRATCH: &str = "remote-clean";

fn next(queue: &Mutex<Vec<Plan>>) -> Option<Plan> {
    let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
    (!q.is_empty()).then(|| q.remove(0))
}

/// How much unused rate the limiter lets a thread catch up on at once.
const BURST: Duration = Duration::from_millis(100);

/// Holds the cleaner's threads together to a byte rate: each read or write reserves its
/// bytes on a shared schedule and sleeps until its slot.
#[derive(Debug)]
struct RateLimiter {
    bytes_per_second: u64,
    next_free: Mutex<Instant>,
}

impl RateLimiter {
    fn new(bytes_per_second: u64) -> Self {
        Self {
            bytes_per_second,
            next_free: Mutex::new(Instant::now()),
        }
    }

    fn take(&self, bytes: u64) {
        if self.bytes_per_second == 0 {
            return;
        }
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_second as f64);
        let wait = {
            let mut next = self.next_free.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            // Idle time is not saved up beyond a tenth of a second's worth.
            let floor = now.checked_sub(BURST).unwrap_or(now);
            *next = (*next).max(floor) + cost;
            next.saturating_duration_since(now)
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limiter_holds_its_threads_to_the_rate() {
        // 1 MB/s: 400 KB in 40 KB steps from two threads takes about 0.4 s less the burst.
        let limiter = RateLimiter::new(1_000_000);
        let started = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..5 {
                        limiter.take(40_000);
                    }
                });
            }
        });
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(290), "took {took:?}");
        assert!(took < Duration::from_secs(2), "took {took:?}");
        // No limit: no wait.
        let free = RateLimiter::new(0);
        let started = Instant::now();
        free.take(u64::MAX / 2);
        assert!(started.elapsed() < Duration::from_millis(50));
    }
}
