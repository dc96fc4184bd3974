//! The fault checker (`strata_tests::faults`) on a three-process cluster: a short run of
//! every kind of fault once in the suite, and the long run as a command:
//!
//! ```sh
//! FAULTS=100 cargo test --release -p strata-tests --test faults -- --ignored --nocapture
//! ```
//!
//! (`FAULTS_SEED=<n>` runs one sequence again; the seed is printed with the report;
//! `FAULTS_CONTROLLERS=3` runs the brokers beside three dedicated controllers;
//! `FAULTS_SETTINGS="key=value key=value"` adds broker settings, to check a configuration,
//! e.g. `object_store.tier_internal_topics=true groups.offsets_topic_segment_bytes=65536`.)

use std::path::Path;
use std::time::Duration;

use strata_tests::faults::{Plan, run};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_strata-node"))
}

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok()?.parse().ok()
}

fn seed() -> u64 {
    env("FAULTS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    })
}

async fn check(plan: Plan) {
    // Generous: a hang is a failure with a message, not a stuck suite.
    let within = Duration::from_secs(120) + plan.hold.1 * plan.faults as u32 * 10;
    let report = tokio::time::timeout(within, run(binary(), &plan))
        .await
        .expect("the fault checker finishes");
    eprintln!("{report}");
    assert!(report.acknowledged > 0, "nothing was written");
    assert!(report.read > 0, "nothing was read");
    assert!(
        report.transactions.committed > 0 && report.transactions.aborted > 0,
        "the transactional workload did not run: {report}"
    );
    assert!(report.anomalies.is_empty(), "{report}");
}

/// The CI-sized run: every kind of fault once, briefly.
fn every_kind_once(controllers: i32) -> Plan {
    Plan {
        faults: 10,
        seed: seed(),
        hold: (Duration::from_millis(1500), Duration::from_secs(3)),
        rate: 100,
        each_kind_first: true,
        controllers,
        settings: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_kind_of_fault_once_loses_nothing() {
    check(every_kind_once(0)).await;
}

/// The same with the brokers in `remote` mode beside three dedicated controllers: process
/// faults hit controllers as well as brokers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn brokers_beside_a_dedicated_quorum_lose_nothing() {
    check(every_kind_once(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "the long run: FAULTS=100 cargo test --release -p strata-tests --test faults -- --ignored"]
async fn a_long_run_of_random_faults_loses_nothing() {
    check(Plan {
        faults: env("FAULTS").unwrap_or(100),
        seed: seed(),
        hold: (Duration::from_secs(2), Duration::from_secs(8)),
        rate: 200,
        each_kind_first: false,
        controllers: env("FAULTS_CONTROLLERS").unwrap_or(0),
        settings: std::env::var("FAULTS_SETTINGS")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
    })
    .await;
}
