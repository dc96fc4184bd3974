//! Produced record batches as the log validates them before an append, compressed ones
//! included (their bodies are covered by the CRC, not decompressed).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    strata_storage::fuzzing::validate_batches(data, 1 << 20);
});
