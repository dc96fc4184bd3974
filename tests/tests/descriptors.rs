//! Running out of file descriptors is a passing condition, not a disk failure. This file is
//! its own test binary because it lowers the process's open-file limit.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use strata_client::{Client, ClientError, NewRecord};
use strata_tests::TestBroker;

fn record(size: usize) -> NewRecord {
    NewRecord {
        value: Some(Bytes::from(vec![b'v'; size])),
        ..NewRecord::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_never_takes_a_log_offline() {
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg("--nofile=512:512")
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(status.success(), "prlimit failed");
    let broker = TestBroker::start_with(|c| {
        // No background fsync between the steps below.
        c.topics.flush_check_interval_ms = 3_600_000;
    })
    .await;
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    client
        .create_topic(
            "fds",
            1,
            -1,
            &BTreeMap::from([
                ("segment.bytes".to_owned(), "1024".to_owned()),
                ("remote.storage.enable".to_owned(), "false".to_owned()),
            ]),
        )
        .await
        .expect("create");
    // Three batches of ~470 bytes: the third rolls a new segment, not yet fsynced.
    for _ in 0..3 {
        client
            .produce("fds", 0, &[record(400)], 1)
            .await
            .expect("produce");
    }
    // Something else in the process takes every descriptor left.
    let mut hoard = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        hoard.push(f);
    }
    // An acks=all produce now cannot open the directory to fsync it; it fails, retriably.
    let during = client.produce("fds", 0, &[record(10)], -1).await;
    drop(hoard);
    if let Err(e) = &during {
        assert!(
            matches!(e, ClientError::Broker { code: 56, .. }),
            "unexpected error while out of descriptors: {e}"
        );
    }
    // With descriptors back, the log takes writes and fsyncs again: nothing was in doubt.
    let mut offset = None;
    for _ in 0..50 {
        match client.produce("fds", 0, &[record(10)], -1).await {
            Ok(o) => {
                offset = Some(o);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(
        offset.is_some(),
        "the log stayed offline after descriptors came back"
    );
    drop(client);
    broker.stop().await;
}
