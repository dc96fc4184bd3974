//! The ACL matrix: with `kafka.authorization.enable`, each API allows or denies a SCRAM
//! user as the ACLs say: literal and prefixed patterns, allow and deny (deny wins), `User:*`,
//! hosts, implied operations, super users, and topics a user may not describe are invisible
//! in Metadata. ACLs are managed with stratactl's calls; the main listener is trusted.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ConsumerGroupHeartbeatRequest, CreateTopicsRequest, DescribeClusterRequest, JoinGroupRequest,
    MetadataRequest,
};
use kafka_protocol::messages::{GroupId, TopicName};
use kafka_protocol::protocol::StrBytes;
use strata_broker::config::{ListenerConfig, SecurityProtocol};
use strata_client::acls::{Acl, AclFilter};
use strata_client::security::{Sasl, Security};
use strata_client::{Client, ClientError, NewRecord};
use strata_tests::TestBroker;

const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
const GROUP_AUTHORIZATION_FAILED: i16 = 30;
const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;

fn code(e: &ClientError) -> Option<i16> {
    match e {
        ClientError::Broker { code, .. } => Some(*code),
        ClientError::Delivery(inner) => code(inner),
        _ => None,
    }
}

fn acl(kind: &str, name: &str, pattern: &str, who: &str, op: &str, permission: &str) -> Acl {
    Acl {
        resource_type: kind.into(),
        resource_name: name.into(),
        pattern_type: pattern.into(),
        principal: who.into(),
        host: "*".into(),
        operation: op.into(),
        permission: permission.into(),
    }
}

fn record() -> NewRecord {
    NewRecord {
        value: Some(Bytes::from_static(b"v")),
        ..NewRecord::default()
    }
}

async fn as_user(broker: &TestBroker, user: &str) -> Client {
    let security = Security {
        tls: None,
        sasl: Some(Sasl {
            mechanism: "SCRAM-SHA-512".into(),
            username: user.into(),
            password: format!("{user}-secret"),
        }),
    };
    let addr = broker.listener("INTERNAL").to_string();
    Client::connect_secured(&addr, Duration::from_secs(10), security)
        .await
        .unwrap_or_else(|e| panic!("{user}: {e}"))
}

/// The topics Metadata shows `client` when it asks for all of them.
async fn visible(client: &Client) -> Vec<String> {
    let m = client
        .connection()
        .send(&MetadataRequest::default().with_topics(None))
        .await
        .expect("metadata");
    let mut names: Vec<String> = m
        .topics
        .iter()
        .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
        .filter(|n| !n.starts_with("__"))
        .collect();
    names.sort();
    names
}

/// The error Metadata answers for `topic` when named.
async fn named(client: &Client, topic: &str) -> i16 {
    let req = MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
            TopicName(StrBytes::from_string(topic.to_owned())),
        ))]));
    let m = client.connection().send(&req).await.expect("metadata");
    m.topics[0].error_code
}

async fn join_error(client: &Client, group: &str) -> i16 {
    let req = JoinGroupRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_owned())))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_protocol_type(StrBytes::from_static_str("consumer"))
        .with_protocols(vec![
            JoinGroupRequestProtocol::default().with_name(StrBytes::from_static_str("range")),
        ]);
    client
        .connection()
        .send(&req)
        .await
        .expect("join")
        .error_code
}

/// The error a joining ConsumerGroupHeartbeat gets, subscribing to `topic`.
async fn heartbeat_error(client: &Client, group: &str, topic: &str) -> i16 {
    let req = ConsumerGroupHeartbeatRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_owned())))
        .with_member_id(StrBytes::from_string(format!("{group}-{topic}")))
        .with_member_epoch(0)
        .with_rebalance_timeout_ms(10_000)
        .with_subscribed_topic_names(Some(vec![TopicName(StrBytes::from_string(
            topic.to_owned(),
        ))]));
    let resp = client.connection().send(&req).await.expect("heartbeat");
    resp.error_code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_api_allows_or_denies_as_the_acls_say() {
    let broker = TestBroker::start_with(|c| {
        c.kafka.listeners = vec![ListenerConfig {
            name: "INTERNAL".into(),
            listen: "127.0.0.1:0".into(),
            advertised: None,
            security_protocol: Some(SecurityProtocol::SaslPlaintext),
            client_auth: None,
        }];
        c.kafka.sasl.mechanisms = vec!["SCRAM-SHA-512".into()];
        c.kafka.authorization.enable = true;
        c.kafka.authorization.super_users = vec!["User:admin".into()];
        c.groups.initial_rebalance_delay_ms = 0;
    })
    .await;
    // The trusted main listener bootstraps users and topics.
    let local = Client::connect(&broker.bootstrap()).await.expect("local");
    for user in ["admin", "alice", "bob"] {
        local
            .set_scram_password(user, "SCRAM-SHA-512", &format!("{user}-secret"), 4096)
            .await
            .expect("user");
    }
    for topic in ["orders", "logs-app", "logs-secret", "payroll"] {
        local
            .create_topic(topic, 1, -1, &BTreeMap::new())
            .await
            .expect("topic");
        local
            .produce(topic, 0, &[record()], -1)
            .await
            .expect("seed");
    }
    let admin = as_user(&broker, "admin").await;
    let alice = as_user(&broker, "alice").await;
    let bob = as_user(&broker, "bob").await;
    // Nothing granted: closed (allow_everyone_if_no_acl_found is off), super user open.
    assert_eq!(visible(&alice).await, Vec::<String>::new());
    assert_eq!(
        visible(&admin).await,
        ["logs-app", "logs-secret", "orders", "payroll"]
    );
    let grant = [acl(
        "topic",
        "orders",
        "literal",
        "User:alice",
        "all",
        "allow",
    )];
    let denied = alice.create_acls(&grant).await;
    assert!(denied.is_err(), "only ALTER on the cluster creates ACLs");
    // The super user grants.
    admin
        .create_acls(&[
            acl("topic", "orders", "literal", "User:alice", "write", "allow"),
            acl("topic", "orders", "literal", "User:alice", "read", "allow"),
            acl("topic", "logs-", "prefixed", "User:*", "read", "allow"),
            acl("topic", "logs-secret", "literal", "User:bob", "all", "deny"),
            acl("group", "alice-", "prefixed", "User:alice", "read", "allow"),
            acl(
                "topic", "payroll", "literal", "User:bob", "describe", "allow",
            ),
        ])
        .await
        .expect("create ACLs");
    let listed = admin
        .describe_acls(&AclFilter {
            principal: Some("User:alice".into()),
            ..AclFilter::default()
        })
        .await
        .expect("describe ACLs");
    assert_eq!(listed.len(), 3, "{listed:?}");
    // Metadata shows what each may describe (READ and WRITE imply DESCRIBE); a named topic
    // it may not describe is TOPIC_AUTHORIZATION_FAILED.
    assert_eq!(visible(&alice).await, ["logs-app", "logs-secret", "orders"]);
    assert_eq!(visible(&bob).await, ["logs-app", "payroll"]);
    assert_eq!(named(&alice, "payroll").await, TOPIC_AUTHORIZATION_FAILED);
    assert_eq!(named(&bob, "payroll").await, 0);
    // Produce: WRITE.
    alice
        .produce("orders", 0, &[record()], -1)
        .await
        .expect("alice writes orders");
    let e = bob
        .produce("orders", 0, &[record()], -1)
        .await
        .expect_err("bob may not");
    assert_eq!(code(&e), Some(TOPIC_AUTHORIZATION_FAILED), "{e}");
    // Fetch: READ; the deny on logs-secret wins over User:*'s prefixed allow for bob.
    alice
        .fetch("orders", 0, 0, 1 << 20, 100)
        .await
        .expect("alice reads orders");
    bob.fetch("logs-app", 0, 0, 1 << 20, 100)
        .await
        .expect("bob reads logs-app");
    alice
        .fetch("logs-secret", 0, 0, 1 << 20, 100)
        .await
        .expect("alice reads logs-secret");
    let e = bob
        .fetch("logs-secret", 0, 0, 1 << 20, 100)
        .await
        .expect_err("deny wins");
    assert_eq!(code(&e), Some(TOPIC_AUTHORIZATION_FAILED), "{e}");
    let e = bob
        .fetch("payroll", 0, 0, 1 << 20, 100)
        .await
        .expect_err("DESCRIBE is not READ");
    assert_eq!(code(&e), Some(TOPIC_AUTHORIZATION_FAILED), "{e}");
    // ListOffsets: DESCRIBE.
    bob.list_offset("payroll", 0, -1)
        .await
        .expect("bob lists payroll offsets");
    // Groups: READ on the group (prefixed for alice), and READ on the topic to commit.
    assert_eq!(
        join_error(&alice, "alice-readers").await,
        79,
        "MEMBER_ID_REQUIRED: admitted"
    );
    assert_eq!(
        join_error(&alice, "other").await,
        GROUP_AUTHORIZATION_FAILED
    );
    assert_eq!(
        join_error(&bob, "alice-readers").await,
        GROUP_AUTHORIZATION_FAILED
    );
    let offsets = [(("orders".to_owned(), 0), 1)].into_iter().collect();
    alice
        .commit_offsets("alice-readers", &offsets)
        .await
        .expect("alice commits");
    let e = alice
        .commit_offsets("other", &offsets)
        .await
        .expect_err("not her group");
    assert_eq!(code(&e), Some(GROUP_AUTHORIZATION_FAILED), "{e}");
    // KIP-848 members: READ on the group, DESCRIBE on each subscribed topic.
    assert_eq!(heartbeat_error(&alice, "alice-new", "orders").await, 0);
    assert_eq!(
        heartbeat_error(&alice, "alice-new", "payroll").await,
        TOPIC_AUTHORIZATION_FAILED
    );
    assert_eq!(
        heartbeat_error(&bob, "alice-new", "payroll").await,
        GROUP_AUTHORIZATION_FAILED
    );
    // Topic administration: CREATE on the cluster or topic, DELETE, DESCRIBE_CONFIGS.
    let create = CreateTopicsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![
            CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("alice-new")))
                .with_num_partitions(1)
                .with_replication_factor(1),
        ]);
    let r = alice
        .connection()
        .send(&create)
        .await
        .expect("create topics");
    assert_eq!(r.topics[0].error_code, TOPIC_AUTHORIZATION_FAILED);
    let e = alice.delete_topic("orders").await.expect_err("no DELETE");
    assert!(e.to_string().contains("TopicAuthorizationFailed"), "{e}");
    let e = alice
        .describe_topic("orders")
        .await
        .expect_err("no DESCRIBE_CONFIGS");
    assert!(e.to_string().contains("TopicAuthorizationFailed"), "{e}");
    admin
        .create_acls(&[acl(
            "topic",
            "orders",
            "literal",
            "User:alice",
            "alter-configs",
            "allow",
        )])
        .await
        .expect("grant");
    alice
        .describe_topic("orders")
        .await
        .expect("ALTER_CONFIGS implies DESCRIBE_CONFIGS");
    // Cluster APIs: DESCRIBE / ALTER on the cluster.
    let d = alice
        .connection()
        .send(&DescribeClusterRequest::default())
        .await
        .expect("describe cluster");
    assert_eq!(d.error_code, CLUSTER_AUTHORIZATION_FAILED);
    assert!(alice.describe_scram(None).await.is_err());
    assert!(admin.describe_scram(None).await.is_ok());
    // A host-specific ACL applies to that host only.
    admin
        .create_acls(&[Acl {
            host: "10.9.9.9".into(),
            ..acl("topic", "payroll", "literal", "User:bob", "read", "allow")
        }])
        .await
        .expect("host ACL");
    let e = bob
        .fetch("payroll", 0, 0, 1 << 20, 100)
        .await
        .expect_err("not from 10.9.9.9");
    assert_eq!(code(&e), Some(TOPIC_AUTHORIZATION_FAILED), "{e}");
    // A deny added later wins over alice's allow; removing it restores her reads.
    let deny = acl("topic", "orders", "literal", "User:alice", "read", "deny");
    admin
        .create_acls(std::slice::from_ref(&deny))
        .await
        .expect("deny");
    let e = alice
        .fetch("orders", 0, 0, 1 << 20, 100)
        .await
        .expect_err("denied");
    assert_eq!(code(&e), Some(TOPIC_AUTHORIZATION_FAILED), "{e}");
    let removed = admin
        .delete_acls(&AclFilter {
            resource_type: Some("topic".into()),
            resource_name: Some("orders".into()),
            pattern_type: Some("literal".into()),
            principal: Some("User:alice".into()),
            operation: Some("read".into()),
            permission: Some("deny".into()),
            ..AclFilter::default()
        })
        .await
        .expect("delete");
    assert_eq!(removed, 1);
    alice
        .fetch("orders", 0, 0, 1 << 20, 100)
        .await
        .expect("allowed again");
    // Client quotas: DESCRIBE_CONFIGS and ALTER_CONFIGS on the cluster.
    let alice_quota = BTreeMap::from([("user".to_string(), Some("alice".to_string()))]);
    let rate = [("producer_byte_rate".to_string(), Some(1_000_000.0))];
    let e = alice
        .describe_quotas(&Default::default())
        .await
        .expect_err("no DESCRIBE_CONFIGS on the cluster");
    assert!(e.to_string().contains("ClusterAuthorizationFailed"), "{e}");
    let e = alice
        .alter_quotas(&alice_quota, &rate)
        .await
        .expect_err("no ALTER_CONFIGS on the cluster");
    assert!(e.to_string().contains("ClusterAuthorizationFailed"), "{e}");
    admin
        .create_acls(&[acl(
            "cluster",
            "kafka-cluster",
            "literal",
            "User:alice",
            "alter-configs",
            "allow",
        )])
        .await
        .expect("grant");
    alice
        .alter_quotas(&alice_quota, &rate)
        .await
        .expect("ALTER_CONFIGS on the cluster");
    assert_eq!(
        alice
            .describe_quotas(&Default::default())
            .await
            .expect("ALTER_CONFIGS implies DESCRIBE_CONFIGS")
            .len(),
        1
    );
    // The trusted main listener is not bound by ACLs.
    local
        .produce("payroll", 0, &[record()], -1)
        .await
        .expect("local admin");
}
