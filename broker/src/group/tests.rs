//! The membership state machine, driven directly with a hand-held clock.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::machine::{Answer, Group, Join, JoinReply, Limits, Phase, SyncReply, code};

const LIMITS: Limits = Limits {
    min_session: Duration::from_millis(100),
    max_session: Duration::from_secs(60),
    initial_rebalance_delay: Duration::from_secs(1),
    max_size: 10,
};

fn join(member_id: &str, instance: Option<&str>) -> Join {
    Join {
        member_id: member_id.into(),
        instance_id: instance.map(str::to_owned),
        client_id: "c".into(),
        client_host: "h".into(),
        session_timeout: Duration::from_secs(10),
        rebalance_timeout: Duration::from_secs(5),
        protocol_type: "consumer".into(),
        protocols: vec![("range".into(), Bytes::from_static(b"m"))],
        require_known_member_id: true,
    }
}

fn now_join(a: Answer<JoinReply>) -> JoinReply {
    match a {
        Answer::Now(r) => r,
        Answer::Later(_) => panic!("expected an immediate answer"),
    }
}

fn later<T>(a: Answer<T>) -> tokio::sync::oneshot::Receiver<T> {
    match a {
        Answer::Later(rx) => rx,
        Answer::Now(_) => panic!("expected to wait"),
    }
}

/// Two members through the KIP-394 handshake into an empty group, whose first rebalance
/// completes once the initial delay has passed; returns their ids and join receivers.
fn two_members(
    g: &mut Group,
    t: Instant,
) -> (
    String,
    String,
    Vec<tokio::sync::oneshot::Receiver<JoinReply>>,
) {
    let a = now_join(g.join(join("", None), &LIMITS, t));
    assert_eq!(a.error, code::MEMBER_ID_REQUIRED);
    let b = now_join(g.join(join("", None), &LIMITS, t));
    let ra = later(g.join(join(&a.member_id, None), &LIMITS, t));
    let rb = later(g.join(join(&b.member_id, None), &LIMITS, t));
    assert_eq!(
        g.phase(),
        Phase::PreparingRebalance,
        "waiting out the initial delay"
    );
    g.tick(&LIMITS, t + LIMITS.initial_rebalance_delay);
    (a.member_id, b.member_id, vec![ra, rb])
}

/// Two members, the leader's assignment done: a Stable group at generation 1.
fn stable_pair(g: &mut Group, t: Instant) -> (String, String) {
    let (a, b, mut rx) = two_members(g, t);
    let leader = rx.remove(0).try_recv().expect("joined").leader;
    let assignments = vec![(a.clone(), Bytes::new()), (b.clone(), Bytes::new())];
    drop(g.sync(&leader, None, 1, assignments));
    assert_eq!(g.phase(), Phase::Stable);
    g.persisted(1);
    (a, b)
}

#[test]
fn a_rebalance_completes_when_all_members_joined_and_the_leader_assigns() {
    let t = Instant::now();
    let mut g = Group::default();
    let (a, b, mut rx) = two_members(&mut g, t);
    let ja = rx.remove(0).try_recv().expect("joined");
    let jb = rx.remove(0).try_recv().expect("joined");
    assert_eq!((ja.error, jb.error), (0, 0));
    assert_eq!(ja.generation, 1);
    assert_eq!(ja.protocol.as_deref(), Some("range"));
    let leader = ja.leader.clone();
    assert_eq!(jb.leader, leader);
    let (leader_reply, follower) = if leader == a { (&ja, &b) } else { (&jb, &a) };
    assert_eq!(
        leader_reply.members.len(),
        2,
        "the leader learns every member"
    );
    assert_eq!(g.phase(), Phase::CompletingRebalance);
    // The follower syncs first and waits; the leader's assignment completes both, once the
    // generation with its assignments is persisted (before, members consumed and committed
    // under a generation a coordinator failover could lose and hand out again).
    let mut f = later(g.sync(follower, None, 1, Vec::new()));
    let assignments = vec![
        (a.clone(), Bytes::from_static(b"to-a")),
        (b.clone(), Bytes::from_static(b"to-b")),
    ];
    let mut l = later(g.sync(&leader, None, 1, assignments));
    assert_eq!(g.phase(), Phase::Stable);
    assert!(g.awaits_persist());
    assert!(
        f.try_recv().is_err() && l.try_recv().is_err(),
        "not yet persisted"
    );
    // A sync that comes after the leader's waits too.
    let mut again = later(g.sync(follower, None, 1, Vec::new()));
    assert!(g.take_dirty(), "a completed generation is persisted");
    g.persisted(0);
    assert!(
        again.try_recv().is_err(),
        "an older generation releases nothing"
    );
    g.persisted(1);
    assert!(!g.awaits_persist());
    assert!(
        f.try_recv().is_err(),
        "the follower's first sync was replaced"
    );
    assert_eq!(again.try_recv().expect("answered").error, 0);
    let fr: SyncReply = g_sync_now(&mut g, follower);
    let lr: SyncReply = l.try_recv().expect("leader answered");
    let expected = |id: &str| if id == a { &b"to-a"[..] } else { &b"to-b"[..] };
    assert_eq!(&fr.assignment[..], expected(follower));
    assert_eq!(&lr.assignment[..], expected(&leader));
}

/// A SyncGroup of a Stable, persisted group: answered at once.
fn g_sync_now(g: &mut Group, member: &str) -> SyncReply {
    match g.sync(member, None, 1, Vec::new()) {
        Answer::Now(r) => r,
        Answer::Later(_) => panic!("expected an immediate answer"),
    }
}

#[test]
fn generation_and_member_checks_use_kafkas_codes() {
    let t = Instant::now();
    let mut g = Group::default();
    let (a, b) = stable_pair(&mut g, t);
    assert_eq!(g.heartbeat(&a, None, 1, t), code::NONE);
    assert_eq!(g.heartbeat(&a, None, 0, t), code::ILLEGAL_GENERATION);
    assert_eq!(g.heartbeat("nobody", None, 1, t), code::UNKNOWN_MEMBER_ID);
    assert_eq!(g.check_commit(&a, None, 0), Err(code::ILLEGAL_GENERATION));
    assert_eq!(g.check_commit(&a, None, 1), Ok(()));
    assert_eq!(
        g.check_commit("", None, -1),
        Err(code::UNKNOWN_MEMBER_ID),
        "no commits from outside an active group"
    );
    // A new member starts a rebalance: heartbeats say so. Commits of the generation still
    // in force are taken, as Kafka takes them, so members commit what they consumed before
    // rejoining (refused, a consumer that leaves or exits then loses its last commit).
    let c = now_join(g.join(join("", None), &LIMITS, t));
    let _rc = later(g.join(join(&c.member_id, None), &LIMITS, t));
    assert_eq!(g.phase(), Phase::PreparingRebalance);
    assert_eq!(g.heartbeat(&a, None, 1, t), code::REBALANCE_IN_PROGRESS);
    assert_eq!(g.check_commit(&a, None, 1), Ok(()));
    assert!(matches!(
        g.sync(&a, None, 1, Vec::new()),
        Answer::Now(SyncReply {
            error: code::REBALANCE_IN_PROGRESS,
            ..
        })
    ));
    // Once everyone rejoined, the new generation waits for its assignment: commits are
    // refused until it is synced, and the old generation's are stale.
    let _ra = later(g.join(join(&a, None), &LIMITS, t));
    let _rb = later(g.join(join(&b, None), &LIMITS, t));
    assert_eq!(g.phase(), Phase::CompletingRebalance);
    assert_eq!(
        g.check_commit(&a, None, 2),
        Err(code::REBALANCE_IN_PROGRESS)
    );
    assert_eq!(g.check_commit(&a, None, 1), Err(code::ILLEGAL_GENERATION));
}

#[test]
fn an_expired_session_evicts_the_member_and_rebalances_the_rest() {
    let t = Instant::now();
    let mut g = Group::default();
    let (a, _b) = stable_pair(&mut g, t);
    let survivor = a;
    // Only the survivor heartbeats.
    let later_t = t + Duration::from_secs(8);
    assert_eq!(g.heartbeat(&survivor, None, 1, later_t), code::NONE);
    g.tick(&LIMITS, t + Duration::from_secs(11));
    assert_eq!(
        g.phase(),
        Phase::PreparingRebalance,
        "eviction starts a rebalance"
    );
    assert_eq!(g.members().count(), 1);
    // The survivor rejoins and the group completes with it alone.
    let mut r = later(g.join(join(&survivor, None), &LIMITS, t + Duration::from_secs(11)));
    let reply = r.try_recv().expect("joined");
    assert_eq!((reply.error, reply.generation), (0, 2));
    assert_eq!(reply.leader, survivor);
}

#[test]
fn a_static_member_restart_fences_its_old_incarnation() {
    let t = Instant::now();
    let mut g = Group::default();
    let mut rx = later(g.join(join("", Some("pod-0")), &LIMITS, t));
    g.tick(&LIMITS, t + LIMITS.initial_rebalance_delay);
    let first = rx.try_recv().expect("joined");
    assert_eq!(first.error, 0);
    drop(g.sync(
        &first.member_id,
        Some("pod-0"),
        first.generation,
        vec![(first.member_id.clone(), Bytes::new())],
    ));
    assert_eq!(g.phase(), Phase::Stable);
    // The pod restarts: same instance id, no member id.
    let mut rx = later(g.join(join("", Some("pod-0")), &LIMITS, t));
    let second = rx.try_recv().expect("rejoined");
    assert_ne!(second.member_id, first.member_id);
    assert_eq!(
        g.heartbeat(&first.member_id, Some("pod-0"), second.generation, t),
        code::FENCED_INSTANCE_ID
    );
    assert_eq!(g.members().count(), 1);
}

#[test]
fn leaving_empties_the_group_and_bad_joins_are_refused() {
    let t = Instant::now();
    let mut g = Group::default();
    let mut short = join("", None);
    short.session_timeout = Duration::from_millis(1);
    assert_eq!(
        now_join(g.join(short, &LIMITS, t)).error,
        code::INVALID_SESSION_TIMEOUT
    );
    assert_eq!(
        now_join(g.join(join("ghost", None), &LIMITS, t)).error,
        code::UNKNOWN_MEMBER_ID
    );
    let (a, b, _rx) = two_members(&mut g, t);
    let mut other = join("", None);
    other.protocols = vec![("roundrobin".into(), Bytes::new())];
    assert_eq!(
        now_join(g.join(other, &LIMITS, t)).error,
        code::INCONSISTENT_GROUP_PROTOCOL
    );
    assert_eq!(g.leave(&a, None, &LIMITS, t), code::NONE);
    assert_eq!(g.leave(&a, None, &LIMITS, t), code::UNKNOWN_MEMBER_ID);
    assert_eq!(g.leave(&b, None, &LIMITS, t), code::NONE);
    assert_eq!(g.phase(), Phase::Empty);
    assert!(g.is_empty());
    assert_eq!(g.generation(), 2);
}

fn coordinator() -> super::Coordinator {
    use super::{Coordinator, GroupConfig};
    Coordinator::new(
        GroupConfig {
            limits: LIMITS,
            consumer: Default::default(),
            offsets_partitions: 4,
            offsets_retention: Duration::from_secs(60),
            offsets_replication_factor: Some(1),
            expected_brokers: 1,
            offsets_segment_bytes: 1 << 20,
            offsets_tiered: false,
            authorization: Default::default(),
        },
        0,
        Default::default(),
        std::sync::Arc::new(strata_controller::ControllerClient::new(
            Vec::<String>::new(),
        )),
        std::sync::Arc::new(crate::lease::Lease::new(Duration::from_secs(9))),
    )
}

#[test]
fn offsets_of_a_group_empty_past_the_retention_are_tombstoned() {
    use super::store::{Committed, Write};
    let coordinator = coordinator();
    let c = Committed {
        offset: 5,
        leader_epoch: 0,
        metadata: None,
        commit_ms: 0,
    };
    coordinator.with_group("idle", |e| {
        e.offsets.insert(("t".into(), 0), c.clone());
        e.offsets.insert(("t".into(), 1), c.clone());
    });
    let t = Instant::now();
    // First sight of the empty group starts the clock; nothing expires yet.
    assert!(coordinator.advance(t, 1_000).is_empty());
    assert!(coordinator.advance(t, 60_999).is_empty());
    let due = coordinator.advance(t, 61_000);
    let idle = &due["idle"];
    assert!(idle.expire);
    let writes = &idle.writes;
    let tombstones = writes
        .iter()
        .filter(|w| matches!(w, Write::Offset { value: None, .. }))
        .count();
    assert_eq!(tombstones, 2);
    assert!(matches!(
        writes.last(),
        Some(Write::Group { value: None, .. })
    ));
    // A group with a member keeps its offsets however long it lives.
    let mut j = join("", None);
    j.require_known_member_id = false;
    coordinator.with_group("busy", |e| {
        e.offsets.insert(("t".into(), 0), c.clone());
        drop(e.group.join(j, &LIMITS, t));
    });
    let due = coordinator.advance(t, 10_000_000);
    assert!(due.get("busy").is_none_or(|p| !p.expire));
}

/// A partition stays unstable (KIP-447's UNSTABLE_OFFSET_COMMIT) while any commit of it is
/// being written, and only those partitions.
#[test]
fn partitions_being_committed_are_unstable_until_every_commit_ends() {
    let coordinator = coordinator();
    let unstable = || coordinator.with_group("g", |e| e.unstable());
    let p0 = ("t".to_owned(), 0);
    let p1 = ("t".to_owned(), 1);
    let first = coordinator.committing("g", vec![p0.clone(), p1.clone()]);
    let second = coordinator.committing("g", vec![p0.clone()]);
    assert_eq!(unstable(), [p0.clone(), p1.clone()].into());
    drop(first);
    assert_eq!(unstable(), [p0.clone()].into());
    drop(second);
    assert!(unstable().is_empty());
    // A group removed meanwhile (DeleteGroups) is not brought back by the guard.
    let late = coordinator.committing("gone", vec![p0]);
    coordinator.remove("gone");
    drop(late);
    assert!(coordinator.with_existing("gone", |_| ()).is_none());
}

/// Membership is persisted once a generation has its assignments (as Kafka writes it on
/// the leader's SyncGroup), never mid-rebalance: a restored snapshot is served as Stable, so
/// one taken while members were still joining would hand out the old assignments under the
/// new generation.
#[test]
fn membership_is_persisted_only_with_a_generations_assignments() {
    let coordinator = coordinator();
    let t = Instant::now();
    let (a, b, mut rx) = coordinator.with_group("g", |e| two_members(&mut e.group, t));
    assert!(
        coordinator.advance(t, 0).is_empty(),
        "nothing while the leader has not assigned"
    );
    let leader = rx.remove(0).try_recv().expect("joined").leader;
    let assignments = vec![(a, Bytes::new()), (b, Bytes::new())];
    let mut answer = match coordinator.sync("g", &leader, None, 1, assignments) {
        Answer::Later(rx) => rx,
        Answer::Now(r) => panic!("answered before persisting: {r:?}"),
    };
    let due = coordinator.advance(t, 0);
    assert_eq!(due["g"].generation, Some(1));
    assert!(answer.try_recv().is_err());
    coordinator.with_group("g", |e| e.group.persisted(1));
    assert_eq!(answer.try_recv().expect("answered").error, 0);
}
