//! The coordinator against a real state partition, with the markers written by a stand-in.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use strata_controller::ControllerClient;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::machine::TxnState;
use super::store::TXN_TOPIC;
use super::{MarkerWriter, Markers, TxnConfig, TxnCoordinator};
use crate::lease::Lease;
use crate::metadata::MetadataView;
use crate::partition::tests::{image, partition, registry, topic};

const ME: i32 = 1;
/// LEADER_NOT_AVAILABLE: what a partition without a leader answers a marker.
const LEADER_NOT_AVAILABLE: i16 = 5;

/// Writes every marker, or (while `fail` is set) none, answering that the partitions have
/// no leader.
#[derive(Debug, Default)]
struct Stand {
    fail: AtomicBool,
    calls: AtomicUsize,
}

impl MarkerWriter for Stand {
    fn write(&self, markers: Markers) -> BoxFuture<'_, Vec<((String, i32), i16)>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let code = if self.fail.load(Ordering::SeqCst) {
            LEADER_NOT_AVAILABLE
        } else {
            0
        };
        Box::pin(async move { markers.partitions.into_iter().map(|p| (p, code)).collect() })
    }
}

/// Renews `lease` every 100 ms until the task is aborted (as heartbeats would).
fn keep(lease: &Arc<Lease>) -> tokio::task::JoinHandle<()> {
    let lease = lease.clone();
    tokio::spawn(async move {
        loop {
            lease.renew(Instant::now(), 1);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

async fn until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The fault checker's case: while the controller was away the coordinator's lease lapsed
/// for a moment, the background completion of a prepared transaction stopped (it no longer
/// coordinated the id), and the lease came back with the partition still led here: no role
/// change, so nothing loaded the partition again. The transaction must still complete
/// (before, it stayed PrepareCommit and its producer was told CONCURRENT_TRANSACTIONS for
/// ever, and read_committed consumers stopped at its first record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_stopped_by_a_lapsed_lease_is_finished_once_it_is_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let parts = registry(&dir);
    let roles = parts.subscribe();
    let v1 = image(
        1,
        vec![
            topic(
                TXN_TOPIC,
                Uuid::new_v4(),
                vec![partition(&[ME], Some(ME), 0)],
            ),
            topic("t", Uuid::new_v4(), vec![partition(&[ME], Some(ME), 0)]),
        ],
    );
    parts.apply(&v1);
    let metadata = Arc::new(MetadataView::default());
    metadata.publish(v1);
    let lease = Arc::new(Lease::new(Duration::from_secs(1)));
    let heartbeats = keep(&lease);
    let coordinator = Arc::new(TxnCoordinator::new(
        TxnConfig {
            state_partitions: 1,
            replication_factor: None,
            expected_brokers: 1,
            max_timeout_ms: 900_000,
            id_expiration: Duration::from_secs(3600),
            segment_bytes: 1 << 20,
            tiered: false,
        },
        ME,
        metadata,
        Arc::new(ControllerClient::new(["127.0.0.1:9"])),
        lease.clone(),
    ));
    let stand = Arc::new(Stand::default());
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    tokio::spawn(coordinator.clone().run(roles, stand.clone(), cancel));
    until(
        "the state partition loaded",
        Duration::from_secs(10),
        || coordinator.state_of("tx").is_ok(),
    )
    .await;

    let (producer_id, epoch) = coordinator
        .init_producer_id("tx", 60_000, None, Some(1000))
        .await
        .expect("init");
    coordinator
        .add_partitions("tx", producer_id, epoch, &[("t".to_owned(), 0)])
        .await
        .expect("add");
    stand.fail.store(true, Ordering::SeqCst);
    let ending = coordinator.clone();
    tokio::spawn(async move {
        ending
            .end_txn("tx", producer_id, epoch, true, false, None)
            .await
    });
    until("a marker tried", Duration::from_secs(5), || {
        stand.calls.load(Ordering::SeqCst) > 0
    })
    .await;
    // The Prepare state is written (markers are tried only after it); now the heartbeats
    // stop, the lease lapses and the completion gives up.
    heartbeats.abort();
    until("the completion stopped", Duration::from_secs(10), || {
        coordinator
            .completing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    })
    .await;
    let state = |c: &TxnCoordinator| {
        c.lock()
            .get("tx")
            .map(|m| m.state)
            .expect("the id is known")
    };
    assert_eq!(state(&coordinator), TxnState::PrepareCommit);

    // The lease is back, the metadata unchanged; the partitions take markers again.
    stand.fail.store(false, Ordering::SeqCst);
    let heartbeats = keep(&lease);
    until("the transaction completed", Duration::from_secs(10), || {
        state(&coordinator) == TxnState::CompleteCommit
    })
    .await;
    heartbeats.abort();
}
