//! Produced record batches as the log validates them before an append: as sent, and (first
//! byte odd) as one batch with its length and CRC made right, so compressed bodies are
//! decompressed and walked.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((mode, rest)) if mode & 1 == 1 => {
            strata_storage::fuzzing::validate_one_batch_past_its_crc(rest, 1 << 20);
        }
        _ => {
            strata_storage::fuzzing::validate_batches(data, 1 << 20);
        }
    }
});
