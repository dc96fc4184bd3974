//! A partition's leader-epoch history: the first offset written under each leader epoch, so
//! OffsetForLeaderEpoch can tell a consumer (or, later, a follower) where an epoch ended.
//!
//! Persisted as Kafka's `leader-epoch-checkpoint` text file (a version line `0`, a count, then
//! `epoch start-offset` lines), rewritten atomically when a new epoch first appends. When the
//! file is missing for a non-empty log, it is rebuilt once by reading the batch headers.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use strata_storage::Log;

use crate::producer;

const FILE: &str = "leader-epoch-checkpoint";

/// Epoch start offsets, in increasing epoch and offset order.
#[derive(Debug)]
pub(crate) struct EpochCache {
    path: PathBuf,
    entries: Vec<(i32, u64)>,
}

impl EpochCache {
    /// Loads (or rebuilds) the history of `log` in `dir`, dropping entries at or past its end.
    pub(crate) fn open(dir: &Path, log: &Log) -> io::Result<Self> {
        let path = dir.join(FILE);
        let end = log.log_end_offset();
        let mut entries = match fs::read_to_string(&path) {
            Ok(text) => parse(&text).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: malformed", path.display()),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => rebuild(log)?,
            Err(e) => return Err(e),
        };
        let before = entries.len();
        entries.retain(|(_, start)| *start < end);
        let cache = Self { path, entries };
        // Written only when it changed (or was rebuilt): opening thousands of partitions
        // costs no fsync each.
        if cache.entries.len() != before || (!cache.path.exists() && !cache.entries.is_empty()) {
            cache.persist()?;
        }
        Ok(cache)
    }

    /// A history that is never written to disk, for tests.
    #[cfg(test)]
    pub(crate) fn in_memory(entries: Vec<(i32, u64)>) -> Self {
        Self {
            path: PathBuf::new(),
            entries,
        }
    }

    /// The latest epoch that wrote to the log.
    pub(crate) fn latest(&self) -> Option<i32> {
        self.entries.last().map(|(e, _)| *e)
    }

    /// Records that `epoch` first wrote at `start`. An entry that would break the order (an
    /// earlier epoch starting at or past `start`) describes history this log no longer has,
    /// and goes (as Kafka's cache drops conflicting entries).
    pub(crate) fn assign(&mut self, epoch: i32, start: u64) -> io::Result<()> {
        if self.latest().is_some_and(|l| l >= epoch) {
            return Ok(());
        }
        self.entries.retain(|(_, s)| *s < start);
        self.entries.push((epoch, start));
        self.persist()
    }

    /// Replaces the whole history (the log was restarted elsewhere: `entries` is what is known
    /// of the new one, in increasing epoch and offset order).
    pub(crate) fn replace(&mut self, entries: Vec<(i32, u64)>) -> io::Result<()> {
        self.entries = entries;
        self.persist()
    }

    /// Forgets epochs that started at or after `end` (the log was truncated there).
    pub(crate) fn truncate(&mut self, end: u64) -> io::Result<()> {
        let before = self.entries.len();
        self.entries.retain(|(_, start)| *start < end);
        if self.entries.len() == before {
            return Ok(());
        }
        self.persist()
    }

    /// Kafka's answer to "where did `requested` end": the largest epoch at or below it and the
    /// start of the next epoch (or `end` for the current one); `(-1, -1)` when the log has
    /// nothing from that epoch or earlier.
    pub(crate) fn end_offset_for(&self, requested: i32, current: i32, end: u64) -> (i32, i64) {
        if requested == current {
            return (requested, end as i64);
        }
        let Some(i) = self.entries.iter().rposition(|(e, _)| *e <= requested) else {
            return (-1, -1);
        };
        let next = self.entries.get(i + 1).map_or(end, |(_, start)| *start);
        (self.entries[i].0, next as i64)
    }

    fn persist(&self) -> io::Result<()> {
        let mut text = format!("0\n{}\n", self.entries.len());
        for (e, s) in &self.entries {
            text.push_str(&format!("{e} {s}\n"));
        }
        let tmp = self.path.with_extension("tmp");
        let mut f = fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &self.path)
    }
}

fn parse(text: &str) -> Option<Vec<(i32, u64)>> {
    let mut lines = text.lines();
    if lines.next()?.trim() != "0" {
        return None;
    }
    let count: usize = lines.next()?.trim().parse().ok()?;
    let entries: Vec<(i32, u64)> = lines
        .take(count)
        .map(|l| {
            let (e, s) = l.trim().split_once(' ')?;
            Some((e.parse().ok()?, s.parse().ok()?))
        })
        .collect::<Option<_>>()?;
    (entries.len() == count).then_some(entries)
}

/// Reads every batch header of `log` for the epochs stamped on them.
fn rebuild(log: &Log) -> io::Result<Vec<(i32, u64)>> {
    let mut entries: Vec<(i32, u64)> = Vec::new();
    let end = log.log_end_offset();
    let mut offset = log.log_start_offset();
    while offset < end {
        let bytes = log.read(offset, 1 << 20).map_err(io::Error::other)?;
        let headers = producer::headers(&bytes);
        let Some(last) = headers.last() else { break };
        for h in &headers {
            let start = u64::try_from(h.base_offset).unwrap_or(0);
            if entries
                .last()
                .is_none_or(|(e, _)| h.partition_leader_epoch > *e)
            {
                entries.push((h.partition_leader_epoch, start));
            }
        }
        offset =
            u64::try_from(last.base_offset + i64::from(last.last_offset_delta) + 1).unwrap_or(end);
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_offsets_follow_kafka() {
        let c = EpochCache {
            path: PathBuf::new(),
            entries: vec![(0, 0), (2, 10), (5, 30)],
        };
        assert_eq!(
            c.end_offset_for(5, 5, 42),
            (5, 42),
            "current epoch ends at the log end"
        );
        assert_eq!(c.end_offset_for(0, 5, 42), (0, 10));
        assert_eq!(
            c.end_offset_for(1, 5, 42),
            (0, 10),
            "an epoch that never wrote"
        );
        assert_eq!(c.end_offset_for(3, 5, 42), (2, 30));
        assert_eq!(c.end_offset_for(7, 7, 42), (7, 42));
        let empty = EpochCache {
            path: PathBuf::new(),
            entries: vec![(4, 0)],
        };
        assert_eq!(empty.end_offset_for(2, 4, 9), (-1, -1));
    }

    #[test]
    fn an_epoch_that_starts_below_the_recorded_history_replaces_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = EpochCache {
            path: dir.path().join(FILE),
            entries: vec![(0, 0), (2, 5540)],
        };
        c.assign(1, 100).expect("assign");
        assert_eq!(
            c.entries,
            vec![(0, 0), (2, 5540)],
            "an older epoch adds nothing"
        );
        c.assign(3, 0).expect("assign");
        assert_eq!(c.entries, vec![(3, 0)]);
        c.assign(4, 10_372).expect("assign");
        assert_eq!(c.entries, vec![(3, 0), (4, 10_372)]);
        c.replace(vec![(5, 9_137)]).expect("replace");
        let text = fs::read_to_string(dir.path().join(FILE)).expect("persisted");
        assert_eq!(parse(&text), Some(vec![(5, 9_137)]));
    }

    #[test]
    fn the_file_round_trips() {
        assert_eq!(parse("0\n2\n0 0\n3 17\n"), Some(vec![(0, 0), (3, 17)]));
        assert_eq!(parse("0\n3\n0 0\n"), None);
        assert_eq!(parse("1\n0\n"), None);
    }
}
