//! openraft's state machine over [`MetadataState`], with snapshots on local disk.
//!
//! The image lives in memory behind a lock that is never held across an `.await`; services
//! read it through [`SharedMetadata`]. A snapshot is the image as JSON plus openraft's
//! metadata, written to `snapshot.json` atomically; on start the controller loads it and
//! Raft replays the log entries after it.

use std::fs::{self, File};
use std::io::{self, Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    BasicNode, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder,
    StorageError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::command::{Applied, Outcome};
use crate::model::{MetadataImage, NodeId};
use crate::raft_types::TypeConfig;
use crate::state::MetadataState;

const SNAPSHOT_FILE: &str = "snapshot.json";

struct Applier {
    state: MetadataState,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
}

/// The metadata as this controller has applied it, shared with the gRPC services.
#[derive(Clone)]
pub struct SharedMetadata {
    inner: Arc<RwLock<Applier>>,
    version: watch::Sender<u64>,
}

impl std::fmt::Debug for SharedMetadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMetadata")
            .field("version", &*self.version.borrow())
            .finish()
    }
}

impl SharedMetadata {
    fn read(&self) -> RwLockReadGuard<'_, Applier> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Applier> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the current state.
    pub fn with_state<T>(&self, f: impl FnOnce(&MetadataState) -> T) -> T {
        f(&self.read().state)
    }

    /// A copy of the current image.
    pub fn image(&self) -> MetadataImage {
        self.read().state.image().clone()
    }

    /// A receiver that sees the metadata version change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    fn publish(&self, version: u64) {
        self.version.send_replace(version);
    }
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<NodeId, BasicNode>,
    image: MetadataImage,
}

type StoredSnapshot = (SnapshotMeta<NodeId, BasicNode>, Vec<u8>);

/// The openraft state machine. Snapshot builders are clones sharing the current snapshot, so
/// the newest one built or installed is what gets sent to lagging followers.
pub(crate) struct StateMachineStore {
    shared: SharedMetadata,
    dir: PathBuf,
    /// The newest snapshot; its lock also serialises writing the snapshot file.
    current: Arc<tokio::sync::Mutex<Option<StoredSnapshot>>>,
    snapshots_built: Arc<AtomicU64>,
}

fn sm_err(verb: ErrorVerb, e: impl Into<io::Error>) -> StorageError<NodeId> {
    StorageError::from_io_error(ErrorSubject::StateMachine, verb, e.into())
}

impl StateMachineStore {
    /// Opens the state machine in `dir`, starting from the last snapshot there if any.
    pub(crate) fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let path = dir.join(SNAPSHOT_FILE);
        let (applier, snapshot) = match fs::read(&path) {
            Ok(bytes) => {
                let file: SnapshotFile = serde_json::from_slice(&bytes).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: {e}", path.display()),
                    )
                })?;
                let image_bytes = serde_json::to_vec(&file.image)?;
                let applier = Applier {
                    state: MetadataState::from_image(file.image),
                    last_applied: file.meta.last_log_id,
                    membership: file.meta.last_membership.clone(),
                };
                (applier, Some((file.meta, image_bytes)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (
                Applier {
                    state: MetadataState::default(),
                    last_applied: None,
                    membership: StoredMembership::default(),
                },
                None,
            ),
            Err(e) => return Err(e),
        };
        let (version, _) = watch::channel(applier.state.image().version);
        Ok(Self {
            shared: SharedMetadata {
                inner: Arc::new(RwLock::new(applier)),
                version,
            },
            dir: dir.to_owned(),
            current: Arc::new(tokio::sync::Mutex::new(snapshot)),
            snapshots_built: Arc::default(),
        })
    }

    /// The handle services read through.
    pub(crate) fn shared(&self) -> SharedMetadata {
        self.shared.clone()
    }

    /// Makes `meta` the current snapshot and writes its file atomically, off the async
    /// threads, unless a newer one is current already.
    async fn persist(
        &self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        image_bytes: Vec<u8>,
    ) -> Result<(), StorageError<NodeId>> {
        let mut current = self.current.lock().await;
        if current
            .as_ref()
            .is_some_and(|(m, _)| m.last_log_id > meta.last_log_id)
        {
            return Ok(());
        }
        let image: MetadataImage =
            serde_json::from_slice(&image_bytes).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let file = SnapshotFile {
            meta: meta.clone(),
            image,
        };
        let bytes = serde_json::to_vec(&file).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || write_atomically(&dir, SNAPSHOT_FILE, &bytes))
            .await
            .map_err(|e| sm_err(ErrorVerb::Write, io::Error::other(e)))?
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        *current = Some((meta.clone(), image_bytes));
        Ok(())
    }
}

/// Writes `name` in `dir` through a temporary file, fsynced and renamed over the old one.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let (image_bytes, last_applied, membership) = {
            let a = self.shared.read();
            let bytes =
                serde_json::to_vec(a.state.image()).map_err(|e| sm_err(ErrorVerb::Write, e))?;
            (bytes, a.last_applied, a.membership.clone())
        };
        let n = self.snapshots_built.fetch_add(1, Ordering::Relaxed) + 1;
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{n}", l.leader_id.term, l.index),
            None => format!("0-0-{n}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        self.persist(&meta, image_bytes.clone()).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(image_bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        let a = self.shared.read();
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(
        &mut self,
        entries: I,
    ) -> Result<Vec<crate::command::CommandResult>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut results = Vec::new();
        let version = {
            let mut a = self.shared.write();
            for entry in entries {
                a.last_applied = Some(entry.log_id);
                let result = match entry.payload {
                    EntryPayload::Normal(command) => a.state.apply(&command),
                    EntryPayload::Membership(m) => {
                        a.membership = StoredMembership::new(Some(entry.log_id), m);
                        Ok(unchanged(&a.state))
                    }
                    EntryPayload::Blank => Ok(unchanged(&a.state)),
                };
                results.push(result);
            }
            a.state.image().version
        };
        self.shared.publish(version);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        Self {
            shared: self.shared.clone(),
            dir: self.dir.clone(),
            current: self.current.clone(),
            snapshots_built: self.snapshots_built.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
        let image: MetadataImage =
            serde_json::from_slice(&bytes).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        self.persist(meta, bytes).await?;
        let version = image.version;
        {
            let mut a = self.shared.write();
            a.state = MetadataState::from_image(image);
            a.last_applied = meta.last_log_id;
            a.membership = meta.last_membership.clone();
        }
        self.shared.publish(version);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(self
            .current
            .lock()
            .await
            .as_ref()
            .map(|(meta, bytes)| Snapshot {
                meta: meta.clone(),
                snapshot: Box::new(Cursor::new(bytes.clone())),
            }))
    }
}

fn unchanged(state: &MetadataState) -> Applied {
    Applied {
        version: state.image().version,
        outcome: Outcome::Unchanged,
    }
}
