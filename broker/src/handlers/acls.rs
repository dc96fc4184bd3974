//! CreateAcls, DescribeAcls and DeleteAcls over the ACLs in the cluster metadata (see
//! [`crate::security::acl`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl,
};
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::{
    CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse,
    DescribeAclsRequest, DescribeAclsResponse,
};
use kafka_protocol::protocol::StrBytes;
use strata_controller::Command;
use strata_controller::model::AclBinding;

use super::str_bytes;
use crate::protocol::{Frame, FrameError, command_error_code};
use crate::security::acl::{CLUSTER_NAME, Filter, Resource, code};
use crate::state::BrokerState;

const INVALID_REQUEST: i16 = 42;
const NOT_CONTROLLER: i16 = 41;

/// Why an ACL cannot be stored, if it cannot.
fn invalid(acl: &AclBinding) -> Option<String> {
    if ![
        code::TOPIC,
        code::GROUP,
        code::CLUSTER,
        code::TRANSACTIONAL_ID,
    ]
    .contains(&acl.resource_type)
    {
        return Some(format!(
            "resource type {} is not supported",
            acl.resource_type
        ));
    }
    if ![code::LITERAL, code::PREFIXED].contains(&acl.pattern_type) {
        return Some("the pattern type must be LITERAL or PREFIXED".into());
    }
    if !(code::ALL..=code::IDEMPOTENT_WRITE).contains(&acl.operation) {
        return Some(format!("operation {} is not supported", acl.operation));
    }
    if ![code::DENY, code::ALLOW].contains(&acl.permission) {
        return Some("the permission must be DENY or ALLOW".into());
    }
    if acl
        .principal
        .split_once(':')
        .is_none_or(|(t, n)| t.is_empty() || n.is_empty())
    {
        return Some(format!(
            "{:?} is not a principal (User:name)",
            acl.principal
        ));
    }
    if acl.host.is_empty() || acl.resource_name.is_empty() {
        return Some("the host and the resource name must not be empty".into());
    }
    if acl.resource_type == code::CLUSTER
        && (acl.pattern_type != code::LITERAL || acl.resource_name != CLUSTER_NAME)
    {
        return Some(format!(
            "a CLUSTER ACL names the literal resource {CLUSTER_NAME}"
        ));
    }
    None
}

/// Proposes `command` and waits until this broker's metadata holds it.
pub(super) async fn submit(state: &BrokerState, command: Command) -> Result<(), (i16, String)> {
    match state.controller.submit(&command).await {
        Ok(Ok(applied)) => {
            state
                .wait_for_version(applied.version, Duration::from_secs(5))
                .await;
            Ok(())
        }
        Ok(Err(e)) => Err((command_error_code(&e).code(), e.to_string())),
        Err(e) => Err((
            NOT_CONTROLLER,
            format!("the controller did not answer: {e}"),
        )),
    }
}

pub(super) async fn create_acls(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: CreateAclsRequest = frame.decode()?;
    let allowed = super::allowed(state, frame, code::ALTER, Resource::Cluster);
    let acls: Vec<Result<AclBinding, (i16, String)>> = req
        .creations
        .iter()
        .map(|c| {
            if !allowed {
                return Err((
                    code::CLUSTER_AUTHORIZATION_FAILED,
                    "ALTER on the cluster is needed".into(),
                ));
            }
            let acl = AclBinding {
                resource_type: c.resource_type,
                resource_name: c.resource_name.to_string(),
                pattern_type: c.resource_pattern_type,
                principal: c.principal.to_string(),
                host: c.host.to_string(),
                operation: c.operation,
                permission: c.permission_type,
            };
            match invalid(&acl) {
                Some(why) => Err((INVALID_REQUEST, why)),
                None => Ok(acl),
            }
        })
        .collect();
    let valid: Vec<AclBinding> = acls
        .iter()
        .filter_map(|a| a.as_ref().ok().cloned())
        .collect();
    let stored = match valid.is_empty() {
        true => Ok(()),
        false => submit(state, Command::CreateAcls { acls: valid }).await,
    };
    let results = acls
        .into_iter()
        .map(|a| {
            let failed = match a {
                Ok(_) => stored.clone().err(),
                Err(e) => Some(e),
            };
            match failed {
                None => AclCreationResult::default(),
                Some((code, message)) => AclCreationResult::default()
                    .with_error_code(code)
                    .with_error_message(Some(str_bytes(&message))),
            }
        })
        .collect();
    frame.respond(&CreateAclsResponse::default().with_results(results))
}

fn text(s: &Option<StrBytes>) -> Option<String> {
    s.as_ref().map(|s| s.to_string())
}

/// The ACLs matching `filter`.
fn matching(state: &BrokerState, filter: &Filter) -> Vec<AclBinding> {
    state
        .image()
        .acls
        .iter()
        .filter(|a| filter.matches(a))
        .cloned()
        .collect()
}

pub(super) async fn describe_acls(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: DescribeAclsRequest = frame.decode()?;
    if !super::allowed(state, frame, code::DESCRIBE, Resource::Cluster) {
        return frame.respond(
            &DescribeAclsResponse::default()
                .with_error_code(code::CLUSTER_AUTHORIZATION_FAILED)
                .with_error_message(Some(str_bytes("DESCRIBE on the cluster is needed"))),
        );
    }
    let filter = Filter {
        resource_type: req.resource_type_filter,
        resource_name: text(&req.resource_name_filter),
        pattern_type: req.pattern_type_filter,
        principal: text(&req.principal_filter),
        host: text(&req.host_filter),
        operation: req.operation,
        permission: req.permission_type,
    };
    let mut by_resource: BTreeMap<(i8, String, i8), Vec<AclDescription>> = BTreeMap::new();
    for a in matching(state, &filter) {
        by_resource
            .entry((a.resource_type, a.resource_name.clone(), a.pattern_type))
            .or_default()
            .push(
                AclDescription::default()
                    .with_principal(str_bytes(&a.principal))
                    .with_host(str_bytes(&a.host))
                    .with_operation(a.operation)
                    .with_permission_type(a.permission),
            );
    }
    let resources = by_resource
        .into_iter()
        .map(|((kind, name, pattern), acls)| {
            DescribeAclsResource::default()
                .with_resource_type(kind)
                .with_resource_name(str_bytes(&name))
                .with_pattern_type(pattern)
                .with_acls(acls)
        })
        .collect();
    frame.respond(&DescribeAclsResponse::default().with_resources(resources))
}

pub(super) async fn delete_acls(
    state: &Arc<BrokerState>,
    frame: &Frame,
) -> Result<Bytes, FrameError> {
    let req: DeleteAclsRequest = frame.decode()?;
    let allowed = super::allowed(state, frame, code::ALTER, Resource::Cluster);
    let matched: Vec<Vec<AclBinding>> = req
        .filters
        .iter()
        .map(|f| {
            let filter = Filter {
                resource_type: f.resource_type_filter,
                resource_name: text(&f.resource_name_filter),
                pattern_type: f.pattern_type_filter,
                principal: text(&f.principal_filter),
                host: text(&f.host_filter),
                operation: f.operation,
                permission: f.permission_type,
            };
            match allowed {
                true => matching(state, &filter),
                false => Vec::new(),
            }
        })
        .collect();
    let doomed: BTreeSet<AclBinding> = matched.iter().flatten().cloned().collect();
    let removed = match doomed.is_empty() {
        true => Ok(()),
        false => {
            let acls = doomed.into_iter().collect();
            submit(state, Command::DeleteAcls { acls }).await
        }
    };
    let results = matched
        .into_iter()
        .map(|acls| {
            let result = DeleteAclsFilterResult::default();
            if !allowed {
                return result
                    .with_error_code(code::CLUSTER_AUTHORIZATION_FAILED)
                    .with_error_message(Some(str_bytes("ALTER on the cluster is needed")));
            }
            if let Err((code, message)) = &removed {
                return result
                    .with_error_code(*code)
                    .with_error_message(Some(str_bytes(message)));
            }
            result.with_matching_acls(
                acls.iter()
                    .map(|a| {
                        DeleteAclsMatchingAcl::default()
                            .with_resource_type(a.resource_type)
                            .with_resource_name(str_bytes(&a.resource_name))
                            .with_pattern_type(a.pattern_type)
                            .with_principal(str_bytes(&a.principal))
                            .with_host(str_bytes(&a.host))
                            .with_operation(a.operation)
                            .with_permission_type(a.permission)
                    })
                    .collect(),
            )
        })
        .collect();
    frame.respond(&DeleteAclsResponse::default().with_filter_results(results))
}
