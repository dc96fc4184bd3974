//! Opening a hosted partition: its directory, log, producer table and leader epochs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use strata_controller::model::TopicRecord;
use strata_storage::Log;
use strata_storage::tier::manifest::PartitionObjects;
use tokio::sync::watch;

use super::remote::RemoteView;
use super::replicas::Replicas;
use super::role::Role;
use super::{Assignment, Partition};
use crate::epochs::EpochCache;
use crate::error::BrokerError;
use crate::producer::{self, ProducerTable};
use crate::topic::TopicSettings;
use uuid::Uuid;

/// File in a partition directory naming the topic id it belongs to.
const PARTITION_METADATA: &str = "partition.metadata";

impl Partition {
    /// Opens partition `index` of `topic` under `log_dir` on broker `broker`, as `role`. A
    /// tiered one starts recovering: appends wait until its manifest has been read.
    pub(super) fn open(
        log_dir: &Path,
        topic: &TopicRecord,
        index: i32,
        broker: i32,
        role: Role,
        assignment: Assignment,
        objects: PartitionObjects,
    ) -> Result<Arc<Self>, BrokerError> {
        let settings = TopicSettings::of(topic);
        let dir = log_dir.join(format!("{}-{index}", topic.name));
        claim_dir(&dir, topic.id)?;
        let log = Log::open(&dir, settings.log.clone())?;
        let end = log.log_end_offset();
        let saved = super::saved_high_watermark(&dir);
        let (producers, _) = rebuild_producers(&log, settings.remote)?;
        let epochs = EpochCache::open(&dir, &log).map_err(|source| BrokerError::Io {
            op: "opening leader epochs",
            path: dir.clone(),
            source,
        })?;
        let remote = RemoteView::new(objects);
        if settings.remote {
            remote.await_recovery();
        } else {
            remote.mark_local_only();
        }
        Ok(Arc::new(Self {
            topic_id: topic.id,
            topic: topic.name.clone(),
            index,
            log: Arc::new(log),
            end: watch::channel(end).0,
            // Never above the recovered end; without a saved value (a first start, or a
            // partition from before it was saved) the log end, as with one replica.
            high_watermark: watch::channel(saved.map_or(end, |hw| hw.min(end))).0,
            saved_high_watermark: std::sync::atomic::AtomicU64::new(saved.unwrap_or(u64::MAX)),
            broker,
            assignment: RwLock::new(assignment),
            replicas: Mutex::new(Replicas::default()),
            producers: Mutex::new(producers),
            producer_snapshots: Mutex::new(()),
            epochs: Mutex::new(epochs),
            remote,
            settings: RwLock::new(Arc::new(settings)),
            role: RwLock::new(role),
        }))
    }
}

/// Idempotent producers' recent batches, so a producer retrying across a broker restart
/// still gets its original offsets: the table saved in the partition directory, brought up to
/// date from the batches after it. Without a usable snapshot (a first start, or a crash that
/// cut the log below it) the last two segments are read instead; producers idle for longer
/// are unknown, and as in Kafka an unknown producer may carry on from any sequence. Returns
/// the table and the offset of the snapshot it started from, if any.
pub(super) fn rebuild_producers(
    log: &Log,
    tiered: bool,
) -> Result<(ProducerTable, Option<u64>), BrokerError> {
    let end = log.log_end_offset();
    let loaded = ProducerTable::load(log.dir(), end);
    let snapshot = loaded.as_ref().map(|(_, offset)| *offset);
    let (mut table, from) = match loaded {
        Some((table, offset)) => (table, offset),
        None => {
            let segments = log.segments();
            let from = segments
                .iter()
                .rev()
                .nth(1)
                .or(segments.first())
                .map_or(log.log_start_offset(), |s| s.base_offset);
            (ProducerTable::default(), from)
        }
    };
    let mut offset = from.max(log.log_start_offset());
    // The replay records the aborts from here on again.
    log.truncate_aborted(offset)?;
    while offset < end {
        let bytes = log.read(offset, 1 << 20)?;
        let batches: Vec<_> = producer::batches(&bytes).collect();
        let Some((last, _)) = batches.last().copied() else {
            break;
        };
        for (h, batch) in &batches {
            producer::replay(&mut table, log, tiered, h, batch)?;
        }
        offset =
            u64::try_from(last.base_offset + i64::from(last.last_offset_delta) + 1).unwrap_or(end);
    }
    Ok((table, snapshot))
}

/// Makes `dir` belong to topic `id`: a directory left by a deleted topic of the same name (or
/// without a topic id at all) is removed first.
fn claim_dir(dir: &Path, id: Uuid) -> Result<(), BrokerError> {
    let meta = dir.join(PARTITION_METADATA);
    let io = |op, path: PathBuf| move |source| BrokerError::Io { op, path, source };
    match std::fs::read_to_string(&meta) {
        Ok(s) if s.trim() == id.to_string() => return Ok(()),
        Ok(_) => remove_dir(dir)?,
        // Every partition directory gets its metadata file before any segment, so one without
        // it is a leftover (a deletion cut short by a crash): never adopt its segments.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => remove_dir(dir)?,
        Err(e) => return Err(io("reading", meta.clone())(e)),
    }
    std::fs::create_dir_all(dir).map_err(io("creating", dir.to_owned()))?;
    std::fs::write(&meta, format!("{id}\n")).map_err(io("writing", meta.clone()))
}

pub(super) fn remove_dir(dir: &Path) -> Result<(), BrokerError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BrokerError::Io {
            op: "removing",
            path: dir.to_owned(),
            source,
        }),
    }
}
