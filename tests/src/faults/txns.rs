//! The fault checker's transactional workload, on a topic of its own: a librdkafka
//! transactional producer writes each transaction's values to every partition (committing
//! most, aborting every fourth on purpose), and a read_committed reader follows. At the end:
//! - atomicity: in the committed log a transaction's values are all there or none are;
//! - a committed transaction is all there, an aborted one (the abort acknowledged) is not;
//! - aborted reads: the read_committed reader never saw a value of an aborted transaction,
//!   and every offset it saw holds, in the final log, what it saw there;
//! - the reader reaches the end, and no value is in the log twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, Producer, ThreadedProducer as RdProducer,
};
use rdkafka::{Offset, TopicPartitionList};

use super::TxnCounts;

pub(super) const TOPIC: &str = "checked-txn";
pub(super) const PARTITIONS: i32 = 3;
/// Values per partition in each transaction.
const PER_PARTITION: usize = 2;
const PER_TXN: usize = PER_PARTITION * PARTITIONS as usize;

/// How a transaction ended, as its producer was told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Committed,
    Aborted,
    /// The commit or abort failed: either may have happened.
    Unknown,
}

#[derive(Debug, Default)]
struct Seen {
    outcomes: BTreeMap<u64, Outcome>,
    /// (partition, offset) → value, as the read_committed reader read it.
    read: HashMap<(i32, i64), String>,
    reader_at: BTreeMap<i32, i64>,
    troubles: BTreeMap<&'static str, String>,
    anomalies: Vec<String>,
}

type Shared = Arc<Mutex<Seen>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Seen> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

fn anomaly(s: &mut Seen, what: String) {
    eprintln!("  ANOMALY: {what}");
    s.anomalies.push(what);
}

/// The running workload.
pub(super) struct Workload {
    bootstrap: String,
    seen: Shared,
    stop_writer: Arc<AtomicBool>,
    stop_reader: Arc<AtomicBool>,
    writer: tokio::task::JoinHandle<()>,
    reader: tokio::task::JoinHandle<()>,
}

impl Workload {
    /// Starts the writer and the reader against `bootstrap` (the topic exists).
    pub(super) fn start(bootstrap: &str) -> Self {
        let seen = Shared::default();
        let stop_writer = Arc::new(AtomicBool::new(false));
        let stop_reader = Arc::new(AtomicBool::new(false));
        let writer = {
            let (b, s, stop) = (bootstrap.to_owned(), seen.clone(), stop_writer.clone());
            tokio::task::spawn_blocking(move || write(&b, &s, &stop))
        };
        let reader = {
            let (b, s, stop) = (bootstrap.to_owned(), seen.clone(), stop_reader.clone());
            tokio::task::spawn_blocking(move || read(&b, &s, &stop))
        };
        Self {
            bootstrap: bootstrap.to_owned(),
            seen,
            stop_writer,
            stop_reader,
            writer,
            reader,
        }
    }

    /// Stops the writer, reads the committed log once no transaction is open, lets the
    /// reader catch up, and checks; the anomalies found go to `anomalies`.
    pub(super) async fn finish(self, anomalies: &mut Vec<String>) -> TxnCounts {
        self.stop_writer.store(true, Ordering::SeqCst);
        let _ = self.writer.await;
        let b = self.bootstrap.clone();
        let log = tokio::task::spawn_blocking(move || committed_log(&b))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        let log = match log {
            Ok(log) => log,
            Err(e) => {
                anomalies.push(format!("transactions: cannot read the committed log: {e}"));
                BTreeMap::new()
            }
        };
        // The reader catches up to the end of the committed log.
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
        for (p, offset) in log.keys() {
            ends.insert(*p, *offset);
        }
        loop {
            let behind: Vec<String> = {
                let s = lock(&self.seen);
                ends.iter()
                    .filter(|(p, last)| s.reader_at.get(p).is_none_or(|at| at < last))
                    .map(|(p, last)| format!("{p}: at {:?} of {last}", s.reader_at.get(p)))
                    .collect()
            };
            if behind.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                let troubles = format!("{:#?}", lock(&self.seen).troubles);
                anomalies.push(format!(
                    "transactions: the read_committed reader stopped short ({}); troubles: {troubles}",
                    behind.join(", ")
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.stop_reader.store(true, Ordering::SeqCst);
        let _ = self.reader.await;
        let s = lock(&self.seen);
        if !s.troubles.is_empty() {
            eprintln!(
                "  the transactional workload's last troubles: {:#?}",
                s.troubles
            );
        }
        anomalies.extend(s.anomalies.iter().cloned());
        check(&log, &s, anomalies);
        let count = |o: Outcome| s.outcomes.values().filter(|x| **x == o).count();
        TxnCounts {
            committed: count(Outcome::Committed),
            aborted: count(Outcome::Aborted),
            unknown: count(Outcome::Unknown),
        }
    }
}

/// A producer that serves its delivery reports on a thread of its own (commit and abort
/// flush, and wait for them).
type TxnProducer = RdProducer<DefaultProducerContext>;

fn producer(bootstrap: &str) -> Result<TxnProducer, KafkaError> {
    let p: TxnProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", "checker-txn")
        .set("transaction.timeout.ms", "10000")
        .set("message.timeout.ms", "10000")
        .set("socket.timeout.ms", "10000")
        .set("linger.ms", "5")
        .create()?;
    p.init_transactions(Duration::from_secs(30))?;
    Ok(p)
}

/// Writes transactions until stopped, a new producer (fencing the last) whenever one
/// cannot go on.
fn write(bootstrap: &str, seen: &Shared, stop: &AtomicBool) {
    let mut next: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        match producer(bootstrap) {
            Ok(p) => transactions(&p, &mut next, seen, stop),
            Err(e) => {
                lock(seen)
                    .troubles
                    .insert("txn writer", format!("init: {e}"));
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Runs transactions on `p` until stopped or until one ends in doubt.
fn transactions(p: &TxnProducer, next: &mut u64, seen: &Shared, stop: &AtomicBool) {
    let wait = Duration::from_secs(60);
    while !stop.load(Ordering::SeqCst) {
        if let Err(e) = p.begin_transaction() {
            lock(seen)
                .troubles
                .insert("txn writer", format!("begin: {e}"));
            return;
        }
        *next += 1;
        let n = *next;
        lock(seen).outcomes.insert(n, Outcome::Unknown);
        let mut queued = true;
        for partition in 0..PARTITIONS {
            for i in 0..PER_PARTITION {
                let value = format!("t{n}-{partition}-{i}");
                let record = BaseRecord::<(), _>::to(TOPIC)
                    .partition(partition)
                    .payload(&value);
                queued &= p.send(record).is_ok();
            }
        }
        let outcome = if n.is_multiple_of(4) || !queued {
            match p.abort_transaction(wait) {
                Ok(()) => Outcome::Aborted,
                Err(e) => {
                    lock(seen)
                        .troubles
                        .insert("txn writer", format!("abort: {e}"));
                    Outcome::Unknown
                }
            }
        } else {
            match p.commit_transaction(wait) {
                Ok(()) => Outcome::Committed,
                Err(KafkaError::Transaction(e)) if e.txn_requires_abort() => {
                    match p.abort_transaction(wait) {
                        Ok(()) => Outcome::Aborted,
                        Err(e) => {
                            let what = format!("abort after commit: {e}");
                            lock(seen).troubles.insert("txn writer", what);
                            Outcome::Unknown
                        }
                    }
                }
                Err(e) => {
                    lock(seen)
                        .troubles
                        .insert("txn writer", format!("commit: {e}"));
                    Outcome::Unknown
                }
            }
        };
        lock(seen).outcomes.insert(n, outcome);
        if outcome == Outcome::Unknown {
            // A new producer with the same id finishes or aborts whatever this one left.
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn consumer(bootstrap: &str, isolation: &str) -> Result<BaseConsumer, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "checker-txn-unused")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .set("fetch.wait.max.ms", "100")
        .set("socket.timeout.ms", "10000")
        .create()
}

fn assign_from_start(c: &BaseConsumer) -> Result<(), KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(TOPIC, p, Offset::Beginning)?;
    }
    c.assign(&tpl)
}

/// Follows the topic read_committed from the start until stopped.
fn read(bootstrap: &str, seen: &Shared, stop: &AtomicBool) {
    let c = match consumer(bootstrap, "read_committed").and_then(|c| {
        assign_from_start(&c)?;
        Ok(c)
    }) {
        Ok(c) => c,
        Err(e) => {
            anomaly(&mut lock(seen), format!("transactions: no reader: {e}"));
            return;
        }
    };
    while !stop.load(Ordering::SeqCst) {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let (p, offset) = (m.partition(), m.offset());
                let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                let mut s = lock(seen);
                if let Some(last) = s.reader_at.get(&p)
                    && offset <= *last
                {
                    let a = format!("transactions: reader went back on {p}: {offset} after {last}");
                    anomaly(&mut s, a);
                }
                s.reader_at.insert(p, offset);
                s.read.insert((p, offset), value);
            }
            Some(Err(e)) => {
                lock(seen).troubles.insert("txn reader", e.to_string());
            }
            None => {}
        }
    }
}

/// The committed log, read_committed from the start, once no transaction is open (each
/// partition's last stable offset has reached its end): (partition, offset) → value.
fn committed_log(bootstrap: &str) -> Result<BTreeMap<(i32, i64), String>, String> {
    let wait = Duration::from_secs(10);
    let committed = consumer(bootstrap, "read_committed").map_err(|e| e.to_string())?;
    let uncommitted = consumer(bootstrap, "read_uncommitted").map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut stable: BTreeMap<i32, i64> = BTreeMap::new();
    loop {
        let mut open = Vec::new();
        for p in 0..PARTITIONS {
            let lso = committed.fetch_watermarks(TOPIC, p, wait).map(|w| w.1);
            let end = uncommitted.fetch_watermarks(TOPIC, p, wait).map(|w| w.1);
            match (lso, end) {
                (Ok(lso), Ok(end)) if lso == end => {
                    stable.insert(p, lso);
                }
                (lso, end) => open.push(format!("{p}: stable {lso:?} of {end:?}")),
            }
        }
        if open.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("transactions still open: {}", open.join(", ")));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assign_from_start(&committed).map_err(|e| e.to_string())?;
    let mut log = BTreeMap::new();
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(3) {
        if Instant::now() > deadline + Duration::from_secs(120) {
            return Err("reading the committed log timed out".into());
        }
        match committed.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                log.insert((m.partition(), m.offset()), value);
                quiet_since = Instant::now();
            }
            Some(Err(e)) => eprintln!("  reading the committed log: {e}"),
            None => {}
        }
    }
    for (p, end) in stable {
        let last = log.keys().filter(|(q, _)| *q == p).map(|(_, o)| *o).max();
        if last.is_some_and(|l| l >= end) {
            return Err(format!("partition {p} read past its stable end {end}"));
        }
    }
    Ok(log)
}

/// The transaction a value belongs to.
fn txn_of(value: &str) -> Option<u64> {
    value.strip_prefix('t')?.split('-').next()?.parse().ok()
}

fn check(log: &BTreeMap<(i32, i64), String>, s: &Seen, anomalies: &mut Vec<String>) {
    let mut per_txn: BTreeMap<u64, usize> = BTreeMap::new();
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for ((p, offset), value) in log {
        *copies.entry(value.as_str()).or_default() += 1;
        match txn_of(value) {
            Some(n) => *per_txn.entry(n).or_default() += 1,
            None => anomalies.push(format!(
                "transactions: {p}/{offset} holds {value:?}, which was never written"
            )),
        }
    }
    for (value, n) in copies {
        if n > 1 {
            anomalies.push(format!("transactions: {value} is in the log {n} times"));
        }
    }
    for (n, count) in &per_txn {
        if *count != PER_TXN {
            anomalies.push(format!(
                "transactions: not atomic: {count} of transaction {n}'s {PER_TXN} values committed"
            ));
        }
        if !s.outcomes.contains_key(n) {
            anomalies.push(format!("transactions: transaction {n} was never begun"));
        }
    }
    for (n, outcome) in &s.outcomes {
        let count = per_txn.get(n).copied().unwrap_or(0);
        match outcome {
            Outcome::Committed if count != PER_TXN => anomalies.push(format!(
                "transactions: lost: transaction {n} was committed; {count} of {PER_TXN} values are"
            )),
            Outcome::Aborted if count > 0 => anomalies.push(format!(
                "transactions: transaction {n} was aborted; {count} of its values are committed"
            )),
            _ => {}
        }
    }
    for ((p, offset), value) in &s.read {
        if txn_of(value).is_some_and(|n| s.outcomes.get(&n) == Some(&Outcome::Aborted)) {
            anomalies.push(format!(
                "transactions: aborted read: the read_committed reader saw {value} at {p}/{offset}"
            ));
        }
        match log.get(&(*p, *offset)) {
            Some(v) if v == value => {}
            found => anomalies.push(format!(
                "transactions: the reader saw {value} at {p}/{offset}; the committed log holds {found:?}"
            )),
        }
    }
}
