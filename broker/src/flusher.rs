//! Makes written data durable on a timer, for partitions written with `acks=0/1`.
//!
//! An `acks=all` produce fsyncs what it waits for; nothing else would. Every
//! `topics.flush_check_interval_ms` this task fsyncs each hosted log's sealed segments (so the
//! uploader, which takes only durable segments, can tier them, and a crash does not validate
//! them again) and flushes logs whose `flush.ms` has passed (Kafka's flush scheduler). The same
//! pass forgets idempotent producers idle past `producer.id.expiration.ms`, saves the
//! producer tables that are due, and saves high watermarks that moved.

use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_storage::StorageError;

use crate::partition::registry::Partitions;
use crate::supervisor::Outcome;

/// How often a growing partition's producer table is saved even without a segment roll.
const SAVE_PRODUCERS_EVERY: Duration = Duration::from_secs(60);

/// One pass, off the async threads; the supervisor runs it every
/// `topics.flush_check_interval_ms`.
/// `idle` is `producer.id.expiration.ms`.
pub(crate) async fn step(partitions: Arc<Partitions>, idle: Duration) -> Outcome {
    match tokio::task::spawn_blocking(move || flush_pass(&partitions, idle)).await {
        Ok(()) => Outcome::Ok,
        Err(e) => Outcome::Retry(e.to_string()),
    }
}

/// One pass over the hosted logs. A log whose fsync fails goes offline (the log records
/// why); the others carry on.
fn flush_pass(partitions: &Partitions, idle: Duration) {
    let now = Instant::now();
    for part in partitions.hosted() {
        part.producers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .expire_idle(idle, now);
        part.save_producers(SAVE_PRODUCERS_EVERY, false);
        part.save_high_watermark();
        let log = &part.log;
        match log.flush_sealed().and_then(|_| log.maybe_flush()) {
            // Reported once, when the log went offline.
            Ok(()) | Err(StorageError::Offline { .. }) => {}
            Err(e) => {
                tracing::warn!(dir = %log.dir().display(), error = %e, "periodic flush failed");
            }
        }
    }
}
