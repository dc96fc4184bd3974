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

use strata_storage::compact::OffsetMap;

use crate::config::CleanerSettings;
use crate::partition::Partition;
use crate::partition::registry::Partitions;
use crate::supervisor::Outcome;
use crate::topic::Compaction;

/// The cleaner: what it is allowed, and the partitions it looks at.
#[derive(Debug)]
pub(crate) struct Cleaner {
    partitions: Arc<Partitions>,
    settings: CleanerSettings,
    limiter: RateLimiter,
}

/// One partition's next pass.
#[derive(Debug)]
struct Plan {
    part: Arc<Partition>,
    compaction: Compaction,
    first_dirty: u64,
    /// A segment base: everything below is cleaned.
    to: u64,
    ratio: f64,
}

impl Cleaner {
    pub(crate) fn new(partitions: Arc<Partitions>, settings: CleanerSettings) -> Self {
        Self {
            partitions,
            limiter: RateLimiter::new(settings.io_max_bytes_per_second),
            settings,
        }
    }

    /// One pass, off the async threads.
    pub(crate) async fn step(self: Arc<Self>) -> Outcome {
        match tokio::task::spawn_blocking(move || self.pass()).await {
            Ok(()) => Outcome::Ok,
            Err(e) => Outcome::Retry(e.to_string()),
        }
    }

    fn pass(&self) {
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
                    while let Some(plan) = next(&queue) {
                        self.clean(plan, map_bytes);
                    }
                });
            }
        });
    }

    /// The partition's next pass if one is due.
    fn plan(&self, part: Arc<Partition>, now: i64) -> Option<Plan> {
        let compaction = part.settings().compaction?;
        if part.recovering() {
            return None;
        }
        let log = &part.log;
        let first_dirty = log.cleaned_offset();
        let snapshot = crate::producer::newest_snapshot_offset(log.dir()).unwrap_or(0);
        let young = now.saturating_sub(compaction.min_lag.as_millis() as i64);
        let settled = match compaction.min_lag.is_zero() {
            true => u64::MAX,
            false => log
                .segments()
                .iter()
                .find(|s| s.max_timestamp.is_none_or(|t| t > young))
                .map_or(u64::MAX, |s| s.base_offset),
        };
        let limit = part.last_stable_offset().min(snapshot).min(settled);
        let to = log.clean_bound(limit);
        let (clean, dirty) = log.clean_and_dirty_bytes(first_dirty, to);
        let ratio = match clean + dirty {
            0 => 0.0,
            total => dirty as f64 / total as f64,
        };
        let deletes_due = log.deletes_due_ms().is_some_and(|t| t <= now);
        if dirty == 0 && !deletes_due {
            return None;
        }
        let overdue = compaction.max_lag.is_some_and(|lag| {
            let horizon = now.saturating_sub(lag.as_millis() as i64);
            log.segments()
                .iter()
                .find(|s| s.next_offset > first_dirty)
                .and_then(|s| s.first_timestamp)
                .is_some_and(|t| t >= 0 && t < horizon)
        });
        (ratio >= compaction.min_dirty_ratio || overdue || deletes_due).then_some(Plan {
            part,
            compaction,
            first_dirty,
            to,
            ratio,
        })
    }

    /// Runs one pass over a partition; a failure is logged and the next pass tries again.
    fn clean(&self, plan: Plan, map_bytes: usize) {
        let part = &plan.part;
        let started = Instant::now();
        let mut io = |bytes: u64| self.limiter.take(bytes);
        let retention = plan.compaction.delete_retention.as_millis() as i64;
        let horizon = crate::statelog::now_ms() - retention;
        let result = (|| {
            let log = &part.log;
            let aborted = log.aborted_below(plan.to)?;
            let mut map = OffsetMap::with_memory(map_bytes, plan.first_dirty);
            log.map_dirty(&mut map, plan.to, &aborted, &mut io)?;
            let done =
                log.clean_with(&map, &aborted, plan.first_dirty, horizon, plan.to, &mut io)?;
            if let Some(done) = done
                && done.applied
            {
                let due = done
                    .stats
                    .oldest_delete_ms
                    .map(|t| t.saturating_add(retention));
                log.set_cleaned_offset(map.end(), due)?;
            }
            Ok::<_, strata_storage::StorageError>((done, map.end()))
        })();
        match result {
            Ok((Some(done), cleaned)) if done.applied => {
                let took = started.elapsed();
                tracing::info!(topic = %part.topic, partition = part.index, from = done.from,
                    to = done.to, cleaned, bytes_in = done.stats.bytes_in,
                    bytes_out = done.stats.bytes_out, records_in = done.stats.records_in,
                    records_out = done.stats.records_out, ms = took.as_millis() as u64,
                    "cleaned");
            }
            Ok(_) => tracing::debug!(topic = %part.topic, partition = part.index,
                "the log changed under the clean; the next pass tries again"),
            Err(e) => tracing::warn!(topic = %part.topic, partition = part.index, error = %e,
                "cleaning failed; the next pass tries again"),
        }
    }
}

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
