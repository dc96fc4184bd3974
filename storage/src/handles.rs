//! The segment files a process keeps open.
//!
//! A partition's active segment keeps its log file open: every append writes it. A sealed
//! segment's log file is opened when something reads it and kept in one bounded cache of
//! handles shared by every log in the process, closed again when the cache needs the room
//! (readers still holding it keep their descriptor until they are done). Index files are
//! opened only to be written or fsynced. So the descriptors a broker holds grow with its
//! partitions, one each, plus this cache: not with the segments they keep, which is what let
//! a few thousand partitions take every descriptor a process may have.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use foyer::{Cache, CacheBuilder};

use crate::error::{IoContext, StorageError};

/// Sealed segments' log files kept open at once, unless [`set_open_sealed_limit`] says
/// otherwise.
pub const DEFAULT_OPEN_SEALED: usize = 1024;

/// The bound the cache is built with (set before its first use) or was last resized to.
static LIMIT: AtomicUsize = AtomicUsize::new(DEFAULT_OPEN_SEALED);
/// Every handle gets its own key: a segment deleted and created again under the same name
/// (a truncated log) must never find the old file's descriptor.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn cache() -> &'static Cache<u64, Arc<File>> {
    static CACHE: OnceLock<Cache<u64, Arc<File>>> = OnceLock::new();
    CACHE.get_or_init(|| {
        CacheBuilder::new(LIMIT.load(Ordering::Relaxed))
            .with_shards(4)
            .build()
    })
}

/// Sets how many sealed segments' log files the process keeps open at most (at least one).
pub fn set_open_sealed_limit(limit: usize) -> Result<(), StorageError> {
    let limit = limit.max(1);
    if LIMIT.swap(limit, Ordering::Relaxed) == limit {
        return Ok(());
    }
    cache().resize(limit).map_err(|e| StorageError::Config {
        key: "open_sealed_segments",
        reason: e.to_string(),
    })
}

/// How many sealed segments' log files the process keeps open at most.
pub fn open_sealed_limit() -> usize {
    LIMIT.load(Ordering::Relaxed)
}

/// One segment's log file: held open while pinned (the active segment), otherwise opened on
/// demand through the process's cache.
#[derive(Debug)]
pub(crate) struct Handle {
    id: u64,
    path: Arc<Path>,
    pinned: Option<Arc<File>>,
}

impl Handle {
    /// Opens `path` for reading and writing, pinned; `create` makes it when missing and
    /// `truncate` empties it.
    pub fn open(path: Arc<Path>, create: bool, truncate: bool) -> Result<Self, StorageError> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(create)
            .truncate(truncate)
            .open(&path)
            .io_ctx("open", &path)?;
        Ok(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            path,
            pinned: Some(Arc::new(file)),
        })
    }

    /// The open file: the pinned one, the cache's, or opened again now.
    pub fn file(&self) -> Result<Arc<File>, StorageError> {
        if let Some(file) = &self.pinned {
            return Ok(Arc::clone(file));
        }
        let cache = cache();
        if let Some(entry) = cache.get(&self.id) {
            return Ok(Arc::clone(entry.value()));
        }
        let file = File::options()
            .read(true)
            .write(true)
            .open(&self.path)
            .io_ctx("open", &self.path)?;
        let file = Arc::new(file);
        cache.insert(self.id, Arc::clone(&file));
        Ok(file)
    }

    /// Whether the handle keeps its file open itself (not through the cache).
    pub fn pinned(&self) -> bool {
        self.pinned.is_some()
    }

    /// Keeps the file open for as long as the handle lives (a segment taking appends).
    pub fn pin(&mut self) -> Result<(), StorageError> {
        if self.pinned.is_none() {
            self.pinned = Some(self.file()?);
            cache().remove(&self.id);
        }
        Ok(())
    }

    /// Lets the cache close the file when it needs the room (a sealed segment); it stays
    /// open until then, as the most recently used.
    pub fn unpin(&mut self) {
        if let Some(file) = self.pinned.take() {
            cache().insert(self.id, file);
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if self.pinned.is_none() {
            cache().remove(&self.id);
        }
    }
}
