//! Group state in the `__consumer_offsets` topic: one record per committed offset and one per
//! group's membership, keyed so the newest record for a key wins and a null value deletes it.
//!
//! Keys and values are JSON (documented in docs/architecture.md), written as ordinary v2
//! batches through the partition log, so they are flushed, recovered — and, with tiering,
//! uploaded and restored — like any other data.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;
use serde::{Deserialize, Serialize};
use strata_storage::{BatchBuilder, BatchHeader, Log, Record, StorageError};

use super::machine::GroupSnapshot;

/// The internal topic.
pub(crate) const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// The `__consumer_offsets` partition holding `group` (Kafka's choice: Java's
/// `String.hashCode`, absolute value with `MIN_VALUE` as 0, modulo the partition count).
pub(crate) fn partition_for(group: &str, partitions: i32) -> i32 {
    let mut h: i32 = 0;
    for unit in group.encode_utf16() {
        h = h.wrapping_mul(31).wrapping_add(i32::from(unit));
    }
    let abs = if h == i32::MIN { 0 } else { h.abs() };
    abs % partitions.max(1)
}

/// A committed offset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Committed {
    pub(crate) offset: i64,
    pub(crate) leader_epoch: i32,
    pub(crate) metadata: Option<String>,
    pub(crate) commit_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Key {
    Offset {
        group: String,
        topic: String,
        partition: i32,
    },
    Group {
        group: String,
    },
}

/// One change to persist.
#[derive(Clone, Debug)]
pub(crate) enum Write {
    Offset {
        group: String,
        topic: String,
        partition: i32,
        value: Option<Committed>,
    },
    Group {
        group: String,
        value: Option<GroupSnapshot>,
    },
}

/// What a partition of the offsets topic holds.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub(crate) offsets: BTreeMap<String, BTreeMap<(String, i32), Committed>>,
    pub(crate) groups: BTreeMap<String, GroupSnapshot>,
}

fn encode(w: &Write) -> Result<(Vec<u8>, Option<Vec<u8>>), serde_json::Error> {
    Ok(match w {
        Write::Offset {
            group,
            topic,
            partition,
            value,
        } => (
            serde_json::to_vec(&Key::Offset {
                group: group.clone(),
                topic: topic.clone(),
                partition: *partition,
            })?,
            value.as_ref().map(serde_json::to_vec).transpose()?,
        ),
        Write::Group { group, value } => (
            serde_json::to_vec(&Key::Group {
                group: group.clone(),
            })?,
            value.as_ref().map(serde_json::to_vec).transpose()?,
        ),
    })
}

/// Appends `writes` as one batch and waits until it is durable.
pub(crate) fn append(
    log: &Log,
    leader_epoch: i32,
    writes: &[Write],
    now_ms: i64,
) -> Result<(), StorageError> {
    if writes.is_empty() {
        return Ok(());
    }
    let mut batch = BatchBuilder::new();
    for w in writes {
        let (key, value) = encode(w).map_err(|e| StorageError::Io {
            op: "encoding group record",
            path: log.dir().to_owned(),
            source: std::io::Error::other(e),
        })?;
        batch = batch.record(Record {
            key: Some(key),
            value,
            headers: Vec::new(),
            timestamp: now_ms,
        });
    }
    let mut bytes = batch.build();
    let info = log.append(&mut bytes, leader_epoch)?;
    log.sync_through(info.last_offset + 1)
}

/// Replays a whole partition of the offsets topic, batch by batch. The coordinator writes
/// only uncompressed batches, and clients cannot produce here; a batch that is compressed
/// anyway (nothing decompresses it, so it cannot be a decompression bomb) or that does not
/// decode is skipped with a warning, and the load carries on after it.
pub(crate) fn load(log: &Log) -> Result<Loaded, StorageError> {
    let mut loaded = Loaded::default();
    let end = log.log_end_offset();
    let mut offset = log.log_start_offset();
    while offset < end {
        let bytes = log.read(offset, 4 << 20)?;
        let next = load_batches(&mut loaded, &bytes, log.dir());
        if next.is_none_or(|n| n <= offset) {
            break;
        }
        offset = next.unwrap_or(end);
    }
    Ok(loaded)
}

/// Replays raw batches, as read from a log (the fuzz target's entry).
pub(crate) fn load_bytes(bytes: &[u8]) -> Loaded {
    let mut loaded = Loaded::default();
    load_batches(
        &mut loaded,
        &Bytes::copy_from_slice(bytes),
        Path::new("fuzz"),
    );
    loaded
}

/// Applies the whole batches at the start of `bytes`; returns the offset after the last.
fn load_batches(loaded: &mut Loaded, bytes: &Bytes, dir: &Path) -> Option<u64> {
    let mut pos = 0;
    let mut next = None;
    while let Some(h) = bytes.get(pos..).and_then(BatchHeader::parse) {
        let Some(len) = Some(h.total_len()).filter(|l| pos + l <= bytes.len()) else {
            break;
        };
        let batch = bytes.slice(pos..pos + len);
        pos += len;
        next = u64::try_from(h.last_offset().saturating_add(1))
            .ok()
            .max(next);
        if h.compression() != 0 {
            tracing::warn!(dir = %dir.display(), base_offset = h.base_offset,
                "skipping a compressed batch the group coordinator did not write");
            continue;
        }
        match RecordBatchDecoder::decode_all(&mut batch.clone()) {
            Ok(sets) => {
                for r in sets.into_iter().flat_map(|s| s.records) {
                    let Some(key) = r
                        .key
                        .as_ref()
                        .and_then(|k| serde_json::from_slice::<Key>(k).ok())
                    else {
                        continue;
                    };
                    apply(loaded, key, r.value.as_deref());
                }
            }
            Err(e) => tracing::warn!(dir = %dir.display(), base_offset = h.base_offset,
                error = %e, "skipping an unreadable batch of group records"),
        }
    }
    next
}

fn apply(loaded: &mut Loaded, key: Key, value: Option<&[u8]>) {
    match key {
        Key::Offset {
            group,
            topic,
            partition,
        } => {
            let offsets = loaded.offsets.entry(group).or_default();
            match value.and_then(|v| serde_json::from_slice::<Committed>(v).ok()) {
                Some(c) => {
                    offsets.insert((topic, partition), c);
                }
                None => {
                    offsets.remove(&(topic, partition));
                }
            }
        }
        Key::Group { group } => match value.and_then(|v| serde_json::from_slice(v).ok()) {
            Some(s) => {
                loaded.groups.insert(group, s);
            }
            None => {
                loaded.groups.remove(&group);
                loaded.offsets.remove(&group);
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_match_kafka() {
        // Java: "my-group".hashCode() == -1906497762, so Utils.abs(..) % 50 == 12.
        assert_eq!(partition_for("my-group", 50), 12);
        assert_eq!(partition_for("", 50), 0);
    }

    #[test]
    fn records_round_trip_through_a_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Log::open(dir.path(), strata_storage::LogConfig::default()).expect("open");
        let c = |offset| Committed {
            offset,
            leader_epoch: 0,
            metadata: None,
            commit_ms: 1,
        };
        let write = |group: &str, p, v: Option<Committed>| Write::Offset {
            group: group.into(),
            topic: "t".into(),
            partition: p,
            value: v,
        };
        append(
            &log,
            0,
            &[write("g", 0, Some(c(5))), write("g", 1, Some(c(7)))],
            1,
        )
        .expect("append");
        append(
            &log,
            0,
            &[write("g", 0, Some(c(9))), write("g", 1, None)],
            2,
        )
        .expect("append");
        append(&log, 0, &[write("h", 0, Some(c(1)))], 3).expect("append");
        append(
            &log,
            0,
            &[Write::Group {
                group: "h".into(),
                value: None,
            }],
            4,
        )
        .expect("append");
        let loaded = load(&log).expect("load");
        assert_eq!(loaded.offsets["g"].len(), 1);
        assert_eq!(loaded.offsets["g"][&("t".to_string(), 0)].offset, 9);
        assert!(
            !loaded.offsets.contains_key("h"),
            "a group tombstone drops its offsets"
        );
    }

    #[test]
    fn a_batch_the_coordinator_did_not_write_is_skipped_and_the_load_carries_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Log::open(dir.path(), strata_storage::LogConfig::default()).expect("open");
        let commit = |offset| Write::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 0,
            value: Some(Committed {
                offset,
                leader_epoch: 0,
                metadata: None,
                commit_ms: 1,
            }),
        };
        append(&log, 0, &[commit(42)], 1).expect("append");
        // A gzip batch (the coordinator never writes compressed ones), whose record would
        // expand to far more than it holds: the load skips it without decompressing.
        use kafka_protocol::records::{
            Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
        };
        let record = Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: -1,
            timestamp: 1,
            key: Some(bytes::Bytes::from_static(b"k")),
            value: Some(vec![0xff; 1 << 20].into()),
            headers: Default::default(),
        };
        let mut gzip = bytes::BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::Gzip,
        };
        RecordBatchEncoder::encode(&mut gzip, &[record], &options).expect("encode");
        let mut gzip = gzip.to_vec();
        assert!(gzip.len() < 8 * 1024);
        log.append(&mut gzip, 0).expect("a valid gzip batch");
        append(&log, 0, &[commit(43)], 2).expect("append");
        let loaded = load(&log).expect("load");
        assert_eq!(loaded.offsets["g"][&("t".to_string(), 0)].offset, 43);
    }

    #[test]
    fn a_header_with_an_offset_near_the_end_of_the_range_is_skipped_not_overflowed() {
        // Found by the group_records fuzz target: base offset near i64::MAX plus a delta.
        let crash: &[u8] = &[
            0xff, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x0b, 0xff, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0xfa, 0xff, 0xff, 0xff, 0xff, 0xff, 0x08, 0xff, 0xff,
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x26, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0xfb, 0xff, 0xf7, 0xff, 0xff, 0xff, 0xff, 0xff, 0x5c, 0x5c, 0x5c,
            0x5c, 0x5c, 0x5c, 0x5c, 0x5c, 0x5c, 0x5c, 0x28, 0x5c, 0x5c, 0x5c, 0x5c, 0x0a, 0xff,
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ];
        let loaded = load_bytes(crash);
        assert!(loaded.offsets.is_empty() && loaded.groups.is_empty());
    }
}
