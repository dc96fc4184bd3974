//! A few thousand random and mutated requests against a live broker: valid frames with
//! flipped bytes, truncated bodies, wrong versions and api keys, huge counts. The broker must
//! answer or close the connection, never panic, and serve a normal client afterwards. The
//! SASL requests go to a SASL_PLAINTEXT listener, where they reach the SCRAM exchange.
//!
//! The seed is printed; `STRATA_FUZZ_SEED=<n>` replays a run, `STRATA_FUZZ_REQUESTS=<n>`
//! sends more.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::alter_user_scram_credentials_request::ScramCredentialUpsertion;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, ApiKey, BrokerId, CreateTopicsRequest,
    DescribeUserScramCredentialsRequest, FetchRequest, GroupId, JoinGroupRequest,
    ListOffsetsRequest, MetadataRequest, OffsetCommitRequest, ProduceRequest, RequestHeader,
    SaslAuthenticateRequest, SaslHandshakeRequest, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use strata_client::{Client, NewRecord};
use strata_tests::{RawClient, TestBroker};

/// A small deterministic generator (xorshift64*), so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn topic(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}

/// Valid requests of the APIs the broker decodes, with content that reaches their handlers.
fn seeds() -> Vec<(Vec<u8>, ApiKey, i16)> {
    let batch = strata_storage::BatchBuilder::new()
        .value(Some(b"k"), b"v", 1_700_000_000_000)
        .build();
    vec![
        (
            enc(
                &MetadataRequest::default().with_topics(Some(vec![
                    MetadataRequestTopic::default().with_name(Some(topic("fuzz"))),
                ])),
                12,
            ),
            ApiKey::Metadata,
            12,
        ),
        (
            enc(
                &ProduceRequest::default()
                    .with_acks(1)
                    .with_timeout_ms(1000)
                    .with_topic_data(vec![
                        TopicProduceData::default()
                            .with_name(topic("fuzz"))
                            .with_partition_data(vec![
                                PartitionProduceData::default()
                                    .with_index(0)
                                    .with_records(Some(Bytes::from(batch))),
                            ]),
                    ]),
                9,
            ),
            ApiKey::Produce,
            9,
        ),
        (
            enc(
                &FetchRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_max_wait_ms(10)
                    .with_min_bytes(1)
                    .with_max_bytes(1 << 20)
                    .with_topics(vec![
                        FetchTopic::default()
                            .with_topic(topic("fuzz"))
                            .with_partitions(vec![
                                FetchPartition::default()
                                    .with_current_leader_epoch(-1)
                                    .with_partition_max_bytes(1 << 20),
                            ]),
                    ]),
                12,
            ),
            ApiKey::Fetch,
            12,
        ),
        (
            enc(
                &ListOffsetsRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_topics(vec![
                        ListOffsetsTopic::default()
                            .with_name(topic("fuzz"))
                            .with_partitions(vec![
                                ListOffsetsPartition::default().with_timestamp(-2),
                            ]),
                    ]),
                7,
            ),
            ApiKey::ListOffsets,
            7,
        ),
        (
            enc(
                &CreateTopicsRequest::default()
                    .with_timeout_ms(1000)
                    .with_validate_only(true)
                    .with_topics(vec![
                        CreatableTopic::default()
                            .with_name(topic("fuzz-new"))
                            .with_num_partitions(1)
                            .with_replication_factor(1),
                    ]),
                7,
            ),
            ApiKey::CreateTopics,
            7,
        ),
        (
            enc(
                &OffsetCommitRequest::default()
                    .with_group_id(GroupId(StrBytes::from_static_str("fuzz-group")))
                    .with_generation_id_or_member_epoch(-1)
                    .with_topics(vec![
                        OffsetCommitRequestTopic::default()
                            .with_name(topic("fuzz"))
                            .with_partitions(vec![
                                OffsetCommitRequestPartition::default().with_committed_offset(0),
                            ]),
                    ]),
                8,
            ),
            ApiKey::OffsetCommit,
            8,
        ),
        (
            enc(
                &JoinGroupRequest::default()
                    .with_group_id(GroupId(StrBytes::from_static_str("fuzz-group")))
                    .with_session_timeout_ms(6000)
                    .with_rebalance_timeout_ms(6000)
                    .with_protocol_type(StrBytes::from_static_str("consumer"))
                    .with_protocols(vec![
                        JoinGroupRequestProtocol::default()
                            .with_name(StrBytes::from_static_str("range")),
                    ]),
                5,
            ),
            ApiKey::JoinGroup,
            5,
        ),
        (
            enc(
                &SaslHandshakeRequest::default()
                    .with_mechanism(StrBytes::from_static_str("SCRAM-SHA-512")),
                1,
            ),
            ApiKey::SaslHandshake,
            1,
        ),
        (
            enc(
                &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from_static(
                    b"n,,n=fuzzer,r=fyko+d2lbbFgONRv9qkxdawL",
                )),
                2,
            ),
            ApiKey::SaslAuthenticate,
            2,
        ),
        (
            enc(
                &AlterUserScramCredentialsRequest::default().with_upsertions(vec![
                    ScramCredentialUpsertion::default()
                        .with_name(StrBytes::from_static_str("fuzzer"))
                        .with_mechanism(2)
                        .with_iterations(4096)
                        .with_salt(Bytes::from_static(b"salt"))
                        .with_salted_password(Bytes::from(vec![7u8; 64])),
                ]),
                0,
            ),
            ApiKey::AlterUserScramCredentials,
            0,
        ),
        (
            enc(&DescribeUserScramCredentialsRequest::default(), 0),
            ApiKey::DescribeUserScramCredentials,
            0,
        ),
    ]
}

/// `request` encoded at `version`.
fn enc(request: &impl Encodable, version: i16) -> Vec<u8> {
    let mut body = BytesMut::new();
    request.encode(&mut body, version).expect("request");
    body.to_vec()
}

/// A request frame body: header then request.
fn frame(request: &[u8], api: ApiKey, version: i16, correlation: i32) -> Vec<u8> {
    let mut body = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation)
        .with_client_id(Some(StrBytes::from_static_str("fuzz")))
        .encode(&mut body, api.request_header_version(version))
        .expect("header");
    body.extend_from_slice(request);
    body.to_vec()
}

/// One way of spoiling a valid frame body.
fn mutate(rng: &mut Rng, mut body: Vec<u8>) -> Vec<u8> {
    match rng.below(7) {
        // Flip a few bytes.
        0 => {
            for _ in 0..=rng.below(4) {
                let i = rng.below(body.len());
                body[i] ^= 1 << rng.below(8);
            }
        }
        // Truncate.
        1 => body.truncate(rng.below(body.len())),
        // Another version, often one that is not implemented.
        2 => {
            let v = rng.below(24) as i16 - 2;
            body[2..4].copy_from_slice(&v.to_be_bytes());
        }
        // Another api key.
        3 => {
            let k = rng.below(80) as i16 - 2;
            body[0..2].copy_from_slice(&k.to_be_bytes());
        }
        // A huge count or length somewhere after the header.
        4 if body.len() > 12 => {
            let i = 8 + rng.below(body.len() - 12);
            body[i..i + 4].copy_from_slice(&0x7fff_fff0_u32.to_be_bytes());
        }
        // Garbage appended.
        5 => {
            for _ in 0..rng.below(64) {
                body.push(rng.next() as u8);
            }
        }
        // Random bytes throughout.
        _ => {
            for b in body.iter_mut().skip(8) {
                if rng.below(8) == 0 {
                    *b = rng.next() as u8;
                }
            }
        }
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_mutated_requests_leave_the_broker_serving() {
    // Any panic in the broker's threads (caught per task, so otherwise invisible) is counted.
    let panics = Arc::new(AtomicUsize::new(0));
    let counted = panics.clone();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        counted.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));

    let seed = std::env::var("STRATA_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    let requests: usize = std::env::var("STRATA_FUZZ_REQUESTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    eprintln!("STRATA_FUZZ_SEED={seed} STRATA_FUZZ_REQUESTS={requests}");
    let mut rng = Rng(seed);

    let broker = TestBroker::start_with(|c| {
        c.groups.initial_rebalance_delay_ms = 0;
        c.kafka.listeners = vec![strata_broker::config::ListenerConfig {
            name: "SASL_PLAINTEXT".into(),
            listen: "127.0.0.1:0".into(),
            advertised: None,
            security_protocol: None,
            client_auth: None,
        }];
        c.kafka.sasl.failed_authentication_delay_ms = 0;
    })
    .await;
    let sasl_addr = broker.listener("SASL_PLAINTEXT");
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    client
        .create_topic("fuzz", 1, -1, &BTreeMap::new())
        .await
        .expect("create");
    let record = NewRecord {
        value: Some(Bytes::from_static(b"before")),
        ..NewRecord::default()
    };
    client
        .produce("fuzz", 0, &[record], -1)
        .await
        .expect("produce");

    let seeds = seeds();
    let mut plain = RawClient::connect(broker.addr()).await;
    let mut sasl = RawClient::connect(sasl_addr).await;
    let (mut answered, mut closed) = (0usize, 0usize);
    for i in 0..requests {
        let (kind, api, version) = &seeds[rng.below(seeds.len())];
        let to_sasl = matches!(api, ApiKey::SaslHandshake | ApiKey::SaslAuthenticate);
        let (conn, addr) = match to_sasl {
            true => (&mut sasl, sasl_addr),
            false => (&mut plain, broker.addr()),
        };
        let body = frame(kind, *api, *version, i as i32);
        let body = if rng.below(10) == 0 {
            body
        } else {
            mutate(&mut rng, body)
        };
        // A Produce whose acks turned 0 is rightly not answered; anything else is answered
        // or closed within the longest wait a request may ask for (a Fetch's 30 s).
        let may_be_silent = body.get(..2) == Some(&(ApiKey::Produce as i16).to_be_bytes()[..]);
        let wait = Duration::from_secs(if may_be_silent { 3 } else { 35 });
        conn.send_frame(&body).await;
        match tokio::time::timeout(wait, conn.read_frame()).await {
            Ok(Some(_)) => answered += 1,
            // Closed: a bad frame closes its connection. Open another.
            Ok(None) => {
                closed += 1;
                *conn = RawClient::connect(addr).await;
            }
            Err(_) if may_be_silent => *conn = RawClient::connect(addr).await,
            Err(_) => panic!("request {i} (seed {seed}) got no answer and no close in {wait:?}"),
        }
    }
    eprintln!("{requests} requests: {answered} answered, {closed} connections closed");

    // A normal client is still served, and its data is intact.
    let record = NewRecord {
        value: Some(Bytes::from_static(b"after")),
        ..NewRecord::default()
    };
    let offset = client
        .produce("fuzz", 0, &[record], -1)
        .await
        .expect("produce after");
    let (records, _) = client
        .fetch("fuzz", 0, offset, 1 << 20, 100)
        .await
        .expect("fetch after");
    assert_eq!(records[0].value.as_deref(), Some(&b"after"[..]));
    assert_eq!(
        panics.load(Ordering::SeqCst),
        0,
        "the broker panicked (seed {seed})"
    );
    drop(client);
    broker.stop().await;
}
