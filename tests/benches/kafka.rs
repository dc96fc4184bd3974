//! Produce and consume throughput and end-to-end latency with librdkafka, the client most
//! Kafka users already run.
//!
//! Against an in-process Strata broker (temporary directory) by default, or any Kafka-compatible
//! broker: `STRATA_BOOTSTRAP=host:9092 cargo bench -p strata-tests --bench kafka`, so the same
//! run can be repeated against Apache Kafka or Redpanda for comparison.
//!
//! Figures: produce MB/s of 1 KiB records at acks=all (idempotent, as Kafka clients default
//! to) into 1 and 8 partitions; consume MB/s of everything produced; end-to-end latency
//! p50/p99 at a fixed moderate rate.

#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use strata_tests::TestBroker;

const RECORD_BYTES: usize = 1024;
const PRODUCE_RECORDS: usize = 200_000;
const E2E_RATE: u64 = 2_000;
const E2E_SECONDS: u64 = 5;

mod common;

use common::{BenchResult, create_topic, producer, send_all};

fn main() -> BenchResult<()> {
    common::block_on(run())
}

async fn run() -> BenchResult<()> {
    let (broker, bootstrap) = match std::env::var("STRATA_BOOTSTRAP") {
        Ok(b) => (None, b),
        Err(_) => {
            let broker = TestBroker::start().await;
            let b = broker.bootstrap();
            (Some(broker), b)
        }
    };
    println!(
        "librdkafka {} against {} ({}), {RECORD_BYTES}-byte records",
        rdkafka::util::get_rdkafka_version().1,
        bootstrap,
        if broker.is_some() {
            "in-process Strata"
        } else {
            "STRATA_BOOTSTRAP"
        }
    );
    let run_id = std::process::id();
    for partitions in [1, 8] {
        let topic = format!("perf-{run_id}-{partitions}");
        create_topic(&bootstrap, &topic, partitions, &[]).await?;
        let (secs, bytes) = produce(&bootstrap, &topic, PRODUCE_RECORDS).await?;
        report(
            &format!("produce acks=all, {partitions} partition(s)"),
            bytes,
            secs,
        );
        let b = bootstrap.clone();
        let t = topic.clone();
        let (secs, bytes) =
            tokio::task::spawn_blocking(move || consume(&b, &t, partitions, PRODUCE_RECORDS))
                .await??;
        report(&format!("consume, {partitions} partition(s)"), bytes, secs);
    }
    let topic = format!("perf-{run_id}-e2e");
    create_topic(&bootstrap, &topic, 1, &[]).await?;
    let mut latencies = end_to_end(&bootstrap, &topic).await?;
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
    println!(
        "{:<36} {E2E_RATE} records/s for {E2E_SECONDS}s: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        "end-to-end latency, acks=all",
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
    if let Some(b) = broker {
        b.stop().await;
    }
    Ok(())
}

fn report(what: &str, bytes: usize, secs: f64) {
    println!(
        "{what:<36} {:>8.1} MB/s  ({:.0} records/s)",
        bytes as f64 / secs / 1e6,
        (bytes / RECORD_BYTES) as f64 / secs
    );
}

async fn produce(bootstrap: &str, topic: &str, records: usize) -> BenchResult<(f64, usize)> {
    let producer = producer(bootstrap, "5")?;
    let payload = vec![b'x'; RECORD_BYTES];
    let secs = send_all(&producer, topic, records as u64, &payload, |i| {
        (None, (i % 1024).to_string())
    })
    .await?;
    Ok((secs, records * RECORD_BYTES))
}

fn consumer(bootstrap: &str) -> BenchResult<BaseConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "strata-perf-unused")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()?)
}

fn consume(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    records: usize,
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
        if start.elapsed() > Duration::from_secs(120) {
            return Err(format!("consumed {n} of {records} records in 120 s").into());
        }
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            bytes += m?.payload_len();
            n += 1;
        }
    }
    Ok((start.elapsed().as_secs_f64(), bytes))
}

/// Each record carries its send time (µs since `origin`); a consumer tailing the topic
/// measures when it arrives.
async fn end_to_end(bootstrap: &str, topic: &str) -> BenchResult<Vec<Duration>> {
    let origin = Instant::now();
    let total = (E2E_RATE * E2E_SECONDS) as usize;
    let done = Arc::new(AtomicBool::new(false));
    let c = consumer(bootstrap)?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::End)?;
    c.assign(&tpl)?;
    let d = done.clone();
    let reader = tokio::task::spawn_blocking(move || {
        let mut lat = Vec::with_capacity(total);
        let deadline = Instant::now() + Duration::from_secs(E2E_SECONDS + 30);
        while lat.len() < total && Instant::now() < deadline && !d.load(Ordering::Relaxed) {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                let sent = m
                    .payload()
                    .and_then(|p| p.get(..8))
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                let now = origin.elapsed().as_micros() as u64;
                lat.push(Duration::from_micros(now.saturating_sub(sent)));
            }
        }
        lat
    });
    // Let the consumer reach the end before producing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let producer = producer(bootstrap, "0")?;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / E2E_RATE));
    let mut pending = Vec::with_capacity(total);
    for _ in 0..total {
        tick.tick().await;
        let mut payload = vec![b'x'; RECORD_BYTES];
        payload[..8].copy_from_slice(&(origin.elapsed().as_micros() as u64).to_be_bytes());
        pending.push(
            producer
                .send_result(FutureRecord::<(), _>::to(topic).payload(&payload))
                .map_err(|(e, _)| e)?,
        );
    }
    for f in pending {
        f.await?.map_err(|(e, _)| e)?;
    }
    producer.flush(Duration::from_secs(10))?;
    let lat = reader.await?;
    done.store(true, Ordering::Relaxed);
    if lat.len() < total {
        return Err(format!("received {} of {total} records", lat.len()).into());
    }
    Ok(lat)
}
