//! KIP-848 consumer groups (`group.protocol=consumer`) with librdkafka members, each in a
//! process of its own (`strata-test-consumer`) so one can crash: members join, leave and
//! crash while records flow, and every record is consumed exactly once with committed
//! offsets; a classic group's committed offsets carry over to new-protocol members, and a
//! classic group with members is upgraded online as new-protocol members join it.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kafka_protocol::messages::{
    ConsumerGroupDescribeRequest, GroupId, ListGroupsRequest, ListGroupsResponse,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use strata_tests::{RawClient, TestBroker};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const TOPIC: &str = "kip848";
const PARTITIONS: i32 = 6;

async fn broker() -> TestBroker {
    TestBroker::start_with(|c| {
        c.groups.initial_rebalance_delay_ms = 0;
        c.groups.min_session_timeout_ms = 1000;
        c.groups.consumer_session_timeout_ms = 3000;
        c.groups.consumer_heartbeat_interval_ms = 250;
    })
    .await
}

async fn create_topic(bootstrap: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin");
    let topic = NewTopic::new(TOPIC, PARTITIONS, TopicReplication::Fixed(1));
    for r in admin
        .create_topics(&[topic], &AdminOptions::new())
        .await
        .expect("create")
    {
        r.expect("created");
    }
}

/// Produces values `from..to` to the topic.
async fn produce(bootstrap: &str, from: usize, to: usize) {
    strata_tests::produce_numbered(bootstrap, TOPIC, from, to).await;
}

/// What the members reported: per value, the members that committed it; per member, the
/// value it was processing last (in flight if it crashed then).
#[derive(Debug, Default)]
struct Seen {
    committed: BTreeMap<usize, Vec<String>>,
    processing: BTreeMap<String, Option<usize>>,
}

type Shared = Arc<Mutex<Seen>>;

fn lock(seen: &Shared) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|p| p.into_inner())
}

/// A group member process.
struct Member {
    name: String,
    child: Child,
}

fn member(bootstrap: &str, group: &str, protocol: &str, name: &str, seen: &Shared) -> Member {
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata-test-consumer"))
        .args([bootstrap, group, TOPIC, protocol])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn strata-test-consumer");
    let stdout = child.stdout.take().expect("stdout");
    let (seen, who) = (seen.clone(), name.to_owned());
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let words: Vec<&str> = line.split(' ').collect();
            let value = words.get(3).and_then(|v| v.parse::<usize>().ok());
            let mut s = lock(&seen);
            match (words.first().copied(), value) {
                (Some("processing"), Some(v)) => {
                    s.processing.insert(who.clone(), Some(v));
                }
                (Some("committed"), Some(v)) => {
                    s.committed.entry(v).or_default().push(who.clone());
                    s.processing.insert(who.clone(), None);
                }
                _ => {}
            }
        }
    });
    Member {
        name: name.to_owned(),
        child,
    }
}

impl Member {
    /// Leaves the group politely (the member closes its consumer when its stdin closes).
    async fn leave(mut self) {
        drop(self.child.stdin.take());
        let exited = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        assert!(exited.is_ok(), "{} did not leave", self.name);
    }

    /// Crashes: SIGKILL, no goodbye.
    async fn crash(mut self) {
        self.child.kill().await.expect("kill");
    }
}

/// The values the `crashed` members were processing when they died: their commits may or
/// may not have landed, so they are consumed at most once.
fn in_flight(s: &Seen, crashed: &[&str]) -> Vec<usize> {
    crashed
        .iter()
        .filter_map(|m| s.processing.get(*m).copied().flatten())
        .collect()
}

/// Waits until every value below `total` is committed by someone (but those in flight in a
/// crashed member).
async fn all_committed(seen: &Shared, total: usize, crashed: &[&str], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let done = {
            let s = lock(seen);
            let maybe = in_flight(&s, crashed);
            (0..total)
                .filter(|v| s.committed.contains_key(v) || maybe.contains(v))
                .count()
        };
        if done == total {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {total} records committed within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every value below `total` was committed exactly once, except the one a crashed member was
/// processing when it died (its commit may or may not have landed): at most once.
fn assert_exactly_once(seen: &Shared, total: usize, crashed: &[&str]) {
    let s = lock(seen);
    let maybe = in_flight(&s, crashed);
    for v in 0..total {
        let by = s.committed.get(&v).cloned().unwrap_or_default();
        let ok = match maybe.contains(&v) {
            true => by.len() <= 1,
            false => by.len() == 1,
        };
        assert!(ok, "record {v} committed by {by:?}");
    }
}

/// The group as ConsumerGroupDescribe shows it: (state, epoch, members' partition counts).
async fn describe(broker: &TestBroker, group: &str) -> (String, i32, Vec<usize>) {
    let mut client = RawClient::connect(broker.addr()).await;
    let req = ConsumerGroupDescribeRequest::default()
        .with_group_ids(vec![GroupId(StrBytes::from_string(group.to_owned()))]);
    let resp = client.call(1, &req).await;
    let g = &resp.groups[0];
    assert_eq!(g.error_code, 0, "{:?}", g.error_message);
    let mut counts: Vec<usize> = g
        .members
        .iter()
        .map(|m| {
            m.assignment
                .topic_partitions
                .iter()
                .map(|t| t.partitions.len())
                .sum()
        })
        .collect();
    counts.sort();
    (g.group_state.to_string(), g.group_epoch, counts)
}

/// Waits until the group is Stable with `members` members holding every partition.
async fn stable_with(broker: &TestBroker, group: &str, members: usize) -> Vec<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (state, _, counts) = describe(broker, group).await;
        let held: usize = counts.iter().sum();
        if state == "Stable" && counts.len() == members && held == PARTITIONS as usize {
            return counts;
        }
        assert!(
            Instant::now() < deadline,
            "group is {state} with {counts:?}, not Stable with {members} members"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_leave_and_crash_and_each_record_is_consumed_once() {
    let broker = broker().await;
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap).await;
    let seen = Shared::default();
    let group = "kip848-group";
    produce(&bootstrap, 0, 600).await;
    let a = member(&bootstrap, group, "consumer", "a", &seen);
    let b = member(&bootstrap, group, "consumer", "b", &seen);
    let c = member(&bootstrap, group, "consumer", "c", &seen);
    all_committed(&seen, 600, &[], Duration::from_secs(60)).await;
    assert_eq!(stable_with(&broker, group, 3).await, vec![2, 2, 2]);
    // stratactl's client describes it too (DescribeGroups says it is not a classic group).
    let client = strata_client::Client::connect(&bootstrap)
        .await
        .expect("client");
    let d = client.describe_group(group).await.expect("describe");
    let held: usize = d
        .members
        .iter()
        .flat_map(|m| m.assignment.values())
        .map(Vec::len)
        .sum();
    assert_eq!(
        (
            d.group_type.as_str(),
            d.protocol.as_str(),
            d.members.len(),
            held
        ),
        ("consumer", "uniform", 3, PARTITIONS as usize)
    );
    // The group is listed as a consumer group.
    let mut client = RawClient::connect(broker.addr()).await;
    let listed: ListGroupsResponse = client
        .call(
            5,
            &ListGroupsRequest::default()
                .with_types_filter(vec![StrBytes::from_static_str("consumer")]),
        )
        .await;
    assert!(
        listed
            .groups
            .iter()
            .any(|g| g.group_id.as_str() == group && g.group_type.as_str() == "consumer"),
        "{listed:?}"
    );
    // One leaves while records flow: the others take its partitions.
    let producing = tokio::spawn({
        let bootstrap = bootstrap.clone();
        async move { produce(&bootstrap, 600, 1200).await }
    });
    b.leave().await;
    producing.await.expect("producer");
    all_committed(&seen, 1200, &[], Duration::from_secs(60)).await;
    assert_eq!(stable_with(&broker, group, 2).await, vec![3, 3]);
    // One crashes while records flow: once its session ends, the last one takes everything.
    let producing = tokio::spawn({
        let bootstrap = bootstrap.clone();
        async move { produce(&bootstrap, 1200, 1800).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.crash().await;
    producing.await.expect("producer");
    all_committed(&seen, 1800, &["c"], Duration::from_secs(60)).await;
    assert_eq!(stable_with(&broker, group, 1).await, vec![6]);
    assert_exactly_once(&seen, 1800, &["c"]);
    a.leave().await;
    let (state, _, counts) = describe(&broker, group).await;
    assert_eq!((state.as_str(), counts.len()), ("Empty", 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_protocol_members_take_over_a_classic_group_from_its_committed_offsets() {
    let broker = broker().await;
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap).await;
    let seen = Shared::default();
    let group = "upgraded-group";
    produce(&bootstrap, 0, 300).await;
    let classic = member(&bootstrap, group, "classic", "classic", &seen);
    all_committed(&seen, 300, &[], Duration::from_secs(60)).await;
    classic.leave().await;
    produce(&bootstrap, 300, 600).await;
    let a = member(&bootstrap, group, "consumer", "a", &seen);
    let b = member(&bootstrap, group, "consumer", "b", &seen);
    all_committed(&seen, 600, &[], Duration::from_secs(60)).await;
    assert_eq!(stable_with(&broker, group, 2).await, vec![3, 3]);
    // Nothing the classic member committed was read again.
    assert_exactly_once(&seen, 600, &[]);
    a.leave().await;
    b.leave().await;
}

/// The type of each member ConsumerGroupDescribe lists (KIP-1099: 0 classic, 1 consumer).
async fn member_types(broker: &TestBroker, group: &str) -> Vec<i8> {
    let mut client = RawClient::connect(broker.addr()).await;
    let req = ConsumerGroupDescribeRequest::default()
        .with_group_ids(vec![GroupId(StrBytes::from_string(group.to_owned()))]);
    let resp = client.call(1, &req).await;
    let mut types: Vec<i8> = resp.groups[0]
        .members
        .iter()
        .map(|m| m.member_type)
        .collect();
    types.sort();
    types
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_group_with_members_is_upgraded_online_and_each_record_is_consumed_once() {
    let broker = broker().await;
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap).await;
    let seen = Shared::default();
    let group = "online-upgrade";
    produce(&bootstrap, 0, 300).await;
    let c1 = member(&bootstrap, group, "classic", "c1", &seen);
    let c2 = member(&bootstrap, group, "classic", "c2", &seen);
    all_committed(&seen, 300, &[], Duration::from_secs(60)).await;
    // New-protocol members join the running classic group while records flow: it becomes a
    // consumer group, the classic members stay in it and give up partitions to them.
    let producing = tokio::spawn({
        let bootstrap = bootstrap.clone();
        async move { produce(&bootstrap, 300, 900).await }
    });
    let n1 = member(&bootstrap, group, "consumer", "n1", &seen);
    let n2 = member(&bootstrap, group, "consumer", "n2", &seen);
    producing.await.expect("producer");
    all_committed(&seen, 900, &[], Duration::from_secs(60)).await;
    assert_eq!(stable_with(&broker, group, 4).await, vec![1, 1, 2, 2]);
    assert_eq!(member_types(&broker, group).await, vec![0, 0, 1, 1]);
    // The classic members leave while records flow: the new ones take everything.
    let producing = tokio::spawn({
        let bootstrap = bootstrap.clone();
        async move { produce(&bootstrap, 900, 1500).await }
    });
    c1.leave().await;
    c2.leave().await;
    producing.await.expect("producer");
    all_committed(&seen, 1500, &[], Duration::from_secs(60)).await;
    assert_eq!(stable_with(&broker, group, 2).await, vec![3, 3]);
    assert_eq!(member_types(&broker, group).await, vec![1, 1]);
    assert_exactly_once(&seen, 1500, &[]);
    n1.leave().await;
    n2.leave().await;
}
