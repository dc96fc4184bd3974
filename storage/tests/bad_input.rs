//! Bad input: every malformed buffer is rejected with a typed error and leaves the log exactly
//! as it was (same end offset, same bytes, same files).

mod common;

use std::io::Write;

use strata_storage::{BatchError, Log, LogConfig, StorageError};

/// Recomputes the CRC after a test edits bytes it covers, so only the intended flaw remains.
fn fix_crc(batch: &mut [u8]) {
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

fn set_i32(batch: &mut [u8], at: usize, v: i32) {
    batch[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn good() -> Vec<u8> {
    common::batch(&[(100, 1_000), (20, 1_001), (0, 1_002)])
}

fn rejected(input: Vec<u8>) -> BatchError {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(
        dir.path(),
        LogConfig {
            max_batch_bytes: 4096,
            ..LogConfig::default()
        },
    )
    .expect("open");
    let first = good();
    log.append(&first, 0).expect("a good batch");
    let before = (
        log.log_end_offset(),
        log.read(0, 1 << 20).expect("read"),
        log.size_bytes(),
    );
    let err = match log.append(&input, 0) {
        Err(StorageError::InvalidBatch(e)) => e,
        other => panic!("expected an invalid batch error, got {other:?}"),
    };
    let after = (
        log.log_end_offset(),
        log.read(0, 1 << 20).expect("read"),
        log.size_bytes(),
    );
    assert_eq!(before, after, "the log changed after rejecting: {err}");
    // And it still takes good batches at the next offset.
    let next = good();
    assert_eq!(log.append(&next, 0).expect("append").first_offset, 3);
    err
}

#[test]
fn empty_buffer_is_rejected() {
    assert_eq!(rejected(Vec::new()), BatchError::Empty);
}

#[test]
fn wrong_crc_is_rejected() {
    let mut b = good();
    let last = b.len() - 1;
    b[last] ^= 1;
    assert!(matches!(rejected(b), BatchError::BadCrc { at: 0, .. }));
}

#[test]
fn wrong_magic_is_rejected() {
    let mut b = good();
    b[16] = 1;
    assert_eq!(rejected(b), BatchError::BadMagic { at: 0, magic: 1 });
}

#[test]
fn truncated_batch_is_rejected() {
    let mut b = good();
    b.truncate(b.len() - 10);
    assert!(matches!(
        rejected(b),
        BatchError::LengthOverrun { at: 0, .. }
    ));
    let mut b = good();
    b.truncate(40);
    assert_eq!(
        rejected(b),
        BatchError::Truncated {
            at: 0,
            available: 40
        }
    );
}

#[test]
fn declared_length_that_lies_is_rejected() {
    let mut b = good();
    let real = (b.len() - 12) as i32;
    set_i32(&mut b, 8, real + 1);
    assert!(matches!(rejected(b), BatchError::LengthOverrun { .. }));
    let mut b = good();
    set_i32(&mut b, 8, 10);
    assert_eq!(
        rejected(b),
        BatchError::LengthTooSmall {
            at: 0,
            declared: 10
        }
    );
    let mut b = good();
    set_i32(&mut b, 8, -1);
    assert_eq!(
        rejected(b),
        BatchError::LengthTooSmall {
            at: 0,
            declared: -1
        }
    );
    // Shorter than the real batch: the CRC no longer covers what it should.
    let mut b = good();
    set_i32(&mut b, 8, real - 5);
    assert!(matches!(rejected(b), BatchError::BadCrc { .. }));
}

#[test]
fn record_count_that_lies_is_rejected() {
    let mut b = good();
    set_i32(&mut b, 57, 5);
    fix_crc(&mut b);
    assert_eq!(
        rejected(b),
        BatchError::CountMismatch {
            at: 0,
            count: 5,
            last_offset_delta: 2
        }
    );
    // Count and last offset delta agree with each other but not with the bytes.
    let mut b = good();
    set_i32(&mut b, 57, 2);
    set_i32(&mut b, 23, 1);
    fix_crc(&mut b);
    assert!(matches!(
        rejected(b),
        BatchError::TrailingBytes { count: 2, .. }
    ));
    let mut b = good();
    set_i32(&mut b, 57, 4);
    set_i32(&mut b, 23, 3);
    fix_crc(&mut b);
    assert!(matches!(
        rejected(b),
        BatchError::BadRecord { index: 3, .. }
    ));
    let mut b = good();
    set_i32(&mut b, 57, 0);
    set_i32(&mut b, 23, -1);
    fix_crc(&mut b);
    assert_eq!(rejected(b), BatchError::NoRecords { at: 0 });
}

#[test]
fn record_length_that_lies_is_rejected() {
    let mut b = good();
    b[61] = b[61].wrapping_add(4); // first record's length varint claims 2 more bytes
    fix_crc(&mut b);
    assert!(matches!(
        rejected(b),
        BatchError::BadRecord { index: 0, .. }
    ));
}

#[test]
fn unknown_compression_codec_is_rejected() {
    let mut b = good();
    b[22] |= 0x07;
    fix_crc(&mut b);
    assert_eq!(rejected(b), BatchError::BadCompression { at: 0, codec: 7 });
}

#[test]
fn batch_over_max_message_bytes_is_rejected() {
    let b = common::one(5000, 1);
    let size = b.len();
    assert_eq!(
        rejected(b),
        BatchError::TooLarge {
            at: 0,
            size,
            max: 4096
        }
    );
}

#[test]
fn one_bad_batch_rejects_the_whole_buffer() {
    let mut buf = good();
    let second_at = buf.len();
    let mut bad = good();
    bad[16] = 0;
    buf.extend_from_slice(&bad);
    assert_eq!(
        rejected(buf),
        BatchError::BadMagic {
            at: second_at,
            magic: 0
        }
    );
}

#[test]
fn bad_configs_name_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (cfg, key) in [
        (
            LogConfig {
                segment_bytes: 0,
                ..LogConfig::default()
            },
            "segment.bytes",
        ),
        (
            LogConfig {
                segment_bytes: 1 << 40,
                ..LogConfig::default()
            },
            "segment.bytes",
        ),
        (
            LogConfig {
                index_interval_bytes: 0,
                ..LogConfig::default()
            },
            "index.interval.bytes",
        ),
        (
            LogConfig {
                max_batch_bytes: 10,
                ..LogConfig::default()
            },
            "max.message.bytes",
        ),
    ] {
        match Log::open(dir.path(), cfg) {
            Err(StorageError::Config { key: k, .. }) => assert_eq!(k, key),
            other => panic!("expected a config error for {key}, got {other:?}"),
        }
    }
}

#[test]
fn compressed_batches_in_every_codec_are_read_back_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), LogConfig::default()).expect("open");
    let mut end = 0;
    for codec in 1..=4 {
        let b = common::compressed(&good(), codec);
        let sent = b.clone();
        let info = log.append(&b, 0).expect("a well-formed compressed batch");
        assert_eq!((info.first_offset, info.last_offset), (end, end + 2));
        let read = log.read(end, 1 << 20).expect("read");
        // Only the base offset and leader epoch (outside the CRC) differ from what was sent.
        assert_eq!(&read[16..], &sent[16..], "codec {codec}");
        end += 3;
    }
    // librdkafka writes snappy as one raw block, without xerial frames.
    let raw = snap::raw::Encoder::new()
        .compress_vec(&good()[strata_storage::HEADER_LEN..])
        .expect("snappy");
    let b = common::with_records(&good(), 2, &raw);
    log.append(&b, 0).expect("raw snappy");
}

#[test]
fn a_compressed_batch_whose_count_lies_is_refused() {
    // Audit A16.3: one record claiming 2^31 - 1 would burn that many offsets.
    let one = common::batch(&[(10, 1)]);
    let mut lying = common::compressed(&one, 1);
    set_i32(&mut lying, 23, i32::MAX - 1); // last offset delta
    set_i32(&mut lying, 57, i32::MAX); // records count
    fix_crc(&mut lying);
    assert!(matches!(
        rejected(lying),
        BatchError::BadRecord { index: 1, .. }
    ));
    // Claiming fewer than it holds leaves records after the last one counted.
    let mut short = common::compressed(&good(), 4);
    set_i32(&mut short, 23, 1);
    set_i32(&mut short, 57, 2);
    fix_crc(&mut short);
    assert!(matches!(
        rejected(short),
        BatchError::TrailingBytes { count: 2, .. }
    ));
}

#[test]
fn compressed_records_that_do_not_decompress_or_expand_without_bound_are_refused() {
    let garbage = common::with_records(&good(), 1, b"not gzip at all");
    match rejected(garbage) {
        BatchError::BadCompressedRecords { reason, .. } => {
            assert!(reason.contains("decompression failed"), "{reason}")
        }
        other => panic!("expected BadCompressedRecords, got {other:?}"),
    }
    // A bomb: one record whose value is 300 MiB of zeros fits a 4 KiB batch when compressed.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), LogConfig::default()).expect("open");
    let bomb = common::batch(&[(300 << 20, 1)]);
    let bomb = common::compressed(&bomb, 4);
    assert!(bomb.len() < 64 * 1024, "{} bytes", bomb.len());
    let started = std::time::Instant::now();
    match log.append(&bomb, 0) {
        Err(StorageError::InvalidBatch(BatchError::BadCompressedRecords { reason, .. })) => {
            assert!(reason.contains("more than"), "{reason}")
        }
        other => panic!("expected BadCompressedRecords, got {other:?}"),
    }
    eprintln!("bomb refused in {:?}", started.elapsed());
    assert_eq!(log.log_end_offset(), 0);
    // A zstd window larger than 8 MiB (the "ultra" levels) is refused before it is allocated.
    let records = &good()[strata_storage::HEADER_LEN..];
    let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("zstd");
    e.set_parameter(zstd::zstd_safe::CParameter::WindowLog(27))
        .expect("window");
    e.write_all(records).expect("zstd");
    let wide = common::with_records(&good(), 4, &e.finish().expect("zstd"));
    assert!(matches!(
        rejected(wide),
        BatchError::BadCompressedRecords { .. }
    ));
}
