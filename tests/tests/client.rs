//! strata-client's batching producer and pipelined consumer against an in-process broker.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use strata_client::consumer::{Consumer, ConsumerConfig};
use strata_client::producer::{Compression, Producer, ProducerConfig};
use strata_client::{Client, NewRecord};
use strata_tests::TestBroker;

fn record(key: String, value: String) -> NewRecord {
    NewRecord {
        key: Some(Bytes::from(key)),
        value: Some(Bytes::from(value)),
        ..NewRecord::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_in_flight_keep_each_partitions_order_and_read_back_whole() {
    let broker = TestBroker::start().await;
    let client = Arc::new(Client::connect(&broker.bootstrap()).await.expect("connect"));
    client
        .create_topic("ordered", 3, -1, &BTreeMap::new())
        .await
        .expect("create");
    // Small batches and many requests in flight: ordering rests on the connection.
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            batch_bytes: 2048,
            linger: Duration::from_millis(1),
            max_in_flight: 16,
            compression: Compression::Zstd,
            ..ProducerConfig::default()
        },
    );
    let mut sent: BTreeMap<i32, Vec<(String, i64)>> = BTreeMap::new();
    let mut deliveries = Vec::new();
    for i in 0..6000 {
        let key = format!("key-{}", i % 50);
        let value = format!("value-{i}");
        let d = producer
            .send("ordered", None, record(key, value.clone()))
            .await
            .expect("send");
        deliveries.push((d.partition(), value, d));
    }
    for (p, value, d) in deliveries {
        let offset = d.offset().await.expect("delivered");
        sent.entry(p).or_default().push((value, offset));
    }
    producer.close().await;
    assert_eq!(sent.len(), 3, "keys spread over every partition");
    for (p, records) in &sent {
        let offsets: Vec<i64> = records.iter().map(|(_, o)| *o).collect();
        let expected: Vec<i64> = (0..records.len() as i64).collect();
        assert_eq!(
            offsets, expected,
            "partition {p}: offsets follow send order"
        );
    }

    let mut consumer = Consumer::new(
        client.clone(),
        "ordered",
        (0..3).map(|p| (p, 0)).collect(),
        ConsumerConfig {
            partition_max_bytes: 4096,
            ..ConsumerConfig::default()
        },
    );
    let mut read: BTreeMap<i32, Vec<(String, i64)>> = BTreeMap::new();
    let mut total = 0;
    while total < 6000 {
        let fetched = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("records keep coming")
            .expect("open")
            .expect("fetched");
        total += fetched.records.len();
        read.entry(fetched.partition)
            .or_default()
            .extend(fetched.records.iter().map(|r| {
                let v = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default());
                (v.into_owned(), r.offset)
            }));
    }
    assert_eq!(read, sent);
    broker.stop().await;
}

/// `f`, which must finish within 10 s.
async fn within<T>(f: impl std::future::Future<Output = T>, what: &str) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: still waiting after 10 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_waits_for_linger_unless_full_or_flushed() {
    let broker = TestBroker::start().await;
    let client = Arc::new(Client::connect(&broker.bootstrap()).await.expect("connect"));
    client
        .create_topic("lingering", 1, -1, &BTreeMap::new())
        .await
        .expect("create");
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            linger: Duration::from_millis(400),
            batch_bytes: 1 << 20,
            ..ProducerConfig::default()
        },
    );
    let start = Instant::now();
    let mut deliveries = Vec::new();
    for i in 0..10 {
        deliveries.push(
            producer
                .send("lingering", Some(0), record(format!("k{i}"), "v".into()))
                .await
                .expect("send"),
        );
    }
    let mut offsets = Vec::new();
    for d in deliveries {
        offsets.push(
            within(d.offset(), "lingered batch")
                .await
                .expect("delivered"),
        );
    }
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(350),
        "sent after {waited:?}"
    );
    assert_eq!(offsets, (0..10).collect::<Vec<i64>>());

    // A flush sends at once.
    let start = Instant::now();
    let d = producer
        .send("lingering", Some(0), record("k".into(), "v".into()))
        .await
        .expect("send");
    within(producer.flush(), "flush").await;
    assert!(start.elapsed() < Duration::from_millis(350));
    assert_eq!(within(d.offset(), "flushed").await.expect("delivered"), 10);

    // A full batch goes without waiting for linger.
    let big = Producer::new(
        client.clone(),
        ProducerConfig {
            linger: Duration::from_secs(30),
            batch_bytes: 1000,
            ..ProducerConfig::default()
        },
    );
    let start = Instant::now();
    let d = big
        .send("lingering", Some(0), record("k".into(), "x".repeat(2000)))
        .await
        .expect("send");
    assert_eq!(
        within(d.offset(), "full batch").await.expect("delivered"),
        11
    );
    assert!(start.elapsed() < Duration::from_secs(5));

    // Sending to a partition that does not exist fails at once.
    let e = producer
        .send("lingering", Some(3), record("k".into(), "v".into()))
        .await
        .expect_err("no partition 3");
    assert!(e.to_string().contains("has 1 partitions"), "{e}");
    broker.stop().await;
}
