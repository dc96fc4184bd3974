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
