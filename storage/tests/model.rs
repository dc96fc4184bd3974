//! Property test: random sequences of append / read / roll / reopen / truncate / delete-before /
//! retention / reset, checked against a simple in-memory model of segments and batches.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use strata_storage::{BatchHeader, FlushPolicy, Log, LogConfig, ManualClock, StorageError};

const NOW: i64 = 1_000_000;

#[derive(Debug, Clone)]
enum Op {
    /// Batches, each a list of (value length, timestamp).
    Append(Vec<Vec<(usize, i64)>>),
    /// Offset as a fraction of [log_start - 1, log_end + 1], and max bytes.
    Read(f64, usize),
    Roll,
    Reopen {
        clean: bool,
    },
    Truncate(f64),
    DeleteBefore(f64),
    RetainBytes(u64),
    RetainMs(i64),
    Reset(f64),
    /// A record picked by fraction, and a delta added to its timestamp.
    ByTimestamp(f64, i64),
}

fn op() -> impl Strategy<Value = Op> {
    let record = (0usize..1200, NOW - 300..NOW);
    let batch = prop::collection::vec(record, 1..6);
    prop_oneof![
        12 => prop::collection::vec(batch, 1..3).prop_map(Op::Append),
        6 => (0.0..1.0f64, 0usize..12_000).prop_map(|(f, m)| Op::Read(f, m)),
        2 => Just(Op::Roll),
        2 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
        2 => (0.0..1.0f64).prop_map(Op::Truncate),
        2 => (0.0..1.0f64).prop_map(Op::DeleteBefore),
        1 => (0u64..30_000).prop_map(Op::RetainBytes),
        1 => (0i64..400).prop_map(Op::RetainMs),
        1 => (0.0..1.0f64).prop_map(Op::Reset),
        3 => (0.0..1.0f64, -1i64..=1).prop_map(|(f, d)| Op::ByTimestamp(f, d)),
    ]
}

#[derive(Debug, Clone)]
struct Batch {
    base: u64,
    /// Record timestamps, in offset order.
    timestamps: Vec<i64>,
    bytes: Vec<u8>,
}

impl Batch {
    fn last(&self) -> u64 {
        self.base + self.timestamps.len() as u64 - 1
    }
    fn max_ts(&self) -> i64 {
        self.timestamps.iter().copied().max().unwrap_or(-1)
    }
}

#[derive(Debug, Clone)]
struct Segment {
    base: u64,
    batches: Vec<Batch>,
}

impl Segment {
    fn size(&self) -> u64 {
        self.batches.iter().map(|b| b.bytes.len() as u64).sum()
    }
    fn next(&self) -> u64 {
        self.batches.last().map_or(self.base, |b| b.last() + 1)
    }
    fn max_ts(&self) -> i64 {
        self.batches.iter().map(Batch::max_ts).max().unwrap_or(-1)
    }
}

#[derive(Debug)]
struct Model {
    segments: Vec<Segment>,
    log_start: u64,
    segment_bytes: u64,
}

impl Model {
    fn leo(&self) -> u64 {
        self.segments.last().map_or(0, Segment::next)
    }
    fn active(&mut self) -> &mut Segment {
        self.segments.last_mut().expect("never empty")
    }
    fn batches(&self) -> impl Iterator<Item = &Batch> {
        self.segments.iter().flat_map(|s| s.batches.iter())
    }
    fn roll(&mut self) {
        if !self.active().batches.is_empty() {
            let base = self.leo();
            self.segments.push(Segment {
                base,
                batches: vec![],
            });
        }
    }
    fn append(&mut self, batches: Vec<Batch>, len: u64) {
        let active = self.segments.last().expect("never empty");
        if !active.batches.is_empty() && active.size() + len > self.segment_bytes {
            self.roll();
        }
        self.active().batches.extend(batches);
    }
    fn pick(&self, f: f64) -> u64 {
        // Spread over [log_start - 1, leo + 1].
        let lo = self.log_start.saturating_sub(1);
        let hi = self.leo() + 1;
        lo + ((hi - lo) as f64 * f) as u64
    }
    fn read(&self, from: u64, max: usize) -> Option<Vec<u8>> {
        if from < self.log_start || from > self.leo() {
            return None;
        }
        let mut out = Vec::new();
        for b in self.batches().skip_while(|b| b.last() < from) {
            if !out.is_empty() && out.len() + b.bytes.len() > max {
                break;
            }
            out.extend_from_slice(&b.bytes);
        }
        Some(out)
    }
    fn reset(&mut self, off: u64) {
        self.segments = vec![Segment {
            base: off,
            batches: vec![],
        }];
        self.log_start = off;
    }
    fn truncate(&mut self, off: u64) {
        if off >= self.leo() {
            return;
        }
        let cut = self
            .batches()
            .find(|b| b.last() >= off)
            .map_or(off, |b| b.base.min(off));
        if off < self.log_start || cut < self.log_start || off < self.segments[0].base {
            self.reset(off);
            return;
        }
        let k = self
            .segments
            .iter()
            .rposition(|s| s.base <= off)
            .expect("found");
        self.segments.truncate(k + 1);
        self.segments[k].batches.retain(|b| b.base < cut);
    }
    fn delete_before(&mut self, off: u64) -> bool {
        if off > self.leo() {
            return false;
        }
        if off <= self.log_start {
            return true;
        }
        if off == self.leo() {
            self.roll();
        }
        self.log_start = off;
        while self.segments.len() > 1 && self.segments[0].next() <= off {
            self.segments.remove(0);
        }
        true
    }
    fn retain(&mut self, cutoff: Option<i64>, bytes: Option<u64>) {
        let mut excess =
            bytes.map(|b| self.segments.iter().map(Segment::size).sum::<u64>() as i128 - b as i128);
        while self.segments.len() > 1 {
            let s = &self.segments[0];
            let expired = cutoff.is_some_and(|c| s.max_ts() < c);
            let oversize = excess.is_some_and(|e| e - s.size() as i128 >= 0);
            if !(expired || oversize) {
                break;
            }
            excess = excess.map(|e| e - s.size() as i128);
            self.segments.remove(0);
        }
        self.log_start = self.log_start.max(self.segments[0].base);
    }
    fn by_timestamp(&self, ts: i64) -> Option<u64> {
        self.batches().find_map(|b| {
            b.timestamps
                .iter()
                .enumerate()
                .map(|(i, &t)| (b.base + i as u64, t))
                .find(|&(off, t)| off >= self.log_start && t >= ts)
                .map(|(off, _)| off)
        })
    }
    fn max_timestamp(&self) -> Option<(i64, u64)> {
        let max = self.batches().map(Batch::max_ts).max()?;
        self.batches().find_map(|b| {
            b.timestamps
                .iter()
                .position(|&t| t == max)
                .map(|i| (max, b.base + i as u64))
        })
    }
}

fn config(segment_bytes: u64, interval: u64, flush: FlushPolicy) -> LogConfig {
    LogConfig {
        segment_bytes,
        segment_ms: None,
        index_interval_bytes: interval,
        max_batch_bytes: 64 * 1024,
        retention_ms: None,
        retention_bytes: None,
        flush,
        ..LogConfig::default()
    }
}

fn open(dir: &Path, cfg: &LogConfig, clock: &Arc<ManualClock>) -> Log {
    Log::open_with_clock(dir, cfg.clone(), clock.clone()).expect("open")
}

fn check_shape(log: &Log, model: &Model) {
    assert_eq!(log.log_start_offset(), model.log_start, "log start");
    assert_eq!(log.log_end_offset(), model.leo(), "log end");
    let actual: Vec<_> = log
        .segments()
        .iter()
        .map(|s| (s.base_offset, s.next_offset, s.size_bytes))
        .collect();
    let expected: Vec<_> = model
        .segments
        .iter()
        .map(|s| (s.base, s.next(), s.size()))
        .collect();
    assert_eq!(actual, expected, "segments");
    let segs = log.segments();
    assert!(segs[..segs.len() - 1].iter().all(|s| s.sealed));
    assert!(!segs[segs.len() - 1].sealed);
}

fn run(ops: Vec<Op>, segment_bytes: u64, interval: u64, flush: FlushPolicy) {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(NOW));
    let mut cfg = config(segment_bytes, interval, flush);
    let mut log = open(dir.path(), &cfg, &clock);
    let mut model = Model {
        segments: vec![Segment {
            base: 0,
            batches: vec![],
        }],
        log_start: 0,
        segment_bytes,
    };
    for op in ops {
        match op {
            Op::Append(specs) => {
                let mut buf = Vec::new();
                let mut stamps = Vec::new();
                for spec in &specs {
                    buf.extend_from_slice(&common::batch(spec));
                    stamps.push(spec.iter().map(|&(_, ts)| ts).collect::<Vec<_>>());
                }
                let first = model.leo();
                let info = log.append(&buf, 3).expect("append");
                // What the log writes: each batch's base offset and leader epoch stamped.
                let mut next = first as i64;
                let mut at = 0;
                while at < buf.len() {
                    let h = BatchHeader::parse(&buf[at..]).expect("header");
                    buf[at..at + 8].copy_from_slice(&next.to_be_bytes());
                    buf[at + 12..at + 16].copy_from_slice(&3i32.to_be_bytes());
                    next += i64::from(h.last_offset_delta) + 1;
                    at += h.total_len();
                }
                let count: usize = stamps.iter().map(Vec::len).sum();
                assert_eq!(info.first_offset, first);
                assert_eq!(info.last_offset, first + count as u64 - 1);
                let batches = common::split(&buf)
                    .into_iter()
                    .zip(stamps)
                    .map(|((base, bytes), timestamps)| Batch {
                        base: base as u64,
                        timestamps,
                        bytes,
                    })
                    .collect();
                model.append(batches, buf.len() as u64);
            }
            Op::Read(f, max) => {
                let from = model.pick(f);
                match (log.read(from, max), model.read(from, max)) {
                    (Ok(bytes), Some(expected)) => common::assert_same_batches(
                        &bytes,
                        &expected,
                        &format!("read {from} max {max}"),
                    ),
                    (Err(StorageError::OffsetOutOfRange { .. }), None) => {}
                    (got, want) => panic!("read {from}: got {got:?}, want {want:?}"),
                }
            }
            Op::Roll => {
                log.roll().expect("roll");
                model.roll();
            }
            Op::Reopen { clean } => {
                if clean {
                    log.close().expect("close");
                } else {
                    drop(log);
                }
                log = open(dir.path(), &cfg, &clock);
            }
            Op::Truncate(f) => {
                let off = model.pick(f);
                let end = log.truncate_to(off).expect("truncate");
                model.truncate(off);
                assert_eq!(end, model.leo());
            }
            Op::DeleteBefore(f) => {
                let off = model.pick(f);
                let ok = model.delete_before(off);
                assert_eq!(log.delete_before(off).is_ok(), ok, "delete before {off}");
            }
            Op::RetainBytes(bytes) => {
                cfg.retention_bytes = Some(bytes);
                log.set_config(cfg.clone()).expect("config");
                log.apply_retention().expect("retention");
                model.retain(None, Some(bytes));
                cfg.retention_bytes = None;
                log.set_config(cfg.clone()).expect("config");
            }
            Op::RetainMs(ms) => {
                cfg.retention_ms = Some(Duration::from_millis(ms as u64));
                log.set_config(cfg.clone()).expect("config");
                log.apply_retention().expect("retention");
                model.retain(Some(NOW - ms), None);
                cfg.retention_ms = None;
                log.set_config(cfg.clone()).expect("config");
            }
            Op::Reset(f) => {
                let off = model.pick(f);
                log.reset_to(off).expect("reset");
                model.reset(off);
            }
            Op::ByTimestamp(f, delta) => {
                let all: Vec<i64> = model.batches().flat_map(|b| b.timestamps.clone()).collect();
                let ts = all
                    .get((all.len() as f64 * f) as usize)
                    .map_or(NOW, |t| t + delta);
                assert_eq!(
                    log.offset_for_timestamp(ts).expect("by time"),
                    model.by_timestamp(ts),
                    "offset for timestamp {ts}"
                );
                assert_eq!(log.max_timestamp().expect("max ts"), model.max_timestamp());
            }
        }
        check_shape(&log, &model);
    }
    // Everything from the log start reads back byte for byte, after one more reopen.
    drop(log);
    let log = open(dir.path(), &cfg, &clock);
    check_shape(&log, &model);
    let start = model.log_start;
    let all = log.read(start, usize::MAX / 2).expect("read all");
    let expected = model.read(start, usize::MAX / 2).expect("in range");
    common::assert_same_batches(&all, &expected, "final read of everything");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_model(
        ops in prop::collection::vec(op(), 1..60),
        segment_bytes in 1_000u64..12_000,
        interval in prop::sample::select(vec![1u64, 300, 4096]),
        flush in prop::sample::select(vec![
            FlushPolicy::Os,
            FlushPolicy::EveryAppend,
            FlushPolicy::Interval(Duration::from_millis(5)),
        ]),
    ) {
        run(ops, segment_bytes, interval, flush);
    }
}
