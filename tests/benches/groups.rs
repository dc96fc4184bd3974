//! Rebalances, classic protocol against KIP-848 (`group.protocol=consumer`), with librdkafka
//! members in this process and an in-process Strata broker (or `STRATA_BOOTSTRAP`):
//!
//! ```sh
//! cargo bench -p strata-tests --bench groups
//! ```
//!
//! While a producer writes to every partition of a 20-partition topic, for each protocol:
//! nine members form a group, then a tenth joins — the time from its subscribe to its first
//! assignment; then one of the ten leaves — the rebalance downtime: the longest any
//! partition goes without a record consumed, from the leave until every partition is
//! consumed again (minus nothing: records arrive every `1000 / RATE_PER_PARTITION` ms, so
//! that much is the floor). Clients keep their defaults (classic: the eager range assignor,
//! 3 s heartbeats; KIP-848: the broker's uniform assignor and 5 s heartbeats).

#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

mod common;

use common::{BenchResult, create_topic};

const PARTITIONS: i32 = 20;
const RATE_PER_PARTITION: u64 = 20;
const MEMBERS: usize = 10;

fn main() -> BenchResult<()> {
    common::block_on(run())
}

/// When each partition last had a record consumed, by any member.
type LastSeen = Arc<Mutex<BTreeMap<i32, Vec<Instant>>>>;

struct Member {
    stop: Arc<AtomicBool>,
    assigned_at: Arc<Mutex<Option<Instant>>>,
    thread: std::thread::JoinHandle<()>,
}

fn member(bootstrap: &str, group: &str, protocol: &str, topic: &str, seen: &LastSeen) -> Member {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("group.protocol", protocol)
        .set("auto.offset.reset", "latest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let stop = Arc::new(AtomicBool::new(false));
    let assigned_at = Arc::new(Mutex::new(None));
    let (flag, first, seen) = (stop.clone(), assigned_at.clone(), seen.clone());
    let thread = std::thread::spawn(move || {
        while !flag.load(Ordering::SeqCst) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) {
                let now = Instant::now();
                let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                s.entry(m.partition()).or_default().push(now);
            }
            let mut first = first.lock().unwrap_or_else(|p| p.into_inner());
            if first.is_none() && consumer.assignment().is_ok_and(|a| a.count() > 0) {
                *first = Some(Instant::now());
            }
        }
        // Dropping the consumer leaves the group.
    });
    Member {
        stop,
        assigned_at,
        thread,
    }
}

impl Member {
    fn leave(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.thread.join();
    }

    fn assigned_at(&self) -> Option<Instant> {
        *self.assigned_at.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Waits until every partition had a record consumed after `since`; the time it took.
async fn all_consumed_after(seen: &LastSeen, since: Instant, within: Duration) -> Option<Instant> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let done = {
            let s = seen.lock().unwrap_or_else(|p| p.into_inner());
            (0..PARTITIONS).all(|p| {
                s.get(&p)
                    .is_some_and(|t| t.last().is_some_and(|x| *x > since))
            })
        };
        if done {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// The longest gap between consecutive consumed records of any partition, among those
/// around `[from, to]`.
fn longest_gap(seen: &LastSeen, from: Instant, to: Instant) -> Duration {
    let s = seen.lock().unwrap_or_else(|p| p.into_inner());
    let mut longest = Duration::ZERO;
    for times in s.values() {
        let mut prev: Option<Instant> = times.iter().rev().find(|t| **t <= from).copied();
        for t in times.iter().filter(|t| **t > from && **t <= to) {
            if let Some(p) = prev {
                longest = longest.max(*t - p);
            }
            prev = Some(*t);
        }
    }
    longest
}

async fn measure(
    bootstrap: &str,
    protocol: &str,
    topic: &str,
) -> BenchResult<(Duration, Duration)> {
    let group = format!("bench-{protocol}");
    let seen = LastSeen::default();
    let mut members: Vec<Member> = (0..MEMBERS - 1)
        .map(|_| member(bootstrap, &group, protocol, topic, &seen))
        .collect();
    let start = Instant::now();
    all_consumed_after(&seen, start, Duration::from_secs(120))
        .await
        .ok_or("nine members never consumed every partition")?;
    // Settle, so the join below is measured against a stable group.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let joined = Instant::now();
    let tenth = member(bootstrap, &group, protocol, topic, &seen);
    let deadline = Instant::now() + Duration::from_secs(120);
    let join = loop {
        if let Some(at) = tenth.assigned_at() {
            break at - joined;
        }
        if Instant::now() > deadline {
            return Err("the tenth member got no assignment".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    members.push(tenth);
    tokio::time::sleep(Duration::from_secs(8)).await;
    let leaving = members.remove(0);
    let left = Instant::now();
    tokio::task::spawn_blocking(move || leaving.leave()).await?;
    let back = all_consumed_after(&seen, left, Duration::from_secs(120))
        .await
        .ok_or("the partitions were not all consumed again")?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let downtime = longest_gap(&seen, left, back);
    for m in members {
        tokio::task::spawn_blocking(move || m.leave()).await?;
    }
    Ok((join, downtime))
}

async fn run() -> BenchResult<()> {
    let (broker, bootstrap) = common::target().await;
    let topic = "rebalance";
    create_topic(&bootstrap, topic, PARTITIONS, 1, &[]).await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "0")
        .create()?;
    let producing = Arc::new(AtomicBool::new(true));
    let writer = tokio::spawn({
        let producing = producing.clone();
        async move {
            let tick = Duration::from_millis(1000 / RATE_PER_PARTITION);
            while producing.load(Ordering::SeqCst) {
                for p in 0..PARTITIONS {
                    let _ = producer
                        .send_result(FutureRecord::<(), _>::to(topic).partition(p).payload("x"));
                }
                tokio::time::sleep(tick).await;
            }
        }
    });
    println!(
        "librdkafka {}, {MEMBERS} members, {PARTITIONS} partitions, a record per partition every {} ms",
        rdkafka::util::get_rdkafka_version().1,
        1000 / RATE_PER_PARTITION
    );
    println!(
        "{:<10} {:>22} {:>34}",
        "protocol", "join → assignment", "downtime when 1 of 10 leaves"
    );
    for protocol in ["classic", "consumer"] {
        let (join, downtime) = measure(&bootstrap, protocol, topic).await?;
        println!(
            "{protocol:<10} {:>20.0} ms {:>31.0} ms",
            join.as_secs_f64() * 1e3,
            downtime.as_secs_f64() * 1e3
        );
    }
    producing.store(false, Ordering::SeqCst);
    writer.await?;
    if let Some(b) = broker {
        b.stop().await;
    }
    Ok(())
}
