//! Reads of a partition, wherever its data lives: the local log for the tail, object storage
//! (through the read cache) for what the local log no longer holds. Fetch and ListOffsets ask
//! the partition; it decides.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use strata_storage::tier::manifest::Manifest;
use strata_storage::tier::read::{RemoteBatches, RemoteReader};
use strata_storage::{AbortedTxn, FileRange, StorageError};

use super::Partition;
use crate::protocol::storage_error_code;

/// A read begun by [`Partition::read`]: done (the local log had the data), or still to fetch
/// from object storage.
#[derive(Debug)]
pub(crate) struct Read(Source);

#[derive(Debug)]
enum Source {
    Ready(Records),
    Remote {
        part: Arc<Partition>,
        manifest: Arc<Manifest>,
        offset: u64,
        limit: usize,
    },
}

/// A partition's records for a response: read into memory, ranges of its segment files for
/// a connection that sends them from the file, or slices of the remote read cache's chunks.
#[derive(Debug)]
pub(crate) enum Records {
    Bytes(Bytes),
    Files(Vec<FileRange>),
    Remote(RemoteBatches),
}

impl Records {
    /// Their size in bytes.
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Bytes(b) => b.len(),
            Self::Files(f) => f.iter().map(|r| r.len as usize).sum(),
            Self::Remote(r) => r.len(),
        }
    }

    /// How many records they hold, for `/metrics`: counted from the batch headers in memory;
    /// for ranges, the offsets they span (the same but for a compacted log's gaps).
    pub(crate) fn count(&self) -> u64 {
        match self {
            Self::Bytes(b) => {
                let mut count = 0u64;
                let mut at = 0;
                while let Some(h) = b.get(at..).and_then(strata_storage::BatchHeader::parse) {
                    count += u64::try_from(h.records_count).unwrap_or(0);
                    at += h.total_len();
                }
                count
            }
            Self::Files(f) => f.iter().map(|r| r.offsets).sum(),
            Self::Remote(r) => r.records,
        }
    }
}

impl Read {
    /// At most how many bytes it returns: exact once done, its limit while remote.
    pub(crate) fn size_bound(&self) -> usize {
        match &self.0 {
            Source::Ready(r) => r.len(),
            Source::Remote { limit, .. } => *limit,
        }
    }

    /// Its records, fetching them from object storage if need be.
    pub(crate) async fn records(self, reader: &RemoteReader) -> Result<Records, ResponseError> {
        match self.0 {
            Source::Ready(records) => Ok(records),
            Source::Remote {
                part,
                manifest,
                offset,
                limit,
            } => reader
                .read(&part.remote.objects, &manifest, offset, limit)
                .await
                .map(Records::Remote)
                .map_err(|e| {
                    tracing::warn!(topic = %part.topic, partition = part.index, offset,
                        error = %e, "remote read failed");
                    ResponseError::KafkaStorageError
                }),
        }
    }
}

/// The whole batches of `bytes` that start below `upto` (batches never straddle a high
/// watermark: replicas copy whole batches).
fn below(bytes: Bytes, upto: u64) -> Bytes {
    let mut at = 0;
    while let Some(h) = strata_storage::BatchHeader::parse(&bytes[at..]) {
        if u64::try_from(h.base_offset).map_or(true, |b| b >= upto) {
            break;
        }
        at += h.total_len();
    }
    if at == bytes.len() {
        bytes
    } else {
        bytes.slice(..at)
    }
}

impl Partition {
    /// Begins a read of up to `limit` bytes of batches from `offset` that start below
    /// `upto` (the high watermark for consumers, the log end for followers): from the local
    /// log when it holds the offset, else from the object store when a manifest covers it.
    /// With `files`, local batches in the page cache are answered as ranges of the segment
    /// files, for a connection that sends them from there.
    /// Blocking (a local read touches the disk): call it off the async threads.
    pub(crate) fn read(
        self: &Arc<Self>,
        offset: u64,
        limit: usize,
        upto: u64,
        files: bool,
    ) -> Result<Read, ResponseError> {
        let log = &self.log;
        let end = log.log_end_offset();
        if offset >= upto && offset <= end {
            return Ok(Read(Source::Ready(Records::Bytes(Bytes::new()))));
        }
        // Locally first: local eviction only follows a published manifest, so an offset the
        // local log no longer has is found remotely.
        let local = if offset >= log.log_start_offset() {
            match files.then(|| log.read_ranges(offset, limit, upto)) {
                Some(Ok(Some(ranges))) => Ok(Records::Files(ranges)),
                Some(Err(e)) => Err(e),
                None | Some(Ok(None)) => log
                    .read(offset, limit)
                    .map(|b| Records::Bytes(below(b, upto))),
            }
        } else {
            Err(StorageError::OffsetOutOfRange {
                offset,
                log_start: log.log_start_offset(),
                log_end: end,
            })
        };
        match local {
            Ok(records) => Ok(Read(Source::Ready(records))),
            Err(StorageError::OffsetOutOfRange { .. }) if offset < end => {
                match self.remote.manifest() {
                    // The manifest is not read yet: retriable.
                    None => Err(ResponseError::KafkaStorageError),
                    Some(m) if offset >= m.log_start_offset && offset < m.end_offset() => {
                        Ok(Read(Source::Remote {
                            part: self.clone(),
                            manifest: m,
                            offset,
                            limit,
                        }))
                    }
                    Some(_) => Err(ResponseError::OffsetOutOfRange),
                }
            }
            Err(e) => Err(storage_error_code(&e)),
        }
    }

    /// The transactions aborted whose records may lie in `[from, upto)`: from the remote
    /// segments' indexes for what the local log no longer holds, then the local ones (a
    /// segment both local and remote names its aborts once).
    pub(crate) async fn aborted_txns(
        self: &Arc<Self>,
        reader: &RemoteReader,
        from: u64,
        upto: u64,
    ) -> Result<Vec<AbortedTxn>, ResponseError> {
        let local_start = self.log.log_start_offset();
        let mut out = Vec::new();
        if from < local_start
            && let Some(m) = self.remote.manifest()
        {
            out = reader
                .aborted_txns(&self.remote.objects, &m, from, upto)
                .await
                .map_err(|e| {
                    tracing::warn!(topic = %self.topic, partition = self.index, from,
                        error = %e, "reading remote aborted transactions failed");
                    ResponseError::KafkaStorageError
                })?;
        }
        if !self.log.has_aborted() {
            // The common case, checked without touching the disk.
            return Ok(out);
        }
        let log = self.log.clone();
        let local =
            tokio::task::spawn_blocking(move || log.aborted_txns(from.max(local_start), upto))
                .await
                .map_err(|_| ResponseError::UnknownServerError)?
                .map_err(|e| storage_error_code(&e))?;
        for a in local {
            if !out.contains(&a) {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// ListOffsets: the offset (and its record's timestamp) for `timestamp`, one of Kafka's
    /// specials: -1 latest, -2 earliest, -3 the record with the largest timestamp, -4 earliest
    /// local, -5 the last offset in object storage (KIP-1005; -1 when nothing is there);
    /// otherwise the first offset with a timestamp at or after it. Object storage is
    /// consulted only for data the local log no longer holds.
    pub(crate) async fn offset_for_time(
        self: &Arc<Self>,
        reader: &RemoteReader,
        timestamp: i64,
    ) -> Result<Option<(i64, i64)>, ResponseError> {
        let log = self.log.clone();
        let local_start = log.log_start_offset();
        let only_remote = self
            .remote
            .manifest()
            .filter(|m| m.log_start_offset < local_start && !m.segments.is_empty());
        let remote = |ts: i64| {
            let manifest = only_remote.clone();
            async move {
                let Some(m) = manifest else { return Ok(None) };
                reader
                    .record_for_timestamp(&self.remote.objects, &m, ts)
                    .await
                    .map(|found| {
                        found.filter(|(off, _)| *off < local_start.max(m.log_start_offset))
                    })
                    .map_err(|e| {
                        tracing::warn!(topic = %self.topic, partition = self.index, error = %e,
                            "remote time lookup failed");
                        ResponseError::KafkaStorageError
                    })
            }
        };
        let local = move |ts: i64| {
            let log = log.clone();
            async move {
                tokio::task::spawn_blocking(move || match ts {
                    -3 => log.max_timestamp().map(|m| m.map(|(ts, off)| (off, ts))),
                    t => log.record_for_timestamp(t),
                })
                .await
                .map_err(|_| ResponseError::UnknownServerError)?
                .map_err(|e| storage_error_code(&e))
            }
        };
        let as_answer = |found: Option<(u64, i64)>| found.map(|(off, ts)| (off as i64, ts));
        Ok(match timestamp {
            // A consumer's "latest" is the high watermark (Kafka's read_uncommitted).
            -1 => Some((*self.high_watermark.borrow() as i64, -1)),
            -2 => Some((self.log_start_offset() as i64, -1)),
            -4 => Some((local_start as i64, -1)),
            -5 => Some((
                self.remote
                    .manifest()
                    .filter(|m| !m.segments.is_empty())
                    .map_or(-1, |m| m.end_offset() as i64 - 1),
                -1,
            )),
            -3 => {
                let local = local(-3).await?;
                let remote_max = only_remote
                    .as_ref()
                    .and_then(|m| m.segments.iter().map(|s| s.max_timestamp).max())
                    .filter(|ts| local.is_none_or(|(_, l)| *ts > l));
                match remote_max {
                    Some(ts) => as_answer(remote(ts).await?.or(local)),
                    None => as_answer(local),
                }
            }
            // The first record at or after `t`, with its own timestamp (as Kafka answers).
            t if t >= 0 => match remote(t).await? {
                Some(found) => as_answer(Some(found)),
                None => as_answer(local(t).await?),
            },
            _ => return Err(ResponseError::InvalidRequest),
        })
    }
}
