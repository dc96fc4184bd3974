//! Entry points for the fuzz targets under `fuzz/` (not a stable API).

/// Validates `buf` as the log does before an append (frames, CRCs, counts, and every record
/// of uncompressed batches); returns how many batches passed.
pub fn validate_batches(buf: &[u8], max_batch_bytes: usize) -> usize {
    crate::batch::validate_batches(buf, max_batch_bytes).map_or(0, |b| b.len())
}
