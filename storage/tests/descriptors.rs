//! A log's open files do not grow with its segments: the active one stays open and sealed
//! ones go through the process's bounded cache. Its own test binary, as it sets that bound.

mod common;

use std::path::Path;

use strata_storage::{Log, LogConfig, handles};

/// Descriptors this process has open on files under `dir`.
fn open_under(dir: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|fds| {
            fds.filter_map(Result::ok)
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter(|target| target.starts_with(dir))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn a_log_of_many_segments_keeps_one_file_open_plus_the_shared_cache() {
    handles::set_open_sealed_limit(8).expect("limit");
    let dir = tempfile::tempdir().expect("tempdir");
    let one = common::one(100, 1);
    let config = LogConfig {
        segment_bytes: one.len() as u64,
        segment_ms: None,
        retention_ms: None,
        ..LogConfig::default()
    };
    let log = Log::open(dir.path(), config.clone()).expect("open");
    for _ in 0..200 {
        log.append(&one.clone(), 0).expect("append");
    }
    assert_eq!(log.segments().len(), 200);
    let held = open_under(dir.path());
    assert!(held <= 1 + 8, "{held} files open for 200 segments");
    // Every segment is still read, its file opened again where the cache had closed it.
    let all = log.read(0, usize::MAX >> 1).expect("read");
    assert_eq!(all.len(), 200 * one.len());
    assert_eq!(log.offset_for_timestamp(1).expect("by time"), Some(0));
    drop(all);
    assert!(open_under(dir.path()) <= 1 + 8);
    // Ranges to send from the files hold at most an eighth of the cache's bound of sealed
    // files beyond it (here one); past that, reads are made into memory.
    let first = log
        .read_ranges(0, 1, 200)
        .expect("ranges")
        .expect("sent from its file");
    assert!(
        log.read_ranges(100, 1, 200).expect("ranges").is_none(),
        "a second sealed file held for sending"
    );
    let active = log.read_ranges(199, 1, 200).expect("ranges");
    assert!(active.is_some(), "the active segment's file is open anyway");
    drop((first, active));
    assert!(log.read_ranges(100, 1, 200).expect("ranges").is_some());
    assert!(open_under(dir.path()) <= 1 + 8);

    // Opening it again (a restart) holds no more.
    log.close().expect("close");
    assert_eq!(open_under(dir.path()), 0, "a closed log holds nothing");
    let log = Log::open(dir.path(), config).expect("reopen");
    assert_eq!(log.log_end_offset(), 200);
    assert!(open_under(dir.path()) <= 1 + 8);
    // Truncating back into a sealed segment makes it the active one again, open for appends.
    log.truncate_to(150).expect("truncate");
    log.append(&one.clone(), 0)
        .expect("append after truncation");
    assert_eq!(log.log_end_offset(), 151);
    assert!(open_under(dir.path()) <= 1 + 8);
}
