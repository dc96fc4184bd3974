//! Producing and fetching records: one batch per call, routed to the partition's leader.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{BrokerId, ListOffsetsRequest, ProduceRequest};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use crate::{Client, ClientError, check, name};

/// Produce and Fetch from v13 name topics by id; this client names them.
pub(crate) const BY_NAME: i16 = 12;

/// A record to produce.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewRecord {
    /// The key.
    pub key: Option<Bytes>,
    /// The value.
    pub value: Option<Bytes>,
    /// Headers, in order.
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Its timestamp (ms since the epoch); `None` stamps it when its batch is encoded.
    pub timestamp: Option<i64>,
}

/// A fetched record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedRecord {
    /// Its offset.
    pub offset: i64,
    /// Its timestamp (ms).
    pub timestamp: i64,
    /// The key.
    pub key: Option<Bytes>,
    /// The value.
    pub value: Option<Bytes>,
    /// Headers.
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// Kafka's default partitioner for keyed records (the Java client's): murmur2 of the key,
/// made positive, modulo the partition count.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) % partitions.max(1) as u32) as i32
}

/// The Java client's murmur2 (seed 0x9747b28c).
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, b) in tail.iter().enumerate().rev() {
            h ^= u32::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

impl Client {
    /// Appends `records` to `topic`/`partition` as one uncompressed batch; returns the base
    /// offset the leader assigned (-1 with `acks` 0).
    pub async fn produce(
        &self,
        topic: &str,
        partition: i32,
        records: &[NewRecord],
        acks: i16,
    ) -> Result<i64, ClientError> {
        let buf = encode_batch(records, Compression::None)?;
        let req = ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(name(topic))
                    .with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(partition)
                            .with_records(Some(buf)),
                    ]),
            ]);
        let r = self.produce_request(topic, partition, &req, acks).await;
        if r.is_err() {
            self.forget(topic);
        }
        r
    }

    async fn produce_request(
        &self,
        topic: &str,
        partition: i32,
        req: &ProduceRequest,
        acks: i16,
    ) -> Result<i64, ClientError> {
        let conn = self.leader(topic, partition).await?;
        if acks == 0 {
            // No response comes back; the request is only written.
            conn.send_only(req, BY_NAME).await?;
            return Ok(-1);
        }
        let resp = conn.send_capped(req, BY_NAME).await?;
        let p = resp
            .responses
            .first()
            .and_then(|t| t.partition_responses.first())
            .ok_or_else(|| ClientError::Decode("Produce answered nothing".into()))?;
        check(format!("producing to {topic}/{partition}"), p.error_code)?;
        Ok(p.base_offset)
    }

    /// ListOffsets for one partition: `timestamp` -1 latest, -2 earliest, or a time (ms);
    /// -1 back when no record is that recent.
    pub async fn list_offset(
        &self,
        topic: &str,
        partition: i32,
        timestamp: i64,
    ) -> Result<i64, ClientError> {
        let offsets = self.list_offsets(topic, &[partition], timestamp).await?;
        offsets
            .get(&partition)
            .copied()
            .ok_or_else(|| ClientError::Decode("ListOffsets answered nothing".into()))
    }

    /// ListOffsets for several partitions, one request per leader: `timestamp` -1 latest,
    /// -2 earliest, -4 earliest still on the leader's disk, -5 the last offset in object
    /// storage (-1: none), or a time (ms).
    pub async fn list_offsets(
        &self,
        topic: &str,
        partitions: &[i32],
        timestamp: i64,
    ) -> Result<BTreeMap<i32, i64>, ClientError> {
        let mut by_leader: BTreeMap<i32, Vec<ListOffsetsPartition>> = BTreeMap::new();
        for &p in partitions {
            by_leader
                .entry(self.leader_id(topic, p).await?)
                .or_default()
                .push(
                    ListOffsetsPartition::default()
                        .with_partition_index(p)
                        .with_timestamp(timestamp),
                );
        }
        let mut out = BTreeMap::new();
        for (leader, parts) in by_leader {
            let req = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![
                    ListOffsetsTopic::default()
                        .with_name(name(topic))
                        .with_partitions(parts),
                ]);
            let resp = match self.broker(leader).await {
                Ok(conn) => conn.send(&req).await,
                Err(e) => Err(e),
            };
            let resp = resp.inspect_err(|_| self.forget(topic))?;
            for p in resp.topics.iter().flat_map(|t| &t.partitions) {
                check(
                    format!("listing offsets of {topic}/{}", p.partition_index),
                    p.error_code,
                )
                .inspect_err(|_| self.forget(topic))?;
                out.insert(p.partition_index, p.offset);
            }
        }
        Ok(out)
    }
}

/// `records` as one record batch (v2) compressed with `compression`; records without a
/// timestamp get the current time.
pub(crate) fn encode_batch(
    records: &[NewRecord],
    compression: Compression,
) -> Result<Bytes, ClientError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let batch = records.iter().enumerate().map(|(i, r)| Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: i as i64,
        // Consecutive sequences keep the records in one batch (the codec starts a new
        // batch where they break); without a producer id the broker ignores them.
        sequence: i as i32,
        timestamp: r.timestamp.unwrap_or(now),
        key: r.key.clone(),
        value: r.value.clone(),
        headers: r
            .headers
            .iter()
            .map(|(k, v)| (StrBytes::from_string(k.clone()), v.clone()))
            .collect(),
    });
    let batch: Vec<Record> = batch.collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression,
    };
    let encoded = if compression == Compression::Lz4 {
        // kafka-protocol writes LZ4 at HC level 4, about a quarter of the fast level's speed
        // here; like librdkafka, produce at the fast level (any LZ4 reader decodes both).
        RecordBatchEncoder::encode_with_custom_compression(
            &mut buf,
            &batch,
            &options,
            Some(|records: &mut BytesMut, out: &mut BytesMut, _| {
                use bytes::BufMut;
                let mut encoder = lz4::EncoderBuilder::new()
                    .level(0)
                    .block_mode(lz4::BlockMode::Independent)
                    .build(out.writer())?;
                std::io::Write::write_all(&mut encoder, records)?;
                encoder.finish().1?;
                Ok(())
            }),
        )
    } else {
        RecordBatchEncoder::encode(&mut buf, &batch, &options)
    };
    encoded.map_err(|e| ClientError::Encode(e.to_string()))?;
    Ok(buf.freeze())
}

/// The records at or after `from` in a fetched record set (control records left out), and
/// the offset after its last whole batch (`None` when it holds no whole batch).
pub(crate) fn decode_records(
    bytes: Bytes,
    from: i64,
) -> Result<(Vec<FetchedRecord>, Option<i64>), String> {
    let mut bytes = whole_batches(bytes);
    let mut records = Vec::new();
    let mut next = None;
    while bytes.len() >= 27 {
        // A batch's base offset and last offset delta: its last offset even when its
        // records are all control records or compacted away.
        let base = i64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
        let delta = i32::from_be_bytes(bytes[23..27].try_into().expect("4 bytes"));
        next = Some(base + i64::from(delta) + 1);
        let set = RecordBatchDecoder::decode(&mut bytes).map_err(|e| e.to_string())?;
        records.extend(
            set.records
                .into_iter()
                .filter(|r| !r.control && r.offset >= from)
                .map(|r| FetchedRecord {
                    offset: r.offset,
                    timestamp: r.timestamp,
                    key: r.key,
                    value: r.value,
                    headers: r
                        .headers
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect(),
                }),
        );
    }
    Ok((records, next))
}

/// The leading whole batches of a fetched record set (a response may end mid-batch).
fn whole_batches(bytes: Bytes) -> Bytes {
    let mut at = 0usize;
    while let Some(len) = bytes.get(at + 8..at + 12) {
        let total = 12 + i32::from_be_bytes([len[0], len[1], len[2], len[3]]).max(0) as usize;
        if at + total > bytes.len() {
            break;
        }
        at += total;
    }
    bytes.slice(..at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_client() {
        // Kafka's UtilsTest vectors.
        for (input, want) in [
            (&b"21"[..], -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ] {
            assert_eq!(
                murmur2(input) as i32,
                want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn a_partial_trailing_batch_is_dropped() {
        let mut b = vec![0u8; 8];
        b.extend_from_slice(&4i32.to_be_bytes());
        b.extend_from_slice(&[1, 2, 3, 4]);
        let whole = b.len();
        b.extend_from_slice(&[0u8; 8]);
        b.extend_from_slice(&100i32.to_be_bytes());
        assert_eq!(whole_batches(Bytes::from(b)).len(), whole);
    }
}
