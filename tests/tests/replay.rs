//! Tiered storage end to end with librdkafka: data produced with small segments goes to the
//! object store, local disk keeps only the local-retention window, a consumer replays
//! everything from offset 0 (through the remote read path), and a broker whose data
//! directory was wiped serves it all again and continues from the uploaded end.
//! The object store is a real S3 server (s3s-fs, in-process) reached through object_store's S3
//! client and checked independently with aws-sdk-s3.
//! Also: an object-store outage (errors, hangs, slowness, the S3 server stopped) does not
//! stop produce or tail reads, deletes nothing un-uploaded, and uploads catch up afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use object_store::memory::InMemory;
use object_store::path::Path;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use strata_storage::SegmentFile;
use strata_storage::tier::fault::{Fault, FaultyStore};
use strata_storage::tier::manifest::{Manifest, PartitionObjects};
use strata_tests::TestBroker;
use strata_tests::s3::S3Server;
use uuid::Uuid;

const BASE_TS: i64 = 1_760_000_000_000;
const BUCKET: &str = "strata-replay";
const PREFIX: &str = "cluster-a";
const VALUE: usize = 1024;

/// Record `i`: partition `i % partitions`, key `i`, a value derived from `i`.
fn value(i: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(VALUE);
    while v.len() < VALUE {
        v.extend_from_slice(
            &(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ v.len() as u64).to_le_bytes(),
        );
    }
    v
}

fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.size", "262144")
        .set("compression.type", "none")
        .set("message.timeout.ms", "60000")
        .create()
        .expect("producer")
}

fn consumer(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "replay-tests")
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "8388608")
        .set("max.partition.fetch.bytes", "4194304")
        .create()
        .expect("consumer")
}

async fn create_topic(bootstrap: &str, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin");
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    for r in admin
        .create_topics(&[topic], &AdminOptions::new())
        .await
        .expect("create")
    {
        r.expect("topic created");
    }
}

/// Produces records `from..to`, record `i` to partition `i % partitions`; all acknowledged.
async fn produce(p: &FutureProducer, topic: &str, partitions: u64, from: u64, to: u64) {
    let mut pending = std::collections::VecDeque::new();
    for i in from..to {
        let key = i.to_string();
        let v = value(i);
        let fut = p
            .send_result(
                FutureRecord::to(topic)
                    .partition((i % partitions) as i32)
                    .key(&key)
                    .payload(&v)
                    .timestamp(BASE_TS + i as i64),
            )
            .map_err(|(e, _)| e)
            .expect("queue");
        pending.push_back(fut);
        while pending.len() > 20_000 {
            let d = pending
                .pop_front()
                .expect("pending")
                .await
                .expect("delivered");
            d.map_err(|(e, _)| e).expect("acknowledged");
        }
    }
    for fut in pending {
        fut.await
            .expect("delivered")
            .map_err(|(e, _)| e)
            .expect("acknowledged");
    }
}

/// Consumes partitions from offset 0 until `ends[p]` and checks every record: offsets
/// contiguous, key and value those of record `offset * partitions + p`.
fn replay_and_check(bootstrap: &str, topic: &str, ends: &[i64]) -> Duration {
    let c = consumer(bootstrap);
    let mut tpl = TopicPartitionList::new();
    for p in 0..ends.len() {
        tpl.add_partition_offset(topic, p as i32, Offset::Offset(0))
            .expect("partition");
    }
    c.assign(&tpl).expect("assign");
    let partitions = ends.len() as u64;
    let mut next = vec![0i64; ends.len()];
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    while next.iter().zip(ends).any(|(n, e)| n < e) {
        assert!(
            Instant::now() < deadline,
            "replay stuck at {next:?} of {ends:?}"
        );
        let Some(m) = c.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = m.expect("no consumer error");
        let p = m.partition() as usize;
        if m.offset() >= ends[p] {
            continue;
        }
        assert_eq!(m.offset(), next[p], "partition {p}: offsets are contiguous");
        let i = m.offset() as u64 * partitions + p as u64;
        assert_eq!(
            m.key(),
            Some(i.to_string().as_bytes()),
            "key at {p}/{}",
            m.offset()
        );
        assert!(
            m.payload() == Some(&value(i)[..]),
            "value at {p}/{}",
            m.offset()
        );
        next[p] += 1;
    }
    started.elapsed()
}

/// The newest manifest of each partition of `topic_id` under `prefix`.
async fn manifests(
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
    topic_id: Uuid,
    partitions: i32,
) -> Vec<Arc<Manifest>> {
    let mut out = Vec::new();
    for p in 0..partitions {
        let objects = PartitionObjects::new(store.clone(), &Path::from(prefix), topic_id, p);
        out.push(
            objects
                .latest()
                .await
                .expect("manifest")
                .unwrap_or_default(),
        );
    }
    out
}

fn dir_bytes(dir: &std::path::Path, ext: &str) -> u64 {
    std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == ext))
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum()
}

fn dir_count(dir: &std::path::Path, ext: &str) -> usize {
    std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == ext))
        .count()
}

fn topic_id(broker: &TestBroker, topic: &str) -> Uuid {
    let meta = broker
        .data_dir()
        .join("logs")
        .join(format!("{topic}-0/partition.metadata"));
    std::fs::read_to_string(meta)
        .expect("partition.metadata")
        .trim()
        .parse()
        .expect("uuid")
}

fn watermarks(c: &BaseConsumer, topic: &str, p: i32) -> (i64, i64) {
    c.fetch_watermarks(topic, p, Duration::from_secs(10))
        .expect("watermarks")
}

/// Every object under `prefix` in the test bucket with its size, listed by aws-sdk-s3.
async fn list_bucket(
    aws: &aws_sdk_s3::Client,
    prefix: &str,
) -> std::collections::HashMap<String, i64> {
    let mut out = std::collections::HashMap::new();
    let mut pages = aws
        .list_objects_v2()
        .bucket(BUCKET)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        for o in page.expect("list the bucket").contents() {
            out.insert(o.key().expect("key").to_owned(), o.size().expect("size"));
        }
    }
    out
}

/// How many MiB the replay test produces: 1 GiB unless `STRATA_REPLAY_MIB` says otherwise.
fn replay_mib() -> u64 {
    std::env::var("STRATA_REPLAY_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gib_replays_from_object_storage_and_survives_a_wiped_disk() {
    const PARTITIONS: i32 = 2;
    const SEGMENT: u64 = 4 << 20;
    const LOCAL_BYTES: u64 = 8 << 20;
    // A real S3 server; the broker creates its bucket at start-up.
    let s3 = S3Server::start().await;
    let endpoint = s3.endpoint();
    let mut broker = TestBroker::start_with(move |c| {
        S3Server::configure(&endpoint, c, BUCKET, PREFIX);
        c.object_store.create_bucket = true;
        c.object_store.upload_interval_ms = 100;
        c.cache.memory_bytes = 64 << 20;
        c.cache.chunk_bytes = 1 << 20;
    })
    .await;
    let aws = s3.client();
    aws.head_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .expect("the broker created the bucket");
    let bootstrap = broker.bootstrap();
    let topic = "replay";
    create_topic(
        &bootstrap,
        topic,
        PARTITIONS,
        &[
            ("segment.bytes", &SEGMENT.to_string()),
            ("local.retention.bytes", &LOCAL_BYTES.to_string()),
            ("retention.ms", "-1"),
        ],
    )
    .await;
    let records = replay_mib() * 1024 * 1024 / VALUE as u64;
    let p = producer(&bootstrap);
    let t = Instant::now();
    produce(&p, topic, PARTITIONS as u64, 0, records).await;
    let produce_secs = t.elapsed().as_secs_f64();
    let id = topic_id(&broker, topic);
    let store = s3.store(BUCKET);

    // Uploads catch up and local disk shrinks to the local-retention window (plus the
    // active segment and the one being sealed).
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let ms = manifests(&store, PREFIX, id, PARTITIONS).await;
        let local: Vec<u64> = (0..PARTITIONS)
            .map(|p| dir_bytes(&broker.data_dir().join(format!("logs/{topic}-{p}")), "log"))
            .collect();
        let per_partition = records / PARTITIONS as u64;
        let uploaded_enough = ms
            .iter()
            .all(|m| m.end_offset() + 2 * SEGMENT / VALUE as u64 >= per_partition);
        if uploaded_enough && local.iter().all(|b| *b <= LOCAL_BYTES + 2 * SEGMENT) {
            assert!(
                ms.iter()
                    .all(|m| m.segments.len() as u64 >= replay_mib() / 4 / 2 - 2)
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "uploads/eviction did not catch up: local {local:?}, remote ends {:?}",
            ms.iter().map(|m| m.end_offset()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Seen independently through aws-sdk-s3: every segment object and manifest version the
    // newest manifest names is in the bucket, at the size it records.
    let ms = manifests(&store, PREFIX, id, PARTITIONS).await;
    for (part, m) in ms.iter().enumerate() {
        let objects = PartitionObjects::new(store.clone(), &Path::from(PREFIX), id, part as i32);
        let listed = list_bucket(&aws, &format!("{}/", objects.root())).await;
        for seg in &m.segments {
            let key = objects
                .segment_key(seg.base_offset, seg.leader_epoch, SegmentFile::Log)
                .to_string();
            assert_eq!(listed.get(&key), Some(&(seg.size_bytes as i64)), "{key}");
        }
        let versions = listed.keys().filter(|k| k.contains("/manifest/")).count();
        assert!(versions >= 1, "partition {part}: no manifest in the bucket");
    }

    // Replay everything from offset 0: most of it is only in the object store now.
    let c = consumer(&bootstrap);
    let ends: Vec<i64> = (0..PARTITIONS)
        .map(|p| watermarks(&c, topic, p).1)
        .collect();
    assert_eq!(ends.iter().sum::<i64>() as u64, records);
    let took = replay_and_check(&bootstrap, topic, &ends);
    eprintln!(
        "produced {} MiB in {produce_secs:.1}s; replayed in {:.1}s",
        replay_mib(),
        took.as_secs_f64()
    );

    // Wipe every partition log and restart: the uploaded data is served again.
    broker
        .restart_after(|dir| std::fs::remove_dir_all(dir.join("logs")).expect("wipe logs"))
        .await;
    let ms = manifests(&store, PREFIX, id, PARTITIONS).await;
    let uploaded: Vec<i64> = ms.iter().map(|m| m.end_offset() as i64).collect();
    let c = consumer(&bootstrap);
    for part in 0..PARTITIONS {
        assert_eq!(
            watermarks(&c, topic, part),
            (0, uploaded[part as usize]),
            "partition {part}: earliest and latest after the wipe"
        );
        // By time: record i carries BASE_TS + i, at offset i / PARTITIONS of its partition.
        let offset = uploaded[part as usize] / 3;
        let i = offset * PARTITIONS as i64 + part as i64;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, part, Offset::Offset(BASE_TS + i))
            .expect("partition");
        let found = c
            .offsets_for_times(tpl, Duration::from_secs(10))
            .expect("offsets for times");
        let got = found.elements_for_topic(topic)[0].offset();
        assert_eq!(got, Offset::Offset(offset), "partition {part}: by time");
    }
    replay_and_check(&bootstrap, topic, &uploaded);
    // Appends continue from the uploaded end.
    let p = producer(&bootstrap);
    let key = "after-wipe";
    let d = p
        .send(
            FutureRecord::to(topic).partition(0).key(key).payload("x"),
            Duration::from_secs(30),
        )
        .await
        .expect("delivered");
    assert_eq!(d.offset, uploaded[0]);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_store_outage_keeps_produce_and_tail_reads_working() {
    let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let (faulty, switch) = FaultyStore::new(inner.clone());
    let broker = TestBroker::start_on_store(Some(Arc::new(faulty)), quick_retries).await;
    let bootstrap = broker.bootstrap();
    let topic = "outage";
    create_outage_topic(&bootstrap, topic).await;
    let id = topic_id(&broker, topic);
    let mut load = Load::new(&bootstrap, topic);
    load.step(Fault::Healthy, 500).await;
    let remote_end = |inner: Arc<dyn ObjectStore>| async move {
        manifests(&inner, "", id, 1).await[0].end_offset()
    };
    // Uploads happen and uploaded segments leave the local disk.
    let deadline = Instant::now() + Duration::from_secs(30);
    while remote_end(inner.clone()).await == 0 {
        assert!(Instant::now() < deadline, "nothing uploaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for fault in [
        Fault::Fail,
        Fault::Hang,
        Fault::Slow(Duration::from_millis(300)),
    ] {
        switch.set(fault);
        // Let a request that passed the switch before it flipped finish.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let before = remote_end(inner.clone()).await;
        load.step(fault, 400).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        if fault != Fault::Slow(Duration::from_millis(300)) {
            assert_eq!(
                remote_end(inner.clone()).await,
                before,
                "{fault:?}: nothing can be committed while the store is down"
            );
        }
        let (local_start, end) = local_range(&broker, topic);
        assert!(
            local_start <= remote_end(inner.clone()).await.max(before),
            "{fault:?}: local start {local_start} is past what was uploaded"
        );
        assert_eq!(end, load.produced);
    }
    // Healthy again: uploads catch up.
    switch.set(Fault::Healthy);
    await_catch_up(&broker, topic, || remote_end(inner.clone())).await;
    replay_and_check(&bootstrap, topic, &[load.produced as i64]);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_s3_server_keeps_produce_and_tail_reads_working() {
    let mut s3 = S3Server::start().await;
    s3.create_bucket(BUCKET).await;
    let endpoint = s3.endpoint();
    let broker = TestBroker::start_with(move |c| {
        S3Server::configure(&endpoint, c, BUCKET, PREFIX);
        quick_retries(c);
    })
    .await;
    let bootstrap = broker.bootstrap();
    let topic = "s3-down";
    create_outage_topic(&bootstrap, topic).await;
    let id = topic_id(&broker, topic);
    let store = s3.store(BUCKET);
    let remote_end = || async { manifests(&store, PREFIX, id, 1).await[0].end_offset() };
    let mut load = Load::new(&bootstrap, topic);
    load.step("up", 500).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while remote_end().await == 0 {
        assert!(Instant::now() < deadline, "nothing uploaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let a pass that was mid-commit finish, then take the server away.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = remote_end().await;
    s3.stop().await;
    for round in 0..3 {
        load.step(("stopped", round), 400).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        let (local_start, end) = local_range(&broker, topic);
        assert!(
            local_start <= before,
            "local start {local_start} is past what was uploaded ({before})"
        );
        assert_eq!(end, load.produced);
    }
    s3.resume().await;
    let caught_up = await_catch_up(&broker, topic, remote_end).await;
    assert!(caught_up > before, "uploads resumed");
    replay_and_check(&bootstrap, topic, &[load.produced as i64]);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_stops_start_up_unless_create_bucket_is_set() {
    let s3 = S3Server::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = |create: bool| {
        let mut c = strata_broker::config::BrokerConfig {
            data_dir: dir.path().to_owned(),
            ..Default::default()
        };
        c.kafka.listen = "127.0.0.1:0".into();
        c.controller.listen = "127.0.0.1:0".into();
        S3Server::configure(&s3.endpoint(), &mut c, "not-yet", "p");
        c.object_store.create_bucket = create;
        c
    };
    let err = strata_broker::Broker::start(config(false))
        .await
        .expect_err("no bucket, no start");
    let text = err.to_string();
    assert!(
        text.contains("s3://not-yet/p") && text.contains("create_bucket"),
        "{text}"
    );
    let aws = s3.client();
    assert!(aws.head_bucket().bucket("not-yet").send().await.is_err());
    for _ in 0..2 {
        // Creates the bucket, then finds it there.
        let broker = strata_broker::Broker::start(config(true))
            .await
            .expect("starts");
        broker.shutdown().await;
        aws.head_bucket()
            .bucket("not-yet")
            .send()
            .await
            .expect("bucket created");
    }
    // Wrong credentials are refused at start-up, not at the first upload.
    let mut bad = config(false);
    bad.object_store.secret_access_key = Some("wrong".into());
    let err = strata_broker::Broker::start(bad)
        .await
        .expect_err("bad credentials");
    assert!(err.to_string().contains("not usable"), "{err}");
}

/// Uploads every 100 ms; a failing step gives up after 1 s and retries within 400 ms.
fn quick_retries(c: &mut strata_broker::config::BrokerConfig) {
    c.object_store.upload_interval_ms = 100;
    c.object_store.operation_timeout_ms = 1_000;
    c.object_store.max_backoff_ms = 400;
}

/// One partition, 64 KiB segments, nothing kept locally once uploaded, kept forever remotely.
async fn create_outage_topic(bootstrap: &str, topic: &str) {
    let configs = [
        ("segment.bytes", "65536"),
        ("local.retention.bytes", "0"),
        ("retention.ms", "-1"),
    ];
    create_topic(bootstrap, topic, 1, &configs).await;
}

/// Waits until every sealed segment of `topic`/0 is uploaded and evicted: only the active
/// segment, starting where the object store ends, stays local. Returns that offset.
async fn await_catch_up<F, Fut>(broker: &TestBroker, topic: &str, remote_end: F) -> u64
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (local_start, end) = local_range(broker, topic);
        let remote = remote_end().await;
        let segments = dir_count(&broker.data_dir().join(format!("logs/{topic}-0")), "log");
        if segments == 1 && local_start == remote {
            return remote;
        }
        assert!(
            Instant::now() < deadline,
            "no catch-up: remote end {remote}, local {local_start}..{end}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A producer and a tail consumer of one partition.
struct Load {
    topic: &'static str,
    producer: FutureProducer,
    tail: BaseConsumer,
    produced: u64,
    consumed: u64,
}

impl Load {
    fn new(bootstrap: &str, topic: &'static str) -> Self {
        let tail = consumer(bootstrap);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Offset(0))
            .expect("partition");
        tail.assign(&tpl).expect("assign");
        Self {
            topic,
            producer: producer(bootstrap),
            tail,
            produced: 0,
            consumed: 0,
        }
    }

    /// Produces `n` records (all acknowledged) and has the tail consumer read them; `what`
    /// names the store's condition.
    async fn step(&mut self, what: impl std::fmt::Debug, n: u64) {
        produce(
            &self.producer,
            self.topic,
            1,
            self.produced,
            self.produced + n,
        )
        .await;
        self.produced += n;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.consumed < self.produced {
            assert!(
                Instant::now() < deadline,
                "{what:?}: tail stuck at {}",
                self.consumed
            );
            if let Some(m) = self.tail.poll(Duration::from_millis(200)) {
                let m = m.expect("no consumer error");
                assert_eq!(m.offset() as u64, self.consumed);
                assert!(m.payload() == Some(&value(self.consumed)[..]));
                self.consumed += 1;
            }
        }
    }
}

/// The local log's first offset and end, from its segment file names and the produced count.
fn local_range(broker: &TestBroker, topic: &str) -> (u64, u64) {
    let dir = broker.data_dir().join(format!("logs/{topic}-0"));
    let first = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".log")?.parse::<u64>().ok()
        })
        .min()
        .expect("a segment");
    let c = consumer(&broker.bootstrap());
    let end = watermarks(&c, topic, 0).1 as u64;
    (first, end)
}
