//! Consumer groups: listing, describing, and reading and committing their offsets. Each call
//! goes to the group's coordinator, found with FindCoordinator.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::{
    ConsumerGroupDescribeRequest, ConsumerProtocolAssignment, DescribeGroupsRequest,
    FindCoordinatorRequest, GroupId, ListGroupsRequest, OffsetCommitRequest, OffsetFetchRequest,
};
use kafka_protocol::protocol::{Decodable, StrBytes};

use crate::{Client, ClientError, Connection, check, name};

/// Kafka's GROUP_ID_NOT_FOUND: DescribeGroups' answer for a KIP-848 group.
const GROUP_ID_NOT_FOUND: i16 = 69;

/// A group as ListGroups reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupListing {
    /// Its id.
    pub id: String,
    /// Its state (`Stable`, `Empty`, …).
    pub state: String,
    /// Its protocol type (`consumer` for Kafka consumers).
    pub protocol_type: String,
}

/// A member of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMember {
    /// Its member id.
    pub id: String,
    /// The client id it connected with.
    pub client_id: String,
    /// Where it connected from.
    pub host: String,
    /// Partitions assigned to it, by topic (consumer groups only).
    pub assignment: BTreeMap<String, Vec<i32>>,
}

/// A group as DescribeGroups (or, for a KIP-848 group, ConsumerGroupDescribe) reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDescription {
    /// Its id.
    pub id: String,
    /// `classic`, or `consumer` for a KIP-848 group (`group.protocol=consumer`).
    pub group_type: String,
    /// Its state.
    pub state: String,
    /// Its protocol type.
    pub protocol_type: String,
    /// The assignor chosen (`range`, `cooperative-sticky`, …; a KIP-848 group's server-side
    /// `uniform` or `range`).
    pub protocol: String,
    /// Its members.
    pub members: Vec<GroupMember>,
}

/// Committed offsets of a group by (topic, partition).
pub type GroupOffsets = BTreeMap<(String, i32), i64>;

impl Client {
    /// The connection to the coordinator of `key`: a group (key type 0) or a transactional
    /// id (key type 1).
    async fn coordinator(&self, key: &str, key_type: i8) -> Result<Arc<Connection>, ClientError> {
        let conn = self.any_conn().await?;
        let req = FindCoordinatorRequest::default().with_key_type(key_type);
        let req = if conn.version_for::<FindCoordinatorRequest>()? >= 4 {
            req.with_coordinator_keys(vec![StrBytes::from_string(key.to_owned())])
        } else {
            req.with_key(StrBytes::from_string(key.to_owned()))
        };
        let resp = conn.send(&req).await?;
        let kind = if key_type == 0 {
            "group"
        } else {
            "transactional id"
        };
        let what = format!("finding the coordinator of {kind} {key}");
        let (id, host, port) = match resp.coordinators.first() {
            Some(c) => {
                check(what, c.error_code)?;
                (c.node_id.0, c.host.to_string(), c.port)
            }
            None => {
                check(what, resp.error_code)?;
                (resp.node_id.0, resp.host.to_string(), resp.port)
            }
        };
        self.node(id, &format!("{host}:{port}")).await
    }

    /// Runs `op` against `group`'s coordinator (see [`Self::at_coordinator_of`]).
    async fn at_coordinator<T, F, Fut>(&self, group: &str, op: F) -> Result<T, ClientError>
    where
        F: Fn(Arc<Connection>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        self.at_coordinator_of(group, 0, op).await
    }

    /// Runs `op` against the coordinator of `key` (of `key_type`, as FindCoordinator takes
    /// it), looking the coordinator up again for up to 10 s while it is loading the key's
    /// partition or has moved (COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE,
    /// NOT_COORDINATOR), as Kafka's admin clients do.
    pub(crate) async fn at_coordinator_of<T, F, Fut>(
        &self,
        key: &str,
        key_type: i8,
        op: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(Arc<Connection>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        use kafka_protocol::ResponseError as E;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let result = match self.coordinator(key, key_type).await {
                Ok(conn) => op(conn).await,
                Err(e) => Err(e),
            };
            let moving = matches!(&result, Err(ClientError::Broker { code, .. })
                if [E::CoordinatorLoadInProgress, E::CoordinatorNotAvailable, E::NotCoordinator]
                    .iter()
                    .any(|e| e.code() == *code));
            if !moving || std::time::Instant::now() >= deadline {
                return result;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Groups on every broker, sorted by id.
    pub async fn list_groups(&self) -> Result<Vec<GroupListing>, ClientError> {
        let (brokers, _) = self.cluster().await?;
        let mut out = Vec::new();
        for b in brokers {
            let conn = self.node(b.id, &format!("{}:{}", b.host, b.port)).await?;
            let resp = conn.send(&ListGroupsRequest::default()).await?;
            check(
                format!("listing groups on broker {}", b.id),
                resp.error_code,
            )?;
            out.extend(resp.groups.iter().map(|g| GroupListing {
                id: g.group_id.0.to_string(),
                state: g.group_state.to_string(),
                protocol_type: g.protocol_type.to_string(),
            }));
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out.dedup_by(|a, b| a.id == b.id);
        Ok(out)
    }

    /// A group's state and members; a group nobody knows comes back `Dead` with no members.
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription, ClientError> {
        self.at_coordinator(group, |conn| self.describe_group_at(conn, group))
            .await
    }

    async fn describe_group_at(
        &self,
        conn: Arc<Connection>,
        group: &str,
    ) -> Result<GroupDescription, ClientError> {
        let req = DescribeGroupsRequest::default()
            .with_groups(vec![GroupId(StrBytes::from_string(group.to_owned()))]);
        let resp = conn.send(&req).await?;
        let g = resp
            .groups
            .first()
            .ok_or_else(|| ClientError::Decode("DescribeGroups answered nothing".into()))?;
        // Kafka's answer for a KIP-848 group: describe it with ConsumerGroupDescribe.
        if g.error_code == GROUP_ID_NOT_FOUND
            && conn.version_for::<ConsumerGroupDescribeRequest>().is_ok()
        {
            return self.describe_consumer_group_at(conn, group).await;
        }
        check(format!("describing group {group}"), g.error_code)?;
        let consumer = g.protocol_type.as_str() == "consumer";
        Ok(GroupDescription {
            id: group.to_owned(),
            group_type: "classic".to_owned(),
            state: g.group_state.to_string(),
            protocol_type: g.protocol_type.to_string(),
            protocol: g.protocol_data.to_string(),
            members: g
                .members
                .iter()
                .map(|m| GroupMember {
                    id: m.member_id.to_string(),
                    client_id: m.client_id.to_string(),
                    host: m.client_host.to_string(),
                    assignment: if consumer {
                        assignment(m.member_assignment.clone())
                    } else {
                        BTreeMap::new()
                    },
                })
                .collect(),
        })
    }

    async fn describe_consumer_group_at(
        &self,
        conn: Arc<Connection>,
        group: &str,
    ) -> Result<GroupDescription, ClientError> {
        let req = ConsumerGroupDescribeRequest::default()
            .with_group_ids(vec![GroupId(StrBytes::from_string(group.to_owned()))]);
        let resp = conn.send(&req).await?;
        let g = resp
            .groups
            .first()
            .ok_or_else(|| ClientError::Decode("ConsumerGroupDescribe answered nothing".into()))?;
        check(format!("describing group {group}"), g.error_code)?;
        Ok(GroupDescription {
            id: group.to_owned(),
            group_type: "consumer".to_owned(),
            state: g.group_state.to_string(),
            protocol_type: "consumer".to_owned(),
            protocol: g.assignor_name.to_string(),
            members: g
                .members
                .iter()
                .map(|m| GroupMember {
                    id: m.member_id.to_string(),
                    client_id: m.client_id.to_string(),
                    host: m.client_host.to_string(),
                    assignment: m
                        .assignment
                        .topic_partitions
                        .iter()
                        .map(|t| (t.topic_name.0.to_string(), t.partitions.clone()))
                        .collect(),
                })
                .collect(),
        })
    }

    /// The offsets `group` committed, for every topic.
    pub async fn committed_offsets(&self, group: &str) -> Result<GroupOffsets, ClientError> {
        self.at_coordinator(group, |conn| self.committed_offsets_at(conn, group))
            .await
    }

    /// [`Self::committed_offsets`], with the address of the coordinator that answered.
    pub async fn committed_offsets_from(
        &self,
        group: &str,
    ) -> Result<(GroupOffsets, String), ClientError> {
        self.at_coordinator(group, |conn| async move {
            let addr = conn.addr().to_owned();
            Ok((self.committed_offsets_at(conn, group).await?, addr))
        })
        .await
    }

    async fn committed_offsets_at(
        &self,
        conn: Arc<Connection>,
        group: &str,
    ) -> Result<GroupOffsets, ClientError> {
        let gid = GroupId(StrBytes::from_string(group.to_owned()));
        // Null topics ask for all; from v8 the group and its topics sit in `groups`.
        let req = if conn.version_for::<OffsetFetchRequest>()? >= 8 {
            OffsetFetchRequest::default().with_groups(vec![
                OffsetFetchRequestGroup::default()
                    .with_group_id(gid)
                    .with_topics(None),
            ])
        } else {
            OffsetFetchRequest::default()
                .with_group_id(gid)
                .with_topics(None)
        };
        let resp = conn.send(&req).await?;
        let what = format!("reading offsets of group {group}");
        // (topic, partition, offset, error) from either response shape (two codec types
        // with the same fields).
        macro_rules! flatten {
            ($topics:expr) => {
                $topics
                    .iter()
                    .flat_map(|t| {
                        t.partitions.iter().map(move |p| {
                            let name = t.name.0.to_string();
                            (name, p.partition_index, p.committed_offset, p.error_code)
                        })
                    })
                    .collect::<Vec<_>>()
            };
        }
        let (code, found) = match resp.groups.first() {
            Some(g) => (g.error_code, flatten!(g.topics)),
            None => (resp.error_code, flatten!(resp.topics)),
        };
        check(what.clone(), code)?;
        let mut out = GroupOffsets::new();
        for (topic, partition, offset, code) in found {
            check(what.clone(), code)?;
            if offset >= 0 {
                out.insert((topic, partition), offset);
            }
        }
        Ok(out)
    }

    /// Commits `offsets` for `group` from outside the group protocol, as admin tools do:
    /// the coordinator accepts it only while the group has no members.
    pub async fn commit_offsets(
        &self,
        group: &str,
        offsets: &GroupOffsets,
    ) -> Result<(), ClientError> {
        let mut topics: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
        for ((topic, p), offset) in offsets {
            topics.entry(topic).or_default().push(
                OffsetCommitRequestPartition::default()
                    .with_partition_index(*p)
                    .with_committed_offset(*offset)
                    .with_committed_leader_epoch(-1),
            );
        }
        let req = OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_owned())))
            .with_generation_id_or_member_epoch(-1)
            .with_retention_time_ms(-1)
            .with_topics(
                topics
                    .into_iter()
                    .map(|(t, partitions)| {
                        OffsetCommitRequestTopic::default()
                            .with_name(name(t))
                            .with_partitions(partitions)
                    })
                    .collect(),
            );
        self.at_coordinator(group, |conn| {
            let req = &req;
            async move { commit_answer(group, &conn.send(req).await?) }
        })
        .await
    }
}

/// The outcome of an admin OffsetCommit.
fn commit_answer(
    group: &str,
    resp: &kafka_protocol::messages::OffsetCommitResponse,
) -> Result<(), ClientError> {
    for t in &resp.topics {
        for p in &t.partitions {
            if p.error_code == kafka_protocol::ResponseError::UnknownMemberId.code() {
                return Err(ClientError::Broker {
                    what: format!(
                        "committing offsets of group {group}: it has active members; \
                         stop its consumers first"
                    ),
                    code: p.error_code,
                });
            }
            check(
                format!(
                    "committing {}/{} for group {group}",
                    t.name.0, p.partition_index
                ),
                p.error_code,
            )?;
        }
    }
    Ok(())
}

/// A consumer member's assignment (ConsumerProtocolAssignment: a version, then the body);
/// empty when it does not decode.
fn assignment(mut bytes: Bytes) -> BTreeMap<String, Vec<i32>> {
    if bytes.len() < 2 {
        return BTreeMap::new();
    }
    let version = i16::from_be_bytes([bytes[0], bytes[1]]);
    let _ = bytes.split_to(2);
    ConsumerProtocolAssignment::decode(&mut bytes, version.clamp(0, 3))
        .map(|a| {
            a.assigned_partitions
                .iter()
                .map(|tp| (tp.topic.0.to_string(), tp.partitions.clone()))
                .collect()
        })
        .unwrap_or_default()
}
