//! `perf produce|consume|e2e`: load generators in the spirit of Kafka's
//! `kafka-producer-perf-test` and `kafka-consumer-perf-test`. They use only standard Kafka
//! APIs, so the same command measures Strata and Kafka side by side. MB means 10^6 bytes
//! (record keys and values).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use clap::{Args, Subcommand};
use serde_json::json;
use tokio::sync::mpsc;

use super::{CliError, SendArgs, progress, table};
use crate::consumer::{Consumer, ConsumerConfig};
use crate::producer::{Delivery, Producer};
use crate::{Client, ClientError, NewRecord};

#[derive(Debug, Subcommand)]
pub(super) enum PerfCommand {
    /// Send records as fast as allowed; throughput and send-to-acknowledgement latency.
    Produce(Load),
    /// Read a topic from its start; throughput.
    Consume(ConsumeLoad),
    /// Produce while consuming the same records; end-to-end latency (send to receipt).
    E2e(Load),
}

/// What a produce load sends.
#[derive(Clone, Debug, Args)]
pub(super) struct Load {
    /// The topic (created with --partitions if it does not exist).
    #[arg(long, short)]
    topic: String,
    /// Records to send.
    #[arg(long, short = 'n', default_value_t = 1_000_000)]
    records: u64,
    /// Bytes per record value.
    #[arg(long, short = 's', default_value_t = 1024)]
    record_size: usize,
    /// Records per second at most (-1: as fast as possible).
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    throughput: i64,
    /// Partitions, when the topic is created.
    #[arg(long, short, default_value_t = 1)]
    partitions: i32,
    #[command(flatten)]
    send: SendArgs,
}

#[derive(Clone, Debug, Args)]
pub(super) struct ConsumeLoad {
    /// The topic.
    #[arg(long, short)]
    topic: String,
    /// Records to read (default: all the topic held when the test started).
    #[arg(long, short = 'n')]
    records: Option<u64>,
    /// Fetched answers buffered ahead of the reader.
    #[arg(long, default_value_t = 4)]
    prefetch: usize,
    /// Bytes per partition per Fetch at most.
    #[arg(long, default_value_t = 4 << 20)]
    partition_max_bytes: i32,
}

/// One measured run.
#[derive(Debug)]
struct Report {
    test: &'static str,
    records: u64,
    bytes: u64,
    elapsed: Duration,
    /// Per-record latencies (µs), sorted; none where latency is not measured.
    latencies: Vec<u32>,
}

impl Report {
    fn percentile(&self, q: f64) -> Option<f64> {
        let n = self.latencies.len();
        let i = ((q * n as f64) as usize).min(n.checked_sub(1)?);
        Some(f64::from(self.latencies[i]) / 1000.0)
    }

    fn avg_ms(&self) -> Option<f64> {
        let n = self.latencies.len();
        (n > 0).then(|| {
            self.latencies.iter().map(|l| u64::from(*l)).sum::<u64>() as f64 / n as f64 / 1000.0
        })
    }
}

const QUANTILES: [(&str, f64); 5] = [
    ("p50", 0.50),
    ("p95", 0.95),
    ("p99", 0.99),
    ("p99.9", 0.999),
    ("max", 1.0),
];

pub(super) async fn run(
    client: &Arc<Client>,
    cmd: PerfCommand,
    as_json: bool,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let reports = match cmd {
        PerfCommand::Produce(load) => {
            load.check()?;
            ensure_topic(client, &load.topic, load.partitions).await?;
            vec![produce(client, &load, None).await?]
        }
        PerfCommand::Consume(load) => vec![consume(client, &load).await?],
        PerfCommand::E2e(load) => {
            load.check()?;
            ensure_topic(client, &load.topic, load.partitions).await?;
            e2e(client, &load).await?
        }
    };
    if as_json {
        let list: Vec<_> = reports.iter().map(report_json).collect();
        writeln!(out, "{}", serde_json::Value::Array(list))?;
        return Ok(());
    }
    let secs = |r: &Report| r.elapsed.as_secs_f64().max(1e-9);
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            let mut row = vec![
                r.test.to_owned(),
                r.records.to_string(),
                format!("{:.1}", r.bytes as f64 / 1e6),
                format!("{:.2}", secs(r)),
                format!("{:.0}", r.records as f64 / secs(r)),
                format!("{:.1}", r.bytes as f64 / 1e6 / secs(r)),
                ms(r.avg_ms()),
            ];
            row.extend(QUANTILES.iter().map(|(_, q)| ms(r.percentile(*q))));
            row
        })
        .collect();
    table(
        out,
        &[
            "TEST",
            "RECORDS",
            "MB",
            "SECONDS",
            "RECORDS/S",
            "MB/S",
            "AVG-MS",
            "P50-MS",
            "P95-MS",
            "P99-MS",
            "P99.9-MS",
            "MAX-MS",
        ],
        &rows,
    )?;
    Ok(())
}

fn report_json(r: &Report) -> serde_json::Value {
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    let mut latency = serde_json::Map::new();
    if let Some(avg) = r.avg_ms() {
        latency.insert("avg".into(), json!(avg));
        for (name, q) in QUANTILES {
            latency.insert(name.into(), json!(r.percentile(q)));
        }
    }
    json!({ "test": r.test, "records": r.records, "bytes": r.bytes, "seconds": secs,
            "records_per_sec": r.records as f64 / secs, "mb_per_sec": r.bytes as f64 / 1e6 / secs,
            "latency_ms": latency })
}

impl Load {
    fn check(&self) -> Result<(), CliError> {
        if self.records == 0 {
            return Err(CliError::Usage("--records must be at least 1".into()));
        }
        if self.record_size < 8 || self.record_size > 16 << 20 {
            return Err(CliError::Usage(
                "--record-size must be between 8 bytes and 16 MiB".into(),
            ));
        }
        if self.throughput == 0 || self.throughput < -1 {
            return Err(CliError::Usage(
                "--throughput is records per second, or -1 for no limit".into(),
            ));
        }
        Ok(())
    }
}

/// Creates `topic` with `partitions` unless it exists, and waits until every partition has
/// a leader.
async fn ensure_topic(client: &Client, topic: &str, partitions: i32) -> Result<(), CliError> {
    match client.partition_count(topic).await {
        Ok(_) => return Ok(()),
        Err(ClientError::UnknownTopic(_)) => {}
        Err(e) => return Err(e.into()),
    }
    client
        .create_topic(topic, partitions, -1, &BTreeMap::new())
        .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        client.forget(topic);
        match client.leaders_of(topic).await {
            Ok(l) if !l.is_empty() && l.iter().all(|id| *id >= 0) => return Ok(()),
            Ok(_) | Err(ClientError::UnknownTopic(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(_) | Err(ClientError::UnknownTopic(_)) => {
                return Err(CliError::Client(ClientError::Broker {
                    what: format!("{topic} was created but has no leaders after 30 s"),
                    code: kafka_protocol::ResponseError::LeaderNotAvailable.code(),
                }));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Values to send: slices of a few MiB of random letters at scattered offsets, so batches do
/// not repeat themselves and compression sees text of realistic entropy (about 4.7 bits per
/// byte). With `origin`, each value starts with the microseconds since it when sent.
struct Payloads {
    pool: Bytes,
    size: usize,
}

impl Payloads {
    fn new(size: usize) -> Self {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let pool: Vec<u8> = (0..(4 << 20) + size)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                b'A' + (seed % 26) as u8
            })
            .collect();
        Self {
            pool: pool.into(),
            size,
        }
    }

    fn value(&self, i: u64, origin: Option<Instant>) -> Bytes {
        let span = (self.pool.len() - self.size) as u64;
        let at = (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) % span;
        let base = self.pool.slice(at as usize..at as usize + self.size);
        match origin {
            None => base,
            Some(origin) => {
                let mut v = BytesMut::with_capacity(base.len());
                v.put_u64(origin.elapsed().as_micros() as u64);
                v.extend_from_slice(&base[8..]);
                v.freeze()
            }
        }
    }
}

/// Sends `load`; with `origin`, stamps values for [`e2e`]. Latency is from `send` to the
/// acknowledgement (to the write, with acks 0).
async fn produce(
    client: &Arc<Client>,
    load: &Load,
    origin: Option<Instant>,
) -> Result<Report, CliError> {
    let producer = Producer::new(client.clone(), load.send.config()?);
    let payloads = Payloads::new(load.record_size);
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Delivery)>();
    let n = load.records;
    let collector = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(n as usize);
        while let Some((sent, delivery)) = rx.recv().await {
            delivery.offset().await?;
            latencies.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
        }
        Ok::<_, ClientError>(latencies)
    });
    let bar = progress(Some(n), &format!("producing to {}", load.topic));
    let start = Instant::now();
    let mut sent = Ok(());
    for i in 0..n {
        if load.throughput > 0 {
            let due = start + Duration::from_secs_f64(i as f64 / load.throughput as f64);
            if due > Instant::now() + Duration::from_millis(1) {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        let record = NewRecord {
            value: Some(payloads.value(i, origin)),
            ..NewRecord::default()
        };
        let now = Instant::now();
        match producer.send(&load.topic, None, record).await {
            Ok(d) => {
                let _ = tx.send((now, d));
            }
            Err(e) => {
                sent = Err(e);
                break;
            }
        }
        bar.inc(1);
    }
    drop(tx);
    producer.flush().await;
    let latencies = collector
        .await
        .map_err(|e| ClientError::Closed(e.to_string()))?;
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    producer.close().await;
    sent?;
    let mut latencies = latencies?;
    latencies.sort_unstable();
    Ok(Report {
        test: "produce",
        records: n,
        bytes: n * load.record_size as u64,
        elapsed,
        latencies,
    })
}

async fn consume(client: &Arc<Client>, load: &ConsumeLoad) -> Result<Report, CliError> {
    let parts: Vec<i32> = (0..client.partition_count(&load.topic).await?).collect();
    let from = client.list_offsets(&load.topic, &parts, -2).await?;
    let ends = client.list_offsets(&load.topic, &parts, -1).await?;
    let available: u64 = parts
        .iter()
        .map(|p| (ends[p] - from[p]).max(0) as u64)
        .sum();
    let want = load.records.unwrap_or(available);
    let config = ConsumerConfig {
        prefetch: load.prefetch.max(1),
        partition_max_bytes: load.partition_max_bytes.max(1),
        ..ConsumerConfig::default()
    };
    let bar = progress(Some(want), &format!("consuming {}", load.topic));
    let start = Instant::now();
    let (mut records, mut bytes) = (0u64, 0u64);
    if want > 0 {
        let mut consumer = Consumer::new(client.clone(), &load.topic, from, config);
        while records < want {
            let Some(fetched) = consumer.next().await else {
                break;
            };
            for r in fetched?.records.iter().take((want - records) as usize) {
                records += 1;
                bytes += (r.key.as_ref().map_or(0, Bytes::len)
                    + r.value.as_ref().map_or(0, Bytes::len)) as u64;
            }
            bar.set_position(records);
        }
    }
    bar.finish_and_clear();
    Ok(Report {
        test: "consume",
        records,
        bytes,
        elapsed: start.elapsed(),
        latencies: Vec::new(),
    })
}

/// How long e2e waits for the next record before giving up.
const E2E_STALL: Duration = Duration::from_secs(30);

/// Consumes `load.topic` from its end while producing `load`; each consumed value carries
/// its send time, so its latency is the time from `send` to the consumer having it.
async fn e2e(client: &Arc<Client>, load: &Load) -> Result<Vec<Report>, CliError> {
    let parts: Vec<i32> = (0..client.partition_count(&load.topic).await?).collect();
    let from = client.list_offsets(&load.topic, &parts, -1).await?;
    let origin = Instant::now();
    let mut consumer = Consumer::new(
        client.clone(),
        &load.topic,
        from,
        ConsumerConfig {
            max_wait_ms: 100,
            ..ConsumerConfig::default()
        },
    );
    let n = load.records;
    let reader = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(n as usize);
        let mut bytes = 0u64;
        let start = Instant::now();
        while (latencies.len() as u64) < n {
            let fetched = tokio::time::timeout(E2E_STALL, consumer.next())
                .await
                .map_err(|_| {
                    ClientError::Closed(format!(
                        "no record arrived for {} s ({} of {n} received)",
                        E2E_STALL.as_secs(),
                        latencies.len()
                    ))
                })?
                .ok_or_else(|| ClientError::Closed("the consumer stopped".into()))??;
            let now = origin.elapsed().as_micros() as u64;
            for r in &fetched.records {
                let Some(v) = r.value.as_ref().filter(|v| v.len() >= 8) else {
                    continue;
                };
                let sent = u64::from_be_bytes(v[..8].try_into().expect("8 bytes"));
                latencies.push(now.saturating_sub(sent).min(u64::from(u32::MAX)) as u32);
                bytes += v.len() as u64;
            }
        }
        Ok::<_, ClientError>((latencies, bytes, start.elapsed()))
    });
    let produced = produce(client, load, Some(origin)).await;
    let consumed = reader
        .await
        .map_err(|e| ClientError::Closed(e.to_string()))?;
    let produced = produced?;
    let (mut latencies, bytes, elapsed) = consumed?;
    latencies.sort_unstable();
    Ok(vec![
        produced,
        Report {
            test: "end-to-end",
            records: latencies.len() as u64,
            bytes,
            elapsed,
            latencies,
        },
    ])
}
