//! Background upload of sealed segments to the object store, for the partitions this broker
//! leads (topics with `remote.storage.enable`, the default). Uploads only: local segments are
//! not deleted yet, because fetches do not read remote data yet.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use object_store::ObjectStore;
use object_store::path::Path;
use strata_storage::tier::manifest::PartitionObjects;
use strata_storage::tier::{TierError, store, upload};
use tokio_util::sync::CancellationToken;

use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::state::BrokerState;

/// The object store and where in it this cluster writes.
#[derive(Debug)]
pub(crate) struct Tiering {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
}

impl Tiering {
    /// Opens the configured store and checks it answers (a listing of the prefix).
    pub(crate) async fn open(config: &BrokerConfig) -> Result<Self, BrokerError> {
        let (store, prefix) = store::open(&config.store_config()?)?;
        if let Some(Err(e)) = store.list(Some(&prefix)).next().await {
            return Err(BrokerError::Tier(TierError::Store(e)));
        }
        Ok(Self { store, prefix })
    }

    /// Every interval, uploads what each led partition has sealed since the last pass.
    pub(crate) async fn run(self, state: Arc<BrokerState>, cancel: CancellationToken) {
        let every = Duration::from_millis(state.config.object_store.upload_interval_ms);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let image = state.image();
            for topic in image.topics.values() {
                if topic
                    .configs
                    .get("remote.storage.enable")
                    .map(String::as_str)
                    == Some("false")
                {
                    continue;
                }
                for (i, meta) in topic.partitions.iter().enumerate() {
                    if meta.leader != Some(state.id) {
                        continue;
                    }
                    let Some(part) = state.partition(topic.id, i as i32) else {
                        continue;
                    };
                    let objects =
                        PartitionObjects::new(self.store.clone(), &self.prefix, topic.id, i as i32);
                    let done = tokio::select! {
                        () = cancel.cancelled() => return,
                        r = upload::upload_sealed(&part.log, &objects, meta.leader_epoch) => r,
                    };
                    match done {
                        Ok(_) => {}
                        Err(TierError::Fenced { ours, current }) => tracing::warn!(
                            topic = %topic.name, partition = i, ours, current,
                            "a newer leader owns this partition's manifest; not uploading"
                        ),
                        // Retried on the next pass; nothing local is deleted meanwhile.
                        Err(e) => tracing::warn!(
                            topic = %topic.name, partition = i, error = %e,
                            "upload failed; retrying next pass"
                        ),
                    }
                }
            }
        }
    }
}
