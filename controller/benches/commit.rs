//! Commit latency and throughput of a 3-node controller quorum on loopback.
//!
//! Three controllers in this process, each with its own data directory (fsync on every Raft
//! append), talking real gRPC. Prints p50/p99 commit latency for one client committing one
//! command at a time, then commits per second with many concurrent clients.
//!
//! Run: `cargo bench -p strata-controller --bench commit`

#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_controller::command::{Command, Outcome};
use strata_controller::{ControllerClient, ControllerConfig, ControllerNode};
use tokio::net::TcpListener;
use uuid::Uuid;

const SEQUENTIAL: usize = 2_000;
const CONCURRENT_CLIENTS: usize = 64;
const PER_CLIENT: usize = 100;

fn alter(i: usize) -> Command {
    Command::AlterConfigs {
        topic: "bench".into(),
        set: BTreeMap::from([("retention.ms".to_string(), (1000 + i).to_string())]),
        delete: Vec::new(),
        replace: false,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(what: &str, mut latencies: Vec<Duration>, elapsed: Duration) {
    latencies.sort_unstable();
    println!(
        "{what:<28} {:>7} commits in {:>6.2}s = {:>7.0} commits/s   p50 {:>7.3} ms   p99 {:>7.3} ms   max {:>7.3} ms",
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run())
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut listeners = Vec::new();
    let mut voters = BTreeMap::new();
    for id in 1..=3u64 {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        voters.insert(id, l.local_addr()?.to_string());
        listeners.push((id, l));
    }
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;
    let mut nodes = Vec::new();
    for ((id, l), dir) in listeners.into_iter().zip(&dirs) {
        let mut config = ControllerConfig::single_node(dir.path(), voters[&id].clone());
        config.node_id = id;
        config.voters = voters.clone();
        nodes.push(ControllerNode::start_with_listener(config, l).await?);
    }
    let client = Arc::new(ControllerClient::new(voters.values().cloned()));
    let Outcome::BrokerRegistered { epoch } = client
        .submit(&Command::RegisterBroker {
            id: 1,
            endpoints: Vec::new(),
            rack: None,
            incarnation: Uuid::new_v4(),
        })
        .await??
        .outcome
    else {
        return Err("unexpected outcome".into());
    };
    client.heartbeat(1, epoch, true).await??;
    client
        .submit(&Command::CreateTopic {
            name: "bench".into(),
            id: Uuid::new_v4(),
            partitions: 1,
            replication_factor: 1,
            configs: BTreeMap::new(),
            first_leader_epoch: 0,
        })
        .await??;
    println!("3-node controller quorum on loopback, fsync per Raft append, gRPC client:");

    let mut latencies = Vec::with_capacity(SEQUENTIAL);
    let start = Instant::now();
    for i in 0..SEQUENTIAL {
        let t = Instant::now();
        client.submit(&alter(i)).await??;
        latencies.push(t.elapsed());
    }
    report("one client, sequential", latencies, start.elapsed());

    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CONCURRENT_CLIENTS {
        let client = client.clone();
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(PER_CLIENT);
            for i in 0..PER_CLIENT {
                let t = Instant::now();
                client.submit(&alter(c * PER_CLIENT + i)).await??;
                lat.push(t.elapsed());
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(lat)
        });
    }
    let mut latencies = Vec::new();
    while let Some(r) = tasks.join_next().await {
        latencies.extend(r?.map_err(|e| e.to_string())?);
    }
    report(
        &format!("{CONCURRENT_CLIENTS} concurrent clients"),
        latencies,
        start.elapsed(),
    );
    for node in nodes {
        node.shutdown().await;
    }
    Ok(())
}
