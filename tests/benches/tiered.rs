//! Tiered storage throughput with librdkafka against a `strata` broker process (as a user runs
//! it; `STRATA_BENCH_BINARY` runs another build) whose object store is a real S3-compatible
//! HTTP server (s3s-fs, as the `strata-s3` program in a process of its own, on loopback). The
//! clients run in the bench's process, the librdkafka replay in a child process of its own
//! (this binary again), so they share the machine's cores as they would on one host, and each
//! one's CPU is reported apart.
//!
//! `cargo bench -p strata-tests --bench tiered` (size: `STRATA_BENCH_MIB`, default 1024; the
//! S3 server's directory: `STRATA_BENCH_S3_DIR`, default the temporary directory; its
//! priority: `STRATA_BENCH_S3_NICE`, below).
//!
//! Figures, in one run:
//! - produce MB/s into a tiered topic, and the upload lag meanwhile: how far the committed
//!   manifests trail the acknowledged log, and how long they take to catch up at the end;
//! - raw GET MB/s: the uploaded segment objects read straight from the S3 server in
//!   reader-sized ranges with the reader's concurrency, through object_store;
//! - cold replay MB/s: a consumer reading everything from offset 0, all of it from the object
//!   store (local retention is 0), as a fraction of the raw GET figure;
//! - warm replay MB/s: the same again, now from the cache (the consumer's own ceiling), and
//!   the cold replay as a fraction of it;
//! - cold replay MB/s by a client that decodes nothing (Fetch requests, batch headers only):
//!   the broker's remote read path without librdkafka's per-record work;
//! - a producer at a fixed 20 MB/s: its end-to-end and acknowledgement latency alone, then
//!   while a cold replay runs, and that replay's MB/s against the raw GET figure;
//! - the same producer while the header-only client replays (the broker's part of a replay
//!   without a librdkafka consumer's per-record work in this process);
//! - produce MB/s alone and while a cold replay runs (after a restart empties the cache).
//!
//! `STRATA_BENCH_BACKGROUND_NICE=n` sets the broker's `object_store.background_nice` (default
//! 10; 0 to compare with its object-store work at the priority of the rest).
//! `STRATA_BENCH_S3_NICE=n` starts the S3 server `n` nice steps down, standing for a store
//! whose CPU is not this machine's (on two cores it otherwise takes one, and its many threads
//! crowd the run queue the producer's threads wait in).
//!
//! `STRATA_BENCH_GETS=n` and `STRATA_BENCH_READAHEAD=n` set the broker's
//! `object_store.max_concurrent_gets` (default 16, as the raw GET figure uses) and
//! `cache.readahead_chunks` (default 4): how hard a replay presses the S3 server.
//!
//! MB/s of replay and GETs count segment bytes (what crosses the wire from S3), so the two are
//! comparable.

#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use strata_storage::tier::manifest::{Manifest, PartitionObjects};
use strata_storage::{BatchHeader, SegmentFile};
use strata_tests::RawClient;
use strata_tests::s3::{ACCESS_KEY, REGION, SECRET_KEY};
use uuid::Uuid;

const BUCKET: &str = "strata-bench";
const PREFIX: &str = "bench";
const PARTITIONS: i32 = 4;
const RECORD: usize = 1024;
const SEGMENT: u64 = 16 << 20;
const CHUNK: u64 = 4 << 20;
const GETS: usize = 16;
const SIDE_MIB: u64 = 256;
/// The fixed-rate producer's MB/s beside a cold replay.
const FIXED_MB_S: u64 = 20;

mod common;

use common::process::{BrokerProcess, S3Process};
use common::{BenchResult, Load, end_to_end_with, print_latencies, producer, send_all};

/// Set in the environment of this bench's own binary run as the replaying consumer's process:
/// `<bootstrap> <topic> <until, comma-separated>`.
const REPLAYER: &str = "STRATA_BENCH_REPLAYER";

fn main() -> BenchResult<()> {
    if let Ok(args) = std::env::var(REPLAYER) {
        return replayer(&args);
    }
    common::block_on(run())
}

async fn run() -> BenchResult<()> {
    let mib: u64 = common::env_or("STRATA_BENCH_MIB", 1024);
    // Where the S3 server keeps its objects: `/dev/shm` keeps its writes off the broker's
    // disk, as a remote S3 would be (on the same disk, ext4 makes the broker's fsyncs wait
    // for the server's writes too).
    let s3_root =
        std::env::var_os("STRATA_BENCH_S3_DIR").map_or_else(std::env::temp_dir, Into::into);
    let s3_dir = tempfile::tempdir_in(&s3_root)?;
    let s3_process = S3Process::spawn(s3_dir.path(), &[BUCKET]).await?;
    let s3 = &s3_process.server;
    let endpoint = s3.endpoint();
    let background_nice = common::env_or(
        "STRATA_BENCH_BACKGROUND_NICE",
        strata_broker::config::BrokerConfig::default()
            .object_store
            .background_nice,
    );
    let gets = common::env_or("STRATA_BENCH_GETS", GETS);
    let readahead = common::env_or(
        "STRATA_BENCH_READAHEAD",
        strata_broker::config::BrokerConfig::default()
            .cache
            .readahead_chunks,
    );
    let broker_dir = tempfile::tempdir()?;
    let settings = [
        format!("object_store.url=\"s3://{BUCKET}/{PREFIX}\""),
        format!("object_store.endpoint=\"{endpoint}\""),
        format!("object_store.region=\"{REGION}\""),
        format!("object_store.access_key_id=\"{ACCESS_KEY}\""),
        format!("object_store.secret_access_key=\"{SECRET_KEY}\""),
        "object_store.path_style=true".to_owned(),
        "object_store.allow_http=true".to_owned(),
        "object_store.upload_interval_ms=200".to_owned(),
        format!("object_store.max_concurrent_gets={gets}"),
        // To compare: 0 runs the broker's object-store work at its other threads' priority.
        format!("object_store.background_nice={background_nice}"),
        format!("cache.chunk_bytes={CHUNK}"),
        format!("cache.readahead_chunks={readahead}"),
        // Room for the whole replay, so the second pass is served from memory.
        format!("cache.memory_bytes={}", (mib + mib / 2) << 20),
        // Local copies go soon after their upload (local.retention.bytes=0), so the replays
        // read the object store.
        "topics.retention_check_interval_ms=500".to_owned(),
    ];
    let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
    let mut broker = BrokerProcess::new(broker_dir.path(), &settings)?;
    broker.spawn()?;
    broker.connect(Duration::from_secs(60)).await?;
    let bootstrap = broker.addr.clone();
    let addr: std::net::SocketAddr = bootstrap.parse()?;
    println!(
        "librdkafka {}, Strata ({}) on s3s-fs {} (strata-s3, its own process, objects in {}), {mib} MiB of \
         {RECORD}-byte records in {PARTITIONS} partitions, {} MiB segments; S3 server nice +{}, \
         the broker's object-store work nice +{}, {gets} GETs at once, {readahead} chunks read ahead",
        rdkafka::util::get_rdkafka_version().1,
        broker.binary.display(),
        s3.endpoint(),
        s3_root.display(),
        SEGMENT >> 20,
        common::env_or("STRATA_BENCH_S3_NICE", 0u32),
        background_nice,
    );
    let configs = [
        ("segment.bytes", SEGMENT.to_string()),
        ("local.retention.bytes", "0".to_string()),
        ("retention.ms", "-1".to_string()),
    ];
    create_topic(&bootstrap, "bench", &configs).await?;
    create_topic(&bootstrap, "side", &configs).await?;
    let store = s3.store(BUCKET);
    let id = topic_id(&broker, "bench")?;

    // 1. Sustained produce, sampling how far the manifests trail the acknowledged log.
    let records = mib * 1024 * 1024 / RECORD as u64;
    let done = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_lag(
        bootstrap.clone(),
        store.clone(),
        id,
        done.clone(),
    ));
    let secs = produce(&bootstrap, "bench", records).await?;
    let acked = Instant::now();
    done.store(true, Ordering::Relaxed);
    let lag = sampler.await??;
    report("produce, tiered topic", records * RECORD as u64, secs);
    // Everything sealed is uploaded once the manifests reach the start of each active segment.
    let ends = loop {
        let ms = manifests(&store, id).await?;
        let active = active_bases(&broker, "bench")?;
        if ms.iter().zip(&active).all(|(m, s)| m.end_offset() >= *s) {
            break ms;
        }
        if acked.elapsed() > Duration::from_secs(300) {
            return Err("uploads did not catch up in 300 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mean = lag.iter().sum::<u64>() as f64 / lag.len().max(1) as f64;
    println!(
        "{:<40} mean {:.1} MiB, max {:.1} MiB behind the acknowledged log ({} samples); \
         caught up {:.2} s after the last ack",
        "upload lag while producing",
        mean / (1 << 20) as f64,
        lag.iter().max().copied().unwrap_or(0) as f64 / (1 << 20) as f64,
        lag.len(),
        acked.elapsed().as_secs_f64()
    );
    let remote_bytes: u64 = ends
        .iter()
        .flat_map(|m| &m.segments)
        .map(|s| s.size_bytes)
        .sum();
    let until: Vec<i64> = ends.iter().map(|m| m.end_offset() as i64).collect();

    // 2. The server's raw GET throughput over the same objects, just before and just after
    //    the cold replay (the machine's speed drifts), and the cold replay between them.
    let cpu = Cpu::start(&broker, &s3_process)?;
    let (get_bytes, get_secs) = raw_gets(&store, id, &ends).await?;
    let before = report("raw GET from the S3 server", get_bytes, get_secs);
    cpu.report(0.0, 0)?;
    let cpu = Cpu::start(&broker, &s3_process)?;
    let cold_replay = replay(&bootstrap, "bench", &until).await?;
    let cold_secs = cold_replay.secs;
    let cold = report("cold replay (object store)", remote_bytes, cold_secs);
    cpu.report(cold_replay.cpu, remote_bytes)?;
    let (get_bytes, get_secs) = raw_gets(&store, id, &ends).await?;
    let after = report("raw GET again", get_bytes, get_secs);
    println!(
        "{:<40} {:>8.0} % of the raw GET figures' mean",
        "cold replay / raw GET",
        cold / ((before + after) / 2.0) * 100.0
    );

    // 3. A warm replay of everything uploaded.
    let cpu = Cpu::start(&broker, &s3_process)?;
    let warm = replay(&bootstrap, "bench", &until).await?;
    let warm_mbs = report("warm replay (cache)", remote_bytes, warm.secs);
    cpu.report(warm.cpu, remote_bytes)?;
    // The consumer's own ceiling on this machine: a cold replay cannot beat it, whatever the
    // S3 server's raw GET rate.
    println!(
        "{:<40} {:>8.0} % of the warm replay",
        "cold replay / warm replay",
        cold / warm_mbs * 100.0
    );

    // 4. The broker's side alone: a cold replay by a client that only walks batch headers
    //    (no record decoding), after a restart has emptied the cache.
    restart(&mut broker).await?;
    let cpu = Cpu::start(&broker, &s3_process)?;
    let secs = fetch_replay(addr, "bench", &until).await?.secs;
    let bare = report("cold replay, header-only Fetch client", remote_bytes, secs);
    cpu.report(0.0, remote_bytes)?;
    println!(
        "{:<40} {:>8.0} % of the raw GET figures' mean",
        "",
        bare / ((before + after) / 2.0) * 100.0
    );

    // 5. A producer at a fixed rate (1 KiB records, acks=all, linger 1 ms, idempotent):
    //    its latency alone, then while a cold replay runs, for about as long as one takes
    //    (before phase 6, whose uploads would still run under the first measurement).
    let load = Load {
        partitions: PARTITIONS,
        rate: FIXED_MB_S * 1_000_000 / RECORD as u64,
        seconds: (cold_secs.ceil() as u64).max(5),
        linger_ms: 1,
    };
    create_topic(&bootstrap, "fixed", &configs).await?;
    let alone = end_to_end_with(&bootstrap, "fixed", &load).await?;
    let what = format!("{FIXED_MB_S} MB/s producer alone, {} s", load.seconds);
    print_latencies(&format!("{what}: end-to-end"), alone.end_to_end);
    print_latencies(&format!("{what}: ack"), alone.ack);
    let raw_get = (before + after) / 2.0;
    let beside = Beside {
        bootstrap: &bootstrap,
        load: &load,
        remote_bytes,
        raw_get,
    };
    restart(&mut broker).await?;
    let (b, u) = (bootstrap.clone(), until.clone());
    let cpu = Cpu::start(&broker, &s3_process)?;
    let replaying = tokio::spawn(async move { replay(&b, "bench", &u).await });
    beside.measure("cold replay", replaying, cpu).await?;
    // 5b. The same producer while the header-only client replays: the broker's whole share
    //     of a replay without librdkafka's per-record work in this process (a consumer
    //     elsewhere, as in a deployment).
    restart(&mut broker).await?;
    let u = until.clone();
    let cpu = Cpu::start(&broker, &s3_process)?;
    let replaying = tokio::spawn(async move { fetch_replay(addr, "bench", &u).await });
    beside
        .measure("header-only cold replay", replaying, cpu)
        .await?;
    // 6. Produce alone, then while a cold replay runs (the restart empties the cache).
    let side = SIDE_MIB * 1024 * 1024 / RECORD as u64;
    let secs = produce(&bootstrap, "side", side).await?;
    report("produce alone", side * RECORD as u64, secs);
    restart(&mut broker).await?;
    let (b, u) = (bootstrap.clone(), until.clone());
    let replaying = tokio::spawn(async move { replay(&b, "bench", &u).await });
    let secs = produce(&bootstrap, "side", side).await?;
    report("produce during a cold replay", side * RECORD as u64, secs);
    let secs = replaying.await??.secs;
    report("cold replay during produce", remote_bytes, secs);

    broker.stop("-TERM").await?;
    Ok(())
}

/// Stops the broker cleanly and starts it again (its chunk cache, in memory, starts empty).
async fn restart(broker: &mut BrokerProcess) -> BenchResult<()> {
    broker.stop("-TERM").await?;
    broker.spawn()?;
    broker.connect(Duration::from_secs(60)).await?;
    Ok(())
}

/// Phase 5's measurement of the fixed-rate producer beside a replay.
struct Beside<'a> {
    bootstrap: &'a str,
    load: &'a Load,
    remote_bytes: u64,
    /// The raw GET figures' mean, MB/s.
    raw_get: f64,
}

impl Beside<'_> {
    /// The producer's latencies while `replaying` (a `what`) runs, then the replay's MB/s
    /// against the raw GET figure and the CPU used since `cpu` started.
    async fn measure(
        &self,
        what: &str,
        replaying: tokio::task::JoinHandle<BenchResult<Replayed>>,
        cpu: Cpu,
    ) -> BenchResult<()> {
        let during = end_to_end_with(self.bootstrap, "fixed", self.load).await?;
        let label = format!("{FIXED_MB_S} MB/s producer during a {what}");
        print_latencies(&format!("{label}: end-to-end"), during.end_to_end);
        print_latencies(&format!("{label}: ack"), during.ack);
        let replayed = replaying.await??;
        let mbs = report(
            &format!("{what} beside it"),
            self.remote_bytes,
            replayed.secs,
        );
        println!(
            "{:<40} {:>8.0} % of the raw GET figures' mean",
            "",
            mbs / self.raw_get * 100.0,
        );
        cpu.report(replayed.cpu, 0)
    }
}

/// CPU time over a phase, as cores kept busy: the broker's, the S3 server's and the clients'
/// (the bench's process and the replaying consumer's).
struct Cpu {
    wall: Instant,
    broker_pid: u32,
    s3_pid: u32,
    start: [f64; 3],
}

impl Cpu {
    fn start(broker: &BrokerProcess, s3: &S3Process) -> BenchResult<Self> {
        let broker_pid = broker.pid()?;
        let s3_pid = s3.pid()?;
        Ok(Self {
            wall: Instant::now(),
            broker_pid,
            s3_pid,
            start: Self::now(broker_pid, s3_pid)?,
        })
    }

    fn now(broker_pid: u32, s3_pid: u32) -> BenchResult<[f64; 3]> {
        use common::process::cpu_seconds;
        Ok([
            cpu_seconds(broker_pid)?,
            cpu_seconds(s3_pid)?,
            cpu_seconds(std::process::id())?,
        ])
    }

    /// Prints the cores kept busy since the start, counting `replayer` CPU-seconds (a
    /// replaying consumer's process, ended) as the clients', and, for a phase that replayed
    /// `replayed` bytes, the broker's CPU-seconds per GB of them.
    fn report(&self, replayer: f64, replayed: u64) -> BenchResult<()> {
        let secs = self.wall.elapsed().as_secs_f64();
        let now = Self::now(self.broker_pid, self.s3_pid)?;
        let busy = |i: usize| (now[i] - self.start[i]) / secs;
        let per_gb = match replayed {
            0 => String::new(),
            n => format!(
                "; broker {:.2} CPU-seconds per GB replayed",
                (now[0] - self.start[0]) / (n as f64 / 1e9)
            ),
        };
        println!(
            "{:<40} cores busy: broker {:.2}, S3 server {:.2}, clients {:.2}{per_gb}",
            "",
            busy(0),
            busy(1),
            busy(2) + replayer / secs
        );
        Ok(())
    }
}

/// Prints and returns MB/s.
fn report(what: &str, bytes: u64, secs: f64) -> f64 {
    let mbs = bytes as f64 / secs / 1e6;
    println!(
        "{what:<40} {mbs:>8.1} MB/s  ({:.1} MB in {secs:.2} s)",
        bytes as f64 / 1e6
    );
    mbs
}

async fn create_topic(bootstrap: &str, topic: &str, configs: &[(&str, String)]) -> BenchResult<()> {
    common::create_topic(bootstrap, topic, PARTITIONS, 1, configs).await
}

fn topic_id(broker: &BrokerProcess, topic: &str) -> BenchResult<Uuid> {
    let meta = broker
        .dir
        .join(format!("data/logs/{topic}-0/partition.metadata"));
    Ok(std::fs::read_to_string(meta)?.trim().parse()?)
}

/// The base offset of each partition's active (newest) segment.
fn active_bases(broker: &BrokerProcess, topic: &str) -> BenchResult<Vec<u64>> {
    let mut out = Vec::new();
    for p in 0..PARTITIONS {
        let dir = broker.dir.join(format!("data/logs/{topic}-{p}"));
        let first = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(".log")?.parse::<u64>().ok())
            .max()
            .ok_or("no local segment")?;
        out.push(first);
    }
    Ok(out)
}

async fn manifests(store: &Arc<dyn ObjectStore>, id: Uuid) -> BenchResult<Vec<Arc<Manifest>>> {
    let mut out = Vec::new();
    for p in 0..PARTITIONS {
        let objects = PartitionObjects::new(store.clone(), &Path::from(PREFIX), id, p);
        out.push(objects.latest().await?.unwrap_or_default());
    }
    Ok(out)
}

/// Every 250 ms until `done`: bytes acknowledged but not yet under a committed manifest.
async fn sample_lag(
    bootstrap: String,
    store: Arc<dyn ObjectStore>,
    id: Uuid,
    done: Arc<AtomicBool>,
) -> BenchResult<Vec<u64>> {
    let c = Arc::new(consumer(&bootstrap)?);
    let mut lag = Vec::new();
    while !done.load(Ordering::Relaxed) {
        let c = c.clone();
        let highs = tokio::task::spawn_blocking(move || {
            (0..PARTITIONS)
                .map(|p| {
                    c.fetch_watermarks("bench", p, Duration::from_secs(5))
                        .map(|w| w.1)
                })
                .collect::<Result<Vec<i64>, _>>()
        })
        .await??;
        let ms = manifests(&store, id).await?;
        let behind: u64 = highs
            .iter()
            .zip(&ms)
            .map(|(h, m)| (*h as u64).saturating_sub(m.end_offset()))
            .sum();
        lag.push(behind * RECORD as u64);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(lag)
}

/// Produces `records` records round-robin over the partitions; returns the seconds taken
/// until the last one was acknowledged.
async fn produce(bootstrap: &str, topic: &str, records: u64) -> BenchResult<f64> {
    let producer = producer(bootstrap, "5")?;
    let payload = vec![b'x'; RECORD];
    send_all(&producer, topic, records, &payload, |i| {
        (Some((i % PARTITIONS as u64) as i32), i.to_string())
    })
    .await
}

fn consumer(bootstrap: &str) -> BenchResult<BaseConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "strata-bench-unused")
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "16777216")
        .set("queued.max.messages.kbytes", "262144")
        .create()?)
}

/// A replay's seconds, and the CPU-seconds of its process when it ran in one of its own.
#[derive(Debug)]
struct Replayed {
    secs: f64,
    cpu: f64,
}

/// Reads every partition from offset 0 up to `until[p]` with a librdkafka consumer in a
/// process of its own (this bench's binary again), as a consumer elsewhere would: its
/// decoding, allocations and page faults are not the measured producer's process's.
async fn replay(bootstrap: &str, topic: &str, until: &[i64]) -> BenchResult<Replayed> {
    let until: Vec<String> = until.iter().map(i64::to_string).collect();
    let out = tokio::process::Command::new(std::env::current_exe()?)
        .env(REPLAYER, format!("{bootstrap} {topic} {}", until.join(",")))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let figures: Vec<f64> = stdout
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    match (out.status.success(), figures.as_slice()) {
        (true, &[secs, cpu]) => Ok(Replayed { secs, cpu }),
        _ => Err(format!(
            "the replaying consumer failed ({}): {stdout} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into()),
    }
}

/// The replaying consumer's process: replays as `args` says and prints the seconds it took
/// and its CPU-seconds.
fn replayer(args: &str) -> BenchResult<()> {
    let [bootstrap, topic, until] = args.split(' ').collect::<Vec<_>>()[..] else {
        return Err(format!("{REPLAYER}: <bootstrap> <topic> <until,...>, not {args:?}").into());
    };
    let until = until
        .split(',')
        .map(str::parse)
        .collect::<Result<Vec<i64>, _>>()?;
    let c = consumer(bootstrap)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..until.len() {
        tpl.add_partition_offset(topic, p as i32, Offset::Offset(0))?;
    }
    c.assign(&tpl)?;
    let mut next = vec![0i64; until.len()];
    let start = Instant::now();
    while next.iter().zip(&until).any(|(n, u)| n < u) {
        if start.elapsed() > Duration::from_secs(900) {
            return Err(format!("replay stuck at {next:?} of {until:?}").into());
        }
        let Some(m) = c.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m?;
        let p = m.partition() as usize;
        next[p] = next[p].max(m.offset() + 1);
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{secs} {}",
        common::process::cpu_seconds(std::process::id())?
    );
    Ok(())
}

/// Replays every partition from offset 0 up to `until[p]` with plain Fetch requests (v12,
/// up to 16 MiB per partition), reading only batch headers to advance, in this process.
async fn fetch_replay(
    addr: std::net::SocketAddr,
    topic: &str,
    until: &[i64],
) -> BenchResult<Replayed> {
    let mut c = RawClient::connect(addr).await;
    let mut next = vec![0i64; until.len()];
    let start = Instant::now();
    while next.iter().zip(until).any(|(n, u)| n < u) {
        if start.elapsed() > Duration::from_secs(900) {
            return Err(format!("replay stuck at {next:?} of {until:?}").into());
        }
        let partitions = (0..until.len())
            .filter(|&p| next[p] < until[p])
            .map(|p| {
                FetchPartition::default()
                    .with_partition(p as i32)
                    .with_fetch_offset(next[p])
                    .with_partition_max_bytes(16 << 20)
            })
            .collect();
        let req = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(500)
            .with_min_bytes(1)
            .with_max_bytes(64 << 20)
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
                    .with_partitions(partitions),
            ]);
        let resp = c.call(12, &req).await;
        for t in &resp.responses {
            for p in &t.partitions {
                if p.error_code != 0 {
                    return Err(format!(
                        "fetch error {} on partition {}",
                        p.error_code, p.partition_index
                    )
                    .into());
                }
                let mut b = p.records.as_deref().unwrap_or_default();
                while let Some(h) = BatchHeader::parse(b) {
                    if h.total_len() > b.len() {
                        break;
                    }
                    next[p.partition_index as usize] = h.last_offset() + 1;
                    b = &b[h.total_len()..];
                }
            }
        }
    }
    Ok(Replayed {
        secs: start.elapsed().as_secs_f64(),
        cpu: 0.0,
    })
}

/// GETs every segment object the manifests name in `CHUNK`-sized ranges, `GETS` at once.
async fn raw_gets(
    store: &Arc<dyn ObjectStore>,
    id: Uuid,
    manifests: &[Arc<Manifest>],
) -> BenchResult<(u64, f64)> {
    let mut ranges = Vec::new();
    for (p, m) in manifests.iter().enumerate() {
        let objects = PartitionObjects::new(store.clone(), &Path::from(PREFIX), id, p as i32);
        for s in &m.segments {
            let key = objects.segment_key(s.base_offset, s.leader_epoch, SegmentFile::Log);
            let mut at = 0;
            while at < s.size_bytes {
                let end = (at + CHUNK).min(s.size_bytes);
                ranges.push((key.clone(), at..end));
                at = end;
            }
        }
    }
    let start = Instant::now();
    let mut gets = futures::stream::iter(ranges)
        .map(|(key, range)| {
            let store = store.clone();
            async move { store.get_range(&key, range).await }
        })
        .buffer_unordered(GETS);
    let mut bytes = 0u64;
    while let Some(b) = gets.next().await {
        bytes += b?.len() as u64;
    }
    Ok((bytes, start.elapsed().as_secs_f64()))
}
