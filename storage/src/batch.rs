//! Kafka v2 record batches, read and patched in place.
//!
//! The log stores batches exactly as producers sent them. This module checks that a buffer
//! really is a sequence of well-formed v2 batches (magic, CRC-32C, declared lengths, record
//! count against the bytes) and patches the few header fields the broker owns: the base offset,
//! the partition leader epoch and, for `LogAppendTime` topics, the timestamp type and max
//! timestamp. Only the cleaner re-encodes a batch ([`rebuild`]), keeping its offsets and
//! producer fields and dropping the records a newer value of their key replaced.
//!
//! Layout of the 61-byte header (all big-endian):
//!
//! ```text
//! 0  baseOffset i64        | 12 partitionLeaderEpoch i32 | 16 magic i8 | 17 crc u32
//! 8  batchLength i32       | 21 attributes i16           | 23 lastOffsetDelta i32
//! 27 baseTimestamp i64     | 35 maxTimestamp i64         | 43 producerId i64
//! 51 producerEpoch i16     | 53 baseSequence i32         | 57 recordsCount i32
//! ```
//!
//! `batchLength` counts the bytes after itself; the CRC covers `attributes` to the end, so the
//! base offset and the leader epoch can be rewritten without touching it.

use thiserror::Error;

/// Bytes before `batchLength`'s payload: the base offset and the length itself.
pub const LOG_OVERHEAD: usize = 12;
/// Size of the v2 batch header, up to the first record.
pub const HEADER_LEN: usize = 61;
/// The only record format Strata stores.
pub const MAGIC_V2: i8 = 2;

const LENGTH: usize = 8;
const PARTITION_LEADER_EPOCH: usize = 12;
const MAGIC: usize = 16;
const CRC: usize = 17;
const ATTRIBUTES: usize = 21;
const LAST_OFFSET_DELTA: usize = 23;
const BASE_TIMESTAMP: usize = 27;
const MAX_TIMESTAMP: usize = 35;
const PRODUCER_ID: usize = 43;
const PRODUCER_EPOCH: usize = 51;
const BASE_SEQUENCE: usize = 53;
const RECORDS_COUNT: usize = 57;

const COMPRESSION_MASK: i16 = 0x07;
const TIMESTAMP_TYPE_LOG_APPEND: i16 = 0x08;
const TRANSACTIONAL: i16 = 0x10;
const CONTROL: i16 = 0x20;
/// Highest compression codec id Kafka defines (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
const MAX_COMPRESSION_CODEC: i16 = 4;

/// Why a buffer is not a valid sequence of v2 record batches. `at` is the byte position of the
/// offending batch inside the buffer given to the log.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BatchError {
    #[error("empty record buffer")]
    Empty,
    #[error(
        "batch at byte {at}: {available} bytes left, fewer than the {HEADER_LEN}-byte v2 header"
    )]
    Truncated { at: usize, available: usize },
    #[error(
        "batch at byte {at}: declared length {declared} does not fit the {available} bytes that follow"
    )]
    LengthOverrun {
        at: usize,
        declared: i32,
        available: usize,
    },
    #[error("batch at byte {at}: declared length {declared} is smaller than a v2 header")]
    LengthTooSmall { at: usize, declared: i32 },
    #[error("batch at byte {at}: magic {magic}, only v2 (magic 2) record batches are accepted")]
    BadMagic { at: usize, magic: i8 },
    #[error(
        "batch at byte {at}: CRC-32C mismatch (stored {stored:#010x}, computed {computed:#010x})"
    )]
    BadCrc {
        at: usize,
        stored: u32,
        computed: u32,
    },
    #[error("batch at byte {at}: unknown compression codec {codec}")]
    BadCompression { at: usize, codec: i16 },
    #[error("batch at byte {at}: has no records")]
    NoRecords { at: usize },
    #[error(
        "batch at byte {at}: records count {count} disagrees with last offset delta {last_offset_delta}"
    )]
    CountMismatch {
        at: usize,
        count: i32,
        last_offset_delta: i32,
    },
    #[error("batch at byte {at}, record {index}: {reason}")]
    BadRecord {
        at: usize,
        index: i32,
        reason: &'static str,
    },
    #[error("batch at byte {at}: {extra} bytes after the last of its {count} records")]
    TrailingBytes { at: usize, count: i32, extra: usize },
    #[error("batch at byte {at}: its compressed records cannot be read: {reason}")]
    BadCompressedRecords { at: usize, reason: String },
    #[error("batch at byte {at}: {size} bytes, larger than the maximum of {max}")]
    TooLarge { at: usize, size: usize, max: usize },
    #[error(
        "batch at byte {at}: timestamp {timestamp} is outside the accepted range \
         (message.timestamp.before.max.ms / after.max.ms)"
    )]
    TimestampOutOfRange { at: usize, timestamp: i64 },
    #[error("{count} records in one append; a segment holds at most {max}")]
    TooManyRecords { count: u64, max: u64 },
    #[error(
        "batch at byte {at}, record {index}: no key, and a compacted topic keeps the latest          value per key (cleanup.policy=compact)"
    )]
    KeylessRecord { at: usize, index: i32 },
    #[error(
        "batch at byte {at}: base offset {offset} is below {expected}, where the log continues"
    )]
    OffsetBehind {
        at: usize,
        offset: i64,
        expected: u64,
    },
}

/// The decoded fixed header of one v2 batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

impl BatchHeader {
    /// Decodes the header at the start of `buf`; `None` when fewer than [`HEADER_LEN`] bytes.
    pub fn parse(buf: &[u8]) -> Option<Self> {
        if buf.len() < HEADER_LEN {
            return None;
        }
        Some(Self {
            base_offset: be_i64(buf, 0),
            batch_length: be_i32(buf, LENGTH),
            partition_leader_epoch: be_i32(buf, PARTITION_LEADER_EPOCH),
            magic: buf[MAGIC] as i8,
            crc: be_u32(buf, CRC),
            attributes: be_i16(buf, ATTRIBUTES),
            last_offset_delta: be_i32(buf, LAST_OFFSET_DELTA),
            base_timestamp: be_i64(buf, BASE_TIMESTAMP),
            max_timestamp: be_i64(buf, MAX_TIMESTAMP),
            producer_id: be_i64(buf, PRODUCER_ID),
            producer_epoch: be_i16(buf, PRODUCER_EPOCH),
            base_sequence: be_i32(buf, BASE_SEQUENCE),
            records_count: be_i32(buf, RECORDS_COUNT),
        })
    }

    /// Total bytes of the batch including the base offset and length fields. Only meaningful
    /// for a header whose `batch_length` was checked to be non-negative.
    pub fn total_len(&self) -> usize {
        LOG_OVERHEAD + self.batch_length.max(0) as usize
    }

    /// The batch's last offset. Saturates: a header read from untrusted bytes may carry any
    /// base offset (found by the `group_records` fuzz target).
    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .saturating_add(i64::from(self.last_offset_delta))
    }

    /// Compression codec id: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd.
    pub fn compression(&self) -> i16 {
        self.attributes & COMPRESSION_MASK
    }

    pub fn is_log_append_time(&self) -> bool {
        self.attributes & TIMESTAMP_TYPE_LOG_APPEND != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL != 0
    }
}

/// What a control batch says (Kafka's `EndTransactionMarker`): its producer's transaction on
/// this partition ends here, committed or aborted, as written by the transaction
/// coordinator of `coordinator_epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlMarker {
    pub commit: bool,
    pub coordinator_epoch: i32,
}

/// Control record key type of an abort marker (Kafka's `ControlRecordType.ABORT`).
const CONTROL_ABORT: i16 = 0;
/// Control record key type of a commit marker.
const CONTROL_COMMIT: i16 = 1;

/// The marker of the control batch at the start of `batch`: `None` when it is not a control
/// batch, is compressed, or its first record is not a transaction marker Kafka defines
/// (other control types, such as KRaft's, are not transaction markers).
pub fn control_marker(batch: &[u8]) -> Option<ControlMarker> {
    let header = BatchHeader::parse(batch)?;
    if !header.is_control() || header.compression() != 0 || header.records_count < 1 {
        return None;
    }
    let body = batch.get(HEADER_LEN..header.total_len().min(batch.len()))?;
    let mut r = Reader::new(body);
    r.varint()?; // record length
    r.byte()?; // record attributes
    r.varlong()?; // timestamp delta
    r.varint()?; // offset delta
    let key = r.field()?;
    let value = r.field()?;
    let kind = i16::from_be_bytes(key.get(2..4)?.try_into().ok()?);
    let commit = match kind {
        CONTROL_ABORT => false,
        CONTROL_COMMIT => true,
        _ => return None,
    };
    let coordinator_epoch = value
        .get(2..6)
        .and_then(|b| b.try_into().ok())
        .map_or(-1, i32::from_be_bytes);
    Some(ControlMarker {
        commit,
        coordinator_epoch,
    })
}

/// What validation learned about one batch of an appended buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ValidBatch {
    /// Byte position of the batch in the appended buffer.
    pub pos: usize,
    pub header: BatchHeader,
    /// Largest record timestamp, computed from the records when they are uncompressed.
    pub records_max_timestamp: Option<i64>,
    /// Smallest record timestamp when uncompressed; the first record's otherwise.
    pub min_timestamp: i64,
}

impl ValidBatch {
    pub fn len(&self) -> usize {
        self.header.total_len()
    }
}

/// Checks that `buf` is one or more complete, well-formed v2 batches, each at most
/// `max_batch_bytes` long. Nothing is modified.
pub(crate) fn validate_batches(
    buf: &[u8],
    max_batch_bytes: usize,
) -> Result<Vec<ValidBatch>, BatchError> {
    validate_keyed_batches(buf, max_batch_bytes, false)
}

/// As [`validate_batches`]; with `keys_required` (a compacted topic, Kafka's rule) a record
/// without a key outside control batches is refused.
pub(crate) fn validate_keyed_batches(
    buf: &[u8],
    max_batch_bytes: usize,
    keys_required: bool,
) -> Result<Vec<ValidBatch>, BatchError> {
    validate_each(buf, |b, at| {
        validate_one(b, at, max_batch_bytes, keys_required)
    })
}

/// Checks that `buf` is one or more complete v2 batches whose frames, CRCs and record counts
/// hold, without reading their records: what a replica checks of batches its leader already
/// validated (records, timestamps and sizes were the leader's to judge).
pub(crate) fn check_replicated_batches(buf: &[u8]) -> Result<Vec<ValidBatch>, BatchError> {
    validate_each(buf, |b, at| {
        let header = check_frame(b, at)?;
        check_crc(&b[..header.total_len()], &header, at)?;
        check_counts(&header, at, false)?;
        Ok(ValidBatch {
            pos: at,
            header,
            records_max_timestamp: None,
            min_timestamp: header.base_timestamp,
        })
    })
}

fn validate_each(
    buf: &[u8],
    mut one: impl FnMut(&[u8], usize) -> Result<ValidBatch, BatchError>,
) -> Result<Vec<ValidBatch>, BatchError> {
    if buf.is_empty() {
        return Err(BatchError::Empty);
    }
    let mut batches = Vec::with_capacity(1);
    let mut pos = 0;
    while pos < buf.len() {
        let batch = one(&buf[pos..], pos)?;
        pos += batch.len();
        batches.push(batch);
    }
    Ok(batches)
}

fn validate_one(
    buf: &[u8],
    at: usize,
    max_batch_bytes: usize,
    keys_required: bool,
) -> Result<ValidBatch, BatchError> {
    let header = check_frame(buf, at)?;
    let size = header.total_len();
    if size > max_batch_bytes {
        return Err(BatchError::TooLarge {
            at,
            size,
            max: max_batch_bytes,
        });
    }
    let batch = &buf[..size];
    check_crc(batch, &header, at)?;
    let codec = header.compression();
    if codec > MAX_COMPRESSION_CODEC {
        return Err(BatchError::BadCompression { at, codec });
    }
    check_counts(&header, at, true)?;
    // Compressed records are counted and checked too (as Kafka does), or a client could claim
    // 2^31 offsets with one record; the stream stops at `decompressed_max` bytes.
    let (mut max_ts, mut min_ts) = (i64::MIN, i64::MAX);
    let keys_required = keys_required && !header.is_control();
    let mut keyless = None;
    let visit = |index: i32, ts: i64, has_key: bool| {
        max_ts = max_ts.max(ts);
        min_ts = min_ts.min(ts);
        if keys_required && !has_key {
            keyless = Some(index);
            return std::ops::ControlFlow::Break(());
        }
        std::ops::ControlFlow::Continue(())
    };
    let records = &batch[HEADER_LEN..];
    if codec == 0 {
        walk_records(&mut Reader::new(records), &header, at, visit)?;
    } else {
        let bad = |reason: String| BatchError::BadCompressedRecords { at, reason };
        let budget = decompressed_max(max_batch_bytes);
        let mut stream =
            crate::codec::Stream::open(codec, records, budget).map_err(|e| bad(e.to_string()))?;
        let walked = walk_records(&mut stream, &header, at, visit);
        if let Some(reason) = stream.failure.take() {
            return Err(bad(reason));
        }
        walked?;
    }
    if let Some(index) = keyless {
        return Err(BatchError::KeylessRecord { at, index });
    }
    let (records_max_timestamp, min_timestamp) = (Some(max_ts), min_ts);
    Ok(ValidBatch {
        pos: at,
        header,
        records_max_timestamp,
        min_timestamp,
    })
}

/// How many bytes the records of a compressed batch may decompress to: 64 times the largest
/// batch accepted (64 MiB by default), far above what producers build (librdkafka's
/// `batch.size` is 1 MB of uncompressed records), and a bound on the time a bomb costs.
fn decompressed_max(max_batch_bytes: usize) -> u64 {
    (max_batch_bytes.max(1 << 20) as u64).saturating_mul(64)
}

/// A batch holds records, and its count agrees with its last offset delta: one record per
/// offset for a producer's batch (`dense`); for a stored one no more than its offsets span,
/// since a compacted batch keeps its base offset and last offset delta, as Kafka's cleaner
/// does, with fewer records.
fn check_counts(header: &BatchHeader, at: usize, dense: bool) -> Result<(), BatchError> {
    if header.records_count <= 0 {
        return Err(BatchError::NoRecords { at });
    }
    let spanned = header.last_offset_delta.saturating_add(1);
    let fits = match dense {
        true => header.records_count == spanned,
        false => header.records_count <= spanned,
    };
    if header.last_offset_delta < 0 || !fits {
        return Err(BatchError::CountMismatch {
            at,
            count: header.records_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    Ok(())
}

/// Checks magic and the declared length of the batch at the start of `buf` (which may hold
/// more bytes after it) and returns its header.
pub(crate) fn check_frame(buf: &[u8], at: usize) -> Result<BatchHeader, BatchError> {
    let header = check_header(buf, at)?;
    let declared = header.batch_length;
    if header.total_len() > buf.len() {
        return Err(BatchError::LengthOverrun {
            at,
            declared,
            available: buf.len() - LOG_OVERHEAD,
        });
    }
    Ok(header)
}

/// Checks magic and that the declared length covers at least a header, for a batch whose
/// bytes may continue beyond `buf`.
pub(crate) fn check_header(buf: &[u8], at: usize) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(buf).ok_or(BatchError::Truncated {
        at,
        available: buf.len(),
    })?;
    if header.magic != MAGIC_V2 {
        return Err(BatchError::BadMagic {
            at,
            magic: header.magic,
        });
    }
    let declared = header.batch_length;
    if declared < (HEADER_LEN - LOG_OVERHEAD) as i32 {
        return Err(BatchError::LengthTooSmall { at, declared });
    }
    Ok(header)
}

/// Checks the CRC-32C of a complete batch.
pub(crate) fn check_crc(batch: &[u8], header: &BatchHeader, at: usize) -> Result<(), BatchError> {
    let computed = crc32c::crc32c(&batch[ATTRIBUTES..]);
    if computed != header.crc {
        return Err(BatchError::BadCrc {
            at,
            stored: header.crc,
            computed,
        });
    }
    Ok(())
}

/// Sets the base offset and partition leader epoch of the batch at the start of `batch`.
/// Neither field is covered by the CRC.
pub(crate) fn set_base_offset_and_epoch(batch: &mut [u8], base_offset: i64, leader_epoch: i32) {
    batch[..LENGTH].copy_from_slice(&base_offset.to_be_bytes());
    batch[PARTITION_LEADER_EPOCH..MAGIC].copy_from_slice(&leader_epoch.to_be_bytes());
}

/// Sets the max timestamp (and, for log-append time, the timestamp type bit) of a complete
/// batch and recomputes its CRC, as Kafka does when the broker owns the timestamp.
pub(crate) fn set_max_timestamp(batch: &mut [u8], max_timestamp: i64, log_append_time: bool) {
    let (header, records) = batch.split_at_mut(HEADER_LEN);
    set_max_timestamp_apart(header, records, max_timestamp, log_append_time);
}

/// As [`set_max_timestamp`], for a batch whose header (its first [`HEADER_LEN`] bytes) is
/// held apart from its records.
pub(crate) fn set_max_timestamp_apart(
    header: &mut [u8],
    records: &[u8],
    max_timestamp: i64,
    log_append_time: bool,
) {
    if log_append_time {
        let attributes = be_i16(header, ATTRIBUTES) | TIMESTAMP_TYPE_LOG_APPEND;
        header[ATTRIBUTES..LAST_OFFSET_DELTA].copy_from_slice(&attributes.to_be_bytes());
    }
    header[MAX_TIMESTAMP..PRODUCER_ID].copy_from_slice(&max_timestamp.to_be_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&header[ATTRIBUTES..HEADER_LEN]), records);
    header[CRC..ATTRIBUTES].copy_from_slice(&crc.to_be_bytes());
}

/// The first record offset in `batch` for which `pred(offset, timestamp)` holds. Records of
/// uncompressed batches are walked one by one; in log-append-time batches every record carries
/// the max timestamp, and in compressed batches (whose records are not decoded here) the max
/// timestamp stands in for each record's.
pub(crate) fn first_offset_where(
    batch: &[u8],
    header: &BatchHeader,
    pred: impl FnMut(i64, i64) -> bool,
) -> Option<i64> {
    first_record_where(batch, header, pred).map(|(offset, _)| offset)
}

/// As [`first_offset_where`], with the record's timestamp (the batch's largest for compressed
/// and log-append-time batches, whose records are not read one by one).
pub(crate) fn first_record_where(
    batch: &[u8],
    header: &BatchHeader,
    mut pred: impl FnMut(i64, i64) -> bool,
) -> Option<(i64, i64)> {
    if header.compression() != 0 || header.is_log_append_time() || batch.len() < HEADER_LEN {
        let ts = header.max_timestamp;
        return (header.base_offset..=header.last_offset())
            .find(|&off| pred(off, ts))
            .map(|off| (off, ts));
    }
    let mut found = None;
    let walked = walk_records_with(
        &mut Reader::new(&batch[HEADER_LEN..]),
        header,
        0,
        false,
        |delta, ts, _| {
            let offset = header.base_offset + i64::from(delta);
            if pred(offset, ts) {
                found = Some((offset, ts));
                std::ops::ControlFlow::Break(())
            } else {
                std::ops::ControlFlow::Continue(())
            }
        },
    );
    walked.ok().and(found)
}

/// Walks the records of a batch (its bytes after the header, or their decompressed stream),
/// checking every length against the bytes, that offset deltas run 0, 1, 2, … and that there
/// are exactly `records_count` records; calls `visit(offset_delta, timestamp, has_key)` for
/// each record until it breaks.
fn walk_records(
    r: &mut impl RecordBytes,
    header: &BatchHeader,
    at: usize,
    visit: impl FnMut(i32, i64, bool) -> std::ops::ControlFlow<()>,
) -> Result<(), BatchError> {
    walk_records_with(r, header, at, true, visit)
}

/// As [`walk_records`]; unless `dense`, offset deltas only have to rise within the batch's
/// span (a compacted batch).
fn walk_records_with(
    r: &mut impl RecordBytes,
    header: &BatchHeader,
    at: usize,
    dense: bool,
    mut visit: impl FnMut(i32, i64, bool) -> std::ops::ControlFlow<()>,
) -> Result<(), BatchError> {
    let count = header.records_count;
    let mut previous = -1;
    for index in 0..count {
        let bad = |reason| BatchError::BadRecord { at, index, reason };
        let len = r
            .varint()
            .ok_or(bad("record length is not a valid varint"))?;
        let len = u64::try_from(len).map_err(|_| bad("negative record length"))?;
        if r.remaining().is_some_and(|left| len > left) {
            return Err(bad("record length runs past the batch"));
        }
        let start = r.position();
        r.byte().ok_or(bad("record too short for attributes"))?;
        let ts_delta = r.varlong().ok_or(bad("bad timestamp delta"))?;
        let offset_delta = r.varint().ok_or(bad("bad offset delta"))?;
        if dense && offset_delta != index {
            return Err(bad("offset deltas are not consecutive from 0"));
        }
        if offset_delta <= previous || offset_delta > header.last_offset_delta {
            return Err(bad("offset deltas do not rise within the batch"));
        }
        previous = offset_delta;
        let has_key = !r
            .bytes_field(true)
            .ok_or(bad("key length runs past the record"))?;
        r.bytes_field(true)
            .ok_or(bad("value length runs past the record"))?;
        let headers = r.varint().ok_or(bad("bad header count"))?;
        if headers < 0 {
            return Err(bad("negative header count"));
        }
        for _ in 0..headers {
            r.bytes_field(false)
                .ok_or(bad("header key length runs past the record"))?;
            r.bytes_field(true)
                .ok_or(bad("header value length runs past the record"))?;
        }
        if r.position() - start != len {
            return Err(bad("record length disagrees with its fields"));
        }
        let ts = header.base_timestamp.saturating_add(ts_delta);
        if visit(offset_delta, ts, has_key).is_break() {
            return Ok(());
        }
    }
    if !r.at_end() {
        return Err(BatchError::TrailingBytes {
            at,
            count,
            extra: r.skip_rest(),
        });
    }
    Ok(())
}

/// One record of a stored batch, as the cleaner sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StoredRecord<'a> {
    pub offset_delta: i32,
    pub timestamp: i64,
    /// `None` for a null key.
    pub key: Option<&'a [u8]>,
    /// `None` for a null value: a tombstone.
    pub value: Option<&'a [u8]>,
    /// The record's encoding, its length prefix included: what a rebuilt batch copies.
    pub bytes: &'a [u8],
}

/// The records of a complete stored batch. Compressed records are first decompressed into
/// `scratch` (at most `budget` bytes), and the records then borrow from it.
pub(crate) fn stored_records<'a>(
    batch: &'a [u8],
    header: &BatchHeader,
    scratch: &'a mut Vec<u8>,
    budget: u64,
) -> Result<Vec<StoredRecord<'a>>, BatchError> {
    let at = 0;
    let body = batch
        .get(HEADER_LEN..header.total_len())
        .ok_or(BatchError::Truncated {
            at,
            available: batch.len(),
        })?;
    let records: &'a [u8] = match header.compression() {
        0 => body,
        codec => {
            *scratch = crate::codec::decompress_all(codec, body, budget).map_err(|e| {
                BatchError::BadCompressedRecords {
                    at,
                    reason: e.to_string(),
                }
            })?;
            scratch
        }
    };
    let mut out = Vec::with_capacity(header.records_count.max(0) as usize);
    let mut r = Reader::new(records);
    let mut previous = -1;
    for index in 0..header.records_count {
        let bad = |reason| BatchError::BadRecord { at, index, reason };
        let start = r.buf;
        let len = r
            .varint()
            .ok_or(bad("record length is not a valid varint"))?;
        let len = usize::try_from(len).map_err(|_| bad("negative record length"))?;
        let prefix = start.len() - r.buf.len();
        let bytes = start
            .get(..prefix + len)
            .ok_or(bad("record length runs past the batch"))?;
        let mut f = Reader::new(&bytes[prefix..]);
        f.byte().ok_or(bad("record too short for attributes"))?;
        let ts_delta = f.varlong().ok_or(bad("bad timestamp delta"))?;
        let offset_delta = f.varint().ok_or(bad("bad offset delta"))?;
        if offset_delta <= previous || offset_delta > header.last_offset_delta {
            return Err(bad("offset deltas do not rise within the batch"));
        }
        previous = offset_delta;
        let key = f
            .nullable_field()
            .ok_or(bad("key length runs past the record"))?;
        let value = f
            .nullable_field()
            .ok_or(bad("value length runs past the record"))?;
        out.push(StoredRecord {
            offset_delta,
            timestamp: header.base_timestamp.saturating_add(ts_delta),
            key,
            value,
            bytes,
        });
        r.buf = &start[prefix + len..];
    }
    if !r.buf.is_empty() {
        return Err(BatchError::TrailingBytes {
            at,
            count: header.records_count,
            extra: r.buf.len(),
        });
    }
    Ok(out)
}

/// `batch` with only the records `kept` (a non-empty subset of its own, in order): the same
/// base offset, last offset delta, producer fields and codec, the max timestamp of what is
/// left (for create-time batches), and a new CRC. What the cleaner writes.
pub(crate) fn rebuild(
    batch: &[u8],
    header: &BatchHeader,
    kept: &[StoredRecord<'_>],
) -> std::io::Result<Vec<u8>> {
    let raw: Vec<u8> = kept.iter().flat_map(|r| r.bytes.iter().copied()).collect();
    let body = match header.compression() {
        0 => raw,
        codec => crate::codec::compress(codec, &raw)?,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&batch[..HEADER_LEN]);
    out.extend_from_slice(&body);
    let length = (out.len() - LOG_OVERHEAD) as i32;
    out[LENGTH..PARTITION_LEADER_EPOCH].copy_from_slice(&length.to_be_bytes());
    out[RECORDS_COUNT..HEADER_LEN].copy_from_slice(&(kept.len() as i32).to_be_bytes());
    let max_timestamp = match header.is_log_append_time() {
        true => header.max_timestamp,
        false => kept
            .iter()
            .map(|r| r.timestamp)
            .max()
            .unwrap_or(header.max_timestamp),
    };
    set_max_timestamp(&mut out, max_timestamp, false);
    Ok(out)
}

/// Bytes read in order, with Kafka's zigzag varints and length-prefixed fields on top: a
/// batch's own bytes ([`Reader`]) or a decompressing stream ([`codec::Stream`]).
trait RecordBytes {
    fn byte(&mut self) -> Option<u8>;
    fn skip(&mut self, n: usize) -> Option<()>;
    /// Bytes read so far.
    fn position(&self) -> u64;
    /// Bytes left, when known without reading them.
    fn remaining(&self) -> Option<u64>;
    /// Whether nothing is left.
    fn at_end(&mut self) -> bool;
    /// Reads to the end; returns how many bytes that was.
    fn skip_rest(&mut self) -> usize;

    fn unsigned(&mut self, max_bytes: usize) -> Option<u64> {
        let mut value = 0u64;
        for i in 0..max_bytes {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    fn varint(&mut self) -> Option<i32> {
        let raw = u32::try_from(self.unsigned(5)?).ok()?;
        Some(((raw >> 1) as i32) ^ -((raw & 1) as i32))
    }

    fn varlong(&mut self) -> Option<i64> {
        let raw = self.unsigned(10)?;
        Some(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }

    /// A varint length followed by that many bytes; -1 (null) allowed when `nullable`.
    /// Skips a length-prefixed field; whether it was null.
    fn bytes_field(&mut self, nullable: bool) -> Option<bool> {
        let len = self.varint()?;
        if len == -1 && nullable {
            return Some(true);
        }
        self.skip(usize::try_from(len).ok()?)?;
        Some(false)
    }
}

/// A batch's uncompressed record bytes.
struct Reader<'a> {
    buf: &'a [u8],
    start_len: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            start_len: buf.len(),
        }
    }

    /// A varint-length-prefixed field's bytes, `None` inside when null.
    fn nullable_field(&mut self) -> Option<Option<&'a [u8]>> {
        let len = self.varint()?;
        if len == -1 {
            return Some(None);
        }
        let len = usize::try_from(len).ok()?;
        let (field, rest) = (self.buf.get(..len)?, self.buf.get(len..)?);
        self.buf = rest;
        Some(Some(field))
    }

    /// A varint-length-prefixed field's bytes (a null one is empty).
    fn field(&mut self) -> Option<&'a [u8]> {
        let len = self.varint()?;
        if len == -1 {
            return Some(&[]);
        }
        let len = usize::try_from(len).ok()?;
        let (field, rest) = (self.buf.get(..len)?, self.buf.get(len..)?);
        self.buf = rest;
        Some(field)
    }
}

impl RecordBytes for Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&byte, rest) = self.buf.split_first()?;
        self.buf = rest;
        Some(byte)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.buf = self.buf.get(n..)?;
        Some(())
    }

    fn position(&self) -> u64 {
        (self.start_len - self.buf.len()) as u64
    }

    fn remaining(&self) -> Option<u64> {
        Some(self.buf.len() as u64)
    }

    fn at_end(&mut self) -> bool {
        self.buf.is_empty()
    }

    fn skip_rest(&mut self) -> usize {
        std::mem::take(&mut self.buf).len()
    }
}

impl RecordBytes for crate::codec::Stream<'_> {
    fn byte(&mut self) -> Option<u8> {
        crate::codec::Stream::byte(self)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        crate::codec::Stream::skip(self, n)
    }

    fn position(&self) -> u64 {
        crate::codec::Stream::position(self)
    }

    fn remaining(&self) -> Option<u64> {
        None
    }

    fn at_end(&mut self) -> bool {
        crate::codec::Stream::at_end(self)
    }

    fn skip_rest(&mut self) -> usize {
        crate::codec::Stream::skip_rest(self)
    }
}

fn be_i16(buf: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([buf[at], buf[at + 1]])
}

fn be_i32(buf: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

fn be_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

fn be_i64(buf: &[u8], at: usize) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    i64::from_be_bytes(b)
}

/// One record for [`BatchBuilder`].
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp: i64,
}

/// Encodes uncompressed v2 batches, as a producer would: base offset 0, no producer id unless
/// set. Used by tests, benchmarks and tools that need real batches without a Kafka client.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    records: Vec<Record>,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    attributes: i16,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self {
            records: Vec::new(),
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            attributes: 0,
        }
    }
}

impl BatchBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the batch as coming from an idempotent producer.
    pub fn producer(mut self, id: i64, epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = id;
        self.producer_epoch = epoch;
        self.base_sequence = base_sequence;
        self
    }

    /// Marks the batch as part of its producer's transaction.
    pub fn transactional(mut self) -> Self {
        self.attributes |= TRANSACTIONAL;
        self
    }

    /// A control batch ending producer `id`'s transaction (epoch `epoch`) as `marker` says,
    /// at `timestamp`: what the transaction coordinator has each partition leader append.
    pub fn control(id: i64, epoch: i16, marker: ControlMarker, timestamp: i64) -> Vec<u8> {
        let kind = if marker.commit {
            CONTROL_COMMIT
        } else {
            CONTROL_ABORT
        };
        let mut key = 0i16.to_be_bytes().to_vec();
        key.extend_from_slice(&kind.to_be_bytes());
        let mut value = 0i16.to_be_bytes().to_vec();
        value.extend_from_slice(&marker.coordinator_epoch.to_be_bytes());
        let mut builder = Self::new().producer(id, epoch, -1).record(Record {
            key: Some(key),
            value: Some(value),
            headers: Vec::new(),
            timestamp,
        });
        builder.attributes = TRANSACTIONAL | CONTROL;
        builder.build()
    }

    pub fn record(mut self, record: Record) -> Self {
        self.records.push(record);
        self
    }

    /// A record with a value and optional key at `timestamp`.
    pub fn value(self, key: Option<&[u8]>, value: &[u8], timestamp: i64) -> Self {
        self.record(Record {
            key: key.map(<[u8]>::to_vec),
            value: Some(value.to_vec()),
            headers: Vec::new(),
            timestamp,
        })
    }

    /// Encodes the batch. An empty builder yields a (rejected-by-the-log) batch with no records.
    pub fn build(&self) -> Vec<u8> {
        let base_ts = self.records.first().map_or(0, |r| r.timestamp);
        let max_ts = self
            .records
            .iter()
            .map(|r| r.timestamp)
            .max()
            .unwrap_or(base_ts);
        let mut out = Vec::with_capacity(HEADER_LEN + self.encoded_records_hint());
        out.extend_from_slice(&0i64.to_be_bytes()); // base offset
        out.extend_from_slice(&0i32.to_be_bytes()); // length, patched below
        out.extend_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch
        out.push(MAGIC_V2 as u8);
        out.extend_from_slice(&0u32.to_be_bytes()); // crc, patched below
        out.extend_from_slice(&self.attributes.to_be_bytes());
        let last_delta = self.records.len() as i32 - 1;
        out.extend_from_slice(&last_delta.to_be_bytes());
        out.extend_from_slice(&base_ts.to_be_bytes());
        out.extend_from_slice(&max_ts.to_be_bytes());
        out.extend_from_slice(&self.producer_id.to_be_bytes());
        out.extend_from_slice(&self.producer_epoch.to_be_bytes());
        out.extend_from_slice(&self.base_sequence.to_be_bytes());
        out.extend_from_slice(&(self.records.len() as i32).to_be_bytes());
        let mut body = Vec::new();
        for (i, r) in self.records.iter().enumerate() {
            body.clear();
            body.push(0); // record attributes
            put_varlong(&mut body, r.timestamp - base_ts);
            put_varint(&mut body, i as i32);
            put_bytes(&mut body, r.key.as_deref());
            put_bytes(&mut body, r.value.as_deref());
            put_varint(&mut body, r.headers.len() as i32);
            for (k, v) in &r.headers {
                put_bytes(&mut body, Some(k.as_bytes()));
                put_bytes(&mut body, v.as_deref());
            }
            put_varint(&mut out, body.len() as i32);
            out.extend_from_slice(&body);
        }
        let length = (out.len() - LOG_OVERHEAD) as i32;
        out[LENGTH..PARTITION_LEADER_EPOCH].copy_from_slice(&length.to_be_bytes());
        let crc = crc32c::crc32c(&out[ATTRIBUTES..]);
        out[CRC..ATTRIBUTES].copy_from_slice(&crc.to_be_bytes());
        out
    }

    fn encoded_records_hint(&self) -> usize {
        self.records
            .iter()
            .map(|r| 16 + r.key.as_ref().map_or(0, Vec::len) + r.value.as_ref().map_or(0, Vec::len))
            .sum()
    }
}

fn put_varint(out: &mut Vec<u8>, v: i32) {
    put_unsigned(out, ((v << 1) ^ (v >> 31)) as u32 as u64);
}

fn put_varlong(out: &mut Vec<u8>, v: i64) {
    put_unsigned(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_unsigned(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i32);
            out.extend_from_slice(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        BatchBuilder::new()
            .value(Some(b"k1"), b"hello", 1_000)
            .value(None, b"world", 1_005)
            .record(Record {
                key: Some(b"k3".to_vec()),
                value: None,
                headers: vec![("h".into(), Some(b"v".to_vec())), ("n".into(), None)],
                timestamp: 990,
            })
            .build()
    }

    #[test]
    fn a_compacted_log_refuses_keyless_records_but_not_control_batches() {
        let keyed = BatchBuilder::new().value(Some(b"k"), b"v", 1).build();
        let keyless = BatchBuilder::new()
            .value(Some(b"k"), b"v", 1)
            .value(None, b"v", 2)
            .build();
        assert!(validate_keyed_batches(&keyed, 1 << 20, true).is_ok());
        assert!(validate_keyed_batches(&keyless, 1 << 20, false).is_ok());
        assert!(matches!(
            validate_keyed_batches(&keyless, 1 << 20, true),
            Err(BatchError::KeylessRecord { index: 1, .. })
        ));
        let marker = ControlMarker {
            commit: true,
            coordinator_epoch: 0,
        };
        let control = BatchBuilder::control(7, 0, marker, 1);
        assert!(validate_keyed_batches(&control, 1 << 20, true).is_ok());
    }

    #[test]
    fn control_markers_round_trip_and_data_batches_are_not_markers() {
        for commit in [true, false] {
            let marker = ControlMarker {
                commit,
                coordinator_epoch: 7,
            };
            let batch = BatchBuilder::control(42, 3, marker, 1_000);
            let h = BatchHeader::parse(&batch).expect("header");
            assert!(h.is_control() && h.is_transactional());
            assert_eq!(
                (h.producer_id, h.producer_epoch, h.base_sequence),
                (42, 3, -1)
            );
            validate_batches(&batch, 1 << 20).expect("a valid batch");
            assert_eq!(control_marker(&batch), Some(marker));
        }
        let data = BatchBuilder::new()
            .producer(42, 3, 0)
            .transactional()
            .value(None, b"v", 1)
            .build();
        let h = BatchHeader::parse(&data).expect("header");
        assert!(h.is_transactional() && !h.is_control());
        assert_eq!(control_marker(&data), None);
        assert_eq!(control_marker(&sample()), None);
    }

    #[test]
    fn built_batch_validates_and_reports_record_max_timestamp() {
        let buf = sample();
        let batches = validate_batches(&buf, 1 << 20).expect("valid");
        assert_eq!(batches.len(), 1);
        let h = batches[0].header;
        assert_eq!(h.records_count, 3);
        assert_eq!(h.max_timestamp, 1_005);
        assert_eq!(batches[0].records_max_timestamp, Some(1_005));
        assert_eq!(batches[0].len(), buf.len());
    }

    #[test]
    fn offset_rewrite_keeps_crc_valid() {
        let mut buf = sample();
        set_base_offset_and_epoch(&mut buf, 42, 7);
        let h = validate_batches(&buf, 1 << 20).expect("valid")[0].header;
        assert_eq!((h.base_offset, h.partition_leader_epoch), (42, 7));
        assert_eq!(h.last_offset(), 44);
    }

    #[test]
    fn log_append_time_sets_type_and_timestamp_with_valid_crc() {
        let mut buf = sample();
        set_max_timestamp(&mut buf, 5_000, true);
        let h = validate_batches(&buf, 1 << 20).expect("valid")[0].header;
        assert!(h.is_log_append_time());
        assert_eq!(h.max_timestamp, 5_000);
    }

    #[test]
    fn finds_records_by_timestamp() {
        let buf = sample();
        let h = BatchHeader::parse(&buf).expect("header");
        assert_eq!(first_offset_where(&buf, &h, |_, ts| ts >= 1_001), Some(1));
        assert_eq!(first_offset_where(&buf, &h, |_, ts| ts >= 0), Some(0));
        assert_eq!(first_offset_where(&buf, &h, |off, _| off >= 2), Some(2));
        assert_eq!(first_offset_where(&buf, &h, |_, ts| ts > 1_005), None);
    }

    #[test]
    fn varints_round_trip_at_the_extremes() {
        for v in [0, 1, -1, 63, -64, 64, i32::MAX, i32::MIN] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(Reader::new(&out).varint(), Some(v));
        }
        for v in [0, -1, i64::MAX, i64::MIN, 1 << 40] {
            let mut out = Vec::new();
            put_varlong(&mut out, v);
            assert_eq!(Reader::new(&out).varlong(), Some(v));
        }
    }

    #[test]
    fn record_length_that_lies_is_rejected() {
        let mut buf = sample();
        // The first record's length varint sits right after the header; make it claim more.
        buf[HEADER_LEN] += 2;
        let crc = crc32c::crc32c(&buf[ATTRIBUTES..]);
        buf[CRC..ATTRIBUTES].copy_from_slice(&crc.to_be_bytes());
        let err = validate_batches(&buf, 1 << 20).expect_err("must reject");
        assert!(
            matches!(err, BatchError::BadRecord { index: 0, .. }),
            "{err}"
        );
    }
}
