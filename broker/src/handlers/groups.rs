//! The consumer group APIs: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//! OffsetCommit and OffsetFetch, over the coordinator in `crate::group`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::find_coordinator_response::Coordinator as CoordinatorEntry;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    FindCoordinatorRequest, FindCoordinatorResponse, HeartbeatRequest, HeartbeatResponse,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse,
    SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::{broker_id, str_bytes, topic_name};
use crate::group::machine::{Answer, Join, SyncReply, code as proto};
use crate::group::store::{Committed, Write};
use crate::group::{code, now_ms};
use crate::protocol::{Frame, FrameError, storage_error_code};
use crate::security::acl::{self, Resource};
use crate::state::BrokerState;

/// Kafka's `offset.metadata.max.bytes`.
pub(super) const MAX_METADATA: usize = 4096;
pub(super) const OFFSET_METADATA_TOO_LARGE: i16 = 12;
pub(super) const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;

/// Per topic, per partition: the offset to commit, or why not.
type CommitPlan = Vec<(String, Vec<(i32, Result<Committed, i16>)>)>;
/// Per topic, per partition: the committed offset, if any, and the partition's error.
type Fetched = Vec<(String, Vec<(i32, Option<Committed>, i16)>)>;

/// KIP-447: a transaction has an offset pending for the partition.
const UNSTABLE_OFFSET_COMMIT: i16 = 88;

fn opt(s: &Option<StrBytes>) -> Option<&str> {
    s.as_ref().map(StrBytes::as_str)
}

pub(super) async fn find_coordinator(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: FindCoordinatorRequest = frame.decode()?;
    let image = state.image();
    // (error, message, coordinator id, host, port): the broker whose offsets partition holds
    // the key, wherever the request came in.
    let answer = |key: &str| -> (i16, Option<String>, i32, String, u16) {
        let none = |code, message: Option<String>| (code, message, -1, String::new(), 0);
        let found = match req.key_type {
            0 if !super::allowed(state, frame, acl::code::DESCRIBE, Resource::Group(key)) => {
                Err(acl::code::GROUP_AUTHORIZATION_FAILED)
            }
            1 if !super::allowed(
                state,
                frame,
                acl::code::DESCRIBE,
                Resource::TransactionalId(key),
            ) =>
            {
                Err(acl::code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
            }
            0 => state.groups.coordinator_of(key),
            1 if !key.is_empty() => state.txns.coordinator_of(key),
            1 => Err(ResponseError::InvalidRequest.code()),
            _ => {
                let message = Some("share groups are not supported".into());
                return none(ResponseError::InvalidRequest.code(), message);
            }
        };
        let id = match found {
            Ok(id) => id,
            Err(e) => return none(e, None),
        };
        let listener = &frame.session.listener.name;
        if id == state.id {
            let own = state
                .config
                .endpoints()
                .into_iter()
                .find(|e| e.listener == *listener);
            if let Some(e) = own {
                return (0, None, id, e.host, e.port);
            }
        }
        match image
            .brokers
            .get(&id)
            .and_then(|b| super::endpoint(b, listener))
        {
            Some(e) => (0, None, id, e.host.clone(), e.port),
            None => none(code::COORDINATOR_NOT_AVAILABLE, None),
        }
    };
    let resp = if frame.version >= 4 {
        let coordinators = req
            .coordinator_keys
            .iter()
            .map(|k| {
                let (error, message, id, host, port) = answer(k.as_str());
                let c = CoordinatorEntry::default()
                    .with_key(k.clone())
                    .with_error_code(error)
                    .with_error_message(message.as_deref().map(str_bytes));
                if error == 0 {
                    c.with_node_id(broker_id(id))
                        .with_host(str_bytes(&host))
                        .with_port(i32::from(port))
                } else {
                    c.with_node_id(broker_id(-1)).with_port(-1)
                }
            })
            .collect();
        FindCoordinatorResponse::default().with_coordinators(coordinators)
    } else {
        let (error, message, id, host, port) = answer(req.key.as_str());
        let r = FindCoordinatorResponse::default()
            .with_error_code(error)
            .with_error_message(message.as_deref().map(str_bytes));
        if error == 0 {
            r.with_node_id(broker_id(id))
                .with_host(str_bytes(&host))
                .with_port(i32::from(port))
        } else {
            r.with_node_id(broker_id(-1)).with_port(-1)
        }
    };
    frame.respond(&resp)
}

/// GROUP_AUTHORIZATION_FAILED when the principal may not do `op` on `group`.
pub(super) fn group_denied(state: &BrokerState, frame: &Frame, group: &str, op: i8) -> Option<i16> {
    (!super::allowed(state, frame, op, Resource::Group(group)))
        .then_some(acl::code::GROUP_AUTHORIZATION_FAILED)
}

fn ms(v: i32) -> Duration {
    Duration::from_millis(u64::try_from(v).unwrap_or(0))
}

pub(super) async fn join_group(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: JoinGroupRequest = frame.decode()?;
    let group = req.group_id.0.to_string();
    if let Some(error) = group_denied(state, frame, &group, acl::code::READ) {
        return frame.respond(
            &JoinGroupResponse::default()
                .with_error_code(error)
                .with_generation_id(-1)
                .with_member_id(req.member_id.clone()),
        );
    }
    let join = Join {
        member_id: req.member_id.to_string(),
        instance_id: opt(&req.group_instance_id).map(str::to_owned),
        client_id: frame.header.client_id.as_deref().unwrap_or("").to_owned(),
        client_host: String::new(),
        session_timeout: ms(req.session_timeout_ms),
        // v0 has no rebalance timeout: Kafka uses the session timeout.
        rebalance_timeout: if frame.version == 0 {
            ms(req.session_timeout_ms)
        } else {
            ms(req.rebalance_timeout_ms)
        },
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
        require_known_member_id: frame.version >= 4,
    };
    let reply = state.groups.join(&group, join).await;
    tracing::debug!(group, member = %reply.member_id, generation = reply.generation,
        error = reply.error, leader = %reply.leader, "join answered");
    frame.respond(
        &JoinGroupResponse::default()
            .with_error_code(reply.error)
            .with_generation_id(reply.generation)
            .with_protocol_type(reply.protocol_type.as_deref().map(str_bytes))
            .with_protocol_name(reply.protocol.as_deref().map(str_bytes))
            .with_leader(str_bytes(&reply.leader))
            .with_member_id(str_bytes(&reply.member_id))
            .with_members(
                reply
                    .members
                    .into_iter()
                    .map(|(id, instance, metadata)| {
                        JoinGroupResponseMember::default()
                            .with_member_id(str_bytes(&id))
                            .with_group_instance_id(instance.as_deref().map(str_bytes))
                            .with_metadata(metadata)
                    })
                    .collect(),
            ),
    )
}

pub(super) async fn sync_group(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: SyncGroupRequest = frame.decode()?;
    let group = req.group_id.0.to_string();
    if let Some(error) = group_denied(state, frame, &group, acl::code::READ) {
        return frame.respond(&SyncGroupResponse::default().with_error_code(error));
    }
    let reply = match state.groups.route(&group) {
        Err(e) => SyncReply {
            error: e,
            ..SyncReply::default()
        },
        Ok(_) => {
            let assignments = req
                .assignments
                .iter()
                .map(|a| (a.member_id.to_string(), a.assignment.clone()))
                .collect();
            let answer = state.groups.sync(
                &group,
                req.member_id.as_str(),
                opt(&req.group_instance_id),
                req.generation_id,
                assignments,
            );
            match answer {
                Answer::Now(r) => r,
                Answer::Later(rx) => rx.await.unwrap_or(SyncReply {
                    error: code::NOT_COORDINATOR,
                    ..SyncReply::default()
                }),
            }
        }
    };
    tracing::debug!(group = %req.group_id.0, member = %req.member_id,
        generation = req.generation_id, error = reply.error, assignment_bytes = reply.assignment.len(),
        "sync answered");
    frame.respond(
        &SyncGroupResponse::default()
            .with_error_code(reply.error)
            .with_protocol_type(reply.protocol_type.as_deref().map(str_bytes))
            .with_protocol_name(reply.protocol.as_deref().map(str_bytes))
            .with_assignment(reply.assignment),
    )
}

pub(super) async fn heartbeat(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: HeartbeatRequest = frame.decode()?;
    let group = req.group_id.0.to_string();
    let denied = group_denied(state, frame, &group, acl::code::READ);
    let error = match (denied, state.groups.route(&group)) {
        (Some(e), _) | (None, Err(e)) => e,
        (None, Ok(_)) => state
            .groups
            .with_existing(&group, |e| {
                e.heartbeat(
                    req.member_id.as_str(),
                    opt(&req.group_instance_id),
                    req.generation_id,
                    tokio::time::Instant::now(),
                )
            })
            .unwrap_or(proto::UNKNOWN_MEMBER_ID),
    };
    frame.respond(&HeartbeatResponse::default().with_error_code(error))
}

pub(super) async fn leave_group(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: LeaveGroupRequest = frame.decode()?;
    let group = req.group_id.0.to_string();
    if let Some(error) = group_denied(state, frame, &group, acl::code::READ) {
        return frame.respond(&LeaveGroupResponse::default().with_error_code(error));
    }
    let leaving: Vec<(String, Option<String>)> = if frame.version >= 3 {
        req.members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    opt(&m.group_instance_id).map(str::to_owned),
                )
            })
            .collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    let resp = match state.groups.route(&group) {
        Err(e) => LeaveGroupResponse::default().with_error_code(e),
        Ok(_) => {
            let codes = state.groups.leave(&group, &leaving).await;
            let results: Vec<(String, Option<String>, i16)> = leaving
                .iter()
                .enumerate()
                .map(|(i, (id, instance))| {
                    let code = codes.as_ref().map_or(proto::UNKNOWN_MEMBER_ID, |c| c[i]);
                    (id.clone(), instance.clone(), code)
                })
                .collect();
            if frame.version >= 3 {
                LeaveGroupResponse::default().with_members(
                    results
                        .into_iter()
                        .map(|(id, instance, code)| {
                            MemberResponse::default()
                                .with_member_id(str_bytes(&id))
                                .with_group_instance_id(instance.as_deref().map(str_bytes))
                                .with_error_code(code)
                        })
                        .collect(),
                )
            } else {
                LeaveGroupResponse::default()
                    .with_error_code(results.first().map_or(0, |(_, _, c)| *c))
            }
        }
    };
    frame.respond(&resp)
}

pub(super) async fn offset_commit(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: OffsetCommitRequest = frame.decode()?;
    let group = req.group_id.0.to_string();
    let image = state.image();
    // Per partition: an error, or the offset to write.
    let mut results: CommitPlan = Vec::new();
    // The committed partitions by topic id (a KIP-848 member's older epoch counts for the
    // partitions it has held since).
    let ids: Vec<(uuid::Uuid, i32)> = req
        .topics
        .iter()
        .filter_map(|t| image.topics.get(t.name.0.as_str()).map(|r| (r.id, t)))
        .flat_map(|(id, t)| t.partitions.iter().map(move |p| (id, p.partition_index)))
        .collect();
    let denied = group_denied(state, frame, &group, acl::code::READ);
    let group_check = state.groups.route(&group).and_then(|(part, epoch)| {
        if let Some(error) = denied {
            return Err(error);
        }
        state
            .groups
            .with_group(&group, |e| {
                e.check_commit(
                    req.member_id.as_str(),
                    opt(&req.group_instance_id),
                    req.generation_id_or_member_epoch,
                    &ids,
                )
            })
            .map(|()| (part, epoch))
    });
    let now = now_ms();
    for t in &req.topics {
        let name = t.name.0.to_string();
        let topic = image.topics.get(&name);
        let readable = super::allowed(state, frame, acl::code::READ, Resource::Topic(&name));
        let partitions = t
            .partitions
            .iter()
            .map(|p| {
                let r = match &group_check {
                    Err(e) => Err(*e),
                    Ok(_) if !readable => Err(acl::code::TOPIC_AUTHORIZATION_FAILED),
                    Ok(_)
                        if topic.is_none_or(|t| {
                            p.partition_index < 0
                                || p.partition_index as usize >= t.partitions.len()
                        }) =>
                    {
                        Err(UNKNOWN_TOPIC_OR_PARTITION)
                    }
                    Ok(_) if opt(&p.committed_metadata).is_some_and(|m| m.len() > MAX_METADATA) => {
                        Err(OFFSET_METADATA_TOO_LARGE)
                    }
                    Ok(_) => Ok(Committed {
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata: opt(&p.committed_metadata).map(str::to_owned),
                        commit_ms: now,
                    }),
                };
                (p.partition_index, r)
            })
            .collect();
        results.push((name, partitions));
    }
    if let Ok((part, epoch)) = group_check {
        let writes: Vec<Write> = results
            .iter()
            .flat_map(|(topic, ps)| {
                ps.iter().filter_map(|(p, r)| {
                    r.as_ref().ok().map(|c| Write::Offset {
                        group: group.clone(),
                        topic: topic.clone(),
                        partition: *p,
                        value: Some(c.clone()),
                    })
                })
            })
            .collect();
        let applied: Vec<((String, i32), Committed)> = results
            .iter()
            .flat_map(|(topic, ps)| {
                ps.iter()
                    .filter_map(|(p, r)| r.as_ref().ok().map(|c| ((topic.clone(), *p), c.clone())))
            })
            .collect();
        if !writes.is_empty() {
            tracing::debug!(group, member = %req.member_id, generation = req.generation_id_or_member_epoch,
                offsets = ?crate::group::store::offsets_of(&writes), "offset commit");
            let keys = applied.iter().map(|(k, _)| k.clone()).collect();
            let _committing = state.groups.committing(&group, keys);
            let persisted = state
                .groups
                .persist_then(part, epoch, &group, writes, |e| e.offsets.extend(applied))
                .await;
            if let Err(err) = persisted {
                let code = storage_error_code(&err).code();
                for (_, ps) in &mut results {
                    for (_, r) in ps.iter_mut() {
                        if r.is_ok() {
                            *r = Err(code);
                        }
                    }
                }
            }
        }
    }
    let topics = results
        .into_iter()
        .map(|(name, ps)| {
            OffsetCommitResponseTopic::default()
                .with_name(topic_name(&name))
                .with_partitions(
                    ps.into_iter()
                        .map(|(p, r)| {
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(p)
                                .with_error_code(r.err().unwrap_or(0))
                        })
                        .collect(),
                )
        })
        .collect();
    frame.respond(&OffsetCommitResponse::default().with_topics(topics))
}

/// One group's committed offsets for the asked partitions (all when `topics` is `None`).
/// With `require_stable` (KIP-447), a partition with a commit pending (a transaction not
/// ended, or a commit being written) answers UNSTABLE_OFFSET_COMMIT, and the consumer asks
/// again.
fn fetch_offsets(
    state: &BrokerState,
    frame: &Frame,
    group: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
    require_stable: bool,
    member: Option<(&str, i32)>,
) -> Result<Fetched, i16> {
    if let Some(error) = group_denied(state, frame, group, acl::code::DESCRIBE) {
        return Err(error);
    }
    state.groups.route(group)?;
    // Topics the principal may not DESCRIBE: refused when named, left out otherwise.
    let described = |t: &str| super::allowed(state, frame, acl::code::DESCRIBE, Resource::Topic(t));
    let (offsets, unstable) = state
        .groups
        .with_existing(group, |e| {
            // v9: a KIP-848 member names itself and its epoch, which must be current.
            if let (Some(c), Some((id, epoch))) = (&e.consumer, member) {
                c.check_member(id, epoch, &[])?;
            }
            Ok::<_, i16>((e.offsets.clone(), e.unstable()))
        })
        .transpose()?
        .unwrap_or_default();
    let answer = |t: &str, p: i32, c: Option<Committed>| {
        if !described(t) {
            (p, None, acl::code::TOPIC_AUTHORIZATION_FAILED)
        } else if require_stable && unstable.contains(&(t.to_owned(), p)) {
            (p, None, UNSTABLE_OFFSET_COMMIT)
        } else {
            (p, c, 0)
        }
    };
    Ok(match topics {
        Some(ts) => ts
            .into_iter()
            .map(|(t, ps)| {
                let found = ps
                    .into_iter()
                    .map(|p| answer(&t, p, offsets.get(&(t.clone(), p)).cloned()))
                    .collect();
                (t, found)
            })
            .collect(),
        None => {
            let mut by_topic: Fetched = Vec::new();
            for ((t, p), c) in offsets.into_iter().filter(|((t, _), _)| described(t)) {
                let found = answer(&t, p, Some(c));
                match by_topic.last_mut() {
                    Some((name, ps)) if *name == t => ps.push(found),
                    _ => by_topic.push((t, vec![found])),
                }
            }
            by_topic
        }
    })
}

pub(super) async fn offset_fetch(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: OffsetFetchRequest = frame.decode()?;
    let value = |c: &Option<Committed>| {
        c.as_ref().map_or((-1, -1, Some(String::new())), |c| {
            (c.offset, c.leader_epoch, c.metadata.clone())
        })
    };
    if frame.version >= 8 {
        let groups = req
            .groups
            .iter()
            .map(|g| {
                let topics = g.topics.as_ref().map(|ts| {
                    ts.iter()
                        .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                        .collect()
                });
                let resp = OffsetFetchResponseGroup::default().with_group_id(g.group_id.clone());
                let member = g.member_id.as_deref().map(|m| (m, g.member_epoch));
                let group = g.group_id.0.as_str();
                match fetch_offsets(state, frame, group, topics, req.require_stable, member) {
                    Err(e) => resp.with_error_code(e),
                    Ok(found) => resp.with_topics(
                        found
                            .into_iter()
                            .map(|(t, ps)| {
                                OffsetFetchResponseTopics::default()
                                    .with_name(topic_name(&t))
                                    .with_partitions(
                                        ps.iter()
                                            .map(|(p, c, error)| {
                                                let (o, e, m) = value(c);
                                                OffsetFetchResponsePartitions::default()
                                                    .with_partition_index(*p)
                                                    .with_error_code(*error)
                                                    .with_committed_offset(o)
                                                    .with_committed_leader_epoch(e)
                                                    .with_metadata(m.as_deref().map(str_bytes))
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    ),
                }
            })
            .collect();
        return frame.respond(&OffsetFetchResponse::default().with_groups(groups));
    }
    let topics = req.topics.as_ref().map(|ts| {
        ts.iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
            .collect()
    });
    let group = req.group_id.0.as_str();
    let resp = match fetch_offsets(state, frame, group, topics, req.require_stable, None) {
        // v1 has no top-level error: it is repeated on every partition asked for.
        Err(e) if frame.version < 2 => OffsetFetchResponse::default().with_topics(
            req.topics
                .iter()
                .flatten()
                .map(|t| {
                    OffsetFetchResponseTopic::default()
                        .with_name(t.name.clone())
                        .with_partitions(
                            t.partition_indexes
                                .iter()
                                .map(|p| {
                                    OffsetFetchResponsePartition::default()
                                        .with_partition_index(*p)
                                        .with_committed_offset(-1)
                                        .with_error_code(e)
                                })
                                .collect(),
                        )
                })
                .collect(),
        ),
        Err(e) => OffsetFetchResponse::default().with_error_code(e),
        Ok(found) => OffsetFetchResponse::default().with_topics(
            found
                .into_iter()
                .map(|(t, ps)| {
                    OffsetFetchResponseTopic::default()
                        .with_name(topic_name(&t))
                        .with_partitions(
                            ps.iter()
                                .map(|(p, c, error)| {
                                    let (o, e, m) = value(c);
                                    OffsetFetchResponsePartition::default()
                                        .with_partition_index(*p)
                                        .with_error_code(*error)
                                        .with_committed_offset(o)
                                        .with_committed_leader_epoch(e)
                                        .with_metadata(m.as_deref().map(str_bytes))
                                })
                                .collect(),
                        )
                })
                .collect(),
        ),
    };
    frame.respond(&resp)
}
