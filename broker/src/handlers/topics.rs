//! DeleteTopics and CreatePartitions.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
};
use strata_controller::Command;
use uuid::Uuid;

use super::admin::{dry_run, submit_and_wait};
use super::{str_bytes, topic_name};
use crate::protocol::{Frame, FrameError};
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
        let outcome = if t.assignments.is_some() {
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
