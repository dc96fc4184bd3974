//! A broker with `topics.direct_writes` serves what it acknowledged, before and after a
//! restart. This file is its own test binary because the setting is process-wide.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use strata_client::{Client, NewRecord};
use strata_tests::TestBroker;

/// The log files of partition 0 of `topic` under `dir`.
fn segment_files(dir: &Path, topic: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("list").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "log")
                && path
                    .parent()
                    .and_then(Path::file_name)
                    .is_some_and(|p| p == format!("{topic}-0").as_str())
            {
                found.push(path);
            }
        }
    }
    found
}

/// Every value of partition 0 of `topic`, in offset order.
async fn values(client: &Client, topic: &str) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let (records, high) = client
            .fetch(topic, 0, offset, 1 << 20, 100)
            .await
            .expect("fetch");
        let from = offset;
        for r in records.into_iter().filter(|r| r.offset >= from) {
            offset = r.offset + 1;
            out.push(r.value.expect("value"));
        }
        if offset >= high {
            return out;
        }
    }
}

/// Values of sizes that end batches anywhere in a block.
fn value(i: usize) -> Bytes {
    Bytes::from(format!("{i:05}").repeat(1 + (i * 37) % 700))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_writing_directly_serves_what_it_acknowledged_across_a_restart() {
    let mut broker = TestBroker::start_with(|c| c.topics.direct_writes = true).await;
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    client
        .create_topic(
            "direct",
            1,
            -1,
            &BTreeMap::from([("remote.storage.enable".to_owned(), "false".to_owned())]),
        )
        .await
        .expect("create");
    let mut expected = Vec::new();
    for chunk in (0..60).collect::<Vec<usize>>().chunks(7) {
        let records: Vec<NewRecord> = chunk
            .iter()
            .map(|&i| NewRecord {
                value: Some(value(i)),
                ..NewRecord::default()
            })
            .collect();
        client
            .produce("direct", 0, &records, -1)
            .await
            .expect("produce");
        expected.extend(chunk.iter().map(|&i| value(i)));
    }
    assert_eq!(
        values(&client, "direct").await,
        expected,
        "before the restart"
    );
    let files = segment_files(broker.data_dir(), "direct");
    assert_eq!(files.len(), 1, "{files:?}");
    let len = std::fs::metadata(&files[0]).expect("stat").len();
    assert!(
        len.is_multiple_of(4096),
        "direct writes leave the active segment in whole blocks: {len} bytes"
    );
    drop(client);

    broker.restart().await;
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    assert_eq!(
        values(&client, "direct").await,
        expected,
        "after the restart"
    );
    let more = NewRecord {
        value: Some(value(60)),
        ..NewRecord::default()
    };
    let offset = client
        .produce("direct", 0, &[more], -1)
        .await
        .expect("produce after the restart");
    assert_eq!(offset, 60);
    expected.push(value(60));
    assert_eq!(
        values(&client, "direct").await,
        expected,
        "appended after it"
    );
    broker.stop().await;
}
