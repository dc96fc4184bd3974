//! Group administration: ListGroups, DescribeGroups, DeleteGroups and OffsetDelete.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{
    DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
    GroupId, ListGroupsRequest, ListGroupsResponse, OffsetDeleteRequest, OffsetDeleteResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::{str_bytes, topic_name};
use crate::group::code;
use crate::group::machine::{Phase, code as proto};
use crate::group::store::Write;
use crate::protocol::{Frame, FrameError, storage_error_code};
use crate::security::acl::{self, Resource};
use crate::state::BrokerState;

pub(super) async fn list_groups(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: ListGroupsRequest = frame.decode()?;
    let wanted = |filter: &[StrBytes], value: &str| {
        filter.is_empty()
            || filter
                .iter()
                .any(|s| s.as_str().eq_ignore_ascii_case(value))
    };
    // DESCRIBE on the cluster lists every group; otherwise those the principal may describe.
    let all = super::allowed(state, frame, acl::code::DESCRIBE, Resource::Cluster);
    let groups = state
        .groups
        .list()
        .into_iter()
        .filter(|g| {
            (all || super::allowed(state, frame, acl::code::DESCRIBE, Resource::Group(&g.id)))
                && wanted(&req.states_filter, g.state)
                && wanted(&req.types_filter, g.kind)
                && state.groups.route(&g.id).is_ok()
        })
        .map(|g| {
            ListedGroup::default()
                .with_group_id(GroupId(str_bytes(&g.id)))
                .with_protocol_type(str_bytes(g.protocol_type.as_deref().unwrap_or("")))
                .with_group_state(str_bytes(g.state))
                .with_group_type(str_bytes(g.kind))
        })
        .collect();
    frame.respond(&ListGroupsResponse::default().with_groups(groups))
}

pub(super) async fn describe_groups(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: DescribeGroupsRequest = frame.decode()?;
    let groups = req
        .groups
        .iter()
        .map(|g| {
            let id = g.0.to_string();
            let described = DescribedGroup::default().with_group_id(g.clone());
            if let Some(e) = super::groups::group_denied(state, frame, &id, acl::code::DESCRIBE) {
                return described.with_error_code(e);
            }
            if let Err(e) = state.groups.route(&id) {
                return described.with_error_code(e);
            }
            state
                .groups
                .with_existing(&id, |e| {
                    if e.consumer.is_some() {
                        // Kafka's answer: ConsumerGroupDescribe describes these. (No
                        // error message: the versions implemented here have none.)
                        return described
                            .clone()
                            .with_error_code(code::GROUP_ID_NOT_FOUND)
                            .with_group_state(str_bytes("Dead"));
                    }
                    let group = &e.group;
                    let protocol = group.protocol().unwrap_or("").to_owned();
                    let stable = matches!(group.phase(), Phase::Stable);
                    described
                        .clone()
                        .with_group_state(str_bytes(group.phase().kafka_name()))
                        .with_protocol_type(str_bytes(group.protocol_type().unwrap_or("")))
                        .with_protocol_data(str_bytes(&protocol))
                        .with_members(
                            group
                                .members()
                                .map(|m| {
                                    let metadata = m
                                        .protocols
                                        .iter()
                                        .find(|(n, _)| *n == protocol)
                                        .map(|(_, b)| Bytes::from(b.clone()))
                                        .unwrap_or_default();
                                    DescribedGroupMember::default()
                                        .with_member_id(str_bytes(&m.id))
                                        .with_group_instance_id(
                                            m.instance_id.as_deref().map(str_bytes),
                                        )
                                        .with_client_id(str_bytes(&m.client_id))
                                        .with_client_host(str_bytes(&m.client_host))
                                        .with_member_metadata(metadata)
                                        .with_member_assignment(if stable {
                                            Bytes::from(m.assignment.clone())
                                        } else {
                                            Bytes::new()
                                        })
                                })
                                .collect(),
                        )
                })
                // Kafka describes an unknown group as Dead with no members.
                .unwrap_or_else(|| described.with_group_state(str_bytes("Dead")))
        })
        .collect();
    frame.respond(&DescribeGroupsResponse::default().with_groups(groups))
}

pub(super) async fn delete_groups(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: DeleteGroupsRequest = frame.decode()?;
    let mut results = Vec::with_capacity(req.groups_names.len());
    for g in &req.groups_names {
        let id = g.0.to_string();
        let result = DeletableGroupResult::default().with_group_id(g.clone());
        if let Some(e) = super::groups::group_denied(state, frame, &id, acl::code::DELETE) {
            results.push(result.with_error_code(e));
            continue;
        }
        let (part, epoch) = match state.groups.route(&id) {
            Ok(r) => r,
            Err(e) => {
                results.push(result.with_error_code(e));
                continue;
            }
        };
        let check = state.groups.with_existing(&id, |e| {
            if e.is_empty() {
                Ok(e.offsets.keys().cloned().collect::<Vec<_>>())
            } else {
                Err(proto::NON_EMPTY_GROUP)
            }
        });
        let offsets = match check {
            None => {
                results.push(result.with_error_code(code::GROUP_ID_NOT_FOUND));
                continue;
            }
            Some(Err(e)) => {
                results.push(result.with_error_code(e));
                continue;
            }
            Some(Ok(o)) => o,
        };
        let mut writes: Vec<Write> = offsets
            .into_iter()
            .map(|(topic, partition)| Write::Offset {
                group: id.clone(),
                topic,
                partition,
                value: None,
            })
            .collect();
        writes.push(Write::Group {
            group: id.clone(),
            value: None,
        });
        writes.push(Write::ConsumerGroup {
            group: id.clone(),
            value: None,
        });
        let done = state
            .groups
            .persist_then(part, epoch, &id, writes, |_| ())
            .await;
        results.push(match done {
            Ok(()) => {
                state.groups.remove(&id);
                result
            }
            Err(e) => result.with_error_code(storage_error_code(&e).code()),
        });
    }
    frame.respond(&DeleteGroupsResponse::default().with_results(results))
}

pub(super) async fn offset_delete(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: OffsetDeleteRequest = frame.decode()?;
    let id = req.group_id.0.to_string();
    if let Some(e) = super::groups::group_denied(state, frame, &id, acl::code::DELETE) {
        return frame.respond(&OffsetDeleteResponse::default().with_error_code(e));
    }
    let (part, epoch) = match state.groups.route(&id) {
        Ok(r) => r,
        Err(e) => return frame.respond(&OffsetDeleteResponse::default().with_error_code(e)),
    };
    // Offsets of an active group are in use; Kafka refuses those of subscribed topics, Strata
    // (which does not read the consumer protocol) refuses while the group has members.
    let active = state
        .groups
        .with_existing(&id, |e| !e.is_empty())
        .unwrap_or(false);
    if active {
        return frame
            .respond(&OffsetDeleteResponse::default().with_error_code(proto::NON_EMPTY_GROUP));
    }
    let writes: Vec<Write> = req
        .topics
        .iter()
        .flat_map(|t| {
            let id = id.clone();
            t.partitions.iter().map(move |p| Write::Offset {
                group: id.clone(),
                topic: t.name.0.to_string(),
                partition: p.partition_index,
                value: None,
            })
        })
        .collect();
    let keys: Vec<(String, i32)> = req
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (t.name.0.to_string(), p.partition_index))
        })
        .collect();
    let done = state
        .groups
        .persist_then(part, epoch, &id, writes, |e| {
            for k in &keys {
                e.offsets.remove(k);
            }
        })
        .await;
    let error = match done {
        Ok(()) => 0,
        Err(e) => storage_error_code(&e).code(),
    };
    let topics = req
        .topics
        .iter()
        .map(|t| {
            OffsetDeleteResponseTopic::default()
                .with_name(topic_name(t.name.0.as_str()))
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            OffsetDeleteResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(error)
                        })
                        .collect(),
                )
        })
        .collect();
    frame.respond(&OffsetDeleteResponse::default().with_topics(topics))
}
