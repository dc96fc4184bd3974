//! Clusters of real `strata` processes on loopback ports (combined mode: each a controller
//! voter and a broker; or brokers beside dedicated controllers), as users deploy three
//! brokers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::{
    DescribeClusterRequest, FindCoordinatorRequest, GroupId, OffsetFetchRequest,
};
use kafka_protocol::protocol::StrBytes;
use strata_client::{Client, NewRecord, PartitionInfo};
use strata_tests::RawClient;
use strata_tests::cluster::{Options, ProcessCluster};
use strata_tests::proxy::{Cut, Peer};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_strata-node"))
}

fn record(i: usize) -> NewRecord {
    NewRecord {
        key: Some(Bytes::from(format!("k{i}"))),
        value: Some(Bytes::from(format!("v{i}"))),
        ..NewRecord::default()
    }
}

/// Polls `topic`/0 as Metadata describes it every 50 ms until `done` holds, for up to
/// `within`; returns it, or panics with the last description and `why`.
async fn until_partition(
    client: &Client,
    topic: &str,
    within: Duration,
    why: &str,
    done: impl Fn(&PartitionInfo) -> bool,
) -> PartitionInfo {
    let deadline = std::time::Instant::now() + within;
    loop {
        let last = client
            .describe_topic(topic)
            .await
            .map(|(info, _)| info.partitions[0].clone());
        if let Ok(p) = &last
            && done(p)
        {
            return p.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{why} within {within:?}: {topic} is {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every value of `topic`/`partition`, read from its leader.
async fn values(client: &Client, topic: &str, partition: i32) -> Vec<Bytes> {
    let (records, _) = client
        .fetch(topic, partition, 0, 1 << 20, 100)
        .await
        .expect("fetch");
    records.into_iter().filter_map(|r| r.value).collect()
}

#[tokio::test]
async fn three_processes_form_one_cluster_and_a_stopped_one_comes_back_with_its_data() {
    let mut cluster = ProcessCluster::start(binary(), 3).await;
    let client = Client::connect(&cluster.bootstrap())
        .await
        .expect("connect");
    let (brokers, controller) = client.cluster().await.expect("metadata");
    let ids: BTreeSet<i32> = brokers.iter().map(|b| b.id).collect();
    assert_eq!(ids, BTreeSet::from([1, 2, 3]));
    assert!(ids.contains(&controller), "controller {controller}");
    for b in &brokers {
        assert_eq!(
            format!("{}:{}", b.host, b.port),
            cluster.kafka_addr(b.id).to_string(),
            "broker {} advertises its own listener",
            b.id
        );
    }

    // DescribeCluster (what admin clients use) on every node lists every broker too.
    for id in &ids {
        let mut raw = RawClient::connect(cluster.kafka_addr(*id)).await;
        let described = raw.call(0, &DescribeClusterRequest::default()).await;
        assert_eq!(described.error_code, 0);
        let listed: BTreeSet<i32> = described.brokers.iter().map(|b| b.broker_id.0).collect();
        assert_eq!(listed, ids, "DescribeCluster on broker {id}");
        assert!(ids.contains(&described.controller_id.0));
    }

    // Three live brokers: a topic created without a replication factor gets three copies, and
    // so does the offsets topic the group coordinator made while the cluster started.
    client
        .create_topic("defaulted", 1, -1, &BTreeMap::new())
        .await
        .expect("create");
    for topic in ["defaulted", "__consumer_offsets"] {
        let mut tries = 0;
        let info = loop {
            match client.describe_topic(topic).await {
                Ok((info, _)) => break info,
                Err(e) => {
                    tries += 1;
                    assert!(tries < 100, "{topic}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        assert!(!info.partitions.is_empty(), "{topic}");
        for p in &info.partitions {
            assert_eq!(p.replicas.len(), 3, "{topic}: {p:?}");
        }
    }
    // Every broker names the same coordinator for a group (the leader of its offsets
    // partition), and what is committed through one is read through any other.
    let mut coordinators = BTreeSet::new();
    for id in &ids {
        let mut raw = RawClient::connect(cluster.kafka_addr(*id)).await;
        let request = FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("g"));
        // COORDINATOR_NOT_AVAILABLE until the broker sees the offsets topic's leaders.
        let mut tries = 0;
        let found = loop {
            let found = raw.call(3, &request).await;
            tries += 1;
            if found.error_code == 0 || tries == 100 {
                break found;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(found.error_code, 0, "FindCoordinator on broker {id}");
        coordinators.insert(found.node_id.0);
    }
    assert_eq!(coordinators.len(), 1, "{coordinators:?}");
    let offsets = BTreeMap::from([(("defaulted".to_owned(), 0), 7)]);
    // The coordinator may not have the new topic in its metadata yet
    // (UNKNOWN_TOPIC_OR_PARTITION): a client retries that.
    let mut tries = 0;
    while let Err(e) = client.commit_offsets("g", &offsets).await {
        tries += 1;
        assert!(tries < 100, "commit: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in &ids {
        let one = Client::connect(&cluster.kafka_addr(*id).to_string())
            .await
            .expect("connect");
        let committed = one.committed_offsets("g").await.expect("offsets");
        assert_eq!(committed, offsets, "read through broker {id}");
    }
    client
        .create_topic("spread", 6, 1, &BTreeMap::new())
        .await
        .expect("create");
    let (info, _) = client.describe_topic("spread").await.expect("describe");
    // The topic spreads over every broker, whichever joined first and leads the offsets topic.
    let mut per_broker: BTreeMap<i32, usize> = BTreeMap::new();
    for p in &info.partitions {
        *per_broker.entry(p.leader).or_default() += 1;
    }
    assert_eq!(per_broker, BTreeMap::from([(1, 2), (2, 2), (3, 2)]));
    // Each partition is produced to and read back through the one client, which follows
    // the leaders.
    for p in 0..6 {
        let records: Vec<NewRecord> = (0..20).map(|i| record(p as usize * 100 + i)).collect();
        // The leader's own metadata may not have the new topic yet (it can lag the broker
        // that created it): retriable, as for any Kafka client.
        let mut tries = 0;
        while let Err(e) = client.produce("spread", p, &records, -1).await {
            tries += 1;
            assert!(tries < 100, "produce to {p}: {e}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(values(&client, "spread", p).await.len(), 20);
    }

    // A SIGTERM stops a broker cleanly; its partitions have no other replica, so they wait
    // for it, and it comes back leading them with everything acknowledged.
    let stopped = info.partitions[0].leader;
    assert_eq!(cluster.terminate(stopped).await, Some(0), "clean exit");
    cluster.wait_for_brokers(2, Duration::from_secs(30)).await;
    cluster.restart(stopped);
    cluster.wait_for_brokers(3, Duration::from_secs(60)).await;
    let client = Client::connect(&cluster.bootstrap())
        .await
        .expect("connect");
    for p in 0..6 {
        let mut got = Vec::new();
        for _ in 0..100 {
            match client.fetch("spread", p, 0, 1 << 20, 100).await {
                Ok((records, _)) => {
                    got = records;
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        assert_eq!(
            got.len(),
            20,
            "partition {p} after the restart; {}",
            cluster.logs()
        );
    }
}

/// kill -9 of a broker under acks=all load: its partition is unavailable until it returns
/// (one replica), the others carry on, and every acknowledged record is there afterwards at
/// the offset it was acknowledged with.
#[tokio::test]
async fn a_killed_broker_loses_nothing_it_acknowledged() {
    let mut cluster = ProcessCluster::start(binary(), 3).await;
    let client = std::sync::Arc::new(
        Client::connect(&cluster.bootstrap())
            .await
            .expect("connect"),
    );
    client
        .create_topic("durable", 3, 1, &BTreeMap::new())
        .await
        .expect("create");
    let (info, _) = client.describe_topic("durable").await.expect("describe");
    let victim = info.partitions[0].leader;

    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let load = {
        let (client, acked) = (client.clone(), acked.clone());
        tokio::spawn(async move {
            let mut failures = 0;
            for i in 0..600usize {
                let p = (i % 3) as i32;
                match client.produce("durable", p, &[record(i)], -1).await {
                    Ok(base) => acked
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((p, base, i)),
                    Err(_) => {
                        failures += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            failures
        })
    };
    while acked.lock().unwrap_or_else(|e| e.into_inner()).len() < 150 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster.kill(victim).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.restart(victim);
    let failures = load.await.expect("load");
    cluster.wait_for_brokers(3, Duration::from_secs(60)).await;

    let acked = acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(
        failures > 0,
        "the killed broker's partition refused writes while it was down"
    );
    let on_victim = acked
        .iter()
        .filter(|(p, _, _)| info.partitions[*p as usize].leader == victim)
        .count();
    assert!(
        on_victim > 50,
        "{on_victim} acknowledged on the killed broker"
    );
    let client = Client::connect(&cluster.bootstrap())
        .await
        .expect("connect");
    for (p, base, i) in &acked {
        let mut found = None;
        for _ in 0..100 {
            if let Ok((records, _)) = client.fetch("durable", *p, *base, 4096, 100).await {
                found = records.into_iter().find(|r| r.offset == *base);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let value = found.and_then(|r| r.value);
        assert_eq!(
            value,
            Some(Bytes::from(format!("v{i}"))),
            "record {i} acknowledged at {p}/{base}"
        );
    }
}

/// Produces `records` with acks=all to `topic`/0, retrying what fails (a leader change);
/// returns each record's index with the offset it was acknowledged at.
async fn produce_acked(
    client: &Client,
    topic: &str,
    records: std::ops::Range<usize>,
) -> Vec<(i64, usize)> {
    let mut acked = Vec::new();
    for i in records {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            match client.produce(topic, 0, &[record(i)], -1).await {
                Ok(base) => {
                    acked.push((base, i));
                    break;
                }
                Err(e) => {
                    assert!(std::time::Instant::now() < deadline, "record {i}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    acked
}

/// Reads `topic`/0 from offset 0 until it has as many records as `acked` and checks every
/// `(offset, index)` there holds `v<index>`; returns offset → value as read.
async fn assert_acknowledged(
    client: &Client,
    topic: &str,
    acked: &[(i64, usize)],
) -> BTreeMap<i64, Option<Bytes>> {
    let mut seen = BTreeMap::new();
    let mut offset = 0;
    while seen.len() < acked.len() {
        let (records, _) = client
            .fetch(topic, 0, offset, 1 << 20, 500)
            .await
            .expect("fetch");
        assert!(!records.is_empty(), "{topic} stopped at {offset}");
        for r in records {
            offset = r.offset + 1;
            seen.insert(r.offset, r.value);
        }
    }
    for (base, i) in acked {
        assert_eq!(
            seen.get(base).cloned().flatten(),
            Some(Bytes::from(format!("v{i}"))),
            "record {i} acknowledged at {topic}/{base}"
        );
    }
    seen
}

/// Kills `leader` (SIGKILL) and writes 200 more acks=all records to `topic`/0, which must
/// resume within 20 s; then checks every record in `acked` (these included) is there at its
/// offset. Returns a client connected afresh.
async fn kill_leader_under_writes(
    cluster: &mut ProcessCluster,
    client: &Client,
    topic: &str,
    leader: i32,
    acked: &mut Vec<(i64, usize)>,
) -> Client {
    let next = acked.len();
    cluster.kill(leader).await;
    let killed_at = std::time::Instant::now();
    acked.extend(produce_acked(client, topic, next..next + 200).await);
    let failover = killed_at.elapsed();
    assert!(
        failover < Duration::from_secs(20),
        "writes resumed after {failover:?}"
    );
    // Every acknowledged record, at its offset, from whichever replica leads now.
    let client = Client::connect(&cluster.bootstrap())
        .await
        .expect("connect");
    assert_acknowledged(&client, topic, acked).await;
    client
}

/// A three-node cluster with topic `name` (one partition, three copies, min.insync.replicas
/// 2, plus `configs`); returns the cluster, a client and the partition's leader.
async fn three_copies(
    name: &str,
    settings: &[&str],
    configs: &[(&str, String)],
) -> (ProcessCluster, Client, i32) {
    let cluster = ProcessCluster::start_with(binary(), 3, settings).await;
    let client = Client::connect(&cluster.bootstrap())
        .await
        .expect("connect");
    let mut all = BTreeMap::from([("min.insync.replicas".to_owned(), "2".to_owned())]);
    all.extend(configs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    client.create_topic(name, 1, 3, &all).await.expect("create");
    let (info, _) = client.describe_topic(name).await.expect("describe");
    assert_eq!(info.partitions[0].replicas.len(), 3);
    let leader = info.partitions[0].leader;
    (cluster, client, leader)
}

/// Three copies, min.insync.replicas=2: kill -9 the leader under acks=all writes; another
/// replica leads within the session timeout plus a few seconds, writes carry on, and every
/// acknowledged record is there; the killed broker comes back into the ISR.
#[tokio::test]
async fn a_replicated_partition_loses_nothing_when_its_leader_is_killed() {
    let (mut cluster, client, leader) = three_copies("triple", &[], &[]).await;
    let mut acked = produce_acked(&client, "triple", 0..200).await;

    let client =
        kill_leader_under_writes(&mut cluster, &client, "triple", leader, &mut acked).await;
    let (now, _) = client.describe_topic("triple").await.expect("describe");
    assert_ne!(now.partitions[0].leader, leader);

    // The killed broker returns, copies what it missed, and is in sync again.
    cluster.restart(leader);
    let back = "the killed broker back in the ISR";
    until_partition(&client, "triple", Duration::from_secs(60), back, |p| {
        p.isr.contains(&leader)
    })
    .await;
}

/// Three brokers in `remote` mode beside a quorum of three dedicated controllers: only the
/// brokers are in Metadata, `__consumer_offsets` waits for all three, and losing the
/// controller leader and then a partition's leader (kill -9 both) loses nothing acknowledged
/// while the quorum and the partition carry on elsewhere.
#[tokio::test]
async fn brokers_beside_a_dedicated_quorum_survive_losing_its_leader_and_theirs() {
    let options = Options {
        controllers: 3,
        ..Options::default()
    };
    let mut cluster = ProcessCluster::start_opts(binary(), 3, options).await;
    assert_eq!(cluster.controller_ids(), [4, 5, 6]);
    let client = Client::connect(&cluster.bootstrap())
        .await
        .expect("connect");
    let (brokers, _) = client.cluster().await.expect("metadata");
    let ids: BTreeSet<i32> = brokers.iter().map(|b| b.id).collect();
    assert_eq!(ids, BTreeSet::from([1, 2, 3]), "only brokers are listed");
    let configs = BTreeMap::from([("min.insync.replicas".to_owned(), "2".to_owned())]);
    client
        .create_topic("beside", 1, 3, &configs)
        .await
        .expect("create");
    let mut acked = produce_acked(&client, "beside", 0..100).await;

    let quorum_leader = cluster.controller_leader().await.expect("a quorum leader");
    assert!(cluster.controller_ids().contains(&quorum_leader));
    cluster.kill(quorum_leader).await;
    acked.extend(produce_acked(&client, "beside", 100..200).await);
    // The quorum's new leader takes metadata changes.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while let Err(e) = client.create_topic("later", 1, 3, &BTreeMap::new()).await {
        assert!(
            std::time::Instant::now() < deadline,
            "create after the loss: {e}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (info, _) = client.describe_topic("beside").await.expect("describe");
    let leader = info.partitions[0].leader;
    let client =
        kill_leader_under_writes(&mut cluster, &client, "beside", leader, &mut acked).await;

    // Both come back; the broker rejoins the ISR.
    cluster.restart(quorum_leader);
    cluster.restart(leader);
    let back = "the killed broker back in the ISR";
    until_partition(&client, "beside", Duration::from_secs(60), back, |p| {
        p.isr.contains(&leader)
    })
    .await;
    // Three brokers were expected, so the offsets topic has three copies.
    let (offsets, _) = client
        .describe_topic("__consumer_offsets")
        .await
        .expect("the offsets topic");
    assert!(offsets.partitions.iter().all(|p| p.replicas.len() == 3));
}

/// SIGTERM of a partition's leader while librdkafka writes with acks=all: the broker hands its
/// leadership over before it stops serving, so the producer sees no error at all (it retries
/// what the old leader answers NOT_LEADER_OR_FOLLOWER, as Kafka clients do), and every record
/// is there once.
#[tokio::test]
async fn a_sigterm_during_acks_all_writes_costs_the_producer_no_error() {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let (mut cluster, client, leader) = three_copies("rolling", &[], &[]).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "60000")
        .create()
        .expect("producer");
    const RECORDS: usize = 3_000;
    let mut deliveries = Vec::with_capacity(RECORDS);
    let mut stopped = None;
    for i in 0..RECORDS {
        let value = format!("v{i}");
        let record = FutureRecord::<(), _>::to("rolling")
            .partition(0)
            .payload(&value);
        deliveries.push(producer.send_result(record).expect("queued"));
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if i == RECORDS / 3 {
            stopped = Some(cluster.terminate(leader).await);
        }
    }
    assert_eq!(stopped, Some(Some(0)), "clean exit on SIGTERM");
    let mut errors = Vec::new();
    for d in deliveries {
        match d.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => errors.push(e.to_string()),
            Err(e) => errors.push(e.to_string()),
        }
    }
    assert!(
        errors.is_empty(),
        "{} delivery errors: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );

    let mut values = BTreeSet::new();
    let mut offset = 0;
    let mut total = 0;
    while total < RECORDS {
        let (records, _) = client
            .fetch("rolling", 0, offset, 1 << 20, 500)
            .await
            .expect("fetch");
        assert!(!records.is_empty(), "stopped at {offset} of {RECORDS}");
        for r in records {
            offset = r.offset + 1;
            total += 1;
            values.insert(r.value);
        }
    }
    assert_eq!(total, RECORDS, "no duplicates");
    assert_eq!(values.len(), RECORDS);
}

/// Sum of the `.log` files in `dir`.
fn log_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Records of 1 KiB [`fill_and_tier`] writes.
const TIERED_RECORDS: usize = 16 * 1024;

/// Settings and topic configs under which a partition tiers within a second or two.
const TIERING_SETTINGS: [&str; 2] = [
    "object_store.upload_interval_ms=200",
    "topics.flush_check_interval_ms=200",
];

fn tiering_configs() -> [(&'static str, String); 2] {
    [
        ("segment.bytes", (1 << 20).to_string()),
        ("local.retention.bytes", (2 << 20).to_string()),
    ]
}

/// Writes [`TIERED_RECORDS`] records of 1 KiB to `topic`/0 with acks=all and waits until all
/// but the active segment and a little is in the object store; returns the log end and the
/// end of what is uploaded.
async fn fill_and_tier(cluster: &ProcessCluster, client: &Client, topic: &str) -> (i64, i64) {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let payload = vec![b'x'; 1024];
    let mut deliveries = Vec::with_capacity(TIERED_RECORDS);
    for _ in 0..TIERED_RECORDS {
        let record = FutureRecord::<(), _>::to(topic)
            .partition(0)
            .payload(&payload);
        deliveries.push(producer.send_result(record).expect("queued"));
    }
    for d in deliveries {
        d.await.expect("delivered").expect("acknowledged");
    }
    let end = client.list_offset(topic, 0, -1).await.expect("end");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let last = client.list_offset(topic, 0, -5).await.expect("remote end");
        if last + 1 >= end - 2_000 {
            return (end, last + 1);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "uploaded to {last} of {end}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A follower whose disk is wiped starts from the object store: its copy begins at the end of
/// what is uploaded, so it downloads only the tail from its leader, and it is back in the ISR
/// within seconds.
#[tokio::test]
async fn a_wiped_follower_copies_only_the_tail_and_rejoins_the_isr() {
    let (mut cluster, client, leader) =
        three_copies("tiered", &TIERING_SETTINGS, &tiering_configs()).await;
    // Any replica but the leader (three copies, ids 1..=3).
    let follower = (1..=3).find(|r| *r != leader).expect("a follower");
    let (end, uploaded) = fill_and_tier(&cluster, &client, "tiered").await;

    cluster.kill(follower).await;
    // Fenced one session timeout later, it leaves the ISR.
    let out = "out of the ISR";
    until_partition(&client, "tiered", Duration::from_secs(30), out, |p| {
        !p.isr.contains(&follower)
    })
    .await;
    // The broker's partition data; its controller's Raft log (a voter in combined mode) is
    // kept, as a voter that forgot its votes must not rejoin the quorum.
    std::fs::remove_dir_all(cluster.data_dir(follower).join("logs")).expect("wipe");
    let restarted = std::time::Instant::now();
    cluster.restart(follower);
    let back = "back in the ISR";
    until_partition(&client, "tiered", Duration::from_secs(60), back, |p| {
        p.isr.contains(&follower)
    })
    .await;
    let rejoined = restarted.elapsed();
    let copied = log_bytes(&cluster.data_dir(follower).join("logs").join("tiered-0"));
    let total = (TIERED_RECORDS * 1024) as u64;
    eprintln!(
        "wiped follower back in the ISR after {rejoined:?}; local copy {copied} bytes of \
         {total} produced ({uploaded} of {end} records uploaded)"
    );
    assert!(
        copied < total / 4,
        "the follower copied {copied} of {total} bytes: more than the tail"
    );
    assert!(rejoined < Duration::from_secs(30), "{rejoined:?}");
}

/// A follower that stops copying (SIGSTOP: alive to the kernel, silent to everyone) leaves
/// the ISR by its leader's decision after `replica_lag_time_max_ms`, well before the
/// controller would fence it; acks=all writes carry on with the other two copies, and once
/// it runs again and catches up the leader takes it back.
#[tokio::test]
async fn a_stalled_follower_leaves_the_isr_after_the_lag_time_and_comes_back() {
    let (cluster, client, leader) =
        three_copies("stalled", &["topics.replica_lag_time_max_ms=500"], &[]).await;
    let follower = (1..=3).find(|r| *r != leader).expect("a follower");
    // Talk to the leader only: a frozen broker holds connections open without answering,
    // and strata-client has no request timeout yet.
    drop(client);
    let client = Client::connect(&cluster.kafka_addr(leader).to_string())
        .await
        .expect("connect");
    produce_acked(&client, "stalled", 0..10).await;

    cluster.pause(follower);
    let paused = std::time::Instant::now();
    let out = "out of the ISR";
    until_partition(&client, "stalled", Duration::from_secs(10), out, |p| {
        !p.isr.contains(&follower)
    })
    .await;
    let shrunk = paused.elapsed();
    // The leader's doing, not the fencing after the 3 s session timeout: the broker is still
    // registered and live.
    let (brokers, _) = client.cluster().await.expect("metadata");
    assert!(
        brokers.iter().any(|b| b.id == follower),
        "fenced rather than dropped by its leader after {shrunk:?}"
    );
    assert!(
        shrunk < Duration::from_secs(3),
        "ISR shrank after {shrunk:?}"
    );
    // Two copies in sync still meet min.insync.replicas=2.
    produce_acked(&client, "stalled", 10..20).await;

    cluster.resume(follower);
    let resumed = std::time::Instant::now();
    let back = "back in the ISR";
    until_partition(&client, "stalled", Duration::from_secs(30), back, |p| {
        p.isr.contains(&follower)
    })
    .await;
    eprintln!(
        "stalled follower out of the ISR {shrunk:?} after SIGSTOP, back {:?} after SIGCONT",
        resumed.elapsed()
    );
}

/// A leader cut off from the other brokers (clients still reach it) is a minority: it cannot
/// acknowledge an acks=all write, not while cut off and not once it learns it was replaced,
/// while the majority elects a new leader and carries on; what the old leader took in is gone
/// once it rejoins, and everything the majority acknowledged is there. The cut-off broker is
/// also the controller leader and its links hang rather than close, the hardest case for the
/// majority: it must stop waiting on a controller that never answers.
#[tokio::test]
async fn a_leader_cut_off_from_the_other_brokers_acknowledges_nothing() {
    let cluster = ProcessCluster::start_opts(
        binary(),
        3,
        Options {
            proxied: true,
            ..Options::default()
        },
    )
    .await;
    let client = Client::connect(&cluster.bootstrap())
        .await
        .expect("connect");
    let configs = BTreeMap::from([("min.insync.replicas".to_owned(), "2".to_owned())]);
    client
        .create_topic("minority", 1, 3, &configs)
        .await
        .expect("create");
    let old = cluster
        .controller_leader()
        .await
        .expect("a controller leader");
    let others: Vec<i32> = cluster.ids().into_iter().filter(|i| *i != old).collect();
    let home = [old, others[0], others[1]];
    client
        .reassign_partitions(&[("minority".to_owned(), 0, Some(home.to_vec()))])
        .await
        .expect("reorder");
    let wanted = [("minority".to_owned(), 0)];
    until_partition(
        &client,
        "minority",
        Duration::from_secs(30),
        "led by the controller",
        |p| p.replicas == home && p.isr.len() == 3,
    )
    .await;
    client
        .elect_preferred_leaders(Some(&wanted))
        .await
        .expect("elect");
    until_partition(
        &client,
        "minority",
        Duration::from_secs(30),
        "led by the controller",
        |p| p.leader == old,
    )
    .await;
    let mut acked = produce_acked(&client, "minority", 0..10).await;

    let isolated = Client::connect(&cluster.kafka_addr(old).to_string())
        .await
        .expect("connect to the leader");
    for other in &others {
        cluster.cut(Peer::Node(*other), old, Cut::Hang);
    }
    let pending =
        tokio::spawn(async move { isolated.produce("minority", 0, &[record(1_000)], -1).await });
    let majority = others
        .iter()
        .map(|i| cluster.kafka_addr(*i).to_string())
        .collect::<Vec<_>>()
        .join(",");
    let majority = Client::connect(&majority).await.expect("connect");
    let cut_at = std::time::Instant::now();
    acked.extend(produce_acked(&majority, "minority", 10..11).await);
    // The controller fences the cut-off broker after its session timeout (3 s here) and the
    // others' metadata follows: seconds, not a client's 30 s request timeout.
    let failover = cut_at.elapsed();
    eprintln!("the majority acknowledged {failover:?} after the cut");
    assert!(failover < Duration::from_secs(20), "{failover:?}");
    // Its lease gone, the cut-off leader takes no write at all, acks=1 included (a new leader
    // would never have it).
    let isolated = Client::connect(&cluster.kafka_addr(old).to_string())
        .await
        .expect("connect to the old leader");
    let one = isolated.produce("minority", 0, &[record(2_000)], 1).await;
    assert!(
        one.is_err(),
        "the cut-off leader took an acks=1 write at {one:?}"
    );
    acked.extend(produce_acked(&majority, "minority", 11..20).await);
    let (info, _) = majority.describe_topic("minority").await.expect("describe");
    assert_ne!(info.partitions[0].leader, old, "a new leader was elected");
    let controller = cluster.controller_leader().await;
    assert!(
        controller.is_some_and(|c| c != old),
        "a new controller leader was elected: {controller:?}"
    );
    cluster.heal();
    let outcome = tokio::time::timeout(Duration::from_secs(60), pending)
        .await
        .expect("answered once healed")
        .expect("task");
    assert!(
        outcome.is_err(),
        "the cut-off leader acknowledged a write at {outcome:?}"
    );
    let seen = assert_acknowledged(&majority, "minority", &acked).await;
    assert!(
        !seen
            .values()
            .any(|v| matches!(v.as_deref(), Some(b"v1000" | b"v2000"))),
        "the minority's write is in the log"
    );
    // The deposed leader cuts its unreplicated tail, copies from the new leader and is back
    // in the ISR well within the lag time.
    until_partition(
        &majority,
        "minority",
        Duration::from_secs(20),
        "the old leader back in the ISR",
        |p| p.isr.contains(&old),
    )
    .await;
}

/// Stops the leader of `topic`/0 with SIGTERM (its leadership moves to another replica),
/// starts it again and waits until it is back in the ISR; returns the leader then.
async fn displace_leader(
    cluster: &mut ProcessCluster,
    client: &Client,
    topic: &str,
    leader: i32,
) -> i32 {
    assert_eq!(cluster.terminate(leader).await, Some(0));
    cluster.restart(leader);
    let back = "the stopped leader back in sync";
    until_partition(client, topic, Duration::from_secs(60), back, |p| {
        p.isr.contains(&leader) && p.leader >= 0
    })
    .await
    .leader
}

/// ElectLeaders (what `stratactl cluster elect-leaders` sends) moves a displaced leadership
/// back to the preferred replica once it is in sync again, and says when there is nothing
/// to do; with the periodic rebalance off, nothing moves it otherwise.
#[tokio::test]
async fn a_preferred_election_moves_leadership_home() {
    let (mut cluster, client, preferred) = three_copies(
        "home",
        &["controller.leader_imbalance_check_interval_ms=0"],
        &[],
    )
    .await;
    produce_acked(&client, "home", 0..10).await;
    let now = displace_leader(&mut cluster, &client, "home", preferred).await;
    assert_ne!(now, preferred, "leadership moved off the stopped broker");
    let wanted = [("home".to_owned(), 0)];
    let results = client
        .elect_preferred_leaders(Some(&wanted))
        .await
        .expect("elect");
    assert_eq!(results, vec![("home".to_owned(), 0, 0)]);
    let (info, _) = client.describe_topic("home").await.expect("describe");
    assert_eq!(info.partitions[0].leader, preferred);
    let again = client
        .elect_preferred_leaders(Some(&wanted))
        .await
        .expect("elect");
    assert_eq!(
        again,
        vec![("home".to_owned(), 0, 84)],
        "ELECTION_NOT_NEEDED"
    );
    // Writes and reads carry on at the preferred leader with everything acknowledged.
    produce_acked(&client, "home", 10..20).await;
    assert_eq!(values(&client, "home", 0).await.len(), 20);
}

/// The controller's periodic rebalance (`leader.imbalance.check.interval`) brings a
/// displaced leadership home on its own.
#[tokio::test]
async fn the_periodic_rebalance_moves_leadership_home() {
    let (mut cluster, client, preferred) = three_copies(
        "rebalanced",
        &["controller.leader_imbalance_check_interval_ms=1000"],
        &[],
    )
    .await;
    displace_leader(&mut cluster, &client, "rebalanced", preferred).await;
    let home = "leadership back at the preferred replica";
    until_partition(&client, "rebalanced", Duration::from_secs(30), home, |p| {
        p.leader == preferred
    })
    .await;
}

/// A three-node cluster that tiers within seconds, with topic `name` (one partition, `rf`
/// copies, the tiering configs) created; returns the cluster and a client.
async fn tiered_cluster(name: &str, rf: i16) -> (ProcessCluster, Client) {
    let cluster = ProcessCluster::start_with(binary(), 3, &TIERING_SETTINGS).await;
    let client = Client::connect(&cluster.bootstrap())
        .await
        .expect("connect");
    let configs = tiering_configs()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    client
        .create_topic(name, 1, rf, &configs)
        .await
        .expect("create");
    (cluster, client)
}

/// Reassigning a tiered partition, leader included, to a broker that holds none of it: the
/// new replica starts at the end of what the object store holds and copies only the tail,
/// joins the ISR within seconds, leadership moves to it, and the replica that left deletes
/// its copy; every record is still served.
#[tokio::test]
async fn a_reassigned_partition_moves_only_its_tail() {
    let (cluster, client) = tiered_cluster("moved", 2).await;
    let (info, _) = client.describe_topic("moved").await.expect("describe");
    let (leader, kept) = (
        info.partitions[0].replicas[0],
        info.partitions[0].replicas[1],
    );
    let new = (1..=3)
        .find(|b| *b != leader && *b != kept)
        .expect("a third broker");
    let (end, uploaded) = fill_and_tier(&cluster, &client, "moved").await;

    let started = std::time::Instant::now();
    let results = client
        .reassign_partitions(&[("moved".to_owned(), 0, Some(vec![new, kept]))])
        .await
        .expect("reassign");
    assert_eq!(results, vec![("moved".to_owned(), 0, 0, None)]);
    let done = "the reassignment complete";
    until_partition(&client, "moved", Duration::from_secs(60), done, |p| {
        p.replicas == [new, kept] && p.isr.contains(&new) && p.leader == new
    })
    .await;
    let moved = started.elapsed();
    assert!(client.list_reassignments().await.expect("list").is_empty());
    let copied = log_bytes(&cluster.data_dir(new).join("logs").join("moved-0"));
    let total = (TIERED_RECORDS * 1024) as u64;
    eprintln!(
        "reassigned in {moved:?}; the new replica copied {copied} bytes of {total} written \
         ({uploaded} of {end} records uploaded)"
    );
    assert!(copied < total / 4, "copied {copied} of {total} bytes");
    assert!(moved < Duration::from_secs(30), "{moved:?}");
    let old_copy = cluster.data_dir(leader).join("logs").join("moved-0");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while old_copy.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the old replica kept its copy"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Everything, the uploaded part from the object store, through the new leader.
    let mut offset = 0;
    let mut tries = 0;
    while offset < end {
        // The client's metadata may still name the old leader once: retriable.
        let records = match client.fetch("moved", 0, offset, 4 << 20, 500).await {
            Ok((records, _)) => records,
            Err(e) => {
                tries += 1;
                assert!(tries < 50, "fetch at {offset}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        assert!(!records.is_empty(), "stopped at {offset} of {end}");
        offset = records.last().map_or(offset, |r| r.offset + 1);
    }
}

/// A tiered partition whose only replica is gone for good is re-homed by an explicit, logged
/// choice: reassigned to a live broker and given it by an unclean election (ElectLeaders,
/// type 1). The new leader continues from the object store: every uploaded record is served,
/// and writes carry on after them. Without the choice the partition stays leaderless.
#[tokio::test]
async fn a_tiered_partition_whose_replicas_are_gone_is_rehomed_from_object_storage() {
    let (mut cluster, client) = tiered_cluster("orphan", 1).await;
    let (_, uploaded) = fill_and_tier(&cluster, &client, "orphan").await;
    let (info, _) = client.describe_topic("orphan").await.expect("describe");
    let gone = info.partitions[0].leader;
    let home = (1..=3).find(|b| *b != gone).expect("another broker");

    cluster.kill(gone).await;
    let survivors = (1..=3)
        .filter(|b| *b != gone)
        .map(|b| cluster.kafka_addr(b).to_string())
        .collect::<Vec<_>>()
        .join(",");
    let client = Client::connect(&survivors).await.expect("connect");
    let wanted = [("orphan".to_owned(), 0)];
    until_partition(
        &client,
        "orphan",
        Duration::from_secs(30),
        "leaderless",
        |p| p.leader < 0,
    )
    .await;
    // A preferred election does nothing, nor does an unclean one while no replica is live.
    let refused = client
        .elect_leaders(Some(&wanted), true)
        .await
        .expect("elect");
    assert_eq!(
        refused,
        vec![("orphan".to_owned(), 0, 83)],
        "ELIGIBLE_LEADERS_NOT_AVAILABLE"
    );

    client
        .reassign_partitions(&[("orphan".to_owned(), 0, Some(vec![home]))])
        .await
        .expect("reassign");
    let elected = client
        .elect_leaders(Some(&wanted), true)
        .await
        .expect("elect");
    assert_eq!(elected, vec![("orphan".to_owned(), 0, 0)]);
    until_partition(
        &client,
        "orphan",
        Duration::from_secs(30),
        "re-homed",
        |p| p.leader == home && p.replicas == [home],
    )
    .await;

    // Every uploaded record is served from the object store by the new leader.
    for offset in [0, uploaded / 2, uploaded - 1] {
        let (records, _) = client
            .fetch("orphan", 0, offset, 64 << 10, 5_000)
            .await
            .expect("fetch");
        let first = records.first().expect("a record");
        assert_eq!(first.offset, offset);
        assert_eq!(first.value.as_deref(), Some(&[b'x'; 1024][..]));
    }
    // New writes land after the uploaded history.
    let acked = produce_acked(&client, "orphan", 0..10).await;
    assert!(
        acked.iter().all(|(o, _)| *o >= uploaded),
        "{acked:?} vs {uploaded}"
    );
    let (records, _) = client
        .fetch("orphan", 0, acked[0].0, 1 << 20, 5_000)
        .await
        .expect("fetch");
    assert_eq!(
        records.first().and_then(|r| r.value.clone()),
        Some(Bytes::from("v0"))
    );
}

/// `size` nodes spread over `racks` racks, and a client of them.
async fn racked(size: i32, racks: i32) -> (ProcessCluster, Client) {
    let cluster = ProcessCluster::start_opts(
        binary(),
        size,
        Options {
            racks,
            ..Options::default()
        },
    )
    .await;
    let client = Client::connect(&cluster.bootstrap())
        .await
        .expect("connect");
    (cluster, client)
}

/// Brokers started with `rack` report it in Metadata (Kafka's `broker.rack`), and a topic's
/// replicas go to different racks: four brokers in two racks, two copies of every partition,
/// never both in one rack.
#[tokio::test]
async fn replicas_are_spread_over_racks() {
    let (_cluster, client) = racked(4, 2).await;
    let (brokers, _) = client.cluster().await.expect("metadata");
    let rack: BTreeMap<i32, String> = brokers
        .iter()
        .map(|b| (b.id, b.rack.clone().expect("a rack")))
        .collect();
    for (id, r) in &rack {
        assert_eq!(*r, ProcessCluster::rack_of(*id, 2));
    }
    client
        .create_topic("spread", 8, 2, &BTreeMap::new())
        .await
        .expect("create");
    let (info, _) = client.describe_topic("spread").await.expect("describe");
    for p in &info.partitions {
        let racks: BTreeSet<&String> = p.replicas.iter().map(|r| &rack[r]).collect();
        assert_eq!(
            racks.len(),
            2,
            "partition {} on {:?}",
            p.partition,
            p.replicas
        );
    }
}

/// KIP-392: a consumer that says its rack is sent by the leader to an in-sync replica in that
/// rack (`preferred_read_replica`, no records), which serves it up to the high watermark; one
/// in the leader's rack, or an older client, reads from the leader. librdkafka with
/// `client.rack` set reads everything.
#[tokio::test]
async fn consumers_read_from_the_replica_in_their_rack() {
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::{BrokerId, FetchRequest, TopicName};

    let (cluster, client) = racked(3, 3).await;
    let configs = BTreeMap::from([("min.insync.replicas".to_owned(), "2".to_owned())]);
    client
        .create_topic("racked", 1, 3, &configs)
        .await
        .expect("create");
    let acked = produce_acked(&client, "racked", 0..100).await;
    let p = until_partition(
        &client,
        "racked",
        Duration::from_secs(30),
        "all in sync",
        |p| p.isr.len() == 3,
    )
    .await;
    let leader = p.leader;
    let follower = p
        .replicas
        .iter()
        .copied()
        .find(|r| *r != leader)
        .expect("a follower");
    let fetch = |rack: String| {
        FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(500)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_rack_id(StrBytes::from_string(rack))
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_static_str("racked")))
                    .with_partitions(vec![
                        FetchPartition::default()
                            .with_partition(0)
                            .with_fetch_offset(0)
                            .with_partition_max_bytes(1 << 20),
                    ]),
            ])
    };
    let answer = |resp: kafka_protocol::messages::FetchResponse| {
        let p = resp.responses[0].partitions[0].clone();
        (
            p.error_code,
            p.preferred_read_replica.0,
            p.records.map_or(0, |r| r.len()),
            p.high_watermark,
        )
    };
    let mut at_leader = RawClient::connect(cluster.kafka_addr(leader)).await;
    let follower_rack = ProcessCluster::rack_of(follower, 3);
    let (code, preferred, bytes, _) =
        answer(at_leader.call(12, &fetch(follower_rack.clone())).await);
    assert_eq!(
        (code, preferred, bytes),
        (0, follower, 0),
        "sent to the follower"
    );
    let mut at_follower = RawClient::connect(cluster.kafka_addr(follower)).await;
    // The follower learns the high watermark from its next fetch; it serves up to it.
    let end = acked.last().expect("acked").0 + 1;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (code, preferred, bytes, hw) =
            answer(at_follower.call(12, &fetch(follower_rack.clone())).await);
        assert_eq!((code, preferred), (0, -1));
        assert!(bytes > 0, "the follower serves the records");
        if hw == end {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "follower hw {hw} of {end}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // In the leader's rack, or before v11: the leader serves.
    let (_, preferred, bytes, _) = answer(
        at_leader
            .call(12, &fetch(ProcessCluster::rack_of(leader, 3)))
            .await,
    );
    assert_eq!(preferred, -1);
    assert!(bytes > 0);
    let (code, ..) = answer(at_follower.call(10, &fetch(follower_rack.clone())).await);
    assert_eq!(code, 6, "NOT_LEADER_OR_FOLLOWER before v11");

    // librdkafka follows the preferred replica and reads every record.
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("group.id", "racked-reader")
        .set("client.rack", &follower_rack)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset("racked", 0, rdkafka::Offset::Beginning)
        .expect("partition");
    consumer.assign(&tpl).expect("assign");
    let mut read = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while read.len() < acked.len() && std::time::Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.expect("message");
            read.push((m.offset(), m.payload().map(<[u8]>::to_vec)));
        }
    }
    assert_eq!(
        read.len(),
        acked.len(),
        "read {} of {}",
        read.len(),
        acked.len()
    );
    for ((offset, value), (base, i)) in read.iter().zip(&acked) {
        assert_eq!(*offset, *base);
        assert_eq!(value.as_deref(), Some(format!("v{i}").as_bytes()));
    }
}

/// The node that `id`'s broker names as `group`'s coordinator, once it names one.
async fn coordinator_seen_by(cluster: &ProcessCluster, id: i32, group: &str) -> i32 {
    let mut raw = RawClient::connect(cluster.kafka_addr(id)).await;
    let request = FindCoordinatorRequest::default().with_key(StrBytes::from(group.to_owned()));
    for _ in 0..200 {
        let found = raw.call(3, &request).await;
        if found.error_code == 0 {
            return found.node_id.0;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("broker {id} names no coordinator for {group}");
}

/// A group coordinator frozen (SIGSTOP) for longer than the session timeout loses the group
/// to another broker, where commits go on. Once it runs again it must not answer OffsetFetch
/// from its stale cache: until its metadata shows whether it still coordinates, it answers
/// NOT_COORDINATOR, and never an offset older than one already committed.
#[tokio::test]
async fn a_paused_coordinator_never_answers_offsets_older_than_committed() {
    let cluster = ProcessCluster::start(binary(), 3).await;
    let client = Client::connect(&cluster.bootstrap())
        .await
        .expect("connect");
    client
        .create_topic("orders", 1, 3, &BTreeMap::new())
        .await
        .expect("create");
    // A group whose coordinator is not the controller's leader, so the pause tests the
    // coordinator alone.
    let controller = cluster.controller_leader().await;
    let mut chosen = None;
    for i in 0..50 {
        let group = format!("paused-{i}");
        let coordinator = coordinator_seen_by(&cluster, 1, &group).await;
        if Some(coordinator) != controller {
            chosen = Some((group, coordinator));
            break;
        }
    }
    let (group, old) = chosen.expect("a group away from the controller leader");
    let other = (1..=3).find(|id| *id != old).expect("another broker");
    let committed = |offset: i64| BTreeMap::from([(("orders".to_owned(), 0), offset)]);
    client
        .commit_offsets(&group, &committed(1))
        .await
        .expect("commit");
    let mut stale = RawClient::connect(cluster.kafka_addr(old)).await;
    let fetch = OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from(group.clone())))
        .with_topics(None);
    assert_eq!(stale.call(7, &fetch).await.error_code, 0);

    cluster.pause(old);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while coordinator_seen_by(&cluster, other, &group).await == old {
        assert!(
            std::time::Instant::now() < deadline,
            "the group never moved"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elsewhere = Client::connect(&cluster.kafka_addr(other).to_string())
        .await
        .expect("connect");
    let mut tries = 0;
    while let Err(e) = elsewhere.commit_offsets(&group, &committed(2)).await {
        tries += 1;
        assert!(tries < 100, "commit on the new coordinator: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Sent while the old coordinator is frozen, answered as soon as it runs; then asked
    // again and again while it catches up.
    let asking = tokio::spawn(async move {
        let mut answers = Vec::new();
        for _ in 0..60 {
            let answer = stale.call(7, &fetch).await;
            let offset = answer
                .topics
                .iter()
                .flat_map(|t| &t.partitions)
                .map(|p| p.committed_offset)
                .next();
            answers.push((answer.error_code, offset));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        answers
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.resume(old);
    let answers = tokio::time::timeout(Duration::from_secs(30), asking)
        .await
        .expect("answers")
        .expect("asked");
    const NOT_COORDINATOR: i16 = 16;
    for (code, offset) in &answers {
        assert!(
            *code == NOT_COORDINATOR || (*code == 0 && *offset == Some(2)),
            "the resumed coordinator answered {code} with {offset:?}: {answers:?}"
        );
    }
}

/// Brokers reach each other over mutual TLS (`kafka.inter_broker_listener` naming an SSL
/// listener that requires client certificates) and the controllers' Raft and the brokers'
/// calls run over mutual TLS too (`[controller.tls]`), all with one CA. To show replication
/// takes the TLS listener and not the plaintext main one, the main listener is untrusted and
/// its anonymous clients are denied CLUSTER_ACTION (a replica's fetch), while the brokers'
/// certificate subject is a super user: acks=all writes are acknowledged with all three
/// copies in sync, and killing the leader under such writes loses nothing acknowledged.
/// (With the inter-broker listener unset, the first write times out.)
#[tokio::test]
async fn replication_and_the_quorum_run_over_mutual_tls() {
    use strata_client::acls::Acl;
    use strata_tests::pki::{Authority, Issued};

    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Authority::new(dir.path(), "cluster-ca");
    let Issued { cert, key } = ca.broker("node");
    let (cert, key, ca) = (
        cert.display().to_string(),
        key.display().to_string(),
        ca.cert.display().to_string(),
    );
    let settings = [
        r#"kafka.listeners=[{name="INTERNAL",listen="127.0.0.1:0",security_protocol="SSL",client_auth="required"}]"#.to_owned(),
        r#"kafka.inter_broker_listener="INTERNAL""#.to_owned(),
        format!(r#"kafka.tls.cert_file="{cert}""#),
        format!(r#"kafka.tls.key_file="{key}""#),
        format!(r#"kafka.tls.client_ca_file="{ca}""#),
        format!(r#"controller.tls.cert_file="{cert}""#),
        format!(r#"controller.tls.key_file="{key}""#),
        format!(r#"controller.tls.ca_file="{ca}""#),
        "kafka.authorization.enable=true".to_owned(),
        "kafka.authorization.trust_main_listener=false".to_owned(),
        "kafka.authorization.allow_everyone_if_no_acl_found=true".to_owned(),
        r#"kafka.authorization.super_users=["User:CN=strata-broker"]"#.to_owned(),
    ];
    let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
    let mut cluster = ProcessCluster::start_with(binary(), 3, &settings).await;
    let client = Client::connect(&cluster.bootstrap())
        .await
        .expect("connect");
    client
        .create_acls(&[Acl {
            resource_type: "cluster".into(),
            resource_name: "kafka-cluster".into(),
            pattern_type: "literal".into(),
            principal: "User:ANONYMOUS".into(),
            host: "*".into(),
            operation: "cluster-action".into(),
            permission: "deny".into(),
        }])
        .await
        .expect("deny anonymous replication");
    let configs = BTreeMap::from([("min.insync.replicas".to_owned(), "2".to_owned())]);
    client
        .create_topic("sealed", 1, 3, &configs)
        .await
        .expect("create");
    // acks=all writes are acknowledged only once the followers copied them, over TLS (over
    // the main listener their fetches would be refused and these would time out).
    let mut acked = produce_acked(&client, "sealed", 0..100).await;
    let (info, _) = client.describe_topic("sealed").await.expect("describe");
    let p = &info.partitions[0];
    assert_eq!(p.isr.len(), 3, "every copy kept up: {p:?}");
    kill_leader_under_writes(&mut cluster, &client, "sealed", p.leader, &mut acked).await;
}
