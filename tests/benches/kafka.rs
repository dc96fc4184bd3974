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

const PRODUCE_RECORDS: usize = 200_000;
const E2E_RATE: u64 = 2_000;
const E2E_SECONDS: u64 = 5;

mod common;

use common::{
    BenchResult, RECORD_BYTES, consume_from_start, create_topic, end_to_end, print_latencies,
    producer, send_all,
};

fn main() -> BenchResult<()> {
    common::block_on(run())
}

async fn run() -> BenchResult<()> {
    let (broker, bootstrap) = common::target().await;
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
        create_topic(&bootstrap, &topic, partitions, 1, &[]).await?;
        let (secs, bytes) = produce(&bootstrap, &topic, PRODUCE_RECORDS).await?;
        report(
            &format!("produce acks=all, {partitions} partition(s)"),
            bytes,
            secs,
        );
        let b = bootstrap.clone();
        let t = topic.clone();
        let (secs, bytes) = tokio::task::spawn_blocking(move || {
            consume_from_start(&b, &t, partitions, PRODUCE_RECORDS as u64)
        })
        .await??;
        report(&format!("consume, {partitions} partition(s)"), bytes, secs);
    }
    let topic = format!("perf-{run_id}-e2e");
    create_topic(&bootstrap, &topic, 1, 1, &[]).await?;
    let latencies = end_to_end(&bootstrap, &topic, 1, E2E_RATE, E2E_SECONDS).await?;
    print_latencies(
        &format!("end-to-end latency, acks=all, {E2E_RATE} records/s for {E2E_SECONDS}s"),
        latencies,
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
