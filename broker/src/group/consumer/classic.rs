//! Classic-protocol members in a consumer group: KIP-848's online upgrade.
//!
//! A classic group whose members use the consumer embedded protocol (protocol type
//! `consumer`, as every Kafka consumer does) becomes a consumer group when a member joins it
//! with ConsumerGroupHeartbeat ([`ConsumerGroup::from_classic`]): each classic member becomes
//! a member at the group's generation holding the partitions of its last SyncGroup
//! assignment, and the target starts as those assignments, so the next target (the joining
//! member bumps the epoch) moves as few partitions as the assignor can. The classic members
//! go on with the requests they know, translated:
//!
//! - JoinGroup carries the member's subscription and the partitions it still owns (its
//!   embedded ConsumerProtocolSubscription). The member reconciles as a heartbeat would, and
//!   is answered at once: its member epoch as the generation, and no leader work to do (the
//!   coordinator assigns).
//! - SyncGroup answers the partitions the member holds, as a ConsumerProtocolAssignment.
//! - Heartbeat answers REBALANCE_IN_PROGRESS when the member must rejoin: the group epoch
//!   moved past its epoch, it has partitions to give up, or partitions it waits for have been
//!   released. It must rejoin within its rebalance timeout or it is fenced.
//! - LeaveGroup removes it; OffsetCommit checks its generation against its member epoch.
//!
//! New classic members may join the group too. Once nobody is a member, the next JoinGroup
//! makes it a classic group again (see [`crate::group::Entry::classic`]).

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::TopicName;
use kafka_protocol::messages::consumer_protocol_assignment::{
    ConsumerProtocolAssignment, TopicPartition as AssignedTopic,
};
use kafka_protocol::messages::consumer_protocol_subscription::ConsumerProtocolSubscription;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::*;
use crate::group::machine::{
    GroupSnapshot, Join, JoinReply, Limits, SyncReply, code as proto, leaving,
};

/// The protocol type of Kafka consumers' embedded protocol.
pub(crate) const CONSUMER_PROTOCOL: &str = "consumer";

/// The newest ConsumerProtocol version known here; newer ones only add fields at the end,
/// so they are read as this one (as Kafka does).
const HIGHEST_VERSION: i16 = 3;

/// Splits a ConsumerProtocol message into its version and body.
fn versioned(bytes: &[u8]) -> Result<(i16, &[u8]), String> {
    match bytes {
        [a, b, body @ ..] => match i16::from_be_bytes([*a, *b]) {
            v if v < 0 => Err(format!("ConsumerProtocol version {v} is invalid")),
            v => Ok((v.min(HIGHEST_VERSION), body)),
        },
        _ => Err("ConsumerProtocol message shorter than its version".into()),
    }
}

fn subscription(metadata: &[u8]) -> Result<ConsumerProtocolSubscription, String> {
    let (version, mut body) = versioned(metadata)?;
    ConsumerProtocolSubscription::decode(&mut body, version)
        .map_err(|e| format!("malformed ConsumerProtocolSubscription: {e}"))
}

/// A member's last assignment; none if it never had one.
fn assignment(bytes: &[u8]) -> Result<ConsumerProtocolAssignment, String> {
    if bytes.is_empty() {
        return Ok(ConsumerProtocolAssignment::default());
    }
    let (version, mut body) = versioned(bytes)?;
    ConsumerProtocolAssignment::decode(&mut body, version)
        .map_err(|e| format!("malformed ConsumerProtocolAssignment: {e}"))
}

/// Partitions named in the embedded protocol, by topic id; topics the catalog does not know
/// and partitions it does not have are left out.
fn by_id<'a>(
    named: impl Iterator<Item = (&'a TopicName, &'a Vec<i32>)>,
    catalog: &dyn Catalog,
) -> TopicPartitions {
    let mut out = TopicPartitions::new();
    for (topic, ps) in named {
        if let Some((id, n)) = catalog.topic(topic.as_str()) {
            for p in ps.iter().filter(|p| (0..n).contains(*p)) {
                insert(&mut out, id, *p);
            }
        }
    }
    out
}

fn sorted_topics(s: &ConsumerProtocolSubscription) -> Vec<String> {
    let mut topics: Vec<String> = s.topics.iter().map(|t| t.to_string()).collect();
    topics.sort();
    topics.dedup();
    topics
}

fn join_failure(error: i16, member_id: &str) -> JoinReply {
    JoinReply {
        error,
        generation: -1,
        member_id: member_id.to_owned(),
        ..JoinReply::default()
    }
}

fn sync_failure(error: i16) -> SyncReply {
    SyncReply {
        error,
        ..SyncReply::default()
    }
}

impl ConsumerGroup {
    /// The consumer group a classic group becomes (see the module docs); answering the
    /// classic group's waiting requests is the caller's part. Refused when the group does not
    /// use the consumer embedded protocol or a member's protocol data does not decode.
    pub(crate) fn from_classic(
        classic: &GroupSnapshot,
        catalog: &dyn Catalog,
        now: Instant,
    ) -> Result<Self, String> {
        if classic.protocol_type.as_deref() != Some(CONSUMER_PROTOCOL) {
            return Err(format!(
                "its protocol type is {:?}, not {CONSUMER_PROTOCOL}",
                classic.protocol_type.as_deref().unwrap_or("")
            ));
        }
        let mut group = Self {
            epoch: classic.generation,
            assignment_epoch: classic.generation,
            ..Self::default()
        };
        for m in &classic.members {
            let chosen = classic
                .protocol
                .as_deref()
                .and_then(|p| m.protocols.iter().find(|(n, _)| n == p))
                .or(m.protocols.first());
            let subscribed = subscription(chosen.map_or(&[][..], |(_, b)| b.as_slice()))?;
            let last = assignment(&m.assignment)?;
            let named = last
                .assigned_partitions
                .iter()
                .map(|t| (&t.topic, &t.partitions));
            let mut assigned = TopicPartitions::new();
            // A partition a client-side assignor gave twice stays with the first member.
            for (t, p) in partitions(&by_id(named, catalog)) {
                if let std::collections::btree_map::Entry::Vacant(owner) =
                    group.owners.entry((t, p))
                {
                    owner.insert(m.id.clone());
                    insert(&mut assigned, t, p);
                }
            }
            let mut info = ConsumerMember {
                id: m.id.clone(),
                instance_id: m.instance_id.clone(),
                rack: subscribed.rack_id.as_ref().map(|r| r.to_string()),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                topics: sorted_topics(&subscribed),
                regex: None,
                assignor: None,
                rebalance_timeout_ms: m.rebalance_timeout_ms,
                epoch: classic.generation,
                previous_epoch: classic.generation,
                state: MemberState::Stable,
                assigned: assigned.clone(),
                revoking: TopicPartitions::new(),
                since: BTreeMap::new(),
                classic: Some(ClassicMember {
                    session_timeout_ms: m.session_timeout_ms,
                    protocols: m.protocols.clone(),
                }),
                // Classic members subscribe by name: no expression to resolve for them.
                requester: None,
            };
            info.note_holdings();
            group.target.insert(m.id.clone(), assigned);
            group.members.insert(m.id.clone(), Live::new(info, now));
        }
        // The topics as the classic assignments found them: nothing to rebalance for yet.
        for m in group.members.values() {
            for name in &m.info.topics {
                if let Some(t) = catalog.topic(name) {
                    group.subscribed.insert(name.clone(), t);
                }
            }
        }
        group.checked = Some((catalog.version(), group.epoch));
        group.version = 1;
        Ok(group)
    }

    /// Whether a member offering `protocols` can join: some protocol of its is one every
    /// classic member offers too (Kafka's rule, though the coordinator assigns here).
    fn supports(&self, protocols: &[(String, Bytes)]) -> bool {
        protocols.iter().any(|(p, _)| {
            self.members
                .values()
                .filter_map(|m| m.info.classic.as_ref())
                .all(|c| c.protocols.iter().any(|(n, _)| n == p))
        })
    }

    /// JoinGroup from a classic member (see the module docs).
    pub(crate) fn classic_join(
        &mut self,
        req: &Join,
        catalog: &dyn Catalog,
        settings: &Settings,
        limits: &Limits,
        now: Instant,
    ) -> JoinReply {
        let mut id = req.member_id.clone();
        if req.session_timeout < limits.min_session || req.session_timeout > limits.max_session {
            return join_failure(proto::INVALID_SESSION_TIMEOUT, &id);
        }
        let decoded = req.protocols.first().map(|(_, m)| subscription(m));
        let subscribed = match decoded {
            Some(Ok(s))
                if req.protocol_type == CONSUMER_PROTOCOL && self.supports(&req.protocols) =>
            {
                s
            }
            _ => return join_failure(proto::INCONSISTENT_GROUP_PROTOCOL, &id),
        };
        match &req.instance_id {
            Some(instance) => {
                let holder = self
                    .members
                    .values()
                    .find(|m| m.info.instance_id.as_ref() == Some(instance))
                    .map(|m| m.info.id.clone());
                match holder {
                    Some(old) if old == id => {}
                    Some(old) if id.is_empty() => {
                        // A static member's new incarnation takes the old one's place,
                        // assignment and all.
                        id = format!("{instance}-{}", Uuid::new_v4());
                        self.rename(&old, &id);
                    }
                    Some(_) => return join_failure(proto::FENCED_INSTANCE_ID, &id),
                    None if id.is_empty() => id = format!("{instance}-{}", Uuid::new_v4()),
                    None => {}
                }
            }
            None if id.is_empty() => {
                id = format!("{}-{}", req.client_id, Uuid::new_v4());
                if req.require_known_member_id {
                    return join_failure(proto::MEMBER_ID_REQUIRED, &id);
                }
            }
            None => {}
        }
        let joined = !self.members.contains_key(&id);
        if joined {
            if self.members.len() >= settings.max_size {
                return join_failure(code::GROUP_MAX_SIZE_REACHED, &id);
            }
            self.add(&id, req, now);
        }
        let Some(m) = self.members.get_mut(&id) else {
            return join_failure(code::UNKNOWN_MEMBER_ID, &id);
        };
        if !joined && m.info.classic.is_none() {
            // A member of the consumer protocol under this id.
            return join_failure(proto::INCONSISTENT_GROUP_PROTOCOL, &id);
        }
        let before = m.info.clone();
        let topics = sorted_topics(&subscribed);
        let resubscribed = topics != m.info.topics;
        m.last_heartbeat = now;
        m.info.topics = topics;
        m.info.rack = subscribed.rack_id.as_ref().map(|r| r.to_string());
        m.info.client_id = req.client_id.clone();
        m.info.rebalance_timeout_ms = req.rebalance_timeout.as_millis() as u64;
        m.info.classic = Some(ClassicMember {
            session_timeout_ms: req.session_timeout.as_millis() as u64,
            protocols: req
                .protocols
                .iter()
                .map(|(n, b)| (n.clone(), b.to_vec()))
                .collect(),
        });
        if joined || resubscribed {
            self.bump_epoch();
        }
        self.refresh(catalog);
        self.retarget(settings);
        let owned = by_id(
            subscribed
                .owned_partitions
                .iter()
                .map(|t| (&t.topic, &t.partitions)),
            catalog,
        );
        self.reconcile(&id, Some(&owned), now);
        if self.members[&id].info.state == MemberState::UnrevokedPartitions {
            // A member that already gave up what it must (an eager client gives up all it
            // has before rejoining) is done revoking: on to the new epoch at once.
            self.reconcile(&id, Some(&owned), now);
        }
        let Some(m) = self.members.get_mut(&id) else {
            return join_failure(code::UNKNOWN_MEMBER_ID, &id);
        };
        if m.info.state != MemberState::UnrevokedPartitions {
            m.revoke_deadline = None;
        }
        if m.info != before {
            self.version += 1;
        }
        JoinReply {
            error: proto::NONE,
            generation: m.info.epoch,
            protocol_type: Some(CONSUMER_PROTOCOL.to_owned()),
            protocol: req.protocols.first().map(|(n, _)| n.clone()),
            leader: String::new(),
            member_id: id,
            members: Vec::new(),
        }
    }

    /// A new classic member, at epoch 0 with nothing assigned.
    fn add(&mut self, id: &str, req: &Join, now: Instant) {
        let info = ConsumerMember::new(
            id,
            req.instance_id.clone(),
            (&req.client_id, &req.client_host),
            req.rebalance_timeout.as_millis() as u64,
        );
        self.members.insert(id.to_owned(), Live::new(info, now));
    }

    /// Member `old` goes on as `new` (a static member's new incarnation): same epoch,
    /// assignment and target.
    pub(super) fn rename(&mut self, old: &str, new: &str) {
        let Some(mut live) = self.members.remove(old) else {
            return;
        };
        live.info.id = new.to_owned();
        for owner in self.owners.values_mut().filter(|o| *o == old) {
            *owner = new.to_owned();
        }
        if let Some(t) = self.target.remove(old) {
            self.target.insert(new.to_owned(), t);
        }
        self.members.insert(new.to_owned(), live);
        self.version += 1;
    }

    /// The classic member a SyncGroup, Heartbeat or LeaveGroup names, or the error code.
    fn classic_member(&self, member_id: &str, instance_id: Option<&str>) -> Result<String, i16> {
        let by_instance = |i: &str| {
            self.members
                .values()
                .find(|m| m.info.instance_id.as_deref() == Some(i))
        };
        let m = match (self.members.get(member_id), instance_id) {
            (Some(m), Some(i)) if m.info.instance_id.as_deref() != Some(i) => {
                return Err(proto::FENCED_INSTANCE_ID);
            }
            (Some(m), _) => m,
            (None, Some(i)) if by_instance(i).is_some() => return Err(proto::FENCED_INSTANCE_ID),
            (None, _) => return Err(code::UNKNOWN_MEMBER_ID),
        };
        match m.info.classic {
            Some(_) => Ok(m.info.id.clone()),
            None => Err(code::UNKNOWN_MEMBER_ID),
        }
    }

    /// SyncGroup from a classic member: the partitions it holds.
    pub(crate) fn classic_sync(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: Instant,
    ) -> SyncReply {
        let id = match self.classic_member(member_id, instance_id) {
            Ok(id) => id,
            Err(e) => return sync_failure(e),
        };
        let group_epoch = self.epoch;
        let names: BTreeMap<Uuid, &str> = self
            .subscribed
            .iter()
            .map(|(name, (t, _))| (*t, name.as_str()))
            .collect();
        let Some(m) = self.members.get_mut(&id) else {
            return sync_failure(code::UNKNOWN_MEMBER_ID);
        };
        if generation != m.info.epoch {
            return sync_failure(proto::ILLEGAL_GENERATION);
        }
        // Behind the group: it rejoins first (unless it is between giving partitions up
        // and rejoining, which it does once it has).
        if group_epoch > m.info.epoch && m.info.state != MemberState::UnrevokedPartitions {
            return sync_failure(proto::REBALANCE_IN_PROGRESS);
        }
        m.last_heartbeat = now;
        let Some(classic) = &m.info.classic else {
            return sync_failure(code::UNKNOWN_MEMBER_ID);
        };
        let (protocol, metadata) = classic
            .protocols
            .first()
            .map_or((None, &[][..]), |(n, b)| (Some(n.clone()), b.as_slice()));
        let version = versioned(metadata).map_or(0, |(v, _)| v);
        let topics = m
            .info
            .assigned
            .iter()
            .filter_map(|(t, ps)| {
                let name = names.get(t)?;
                Some(
                    AssignedTopic::default()
                        .with_topic(TopicName(StrBytes::from_string((*name).to_owned())))
                        .with_partitions(ps.iter().copied().collect()),
                )
            })
            .collect();
        let mut out = BytesMut::new();
        out.extend_from_slice(&version.to_be_bytes());
        let encoded = ConsumerProtocolAssignment::default()
            .with_assigned_partitions(topics)
            .encode(&mut out, version);
        if let Err(e) = encoded {
            tracing::error!(member = %id, error = %e, "encoding a classic member's assignment failed");
            return sync_failure(crate::group::code::COORDINATOR_NOT_AVAILABLE);
        }
        SyncReply {
            error: proto::NONE,
            protocol_type: Some(CONSUMER_PROTOCOL.to_owned()),
            protocol,
            assignment: out.freeze(),
        }
    }

    /// Heartbeat from a classic member: whether it must rejoin.
    pub(crate) fn classic_heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: Instant,
    ) -> i16 {
        let id = match self.classic_member(member_id, instance_id) {
            Ok(id) => id,
            Err(e) => return e,
        };
        let waiting = self.waits_for_owned(&id);
        let group_epoch = self.epoch;
        let Some(m) = self.members.get_mut(&id) else {
            return code::UNKNOWN_MEMBER_ID;
        };
        if generation != m.info.epoch {
            return proto::ILLEGAL_GENERATION;
        }
        m.last_heartbeat = now;
        let rejoin = m.info.epoch < group_epoch
            || m.info.state == MemberState::UnrevokedPartitions
            || (m.info.state == MemberState::UnreleasedPartitions && !waiting);
        if !rejoin {
            return proto::NONE;
        }
        if m.revoke_deadline.is_none() {
            m.revoke_deadline = Some(now + Duration::from_millis(m.info.rebalance_timeout_ms));
        }
        proto::REBALANCE_IN_PROGRESS
    }

    /// Whether some partition of `id`'s target it does not hold is still owned by another.
    fn waits_for_owned(&self, id: &str) -> bool {
        let Some(m) = self.members.get(id) else {
            return false;
        };
        partitions(&self.target_of(id)).any(|(t, p)| {
            !contains(&m.info.assigned, &t, p) && self.owners.get(&(t, p)).is_some_and(|o| o != id)
        })
    }

    /// LeaveGroup for a classic member (by member id, or by instance id for a static one).
    pub(crate) fn classic_leave(&mut self, member_id: &str, instance_id: Option<&str>) -> i16 {
        let holder = |i: &str| {
            self.members
                .values()
                .find(|m| m.info.instance_id.as_deref() == Some(i))
                .map(|m| m.info.id.as_str())
        };
        let id = match leaving(member_id, instance_id, holder) {
            Ok(id) => id,
            Err(e) => return e,
        };
        match self.members.get(&id).map(|m| m.info.classic.is_some()) {
            Some(true) => {
                self.remove(&id);
                proto::NONE
            }
            _ => code::UNKNOWN_MEMBER_ID,
        }
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::consumer_protocol_subscription::TopicPartition as OwnedTopic;

    use super::super::tests::{
        Client, Topics, assert_exclusive, count, joined, settings as consumer_settings,
    };
    use super::*;
    use crate::group::machine::MemberInfo;

    const T: &str = "t";

    fn limits() -> Limits {
        Limits {
            min_session: Duration::from_secs(1),
            max_session: Duration::from_secs(300),
            initial_rebalance_delay: Duration::ZERO,
            max_size: 100,
        }
    }

    fn name(t: &str) -> TopicName {
        TopicName(StrBytes::from_string(t.to_owned()))
    }

    /// ConsumerProtocolSubscription v1 for topic `t`, owning `owned` of it.
    fn metadata(owned: &[i32]) -> Vec<u8> {
        let owned = match owned {
            [] => Vec::new(),
            ps => vec![
                OwnedTopic::default()
                    .with_topic(name(T))
                    .with_partitions(ps.to_vec()),
            ],
        };
        let mut out = vec![0, 1];
        ConsumerProtocolSubscription::default()
            .with_topics(vec![StrBytes::from_static_str(T)])
            .with_owned_partitions(owned)
            .encode(&mut out, 1)
            .expect("encode");
        out
    }

    /// ConsumerProtocolAssignment v1 of partitions of topic `t`.
    fn assignment_of(ps: &[i32]) -> Vec<u8> {
        let mut out = vec![0, 1];
        ConsumerProtocolAssignment::default()
            .with_assigned_partitions(vec![
                AssignedTopic::default()
                    .with_topic(name(T))
                    .with_partitions(ps.to_vec()),
            ])
            .encode(&mut out, 1)
            .expect("encode");
        out
    }

    /// A stable classic group at generation 4: `a` holds 0-2 of `t`, `b` 3-5.
    fn classic_group() -> GroupSnapshot {
        let member = |id: &str, ps: &[i32]| MemberInfo {
            id: id.to_owned(),
            instance_id: None,
            client_id: "rdkafka".into(),
            client_host: String::new(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 5_000,
            protocols: vec![("range".into(), metadata(&[]))],
            assignment: assignment_of(ps),
        };
        GroupSnapshot {
            generation: 4,
            protocol_type: Some(CONSUMER_PROTOCOL.into()),
            protocol: Some("range".into()),
            leader: Some("a".into()),
            members: vec![member("a", &[0, 1, 2]), member("b", &[3, 4, 5])],
        }
    }

    fn join_request(id: &str, owned: &[i32]) -> Join {
        Join {
            member_id: id.to_owned(),
            instance_id: None,
            client_id: "rdkafka".into(),
            client_host: String::new(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(5),
            protocol_type: CONSUMER_PROTOCOL.into(),
            protocols: vec![("range".into(), Bytes::from(metadata(owned)))],
            require_known_member_id: true,
        }
    }

    /// A classic member as a client tracks it: its generation and what it consumes.
    struct Classic {
        client: Client,
    }

    impl Classic {
        fn of(id: &str, generation: i32, ps: &[i32], topics: &Topics) -> Self {
            let named = [(&name(T), &ps.to_vec())];
            let owned = by_id(named.into_iter(), topics);
            Self {
                client: Client {
                    id: id.to_owned(),
                    epoch: generation,
                    owned,
                },
            }
        }

        fn owned_list(&self) -> Vec<i32> {
            self.client.owned.values().flatten().copied().collect()
        }

        /// JoinGroup then SyncGroup, owning `owned` when it joins (an eager client owns
        /// nothing then); what SyncGroup gives it replaces what it consumes.
        fn rejoin(&mut self, g: &mut ConsumerGroup, topics: &Topics, owned: &[i32], now: Instant) {
            let joined = g.classic_join(
                &join_request(&self.client.id, owned),
                topics,
                &consumer_settings(),
                &limits(),
                now,
            );
            assert_eq!(joined.error, 0, "join of {}", self.client.id);
            assert_eq!(joined.protocol.as_deref(), Some("range"));
            self.client.epoch = joined.generation;
            let synced = g.classic_sync(&self.client.id, None, joined.generation, now);
            assert_eq!(synced.error, 0, "sync of {}", self.client.id);
            let decoded = assignment(&synced.assignment).expect("assignment decodes");
            let named = decoded
                .assigned_partitions
                .iter()
                .map(|t| (&t.topic, &t.partitions));
            self.client.owned = by_id(named, topics);
        }

        fn heartbeat(&self, g: &mut ConsumerGroup, now: Instant) -> i16 {
            g.classic_heartbeat(&self.client.id, None, self.client.epoch, now)
        }
    }

    #[test]
    fn an_upgraded_classic_group_hands_partitions_over_without_sharing_any() {
        let topics = Topics::default().with(T, 1, 6);
        let now = Instant::now();
        let mut g = ConsumerGroup::from_classic(&classic_group(), &topics, now).expect("upgrade");
        assert_eq!(g.epoch(), 4);
        let mut a = Classic::of("a", 4, &[0, 1, 2], &topics);
        let mut b = Classic::of("b", 4, &[3, 4, 5], &topics);
        assert_eq!(g.owners_of(Uuid::from_u128(1), 0), Some("a"));
        assert_eq!(g.classic_heartbeat("a", None, 4, now), proto::NONE);
        // A member of the new protocol joins: it waits for the classic members' partitions.
        let mut n = joined(&mut g, &topics, "n", now);
        assert_eq!(count(&n.owned), 0);
        assert!(g.epoch() > 4);
        assert_exclusive(&[&a.client, &b.client, &n]);
        // The classic members are told to rejoin; until they do, their generation commits.
        assert_eq!(a.heartbeat(&mut g, now), proto::REBALANCE_IN_PROGRESS);
        let t = Uuid::from_u128(1);
        assert_eq!(g.check_member("a", 4, &[(t, 0)]), Ok(()));
        // Eager clients give everything up before rejoining, and take back what they keep.
        a.rejoin(&mut g, &topics, &[], now);
        assert_eq!(a.client.epoch, g.epoch());
        assert_eq!(a.owned_list().len(), 2);
        assert_exclusive(&[&a.client, &b.client, &n]);
        assert_eq!(b.heartbeat(&mut g, now), proto::REBALANCE_IN_PROGRESS);
        b.rejoin(&mut g, &topics, &[], now);
        assert_eq!(b.owned_list().len(), 2);
        n.beat(&mut g, &topics, now);
        assert_eq!(count(&n.owned), 2);
        assert_exclusive(&[&a.client, &b.client, &n]);
        assert_eq!(g.state(), "Stable");
        assert_eq!(a.heartbeat(&mut g, now), proto::NONE);
        // The old generation may no longer commit a partition a gave up.
        let gave_up = (0..3)
            .find(|p| !a.owned_list().contains(p))
            .expect("one moved");
        assert_eq!(
            g.check_member("a", 4, &[(t, gave_up)]),
            Err(proto::ILLEGAL_GENERATION)
        );
        // ConsumerGroupDescribe tells them apart; the snapshot keeps what a classic member is.
        let restored = ConsumerGroup::restore(g.snapshot(), now);
        assert!(restored.members().filter(|m| m.classic.is_some()).count() == 2);
        // A classic member leaves: the others share its partitions.
        assert_eq!(g.classic_leave("a", None), proto::NONE);
        assert_eq!(g.classic_leave("n", None), code::UNKNOWN_MEMBER_ID);
        assert_eq!(b.heartbeat(&mut g, now), proto::REBALANCE_IN_PROGRESS);
        b.rejoin(&mut g, &topics, &[], now);
        for _ in 0..2 {
            n.beat(&mut g, &topics, now);
            assert_exclusive(&[&b.client, &n]);
        }
        assert_eq!([b.owned_list().len(), count(&n.owned)], [3, 3]);
        assert_eq!(g.state(), "Stable");
    }

    #[test]
    fn a_cooperative_classic_member_revokes_before_it_moves_on() {
        let topics = Topics::default().with(T, 1, 6);
        let now = Instant::now();
        let mut g = ConsumerGroup::from_classic(&classic_group(), &topics, now).expect("upgrade");
        let mut a = Classic::of("a", 4, &[0, 1, 2], &topics);
        let mut n = joined(&mut g, &topics, "n", now);
        // a rejoins still owning its three: it must give one up first, at its old epoch.
        a.rejoin(&mut g, &topics, &[0, 1, 2], now);
        assert_eq!(a.client.epoch, 4);
        assert_eq!(
            a.owned_list().len(),
            2,
            "SyncGroup leaves out what it must revoke"
        );
        assert_eq!(a.heartbeat(&mut g, now), proto::REBALANCE_IN_PROGRESS);
        n.beat(&mut g, &topics, now);
        assert_exclusive(&[&a.client, &n]);
        // Having revoked it, a rejoins owning the rest and takes the new epoch.
        let kept = a.owned_list();
        a.rejoin(&mut g, &topics, &kept, now);
        assert_eq!(a.client.epoch, g.epoch());
        n.beat(&mut g, &topics, now);
        assert_exclusive(&[&a.client, &n]);
        assert!(count(&n.owned) >= 1);
    }

    #[test]
    fn classic_members_that_do_not_rejoin_or_heartbeat_are_removed() {
        let topics = Topics::default().with(T, 1, 6);
        let now = Instant::now();
        let mut g = ConsumerGroup::from_classic(&classic_group(), &topics, now).expect("upgrade");
        let _n = joined(&mut g, &topics, "n", now);
        // a is told to rejoin and never does; b heartbeats no more. Both hold partitions.
        assert_eq!(
            g.classic_heartbeat("a", None, 4, now),
            proto::REBALANCE_IN_PROGRESS
        );
        let later = now + Duration::from_secs(6);
        assert_eq!(
            g.classic_heartbeat("a", None, 4, later),
            proto::REBALANCE_IN_PROGRESS
        );
        g.tick(&topics, &consumer_settings(), later);
        assert!(
            g.members().all(|m| m.id != "a"),
            "a's rebalance timeout is 5 s"
        );
        assert!(g.members().any(|m| m.id == "b"));
        g.tick(&topics, &consumer_settings(), now + Duration::from_secs(11));
        assert!(g.members().all(|m| m.id != "b"), "b's session is 10 s");
    }

    #[test]
    fn classic_requests_are_checked_as_kafka_checks_them() {
        let topics = Topics::default().with(T, 1, 6);
        let now = Instant::now();
        let mut other = classic_group();
        other.protocol_type = Some("connect".into());
        assert!(ConsumerGroup::from_classic(&other, &topics, now).is_err());
        let mut g = ConsumerGroup::from_classic(&classic_group(), &topics, now).expect("upgrade");
        let (s, l) = (consumer_settings(), limits());
        let mut req = join_request("", &[]);
        // A new dynamic member gets its id first (KIP-394).
        let first = g.classic_join(&req, &topics, &s, &l, now);
        assert_eq!(first.error, proto::MEMBER_ID_REQUIRED);
        req.member_id = first.member_id.clone();
        assert_eq!(g.classic_join(&req, &topics, &s, &l, now).error, 0);
        // Another protocol type, or no protocol in common with the classic members.
        let mut wrong = join_request("x", &[]);
        wrong.protocol_type = "connect".into();
        let refused = g.classic_join(&wrong, &topics, &s, &l, now).error;
        assert_eq!(refused, proto::INCONSISTENT_GROUP_PROTOCOL);
        let mut wrong = join_request("x", &[]);
        wrong.protocols[0].0 = "roundrobin".into();
        let refused = g.classic_join(&wrong, &topics, &s, &l, now).error;
        assert_eq!(refused, proto::INCONSISTENT_GROUP_PROTOCOL);
        let mut wrong = join_request("x", &[]);
        wrong.protocols[0].1 = Bytes::from_static(&[0]);
        let refused = g.classic_join(&wrong, &topics, &s, &l, now).error;
        assert_eq!(refused, proto::INCONSISTENT_GROUP_PROTOCOL);
        let mut wrong = join_request("x", &[]);
        wrong.session_timeout = Duration::from_millis(10);
        let refused = g.classic_join(&wrong, &topics, &s, &l, now).error;
        assert_eq!(refused, proto::INVALID_SESSION_TIMEOUT);
        // Generations and members are checked.
        assert_eq!(
            g.classic_sync("a", None, 3, now).error,
            proto::ILLEGAL_GENERATION
        );
        assert_eq!(
            g.classic_heartbeat("a", None, 3, now),
            proto::ILLEGAL_GENERATION
        );
        assert_eq!(
            g.classic_heartbeat("zz", None, 4, now),
            code::UNKNOWN_MEMBER_ID
        );
        assert_eq!(
            g.classic_sync("a", None, 4, now).error,
            proto::REBALANCE_IN_PROGRESS
        );
    }

    #[test]
    fn a_static_classic_member_comes_back_under_a_new_id_with_its_partitions() {
        let topics = Topics::default().with(T, 1, 6);
        let now = Instant::now();
        let mut snapshot = classic_group();
        snapshot.members[0].instance_id = Some("host-a".into());
        let mut g = ConsumerGroup::from_classic(&snapshot, &topics, now).expect("upgrade");
        let mut req = join_request("", &[]);
        req.instance_id = Some("host-a".into());
        let back = g.classic_join(&req, &topics, &consumer_settings(), &limits(), now);
        assert_eq!(back.error, 0);
        assert_ne!(back.member_id, "a");
        assert_eq!(back.generation, 4, "no rebalance");
        let t = Uuid::from_u128(1);
        assert_eq!(g.owners_of(t, 0), Some(back.member_id.as_str()));
        // The old incarnation is fenced.
        assert_eq!(
            g.classic_heartbeat("a", Some("host-a"), 4, now),
            proto::FENCED_INSTANCE_ID
        );
    }
}
