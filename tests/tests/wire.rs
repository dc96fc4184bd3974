//! The Kafka wire protocol on a raw socket: versions, bad input, many connections, and a
//! produce/fetch round trip that survives a restart.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, CreateTopicsRequest, FetchRequest,
    ListOffsetsRequest, MetadataRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use strata_storage::BatchBuilder;
use strata_tests::new_producer_id;
use strata_tests::produce_request as produce;
use strata_tests::{RawClient, TestBroker};

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

/// Creates `topic` the way clients do: a Metadata request that allows auto-creation.
async fn auto_create(c: &mut RawClient, topic: &str) -> kafka_protocol::messages::MetadataResponse {
    c.call(
        12,
        &MetadataRequest::default()
            .with_allow_auto_topic_creation(true)
            .with_topics(Some(vec![
                kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                    .with_name(Some(name(topic))),
            ])),
    )
    .await
}

async fn api_versions(broker: &TestBroker) -> ApiVersionsResponse {
    let mut c = RawClient::connect(broker.addr()).await;
    c.call(3, &ApiVersionsRequest::default()).await
}

async fn still_serving(broker: &TestBroker) {
    let r = tokio::time::timeout(Duration::from_secs(5), api_versions(broker))
        .await
        .expect("broker answers another connection");
    assert_eq!(r.error_code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_versions_advertises_implemented_ranges_and_answers_unknown_versions_with_v0() {
    let broker = TestBroker::start().await;
    let r = api_versions(&broker).await;
    let produce = r
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::Produce as i16)
        .expect("produce advertised");
    assert_eq!((produce.min_version, produce.max_version), (3, 12));
    let end_txn = r
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::EndTxn as i16)
        .expect("EndTxn advertised");
    assert_eq!((end_txn.min_version, end_txn.max_version), (0, 5));
    // Transaction version 2 is finalized, so clients that gate KIP-890 part 2 on it use it.
    let tv = r
        .finalized_features
        .iter()
        .find(|f| f.name.as_str() == "transaction.version")
        .expect("transaction.version finalized");
    assert_eq!((tv.min_version_level, tv.max_version_level), (2, 2));
    let heartbeat = r
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::ConsumerGroupHeartbeat as i16)
        .expect("ConsumerGroupHeartbeat advertised");
    assert_eq!((heartbeat.min_version, heartbeat.max_version), (0, 1));
    assert!(
        !r.api_keys
            .iter()
            .any(|k| k.api_key == ApiKey::ShareGroupHeartbeat as i16),
        "only implemented APIs are advertised"
    );
    // A version from the future: a v0 answer with UNSUPPORTED_VERSION and the ranges.
    let mut c = RawClient::connect(broker.addr()).await;
    let mut frame = Vec::new();
    frame.extend_from_slice(&(ApiKey::ApiVersions as i16).to_be_bytes());
    frame.extend_from_slice(&99i16.to_be_bytes());
    frame.extend_from_slice(&7i32.to_be_bytes());
    frame.extend_from_slice(&(-1i16).to_be_bytes());
    frame.push(0); // header v2: no tagged fields
    c.send_frame(&frame).await;
    let reply = c.read_frame().await.expect("an answer");
    assert_eq!(&reply[..4], &7i32.to_be_bytes(), "correlation id echoed");
    assert_eq!(&reply[4..6], &35i16.to_be_bytes(), "UNSUPPORTED_VERSION");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_closes_only_that_connection() {
    let broker = TestBroker::start().await;
    let header = |api: i16, version: i16| {
        let mut h = Vec::new();
        h.extend_from_slice(&api.to_be_bytes());
        h.extend_from_slice(&version.to_be_bytes());
        h.extend_from_slice(&1i32.to_be_bytes());
        h.extend_from_slice(&(-1i16).to_be_bytes());
        h
    };
    let mut huge_array = header(ApiKey::Metadata as i16, 0);
    huge_array.extend_from_slice(&i32::MAX.to_be_bytes());
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "garbage",
            b"\x00\x00\x00\x10this is not kafka".to_vec(),
            false,
        ),
        (
            "2 GiB size prefix",
            vec![0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0],
            false,
        ),
        (
            "negative size prefix",
            vec![0xff, 0xff, 0xff, 0xf0, 1, 2, 3],
            false,
        ),
        (
            "truncated frame",
            {
                let mut v = 100u32.to_be_bytes().to_vec();
                v.extend_from_slice(&header(ApiKey::ApiVersions as i16, 0));
                v
            },
            true,
        ),
        ("unknown api key", header(999, 0), true),
        (
            "unsupported version",
            header(ApiKey::Produce as i16, 99),
            true,
        ),
        ("tiny header", vec![0, 1], true),
        ("array count beyond the frame", huge_array, true),
    ];
    for (what, bytes, framed) in cases {
        let mut c = RawClient::connect(broker.addr()).await;
        if framed {
            c.send_frame(&bytes).await;
        } else {
            c.send_raw(&bytes).await;
        }
        if what == "truncated frame" {
            c.shutdown_write().await;
        }
        assert!(
            c.closed_within(Duration::from_secs(5)).await,
            "{what}: connection left open"
        );
        still_serving(&broker).await;
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_connections_are_served() {
    let broker = TestBroker::start().await;
    let addr = broker.addr();
    let mut clients = Vec::with_capacity(1000);
    for _ in 0..1000 {
        clients.push(RawClient::connect(addr).await);
    }
    let answers = futures::future::join_all(
        clients
            .iter_mut()
            .map(|c| async move { c.call(3, &ApiVersionsRequest::default()).await.error_code }),
    )
    .await;
    assert_eq!(answers.len(), 1000);
    assert!(answers.iter().all(|code| *code == 0));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let broker = TestBroker::start().await;
    let mut c = RawClient::connect(broker.addr()).await;
    // Ten Metadata requests written back to back before reading any answer.
    for i in 0..10i32 {
        let mut f = Vec::new();
        f.extend_from_slice(&(ApiKey::Metadata as i16).to_be_bytes());
        f.extend_from_slice(&1i16.to_be_bytes());
        f.extend_from_slice(&(100 + i).to_be_bytes());
        f.extend_from_slice(&(-1i16).to_be_bytes());
        f.extend_from_slice(&(-1i32).to_be_bytes()); // all topics
        c.send_frame(&f).await;
    }
    for i in 0..10i32 {
        let r = c.read_frame().await.expect("answer");
        assert_eq!(&r[..4], &(100 + i).to_be_bytes());
    }
    broker.stop().await;
}

fn fetch(topic: &str, partition: i32, offset: i64, max_wait_ms: i32) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(name(topic))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(partition)
                        .with_fetch_offset(offset)
                        .with_current_leader_epoch(-1)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produced_batches_are_fetched_back_byte_for_byte_and_survive_a_restart() {
    let mut broker = TestBroker::start().await;
    let mut c = RawClient::connect(broker.addr()).await;
    let created = c
        .call(
            7,
            &CreateTopicsRequest::default()
                .with_timeout_ms(5000)
                .with_topics(vec![
                    CreatableTopic::default()
                        .with_name(name("orders"))
                        .with_num_partitions(2)
                        .with_replication_factor(1),
                ]),
        )
        .await;
    assert_eq!(
        created.topics[0].error_code, 0,
        "{:?}",
        created.topics[0].error_message
    );
    let mut sent = Vec::new();
    for i in 0..5i64 {
        let batch = BatchBuilder::new()
            .value(
                Some(b"k"),
                format!("value {i}").as_bytes(),
                1_700_000_000_000 + i,
            )
            .value(None, b"second", 1_700_000_000_000 + i)
            .build();
        let r = c.call(9, &produce("orders", 1, batch.clone())).await;
        let p = &r.responses[0].partition_responses[0];
        assert_eq!(p.error_code, 0);
        assert_eq!(p.base_offset, i * 2);
        sent.push(batch);
    }
    // A bad CRC is refused with CORRUPT_MESSAGE and nothing is appended.
    let mut bad = sent[0].clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let r = c.call(9, &produce("orders", 1, bad)).await;
    assert_eq!(r.responses[0].partition_responses[0].error_code, 2);

    let check = |fetched: &Bytes| {
        // Offsets were assigned in place; everything else is as sent.
        let mut expected = Vec::new();
        for (i, b) in sent.iter().enumerate() {
            let mut b = b.clone();
            b[..8].copy_from_slice(&(i as i64 * 2).to_be_bytes());
            expected.extend_from_slice(&b[..12]);
            expected.extend_from_slice(&b[16..17]); // magic; epoch and CRC may differ
        }
        assert!(fetched.len() >= sent.iter().map(Vec::len).sum::<usize>());
        let mut pos = 0;
        for (i, b) in sent.iter().enumerate() {
            let got = &fetched[pos..pos + b.len()];
            assert_eq!(&got[..8], &(i as i64 * 2).to_be_bytes(), "base offset");
            assert_eq!(
                &got[21..],
                &b[21..],
                "attributes, timestamps and records unchanged"
            );
            pos += b.len();
        }
    };
    let r = c.call(12, &fetch("orders", 1, 0, 0)).await;
    let data = &r.responses[0].partitions[0];
    assert_eq!(data.error_code, 0);
    assert_eq!(data.high_watermark, 10);
    check(data.records.as_ref().expect("records"));

    let list = ListOffsetsRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_topics(vec![
            ListOffsetsTopic::default()
                .with_name(name("orders"))
                .with_partitions(vec![
                    ListOffsetsPartition::default()
                        .with_partition_index(1)
                        .with_timestamp(-2),
                    ListOffsetsPartition::default()
                        .with_partition_index(1)
                        .with_timestamp(-1),
                    ListOffsetsPartition::default()
                        .with_partition_index(1)
                        .with_timestamp(1_700_000_000_003),
                ]),
        ]);
    // Every version answers (before v4 without the leader epoch: kafka-python, aiokafka and
    // older librdkafka ask with v1 to v3, and setting it once closed their connections).
    for version in 1..=9 {
        let offsets = c.call(version, &list).await;
        let got: Vec<i64> = offsets.topics[0]
            .partitions
            .iter()
            .map(|p| p.offset)
            .collect();
        assert_eq!(got, vec![0, 10, 6], "ListOffsets v{version}");
    }

    broker.restart().await;
    let mut c = RawClient::connect(broker.addr()).await;
    let r = c.call(12, &fetch("orders", 1, 0, 0)).await;
    let data = &r.responses[0].partitions[0];
    assert_eq!(data.error_code, 0, "partition served after restart");
    assert_eq!(data.high_watermark, 10);
    check(data.records.as_ref().expect("records"));
    // The restart bumped the leader epoch: ListOffsets from a client that still names the
    // old one is fenced, and one naming an epoch this broker has not seen is told to retry.
    let meta = auto_create(&mut c, "orders").await;
    let epoch = meta.topics[0].partitions[1].leader_epoch;
    let list_at = |current_leader_epoch: i32| {
        ListOffsetsRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_topics(vec![
                ListOffsetsTopic::default()
                    .with_name(name("orders"))
                    .with_partitions(vec![
                        ListOffsetsPartition::default()
                            .with_partition_index(1)
                            .with_current_leader_epoch(current_leader_epoch)
                            .with_timestamp(-1),
                    ]),
            ])
    };
    for (given, code) in [(epoch, 0), (-1, 0), (epoch - 1, 74), (epoch + 1, 75)] {
        let r = c.call(7, &list_at(given)).await;
        assert_eq!(
            r.topics[0].partitions[0].error_code, code,
            "current_leader_epoch {given} against {epoch}"
        );
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_at_the_end_waits_for_new_data_without_polling() {
    let broker = TestBroker::start().await;
    let mut meta = RawClient::connect(broker.addr()).await;
    // Metadata auto-creates the topic.
    let m = auto_create(&mut meta, "tail").await;
    assert_eq!(m.topics[0].error_code, 0);
    let addr = broker.addr();
    let waiter = tokio::spawn(async move {
        let mut c = RawClient::connect(addr).await;
        let started = std::time::Instant::now();
        let r = c.call(12, &fetch("tail", 0, 0, 10_000)).await;
        (started.elapsed(), r)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = meta
        .call(
            9,
            &produce(
                "tail",
                0,
                BatchBuilder::new().value(None, b"wake", 1).build(),
            ),
        )
        .await;
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    let (took, r) = waiter.await.expect("fetch task");
    assert!(
        took >= Duration::from_millis(250),
        "answered before data arrived: {took:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "not woken by the append: {took:?}"
    );
    let records = r.responses[0].partitions[0]
        .records
        .clone()
        .expect("records");
    assert!(!records.is_empty());
    broker.stop().await;
}

/// A fresh idempotent producer id (InitProducerId without a transactional id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_produce_dedupes_retries_refuses_gaps_and_fences_old_epochs() {
    let mut broker = TestBroker::start().await;
    let mut c = RawClient::connect(broker.addr()).await;
    let pid = new_producer_id(&mut c).await;
    let batch = |epoch: i16, seq: i32, n: usize| {
        let mut b = BatchBuilder::new().producer(pid, epoch, seq);
        for i in 0..n {
            b = b.value(None, format!("r{seq}-{i}").as_bytes(), 1);
        }
        b.build()
    };
    let send = |records: Vec<u8>| produce("idem", 0, records);
    // Auto-create the topic through Metadata first.
    auto_create(&mut c, "idem").await;
    let code_and_offset = |r: kafka_protocol::messages::ProduceResponse| {
        let p = &r.responses[0].partition_responses[0];
        (p.error_code, p.base_offset)
    };
    assert_eq!(
        code_and_offset(c.call(9, &send(batch(0, 0, 3))).await),
        (0, 0)
    );
    assert_eq!(
        code_and_offset(c.call(9, &send(batch(0, 3, 2))).await),
        (0, 3)
    );
    // A retry of the first batch gets its original offsets and appends nothing.
    assert_eq!(
        code_and_offset(c.call(9, &send(batch(0, 0, 3))).await),
        (0, 0)
    );
    // A gap is refused with OUT_OF_ORDER_SEQUENCE_NUMBER (45).
    assert_eq!(
        code_and_offset(c.call(9, &send(batch(0, 9, 1))).await).0,
        45
    );
    // The same survives a restart: the producer state is rebuilt from the log.
    broker.restart().await;
    let mut c = RawClient::connect(broker.addr()).await;
    assert_eq!(
        code_and_offset(c.call(9, &send(batch(0, 3, 2))).await),
        (0, 3)
    );
    // A bumped epoch starts again at 0; the old epoch is then fenced (INVALID_PRODUCER_EPOCH).
    assert_eq!(
        code_and_offset(c.call(9, &send(batch(1, 0, 1))).await),
        (0, 5)
    );
    assert_eq!(
        code_and_offset(c.call(9, &send(batch(0, 5, 1))).await).0,
        47
    );
    let r = c.call(12, &fetch("idem", 0, 0, 0)).await;
    assert_eq!(
        r.responses[0].partitions[0].high_watermark, 6,
        "no duplicates appended"
    );
    broker.stop().await;
}

/// Audit A16.2: a producer idle for longer than two segments keeps its duplicate detection
/// across a restart (the producer snapshot), a duplicate on a log-append-time topic answers
/// the original append time, and a producer the broker no longer knows carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producers_are_remembered_across_restarts_however_old_their_last_batch() {
    use kafka_protocol::messages::create_topics_request::CreatableTopicConfig;
    let mut broker = TestBroker::start().await;
    let mut c = RawClient::connect(broker.addr()).await;
    let config = |k: &str, v: &str| {
        CreatableTopicConfig::default()
            .with_name(StrBytes::from_string(k.to_owned()))
            .with_value(Some(StrBytes::from_string(v.to_owned())))
    };
    let created = c
        .call(
            5,
            &CreateTopicsRequest::default()
                .with_timeout_ms(5000)
                .with_topics(vec![
                    CreatableTopic::default()
                        .with_name(name("snap"))
                        .with_num_partitions(1)
                        .with_replication_factor(1)
                        .with_configs(vec![
                            config("segment.bytes", "1024"),
                            config("message.timestamp.type", "LogAppendTime"),
                        ]),
                ]),
        )
        .await;
    assert_eq!(
        created.topics[0].error_code, 0,
        "{:?}",
        created.topics[0].error_message
    );
    let pids = [new_producer_id(&mut c).await, new_producer_id(&mut c).await];
    let batch = |pid: i64, seq: i32, n: usize| {
        let mut b = BatchBuilder::new().producer(pid, 0, seq);
        for i in 0..n {
            b = b.value(None, format!("{pid}-{seq}-{i}-{:0>100}", 0).as_bytes(), 1);
        }
        b.build()
    };
    let send = |records: Vec<u8>| produce("snap", 0, records);
    let answer = |r: kafka_protocol::messages::ProduceResponse| {
        let p = &r.responses[0].partition_responses[0];
        (p.error_code, p.base_offset, p.log_append_time_ms)
    };
    let (code, first, appended_at) = answer(c.call(9, &send(batch(pids[0], 0, 3))).await);
    assert_eq!((code, first), (0, 0));
    assert!(appended_at > 0, "a log-append-time topic answers the time");
    // Another producer fills many segments, so the first one's batch is far behind.
    for seq in 0..40 {
        let (code, ..) = answer(c.call(9, &send(batch(pids[1], seq, 1))).await);
        assert_eq!(code, 0);
    }
    broker.restart().await;
    let mut c = RawClient::connect(broker.addr()).await;
    assert_eq!(
        answer(c.call(9, &send(batch(pids[0], 0, 3))).await),
        (0, 0, appended_at),
        "the retry is answered with its original offset and time, and not appended again"
    );
    let r = c.call(12, &fetch("snap", 0, 0, 0)).await;
    assert_eq!(r.responses[0].partitions[0].high_watermark, 43);
    // Without the snapshot the first producer is unknown after a restart; as in Kafka, it may
    // carry on from its next sequence.
    broker
        .restart_after(|dir| {
            let snapshots: Vec<_> = std::fs::read_dir(dir.join("logs/snap-0"))
                .expect("partition dir")
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "snapshot"))
                .collect();
            assert!(
                !snapshots.is_empty(),
                "the shutdown saved a producer snapshot"
            );
            for s in snapshots {
                std::fs::remove_file(s).expect("remove");
            }
        })
        .await;
    let mut c = RawClient::connect(broker.addr()).await;
    let (code, first, _) = answer(c.call(9, &send(batch(pids[0], 3, 1))).await);
    assert_eq!((code, first), (0, 43));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_value_is_refused_with_invalid_config() {
    use kafka_protocol::messages::AlterConfigsRequest;
    use kafka_protocol::messages::alter_configs_request::{AlterConfigsResource, AlterableConfig};
    let broker = TestBroker::start().await;
    let mut c = RawClient::connect(broker.addr()).await;
    let created = c
        .call(
            7,
            &CreateTopicsRequest::default().with_topics(vec![
                CreatableTopic::default()
                    .with_name(name("cfg"))
                    .with_num_partitions(1)
                    .with_replication_factor(1),
            ]),
        )
        .await;
    assert_eq!(created.topics[0].error_code, 0);
    let alter = |key: &str, value: &str| {
        AlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_string("cfg".into()))
                .with_configs(vec![
                    AlterableConfig::default()
                        .with_name(StrBytes::from_string(key.into()))
                        .with_value(Some(StrBytes::from_string(value.into()))),
                ]),
        ])
    };
    let r = c.call(2, &alter("retention.ms", "soon")).await;
    assert_eq!(r.responses[0].error_code, 40, "INVALID_CONFIG");
    let r = c.call(2, &alter("no.such.config", "1")).await;
    assert_eq!(r.responses[0].error_code, 40, "INVALID_CONFIG");
    let r = c.call(2, &alter("retention.ms", "1000")).await;
    assert_eq!(r.responses[0].error_code, 0);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_produce_requests_append_in_the_order_sent() {
    use kafka_protocol::messages::{InitProducerIdRequest, RequestHeader};
    use kafka_protocol::protocol::Encodable;
    let broker = TestBroker::start().await;
    let mut c = RawClient::connect(broker.addr()).await;
    let pid = c
        .call(
            4,
            &InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_transaction_timeout_ms(60_000),
        )
        .await
        .producer_id
        .0;
    auto_create(&mut c, "ordered").await;
    // 100 idempotent acks=all requests written back to back: any reordering of their appends
    // is an OUT_OF_ORDER_SEQUENCE_NUMBER or a wrong offset.
    for seq in 0..100i32 {
        let batch = BatchBuilder::new()
            .producer(pid, 0, seq)
            .value(None, format!("{seq}").as_bytes(), 1)
            .build();
        let mut frame = bytes::BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(ApiKey::Produce as i16)
            .with_request_api_version(9)
            .with_correlation_id(seq)
            .encode(&mut frame, 2)
            .expect("header");
        produce("ordered", 0, batch)
            .encode(&mut frame, 9)
            .expect("body");
        c.send_frame(&frame).await;
    }
    for seq in 0..100i32 {
        let mut r = c.read_frame().await.expect("answer");
        let header = <kafka_protocol::messages::ResponseHeader as kafka_protocol::protocol::Decodable>::decode(&mut r, 1)
            .expect("header");
        assert_eq!(header.correlation_id, seq);
        let resp = <kafka_protocol::messages::ProduceResponse as kafka_protocol::protocol::Decodable>::decode(&mut r, 9)
            .expect("body");
        let p = &resp.responses[0].partition_responses[0];
        assert_eq!(
            (p.error_code, p.base_offset),
            (0, i64::from(seq)),
            "request {seq}"
        );
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_for_leader_epoch_reports_where_each_epoch_ended() {
    use kafka_protocol::messages::OffsetForLeaderEpochRequest;
    use kafka_protocol::messages::offset_for_leader_epoch_request::{
        OffsetForLeaderPartition, OffsetForLeaderTopic,
    };
    let mut broker = TestBroker::start().await;
    let leader_epoch = |broker: &TestBroker| {
        let addr = broker.addr();
        async move {
            let mut c = RawClient::connect(addr).await;
            let m = auto_create(&mut c, "epochs").await;
            m.topics[0].partitions[0].leader_epoch
        }
    };
    let first = leader_epoch(&broker).await;
    let mut c = RawClient::connect(broker.addr()).await;
    for i in 0..3 {
        let b = BatchBuilder::new().value(None, b"a", i).build();
        assert_eq!(
            c.call(9, &produce("epochs", 0, b)).await.responses[0].partition_responses[0]
                .error_code,
            0
        );
    }
    // A restart re-registers the broker: leadership comes back under a higher epoch.
    broker.restart().await;
    let second = leader_epoch(&broker).await;
    assert!(second > first, "{second} > {first}");
    let mut c = RawClient::connect(broker.addr()).await;
    for i in 0..2 {
        let b = BatchBuilder::new().value(None, b"b", i).build();
        assert_eq!(
            c.call(9, &produce("epochs", 0, b)).await.responses[0].partition_responses[0]
                .error_code,
            0
        );
    }
    let ask = |epoch: i32| {
        OffsetForLeaderEpochRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_topics(vec![
                OffsetForLeaderTopic::default()
                    .with_topic(name("epochs"))
                    .with_partitions(vec![
                        OffsetForLeaderPartition::default()
                            .with_partition(0)
                            .with_current_leader_epoch(second)
                            .with_leader_epoch(epoch),
                    ]),
            ])
    };
    let answer = |r: kafka_protocol::messages::OffsetForLeaderEpochResponse| {
        let p = &r.topics[0].partitions[0];
        (p.error_code, p.leader_epoch, p.end_offset)
    };
    assert_eq!(
        answer(c.call(4, &ask(first)).await),
        (0, first, 3),
        "first epoch ended at 3"
    );
    assert_eq!(
        answer(c.call(4, &ask(second)).await),
        (0, second, 5),
        "current epoch: log end"
    );
    assert_eq!(
        answer(c.call(4, &ask(first - 1)).await).1,
        -1,
        "before any epoch"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_sent_connections_are_closed() {
    let broker = TestBroker::start_with(|c| c.kafka.idle_timeout_ms = 300).await;
    let mut idle = RawClient::connect(broker.addr()).await;
    let mut slow = RawClient::connect(broker.addr()).await;
    slow.send_raw(&[0, 0, 0, 50, 0, 18]).await; // a frame that never finishes
    assert!(
        idle.closed_within(Duration::from_secs(5)).await,
        "idle connection kept"
    );
    assert!(
        slow.closed_within(Duration::from_secs(5)).await,
        "half-sent frame kept"
    );
    still_serving(&broker).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_zero_gets_no_response_and_the_next_request_is_answered() {
    let broker = TestBroker::start().await;
    let mut c = RawClient::connect(broker.addr()).await;
    auto_create(&mut c, "fire").await;
    let mut header = Vec::new();
    header.extend_from_slice(&(ApiKey::Produce as i16).to_be_bytes());
    header.extend_from_slice(&9i16.to_be_bytes());
    header.extend_from_slice(&99i32.to_be_bytes());
    header.extend_from_slice(&(-1i16).to_be_bytes());
    header.push(0);
    let mut frame = bytes::BytesMut::from(&header[..]);
    kafka_protocol::protocol::Encodable::encode(
        &produce("fire", 0, BatchBuilder::new().value(None, b"x", 1).build()).with_acks(0),
        &mut frame,
        9,
    )
    .expect("encode");
    c.send_frame(&frame).await;
    // The next call checks that its own correlation id comes back first.
    let r = c.call(12, &fetch("fire", 0, 0, 1000)).await;
    assert_eq!(
        r.responses[0].partitions[0].high_watermark, 1,
        "acks=0 record appended"
    );
    broker.stop().await;
}
