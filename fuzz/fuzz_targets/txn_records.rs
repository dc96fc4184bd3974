//! Bytes replayed as a partition of `__transaction_state`: the load must skip what it cannot
//! read and never decompress.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_broker::fuzzing::load_txn_records(data));
