//! A whole request frame (after the size prefix): header, then the body of its api.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_broker::fuzzing::decode_request(data));
