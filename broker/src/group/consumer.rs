//! One consumer group under KIP-848's protocol (ConsumerGroupHeartbeat): the coordinator
//! computes the assignment with a server-side assignor ([`super::assignor`]) and moves each
//! member to it incrementally, revoking before assigning.
//!
//! Like [`super::machine`], no I/O and no clock: every operation takes `now`.
//!
//! Epochs. The *group epoch* rises whenever what the assignment depends on changes: a member
//! joins or leaves, a subscription changes, a subscribed topic appears, goes or gains
//! partitions. The *target assignment* is recomputed for it (the *assignment epoch*). A
//! *member epoch* is the target epoch the member has reconciled to, and fences its requests:
//! a heartbeat or commit from an older epoch than the member's is refused.
//!
//! Reconciliation, at each heartbeat of a member behind the target: first the partitions the
//! target takes away are revoked (`UnrevokedPartitions`: the member keeps its epoch, and the
//! partitions stay owned until it heartbeats without them, within its rebalance timeout or
//! it is fenced); then it takes its new epoch and the target's partitions that nobody else
//! still owns (`UnreleasedPartitions` while some are being revoked elsewhere; it gets them
//! at a later heartbeat); `Stable` once it holds its whole target. No partition is ever
//! owned by two members at once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use uuid::Uuid;

use super::assignor::{self, Input, Target, TopicPartitions};
use crate::security::acl::Requester;

mod classic;

/// Kafka error codes of the protocol.
pub(crate) mod code {
    pub(crate) const UNKNOWN_MEMBER_ID: i16 = 25;
    pub(crate) const INVALID_REQUEST: i16 = 42;
    pub(crate) const GROUP_MAX_SIZE_REACHED: i16 = 81;
    pub(crate) const FENCED_MEMBER_EPOCH: i16 = 110;
    pub(crate) const UNRELEASED_INSTANCE_ID: i16 = 111;
    pub(crate) const UNSUPPORTED_ASSIGNOR: i16 = 112;
    pub(crate) const STALE_MEMBER_EPOCH: i16 = 113;
    pub(crate) const INVALID_REGULAR_EXPRESSION: i16 = 128;
}

/// The member epoch a static member sends when it leaves for a while (its assignment is kept
/// for its session), and the one that leaves for good.
const LEAVE_STATIC: i32 = -2;
const LEAVE: i32 = -1;

/// What the coordinator knows of topics: name → (id, partition count, internal).
pub(crate) trait Catalog {
    /// Changes whenever any topic does.
    fn version(&self) -> u64;
    fn topic(&self, name: &str) -> Option<(Uuid, i32)>;
    /// Every topic that is not internal, for regular expressions.
    fn each_public(&self, f: &mut dyn FnMut(&str, Uuid, i32));
    /// Whether `who` may describe `topic`: a member's regular expression matches only such
    /// topics (Kafka's rule). Unknown requesters (members persisted before it was recorded)
    /// see every topic, as before.
    fn describable(&self, _who: Option<&Requester>, _topic: &str) -> bool {
        true
    }
}

impl Catalog for strata_controller::MetadataImage {
    fn version(&self) -> u64 {
        self.version
    }
    fn topic(&self, name: &str) -> Option<(Uuid, i32)> {
        self.topics
            .get(name)
            .map(|t| (t.id, t.partitions.len() as i32))
    }
    fn each_public(&self, f: &mut dyn FnMut(&str, Uuid, i32)) {
        for (name, t) in &self.topics {
            if !crate::topic::is_internal(name) {
                f(name, t.id, t.partitions.len() as i32);
            }
        }
    }
}

/// Group-wide settings (Kafka's `group.consumer.*`).
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) session_timeout: Duration,
    pub(crate) heartbeat_interval: Duration,
    /// The assignors members may name; the first is the default.
    pub(crate) assignors: Vec<String>,
    pub(crate) max_size: usize,
}

impl Default for Settings {
    /// Kafka's defaults.
    fn default() -> Self {
        Self {
            session_timeout: Duration::from_secs(45),
            heartbeat_interval: Duration::from_secs(5),
            assignors: assignor::ASSIGNORS.iter().map(|a| a.to_string()).collect(),
            max_size: 10_000,
        }
    }
}

/// Where a member is in reconciling to its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum MemberState {
    Stable,
    UnrevokedPartitions,
    UnreleasedPartitions,
}

/// A member as persisted and described.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ConsumerMember {
    pub(crate) id: String,
    pub(crate) instance_id: Option<String>,
    pub(crate) rack: Option<String>,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    pub(crate) topics: Vec<String>,
    pub(crate) regex: Option<String>,
    pub(crate) assignor: Option<String>,
    pub(crate) rebalance_timeout_ms: u64,
    pub(crate) epoch: i32,
    pub(crate) previous_epoch: i32,
    pub(crate) state: MemberState,
    /// What the member owns and may consume.
    pub(crate) assigned: TopicPartitions,
    /// What it still owns but must give up.
    pub(crate) revoking: TopicPartitions,
    /// The member epoch since which it has held each partition it owns (KIP-1251's
    /// assignment epochs): a commit from an older epoch of the member still counts for a
    /// partition held since then, so an epoch bump that leaves a partition where it was does
    /// not fail the commits in flight for it.
    #[serde(default)]
    pub(crate) since: BTreeMap<Uuid, BTreeMap<i32, i32>>,
    /// Set for a member that speaks the classic protocol (JoinGroup, SyncGroup, Heartbeat)
    /// in this group: one of a classic group that was upgraded, or one that joined since
    /// (see [`classic`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) classic: Option<ClassicMember>,
    /// Who the member's heartbeats come from, for the topics its regular expression may
    /// match (those it may describe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) requester: Option<Requester>,
}

/// What a classic-protocol member told JoinGroup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ClassicMember {
    pub(crate) session_timeout_ms: u64,
    /// The protocols (client-side assignors) it offered, with their metadata, in its order.
    pub(crate) protocols: Vec<(String, Vec<u8>)>,
}

impl ConsumerMember {
    /// A new member at epoch 0, subscribed to nothing yet, holding nothing.
    fn new(
        id: &str,
        instance_id: Option<String>,
        (client_id, client_host): (&str, &str),
        rebalance_timeout_ms: u64,
    ) -> Self {
        Self {
            id: id.to_owned(),
            instance_id,
            rack: None,
            client_id: client_id.to_owned(),
            client_host: client_host.to_owned(),
            topics: Vec::new(),
            regex: None,
            assignor: None,
            rebalance_timeout_ms,
            epoch: 0,
            previous_epoch: 0,
            state: MemberState::Stable,
            assigned: TopicPartitions::new(),
            revoking: TopicPartitions::new(),
            since: BTreeMap::new(),
            classic: None,
            requester: None,
        }
    }

    /// Brings `since` in line with what the member owns: partitions it gave up go, new ones
    /// count from its epoch now.
    fn note_holdings(&mut self) {
        let owned: Vec<(Uuid, i32)> = partitions(&self.assigned)
            .chain(partitions(&self.revoking))
            .collect();
        let mut since: BTreeMap<Uuid, BTreeMap<i32, i32>> = BTreeMap::new();
        for (t, p) in owned {
            let from = self
                .since
                .get(&t)
                .and_then(|ps| ps.get(&p))
                .copied()
                .unwrap_or(self.epoch);
            since.entry(t).or_default().insert(p, from);
        }
        self.since = since;
    }

    /// Whether the member has held `(t, p)` since `epoch` or earlier.
    fn held_since(&self, t: &Uuid, p: i32, epoch: i32) -> bool {
        self.since
            .get(t)
            .and_then(|ps| ps.get(&p))
            .is_some_and(|from| *from <= epoch)
    }
}

/// The persisted form of a consumer group (its offsets are persisted separately).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ConsumerSnapshot {
    pub(crate) epoch: i32,
    pub(crate) assignment_epoch: i32,
    pub(crate) members: Vec<ConsumerMember>,
    pub(crate) target: Target,
    /// The subscribed topics as of the group epoch: name → (id, partitions).
    pub(crate) subscribed: BTreeMap<String, (Uuid, i32)>,
}

/// A ConsumerGroupHeartbeat request.
#[derive(Clone, Debug, Default)]
pub(crate) struct Heartbeat {
    pub(crate) member_id: String,
    pub(crate) member_epoch: i32,
    pub(crate) instance_id: Option<String>,
    pub(crate) rack: Option<String>,
    /// -1: unchanged.
    pub(crate) rebalance_timeout_ms: i32,
    pub(crate) topics: Option<Vec<String>>,
    pub(crate) regex: Option<String>,
    pub(crate) assignor: Option<String>,
    /// What the member owns, when it says.
    pub(crate) owned: Option<TopicPartitions>,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    /// Who sent it.
    pub(crate) requester: Option<Requester>,
}

/// Its answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HeartbeatReply {
    pub(crate) member_id: String,
    pub(crate) member_epoch: i32,
    /// The member's whole assignment, when it changed or the member may not know it.
    pub(crate) assignment: Option<TopicPartitions>,
}

/// A refused request: the Kafka error code and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) code: i16,
    pub(crate) message: String,
}

fn refuse<T>(code: i16, message: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal {
        code,
        message: message.into(),
    })
}

impl Live {
    /// A member whose session starts `now`.
    fn new(info: ConsumerMember, now: Instant) -> Self {
        Self {
            regex: info.regex.as_deref().and_then(|r| compile(r).ok()),
            matched: BTreeSet::new(),
            info,
            last_heartbeat: now,
            revoke_deadline: None,
        }
    }
}

#[derive(Debug)]
struct Live {
    info: ConsumerMember,
    regex: Option<regex::Regex>,
    /// The topics its regular expression matches that it may describe, as last resolved.
    matched: BTreeSet<String>,
    last_heartbeat: Instant,
    /// An `UnrevokedPartitions` member is fenced if it has not revoked by then, and so is a
    /// classic member told to rejoin that has not.
    revoke_deadline: Option<Instant>,
}

/// One consumer group.
#[derive(Debug, Default)]
pub(crate) struct ConsumerGroup {
    epoch: i32,
    assignment_epoch: i32,
    members: BTreeMap<String, Live>,
    target: Target,
    /// Who owns each partition: assigned to it, or being revoked from it.
    owners: BTreeMap<(Uuid, i32), String>,
    subscribed: BTreeMap<String, (Uuid, i32)>,
    /// The catalog version and group epoch `subscribed` was last checked at: any change of
    /// membership or subscriptions moves the epoch, so only then, or when topics changed,
    /// are the subscriptions resolved again.
    checked: Option<(u64, i32)>,
    /// Counts changes worth persisting; `durable` is the newest one persisted.
    version: u64,
    durable: u64,
}

fn compile(regex: &str) -> Result<regex::Regex, Refusal> {
    regex::Regex::new(regex).map_err(|e| Refusal {
        code: code::INVALID_REGULAR_EXPRESSION,
        message: format!("invalid regular expression {regex:?}: {e}"),
    })
}

fn contains(set: &TopicPartitions, t: &Uuid, p: i32) -> bool {
    set.get(t).is_some_and(|ps| ps.contains(&p))
}

fn partitions(set: &TopicPartitions) -> impl Iterator<Item = (Uuid, i32)> + '_ {
    set.iter()
        .flat_map(|(t, ps)| ps.iter().map(move |p| (*t, *p)))
}

fn insert(set: &mut TopicPartitions, t: Uuid, p: i32) {
    set.entry(t).or_default().insert(p);
}

fn is_subset(a: &TopicPartitions, b: &TopicPartitions) -> bool {
    partitions(a).all(|(t, p)| contains(b, &t, p))
}

impl ConsumerGroup {
    /// A group restored from its snapshot, with fresh sessions from `now`.
    pub(crate) fn restore(s: ConsumerSnapshot, now: Instant) -> Self {
        let mut group = Self {
            epoch: s.epoch,
            assignment_epoch: s.assignment_epoch,
            target: s.target,
            subscribed: s.subscribed,
            ..Self::default()
        };
        for info in s.members {
            for (t, p) in partitions(&info.assigned).chain(partitions(&info.revoking)) {
                group.owners.insert((t, p), info.id.clone());
            }
            let revoke_deadline = (info.state == MemberState::UnrevokedPartitions)
                .then(|| now + Duration::from_millis(info.rebalance_timeout_ms));
            let live = Live {
                revoke_deadline,
                ..Live::new(info, now)
            };
            group.members.insert(live.info.id.clone(), live);
        }
        group
    }

    pub(crate) fn snapshot(&self) -> ConsumerSnapshot {
        ConsumerSnapshot {
            epoch: self.epoch,
            assignment_epoch: self.assignment_epoch,
            members: self.members.values().map(|m| m.info.clone()).collect(),
            target: self.target.clone(),
            subscribed: self.subscribed.clone(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub(crate) fn epoch(&self) -> i32 {
        self.epoch
    }

    pub(crate) fn assignment_epoch(&self) -> i32 {
        self.assignment_epoch
    }

    pub(crate) fn members(&self) -> impl Iterator<Item = &ConsumerMember> {
        self.members.values().map(|m| &m.info)
    }

    /// A member's target assignment.
    pub(crate) fn target_of(&self, member: &str) -> TopicPartitions {
        self.target.get(member).cloned().unwrap_or_default()
    }

    /// KIP-848's group state: Empty, Assigning (the target is behind the group epoch),
    /// Reconciling (a member is behind the target) or Stable.
    pub(crate) fn state(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.assignment_epoch < self.epoch {
            "Assigning"
        } else if self
            .members
            .values()
            .any(|m| m.info.epoch != self.assignment_epoch || m.info.state != MemberState::Stable)
        {
            "Reconciling"
        } else {
            "Stable"
        }
    }

    /// The assignor the group uses: the one most members ask for, else the default.
    pub(crate) fn assignor<'a>(&'a self, settings: &'a Settings) -> &'a str {
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some(a) = &m.info.assignor {
                *votes.entry(a.as_str()).or_default() += 1;
            }
        }
        let default = settings.assignors.first().map_or("uniform", String::as_str);
        votes
            .into_iter()
            .max_by_key(|(name, n)| (*n, std::cmp::Reverse(*name)))
            .map_or(default, |(name, _)| name)
    }

    /// The change counter (see [`Self::persisted`]).
    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    /// Whether changes wait to be persisted.
    pub(crate) fn dirty(&self) -> bool {
        self.durable < self.version
    }

    /// A snapshot taken at `version` is durable.
    pub(crate) fn persisted(&mut self, version: u64) {
        self.durable = self.durable.max(version);
    }

    fn bump_epoch(&mut self) {
        self.epoch += 1;
        self.version += 1;
    }

    /// ConsumerGroupHeartbeat.
    pub(crate) fn heartbeat(
        &mut self,
        hb: Heartbeat,
        catalog: &dyn Catalog,
        settings: &Settings,
        now: Instant,
    ) -> Result<HeartbeatReply, Refusal> {
        if hb.member_id.is_empty() {
            return refuse(code::INVALID_REQUEST, "MemberId can't be empty.");
        }
        if let Some(a) = &hb.assignor
            && !settings.assignors.iter().any(|s| s == a)
        {
            return refuse(
                code::UNSUPPORTED_ASSIGNOR,
                format!(
                    "assignor {a} is not one of this broker's group.consumer.assignors ({})",
                    settings.assignors.join(", ")
                ),
            );
        }
        let regex = hb.regex.as_deref().map(compile).transpose()?;
        let id = hb.member_id.clone();
        let mut joined = false;
        match hb.member_epoch {
            LEAVE => {
                if !self.members.contains_key(&id) {
                    return refuse(code::UNKNOWN_MEMBER_ID, format!("no member {id}"));
                }
                self.remove(&id);
                return Ok(HeartbeatReply {
                    member_id: id,
                    member_epoch: LEAVE,
                    assignment: None,
                });
            }
            LEAVE_STATIC => {
                let Some(m) = self.members.get_mut(&id) else {
                    return refuse(code::UNKNOWN_MEMBER_ID, format!("no member {id}"));
                };
                if m.info.instance_id.is_none() {
                    return refuse(
                        code::INVALID_REQUEST,
                        "only a static member (group.instance.id) leaves with epoch -2",
                    );
                }
                // Kept, assignment and all, until its session ends or it comes back.
                if m.info.epoch != LEAVE_STATIC {
                    m.info.previous_epoch = m.info.epoch;
                    m.info.epoch = LEAVE_STATIC;
                }
                m.last_heartbeat = now;
                self.version += 1;
                return Ok(HeartbeatReply {
                    member_id: id,
                    member_epoch: LEAVE_STATIC,
                    assignment: None,
                });
            }
            0 => joined = self.join(&hb, settings, now)?,
            e if e > 0 => {
                let Some(m) = self.members.get(&id) else {
                    return refuse(code::UNKNOWN_MEMBER_ID, format!("no member {id}"));
                };
                let owned_ok = hb
                    .owned
                    .as_ref()
                    .is_none_or(|o| is_subset(o, &m.info.assigned));
                let current = e == m.info.epoch
                    || (e == m.info.previous_epoch && e < m.info.epoch && owned_ok);
                if !current {
                    return refuse(
                        code::FENCED_MEMBER_EPOCH,
                        format!("member epoch {e} is not member {id}'s {}", m.info.epoch),
                    );
                }
            }
            e => {
                return refuse(
                    code::INVALID_REQUEST,
                    format!("member epoch {e} is invalid"),
                );
            }
        }
        let Some(m) = self.members.get_mut(&id) else {
            return refuse(code::UNKNOWN_MEMBER_ID, format!("no member {id}"));
        };
        let before = m.info.clone();
        m.last_heartbeat = now;
        if hb.rebalance_timeout_ms > 0 {
            m.info.rebalance_timeout_ms = hb.rebalance_timeout_ms as u64;
        }
        if hb.rack.is_some() {
            m.info.rack = hb.rack.clone();
        }
        if hb.assignor.is_some() {
            m.info.assignor = hb.assignor.clone();
        }
        let mut resubscribed = false;
        if let Some(topics) = &hb.topics {
            let mut sorted = topics.clone();
            sorted.sort();
            sorted.dedup();
            resubscribed |= sorted != m.info.topics;
            m.info.topics = sorted;
        }
        if hb.regex.is_some() {
            // An empty expression drops the regular expression subscription.
            let given = hb.regex.clone().filter(|r| !r.is_empty());
            resubscribed |= given != m.info.regex;
            m.info.regex = given;
            m.regex = regex.filter(|_| m.info.regex.is_some());
        }
        if hb.requester.is_some() && hb.requester != m.info.requester {
            // What its expression may match depends on who it is.
            resubscribed |= m.info.regex.is_some();
            m.info.requester = hb.requester.clone();
        }
        if joined || resubscribed || before.assignor != m.info.assignor {
            self.bump_epoch();
        }
        self.refresh(catalog);
        self.retarget(settings);
        self.reconcile(&id, hb.owned.as_ref(), now);
        let m = &self.members[&id];
        if m.info != before {
            self.version += 1;
        }
        let send = hb.member_epoch == 0
            || m.info.assigned != before.assigned
            || hb.owned.as_ref().is_some_and(|o| *o != m.info.assigned);
        Ok(HeartbeatReply {
            member_id: id,
            member_epoch: m.info.epoch,
            assignment: send.then(|| m.info.assigned.clone()),
        })
    }

    /// A heartbeat with member epoch 0: a new member (true: the group epoch must move), a
    /// member that lost its state (after being fenced), or a static member's new incarnation.
    fn join(&mut self, hb: &Heartbeat, settings: &Settings, now: Instant) -> Result<bool, Refusal> {
        if hb.topics.is_none() && hb.regex.is_none() {
            return refuse(
                code::INVALID_REQUEST,
                "SubscribedTopicNames or SubscribedTopicRegex must be set in the first request",
            );
        }
        if hb.rebalance_timeout_ms <= 0 {
            return refuse(
                code::INVALID_REQUEST,
                "RebalanceTimeoutMs must be given in the first request",
            );
        }
        let id = &hb.member_id;
        if let Some(instance) = &hb.instance_id {
            let holder = self
                .members
                .values()
                .find(|m| m.info.instance_id.as_ref() == Some(instance))
                .map(|m| (m.info.id.clone(), m.info.epoch));
            match holder {
                Some((old, _)) if old == *id => {}
                Some((old, LEAVE_STATIC)) => {
                    // The static member is back under a new member id: it takes over the
                    // old one's epoch and assignment, and nobody rebalances.
                    self.rename(&old, id);
                    if let Some(live) = self.members.get_mut(id) {
                        live.info.epoch = live.info.previous_epoch;
                        live.last_heartbeat = now;
                    }
                    return Ok(false);
                }
                Some((old, _)) => {
                    return refuse(
                        code::UNRELEASED_INSTANCE_ID,
                        format!("instance id {instance} is still used by member {old}"),
                    );
                }
                None => {}
            }
        }
        if self.members.contains_key(id) {
            // It rejoins having given up everything it owned: release it all, and let it
            // reconcile again from nothing towards the same target.
            self.release(id);
            if let Some(m) = self.members.get_mut(id) {
                m.info.assigned.clear();
                m.info.revoking.clear();
                m.info.since.clear();
                m.info.state = MemberState::Stable;
                m.info.previous_epoch = m.info.epoch;
                m.info.epoch = 0;
                m.revoke_deadline = None;
            }
            self.version += 1;
            return Ok(false);
        }
        if self.members.len() >= settings.max_size {
            return refuse(
                code::GROUP_MAX_SIZE_REACHED,
                format!("the group has {} members already", self.members.len()),
            );
        }
        let mut info = ConsumerMember::new(
            id,
            hb.instance_id.clone(),
            (&hb.client_id, &hb.client_host),
            hb.rebalance_timeout_ms as u64,
        );
        info.rack = hb.rack.clone();
        self.members.insert(id.clone(), Live::new(info, now));
        self.version += 1;
        Ok(true)
    }

    /// Frees what `id` owns.
    fn release(&mut self, id: &str) {
        self.owners.retain(|_, owner| owner != id);
    }

    /// Removes a member (it left, its session ended, or it was fenced); the others are
    /// assigned its partitions at the next epoch.
    fn remove(&mut self, id: &str) {
        self.release(id);
        self.members.remove(id);
        self.target.remove(id);
        self.bump_epoch();
    }

    /// The topics the members subscribe to, as the catalog has them now; a change moves the
    /// group epoch.
    fn refresh(&mut self, catalog: &dyn Catalog) {
        if self.checked == Some((catalog.version(), self.epoch)) {
            return;
        }
        let mut now: BTreeMap<String, (Uuid, i32)> = BTreeMap::new();
        for m in self.members.values_mut() {
            for name in &m.info.topics {
                if let Some(t) = catalog.topic(name) {
                    now.insert(name.clone(), t);
                }
            }
            m.matched.clear();
            if let Some(re) = &m.regex {
                let who = m.info.requester.as_ref();
                let matched = &mut m.matched;
                catalog.each_public(&mut |name, id, n| {
                    if re.is_match(name) && catalog.describable(who, name) {
                        now.insert(name.to_owned(), (id, n));
                        matched.insert(name.to_owned());
                    }
                });
            }
        }
        if now != self.subscribed {
            self.subscribed = now;
            self.bump_epoch();
        }
        self.checked = Some((catalog.version(), self.epoch));
    }

    /// Recomputes the target if the group epoch moved past it.
    fn retarget(&mut self, settings: &Settings) {
        if self.assignment_epoch >= self.epoch {
            return;
        }
        let mut subscriptions: BTreeMap<String, BTreeSet<Uuid>> = BTreeMap::new();
        for (id, m) in &self.members {
            let mut topics: BTreeSet<Uuid> = m
                .info
                .topics
                .iter()
                .filter_map(|n| self.subscribed.get(n).map(|(t, _)| *t))
                .collect();
            topics.extend(
                m.matched
                    .iter()
                    .filter_map(|n| self.subscribed.get(n).map(|(t, _)| *t)),
            );
            subscriptions.insert(id.clone(), topics);
        }
        let partitions: BTreeMap<Uuid, i32> = self.subscribed.values().copied().collect();
        let name = self.assignor(settings).to_owned();
        self.target = assignor::assign(
            &name,
            &Input {
                subscriptions: &subscriptions,
                partitions: &partitions,
                previous: &self.target,
            },
        );
        self.assignment_epoch = self.epoch;
        self.version += 1;
    }

    /// Moves member `id` towards its target as far as it can now (see the module docs).
    fn reconcile(&mut self, id: &str, owned: Option<&TopicPartitions>, now: Instant) {
        let target = self.target_of(id);
        let assignment_epoch = self.assignment_epoch;
        let Some(m) = self.members.get_mut(id) else {
            return;
        };
        match m.info.state {
            _ if m.info.epoch == LEAVE_STATIC => return,
            MemberState::UnrevokedPartitions => {
                // Revoked once the member says it owns none of them any more.
                let done = owned.is_some_and(|o| {
                    !partitions(&m.info.revoking).any(|(t, p)| contains(o, &t, p))
                });
                if !done {
                    return;
                }
                let revoked: Vec<(Uuid, i32)> = partitions(&m.info.revoking).collect();
                m.info.revoking.clear();
                m.info.note_holdings();
                m.revoke_deadline = None;
                for key in revoked {
                    self.owners.remove(&key);
                }
            }
            MemberState::Stable if m.info.epoch == assignment_epoch => return,
            _ => {}
        }
        let Some(m) = self.members.get_mut(id) else {
            return;
        };
        let mut keep = TopicPartitions::new();
        let mut revoke = TopicPartitions::new();
        for (t, p) in partitions(&m.info.assigned) {
            match contains(&target, &t, p) {
                true => insert(&mut keep, t, p),
                false => insert(&mut revoke, t, p),
            }
        }
        if !revoke.is_empty() {
            m.info.assigned = keep;
            m.info.revoking = revoke;
            m.info.note_holdings();
            m.info.state = MemberState::UnrevokedPartitions;
            m.revoke_deadline = Some(now + Duration::from_millis(m.info.rebalance_timeout_ms));
            return;
        }
        let mut unreleased = false;
        for (t, p) in partitions(&target) {
            if contains(&keep, &t, p) {
                continue;
            }
            match self.owners.get(&(t, p)) {
                Some(owner) if owner != id => unreleased = true,
                _ => {
                    self.owners.insert((t, p), id.to_owned());
                    insert(&mut keep, t, p);
                }
            }
        }
        if m.info.epoch != assignment_epoch {
            m.info.previous_epoch = m.info.epoch;
            m.info.epoch = assignment_epoch;
        }
        m.info.assigned = keep;
        m.info.note_holdings();
        m.info.state = match unreleased {
            true => MemberState::UnreleasedPartitions,
            false => MemberState::Stable,
        };
    }

    /// Ends expired sessions and fences members that did not revoke in time; notices topic
    /// changes and recomputes the target. Members reconcile at their next heartbeat.
    pub(crate) fn tick(&mut self, catalog: &dyn Catalog, settings: &Settings, now: Instant) {
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| {
                let session = m
                    .info
                    .classic
                    .as_ref()
                    .map_or(settings.session_timeout, |c| {
                        Duration::from_millis(c.session_timeout_ms)
                    });
                m.last_heartbeat + session <= now || m.revoke_deadline.is_some_and(|d| d <= now)
            })
            .map(|m| m.info.id.clone())
            .collect();
        for id in &gone {
            self.remove(id);
        }
        if !self.members.is_empty() {
            self.refresh(catalog);
        }
        self.retarget(settings);
    }

    /// Why an offset commit (or a fetch naming a member) from `member_id` at `epoch` for
    /// `partitions` is refused, if it is: the member's current epoch may commit anything (as
    /// in Kafka), an older one only partitions the member has held since then.
    pub(crate) fn check_member(
        &self,
        member_id: &str,
        epoch: i32,
        partitions: &[(Uuid, i32)],
    ) -> Result<(), i16> {
        if epoch < 0 && member_id.is_empty() {
            // From outside the group protocol (admin tools, manual assignment): allowed only
            // while nobody is a member.
            return match self.members.is_empty() {
                true => Ok(()),
                false => Err(code::UNKNOWN_MEMBER_ID),
            };
        }
        let m = self.members.get(member_id).ok_or(code::UNKNOWN_MEMBER_ID)?;
        let held = epoch >= 0
            && epoch < m.info.epoch
            && !partitions.is_empty()
            && partitions
                .iter()
                .all(|(t, p)| m.info.held_since(t, *p, epoch));
        match (epoch == m.info.epoch || held, &m.info.classic) {
            (true, _) => Ok(()),
            // A classic client knows its member epoch as its generation.
            (false, Some(_)) => Err(super::machine::code::ILLEGAL_GENERATION),
            (false, None) => Err(code::STALE_MEMBER_EPOCH),
        }
    }

    /// Who owns partition `p` of topic `t`.
    #[cfg(test)]
    pub(crate) fn owners_of(&self, t: Uuid, p: i32) -> Option<&str> {
        self.owners.get(&(t, p)).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    pub(super) struct Topics {
        version: u64,
        by_name: BTreeMap<String, (Uuid, i32)>,
    }

    impl Topics {
        pub(super) fn with(mut self, name: &str, n: u128, partitions: i32) -> Self {
            self.by_name
                .insert(name.to_owned(), (Uuid::from_u128(n), partitions));
            self.version += 1;
            self
        }
    }

    impl Catalog for Topics {
        fn version(&self) -> u64 {
            self.version
        }
        fn topic(&self, name: &str) -> Option<(Uuid, i32)> {
            self.by_name.get(name).copied()
        }
        fn each_public(&self, f: &mut dyn FnMut(&str, Uuid, i32)) {
            for (name, (id, n)) in &self.by_name {
                f(name, *id, *n);
            }
        }
    }

    pub(super) fn settings() -> Settings {
        Settings {
            session_timeout: Duration::from_secs(10),
            ..Settings::default()
        }
    }

    pub(super) fn join(id: &str, topics: &[&str]) -> Heartbeat {
        Heartbeat {
            member_id: id.to_owned(),
            member_epoch: 0,
            rebalance_timeout_ms: 5_000,
            topics: Some(topics.iter().map(|t| t.to_string()).collect()),
            owned: Some(TopicPartitions::new()),
            ..Heartbeat::default()
        }
    }

    pub(super) fn beat(id: &str, epoch: i32, owned: &TopicPartitions) -> Heartbeat {
        Heartbeat {
            member_id: id.to_owned(),
            member_epoch: epoch,
            rebalance_timeout_ms: -1,
            owned: Some(owned.clone()),
            ..Heartbeat::default()
        }
    }

    pub(super) fn count(tps: &TopicPartitions) -> usize {
        tps.values().map(BTreeSet::len).sum()
    }

    /// A member as a client would track it: its epoch and what it owns.
    pub(super) struct Client {
        pub(super) id: String,
        pub(super) epoch: i32,
        pub(super) owned: TopicPartitions,
    }

    impl Client {
        /// Heartbeats and applies the answer as a consumer does: an assignment replaces
        /// what it owns (revoking what it lost, taking what it gained).
        pub(super) fn beat(&mut self, g: &mut ConsumerGroup, topics: &Topics, now: Instant) {
            let reply = g
                .heartbeat(
                    beat(&self.id, self.epoch, &self.owned),
                    topics,
                    &settings(),
                    now,
                )
                .expect("heartbeat");
            self.epoch = reply.member_epoch;
            if let Some(a) = reply.assignment {
                self.owned = a;
            }
        }
    }

    pub(super) fn joined(g: &mut ConsumerGroup, topics: &Topics, id: &str, now: Instant) -> Client {
        let reply = g
            .heartbeat(join(id, &["t"]), topics, &settings(), now)
            .expect("join");
        Client {
            id: id.to_owned(),
            epoch: reply.member_epoch,
            owned: reply.assignment.unwrap_or_default(),
        }
    }

    /// No partition is owned by two clients at once.
    pub(super) fn assert_exclusive(clients: &[&Client]) {
        let mut seen = BTreeSet::new();
        for c in clients {
            for (t, p) in partitions(&c.owned) {
                assert!(seen.insert((t, p)), "{t}-{p} owned twice");
            }
        }
    }

    #[test]
    fn members_converge_on_a_balanced_assignment_without_ever_sharing_a_partition() {
        let topics = Topics::default().with("t", 1, 6);
        let mut g = ConsumerGroup::default();
        let now = Instant::now();
        let mut a = joined(&mut g, &topics, "a", now);
        assert_eq!(
            count(&a.owned),
            6,
            "the first member gets everything at once"
        );
        assert_eq!(
            (a.epoch, g.epoch()),
            (2, 2),
            "one epoch for the join, one for the topic"
        );
        let mut b = joined(&mut g, &topics, "b", now);
        assert_eq!(count(&b.owned), 0, "a's partitions are still a's");
        assert_eq!(g.state(), "Reconciling");
        // b waits for a: a is told to give three up, keeps its epoch until it has.
        a.beat(&mut g, &topics, now);
        assert_eq!((count(&a.owned), a.epoch), (3, 2));
        assert_exclusive(&[&a, &b]);
        // a's next heartbeat says it no longer owns them: it takes the new epoch.
        a.beat(&mut g, &topics, now);
        assert_eq!((count(&a.owned), a.epoch), (3, 3));
        b.beat(&mut g, &topics, now);
        assert_eq!((count(&b.owned), b.epoch), (3, 3));
        assert_exclusive(&[&a, &b]);
        assert_eq!(g.state(), "Stable");
        // a third, then b leaves: its partitions go straight to the others.
        let mut c = joined(&mut g, &topics, "c", now);
        for _ in 0..3 {
            for m in [&mut a, &mut b, &mut c] {
                m.beat(&mut g, &topics, now);
            }
            assert_exclusive(&[&a, &b, &c]);
        }
        assert_eq!(
            [count(&a.owned), count(&b.owned), count(&c.owned)],
            [2, 2, 2]
        );
        let left = g
            .heartbeat(beat("b", -1, &b.owned), &topics, &settings(), now)
            .expect("leave");
        assert_eq!(left.member_epoch, -1);
        for m in [&mut a, &mut c] {
            m.beat(&mut g, &topics, now);
        }
        assert_eq!([count(&a.owned), count(&c.owned)], [3, 3]);
        assert_exclusive(&[&a, &c]);
        assert_eq!(g.state(), "Stable");
    }

    #[test]
    fn stale_and_unknown_members_are_fenced() {
        let topics = Topics::default().with("t", 1, 2);
        let mut g = ConsumerGroup::default();
        let now = Instant::now();
        let a = joined(&mut g, &topics, "a", now);
        let s = settings();
        let refused = |g: &mut ConsumerGroup, hb| g.heartbeat(hb, &topics, &s, now).err();
        let code_of = |r: Option<Refusal>| r.map(|r| r.code);
        assert_eq!(
            code_of(refused(&mut g, beat("a", a.epoch + 1, &a.owned))),
            Some(code::FENCED_MEMBER_EPOCH)
        );
        assert_eq!(
            code_of(refused(&mut g, beat("nobody", 3, &a.owned))),
            Some(code::UNKNOWN_MEMBER_ID)
        );
        assert_eq!(g.check_member("a", a.epoch, &[]), Ok(()));
        assert_eq!(
            g.check_member("a", a.epoch - 1, &[]),
            Err(code::STALE_MEMBER_EPOCH)
        );
        assert_eq!(g.check_member("", -1, &[]), Err(code::UNKNOWN_MEMBER_ID));
        let mut bad = join("b", &["t"]);
        bad.assignor = Some("sticky".into());
        assert_eq!(
            code_of(refused(&mut g, bad)),
            Some(code::UNSUPPORTED_ASSIGNOR)
        );
        let mut bad = join("b", &[]);
        bad.topics = None;
        bad.regex = Some("(".into());
        assert_eq!(
            code_of(refused(&mut g, bad)),
            Some(code::INVALID_REGULAR_EXPRESSION)
        );
    }

    #[test]
    fn a_commit_from_an_older_epoch_counts_for_partitions_held_since() {
        let topics = Topics::default().with("t", 1, 4);
        let mut g = ConsumerGroup::default();
        let now = Instant::now();
        let mut a = joined(&mut g, &topics, "a", now);
        let old = a.epoch;
        let _b = joined(&mut g, &topics, "b", now);
        a.beat(&mut g, &topics, now);
        a.beat(&mut g, &topics, now);
        assert!(a.epoch > old);
        let t = Uuid::from_u128(1);
        let (kept, gone): (Vec<i32>, Vec<i32>) = (0..4).partition(|p| contains(&a.owned, &t, *p));
        assert_eq!((kept.len(), gone.len()), (2, 2));
        // Held all along: a commit still in flight from the old epoch counts.
        assert_eq!(g.check_member("a", old, &[(t, kept[0])]), Ok(()));
        // Given up since: it does not.
        let stale = g.check_member("a", old, &[(t, kept[0]), (t, gone[0])]);
        assert_eq!(stale, Err(code::STALE_MEMBER_EPOCH));
        assert_eq!(g.check_member("a", a.epoch, &[(t, gone[0])]), Ok(()));
    }

    #[test]
    fn a_member_that_stops_heartbeating_or_never_revokes_is_removed() {
        let topics = Topics::default().with("t", 1, 4);
        let mut g = ConsumerGroup::default();
        let s = settings();
        let now = Instant::now();
        let mut a = joined(&mut g, &topics, "a", now);
        let mut b = joined(&mut g, &topics, "b", now);
        // a is asked to revoke but never says it has: fenced after its rebalance timeout
        // (5 s), and b gets everything.
        a.beat(&mut g, &topics, now);
        g.tick(&topics, &s, now + Duration::from_secs(6));
        assert!(g.check_member("a", a.epoch, &[]).is_err());
        b.beat(&mut g, &topics, now + Duration::from_secs(6));
        assert_eq!(count(&b.owned), 4);
        // b's session ends: the group is empty.
        g.tick(&topics, &s, now + Duration::from_secs(17));
        assert!(g.is_empty());
        assert_eq!(g.state(), "Empty");
    }

    #[test]
    fn a_static_member_comes_back_to_its_assignment_without_a_rebalance() {
        let topics = Topics::default().with("t", 1, 4);
        let mut g = ConsumerGroup::default();
        let s = settings();
        let now = Instant::now();
        let mut first = join("a1", &["t"]);
        first.instance_id = Some("host-a".into());
        let a = g.heartbeat(first, &topics, &s, now).expect("join");
        let mut b = joined(&mut g, &topics, "b", now);
        let mut a = Client {
            id: "a1".into(),
            epoch: a.member_epoch,
            owned: a.assignment.unwrap_or_default(),
        };
        for _ in 0..2 {
            a.beat(&mut g, &topics, now);
            b.beat(&mut g, &topics, now);
        }
        let held = a.owned.clone();
        assert_eq!(count(&held), 2);
        let epoch = g.epoch();
        let left = g
            .heartbeat(beat("a1", LEAVE_STATIC, &held), &topics, &s, now)
            .expect("leave");
        assert_eq!(left.member_epoch, LEAVE_STATIC);
        let mut again = join("a2", &["t"]);
        again.instance_id = Some("host-a".into());
        // While a1 is away, a2 may not take the instance id from a live member...
        let mut clash = join("x", &["t"]);
        clash.instance_id = Some("host-b".into());
        g.heartbeat(clash, &topics, &s, now)
            .expect("another static member");
        let mut steal = join("y", &["t"]);
        steal.instance_id = Some("host-b".into());
        let refused = g.heartbeat(steal, &topics, &s, now).err().map(|r| r.code);
        assert_eq!(refused, Some(code::UNRELEASED_INSTANCE_ID));
        // ...but takes a1's place: same partitions.
        let back = g.heartbeat(again, &topics, &s, now).expect("rejoin");
        assert_eq!(back.assignment.as_ref(), Some(&held));
        assert!(g.epoch() > epoch, "x joined meanwhile");
    }

    #[test]
    fn regular_expressions_follow_topics_as_they_come() {
        let topics = Topics::default()
            .with("orders-eu", 1, 2)
            .with("payments", 2, 2);
        let mut g = ConsumerGroup::default();
        let s = settings();
        let now = Instant::now();
        let mut hb = join("a", &[]);
        hb.topics = None;
        hb.regex = Some("orders-.*".into());
        let reply = g.heartbeat(hb, &topics, &s, now).expect("join");
        let owned = reply.assignment.unwrap_or_default();
        assert_eq!(
            owned.keys().copied().collect::<Vec<_>>(),
            vec![Uuid::from_u128(1)]
        );
        let topics = topics.with("orders-us", 3, 2);
        let epoch = g.epoch();
        g.tick(&topics, &s, now);
        assert_eq!(g.epoch(), epoch + 1, "a matching topic appeared");
        let reply = g
            .heartbeat(beat("a", reply.member_epoch, &owned), &topics, &s, now)
            .expect("heartbeat");
        assert_eq!(reply.assignment.map(|a| count(&a)), Some(4));
    }

    /// Topics as a member may see them: `secret-*` only for `User:admin`.
    struct Guarded(Topics);

    impl Catalog for Guarded {
        fn version(&self) -> u64 {
            self.0.version()
        }
        fn topic(&self, name: &str) -> Option<(Uuid, i32)> {
            self.0.topic(name)
        }
        fn each_public(&self, f: &mut dyn FnMut(&str, Uuid, i32)) {
            self.0.each_public(f)
        }
        fn describable(&self, who: Option<&Requester>, topic: &str) -> bool {
            !topic.starts_with("secret-") || who.is_some_and(|w| w.principal == "User:admin")
        }
    }

    /// A regular expression matches only topics its member may describe (Kafka's rule): two
    /// members with the same expression, one of them allowed the secret topic, share the
    /// public one and only the allowed member gets the secret one.
    #[test]
    fn regular_expressions_match_only_describable_topics() {
        let topics = Guarded(Topics::default().with("orders-public", 1, 2).with(
            "secret-orders",
            2,
            2,
        ));
        let mut g = ConsumerGroup::default();
        let s = settings();
        let now = Instant::now();
        let as_user = |id: &str, principal: &str| {
            let mut hb = join(id, &[]);
            hb.topics = None;
            hb.regex = Some(".*orders.*".into());
            hb.requester = Some(Requester {
                principal: principal.into(),
                host: "10.0.0.1".into(),
                main_listener: false,
            });
            hb
        };
        let bob = g
            .heartbeat(as_user("bob", "User:bob"), &topics, &s, now)
            .expect("bob joins");
        let bob_owned = bob.assignment.unwrap_or_default();
        assert_eq!(
            bob_owned.keys().copied().collect::<Vec<_>>(),
            vec![Uuid::from_u128(1)],
            "bob's expression does not reach the secret topic"
        );
        let admin = g
            .heartbeat(as_user("admin", "User:admin"), &topics, &s, now)
            .expect("admin joins");
        let admin_owned = admin.assignment.unwrap_or_default();
        assert!(
            admin_owned.contains_key(&Uuid::from_u128(2)),
            "the admin gets the secret topic: {admin_owned:?}"
        );
        let bob = g
            .heartbeat(beat("bob", bob.member_epoch, &bob_owned), &topics, &s, now)
            .expect("bob beats");
        let bob_target = g.target_of("bob");
        assert!(
            !bob_target.contains_key(&Uuid::from_u128(2)),
            "never assigned to bob: {bob_target:?} ({:?})",
            bob.assignment
        );
    }

    #[test]
    fn a_restored_group_holds_what_was_persisted() {
        let topics = Topics::default().with("t", 1, 5);
        let mut g = ConsumerGroup::default();
        let now = Instant::now();
        let mut a = joined(&mut g, &topics, "a", now);
        let _b = joined(&mut g, &topics, "b", now);
        a.beat(&mut g, &topics, now);
        assert!(g.dirty());
        let snapshot = g.snapshot();
        let json = serde_json::to_vec(&snapshot).expect("encode");
        let decoded: ConsumerSnapshot = serde_json::from_slice(&json).expect("decode");
        assert_eq!(decoded, snapshot);
        let restored = ConsumerGroup::restore(decoded, now);
        assert_eq!(restored.snapshot(), snapshot);
        assert!(!restored.dirty());
        // What a is still revoking stays a's until it says so.
        let revoking = &snapshot.members[0].revoking;
        let (t, p) = partitions(revoking).next().expect("a revokes something");
        assert_eq!(restored.owners_of(t, p), Some("a"));
    }
}
