//! ACLs: CreateAcls, DescribeAcls and DeleteAcls, with Kafka's names for resource types,
//! pattern types, operations and permissions.

use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::{CreateAclsRequest, DeleteAclsRequest, DescribeAclsRequest};
use kafka_protocol::protocol::StrBytes;

use crate::{Client, ClientError, refused};

/// One ACL, by Kafka's names: `topic`/`group`/`cluster`/`transactional-id`,
/// `literal`/`prefixed`, `User:alice`, a host or `*`, an operation (`read`, `write`, `all`,
/// ...), `allow`/`deny`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl {
    pub resource_type: String,
    pub resource_name: String,
    pub pattern_type: String,
    pub principal: String,
    pub host: String,
    pub operation: String,
    pub permission: String,
}

const RESOURCE_TYPES: &[(&str, i8)] = &[
    ("any", 1),
    ("topic", 2),
    ("group", 3),
    ("cluster", 4),
    ("transactional-id", 5),
];
const PATTERN_TYPES: &[(&str, i8)] = &[("any", 1), ("match", 2), ("literal", 3), ("prefixed", 4)];
const OPERATIONS: &[(&str, i8)] = &[
    ("any", 1),
    ("all", 2),
    ("read", 3),
    ("write", 4),
    ("create", 5),
    ("delete", 6),
    ("alter", 7),
    ("describe", 8),
    ("cluster-action", 9),
    ("describe-configs", 10),
    ("alter-configs", 11),
    ("idempotent-write", 12),
];
const PERMISSIONS: &[(&str, i8)] = &[("any", 1), ("deny", 2), ("allow", 3)];

fn code(table: &[(&str, i8)], what: &str, name: &str) -> Result<i8, ClientError> {
    let wanted = name.to_ascii_lowercase().replace('_', "-");
    table
        .iter()
        .find(|(n, _)| *n == wanted)
        .map(|(_, c)| *c)
        .ok_or_else(|| {
            let names: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
            ClientError::NotApplicable(format!(
                "{what} {name:?} is not one of {}",
                names.join(", ")
            ))
        })
}

fn name(table: &[(&str, i8)], code: i8) -> String {
    table
        .iter()
        .find(|(_, c)| *c == code)
        .map_or_else(|| code.to_string(), |(n, _)| (*n).to_owned())
}

fn s(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_owned())
}

/// What a DescribeAcls or DeleteAcls matches: `None` fields match anything.
#[derive(Clone, Debug, Default)]
pub struct AclFilter {
    pub resource_type: Option<String>,
    pub resource_name: Option<String>,
    pub pattern_type: Option<String>,
    pub principal: Option<String>,
    pub host: Option<String>,
    pub operation: Option<String>,
    pub permission: Option<String>,
}

impl AclFilter {
    fn codes(&self) -> Result<(i8, i8, i8, i8), ClientError> {
        let or_any = |v: &Option<String>| v.clone().unwrap_or_else(|| "any".into());
        Ok((
            code(
                RESOURCE_TYPES,
                "resource type",
                &or_any(&self.resource_type),
            )?,
            code(PATTERN_TYPES, "pattern type", &or_any(&self.pattern_type))?,
            code(OPERATIONS, "operation", &or_any(&self.operation))?,
            code(PERMISSIONS, "permission", &or_any(&self.permission))?,
        ))
    }
}

impl Client {
    /// Adds `acls`.
    pub async fn create_acls(&self, acls: &[Acl]) -> Result<(), ClientError> {
        let creations = acls
            .iter()
            .map(|a| {
                Ok(AclCreation::default()
                    .with_resource_type(code(RESOURCE_TYPES, "resource type", &a.resource_type)?)
                    .with_resource_name(s(&a.resource_name))
                    .with_resource_pattern_type(code(
                        PATTERN_TYPES,
                        "pattern type",
                        &a.pattern_type,
                    )?)
                    .with_principal(s(&a.principal))
                    .with_host(s(&a.host))
                    .with_operation(code(OPERATIONS, "operation", &a.operation)?)
                    .with_permission_type(code(PERMISSIONS, "permission", &a.permission)?))
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        let resp = self
            .connection()
            .send(&CreateAclsRequest::default().with_creations(creations))
            .await?;
        for r in resp.results {
            if r.error_code != 0 {
                return Err(refused("CreateAcls", r.error_code, r.error_message));
            }
        }
        Ok(())
    }

    /// The ACLs `filter` matches.
    pub async fn describe_acls(&self, filter: &AclFilter) -> Result<Vec<Acl>, ClientError> {
        let (kind, pattern, op, permission) = filter.codes()?;
        let req = DescribeAclsRequest::default()
            .with_resource_type_filter(kind)
            .with_resource_name_filter(filter.resource_name.as_deref().map(s))
            .with_pattern_type_filter(pattern)
            .with_principal_filter(filter.principal.as_deref().map(s))
            .with_host_filter(filter.host.as_deref().map(s))
            .with_operation(op)
            .with_permission_type(permission);
        let resp = self.connection().send(&req).await?;
        if resp.error_code != 0 {
            return Err(refused("DescribeAcls", resp.error_code, resp.error_message));
        }
        Ok(resp
            .resources
            .iter()
            .flat_map(|r| {
                r.acls.iter().map(move |a| Acl {
                    resource_type: name(RESOURCE_TYPES, r.resource_type),
                    resource_name: r.resource_name.to_string(),
                    pattern_type: name(PATTERN_TYPES, r.pattern_type),
                    principal: a.principal.to_string(),
                    host: a.host.to_string(),
                    operation: name(OPERATIONS, a.operation),
                    permission: name(PERMISSIONS, a.permission_type),
                })
            })
            .collect())
    }

    /// Removes the ACLs `filter` matches; returns how many went.
    pub async fn delete_acls(&self, filter: &AclFilter) -> Result<usize, ClientError> {
        let (kind, pattern, op, permission) = filter.codes()?;
        let f = DeleteAclsFilter::default()
            .with_resource_type_filter(kind)
            .with_resource_name_filter(filter.resource_name.as_deref().map(s))
            .with_pattern_type_filter(pattern)
            .with_principal_filter(filter.principal.as_deref().map(s))
            .with_host_filter(filter.host.as_deref().map(s))
            .with_operation(op)
            .with_permission_type(permission);
        let resp = self
            .connection()
            .send(&DeleteAclsRequest::default().with_filters(vec![f]))
            .await?;
        let mut removed = 0;
        for r in resp.filter_results {
            if r.error_code != 0 {
                return Err(refused("DeleteAcls", r.error_code, r.error_message));
            }
            removed += r.matching_acls.len();
        }
        Ok(removed)
    }
}
