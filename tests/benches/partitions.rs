//! Many partitions on one broker: the `strata` binary as a user runs it (a single node, a
//! local directory as object store), one topic of `STRATA_BENCH_PARTITIONS` partitions
//! (default 10,000), and librdkafka to write to all of them.
//!
//! `cargo bench -p strata-tests --bench partitions`; `STRATA_BENCH_BINARY` measures another
//! build of `strata` (say, an older commit's) with the same steps.
//!
//! Figures, in one run:
//! - how long CreateTopics takes until every partition has a leader;
//! - resident memory and open descriptors per partition, idle (over the broker before the
//!   topic existed), and the broker's partition budget as it logged it;
//! - produce MB/s of 1 KiB records spread round-robin over every partition (acks=all);
//! - time from start to serving every partition (a record to each acknowledged) after a clean
//!   stop (SIGTERM) and after `kill -9`, and how long the clean stop took.

#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use strata_client::Client;

mod common;

use common::process::BrokerProcess;
use common::{BenchResult, RECORD_BYTES, send_all};

const TOPIC: &str = "wide";

fn main() -> BenchResult<()> {
    common::block_on(run())
}

async fn run() -> BenchResult<()> {
    let partitions: i32 = common::env_or("STRATA_BENCH_PARTITIONS", 10_000);
    let dir = tempfile::tempdir()?;
    let mut broker = BrokerProcess::new(dir.path(), &[])?;
    println!(
        "{partitions} partitions on one broker ({})",
        broker.binary.display()
    );
    broker.spawn()?;
    let client = broker.connect(Duration::from_secs(60)).await?;
    let (rss0, fds0) = broker.footprint()?;

    let started = Instant::now();
    let created = client
        .create_topic(TOPIC, partitions, 1, &BTreeMap::new())
        .await;
    if let Err(e) = created {
        println!("CreateTopics of {partitions} partitions refused: {e}");
        if let Some(line) = broker.log_line("budget") {
            println!("broker: {line}");
        }
        broker.stop("-TERM").await?;
        return Ok(());
    }
    all_led(&client, partitions, Duration::from_secs(600)).await?;
    let create = started.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cpu = broker.cpu_seconds()?;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let idle_cpu = (broker.cpu_seconds()? - cpu) / 20.0;
    let (rss1, fds1) = broker.footprint()?;
    let per = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / f64::from(partitions);
    println!(
        "create: {:.2} s; idle: {:.1} KiB and {:.2} descriptors a partition (RSS {} MiB, {} fds; before the topic {} MiB, {} fds)",
        create.as_secs_f64(),
        per(rss1, rss0) / 1024.0,
        per(fds1 as u64, fds0 as u64),
        rss1 >> 20,
        fds1,
        rss0 >> 20,
        fds0
    );
    println!("idle CPU: {:.1}% of a core", idle_cpu * 100.0);
    if let Some(line) = broker.log_line("budget") {
        println!("broker: {}", line.trim());
    }

    let records = u64::try_from(partitions).unwrap_or(0).max(1) * 20;
    let producer = common::producer(&broker.addr, "5")?;
    let payload = vec![b'x'; RECORD_BYTES];
    let n = u64::try_from(partitions).unwrap_or(1).max(1);
    let secs = send_all(&producer, TOPIC, records, &payload, |i| {
        (Some((i % n) as i32), String::new())
    })
    .await?;
    drop(producer);
    let (rss2, fds2) = broker.footprint()?;
    println!(
        "produce over all {partitions}: {:.1} MB/s ({records} records of {RECORD_BYTES} B in {secs:.1} s); then RSS {} MiB, {} fds",
        (records * RECORD_BYTES as u64) as f64 / secs / 1e6,
        rss2 >> 20,
        fds2
    );

    let stop = broker.stop("-TERM").await?;
    let start = Instant::now();
    broker.spawn()?;
    serving(&broker.addr, partitions).await?;
    println!(
        "clean stop took {:.1} s; start to serving every partition: {:.1} s",
        stop.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
    let (rss3, fds3) = broker.footprint()?;
    println!("after restart: RSS {} MiB, {} fds", rss3 >> 20, fds3);

    broker.stop("-KILL").await?;
    let start = Instant::now();
    broker.spawn()?;
    serving(&broker.addr, partitions).await?;
    println!(
        "after kill -9, start to serving every partition: {:.1} s",
        start.elapsed().as_secs_f64()
    );
    broker.stop("-TERM").await?;
    Ok(())
}

/// Waits until Metadata shows every partition of the topic with a leader.
async fn all_led(client: &Client, partitions: i32, within: Duration) -> BenchResult<()> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok((info, _)) = client.describe_topic(TOPIC).await {
            let led = info.partitions.iter().filter(|p| p.leader >= 0).count();
            if led == usize::try_from(partitions).unwrap_or(0) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err("not every partition got a leader".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until a record sent to each partition is acknowledged (librdkafka retries while
/// the broker is starting).
async fn serving(addr: &str, partitions: i32) -> BenchResult<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "300000")
        .create()?;
    let mut pending = Vec::with_capacity(usize::try_from(partitions).unwrap_or(0));
    for p in 0..partitions {
        let record = FutureRecord::<(), _>::to(TOPIC).partition(p).payload(b"up");
        pending.push(producer.send_result(record).map_err(|(e, _)| e)?);
    }
    for f in pending {
        f.await?.map_err(|(e, _)| e)?;
    }
    Ok(())
}
