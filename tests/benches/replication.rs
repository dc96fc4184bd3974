//! What replication costs and how fast a replica joins, on a cluster of three `strata`
//! processes (combined mode, loopback, object store in a local directory), with librdkafka:
//!
//! ```sh
//! cargo bench -p strata-tests --bench replication
//! ```
//!
//! Figures: produce MB/s of 1 KiB records (acks=all, idempotent) into one partition, and
//! end-to-end latency p50/p99/p99.9 at 1,000 and 50,000 records/s over four partitions, for
//! one copy and for three (min.insync.replicas 2); then, for partitions of growing size
//! (`REJOIN_MIB`, default `64,256,1024`), the time a follower whose disk was wiped takes to
//! be back in the ISR and the bytes it copied, which should not grow with the data already
//! in the object store.

#![allow(clippy::print_stdout)]

use std::path::Path;
use std::time::{Duration, Instant};

use strata_client::Client;
use strata_tests::cluster::ProcessCluster;

mod common;

use common::{BenchResult, RECORD_BYTES, create_topic, end_to_end, print_latencies, producer};

const PRODUCE_RECORDS: u64 = 200_000;
const E2E_SECONDS: u64 = 5;
const SEGMENT_BYTES: usize = 16 << 20;

fn main() -> BenchResult<()> {
    common::block_on(run())
}

async fn run() -> BenchResult<()> {
    let binary = Path::new(env!("CARGO_BIN_EXE_strata-node"));
    let mut cluster = ProcessCluster::start_with(
        binary,
        3,
        &[
            "object_store.upload_interval_ms=500",
            "topics.flush_check_interval_ms=200",
        ],
    )
    .await;
    let bootstrap = cluster.bootstrap();
    println!(
        "librdkafka {} against 3 strata processes on loopback, {RECORD_BYTES}-byte records",
        rdkafka::util::get_rdkafka_version().1
    );
    for rf in [1, 3] {
        let configs = if rf == 3 {
            vec![("min.insync.replicas", "2".to_owned())]
        } else {
            Vec::new()
        };
        let topic = format!("produce-rf{rf}");
        create_topic(&bootstrap, &topic, 1, rf, &configs).await?;
        let producer = producer(&bootstrap, "5")?;
        let payload = vec![b'x'; RECORD_BYTES];
        let secs = common::send_all(&producer, &topic, PRODUCE_RECORDS, &payload, |i| {
            (None, (i % 1024).to_string())
        })
        .await?;
        let bytes = PRODUCE_RECORDS as f64 * RECORD_BYTES as f64;
        println!(
            "RF={rf} produce acks=all, 1 partition: {:.1} MB/s ({:.0} records/s)",
            bytes / secs / 1e6,
            PRODUCE_RECORDS as f64 / secs
        );
        for rate in [1_000, 50_000] {
            let topic = format!("e2e-rf{rf}-{rate}");
            create_topic(&bootstrap, &topic, 4, rf, &configs).await?;
            let latencies = end_to_end(&bootstrap, &topic, 4, rate, E2E_SECONDS).await?;
            print_latencies(
                &format!("RF={rf} end-to-end, {rate} records/s over 4 partitions"),
                latencies,
            );
        }
    }
    let sizes: Vec<u64> = common::env_list("REJOIN_MIB", &[64, 256, 1024]);
    for mib in sizes {
        rejoin(&mut cluster, mib).await?;
    }
    Ok(())
}

/// Fills a three-copy partition with `mib` MiB, waits until all but the active segment is
/// in the object store, wipes a follower's disk and restarts it; prints how long it took to
/// be back in the ISR and what it copied.
async fn rejoin(cluster: &mut ProcessCluster, mib: u64) -> BenchResult<()> {
    let bootstrap = cluster.bootstrap();
    let topic = format!("rejoin-{mib}");
    let configs = [
        ("min.insync.replicas", "2".to_owned()),
        ("segment.bytes", SEGMENT_BYTES.to_string()),
        ("local.retention.bytes", (2 * SEGMENT_BYTES).to_string()),
    ];
    create_topic(&bootstrap, &topic, 1, 3, &configs).await?;
    let records = mib * (1 << 20) / RECORD_BYTES as u64;
    let producer = producer(&bootstrap, "5")?;
    let payload = vec![b'x'; RECORD_BYTES];
    common::send_all(&producer, &topic, records, &payload, |i| {
        (Some(0), (i % 1024).to_string())
    })
    .await?;
    let client = Client::connect(&bootstrap).await?;
    let end = client.list_offset(&topic, 0, -1).await?;
    let per_segment = (SEGMENT_BYTES / (RECORD_BYTES + 80)) as i64;
    let deadline = Instant::now() + Duration::from_secs(120);
    let uploaded = loop {
        let remote_end = client.list_offset(&topic, 0, -5).await? + 1;
        if remote_end >= end - 2 * per_segment {
            break remote_end;
        }
        if Instant::now() > deadline {
            return Err(format!("{topic}: uploaded to {remote_end} of {end} in 120 s").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (info, _) = client.describe_topic(&topic).await?;
    let leader = info.partitions[0].leader;
    let follower = info.partitions[0]
        .replicas
        .iter()
        .copied()
        .find(|r| *r != leader)
        .ok_or("no follower")?;
    cluster.kill(follower).await;
    // Out of the ISR once fenced (the session timeout), then wiped and started again.
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.describe_topic(&topic).await?.0.partitions[0]
        .isr
        .contains(&follower)
    {
        if Instant::now() > deadline {
            return Err(format!("{follower} stayed in the ISR of {topic}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::remove_dir_all(cluster.data_dir(follower).join("logs"))?;
    let restarted = Instant::now();
    cluster.restart(follower);
    let deadline = restarted + Duration::from_secs(300);
    loop {
        if let Ok((info, _)) = client.describe_topic(&topic).await
            && info.partitions[0].isr.contains(&follower)
        {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("{follower} not back in the ISR of {topic}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rejoined = restarted.elapsed();
    let dir = cluster
        .data_dir(follower)
        .join("logs")
        .join(format!("{topic}-0"));
    let copied: u64 = std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "wiped follower of a {mib} MiB partition ({uploaded} of {end} records uploaded): back in \
         the ISR {:.2} s after its restart, copied {:.1} MiB",
        rejoined.as_secs_f64(),
        copied as f64 / (1 << 20) as f64
    );
    cluster.wait_for_brokers(3, Duration::from_secs(60)).await;
    Ok(())
}
