//! The leader's side of replication, driven by a stand-in follower: a broker registered with
//! the controller whose fetches the test sends by hand (Fetch with its replica id), so the
//! leader's rules are checked one step at a time.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{BrokerId, FetchRequest, ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use strata_controller::model::Endpoint;
use strata_controller::{Command, Outcome};
use strata_storage::BatchBuilder;
use strata_tests::{BrokerWithQuorum, RawClient};
use uuid::Uuid;

const TOPIC: &str = "replicated";

fn name() -> TopicName {
    TopicName(StrBytes::from_static_str(TOPIC))
}

/// Produces one batch of `n` records to `partition`; returns the error code and base offset.
async fn produce(
    raw: &mut RawClient,
    partition: i32,
    n: usize,
    acks: i16,
    timeout_ms: i32,
) -> (i16, i64) {
    let mut b = BatchBuilder::new();
    for i in 0..n {
        b = b.value(None, format!("v{i}").as_bytes(), 1_000 + i as i64);
    }
    let req = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(timeout_ms)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(name())
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(partition)
                        .with_records(Some(Bytes::from(b.build()))),
                ]),
        ]);
    let resp = raw.call(9, &req).await;
    let p = &resp.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// A Fetch from `offset` by `replica` (-1: a consumer); returns the high watermark and the
/// offset after the last batch returned.
async fn fetch(raw: &mut RawClient, replica: i32, partition: i32, offset: i64) -> (i64, i64) {
    let resp = raw
        .call(12, &fetch_request(replica, partition, offset))
        .await;
    let p = &resp.responses[0].partitions[0];
    assert_eq!(p.error_code, 0, "fetch by {replica} at {offset}");
    let mut next = offset;
    let records = p.records.clone().unwrap_or_default();
    let mut at = 0;
    while let Some(h) = strata_storage::BatchHeader::parse(&records[at..]) {
        next = h.base_offset + i64::from(h.last_offset_delta) + 1;
        at += h.total_len();
    }
    (p.high_watermark, next)
}

/// Registers the stand-in follower (broker 2, unfenced, which never fetches unless the test
/// says so), creates the topic with two replicas and `configs`, and waits until the real
/// broker serves it; the partition it leads and a client.
async fn stand_in_follower(
    b: &BrokerWithQuorum,
    configs: BTreeMap<String, String>,
) -> (RawClient, i32) {
    let registered = b
        .controller
        .submit(&Command::RegisterBroker {
            id: 2,
            endpoints: vec![Endpoint {
                listener: "PLAINTEXT".into(),
                host: "127.0.0.1".into(),
                port: 1,
            }],
            rack: None,
            incarnation: Uuid::new_v4(),
        })
        .await
        .expect("controller")
        .expect("registered");
    let Outcome::BrokerRegistered { epoch } = registered.outcome else {
        panic!("{registered:?}");
    };
    b.controller
        .heartbeat(2, epoch, true)
        .await
        .expect("controller")
        .expect("unfenced");
    let created = b
        .controller
        .submit(&Command::CreateTopic {
            name: TOPIC.into(),
            id: Uuid::new_v4(),
            partitions: 2,
            replication_factor: 2,
            configs,
            first_leader_epoch: 0,
        })
        .await
        .expect("controller")
        .expect("created");
    let Outcome::TopicCreated { partitions, .. } = created.outcome else {
        panic!("{created:?}");
    };
    let p = partitions
        .iter()
        .position(|p| p.leader == Some(1))
        .expect("a partition led by the real broker") as i32;
    assert_eq!(partitions[p as usize].isr.len(), 2);
    let mut raw = RawClient::connect(b.broker.addr()).await;
    for _ in 0..100 {
        if fetch_ok(&mut raw, p).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (raw, p)
}

#[tokio::test]
async fn consumers_read_to_the_high_watermark_and_acks_all_waits_for_the_in_sync_follower() {
    let b = BrokerWithQuorum::start(Duration::from_secs(120)).await;
    let (mut raw, p) = stand_in_follower(&b, BTreeMap::new()).await;
    let BrokerWithQuorum { broker, quorum, .. } = b;

    // acks=1 lands on the leader alone: consumers do not see it yet, the follower does.
    assert_eq!(produce(&mut raw, p, 5, 1, 5_000).await, (0, 0));
    assert_eq!(
        fetch(&mut raw, -1, p, 0).await,
        (0, 0),
        "nothing visible to consumers"
    );
    assert_eq!(
        fetch(&mut raw, 2, p, 0).await,
        (0, 5),
        "the follower copies past it"
    );
    // acks=all cannot complete while the follower does not come back for more.
    let (code, _) = produce(&mut raw, p, 3, -1, 300).await;
    assert_eq!(code, 7, "REQUEST_TIMED_OUT");
    // The follower's next fetch offset says what it holds: the high watermark follows.
    assert_eq!(fetch(&mut raw, 2, p, 5).await, (5, 8));
    assert_eq!(
        fetch(&mut raw, -1, p, 0).await,
        (5, 5),
        "consumers read up to it"
    );
    assert_eq!(fetch(&mut raw, 2, p, 8).await.0, 8);
    assert_eq!(fetch(&mut raw, -1, p, 0).await, (8, 8));

    // An acks=all produce is answered once the follower has fetched past it.
    let addr = broker.addr();
    let waiting = tokio::spawn(async move {
        let mut producer = RawClient::connect(addr).await;
        produce(&mut producer, p, 2, -1, 10_000).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "answered before the follower copied it"
    );
    assert_eq!(fetch(&mut raw, 2, p, 8).await, (8, 10));
    assert_eq!(fetch(&mut raw, 2, p, 10).await.0, 10);
    assert_eq!(waiting.await.expect("produce"), (0, 8));

    // A broker that is not a replica of the partition reads like a consumer and moves
    // nothing.
    assert_eq!(produce(&mut raw, p, 1, 1, 5_000).await, (0, 10));
    assert_eq!(fetch(&mut raw, 3, p, 10).await, (10, 10));
    quorum.shutdown().await;
}

/// Kafka's NOT_ENOUGH_REPLICAS_AFTER_APPEND: an acks=all write admitted with the in-sync
/// replicas at min.insync.replicas, whose follower then stops fetching, is not acknowledged
/// once the leader drops the follower (the high watermark then passes it with one copy).
#[tokio::test]
async fn an_acks_all_write_is_not_acknowledged_once_the_in_sync_replicas_shrink_below_the_minimum()
{
    let b = BrokerWithQuorum::start_with(Duration::from_secs(120), |c| {
        c.topics.replica_lag_time_max_ms = 500;
    })
    .await;
    let configs = BTreeMap::from([("min.insync.replicas".to_owned(), "2".to_owned())]);
    let (mut raw, p) = stand_in_follower(&b, configs).await;
    // In sync: the follower copies each write, so acks=all completes.
    let addr = b.broker.addr();
    let write = |n| async move {
        let mut producer = RawClient::connect(addr).await;
        produce(&mut producer, p, n, -1, 10_000).await
    };
    let first = tokio::spawn(write(2));
    let mut at = 0;
    while !first.is_finished() {
        at = fetch(&mut raw, 2, p, at).await.1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(first.await.expect("produce"), (0, 0));
    // The follower goes quiet with a write in flight: the leader drops it from the ISR, and
    // the write, on the leader alone, is refused as Kafka refuses it.
    let second = tokio::spawn(write(3));
    let (code, _) = second.await.expect("produce");
    assert_eq!(code, 20, "NOT_ENOUGH_REPLICAS_AFTER_APPEND");
    // And new ones are refused up front (NOT_ENOUGH_REPLICAS) until it is back.
    assert_eq!(produce(&mut raw, p, 1, -1, 1_000).await.0, 19);
    b.quorum.shutdown().await;
}

/// Whether the broker serves the partition yet (its metadata may lag the controller's).
async fn fetch_ok(raw: &mut RawClient, partition: i32) -> bool {
    let resp = raw.call(12, &fetch_request(-1, partition, 0)).await;
    resp.responses[0].partitions[0].error_code == 0
}

/// A Fetch of `partition` from `offset` by `replica` (-1: a consumer), without waiting.
fn fetch_request(replica: i32, partition: i32, offset: i64) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(replica))
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(name())
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(partition)
                        .with_fetch_offset(offset)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ])
}
