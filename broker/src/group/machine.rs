//! One consumer group's membership: Kafka's classic rebalance protocol as a state machine.
//!
//! No I/O and no clock (new member ids draw a random UUID, so ids differ run to run): every
//! operation takes `now`, and requests that must wait (JoinGroup
//! until the rebalance completes, SyncGroup until the leader assigns) leave a oneshot sender
//! that the machine completes later. The coordinator runs it under a lock and persists what
//! it reports.
//!
//! States: Empty → PreparingRebalance (members (re)join until all have or the rebalance
//! timeout passes) → CompletingRebalance (members wait for the leader's SyncGroup) → Stable.
//! A join, leave or expired session during Stable/CompletingRebalance starts a new round.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Kafka error codes the protocol answers with.
pub(crate) mod code {
    pub(crate) const NONE: i16 = 0;
    pub(crate) const UNKNOWN_MEMBER_ID: i16 = 25;
    pub(crate) const ILLEGAL_GENERATION: i16 = 22;
    pub(crate) const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub(crate) const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub(crate) const REBALANCE_IN_PROGRESS: i16 = 27;
    pub(crate) const MEMBER_ID_REQUIRED: i16 = 79;
    pub(crate) const FENCED_INSTANCE_ID: i16 = 82;
    pub(crate) const NON_EMPTY_GROUP: i16 = 68;
    pub(crate) const GROUP_MAX_SIZE_REACHED: i16 = 81;
}

/// Group-wide limits (Kafka's `group.*` broker settings).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) min_session: Duration,
    pub(crate) max_session: Duration,
    /// Wait for more members before the first rebalance of an empty group.
    pub(crate) initial_rebalance_delay: Duration,
    pub(crate) max_size: usize,
}

/// Where the group is in the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Phase {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl Phase {
    /// Kafka's name for the state (DescribeGroups, ListGroups).
    pub(crate) fn kafka_name(self) -> &'static str {
        match self {
            Phase::Empty => "Empty",
            Phase::PreparingRebalance => "PreparingRebalance",
            Phase::CompletingRebalance => "CompletingRebalance",
            Phase::Stable => "Stable",
        }
    }
}

/// A JoinGroup answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct JoinReply {
    pub(crate) error: i16,
    pub(crate) generation: i32,
    pub(crate) protocol_type: Option<String>,
    pub(crate) protocol: Option<String>,
    pub(crate) leader: String,
    pub(crate) member_id: String,
    /// `(member id, instance id, metadata)`, for the leader only.
    pub(crate) members: Vec<(String, Option<String>, Bytes)>,
}

/// A SyncGroup answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SyncReply {
    pub(crate) error: i16,
    pub(crate) protocol_type: Option<String>,
    pub(crate) protocol: Option<String>,
    pub(crate) assignment: Bytes,
}

/// A JoinGroup request.
#[derive(Clone, Debug)]
pub(crate) struct Join {
    pub(crate) member_id: String,
    pub(crate) instance_id: Option<String>,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    pub(crate) session_timeout: Duration,
    pub(crate) rebalance_timeout: Duration,
    pub(crate) protocol_type: String,
    pub(crate) protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a new dynamic member must first get its id (KIP-394).
    pub(crate) require_known_member_id: bool,
}

/// An answer now, or one to wait for.
#[derive(Debug)]
pub(crate) enum Answer<T> {
    Now(T),
    Later(oneshot::Receiver<T>),
}

/// A member as persisted and described.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MemberInfo {
    pub(crate) id: String,
    pub(crate) instance_id: Option<String>,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    pub(crate) session_timeout_ms: u64,
    pub(crate) rebalance_timeout_ms: u64,
    pub(crate) protocols: Vec<(String, Vec<u8>)>,
    pub(crate) assignment: Vec<u8>,
}

#[derive(Debug)]
struct Member {
    info: MemberInfo,
    last_heartbeat: Instant,
    join: Option<oneshot::Sender<JoinReply>>,
    sync: Option<oneshot::Sender<SyncReply>>,
}

impl Member {
    fn session(&self) -> Duration {
        Duration::from_millis(self.info.session_timeout_ms)
    }
    fn metadata(&self, protocol: &str) -> Bytes {
        self.info
            .protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| Bytes::from(m.clone()))
            .unwrap_or_default()
    }
}

/// The persisted form of a group's membership (offsets are persisted separately).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GroupSnapshot {
    pub(crate) generation: i32,
    pub(crate) protocol_type: Option<String>,
    pub(crate) protocol: Option<String>,
    pub(crate) leader: Option<String>,
    pub(crate) members: Vec<MemberInfo>,
}

/// One group.
#[derive(Debug)]
pub(crate) struct Group {
    phase: Phase,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, until they join or expire.
    pending: BTreeMap<String, Instant>,
    rebalance_deadline: Option<Instant>,
    /// An empty group's first rebalance waits until then for more members.
    initial_delay_until: Option<Instant>,
    /// Set when the membership changed in a way worth persisting.
    dirty: bool,
    /// The newest generation persisted with its assignments. SyncGroup answers of a newer
    /// one wait for it ([`Self::persisted`]), as Kafka's do: a member consumes and commits
    /// only once its generation survives a coordinator failover. (Otherwise the next
    /// coordinator restores an older generation, counts up to the same number again with
    /// other assignments, and a commit a member of the lost generation still had in flight,
    /// for a partition it no longer owns, passes the generation check: the group's offset
    /// goes back.)
    durable_generation: i32,
}

impl Default for Group {
    fn default() -> Self {
        Self {
            phase: Phase::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: BTreeMap::new(),
            rebalance_deadline: None,
            initial_delay_until: None,
            dirty: false,
            durable_generation: 0,
        }
    }
}

impl Group {
    /// A group restored from its snapshot: Stable (or Empty) with fresh sessions from `now`.
    pub(crate) fn restore(s: GroupSnapshot, now: Instant) -> Self {
        let members: BTreeMap<String, Member> = s
            .members
            .into_iter()
            .map(|info| {
                (
                    info.id.clone(),
                    Member {
                        info,
                        last_heartbeat: now,
                        join: None,
                        sync: None,
                    },
                )
            })
            .collect();
        Self {
            phase: if members.is_empty() {
                Phase::Empty
            } else {
                Phase::Stable
            },
            generation: s.generation,
            durable_generation: s.generation,
            protocol_type: s.protocol_type,
            protocol: s.protocol,
            leader: s.leader,
            members,
            ..Self::default()
        }
    }

    pub(crate) fn snapshot(&self) -> GroupSnapshot {
        GroupSnapshot {
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            members: self.members.values().map(|m| m.info.clone()).collect(),
        }
    }

    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    #[cfg(test)]
    pub(crate) fn generation(&self) -> i32 {
        self.generation
    }

    pub(crate) fn protocol_type(&self) -> Option<&str> {
        self.protocol_type.as_deref()
    }

    pub(crate) fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    pub(crate) fn members(&self) -> impl Iterator<Item = &MemberInfo> {
        self.members.values().map(|m| &m.info)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.members.is_empty() && self.pending.is_empty()
    }

    /// Takes the "membership changed" flag.
    pub(crate) fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Sets it again (persisting the change failed).
    pub(crate) fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// JoinGroup.
    pub(crate) fn join(&mut self, req: Join, limits: &Limits, now: Instant) -> Answer<JoinReply> {
        let fail = |error: i16, member_id: &str| {
            Answer::Now(JoinReply {
                error,
                generation: -1,
                member_id: member_id.to_owned(),
                ..JoinReply::default()
            })
        };
        if req.session_timeout < limits.min_session || req.session_timeout > limits.max_session {
            return fail(code::INVALID_SESSION_TIMEOUT, &req.member_id);
        }
        if req.protocols.is_empty()
            || self
                .protocol_type
                .as_deref()
                .is_some_and(|t| t != req.protocol_type && !self.members.is_empty())
            || (!self.members.is_empty()
                && !req
                    .protocols
                    .iter()
                    .any(|(p, _)| self.members.values().all(|m| supports(m, p))))
        {
            return fail(code::INCONSISTENT_GROUP_PROTOCOL, &req.member_id);
        }
        let mut member_id = req.member_id.clone();
        if member_id.is_empty() {
            member_id = match &req.instance_id {
                Some(instance) => {
                    // A static member's new incarnation replaces its old member id.
                    let old = self
                        .members
                        .values()
                        .find(|m| m.info.instance_id.as_deref() == Some(instance))
                        .map(|m| m.info.id.clone());
                    if let Some(old) = old {
                        self.remove_member(&old);
                    }
                    format!("{instance}-{}", uuid::Uuid::new_v4())
                }
                None => format!("{}-{}", req.client_id, uuid::Uuid::new_v4()),
            };
            if req.instance_id.is_none() && req.require_known_member_id {
                self.pending
                    .insert(member_id.clone(), now + req.session_timeout);
                return fail(code::MEMBER_ID_REQUIRED, &member_id);
            }
            if self.members.len() >= limits.max_size {
                return fail(code::GROUP_MAX_SIZE_REACHED, &member_id);
            }
        } else if let Some(m) = self.members.get(&member_id) {
            if req.instance_id.is_some() && m.info.instance_id != req.instance_id {
                return fail(code::FENCED_INSTANCE_ID, &member_id);
            }
        } else if self.pending.remove(&member_id).is_none() {
            return fail(code::UNKNOWN_MEMBER_ID, &member_id);
        } else if self.members.len() >= limits.max_size {
            return fail(code::GROUP_MAX_SIZE_REACHED, &member_id);
        }
        let protocols: Vec<(String, Vec<u8>)> = req
            .protocols
            .iter()
            .map(|(n, m)| (n.clone(), m.to_vec()))
            .collect();
        // A known member rejoining a stable group with the same protocols, other than the
        // leader, gets the current generation back without a new rebalance.
        if let Some(m) = self.members.get_mut(&member_id)
            && self.phase == Phase::Stable
            && m.info.protocols == protocols
            && self.leader.as_deref() != Some(member_id.as_str())
        {
            m.last_heartbeat = now;
            return Answer::Now(self.join_reply(&member_id, false));
        }
        let (tx, rx) = oneshot::channel();
        let assignment = self
            .members
            .get(&member_id)
            .map(|m| m.info.assignment.clone())
            .unwrap_or_default();
        self.members.insert(
            member_id.clone(),
            Member {
                info: MemberInfo {
                    id: member_id.clone(),
                    instance_id: req.instance_id.clone(),
                    client_id: req.client_id.clone(),
                    client_host: req.client_host.clone(),
                    session_timeout_ms: req.session_timeout.as_millis() as u64,
                    rebalance_timeout_ms: req.rebalance_timeout.as_millis() as u64,
                    protocols,
                    assignment,
                },
                last_heartbeat: now,
                join: Some(tx),
                sync: None,
            },
        );
        self.protocol_type = Some(req.protocol_type.clone());
        if self.phase != Phase::PreparingRebalance {
            self.prepare_rebalance(limits, now);
        }
        self.try_complete_join(now);
        Answer::Later(rx)
    }

    /// SyncGroup.
    pub(crate) fn sync(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> Answer<SyncReply> {
        let fail = |error| {
            Answer::Now(SyncReply {
                error,
                ..SyncReply::default()
            })
        };
        if let Err(e) = self.check_member(member_id, instance_id, generation) {
            return fail(e);
        }
        match self.phase {
            Phase::Empty => fail(code::UNKNOWN_MEMBER_ID),
            Phase::PreparingRebalance => fail(code::REBALANCE_IN_PROGRESS),
            Phase::Stable if self.durable_generation >= self.generation => {
                Answer::Now(self.sync_reply(member_id))
            }
            Phase::Stable | Phase::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                if let Some(m) = self.members.get_mut(member_id) {
                    m.sync = Some(tx);
                }
                if self.phase == Phase::CompletingRebalance
                    && self.leader.as_deref() == Some(member_id)
                {
                    let given: BTreeMap<String, Bytes> = assignments.into_iter().collect();
                    for m in self.members.values_mut() {
                        m.info.assignment = given
                            .get(&m.info.id)
                            .map(|b| b.to_vec())
                            .unwrap_or_default();
                    }
                    self.phase = Phase::Stable;
                    self.rebalance_deadline = None;
                    self.dirty = true;
                }
                Answer::Later(rx)
            }
        }
    }

    /// Whether SyncGroup answers wait for the generation to be persisted.
    pub(crate) fn awaits_persist(&self) -> bool {
        self.phase == Phase::Stable && self.durable_generation < self.generation
    }

    /// A snapshot of `generation` is persisted: once it is the current one, the members
    /// waiting in SyncGroup get their assignments.
    pub(crate) fn persisted(&mut self, generation: i32) {
        self.durable_generation = self.durable_generation.max(generation);
        if self.awaits_persist() || self.phase != Phase::Stable {
            return;
        }
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let reply = self.sync_reply(&id);
            if let Some(tx) = self.members.get_mut(&id).and_then(|m| m.sync.take()) {
                let _ = tx.send(reply);
            }
        }
    }

    /// Heartbeat.
    pub(crate) fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: Instant,
    ) -> i16 {
        if let Err(e) = self.check_member(member_id, instance_id, generation) {
            return e;
        }
        if let Some(m) = self.members.get_mut(member_id) {
            m.last_heartbeat = now;
        }
        match self.phase {
            Phase::PreparingRebalance => code::REBALANCE_IN_PROGRESS,
            _ => code::NONE,
        }
    }

    /// LeaveGroup for one member (by member id, or by instance id for static members).
    pub(crate) fn leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        limits: &Limits,
        now: Instant,
    ) -> i16 {
        let holder = |i: &str| {
            self.members
                .values()
                .find(|m| m.info.instance_id.as_deref() == Some(i))
                .map(|m| m.info.id.as_str())
        };
        let id = match leaving(member_id, instance_id, holder) {
            Ok(id) if self.members.contains_key(&id) => id,
            Ok(_) => return code::UNKNOWN_MEMBER_ID,
            Err(e) => return e,
        };
        self.remove_member(&id);
        self.after_departure(limits, now);
        code::NONE
    }

    /// Whether an offset commit from this member and generation is allowed now.
    pub(crate) fn check_commit(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), i16> {
        if generation < 0 && member_id.is_empty() {
            // A commit from outside the group protocol (admin tools, manual assignment):
            // allowed only while nobody is a member.
            return if self.members.is_empty() {
                Ok(())
            } else {
                Err(code::UNKNOWN_MEMBER_ID)
            };
        }
        self.check_member(member_id, instance_id, generation)?;
        // While preparing a rebalance the generation in force is still valid: Kafka takes
        // its members' commits (a consumer commits what it consumed before it rejoins or
        // leaves). Only a generation not yet synced has nothing to commit against.
        match self.phase {
            Phase::CompletingRebalance => Err(code::REBALANCE_IN_PROGRESS),
            _ => Ok(()),
        }
    }

    /// Expires sessions and pending ids, and completes a rebalance whose time is up.
    pub(crate) fn tick(&mut self, limits: &Limits, now: Instant) {
        self.pending.retain(|_, deadline| *deadline > now);
        if self.remove_where(|m| m.join.is_none() && m.last_heartbeat + m.session() <= now) {
            self.after_departure(limits, now);
        }
        if self.rebalance_deadline.is_some_and(|d| d <= now) {
            match self.phase {
                Phase::PreparingRebalance => {
                    // Members that did not rejoin in time are out.
                    self.remove_where(|m| m.join.is_none());
                    self.complete_join(now);
                }
                Phase::CompletingRebalance => {
                    // The leader never assigned: start over with whoever is still syncing.
                    self.remove_where(|m| m.sync.is_none());
                    self.after_departure(limits, now);
                }
                _ => self.rebalance_deadline = None,
            }
        }
    }

    /// Fails every waiting request (the coordinator is unloading the group).
    pub(crate) fn abandon(&mut self, error: i16) {
        for m in self.members.values_mut() {
            if let Some(tx) = m.join.take() {
                let _ = tx.send(JoinReply {
                    error,
                    generation: -1,
                    member_id: m.info.id.clone(),
                    ..JoinReply::default()
                });
            }
            if let Some(tx) = m.sync.take() {
                let _ = tx.send(SyncReply {
                    error,
                    ..SyncReply::default()
                });
            }
        }
    }

    fn check_member(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), i16> {
        let Some(m) = self.members.get(member_id) else {
            if let Some(instance) = instance_id
                && self
                    .members
                    .values()
                    .any(|m| m.info.instance_id.as_deref() == Some(instance))
            {
                return Err(code::FENCED_INSTANCE_ID);
            }
            return Err(code::UNKNOWN_MEMBER_ID);
        };
        if instance_id.is_some() && m.info.instance_id.as_deref() != instance_id {
            return Err(code::FENCED_INSTANCE_ID);
        }
        if generation != self.generation {
            return Err(code::ILLEGAL_GENERATION);
        }
        Ok(())
    }

    /// Removes every member `doomed` picks; true if any was removed.
    fn remove_where(&mut self, doomed: impl Fn(&Member) -> bool) -> bool {
        let ids: Vec<String> = self
            .members
            .values()
            .filter(|m| doomed(m))
            .map(|m| m.info.id.clone())
            .collect();
        for id in &ids {
            self.remove_member(id);
        }
        !ids.is_empty()
    }

    fn remove_member(&mut self, id: &str) {
        if let Some(mut m) = self.members.remove(id) {
            if let Some(tx) = m.join.take() {
                let _ = tx.send(JoinReply {
                    error: code::UNKNOWN_MEMBER_ID,
                    generation: -1,
                    member_id: id.to_owned(),
                    ..JoinReply::default()
                });
            }
            if let Some(tx) = m.sync.take() {
                let _ = tx.send(SyncReply {
                    error: code::REBALANCE_IN_PROGRESS,
                    ..SyncReply::default()
                });
            }
            self.dirty = true;
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
    }

    /// After members left: rebalance the rest, or become Empty.
    fn after_departure(&mut self, limits: &Limits, now: Instant) {
        if self.members.is_empty() {
            if self.phase != Phase::Empty {
                self.generation += 1;
                self.phase = Phase::Empty;
                self.protocol = None;
                self.leader = None;
                self.rebalance_deadline = None;
                self.dirty = true;
            }
            return;
        }
        match self.phase {
            Phase::Stable | Phase::CompletingRebalance => self.prepare_rebalance(limits, now),
            Phase::PreparingRebalance => self.try_complete_join(now),
            Phase::Empty => {}
        }
    }

    fn prepare_rebalance(&mut self, limits: &Limits, now: Instant) {
        // Members waiting on a sync of the old generation must rejoin.
        for m in self.members.values_mut() {
            if let Some(tx) = m.sync.take() {
                let _ = tx.send(SyncReply {
                    error: code::REBALANCE_IN_PROGRESS,
                    ..SyncReply::default()
                });
            }
        }
        let timeout = self
            .members
            .values()
            .map(|m| Duration::from_millis(m.info.rebalance_timeout_ms))
            .max()
            .unwrap_or_default();
        let delay = if self.phase == Phase::Empty {
            limits.initial_rebalance_delay.min(timeout)
        } else {
            timeout
        };
        self.phase = Phase::PreparingRebalance;
        self.rebalance_deadline = Some(now + delay);
        self.initial_delay_until = (delay < timeout).then_some(now + delay);
    }

    /// Completes the join phase once every member has (re)joined.
    fn try_complete_join(&mut self, now: Instant) {
        if self.phase != Phase::PreparingRebalance
            || self.initial_delay_until.is_some_and(|d| d > now)
        {
            return;
        }
        if self.members.values().all(|m| m.join.is_some()) {
            self.complete_join(now);
        }
    }

    fn complete_join(&mut self, now: Instant) {
        self.initial_delay_until = None;
        if self.members.is_empty() {
            self.generation += 1;
            self.phase = Phase::Empty;
            self.rebalance_deadline = None;
            self.dirty = true;
            return;
        }
        self.generation += 1;
        self.protocol = self.choose_protocol();
        if self
            .leader
            .as_ref()
            .is_none_or(|l| !self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        self.phase = Phase::CompletingRebalance;
        // The leader has this long to send the assignment.
        let timeout = self
            .members
            .values()
            .map(|m| Duration::from_millis(m.info.rebalance_timeout_ms))
            .max()
            .unwrap_or_default();
        self.rebalance_deadline = Some(now + timeout);
        self.dirty = true;
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let is_leader = self.leader.as_deref() == Some(id.as_str());
            let reply = self.join_reply(&id, is_leader);
            if let Some(m) = self.members.get_mut(&id) {
                m.last_heartbeat = now;
                if let Some(tx) = m.join.take() {
                    let _ = tx.send(reply);
                }
            }
        }
    }

    /// The protocol every member supports that gets the most first-choice votes (ties: the
    /// first in the leader-candidate's order), as Kafka does.
    fn choose_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        let candidates: Vec<&String> = first
            .info
            .protocols
            .iter()
            .map(|(n, _)| n)
            .filter(|p| self.members.values().all(|m| supports(m, p)))
            .collect();
        let mut votes: BTreeMap<&String, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some((p, _)) = m
                .info
                .protocols
                .iter()
                .find(|(p, _)| candidates.contains(&p))
            {
                *votes.entry(p).or_default() += 1;
            }
        }
        candidates
            .iter()
            .max_by_key(|p| {
                (
                    votes.get(*p).copied().unwrap_or(0),
                    std::cmp::Reverse(candidates.iter().position(|c| c == *p)),
                )
            })
            .map(|p| (*p).clone())
    }

    fn join_reply(&self, member_id: &str, is_leader: bool) -> JoinReply {
        let protocol = self.protocol.clone().unwrap_or_default();
        JoinReply {
            error: code::NONE,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_owned(),
            members: if is_leader {
                self.members
                    .values()
                    .map(|m| {
                        (
                            m.info.id.clone(),
                            m.info.instance_id.clone(),
                            m.metadata(&protocol),
                        )
                    })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    fn sync_reply(&self, member_id: &str) -> SyncReply {
        SyncReply {
            error: code::NONE,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            assignment: self
                .members
                .get(member_id)
                .map(|m| Bytes::from(m.info.assignment.clone()))
                .unwrap_or_default(),
        }
    }
}

/// The member a LeaveGroup entry names: by instance id for a static member (whose member
/// id, if given, must be the holder's: admin tools give none), else by member id. `holder`
/// finds the member holding an instance id.
pub(crate) fn leaving<'a>(
    member_id: &str,
    instance_id: Option<&str>,
    holder: impl FnOnce(&str) -> Option<&'a str>,
) -> Result<String, i16> {
    let Some(instance) = instance_id else {
        return Ok(member_id.to_owned());
    };
    match holder(instance) {
        None => Err(code::UNKNOWN_MEMBER_ID),
        Some(id) if !member_id.is_empty() && id != member_id => Err(code::FENCED_INSTANCE_ID),
        Some(id) => Ok(id.to_owned()),
    }
}

fn supports(m: &Member, protocol: &str) -> bool {
    m.info.protocols.iter().any(|(p, _)| p == protocol)
}
