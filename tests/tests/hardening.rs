//! Defects found by the durability review, each shown through the Kafka protocol: topic
//! configs that must not stop the broker, data that must be kept (compacted topics, records
//! without timestamps), data that must reach the object store (acks=1), errors clients act on.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use strata_client::{Client, ClientError, NewRecord};
use strata_tests::TestBroker;

fn configs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn record(key: &str, value: &[u8]) -> NewRecord {
    NewRecord {
        key: Some(Bytes::from(key.to_owned())),
        value: Some(Bytes::copy_from_slice(value)),
        ..NewRecord::default()
    }
}

/// A broker whose background passes (uploads, retention, flushes) run every 100 ms.
async fn fast_broker() -> TestBroker {
    TestBroker::start_with(|c| {
        c.object_store.upload_interval_ms = 100;
        c.topics.flush_check_interval_ms = 100;
    })
    .await
}

fn code(e: &ClientError) -> Option<i16> {
    match e {
        ClientError::Broker { code, .. } => Some(*code),
        ClientError::Delivery(inner) => code(inner),
        _ => None,
    }
}

/// Polls `check` every 100 ms until it holds or `within` passes.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_configs_kafka_accepts_never_stop_the_broker_from_starting_or_following_metadata() {
    let mut broker = TestBroker::start().await;
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    // "Index every batch" is a legal Kafka setting.
    client
        .create_topic("every", 1, -1, &configs(&[("index.interval.bytes", "0")]))
        .await
        .expect("index.interval.bytes=0 is accepted");
    client
        .produce("every", 0, &[record("k", b"v")], -1)
        .await
        .expect("produce");
    // A limit no batch fits under is accepted, and every batch is refused as too large.
    client
        .create_topic("tiny", 1, -1, &BTreeMap::new())
        .await
        .expect("create");
    client
        .alter_topic_config("tiny", &configs(&[("max.message.bytes", "10")]), &[])
        .await
        .expect("max.message.bytes=10 is accepted");
    // Metadata after the change is still applied: a topic created later is served.
    client
        .create_topic("later", 1, -1, &BTreeMap::new())
        .await
        .expect("create later");
    let c = &client;
    eventually(
        Duration::from_secs(10),
        "later never served",
        || async move {
            c.produce("later", 0, &[record("k", b"v")], -1)
                .await
                .is_ok()
        },
    )
    .await;
    let refused = client
        .produce("tiny", 0, &[record("k", b"v")], -1)
        .await
        .expect_err("no batch fits in 10 bytes");
    assert_eq!(code(&refused), Some(10), "MESSAGE_TOO_LARGE: {refused}");
    drop(client);

    broker.restart().await;
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    let (records, _) = client
        .fetch("every", 0, 0, 1 << 20, 100)
        .await
        .expect("fetch after restart");
    assert_eq!(records.len(), 1);
    drop(client);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_batch_is_refused_with_message_too_large() {
    let broker = TestBroker::start().await;
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    client
        .create_topic("big", 1, -1, &BTreeMap::new())
        .await
        .expect("create");
    let value = vec![b'x'; 2 << 20];
    let refused = client
        .produce("big", 0, &[record("k", &value)], -1)
        .await
        .expect_err("2 MiB is over the default max.message.bytes");
    assert_eq!(code(&refused), Some(10), "MESSAGE_TOO_LARGE: {refused}");
    drop(client);
    broker.stop().await;
}

/// Produces `count` keyed records of about 200 bytes with `acks`, one batch each.
async fn produce_keyed(client: &Client, topic: &str, count: usize, acks: i16) {
    for i in 0..count {
        client
            .produce(
                topic,
                0,
                &[record(&format!("k{}", i % 5), &[b'v'; 200])],
                acks,
            )
            .await
            .expect("produce");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_topics_are_not_deleted_by_retention() {
    let broker = fast_broker().await;
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    for (topic, tiered) in [("compact-local", "false"), ("compact-tiered", "true")] {
        client
            .create_topic(
                topic,
                1,
                -1,
                &configs(&[
                    ("cleanup.policy", "compact"),
                    ("retention.ms", "1000"),
                    ("retention.bytes", "1024"),
                    ("segment.bytes", "1024"),
                    ("remote.storage.enable", tiered),
                ]),
            )
            .await
            .expect("create");
        produce_keyed(&client, topic, 20, 1).await;
    }
    // Well past retention.ms, with retention passes every 100 ms.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for topic in ["compact-local", "compact-tiered"] {
        assert_eq!(
            client.list_offset(topic, 0, -2).await.expect("list"),
            0,
            "{topic} lost its oldest records"
        );
        let (records, _) = client
            .fetch(topic, 0, 0, 1 << 20, 100)
            .await
            .expect("fetch at 0");
        assert_eq!(records.first().map(|r| r.offset), Some(0), "{topic}");
    }
    // A compact,delete topic is deleted by retention as Kafka does.
    client
        .create_topic(
            "compact-delete",
            1,
            -1,
            &configs(&[
                ("cleanup.policy", "compact,delete"),
                ("retention.ms", "1000"),
                ("segment.bytes", "1024"),
                ("remote.storage.enable", "false"),
            ]),
        )
        .await
        .expect("create");
    produce_keyed(&client, "compact-delete", 20, 1).await;
    let c = &client;
    eventually(
        Duration::from_secs(20),
        "compact,delete never applied retention",
        || async move { c.list_offset("compact-delete", 0, -2).await.expect("list") > 0 },
    )
    .await;
    drop(client);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_without_timestamps_age_from_when_they_were_written() {
    let broker = fast_broker().await;
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    for tiered in ["false", "true"] {
        let topic = format!("untimed-{tiered}");
        client
            .create_topic(
                &topic,
                1,
                -1,
                &configs(&[("segment.bytes", "1024"), ("remote.storage.enable", tiered)]),
            )
            .await
            .expect("create");
        for i in 0..20 {
            let r = NewRecord {
                timestamp: Some(-1),
                ..record(&format!("k{i}"), &[b'v'; 200])
            };
            client.produce(&topic, 0, &[r], -1).await.expect("produce");
        }
    }
    // Default retention.ms is 7 days: nothing written just now is that old.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for tiered in ["false", "true"] {
        let topic = format!("untimed-{tiered}");
        assert_eq!(client.list_offset(&topic, 0, -2).await.expect("list"), 0);
        let (records, _) = client
            .fetch(&topic, 0, 0, 1 << 20, 100)
            .await
            .expect("fetch at 0");
        assert_eq!(records.first().map(|r| r.offset), Some(0), "{topic}");
    }
    drop(client);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_written_with_acks_one_are_uploaded_and_retained() {
    let broker = fast_broker().await;
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    client
        .create_topic(
            "acks1",
            1,
            -1,
            &configs(&[
                ("segment.bytes", "16384"),
                ("local.retention.bytes", "16384"),
            ]),
        )
        .await
        .expect("create");
    let value = vec![b'v'; 1000];
    for i in 0..200 {
        client
            .produce("acks1", 0, &[record(&format!("k{i}"), &value)], 1)
            .await
            .expect("produce");
    }
    // Without a single acks=all produce, the sealed segments reach the object store and
    // the local tail shrinks to local.retention.bytes.
    let c = &client;
    eventually(
        Duration::from_secs(20),
        "acks=1 data was never uploaded",
        || async move { c.list_offset("acks1", 0, -5).await.expect("list") >= 150 },
    )
    .await;
    let c = &client;
    eventually(
        Duration::from_secs(20),
        "local segments never evicted",
        || async move { c.list_offset("acks1", 0, -4).await.expect("list") > 0 },
    )
    .await;
    // Everything is still served, from both tiers.
    let (records, _) = client
        .fetch("acks1", 0, 0, 1 << 20, 100)
        .await
        .expect("fetch at 0");
    assert_eq!(records.first().map(|r| r.offset), Some(0));
    drop(client);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_topic_never_adopts_a_deleted_topics_leftover_segments() {
    let broker = TestBroker::start().await;
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    let local = configs(&[("remote.storage.enable", "false")]);
    client
        .create_topic("reused", 1, -1, &local)
        .await
        .expect("create");
    produce_keyed(&client, "reused", 10, -1).await;
    let dir = broker.data_dir().join("logs/reused-0");
    let saved: Vec<(std::path::PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .expect("partition dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "log" || x == "index"))
        .map(|p| {
            let bytes = std::fs::read(&p).expect("read");
            (p, bytes)
        })
        .collect();
    client.delete_topic("reused").await.expect("delete");
    let d = &dir;
    eventually(
        Duration::from_secs(10),
        "directory not removed",
        || async move { !d.exists() },
    )
    .await;
    // A crash in the middle of the deletion leaves segments without partition.metadata.
    std::fs::create_dir_all(&dir).expect("mkdir");
    for (path, bytes) in &saved {
        std::fs::write(path, bytes).expect("restore");
    }
    client
        .create_topic("reused", 1, -1, &local)
        .await
        .expect("re-create");
    let deadline = Instant::now() + Duration::from_secs(10);
    let end = loop {
        match client.list_offset("reused", 0, -1).await {
            Ok(end) => break end,
            Err(e) => assert!(
                Instant::now() < deadline,
                "re-created topic not served: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(end, 0, "the deleted topic's records came back");
    drop(client);
    broker.stop().await;
}

/// The leader epoch of `topic`/0.
async fn leader_epoch(client: &Client, topic: &str) -> i32 {
    let topics = client.topics().await.expect("topics");
    let t = topics
        .iter()
        .find(|t| t.name == topic)
        .expect("topic listed");
    t.partitions[0].leader_epoch
}

/// Produces 60 records keyed `k<from>`.. with `value`, acks=all, one batch each.
async fn produce_values(client: &Client, topic: &str, from: usize, value: &[u8]) {
    for i in from..from + 60 {
        client
            .produce(topic, 0, &[record(&format!("k{i}"), value)], -1)
            .await
            .expect("produce");
    }
}

/// Waits until `topic`/0 has uploaded everything below `end` (ListOffsets -5 is the last
/// offset in object storage).
async fn uploaded_to(client: &Client, topic: &str, end: i64) {
    let c = client;
    eventually(
        Duration::from_secs(30),
        &format!("{topic} not uploaded up to {end}"),
        || async move { c.list_offset(topic, 0, -5).await.expect("list") + 1 >= end },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_resume_after_an_empty_disk_recovery_of_a_restarted_broker() {
    use std::sync::Arc;

    use object_store::ObjectStore;

    let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let fast = |c: &mut strata_broker::config::BrokerConfig| {
        c.object_store.upload_interval_ms = 100;
        c.topics.flush_check_interval_ms = 100;
    };
    let topic_configs = configs(&[
        ("segment.bytes", "16384"),
        ("local.retention.bytes", "16384"),
    ]);
    let value = vec![b'v'; 1000];
    // A broker that restarts once: the partition's leader epoch rises, and so does the
    // epoch its manifest is committed with.
    let mut first = TestBroker::start_on_store(Some(store.clone()), fast).await;
    let client = Client::connect(&first.bootstrap()).await.expect("connect");
    client
        .create_topic("kept", 1, -1, &topic_configs)
        .await
        .expect("create");
    produce_values(&client, "kept", 0, &value).await;
    uploaded_to(&client, "kept", 45).await;
    drop(client);
    first.restart().await;
    let client = Client::connect(&first.bootstrap()).await.expect("connect");
    produce_values(&client, "kept", 60, &value).await;
    uploaded_to(&client, "kept", 105).await;
    let epoch_before = leader_epoch(&client, "kept").await;
    assert!(
        epoch_before >= 2,
        "the restart raised the epoch to {epoch_before}"
    );
    drop(client);
    first.stop().await;

    // Its disk is lost: a fresh broker recovers the topic from the bucket's catalog...
    let second = TestBroker::start_on_store(Some(store.clone()), fast).await;
    let client = Client::connect(&second.bootstrap()).await.expect("connect");
    let recovered_end = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match client.list_offset("kept", 0, -1).await {
                Ok(end) if end >= 105 => break end,
                _ => assert!(Instant::now() < deadline, "topic not recovered"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let epoch_after = leader_epoch(&client, "kept").await;
    assert!(
        epoch_after > epoch_before,
        "the recovered topic's epoch {epoch_after} continues above the manifest's {epoch_before}"
    );
    // ...and what it takes afterwards is uploaded too, and evicted locally.
    let deadline = Instant::now() + Duration::from_secs(30);
    while client
        .produce("kept", 0, &[record("probe", &value)], -1)
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "recovered partition takes no writes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    produce_values(&client, "kept", 200, &value).await;
    uploaded_to(&client, "kept", recovered_end + 45).await;
    let local = second.data_dir().join("logs/kept-0");
    let c = &client;
    let dir = &local;
    eventually(
        Duration::from_secs(30),
        "the local log never shrank to local.retention.bytes plus two segments",
        || async move {
            let bytes: u64 = std::fs::read_dir(dir)
                .expect("partition dir")
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                .map(|e| e.metadata().map_or(0, |m| m.len()))
                .sum();
            bytes <= 16384 * 3 && c.list_offset("kept", 0, -4).await.expect("list") > 0
        },
    )
    .await;
    drop(client);
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_below_the_log_start_of_a_topic_that_is_not_tiered_is_out_of_range() {
    let broker = fast_broker().await;
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    client
        .create_topic(
            "short",
            1,
            -1,
            &configs(&[
                ("remote.storage.enable", "false"),
                ("segment.bytes", "1024"),
                ("retention.ms", "1000"),
            ]),
        )
        .await
        .expect("create");
    for i in 0..20 {
        // Stamped an hour ago: outside retention.ms as soon as their segment seals.
        let r = NewRecord {
            timestamp: Some(now_ms() - 3_600_000),
            ..record(&format!("k{i}"), &[b'v'; 200])
        };
        client.produce("short", 0, &[r], 1).await.expect("produce");
    }
    let c = &client;
    eventually(
        Duration::from_secs(20),
        "retention never moved the log start",
        || async move { c.list_offset("short", 0, -2).await.expect("list") > 0 },
    )
    .await;
    // A consumer behind the log start gets OFFSET_OUT_OF_RANGE (and applies its
    // auto.offset.reset), not a retriable storage error.
    let refused = client
        .fetch("short", 0, 0, 1 << 20, 100)
        .await
        .expect_err("offset 0 is gone");
    assert_eq!(code(&refused), Some(1), "OFFSET_OUT_OF_RANGE: {refused}");
    drop(client);
    broker.stop().await;
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_may_not_write_delete_or_reshape_internal_topics() {
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::{MetadataRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;
    use strata_tests::RawClient;

    let mut broker = TestBroker::start().await;
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    client
        .create_topic("data", 1, -1, &BTreeMap::new())
        .await
        .expect("create");
    let offsets = BTreeMap::from([(("data".to_owned(), 0), 42)]);
    client
        .commit_offsets("quiet", &offsets)
        .await
        .expect("commit");
    let offsets_topic = "__consumer_offsets";
    let expect_code = |r: Result<(), ClientError>, want: i16, what: &str| match r {
        Err(e) => assert_eq!(code(&e), Some(want), "{what}: {e}"),
        Ok(()) => panic!("{what} was allowed"),
    };
    // Writes: INVALID_TOPIC_EXCEPTION, as Kafka answers.
    for p in 0..16 {
        let r = client
            .produce(
                offsets_topic,
                p,
                &[record(r#"{"group":{"group":"quiet"}}"#, b"")],
                1,
            )
            .await
            .map(drop);
        expect_code(r, 17, "producing to __consumer_offsets");
    }
    expect_code(
        client.delete_topic(offsets_topic).await,
        29,
        "deleting __consumer_offsets",
    );
    expect_code(
        client
            .alter_topic_config(
                offsets_topic,
                &configs(&[("cleanup.policy", "delete")]),
                &[],
            )
            .await,
        40,
        "making __consumer_offsets deletable",
    );
    expect_code(
        client
            .create_topic("__transaction_state", 1, -1, &BTreeMap::new())
            .await,
        42,
        "creating __transaction_state",
    );
    // Nor does asking for an internal topic's metadata create it with the defaults.
    let mut raw = RawClient::connect(broker.addr()).await;
    let answer = raw
        .call(
            12,
            &MetadataRequest::default()
                .with_allow_auto_topic_creation(true)
                .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
                    TopicName(StrBytes::from_static_str("__transaction_state")),
                ))])),
        )
        .await;
    assert_ne!(
        answer.topics[0].error_code, 0,
        "auto-created an internal topic"
    );
    // Tuning other settings of an internal topic stays allowed, as in Kafka.
    client
        .alter_topic_config(
            offsets_topic,
            &configs(&[("segment.bytes", "1048576")]),
            &[],
        )
        .await
        .expect("segment.bytes of __consumer_offsets");
    let topics = client.topics().await.expect("topics");
    let internal: Vec<_> = topics.iter().filter(|t| t.internal).collect();
    assert_eq!(internal.len(), 1, "{topics:?}");
    assert_eq!(internal[0].partitions.len(), 16);
    drop(client);

    // The group's offsets survive a restart untouched.
    broker.restart().await;
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    let deadline = Instant::now() + Duration::from_secs(10);
    let committed = loop {
        match client.committed_offsets("quiet").await {
            Ok(committed) => break committed,
            // COORDINATOR_LOAD_IN_PROGRESS while the offsets partition replays.
            Err(e) if code(&e) == Some(14) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("offsets after restart: {e}"),
        }
    };
    assert_eq!(committed, offsets);
    drop(client);
    broker.stop().await;
}

/// Resident memory of this process, in bytes.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("resident pages");
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_pipelines_huge_fetches_and_never_reads_cannot_exhaust_memory() {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{ApiKey, FetchRequest, RequestHeader, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};
    use strata_tests::RawClient;

    let broker = TestBroker::start().await;
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    client
        .create_topic(
            "big",
            1,
            -1,
            &configs(&[("remote.storage.enable", "false")]),
        )
        .await
        .expect("create");
    // 64 MiB in the partition.
    let value = vec![b'v'; 512 * 1024];
    for i in 0..128 {
        client
            .produce("big", 0, &[record(&format!("k{i}"), &value)], 1)
            .await
            .expect("produce");
    }
    let before = rss_bytes();
    // 64 pipelined fetches asking for everything (2 GiB each), never reading an answer.
    let fetch = FetchRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(i32::MAX)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("big")))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_fetch_offset(0)
                        .with_current_leader_epoch(-1)
                        .with_partition_max_bytes(i32::MAX),
                ]),
        ]);
    let mut greedy = RawClient::connect(broker.addr()).await;
    for i in 0..64 {
        let mut body = bytes::BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(ApiKey::Fetch as i16)
            .with_request_api_version(12)
            .with_correlation_id(i)
            .encode(&mut body, ApiKey::Fetch.request_header_version(12))
            .expect("header");
        fetch.encode(&mut body, 12).expect("body");
        greedy.send_frame(&body).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let grown = rss_bytes().saturating_sub(before);
    assert!(
        grown < 512 << 20,
        "the broker holds {} MiB for one client's unread fetches",
        grown >> 20
    );
    // Everyone else is still served.
    let (records, _) = client
        .fetch("big", 0, 127, 1 << 20, 100)
        .await
        .expect("another client's fetch");
    assert_eq!(records.first().map(|r| r.offset), Some(127));
    drop(greedy);
    drop(client);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_responses_are_capped_at_the_brokers_fetch_max_bytes() {
    let broker = TestBroker::start_with(|c| c.kafka.fetch_max_bytes = 64 * 1024).await;
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    client
        .create_topic("capped", 1, -1, &BTreeMap::new())
        .await
        .expect("create");
    for i in 0..200 {
        client
            .produce("capped", 0, &[record(&format!("k{i}"), &[b'v'; 1000])], 1)
            .await
            .expect("produce");
    }
    let (records, _) = client
        .fetch("capped", 0, 0, i32::MAX, 100)
        .await
        .expect("fetch");
    let bytes: usize = records
        .iter()
        .map(|r| r.value.as_ref().map_or(0, Bytes::len))
        .sum();
    assert!(!records.is_empty());
    assert!(bytes <= 64 * 1024, "{bytes} bytes in one response");
    drop(client);
    broker.stop().await;
}

/// Whether a new connection to `addr` gets an answer to ApiVersions (false when closed).
async fn answers_api_versions(addr: std::net::SocketAddr) -> bool {
    use kafka_protocol::messages::{ApiKey, RequestHeader};
    use kafka_protocol::protocol::Encodable;

    let mut c = strata_tests::RawClient::connect(addr).await;
    let mut body = bytes::BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(ApiKey::ApiVersions as i16)
        .with_request_api_version(0)
        .with_correlation_id(1)
        .encode(&mut body, ApiKey::ApiVersions.request_header_version(0))
        .expect("header");
    c.send_frame(&body).await;
    tokio::time::timeout(Duration::from_secs(2), c.read_frame())
        .await
        .ok()
        .flatten()
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limits_are_closed_and_the_broker_keeps_serving() {
    use strata_tests::RawClient;

    let broker = TestBroker::start_with(|c| {
        c.kafka.max_connections = 40;
        c.kafka.max_connections_per_ip = 30;
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..30 {
        idle.push(RawClient::connect(broker.addr()).await);
    }
    // The 31st from this address is closed at once.
    let mut over = RawClient::connect(broker.addr()).await;
    assert!(over.closed_within(Duration::from_secs(5)).await);
    // Once others leave, new connections are served.
    idle.truncate(10);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !answers_api_versions(broker.addr()).await {
        assert!(
            Instant::now() < deadline,
            "no connection served after others left"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(idle);
    broker.stop().await;
}

/// Produces raw `batch` bytes to `topic`/0 with `acks` and returns the error code.
async fn produce_raw(broker: &TestBroker, topic: &str, batch: Vec<u8>, acks: i16) -> i16 {
    let mut c = strata_tests::RawClient::connect(broker.addr()).await;
    let request = strata_tests::produce_request(topic, 0, batch).with_acks(acks);
    let r = c.call(9, &request).await;
    r.responses[0].partition_responses[0].error_code
}

/// A one-record batch stamped `timestamp`, with `attributes` ORed in (CRC fixed up).
fn batch_with(timestamp: i64, attributes: u8) -> Vec<u8> {
    let mut b = strata_storage::BatchBuilder::new()
        .value(Some(b"k"), b"v", timestamp)
        .build();
    b[22] |= attributes;
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_kafka_clients_rely_on_are_honoured_or_refused() {
    let broker = TestBroker::start().await;
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    // A replication factor above the live brokers is refused, not accepted and ignored.
    let refused = client
        .create_topic("copies", 1, 3, &BTreeMap::new())
        .await
        .expect_err("one broker cannot keep three copies");
    assert_eq!(
        code(&refused),
        Some(38),
        "INVALID_REPLICATION_FACTOR: {refused}"
    );
    // min.insync.replicas above the in-sync replicas refuses acks=all, not acks=1.
    client
        .create_topic("careful", 1, -1, &configs(&[("min.insync.replicas", "2")]))
        .await
        .expect("create");
    let refused = client
        .produce("careful", 0, &[record("k", b"v")], -1)
        .await
        .expect_err("one in-sync replica is fewer than two");
    assert_eq!(code(&refused), Some(19), "NOT_ENOUGH_REPLICAS: {refused}");
    client
        .produce("careful", 0, &[record("k", b"v")], 1)
        .await
        .expect("acks=1 does not need the ISR");
    // Timestamps: an hour ahead is refused by default, as in Kafka 4; a bound before is
    // honoured when set.
    client
        .create_topic(
            "times",
            1,
            -1,
            &configs(&[("message.timestamp.before.max.ms", "86400000")]),
        )
        .await
        .expect("create");
    let now = now_ms();
    assert_eq!(
        produce_raw(&broker, "times", batch_with(now, 0), -1).await,
        0
    );
    assert_eq!(
        produce_raw(&broker, "times", batch_with(now + 7_200_000, 0), -1).await,
        32,
        "two hours ahead: INVALID_TIMESTAMP"
    );
    assert_eq!(
        produce_raw(&broker, "times", batch_with(now - 2 * 86_400_000, 0), -1).await,
        32,
        "two days old: INVALID_TIMESTAMP"
    );
    assert_eq!(
        produce_raw(&broker, "times", batch_with(-1, 0), -1).await,
        0,
        "no timestamp is not checked"
    );
    // A compacted topic keeps the latest value per key: a record without one is refused
    // (INVALID_RECORD), as Kafka does.
    client
        .create_topic(
            "compacted",
            1,
            -1,
            &configs(&[("cleanup.policy", "compact")]),
        )
        .await
        .expect("create");
    let keyless = strata_storage::BatchBuilder::new()
        .value(None, b"v", now)
        .build();
    assert_eq!(
        produce_raw(&broker, "compacted", keyless.clone(), -1).await,
        87
    );
    assert_eq!(produce_raw(&broker, "times", keyless, -1).await, 0);
    assert_eq!(
        produce_raw(&broker, "compacted", batch_with(now, 0), -1).await,
        0
    );
    // Control and transactional batches do not come from clients.
    assert_eq!(
        produce_raw(&broker, "times", batch_with(now, 0x20), -1).await,
        87
    );
    assert_eq!(
        produce_raw(&broker, "times", batch_with(now, 0x10), -1).await,
        87
    );
    drop(client);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_offsets_by_time_answers_the_timestamp_of_the_record_found() {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::{BrokerId, ListOffsetsRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;
    use strata_tests::RawClient;

    let broker = fast_broker().await;
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    client
        .create_topic(
            "timed",
            1,
            -1,
            &configs(&[("segment.bytes", "4096"), ("local.retention.bytes", "4096")]),
        )
        .await
        .expect("create");
    let base = now_ms() - 600_000;
    for i in 0..30 {
        let r = NewRecord {
            timestamp: Some(base + i * 1000),
            ..record(&format!("k{i}"), &[b'v'; 1000])
        };
        client.produce("timed", 0, &[r], -1).await.expect("produce");
    }
    // The oldest records leave the local disk: their lookup goes to object storage.
    let c = &client;
    eventually(
        Duration::from_secs(30),
        "never evicted locally",
        || async move { c.list_offset("timed", 0, -4).await.expect("list") > 5 },
    )
    .await;
    let mut raw = RawClient::connect(broker.addr()).await;
    for (asked, offset, timestamp) in [
        (base + 1500, 2, base + 2000),      // remote
        (base + 28_500, 29, base + 29_000), // local
        (base - 5000, 0, base),             // before everything: the first record
    ] {
        let r = raw
            .call(
                7,
                &ListOffsetsRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_topics(vec![
                        ListOffsetsTopic::default()
                            .with_name(TopicName(StrBytes::from_static_str("timed")))
                            .with_partitions(vec![
                                ListOffsetsPartition::default()
                                    .with_partition_index(0)
                                    .with_timestamp(asked),
                            ]),
                    ]),
            )
            .await;
        let p = &r.topics[0].partitions[0];
        assert_eq!(
            (p.error_code, p.offset, p.timestamp),
            (0, offset, timestamp)
        );
    }
    drop(client);
    broker.stop().await;
}

/// DeleteRecords for `topic`/0 up to `offset`; returns (error code, low watermark).
async fn delete_records(broker: &TestBroker, topic: &str, offset: i64) -> (i16, i64) {
    use kafka_protocol::messages::delete_records_request::{
        DeleteRecordsPartition, DeleteRecordsTopic,
    };
    use kafka_protocol::messages::{DeleteRecordsRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;

    let mut raw = strata_tests::RawClient::connect(broker.addr()).await;
    let r = raw
        .call(
            2,
            &DeleteRecordsRequest::default()
                .with_timeout_ms(5000)
                .with_topics(vec![
                    DeleteRecordsTopic::default()
                        .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                        .with_partitions(vec![
                            DeleteRecordsPartition::default()
                                .with_partition_index(0)
                                .with_offset(offset),
                        ]),
                ]),
        )
        .await;
    let p = &r.topics[0].partitions[0];
    (p.error_code, p.low_watermark)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_records_moves_the_log_start_locally_and_in_object_storage() {
    let mut broker = fast_broker().await;
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    client
        .create_topic("trimmed", 1, -1, &configs(&[("segment.bytes", "16384")]))
        .await
        .expect("create");
    client
        .create_topic(
            "trimmed-local",
            1,
            -1,
            &configs(&[("remote.storage.enable", "false")]),
        )
        .await
        .expect("create");
    let value = vec![b'v'; 1000];
    produce_values(&client, "trimmed", 0, &value).await;
    produce_values(&client, "trimmed-local", 0, &value).await;
    uploaded_to(&client, "trimmed", 45).await;
    // Up to an offset inside the uploaded part: remote segments wholly below it leave the
    // manifest, and the log start moves there.
    assert_eq!(delete_records(&broker, "trimmed", 30).await, (0, 30));
    assert_eq!(
        client.list_offset("trimmed", 0, -2).await.expect("list"),
        30
    );
    let gone = client
        .fetch("trimmed", 0, 0, 1 << 20, 100)
        .await
        .expect_err("below the log start");
    assert_eq!(code(&gone), Some(1), "OFFSET_OUT_OF_RANGE: {gone}");
    let (records, _) = client
        .fetch("trimmed", 0, 30, 1 << 20, 100)
        .await
        .expect("fetch at the new start");
    assert_eq!(records.first().map(|r| r.offset), Some(30));
    // -1 means the end; past the end is out of range.
    assert_eq!(delete_records(&broker, "trimmed-local", -1).await, (0, 60));
    assert_eq!(delete_records(&broker, "trimmed-local", 100).await.0, 1);
    // Internal topics are not the client's to trim.
    assert_eq!(delete_records(&broker, "__consumer_offsets", 0).await.0, 29);
    drop(client);
    // The new start survives a restart (the manifest and checkpoint hold it).
    broker.restart().await;
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    assert_eq!(
        client.list_offset("trimmed", 0, -2).await.expect("list"),
        30
    );
    assert_eq!(
        client
            .list_offset("trimmed-local", 0, -2)
            .await
            .expect("list"),
        60
    );
    drop(client);
    broker.stop().await;
}

/// A broker that hosts more partitions than it may (the limit, or `ulimit -n`, was lowered
/// since they were created) still starts: it opens as many as it may and serves them, and
/// leaves the rest offline rather than running out of descriptors; with the limit raised
/// again they all come back with their data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_over_its_partition_budget_still_starts_and_serves_what_fits() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let limit = Arc::new(AtomicUsize::new(0));
    let set = limit.clone();
    let mut broker = TestBroker::start_with(move |c| {
        c.topics.max_partitions_per_broker = set.load(Ordering::SeqCst);
        c.groups.offsets_topic_partitions = 2;
    })
    .await;
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    client
        .create_topic("many", 20, 1, &BTreeMap::new())
        .await
        .expect("create");
    for p in 0..20 {
        client
            .produce("many", p, &[record("k", b"v")], -1)
            .await
            .expect("produce");
    }
    drop(client);
    // The broker's own topics are opened first: the two offsets partitions and ten others.
    limit.store(12, Ordering::SeqCst);
    broker.restart().await;
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    let mut served = 0;
    for p in 0..20 {
        match client.produce("many", p, &[record("k", b"v")], 1).await {
            Ok(_) => served += 1,
            Err(e) => eprintln!("partition {p}: {e}"),
        }
    }
    assert_eq!(served, 10, "as many partitions as the limit allows serve");
    drop(client);
    limit.store(0, Ordering::SeqCst);
    broker.restart().await;
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    let mut ends = 0;
    for p in 0..20 {
        client
            .produce("many", p, &[record("k", b"v")], -1)
            .await
            .expect("every partition serves again");
        ends += client.list_offset("many", p, -1).await.expect("end");
    }
    assert_eq!(ends, 20 * 2 + 10, "nothing was lost meanwhile");
    broker.stop().await;
}

/// Partitions beyond `topics.max_partitions_per_broker` (each keeps files open) are refused
/// with POLICY_VIOLATION, by CreateTopics and CreatePartitions alike, and the broker serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_past_the_per_broker_budget_are_refused() {
    let broker = TestBroker::start_with(|c| c.topics.max_partitions_per_broker = 55).await;
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    client
        .create_topic("first", 30, 1, &BTreeMap::new())
        .await
        .expect("within the budget");
    let refused = client
        .create_topic("second", 30, 1, &BTreeMap::new())
        .await
        .expect_err("past the budget");
    assert_eq!(code(&refused), Some(44), "POLICY_VIOLATION: {refused}");
    assert!(
        refused.to_string().contains("max_partitions_per_broker"),
        "{refused}"
    );
    let mut raw = strata_tests::RawClient::connect(broker.addr()).await;
    let grow = kafka_protocol::messages::CreatePartitionsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![
            kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic::default()
                .with_name(kafka_protocol::messages::TopicName(
                    kafka_protocol::protocol::StrBytes::from_static_str("first"),
                ))
                .with_count(60)
                .with_assignments(None),
        ]);
    let grown = raw.call(3, &grow).await;
    assert_eq!(grown.results[0].error_code, 44, "{grown:?}");
    // Within it, both still work.
    client
        .create_topic("small", 5, 1, &BTreeMap::new())
        .await
        .expect("a small topic fits");
    client
        .produce("small", 4, &[record("k", b"v")], -1)
        .await
        .expect("the broker serves on");
    broker.stop().await;
}
