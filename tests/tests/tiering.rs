//! Tiered storage through the broker: sealed segments reach the object store.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{CreateTopicsRequest, ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use strata_storage::BatchBuilder;
use strata_tests::{RawClient, TestBroker};

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_segments_are_uploaded_with_a_manifest() {
    let broker = TestBroker::start_with(|c| c.object_store.upload_interval_ms = 100).await;
    let mut c = RawClient::connect(broker.addr()).await;
    let created = c
        .call(
            7,
            &CreateTopicsRequest::default().with_topics(vec![
                CreatableTopic::default()
                    .with_name(TopicName(s("tiered")))
                    .with_num_partitions(1)
                    .with_replication_factor(1)
                    .with_configs(vec![
                        CreatableTopicConfig::default()
                            .with_name(s("segment.bytes"))
                            .with_value(Some(s("16384"))),
                    ]),
            ]),
        )
        .await;
    assert_eq!(created.topics[0].error_code, 0);
    let topic_id = created.topics[0].topic_id;
    let value = vec![b'v'; 1000];
    // Current timestamps: records from 1970 would fall outside retention.ms and be deleted.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    for i in 0..100 {
        let batch = BatchBuilder::new().value(None, &value, now + i).build();
        let r = c
            .call(
                9,
                &ProduceRequest::default()
                    .with_acks(-1)
                    .with_topic_data(vec![
                        TopicProduceData::default()
                            .with_name(TopicName(s("tiered")))
                            .with_partition_data(vec![
                                PartitionProduceData::default()
                                    .with_index(0)
                                    .with_records(Some(Bytes::from(batch))),
                            ]),
                    ]),
            )
            .await;
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    }
    let remote = broker
        .data_dir()
        .join("objects/topics")
        .join(topic_id.to_string())
        .join("0");
    let local = broker.data_dir().join("logs/tiered-0");
    // Every sealed local segment appears remotely, byte for byte, under a manifest.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut sealed: Vec<_> = std::fs::read_dir(&local)
            .expect("local dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        sealed.sort();
        sealed.pop(); // the active segment is not uploaded
        assert!(sealed.len() >= 4, "segments did not roll: {sealed:?}");
        let uploaded = sealed.iter().all(|p| {
            let stem = p.file_stem().and_then(|s| s.to_str()).expect("name");
            std::fs::read_dir(&remote)
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .any(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    name.starts_with(&format!("{stem}-"))
                        && name.ends_with(".log")
                        && std::fs::read(e.path()).ok() == std::fs::read(p).ok()
                })
        });
        let manifests = std::fs::read_dir(remote.join("manifest"))
            .map(|d| d.count())
            .unwrap_or(0);
        if uploaded && manifests > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "sealed segments not uploaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    broker.stop().await;
}

/// A broker that uploads every 100 ms to `store`, and a client of it that has created
/// `topics` (name, partitions) with segments of `segment_bytes` kept forever.
async fn on_bucket(
    store: &std::sync::Arc<dyn object_store::ObjectStore>,
    topics: &[(&str, i32)],
    segment_bytes: u32,
) -> (TestBroker, strata_client::Client) {
    let broker = TestBroker::start_on_store(Some(store.clone()), fast_uploads).await;
    let client = strata_client::Client::connect(&broker.bootstrap())
        .await
        .expect("connect");
    let configs = std::collections::BTreeMap::from([
        ("segment.bytes".to_owned(), segment_bytes.to_string()),
        ("retention.ms".to_owned(), "-1".to_owned()),
    ]);
    for (topic, partitions) in topics {
        client
            .create_topic(topic, *partitions, -1, &configs)
            .await
            .expect("create");
    }
    (broker, client)
}

fn fast_uploads(c: &mut strata_broker::config::BrokerConfig) {
    c.object_store.upload_interval_ms = 100;
}

/// Waits until `topic`/0 has uploaded at least `records` records (ListOffsets -5).
async fn uploaded(client: &strata_client::Client, topic: &str, records: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = client.list_offset(topic, 0, -5).await.expect("list");
        if last + 1 >= records {
            return;
        }
        assert!(Instant::now() < deadline, "only {} uploaded", last + 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An idempotent producer's retry of a batch that a broker with an empty disk restored from
/// the bucket (it continues its log from the remote end) is answered with the batch's
/// offset, not appended again: the last uploaded segment carries the producers' state at
/// its end. (Before, the recovered partition knew no producer, took any sequence, and
/// stored the retried records twice.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_not_appended_again_after_an_empty_disk_recovery() {
    use std::sync::Arc;

    use object_store::ObjectStore;
    use strata_client::Client;
    use strata_storage::BatchBuilder;
    use strata_tests::{RawClient, new_producer_id, produce_request};

    let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let (first, client) = on_bucket(&store, &[("idem", 1)], 1024).await;
    let mut raw = RawClient::connect(first.addr()).await;
    let pid = new_producer_id(&mut raw).await;
    // One record per batch: batch `seq` lands at offset `seq`.
    let batch = |seq: i32| {
        BatchBuilder::new()
            .producer(pid, 0, seq)
            .value(None, format!("{seq:0>300}").as_bytes(), 1)
            .build()
    };
    let answer = |r: kafka_protocol::messages::ProduceResponse| {
        let p = &r.responses[0].partition_responses[0];
        (p.error_code, p.base_offset)
    };
    for seq in 0..20 {
        let sent = answer(raw.call(9, &produce_request("idem", 0, batch(seq))).await);
        assert_eq!(sent, (0, i64::from(seq)));
    }
    uploaded(&client, "idem", 10).await;
    let uploaded_then = client.list_offset("idem", 0, -5).await.expect("list") + 1;
    drop((raw, client));
    first.stop().await;

    // Uploads go on in the background until the first broker stops: the second restores
    // at least what was uploaded above, and its log ends where its remote part does.
    let second = TestBroker::start_on_store(Some(store.clone()), fast_uploads).await;
    let client = Client::connect(&second.bootstrap()).await.expect("connect");
    let deadline = Instant::now() + Duration::from_secs(30);
    let remote_end = loop {
        let end = client.list_offset("idem", 0, -1).await.ok();
        let remote = client.list_offset("idem", 0, -5).await.ok().map(|o| o + 1);
        if let (Some(end), Some(remote)) = (end, remote)
            && end == remote
            && remote >= uploaded_then
        {
            break remote;
        }
        assert!(Instant::now() < deadline, "not recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut raw = RawClient::connect(second.addr()).await;
    let last = i32::try_from(remote_end - 1).expect("small");
    let retried = loop {
        let r = answer(raw.call(9, &produce_request("idem", 0, batch(last))).await);
        // Appends wait until the partition has read its manifest (NOT_LEADER meanwhile).
        if r.0 == 0 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(retried, (0, remote_end - 1), "answered with its offset");
    assert_eq!(
        answer(
            raw.call(9, &produce_request("idem", 0, batch(last + 1)))
                .await
        ),
        (0, remote_end),
        "the next sequence goes on from there"
    );
    assert_eq!(
        client.list_offset("idem", 0, -1).await.expect("end"),
        remote_end + 1,
        "nothing appended twice"
    );
    drop((raw, client));
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_cluster_on_the_same_bucket_finds_its_topics_and_data() {
    use std::sync::Arc;

    use object_store::ObjectStore;
    use strata_client::{Client, NewRecord};

    let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let (first, client) = on_bucket(&store, &[("kept", 2), ("dropped", 1)], 16384).await;
    let value = Bytes::from(vec![b'v'; 1000]);
    for topic in ["kept", "dropped"] {
        for i in 0..100 {
            let record = NewRecord {
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(value.clone()),
                ..NewRecord::default()
            };
            client
                .produce(topic, 0, &[record], -1)
                .await
                .expect("produce");
        }
        uploaded(&client, topic, 80).await;
    }
    let id = client.topics().await.expect("topics");
    let id_of = |name: &str| {
        id.iter()
            .find(|t| t.name == name)
            .expect("listed")
            .id
            .clone()
    };
    let (kept_id, dropped_id) = (id_of("kept"), id_of("dropped"));
    let uploaded_end = client.list_offset("kept", 0, -5).await.expect("list") + 1;

    // Deleting a topic removes its objects, so no later cluster brings it back.
    client.delete_topic("dropped").await.expect("delete");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed: Vec<_> = futures::StreamExt::collect::<Vec<_>>(store.list(None)).await;
        let names: Vec<String> = listed
            .into_iter()
            .map(|m| m.expect("listed").location.to_string())
            .collect();
        // (The internal topics are tiered too; only the dropped topic's objects go.)
        let dropped_left = names.iter().any(|n| n.contains(&dropped_id));
        if !dropped_left {
            assert!(
                names
                    .iter()
                    .any(|n| n.ends_with(&format!("{kept_id}/topic.json"))),
                "{names:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "objects left: {names:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(client);
    first.stop().await;

    // New data directory, new controller, same bucket.
    let second = TestBroker::start_on_store(Some(store.clone()), fast_uploads).await;
    let client = Client::connect(&second.bootstrap()).await.expect("connect");
    let topics = client.topics().await.expect("topics");
    let names: Vec<&str> = topics
        .iter()
        .filter(|t| !t.internal)
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(names, ["kept"]);
    let kept = &topics.iter().find(|t| t.name == "kept").expect("kept");
    assert_eq!(kept.id, kept_id);
    assert_eq!(kept.partitions.len(), 2);
    let (_, described) = client.describe_topic("kept").await.expect("describe");
    assert!(
        described.iter().any(|c| c.name == "segment.bytes"
            && c.value.as_deref() == Some("16384")
            && c.explicit)
    );
    // Every uploaded record is back, from offset 0.
    let deadline = Instant::now() + Duration::from_secs(30);
    let end = loop {
        match client.list_offset("kept", 0, -1).await {
            Ok(end) if end >= uploaded_end => break end,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("partition not recovered: {other:?}"),
        }
    };
    assert_eq!(end, uploaded_end);
    assert_eq!(client.list_offset("kept", 0, -2).await.expect("list"), 0);
    let mut next = 0;
    while next < end {
        let (records, _) = client
            .fetch("kept", 0, next, 1 << 20, 100)
            .await
            .expect("fetch");
        for r in records {
            assert_eq!(r.offset, next);
            assert_eq!(r.key.as_deref(), Some(format!("k{next}").as_bytes()));
            assert_eq!(r.value.as_ref(), Some(&value));
            next += 1;
        }
    }
    // And it takes new records after them.
    let record = NewRecord {
        value: Some(value.clone()),
        ..NewRecord::default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let offset = loop {
        match client
            .produce("kept", 0, std::slice::from_ref(&record), -1)
            .await
        {
            Ok(o) => break o,
            // Appends wait until the partition has read its manifest.
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("produce after recovery: {e}"),
        }
    };
    assert_eq!(offset, end);
    drop(client);
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_deleted_just_before_a_restart_is_not_recovered() {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use object_store::ObjectStore;
    use strata_client::Client;

    let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let interval = Arc::new(AtomicU64::new(100));
    let every = interval.clone();
    let mut broker = TestBroker::start_on_store(Some(store.clone()), move |c| {
        c.object_store.upload_interval_ms = every.load(Ordering::Relaxed);
    })
    .await;
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    client
        .create_topic("brief", 1, -1, &BTreeMap::new())
        .await
        .expect("create");
    let deadline = Instant::now() + Duration::from_secs(30);
    while futures::StreamExt::collect::<Vec<_>>(store.list(None))
        .await
        .iter()
        .all(|m| {
            !m.as_ref()
                .expect("listed")
                .location
                .as_ref()
                .ends_with("topic.json")
        })
    {
        assert!(Instant::now() < deadline, "catalog entry never written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(client);

    // After a restart with passes an hour apart (the first runs at start), the deletion is
    // not followed by a pass before the broker stops.
    interval.store(3_600_000, Ordering::Relaxed);
    broker.restart().await;
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    client.delete_topic("brief").await.expect("delete");
    drop(client);
    broker.stop().await;

    let fresh = TestBroker::start_on_store(Some(store), |_| {}).await;
    let client = Client::connect(&fresh.bootstrap()).await.expect("connect");
    let topics = client.topics().await.expect("topics");
    assert!(
        topics.iter().all(|t| t.name != "brief"),
        "a deleted topic came back: {topics:?}"
    );
    drop(client);
    fresh.stop().await;
}

/// Audit A16.4: a topic deleted while the object store refused requests (so its catalog
/// entry could not be turned into a tombstone) is not recovered by the next start of the
/// same cluster, even if it was the only topic; the first pass after the restart removes
/// its objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_deleted_during_a_store_outage_stays_deleted_and_its_objects_go() {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use object_store::ObjectStore;
    use strata_client::{Client, NewRecord};
    use strata_storage::tier::fault::{Fault, FaultyStore};

    let inner: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let (faulty, switch) = FaultyStore::new(inner.clone());
    let mut broker = TestBroker::start_on_store(Some(Arc::new(faulty)), |c| {
        c.object_store.upload_interval_ms = 100;
        c.topics.flush_check_interval_ms = 100;
    })
    .await;
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    let configs = BTreeMap::from([("segment.bytes".to_owned(), "1024".to_owned())]);
    client
        .create_topic("only", 1, -1, &configs)
        .await
        .expect("create");
    let records: Vec<NewRecord> = (0..20)
        .map(|i| NewRecord {
            value: Some(vec![b'x'; 200].into()),
            key: Some(format!("k{i}").into_bytes().into()),
            ..NewRecord::default()
        })
        .collect();
    for r in records.chunks(2) {
        client.produce("only", 0, r, -1).await.expect("produce");
    }
    let objects = || async {
        futures::StreamExt::collect::<Vec<_>>(inner.list(None))
            .await
            .into_iter()
            .map(|m| m.expect("listed").location.to_string())
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = objects().await;
        if now.iter().any(|p| p.ends_with("topic.json")) && now.iter().any(|p| p.ends_with(".log"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "nothing uploaded: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let only = client
        .topics()
        .await
        .expect("topics")
        .into_iter()
        .find(|t| t.name == "only")
        .expect("listed")
        .id;
    switch.set(Fault::Fail);
    client.delete_topic("only").await.expect("delete");
    drop(client);
    assert!(
        objects().await.iter().any(|p| p.ends_with("topic.json")),
        "the outage kept the entry as it was"
    );
    // The same broker and quorum start again, on a healthy store.
    broker.restart_after(|_| switch.set(Fault::Healthy)).await;
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    let topics = client.topics().await.expect("topics");
    assert!(
        topics.iter().all(|t| t.name != "only"),
        "a deleted topic came back: {topics:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = objects().await;
        // The internal topics' objects stay (they are tiered too).
        if left.iter().all(|p| !p.contains(&only)) {
            break;
        }
        assert!(Instant::now() < deadline, "objects left behind: {left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(client);
    broker.stop().await;
}

/// A partition nothing happens to is passed over by the uploader until the retention check
/// interval (here an hour), but what it still has to upload is not: a segment sealed by the
/// last acks=1 write is made durable by the flusher after the upload pass that saw the roll,
/// and that change alone brings it to the object store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_made_durable_after_the_last_write_is_uploaded_without_waiting_for_retention_checks()
 {
    let broker = TestBroker::start_with(|c| {
        c.object_store.upload_interval_ms = 100;
        c.topics.flush_check_interval_ms = 1_500;
        c.topics.retention_check_interval_ms = 3_600_000;
    })
    .await;
    let client = strata_client::Client::connect(&broker.bootstrap())
        .await
        .expect("connect");
    let configs =
        std::collections::BTreeMap::from([("segment.bytes".to_owned(), "2048".to_owned())]);
    client
        .create_topic("idle", 1, 1, &configs)
        .await
        .expect("create");
    let record = strata_client::NewRecord {
        value: Some(Bytes::from(vec![b'v'; 1000])),
        ..strata_client::NewRecord::default()
    };
    // Three records of ~1 KiB: the third rolls the segment holding the first two, which
    // acks=1 leaves for the flusher to fsync.
    for _ in 0..3 {
        client
            .produce("idle", 0, std::slice::from_ref(&record), 1)
            .await
            .expect("produce");
    }
    uploaded(&client, "idle", 2).await;
}
