//! Group state in the `__consumer_offsets` topic: one record per committed offset and one per
//! group's membership, keyed so the newest record for a key wins and a null value deletes it.
//!
//! Keys and values are JSON (documented in docs/architecture.md), written and replayed through
//! [`crate::statelog`]. Offsets committed in a transaction (TxnOffsetCommit) are written in a
//! transactional batch of the producer and count once its commit marker follows.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use strata_storage::{Log, StorageError};

use super::consumer::ConsumerSnapshot;
use super::machine::GroupSnapshot;
use crate::statelog::{self, Replayed, StateRecord};

/// The internal topic.
pub(crate) const OFFSETS_TOPIC: &str = "__consumer_offsets";

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
    /// A KIP-848 consumer group's membership and assignment.
    ConsumerGroup {
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
    ConsumerGroup {
        group: String,
        value: Option<ConsumerSnapshot>,
    },
}

/// Offsets committed in a transaction, per group, until its marker.
pub(crate) type PendingOffsets = BTreeMap<String, BTreeMap<(String, i32), Committed>>;

/// What a partition of the offsets topic holds.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub(crate) offsets: BTreeMap<String, BTreeMap<(String, i32), Committed>>,
    pub(crate) groups: BTreeMap<String, GroupSnapshot>,
    pub(crate) consumer_groups: BTreeMap<String, ConsumerSnapshot>,
    /// Transactional offset commits whose transaction has not ended, per producer id.
    pub(crate) pending: BTreeMap<i64, PendingOffsets>,
    /// The log end the replay read to.
    pub(crate) end: u64,
}

fn encode(w: &Write) -> Result<StateRecord, serde_json::Error> {
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
        Write::ConsumerGroup { group, value } => (
            serde_json::to_vec(&Key::ConsumerGroup {
                group: group.clone(),
            })?,
            value.as_ref().map(serde_json::to_vec).transpose()?,
        ),
    })
}

/// The offsets among `writes`, as `topic-partition` and offset (for logs).
pub(crate) fn offsets_of(writes: &[Write]) -> Vec<(String, Option<i64>)> {
    writes
        .iter()
        .filter_map(|w| match w {
            Write::Offset {
                topic,
                partition,
                value,
                ..
            } => Some((
                format!("{topic}-{partition}"),
                value.as_ref().map(|c| c.offset),
            )),
            _ => None,
        })
        .collect()
}

/// The records for `writes`.
pub(crate) fn records(writes: &[Write]) -> Result<Vec<StateRecord>, StorageError> {
    writes
        .iter()
        .map(encode)
        .collect::<Result<_, _>>()
        .map_err(|e| StorageError::Io {
            op: "encoding group record",
            path: "__consumer_offsets".into(),
            source: std::io::Error::other(e),
        })
}

/// Replays a whole partition of the offsets topic (see [`statelog::replay`]): the newest
/// record per key wins; transactional offset commits wait for their producer's marker.
pub(crate) fn load(log: &Log) -> Result<Loaded, StorageError> {
    let mut loaded = Loaded {
        end: log.log_end_offset(),
        ..Loaded::default()
    };
    statelog::replay(log, |r| loaded.apply(r))?;
    Ok(loaded)
}

/// Replays raw batches, as read from a log (the fuzz target's entry).
pub(crate) fn load_bytes(bytes: &[u8]) -> Loaded {
    let mut loaded = Loaded::default();
    statelog::replay_bytes(bytes, |r| loaded.apply(r));
    loaded
}

impl Loaded {
    fn apply(&mut self, replayed: Replayed) {
        match replayed {
            Replayed::Records { records, producer } => {
                for r in records {
                    let Some(key) = r
                        .key
                        .as_ref()
                        .and_then(|k| serde_json::from_slice::<Key>(k).ok())
                    else {
                        continue;
                    };
                    match producer {
                        Some((id, _)) => self.apply_pending(id, key, r.value.as_deref()),
                        None => self.apply_record(key, r.value.as_deref()),
                    }
                }
            }
            Replayed::Marker {
                producer_id,
                marker,
            } => {
                let Some(pending) = self.pending.remove(&producer_id) else {
                    return;
                };
                if marker.commit {
                    for (group, offsets) in pending {
                        self.offsets.entry(group).or_default().extend(offsets);
                    }
                }
            }
        }
    }

    fn apply_pending(&mut self, producer_id: i64, key: Key, value: Option<&[u8]>) {
        let Key::Offset {
            group,
            topic,
            partition,
        } = key
        else {
            return;
        };
        if let Some(c) = value.and_then(|v| serde_json::from_slice::<Committed>(v).ok()) {
            self.pending
                .entry(producer_id)
                .or_default()
                .entry(group)
                .or_default()
                .insert((topic, partition), c);
        }
    }

    fn apply_record(&mut self, key: Key, value: Option<&[u8]>) {
        match key {
            Key::Offset {
                group,
                topic,
                partition,
            } => {
                let offsets = self.offsets.entry(group).or_default();
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
                    self.groups.insert(group, s);
                }
                None => {
                    self.groups.remove(&group);
                    self.offsets.remove(&group);
                }
            },
            // Its tombstone ends only the membership (the group went back to the classic
            // protocol, or is deleted with a classic tombstone beside it).
            Key::ConsumerGroup { group } => {
                match value.and_then(|v| serde_json::from_slice(v).ok()) {
                    Some(s) => {
                        self.consumer_groups.insert(group, s);
                    }
                    None => {
                        self.consumer_groups.remove(&group);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(
        log: &Log,
        leader_epoch: i32,
        writes: &[Write],
        now: i64,
    ) -> Result<(), StorageError> {
        let bytes = statelog::batch(&records(writes)?, now, None);
        log.append(&bytes, leader_epoch).map(|_| ())
    }

    #[test]
    fn partitions_match_kafka() {
        // Java: "my-group".hashCode() == -1906497762, so Utils.abs(..) % 50 == 12.
        assert_eq!(statelog::partition_for("my-group", 50), 12);
        assert_eq!(statelog::partition_for("", 50), 0);
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

    /// Offsets committed in a transaction count once a commit marker follows, never after
    /// an abort, and stay pending while the transaction is open.
    #[test]
    fn transactional_offsets_wait_for_their_marker() {
        use strata_storage::{BatchBuilder, ControlMarker};
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Log::open(dir.path(), strata_storage::LogConfig::default()).expect("open");
        let commit = |offset| Write::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: offset as i32 % 3,
            value: Some(Committed {
                offset,
                leader_epoch: 0,
                metadata: None,
                commit_ms: 1,
            }),
        };
        let in_txn = |producer: i64, offset| {
            let records = records(&[commit(offset)]).expect("records");
            let bytes = statelog::batch(&records, 1, Some((producer, 0)));
            log.append(&bytes, 0).expect("append");
        };
        let marker = |producer: i64, commit: bool| {
            let m = ControlMarker {
                commit,
                coordinator_epoch: 0,
            };
            let bytes = BatchBuilder::control(producer, 0, m, 1);
            log.append(&bytes, 0).expect("append");
        };
        in_txn(5, 10);
        in_txn(6, 11);
        in_txn(7, 12);
        marker(5, true);
        marker(6, false);
        let loaded = load(&log).expect("load");
        let offsets = &loaded.offsets["g"];
        assert_eq!(offsets[&("t".to_string(), 1)].offset, 10, "committed");
        assert!(!offsets.contains_key(&("t".to_string(), 2)), "aborted");
        assert!(!offsets.contains_key(&("t".to_string(), 0)), "still open");
        assert_eq!(loaded.pending[&7]["g"][&("t".to_string(), 0)].offset, 12);
        assert!(!loaded.pending.contains_key(&5) && !loaded.pending.contains_key(&6));
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
        let gzip = gzip.to_vec();
        assert!(gzip.len() < 8 * 1024);
        log.append(&gzip, 0).expect("a valid gzip batch");
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
