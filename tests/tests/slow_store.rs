//! A slow or hanging object store never stalls metadata, and never costs acknowledged data:
//! partitions read their manifests in the background, and appends wait for that.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::ObjectStore;
use object_store::memory::InMemory;
use strata_client::{Client, NewRecord};
use strata_storage::SegmentFile;
use strata_storage::tier::fault::{Fault, FaultyStore};
use strata_tests::TestBroker;

fn quick(c: &mut strata_broker::config::BrokerConfig) {
    c.object_store.upload_interval_ms = 100;
    c.object_store.operation_timeout_ms = 1_000;
    c.object_store.max_backoff_ms = 500;
    c.topics.flush_check_interval_ms = 100;
}

fn record(i: usize) -> NewRecord {
    NewRecord {
        key: Some(Bytes::from(format!("k{i}"))),
        value: Some(Bytes::from(vec![b'v'; 1000])),
        ..NewRecord::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_many_tiered_partitions_answers_while_the_store_hangs() {
    let (faulty, switch) = FaultyStore::new(Arc::new(InMemory::new()));
    let broker = TestBroker::start_on_store(Some(Arc::new(faulty)), quick).await;
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    switch.set(Fault::Hang);
    let started = Instant::now();
    client
        .create_topic("wide", 200, -1, &BTreeMap::new())
        .await
        .expect("CreateTopics answers although no manifest can be read");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "CreateTopics took {:?}",
        started.elapsed()
    );
    // Other metadata keeps flowing meanwhile.
    client
        .create_topic(
            "local",
            1,
            -1,
            &BTreeMap::from([("remote.storage.enable".to_owned(), "false".to_owned())]),
        )
        .await
        .expect("create another");
    client
        .produce("local", 0, &[record(0)], -1)
        .await
        .expect("a topic that is not tiered takes writes");
    // Once the store answers, the tiered partitions read their manifests and take writes.
    switch.set(Fault::Healthy);
    let deadline = Instant::now() + Duration::from_secs(30);
    for p in [0, 99, 199] {
        while let Err(e) = client.produce("wide", p, &[record(0)], -1).await {
            assert!(
                Instant::now() < deadline,
                "partition {p} never recovered: {e}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    drop(client);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_behind_its_manifest_takes_no_writes_until_it_continues_from_the_remote_end() {
    let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let (faulty, switch) = FaultyStore::new(inner);
    let mut broker = TestBroker::start_on_store(Some(Arc::new(faulty)), quick).await;
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    client
        .create_topic(
            "behind",
            1,
            -1,
            &BTreeMap::from([("segment.bytes".to_owned(), "16384".to_owned())]),
        )
        .await
        .expect("create");
    for i in 0..100 {
        client
            .produce("behind", 0, &[record(i)], -1)
            .await
            .expect("produce");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let remote_end = loop {
        let last = client.list_offset("behind", 0, -5).await.expect("list");
        if last + 1 >= 75 {
            break last + 1;
        }
        assert!(Instant::now() < deadline, "not uploaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop(client);

    // The local log loses its newer segments (a corrupt sealed segment is cut at recovery
    // with everything after it; a disk restored from an old snapshot), and the store hangs
    // when the broker comes back.
    switch.set(Fault::Hang);
    broker
        .restart_after(|dir| {
            let part = dir.join("logs/behind-0");
            let mut logs: Vec<_> = std::fs::read_dir(&part)
                .expect("partition dir")
                .map(|e| e.expect("entry").path())
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect();
            logs.sort();
            for log in logs.iter().skip(1) {
                for file in SegmentFile::ALL {
                    let _ = std::fs::remove_file(log.with_extension(file.ext()));
                }
            }
        })
        .await;
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    let local_end = client.list_offset("behind", 0, -1).await.expect("list");
    assert!(
        local_end < remote_end,
        "{local_end} is not behind {remote_end}"
    );
    // An append now would land at the local end, under offsets the object store already
    // holds, and be deleted when the log continues from the remote end: it is refused.
    let refused = client.produce("behind", 0, &[record(1000)], -1).await;
    assert!(
        refused.is_err(),
        "appended at {refused:?} before the manifest was read"
    );
    switch.set(Fault::Healthy);
    let deadline = Instant::now() + Duration::from_secs(30);
    let offset = loop {
        match client.produce("behind", 0, &[record(1000)], -1).await {
            Ok(offset) => break offset,
            Err(e) => assert!(Instant::now() < deadline, "never took writes: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        offset >= remote_end,
        "appended at {offset}, inside the remote log"
    );
    // And what was acknowledged stays.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (records, _) = client
        .fetch("behind", 0, offset, 1 << 20, 100)
        .await
        .expect("fetch");
    assert_eq!(records.first().map(|r| r.offset), Some(offset));
    assert_eq!(records[0].key.as_deref(), Some(&b"k1000"[..]));
    drop(client);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_ignores_create_only_puts_stops_start_up_naming_the_setting() {
    let (faulty, switch) = FaultyStore::new(Arc::new(InMemory::new()));
    switch.set(Fault::IgnoresConditions);
    let faulty: Arc<dyn ObjectStore> = Arc::new(faulty);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = |verify: bool| {
        let mut c = strata_broker::config::BrokerConfig {
            data_dir: dir.path().to_owned(),
            ..Default::default()
        };
        c.kafka.listen = "127.0.0.1:0".into();
        c.controller.listen = "127.0.0.1:0".into();
        c.http.listen = "127.0.0.1:0".into();
        c.object_store.verify_create_only = verify;
        c
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let refused =
        match strata_broker::Broker::start_with_store(config(true), listener, Some(faulty.clone()))
            .await
        {
            Ok(_) => panic!("started on a store that ignores create-only puts"),
            Err(e) => e,
        };
    let message = refused.to_string();
    assert!(
        message.contains("object_store.verify_create_only"),
        "{message}"
    );
    // The operator may override it, knowingly.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let broker = strata_broker::Broker::start_with_store(config(false), listener, Some(faulty))
        .await
        .expect("starts when told not to check");
    broker.shutdown().await;
}
