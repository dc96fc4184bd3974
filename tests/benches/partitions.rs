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
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use strata_client::Client;
use tokio::process::{Child, Command};

mod common;

use common::{BenchResult, RECORD_BYTES, send_all};

const TOPIC: &str = "wide";

fn main() -> BenchResult<()> {
    common::block_on(run())
}

/// The broker process under test.
struct Broker {
    binary: PathBuf,
    dir: PathBuf,
    addr: String,
    child: Option<Child>,
}

impl Broker {
    fn spawn(&mut self) -> BenchResult<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("broker.log"))?;
        let child = Command::new(&self.binary)
            .args([
                "--set",
                &format!("data_dir=\"{}\"", self.dir.join("data").display()),
            ])
            .args(["--set", &format!("kafka.listen=\"{}\"", self.addr)])
            .args(["--set", "http.listen=\"127.0.0.1:0\""])
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    fn pid(&self) -> BenchResult<u32> {
        self.child
            .as_ref()
            .and_then(Child::id)
            .ok_or_else(|| "the broker is not running".into())
    }

    /// Resident bytes and open descriptors of the broker process.
    fn footprint(&self) -> BenchResult<(u64, usize)> {
        let pid = self.pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or("no VmRSS")?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
        Ok((rss_kib * 1024, fds))
    }

    /// CPU seconds the broker process has used (user and system).
    fn cpu_seconds(&self) -> BenchResult<f64> {
        let pid = self.pid()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name (which may hold spaces) start after its ')'.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
        Ok((ticks(11) + ticks(12)) / 100.0)
    }

    /// Stops the broker with `signal`; returns how long it took to exit.
    async fn stop(&mut self, signal: &str) -> BenchResult<Duration> {
        let pid = self.pid()?;
        let started = Instant::now();
        std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()?;
        if let Some(mut child) = self.child.take() {
            tokio::time::timeout(Duration::from_secs(120), child.wait()).await??;
        }
        Ok(started.elapsed())
    }

    fn log_line(&self, containing: &str) -> Option<String> {
        let log = std::fs::read_to_string(self.dir.join("broker.log")).ok()?;
        log.lines()
            .rfind(|l| l.contains(containing))
            .map(str::to_owned)
    }
}

async fn run() -> BenchResult<()> {
    let partitions: i32 = std::env::var("STRATA_BENCH_PARTITIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let binary = std::env::var_os("STRATA_BENCH_BINARY").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_strata-node")),
        PathBuf::from,
    );
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut broker = Broker {
        binary,
        dir: dir.path().to_owned(),
        addr: format!("127.0.0.1:{port}"),
        child: None,
    };
    println!(
        "{partitions} partitions on one broker ({})",
        broker.binary.display()
    );
    broker.spawn()?;
    let client = connect(&broker.addr, Duration::from_secs(60)).await?;
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

/// A client of the broker at `addr`, once it answers.
async fn connect(addr: &str, within: Duration) -> BenchResult<Client> {
    let deadline = Instant::now() + within;
    loop {
        match Client::connect(addr).await {
            Ok(c) if c.cluster().await.is_ok() => return Ok(c),
            _ if Instant::now() > deadline => return Err(format!("{addr} never answered").into()),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
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
