//! Transactions as librdkafka users meet them: transactional producers and read_committed
//! consumers against an in-process broker, record by record.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kafka_protocol::messages::{
    DescribeTransactionsRequest, FindCoordinatorRequest, ListTransactionsRequest, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use strata_tests::cluster::ProcessCluster;
use strata_tests::{RawClient, TestBroker};

const WAIT: Duration = Duration::from_secs(30);

fn txn_producer(bootstrap: &str, id: &str, settings: &[(&str, &str)]) -> BaseProducer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", id)
        .set("linger.ms", "2");
    for (k, v) in settings {
        config.set(*k, *v);
    }
    let p: BaseProducer = config.create().expect("producer");
    p.init_transactions(WAIT).expect("init_transactions");
    p
}

fn plain_producer(bootstrap: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .create()
        .expect("producer")
}

/// Sends `values` to `topic`/`partition` and waits until all are acknowledged.
fn send(p: &BaseProducer, topic: &str, partition: i32, values: &[String]) {
    for v in values {
        p.send(
            BaseRecord::<str, str>::to(topic)
                .partition(partition)
                .key(v)
                .payload(v),
        )
        .map_err(|(e, _)| e)
        .expect("queued");
    }
    p.flush(WAIT).expect("flushed");
}

fn values(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

fn consumer(bootstrap: &str, isolation: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "strata-tests-unused")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer")
}

/// Reads `topic` from the beginning of `partitions` until nothing new arrives for
/// `settle`: the (partition, offset, value) of every record, in order per partition.
fn read_all(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    isolation: &str,
    settle: Duration,
) -> Vec<(i32, i64, String)> {
    let c = consumer(bootstrap, isolation);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    c.assign(&tpl).expect("assign");
    let mut got = Vec::new();
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < settle {
        match c.poll(Duration::from_millis(100)) {
            // A killed broker of a cluster is still in the bootstrap list.
            Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::BrokerTransportFailure))) => {
            }
            Some(m) => {
                let m = m.expect("no consumer error");
                let v = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                got.push((m.partition(), m.offset(), v));
                quiet_since = Instant::now();
            }
            None => {}
        }
    }
    got
}

fn sorted_values(records: &[(i32, i64, String)]) -> Vec<String> {
    let mut v: Vec<String> = records.iter().map(|(_, _, v)| v.clone()).collect();
    v.sort();
    v
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
        .create_topics(
            &[topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topics")
    {
        r.expect("topic created");
    }
}

/// Runs blocking librdkafka calls off the test's async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("no panic")
}

/// A transactional id's state as DescribeTransactions answers it (asking again while the
/// coordinator loads).
async fn describe(broker: &TestBroker, id: &str) -> (String, Vec<(String, Vec<i32>)>) {
    let mut raw = RawClient::connect(broker.addr()).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let resp = raw
            .call(
                0,
                &DescribeTransactionsRequest::default().with_transactional_ids(vec![
                    TransactionalId(StrBytes::from_string(id.to_owned())),
                ]),
            )
            .await;
        let s = &resp.transaction_states[0];
        // COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE: ask again.
        if matches!(s.error_code, 14 | 15) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        assert_eq!(s.error_code, 0, "describing {id}");
        let topics = s
            .topics
            .iter()
            .map(|t| (t.topic.0.to_string(), t.partitions.clone()))
            .collect();
        return (s.transaction_state.to_string(), topics);
    }
}

/// Waits until `id`'s transaction reaches `state` (markers are written after EndTxn is
/// answered).
async fn await_state(broker: &TestBroker, id: &str, state: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (now, _) = describe(broker, id).await;
        if now == state {
            return;
        }
        assert!(Instant::now() < deadline, "{id} still {now}, not {state}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A broker uploading every 100 ms, with `topic`: one partition of 4 KiB segments, each
/// evicted from the local disk once uploaded, kept forever in the bucket.
async fn tiered_broker_with(topic: &str) -> TestBroker {
    let broker = TestBroker::start_with(|c| {
        tweak(c);
        c.object_store.upload_interval_ms = 100;
    })
    .await;
    let configs = [
        ("segment.bytes", "4096"),
        ("local.retention.bytes", "0"),
        ("retention.ms", "-1"),
    ];
    create_topic(&broker.bootstrap(), topic, 1, &configs).await;
    broker
}

/// The base offsets of the segments in partition directory `dir`.
fn local_bases(dir: &std::path::Path) -> Vec<u64> {
    std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".log").and_then(|b| b.parse().ok())
        })
        .collect()
}

fn tweak(c: &mut strata_broker::config::BrokerConfig) {
    c.groups.initial_rebalance_delay_ms = 0;
    c.transactions.state_topic_partitions = 4;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_transactions_are_visible_and_aborted_ones_never() {
    let broker = TestBroker::start_with(tweak).await;
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "orders", 2, &[]).await;
    let b = bootstrap.clone();
    blocking(move || {
        let p = txn_producer(&b, "orders-writer", &[]);
        for (round, commit) in [("one", true), ("two", false), ("three", true)] {
            p.begin_transaction().expect("begin");
            send(&p, "orders", 0, &values(&format!("{round}-p0"), 10));
            send(&p, "orders", 1, &values(&format!("{round}-p1"), 5));
            if commit {
                p.commit_transaction(WAIT).expect("commit");
            } else {
                p.abort_transaction(WAIT).expect("abort");
            }
        }
    })
    .await;
    await_state(&broker, "orders-writer", "CompleteCommit").await;

    let b = bootstrap.clone();
    let committed =
        blocking(move || read_all(&b, "orders", 2, "read_committed", Duration::from_secs(2))).await;
    let mut expected: Vec<String> = ["one", "three"]
        .iter()
        .flat_map(|r| {
            let mut v = values(&format!("{r}-p0"), 10);
            v.extend(values(&format!("{r}-p1"), 5));
            v
        })
        .collect();
    expected.sort();
    assert_eq!(sorted_values(&committed), expected);
    // Per partition in order, and skipping the aborted batch and the markers' offsets.
    let p0: Vec<i64> = committed.iter().filter(|r| r.0 == 0).map(|r| r.1).collect();
    assert_eq!(p0.len(), 20);
    assert_eq!(p0[..10], (0..10).collect::<Vec<_>>()[..]);
    assert_eq!(p0[10], 22, "10 committed + marker, 10 aborted + marker");

    let b = bootstrap.clone();
    let everything =
        blocking(move || read_all(&b, "orders", 2, "read_uncommitted", Duration::from_secs(2)))
            .await;
    assert_eq!(
        everything.len(),
        45,
        "read_uncommitted sees aborted records too"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_transaction_holds_read_committed_consumers_until_it_ends() {
    let broker = TestBroker::start_with(tweak).await;
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "held", 1, &[]).await;
    let b = bootstrap.clone();
    let txn = blocking(move || {
        let p = txn_producer(&b, "holder", &[]);
        p.begin_transaction().expect("begin");
        send(&p, "held", 0, &values("txn", 5));
        // A non-transactional producer writes after the open transaction.
        let plain = plain_producer(&b);
        send(&plain, "held", 0, &values("plain", 5));
        p
    })
    .await;
    let (state, topics) = describe(&broker, "holder").await;
    assert_eq!(state, "Ongoing");
    assert_eq!(topics, vec![("held".to_string(), vec![0])]);

    let b = bootstrap.clone();
    let (held, uncommitted, lso) = blocking(move || {
        let held = read_all(&b, "held", 1, "read_committed", Duration::from_secs(2));
        let uncommitted = read_all(&b, "held", 1, "read_uncommitted", Duration::from_secs(1));
        let c = consumer(&b, "read_committed");
        let (_, lso) = c.fetch_watermarks("held", 0, WAIT).expect("watermarks");
        (held, uncommitted, lso)
    })
    .await;
    assert!(held.is_empty(), "read past the open transaction: {held:?}");
    assert_eq!(uncommitted.len(), 10);
    assert_eq!(
        lso, 0,
        "the last stable offset is the open transaction's first offset"
    );

    let b = bootstrap.clone();
    let released = blocking(move || {
        txn.commit_transaction(WAIT).expect("commit");
        read_all(&b, "held", 1, "read_committed", Duration::from_secs(2))
    })
    .await;
    let got: Vec<String> = released.into_iter().map(|r| r.2).collect();
    let mut expected = values("txn", 5);
    expected.extend(values("plain", 5));
    assert_eq!(got, expected, "in log order once the transaction committed");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_producer_is_fenced_and_its_transaction_aborted() {
    let broker = TestBroker::start_with(tweak).await;
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "fenced", 1, &[]).await;
    let b = bootstrap.clone();
    blocking(move || {
        let zombie = txn_producer(&b, "same-id", &[]);
        zombie.begin_transaction().expect("begin");
        send(&zombie, "fenced", 0, &values("zombie", 5));
        // A new instance with the same transactional id takes over.
        let next = txn_producer(&b, "same-id", &[]);
        let err = zombie
            .commit_transaction(WAIT)
            .expect_err("the zombie cannot commit");
        match err {
            KafkaError::Transaction(e) => assert!(e.is_fatal(), "fenced is fatal: {e:?}"),
            other => panic!("unexpected error {other:?}"),
        }
        next.begin_transaction().expect("begin");
        send(&next, "fenced", 0, &values("next", 5));
        next.commit_transaction(WAIT).expect("commit");
    })
    .await;
    let b = bootstrap.clone();
    let got =
        blocking(move || read_all(&b, "fenced", 1, "read_committed", Duration::from_secs(2))).await;
    let got: Vec<String> = got.into_iter().map(|r| r.2).collect();
    assert_eq!(got, values("next", 5));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_left_open_times_out_and_is_aborted() {
    let broker = TestBroker::start_with(tweak).await;
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "stuck", 1, &[]).await;
    let b = bootstrap.clone();
    let p = blocking(move || {
        let p = txn_producer(
            &b,
            "slow",
            &[
                ("transaction.timeout.ms", "2000"),
                ("message.timeout.ms", "2000"),
            ],
        );
        p.begin_transaction().expect("begin");
        send(&p, "stuck", 0, &values("late", 5));
        p
    })
    .await;
    await_state(&broker, "slow", "CompleteAbort").await;
    let b = bootstrap.clone();
    let (committed, lso, commit) = blocking(move || {
        let commit = p.commit_transaction(WAIT);
        let got = read_all(&b, "stuck", 1, "read_committed", Duration::from_secs(2));
        let c = consumer(&b, "read_committed");
        let (_, lso) = c.fetch_watermarks("stuck", 0, WAIT).expect("watermarks");
        (got, lso, commit)
    })
    .await;
    assert!(commit.is_err(), "a timed-out transaction cannot commit");
    assert!(
        committed.is_empty(),
        "aborted records were read: {committed:?}"
    );
    assert_eq!(lso, 6, "past the five records and the abort marker");

    // ListTransactions shows the id and its state.
    let mut raw = RawClient::connect(broker.addr()).await;
    let listed = raw
        .call(
            1,
            &ListTransactionsRequest::default()
                .with_state_filters(vec![StrBytes::from_static_str("CompleteAbort")])
                .with_duration_filter(-1),
        )
        .await;
    let ids: Vec<String> = listed
        .transaction_states
        .iter()
        .map(|s| s.transactional_id.0.to_string())
        .collect();
    assert_eq!(ids, vec!["slow".to_string()]);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_transform_produce_is_exactly_once_across_a_crash() {
    const INPUTS: usize = 300;
    let broker = TestBroker::start_with(tweak).await;
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "in", 2, &[]).await;
    create_topic(&bootstrap, "out", 2, &[]).await;
    let b = bootstrap.clone();
    blocking(move || {
        let p = plain_producer(&b);
        for partition in 0..2 {
            send(
                &p,
                "in",
                partition,
                &values(&format!("in{partition}"), INPUTS / 2),
            );
        }
    })
    .await;
    let b = bootstrap.clone();
    let crashed = blocking(move || pipeline(&b, Some(4))).await;
    assert_eq!(crashed, 4 * 20, "four committed batches before the crash");
    let b = bootstrap.clone();
    blocking(move || pipeline(&b, None)).await;

    let b = bootstrap.clone();
    let out =
        blocking(move || read_all(&b, "out", 2, "read_committed", Duration::from_secs(3))).await;
    let got = sorted_values(&out);
    let mut expected: Vec<String> = (0..2)
        .flat_map(|p| values(&format!("in{p}"), INPUTS / 2))
        .map(|v| format!("out-{v}"))
        .collect();
    expected.sort();
    assert_eq!(got.len(), INPUTS, "each input exactly once");
    assert_eq!(got, expected);
    let unique: BTreeSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), INPUTS);
    broker.stop().await;
}

/// One instance of a consume-transform-produce pipeline (group `pipeline`, transactional
/// id `pipeline-1`), 20 records per transaction. With `crash_after`, it commits that many
/// transactions, then writes one more without committing and stops as if killed; without,
/// it runs until the input is drained. Returns how many inputs it committed.
fn pipeline(bootstrap: &str, crash_after: Option<usize>) -> usize {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "pipeline")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    consumer.subscribe(&["in"]).expect("subscribe");
    let producer = txn_producer(bootstrap, "pipeline-1", &[]);
    let mut committed = 0;
    let mut transactions = 0;
    let mut quiet_since = Instant::now();
    loop {
        let mut batch = Vec::new();
        while batch.len() < 20 {
            match consumer.poll(Duration::from_millis(200)) {
                Some(m) => {
                    let m = m.expect("no consumer error");
                    let v = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                    batch.push((m.partition(), v));
                }
                None => break,
            }
        }
        if batch.is_empty() {
            if quiet_since.elapsed() > Duration::from_secs(5) && committed > 0 {
                return committed;
            }
            continue;
        }
        quiet_since = Instant::now();
        producer.begin_transaction().expect("begin");
        for (partition, v) in &batch {
            producer
                .send(
                    BaseRecord::<str, str>::to("out")
                        .partition(*partition)
                        .payload(&format!("out-{v}")),
                )
                .map_err(|(e, _)| e)
                .expect("queued");
        }
        let positions = consumer.position().expect("positions");
        let group = consumer.group_metadata().expect("group metadata");
        producer
            .send_offsets_to_transaction(&positions, &group, WAIT)
            .expect("send offsets");
        if crash_after == Some(transactions) {
            producer.flush(WAIT).expect("flushed");
            // Killed: neither the transaction nor the offsets are committed.
            return committed;
        }
        producer.commit_transaction(WAIT).expect("commit");
        committed += batch.len();
        transactions += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_survive_a_broker_restart() {
    let mut broker = TestBroker::start_with(tweak).await;
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "lasting", 1, &[]).await;
    let b = bootstrap.clone();
    let p = blocking(move || {
        let p = txn_producer(&b, "lasting-writer", &[]);
        p.begin_transaction().expect("begin");
        send(&p, "lasting", 0, &values("committed", 5));
        p.commit_transaction(WAIT).expect("commit");
        p.begin_transaction().expect("begin");
        send(&p, "lasting", 0, &values("aborted", 5));
        p.abort_transaction(WAIT).expect("abort");
        p.begin_transaction().expect("begin");
        send(&p, "lasting", 0, &values("open", 5));
        p
    })
    .await;
    broker.restart().await;
    let (state, _) = describe(&broker, "lasting-writer").await;
    assert_eq!(
        state, "Ongoing",
        "the open transaction is still open after the restart"
    );
    let b = bootstrap.clone();
    let (held, got) = blocking(move || {
        let held = read_all(&b, "lasting", 1, "read_committed", Duration::from_secs(2));
        p.commit_transaction(WAIT)
            .expect("commit after the restart");
        let got = read_all(&b, "lasting", 1, "read_committed", Duration::from_secs(2));
        (held, got)
    })
    .await;
    let held: Vec<String> = held.into_iter().map(|r| r.2).collect();
    assert_eq!(held, values("committed", 5), "held at the open transaction");
    let got: Vec<String> = got.into_iter().map(|r| r.2).collect();
    let mut expected = values("committed", 5);
    expected.extend(values("open", 5));
    assert_eq!(got, expected);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_from_object_storage_skips_aborted_transactions() {
    let broker = tiered_broker_with("archive").await;
    let bootstrap = broker.bootstrap();
    let b = bootstrap.clone();
    let expected = blocking(move || {
        let p = txn_producer(&b, "archiver", &[]);
        let mut expected = Vec::new();
        for round in 0..12 {
            let batch: Vec<String> = (0..20)
                .map(|i| format!("r{round:02}-{i:02}-{}", "x".repeat(40)))
                .collect();
            p.begin_transaction().expect("begin");
            send(&p, "archive", 0, &batch);
            if round % 3 == 1 {
                p.abort_transaction(WAIT).expect("abort");
            } else {
                p.commit_transaction(WAIT).expect("commit");
                expected.extend(batch);
            }
        }
        // Plain records after them roll the transactions' segments out of the active one.
        let plain = plain_producer(&b);
        let filler: Vec<String> = (0..100)
            .map(|i| format!("z-{i:03}-{}", "y".repeat(60)))
            .collect();
        send(&plain, "archive", 0, &filler);
        expected.extend(filler);
        expected
    })
    .await;
    // Everything sealed is uploaded and evicted: the transactions are only in the bucket.
    let dir = broker.data_dir().join("logs/archive-0");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let bases = local_bases(&dir);
        // 12 transactions of 20 records plus their markers end at offset 252.
        if bases.len() == 1 && bases[0] >= 252 {
            break;
        }
        assert!(Instant::now() < deadline, "local segments still {bases:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b = bootstrap.clone();
    let got =
        blocking(move || read_all(&b, "archive", 1, "read_committed", Duration::from_secs(3)))
            .await;
    let got: Vec<String> = got.into_iter().map(|r| r.2).collect();
    assert_eq!(got.len(), expected.len());
    assert_eq!(got, expected, "the aborted rounds are skipped, in order");
    let b = bootstrap.clone();
    let all =
        blocking(move || read_all(&b, "archive", 1, "read_uncommitted", Duration::from_secs(3)))
            .await;
    assert_eq!(all.len(), expected.len() + 4 * 20);
    let by_round: BTreeMap<String, usize> = all.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.2[..3].to_string()).or_default() += 1;
        m
    });
    assert_eq!(
        by_round.get("r01"),
        Some(&20),
        "aborted records are in the log"
    );
    broker.stop().await;
}

fn binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_strata-node"))
}

/// The broker coordinating transactional id `id`, asked of broker `via`.
async fn txn_coordinator(cluster: &ProcessCluster, via: i32, id: &str) -> i32 {
    find_txn_coordinator(cluster.kafka_addr(via), id).await
}

/// Three brokers: a transaction's partitions are led by several of them (so verification and
/// markers cross brokers), and killing the coordinator (kill -9) while a transaction is open
/// loses nothing: the next coordinator loads it, the producer commits it there, and
/// read_committed consumers see exactly the committed transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_span_brokers_and_survive_the_coordinators_death() {
    let mut cluster = ProcessCluster::start(binary(), 3).await;
    let bootstrap = cluster.bootstrap();
    let client = strata_client::Client::connect(&bootstrap)
        .await
        .expect("connect");
    let configs = BTreeMap::from([("min.insync.replicas".to_owned(), "2".to_owned())]);
    client
        .create_topic("ledger", 3, 3, &configs)
        .await
        .expect("create");
    let (info, _) = client.describe_topic("ledger").await.expect("describe");
    let leaders: BTreeSet<i32> = info.partitions.iter().map(|p| p.leader).collect();
    assert!(leaders.len() > 1, "partitions all led by {leaders:?}");

    let b = bootstrap.clone();
    let p = blocking(move || {
        let p = txn_producer(&b, "ledger-writer", &[]);
        for (round, commit) in [("one", true), ("two", false), ("three", true)] {
            p.begin_transaction().expect("begin");
            for part in 0..3 {
                send(&p, "ledger", part, &values(&format!("{round}-p{part}"), 10));
            }
            if commit {
                p.commit_transaction(WAIT).expect("commit");
            } else {
                p.abort_transaction(WAIT).expect("abort");
            }
        }
        p.begin_transaction().expect("begin");
        for part in 0..3 {
            send(&p, "ledger", part, &values(&format!("four-p{part}"), 10));
        }
        p
    })
    .await;
    let via = cluster.ids()[0];
    let coordinator = txn_coordinator(&cluster, via, "ledger-writer").await;
    cluster.kill(coordinator).await;
    blocking(move || {
        p.commit_transaction(Duration::from_secs(90))
            .expect("commit with the next coordinator");
    })
    .await;
    let live = cluster
        .ids()
        .into_iter()
        .find(|id| *id != coordinator)
        .expect("a live broker");
    let next = txn_coordinator(&cluster, live, "ledger-writer").await;
    assert_ne!(next, coordinator, "another broker coordinates the id now");

    let b = bootstrap.clone();
    let committed =
        blocking(move || read_all(&b, "ledger", 3, "read_committed", Duration::from_secs(3))).await;
    let mut expected: Vec<String> = ["one", "three", "four"]
        .iter()
        .flat_map(|r| (0..3).flat_map(move |part| values(&format!("{r}-p{part}"), 10)))
        .collect();
    expected.sort();
    assert_eq!(sorted_values(&committed), expected);
    let b = bootstrap.clone();
    let all =
        blocking(move || read_all(&b, "ledger", 3, "read_uncommitted", Duration::from_secs(3)))
            .await;
    assert_eq!(all.len(), 120, "the aborted round is in the log, unread");
}

/// Runs stratactl with `args` against `bootstrap`; returns what it printed.
async fn ctl(bootstrap: &str, args: &[&str]) -> Result<String, strata_client::cli::CliError> {
    let mut out = Vec::new();
    let argv = ["stratactl", "--bootstrap", bootstrap]
        .into_iter()
        .chain(args.iter().copied());
    strata_client::cli::run(argv, &mut "".as_bytes(), &mut out).await?;
    Ok(String::from_utf8(out).expect("utf-8 output"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stratactl_lists_describes_and_aborts_transactions() {
    let broker = TestBroker::start_with(tweak).await;
    let b = broker.bootstrap();
    create_topic(&b, "ops", 2, &[]).await;
    let bootstrap = b.clone();
    let p = blocking(move || {
        let p = txn_producer(&bootstrap, "ops-writer", &[]);
        p.begin_transaction().expect("begin");
        send(&p, "ops", 0, &values("a", 3));
        send(&p, "ops", 1, &values("b", 2));
        p
    })
    .await;

    let out = ctl(&b, &["transaction", "list"]).await.expect("list");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("TRANSACTIONAL ID"), "{out}");
    assert!(
        lines[1].starts_with("ops-writer") && lines[1].ends_with("Ongoing"),
        "{out}"
    );
    let out = ctl(&b, &["--json", "transaction", "describe", "ops-writer"])
        .await
        .expect("describe");
    let d: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(d["state"], "Ongoing");
    assert_eq!(d["partitions"]["ops"], serde_json::json!([0, 1]));
    assert!(d["start_ms"].as_i64().is_some_and(|t| t > 0), "{d}");

    let out = ctl(&b, &["transaction", "abort", "ops-writer"])
        .await
        .expect("abort");
    assert!(out.contains("CompleteAbort"), "{out}");
    let again = ctl(&b, &["transaction", "abort", "ops-writer"])
        .await
        .expect_err("nothing open to abort");
    assert!(again.to_string().contains("no open transaction"), "{again}");
    let unknown = ctl(&b, &["transaction", "describe", "nobody"])
        .await
        .expect_err("unknown id");
    assert!(
        unknown.to_string().contains("TransactionalIdNotFound"),
        "{unknown}"
    );

    let bootstrap = b.clone();
    let (commit, read) = blocking(move || {
        let commit = p.commit_transaction(WAIT);
        let read = read_all(
            &bootstrap,
            "ops",
            2,
            "read_committed",
            Duration::from_secs(2),
        );
        (commit, read)
    })
    .await;
    assert!(commit.is_err(), "the aborted transaction cannot commit");
    assert!(read.is_empty(), "aborted records were read: {read:?}");
    broker.stop().await;
}

/// A transactional Produce of one record (producer `id`/`epoch`, sequence `seq`) to
/// `topic`/0 at `version`; the partition's error code.
async fn produce_txn(
    raw: &mut RawClient,
    version: i16,
    txn: &str,
    topic: &str,
    (id, epoch, seq): (i64, i16, i32),
) -> i16 {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest, TopicName};
    let batch = strata_storage::BatchBuilder::new()
        .producer(id, epoch, seq)
        .transactional()
        .value(None, format!("{epoch}-{seq}").as_bytes(), 1_750_000_000_000)
        .build();
    let resp = raw
        .call(
            version,
            &ProduceRequest::default()
                .with_transactional_id(Some(TransactionalId(StrBytes::from_string(txn.to_owned()))))
                .with_acks(-1)
                .with_timeout_ms(5000)
                .with_topic_data(vec![
                    TopicProduceData::default()
                        .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                        .with_partition_data(vec![
                            PartitionProduceData::default()
                                .with_index(0)
                                .with_records(Some(bytes::Bytes::from(batch))),
                        ]),
                ]),
        )
        .await;
    resp.responses[0].partition_responses[0].error_code
}

/// EndTxn at `version`: the error code, producer id and epoch answered.
async fn end_txn(
    raw: &mut RawClient,
    version: i16,
    txn: &str,
    (id, epoch): (i64, i16),
    commit: bool,
) -> (i16, i64, i16) {
    use kafka_protocol::messages::{EndTxnRequest, ProducerId};
    let resp = raw
        .call(
            version,
            &EndTxnRequest::default()
                .with_transactional_id(TransactionalId(StrBytes::from_string(txn.to_owned())))
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(epoch)
                .with_committed(commit),
        )
        .await;
    (resp.error_code, resp.producer_id.0, resp.producer_epoch)
}

/// KIP-890 on the wire. Part 1: a transactional batch for a partition the transaction does
/// not hold is refused (the leader asks the coordinator). Part 2 (transaction version 2, the
/// Java client's default from Kafka 4.0): Produce v12 adds the partition itself, EndTxn v5
/// bumps the epoch at every end, so a late write of the ended transaction is refused, and a
/// retried EndTxn gets the bumped epoch again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kip_890_verifies_first_writes_and_transaction_version_2_bumps_every_end() {
    use kafka_protocol::messages::{InitProducerIdRequest, ProducerId};
    let broker = TestBroker::start_with(tweak).await;
    create_topic(&broker.bootstrap(), "tv2", 1, &[]).await;
    let txn = "tv2-writer";
    find_txn_coordinator(broker.addr(), txn).await;
    let mut raw = RawClient::connect(broker.addr()).await;
    let deadline = Instant::now() + WAIT;
    let (id, epoch) = loop {
        let resp = raw
            .call(
                5,
                &InitProducerIdRequest::default()
                    .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str(txn))))
                    .with_transaction_timeout_ms(60_000)
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1),
            )
            .await;
        if resp.error_code == 0 {
            break (resp.producer_id.0, resp.producer_epoch);
        }
        assert!(
            Instant::now() < deadline,
            "InitProducerId: {}",
            resp.error_code
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(epoch, 0);

    // Part 1: v11 does not add partitions; this one was never added.
    assert_eq!(
        produce_txn(&mut raw, 11, txn, "tv2", (id, 0, 0)).await,
        48,
        "INVALID_TXN_STATE"
    );
    // Part 2: v12 adds it.
    assert_eq!(produce_txn(&mut raw, 12, txn, "tv2", (id, 0, 0)).await, 0);
    let (state, topics) = describe(&broker, txn).await;
    assert_eq!(state, "Ongoing");
    assert_eq!(topics, vec![("tv2".to_string(), vec![0])]);
    assert_eq!(end_txn(&mut raw, 5, txn, (id, 0), true).await, (0, id, 1));
    // A late write of the committed transaction, at its old epoch.
    assert_eq!(
        produce_txn(&mut raw, 12, txn, "tv2", (id, 0, 1)).await,
        47,
        "INVALID_PRODUCER_EPOCH"
    );
    // The retried EndTxn is answered with the bumped epoch; an abort of it is refused.
    assert_eq!(end_txn(&mut raw, 5, txn, (id, 0), true).await, (0, id, 1));
    let (refused, _, _) = end_txn(&mut raw, 5, txn, (id, 0), false).await;
    assert_eq!(refused, 48, "aborting what committed: INVALID_TXN_STATE");
    // The next transaction at epoch 1, aborted: epoch 2.
    assert_eq!(produce_txn(&mut raw, 12, txn, "tv2", (id, 1, 0)).await, 0);
    assert_eq!(end_txn(&mut raw, 5, txn, (id, 1), false).await, (0, id, 2));
    // An empty transaction may be aborted too, bumping the epoch.
    assert_eq!(end_txn(&mut raw, 5, txn, (id, 2), false).await, (0, id, 3));

    let b = broker.bootstrap();
    let (committed, all) = blocking(move || {
        let committed = read_all(&b, "tv2", 1, "read_committed", Duration::from_secs(2));
        let all = read_all(&b, "tv2", 1, "read_uncommitted", Duration::from_secs(1));
        (committed, all)
    })
    .await;
    let committed: Vec<String> = committed.into_iter().map(|r| r.2).collect();
    assert_eq!(committed, vec!["0-0".to_string()]);
    assert_eq!(all.len(), 2, "the aborted record is in the log");
    broker.stop().await;
}

/// Asks `addr` for `id`'s coordinator until there is one (the first ask creates the topic).
async fn find_txn_coordinator(addr: std::net::SocketAddr, id: &str) -> i32 {
    let mut raw = RawClient::connect(addr).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let resp = raw
            .call(
                3,
                &FindCoordinatorRequest::default()
                    .with_key(StrBytes::from_string(id.to_owned()))
                    .with_key_type(1),
            )
            .await;
        if resp.error_code == 0 {
            return resp.node_id.0;
        }
        assert!(
            Instant::now() < deadline,
            "no coordinator: {}",
            resp.error_code
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A replica whose log starts at the object store's end (a wiped disk here; a new or wiped
/// follower in a cluster) learns from the manifest which transactions are open there: it
/// holds read_committed consumers at one begun below its log, and indexes its abort, so a
/// replay from object storage still skips the aborted records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_restarted_from_object_storage_keeps_the_transactions_open_across_it() {
    let mut broker = tiered_broker_with("span").await;
    let bootstrap = broker.bootstrap();
    let b = bootstrap.clone();
    let p = blocking(move || {
        let p = txn_producer(&b, "spanner", &[]);
        p.begin_transaction().expect("begin");
        let open: Vec<String> = (0..30)
            .map(|i| format!("open-{i:02}-{}", "o".repeat(80)))
            .collect();
        send(&p, "span", 0, &open);
        let plain = plain_producer(&b);
        let filler: Vec<String> = (0..100)
            .map(|i| format!("z-{i:03}-{}", "y".repeat(80)))
            .collect();
        send(&plain, "span", 0, &filler);
        // Padding rolls the filler out of the active segment, which is never uploaded: a
        // single broker's wiped disk loses what is not in the bucket (in a cluster the
        // leader has it).
        let padding: Vec<String> = (0..60)
            .map(|i| format!("pad-{i:03}-{}", "p".repeat(80)))
            .collect();
        send(&plain, "span", 0, &padding);
        p
    })
    .await;
    // The transaction's and the filler's records are uploaded and gone from the local disk.
    let dir = broker.data_dir().join("logs/span-0");
    let deadline = Instant::now() + WAIT;
    while local_bases(&dir)
        .into_iter()
        .min()
        .is_none_or(|base| base < 130)
    {
        assert!(Instant::now() < deadline, "the segments were not uploaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    broker
        .restart_after(|d| std::fs::remove_dir_all(d.join("logs/span-0")).expect("wipe"))
        .await;

    let b = bootstrap.clone();
    let (held, lso, p) = blocking(move || {
        let held = read_all(&b, "span", 1, "read_committed", Duration::from_secs(2));
        let c = consumer(&b, "read_committed");
        let (_, lso) = c.fetch_watermarks("span", 0, WAIT).expect("watermarks");
        (held, lso, p)
    })
    .await;
    assert!(
        held.is_empty(),
        "read past the open transaction: {} records",
        held.len()
    );
    assert_eq!(
        lso, 0,
        "the open transaction's first offset is still the last stable offset"
    );

    let b = bootstrap.clone();
    let (committed, all) = blocking(move || {
        p.abort_transaction(WAIT).expect("abort after the restart");
        let committed = read_all(&b, "span", 1, "read_committed", Duration::from_secs(2));
        let all = read_all(&b, "span", 1, "read_uncommitted", Duration::from_secs(2));
        (committed, all)
    })
    .await;
    let count = |records: &[(i32, i64, String)], prefix: &str| {
        records.iter().filter(|r| r.2.starts_with(prefix)).count()
    };
    assert_eq!((count(&all, "open-"), count(&all, "z-")), (30, 100));
    assert_eq!(
        count(&committed, "open-"),
        0,
        "the aborted records are skipped"
    );
    assert_eq!(count(&committed, "z-"), 100);
    broker.stop().await;
}

/// A transactional id nobody uses for `transactions.id_expiration_ms` is forgotten (Kafka's
/// `transactional.id.expiration.ms`); one with a transaction open is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_transactional_ids_expire_but_open_ones_stay() {
    let broker = TestBroker::start_with(|c| {
        tweak(c);
        c.transactions.id_expiration_ms = 1_000;
    })
    .await;
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "expiring", 1, &[]).await;
    let b = bootstrap.clone();
    let open = blocking(move || {
        let done = txn_producer(&b, "finished", &[]);
        done.begin_transaction().expect("begin");
        send(&done, "expiring", 0, &values("done", 1));
        done.commit_transaction(WAIT).expect("commit");
        let open = txn_producer(&b, "still-open", &[]);
        open.begin_transaction().expect("begin");
        send(&open, "expiring", 0, &values("open", 1));
        open
    })
    .await;
    await_state(&broker, "finished", "CompleteCommit").await;
    let mut raw = RawClient::connect(broker.addr()).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let resp = raw
            .call(
                0,
                &DescribeTransactionsRequest::default().with_transactional_ids(vec![
                    TransactionalId(StrBytes::from_static_str("finished")),
                ]),
            )
            .await;
        // TRANSACTIONAL_ID_NOT_FOUND once it expired.
        if resp.transaction_states[0].error_code == 105 {
            break;
        }
        assert!(Instant::now() < deadline, "the finished id never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (state, _) = describe(&broker, "still-open").await;
    assert_eq!(state, "Ongoing", "an open transaction keeps its id");
    blocking(move || open.commit_transaction(WAIT).expect("commit")).await;
    broker.stop().await;
}
