//! A partition's view of its segments in object storage, and its recovery from them.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use strata_storage::tier::manifest::{Manifest, PartitionObjects};
use strata_storage::tier::restore::restore_log;
use tokio::sync::watch;

use super::Partition;
use crate::error::BrokerError;
use crate::producer::ProducerTable;

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
    /// Held by the one recovery running (background and tiering pass may both try): whether
    /// a recovery has reset the log to the remote end but not yet restored the leader epochs
    /// and producers that go with it (a failure there is retried by the next one).
    recovery: tokio::sync::Mutex<bool>,
    /// Held by the tiering pass from listing local segments to committing their upload, and
    /// by the remote cleaner from its last look at the manifest to its commit
    /// ([`strata_storage::tier::compact::RemotePass::uploads`]).
    pub(crate) uploads: tokio::sync::Mutex<()>,
}

impl RemoteView {
    pub(crate) fn new(objects: PartitionObjects) -> Self {
        Self {
            objects,
            manifest: RwLock::new(None),
            recovered: watch::channel(true).0,
            recovery: tokio::sync::Mutex::new(false),
            uploads: tokio::sync::Mutex::new(()),
        }
    }

    pub(crate) fn manifest(&self) -> Option<Arc<Manifest>> {
        self.manifest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes `manifest` as the view unless a newer version is already published: the
    /// uploader, the retention pass, the cleaner and DeleteRecords each commit and then
    /// publish, and a slower publisher's older version must not replace a newer one (a
    /// DeleteRecords answer would report the old log start, and eviction would work from
    /// stale segments).
    pub(crate) fn publish(&self, manifest: Arc<Manifest>) {
        let mut current = self.manifest.write().unwrap_or_else(|p| p.into_inner());
        if current
            .as_ref()
            .is_none_or(|c| c.version <= manifest.version)
        {
            *current = Some(manifest);
        }
    }

    /// Marks the view of a topic that is not tiered: nothing is remote, so an offset below
    /// the local log start is out of range rather than "not read yet".
    pub(crate) fn mark_local_only(&self) {
        self.publish(Arc::default());
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

/// How many partitions read their manifests at once.
pub(crate) const RECOVERY_CONCURRENCY: usize = 16;

impl Partition {
    /// Recovers the partition within `timeout` (see [`Partition::recover`]). One that fails
    /// keeps refusing appends; the tiering pass and the next role change retry it.
    pub(crate) async fn recover_logged(&self, timeout: Duration) {
        let error = match tokio::time::timeout(timeout, self.recover()).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("timed out after {timeout:?}"),
        };
        tracing::warn!(
            topic = %self.topic, partition = self.index, %error,
            "reading the partition's manifest failed; appends wait while the tiering pass retries"
        );
    }

    /// Reads the manifest and makes the local log continue from the remote end: a log that
    /// is empty (a wiped disk) or behind the object store is restarted at the manifest's end,
    /// and the leader-epoch history is seeded from the remote segments.
    pub(crate) async fn recover(&self) -> Result<(), BrokerError> {
        // One recovery at a time, and none once appends are allowed: a reset racing them
        // would delete what they appended.
        let mut reset = self.remote.recovery.lock().await;
        if !self.remote.recovering() {
            return Ok(());
        }
        let manifest = self.remote.objects.latest().await?.unwrap_or_default();
        let end = manifest.end_offset();
        let log = &self.log;
        if log.log_end_offset() < end {
            tracing::info!(
                topic = %self.topic, partition = self.index,
                local_end = log.log_end_offset(), remote_end = end,
                "local log is behind the object store; continuing from the remote end"
            );
            if crate::topic::is_internal(&self.topic) {
                restore_log(&self.log, &self.remote.objects, &manifest).await?;
                tracing::info!(topic = %self.topic, partition = self.index,
                    start = manifest.log_start_offset, end,
                    segments = manifest.segments.len(),
                    "local log restored from the object store");
            } else {
                log.reset_to(end)?;
            }
            *reset = true;
        }
        if *reset {
            // The local history went with the local log: the remote segments' epochs are
            // the history now (their uploaders' epochs are not: a segment uploaded under
            // epoch 5 may hold batches of epochs 2 to 5).
            self.epochs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .replace(manifest.leader_epochs())
                .map_err(|source| BrokerError::Io {
                    op: "recording leader epochs",
                    path: log.dir().to_owned(),
                    source,
                })?;
            // So did the producer state: what continues here is what the last uploaded
            // segment recorded at the remote end. The transactions open there: without them
            // a transaction begun below it would not hold read_committed consumers, and its
            // abort would not be indexed. The idempotent producers' last batches: without
            // them a producer's retry of a batch below the remote end would be appended
            // again once this replica leads. Saved at once, so a restart cannot take an older
            // snapshot's state for this log's.
            let snapshot = self
                .remote
                .objects
                .producer_snapshot_at_end(&manifest)
                .await?;
            let table =
                ProducerTable::starting_with(snapshot.as_deref(), manifest.open_txns_at_end());
            let held = self.hold_producer_snapshots();
            let mut producers = self.producers.lock().unwrap_or_else(|p| p.into_inner());
            *producers = table;
            let bytes = producers.encode(end, std::time::Instant::now());
            drop(producers);
            self.write_producer_snapshot(&held, end, &bytes)
                .map_err(|source| BrokerError::Io {
                    op: "saving producer state",
                    path: log.dir().to_owned(),
                    source,
                })?;
            self.end.send_replace(end);
            // Nothing below the remote end can be missing from another replica: it is in
            // the object store.
            self.high_watermark.send_replace(end);
            *reset = false;
        }
        self.remote.publish(manifest);
        self.remote.recovered.send_replace(true);
        Ok(())
    }
}
