//! The topic catalog in the object store: `topics/<id>/topic.json` next to each tiered
//! topic's partitions, holding its name, id, partition count, replication factor and configs.
//!
//! Topic metadata otherwise lives only in the controller's Raft log on local disk. With the
//! catalog, a cluster started with empty disks on an existing bucket (a fresh container, a
//! rebuilt VM) creates its topics again under their old ids ([`recover_topics`]), and each
//! partition then recovers its data from its manifest, as after a wiped log directory.
//!
//! The leader of a topic's partition 0 writes its entry when the topic appears or changes.
//! The broker that deletes a topic removes its entry at once, and every broker that sees a
//! topic deleted removes the topic's objects.

use std::collections::{BTreeMap, HashMap};

use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use strata_controller::Command;
use strata_controller::model::{MetadataImage, TopicRecord};
use uuid::Uuid;

use crate::state::BrokerState;
use crate::tiering::{Tiering, remote_enabled};

/// A topic as the catalog records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CatalogEntry {
    pub(crate) name: String,
    pub(crate) id: Uuid,
    pub(crate) partitions: i32,
    pub(crate) replication_factor: i16,
    pub(crate) configs: BTreeMap<String, String>,
}

impl CatalogEntry {
    fn of(topic: &TopicRecord) -> Self {
        Self {
            name: topic.name.clone(),
            id: topic.id,
            partitions: topic.partitions.len() as i32,
            replication_factor: topic.replication_factor,
            configs: topic.configs.clone(),
        }
    }
}

/// Largest catalog entry read back (names and configs are small).
const MAX_ENTRY_BYTES: u64 = 1 << 20;

impl Tiering {
    /// A leader epoch above every epoch the topic's manifests were committed with: the
    /// re-created topic's leaders must not be fenced by the topic's own past.
    async fn next_leader_epoch(&self, entry: &CatalogEntry) -> Result<i32, String> {
        let latest = futures::stream::iter(0..entry.partitions)
            .map(|p| async move { self.objects(entry.id, p).latest().await })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
        let mut highest = -1;
        for manifest in latest {
            let manifest =
                manifest.map_err(|e| format!("reading {}'s manifests: {e}", entry.name))?;
            highest = highest.max(manifest.map_or(-1, |m| m.leader_epoch));
        }
        Ok(highest + 1)
    }

    fn topics_root(&self) -> Path {
        self.prefix().clone().join("topics")
    }

    fn entry_path(&self, id: Uuid) -> Path {
        self.topics_root().join(id.to_string()).join("topic.json")
    }

    async fn write_entry(&self, entry: &CatalogEntry) -> Result<(), String> {
        let body = serde_json::to_vec_pretty(entry).map_err(|e| e.to_string())?;
        self.store()
            .put(&self.entry_path(entry.id), PutPayload::from(body))
            .await
            .map(drop)
            .map_err(|e| format!("writing the catalog entry of {}: {e}", entry.name))
    }

    /// Every catalog entry in the bucket; unreadable ones are skipped with a warning.
    pub(crate) async fn read_catalog(&self) -> Result<Vec<CatalogEntry>, String> {
        let listing = self
            .store()
            .list_with_delimiter(Some(&self.topics_root()))
            .await
            .map_err(|e| format!("listing {}: {e}", self.topics_root()))?;
        let mut entries = Vec::new();
        for dir in listing.common_prefixes {
            let Some(id) = dir.filename().and_then(|p| p.parse::<Uuid>().ok()) else {
                continue;
            };
            let path = self.entry_path(id);
            let got = match self.store().get(&path).await {
                Ok(got) => got,
                // Objects of a topic created before the catalog existed, or half deleted.
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(format!("reading {path}: {e}")),
            };
            if got.meta.size > MAX_ENTRY_BYTES {
                tracing::warn!(%path, size = got.meta.size, "catalog entry too large; skipped");
                continue;
            }
            let bytes = got
                .bytes()
                .await
                .map_err(|e| format!("reading {path}: {e}"))?;
            match serde_json::from_slice::<CatalogEntry>(&bytes) {
                Ok(entry) if entry.id == id => entries.push(entry),
                Ok(_) => tracing::warn!(%path, "catalog entry names another topic id; skipped"),
                Err(e) => tracing::warn!(%path, error = %e, "unreadable catalog entry; skipped"),
            }
        }
        Ok(entries)
    }

    /// Removes topic `id`'s catalog entry, so no later recovery brings it back; called when
    /// the topic is deleted, before the tiering pass removes the rest of its objects (a
    /// restart in between would otherwise leave the entry behind). A failure is logged: the
    /// pass deletes the entry with the rest.
    pub(crate) async fn forget_topic(&self, id: Uuid, name: &str) {
        let path = self.entry_path(id);
        let deleted = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            self.store().delete(&path),
        )
        .await;
        match deleted {
            Ok(Ok(()) | Err(object_store::Error::NotFound { .. })) => {}
            Ok(Err(e)) => {
                tracing::warn!(topic = %name, error = %e, "catalog entry not deleted yet")
            }
            Err(_) => tracing::warn!(topic = %name, "deleting the catalog entry timed out"),
        }
    }

    /// Deletes every object of topic `id` (its segments, manifests and catalog entry).
    async fn delete_topic_objects(&self, id: Uuid) -> Result<usize, String> {
        let root = self.topics_root().join(id.to_string());
        let paths: Vec<_> = self
            .store()
            .list(Some(&root))
            .map(|m| m.map(|m| m.location))
            .collect()
            .await;
        let mut deleted = 0;
        for path in paths {
            let path = path.map_err(|e| format!("listing {root}: {e}"))?;
            match self.store().delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                Err(e) => return Err(format!("deleting {path}: {e}")),
            }
        }
        Ok(deleted)
    }
}

/// What this broker has written to the catalog, and which topics it has seen.
#[derive(Debug, Default)]
pub(crate) struct CatalogSync {
    written: HashMap<Uuid, CatalogEntry>,
    seen: HashMap<Uuid, String>,
}

impl CatalogSync {
    /// Writes entries of tiered topics whose partition 0 this broker leads and that are new
    /// or changed; deletes the objects of topics that left the metadata since the last pass.
    pub(crate) async fn pass(&mut self, tiering: &Tiering, image: &MetadataImage, me: i32) {
        let current: HashMap<Uuid, &TopicRecord> =
            image.topics.values().map(|t| (t.id, t)).collect();
        for topic in current.values() {
            let entry = CatalogEntry::of(topic);
            let leads_first = topic
                .partitions
                .first()
                .is_some_and(|p| p.leader == Some(me));
            if !remote_enabled(topic) || !leads_first || self.written.get(&topic.id) == Some(&entry)
            {
                continue;
            }
            match tiering.write_entry(&entry).await {
                Ok(()) => {
                    self.written.insert(topic.id, entry);
                }
                Err(error) => {
                    tracing::warn!(%error, "catalog entry not written; retried next pass")
                }
            }
        }
        let gone: Vec<(Uuid, String)> = self
            .seen
            .iter()
            .filter(|(id, _)| !current.contains_key(id))
            .map(|(id, name)| (*id, name.clone()))
            .collect();
        for (id, name) in gone {
            match tiering.delete_topic_objects(id).await {
                Ok(objects) => {
                    if objects > 0 {
                        tracing::info!(topic = %name, %id, objects, "deleted topic's objects removed");
                    }
                    self.seen.remove(&id);
                    self.written.remove(&id);
                }
                Err(error) => {
                    tracing::warn!(topic = %name, %error, "deleted topic's objects not removed yet");
                }
            }
        }
        for topic in current.values().filter(|t| remote_enabled(t)) {
            self.seen.insert(topic.id, topic.name.clone());
        }
    }
}

/// When the metadata holds no topics of its own yet (a new or wiped controller), creates the
/// topics the bucket's catalog describes, under their old ids, so their data is found again.
/// Returns how many were created.
pub(crate) async fn recover_topics(state: &BrokerState) -> Result<usize, String> {
    let image = state.image();
    if image.topics.values().any(|t| !t.name.starts_with("__")) {
        return Ok(0);
    }
    let entries = state.tiering.read_catalog().await?;
    let live = image.brokers.len().max(1) as i16;
    let mut created = 0;
    for entry in entries {
        if image.topics.contains_key(&entry.name) {
            continue;
        }
        let first_leader_epoch = state.tiering.next_leader_epoch(&entry).await?;
        let command = Command::CreateTopic {
            name: entry.name.clone(),
            id: entry.id,
            partitions: entry.partitions,
            replication_factor: entry.replication_factor.clamp(1, live),
            configs: entry.configs.clone(),
            first_leader_epoch,
        };
        match state.controller.submit(&command).await {
            Ok(Ok(applied)) => {
                state
                    .wait_for_version(applied.version, std::time::Duration::from_secs(10))
                    .await;
                tracing::info!(topic = %entry.name, id = %entry.id, partitions = entry.partitions,
                    "topic recovered from the object store's catalog");
                created += 1;
            }
            Ok(Err(strata_controller::CommandError::TopicAlreadyExists { .. })) => {}
            Ok(Err(e)) => return Err(format!("recreating {}: {e}", entry.name)),
            Err(e) => return Err(format!("recreating {}: {e}", entry.name)),
        }
    }
    Ok(created)
}
