//! Consumer groups with librdkafka consumers: sharing partitions, committed offsets across
//! consumer and broker restarts, rebalances, the cooperative-sticky assignor, and group admin.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use strata_tests::TestBroker;

async fn broker() -> TestBroker {
    TestBroker::start_with(|c| {
        c.groups.initial_rebalance_delay_ms = 0;
        c.groups.min_session_timeout_ms = 1000;
    })
    .await
}

async fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin");
    for r in admin
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create")
    {
        r.expect("created");
    }
}

use strata_tests::produce_numbered as produce;

fn consumer(bootstrap: &str, group: &str, strategy: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("partition.assignment.strategy", strategy)
        .create()
        .expect("consumer")
}

fn assigned(c: &BaseConsumer) -> BTreeSet<i32> {
    c.assignment()
        .map(|a| a.elements().iter().map(|e| e.partition()).collect())
        .unwrap_or_default()
}

/// Polls both consumers until each has a share of the partitions and the shares cover all.
fn until_split(a: &BaseConsumer, b: &BaseConsumer, partitions: i32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for c in [a, b] {
            if let Some(m) = c.poll(Duration::from_millis(100)) {
                panic!("no records yet, got {:?}", m.map(|m| m.offset()));
            }
        }
        let (x, y) = (assigned(a), assigned(b));
        if !x.is_empty() && !y.is_empty() && x.len() + y.len() == partitions as usize {
            assert!(x.is_disjoint(&y), "{x:?} and {y:?} overlap");
            return;
        }
        assert!(Instant::now() < deadline, "never split: {x:?} / {y:?}");
    }
}

/// Polls both consumers until `total` records arrived; returns value → consumer index.
fn drain(consumers: &[&BaseConsumer], total: usize) -> BTreeMap<usize, Vec<usize>> {
    let mut seen: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while n < total {
        assert!(Instant::now() < deadline, "consumed {n} of {total}");
        for (i, c) in consumers.iter().enumerate() {
            if let Some(m) = c.poll(Duration::from_millis(50)) {
                let m = m.expect("consumer error");
                let v: usize = std::str::from_utf8(m.payload().expect("value"))
                    .expect("utf8")
                    .parse()
                    .expect("number");
                seen.entry(v).or_default().push(i);
                n += 1;
            }
        }
    }
    seen
}

async fn two_consumers_split_and_consume_once(strategy: &'static str) {
    let broker = broker().await;
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "shared", 4).await;
    let b = bootstrap.clone();
    let (a, c) = tokio::task::spawn_blocking(move || {
        let a = consumer(&b, "sharers", strategy);
        let c = consumer(&b, "sharers", strategy);
        a.subscribe(&["shared"]).expect("subscribe");
        c.subscribe(&["shared"]).expect("subscribe");
        until_split(&a, &c, 4);
        (a, c)
    })
    .await
    .expect("split");
    produce(&bootstrap, "shared", 0, 2000).await;
    let seen = tokio::task::spawn_blocking(move || {
        let seen = drain(&[&a, &c], 2000);
        drop((a, c));
        seen
    })
    .await
    .expect("drain");
    assert_eq!(seen.len(), 2000, "every record consumed");
    assert!(
        seen.values().all(|who| who.len() == 1),
        "no record consumed twice"
    );
    let by: BTreeSet<usize> = seen.values().flatten().copied().collect();
    assert_eq!(by.len(), 2, "both consumers did work");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_in_a_group_split_partitions_and_consume_each_record_once() {
    two_consumers_split_and_consume_once("range").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cooperative_sticky_assignor_works() {
    two_consumers_split_and_consume_once("cooperative-sticky").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_consumer_and_broker_restarts() {
    let mut broker = broker().await;
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "resume", 1).await;
    produce(&bootstrap, "resume", 0, 100).await;
    let b = bootstrap.clone();
    // Consume 40, commit, leave.
    tokio::task::spawn_blocking(move || {
        let c = consumer(&b, "resumers", "range");
        c.subscribe(&["resume"]).expect("subscribe");
        let mut got = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while got < 40 {
            assert!(Instant::now() < deadline, "only {got}");
            if let Some(m) = c.poll(Duration::from_millis(100)) {
                let m = m.expect("record");
                assert_eq!(m.offset(), got);
                got += 1;
                if got == 40 {
                    c.commit_message(&m, CommitMode::Sync).expect("commit");
                }
            }
        }
    })
    .await
    .expect("first consumer");
    broker.restart().await;
    let b = broker.bootstrap();
    let first = tokio::task::spawn_blocking(move || {
        let c = consumer(&b, "resumers", "range");
        c.subscribe(&["resume"]).expect("subscribe");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "nothing after restart");
            if let Some(m) = c.poll(Duration::from_millis(100)) {
                return m.expect("record").offset();
            }
        }
    })
    .await
    .expect("second consumer");
    assert_eq!(
        first, 40,
        "resumed after the last commit, with no redelivery"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_triggers_a_rebalance_and_groups_are_listed_described_and_deleted() {
    let broker = broker().await;
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "watched", 2).await;
    let b = bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        let a = consumer(&b, "watchers", "range");
        a.subscribe(&["watched"]).expect("subscribe");
        let deadline = Instant::now() + Duration::from_secs(60);
        while assigned(&a).len() != 2 {
            assert!(Instant::now() < deadline, "first member never assigned");
            let _ = a.poll(Duration::from_millis(100));
        }
        // A second member joins: the partitions are shared out again.
        let c = consumer(&b, "watchers", "range");
        c.subscribe(&["watched"]).expect("subscribe");
        until_split(&a, &c, 2);
        let groups = a
            .fetch_group_list(Some("watchers"), Duration::from_secs(5))
            .expect("list and describe groups");
        let g = &groups.groups()[0];
        assert_eq!(g.name(), "watchers");
        assert_eq!(g.state(), "Stable");
        assert_eq!(g.protocol(), "range");
        assert_eq!(g.members().len(), 2);
        drop((a, c));
    })
    .await
    .expect("members");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("admin");
    // Both members left on drop, so the group is empty and can go.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = admin
            .delete_groups(&["watchers"], &AdminOptions::new())
            .await
            .expect("delete groups");
        match &r[0] {
            Ok(_) => break,
            Err((_, e)) => {
                assert!(Instant::now() < deadline, "group never deletable: {e:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let missing = admin
        .delete_groups(&["watchers"], &AdminOptions::new())
        .await
        .expect("delete groups");
    assert!(missing[0].is_err(), "a deleted group is gone");
    broker.stop().await;
}

mod wire {
    use std::time::Duration;

    use bytes::Bytes;
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
    use kafka_protocol::messages::{
        GroupId, HeartbeatRequest, JoinGroupRequest, JoinGroupResponse, OffsetCommitRequest,
        SyncGroupRequest, TopicName,
    };
    use kafka_protocol::protocol::StrBytes;
    use strata_tests::{RawClient, TestBroker};

    fn s(v: &str) -> StrBytes {
        StrBytes::from_string(v.to_owned())
    }

    fn join(member: &str) -> JoinGroupRequest {
        JoinGroupRequest::default()
            .with_group_id(GroupId(s("raw")))
            .with_session_timeout_ms(1000)
            .with_rebalance_timeout_ms(3000)
            .with_member_id(s(member))
            .with_group_instance_id(None)
            .with_protocol_type(s("consumer"))
            .with_protocols(vec![
                JoinGroupRequestProtocol::default()
                    .with_name(s("range"))
                    .with_metadata(Bytes::from_static(b"m")),
            ])
    }

    /// KIP-394: the first join returns MEMBER_ID_REQUIRED and the id to rejoin with.
    async fn join_group(c: &mut RawClient, member: &str) -> JoinGroupResponse {
        let r = c.call(5, &join(member)).await;
        if r.error_code == 79 {
            let id = r.member_id.to_string();
            return c.call(5, &join(&id)).await;
        }
        r
    }

    /// A consumer-protocol subscription (v0) to `topic`, as a Java or librdkafka member sends.
    fn subscription(topic: &str) -> Bytes {
        let mut b = vec![0, 0, 0, 0, 0, 1];
        b.extend_from_slice(&(topic.len() as i16).to_be_bytes());
        b.extend_from_slice(topic.as_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        Bytes::from(b)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_that_dies_without_leaving_is_evicted_and_the_survivor_takes_over() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};

        use rdkafka::consumer::Consumer;
        let broker = super::broker().await;
        let bootstrap = broker.bootstrap();
        super::create_topic(&bootstrap, "evict", 4).await;
        // The survivor: librdkafka, polling in a thread, reporting its assignment size.
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, mut rx) = tokio::sync::watch::channel(0usize);
        let survivor = {
            let (b, stop) = (bootstrap.clone(), stop.clone());
            tokio::task::spawn_blocking(move || {
                let c = super::consumer(&b, "evictees", "range");
                c.subscribe(&["evict"]).expect("subscribe");
                while !stop.load(Ordering::SeqCst) {
                    let _ = c.poll(Duration::from_millis(50));
                    tx.send_replace(super::assigned(&c).len());
                }
            })
        };
        rx.wait_for(|n| *n == 4)
            .await
            .expect("survivor gets all partitions");
        // A raw member joins, takes its share, then dies without a LeaveGroup.
        let mut raw = RawClient::connect(broker.addr()).await;
        let mut request = JoinGroupRequest::default()
            .with_group_id(GroupId(s("evictees")))
            .with_session_timeout_ms(1000)
            .with_rebalance_timeout_ms(10_000)
            .with_member_id(s(""))
            .with_group_instance_id(None)
            .with_protocol_type(s("consumer"))
            .with_protocols(vec![
                JoinGroupRequestProtocol::default()
                    .with_name(s("range"))
                    .with_metadata(subscription("evict")),
            ]);
        let first = raw.call(5, &request).await;
        assert_eq!(first.error_code, 79);
        request = request.with_member_id(first.member_id.clone());
        let joined = raw.call(5, &request).await;
        assert_eq!(joined.error_code, 0);
        let synced = raw
            .call(
                3,
                &SyncGroupRequest::default()
                    .with_group_id(GroupId(s("evictees")))
                    .with_generation_id(joined.generation_id)
                    .with_member_id(joined.member_id.clone()),
            )
            .await;
        assert_eq!(synced.error_code, 0);
        assert!(
            !synced.assignment.is_empty(),
            "the raw member got partitions"
        );
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|n| *n == 2))
            .await
            .expect("survivor shares the partitions")
            .expect("survivor running");
        drop(raw); // dies: no LeaveGroup, no more heartbeats
        tokio::time::timeout(Duration::from_secs(15), rx.wait_for(|n| *n == 4))
            .await
            .expect("after the session timeout the survivor owns every partition again")
            .expect("survivor running");
        stop.store(true, Ordering::SeqCst);
        survivor.await.expect("survivor thread");
        broker.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_member_is_evicted_and_stale_generations_are_refused() {
        let broker = TestBroker::start_with(|c| {
            c.groups.initial_rebalance_delay_ms = 0;
            c.groups.min_session_timeout_ms = 500;
        })
        .await;
        let addr = broker.addr();
        // Wait for the coordinator (the offsets topic is created at start).
        let mut c1 = RawClient::connect(addr).await;
        let first = loop {
            let r = join_group(&mut c1, "").await;
            if r.error_code == 0 {
                break r;
            }
            assert!(
                matches!(r.error_code, 14 | 15),
                "unexpected {}",
                r.error_code
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let m1 = first.member_id.to_string();
        // Member 2 joins: member 1 must rejoin for the new generation.
        let second = tokio::spawn(async move {
            let mut c2 = RawClient::connect(addr).await;
            let r = join_group(&mut c2, "").await;
            (c2, r)
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let rejoin = c1.call(5, &join(&m1)).await;
        let (mut c2, j2) = second.await.expect("member 2");
        assert_eq!((rejoin.error_code, j2.error_code), (0, 0));
        assert_eq!(rejoin.generation_id, j2.generation_id);
        let generation = j2.generation_id;
        let m2 = j2.member_id.to_string();
        let leader = rejoin.leader.to_string();
        let sync = |member: &str, assign: bool| {
            SyncGroupRequest::default()
                .with_group_id(GroupId(s("raw")))
                .with_generation_id(generation)
                .with_member_id(s(member))
                .with_assignments(if assign {
                    vec![
                        SyncGroupRequestAssignment::default().with_member_id(s(&m1)),
                        SyncGroupRequestAssignment::default().with_member_id(s(&m2)),
                    ]
                } else {
                    Vec::new()
                })
        };
        let (lc, fc, follower) = if leader == m1 {
            (&mut c1, &mut c2, m2.clone())
        } else {
            (&mut c2, &mut c1, m1.clone())
        };
        assert_eq!(lc.call(3, &sync(&leader, true)).await.error_code, 0);
        assert_eq!(fc.call(3, &sync(&follower, false)).await.error_code, 0);
        // Member 2 keeps heartbeating; member 1 goes silent.
        let beat = |generation: i32| {
            HeartbeatRequest::default()
                .with_group_id(GroupId(s("raw")))
                .with_generation_id(generation)
                .with_member_id(s(&m2))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let code = c2.call(3, &beat(generation)).await.error_code;
            if code == 27 {
                break; // REBALANCE_IN_PROGRESS: member 1 was evicted
            }
            assert_eq!(code, 0);
            assert!(
                std::time::Instant::now() < deadline,
                "member 1 never evicted"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let alone = c2.call(5, &join(&m2)).await;
        assert_eq!(alone.error_code, 0);
        assert_eq!(alone.generation_id, generation + 1);
        assert_eq!(alone.leader.as_str(), m2);
        // Member 1 comes back with its old id and generation: both refused.
        let commit = OffsetCommitRequest::default()
            .with_group_id(GroupId(s("raw")))
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(s(&m2))
            .with_topics(vec![
                OffsetCommitRequestTopic::default()
                    .with_name(TopicName(s("__consumer_offsets")))
                    .with_partitions(vec![
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(0)
                            .with_committed_offset(1),
                    ]),
            ]);
        let r = c2.call(7, &commit).await;
        assert_eq!(
            r.topics[0].partitions[0].error_code, 22,
            "a commit with the old generation is ILLEGAL_GENERATION"
        );
        let r = c1.call(3, &beat(generation).with_member_id(s(&m1))).await;
        assert_eq!(r.error_code, 25, "the evicted member is UNKNOWN_MEMBER_ID");
        broker.stop().await;
    }
}
