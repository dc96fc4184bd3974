//! Strata in containers beside an S3 server, driven by testcontainers with the local images
//! from `deploy/build-images.sh`: librdkafka produces from the test; the broker container and
//! its volume are removed; a fresh one on the same bucket serves every uploaded record.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use strata_testcontainers::{IMAGE, RunningStrata, Strata};
use testcontainers::core::{IntoContainerPort, Mount, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{GenericImage, ImageExt};

const S3_IMAGE: &str = "strata-s3:local";
const TOPIC: &str = "orders";
const PARTITIONS: i32 = 2;
const RECORDS: usize = 6_000;

/// A name unique to this run (containers, volumes and networks are shared per engine).
fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    format!("strata-test-{what}-{}-{nanos}", std::process::id())
}

fn docker(args: &[&str]) {
    let _ = std::process::Command::new("docker").args(args).output();
}

/// A Strata container on `network`, its data on volume `volume`, tiering to the S3 server.
async fn strata(network: &str, volume: &str, s3: &str) -> RunningStrata {
    Strata::default()
        .with_object_store(
            "s3://strata/cluster",
            &format!("http://{s3}:9000"),
            strata_tests::s3::ACCESS_KEY,
            strata_tests::s3::SECRET_KEY,
        )
        .with_config("object_store.upload_interval_ms", "200")
        .start_on_localhost_with(|r| {
            r.with_network(network)
                .with_mount(Mount::volume_mount(volume, "/data"))
        })
        .await
        .expect("strata container starts")
}

/// Each partition's last uploaded offset + 1 (ListOffsets -5), once every partition has
/// uploaded at least `min` records.
async fn uploaded(bootstrap: &str, min: i64) -> BTreeMap<i32, i64> {
    let client = strata_client::Client::connect(bootstrap)
        .await
        .expect("connect");
    let parts: Vec<i32> = (0..PARTITIONS).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ends: BTreeMap<i32, i64> = client
            .list_offsets(TOPIC, &parts, -5)
            .await
            .expect("list offsets")
            .into_iter()
            .map(|(p, last)| (p, last + 1))
            .collect();
        if ends.values().all(|e| *e >= min) {
            return ends;
        }
        assert!(Instant::now() < deadline, "uploads stalled at {ends:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_container_on_the_same_bucket_serves_every_uploaded_record() {
    if !strata_testcontainers::images_ready(&[IMAGE, S3_IMAGE]) {
        return;
    }
    let network = unique("net");
    let s3_name = unique("s3");
    let (name, tag) = S3_IMAGE.split_once(':').expect("name:tag");
    let _s3 = GenericImage::new(name, tag)
        .with_exposed_port(9000.tcp())
        .with_wait_for(WaitFor::message_on_stdout("strata-s3 serving"))
        .with_network(&network)
        .with_container_name(&s3_name)
        .start()
        .await
        .expect("s3 container starts");

    // First broker: create a topic with small segments and produce with librdkafka.
    let first_volume = unique("data-a");
    let first = strata(&network, &first_volume, &s3_name).await;
    let bootstrap = first.bootstrap_servers().to_owned();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("admin");
    let created = admin
        .create_topics(
            &[NewTopic::new(TOPIC, PARTITIONS, TopicReplication::Fixed(1))
                .set("segment.bytes", "65536")],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topics");
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.type", "zstd")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let mut sent: BTreeMap<i32, Vec<(String, String)>> = BTreeMap::new();
    let mut acks = Vec::with_capacity(RECORDS);
    // Values of hex digits: zstd halves them rather than erasing them, so segments fill.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..RECORDS {
        let key = format!("order-{i}");
        let mut value = format!("{i}:");
        while value.len() < 400 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            value.push_str(&format!("{:016x}", seed >> 1));
        }
        let record = FutureRecord::to(TOPIC)
            .key(&key)
            .payload(&value)
            .partition((i % PARTITIONS as usize) as i32);
        let ack = producer.send_result(record).expect("queued");
        acks.push((key, value, ack));
    }
    for (key, value, ack) in acks {
        let delivered = ack.await.expect("not cancelled").expect("acknowledged");
        sent.entry(delivered.partition)
            .or_default()
            .push((key, value));
    }
    drop(producer);
    // Sealed segments reach the bucket; the active segment's records may not.
    let ends = uploaded(&bootstrap, (RECORDS / PARTITIONS as usize / 2) as i64).await;

    // Remove the broker container and its volume: nothing local survives.
    drop(admin);
    first.container.rm().await.expect("remove container");
    docker(&["volume", "rm", "-f", &first_volume]);

    // A fresh container with an empty volume, on the same bucket.
    let second_volume = unique("data-b");
    let second = strata(&network, &second_volume, &s3_name).await;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", second.bootstrap_servers())
        .set("group.id", unique("readers"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[TOPIC]).expect("subscribe");
    let mut got: BTreeMap<i32, Vec<(String, String)>> = BTreeMap::new();
    let want: usize = ends.values().map(|e| *e as usize).sum();
    let deadline = Instant::now() + Duration::from_secs(90);
    while got.values().map(Vec::len).sum::<usize>() < want {
        assert!(Instant::now() < deadline, "read {got:?} of {ends:?}");
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.expect("message");
        if m.offset() >= ends[&m.partition()] {
            continue;
        }
        let text = |b: Option<&[u8]>| String::from_utf8_lossy(b.expect("set")).into_owned();
        got.entry(m.partition())
            .or_default()
            .push((text(m.key()), text(m.payload())));
    }
    for (p, end) in &ends {
        let end = *end as usize;
        assert_eq!(got[p].len(), end, "partition {p}");
        assert_eq!(
            got[p][..],
            sent[p][..end],
            "partition {p}: every uploaded record"
        );
    }
    drop(consumer);
    second.container.rm().await.expect("remove container");
    docker(&["volume", "rm", "-f", &second_volume]);
}
