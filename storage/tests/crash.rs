//! Crash tests: a log is flushed, more batches are appended without a flush, and the process
//! "dies". Its files are then cut at every byte position inside and around the unflushed
//! batches (and, separately, corrupted there); each reopens without error holding exactly the
//! flushed prefix plus the unflushed batches that survived whole. Damaged index files are
//! rebuilt, and a log reopened after recovery keeps appending from the right offset.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use strata_storage::{FlushPolicy, Log, LogConfig};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 4 * 1024,
        segment_ms: None,
        index_interval_bytes: 512,
        retention_ms: None,
        flush: FlushPolicy::Os,
        ..LogConfig::default()
    }
}

/// A crashed log on disk and what it should recover to.
struct Crashed {
    dir: tempfile::TempDir,
    /// Batches that were flushed before the crash, in order.
    flushed: Vec<Vec<u8>>,
    /// Batches appended after the flush, all in the active segment.
    unflushed: Vec<Vec<u8>>,
    active_log: PathBuf,
    /// Byte position in the active segment where the unflushed batches start.
    flushed_len: u64,
}

fn crashed() -> Crashed {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), config()).expect("open");
    for i in 0..25i64 {
        let b = common::batch(&[
            (200 + (i as usize * 37) % 400, 10_000 + i),
            (50, 10_000 + i),
        ]);
        log.append(&b, 1).expect("append");
    }
    log.flush().expect("flush");
    let flushed: Vec<Vec<u8>> = common::split(&log.read(0, usize::MAX / 2).expect("read"))
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    let segments = log.segments();
    let active = segments.last().expect("active");
    assert!(segments.len() >= 3, "the scenario spans sealed segments");
    let mut unflushed = Vec::new();
    for i in 0..3i64 {
        let b = common::batch(&[(60 + i as usize * 20, 20_000 + i), (10, 20_000 + i)]);
        let info = log.append(&b, 1).expect("append");
        // As the log holds it: offsets and leader epoch stamped.
        let stamped = log.read(info.first_offset, 1).expect("read");
        unflushed.push(stamped.to_vec());
    }
    assert_eq!(
        log.segments().len(),
        segments.len(),
        "no roll after the flush"
    );
    let c = Crashed {
        active_log: active.log_path.clone(),
        flushed_len: active.size_bytes,
        dir,
        flushed,
        unflushed,
    };
    drop(log); // the crash: nothing more is written
    c
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).expect("list") {
        let entry = entry.expect("entry");
        fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

impl Crashed {
    /// A fresh copy of the crashed directory, with `damage` applied to it.
    fn copy_with(&self, damage: impl FnOnce(&Path)) -> tempfile::TempDir {
        let copy = tempfile::tempdir().expect("tempdir");
        copy_dir(self.dir.path(), copy.path());
        damage(copy.path());
        copy
    }

    fn in_copy(&self, copy: &Path, original: &Path) -> PathBuf {
        copy.join(original.file_name().expect("file name"))
    }

    /// Reopens `dir` and checks it holds the flushed batches plus the first `survivors`
    /// unflushed ones, then that appends continue from there and survive a clean reopen.
    fn expect_recovered(&self, dir: &Path, survivors: usize, what: &str) {
        let log = Log::open(dir, config()).unwrap_or_else(|e| panic!("{what}: reopen failed: {e}"));
        let expected: Vec<u8> = self
            .flushed
            .iter()
            .chain(&self.unflushed[..survivors])
            .flatten()
            .copied()
            .collect();
        let got = log.read(0, usize::MAX / 2).expect("read");
        common::assert_same_batches(&got, &expected, what);
        let end = (self.flushed.len() + survivors) as u64 * 2;
        assert_eq!(log.log_end_offset(), end, "{what}: log end offset");
        let next = common::one(100, 30_000);
        let info = log.append(&next, 2).expect("append after recovery");
        assert_eq!(
            info.first_offset, end,
            "{what}: appends continue at the recovered end"
        );
        log.close().expect("close");
        let log = Log::open(dir, config()).expect("reopen");
        assert_eq!(
            log.log_end_offset(),
            end + 1,
            "{what}: after a clean reopen"
        );
    }

    /// Unflushed batches wholly inside the first `len` bytes of the active segment.
    fn whole_before(&self, len: u64) -> usize {
        let mut end = self.flushed_len;
        self.unflushed
            .iter()
            .take_while(|b| {
                end += b.len() as u64;
                end <= len
            })
            .count()
    }
}

#[test]
fn cut_anywhere_after_the_flush_recovers_the_flushed_prefix_and_whole_batches() {
    let c = crashed();
    let file_len = fs::metadata(&c.active_log).expect("meta").len();
    for cut in c.flushed_len..=file_len {
        let copy = c.copy_with(|d| {
            let f = fs::OpenOptions::new()
                .write(true)
                .open(c.in_copy(d, &c.active_log))
                .expect("open");
            f.set_len(cut).expect("cut");
        });
        c.expect_recovered(copy.path(), c.whole_before(cut), &format!("cut at {cut}"));
    }
}

#[test]
fn corrupt_byte_after_the_flush_cuts_from_the_damaged_batch() {
    let c = crashed();
    let mut start = c.flushed_len;
    for (i, batch) in c.unflushed.iter().enumerate() {
        for at in 0..batch.len() as u64 {
            // The partition leader epoch (bytes 12..16) is outside the CRC in Kafka's format,
            // like the base offset; the base offset is checked by offset contiguity instead.
            if (12..16).contains(&at) {
                continue;
            }
            let pos = start + at;
            let copy = c.copy_with(|d| {
                let path = c.in_copy(d, &c.active_log);
                let mut bytes = fs::read(&path).expect("read");
                bytes[pos as usize] ^= 0xff;
                fs::write(&path, bytes).expect("write");
            });
            c.expect_recovered(
                copy.path(),
                i,
                &format!("byte {at} of unflushed batch {i} flipped"),
            );
        }
        start += batch.len() as u64;
    }
}

/// Segments below the recovery point were fsynced and are trusted at open, as in Kafka: a
/// byte rotted in one of them does not make recovery throw away the fsynced segments after
/// it. Only that batch differs when read back (a consumer's CRC check rejects it).
#[test]
fn corruption_in_a_trusted_segment_keeps_every_later_segment() {
    let c = crashed();
    let dir = c.dir.path();
    let first = Log::open(dir, config()).expect("open").segments()[0].clone();
    let copy = c.copy_with(|d| {
        let path = c.in_copy(d, &first.log_path);
        let mut bytes = fs::read(&path).expect("read");
        let at = bytes.len() / 2;
        bytes[at] ^= 0xff;
        fs::write(&path, bytes).expect("write");
    });
    let log = Log::open(copy.path(), config()).expect("reopen");
    let end = (c.flushed.len() + c.unflushed.len()) as u64 * 2;
    assert_eq!(log.log_end_offset(), end, "nothing was cut");
    let got = common::split(&log.read(0, usize::MAX / 2).expect("read"));
    let sent: Vec<&Vec<u8>> = c.flushed.iter().chain(&c.unflushed).collect();
    assert_eq!(got.len(), sent.len());
    let differing: Vec<usize> = got
        .iter()
        .zip(&sent)
        .enumerate()
        .filter(|(_, ((_, got), sent))| got[16..] != sent[16..])
        .map(|(i, _)| i)
        .collect();
    assert_eq!(differing.len(), 1, "only the rotted batch differs");
    assert!(
        (differing[0] as u64) * 2 < first.next_offset,
        "and it is in the first segment"
    );
}

#[test]
fn garbage_appended_after_the_last_batch_is_cut_off() {
    let c = crashed();
    for garbage in [
        vec![0u8; 1],
        vec![0u8; 61],
        vec![0xffu8; 100],
        vec![0u8; 4096],
    ] {
        let copy = c.copy_with(|d| {
            let path = c.in_copy(d, &c.active_log);
            let mut bytes = fs::read(&path).expect("read");
            bytes.extend_from_slice(&garbage);
            fs::write(&path, bytes).expect("write");
        });
        c.expect_recovered(
            copy.path(),
            c.unflushed.len(),
            &format!("{} bytes of garbage", garbage.len()),
        );
    }
}

#[test]
fn missing_checkpoint_recovers_every_segment() {
    let c = crashed();
    let copy = c.copy_with(|d| fs::remove_file(d.join("log.checkpoint")).expect("remove"));
    c.expect_recovered(copy.path(), c.unflushed.len(), "no checkpoint");
    let copy = c.copy_with(|d| fs::write(d.join("log.checkpoint"), b"\0\0garbage").expect("write"));
    c.expect_recovered(copy.path(), c.unflushed.len(), "garbage checkpoint");
}

/// Every index file, sealed or active, deleted, cut at every byte, or overwritten with garbage:
/// the log reopens with all its data, and lookups by offset and by time still answer right.
#[test]
fn damaged_indexes_are_rebuilt_or_bypassed() {
    let c = crashed();
    let indexes: Vec<PathBuf> = {
        let mut v: Vec<PathBuf> = fs::read_dir(c.dir.path())
            .expect("list")
            .map(|e| e.expect("entry").path())
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == "index" || e == "timeindex")
            })
            .collect();
        v.sort();
        v
    };
    assert!(indexes.len() >= 6);
    let all: Vec<Vec<u8>> = c.flushed.iter().chain(&c.unflushed).cloned().collect();
    let check = |dir: &Path, what: &str| {
        let log = Log::open(dir, config()).unwrap_or_else(|e| panic!("{what}: {e}"));
        for (i, batch) in all.iter().enumerate() {
            let offset = i as u64 * 2 + 1; // the second record of each batch
            let got = log.read(offset, 1).expect("read");
            common::assert_same_batches(&got, batch, &format!("{what}: read at {offset}"));
        }
        for (i, ts) in (10_000..10_025).chain(20_000..20_003).enumerate() {
            assert_eq!(
                log.offset_for_timestamp(ts).expect("by time"),
                Some(i as u64 * 2),
                "{what}: offset for timestamp {ts}"
            );
        }
        assert_eq!(
            log.max_timestamp().expect("max"),
            Some((20_002, 54)),
            "{what}"
        );
    };
    for index in &indexes {
        let name = index
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_string();
        let len = fs::metadata(index).expect("meta").len();
        let copy = c.copy_with(|d| fs::remove_file(d.join(&name)).expect("remove"));
        check(copy.path(), &format!("{name} deleted"));
        for cut in 0..len {
            let copy = c.copy_with(|d| {
                let f = fs::OpenOptions::new()
                    .write(true)
                    .open(d.join(&name))
                    .expect("open");
                f.set_len(cut).expect("cut");
            });
            check(copy.path(), &format!("{name} cut at {cut}"));
        }
        for fill in [0x00u8, 0xab, 0xff] {
            let copy =
                c.copy_with(|d| fs::write(d.join(&name), vec![fill; len as usize]).expect("write"));
            check(copy.path(), &format!("{name} filled with {fill:#x}"));
        }
        for flip in 0..len as usize {
            let copy = c.copy_with(|d| {
                let path = d.join(&name);
                let mut bytes = fs::read(&path).expect("read");
                bytes[flip] ^= 0x40;
                fs::write(&path, bytes).expect("write");
            });
            // Offset index entries are checked against the batch they point at when used.
            if name.ends_with(".index") {
                check(copy.path(), &format!("{name} byte {flip} flipped"));
            }
        }
    }
}

/// Under the no-fsync policy a roll does not fsync the sealed segment; only `flush` does. A
/// crash after rolls but before the next flush can tear a segment that is already sealed: the
/// log then keeps the flushed prefix and the whole batches before the tear, and drops the later
/// segments.
#[test]
fn segments_sealed_after_the_flush_recover_like_the_active_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), config()).expect("open");
    for i in 0..10i64 {
        log.append(&common::one(500, i), 1).expect("append");
    }
    log.flush().expect("flush");
    let at_flush = log.segments().last().cloned().expect("active");
    let flushed = log.read(0, usize::MAX / 2).expect("read").to_vec();
    for i in 10..30i64 {
        log.append(&common::one(500, i), 1).expect("append");
    }
    let later = log.segments().len();
    drop(log);
    assert!(
        later >= at_flush_index(&at_flush, dir.path()) + 3,
        "rolled twice after the flush"
    );
    let torn = fs::read(&at_flush.log_path).expect("read");
    let unflushed = common::split(&torn[at_flush.size_bytes as usize..]);
    assert!(!unflushed.is_empty());
    let copy_dir_of = |cut: u64| {
        let copy = tempfile::tempdir().expect("tempdir");
        copy_dir(dir.path(), copy.path());
        let path = copy
            .path()
            .join(at_flush.log_path.file_name().expect("name"));
        fs::OpenOptions::new()
            .write(true)
            .open(path)
            .expect("open")
            .set_len(cut)
            .expect("cut");
        copy
    };
    for cut in (at_flush.size_bytes..=torn.len() as u64 - 1).step_by(7) {
        let copy = copy_dir_of(cut);
        let log = Log::open(copy.path(), config()).expect("reopen");
        let mut end = at_flush.size_bytes;
        let survivors: Vec<u8> = unflushed
            .iter()
            .take_while(|(_, b)| {
                end += b.len() as u64;
                end <= cut
            })
            .flat_map(|(_, b)| b.clone())
            .collect();
        let expected = [flushed.clone(), survivors].concat();
        let got = log.read(0, usize::MAX / 2).expect("read");
        common::assert_same_batches(&got, &expected, &format!("sealed segment cut at {cut}"));
        assert_eq!(
            log.segments().last().expect("active").log_path.file_name(),
            at_flush.log_path.file_name()
        );
    }
}

fn at_flush_index(seg: &strata_storage::SegmentInfo, dir: &Path) -> usize {
    let mut logs: Vec<_> = fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs.iter()
        .position(|p| *p == seg.log_path)
        .expect("listed")
}
