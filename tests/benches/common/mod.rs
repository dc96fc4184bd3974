//! What the librdkafka benchmarks share: the runtime, topic creation, the producer settings
//! and a send loop that waits out a full local queue.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

pub type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Runs a benchmark's async body on a multi-threaded runtime.
pub fn block_on(body: impl std::future::Future<Output = BenchResult<()>>) -> BenchResult<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(body)
}

/// Creates `topic` with `partitions`, one replica, and `configs`.
pub async fn create_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    configs: &[(&str, String)],
) -> BenchResult<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let mut t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
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
