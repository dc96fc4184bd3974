//! Role changes as metadata moves, seen by the registry's subscribers and the coordinator.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use object_store::memory::InMemory;
use strata_controller::model::{MetadataImage, PartitionRecord, TopicRecord};
use uuid::Uuid;

use super::registry::{Partitions, RoleEvents};
use super::role::{Change, Role, RoleChange};

const ME: i32 = 1;

pub(crate) fn partition(
    replicas: &[i32],
    leader: Option<i32>,
    leader_epoch: i32,
) -> PartitionRecord {
    PartitionRecord {
        adding: Vec::new(),
        removing: Vec::new(),
        unclean: false,
        replicas: replicas.to_vec(),
        isr: replicas.to_vec(),
        leader,
        leader_epoch,
        partition_epoch: leader_epoch,
    }
}

pub(crate) fn image(version: u64, topics: Vec<TopicRecord>) -> MetadataImage {
    MetadataImage {
        version,
        topics: topics.into_iter().map(|t| (t.name.clone(), t)).collect(),
        ..MetadataImage::default()
    }
}

pub(crate) fn topic(name: &str, id: Uuid, partitions: Vec<PartitionRecord>) -> TopicRecord {
    TopicRecord {
        name: name.into(),
        id,
        replication_factor: 2,
        // Local only: nothing waits on the (in-memory) object store.
        configs: BTreeMap::from([("remote.storage.enable".into(), "false".into())]),
        partitions,
    }
}

pub(crate) fn registry(dir: &tempfile::TempDir) -> Partitions {
    Partitions::new(
        ME,
        dir.path().to_owned(),
        Arc::new(InMemory::new()),
        object_store::path::Path::default(),
    )
}

/// The changes of the next published batch, as (partition, change), sorted.
fn next(events: &mut RoleEvents) -> Vec<(i32, Change)> {
    let batch = events.try_recv().expect("a batch of role changes");
    let mut changes: Vec<_> = batch.iter().map(|c| (c.index(), c.change)).collect();
    changes.sort_by_key(|(i, _)| *i);
    changes
}

#[test]
fn role_changes_follow_leadership_epochs_reassignment_and_deletion() {
    let dir = tempfile::tempdir().expect("temp dir");
    let parts = registry(&dir);
    let mut early = parts.subscribe();
    assert!(early.try_recv().is_err(), "nothing hosted, nothing to say");
    let id = Uuid::new_v4();

    // p0 led here, p1 followed here, p2 not a replica here.
    let v1 = topic(
        "t",
        id,
        vec![
            partition(&[1, 2], Some(1), 0),
            partition(&[2, 1], Some(2), 0),
            partition(&[2], Some(2), 0),
        ],
    );
    let changes = parts.apply(&image(1, vec![v1.clone()]));
    assert_eq!(changes.len(), 2);
    let expected = vec![
        (0, Change::BecomeLeader { epoch: 0 }),
        (
            1,
            Change::BecomeFollower {
                leader: Some(2),
                epoch: 0,
            },
        ),
    ];
    assert_eq!(next(&mut early), expected);
    assert_eq!(parts.hosted().len(), 2);
    assert!(parts.get(id, 2).is_none());
    let p0 = parts.get(id, 0).expect("hosted");
    assert_eq!(p0.role(), Role::Leader { epoch: 0 });

    // The same image again changes nothing.
    assert!(parts.apply(&image(2, vec![v1])).is_empty());
    assert!(early.try_recv().is_err());

    // Leadership swaps; a late subscriber starts from the roles as they are now.
    let v3 = topic(
        "t",
        id,
        vec![
            partition(&[1, 2], Some(2), 1),
            partition(&[2, 1], Some(1), 1),
            partition(&[2], Some(2), 0),
        ],
    );
    parts.apply(&image(3, vec![v3]));
    let swapped = vec![
        (
            0,
            Change::BecomeFollower {
                leader: Some(2),
                epoch: 1,
            },
        ),
        (1, Change::BecomeLeader { epoch: 1 }),
    ];
    assert_eq!(next(&mut early), swapped);
    let mut late = parts.subscribe();
    assert_eq!(next(&mut late), swapped);
    assert!(Arc::ptr_eq(&p0, &parts.get(id, 0).expect("still hosted")));

    // A new leader epoch of the same leader is a change too (Kafka's become-leader).
    // The replica of p0 moves away: stopped, its data left alone.
    let v4 = topic(
        "t",
        id,
        vec![
            partition(&[2, 3], Some(2), 2),
            partition(&[2, 1], Some(1), 2),
            partition(&[2], Some(2), 0),
        ],
    );
    parts.apply(&image(4, vec![v4]));
    let expected = vec![
        (0, Change::Stop { deleted: false }),
        (1, Change::BecomeLeader { epoch: 2 }),
    ];
    assert_eq!(next(&mut early), expected);
    assert_eq!(next(&mut late), expected);
    assert_eq!(p0.role(), Role::Offline);
    // Reassigned away: the local copy goes, as in Kafka.
    assert!(!p0.log.dir().exists());

    // The topic is deleted: stopped, and its directory removed.
    let p1 = parts.get(id, 1).expect("hosted");
    parts.apply(&image(5, vec![]));
    assert_eq!(next(&mut early), vec![(1, Change::Stop { deleted: true })]);
    assert!(!p1.log.dir().exists());
    assert!(parts.hosted().is_empty());
}

/// A tiered replica elected from outside the ISR (an `unclean` record) reads the manifest
/// again before it takes appends, so a log behind the object store continues from there; a
/// clean election does not wait.
#[tokio::test]
async fn an_uncleanly_elected_tiered_leader_waits_for_the_manifest() {
    let dir = tempfile::tempdir().expect("temp dir");
    let parts = registry(&dir);
    let id = Uuid::new_v4();
    let tiered = |p: PartitionRecord| TopicRecord {
        configs: BTreeMap::new(),
        ..topic("t", id, vec![p])
    };
    parts.apply(&image(1, vec![tiered(partition(&[2, 1], Some(2), 0))]));
    let part = parts.get(id, 0).expect("hosted");
    part.recover().await.expect("recovered (no manifest yet)");
    assert!(!part.recovering());
    // A clean election: appends go ahead.
    parts.apply(&image(2, vec![tiered(partition(&[2, 1], Some(1), 1))]));
    assert!(!part.recovering());
    // Back to following, then an unclean election.
    parts.apply(&image(3, vec![tiered(partition(&[2, 1], Some(2), 2))]));
    let unclean = PartitionRecord {
        unclean: true,
        isr: vec![1],
        ..partition(&[2, 1], Some(1), 3)
    };
    parts.apply(&image(4, vec![tiered(unclean)]));
    assert!(part.recovering(), "waits for the manifest");
    part.recover().await.expect("recovered");
    assert!(!part.recovering());
}

/// A recovery that reset the log to the remote end but failed before it restored what goes
/// with that (here, saving the producers' snapshot) finishes on its retry: the log end and
/// the high watermark come up to the remote end. (Before, the retry found the log no longer
/// behind, skipped the rest, and the partition served an end of 0 over the restored data.)
#[tokio::test]
async fn a_recovery_that_failed_after_resetting_the_log_finishes_when_retried() {
    use strata_storage::tier::manifest::PartitionObjects;
    use strata_storage::tier::upload::{ProducersAt, upload_sealed_below};
    use strata_storage::{BatchBuilder, Log};

    let store = Arc::new(InMemory::new());
    let id = Uuid::new_v4();
    // What a previous leader uploaded: three records.
    let before = tempfile::tempdir().expect("temp dir");
    let old = Log::open(before.path(), Default::default()).expect("log");
    for _ in 0..3 {
        let batch = BatchBuilder::new().value(None, b"v", 1).build();
        old.append(&batch, 0).expect("append");
    }
    old.roll().expect("roll");
    old.flush().expect("flush");
    let objects = PartitionObjects::new(store.clone(), &Default::default(), id, 0);
    let manifest = upload_sealed_below(&old, &objects, 0, u64::MAX, &|_| ProducersAt::default())
        .await
        .expect("uploaded");
    assert_eq!(manifest.end_offset(), 3);

    let dir = tempfile::tempdir().expect("temp dir");
    let parts = Partitions::new(ME, dir.path().to_owned(), store, Default::default());
    let tiered = TopicRecord {
        configs: BTreeMap::new(),
        ..topic("t", id, vec![partition(&[ME], Some(ME), 1)])
    };
    parts.apply(&image(1, vec![tiered]));
    let part = parts.get(id, 0).expect("hosted");
    assert!(part.recovering());
    let blocker = part.log.dir().join("producers.snapshot.tmp");
    std::fs::create_dir(&blocker).expect("a directory where the snapshot is written");
    assert!(part.recover().await.is_err(), "saving the snapshot fails");
    assert!(part.recovering(), "appends still wait");
    std::fs::remove_dir(&blocker).expect("unblocked");
    part.recover().await.expect("recovered on the retry");
    assert!(!part.recovering());
    assert_eq!(part.log.log_end_offset(), 3);
    assert_eq!(*part.end.borrow(), 3);
    assert_eq!(*part.high_watermark.borrow(), 3);
    assert_eq!(
        crate::producer::newest_snapshot_offset(part.log.dir()),
        Some(3)
    );
}

/// The flusher and a recovery may save the producers' snapshot at the same time; neither
/// fails for the other (they share one temporary file name).
#[test]
fn producer_snapshots_written_at_once_both_land() {
    let dir = tempfile::tempdir().expect("temp dir");
    let parts = registry(&dir);
    let id = Uuid::new_v4();
    parts.apply(&image(
        1,
        vec![topic("t", id, vec![partition(&[ME], Some(ME), 0)])],
    ));
    let part = parts.get(id, 0).expect("hosted");
    std::thread::scope(|s| {
        let writers: Vec<_> = (0..2u64)
            .map(|w| {
                let part = &part;
                s.spawn(move || {
                    (0..200u64)
                        .map(|i| {
                            let held = part.hold_producer_snapshots();
                            part.write_producer_snapshot(&held, i * 2 + w, b"{}")
                        })
                        .collect::<Result<Vec<()>, _>>()
                })
            })
            .collect();
        for w in writers {
            w.join().expect("writer").expect("every write lands");
        }
    });
}

#[test]
fn a_partition_that_cannot_open_is_announced_when_it_does() {
    let dir = tempfile::tempdir().expect("temp dir");
    let parts = registry(&dir);
    let mut events = parts.subscribe();
    let id = Uuid::new_v4();
    let t = topic("t", id, vec![partition(&[1], Some(1), 0)]);
    // A file where the partition's directory goes: opening fails, the image still applies.
    let blocker = dir.path().join("t-0");
    std::fs::write(&blocker, b"not a directory").expect("write");
    assert!(parts.apply(&image(1, vec![t.clone()])).is_empty());
    assert!(parts.get(id, 0).is_none());
    std::fs::remove_file(&blocker).expect("remove");
    parts.apply(&image(2, vec![t]));
    assert_eq!(
        next(&mut events),
        vec![(0, Change::BecomeLeader { epoch: 0 })]
    );
}

/// A group coordinator over a registry, and the offsets topic's metadata it follows.
struct OffsetsHarness {
    _dir: tempfile::TempDir,
    parts: Partitions,
    metadata: Arc<crate::metadata::MetadataView>,
    coordinator: crate::group::Coordinator,
    id: Uuid,
}

impl OffsetsHarness {
    fn new() -> Self {
        use crate::group::{Coordinator, GroupConfig};
        use crate::metadata::MetadataView;

        let dir = tempfile::tempdir().expect("temp dir");
        let parts = registry(&dir);
        let metadata = Arc::new(MetadataView::default());
        // The controller answered a heartbeat: this broker's lease is held.
        let lease = Arc::new(crate::lease::Lease::new(Duration::from_secs(9)));
        lease.renew(tokio::time::Instant::now(), 0);
        let coordinator = Coordinator::new(
            GroupConfig {
                limits: crate::group::machine::Limits {
                    min_session: Duration::from_secs(1),
                    max_session: Duration::from_secs(60),
                    initial_rebalance_delay: Duration::ZERO,
                    max_size: 10,
                },
                consumer: Default::default(),
                offsets_partitions: 1,
                offsets_retention: Duration::from_secs(3600),
                offsets_replication_factor: Some(2),
                expected_brokers: 1,
                offsets_segment_bytes: 1 << 20,
                offsets_tiered: false,
                authorization: Default::default(),
            },
            ME,
            metadata.clone(),
            Arc::new(strata_controller::ControllerClient::new(
                Vec::<String>::new(),
            )),
            lease,
        );
        Self {
            _dir: dir,
            parts,
            metadata,
            coordinator,
            id: Uuid::new_v4(),
        }
    }

    /// Publishes image `version` with the offsets partition led by `leader` at `epoch`.
    fn publish(&self, version: u64, leader: i32, epoch: i32) -> Vec<RoleChange> {
        let mut t = topic(
            crate::group::store::OFFSETS_TOPIC,
            self.id,
            vec![partition(&[1, 2], Some(leader), epoch)],
        );
        t.configs.clear();
        // The other replica is out of sync: commits need only the leader (an in-sync one
        // would have to copy them first, which nothing here does).
        t.partitions[0].isr = vec![leader];
        let img = image(version, vec![t]);
        let changes = self.parts.apply(&img);
        self.metadata.publish(img);
        changes
    }
}

/// The coordinator loads an offsets partition's groups when this broker starts leading it,
/// drops them when it stops, and finds them again in the log when leadership comes back.
#[tokio::test]
async fn the_group_coordinator_loads_and_unloads_offsets_partitions_as_leadership_moves() {
    use crate::group::code;
    use crate::group::store::{Committed, Write};

    let h = OffsetsHarness::new();
    let coordinator = &h.coordinator;
    let publish = |version, leader, epoch| h.publish(version, leader, epoch);

    // Led here but not loaded yet: clients are told to wait.
    assert_eq!(
        coordinator.route("g").err(),
        Some(code::COORDINATOR_NOT_AVAILABLE)
    );
    let changes = publish(1, ME, 0);
    assert_eq!(
        coordinator.route("g").err(),
        Some(code::COORDINATOR_LOAD_IN_PROGRESS)
    );
    coordinator.follow(&changes).await;
    let (part, epoch) = coordinator.route("g").expect("coordinated here");
    assert_eq!(epoch, 0);
    let committed = Committed {
        offset: 42,
        leader_epoch: 0,
        metadata: None,
        commit_ms: 0,
    };
    let write = Write::Offset {
        group: "g".into(),
        topic: "orders".into(),
        partition: 3,
        value: Some(committed.clone()),
    };
    coordinator
        .persist_then(part, epoch, "g", vec![write], |e| {
            e.offsets.insert(("orders".into(), 3), committed.clone());
        })
        .await
        .expect("persisted");

    // Leadership moves to broker 2: the groups go, clients look elsewhere.
    coordinator.follow(&publish(2, 2, 1)).await;
    assert_eq!(coordinator.route("g").err(), Some(code::NOT_COORDINATOR));
    assert!(coordinator.list().is_empty());

    // And comes back: the commit is replayed from the log.
    coordinator.follow(&publish(3, ME, 2)).await;
    assert_eq!(coordinator.route("g").map(|(_, e)| e), Ok(2));
    let offset = coordinator.with_existing("g", |e| {
        e.offsets.get(&("orders".into(), 3)).map(|c| c.offset)
    });
    assert_eq!(offset, Some(Some(42)));
    // Its writes record their leader epoch where they start, as a produce does: followers
    // truncate by these epochs.
    let (part, epoch) = coordinator.route("g").expect("coordinated here");
    let start = part.log.log_end_offset();
    let again = Write::Offset {
        group: "g".into(),
        topic: "orders".into(),
        partition: 3,
        value: Some(Committed {
            offset: 43,
            ..committed.clone()
        }),
    };
    coordinator
        .persist_then(part.clone(), epoch, "g", vec![again], |_| ())
        .await
        .expect("persisted");
    {
        let epochs = part.epochs.lock().expect("epochs");
        assert_eq!(epochs.latest(), Some(2));
        assert_eq!(epochs.end_offset_for(0, 2, start + 1), (0, start as i64));
    }

    // A commit still in flight when leadership moves on is not written: this copy now
    // follows, and the log's latest epoch (2) does not tell it (its follower was cut back
    // and had not copied the new leader's first batch yet).
    let end = part.log.log_end_offset();
    publish(4, 2, 3);
    let late = Write::Offset {
        group: "g".into(),
        topic: "orders".into(),
        partition: 3,
        value: Some(committed.clone()),
    };
    let refused = coordinator
        .persist_then(part.clone(), epoch, "g", vec![late], |_| ())
        .await;
    assert!(refused.is_err(), "a follower wrote a group commit");
    assert_eq!(part.log.log_end_offset(), end);
}

/// The high watermark survives a restart: a leader whose follower had copied only part of its
/// log does not show consumers the rest after reopening; alone in the ISR it is the log end.
#[test]
fn the_high_watermark_is_saved_and_read_back_capped_at_the_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let id = Uuid::new_v4();
    let replicated = |isr: &[i32]| {
        let mut t = topic("t", id, vec![partition(&[1, 2], Some(ME), 0)]);
        t.partitions[0].isr = isr.to_vec();
        image(1, vec![t])
    };
    {
        let parts = registry(&dir);
        parts.apply(&replicated(&[1, 2]));
        let p = parts.get(id, 0).expect("hosted");
        for i in 0..3 {
            let b = strata_storage::BatchBuilder::new()
                .value(None, format!("v{i}").as_bytes(), 1_000)
                .build();
            p.log.append(&b, 0).expect("append");
            p.appended();
        }
        assert_eq!(
            *p.high_watermark.borrow(),
            0,
            "the follower has nothing yet"
        );
        assert!(p.follower_fetched(2, 2));
        assert_eq!(*p.high_watermark.borrow(), 2);
        parts.flush_all();
    }
    let parts = registry(&dir);
    parts.apply(&replicated(&[1, 2]));
    let p = parts.get(id, 0).expect("hosted");
    assert_eq!(p.log.log_end_offset(), 3);
    assert_eq!(*p.high_watermark.borrow(), 2, "read back, not the log end");
    // The follower leaves the ISR: the leader alone holds everything.
    parts.apply(&replicated(&[1]));
    assert_eq!(*p.high_watermark.borrow(), 3);
}

/// How a follower of topic `t` (led by broker 2 under epoch 0) copies.
pub(crate) const COPYING: Role = Role::Follower {
    leader: Some(2),
    epoch: 0,
};

/// This broker's copy of topic `id` (`t`, one partition led by broker 2), opened from `dir`
/// (what is there already is read back); with the registry holding it.
pub(crate) fn followed_copy(
    dir: &tempfile::TempDir,
    id: Uuid,
) -> (Partitions, Arc<super::Partition>) {
    let parts = registry(dir);
    parts.apply(&image(
        1,
        vec![topic("t", id, vec![partition(&[2, 1], Some(2), 0)])],
    ));
    let copy = parts.get(id, 0).expect("hosted");
    (parts, copy)
}

/// `batch` as the leader sent it: its offset and leader epoch (0) in the header.
pub(crate) fn as_sent(mut batch: Vec<u8>, offset: i64) -> Vec<u8> {
    batch[..8].copy_from_slice(&offset.to_be_bytes());
    batch[12..16].copy_from_slice(&0i32.to_be_bytes());
    batch
}

/// Offsets 0..3 as a leader sends them: a plain batch, producer 5's first transactional
/// batch (its transaction stays open), a plain batch.
pub(crate) fn with_open_txn() -> Vec<u8> {
    use strata_storage::BatchBuilder;
    let plain = || BatchBuilder::new().value(None, b"p", 1).build();
    let txn = BatchBuilder::new()
        .producer(5, 0, 0)
        .transactional()
        .value(None, b"t", 1)
        .build();
    let mut records = as_sent(plain(), 0);
    records.extend(as_sent(txn, 1));
    records.extend(as_sent(plain(), 2));
    records
}

/// A copy records the transactions its leader's batches open and their markers end, the
/// last stable offset (what read_committed consumers read to) stops at the earliest open
/// one, a restart reads the open transaction back from the log, and an abort lands in the
/// aborted-transaction index once.
#[tokio::test]
async fn the_last_stable_offset_stops_at_an_open_transaction_across_a_restart() {
    use strata_storage::{BatchBuilder, ControlMarker};
    let dir = tempfile::tempdir().expect("temp dir");
    let id = Uuid::new_v4();
    {
        let (parts, copy) = followed_copy(&dir, id);
        let copied = copy
            .append_copied(&with_open_txn(), COPYING)
            .expect("copied");
        assert_eq!(copied, 3);
        copy.follow_high_watermark(3);
        assert_eq!(copy.last_stable_offset(), 1);
        parts.flush_all();
    }
    {
        let (parts, copy) = followed_copy(&dir, id);
        copy.follow_high_watermark(3);
        assert_eq!(copy.last_stable_offset(), 1, "read back from the log");
        let marker = ControlMarker {
            commit: false,
            coordinator_epoch: 0,
        };
        let control = as_sent(BatchBuilder::control(5, 0, marker, 2), 3);
        assert_eq!(copy.append_copied(&control, COPYING).expect("copied"), 4);
        copy.follow_high_watermark(4);
        assert_eq!(copy.last_stable_offset(), 4);
        parts.flush_all();
    }
    // The abort is in the index read_committed fetches use, once, also after a restart
    // replays the log.
    let (_parts, copy) = followed_copy(&dir, id);
    let aborted = strata_storage::AbortedTxn {
        producer_id: 5,
        first_offset: 1,
        last_offset: 3,
        last_stable_offset: 4,
    };
    assert_eq!(copy.log.aborted_txns(0, 4).expect("query"), [aborted]);
    // What a read_committed fetch of the range is told.
    let reader =
        strata_storage::tier::read::RemoteReader::open(strata_storage::tier::read::CacheConfig {
            memory_bytes: 1 << 20,
            chunk_bytes: 4096,
            ..Default::default()
        })
        .await
        .expect("cache");
    assert_eq!(copy.aborted_txns(&reader, 0, 4).await, Ok(vec![aborted]));
    assert_eq!(copy.aborted_txns(&reader, 0, 1).await, Ok(vec![]));
}

/// A Produce in flight when leadership moves on is refused once this broker follows, even
/// though the log's latest epoch is still the one it was sent under (the copy was cut back
/// and has not copied the new leader's first batch): it would land inside what the new
/// leader sends.
#[test]
fn a_produce_of_an_old_term_is_refused_once_this_broker_follows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let parts = registry(&dir);
    let id = Uuid::new_v4();
    let led_by = |version, leader, epoch| {
        image(
            version,
            vec![topic(
                "t",
                id,
                vec![partition(&[1, 2], Some(leader), epoch)],
            )],
        )
    };
    parts.apply(&led_by(1, ME, 0));
    let p = parts.get(id, 0).expect("hosted");
    let batch = strata_storage::BatchBuilder::new()
        .value(None, b"a", 1)
        .build();
    assert_eq!(crate::handlers::produce_append(&p, &batch, 0, None), Ok(1));
    parts.apply(&led_by(2, 2, 1));
    assert_eq!(
        crate::handlers::produce_append(&p, &batch, 0, None),
        Err(kafka_protocol::ResponseError::NotLeaderOrFollower)
    );
    assert_eq!(p.log.log_end_offset(), 1, "nothing appended");
}

/// A copy whose last batch differs from the leader's at the same offsets (its end falls
/// inside a leader batch) is cut back to the leader's batch and takes it, instead of refusing
/// it on every fetch.
#[test]
fn a_copy_that_ends_inside_a_leader_batch_takes_the_leaders_batch() {
    use strata_storage::{BatchBuilder, Log, LogConfig};
    let dir = tempfile::tempdir().expect("temp dir");
    let parts = registry(&dir);
    let id = Uuid::new_v4();
    parts.apply(&image(
        1,
        vec![topic("t", id, vec![partition(&[2, 1], Some(2), 0)])],
    ));
    let copy = parts.get(id, 0).expect("hosted");
    let role = Role::Follower {
        leader: Some(2),
        epoch: 0,
    };
    let log_of = |name: &str, batches: &[&[&[u8]]]| {
        let log = Log::open(dir.path().join(name), LogConfig::default()).expect("log");
        for records in batches {
            let mut b = BatchBuilder::new();
            for r in *records {
                b = b.value(None, r, 1);
            }
            log.append(&b.build(), 0).expect("append");
        }
        log
    };
    // The leader: offsets 0..=1 in one batch, 2..=4 in the next. This copy: 0..=2 in one.
    let leader = log_of("leader", &[&[b"a", b"b"], &[b"c", b"d", b"e"]]);
    let other = log_of("other", &[&[b"a", b"b", b"x"]]);
    let ours = other.read(0, 1 << 20).expect("read");
    assert_eq!(copy.append_copied(&ours, role).expect("copied"), 3);
    // A fetch from 3 gets the leader's batch holding 3, which starts at 2.
    let theirs = leader.read(3, 1 << 20).expect("read");
    assert_eq!(copy.append_copied(&theirs, role).expect("copied"), 5);
    let mine = copy.log.read(2, 1 << 20).expect("read");
    assert_eq!(&mine[..], &theirs[..], "the leader's batch, byte for byte");
}

/// A producer snapshot the flusher takes just before a copy is cut back never lands after
/// the cut, named for offsets the cut took away: read back later (by the next cut, a
/// restart), it would answer a retry of a batch the log no longer holds as a duplicate (the
/// acknowledged write is then lost), or miss batches copied there since (their retries would
/// be appended again). Here the save is held between its encoding and its file while the cut
/// is started; the cut waits for it and then removes it.
#[test]
fn a_snapshot_taken_before_a_cut_does_not_outlive_it() {
    use crate::producer::{ProducerBatch, Verdict};
    use strata_storage::BatchBuilder;
    let dir = tempfile::tempdir().expect("temp dir");
    let (_parts, copy) = followed_copy(&dir, Uuid::new_v4());
    let idempotent = |producer: i64, offset: i64| {
        let batch = BatchBuilder::new()
            .producer(producer, 0, 0)
            .value(None, b"v", 1)
            .build();
        as_sent(batch, offset)
    };
    copy.append_copied(&idempotent(1, 0), COPYING)
        .expect("copied");
    std::thread::scope(|s| {
        let held = copy.hold_producer_snapshots();
        let (end, bytes) = copy
            .encode_producers(&held, Duration::ZERO, true)
            .expect("forced");
        assert_eq!(end, 1);
        let cut = s.spawn(|| copy.truncate_copy(0, COPYING));
        // Long enough for a cut that does not wait to be over.
        std::thread::sleep(Duration::from_millis(200));
        copy.write_producer_snapshot(&held, end, &bytes)
            .expect("saved");
        drop(held);
        assert_eq!(cut.join().expect("cut").expect("cut"), 0);
    });
    // The leader's batch at 0 is producer 2's.
    copy.append_copied(&idempotent(2, 0), COPYING)
        .expect("copied");
    let gone = ProducerBatch {
        producer_id: 1,
        epoch: 0,
        first_seq: 0,
        last_seq: 0,
        transactional: false,
    };
    for (offset, table) in crate::producer::saved_tables(copy.log.dir()) {
        assert_eq!(
            table.check(&gone),
            Ok(Verdict::Append),
            "the snapshot at {offset} remembers a batch the cut took away"
        );
    }
    let table = crate::producer::ProducerTable::load(copy.log.dir(), 1);
    assert!(
        table.is_none_or(|(t, _)| t.check(&gone) == Ok(Verdict::Append)),
        "what a restart reads back remembers a batch the cut took away"
    );
}

/// A copy restarted above what it held forgets the snapshots of its producers with that
/// history: a later cut would read them back as this log's state.
#[test]
fn a_restarted_copy_keeps_no_snapshot_of_its_old_history() {
    use strata_storage::BatchBuilder;
    let dir = tempfile::tempdir().expect("temp dir");
    let (_parts, copy) = followed_copy(&dir, Uuid::new_v4());
    let batch = BatchBuilder::new()
        .producer(1, 0, 0)
        .value(None, b"v", 1)
        .build();
    copy.append_copied(&as_sent(batch, 0), COPYING)
        .expect("copied");
    copy.save_producers(Duration::ZERO, true);
    assert_eq!(crate::producer::saved_tables(copy.log.dir()).len(), 1);
    copy.restart_copy_at(10, COPYING).expect("restarted");
    assert_eq!(crate::producer::saved_tables(copy.log.dir()).len(), 0);
}

/// A cut or restart the fetcher worked out while following does nothing once this broker
/// leads: it would take away what was appended here as leader since.
#[test]
fn a_copy_elected_leader_is_not_cut_by_its_old_fetcher() {
    use strata_storage::BatchBuilder;
    let dir = tempfile::tempdir().expect("temp dir");
    let id = Uuid::new_v4();
    let (parts, copy) = followed_copy(&dir, id);
    let batch = |offset| as_sent(BatchBuilder::new().value(None, b"v", 1).build(), offset);
    copy.append_copied(&batch(0), COPYING).expect("copied");
    parts.apply(&image(
        2,
        vec![topic("t", id, vec![partition(&[2, 1], Some(ME), 1)])],
    ));
    let appended = copy
        .append_as_leader(1, || copy.log.append(&batch(0), 1))
        .expect("leads")
        .expect("appended");
    assert_eq!(appended.first_offset, 1);
    assert_eq!(copy.truncate_copy(0, COPYING).expect("no cut"), 2);
    copy.restart_copy_at(10, COPYING).expect("no restart");
    assert_eq!(copy.append_copied(&batch(2), COPYING).expect("no copy"), 2);
    assert_eq!(copy.log.log_end_offset(), 2);
    assert_eq!(copy.log.log_start_offset(), 0);
}

/// The leader's side of a transaction's end on a partition: the first transactional batch
/// needs a verification no marker has voided (KIP-890: a batch verified just before its
/// transaction ended cannot open one nobody will end), a marker older than the producer's
/// epoch is refused, and an abort lands in the index with the transaction's first offset.
#[test]
fn markers_end_transactions_and_void_verifications_made_before_them() {
    use kafka_protocol::ResponseError;
    use strata_storage::{BatchBuilder, ControlMarker};
    let dir = tempfile::tempdir().expect("temp dir");
    let parts = registry(&dir);
    let id = Uuid::new_v4();
    parts.apply(&image(
        1,
        vec![topic("t", id, vec![partition(&[ME], Some(ME), 0)])],
    ));
    let p = parts.get(id, 0).expect("hosted");
    let txn = |epoch: i16, seq: i32| {
        BatchBuilder::new()
            .producer(5, epoch, seq)
            .transactional()
            .value(Some(b"k"), b"t", 1)
            .build()
    };
    let append = |records: &[u8], guard| crate::handlers::produce_append(&p, records, 0, guard);
    let guard = |p: &super::Partition| {
        p.producers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .guard(5)
    };
    assert_eq!(
        append(&txn(1, 0), None),
        Err(ResponseError::InvalidTxnState),
        "unverified"
    );
    let verified = guard(&p);
    assert_eq!(append(&txn(1, 0), Some(verified)), Ok(1));
    assert_eq!(
        append(&txn(1, 1), None),
        Ok(2),
        "the open transaction takes more"
    );
    assert_eq!(p.last_stable_offset(), 0);

    let abort = ControlMarker {
        commit: false,
        coordinator_epoch: 0,
    };
    let marker = |epoch| {
        p.append_as_leader(0, || p.append_marker(5, epoch, abort, 0, 1))
            .expect("leading")
            .expect("appended")
    };
    assert_eq!(
        marker(0),
        Err(super::lead::MarkerRefusal::StaleEpoch { current: 1, got: 0 })
    );
    // Verified for the next transaction, but the marker comes first.
    let late = guard(&p);
    assert_eq!(marker(1), Ok(2));
    p.appended();
    assert_eq!(p.last_stable_offset(), 3);
    assert_eq!(
        append(&txn(1, 2), Some(late)),
        Err(ResponseError::InvalidTxnState),
        "a verification from before the marker opens nothing"
    );
    assert_eq!(p.log.log_end_offset(), 3, "nothing appended");
    let aborted = strata_storage::AbortedTxn {
        producer_id: 5,
        first_offset: 0,
        last_offset: 2,
        last_stable_offset: 3,
    };
    assert_eq!(p.log.aborted_txns(0, 3).expect("query"), [aborted]);
}

#[test]
fn an_older_manifest_published_late_does_not_replace_a_newer_one() {
    use object_store::path::Path;
    use strata_storage::tier::manifest::{Manifest, PartitionObjects};

    use super::remote::RemoteView;

    let objects =
        PartitionObjects::new(Arc::new(InMemory::new()), &Path::from("p"), Uuid::nil(), 0);
    let view = RemoteView::new(objects);
    let at = |version, log_start_offset| {
        Arc::new(Manifest {
            version,
            log_start_offset,
            ..Manifest::default()
        })
    };
    view.publish(at(3, 30));
    // The uploader committed version 2 before DeleteRecords committed 3, and publishes last.
    view.publish(at(2, 0));
    assert_eq!(
        view.manifest().map(|m| (m.version, m.log_start_offset)),
        Some((3, 30))
    );
    view.publish(at(4, 30));
    assert_eq!(view.manifest().map(|m| m.version), Some(4));
}

/// A consumer group upgraded from a classic one is restored as the consumer group, though
/// the classic group's last snapshot is still in the log before it.
#[tokio::test]
async fn an_upgraded_group_is_restored_as_a_consumer_group() {
    use crate::group::consumer::ConsumerSnapshot;
    use crate::group::machine::{GroupSnapshot, MemberInfo};
    use crate::group::store::Write;

    let h = OffsetsHarness::new();
    let coordinator = &h.coordinator;
    coordinator.follow(&h.publish(1, ME, 0)).await;
    let (part, epoch) = coordinator.route("g").expect("coordinated here");
    let member = MemberInfo {
        id: "m".into(),
        instance_id: None,
        client_id: "c".into(),
        client_host: String::new(),
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 10_000,
        protocols: vec![("range".into(), vec![0, 0, 0, 0, 0, 0, 255, 255, 255, 255])],
        assignment: Vec::new(),
    };
    let classic = GroupSnapshot {
        generation: 3,
        protocol_type: Some("consumer".into()),
        protocol: Some("range".into()),
        leader: Some("m".into()),
        members: vec![member],
    };
    let upgraded = crate::group::consumer::ConsumerGroup::from_classic(
        &classic,
        &*h.metadata.image(),
        tokio::time::Instant::now(),
    )
    .expect("upgrade")
    .snapshot();
    let writes = vec![
        Write::Group {
            group: "g".into(),
            value: Some(classic),
        },
        Write::ConsumerGroup {
            group: "g".into(),
            value: Some(upgraded.clone()),
        },
    ];
    coordinator
        .persist_then(part, epoch, "g", writes, |_| ())
        .await
        .expect("persisted");
    // Leadership goes and comes back: the log is replayed.
    coordinator.follow(&h.publish(2, 2, 1)).await;
    coordinator.follow(&h.publish(3, ME, 2)).await;
    let restored = coordinator.with_existing("g", |e| {
        let snapshot: Option<ConsumerSnapshot> = e.consumer.as_ref().map(|c| c.snapshot());
        (snapshot, e.group.members().count())
    });
    assert_eq!(restored, Some((Some(upgraded), 0)));
    let listed = coordinator.list();
    assert_eq!(
        listed.iter().map(|l| l.kind).collect::<Vec<_>>(),
        ["consumer"]
    );
}

/// Audit A16.7: a leader whose view of its epoch is older than the log's history (a log
/// recovered from a manifest written under a later epoch) refuses to stamp it, so epochs
/// never go backwards in the log, and writes nothing.
#[test]
fn an_append_under_an_older_epoch_than_the_logs_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let parts = registry(&dir);
    let id = Uuid::new_v4();
    parts.apply(&image(
        1,
        vec![topic("t", id, vec![partition(&[1, 2], Some(ME), 3)])],
    ));
    let p = parts.get(id, 0).expect("hosted");
    p.epochs
        .lock()
        .expect("epochs")
        .assign(5, 0)
        .expect("a later epoch in the history");
    let batch = strata_storage::BatchBuilder::new()
        .value(None, b"a", 1)
        .build();
    assert_eq!(
        crate::handlers::produce_append(&p, &batch, 3, None),
        Err(kafka_protocol::ResponseError::NotLeaderOrFollower)
    );
    assert_eq!(p.log.log_end_offset(), 0, "nothing appended");
}

/// Audit A16.8: the first append of an epoch records where the epoch starts before
/// appending, so when recording fails the client is told of a failure that really wrote
/// nothing, and its retry lands once.
#[test]
fn a_first_append_whose_epoch_cannot_be_recorded_writes_nothing_and_its_retry_lands_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let parts = registry(&dir);
    let id = Uuid::new_v4();
    parts.apply(&image(
        1,
        vec![topic("t", id, vec![partition(&[1, 2], Some(ME), 0)])],
    ));
    let p = parts.get(id, 0).expect("hosted");
    // The epoch file is written through a temporary file: a directory in its place makes
    // the write fail, whoever runs the test.
    let blocker = p.log.dir().join("leader-epoch-checkpoint.tmp");
    std::fs::create_dir(&blocker).expect("blocker");
    let batch = strata_storage::BatchBuilder::new()
        .value(None, b"a", 1)
        .build();
    assert_eq!(
        crate::handlers::produce_append(&p, &batch, 0, None),
        Err(kafka_protocol::ResponseError::KafkaStorageError)
    );
    assert_eq!(p.log.log_end_offset(), 0, "nothing appended");
    std::fs::remove_dir(&blocker).expect("unblock");
    assert_eq!(crate::handlers::produce_append(&p, &batch, 0, None), Ok(1));
    assert_eq!(p.log.log_end_offset(), 1, "the retry landed once");
}
