//! Client quotas through the Kafka protocol: stored and described, refused when invalid,
//! and enforced with `throttle_time_ms` and connection muting as Kafka does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kafka_protocol::messages::describe_client_quotas_request::ComponentData;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{
    DescribeClientQuotasRequest, FetchRequest, MetadataRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use strata_client::Client;
use strata_client::quotas::QuotaEntity;
use strata_storage::BatchBuilder;
use strata_tests::{RawClient, TestBroker, produce_request};

fn entity(pairs: &[(&str, Option<&str>)]) -> QuotaEntity {
    pairs
        .iter()
        .map(|(t, n)| (t.to_string(), n.map(str::to_owned)))
        .collect()
}

/// A broker, a client of it, and one quota set on `entity`.
async fn with_quota(entity: &QuotaEntity, name: &str, value: f64) -> (TestBroker, Client) {
    let broker = TestBroker::start().await;
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    set(&client, entity, name, value).await;
    (broker, client)
}

async fn set(client: &Client, entity: &QuotaEntity, name: &str, value: f64) {
    client
        .alter_quotas(entity, &[(name.to_owned(), Some(value))])
        .await
        .expect("quota set");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_are_stored_described_and_refused_when_invalid() {
    let broker = TestBroker::start().await;
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    let alice = entity(&[("user", Some("alice"))]);
    let alice_app = entity(&[("user", Some("alice")), ("client-id", Some("app"))]);
    let default_client = entity(&[("client-id", None)]);
    set(&client, &alice, "producer_byte_rate", 1_048_576.0).await;
    set(&client, &alice, "request_percentage", 12.5).await;
    set(&client, &alice_app, "consumer_byte_rate", 2048.0).await;
    set(&client, &default_client, "producer_byte_rate", 4096.0).await;
    set(
        &client,
        &entity(&[("ip", Some("10.1.2.3"))]),
        "connection_creation_rate",
        5.0,
    )
    .await;

    let all = client
        .describe_quotas(&QuotaEntity::new())
        .await
        .expect("all");
    assert_eq!(all.len(), 4);
    // Entities with a user named alice (and maybe more), then exactly the default client id.
    let of_alice = client.describe_quotas(&alice).await.expect("alice");
    assert_eq!(of_alice.len(), 2);
    let mine = of_alice
        .iter()
        .find(|q| q.entity == alice)
        .expect("alice's own");
    assert_eq!(
        mine.values,
        BTreeMap::from([
            ("producer_byte_rate".to_string(), 1_048_576.0),
            ("request_percentage".to_string(), 12.5)
        ])
    );
    let defaults = client
        .describe_quotas(&default_client)
        .await
        .expect("default");
    assert_eq!(defaults.len(), 1);
    assert_eq!(defaults[0].entity, default_client);

    // Kafka's filter on the wire: any named user (SPECIFIED), strictly (no other type in
    // the entity) finds alice's own quotas, not alice's with a client id; without
    // `strict` it finds both.
    let specified = |strict: bool| {
        DescribeClientQuotasRequest::default()
            .with_components(vec![
                ComponentData::default()
                    .with_entity_type(StrBytes::from_static_str("user"))
                    .with_match_type(2),
            ])
            .with_strict(strict)
    };
    let mut raw = RawClient::connect(broker.addr()).await;
    for (strict, want) in [(true, 1), (false, 2)] {
        let r = raw.call(1, &specified(strict)).await;
        assert_eq!(r.error_code, 0);
        let entities: Vec<usize> = r
            .entries
            .unwrap_or_default()
            .iter()
            .map(|e| e.entity.len())
            .collect();
        assert_eq!(entities.len(), want, "strict {strict}: {entities:?}");
        assert!(!strict || entities == [1], "strict: user alone");
    }

    // Removing the last value removes the entity.
    client
        .alter_quotas(&default_client, &[("producer_byte_rate".into(), None)])
        .await
        .expect("removed");
    assert_eq!(
        client
            .describe_quotas(&QuotaEntity::new())
            .await
            .expect("all")
            .len(),
        3
    );

    // Kafka's checks: each refused with INVALID_REQUEST, nothing stored.
    let refused = [
        (alice.clone(), "producer_byte_rate", -5.0),
        (alice.clone(), "producer_byte_rate", 10.5),
        (alice.clone(), "no_such_quota", 1.0),
        (alice.clone(), "connection_creation_rate", 1.0),
        (alice.clone(), "controller_mutation_rate", 1.0),
        (
            entity(&[("ip", Some("10.0.0.1")), ("user", Some("bob"))]),
            "connection_creation_rate",
            1.0,
        ),
        (
            entity(&[("ip", Some("not-an-address"))]),
            "connection_creation_rate",
            1.0,
        ),
        (entity(&[("group", Some("g"))]), "producer_byte_rate", 1.0),
    ];
    for (e, name, value) in refused {
        let err = client
            .alter_quotas(&e, &[(name.to_owned(), Some(value))])
            .await
            .expect_err("refused");
        assert!(
            err.to_string().contains("InvalidRequest"),
            "{e:?} {name}={value}: {err}"
        );
    }
    assert_eq!(
        client
            .describe_quotas(&QuotaEntity::new())
            .await
            .expect("all")
            .len(),
        3
    );
    broker.stop().await;
}

/// What librdkafka's statistics said about throttling: the longest throttle time a broker
/// reported to this client.
#[derive(Clone, Default)]
struct Throttles(Arc<AtomicI64>);

impl ClientContext for Throttles {
    fn stats(&self, statistics: Statistics) {
        for b in statistics.brokers.values() {
            if let Some(t) = &b.throttle {
                self.0.fetch_max(t.max, Ordering::Relaxed);
            }
        }
    }
}

fn producer(bootstrap: &str, client_id: &str, throttles: Throttles) -> FutureProducer<Throttles> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("client.id", client_id)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("statistics.interval.ms", "500")
        .set("message.timeout.ms", "120000")
        .create_with_context(throttles)
        .expect("producer")
}

/// Produces 1 KiB records from `producer` for `secs` seconds, at most `per_second` of them
/// per second (`None`: as fast as acknowledgements allow, with up to 2,000 in flight); the
/// bytes acknowledged in each second.
async fn produce_for(
    producer: FutureProducer<Throttles>,
    topic: &str,
    secs: usize,
    per_second: Option<u64>,
) -> Vec<u64> {
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..secs).map(|_| AtomicU64::new(0)).collect());
    let value = vec![b'q'; 1024];
    let window = Arc::new(tokio::sync::Semaphore::new(2_000));
    let start = Instant::now();
    let until = start + Duration::from_secs(secs as u64);
    let mut sent = 0u64;
    while Instant::now() < until {
        if let Some(rate) = per_second {
            let due = start + Duration::from_micros(sent * 1_000_000 / rate);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        let permit = window.clone().acquire_owned().await.expect("open");
        let delivery = producer
            .send_result(FutureRecord::<(), _>::to(topic).payload(&value))
            .map_err(|(e, _)| e)
            .expect("enqueue");
        let acked = acked.clone();
        tokio::spawn(async move {
            if let Ok(Ok(_)) = delivery.await
                && let Some(second) = acked.get(start.elapsed().as_secs() as usize)
            {
                second.fetch_add(1024, Ordering::Relaxed);
            }
            drop(permit);
        });
        sent += 1;
    }
    let _ = producer.flush(Duration::from_secs(60));
    acked.iter().map(|a| a.load(Ordering::Relaxed)).collect()
}

/// The test: a producer above its byte rate is held to it (within 10% over 30 s),
/// while another client on the same broker keeps the throughput it asks for; librdkafka
/// hears of the throttling in `throttle_time_ms`, the other client does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_over_its_byte_rate_is_held_to_it_and_another_is_unaffected() {
    const QUOTA: f64 = 1_048_576.0;
    const FREE_RATE: u64 = 3_000; // records of 1 KiB per second: about 3 MiB/s
    const WARM_UP: usize = 0;
    const MEASURED: usize = 30;
    let (broker, client) = with_quota(
        &entity(&[("client-id", Some("limited"))]),
        "producer_byte_rate",
        QUOTA,
    )
    .await;
    client
        .create_topic("quota", 2, 1, &Default::default())
        .await
        .expect("topic");
    let (limited_throttles, free_throttles) = (Throttles::default(), Throttles::default());
    let limited = producer(&broker.bootstrap(), "limited", limited_throttles.clone());
    let free = producer(&broker.bootstrap(), "free", free_throttles.clone());
    let secs = WARM_UP + MEASURED;
    let (limited_bytes, free_bytes) = tokio::join!(
        produce_for(limited, "quota", secs, None),
        produce_for(free, "quota", secs, Some(FREE_RATE)),
    );
    let rate = |bytes: &[u64]| bytes.iter().sum::<u64>() as f64 / bytes.len() as f64;
    let limited_rate = rate(&limited_bytes[WARM_UP..]);
    let free_rate = rate(&free_bytes[WARM_UP..]);
    eprintln!(
        "limited: {:.0} B/s over {MEASURED} s (quota {QUOTA}), {:.3}x; {:.2}x over all {secs} s; \
         per second: {limited_bytes:?}; free: {:.0} B/s of {} asked; \
         throttle_time_ms seen: limited {} ms, free {} ms",
        limited_rate,
        limited_rate / QUOTA,
        rate(&limited_bytes) / QUOTA,
        free_rate,
        FREE_RATE * 1024,
        limited_throttles.0.load(Ordering::Relaxed),
        free_throttles.0.load(Ordering::Relaxed),
    );
    assert!(
        (0.9..=1.1).contains(&(limited_rate / QUOTA)),
        "the limited producer ran at {limited_rate:.0} B/s against a quota of {QUOTA}"
    );
    assert!(
        free_rate >= 0.95 * (FREE_RATE * 1024) as f64,
        "the other producer got {free_rate:.0} B/s of {} asked",
        FREE_RATE * 1024
    );
    assert!(limited_throttles.0.load(Ordering::Relaxed) > 0);
    assert_eq!(free_throttles.0.load(Ordering::Relaxed), 0);
    broker.stop().await;
}

fn fetch(topic: &str, max_bytes: i32) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(max_bytes)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(max_bytes),
                ]),
        ])
}

/// A consumer over its byte rate is told how long to wait, its connection is not read until
/// then, and a fetch on another connection of the same client meanwhile is answered empty.
/// One answer holds no more than the consumer's allowance, but at least one whole batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_over_its_byte_rate_is_throttled_and_muted() {
    let broker = TestBroker::start().await;
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    client
        .create_topic("fetched", 1, 1, &Default::default())
        .await
        .expect("topic");
    let mut raw = RawClient::connect(broker.addr()).await;
    for _ in 0..10 {
        let batch = BatchBuilder::new().value(None, &[7; 10_000], 1).build();
        let r = raw.call(9, &produce_request("fetched", 0, batch)).await;
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    }
    // 5 KB/s: a batch of 10 KB is two seconds' worth.
    set(
        &client,
        &entity(&[("client-id", Some("strata-tests"))]),
        "consumer_byte_rate",
        5_000.0,
    )
    .await;
    let first = raw.call(12, &fetch("fetched", 1 << 20)).await;
    let got = first.responses[0].partitions[0]
        .records
        .as_ref()
        .map_or(0, |r| r.len());
    assert!(
        (10_000..11_000).contains(&got),
        "one whole batch, no more: {got} bytes"
    );
    assert!(
        (800..=1100).contains(&first.throttle_time_ms),
        "about a second to make up: {} ms",
        first.throttle_time_ms
    );
    // Another connection of the same client meanwhile: answered empty, told to wait.
    let mut other = RawClient::connect(broker.addr()).await;
    let empty = other.call(12, &fetch("fetched", 1 << 20)).await;
    assert!(empty.throttle_time_ms > 0);
    assert!(
        empty.responses.is_empty(),
        "a throttled fetch is answered empty"
    );
    // The first connection is not read while throttled: its next answer waits the time out.
    let asked = Instant::now();
    raw.call(12, &MetadataRequest::default()).await;
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_millis(first.throttle_time_ms as u64).mul_f64(0.8),
        "answered after {waited:?}, throttled for {} ms",
        first.throttle_time_ms
    );
    // Other clients are not held back.
    let started = Instant::now();
    client.list_offset("fetched", 0, -1).await.expect("served");
    assert!(started.elapsed() < Duration::from_millis(500));
    broker.stop().await;
}

/// A client over its request-time percentage is told to wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_request_percentage_is_throttled() {
    let (broker, _client) = with_quota(
        &entity(&[("user", None), ("client-id", Some("strata-tests"))]),
        "request_percentage",
        0.01,
    )
    .await;
    let mut raw = RawClient::connect(broker.addr()).await;
    let mut throttled = None;
    for i in 0..5_000 {
        let r = raw.call(12, &MetadataRequest::default()).await;
        if r.throttle_time_ms > 0 {
            throttled = Some((i, r.throttle_time_ms));
            break;
        }
    }
    let (after, ms) = throttled.expect("throttled within 5,000 requests");
    eprintln!("throttled for {ms} ms after {after} requests");
    broker.stop().await;
}

/// Connections from an IP over its `connection_creation_rate` are closed unserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_an_ips_creation_rate_are_closed() {
    let (broker, _client) = with_quota(
        &entity(&[("ip", Some("127.0.0.1"))]),
        "connection_creation_rate",
        1.0,
    )
    .await;
    // One a second: of ten at once, one is served; the others are held for the second it
    // takes to allow another, then closed unserved.
    let attempts = (0..10).map(|_| {
        let addr = broker.addr();
        tokio::spawn(async move {
            let mut raw = RawClient::connect(addr).await;
            let req = kafka_protocol::messages::ApiVersionsRequest::default();
            let mut body = bytes::BytesMut::new();
            use kafka_protocol::protocol::Encodable;
            kafka_protocol::messages::RequestHeader::default()
                .with_request_api_key(18)
                .with_request_api_version(0)
                .with_correlation_id(1)
                .encode(&mut body, 1)
                .expect("header");
            req.encode(&mut body, 0).expect("body");
            raw.send_frame(&body).await;
            raw.read_frame().await.is_some()
        })
    });
    let mut served = 0;
    for attempt in attempts.collect::<Vec<_>>() {
        served += usize::from(attempt.await.expect("attempt"));
    }
    assert!((1..=2).contains(&served), "served {served} of 10");
    // The IP's allowance comes back at its rate.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let again = Client::connect(&broker.bootstrap()).await;
    assert!(again.is_ok(), "served again after a second");
    broker.stop().await;
}
