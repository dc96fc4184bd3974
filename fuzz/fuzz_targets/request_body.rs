//! A request body for an api and version the broker implements, chosen by the first bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let api = i16::from(data[0] % 70);
    let version = i16::from(data[1] % 20);
    strata_broker::fuzzing::decode_body_as(api, version, &data[2..]);
});
