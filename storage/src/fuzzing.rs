//! Entry points for the fuzz targets under `fuzz/` (not a stable API).

/// Validates `buf` as the log does before an append (frames, CRCs, counts, and every record,
/// compressed or not); returns how many batches passed.
pub fn validate_batches(buf: &[u8], max_batch_bytes: usize) -> usize {
    crate::batch::validate_batches(buf, max_batch_bytes).map_or(0, |b| b.len())
}

/// As [`validate_batches`] for `buf` taken as one batch whose length and CRC are first made
/// right, so the fuzzer reaches the record walk and the decompressors behind the CRC.
pub fn validate_one_batch_past_its_crc(buf: &[u8], max_batch_bytes: usize) -> usize {
    let mut batch = buf.to_vec();
    if batch.len() < crate::batch::HEADER_LEN {
        return 0;
    }
    let length = (batch.len() - crate::batch::LOG_OVERHEAD) as i32;
    batch[8..12].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    validate_batches(&batch, max_batch_bytes)
}
