//! What the librdkafka benchmarks share: the runtime, topic creation, the producer and
//! consumer settings, a send loop that waits out a full local queue, and the end-to-end
//! latency measurement. Each bench uses part of it.
#![allow(dead_code)]

pub mod process;

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

pub type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Runs a benchmark's async body on a multi-threaded runtime.
pub fn block_on(body: impl std::future::Future<Output = BenchResult<()>>) -> BenchResult<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(body)
}

/// The broker to measure: the one at `STRATA_BOOTSTRAP` if set (any Kafka-compatible
/// broker), else an in-process Strata broker (returned, to stop at the end).
pub async fn target() -> (Option<strata_tests::TestBroker>, String) {
    match std::env::var("STRATA_BOOTSTRAP") {
        Ok(b) => (None, b),
        Err(_) => {
            let broker = strata_tests::TestBroker::start().await;
            let b = broker.bootstrap();
            (Some(broker), b)
        }
    }
}

/// The value of environment variable `name`, or `default` when unset or not a `T`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The comma-separated numbers in environment variable `name`, or `default` when unset.
pub fn env_list(name: &str, default: &[u64]) -> Vec<u64> {
    std::env::var(name).map_or_else(
        |_| default.to_vec(),
        |v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect(),
    )
}

/// Bytes per record value in the librdkafka benchmarks.
pub const RECORD_BYTES: usize = 1024;

/// Creates `topic` with `partitions`, `replicas` copies each, and `configs`.
pub async fn create_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    replicas: i32,
    configs: &[(&str, String)],
) -> BenchResult<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let mut t = NewTopic::new(topic, partitions, TopicReplication::Fixed(replicas));
    for (k, v) in configs {
        t = t.set(k, v);
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in admin.create_topics(&[t], &options).await? {
        r.map_err(|(t, e)| format!("creating {t}: {e}"))?;
    }
    Ok(())
}

/// acks=all and idempotent, as Kafka clients default to, with large batches.
pub fn producer(bootstrap: &str, linger_ms: &str) -> BenchResult<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", linger_ms)
        .set("batch.size", "1000000")
        .set("queue.buffering.max.kbytes", "262144")
        .create()?)
}

/// Sends `records` copies of `payload` to `topic`, record `i` with the partition and key
/// `place(i)` gives; returns the seconds until the last one was acknowledged.
pub async fn send_all(
    producer: &FutureProducer,
    topic: &str,
    records: u64,
    payload: &[u8],
    place: impl Fn(u64) -> (Option<i32>, String),
) -> BenchResult<f64> {
    let start = Instant::now();
    let mut pending = Vec::with_capacity(50_000);
    for i in 0..records {
        let (partition, key) = place(i);
        loop {
            let mut r = FutureRecord::to(topic).key(&key).payload(payload);
            if let Some(p) = partition {
                r = r.partition(p);
            }
            match producer.send_result(r) {
                Ok(f) => {
                    pending.push(f);
                    break;
                }
                Err((e, _)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
        if pending.len() == 50_000 {
            for f in pending.drain(..) {
                f.await?.map_err(|(e, _)| e)?;
            }
        }
    }
    for f in pending.drain(..) {
        f.await?.map_err(|(e, _)| e)?;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// A group-less consumer for assigned reads.
pub fn consumer(bootstrap: &str) -> BenchResult<BaseConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "strata-perf-unused")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()?)
}

/// Reads `records` records of `topic` from the start of its `partitions`; returns the
/// seconds it took and the payload bytes read. Gives up after ten minutes.
pub fn consume_from_start(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    records: u64,
) -> BenchResult<(f64, usize)> {
    let c = consumer(bootstrap)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let start = Instant::now();
    let (mut n, mut bytes) = (0, 0);
    while n < records {
        if start.elapsed() > Duration::from_secs(600) {
            return Err(format!("consumed {n} of {records} records in 600 s").into());
        }
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            bytes += m?.payload_len();
            n += 1;
        }
    }
    Ok((start.elapsed().as_secs_f64(), bytes))
}

/// The send time a warm-up record carries in [`end_to_end`] (no measured record is sent at
/// the origin's first microsecond).
const WARM_UP: u64 = 0;

/// Prints p50, p99, p99.9 and the maximum of `latencies`.
pub fn print_latencies(what: &str, mut latencies: Vec<Duration>) {
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
    println!(
        "{what}: p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
        pct(0.50),
        pct(0.99),
        pct(0.999),
        pct(1.0)
    );
}

/// Sends `rate` records per second to `topic` (its `partitions`, as librdkafka's partitioner
/// spreads them) for `seconds`; each record carries its send time (µs since `origin`) and a
/// consumer tailing the topic measures when it arrives.
pub async fn end_to_end(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    rate: u64,
    seconds: u64,
) -> BenchResult<Vec<Duration>> {
    let load = Load {
        partitions,
        rate,
        seconds,
        linger_ms: 0,
    };
    Ok(end_to_end_with(bootstrap, topic, &load).await?.end_to_end)
}

/// A fixed rate of 1 KiB records (see [`end_to_end_with`]).
pub struct Load {
    pub partitions: i32,
    /// Records per second.
    pub rate: u64,
    pub seconds: u64,
    /// The producer's `linger.ms`.
    pub linger_ms: u32,
}

/// What [`end_to_end_with`] measured for each record.
pub struct Latencies {
    /// From send to a tailing consumer receiving it.
    pub end_to_end: Vec<Duration>,
    /// From send to its acknowledgement (acks=all).
    pub ack: Vec<Duration>,
}

/// As [`end_to_end`], with the producer's `linger.ms` of `load`, also timing each record's
/// acknowledgement.
pub async fn end_to_end_with(bootstrap: &str, topic: &str, load: &Load) -> BenchResult<Latencies> {
    let Load {
        partitions,
        rate,
        seconds,
        linger_ms,
    } = *load;
    let origin = Instant::now();
    let total = (rate * seconds) as usize;
    let done = Arc::new(AtomicBool::new(false));
    let c = consumer(bootstrap)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::End)?;
    }
    c.assign(&tpl)?;
    let d = done.clone();
    let reader = tokio::task::spawn_blocking(move || {
        let mut lat = Vec::with_capacity(total);
        let deadline = Instant::now() + Duration::from_secs(seconds + 30);
        while lat.len() < total && Instant::now() < deadline && !d.load(Ordering::Relaxed) {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                let sent = m
                    .payload()
                    .and_then(|p| p.get(..8))
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                if sent == WARM_UP {
                    continue;
                }
                let now = origin.elapsed().as_micros() as u64;
                lat.push(Duration::from_micros(now.saturating_sub(sent)));
            }
        }
        lat
    });
    // Let the consumer reach the end before producing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let producer = producer(bootstrap, &linger_ms.to_string())?;
    // A new librdkafka producer's first sends wait for its metadata and connections (one
    // run in four stalled ~0.5 s there, whatever the replication factor): one record per
    // partition first, acknowledged before the clock starts, so the figures are the
    // steady state's.
    for p in 0..partitions {
        let mut payload = vec![b'x'; RECORD_BYTES];
        payload[..8].copy_from_slice(&WARM_UP.to_be_bytes());
        producer
            .send(
                FutureRecord::<(), _>::to(topic)
                    .payload(&payload)
                    .partition(p),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
    }
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let mut pending = Vec::with_capacity(total);
    for _ in 0..total {
        tick.tick().await;
        let mut payload = vec![b'x'; RECORD_BYTES];
        let sent = Instant::now();
        payload[..8].copy_from_slice(&(origin.elapsed().as_micros() as u64).to_be_bytes());
        let delivery = producer
            .send_result(FutureRecord::<(), _>::to(topic).payload(&payload))
            .map_err(|(e, _)| e)?;
        pending.push(tokio::spawn(async move {
            delivery
                .await
                .map_err(|e| e.to_string())?
                .map_err(|(e, _)| e.to_string())?;
            Ok::<_, String>(sent.elapsed())
        }));
    }
    let mut ack = Vec::with_capacity(total);
    for f in pending {
        ack.push(f.await??);
    }
    producer.flush(Duration::from_secs(10))?;
    let lat = reader.await?;
    done.store(true, Ordering::Relaxed);
    if lat.len() < total {
        return Err(format!("received {} of {total} records", lat.len()).into());
    }
    Ok(Latencies {
        end_to_end: lat,
        ack,
    })
}
