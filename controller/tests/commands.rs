//! Every command against the pure state machine, valid and invalid, each refusal typed.

use std::collections::BTreeMap;

use strata_controller::command::{Command, CommandError, Outcome, PRODUCER_ID_BLOCK};
use strata_controller::model::{BrokerId, Endpoint, MetadataImage, MetadataUpdate};
use strata_controller::state::MetadataState;
use uuid::Uuid;

fn register(state: &mut MetadataState, id: BrokerId, rack: Option<&str>) -> u64 {
    let applied = state
        .apply(&Command::RegisterBroker {
            id,
            endpoints: vec![Endpoint {
                listener: "PLAINTEXT".into(),
                host: format!("b{id}"),
                port: 9092,
            }],
            rack: rack.map(str::to_owned),
            incarnation: Uuid::new_v4(),
        })
        .expect("register");
    let Outcome::BrokerRegistered { epoch } = applied.outcome else {
        panic!("unexpected {applied:?}");
    };
    state
        .apply(&Command::UnfenceBroker { id, epoch })
        .expect("unfence");
    epoch
}

fn cluster(brokers: BrokerId) -> (MetadataState, BTreeMap<BrokerId, u64>) {
    let mut state = MetadataState::default();
    let epochs = (1..=brokers)
        .map(|id| (id, register(&mut state, id, None)))
        .collect();
    (state, epochs)
}

fn create(name: &str, partitions: i32, rf: i16) -> Command {
    Command::CreateTopic {
        name: name.into(),
        id: Uuid::new_v4(),
        partitions,
        replication_factor: rf,
        configs: BTreeMap::new(),
        first_leader_epoch: 0,
    }
}

/// Applies a command that must be refused and checks the image did not change.
fn refused(state: &mut MetadataState, command: Command) -> CommandError {
    let before = state.image().clone();
    let err = state.apply(&command).expect_err("command must be refused");
    assert_eq!(
        state.image(),
        &before,
        "a refused command changed the image"
    );
    err
}

#[test]
fn init_cluster_sets_the_id_once() {
    let mut state = MetadataState::default();
    let first = Uuid::new_v4();
    let a = state
        .apply(&Command::InitCluster { cluster_id: first })
        .expect("init");
    assert_eq!(a.version, 1);
    let again = state
        .apply(&Command::InitCluster {
            cluster_id: Uuid::new_v4(),
        })
        .expect("init again");
    assert_eq!(again.outcome, Outcome::Unchanged);
    assert_eq!(
        again.version, 1,
        "an unchanged command does not bump the version"
    );
    assert_eq!(state.image().cluster_id, Some(first));
}

#[test]
fn registration_starts_fenced_and_epochs_increase() {
    let mut state = MetadataState::default();
    let e1 = register(&mut state, 7, Some("r1"));
    let b = &state.image().brokers[&7];
    assert!(!b.fenced);
    assert_eq!(b.rack.as_deref(), Some("r1"));
    let e2 = register(&mut state, 7, None);
    assert!(e2 > e1);
    let err = refused(&mut state, Command::UnfenceBroker { id: 7, epoch: e1 });
    assert_eq!(
        err,
        CommandError::StaleBrokerEpoch {
            id: 7,
            current: e2,
            got: e1
        }
    );
    let err = refused(&mut state, Command::UnfenceBroker { id: 9, epoch: 1 });
    assert_eq!(err, CommandError::UnknownBroker { id: 9 });
}

#[test]
fn create_topic_places_replicas_on_live_brokers() {
    let (mut state, _) = cluster(3);
    let a = state.apply(&create("orders", 6, 3)).expect("create");
    let Outcome::TopicCreated { partitions, .. } = a.outcome else {
        panic!("{a:?}");
    };
    assert_eq!(partitions.len(), 6);
    let mut leaders = BTreeMap::new();
    for p in &partitions {
        assert_eq!(p.replicas.len(), 3);
        assert_eq!(p.isr, p.replicas);
        assert_eq!(p.leader, Some(p.replicas[0]));
        *leaders.entry(p.leader).or_insert(0) += 1;
    }
    assert!(leaders.values().all(|n| *n == 2), "leaders {leaders:?}");
    assert_eq!(state.image().topics["orders"].partitions, partitions);
}

#[test]
fn create_topic_refusals_are_typed() {
    let (mut state, _) = cluster(2);
    state.apply(&create("a.b", 1, 1)).expect("create");
    assert_eq!(
        refused(&mut state, create("a.b", 1, 1)),
        CommandError::TopicAlreadyExists { name: "a.b".into() }
    );
    assert_eq!(
        refused(&mut state, create("a_b", 1, 1)),
        CommandError::TopicAlreadyExists { name: "a_b".into() },
        "names colliding on '.' vs '_' are refused as in Kafka"
    );
    for bad in ["", ".", "..", "has space", "ü", &"x".repeat(250)] {
        assert!(
            matches!(
                refused(&mut state, create(bad, 1, 1)),
                CommandError::InvalidTopicName { .. }
            ),
            "{bad:?}"
        );
    }
    state
        .apply(&create(&"x".repeat(249), 1, 1))
        .expect("249 characters are legal");
    assert!(matches!(
        refused(&mut state, create("t", 0, 1)),
        CommandError::InvalidPartitions { count: 0, .. }
    ));
    assert!(matches!(
        refused(&mut state, create("t", 1_000_000, 1)),
        CommandError::InvalidPartitions { .. }
    ));
    assert_eq!(
        refused(&mut state, create("t", 1, 0)),
        CommandError::InvalidReplicationFactor {
            replication_factor: 0
        }
    );
    assert_eq!(
        refused(&mut state, create("t", 1, 3)),
        CommandError::InsufficientBrokers {
            required: 3,
            available: 2
        }
    );
    let mut with_config = create("t", 1, 1);
    if let Command::CreateTopic { configs, .. } = &mut with_config {
        configs.insert("retention.ms".into(), "forever".into());
    }
    assert!(matches!(
        refused(&mut state, with_config),
        CommandError::InvalidConfig { key, .. } if key == "retention.ms"
    ));
}

#[test]
fn fenced_brokers_get_no_replicas() {
    let (mut state, _) = cluster(3);
    state
        .apply(&Command::FenceBrokers { ids: vec![2] })
        .expect("fence");
    state.apply(&create("t", 8, 2)).expect("create");
    let t = &state.image().topics["t"];
    assert!(t.partitions.iter().all(|p| !p.replicas.contains(&2)));
    assert_eq!(
        refused(&mut state, create("u", 1, 3)),
        CommandError::InsufficientBrokers {
            required: 3,
            available: 2
        }
    );
    assert_eq!(
        refused(&mut state, Command::FenceBrokers { ids: vec![2, 99] }),
        CommandError::UnknownBroker { id: 99 }
    );
}

#[test]
fn delete_topic() {
    let (mut state, _) = cluster(1);
    let created = state.apply(&create("t", 2, 1)).expect("create");
    let Outcome::TopicCreated { id, .. } = created.outcome else {
        panic!()
    };
    let deleted = state
        .apply(&Command::DeleteTopic { name: "t".into() })
        .expect("delete");
    assert_eq!(deleted.outcome, Outcome::TopicDeleted { id });
    assert!(state.image().topics.is_empty());
    assert_eq!(
        refused(&mut state, Command::DeleteTopic { name: "t".into() }),
        CommandError::UnknownTopic { name: "t".into() }
    );
}

#[test]
fn create_partitions_only_grows() {
    let (mut state, _) = cluster(2);
    state.apply(&create("t", 2, 2)).expect("create");
    state
        .apply(&Command::CreatePartitions {
            topic: "t".into(),
            count: 5,
        })
        .expect("grow");
    let t = &state.image().topics["t"];
    assert_eq!(t.partitions.len(), 5);
    assert!(t.partitions.iter().all(|p| p.replicas.len() == 2));
    assert!(matches!(
        refused(
            &mut state,
            Command::CreatePartitions {
                topic: "t".into(),
                count: 5
            }
        ),
        CommandError::InvalidPartitions { count: 5, .. }
    ));
    assert_eq!(
        refused(
            &mut state,
            Command::CreatePartitions {
                topic: "nope".into(),
                count: 9
            }
        ),
        CommandError::UnknownTopic {
            name: "nope".into()
        }
    );
}

#[test]
fn alter_configs_incremental_and_replace() {
    let (mut state, _) = cluster(1);
    state.apply(&create("t", 1, 1)).expect("create");
    let alter = |set: &[(&str, &str)], delete: &[&str], replace: bool| Command::AlterConfigs {
        topic: "t".into(),
        set: set
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        delete: delete.iter().map(|k| k.to_string()).collect(),
        replace,
    };
    state
        .apply(&alter(
            &[("retention.ms", "1000"), ("segment.bytes", "4096")],
            &[],
            false,
        ))
        .expect("set");
    state
        .apply(&alter(&[], &["segment.bytes"], false))
        .expect("delete");
    assert_eq!(
        state.image().topics["t"].configs,
        BTreeMap::from([("retention.ms".to_string(), "1000".to_string())])
    );
    state
        .apply(&alter(&[("cleanup.policy", "compact")], &[], true))
        .expect("replace");
    assert_eq!(
        state.image().topics["t"].configs,
        BTreeMap::from([("cleanup.policy".to_string(), "compact".to_string())])
    );
    assert!(matches!(
        refused(&mut state, alter(&[("retention.bytes", "-5")], &[], false)),
        CommandError::InvalidConfig { key, .. } if key == "retention.bytes"
    ));
    assert!(matches!(
        refused(&mut state, alter(&[], &["bogus"], false)),
        CommandError::InvalidConfig { key, .. } if key == "bogus"
    ));
}

#[test]
fn fencing_moves_leaders_with_higher_epochs_and_keeps_the_last_leader() {
    let (mut state, _) = cluster(3);
    state.apply(&create("t", 6, 2)).expect("create");
    let before = state.image().topics["t"].clone();
    let applied = state
        .apply(&Command::FenceBrokers { ids: vec![1] })
        .expect("fence");
    let led_by_1 = before
        .partitions
        .iter()
        .filter(|p| p.leader == Some(1))
        .count();
    assert_eq!(
        applied.outcome,
        Outcome::BrokersFenced {
            leader_changes: led_by_1
        }
    );
    let after = state.image().topics["t"].clone();
    for (old, new) in before.partitions.iter().zip(&after.partitions) {
        assert_ne!(new.leader, Some(1));
        assert!(!new.isr.contains(&1));
        if old.leader == Some(1) {
            assert!(new.leader_epoch > old.leader_epoch);
            assert!(new.leader.is_some_and(|l| old.isr.contains(&l)));
        } else {
            assert_eq!(new.leader_epoch, old.leader_epoch);
        }
    }
    // Fence the other two: partitions end leaderless with their last leader as sole ISR member.
    state
        .apply(&Command::FenceBrokers { ids: vec![2, 3] })
        .expect("fence");
    let dark = state.image().topics["t"].clone();
    for (old, new) in after.partitions.iter().zip(&dark.partitions) {
        assert_eq!(new.leader, None);
        assert_eq!(new.isr, vec![old.leader.expect("had a leader")]);
    }
    // Broker 1 was not in sync when the lights went out, so it must not lead again.
    let e1 = state.image().brokers[&1].epoch;
    state
        .apply(&Command::UnfenceBroker { id: 1, epoch: e1 })
        .expect("unfence");
    assert!(
        state.image().topics["t"]
            .partitions
            .iter()
            .all(|p| p.leader.is_none())
    );
    // The last leader comes back and leads again with a higher epoch.
    for (i, p) in dark.partitions.iter().enumerate() {
        let last = p.isr[0];
        let epoch = state.image().brokers[&last].epoch;
        state
            .apply(&Command::UnfenceBroker { id: last, epoch })
            .expect("unfence");
        let now = &state.image().topics["t"].partitions[i];
        assert_eq!(now.leader, Some(last));
        assert!(now.leader_epoch > p.leader_epoch);
    }
}

/// An unclean election is an explicit choice (ElectLeaders, unclean) or the topic's
/// `unclean.leader.election.enable`: a leaderless partition whose in-sync replicas are all
/// gone takes a live replica from outside the ISR, alone in the ISR and marked `unclean`;
/// never a partition that has a leader, and never without the choice.
#[test]
fn unclean_elections_take_a_live_replica_only_when_chosen() {
    let (mut state, _) = cluster(2);
    let mut configs = BTreeMap::new();
    configs.insert(
        "unclean.leader.election.enable".to_owned(),
        "true".to_owned(),
    );
    for (name, configs) in [("strict", BTreeMap::new()), ("lenient", configs)] {
        state
            .apply(&Command::CreateTopic {
                name: name.into(),
                id: Uuid::new_v4(),
                partitions: 1,
                replication_factor: 2,
                configs,
                first_leader_epoch: 0,
            })
            .expect("create");
    }
    // Both led by broker 1.
    for name in ["strict", "lenient"] {
        state
            .apply(&Command::AlterReassignments {
                changes: vec![(name.into(), 0, Some(vec![1, 2]))],
            })
            .expect("order");
    }
    state
        .apply(&Command::ElectLeaders {
            partitions: None,
            unclean: false,
        })
        .expect("preferred");
    // Each leader's follower falls out of the ISR, then the leader dies.
    for name in ["strict", "lenient"] {
        let p = &state.image().topics[name].partitions[0];
        let leader = p.leader.expect("leader");
        let epoch = state.image().brokers[&leader].epoch;
        let command = Command::AlterIsr {
            topic: name.into(),
            partition: 0,
            broker_id: leader,
            broker_epoch: epoch,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            isr: vec![leader],
        };
        state.apply(&command).expect("shrink");
    }
    let (leader, other) = (1, 2);
    state
        .apply(&Command::FenceBrokers { ids: vec![1, 2] })
        .expect("fence both");
    let e = state.image().brokers[&other].epoch;
    state
        .apply(&Command::UnfenceBroker {
            id: other,
            epoch: e,
        })
        .expect("the out-of-sync one comes back");
    let strict = state.image().topics["strict"].partitions[0].clone();
    assert_eq!((strict.leader, strict.isr.clone()), (None, vec![leader]));
    assert!(!strict.unclean);
    // The lenient topic elected the live out-of-sync replica on its own.
    let lenient = state.image().topics["lenient"].partitions[0].clone();
    assert_eq!(
        (lenient.leader, lenient.isr.clone()),
        (Some(other), vec![other])
    );
    assert!(lenient.unclean);
    // The strict one needs the operator's choice; a preferred election is not one.
    let elect = |unclean| Command::ElectLeaders {
        partitions: Some(vec![("strict".into(), 0)]),
        unclean,
    };
    let a1 = state.apply(&elect(false)).expect("elect");
    assert_eq!(a1.outcome, Outcome::LeadersElected { elected: vec![] });
    let a2 = state.apply(&elect(true)).expect("elect");
    assert_eq!(
        a2.outcome,
        Outcome::LeadersElected {
            elected: vec![("strict".into(), 0, other)]
        }
    );
    let now = state.image().topics["strict"].partitions[0].clone();
    assert_eq!(
        (now.leader, now.isr.clone(), now.unclean),
        (Some(other), vec![other], true)
    );
    assert!(now.leader_epoch > strict.leader_epoch);
    // Led now: another unclean election changes nothing, and the next leader change clears
    // the mark.
    let a3 = state.apply(&elect(true)).expect("elect");
    assert_eq!(a3.outcome, Outcome::LeadersElected { elected: vec![] });
    state
        .apply(&Command::FenceBrokers { ids: vec![other] })
        .expect("fence");
    assert!(!state.image().topics["strict"].partitions[0].unclean);

    // Re-homing: both replicas gone for good, the partition reassigned to a new broker (the
    // reassignment waits, there is no leader to copy from), then an unclean election gives
    // it to the new broker and completes the move.
    register(&mut state, 3, None);
    state
        .apply(&Command::AlterReassignments {
            changes: vec![("strict".into(), 0, Some(vec![3]))],
        })
        .expect("reassign");
    let waiting = state.image().topics["strict"].partitions[0].clone();
    assert_eq!((waiting.leader, waiting.adding.clone()), (None, vec![3]));
    let a4 = state.apply(&elect(true)).expect("elect");
    assert_eq!(
        a4.outcome,
        Outcome::LeadersElected {
            elected: vec![("strict".into(), 0, 3)]
        }
    );
    let homed = state.image().topics["strict"].partitions[0].clone();
    assert_eq!(
        (homed.leader, homed.replicas.clone(), homed.isr.clone()),
        (Some(3), vec![3], vec![3])
    );
    assert!(homed.unclean && !homed.reassigning());
}

fn alter_isr(state: &MetadataState, broker: BrokerId, epoch: u64, isr: Vec<BrokerId>) -> Command {
    let p = &state.image().topics["t"].partitions[0];
    Command::AlterIsr {
        topic: "t".into(),
        partition: 0,
        broker_id: broker,
        broker_epoch: epoch,
        leader_epoch: p.leader_epoch,
        partition_epoch: p.partition_epoch,
        isr,
    }
}

#[test]
fn alter_isr_checks_leader_epochs_and_membership() {
    let (mut state, epochs) = cluster(3);
    state.apply(&create("t", 1, 3)).expect("create");
    let p = state.image().topics["t"].partitions[0].clone();
    let leader = p.leader.expect("leader");
    let follower = p.replicas[1];
    let shrink = alter_isr(&state, leader, epochs[&leader], vec![leader, p.replicas[2]]);
    let applied = state.apply(&shrink).expect("shrink");
    let Outcome::IsrAltered { partition } = applied.outcome else {
        panic!()
    };
    assert_eq!(partition.isr, vec![leader, p.replicas[2]]);
    assert_eq!(partition.partition_epoch, p.partition_epoch + 1);
    // Replaying the same request: its partition epoch is now stale.
    assert!(matches!(
        refused(&mut state, shrink),
        CommandError::StalePartitionEpoch { .. }
    ));
    // A follower cannot change the ISR.
    assert!(matches!(
        {
            let c = alter_isr(&state, follower, epochs[&follower], vec![follower]);
            refused(&mut state, c)
        },
        CommandError::NotPartitionLeader { .. }
    ));
    // Bad ISRs.
    let e = epochs[&leader];
    for (isr, why) in [
        (vec![p.replicas[2]], "leader missing"),
        (vec![leader, leader], "duplicate"),
        (vec![leader, 42], "not a replica"),
    ] {
        assert!(
            matches!(
                {
                    let c = alter_isr(&state, leader, e, isr);
                    refused(&mut state, c)
                },
                CommandError::InvalidIsr { .. }
            ),
            "{why}"
        );
    }
    // An old leader epoch.
    let mut stale = alter_isr(&state, leader, e, vec![leader]);
    if let Command::AlterIsr { leader_epoch, .. } = &mut stale {
        *leader_epoch -= 1;
    }
    assert!(matches!(
        refused(&mut state, stale),
        CommandError::StaleLeaderEpoch { .. }
    ));
    // A stale registration epoch (a previous incarnation of the leader).
    assert!(matches!(
        {
            let c = alter_isr(&state, leader, e - 1, vec![leader]);
            refused(&mut state, c)
        },
        CommandError::StaleBrokerEpoch { .. }
    ));
    // Adding a fenced broker.
    state
        .apply(&Command::FenceBrokers {
            ids: vec![follower],
        })
        .expect("fence");
    assert!(matches!(
        {
            let c = alter_isr(&state, leader, e, vec![leader, follower]);
            refused(&mut state, c)
        },
        CommandError::InvalidIsr { .. }
    ));
}

#[test]
fn a_fenced_leaders_stale_isr_change_is_rejected() {
    let (mut state, epochs) = cluster(2);
    state.apply(&create("t", 1, 2)).expect("create");
    let p = state.image().topics["t"].partitions[0].clone();
    let old_leader = p.leader.expect("leader");
    // Prepared while it still led, sent after it was fenced.
    let late = alter_isr(&state, old_leader, epochs[&old_leader], vec![old_leader]);
    state
        .apply(&Command::FenceBrokers {
            ids: vec![old_leader],
        })
        .expect("fence");
    assert_eq!(
        refused(&mut state, late),
        CommandError::BrokerFenced { id: old_leader }
    );
    let now = &state.image().topics["t"].partitions[0];
    assert_ne!(now.leader, Some(old_leader));
    assert!(now.leader_epoch > p.leader_epoch);
}

#[test]
fn producer_id_blocks_do_not_overlap() {
    let (mut state, epochs) = cluster(2);
    let mut firsts = Vec::new();
    for id in [1, 2, 1] {
        let a = state
            .apply(&Command::AllocateProducerIds {
                broker_id: id,
                broker_epoch: epochs[&id],
            })
            .expect("allocate");
        let Outcome::ProducerIds { first, count } = a.outcome else {
            panic!()
        };
        assert_eq!(count, PRODUCER_ID_BLOCK);
        firsts.push(first);
    }
    assert_eq!(firsts, vec![0, 1000, 2000]);
    assert_eq!(
        refused(
            &mut state,
            Command::AllocateProducerIds {
                broker_id: 5,
                broker_epoch: 1
            }
        ),
        CommandError::UnknownBroker { id: 5 }
    );
}

#[test]
fn elect_leaders_restores_preferred_leaders() {
    let (mut state, epochs) = cluster(2);
    state.apply(&create("t", 2, 2)).expect("create");
    let preferred: Vec<_> = state.image().topics["t"]
        .partitions
        .iter()
        .map(|p| p.replicas[0])
        .collect();
    state
        .apply(&Command::FenceBrokers { ids: vec![1] })
        .expect("fence");
    let e1 = state.image().brokers[&1].epoch;
    state
        .apply(&Command::UnfenceBroker { id: 1, epoch: e1 })
        .expect("unfence");
    // Broker 1 is back but out of the ISR: the leader of partitions preferring it stays 2.
    let p = &state.image().topics["t"].partitions;
    assert!(p.iter().all(|p| p.leader == Some(2)));
    // The leader puts 1 back in sync, then a preferred election moves leadership home.
    for i in 0..2 {
        let p = state.image().topics["t"].partitions[i].clone();
        state
            .apply(&Command::AlterIsr {
                topic: "t".into(),
                partition: i as i32,
                broker_id: 2,
                broker_epoch: epochs[&2],
                leader_epoch: p.leader_epoch,
                partition_epoch: p.partition_epoch,
                isr: vec![2, 1],
            })
            .expect("expand");
    }
    let a = state
        .apply(&Command::ElectLeaders {
            partitions: None,
            unclean: false,
        })
        .expect("elect");
    let Outcome::LeadersElected { elected } = a.outcome else {
        panic!()
    };
    assert_eq!(elected.len(), preferred.iter().filter(|b| **b == 1).count());
    let now: Vec<_> = state.image().topics["t"]
        .partitions
        .iter()
        .map(|p| p.leader.expect("leader"))
        .collect();
    assert_eq!(now, preferred);
    assert_eq!(
        refused(
            &mut state,
            Command::ElectLeaders {
                partitions: Some(vec![("t".into(), 7)]),
                unclean: false,
            }
        ),
        CommandError::UnknownPartition {
            topic: "t".into(),
            partition: 7
        }
    );
}

#[test]
fn deltas_rebuild_the_image_and_old_watchers_get_the_whole_image() {
    let (mut state, _) = cluster(3);
    let mut follower = MetadataImage::default();
    for u in state.updates_since(0) {
        match u {
            MetadataUpdate::Delta(d) => follower.apply_delta(&d),
            MetadataUpdate::Image(i) => follower = i,
        }
    }
    state.apply(&create("t", 4, 2)).expect("create");
    state
        .apply(&Command::FenceBrokers { ids: vec![3] })
        .expect("fence");
    state
        .apply(&Command::DeleteTopic { name: "t".into() })
        .expect("delete");
    for u in state.updates_since(follower.version) {
        let MetadataUpdate::Delta(d) = u else {
            panic!("recent watcher should get deltas")
        };
        follower.apply_delta(&d);
    }
    assert_eq!(&follower, state.image());
    assert!(state.updates_since(state.image().version).is_empty());
    let restarted = MetadataState::from_image(state.image().clone());
    assert!(matches!(
        restarted.updates_since(1).as_slice(),
        [MetadataUpdate::Image(_)]
    ));
}

#[test]
fn a_broker_shutting_down_hands_back_its_leadership_until_it_registers_again() {
    let (mut state, epochs) = cluster(3);
    state.apply(&create("t", 6, 2)).expect("create");
    state.apply(&create("single", 3, 1)).expect("create");
    let before = state.image().clone();
    let led_by_1 = before
        .topics
        .values()
        .flat_map(|t| &t.partitions)
        .filter(|p| p.leader == Some(1))
        .count();
    assert!(led_by_1 > 0);
    // An older incarnation cannot shut down the current one.
    let stale = refused(
        &mut state,
        Command::ShutdownBroker {
            id: 1,
            epoch: epochs[&1] - 1,
        },
    );
    assert!(matches!(stale, CommandError::StaleBrokerEpoch { .. }));
    let applied = state
        .apply(&Command::ShutdownBroker {
            id: 1,
            epoch: epochs[&1],
        })
        .expect("shutdown");
    assert_eq!(
        applied.outcome,
        Outcome::BrokersFenced {
            leader_changes: led_by_1
        }
    );
    assert!(state.image().brokers[&1].fenced);
    for (name, topic) in &state.image().topics {
        for (old, new) in before.topics[name].partitions.iter().zip(&topic.partitions) {
            assert_ne!(new.leader, Some(1));
            if old.leader == Some(1) {
                assert!(new.leader_epoch > old.leader_epoch);
                // A partition with no other replica waits for it, its last leader.
                if old.replicas == [1] {
                    assert_eq!((new.leader, new.isr.clone()), (None, vec![1]));
                }
            }
        }
    }
    // Asking again changes nothing.
    let again = state
        .apply(&Command::ShutdownBroker {
            id: 1,
            epoch: epochs[&1],
        })
        .expect("again");
    assert_eq!(again.outcome, Outcome::Unchanged);
    // The restarted broker registers, is unfenced, and leads its lone partitions again.
    register(&mut state, 1, None);
    for (old, new) in before.topics["single"]
        .partitions
        .iter()
        .zip(&state.image().topics["single"].partitions)
    {
        if old.leader == Some(1) {
            assert_eq!(new.leader, Some(1));
        }
    }
}

fn reassign(target: Option<Vec<BrokerId>>) -> Command {
    Command::AlterReassignments {
        changes: vec![("t".into(), 0, target)],
    }
}

#[test]
fn a_reassignment_waits_for_its_new_replicas_then_moves_leadership_off_a_leaving_leader() {
    let (mut state, epochs) = cluster(3);
    state.apply(&create("t", 1, 2)).expect("create");
    let p = state.image().topics["t"].partitions[0].clone();
    let (leader, kept) = (p.replicas[0], p.replicas[1]);
    let new = (1..=3)
        .find(|b| !p.replicas.contains(b))
        .expect("a third broker");

    // Started: the new replica joins the set, nothing else moves until it is in sync.
    state
        .apply(&reassign(Some(vec![new, kept])))
        .expect("start");
    let p = state.image().topics["t"].partitions[0].clone();
    assert_eq!(p.replicas, vec![new, kept, leader]);
    assert_eq!(
        (p.adding.clone(), p.removing.clone()),
        (vec![new], vec![leader])
    );
    assert_eq!(p.leader, Some(leader));
    assert!(p.reassigning());

    // Cancelled: back to the same replicas (their order is not kept: the target went first,
    // see the closing note of issue 16); a second cancel has nothing to cancel.
    state.apply(&reassign(None)).expect("cancel");
    let back = state.image().topics["t"].partitions[0].clone();
    let mut replicas = back.replicas.clone();
    replicas.sort_unstable();
    let mut original = vec![leader, kept];
    original.sort_unstable();
    assert_eq!(replicas, original);
    assert_eq!(back.leader, Some(leader));
    assert!(!back.reassigning());
    // Each partition is answered on its own: nothing to cancel, or a target naming an
    // unknown broker, refuses that partition.
    let refusal = |state: &mut MetadataState, target| {
        let a = state.apply(&reassign(target)).expect("answered");
        let Outcome::ReassignmentsAltered { refused } = a.outcome else {
            panic!("{a:?}")
        };
        refused.into_iter().map(|(_, _, e)| e).collect::<Vec<_>>()
    };
    assert!(matches!(
        refusal(&mut state, None).as_slice(),
        [CommandError::NoReassignmentInProgress { .. }]
    ));
    assert!(matches!(
        refusal(&mut state, Some(vec![9])).as_slice(),
        [CommandError::InvalidReplicaAssignment { .. }]
    ));
    assert!(!state.image().topics["t"].partitions[0].reassigning());

    // Again, and this time the leader reports the new replica in sync: the reassignment
    // completes in that same command and leadership leaves the removed replica.
    state
        .apply(&reassign(Some(vec![new, kept])))
        .expect("start");
    let p = state.image().topics["t"].partitions[0].clone();
    state
        .apply(&Command::AlterIsr {
            topic: "t".into(),
            partition: 0,
            broker_id: leader,
            broker_epoch: epochs[&leader],
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            isr: vec![leader, kept, new],
        })
        .expect("expand");
    let done = state.image().topics["t"].partitions[0].clone();
    assert_eq!(done.replicas, vec![new, kept]);
    let mut isr = done.isr.clone();
    isr.sort_unstable();
    let mut want = vec![kept, new];
    want.sort_unstable();
    assert_eq!(isr, want, "the leaving replica left the ISR");
    assert_eq!(done.leader, Some(new));
    assert_eq!(done.leader_epoch, p.leader_epoch + 1);
    assert!(!done.reassigning());
}

#[test]
fn scram_credentials_are_set_replaced_and_removed_and_followers_see_each_change() {
    use strata_controller::model::ScramCredential;

    let (mut state, _) = cluster(1);
    let mut follower = state.image().clone();
    let cred = |n: u8| ScramCredential {
        salt: vec![n; 16],
        stored_key: vec![n; 64],
        server_key: vec![n + 1; 64],
        iterations: 4096,
    };
    let follow = |state: &MetadataState, image: &mut MetadataImage| {
        for update in state.updates_since(image.version) {
            match update {
                MetadataUpdate::Delta(d) => image.apply_delta(&d),
                MetadataUpdate::Image(i) => *image = i,
            }
        }
    };
    let set = Command::AlterScramCredentials {
        upsert: vec![
            ("alice".into(), "SCRAM-SHA-512".into(), cred(1)),
            ("alice".into(), "SCRAM-SHA-256".into(), cred(2)),
            ("bob".into(), "SCRAM-SHA-512".into(), cred(3)),
        ],
        delete: Vec::new(),
    };
    assert_eq!(
        state.apply(&set).expect("set").outcome,
        Outcome::ScramAltered
    );
    follow(&state, &mut follower);
    assert_eq!(follower.scram, state.image().scram);
    assert_eq!(state.image().scram["alice"].len(), 2);
    // Removing bob's only credential removes bob; a missing one changes nothing.
    let remove = Command::AlterScramCredentials {
        upsert: vec![("alice".into(), "SCRAM-SHA-512".into(), cred(9))],
        delete: vec![
            ("bob".into(), "SCRAM-SHA-512".into()),
            ("carol".into(), "SCRAM-SHA-256".into()),
        ],
    };
    state.apply(&remove).expect("remove");
    follow(&state, &mut follower);
    assert_eq!(follower.scram, state.image().scram);
    assert!(!state.image().scram.contains_key("bob"));
    assert_eq!(state.image().scram["alice"]["SCRAM-SHA-512"], cred(9));
}

#[test]
fn client_quotas_are_set_changed_and_removed_and_followers_see_each_change() {
    use strata_controller::model::{QuotaEntity, QuotaValue};

    let (mut state, _) = cluster(1);
    let mut follower = state.image().clone();
    let follow = |state: &MetadataState, image: &mut MetadataImage| {
        for update in state.updates_since(image.version) {
            match update {
                MetadataUpdate::Delta(d) => image.apply_delta(&d),
                MetadataUpdate::Image(i) => *image = i,
            }
        }
    };
    let entity = |pairs: &[(&str, Option<&str>)]| {
        QuotaEntity(
            pairs
                .iter()
                .map(|(t, n)| (t.to_string(), n.map(str::to_owned)))
                .collect(),
        )
    };
    let alice = entity(&[("user", Some("alice"))]);
    let default_client = entity(&[("client-id", None)]);
    let set = Command::AlterClientQuotas {
        entries: vec![
            (
                alice.clone(),
                vec![
                    ("producer_byte_rate".into(), Some(QuotaValue(1024.0))),
                    ("consumer_byte_rate".into(), Some(QuotaValue(2048.0))),
                ],
            ),
            (
                default_client.clone(),
                vec![("request_percentage".into(), Some(QuotaValue(12.5)))],
            ),
        ],
    };
    assert_eq!(
        state.apply(&set).expect("set").outcome,
        Outcome::QuotasAltered
    );
    follow(&state, &mut follower);
    assert_eq!(follower.quotas, state.image().quotas);
    assert_eq!(state.image().quotas.len(), 2);
    assert_eq!(
        state
            .image()
            .quotas_of(&alice)
            .map(|v| v["producer_byte_rate"]),
        Some(QuotaValue(1024.0))
    );
    // One value removed, one changed; removing the entity's last value removes the entity;
    // removing from an entity that has none changes nothing.
    let alter = Command::AlterClientQuotas {
        entries: vec![
            (
                alice.clone(),
                vec![
                    ("producer_byte_rate".into(), None),
                    ("consumer_byte_rate".into(), Some(QuotaValue(4096.0))),
                ],
            ),
            (
                default_client.clone(),
                vec![("request_percentage".into(), None)],
            ),
            (
                entity(&[("ip", None)]),
                vec![("connection_creation_rate".into(), None)],
            ),
        ],
    };
    let version = state.image().version;
    state.apply(&alter).expect("alter");
    follow(&state, &mut follower);
    assert_eq!(follower, *state.image());
    assert_eq!(state.image().version, version + 1);
    assert_eq!(state.image().quotas.len(), 1);
    assert_eq!(
        state.image().quotas_of(&alice).cloned(),
        Some(BTreeMap::from([(
            "consumer_byte_rate".to_string(),
            QuotaValue(4096.0)
        )]))
    );
    assert_eq!(state.image().quotas_of(&default_client), None);
}
