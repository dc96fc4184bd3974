//! A topic catalog entry (`topics/<id>/topic.json`) as read back from the bucket.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_broker::fuzzing::decode_catalog_entry(data));
