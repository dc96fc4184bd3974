//! Helpers shared by the storage integration tests.
#![allow(dead_code)]

use std::io::Write;

use strata_storage::{BatchBuilder, BatchHeader, Record};

/// An uncompressed batch of records with the given value sizes and timestamps; values encode
/// their index so corruption is visible.
pub fn batch(records: &[(usize, i64)]) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    for (i, &(len, ts)) in records.iter().enumerate() {
        let mut value = vec![(i % 251) as u8; len];
        if len >= 8 {
            value[..8].copy_from_slice(&(i as u64).to_be_bytes());
        }
        b = b.record(Record {
            key: Some(format!("key-{i}").into_bytes()),
            value: Some(value),
            headers: vec![("h".into(), Some(b"v".to_vec()))],
            timestamp: ts,
        });
    }
    b.build()
}

/// A single-record batch of `len` value bytes.
pub fn one(len: usize, ts: i64) -> Vec<u8> {
    batch(&[(len, ts)])
}

/// Splits a buffer of whole batches into (base offset, batch bytes).
pub fn split(mut bytes: &[u8]) -> Vec<(i64, Vec<u8>)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let h = BatchHeader::parse(bytes).expect("whole batch header");
        let (head, rest) = bytes.split_at(h.total_len());
        out.push((h.base_offset, head.to_vec()));
        bytes = rest;
    }
    out
}

/// Asserts two buffers of batches are equal, reporting batch offsets and sizes rather than
/// thousands of bytes when they are not.
pub fn assert_same_batches(actual: &[u8], expected: &[u8], what: &str) {
    if actual != expected {
        let shape = |b: &[u8]| -> Vec<(i64, usize)> {
            split(b).into_iter().map(|(o, b)| (o, b.len())).collect()
        };
        panic!(
            "{what}: got {} bytes {:?}, want {} bytes {:?}",
            actual.len(),
            shape(actual),
            expected.len(),
            shape(expected)
        );
    }
}

/// `batch` (uncompressed, from [`batch`]) with its records compressed by Kafka codec `codec`
/// (1 gzip, 2 snappy in xerial frames, 3 lz4 frame, 4 zstd), header and CRC updated.
pub fn compressed(batch: &[u8], codec: i16) -> Vec<u8> {
    let records = &batch[strata_storage::HEADER_LEN..];
    let packed = match codec {
        1 => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(records).expect("gzip");
            e.finish().expect("gzip")
        }
        2 => {
            let mut out = b"\x82SNAPPY\x00".to_vec();
            out.extend_from_slice(&1i32.to_be_bytes());
            out.extend_from_slice(&1i32.to_be_bytes());
            for chunk in records.chunks(32 * 1024) {
                let block = snap::raw::Encoder::new()
                    .compress_vec(chunk)
                    .expect("snappy");
                out.extend_from_slice(&(block.len() as u32).to_be_bytes());
                out.extend_from_slice(&block);
            }
            out
        }
        3 => {
            let mut e = lz4::EncoderBuilder::new().build(Vec::new()).expect("lz4");
            e.write_all(records).expect("lz4");
            let (out, done) = e.finish();
            done.expect("lz4");
            out
        }
        4 => zstd::encode_all(records, 3).expect("zstd"),
        other => panic!("codec {other}"),
    };
    with_records(batch, codec, &packed)
}

/// `batch`'s header with `records` as its (compressed) record bytes, codec `codec`.
pub fn with_records(batch: &[u8], codec: i16, records: &[u8]) -> Vec<u8> {
    let mut out = batch[..strata_storage::HEADER_LEN].to_vec();
    out.extend_from_slice(records);
    let attributes = (i16::from_be_bytes([out[21], out[22]]) & !7) | codec;
    out[21..23].copy_from_slice(&attributes.to_be_bytes());
    let length = (out.len() - strata_storage::LOG_OVERHEAD) as i32;
    out[8..12].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&out[21..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    out
}
