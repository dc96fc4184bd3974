//! KIP-848 consumer groups: ConsumerGroupHeartbeat and ConsumerGroupDescribe, over
//! [`crate::group::consumer`].

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::consumer_group_describe_response::{
    Assignment as DescribedAssignment, DescribedGroup, Member, TopicPartitions as DescribedTopic,
};
use kafka_protocol::messages::consumer_group_heartbeat_response::{
    Assignment, TopicPartitions as AssignedTopic,
};
use kafka_protocol::messages::{
    ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, ConsumerGroupHeartbeatRequest,
    ConsumerGroupHeartbeatResponse,
};
use strata_controller::MetadataImage;

use super::{str_bytes, topic_name};
use crate::group::assignor::TopicPartitions;
use crate::group::code;
use crate::group::consumer::Heartbeat;
use crate::protocol::{Frame, FrameError};
use crate::security::acl::{self, Requester, Resource};
use crate::state::BrokerState;

pub(super) async fn consumer_group_heartbeat(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: ConsumerGroupHeartbeatRequest = frame.decode()?;
    let group = req.group_id.0.to_string();
    if let Some(e) = super::groups::group_denied(state, frame, &group, acl::code::READ) {
        return frame.respond(
            &ConsumerGroupHeartbeatResponse::default()
                .with_error_code(e)
                .with_member_epoch(-1),
        );
    }
    // A member may subscribe only to topics it may describe (as in Kafka).
    let hidden: Vec<&str> = req
        .subscribed_topic_names
        .iter()
        .flatten()
        .map(|t| t.0.as_str())
        .filter(|t| !super::allowed(state, frame, acl::code::DESCRIBE, Resource::Topic(t)))
        .collect();
    if !hidden.is_empty() {
        let message = format!("not authorized to describe topics {}", hidden.join(", "));
        return frame.respond(
            &ConsumerGroupHeartbeatResponse::default()
                .with_error_code(acl::code::TOPIC_AUTHORIZATION_FAILED)
                .with_error_message(Some(str_bytes(&message)))
                .with_member_epoch(-1),
        );
    }
    let mut member_id = req.member_id.to_string();
    // Version 0 lets the coordinator name a joining member; from version 1 the member
    // names itself (KIP-1082).
    if member_id.is_empty() && frame.version == 0 && req.member_epoch == 0 {
        member_id = uuid::Uuid::new_v4().to_string();
    }
    let owned = req.topic_partitions.as_ref().map(|ts| {
        let mut owned = TopicPartitions::new();
        for t in ts.iter().filter(|t| !t.partitions.is_empty()) {
            owned
                .entry(t.topic_id)
                .or_default()
                .extend(t.partitions.iter().copied());
        }
        owned
    });
    let hb = Heartbeat {
        member_id,
        member_epoch: req.member_epoch,
        instance_id: req.instance_id.as_ref().map(|s| s.to_string()),
        rack: req.rack_id.as_ref().map(|s| s.to_string()),
        rebalance_timeout_ms: req.rebalance_timeout_ms,
        topics: req
            .subscribed_topic_names
            .as_ref()
            .map(|ts| ts.iter().map(|t| t.0.to_string()).collect()),
        regex: req.subscribed_topic_regex.as_ref().map(|s| s.to_string()),
        assignor: req.server_assignor.as_ref().map(|s| s.to_string()),
        owned,
        client_id: frame.header.client_id.as_deref().unwrap_or("").to_owned(),
        client_host: String::new(),
        requester: Some(Requester::of(&frame.session)),
    };
    let resp = match state.groups.consumer_heartbeat(&group, hb).await {
        Ok(reply) => {
            let interval = state.groups.config.consumer.heartbeat_interval;
            ConsumerGroupHeartbeatResponse::default()
                .with_member_id(Some(str_bytes(&reply.member_id)))
                .with_member_epoch(reply.member_epoch)
                .with_heartbeat_interval_ms(interval.as_millis().min(i32::MAX as u128) as i32)
                .with_assignment(reply.assignment.map(|a| {
                    Assignment::default().with_topic_partitions(
                        a.into_iter()
                            .map(|(t, ps)| {
                                AssignedTopic::default()
                                    .with_topic_id(t)
                                    .with_partitions(ps.into_iter().collect())
                            })
                            .collect(),
                    )
                }))
        }
        Err(refusal) => ConsumerGroupHeartbeatResponse::default()
            .with_error_code(refusal.code)
            .with_error_message((!refusal.message.is_empty()).then(|| str_bytes(&refusal.message)))
            .with_member_epoch(-1),
    };
    frame.respond(&resp)
}

/// Partitions by topic id, as ConsumerGroupDescribe lists them (with names).
fn described(image: &MetadataImage, tps: &TopicPartitions) -> DescribedAssignment {
    DescribedAssignment::default().with_topic_partitions(
        tps.iter()
            .map(|(t, ps)| {
                let name = image.topic_by_id(*t).map_or("", |r| r.name.as_str());
                DescribedTopic::default()
                    .with_topic_id(*t)
                    .with_topic_name(topic_name(name))
                    .with_partitions(ps.iter().copied().collect())
            })
            .collect(),
    )
}

pub(super) async fn consumer_group_describe(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: ConsumerGroupDescribeRequest = frame.decode()?;
    let image = state.image();
    let settings = &state.groups.config.consumer;
    let groups = req
        .group_ids
        .iter()
        .map(|g| {
            let id = g.0.to_string();
            let out = DescribedGroup::default().with_group_id(g.clone());
            if let Some(e) = super::groups::group_denied(state, frame, &id, acl::code::DESCRIBE) {
                return out.with_error_code(e);
            }
            if let Err(e) = state.groups.route(&id) {
                return out.with_error_code(e);
            }
            let not_found = |out: DescribedGroup| {
                out.clone()
                    .with_error_code(code::GROUP_ID_NOT_FOUND)
                    .with_error_message(Some(str_bytes(&format!(
                        "group {id} is not a consumer group"
                    ))))
                    .with_group_state(str_bytes("Dead"))
            };
            state
                .groups
                .with_existing(&id, |e| {
                    let Some(c) = &e.consumer else {
                        return not_found(out.clone());
                    };
                    let members = c
                        .members()
                        .map(|m| {
                            Member::default()
                                .with_member_id(str_bytes(&m.id))
                                .with_instance_id(m.instance_id.as_deref().map(str_bytes))
                                .with_rack_id(m.rack.as_deref().map(str_bytes))
                                .with_member_epoch(m.epoch)
                                .with_client_id(str_bytes(&m.client_id))
                                .with_client_host(str_bytes(&m.client_host))
                                .with_subscribed_topic_names(
                                    m.topics.iter().map(|t| topic_name(t)).collect(),
                                )
                                .with_subscribed_topic_regex(m.regex.as_deref().map(str_bytes))
                                .with_assignment(described(&image, &m.assigned))
                                .with_target_assignment(described(&image, &c.target_of(&m.id)))
                                // KIP-1099: 0 a classic member, 1 a consumer one.
                                .with_member_type(match (frame.version, &m.classic) {
                                    (0, _) => -1,
                                    (_, Some(_)) => 0,
                                    (_, None) => 1,
                                })
                        })
                        .collect();
                    out.clone()
                        .with_group_state(str_bytes(c.state()))
                        .with_group_epoch(c.epoch())
                        .with_assignment_epoch(c.assignment_epoch())
                        .with_assignor_name(str_bytes(c.assignor(settings)))
                        .with_members(members)
                        .with_authorized_operations(i32::MIN)
                })
                .unwrap_or_else(|| not_found(out))
        })
        .collect();
    frame.respond(&ConsumerGroupDescribeResponse::default().with_groups(groups))
}
