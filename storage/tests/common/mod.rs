//! Helpers shared by the storage integration tests.
#![allow(dead_code)]

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
