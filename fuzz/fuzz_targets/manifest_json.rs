//! A partition manifest as read back from the bucket.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(m) = serde_json::from_slice::<strata_storage::tier::manifest::Manifest>(data) {
        let _ = (m.end_offset(), m.starting_at(m.log_start_offset.saturating_add(1)));
    }
});
