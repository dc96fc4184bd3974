//! The HTTP listener as operators meet it: `/metrics` scraped during a produce, consume and
//! replay load (parsed with an independent Prometheus text parser), and `/readyz` while the
//! object store fails and while partitions recover from it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use prometheus_parse::{Scrape, Value};
use strata_broker::config::BrokerConfig;
use strata_storage::BatchBuilder;
use strata_storage::tier::fault::{Fault, FaultyStore};
use strata_tests::{RawClient, TestBroker, http_get, produce_request as produce};

const WAIT: Duration = Duration::from_secs(60);
const SEGMENT: usize = 64 << 10;

fn fast(c: &mut BrokerConfig) {
    c.object_store.upload_interval_ms = 200;
    c.topics.flush_check_interval_ms = 200;
}

/// Scrapes `/metrics`, checks every sample line parses, and returns the samples.
async fn scrape(addr: SocketAddr) -> Scrape {
    let (status, text) = http_get(addr, "/metrics").await.expect("scrape");
    assert_eq!(status, 200, "{text}");
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let samples = lines
        .iter()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    let scrape = Scrape::parse(lines.into_iter().map(Ok)).expect("the exposition parses");
    // A histogram's bucket lines fold into one sample (its sum and count stay samples).
    let folded: usize = scrape
        .samples
        .iter()
        .map(|s| match &s.value {
            Value::Histogram(buckets) => buckets.len(),
            _ => 1,
        })
        .sum();
    assert_eq!(folded, samples, "every sample line parsed");
    scrape
}

/// The value of `name` with all of `labels` (0 when absent).
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(h) => h.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => 0.0,
        })
        .sum()
}

/// Consumes the whole partition from offset 0; returns how many records came.
async fn replay(client: &strata_client::Client, topic: &str, end: i64) -> usize {
    let mut offset = 0;
    let mut n = 0;
    let deadline = Instant::now() + WAIT;
    while offset < end {
        assert!(Instant::now() < deadline, "replay stuck at {offset}");
        let (records, _) = client
            .fetch(topic, 0, offset, 1 << 20, 500)
            .await
            .expect("fetch");
        if let Some(last) = records.last() {
            offset = last.offset + 1;
        }
        n += records.len();
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_by_what_a_produce_consume_and_replay_load_did() {
    let broker = TestBroker::start_with(fast).await;
    let http = broker.http_addr().expect("the HTTP listener runs");
    let client = strata_client::Client::connect(&broker.bootstrap())
        .await
        .expect("connect");
    let topic = "metered";
    let configs = BTreeMap::from([
        ("segment.bytes".to_owned(), SEGMENT.to_string()),
        ("local.retention.ms".to_owned(), "0".to_owned()),
    ]);
    client
        .create_topic(topic, 1, 1, &configs)
        .await
        .expect("create");
    let before = scrape(http).await;
    assert_eq!(value(&before, "strata_topic_bytes_in_total", &[]), 0.0);

    // 300 batches of 4 records: about seven segments.
    let mut raw = RawClient::connect(broker.addr()).await;
    let (mut bytes, mut records) = (0usize, 0usize);
    // Timestamps of now: older ones would fall to the 7-day retention at once.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    for i in 0..300i64 {
        let mut b = BatchBuilder::new();
        for r in 0..4 {
            let v = format!("{i}-{r}-").repeat(40);
            b = b.value(Some(format!("k{r}").as_bytes()), v.as_bytes(), now + i);
        }
        let batch = b.build();
        bytes += batch.len();
        records += 4;
        let r = raw.call(9, &produce(topic, 0, batch)).await;
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    }
    // An error answered: a partition the topic does not have.
    let request = produce(topic, 7, BatchBuilder::new().value(None, b"x", now).build());
    let r = raw.call(9, &request).await;
    assert_ne!(r.responses[0].partition_responses[0].error_code, 0);
    // A group that committed offset 100 lags by the rest.
    let committed = BTreeMap::from([((topic.to_owned(), 0), 100)]);
    client
        .commit_offsets("lagging", &committed)
        .await
        .expect("commit");
    let after = scrape(http).await;
    let t = [("topic", topic)];
    assert_eq!(
        value(
            &after,
            "strata_kafka_request_errors_total",
            &[("api", "Produce"), ("error", "UnknownTopicOrPartition")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "strata_group_lag",
            &[("group", "lagging"), ("topic", topic), ("partition", "0")]
        ),
        (records - 100) as f64
    );
    assert_eq!(
        value(&after, "strata_topic_bytes_in_total", &t),
        bytes as f64,
        "bytes in equal the batches produced"
    );
    assert_eq!(
        value(&after, "strata_topic_records_in_total", &t),
        records as f64
    );
    let produces = [("api", "Produce")];
    assert!(value(&after, "strata_kafka_requests_total", &produces) >= 300.0);
    assert!(value(&after, "strata_kafka_request_duration_seconds", &produces) >= 300.0);
    assert!(
        value(&after, "strata_connections", &[]) >= 2.0,
        "both clients connected"
    );
    assert!(value(&after, "strata_connections_accepted_total", &[]) >= 2.0);
    assert!(value(&after, "process_resident_memory_bytes", &[]) > 0.0);
    assert!(value(&after, "process_open_fds", &[]) > 0.0);
    assert!(value(&after, "strata_partitions", &[("state", "leader")]) >= 1.0);
    assert_eq!(
        value(&after, "strata_partitions", &[("state", "offline")]),
        0.0
    );
    assert_eq!(
        value(&after, "strata_controller_role", &[("role", "leader")]),
        1.0
    );
    assert!(
        value(&after, "strata_controller_commit_duration_seconds", &[]) >= 1.0,
        "the topic's creation was committed"
    );

    // Tiering catches up: everything but the active segment is uploaded, so the upload lag
    // falls to at most one segment, and the uploads were counted.
    let p = [("topic", topic), ("partition", "0")];
    let deadline = Instant::now() + WAIT;
    let tiered = loop {
        let s = scrape(http).await;
        let lag = value(&s, "strata_tiering_upload_lag_bytes", &p);
        let local_start = value(
            &s,
            "strata_partition_offset",
            &[p[0], p[1], ("offset", "local_start")],
        );
        let end = value(
            &s,
            "strata_partition_offset",
            &[p[0], p[1], ("offset", "log_end")],
        );
        if lag <= SEGMENT as f64 && local_start > 0.0 && end == records as f64 {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "upload lag {lag} bytes, local start {local_start}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // What was uploaded and what is left add up to what was produced.
    assert!(value(&tiered, "strata_tiering_uploaded_segments_total", &[]) >= 3.0);
    assert_eq!(
        value(&tiered, "strata_tiering_uploaded_bytes_total", &[])
            + value(&tiered, "strata_tiering_upload_lag_bytes", &p),
        bytes as f64
    );
    assert!(value(&tiered, "strata_tiering_manifest_commits_total", &[]) >= 1.0);
    assert!(
        value(
            &tiered,
            "strata_object_store_requests_total",
            &[("op", "put")]
        ) >= 5.0
    );
    assert!(
        value(&tiered, "strata_object_store_bytes_total", &[("op", "put")])
            >= value(&tiered, "strata_tiering_uploaded_bytes_total", &[])
    );

    // A cold replay from the bucket misses the cache; a warm one hits it and misses nothing.
    let end = records as i64;
    assert_eq!(replay(&client, topic, end).await, records);
    let cold = scrape(http).await;
    let misses = value(&cold, "strata_remote_cache_misses_total", &[]);
    let hits = value(&cold, "strata_remote_cache_hits_total", &[]);
    assert!(misses >= 1.0, "a cold replay misses");
    assert_eq!(
        value(&cold, "strata_topic_bytes_out_total", &t),
        bytes as f64,
        "the replay read every batch once"
    );
    assert_eq!(
        value(&cold, "strata_topic_records_out_total", &t),
        records as f64
    );
    assert_eq!(replay(&client, topic, end).await, records);
    let warm = scrape(http).await;
    assert!(
        value(&warm, "strata_remote_cache_hits_total", &[]) > hits,
        "a warm replay hits: {hits} hits and {misses} misses cold, then {} and {}",
        value(&warm, "strata_remote_cache_hits_total", &[]),
        value(&warm, "strata_remote_cache_misses_total", &[]),
    );
    assert_eq!(
        value(&warm, "strata_remote_cache_misses_total", &[]),
        misses,
        "a warm replay misses nothing"
    );
    assert!(value(&warm, "strata_remote_cache_hit_bytes_total", &[]) > 0.0);

    // The Grafana dashboard in deploy/ asks only for metrics the broker has.
    let (_, text) = http_get(http, "/metrics").await.expect("scrape");
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/strata.json"),
    )
    .expect("the dashboard");
    let _: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    let mut asked = std::collections::BTreeSet::new();
    for (at, _) in dashboard
        .match_indices("strata_")
        .chain(dashboard.match_indices("process_"))
    {
        let name: String = dashboard[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        asked.insert(name.trim_end_matches("_bucket").to_owned());
    }
    let missing: Vec<&String> = asked
        .iter()
        .filter(|n| {
            !text
                .lines()
                .any(|l| l.starts_with(n.as_str()) || l.contains(&format!(" {n} ")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard asks for {missing:?}, which /metrics lacks"
    );
    broker.stop().await;
}

/// GETs `/readyz`: its status and JSON body.
async fn readyz(addr: SocketAddr) -> (u16, serde_json::Value) {
    let (status, body) = http_get(addr, "/readyz").await.expect("readyz");
    (status, serde_json::from_str(&body).expect("JSON"))
}

/// Polls `/readyz` until `done` holds for its answer.
async fn until_ready(
    addr: SocketAddr,
    why: &str,
    done: impl Fn(u16, &serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = readyz(addr).await;
        if done(status, &body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{why}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_not_ready_while_the_store_fails_or_partitions_recover() {
    let (faulty, switch) = FaultyStore::new(Arc::new(object_store::memory::InMemory::new()));
    let store: Arc<dyn ObjectStore> = Arc::new(faulty);
    // A fixed port, so the probes can be asked while the broker starts.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let http: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut broker = TestBroker::start_on_store(Some(store), move |c| {
        fast(c);
        c.http.listen = http.to_string();
        c.object_store.operation_timeout_ms = 2_000;
    })
    .await;
    let (status, body) = http_get(http, "/healthz").await.expect("healthz");
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    until_ready(http, "ready at first", |s, _| s == 200).await;
    let client = strata_client::Client::connect(&broker.bootstrap())
        .await
        .expect("connect");
    client
        .create_topic("kept", 1, 1, &BTreeMap::new())
        .await
        .expect("create");

    // The store fails: not ready, for the store's sake only; then healed, ready again.
    switch.set(Fault::Fail);
    let body = until_ready(http, "not ready with the store down", |s, _| s == 503).await;
    assert_eq!(body["checks"]["object_store"]["ok"], false, "{body}");
    assert_eq!(body["checks"]["partitions"]["ok"], true, "{body}");
    assert_eq!(body["checks"]["metadata"]["ok"], true, "{body}");
    assert_eq!(body["checks"]["kafka_listener"]["ok"], true, "{body}");
    switch.set(Fault::Healthy);
    until_ready(http, "ready once the store answers", |s, _| s == 200).await;

    // A restart while the store hangs: the partition cannot read its manifest, and the
    // probe says so from start-up on; once the store answers it recovers and is ready.
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let watcher = {
        let seen = seen.clone();
        tokio::spawn(async move {
            loop {
                if let Ok((status, body)) = http_get(http, "/readyz").await {
                    seen.lock().expect("seen").push((status, body));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let hang = switch.clone();
    broker.restart_after(move |_| hang.set(Fault::Hang)).await;
    let recovering = until_ready(http, "a recovering partition is reported", |s, b| {
        s == 503 && b["checks"]["partitions"]["ok"] == false
    })
    .await;
    assert!(
        recovering["checks"]["partitions"]["problem"]
            .as_str()
            .is_some_and(|p| p.contains("kept-0")),
        "{recovering}"
    );
    switch.set(Fault::Healthy);
    until_ready(http, "ready once recovered", |s, _| s == 200).await;
    watcher.abort();
    let seen = seen.lock().expect("seen").clone();
    assert!(
        seen.iter().any(|(s, _)| *s == 503),
        "the probe answered during start-up, not ready: {seen:?}"
    );
    broker.stop().await;
}

/// Per-partition series stop at `http.partition_metrics_limit`, the rest counted as omitted,
/// and `http.partition_metrics = false` leaves them out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_partition_series_are_bounded_and_can_be_switched_off() {
    let series = |s: &Scrape| {
        s.samples
            .iter()
            .filter(|x| x.metric == "strata_partition_offset")
            .filter_map(|x| {
                Some((
                    x.labels.get("topic")?.to_owned(),
                    x.labels.get("partition")?.to_owned(),
                ))
            })
            .collect::<std::collections::BTreeSet<_>>()
    };
    for (on, limit) in [(true, 3usize), (false, 2000)] {
        let broker = TestBroker::start_with(move |c| {
            c.http.partition_metrics = on;
            c.http.partition_metrics_limit = limit;
        })
        .await;
        let client = strata_client::Client::connect(&broker.bootstrap())
            .await
            .expect("connect");
        client
            .create_topic("many", 8, 1, &BTreeMap::new())
            .await
            .expect("create");
        let s = scrape(broker.http_addr().expect("http")).await;
        let omitted = value(&s, "strata_partition_series_omitted", &[]);
        let hosted = value(&s, "strata_partitions", &[("state", "leader")]);
        match on {
            true => {
                assert_eq!(series(&s).len(), limit, "{:?}", series(&s));
                assert_eq!(omitted, hosted - limit as f64);
            }
            false => {
                assert!(series(&s).is_empty(), "{:?}", series(&s));
                assert_eq!(omitted, hosted);
            }
        }
        assert!(hosted >= 8.0, "{hosted} partitions led");
        broker.stop().await;
    }
}

/// librdkafka's default KIP-714 telemetry: it subscribes, pushes the producer metrics the
/// broker asks for (and only those) every interval, and they show on `/metrics` under the
/// client's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_pushes_the_telemetry_the_broker_asks_for() {
    use rdkafka::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    const ASKED: &str = "org.apache.kafka.producer.";
    let broker = TestBroker::start_with(|c| {
        c.telemetry.metrics = vec![ASKED.to_owned()];
        c.telemetry.push_interval_ms = 500;
    })
    .await;
    let http = broker.http_addr().expect("http listener");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("client.id", "telemetry-test")
        .create()
        .expect("producer");
    let deadline = Instant::now() + WAIT;
    let pushed = loop {
        producer
            .send(
                FutureRecord::to("telemetry").key("k").payload("v"),
                Duration::from_secs(10),
            )
            .await
            .expect("produced");
        let s = scrape(http).await;
        let pushed: Vec<BTreeMap<String, String>> = s
            .samples
            .iter()
            .filter(|x| x.metric == "strata_client_metric")
            .map(|x| {
                x.labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .collect();
        if !pushed.is_empty() {
            break pushed;
        }
        assert!(Instant::now() < deadline, "no telemetry within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for labels in &pushed {
        assert_eq!(
            labels.get("client_id").map(String::as_str),
            Some("telemetry-test")
        );
        let name = labels.get("name").map_or("", String::as_str);
        assert!(name.starts_with(ASKED), "{name} was not asked for");
    }
}

/// An idle tiered partition costs no object-store requests: once its segments are uploaded,
/// the tiering loop passes over it until something changes or the retention check is due
/// (an hour here). Each pass used to read its manifest (a LIST and a GET) every upload
/// interval: at S3 prices, dollars an hour for a broker of idle partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tiered_partition_makes_no_object_store_requests() {
    let broker = TestBroker::start_with(|c| {
        fast(c);
        c.topics.retention_check_interval_ms = 3_600_000;
    })
    .await;
    let http = broker.http_addr().expect("the HTTP listener runs");
    let client = strata_client::Client::connect(&broker.bootstrap())
        .await
        .expect("connect");
    let topic = "idle";
    let configs = BTreeMap::from([("segment.bytes".to_owned(), SEGMENT.to_string())]);
    client
        .create_topic(topic, 1, 1, &configs)
        .await
        .expect("create");
    let mut raw = RawClient::connect(broker.addr()).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    for i in 0..100i64 {
        let v = format!("{i}-").repeat(400);
        let batch = BatchBuilder::new().value(None, v.as_bytes(), now).build();
        let r = raw.call(9, &produce(topic, 0, batch)).await;
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    }
    let p = [("topic", topic), ("partition", "0")];
    let deadline = Instant::now() + WAIT;
    while value(&scrape(http).await, "strata_tiering_upload_lag_bytes", &p) > SEGMENT as f64 {
        assert!(
            Instant::now() < deadline,
            "the sealed segments were not uploaded"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The pass after the last commit sees the new manifest version once; then nothing moves.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let requests = || async {
        value(
            &scrape(http).await,
            "strata_object_store_requests_total",
            &[],
        )
    };
    let before = requests().await;
    assert!(before > 0.0, "the uploads were counted");
    // Ten upload intervals.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        requests().await,
        before,
        "requests made for an idle partition"
    );
}
