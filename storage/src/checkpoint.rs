//! The per-log checkpoint file: the recovery point (everything below it was fsynced, so
//! recovery only validates from the segment holding it) and the log start offset.
//!
//! Written atomically (temporary file, fsync, rename, directory fsync). A missing or unreadable
//! checkpoint is not an error: recovery then validates every segment.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use crate::error::{IoContext, StorageError};

pub(crate) const FILE_NAME: &str = "log.checkpoint";
const TMP_NAME: &str = "log.checkpoint.tmp";
const HEADER: &str = "strata-log-checkpoint 1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Checkpoint {
    pub recovery_point: u64,
    pub log_start_offset: u64,
}

impl Checkpoint {
    fn encode(&self) -> String {
        format!(
            "{HEADER}\nrecovery_point {}\nlog_start_offset {}\n",
            self.recovery_point, self.log_start_offset
        )
    }

    fn decode(text: &str) -> Option<Self> {
        let mut lines = text.lines();
        if lines.next()? != HEADER {
            return None;
        }
        let mut field = |name: &str| -> Option<u64> {
            let (key, value) = lines.next()?.split_once(' ')?;
            (key == name).then(|| value.parse().ok()).flatten()
        };
        let recovery_point = field("recovery_point")?;
        let log_start_offset = field("log_start_offset")?;
        Some(Self {
            recovery_point,
            log_start_offset,
        })
    }

    /// Reads the checkpoint of the log in `dir`; `None` when absent or unreadable.
    pub fn read(dir: &Path) -> Option<Self> {
        let path = dir.join(FILE_NAME);
        let text = std::fs::read_to_string(&path).ok()?;
        let decoded = Self::decode(&text);
        if decoded.is_none() {
            tracing::warn!(path = %path.display(), "unreadable log checkpoint; recovering every segment");
        }
        decoded
    }

    pub fn write(&self, dir: &Path) -> Result<(), StorageError> {
        let tmp = dir.join(TMP_NAME);
        let mut file = File::create(&tmp).io_ctx("create", &tmp)?;
        file.write_all(self.encode().as_bytes())
            .io_ctx("write", &tmp)?;
        file.sync_all().io_ctx("fsync", &tmp)?;
        let path = dir.join(FILE_NAME);
        std::fs::rename(&tmp, &path).io_ctx("rename", &path)?;
        sync_dir(dir)
    }
}

/// Makes file creations, renames and deletions in `dir` durable. Failing to open the
/// directory (out of file descriptors, say) is reported as `open`, not `fsync`: nothing was
/// attempted, so nothing is in doubt.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    #[cfg(test)]
    tests::DIR_SYNCS.with(|n| n.set(n.get() + 1));
    File::open(dir)
        .io_ctx("open", dir)?
        .sync_all()
        .io_ctx("fsync", dir)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    thread_local! {
        /// Directory fsyncs started by this thread, for tests of when they happen.
        pub(crate) static DIR_SYNCS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    #[test]
    fn round_trips_and_rejects_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(Checkpoint::read(dir.path()), None);
        let cp = Checkpoint {
            recovery_point: 42,
            log_start_offset: 7,
        };
        cp.write(dir.path()).expect("write");
        assert_eq!(Checkpoint::read(dir.path()), Some(cp));
        std::fs::write(
            dir.path().join(FILE_NAME),
            "strata-log-checkpoint 1\nrecovery_point x\n",
        )
        .expect("write");
        assert_eq!(Checkpoint::read(dir.path()), None);
    }
}
