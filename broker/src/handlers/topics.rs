//! DeleteTopics, CreatePartitions, ElectLeaders and partition reassignments.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::TopicName;
use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, BrokerId,
    CreatePartitionsRequest, CreatePartitionsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    ElectLeadersRequest, ElectLeadersResponse, ListPartitionReassignmentsRequest,
    ListPartitionReassignmentsResponse,
};
use kafka_protocol::protocol::StrBytes;
use strata_controller::Command;
use strata_controller::Outcome;
use uuid::Uuid;

use super::admin::{dry_run, submit_and_wait};
use super::{str_bytes, topic_name};
use crate::protocol::{Frame, FrameError};
use crate::security::acl::{self, Resource};
use crate::state::BrokerState;

pub(super) async fn delete_topics(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: DeleteTopicsRequest = frame.decode()?;
    // v6 names topics by name or id in `topics`; earlier versions by name in `topic_names`.
    let wanted: Vec<(Option<String>, Uuid)> = if frame.version >= 6 {
        req.topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id))
            .collect()
    } else {
        req.topic_names
            .iter()
            .map(|n| (Some(n.0.to_string()), Uuid::nil()))
            .collect()
    };
    let mut responses = Vec::with_capacity(wanted.len());
    for (name, id) in wanted {
        let image = state.image();
        let topic = match &name {
            Some(n) => image.topics.get(n),
            None => image.topic_by_id(id),
        };
        let result = DeletableTopicResult::default()
            .with_name(
                name.as_deref()
                    .or(topic.map(|t| t.name.as_str()))
                    .map(topic_name),
            )
            .with_topic_id(topic.map_or(id, |t| t.id));
        let named = name.as_deref().or(topic.map(|t| t.name.as_str()));
        if let Some(n) = named
            && !super::allowed(state, frame, acl::code::DELETE, Resource::Topic(n))
        {
            responses.push(result.with_error_code(ResponseError::TopicAuthorizationFailed.code()));
            continue;
        }
        let Some(topic) = topic else {
            let code = if name.is_some() {
                ResponseError::UnknownTopicOrPartition
            } else {
                ResponseError::UnknownTopicId
            };
            responses.push(result.with_error_code(code.code()));
            continue;
        };
        let command = Command::DeleteTopic {
            name: topic.name.clone(),
        };
        responses.push(match submit_and_wait(state, &command).await {
            Ok(_) => {
                state.tiering.forget_topic(topic, &state.image()).await;
                result
            }
            Err((code, msg)) => result
                .with_error_code(code.code())
                .with_error_message(Some(str_bytes(&msg))),
        });
    }
    frame.respond(&DeleteTopicsResponse::default().with_responses(responses))
}

pub(super) async fn create_partitions(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: CreatePartitionsRequest = frame.decode()?;
    let mut results = Vec::with_capacity(req.topics.len());
    for t in &req.topics {
        let result = CreatePartitionsTopicResult::default().with_name(t.name.clone());
        let outcome = if !super::allowed(state, frame, acl::code::ALTER, Resource::Topic(&t.name.0))
        {
            Err((
                ResponseError::TopicAuthorizationFailed,
                "ALTER on the topic is needed".to_owned(),
            ))
        } else if t.assignments.is_some() {
            Err((
                ResponseError::InvalidRequest,
                "manual replica assignment is not supported".to_owned(),
            ))
        } else {
            let command = Command::CreatePartitions {
                topic: t.name.0.to_string(),
                count: t.count,
            };
            if req.validate_only {
                dry_run(state, &command).map(|_| ())
            } else {
                submit_and_wait(state, &command).await.map(|_| ())
            }
        };
        results.push(match outcome {
            Ok(()) => result,
            Err((code, msg)) => result
                .with_error_code(code.code())
                .with_error_message(Some(str_bytes(&msg))),
        });
    }
    frame.respond(&CreatePartitionsResponse::default().with_results(results))
}

/// Per-partition answers `(topic, partition, error code, message)` as a response's topic
/// entries, built by `partition` and `topic`, topics in name order.
fn grouped<P, T>(
    answers: Vec<(String, i32, i16, Option<String>)>,
    partition: impl Fn(i32, i16, Option<StrBytes>) -> P,
    topic: impl Fn(TopicName, Vec<P>) -> T,
) -> Vec<T> {
    let mut by_topic: std::collections::BTreeMap<String, Vec<P>> = Default::default();
    for (t, p, code, message) in answers {
        let message = message.as_deref().map(str_bytes);
        by_topic
            .entry(t)
            .or_default()
            .push(partition(p, code, message));
    }
    by_topic
        .into_iter()
        .map(|(t, partitions)| topic(topic_name(&t), partitions))
        .collect()
}

/// ElectLeaders through the controller. Preferred elections (type 0, and v0): each named
/// partition is answered with success when its preferred replica now leads by this
/// election, ELECTION_NOT_NEEDED when it already did, PREFERRED_LEADER_NOT_AVAILABLE when
/// that replica is down or out of sync. Unclean elections (type 1, the operator's explicit
/// choice) give a leaderless partition a live replica even from outside the ISR: success,
/// ELECTION_NOT_NEEDED when it has a leader, ELIGIBLE_LEADERS_NOT_AVAILABLE when no replica is
/// live. No partitions named means every partition, answered for those that moved.
pub(super) async fn elect_leaders(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: ElectLeadersRequest = frame.decode()?;
    if !super::allowed(state, frame, acl::code::ALTER, Resource::Cluster) {
        return frame.respond(
            &ElectLeadersResponse::default()
                .with_error_code(ResponseError::ClusterAuthorizationFailed.code()),
        );
    }
    let image = state.image();
    // (topic, partition, error, message) per answer; `wanted` goes to the controller.
    let mut answers: Vec<(String, i32, i16, Option<String>)> = Vec::new();
    let mut wanted = Vec::new();
    let named = req.topic_partitions.is_some();
    for t in req.topic_partitions.iter().flatten() {
        let topic = t.topic.0.to_string();
        for p in &t.partitions {
            let exists = image
                .topics
                .get(&topic)
                .is_some_and(|r| usize::try_from(*p).is_ok_and(|i| i < r.partitions.len()));
            if !matches!(req.election_type, 0 | 1) {
                let message = format!("unknown election type {}", req.election_type);
                answers.push((
                    topic.clone(),
                    *p,
                    ResponseError::InvalidRequest.code(),
                    Some(message),
                ));
            } else if exists {
                wanted.push((topic.clone(), *p));
            } else {
                let code = ResponseError::UnknownTopicOrPartition.code();
                answers.push((topic.clone(), *p, code, None));
            }
        }
    }
    let mut elected = Vec::new();
    let unclean = req.election_type == 1;
    if matches!(req.election_type, 0 | 1) && (!named || !wanted.is_empty()) {
        let command = Command::ElectLeaders {
            partitions: named.then(|| wanted.clone()),
            unclean,
        };
        match submit_and_wait(state, &command).await {
            Ok(applied) => {
                if let Outcome::LeadersElected { elected: e } = applied.outcome {
                    elected = e;
                }
            }
            Err((code, message)) => {
                for (topic, p) in wanted.drain(..) {
                    answers.push((topic, p, code.code(), Some(message.clone())));
                }
            }
        }
    }
    let image = state.image();
    for (topic, p, _) in &elected {
        if !named {
            answers.push((topic.clone(), *p, 0, None));
        }
    }
    for (topic, p) in wanted {
        let code = if elected.iter().any(|(t, i, _)| *t == topic && *i == p) {
            0
        } else {
            let record = image
                .topics
                .get(&topic)
                .and_then(|t| t.partitions.get(usize::try_from(p).unwrap_or(usize::MAX)));
            match record {
                Some(r) if unclean && r.leader.is_some() => ResponseError::ElectionNotNeeded.code(),
                Some(_) if unclean => ResponseError::EligibleLeadersNotAvailable.code(),
                Some(r) if r.leader.is_some() && r.leader == r.replicas.first().copied() => {
                    ResponseError::ElectionNotNeeded.code()
                }
                _ => ResponseError::PreferredLeaderNotAvailable.code(),
            }
        };
        answers.push((topic, p, code, None));
    }
    let results = grouped(
        answers,
        |p, code, message| {
            PartitionResult::default()
                .with_partition_id(p)
                .with_error_code(code)
                .with_error_message(message)
        },
        |topic, partitions| {
            ReplicaElectionResult::default()
                .with_topic(topic)
                .with_partition_result(partitions)
        },
    );
    frame.respond(&ElectLeadersResponse::default().with_replica_election_results(results))
}

/// AlterPartitionReassignments: starts, replaces or cancels (null replicas) reassignments
/// through the controller (`Command::AlterReassignments`); each partition is answered on its
/// own. With v1's `allow_replication_factor_change` false, a target of another size is
/// refused.
pub(super) async fn alter_partition_reassignments(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: AlterPartitionReassignmentsRequest = frame.decode()?;
    if !super::allowed(state, frame, acl::code::ALTER, Resource::Cluster) {
        return frame.respond(
            &AlterPartitionReassignmentsResponse::default()
                .with_error_code(ResponseError::ClusterAuthorizationFailed.code()),
        );
    }
    let allow_resize = frame.version < 1 || req.allow_replication_factor_change;
    let image = state.image();
    // (topic, partition, error, message) of what is refused here.
    let mut answers: Vec<(String, i32, i16, Option<String>)> = Vec::new();
    let mut changes = Vec::new();
    for t in &req.topics {
        let topic = t.name.0.to_string();
        for p in &t.partitions {
            let target: Option<Vec<i32>> =
                p.replicas.as_ref().map(|r| r.iter().map(|b| b.0).collect());
            let current = image
                .topics
                .get(&topic)
                .and_then(|r| r.partitions.get(usize::try_from(p.partition_index).ok()?));
            let resized = match (&target, current) {
                (Some(target), Some(c)) => target.len() != c.original_replicas().len(),
                _ => false,
            };
            if resized && !allow_resize {
                let message = "the target changes the replication factor".to_owned();
                let code = ResponseError::InvalidReplicationFactor.code();
                answers.push((topic.clone(), p.partition_index, code, Some(message)));
            } else {
                changes.push((topic.clone(), p.partition_index, target));
            }
        }
    }
    let command = Command::AlterReassignments {
        changes: changes.clone(),
    };
    let refused = if changes.is_empty() {
        Ok(Vec::new())
    } else {
        submit_and_wait(state, &command)
            .await
            .map(|a| match a.outcome {
                Outcome::ReassignmentsAltered { refused } => refused,
                _ => Vec::new(),
            })
    };
    for (topic, p, _) in changes {
        let (code, message) = match &refused {
            Ok(refused) => refused
                .iter()
                .find(|(t, i, _)| *t == topic && *i == p)
                .map_or((0, None), |(_, _, e)| {
                    (
                        crate::protocol::command_error_code(e).code(),
                        Some(e.to_string()),
                    )
                }),
            Err((code, message)) => (code.code(), Some(message.clone())),
        };
        answers.push((topic, p, code, message));
    }
    let responses = grouped(
        answers,
        |p, code, message| {
            ReassignablePartitionResponse::default()
                .with_partition_index(p)
                .with_error_code(code)
                .with_error_message(message)
        },
        |topic, partitions| {
            ReassignableTopicResponse::default()
                .with_name(topic)
                .with_partitions(partitions)
        },
    );
    frame.respond(
        &AlterPartitionReassignmentsResponse::default()
            .with_allow_replication_factor_change(req.allow_replication_factor_change)
            .with_responses(responses),
    )
}

/// ListPartitionReassignments: the reassignments in progress, of the partitions named or of
/// all, from this broker's metadata.
pub(super) async fn list_partition_reassignments(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: ListPartitionReassignmentsRequest = frame.decode()?;
    if !super::allowed(state, frame, acl::code::DESCRIBE, Resource::Cluster) {
        return frame.respond(
            &ListPartitionReassignmentsResponse::default()
                .with_error_code(ResponseError::ClusterAuthorizationFailed.code()),
        );
    }
    let image = state.image();
    let wanted: Option<std::collections::BTreeSet<(String, i32)>> = req.topics.as_ref().map(|ts| {
        ts.iter()
            .flat_map(|t| {
                let name = t.name.0.to_string();
                t.partition_indexes.iter().map(move |p| (name.clone(), *p))
            })
            .collect()
    });
    let brokers = |ids: &[i32]| ids.iter().map(|b| BrokerId(*b)).collect::<Vec<_>>();
    let topics = image
        .topics
        .values()
        .filter_map(|t| {
            let partitions: Vec<OngoingPartitionReassignment> = t
                .partitions
                .iter()
                .enumerate()
                .filter(|(i, p)| {
                    p.reassigning()
                        && wanted
                            .as_ref()
                            .is_none_or(|w| w.contains(&(t.name.clone(), *i as i32)))
                })
                .map(|(i, p)| {
                    OngoingPartitionReassignment::default()
                        .with_partition_index(i as i32)
                        .with_replicas(brokers(&p.replicas))
                        .with_adding_replicas(brokers(&p.adding))
                        .with_removing_replicas(brokers(&p.removing))
                })
                .collect();
            (!partitions.is_empty()).then(|| {
                OngoingTopicReassignment::default()
                    .with_name(topic_name(&t.name))
                    .with_partitions(partitions)
            })
        })
        .collect();
    frame.respond(&ListPartitionReassignmentsResponse::default().with_topics(topics))
}
