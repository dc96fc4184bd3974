//! A graceful shutdown hands the broker's leadership back to the controller at once (Kafka's
//! controlled shutdown), instead of leaving its partitions to a dead leader until the lease
//! runs out.

use std::collections::BTreeMap;
use std::time::Duration;

use strata_controller::Command;
use strata_tests::BrokerWithQuorum;
use uuid::Uuid;

#[tokio::test]
async fn a_broker_that_shuts_down_hands_back_its_leadership_at_once() {
    // Far longer than the test: only the broker's own word can fence it in time.
    let BrokerWithQuorum {
        broker,
        quorum,
        controller,
        ..
    } = BrokerWithQuorum::start(Duration::from_secs(60)).await;
    let created = controller
        .submit(&Command::CreateTopic {
            name: "t".into(),
            id: Uuid::new_v4(),
            partitions: 3,
            replication_factor: 1,
            configs: BTreeMap::new(),
            first_leader_epoch: 0,
        })
        .await
        .expect("controller answers")
        .expect("created");
    let before = controller.read_metadata().await.expect("metadata");
    assert!(before.version >= created.version);
    assert!(!before.brokers[&1].fenced);
    assert!(
        before.topics["t"]
            .partitions
            .iter()
            .all(|p| p.leader == Some(1))
    );

    broker.stop().await;

    let after = controller.read_metadata().await.expect("metadata");
    assert!(after.brokers[&1].fenced, "the stopped broker is fenced");
    for (old, new) in before.topics["t"]
        .partitions
        .iter()
        .zip(&after.topics["t"].partitions)
    {
        // No other replica: leaderless, with the stopped broker as the one that may lead again.
        assert_eq!(new.leader, None);
        assert_eq!(new.isr, vec![1]);
        assert!(new.leader_epoch > old.leader_epoch);
    }
    quorum.shutdown().await;
}
