//! DescribeConfigs, AlterConfigs and IncrementalAlterConfigs for topics (and a read-only view
//! of the broker's own settings).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, alter_configs_response,
    incremental_alter_configs_response,
};
use strata_controller::Command;
use strata_controller::topic_config::{ConfigKind, TOPIC_CONFIGS};

use super::admin::{dry_run, submit_and_wait};
use super::str_bytes;
use crate::protocol::{Frame, FrameError};
use crate::security::acl::{self, Resource};
use crate::state::BrokerState;

/// Kafka's ConfigResource types.
const TOPIC: i8 = 2;
const BROKER: i8 = 4;

/// Kafka's config sources.
const DYNAMIC_TOPIC_CONFIG: i8 = 1;
const STATIC_BROKER_CONFIG: i8 = 4;
const DEFAULT_CONFIG: i8 = 5;

/// Kafka's config types (DescribeConfigs v3+).
fn config_type(kind: ConfigKind) -> i8 {
    match kind {
        ConfigKind::Bool => 1,
        ConfigKind::Enum(_) => 2,
        ConfigKind::Int { .. } => 3,
        ConfigKind::Long { .. } => 5,
        ConfigKind::Ratio => 6,
    }
}

fn entry(
    name: &str,
    value: &str,
    source: i8,
    kind: i8,
    read_only: bool,
) -> DescribeConfigsResourceResult {
    DescribeConfigsResourceResult::default()
        .with_name(str_bytes(name))
        .with_value(Some(str_bytes(value)))
        .with_read_only(read_only)
        .with_config_source(source)
        .with_config_type(kind)
}

/// The error a principal gets when it may not do `op` on a config resource: a topic's
/// configs are the topic's to authorize, the broker's the cluster's.
fn config_denial(
    state: &BrokerState,
    frame: &Frame,
    resource_type: i8,
    name: &str,
    op: i8,
) -> Option<(ResponseError, String)> {
    let (resource, error) = match resource_type {
        TOPIC => (
            Resource::Topic(name),
            ResponseError::TopicAuthorizationFailed,
        ),
        _ => (Resource::Cluster, ResponseError::ClusterAuthorizationFailed),
    };
    (!super::allowed(state, frame, op, resource))
        .then(|| (error, "not authorized for these configs".to_owned()))
}

pub(super) async fn describe_configs(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: DescribeConfigsRequest = frame.decode()?;
    let image = state.image();
    let results = req
        .resources
        .iter()
        .map(|r| {
            let keys: Option<Vec<String>> = r
                .configuration_keys
                .as_ref()
                .map(|ks| ks.iter().map(ToString::to_string).collect());
            let wanted = |k: &str| keys.as_ref().is_none_or(|ks| ks.iter().any(|w| w == k));
            let result = DescribeConfigsResult::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone());
            let name = r.resource_name.as_str();
            let op = acl::code::DESCRIBE_CONFIGS;
            if let Some((e, _)) = config_denial(state, frame, r.resource_type, name, op) {
                return result.with_error_code(e.code());
            }
            match r.resource_type {
                TOPIC => match image.topics.get(r.resource_name.as_str()) {
                    None => result.with_error_code(ResponseError::UnknownTopicOrPartition.code()),
                    Some(t) => result.with_configs(
                        TOPIC_CONFIGS
                            .iter()
                            .filter(|d| wanted(d.name))
                            .map(|d| match t.configs.get(d.name) {
                                Some(v) => entry(
                                    d.name,
                                    v,
                                    DYNAMIC_TOPIC_CONFIG,
                                    config_type(d.kind),
                                    false,
                                ),
                                None => entry(
                                    d.name,
                                    d.default,
                                    DEFAULT_CONFIG,
                                    config_type(d.kind),
                                    false,
                                ),
                            })
                            .collect(),
                    ),
                },
                BROKER
                    if r.resource_name.as_str() == state.id.to_string()
                        || r.resource_name.is_empty() =>
                {
                    result.with_configs(
                        broker_configs(state)
                            .into_iter()
                            .filter(|(k, _, _)| wanted(k))
                            .map(|(k, v, kind)| entry(k, &v, STATIC_BROKER_CONFIG, kind, true))
                            .collect(),
                    )
                }
                BROKER => result
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(str_bytes("this broker describes only itself"))),
                _ => result
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(str_bytes("unsupported resource type"))),
            }
        })
        .collect();
    frame.respond(&DescribeConfigsResponse::default().with_results(results))
}

/// The broker settings a Kafka admin tool asks about, under Kafka's names.
fn broker_configs(state: &BrokerState) -> Vec<(&'static str, String, i8)> {
    let t = &state.config.topics;
    vec![
        ("auto.create.topics.enable", t.auto_create.to_string(), 1),
        ("num.partitions", t.default_partitions.to_string(), 3),
        (
            "default.replication.factor",
            state.default_replication_factor().to_string(),
            4,
        ),
        ("log.dirs", state.config.log_dir().display().to_string(), 2),
        ("node.id", state.id.to_string(), 3),
        (
            "socket.request.max.bytes",
            state.config.kafka.max_request_bytes.to_string(),
            3,
        ),
        (
            "connections.max.idle.ms",
            state.config.kafka.idle_timeout_ms.to_string(),
            5,
        ),
        (
            "broker.session.timeout.ms",
            state.config.controller.session_timeout_ms.to_string(),
            3,
        ),
    ]
}

/// One resource's change, as a controller command, or why it cannot be made.
fn topic_change(
    resource_type: i8,
    name: &str,
    set: BTreeMap<String, String>,
    delete: Vec<String>,
    replace: bool,
) -> Result<Command, (ResponseError, String)> {
    match resource_type {
        TOPIC => Ok(Command::AlterConfigs {
            topic: name.to_owned(),
            set,
            delete,
            replace,
        }),
        BROKER => Err((
            ResponseError::InvalidRequest,
            "broker settings are static; change the config file and restart".into(),
        )),
        _ => Err((
            ResponseError::InvalidRequest,
            "unsupported resource type".into(),
        )),
    }
}

/// [`apply`], if the principal may alter the configs of `resource` (type, name).
async fn apply_as(
    state: &BrokerState,
    frame: &Frame,
    (resource_type, name): (i8, &str),
    command: Result<Command, (ResponseError, String)>,
    validate_only: bool,
) -> Result<(), (ResponseError, String)> {
    let op = acl::code::ALTER_CONFIGS;
    match config_denial(state, frame, resource_type, name, op) {
        Some(refusal) => Err(refusal),
        None => apply(state, command, validate_only).await,
    }
}

async fn apply(
    state: &BrokerState,
    command: Result<Command, (ResponseError, String)>,
    validate_only: bool,
) -> Result<(), (ResponseError, String)> {
    let command = command?;
    if validate_only {
        dry_run(state, &command).map(|_| ())
    } else {
        submit_and_wait(state, &command).await.map(|_| ())
    }
}

pub(super) async fn alter_configs(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: AlterConfigsRequest = frame.decode()?;
    let mut responses = Vec::with_capacity(req.resources.len());
    for r in &req.resources {
        // Kafka's legacy AlterConfigs replaces the whole set: unnamed keys return to defaults.
        let set = r
            .configs
            .iter()
            .filter_map(|c| Some((c.name.to_string(), c.value.as_ref()?.to_string())))
            .collect();
        let command = topic_change(
            r.resource_type,
            r.resource_name.as_str(),
            set,
            Vec::new(),
            true,
        );
        let resource = (r.resource_type, r.resource_name.as_str());
        let outcome = apply_as(state, frame, resource, command, req.validate_only).await;
        let resp = alter_configs_response::AlterConfigsResourceResponse::default()
            .with_resource_type(r.resource_type)
            .with_resource_name(r.resource_name.clone());
        responses.push(match outcome {
            Ok(()) => resp,
            Err((code, msg)) => resp
                .with_error_code(code.code())
                .with_error_message(Some(str_bytes(&msg))),
        });
    }
    frame.respond(&AlterConfigsResponse::default().with_responses(responses))
}

pub(super) async fn incremental_alter_configs(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: IncrementalAlterConfigsRequest = frame.decode()?;
    let image = state.image();
    let mut responses = Vec::with_capacity(req.resources.len());
    for r in &req.resources {
        let current = image
            .topics
            .get(r.resource_name.as_str())
            .map(|t| t.configs.clone())
            .unwrap_or_default();
        let mut set = BTreeMap::new();
        let mut delete = Vec::new();
        let mut bad = None;
        for c in &r.configs {
            let name = c.name.to_string();
            let value = c
                .value
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            match c.config_operation {
                0 => {
                    set.insert(name, value);
                }
                1 => delete.push(name),
                // APPEND / SUBTRACT apply to list configs; cleanup.policy is the only one.
                2 | 3 if name == "cleanup.policy" => {
                    let base = set
                        .get(&name)
                        .or(current.get(&name))
                        .cloned()
                        .unwrap_or_else(|| "delete".into());
                    let mut items: Vec<String> =
                        base.split(',').map(|s| s.trim().to_owned()).collect();
                    for v in value.split(',').map(str::trim) {
                        if c.config_operation == 2 && !items.iter().any(|i| i == v) {
                            items.push(v.to_owned());
                        } else if c.config_operation == 3 {
                            items.retain(|i| i != v);
                        }
                    }
                    set.insert(name, items.join(","));
                }
                op => {
                    bad = Some((
                        ResponseError::InvalidConfig,
                        format!("operation {op} does not apply to {name}"),
                    ));
                }
            }
        }
        let command = match bad {
            Some(b) => Err(b),
            None => topic_change(
                r.resource_type,
                r.resource_name.as_str(),
                set,
                delete,
                false,
            ),
        };
        let resource = (r.resource_type, r.resource_name.as_str());
        let outcome = apply_as(state, frame, resource, command, req.validate_only).await;
        let resp = incremental_alter_configs_response::AlterConfigsResourceResponse::default()
            .with_resource_type(r.resource_type)
            .with_resource_name(r.resource_name.clone());
        responses.push(match outcome {
            Ok(()) => resp,
            Err((code, msg)) => resp
                .with_error_code(code.code())
                .with_error_message(Some(str_bytes(&msg))),
        });
    }
    frame.respond(&IncrementalAlterConfigsResponse::default().with_responses(responses))
}
