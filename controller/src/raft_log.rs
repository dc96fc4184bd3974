//! The Raft log and vote on the controller's local disk.
//!
//! One append-only file, `raft.log`, of records framed as `[len: u32 LE][crc32c: u32 LE][JSON]`.
//! A record is a log entry, a vote, a truncation (`since`) or a purge (`upto`); replaying the
//! records in order rebuilds the log, and a torn or corrupt tail (a write that never finished,
//! so was never acknowledged) is cut off on open. Every entry stays in memory until purged:
//! the metadata log is small because snapshots let it be purged.
//!
//! Writes go through one writer thread, which keeps their order and fsyncs each append before
//! telling openraft it is durable, so Raft can pipeline appends. When purged records make up
//! most of the file, it is rewritten with only the live records (written beside it, fsynced,
//! renamed over it).

// openraft's StorageError is large, and its storage traits return it; our helpers match them.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogId, RaftLogReader, StorageError,
    Vote,
};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::model::NodeId;
use crate::raft_types::TypeConfig;

const LOG_FILE: &str = "raft.log";
const FRAME_HEADER: usize = 8;
/// Rewrite the file once it exceeds this size and is mostly dead records.
const REWRITE_MIN_BYTES: u64 = 1 << 20;

#[derive(Serialize, Deserialize)]
enum Record {
    Entry(Entry<TypeConfig>),
    Vote(Vote<NodeId>),
    Truncate { since: u64 },
    Purge { upto: LogId<NodeId> },
}

fn frame(record: &Record, out: &mut Vec<u8>) -> Result<usize, serde_json::Error> {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    serde_json::to_writer(&mut *out, record)?;
    let payload = &out[start + FRAME_HEADER..];
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let crc = crc32c::crc32c(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(out.len() - start)
}

#[derive(Default)]
struct LogInner {
    /// Entries by index, with the size of their record in the file.
    entries: BTreeMap<u64, (Entry<TypeConfig>, usize)>,
    last_purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
    /// Bytes in the file, and bytes a rewrite would keep.
    file_bytes: u64,
    live_bytes: u64,
}

impl LogInner {
    fn apply(&mut self, record: Record, size: usize) {
        match record {
            Record::Entry(e) => {
                let index = e.get_log_id().index;
                self.truncate(index);
                self.live_bytes += size as u64;
                self.entries.insert(index, (e, size));
            }
            Record::Vote(v) => self.vote = Some(v),
            Record::Truncate { since } => self.truncate(since),
            Record::Purge { upto } => self.purge(upto),
        }
        self.file_bytes += size as u64;
    }

    fn truncate(&mut self, since: u64) {
        for (_, (_, size)) in self.entries.split_off(&since) {
            self.live_bytes -= size as u64;
        }
    }

    fn purge(&mut self, upto: LogId<NodeId>) {
        let keep = self.entries.split_off(&(upto.index + 1));
        for (_, (_, size)) in std::mem::replace(&mut self.entries, keep) {
            self.live_bytes -= size as u64;
        }
        if self.last_purged.is_none_or(|p| p < upto) {
            self.last_purged = Some(upto);
        }
    }

    /// The live records, framed: what a rewrite writes.
    fn live_records(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut out = Vec::with_capacity(usize::try_from(self.live_bytes).unwrap_or(0) + 256);
        if let Some(v) = &self.vote {
            frame(&Record::Vote(*v), &mut out)?;
        }
        if let Some(p) = self.last_purged {
            frame(&Record::Purge { upto: p }, &mut out)?;
        }
        for (e, _) in self.entries.values() {
            frame(&Record::Entry(e.clone()), &mut out)?;
        }
        Ok(out)
    }
}

enum WriteOp {
    /// Append bytes; fsync and report through `done` (an append callback or a waiter).
    Append { bytes: Vec<u8>, done: Done },
    /// Replace the file with these bytes.
    Rewrite { bytes: Vec<u8>, done: Done },
}

enum Done {
    Flushed(LogFlushed<TypeConfig>),
    Waiter(oneshot::Sender<io::Result<()>>),
    Nobody,
}

impl Done {
    fn report(self, result: io::Result<()>) {
        match self {
            Done::Flushed(cb) => cb.log_io_completed(result),
            Done::Waiter(tx) => {
                let _ = tx.send(result);
            }
            Done::Nobody => {
                if let Err(e) = result {
                    tracing::error!(error = %e, "raft log write failed");
                }
            }
        }
    }
}

struct Writer {
    dir: PathBuf,
    file: File,
    /// After a failed write the file's contents are unknown: refuse everything after.
    failed: bool,
}

impl Writer {
    fn run(mut self, ops: mpsc::Receiver<WriteOp>) {
        let mut next = None;
        loop {
            let op = match next.take() {
                Some(op) => op,
                None => match ops.recv() {
                    Ok(op) => op,
                    Err(_) => return,
                },
            };
            match op {
                WriteOp::Append { bytes, done } => {
                    // Group commit: every append already queued shares one fsync.
                    let mut batch = vec![done];
                    let mut result = self.write(&bytes);
                    while let Ok(op) = ops.try_recv() {
                        match op {
                            WriteOp::Append { bytes, done } => {
                                batch.push(done);
                                result = result.and_then(|()| self.write(&bytes));
                            }
                            other => {
                                next = Some(other);
                                break;
                            }
                        }
                    }
                    let result = result.and_then(|()| self.sync());
                    for done in batch {
                        done.report(clone_result(&result));
                    }
                }
                WriteOp::Rewrite { bytes, done } => {
                    let result = self.guarded(|w| w.rewrite(&bytes));
                    done.report(result);
                }
            }
        }
    }

    /// Runs `f` unless an earlier failure took the log offline; a failure takes it offline.
    fn guarded(&mut self, f: impl FnOnce(&mut Self) -> io::Result<()>) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other(
                "raft log is offline after an earlier write failure",
            ));
        }
        let result = f(self);
        self.failed = result.is_err();
        result
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.guarded(|w| w.file.write_all(bytes))
    }

    fn sync(&mut self) -> io::Result<()> {
        self.guarded(|w| w.file.sync_data())
    }

    fn rewrite(&mut self, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join(format!("{LOG_FILE}.rewrite"));
        {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, self.dir.join(LOG_FILE))?;
        File::open(&self.dir)?.sync_all()?;
        self.file = OpenOptions::new()
            .append(true)
            .open(self.dir.join(LOG_FILE))?;
        Ok(())
    }
}

fn clone_result(result: &io::Result<()>) -> io::Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
    }
}

/// openraft's log storage on local disk. Cloning shares the same log (readers use clones).
#[derive(Clone)]
pub(crate) struct RaftLogStore {
    inner: Arc<Mutex<LogInner>>,
    ops: mpsc::Sender<WriteOp>,
    _writer: Arc<WriterThread>,
}

/// Joins the writer thread when the last store handle is dropped.
/// (Field order matters: every store's sender is dropped before this runs, so the thread ends.)
struct WriterThread(Option<thread::JoinHandle<()>>);

impl Drop for WriterThread {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            let _ = h.join();
        }
    }
}

impl Debug for RaftLogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftLogStore").finish_non_exhaustive()
    }
}

fn io_err(verb: ErrorVerb, e: io::Error) -> StorageError<NodeId> {
    StorageError::from_io_error(ErrorSubject::Logs, verb, e)
}

fn codec_err(e: serde_json::Error) -> StorageError<NodeId> {
    io_err(ErrorVerb::Write, io::Error::other(e))
}

impl RaftLogStore {
    /// Opens (creating if needed) the log in `dir`, replaying it and cutting any torn tail.
    pub(crate) fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let path = dir.join(LOG_FILE);
        let mut bytes = Vec::new();
        if path.exists() {
            File::open(&path)?.read_to_end(&mut bytes)?;
        }
        let mut inner = LogInner::default();
        let mut pos = 0;
        while let Some((record, size)) = next_record(&bytes[pos..]) {
            inner.apply(record, size);
            pos += size;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        if pos < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                valid = pos,
                len = bytes.len(),
                "raft log has a torn or corrupt tail; cutting it"
            );
            file.set_len(pos as u64)?;
            file.sync_all()?;
        }
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            dir: dir.to_owned(),
            file,
            failed: false,
        };
        let handle = thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer.run(rx))?;
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
            ops: tx,
            _writer: Arc::new(WriterThread(Some(handle))),
        })
    }

    fn lock(&self) -> MutexGuard<'_, LogInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, op: WriteOp) -> Result<(), StorageError<NodeId>> {
        self.ops.send(op).map_err(|_| {
            io_err(
                ErrorVerb::Write,
                io::Error::other("raft log writer has stopped"),
            )
        })
    }

    /// Frames `records` and applies them in memory; the caller queues the bytes for the file.
    fn stage(
        &self,
        records: impl IntoIterator<Item = Record>,
    ) -> Result<Vec<u8>, StorageError<NodeId>> {
        let mut bytes = Vec::new();
        let mut inner = self.lock();
        for record in records {
            let size = frame(&record, &mut bytes).map_err(codec_err)?;
            inner.apply(record, size);
        }
        Ok(bytes)
    }

    fn write(&self, record: Record, done: Done) -> Result<(), StorageError<NodeId>> {
        let bytes = self.stage([record])?;
        self.send(WriteOp::Append { bytes, done })
    }

    async fn write_and_wait(&self, record: Record) -> Result<(), StorageError<NodeId>> {
        let (tx, rx) = oneshot::channel();
        self.write(record, Done::Waiter(tx))?;
        rx.await
            .map_err(|_| {
                io_err(
                    ErrorVerb::Write,
                    io::Error::other("raft log writer stopped"),
                )
            })?
            .map_err(|e| io_err(ErrorVerb::Write, e))
    }

    fn maybe_rewrite(&self) -> Result<(), StorageError<NodeId>> {
        let bytes = {
            let mut inner = self.lock();
            if inner.file_bytes < REWRITE_MIN_BYTES || inner.file_bytes < 2 * inner.live_bytes {
                return Ok(());
            }
            let bytes = inner.live_records().map_err(codec_err)?;
            inner.file_bytes = bytes.len() as u64;
            bytes
        };
        self.send(WriteOp::Rewrite {
            bytes,
            done: Done::Nobody,
        })
    }
}

/// The next whole, intact record at the start of `bytes`, with its framed size.
fn next_record(bytes: &[u8]) -> Option<(Record, usize)> {
    let header = bytes.get(..FRAME_HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    let payload = bytes.get(FRAME_HEADER..FRAME_HEADER.checked_add(len)?)?;
    if crc32c::crc32c(payload) != crc {
        return None;
    }
    let record = serde_json::from_slice(payload).ok()?;
    Some((record, FRAME_HEADER + len))
}

impl RaftLogReader<TypeConfig> for RaftLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let inner = self.lock();
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        if matches!(bounds, (Bound::Included(a), Bound::Excluded(b)) if a >= b) {
            return Ok(Vec::new());
        }
        Ok(inner
            .entries
            .range(bounds)
            .map(|(_, (e, _))| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for RaftLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let inner = self.lock();
        let last = inner
            .entries
            .values()
            .next_back()
            .map(|(e, _)| *e.get_log_id());
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: last.or(inner.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.write_and_wait(Record::Vote(*vote)).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let bytes = self.stage(entries.into_iter().map(Record::Entry))?;
        self.send(WriteOp::Append {
            bytes,
            done: Done::Flushed(callback),
        })
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        // Not waited for: a later durable append implies this record is durable too, and
        // losing it alone in a crash restores entries that a leader will truncate again.
        self.write(
            Record::Truncate {
                since: log_id.index,
            },
            Done::Nobody,
        )
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.write(Record::Purge { upto: log_id }, Done::Nobody)?;
        self.maybe_rewrite()
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::command::Command;

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(Command::DeleteTopic {
                name: format!("t{index}"),
            }),
        }
    }

    async fn append(store: &mut RaftLogStore, entries: Vec<Entry<TypeConfig>>) {
        let (tx, rx) = oneshot::channel();
        let bytes = store
            .stage(entries.into_iter().map(Record::Entry))
            .expect("stage");
        store
            .send(WriteOp::Append {
                bytes,
                done: Done::Waiter(tx),
            })
            .expect("send");
        rx.await.expect("writer").expect("append");
    }

    async fn indexes(store: &mut RaftLogStore) -> Vec<u64> {
        store
            .try_get_log_entries(..)
            .await
            .expect("read")
            .iter()
            .map(|e| e.log_id.index)
            .collect()
    }

    #[tokio::test]
    async fn reopen_replays_entries_votes_truncations_and_purges() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut s = RaftLogStore::open(dir.path()).expect("open");
            append(&mut s, (1..=10).map(|i| entry(1, i)).collect()).await;
            s.save_vote(&Vote::new(3, 2)).await.expect("vote");
            s.truncate(LogId::new(CommittedLeaderId::new(1, 1), 8))
                .await
                .expect("truncate");
            s.purge(LogId::new(CommittedLeaderId::new(1, 1), 3))
                .await
                .expect("purge");
            append(&mut s, vec![entry(3, 8)]).await;
        }
        let mut s = RaftLogStore::open(dir.path()).expect("reopen");
        assert_eq!(indexes(&mut s).await, vec![4, 5, 6, 7, 8]);
        assert_eq!(s.read_vote().await.expect("vote"), Some(Vote::new(3, 2)));
        let state = s.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(3));
        assert_eq!(
            state.last_log_id.map(|l| (l.leader_id.term, l.index)),
            Some((3, 8))
        );
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_and_the_rest_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut s = RaftLogStore::open(dir.path()).expect("open");
            append(&mut s, (1..=5).map(|i| entry(1, i)).collect()).await;
        }
        let path = dir.path().join(LOG_FILE);
        let len = fs::metadata(&path).expect("meta").len();
        for cut in [len - 1, len - 20] {
            let f = OpenOptions::new().write(true).open(&path).expect("open");
            f.set_len(cut).expect("cut");
            drop(f);
            let mut s = RaftLogStore::open(dir.path()).expect("reopen");
            assert_eq!(indexes(&mut s).await, vec![1, 2, 3, 4]);
            append(&mut s, vec![entry(2, 5)]).await;
            drop(s);
            let mut s = RaftLogStore::open(dir.path()).expect("reopen");
            assert_eq!(indexes(&mut s).await, vec![1, 2, 3, 4, 5]);
        }
    }

    #[tokio::test]
    async fn purging_most_of_a_large_log_rewrites_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(LOG_FILE);
        let mut s = RaftLogStore::open(dir.path()).expect("open");
        append(&mut s, (1..=20_000).map(|i| entry(1, i)).collect()).await;
        let before = fs::metadata(&path).expect("meta").len();
        assert!(before > REWRITE_MIN_BYTES);
        s.purge(LogId::new(CommittedLeaderId::new(1, 1), 19_990))
            .await
            .expect("purge");
        s.save_vote(&Vote::new(1, 1))
            .await
            .expect("vote (orders after the rewrite)");
        let after = fs::metadata(&path).expect("meta").len();
        assert!(after < before / 100, "{before} -> {after}");
        drop(s);
        let mut s = RaftLogStore::open(dir.path()).expect("reopen");
        assert_eq!(indexes(&mut s).await, (19_991..=20_000).collect::<Vec<_>>());
    }
}
