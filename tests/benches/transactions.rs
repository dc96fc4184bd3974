//! Transactional produce with librdkafka next to plain idempotent produce: MB/s of 1 KiB
//! records in transactions of 100 and 1,000 records, and the latency of each commit (from
//! the last record handed to the client until every record is acknowledged and
//! `commit_transaction` returned) against the wait, from the same point, for an idempotent
//! producer's acknowledgements of the same group of records.
//!
//! Against an in-process Strata broker by default, or any Kafka-compatible broker:
//! `STRATA_BOOTSTRAP=host:9092 cargo bench -p strata-tests --bench transactions`.
//! `TXN_RECORDS=100000` sets how many records each run sends (default 50,000).

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

mod common;

use common::{BenchResult, RECORD_BYTES, create_topic, print_latencies};

fn main() -> BenchResult<()> {
    common::block_on(run())
}

async fn run() -> BenchResult<()> {
    let (broker, bootstrap) = common::target().await;
    let records: u64 = common::env_or("TXN_RECORDS", 50_000);
    println!(
        "librdkafka {} against {}, {RECORD_BYTES}-byte records, {records} per run, one partition",
        rdkafka::util::get_rdkafka_version().1,
        bootstrap,
    );
    let run_id = std::process::id();
    for per_txn in [100u64, 1_000] {
        for transactional in [false, true] {
            let topic = format!("txn-perf-{run_id}-{per_txn}-{transactional}");
            create_topic(&bootstrap, &topic, 1, 1, &[]).await?;
            let b = bootstrap.clone();
            let id = format!("txn-perf-{run_id}-{per_txn}");
            let (secs, commits) = tokio::task::spawn_blocking(move || {
                send_in_groups(&b, &topic, &id, records, per_txn, transactional)
            })
            .await??;
            let what = if transactional {
                format!("transactions of {per_txn}")
            } else {
                format!("idempotent, groups of {per_txn}")
            };
            println!(
                "{what:<28} {:>8.1} MB/s  ({:.0} records/s)",
                (records as usize * RECORD_BYTES) as f64 / secs / 1e6,
                records as f64 / secs
            );
            let end = if transactional {
                "commit"
            } else {
                "acks of the group"
            };
            print_latencies(&format!("  {end} latency"), commits);
        }
    }
    if let Some(b) = broker {
        b.stop().await;
    }
    Ok(())
}

/// Sends `records` to `topic` in groups of `per_group`, each a transaction (with
/// transactional id `id`) or, without `transactional`, waited for record by record
/// (every delivery acknowledged) by an idempotent producer. Returns the seconds taken and
/// each commit's (or wait's) latency.
fn send_in_groups(
    bootstrap: &str,
    topic: &str,
    id: &str,
    records: u64,
    per_group: u64,
    transactional: bool,
) -> BenchResult<(f64, Vec<Duration>)> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.kbytes", "262144");
    if transactional {
        config.set("transactional.id", id);
    }
    let producer: FutureProducer = config.create()?;
    let wait = Duration::from_secs(60);
    if transactional {
        producer.init_transactions(wait)?;
    }
    let payload = vec![b'x'; RECORD_BYTES];
    // Warm-up, not timed: the first send waits for the topic's metadata (about 0.5 s).
    if transactional {
        producer.begin_transaction()?;
    }
    let first = producer.send_result(FutureRecord::to(topic).key("warm-up").payload(&payload));
    futures::executor::block_on(first.map_err(|(e, _)| e)?)?.map_err(|(e, _)| e)?;
    if transactional {
        producer.commit_transaction(wait)?;
    }
    let mut latencies = Vec::new();
    let start = Instant::now();
    let mut sent = 0;
    while sent < records {
        if transactional {
            producer.begin_transaction()?;
        }
        let n = per_group.min(records - sent);
        let mut deliveries = Vec::with_capacity(n as usize);
        for i in 0..n {
            let key = (i % 1024).to_string();
            loop {
                match producer.send_result(FutureRecord::to(topic).key(&key).payload(&payload)) {
                    Ok(d) => {
                        deliveries.push(d);
                        break;
                    }
                    Err((e, _)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err((e, _)) => return Err(e.into()),
                }
            }
        }
        sent += n;
        let end = Instant::now();
        for d in futures::executor::block_on(futures::future::join_all(deliveries)) {
            d?.map_err(|(e, _)| e)?;
        }
        if transactional {
            // The rdkafka crate's commit_transaction flushes first, polling in 100 ms steps
            // from this thread while anything is outstanding, even delivery reports the
            // producer's own thread is about to release; that would measure the wrapper, not
            // the broker. Everything is acknowledged, so once the reports are released the
            // flush returns at once and this is EndTxn.
            while producer.in_flight_count() > 0 {
                std::thread::sleep(Duration::from_micros(50));
            }
            producer.commit_transaction(wait)?;
        }
        latencies.push(end.elapsed());
    }
    Ok((start.elapsed().as_secs_f64(), latencies))
}
