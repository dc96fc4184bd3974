//! Compacted topics as librdkafka users meet them: updates and deletes of many keys, then a
//! consumer from offset 0 sees the latest value of every key, offsets rising with gaps.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use strata_broker::config::BrokerConfig;
use strata_tests::TestBroker;

const WAIT: Duration = Duration::from_secs(60);

/// The key → latest value (None: deleted) a workload leaves.
type Latest = BTreeMap<Vec<u8>, Option<Vec<u8>>>;
/// A record as a consumer reads it: offset, key, value.
type Read = (i64, Vec<u8>, Option<Vec<u8>>);

fn fast_cleaner(c: &mut BrokerConfig) {
    c.cleaner.backoff_ms = 200;
    c.topics.flush_check_interval_ms = 200;
    c.object_store.upload_interval_ms = 200;
}

async fn create(bootstrap: &str, topic: &str, configs: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin");
    let mut t = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
    for (k, v) in configs {
        t = t.set(k, v);
    }
    for r in admin
        .create_topics(&[t], &AdminOptions::new())
        .await
        .expect("create")
    {
        r.expect("created");
    }
}

/// Produces `n` updates over `keys` keys (every 5th a delete), compressed with `codec` in
/// batches of many records; returns what each key ends as.
async fn produce(
    bootstrap: &str,
    topic: &str,
    n: usize,
    keys: usize,
    value_len: usize,
    codec: &str,
) -> Latest {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("compression.type", codec)
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let mut latest = Latest::new();
    let mut pending = Vec::new();
    for i in 0..n {
        let key = format!("key-{:05}", (i * 7919) % keys).into_bytes();
        // Values that do not compress, so the log is as large as what was produced.
        let value = (i % 5 != 4).then(|| {
            let mut v = format!("v{i}-").into_bytes();
            let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            while v.len() < value_len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v.push((x % 251) as u8);
            }
            v
        });
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).key(&key);
        if let Some(v) = &value {
            record = record.payload(v);
        }
        pending.push(p.send_result(record).map_err(|(e, _)| e).expect("queued"));
        latest.insert(key, value);
        if pending.len() >= 5_000 || i + 1 == n {
            for f in pending.drain(..) {
                f.await
                    .expect("delivered")
                    .map_err(|(e, _)| e)
                    .expect("acked");
            }
        }
    }
    latest
}

/// Everything a consumer from offset 0 reads up to the end: (offset, key, value).
fn read_all(bootstrap: &str, topic: &str) -> Vec<Read> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "compaction-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let (_, end) = c.fetch_watermarks(topic, 0, WAIT).expect("watermarks");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("partition");
    c.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + WAIT;
    while out.last().is_none_or(|(o, _, _)| o + 1 < end) {
        assert!(
            Instant::now() < deadline,
            "read {} records, not to {end}",
            out.len()
        );
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            let m = m.expect("no consumer error");
            let key = m.key().expect("keyed").to_vec();
            out.push((m.offset(), key, m.payload().map(<[u8]>::to_vec)));
        }
    }
    out
}

/// What a wait for a compacted read expects of the deleted keys' tombstones.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tombstones {
    /// Still there: no pass has found them older than `delete.retention.ms` yet.
    Kept,
    /// Gone: a pass after `delete.retention.ms` dropped them.
    Gone,
    /// Either, per key: a pass may or may not have run after `delete.retention.ms` by the
    /// time of the read (the tests cannot time passes to the millisecond).
    Either,
}

/// Whether `got` reads as `latest` says: one record per key, every live key with its latest
/// value, and each deleted key's tombstone as `tombstones` expects.
fn reads_compacted(got: &[Read], latest: &Latest, tombstones: Tombstones) -> bool {
    let as_map: Latest = got.iter().map(|(_, k, v)| (k.clone(), v.clone())).collect();
    got.len() == as_map.len()
        && latest.iter().all(|(k, v)| match (v, as_map.get(k)) {
            (Some(_), read) => read == Some(v),
            (None, Some(read)) => read.is_none() && tombstones != Tombstones::Gone,
            (None, None) => tombstones != Tombstones::Kept,
        })
        && as_map.keys().all(|k| latest.contains_key(k))
}

/// Waits until the topic reads as `latest` says, one record per key, deleted keys as
/// `tombstones` says; returns the records.
fn wait_compacted(
    bootstrap: &str,
    topic: &str,
    latest: &Latest,
    tombstones: Tombstones,
) -> Vec<Read> {
    wait_compacted_within(bootstrap, topic, latest, tombstones, WAIT)
}

/// [`wait_compacted`], for at most `wait`.
fn wait_compacted_within(
    bootstrap: &str,
    topic: &str,
    latest: &Latest,
    tombstones: Tombstones,
    wait: Duration,
) -> Vec<Read> {
    let live = latest.values().filter(|v| v.is_some()).count();
    let deadline = Instant::now() + wait;
    loop {
        let got = read_all(bootstrap, topic);
        if reads_compacted(&got, latest, tombstones) {
            return got;
        }
        let keys: std::collections::BTreeSet<&Vec<u8>> = got.iter().map(|(_, k, _)| k).collect();
        assert!(
            Instant::now() < deadline,
            "not compacted: {} records for {} keys ({} keys, {live} live; tombstones {tombstones:?})",
            got.len(),
            keys.len(),
            latest.len(),
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `stratactl --json topic describe <topic>`.
async fn describe(bootstrap: &str, topic: &str) -> serde_json::Value {
    let mut out = Vec::new();
    let argv = [
        "stratactl",
        "--bootstrap",
        bootstrap,
        "--json",
        "topic",
        "describe",
        topic,
    ];
    strata_client::cli::run(argv, &mut "".as_bytes(), &mut out)
        .await
        .expect("describe");
    serde_json::from_slice(&out).expect("JSON")
}

/// Seals what was written: after `segment.ms` an append rolls the active segment (only
/// sealed segments are cleaned). The record it appends has a key of its own.
async fn seal(bootstrap: &str, topic: &str, latest: &mut Latest) {
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("producer");
    let key = format!("seal-{}", latest.len()).into_bytes();
    p.send(
        FutureRecord::<[u8], [u8]>::to(topic)
            .key(&key)
            .payload(b"seal"),
        WAIT,
    )
    .await
    .map_err(|(e, _)| e)
    .expect("sealed");
    latest.insert(key, Some(b"seal".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_topic_keeps_the_latest_value_per_key_with_gaps_across_a_restart() {
    let mut broker = TestBroker::start_with(fast_cleaner).await;
    let bootstrap = broker.bootstrap();
    create(
        &bootstrap,
        "table",
        &[
            ("cleanup.policy", "compact"),
            ("segment.bytes", "65536"),
            ("segment.ms", "1000"),
            // Any dirty record is worth a pass: the segment `seal` closes after the others
            // were cleaned may hold a few records only, below any positive ratio (a full
            // run once left 3 duplicates for good that way).
            ("min.cleanable.dirty.ratio", "0"),
            ("delete.retention.ms", "3600000"),
            ("remote.storage.enable", "false"),
        ],
    )
    .await;
    let mut latest = produce(&bootstrap, "table", 30_000, 1_000, 100, "lz4").await;
    seal(&bootstrap, "table", &mut latest).await;
    // First the updates go and the deletes stay (a consumer must get to see them).
    let got = wait_compacted(&bootstrap, "table", &latest, Tombstones::Kept);
    let offsets: Vec<i64> = got.iter().map(|(o, _, _)| *o).collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "offsets rise");
    assert!(
        *offsets.last().expect("records") >= 30_000,
        "the offsets keep their places"
    );
    // stratactl shows where the cleaned part ends, the dirty share and the last pass.
    let described = describe(&bootstrap, "table").await;
    let cleaner = &described["partitions"][0]["cleaner"];
    assert!(
        cleaner["cleaned_offset"].as_i64().expect("cleaned offset") >= 30_000,
        "{described}"
    );
    assert!(cleaner["last_clean_ms"].as_i64().is_some(), "{described}");
    assert!(
        cleaner["dirty_ratio"].as_f64().expect("ratio") < 0.5,
        "{described}"
    );
    let mut text = Vec::new();
    let argv = [
        "stratactl",
        "--bootstrap",
        &bootstrap,
        "topic",
        "describe",
        "table",
    ];
    strata_client::cli::run(argv, &mut "".as_bytes(), &mut text)
        .await
        .expect("describe");
    let text = String::from_utf8(text).expect("utf-8");
    assert!(
        text.contains("DIRTY") && text.contains("LAST-CLEAN") && text.contains("s ago"),
        "{text}"
    );
    // A restart reads the cleaned segments back, and once delete.retention.ms is short
    // enough for them a later pass drops the tombstones.
    let client = strata_client::Client::connect(&bootstrap)
        .await
        .expect("connect");
    let short = BTreeMap::from([("delete.retention.ms".to_owned(), "2000".to_owned())]);
    client
        .alter_topic_config("table", &short, &[])
        .await
        .expect("alter");
    broker.restart().await;
    let bootstrap = broker.bootstrap();
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    seal(&bootstrap, "table", &mut latest).await;
    let got = wait_compacted(&bootstrap, "table", &latest, Tombstones::Gone);
    assert!(got.iter().all(|(_, _, v)| v.is_some()));
    broker.stop().await;
}

/// The records the segments of the newest manifest of `topic`/0 hold in the bucket (the
/// broker's local-directory object store).
async fn records_in_bucket(broker: &TestBroker, topic: &str) -> usize {
    use object_store::local::LocalFileSystem;
    use strata_storage::tier::manifest::PartitionObjects;
    let root = broker.data_dir().join("objects");
    // The catalog entry next to each tiered topic's objects names it.
    let id: uuid::Uuid = std::fs::read_dir(root.join("topics"))
        .expect("topics in the bucket")
        .filter_map(|e| e.ok())
        .find(|e| {
            std::fs::read(e.path().join("topic.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .is_some_and(|entry| entry["name"] == topic)
        })
        .expect("the topic's catalog entry")
        .file_name()
        .to_string_lossy()
        .parse()
        .expect("a topic id");
    let store = std::sync::Arc::new(LocalFileSystem::new_with_prefix(&root).expect("store"));
    let objects = PartitionObjects::new(store, &object_store::path::Path::default(), id, 0);
    let manifest = objects.latest().await.expect("read").expect("a manifest");
    let mut n = 0;
    for s in &manifest.segments {
        let path = root.join(s.key(&objects, strata_storage::SegmentFile::Log).as_ref());
        let bytes = std::fs::read(&path).expect("segment object");
        let mut at = 0;
        while at < bytes.len() {
            let h = strata_storage::BatchHeader::parse(&bytes[at..]).expect("batch");
            n += strata_storage::compact::decode(&bytes[at..at + h.total_len()])
                .expect("records")
                .len();
            at += h.total_len();
        }
    }
    n
}

/// The size of the tiered workload: `COMPACTION_MIB` MiB of 1 KiB values over 10,000 keys
/// (the 1 GiB run: `COMPACTION_MIB=1024`), or by default 30,000 records of 100
/// bytes over 1,000 keys. Returns (records, keys, value bytes, how long to wait).
fn tiered_workload() -> (usize, usize, usize, Duration) {
    match std::env::var("COMPACTION_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(mib) => ((mib << 20) / 1024, 10_000, 1024, Duration::from_secs(1800)),
        None => (30_000, 1_000, 100, WAIT),
    }
}

/// Waits until `topic`/0 keeps nothing but its active segment locally: every sealed
/// segment is uploaded and evicted.
async fn evicted(bootstrap: &str, topic: &str, wait: Duration) {
    let client = strata_client::Client::connect(bootstrap)
        .await
        .expect("connect");
    let deadline = Instant::now() + wait;
    loop {
        let end = client.list_offset(topic, 0, -1).await.expect("end");
        let local = client.list_offset(topic, 0, -4).await.expect("local start");
        if local >= end - 1 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "local log starts at {local} of {end}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_tiered_topic_is_compacted_in_the_bucket_too() {
    let broker = TestBroker::start_with(fast_cleaner).await;
    let bootstrap = broker.bootstrap();
    let topic = "tiered-table";
    create(
        &bootstrap,
        topic,
        &[
            ("cleanup.policy", "compact"),
            ("segment.bytes", "65536"),
            ("segment.ms", "1000"),
            ("min.cleanable.dirty.ratio", "0"),
            ("delete.retention.ms", "2000"),
        ],
    )
    .await;
    let (records, keys, value_len, wait) = tiered_workload();
    let mut latest = produce(&bootstrap, topic, records, keys, value_len, "zstd").await;
    seal(&bootstrap, topic, &mut latest).await;
    // Cleaned while the segments are local (and uploaded meanwhile).
    wait_compacted_within(&bootstrap, topic, &latest, Tombstones::Either, wait);
    // Then only in the bucket: uploaded segments leave the local disk, reads come from the
    // object store, and they read the same.
    let client = strata_client::Client::connect(&bootstrap)
        .await
        .expect("connect");
    let evict = BTreeMap::from([("local.retention.ms".to_owned(), "0".to_owned())]);
    client
        .alter_topic_config(topic, &evict, &[])
        .await
        .expect("evict");
    evicted(&bootstrap, topic, wait).await;
    wait_compacted_within(&bootstrap, topic, &latest, Tombstones::Either, wait);
    // Later passes drop the tombstones, in the bucket too; the bucket then holds about one
    // value per live key (the last segments may not be cleaned yet).
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    seal(&bootstrap, topic, &mut latest).await;
    let got = wait_compacted_within(&bootstrap, topic, &latest, Tombstones::Gone, wait);
    let offsets: Vec<i64> = got.iter().map(|(o, _, _)| *o).collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "offsets rise");
    assert!(
        offsets.windows(2).any(|w| w[1] > w[0] + 1),
        "offsets keep their places, with gaps"
    );
    let live = latest.values().filter(|v| v.is_some()).count();
    let deadline = Instant::now() + wait;
    loop {
        let n = records_in_bucket(&broker, topic).await;
        if n <= live + live / 10 {
            eprintln!("{n} records in the bucket for {live} live keys");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} records in the bucket for {live} keys"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    broker.stop().await;
}

/// `__consumer_offsets` is compacted and tiered: a broker that starts with an empty disk
/// (and an empty controller) on the same bucket recreates it from the catalog, restores its
/// log from the bucket and answers every group's committed offsets as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_survive_a_wiped_disk_through_the_bucket() {
    use std::sync::Arc;

    use object_store::ObjectStore;
    use strata_client::Client;

    let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let tweak = |c: &mut BrokerConfig| {
        fast_cleaner(c);
        c.object_store.tier_internal_topics = true;
        c.groups.offsets_topic_partitions = 1;
        c.groups.offsets_topic_segment_bytes = 2048;
    };
    let first = TestBroker::start_on_store(Some(store.clone()), tweak).await;
    let client = Client::connect(&first.bootstrap()).await.expect("connect");
    client
        .create_topic("orders", 4, -1, &BTreeMap::new())
        .await
        .expect("create");
    // Rounds of commits by 20 groups: only the last round's offsets stand, and the cleaner
    // removes the older ones.
    let mut expected = BTreeMap::new();
    for round in 0..5i64 {
        for g in 0..20i64 {
            let offsets = (0..4)
                .map(|p| {
                    (
                        ("orders".to_owned(), p),
                        round * 1000 + g * 10 + i64::from(p),
                    )
                })
                .collect();
            let group = format!("group-{g}");
            client
                .commit_offsets(&group, &offsets)
                .await
                .expect("commit");
            expected.insert(group, offsets);
        }
    }
    // Until what the groups committed is in a sealed, uploaded segment, other commits move
    // the offsets topic on.
    let mark = client
        .list_offset("__consumer_offsets", 0, -1)
        .await
        .expect("end");
    let deadline = Instant::now() + WAIT;
    let mut filler = 0i64;
    while client
        .list_offset("__consumer_offsets", 0, -5)
        .await
        .expect("tiered")
        < mark
    {
        assert!(
            Instant::now() < deadline,
            "the offsets topic is not uploaded"
        );
        filler += 1;
        let offsets = BTreeMap::from([(("orders".to_owned(), 0), filler)]);
        client
            .commit_offsets("filler", &offsets)
            .await
            .expect("commit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(client);
    first.stop().await;

    // New data directory, new controller, same bucket.
    let second = TestBroker::start_on_store(Some(store.clone()), tweak).await;
    let client = Client::connect(&second.bootstrap()).await.expect("connect");
    for (group, offsets) in &expected {
        // The coordinator loads the restored partition first (COORDINATOR_LOAD_IN_PROGRESS,
        // which the client retries for 10 s; longer on a busy machine).
        let deadline = Instant::now() + WAIT;
        let got = loop {
            match client.committed_offsets(group).await {
                Ok(got) => break got,
                Err(e) if Instant::now() < deadline => eprintln!("{group}: {e}; retrying"),
                Err(e) => panic!("{group}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(&got, offsets, "{group}");
    }
    drop(client);
    second.stop().await;
}

/// The `strata-node` binary these process tests run.
fn binary() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_strata-node"))
}

/// Whether some file under `dir` (recursively) has a name for which `pred` holds.
fn any_file(dir: &std::path::Path, pred: &dyn Fn(&str) -> bool) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.filter_map(|e| e.ok()).any(|e| {
        let path = e.path();
        match path.is_dir() {
            true => any_file(&path, pred),
            false => pred(&e.file_name().to_string_lossy()),
        }
    })
}

/// Asserts that a consumer from offset 0 reads, for every key, the latest value last (an
/// older one may still precede it while cleaning is unfinished), offsets rising.
fn nothing_lost(bootstrap: &str, topic: &str, latest: &Latest) {
    let got = read_all(bootstrap, topic);
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "offsets rise");
    let last: Latest = got.into_iter().map(|(_, k, v)| (k, v)).collect();
    for (key, value) in latest {
        if value.is_some() {
            assert_eq!(
                last.get(key),
                Some(value),
                "{}: the latest value is lost",
                String::from_utf8_lossy(key)
            );
        }
    }
}

/// Kills the broker (`kill -9`) once `in_progress` sees a clean half done on its disk or in
/// its bucket, restarts it, and checks that nothing that should survive was lost and that
/// cleaning then completes.
async fn crash_mid_clean(
    topic: &str,
    tiered: bool,
    in_progress: &dyn Fn(&std::path::Path) -> bool,
) {
    use strata_tests::cluster::ProcessCluster;
    let mut cluster = ProcessCluster::start_with(
        binary(),
        1,
        &[
            "cleaner.backoff_ms=200",
            // Slow enough that the pass is caught in the middle.
            "cleaner.io_max_bytes_per_second=1000000",
            "topics.flush_check_interval_ms=200",
            "object_store.upload_interval_ms=200",
        ],
    )
    .await;
    let bootstrap = cluster.bootstrap();
    let remote = if tiered { "true" } else { "false" };
    // Written while the topic only keeps everything; for the remote case, all of it is
    // uploaded and gone from the local disk before compaction is switched on.
    create(
        &bootstrap,
        topic,
        &[
            ("retention.ms", "-1"),
            ("segment.bytes", "65536"),
            ("segment.ms", "1000"),
            ("min.cleanable.dirty.ratio", "0"),
            ("remote.storage.enable", remote),
            ("local.retention.ms", if tiered { "0" } else { "-2" }),
        ],
    )
    .await;
    let mut latest = produce(&bootstrap, topic, 20_000, 500, 200, "none").await;
    seal(&bootstrap, topic, &mut latest).await;
    let client = strata_client::Client::connect(&bootstrap)
        .await
        .expect("connect");
    if tiered {
        let end = client.list_offset(topic, 0, -1).await.expect("end");
        let deadline = Instant::now() + WAIT;
        while client.list_offset(topic, 0, -4).await.expect("local start") < end - 1 {
            assert!(Instant::now() < deadline, "not uploaded and evicted");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let compact = BTreeMap::from([("cleanup.policy".to_owned(), "compact".to_owned())]);
    client
        .alter_topic_config(topic, &compact, &[])
        .await
        .expect("compact");
    let node = cluster.data_dir(1);
    let deadline = Instant::now() + WAIT;
    while !in_progress(&node) {
        if Instant::now() > deadline {
            let logs = cluster.logs();
            let tail: Vec<&str> = logs.lines().rev().take(40).collect();
            panic!(
                "no clean was seen in progress; the broker's log ends:\n{}",
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.kill(1).await;
    cluster.restart(1);
    cluster.wait_for_brokers(1, WAIT).await;
    nothing_lost(&bootstrap, topic, &latest);
    wait_compacted(&bootstrap, topic, &latest, Tombstones::Either);
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_in_the_middle_of_a_local_clean_loses_nothing() {
    crash_mid_clean("local-crash", false, &|node| {
        any_file(&node.join("logs"), &|name| name.ends_with(".cleaned"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_in_the_middle_of_a_remote_clean_loses_nothing() {
    // Objects of a rewritten generation are `<base>-<epoch>-<generation>.<ext>`, in the
    // bucket the cluster's nodes share beside their data directories.
    crash_mid_clean("remote-crash", true, &|node| {
        let bucket = node
            .parent()
            .expect("the cluster's directory")
            .join("objects");
        any_file(&bucket, &|name| {
            name.ends_with(".log") && name.matches('-').count() == 2
        })
    })
    .await;
}
