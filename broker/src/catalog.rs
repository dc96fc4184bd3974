//! The topic catalog in the object store: `topics/<id>/topic.json` next to each tiered
//! topic's partitions, holding its name, id, partition count, replication factor and configs.
//!
//! Topic metadata otherwise lives only in the controller's Raft log on local disk. With the
//! catalog, a cluster started with empty disks on an existing bucket (a fresh container, a
//! rebuilt VM) creates its topics again under their old ids ([`recover_topics`]), and each
//! partition then recovers its data from its manifest, as after a wiped log directory.
//!
//! The leader of a topic's partition 0 writes its entry when the topic appears or changes,
//! stamped with the cluster id of the metadata quorum and the metadata version it saw the
//! topic at. The broker that deletes a topic turns its entry into a tombstone at once, and a
//! cleanup removes the objects of every topic the catalog shows as deleted: a tombstone, or an
//! entry of this cluster whose topic is missing from metadata at least as new as the entry.
//! Only entries of another cluster (a quorum that lost its disks and started afresh) are
//! recovered, so a deleted topic never comes back while the quorum's metadata survives, however
//! a deletion raced a catalog write or a restart cut a cleanup short.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use strata_controller::model::{MetadataImage, TopicRecord};
use strata_controller::{Command, ControllerClient};
use uuid::Uuid;

use crate::metadata::MetadataView;
use crate::supervisor::Outcome;
use crate::tiering::Tiering;
use crate::topic::remote_enabled;

/// A topic as the catalog records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CatalogEntry {
    pub(crate) name: String,
    pub(crate) id: Uuid,
    pub(crate) partitions: i32,
    pub(crate) replication_factor: i16,
    pub(crate) configs: BTreeMap<String, String>,
    /// The metadata quorum that wrote it (absent in entries written before it was recorded).
    #[serde(default)]
    pub(crate) cluster_id: Option<Uuid>,
    /// The metadata version at which the writer saw the topic.
    #[serde(default)]
    pub(crate) version: u64,
    /// The topic was deleted; its objects are being removed.
    #[serde(default)]
    pub(crate) deleted: bool,
}

impl CatalogEntry {
    fn of(topic: &TopicRecord, image: &MetadataImage) -> Self {
        Self {
            name: topic.name.clone(),
            id: topic.id,
            partitions: topic.partitions.len() as i32,
            replication_factor: topic.replication_factor,
            configs: topic.configs.clone(),
            cluster_id: image.cluster_id,
            version: image.version,
            deleted: false,
        }
    }

    /// Whether `other` says the same about the topic (the version it was seen at aside).
    fn same_topic(&self, other: &Self) -> bool {
        Self {
            version: other.version,
            ..self.clone()
        } == *other
    }

    /// Whether the topic is gone: a tombstone, or an entry of this cluster whose topic
    /// `image` (at least as new as the entry) does not hold. An image older than the entry
    /// may simply not have seen the topic yet.
    fn is_deleted(&self, image: &MetadataImage) -> bool {
        self.deleted
            || (self.cluster_id.is_some()
                && self.cluster_id == image.cluster_id
                && image.version >= self.version
                && image.topic_by_id(self.id).is_none())
    }

    /// Whether a broker starting on `image` should create the topic again: it was written by
    /// another quorum (this one started with empty disks), or, for entries written before
    /// cluster ids were recorded, this quorum has no topics of its own yet.
    fn to_recover(&self, image: &MetadataImage) -> bool {
        let elsewhere = match self.cluster_id {
            Some(id) => image.cluster_id != Some(id),
            None => !image.topics.values().any(|t| !t.name.starts_with("__")),
        };
        !self.deleted && elsewhere && !image.topics.contains_key(&self.name)
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

    /// Turns a deleted topic's entry into a tombstone, so no later recovery brings it back
    /// even if the cleanup of its objects is cut short. Called by the broker that deleted it,
    /// before the cleanup; a failure is logged, and the cleanup finds the topic deleted anyway
    /// (its entry is of this cluster and the metadata no longer holds it).
    pub(crate) async fn forget_topic(&self, topic: &TopicRecord, image: &MetadataImage) {
        let tombstone = CatalogEntry {
            deleted: true,
            ..CatalogEntry::of(topic, image)
        };
        let written = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            self.write_entry(&tombstone),
        )
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(topic = %topic.name, %error, "catalog tombstone not written")
            }
            Err(_) => {
                tracing::warn!(topic = %topic.name, "writing the catalog tombstone timed out")
            }
        }
    }

    /// Deletes every object of topic `id`: its segments and manifests, then its catalog
    /// entry, so a cleanup cut short is found and finished by the next one.
    async fn delete_topic_objects(&self, id: Uuid) -> Result<usize, String> {
        let root = self.topics_root().join(id.to_string());
        let entry = self.entry_path(id);
        let mut paths = self
            .store()
            .list(Some(&root))
            .map(|m| m.map(|m| m.location))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("listing {root}: {e}"))?;
        paths.sort_by_key(|p| *p == entry);
        let mut deleted = 0;
        for path in paths {
            match self.store().delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                Err(e) => return Err(format!("deleting {path}: {e}")),
            }
        }
        Ok(deleted)
    }
}

/// How often the catalog is scanned for deleted topics whose objects remain, besides the first
/// pass after start-up.
const CLEANUP_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// What this broker has written to the catalog, which tiered topics it has seen and seen
/// deleted, and when it last scanned the catalog for deleted topics' leftovers.
#[derive(Debug, Default)]
pub(crate) struct CatalogSync {
    written: HashMap<Uuid, CatalogEntry>,
    seen: HashMap<Uuid, String>,
    gone: HashMap<Uuid, String>,
    last_scan: Option<std::time::Instant>,
}

impl CatalogSync {
    /// Writes entries of tiered topics whose partition 0 this broker leads and that are new
    /// or changed; removes the objects of topics that left the metadata, and scans the catalog
    /// for other deleted topics on the first pass and every [`CLEANUP_EVERY`].
    pub(crate) async fn pass(&mut self, tiering: &Tiering, image: &MetadataImage, me: i32) {
        // Entries name the quorum that wrote them; until its cluster id is in the metadata
        // (it can arrive after the first topics), there is nothing to stamp them with.
        if image.cluster_id.is_none() {
            return;
        }
        let current: HashMap<Uuid, &TopicRecord> =
            image.topics.values().map(|t| (t.id, t)).collect();
        for topic in current.values() {
            let entry = CatalogEntry::of(topic, image);
            let leads_first = topic
                .partitions
                .first()
                .is_some_and(|p| p.leader == Some(me));
            if !remote_enabled(topic)
                || !leads_first
                || self
                    .written
                    .get(&topic.id)
                    .is_some_and(|w| w.same_topic(&entry))
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
        // Topics that left the metadata since the last pass are deleted (ids are never reused).
        self.gone.extend(
            self.seen
                .iter()
                .filter(|(id, _)| !current.contains_key(id))
                .map(|(id, name)| (*id, name.clone())),
        );
        self.seen = current
            .values()
            .filter(|t| remote_enabled(t))
            .map(|t| (t.id, t.name.clone()))
            .collect();
        self.written.retain(|id, _| current.contains_key(id));
        let scan = self.last_scan.is_none_or(|t| t.elapsed() >= CLEANUP_EVERY);
        if let Err(error) = self.cleanup(tiering, image, scan).await {
            tracing::warn!(%error, "deleted topics' objects not removed yet; retried next pass");
        }
    }

    /// Removes the objects of the topics seen leaving the metadata and, with `scan`, of every
    /// topic the catalog shows as deleted (leftovers of a restart or a race).
    async fn cleanup(
        &mut self,
        tiering: &Tiering,
        image: &MetadataImage,
        scan: bool,
    ) -> Result<(), String> {
        let mut doomed: Vec<(Uuid, String)> =
            self.gone.iter().map(|(i, n)| (*i, n.clone())).collect();
        if scan {
            let entries = tiering.read_catalog().await?;
            doomed.extend(
                entries
                    .into_iter()
                    .filter(|e| e.is_deleted(image) && !self.gone.contains_key(&e.id))
                    .map(|e| (e.id, e.name)),
            );
        }
        for (id, name) in doomed {
            let objects = tiering.delete_topic_objects(id).await?;
            if objects > 0 {
                tracing::info!(topic = %name, %id, objects, "deleted topic's objects removed");
            }
            self.gone.remove(&id);
        }
        if scan {
            self.last_scan = Some(std::time::Instant::now());
        }
        Ok(())
    }
}

/// One pass keeping the catalog in step with the metadata (see [`CatalogSync::pass`]), cut
/// off after `timeout`; the supervisor runs it every upload interval. A pass that fails or
/// times out is retried by the next one.
pub(crate) async fn step(
    sync: Arc<tokio::sync::Mutex<CatalogSync>>,
    tiering: Arc<Tiering>,
    metadata: Arc<MetadataView>,
    me: i32,
    timeout: Duration,
) -> Outcome {
    let image = metadata.image();
    let mut sync = sync.lock().await;
    if tokio::time::timeout(timeout, sync.pass(&tiering, &image, me))
        .await
        .is_err()
    {
        tracing::warn!(?timeout, "catalog pass timed out; retried next pass");
    }
    Outcome::Ok
}

/// When the metadata holds no topics of its own yet (a new or wiped quorum, or one whose
/// topics were all deleted), creates the topics the bucket's catalog describes that another
/// quorum wrote, under their old ids, so their data is found again; this quorum's own entries
/// are deleted topics and stay deleted. Returns how many were created. A quorum with topics
/// of its own recovered at its first start, so it does not read the catalog again (and starts
/// while the store is unreachable).
pub(crate) async fn recover_topics(
    metadata: &MetadataView,
    tiering: &Tiering,
    controller: &ControllerClient,
) -> Result<usize, String> {
    let image = metadata.image();
    if image.topics.values().any(|t| !t.name.starts_with("__")) {
        return Ok(0);
    }
    let entries = tiering.read_catalog().await?;
    let live = image.brokers.len().max(1) as i16;
    let mut created = 0;
    for entry in entries {
        if !entry.to_recover(&image) {
            continue;
        }
        let first_leader_epoch = tiering.next_leader_epoch(&entry).await?;
        let command = Command::CreateTopic {
            name: entry.name.clone(),
            id: entry.id,
            partitions: entry.partitions,
            replication_factor: entry.replication_factor.clamp(1, live),
            configs: entry.configs.clone(),
            first_leader_epoch,
        };
        match controller.submit(&command).await {
            Ok(Ok(applied)) => {
                metadata
                    .wait_for_version(applied.version, Duration::from_secs(10))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn image(cluster: Uuid, version: u64, topics: &[&TopicRecord]) -> MetadataImage {
        MetadataImage {
            version,
            cluster_id: Some(cluster),
            topics: topics
                .iter()
                .map(|t| (t.name.clone(), (*t).clone()))
                .collect(),
            ..MetadataImage::default()
        }
    }

    fn topic(name: &str) -> TopicRecord {
        TopicRecord {
            name: name.into(),
            id: Uuid::new_v4(),
            replication_factor: 1,
            configs: BTreeMap::new(),
            partitions: Vec::new(),
        }
    }

    /// A pass that saw the topic at version 10 writes its entry after the topic was deleted
    /// at version 11 (the stale-writer race): the entry is still recognised as deleted by
    /// brokers whose metadata has caught up, and never recovered by the same cluster.
    #[test]
    fn an_entry_written_after_its_topic_was_deleted_is_treated_as_deleted() {
        let cluster = Uuid::new_v4();
        let t = topic("t");
        let stale = CatalogEntry::of(&t, &image(cluster, 10, &[&t]));
        let after_delete = image(cluster, 11, &[]);
        assert!(stale.is_deleted(&after_delete));
        assert!(!stale.to_recover(&after_delete));
        // A broker whose metadata has not reached the entry's version yet leaves it alone:
        // the topic may be new to it.
        assert!(!stale.is_deleted(&image(cluster, 9, &[])));
        // A live topic's entry is not deleted, whatever version wrote it.
        assert!(!stale.is_deleted(&image(cluster, 12, &[&t])));
    }

    #[test]
    fn only_another_quorums_entries_are_recovered_and_tombstones_never() {
        let (old, new) = (Uuid::new_v4(), Uuid::new_v4());
        let t = topic("t");
        let entry = CatalogEntry::of(&t, &image(old, 10, &[&t]));
        let fresh = image(new, 3, &[]);
        assert!(entry.to_recover(&fresh), "a quorum that started afresh");
        assert!(
            !entry.is_deleted(&fresh),
            "and its cleanup leaves the entry alone"
        );
        let tombstone = CatalogEntry {
            deleted: true,
            ..entry.clone()
        };
        assert!(!tombstone.to_recover(&fresh));
        assert!(tombstone.is_deleted(&fresh));
        // Entries from before cluster ids: recovered only by a quorum without topics.
        let legacy = CatalogEntry {
            cluster_id: None,
            ..entry.clone()
        };
        assert!(legacy.to_recover(&fresh));
        let other = topic("other");
        assert!(!legacy.to_recover(&image(new, 3, &[&other])));
        assert!(!legacy.is_deleted(&image(new, 3, &[&other])));
        // A name taken since is not recovered over.
        let taken = topic("t");
        assert!(!entry.to_recover(&image(new, 3, &[&taken])));
    }

    #[test]
    fn entries_are_rewritten_when_the_topic_changes_not_when_the_version_moves() {
        let cluster = Uuid::new_v4();
        let mut t = topic("t");
        let first = CatalogEntry::of(&t, &image(cluster, 10, &[&t]));
        assert!(first.same_topic(&CatalogEntry::of(&t, &image(cluster, 50, &[&t]))));
        t.configs.insert("retention.ms".into(), "1000".into());
        assert!(!first.same_topic(&CatalogEntry::of(&t, &image(cluster, 51, &[&t]))));
        // Entries read back from a bucket written before these fields existed still parse.
        let legacy = r#"{"name":"t","id":"8597da06-aba3-4903-aeec-d12927f9ee7e","partitions":1,
            "replication_factor":1,"configs":{}}"#;
        let parsed: CatalogEntry = serde_json::from_str(legacy).expect("parses");
        assert_eq!((parsed.cluster_id, parsed.deleted), (None, false));
    }
}
