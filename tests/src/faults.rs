//! The fault checker: a three-broker process cluster on an S3 server (each broker a controller
//! voter too, or brokers beside a quorum of dedicated controllers), every link behind a
//! proxy, under idempotent `acks=all` writes of unique values, assign-based readers and a
//! consumer group, while randomized faults come and go one at a time: kill -9 and restart,
//! kill -9 and a wiped disk, SIGTERM, SIGSTOP/SIGCONT, a process cut off from the others,
//! the controller leader cut off, two processes cut from each other, clients cut from a
//! broker, and a broker cut from the object store or the store down for everyone. Links are
//! cut either by resets or by hanging (nothing flows, nothing closes). Process faults hit
//! brokers and dedicated controllers alike.
//!
//! After each fault is healed the checker waits for the cluster to be whole again (every
//! broker live, every replica in sync); at the end it stops the writers and checks:
//! - every acknowledged write is in the log at the offset it was acknowledged with;
//! - no value is in the log twice, and nothing is there that was never written;
//! - every offset any reader saw holds, in the final log, the record the reader saw;
//! - a reader's offsets only move forward (and it is never told its offset is out of range);
//! - the group's committed offsets never go backwards and reach the end;
//! - writers never hit a fatal idempotence error, and readers reach the end of the log;
//! - beside them, transactions on a topic of their own are atomic, committed ones are all
//!   there, aborted ones never read by a read_committed reader ([`txns`]).
//!
//! It reports per fault how long produce and consume were unavailable: the longest time, on
//! any partition, from the fault (or the last success before it) to the next acknowledgement
//! or record read, while the fault held or the cluster recovered.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use strata_client::Client;
use tokio::sync::watch;
use tokio::task::JoinSet;

mod txns;

use crate::cluster::{Options, ProcessCluster};
use crate::proxy::{Cut, Peer};
use crate::s3::S3Server;

const TOPIC: &str = "checked";
const PARTITIONS: i32 = 3;
const GROUP: &str = "checker-group";
const WRITERS: usize = 2;
const GROUP_MEMBERS: usize = 2;

/// What to run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// How many faults, one after another.
    pub faults: usize,
    /// Seeds the choice of faults, targets and hold times (printed, to run a case again).
    pub seed: u64,
    /// Each fault holds for a random time in this range before it is healed.
    pub hold: (Duration, Duration),
    /// Records per second each of the writers offers.
    pub rate: u32,
    /// Every kind of fault once (in a seeded order) before any repeats.
    pub each_kind_first: bool,
    /// Dedicated controllers forming the quorum, the brokers in `remote` mode beside them;
    /// 0: each broker is a voter too.
    pub controllers: i32,
    /// Broker settings (`key=value`) on top of the checker's own, to check a configuration.
    pub settings: Vec<String>,
}

/// A fault, by kind and target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL, then start it again.
    Kill(i32),
    /// SIGKILL, delete its partition data, start it again.
    KillAndWipe(i32),
    /// SIGTERM (controlled shutdown), then start it again.
    Terminate(i32),
    /// SIGSTOP, then SIGCONT.
    Pause(i32),
    /// Cut from every other process (Kafka and controller links); clients still reach it.
    Isolate(i32, Cut),
    /// The controller's Raft leader, cut from every other process.
    IsolateController(i32, Cut),
    /// Two processes cut from each other only.
    Pair(i32, i32, Cut),
    /// The test's clients cut from a broker.
    ClientsOff(i32, Cut),
    /// A broker cut from the object store.
    StoreOff(i32, Cut),
    /// The object store down for everyone (connections refused).
    StoreDown,
}

impl Fault {
    /// The kind, without its targets.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Kill(_) => "kill -9 and restart",
            Self::KillAndWipe(_) => "kill -9, wipe, restart",
            Self::Terminate(_) => "SIGTERM and restart",
            Self::Pause(_) => "SIGSTOP/SIGCONT",
            Self::Isolate(..) => "node isolated",
            Self::IsolateController(..) => "controller leader isolated",
            Self::Pair(..) => "two nodes cut apart",
            Self::ClientsOff(..) => "clients cut from a broker",
            Self::StoreOff(..) => "broker cut from the store",
            Self::StoreDown => "object store down",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = |c: &Cut| match c {
            Cut::Reset => "reset",
            Cut::Hang => "hang",
        };
        match self {
            Self::Kill(n) => write!(f, "kill -9 node {n}"),
            Self::KillAndWipe(n) => write!(f, "kill -9 node {n}, wipe its disk"),
            Self::Terminate(n) => write!(f, "SIGTERM node {n}"),
            Self::Pause(n) => write!(f, "SIGSTOP node {n}"),
            Self::Isolate(n, c) => write!(f, "isolate node {n} ({})", how(c)),
            Self::IsolateController(n, c) => {
                write!(f, "isolate controller leader {n} ({})", how(c))
            }
            Self::Pair(a, b, c) => write!(f, "cut nodes {a}<->{b} ({})", how(c)),
            Self::ClientsOff(n, c) => write!(f, "clients off broker {n} ({})", how(c)),
            Self::StoreOff(n, c) => write!(f, "broker {n} off the store ({})", how(c)),
            Self::StoreDown => write!(f, "object store down"),
        }
    }
}

/// What happened around one fault.
#[derive(Clone, Debug)]
pub struct FaultRecord {
    /// The fault.
    pub fault: Fault,
    /// How long it held.
    pub held: Duration,
    /// From the heal until the cluster was whole again.
    pub recovered: Duration,
    /// Longest time without a produce acknowledgement on some partition.
    pub produce_gap: Duration,
    /// Longest time without a record read by the assign reader on some partition.
    pub consume_gap: Duration,
}

/// The outcome of a run.
#[derive(Debug, Default)]
pub struct Report {
    /// The seed the run used.
    pub seed: u64,
    /// Every fault, in order.
    pub faults: Vec<FaultRecord>,
    /// Writes acknowledged.
    pub acknowledged: usize,
    /// Writes whose outcome the producer could not tell (they may or may not be there).
    pub indeterminate: usize,
    /// Records in the final log.
    pub in_log: usize,
    /// Records the readers saw, with repeats.
    pub read: usize,
    /// How the transactional workload's transactions ended.
    pub transactions: TxnCounts,
    /// Everything that broke a guarantee.
    pub anomalies: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "fault checker (seed {}): {} faults, {} writes acknowledged, {} indeterminate, \
             {} records in the log, {} read; {} anomalies",
            self.seed,
            self.faults.len(),
            self.acknowledged,
            self.indeterminate,
            self.in_log,
            self.read,
            self.anomalies.len()
        )?;
        writeln!(
            f,
            "transactions: {} committed, {} aborted, {} in doubt (checked all or nothing)",
            self.transactions.committed, self.transactions.aborted, self.transactions.unknown
        )?;
        writeln!(
            f,
            "{:<44} {:>8} {:>10} {:>12} {:>12}",
            "fault", "held", "recovered", "produce gap", "consume gap"
        )?;
        for r in &self.faults {
            writeln!(
                f,
                "{:<44} {:>7.1}s {:>9.1}s {:>11.2}s {:>11.2}s",
                r.fault.to_string(),
                r.held.as_secs_f64(),
                r.recovered.as_secs_f64(),
                r.produce_gap.as_secs_f64(),
                r.consume_gap.as_secs_f64()
            )?;
        }
        let mut by_kind: BTreeMap<String, Vec<&FaultRecord>> = BTreeMap::new();
        for r in &self.faults {
            by_kind
                .entry(r.fault.kind().to_owned())
                .or_default()
                .push(r);
        }
        writeln!(
            f,
            "by kind (count, produce gap max/median, consume gap max):"
        )?;
        for (kind, rs) in by_kind {
            let mut gaps: Vec<Duration> = rs.iter().map(|r| r.produce_gap).collect();
            gaps.sort();
            let consume = rs.iter().map(|r| r.consume_gap).max().unwrap_or_default();
            writeln!(
                f,
                "  {kind:<36} {:>3}  {:>6.2}s / {:>6.2}s  {:>6.2}s",
                rs.len(),
                gaps.last().copied().unwrap_or_default().as_secs_f64(),
                gaps[gaps.len() / 2].as_secs_f64(),
                consume.as_secs_f64()
            )?;
        }
        for a in &self.anomalies {
            writeln!(f, "ANOMALY: {a}")?;
        }
        Ok(())
    }
}

/// How the transactional workload's transactions ended, as its producer was told.
#[derive(Debug, Default)]
pub struct TxnCounts {
    pub committed: usize,
    pub aborted: usize,
    /// The commit or abort failed: either may have happened (all or nothing, checked).
    pub unknown: usize,
}

/// What the workload saw, shared by its tasks.
#[derive(Debug, Default)]
struct Observed {
    /// (partition, offset, value) of every acknowledged write.
    acked: Vec<(i32, i64, String)>,
    /// Values whose write failed (indeterminate).
    failed: Vec<String>,
    /// When acknowledgements came, per partition.
    ack_times: BTreeMap<i32, Vec<Instant>>,
    /// When the assign reader read records, per partition.
    read_times: BTreeMap<i32, Vec<Instant>>,
    /// offset → value as any reader saw it.
    seen: HashMap<(i32, i64), String>,
    /// The assign reader's last offset per partition.
    reader_at: BTreeMap<i32, i64>,
    /// Highest committed offsets of the group seen so far.
    committed: BTreeMap<i32, i64>,
    /// Who answered each partition's highest committed offset.
    committed_from: BTreeMap<i32, String>,
    /// Records read, with repeats.
    read: usize,
    /// Values written per writer (the next sequence number).
    sent: Vec<u64>,
    /// The last thing each task had trouble with, to explain an anomaly.
    troubles: BTreeMap<String, String>,
    anomalies: Vec<String>,
}

type Shared = Arc<Mutex<Observed>>;

/// Notes an anomaly, printing it at once (a long run shows it when it happens).
fn anomaly(o: &mut Observed, what: String) {
    eprintln!("  ANOMALY: {what}");
    o.anomalies.push(what);
}

fn trouble(o: &Shared, who: &str, what: impl fmt::Display) {
    let what = format!("{what} (at {:?})", Instant::now());
    lock(o).troubles.insert(who.to_owned(), what);
}

fn lock(o: &Shared) -> std::sync::MutexGuard<'_, Observed> {
    o.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `plan` against `binary` (the `strata` command line) and reports.
pub async fn run(binary: &Path, plan: &Plan) -> Report {
    let mut settings = vec![
        "object_store.upload_interval_ms=500",
        "topics.flush_check_interval_ms=200",
        // A follower cut off from its leader holds acks=all back this long.
        "topics.replica_lag_time_max_ms=3000",
    ];
    settings.extend(plan.settings.iter().map(String::as_str));
    let mut s3 = S3Server::start().await;
    s3.create_bucket("strata").await;
    let mut cluster = ProcessCluster::start_opts(
        binary,
        3,
        Options {
            settings: &settings,
            proxied: true,
            s3: Some(s3.addr()),
            controllers: plan.controllers,
            ..Options::default()
        },
    )
    .await;
    let bootstrap = cluster.bootstrap();
    let client = Client::connect(&bootstrap).await.expect("connect");
    let configs = BTreeMap::from([
        ("min.insync.replicas".to_owned(), "2".to_owned()),
        ("segment.bytes".to_owned(), (256 << 10).to_string()),
        ("local.retention.bytes".to_owned(), (1 << 20).to_string()),
    ]);
    client
        .create_topic(TOPIC, PARTITIONS, 3, &configs)
        .await
        .expect("create the checked topic");
    client
        .create_topic(txns::TOPIC, txns::PARTITIONS, 3, &configs)
        .await
        .expect("create the transactions' topic");
    drop(client);

    let observed: Shared = Arc::new(Mutex::new(Observed {
        sent: vec![0; WRITERS],
        ..Observed::default()
    }));
    let (stop_writers, writers_stopped) = watch::channel(false);
    let mut writers = JoinSet::new();
    for w in 0..WRITERS {
        let stopped = writers_stopped.clone();
        writers.spawn(write(
            w,
            bootstrap.clone(),
            plan.rate,
            observed.clone(),
            stopped,
        ));
    }
    let (stop_readers, readers_stopped) = watch::channel(false);
    let mut readers = JoinSet::new();
    readers.spawn(read(
        bootstrap.clone(),
        observed.clone(),
        readers_stopped.clone(),
    ));
    for m in 0..GROUP_MEMBERS {
        readers.spawn(consume(
            m,
            bootstrap.clone(),
            observed.clone(),
            readers_stopped.clone(),
        ));
    }
    readers.spawn(watch_commits(
        bootstrap.clone(),
        observed.clone(),
        readers_stopped,
    ));
    let transactions = txns::Workload::start(&bootstrap);

    let mut rng = fastrand::Rng::with_seed(plan.seed);
    let mut report = Report {
        seed: plan.seed,
        ..Report::default()
    };
    // Let the workload get going before the first fault.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut kinds: Vec<usize> = Vec::new();
    for i in 0..plan.faults {
        if kinds.is_empty() && plan.each_kind_first {
            kinds = (0..KINDS).collect();
            rng.shuffle(&mut kinds);
        }
        let kind = kinds.pop().unwrap_or_else(|| rng.usize(0..KINDS));
        let hold = plan.hold.0 + (plan.hold.1 - plan.hold.0).mul_f64(rng.f64());
        let fault = choose(kind, &mut rng, &cluster).await;
        eprintln!("fault {}/{}: {fault} for {hold:.1?}", i + 1, plan.faults);
        let started = Instant::now();
        inject(fault, &mut cluster, &mut s3).await;
        tokio::time::sleep(hold).await;
        heal(fault, &mut cluster, &mut s3).await;
        let healed = Instant::now();
        let whole = whole_again(&cluster, Duration::from_secs(90)).await;
        let recovered = healed.elapsed();
        if let Err(e) = whole {
            anomaly(
                &mut lock(&observed),
                format!("after {fault}: the cluster was not whole again: {e}"),
            );
        }
        // A moment of calm, so the gaps of this fault end before the next begins.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let o = lock(&observed);
        let record = FaultRecord {
            fault,
            held: healed - started,
            recovered,
            produce_gap: longest_gap(&o.ack_times, started, Instant::now()),
            consume_gap: longest_gap(&o.read_times, started, Instant::now()),
        };
        eprintln!(
            "  recovered {:.1?} after the heal; produce gap {:.2?}, consume gap {:.2?}; reader at {:?}; {} anomalies so far",
            record.recovered,
            record.produce_gap,
            record.consume_gap,
            o.reader_at.values().collect::<Vec<_>>(),
            o.anomalies.len()
        );
        report.faults.push(record);
    }

    eprintln!("faults done; stopping the writers");
    let _ = stop_writers.send(true);
    while writers.join_next().await.is_some() {}
    eprintln!("writers stopped; reading the log");
    let log = final_log(&cluster, &mut report).await;
    let ends: BTreeMap<i32, i64> = log.keys().map(|(p, o)| (*p, o + 1)).collect();
    // The readers and the group read to the end of what was written.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let behind: Vec<String> = {
            let o = lock(&observed);
            ends.iter()
                .filter_map(|(p, end)| {
                    let read = o.reader_at.get(p).map_or(0, |o| o + 1);
                    let committed = o.committed.get(p).copied().unwrap_or(0);
                    (read < *end || committed < *end).then(|| {
                        format!("partition {p}: read to {read}, committed {committed} of {end}")
                    })
                })
                .collect()
        };
        if behind.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let troubles = format!("{:#?}", lock(&observed).troubles);
            report.anomalies.push(format!(
                "readers stopped short: {}; troubles: {troubles}",
                behind.join("; ")
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("stopping the readers");
    let _ = stop_readers.send(true);
    while readers.join_next().await.is_some() {}
    eprintln!("checking the transactions");
    report.transactions = transactions.finish(&mut report.anomalies).await;
    for (value, at) in check(&log, &ends, &observed, &mut report) {
        let mut held = Vec::new();
        for (p, offset) in at {
            held.push(batch_holding(&cluster, p, offset).await);
        }
        report
            .anomalies
            .push(format!("the batches holding {value}: {}", held.join("; ")));
    }
    if !report.anomalies.is_empty() {
        let to = std::env::temp_dir().join(format!("strata-faults-{}", plan.seed));
        match cluster.save_logs(&to) {
            Ok(()) => eprintln!("the brokers' logs are in {}", to.display()),
            Err(e) => eprintln!("the brokers' logs could not be saved: {e}"),
        }
    }
    report
}

/// How many kinds of fault [`choose`] picks from.
const KINDS: usize = 10;

async fn choose(kind: usize, rng: &mut fastrand::Rng, cluster: &ProcessCluster) -> Fault {
    let pick = |ids: Vec<i32>, rng: &mut fastrand::Rng| ids[rng.usize(0..ids.len())];
    let node = pick(cluster.processes(), rng);
    let broker = pick(cluster.ids(), rng);
    let other = pick(
        cluster
            .processes()
            .into_iter()
            .filter(|i| *i != node)
            .collect(),
        rng,
    );
    let how = if rng.bool() { Cut::Reset } else { Cut::Hang };
    match kind {
        0 => Fault::Kill(node),
        1 => Fault::KillAndWipe(node),
        2 => Fault::Terminate(node),
        3 => Fault::Pause(node),
        4 => Fault::Isolate(node, how),
        5 => {
            let leader = cluster.controller_leader().await.unwrap_or(node);
            Fault::IsolateController(leader, how)
        }
        6 => Fault::Pair(node, other, how),
        7 => Fault::ClientsOff(broker, how),
        8 => Fault::StoreOff(broker, how),
        _ => Fault::StoreDown,
    }
}

async fn inject(fault: Fault, cluster: &mut ProcessCluster, s3: &mut S3Server) {
    match fault {
        Fault::Kill(n) => cluster.kill(n).await,
        Fault::KillAndWipe(n) => {
            cluster.kill(n).await;
            // The partition data only: a controller voter's Raft log must survive (a voter
            // that forgot its votes could vote twice in one term).
            let _ = std::fs::remove_dir_all(cluster.data_dir(n).join("logs"));
        }
        Fault::Terminate(n) => {
            cluster.terminate(n).await;
        }
        Fault::Pause(n) => cluster.pause(n),
        Fault::Isolate(n, how) | Fault::IsolateController(n, how) => {
            for other in cluster.processes().into_iter().filter(|o| *o != n) {
                cluster.cut(Peer::Node(other), n, how);
            }
        }
        Fault::Pair(a, b, how) => cluster.cut(Peer::Node(a), b, how),
        Fault::ClientsOff(n, how) => cluster.cut(Peer::Client, n, how),
        Fault::StoreOff(n, how) => cluster.cut_store(n, how),
        Fault::StoreDown => s3.stop().await,
    }
}

async fn heal(fault: Fault, cluster: &mut ProcessCluster, s3: &mut S3Server) {
    match fault {
        Fault::Kill(n) | Fault::KillAndWipe(n) | Fault::Terminate(n) => cluster.restart(n),
        Fault::Pause(n) => cluster.resume(n),
        Fault::StoreDown => s3.resume().await,
        _ => cluster.heal(),
    }
}

/// Waits until every broker, asked on its own listener, sees every broker live and every
/// replica of the checked topic in sync.
async fn whole_again(cluster: &ProcessCluster, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let mut waiting = cluster.ids();
    let mut last = String::new();
    while let Some(id) = waiting.first().copied() {
        if Instant::now() > deadline {
            return Err(format!("broker {id}: {last}\n{}", cluster.logs()));
        }
        let ask = async {
            let client = Client::connect(&cluster.kafka_addr(id).to_string())
                .await
                .map_err(|e| e.to_string())?;
            let (brokers, _) = client.cluster().await.map_err(|e| e.to_string())?;
            let (info, _) = client
                .describe_topic(TOPIC)
                .await
                .map_err(|e| e.to_string())?;
            let whole = brokers.len() == 3
                && info
                    .partitions
                    .iter()
                    .all(|p| p.leader >= 0 && p.isr.len() == 3);
            Ok::<_, String>((
                whole,
                format!("{} brokers, {:?}", brokers.len(), info.partitions),
            ))
        };
        match tokio::time::timeout(Duration::from_secs(5), ask).await {
            Ok(Ok((true, _))) => {
                waiting.remove(0);
                continue;
            }
            Ok(Ok((false, state))) => last = state,
            Ok(Err(e)) => last = e,
            Err(_) => last = "metadata timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// The longest time on any partition from `from` (or the last event before it) to the next
/// event, among gaps that began before `to`.
fn longest_gap(times: &BTreeMap<i32, Vec<Instant>>, from: Instant, to: Instant) -> Duration {
    let mut longest = Duration::ZERO;
    for t in times.values() {
        // Events are pushed as they happen, so each list is in order.
        let first_after = t.partition_point(|x| *x <= from);
        let mut prev = from;
        for x in &t[first_after..] {
            if prev >= to {
                break;
            }
            longest = longest.max(x.saturating_duration_since(prev));
            prev = *x;
        }
        if prev < to {
            // Nothing since: unavailable until the end of the window at least.
            longest = longest.max(to.saturating_duration_since(prev));
        }
    }
    longest
}

fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .set("socket.timeout.ms", "10000")
        .create()
        .expect("producer")
}

/// Writes `w<w>-<seq>` values round-robin over the partitions at about `rate` per second.
async fn write(
    w: usize,
    bootstrap: String,
    rate: u32,
    observed: Shared,
    mut stopped: watch::Receiver<bool>,
) {
    let mut producer = producer(&bootstrap);
    let mut deliveries = JoinSet::new();
    let per_tick = (rate / 100).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq: u64 = 0;
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            _ = tick.tick() => {}
        }
        if let Some((code, reason)) = producer.client().fatal_error() {
            anomaly(
                &mut lock(&observed),
                format!("writer {w}: fatal producer error {code:?}: {reason}"),
            );
            producer = self::producer(&bootstrap);
        }
        while deliveries.try_join_next().is_some() {}
        if deliveries.len() > 20_000 {
            continue;
        }
        for _ in 0..per_tick {
            let value = format!("w{w}-{seq}");
            let partition = (seq % PARTITIONS as u64) as i32;
            let record = FutureRecord::<(), _>::to(TOPIC)
                .partition(partition)
                .payload(value.as_bytes());
            let Ok(delivery) = producer.send_result(record) else {
                break;
            };
            seq += 1;
            lock(&observed).sent[w] = seq;
            let observed = observed.clone();
            deliveries.spawn(async move {
                let outcome = delivery.await;
                let mut o = lock(&observed);
                match outcome {
                    Ok(Ok(d)) => {
                        o.acked.push((d.partition, d.offset, value));
                        o.ack_times
                            .entry(d.partition)
                            .or_default()
                            .push(Instant::now());
                    }
                    _ => o.failed.push(value),
                }
            });
        }
    }
    let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(120))).await;
    while deliveries.join_next().await.is_some() {}
}

fn consumer(bootstrap: &str, group: &str, reset: &str) -> StreamConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", reset)
        .set("fetch.wait.max.ms", "100")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("socket.timeout.ms", "10000")
        .create()
        .expect("consumer")
}

/// Notes that some reader saw `value` at `partition`/`offset`; an offset seen before with
/// another value is an anomaly.
fn saw(o: &mut Observed, who: &str, partition: i32, offset: i64, value: String) {
    o.read += 1;
    if let Some(before) = o.seen.get(&(partition, offset)) {
        if *before != value {
            let a = format!(
                "{who}: offset {partition}/{offset} holds {value}, but {before} was read there"
            );
            anomaly(o, a);
        }
    } else {
        o.seen.insert((partition, offset), value);
    }
}

/// Reads every partition from the start with an assigned (group-less) consumer, checking
/// that its offsets only move forward.
async fn read(bootstrap: String, observed: Shared, mut stopped: watch::Receiver<bool>) {
    let reader = consumer(&bootstrap, "checker-reader", "error");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(TOPIC, p, Offset::Beginning)
            .expect("partition");
    }
    reader.assign(&tpl).expect("assign");
    loop {
        let message = tokio::select! {
            _ = stopped.changed() => break,
            m = reader.recv() => m,
        };
        let mut o = lock(&observed);
        match message {
            Ok(m) => {
                let (p, offset) = (m.partition(), m.offset());
                let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                if let Some(last) = o.reader_at.get(&p)
                    && offset <= *last
                {
                    let a = format!("reader went back on partition {p}: {offset} after {last}");
                    anomaly(&mut o, a);
                }
                o.reader_at.insert(p, offset);
                o.read_times.entry(p).or_default().push(Instant::now());
                saw(&mut o, "reader", p, offset, value);
            }
            Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset)) => {
                let a = "reader was told its offset is out of range".to_owned();
                if !o.anomalies.contains(&a) {
                    anomaly(&mut o, a);
                }
            }
            Err(e) => {
                let at = o.reader_at.clone();
                o.troubles.insert(
                    "reader".into(),
                    format!("{e} (at {:?}, positions {at:?})", Instant::now()),
                );
            }
        }
    }
    let _ = tokio::task::spawn_blocking(move || drop(reader)).await;
}

/// A member of the checked group: reads what it is assigned and commits as it goes.
async fn consume(
    member: usize,
    bootstrap: String,
    observed: Shared,
    mut stopped: watch::Receiver<bool>,
) {
    let consumer = consumer(&bootstrap, GROUP, "earliest");
    consumer.subscribe(&[TOPIC]).expect("subscribe");
    let mut last_commit = Instant::now();
    loop {
        let message = tokio::select! {
            _ = stopped.changed() => break,
            m = tokio::time::timeout(Duration::from_millis(500), consumer.recv()) => m,
        };
        if let Ok(Ok(m)) = &message {
            let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            let who = format!("group member {member}");
            saw(&mut lock(&observed), &who, m.partition(), m.offset(), value);
        }
        if let Ok(Err(e)) = &message {
            trouble(&observed, &format!("group member {member} reading"), e);
        }
        if last_commit.elapsed() > Duration::from_millis(500) {
            let assigned = consumer.assignment().map_or(0, |a| a.count());
            // Synchronous: librdkafka retries a failed asynchronous commit behind the ones
            // issued after it, so the group's offset went back with no broker at fault (the
            // coordinator's log showed one member's queued commits arrive as 36128, 36154,
            // 36128 after a partition). One commit at a time keeps "never backwards" a property
            // of the broker.
            let committed =
                tokio::task::block_in_place(|| consumer.commit_consumer_state(CommitMode::Sync));
            if let Err(e) = committed {
                let what = format!("{e} with {assigned} partitions assigned");
                trouble(
                    &observed,
                    &format!("group member {member} committing"),
                    what,
                );
            }
            last_commit = Instant::now();
        }
    }
    // Closing a group member waits for the group; not on the runtime's threads.
    let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
}

/// Polls the group's committed offsets; one that goes backwards is an anomaly.
async fn watch_commits(bootstrap: String, observed: Shared, mut stopped: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let ask = async {
            let client = Client::connect(&bootstrap).await?;
            client.committed_offsets_from(GROUP).await
        };
        // strata-client retries a coordinator that is moving or loading for 10 s.
        match tokio::time::timeout(Duration::from_secs(15), ask).await {
            Ok(Ok((offsets, from))) => record_commits(&observed, &offsets, &from),
            Ok(Err(e)) => trouble(&observed, "commit watcher", e),
            Err(_) => trouble(&observed, "commit watcher", "timed out"),
        }
    }
}

/// Records the offsets coordinator `from` (its Kafka address) answered.
fn record_commits(observed: &Shared, offsets: &BTreeMap<(String, i32), i64>, from: &str) {
    let mut o = lock(observed);
    for ((topic, p), offset) in offsets {
        if topic != TOPIC {
            continue;
        }
        let before = o.committed.get(p).copied().unwrap_or(0);
        if *offset < before {
            let earlier = o.committed_from.get(p).cloned().unwrap_or_default();
            let a = format!(
                "group offset of partition {p} went back from {before} (answered by the \
                 coordinator at {earlier}) to {offset} (answered by the coordinator at {from})"
            );
            anomaly(&mut o, a);
        }
        if *offset > before {
            o.committed.insert(*p, *offset);
            o.committed_from.insert(*p, from.to_owned());
        }
    }
}

/// The whole log of the checked topic, once the cluster is whole: (partition, offset) →
/// value. What keeps it from being read is an anomaly.
async fn final_log(cluster: &ProcessCluster, report: &mut Report) -> BTreeMap<(i32, i64), String> {
    if let Err(e) = whole_again(cluster, Duration::from_secs(90)).await {
        report
            .anomalies
            .push(format!("the cluster was not whole at the end: {e}"));
    }
    match tokio::time::timeout(Duration::from_secs(300), read_log(cluster)).await {
        Ok(Ok(log)) => log,
        Ok(Err(e)) => {
            report.anomalies.push(format!("cannot read the log: {e}"));
            BTreeMap::new()
        }
        Err(_) => {
            report.anomalies.push("reading the log timed out".into());
            BTreeMap::new()
        }
    }
}

async fn read_log(cluster: &ProcessCluster) -> Result<BTreeMap<(i32, i64), String>, String> {
    let client = Client::connect(&cluster.bootstrap())
        .await
        .map_err(|e| e.to_string())?;
    let mut log = BTreeMap::new();
    for p in 0..PARTITIONS {
        let end = client
            .list_offset(TOPIC, p, -1)
            .await
            .map_err(|e| e.to_string())?;
        let mut offset = 0;
        while offset < end {
            let (records, _) = client
                .fetch(TOPIC, p, offset, 4 << 20, 500)
                .await
                .map_err(|e| format!("reading {p} at {offset}: {e}"))?;
            if records.is_empty() {
                return Err(format!(
                    "partition {p} returns nothing at {offset} of {end}"
                ));
            }
            for r in records {
                offset = r.offset + 1;
                let value = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default());
                log.insert((p, r.offset), value.into_owned());
            }
        }
    }
    Ok(log)
}

/// The values `log` holds more than once, and where.
fn duplicates(log: &BTreeMap<(i32, i64), String>) -> Vec<(String, Vec<(i32, i64)>)> {
    let mut copies: BTreeMap<&str, Vec<(i32, i64)>> = BTreeMap::new();
    for ((p, offset), value) in log {
        copies
            .entry(value.as_str())
            .or_default()
            .push((*p, *offset));
    }
    copies
        .into_iter()
        .filter(|(_, at)| at.len() > 1)
        .map(|(value, at)| (value.to_owned(), at))
        .collect()
}

/// The producer fields of the batch holding `offset` of partition `p`, from whichever broker
/// answers a Fetch for it: tells a duplicate the client made (another producer epoch or
/// sequence) from one the broker let through (one producer id, epoch and sequence twice).
async fn batch_holding(cluster: &ProcessCluster, p: i32, offset: i64) -> String {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{BrokerId, FetchRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str(TOPIC)))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(p)
                        .with_fetch_offset(offset)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ]);
    for id in cluster.ids() {
        let addr = cluster.kafka_addr(id);
        let req = req.clone();
        // The test client panics on a refused connection: a broker that is down is skipped.
        let answer = tokio::spawn(async move {
            let mut c = crate::RawClient::connect(addr).await;
            c.call(12, &req).await
        });
        let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(5), answer).await else {
            continue;
        };
        let Some(part) = resp.responses.first().and_then(|t| t.partitions.first()) else {
            continue;
        };
        let records = part.records.clone().unwrap_or_default();
        if part.error_code != 0 || records.is_empty() {
            continue;
        }
        let mut rest = &records[..];
        while let Some(h) = strata_storage::BatchHeader::parse(rest) {
            if h.base_offset <= offset && offset <= h.last_offset() {
                return format!(
                    "at {p}/{offset} the batch at {} (producer {} epoch {} sequence {}, {} \
                     records, leader epoch {}; from broker {id})",
                    h.base_offset,
                    h.producer_id,
                    h.producer_epoch,
                    h.base_sequence,
                    h.records_count,
                    h.partition_leader_epoch
                );
            }
            rest = rest.get(h.total_len()..).unwrap_or_default();
        }
    }
    format!("at {p}/{offset} no broker answered with the batch")
}

/// The end-of-run checks (see the module's documentation) of the final `log`, whose
/// partitions end at `ends`; returns the values the log holds more than once, and where.
fn check(
    log: &BTreeMap<(i32, i64), String>,
    ends: &BTreeMap<i32, i64>,
    observed: &Shared,
    report: &mut Report,
) -> Vec<(String, Vec<(i32, i64)>)> {
    let o = lock(observed);
    report.acknowledged = o.acked.len();
    report.indeterminate = o.failed.len();
    report.in_log = log.len();
    report.read = o.read;
    report.anomalies.extend(o.anomalies.iter().cloned());
    // librdkafka acknowledges a retried batch the broker answered DUPLICATE_SEQUENCE_NUMBER
    // (written before, too long ago for the broker to remember its offset) with no offset:
    // such a write must be in its partition, wherever.
    let placed: HashMap<&str, i32> = log.iter().map(|((p, _), v)| (v.as_str(), *p)).collect();
    for (p, offset, value) in &o.acked {
        match log.get(&(*p, *offset)) {
            Some(v) if v == value => {}
            _ if *offset < 0 && placed.get(value.as_str()) == Some(p) => {}
            found => report.anomalies.push(format!(
                "lost: {value} was acknowledged at {p}/{offset}; the log holds {found:?}"
            )),
        }
    }
    for ((p, offset), value) in log {
        let written = value
            .strip_prefix('w')
            .and_then(|v| v.split_once('-'))
            .and_then(|(w, seq)| Some((w.parse::<usize>().ok()?, seq.parse::<u64>().ok()?)))
            .is_some_and(|(w, seq)| o.sent.get(w).is_some_and(|sent| seq < *sent));
        if !written {
            report.anomalies.push(format!(
                "{p}/{offset} holds {value:?}, which was never written"
            ));
        }
    }
    let duplicates = duplicates(log);
    for (value, at) in &duplicates {
        // Where, and where the writer was told it went: which copy a retry made.
        let acked: Vec<&(i32, i64, String)> =
            o.acked.iter().filter(|(_, _, v)| v == value).collect();
        report.anomalies.push(format!(
            "duplicate: {value} is in the log {} times, at {at:?} (acknowledged at {acked:?})",
            at.len()
        ));
    }
    for ((p, offset), value) in &o.seen {
        match log.get(&(*p, *offset)) {
            Some(v) if v == value => {}
            found => report.anomalies.push(format!(
                "a reader saw {value} at {p}/{offset}; the log holds {found:?}"
            )),
        }
    }
    for (p, end) in ends {
        let committed = o.committed.get(p).copied().unwrap_or(0);
        if committed > *end {
            report.anomalies.push(format!(
                "group committed {committed} on partition {p}, past its end {end}"
            ));
        }
    }
    duplicates
}
