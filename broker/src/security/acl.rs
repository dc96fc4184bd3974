//! Authorization: Kafka's ACL model. An ACL allows or denies a principal (`User:alice`, or
//! `User:*`) from a host (or `*`) an operation on a resource: a topic, group, transactional
//! id or the cluster, named literally (`*` for every one) or by prefix. A request is
//! allowed when no DENY matches and some ALLOW does (ALLOW of READ, WRITE, DELETE or ALTER
//! implies DESCRIBE, ALTER_CONFIGS implies DESCRIBE_CONFIGS, ALL implies everything); super
//! users may do everything; a resource no ACL names is closed unless
//! `allow_everyone_if_no_acl_found`; the main listener is trusted unless
//! `trust_main_listener` is off. With authorization off every request is allowed.

use std::collections::BTreeSet;

use strata_controller::model::AclBinding;

use super::Session;
use super::config::AuthorizationConfig;

/// Kafka's codes.
pub(crate) mod code {
    pub(crate) const ANY: i8 = 1;
    // Resource types.
    pub(crate) const TOPIC: i8 = 2;
    pub(crate) const GROUP: i8 = 3;
    pub(crate) const CLUSTER: i8 = 4;
    pub(crate) const TRANSACTIONAL_ID: i8 = 5;
    // Pattern types.
    pub(crate) const MATCH: i8 = 2;
    pub(crate) const LITERAL: i8 = 3;
    pub(crate) const PREFIXED: i8 = 4;
    // Operations.
    pub(crate) const ALL: i8 = 2;
    pub(crate) const READ: i8 = 3;
    pub(crate) const WRITE: i8 = 4;
    pub(crate) const CREATE: i8 = 5;
    pub(crate) const DELETE: i8 = 6;
    pub(crate) const ALTER: i8 = 7;
    pub(crate) const DESCRIBE: i8 = 8;
    pub(crate) const CLUSTER_ACTION: i8 = 9;
    pub(crate) const DESCRIBE_CONFIGS: i8 = 10;
    pub(crate) const ALTER_CONFIGS: i8 = 11;
    pub(crate) const IDEMPOTENT_WRITE: i8 = 12;
    // Permissions.
    pub(crate) const DENY: i8 = 2;
    pub(crate) const ALLOW: i8 = 3;
    // Error codes.
    pub(crate) const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
    pub(crate) const GROUP_AUTHORIZATION_FAILED: i16 = 30;
    pub(crate) const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
    pub(crate) const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
}

/// The cluster resource's one name.
pub(crate) const CLUSTER_NAME: &str = "kafka-cluster";

/// A resource a request touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Resource<'a> {
    Topic(&'a str),
    Group(&'a str),
    Cluster,
    TransactionalId(&'a str),
}

impl Resource<'_> {
    fn kind(self) -> i8 {
        match self {
            Self::Topic(_) => code::TOPIC,
            Self::Group(_) => code::GROUP,
            Self::Cluster => code::CLUSTER,
            Self::TransactionalId(_) => code::TRANSACTIONAL_ID,
        }
    }

    fn name(&self) -> &str {
        match self {
            Self::Topic(n) | Self::Group(n) | Self::TransactionalId(n) => n,
            Self::Cluster => CLUSTER_NAME,
        }
    }
}

/// Whether an ACL's pattern covers `resource`.
fn covers(acl: &AclBinding, resource: &Resource<'_>) -> bool {
    acl.resource_type == resource.kind()
        && match acl.pattern_type {
            code::LITERAL => acl.resource_name == "*" || acl.resource_name == resource.name(),
            code::PREFIXED => resource.name().starts_with(&acl.resource_name),
            _ => false,
        }
}

/// Whether an ACL of `granted` covers `op`: exactly, through ALL, or (for ALLOW) by
/// implication.
fn grants(granted: i8, op: i8, permission: i8) -> bool {
    if granted == op || granted == code::ALL {
        return true;
    }
    permission == code::ALLOW
        && match op {
            code::DESCRIBE => matches!(
                granted,
                code::READ | code::WRITE | code::DELETE | code::ALTER
            ),
            code::DESCRIBE_CONFIGS => granted == code::ALTER_CONFIGS,
            _ => false,
        }
}

/// Whether `session` may do `op` on `resource`.
pub(crate) fn authorize(
    config: &AuthorizationConfig,
    acls: &BTreeSet<AclBinding>,
    session: &Session,
    op: i8,
    resource: Resource<'_>,
) -> bool {
    config
        .enable
        .then(|| Requester::of(session))
        .is_none_or(|who| authorize_as(config, acls, &who, op, resource))
}

/// Who asks, as ACLs see it: kept by those that decide for a client later (a consumer
/// group resolving a member's regular expression against topics it may describe).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Requester {
    pub(crate) principal: String,
    pub(crate) host: String,
    /// Came in on the trusted main listener.
    pub(crate) main_listener: bool,
}

impl Requester {
    pub(crate) fn of(session: &Session) -> Self {
        Self {
            principal: session.principal(),
            host: session.peer.ip().to_string(),
            main_listener: session.inter_broker(),
        }
    }
}

/// [`authorize`] for a requester known by name rather than by its connection.
pub(crate) fn authorize_as(
    config: &AuthorizationConfig,
    acls: &BTreeSet<AclBinding>,
    who: &Requester,
    op: i8,
    resource: Resource<'_>,
) -> bool {
    if !config.enable {
        return true;
    }
    let principal = &who.principal;
    if config.super_users.contains(principal) {
        return true;
    }
    // The main listener carries the brokers' own traffic (replica fetches, transaction
    // markers) and local administration, as Kafka's inter-broker principal does.
    if config.trust_main_listener && who.main_listener {
        return true;
    }
    let host = &who.host;
    let mut named = false;
    let mut allowed = false;
    for acl in acls.iter().filter(|a| covers(a, &resource)) {
        named = true;
        let who = acl.principal == *principal || acl.principal == "User:*";
        let from = acl.host == "*" || acl.host == *host;
        if !(who && from && grants(acl.operation, op, acl.permission)) {
            continue;
        }
        match acl.permission {
            code::DENY => return false,
            code::ALLOW => allowed = true,
            _ => {}
        }
    }
    allowed || (!named && config.allow_everyone_if_no_acl_found)
}

/// A DescribeAcls or DeleteAcls filter, with Kafka's ANY and MATCH.
#[derive(Clone, Debug)]
pub(crate) struct Filter {
    pub(crate) resource_type: i8,
    pub(crate) resource_name: Option<String>,
    pub(crate) pattern_type: i8,
    pub(crate) principal: Option<String>,
    pub(crate) host: Option<String>,
    pub(crate) operation: i8,
    pub(crate) permission: i8,
}

impl Filter {
    /// Whether `acl` matches: each field equal or the filter's ANY (null); a MATCH pattern
    /// takes the ACLs that would apply to the named resource (literal, `*` and prefixes).
    pub(crate) fn matches(&self, acl: &AclBinding) -> bool {
        let any = |f: i8, v: i8| f == code::ANY || f == v;
        let name_ok = match (&self.resource_name, self.pattern_type) {
            (None, _) => true,
            (Some(name), code::MATCH) => match acl.pattern_type {
                code::LITERAL => acl.resource_name == *name || acl.resource_name == "*",
                code::PREFIXED => name.starts_with(&acl.resource_name),
                _ => false,
            },
            (Some(name), _) => acl.resource_name == *name,
        };
        let pattern_ok = matches!(self.pattern_type, code::ANY | code::MATCH)
            || self.pattern_type == acl.pattern_type;
        any(self.resource_type, acl.resource_type)
            && name_ok
            && pattern_ok
            && self.principal.as_ref().is_none_or(|p| *p == acl.principal)
            && self.host.as_ref().is_none_or(|h| *h == acl.host)
            && any(self.operation, acl.operation)
            && any(self.permission, acl.permission)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::security::{Listener, SecurityProtocol};

    fn acl(kind: i8, name: &str, pattern: i8, who: &str, op: i8, permission: i8) -> AclBinding {
        AclBinding {
            resource_type: kind,
            resource_name: name.into(),
            pattern_type: pattern,
            principal: who.into(),
            host: "*".into(),
            operation: op,
            permission,
        }
    }

    fn session(principal: &str) -> Session {
        let listener = Arc::new(Listener {
            name: "SASL_SSL".into(),
            protocol: SecurityProtocol::SaslSsl,
            client_auth: crate::security::config::ClientAuth::None,
            inter_broker: false,
        });
        let s = Session::new(
            listener,
            std::net::SocketAddr::from(([10, 0, 0, 1], 5)),
            None,
        );
        s.set_principal(principal);
        s
    }

    #[test]
    fn kafkas_rules_decide() {
        let config = AuthorizationConfig {
            enable: true,
            super_users: vec!["User:admin".into()],
            ..AuthorizationConfig::default()
        };
        let acls: BTreeSet<AclBinding> = [
            acl(
                code::TOPIC,
                "orders",
                code::LITERAL,
                "User:alice",
                code::WRITE,
                code::ALLOW,
            ),
            acl(
                code::TOPIC,
                "logs-",
                code::PREFIXED,
                "User:*",
                code::READ,
                code::ALLOW,
            ),
            acl(
                code::TOPIC,
                "logs-secret",
                code::LITERAL,
                "User:bob",
                code::ALL,
                code::DENY,
            ),
            acl(
                code::GROUP,
                "*",
                code::LITERAL,
                "User:bob",
                code::READ,
                code::ALLOW,
            ),
        ]
        .into_iter()
        .collect();
        let can =
            |who: &str, op: i8, r: Resource<'_>| authorize(&config, &acls, &session(who), op, r);
        assert!(can("User:alice", code::WRITE, Resource::Topic("orders")));
        assert!(
            can("User:alice", code::DESCRIBE, Resource::Topic("orders")),
            "WRITE implies DESCRIBE"
        );
        assert!(!can("User:alice", code::READ, Resource::Topic("orders")));
        assert!(!can("User:bob", code::WRITE, Resource::Topic("orders")));
        assert!(
            can("User:bob", code::READ, Resource::Topic("logs-app")),
            "prefix, any user"
        );
        assert!(
            !can("User:bob", code::READ, Resource::Topic("logs-secret")),
            "deny wins"
        );
        assert!(can(
            "User:alice",
            code::READ,
            Resource::Topic("logs-secret")
        ));
        assert!(
            can("User:bob", code::READ, Resource::Group("anything")),
            "literal *"
        );
        assert!(
            !can("User:bob", code::READ, Resource::Topic("unnamed")),
            "closed by default"
        );
        assert!(
            can("User:admin", code::ALTER, Resource::Cluster),
            "super user"
        );
        let open = AuthorizationConfig {
            allow_everyone_if_no_acl_found: true,
            ..config.clone()
        };
        assert!(authorize(
            &open,
            &acls,
            &session("User:bob"),
            code::READ,
            Resource::Topic("unnamed")
        ));
        assert!(!authorize(
            &open,
            &acls,
            &session("User:bob"),
            code::WRITE,
            Resource::Topic("orders")
        ));
        let off = AuthorizationConfig {
            enable: false,
            ..config.clone()
        };
        assert!(authorize(
            &off,
            &acls,
            &session("User:bob"),
            code::WRITE,
            Resource::Topic("orders")
        ));
    }
}
