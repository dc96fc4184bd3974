//! `stratactl` against an in-process broker: each command's output is checked, in table and
//! JSON form, and failures name their cause.

use strata_client::cli::{self, CliError};
use strata_tests::TestBroker;

/// Runs stratactl with `args` against `bootstrap`; returns what it printed.
async fn ctl(bootstrap: &str, args: &[&str]) -> Result<String, CliError> {
    ctl_with_input(bootstrap, args, "").await
}

/// Runs stratactl with `input` on its standard input.
async fn ctl_with_input(bootstrap: &str, args: &[&str], input: &str) -> Result<String, CliError> {
    let mut out = Vec::new();
    let argv = ["stratactl", "--bootstrap", bootstrap]
        .into_iter()
        .chain(args.iter().copied());
    cli::run(argv, &mut input.as_bytes(), &mut out).await?;
    Ok(String::from_utf8(out).expect("utf-8 output"))
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).expect("JSON output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_commands_create_list_describe_and_delete() {
    let broker = TestBroker::start().await;
    let b = broker.bootstrap();
    let out = ctl(
        &b,
        &[
            "topic",
            "create",
            "orders",
            "-p",
            "3",
            "-c",
            "retention.ms=60000",
        ],
    )
    .await
    .expect("create");
    assert_eq!(out, "created topic orders\n");
    ctl(&b, &["topic", "create", "audit", "--partitions", "1"])
        .await
        .expect("create");

    let out = ctl(&b, &["topic", "list"]).await.expect("list");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("TOPIC") && lines[0].contains("PARTITIONS"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("audit ") && lines[1].contains(" 1 "),
        "{out}"
    );
    assert!(
        lines[2].starts_with("orders") && lines[2].contains(" 3 "),
        "{out}"
    );
    assert_eq!(lines.len(), 3, "internal topics are hidden: {out}");
    let listed = json(&ctl(&b, &["topic", "list", "--json"]).await.expect("list"));
    let names: Vec<&str> = listed
        .as_array()
        .expect("array")
        .iter()
        .map(|t| t["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["audit", "orders"]);
    assert_eq!(listed[1]["partitions"], 3);

    let out = ctl(&b, &["topic", "describe", "orders"])
        .await
        .expect("describe");
    assert!(out.starts_with("topic orders  id "), "{out}");
    let rows: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("PARTITION"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    assert_eq!(rows.len(), 3, "{out}");
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[0], i.to_string());
        assert_eq!(cells[1], "1", "led by broker 1: {out}");
    }
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["retention.ms", "60000"]),
        "{out}"
    );
    let d = json(
        &ctl(&b, &["--json", "topic", "describe", "orders"])
            .await
            .expect("describe"),
    );
    assert_eq!(d["partitions"].as_array().expect("partitions").len(), 3);
    assert_eq!(d["configs"]["retention.ms"], "60000");
    assert!(
        d["configs"].get("segment.bytes").is_none(),
        "only set configs"
    );
    let all = json(
        &ctl(
            &b,
            &["--json", "topic", "describe", "orders", "--all-configs"],
        )
        .await
        .expect("describe"),
    );
    assert!(all["configs"].get("segment.bytes").is_some());

    let out = ctl(&b, &["topic", "delete", "orders"])
        .await
        .expect("delete");
    assert_eq!(out, "deleted topic orders\n");
    let out = ctl(&b, &["topic", "list"]).await.expect("list");
    assert!(!out.contains("orders"), "{out}");

    // Failures say what is wrong and what to do.
    let e = ctl(&b, &["topic", "describe", "orders"])
        .await
        .expect_err("gone");
    assert!(
        e.to_string().contains("\"orders\" does not exist") && e.to_string().contains("topic list"),
        "{e}"
    );
    assert_eq!(e.exit_code(), 1);
    let e = ctl(&b, &["topic", "create", "audit"])
        .await
        .expect_err("exists");
    assert!(e.to_string().contains("TopicAlreadyExists"), "{e}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_info_names_the_brokers_and_the_controller() {
    let broker = TestBroker::start().await;
    let b = broker.bootstrap();
    let out = ctl(&b, &["cluster", "info"]).await.expect("info");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("BROKER"), "{out}");
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(cells, ["1", b.as_str(), "yes"], "{out}");
    let j = json(&ctl(&b, &["cluster", "info", "--json"]).await.expect("info"));
    assert_eq!(j["controller"], 1);
    assert_eq!(j["brokers"][0]["id"], 1);
    // One broker leads everything already: a preferred election has nothing to do.
    ctl(&b, &["topic", "create", "e", "-p", "2"])
        .await
        .expect("create");
    let out = ctl(&b, &["cluster", "elect-leaders", "--topic", "e"])
        .await
        .expect("elect");
    let lines: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines.iter().all(|l| l.contains("ElectionNotNeeded")),
        "{out}"
    );
    // An unclean election of a partition that has a leader has nothing to do either.
    let out = ctl(
        &b,
        &[
            "cluster",
            "elect-leaders",
            "--topic",
            "e",
            "-p",
            "1",
            "--unclean",
        ],
    )
    .await
    .expect("elect");
    let lines: Vec<&str> = out.lines().skip(1).collect();
    assert!(
        lines.len() == 1 && lines[0].contains("ElectionNotNeeded"),
        "{out}"
    );
    let e = ctl(&b, &["cluster", "elect-leaders", "--partition", "0"])
        .await
        .expect_err("a partition needs its topic");
    assert!(e.to_string().contains("--topic"), "{e}");
    // A reassignment to an unknown broker is refused with Kafka's error; one to where the
    // partition already is completes at once, so none is left in progress.
    let out = ctl(&b, &["topic", "reassign", "e", "-p", "0", "-r", "7"])
        .await
        .expect("answered");
    assert!(
        out.contains("InvalidReplicaAssignment") && out.contains("broker 7 is not registered"),
        "{out}"
    );
    let out = ctl(&b, &["topic", "reassign", "e", "-p", "0", "-r", "1"])
        .await
        .expect("reassign");
    assert!(out.contains("started"), "{out}");
    let out = ctl(&b, &["topic", "reassignments"]).await.expect("list");
    assert_eq!(out.lines().count(), 1, "only the header: {out}");
    let out = ctl(&b, &["topic", "reassign", "e", "-p", "0", "--cancel"])
        .await
        .expect("answered");
    assert!(out.contains("NoReassignmentInProgress"), "{out}");
    broker.stop().await;
}

#[tokio::test]
async fn usage_errors_and_an_unreachable_broker_are_explained() {
    // Nothing listens on port 1.
    let e = ctl("127.0.0.1:1", &["topic", "list"])
        .await
        .expect_err("unreachable");
    assert!(
        e.to_string().contains("cannot reach 127.0.0.1:1") && e.to_string().contains("--bootstrap"),
        "{e}"
    );
    let e = ctl("127.0.0.1:1", &["topic", "create"])
        .await
        .expect_err("no name");
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().contains("<NAME>"), "{e}");
    let e = ctl("127.0.0.1:1", &["topic", "create", "x", "-c", "novalue"])
        .await
        .expect_err("bad config");
    assert!(e.to_string().contains("not key=value"), "{e}");
    let help = ctl("127.0.0.1:1", &["topic", "--help"])
        .await
        .expect("help");
    assert!(
        help.contains("create") && help.contains("describe"),
        "{help}"
    );
    // A broker that accepts but never answers (a hung process, a half-open route) is given
    // up after --timeout-ms, not waited on forever.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    let held = tokio::spawn(async move {
        let accepted = silent.accept().await;
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        drop(accepted);
    });
    let started = std::time::Instant::now();
    let e = ctl(&addr, &["--timeout-ms", "500", "topic", "list"])
        .await
        .expect_err("no answer");
    assert!(e.to_string().contains("no answer within"), "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_consume_lines_keys_headers_and_positions() {
    let broker = TestBroker::start().await;
    let b = broker.bootstrap();
    ctl(&b, &["topic", "create", "events", "-p", "3"])
        .await
        .expect("create");
    let input: String = (0..30).map(|i| format!("k{i}:v{i}\n")).collect();
    let out = ctl_with_input(
        &b,
        &["produce", "events", "-k", ":", "-H", "src=test"],
        &input,
    )
    .await
    .expect("produce");
    assert_eq!(out, "produced 30 records to events\n");

    // Everything, keys printed, in some partition order: the same set of lines.
    let out = ctl(
        &b,
        &[
            "consume",
            "events",
            "--from-beginning",
            "--print-key",
            "-k",
            ":",
        ],
    )
    .await
    .expect("consume");
    let mut got: Vec<&str> = out.lines().collect();
    let mut want: Vec<&str> = input.lines().collect();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want);

    // JSON lines: keyed records sit where Kafka's partitioner puts them; headers travel.
    let out = ctl(&b, &["--json", "consume", "events", "--from-beginning"])
        .await
        .expect("consume");
    let records: Vec<serde_json::Value> = out.lines().map(json).collect();
    assert_eq!(records.len(), 30);
    for r in &records {
        let key = r["key"].as_str().expect("key");
        let p = strata_client::data::partition_for_key(key.as_bytes(), 3);
        assert_eq!(r["partition"], p, "{r}");
        assert_eq!(r["headers"]["src"], "test");
        assert_eq!(r["value"], key.replace('k', "v"));
    }
    let in_zero = records.iter().filter(|r| r["partition"] == 0).count();
    assert!(in_zero >= 3, "keys spread over the partitions");

    // From an offset, a count; from a time; from the end (nothing new yet).
    let out = ctl(
        &b,
        &[
            "--json", "consume", "events", "-p", "0", "--offset", "1", "-n", "2",
        ],
    )
    .await
    .expect("consume");
    let offsets: Vec<i64> = out
        .lines()
        .map(|l| json(l)["offset"].as_i64().expect("offset"))
        .collect();
    assert_eq!(offsets, [1, 2]);
    let hour_ago = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
        - 3_600_000)
        .to_string();
    let out = ctl(&b, &["consume", "events", "--timestamp", &hour_ago])
        .await
        .expect("consume");
    assert_eq!(out.lines().count(), 30);
    assert_eq!(ctl(&b, &["consume", "events"]).await.expect("consume"), "");

    // Without keys, from a file, into one partition.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("lines.txt");
    std::fs::write(&file, "a\nb\nc\n").expect("write");
    let path = file.to_str().expect("path");
    let out = ctl(&b, &["produce", "events", "-p", "2", "--file", path])
        .await
        .expect("produce");
    assert_eq!(out, "produced 3 records to events\n");
    let out = ctl(&b, &["consume", "events", "-p", "2", "--from-beginning"])
        .await
        .expect("consume");
    assert!(out.ends_with("a\nb\nc\n"), "{out}");

    let e = ctl_with_input(&b, &["produce", "events", "-p", "7"], "x\n")
        .await
        .expect_err("no partition 7");
    assert!(e.to_string().contains("partition 7 does not exist"), "{e}");
    let e = ctl_with_input(&b, &["produce", "nowhere"], "x\n")
        .await
        .expect_err("no topic");
    assert!(e.to_string().contains("does not exist"), "{e}");
    broker.stop().await;
}

/// Runs `args` until its output has `lines` lines (records produced with acks 0 may land a
/// moment after the producer returns).
async fn ctl_until_lines(bootstrap: &str, args: &[&str], lines: usize) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let out = ctl(bootstrap, args).await.expect("command");
        if out.lines().count() >= lines || std::time::Instant::now() > deadline {
            return out;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_codec_and_acks_zero_round_trip_and_librdkafka_reads_them() {
    use rdkafka::ClientConfig;
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};

    let broker = TestBroker::start().await;
    let b = broker.bootstrap();
    ctl(&b, &["topic", "create", "packed", "-p", "2"])
        .await
        .expect("create");
    let mut want = Vec::new();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let input: String = (0..40)
            .map(|i| format!("{codec}-{i}:value {i} of {codec}\n"))
            .collect();
        let out = ctl_with_input(
            &b,
            &["produce", "packed", "-k", ":", "--compression", codec],
            &input,
        )
        .await
        .expect("produce");
        assert_eq!(out, "produced 40 records to packed\n");
        want.extend(input.lines().map(str::to_owned));
    }
    let input: String = (0..10)
        .map(|i| format!("fire-{i}:and forget {i}\n"))
        .collect();
    let out = ctl_with_input(&b, &["produce", "packed", "-k", ":", "--acks", "0"], &input)
        .await
        .expect("produce");
    assert_eq!(out, "produced 10 records to packed\n");
    want.extend(input.lines().map(str::to_owned));
    want.sort();

    let args = [
        "consume",
        "packed",
        "--from-beginning",
        "--print-key",
        "-k",
        ":",
    ];
    let out = ctl_until_lines(&b, &args, want.len()).await;
    let mut got: Vec<String> = out.lines().map(str::to_owned).collect();
    got.sort();
    assert_eq!(got, want);

    // A Kafka client reads the same batches, so they are valid Kafka batches.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &b)
        .set("group.id", "codec-check")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&["packed"]).expect("subscribe");
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while seen.len() < want.len() && std::time::Instant::now() < deadline {
        if let Some(m) = consumer.poll(std::time::Duration::from_millis(200)) {
            let m = m.expect("message");
            let key = String::from_utf8_lossy(m.key().expect("key")).into_owned();
            let value = String::from_utf8_lossy(m.payload().expect("value")).into_owned();
            seen.push(format!("{key}:{value}"));
        }
    }
    seen.sort();
    assert_eq!(seen, want);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_config_sets_and_removes_topic_configs() {
    let broker = TestBroker::start().await;
    let b = broker.bootstrap();
    ctl(
        &b,
        &["topic", "create", "tuned", "-c", "retention.ms=60000"],
    )
    .await
    .expect("create");
    let out = ctl(
        &b,
        &[
            "topic",
            "alter-config",
            "tuned",
            "--set",
            "segment.bytes=1048576",
            "--delete",
            "retention.ms",
        ],
    )
    .await
    .expect("alter");
    assert_eq!(
        out,
        "set segment.bytes=1048576 on tuned\nremoved retention.ms from tuned\n"
    );
    let d = json(
        &ctl(&b, &["--json", "topic", "describe", "tuned"])
            .await
            .expect("describe"),
    );
    assert_eq!(d["configs"]["segment.bytes"], "1048576");
    assert!(d["configs"].get("retention.ms").is_none(), "{d}");

    let e = ctl(
        &b,
        &["topic", "alter-config", "tuned", "-s", "segment.bytes=-5"],
    )
    .await
    .expect_err("invalid value");
    assert!(e.to_string().contains("InvalidConfig"), "{e}");
    let e = ctl(
        &b,
        &["topic", "alter-config", "missing", "-s", "retention.ms=1"],
    )
    .await
    .expect_err("no topic");
    assert!(e.to_string().contains("does not exist"), "{e}");
    let e = ctl(&b, &["topic", "alter-config", "tuned"])
        .await
        .expect_err("nothing to do");
    assert_eq!(e.exit_code(), 2);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_commands_set_list_and_remove() {
    let broker = TestBroker::start().await;
    let b = broker.bootstrap();
    let out = ctl(
        &b,
        &[
            "quota",
            "set",
            "--user",
            "alice",
            "--default-client-id",
            "producer_byte_rate=1048576",
            "request_percentage=25",
        ],
    )
    .await
    .expect("set");
    assert_eq!(
        out,
        "client-id=<default>,user=alice: producer_byte_rate=1048576, request_percentage=25 set\n"
    );
    ctl(
        &b,
        &[
            "quota",
            "set",
            "--ip",
            "10.0.0.9",
            "connection_creation_rate=3",
        ],
    )
    .await
    .expect("set ip");
    let table = ctl(&b, &["quota", "list", "--user", "alice"])
        .await
        .expect("list");
    assert!(
        table.contains("client-id=<default>,user=alice  producer_byte_rate  1048576"),
        "{table}"
    );
    assert!(!table.contains("10.0.0.9"), "filtered by user: {table}");
    let all = json(&ctl(&b, &["--json", "quota", "list"]).await.expect("list"));
    assert_eq!(all.as_array().map(Vec::len), Some(2), "{all}");
    assert_eq!(all[1]["entity"]["ip"], "10.0.0.9", "{all}");
    assert_eq!(all[1]["quotas"]["connection_creation_rate"], 3.0, "{all}");
    ctl(
        &b,
        &[
            "quota",
            "remove",
            "--user",
            "alice",
            "--default-client-id",
            "producer_byte_rate",
            "request_percentage",
        ],
    )
    .await
    .expect("remove");
    let all = json(&ctl(&b, &["--json", "quota", "list"]).await.expect("list"));
    assert_eq!(all.as_array().map(Vec::len), Some(1), "{all}");

    let e = ctl(
        &b,
        &["quota", "set", "--user", "alice", "producer_byte_rate=fast"],
    )
    .await
    .expect_err("not a number");
    assert_eq!(e.exit_code(), 2);
    let e = ctl(&b, &["quota", "set", "producer_byte_rate=1"])
        .await
        .expect_err("no entity");
    assert_eq!(e.exit_code(), 2);
    let e = ctl(
        &b,
        &["quota", "set", "--user", "alice", "request_percentage=-1"],
    )
    .await
    .expect_err("refused by the broker");
    assert!(e.to_string().contains("positive"), "{e}");
    broker.stop().await;
}

/// The COMMITTED, LOG-END and LAG cells of `topic`/`partition` in `group describe` output.
fn offsets_row(out: &str, topic: &str, partition: i32) -> Vec<String> {
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|c| c.len() >= 5 && c[0] == topic && c[1] == partition.to_string())
        .map(|c| c[2..5].iter().map(|s| (*s).to_owned()).collect())
        .unwrap_or_else(|| panic!("no row for {topic}/{partition}: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_are_listed_described_reset_and_consumed_from() {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};

    let broker = TestBroker::start().await;
    let b = broker.bootstrap();
    ctl(&b, &["topic", "create", "jobs", "-p", "2"])
        .await
        .expect("create");
    let input: String = (0..20).map(|i| format!("job {i}\n")).collect();
    ctl_with_input(&b, &["produce", "jobs", "-p", "0"], &input)
        .await
        .expect("produce");
    ctl_with_input(&b, &["produce", "jobs", "-p", "1"], "one\ntwo\n")
        .await
        .expect("produce");

    // A group with nothing committed starts where --from-beginning says, and commits.
    let out = ctl(
        &b,
        &[
            "consume",
            "jobs",
            "-g",
            "workers",
            "--from-beginning",
            "-n",
            "5",
            "-p",
            "0",
        ],
    )
    .await
    .expect("consume");
    assert_eq!(out, "job 0\njob 1\njob 2\njob 3\njob 4\n");
    // The next run resumes after what was committed.
    let out = ctl(
        &b,
        &["consume", "jobs", "-g", "workers", "-n", "2", "-p", "0"],
    )
    .await
    .expect("consume");
    assert_eq!(out, "job 5\njob 6\n");

    let out = ctl(&b, &["group", "list"]).await.expect("list");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["GROUP", "STATE", "TYPE"]);
    assert!(rows.iter().any(|r| r[..2] == ["workers", "Empty"]), "{out}");

    let out = ctl(&b, &["group", "describe", "workers"])
        .await
        .expect("describe");
    assert!(
        out.starts_with("group workers  type classic  state Empty"),
        "{out}"
    );
    assert_eq!(offsets_row(&out, "jobs", 0), ["7", "20", "13"]);
    let d = json(
        &ctl(&b, &["--json", "group", "describe", "workers"])
            .await
            .expect("describe"),
    );
    assert_eq!(d["offsets"][0]["lag"], 13);

    // Reset: a dry run changes nothing; --execute does.
    let out = ctl(
        &b,
        &[
            "group",
            "reset-offsets",
            "workers",
            "-t",
            "jobs",
            "--to-earliest",
        ],
    )
    .await
    .expect("dry run");
    assert!(out.contains("add --execute"), "{out}");
    let out = ctl(&b, &["group", "describe", "workers"])
        .await
        .expect("describe");
    assert_eq!(offsets_row(&out, "jobs", 0), ["7", "20", "13"]);
    for (args, want0, want1) in [
        (&["--to-offset", "3"][..], "3", "2"),
        (&["--shift-by", "4"], "7", "2"),
        (&["--shift-by", "-100"], "0", "0"),
        (&["--to-latest"], "20", "2"),
    ] {
        let mut argv = vec![
            "group",
            "reset-offsets",
            "workers",
            "-t",
            "jobs",
            "--execute",
        ];
        argv.extend_from_slice(args);
        let out = ctl(&b, &argv).await.expect("reset");
        assert!(out.contains("committed new offsets"), "{out}");
        let out = ctl(&b, &["group", "describe", "workers"])
            .await
            .expect("describe");
        assert_eq!(offsets_row(&out, "jobs", 0)[0], want0, "{args:?}: {out}");
        assert_eq!(offsets_row(&out, "jobs", 1)[0], want1, "{args:?}: {out}");
    }
    let hour_ago = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
        - 3_600_000)
        .to_string();
    ctl(
        &b,
        &[
            "group",
            "reset-offsets",
            "workers",
            "-t",
            "jobs",
            "-p",
            "0",
            "--to-datetime",
            &hour_ago,
            "--execute",
        ],
    )
    .await
    .expect("reset");
    let out = ctl(&b, &["group", "describe", "workers"])
        .await
        .expect("describe");
    assert_eq!(offsets_row(&out, "jobs", 0), ["0", "20", "20"]);

    // A running member: describe shows it and its partitions; resets are refused.
    let member: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &b)
        .set("group.id", "workers")
        .set("client.id", "live-worker")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    member.subscribe(&["jobs"]).expect("subscribe");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let out = loop {
        let _ = member.poll(std::time::Duration::from_millis(100));
        let out = ctl(&b, &["group", "describe", "workers"])
            .await
            .expect("describe");
        if out.contains("state Stable") || std::time::Instant::now() > deadline {
            break out;
        }
    };
    assert!(
        out.contains("state Stable") && out.contains("members 1"),
        "{out}"
    );
    assert!(
        out.contains("live-worker") && out.contains("jobs:0,1"),
        "{out}"
    );
    let e = ctl(
        &b,
        &[
            "group",
            "reset-offsets",
            "workers",
            "-t",
            "jobs",
            "--to-earliest",
            "--execute",
        ],
    )
    .await
    .expect_err("active group");
    assert!(e.to_string().contains("active members"), "{e}");
    let e = ctl(&b, &["consume", "jobs", "-g", "workers"])
        .await
        .expect_err("active group");
    assert!(e.to_string().contains("active members"), "{e}");
    drop(member);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiering_status_shows_remote_and_local_ranges_and_upload_lag() {
    let broker = TestBroker::start_with(|c| c.object_store.upload_interval_ms = 100).await;
    let b = broker.bootstrap();
    ctl(
        &b,
        &["topic", "create", "cold", "-c", "segment.bytes=16384"],
    )
    .await
    .expect("create");
    ctl(
        &b,
        &[
            "topic",
            "create",
            "hot",
            "-c",
            "remote.storage.enable=false",
        ],
    )
    .await
    .expect("create");
    let line = format!("{}\n", "x".repeat(1000));
    ctl_with_input(
        &b,
        &["produce", "cold", "--linger-ms", "0", "--batch-size", "1"],
        &line.repeat(100),
    )
    .await
    .expect("produce");
    ctl_with_input(&b, &["produce", "hot"], &line.repeat(3))
        .await
        .expect("produce");

    // Sealed segments reach the object store; the active one stays local only.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        let s = json(
            &ctl(&b, &["--json", "tiering", "status", "cold"])
                .await
                .expect("status"),
        );
        let done = s["partitions"][0]["remote_end"].as_i64().unwrap_or(0) >= 90;
        if done || std::time::Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let p = &status["partitions"][0];
    assert_eq!(status["tiered"], true);
    assert_eq!(p["log_start"], 0);
    assert_eq!(p["log_end"], 100);
    let remote_end = p["remote_end"].as_i64().expect("uploaded");
    assert!((90..100).contains(&remote_end), "{status}");
    assert_eq!(p["upload_lag"], 100 - remote_end);
    let out = ctl(&b, &["tiering", "status", "cold"])
        .await
        .expect("status");
    let cells: Vec<&str> = out
        .lines()
        .nth(1)
        .expect("row")
        .split_whitespace()
        .collect();
    assert_eq!(cells[0], "0");
    assert_eq!(cells[1], format!("0..{remote_end}"));
    assert!(cells[2].ends_with("..100"), "{out}");
    assert_eq!(
        cells[3..],
        ["100", &(100 - remote_end).to_string()],
        "{out}"
    );

    let out = ctl(&b, &["tiering", "status", "hot"])
        .await
        .expect("status");
    let cells: Vec<&str> = out
        .lines()
        .nth(1)
        .expect("row")
        .split_whitespace()
        .collect();
    assert_eq!(cells, ["0", "-", "0..3", "3", "not", "tiered"], "{out}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perf_produce_consume_and_e2e_report_throughput_and_latency() {
    let broker = TestBroker::start().await;
    let b = broker.bootstrap();
    // The topic is created on first use, with the partitions asked for.
    let r = json(
        &ctl(
            &b,
            &[
                "--json",
                "perf",
                "produce",
                "-t",
                "load",
                "-p",
                "3",
                "-n",
                "3000",
                "-s",
                "200",
                "--compression",
                "lz4",
            ],
        )
        .await
        .expect("perf produce"),
    );
    let r = &r[0];
    assert_eq!(r["test"], "produce");
    assert_eq!(r["records"], 3000);
    assert_eq!(r["bytes"], 600_000);
    assert!(r["records_per_sec"].as_f64().expect("rate") > 0.0);
    let l = &r["latency_ms"];
    for (lo, hi) in [
        ("p50", "p95"),
        ("p95", "p99"),
        ("p99", "p99.9"),
        ("p99.9", "max"),
    ] {
        assert!(l[lo].as_f64() <= l[hi].as_f64(), "{l}");
    }
    let d = json(
        &ctl(&b, &["--json", "topic", "describe", "load"])
            .await
            .expect("describe"),
    );
    assert_eq!(d["partitions"].as_array().expect("partitions").len(), 3);

    let c = json(
        &ctl(&b, &["--json", "perf", "consume", "-t", "load"])
            .await
            .expect("perf consume"),
    );
    assert_eq!(c[0]["records"], 3000);
    assert_eq!(c[0]["bytes"], 600_000);

    // A rate limit holds: 1000 records at 2000/s take about half a second.
    let out = ctl(
        &b,
        &[
            "perf",
            "e2e",
            "-t",
            "load",
            "-n",
            "1000",
            "-s",
            "100",
            "--throughput",
            "2000",
        ],
    )
    .await
    .expect("perf e2e");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0][..3], ["TEST", "RECORDS", "MB"]);
    assert_eq!(rows[1][..2], ["produce", "1000"]);
    assert_eq!(rows[2][..2], ["end-to-end", "1000"]);
    let seconds: f64 = rows[1][3].parse().expect("seconds");
    assert!((0.45..5.0).contains(&seconds), "{out}");
    let e = ctl(&b, &["perf", "produce", "-t", "load", "--throughput", "0"])
        .await
        .expect_err("bad rate");
    assert_eq!(e.exit_code(), 2);
    broker.stop().await;
}
