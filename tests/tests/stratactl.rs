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
