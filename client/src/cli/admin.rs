//! Administration commands: topics, the cluster, groups and tiering.

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::json;

use super::{
    AclCommand, CliError, GroupCommand, QuotaCommand, ResetArgs, TopicCommand, TransactionCommand,
    UserCommand, partitions, table,
};
use crate::Client;
use crate::groups::GroupOffsets;
use crate::logdirs::CleanerView;

pub(super) async fn topic(
    client: &Client,
    cmd: TopicCommand,
    as_json: bool,
    out: &mut impl Write,
) -> Result<(), CliError> {
    match cmd {
        TopicCommand::Create {
            name,
            partitions,
            replication,
            configs,
        } => {
            let configs: BTreeMap<String, String> = configs.into_iter().collect();
            client
                .create_topic(&name, partitions, replication, &configs)
                .await?;
            if as_json {
                writeln!(out, "{}", json!({ "created": name }))?;
            } else {
                writeln!(out, "created topic {name}")?;
            }
        }
        TopicCommand::List { internal } => {
            let topics: Vec<_> = client
                .topics()
                .await?
                .into_iter()
                .filter(|t| internal || !t.internal)
                .collect();
            if as_json {
                let list: Vec<_> = topics
                    .iter()
                    .map(|t| json!({ "name": t.name, "id": t.id, "partitions": t.partitions.len(), "internal": t.internal }))
                    .collect();
                writeln!(out, "{}", serde_json::Value::Array(list))?;
            } else {
                let rows: Vec<Vec<String>> = topics
                    .iter()
                    .map(|t| vec![t.name.clone(), t.partitions.len().to_string(), t.id.clone()])
                    .collect();
                table(out, &["TOPIC", "PARTITIONS", "ID"], &rows)?;
            }
        }
        TopicCommand::Describe { name, all_configs } => {
            let (info, configs) = client.describe_topic(&name).await?;
            let compacted = configs.iter().any(|c| {
                c.name == "cleanup.policy"
                    && c.value.as_deref().is_some_and(|v| v.contains("compact"))
            });
            // The cleaner's view, from each partition's leader (a broker that does not give
            // one, such as Kafka's, leaves it out).
            let cleaner: BTreeMap<i32, CleanerView> = match compacted {
                true => client
                    .log_dirs(&name)
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|d| Some((d.partition, d.cleaner?)))
                    .collect(),
                false => BTreeMap::new(),
            };
            let configs: Vec<_> = configs
                .into_iter()
                .filter(|c| all_configs || c.explicit)
                .collect();
            if as_json {
                let parts: Vec<_> = info
                    .partitions
                    .iter()
                    .map(|p| {
                        let mut v = json!({ "partition": p.partition, "leader": p.leader, "leader_epoch": p.leader_epoch, "replicas": p.replicas, "isr": p.isr });
                        if let Some(c) = cleaner.get(&p.partition) {
                            v["cleaner"] = json!({ "dirty_ratio": c.dirty_ratio, "cleaned_offset": c.cleaned_offset, "last_clean_ms": c.last_clean_ms });
                        }
                        v
                    })
                    .collect();
                let cfg: serde_json::Map<String, serde_json::Value> = configs
                    .iter()
                    .map(|c| (c.name.clone(), json!(c.value)))
                    .collect();
                writeln!(
                    out,
                    "{}",
                    json!({ "name": info.name, "id": info.id, "internal": info.internal, "partitions": parts, "configs": cfg })
                )?;
            } else {
                writeln!(out, "topic {}  id {}", info.name, info.id)?;
                let ids = |v: &[i32]| {
                    v.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                };
                let rows: Vec<Vec<String>> = info
                    .partitions
                    .iter()
                    .map(|p| {
                        let mut row = vec![
                            p.partition.to_string(),
                            p.leader.to_string(),
                            p.leader_epoch.to_string(),
                            ids(&p.replicas),
                            ids(&p.isr),
                        ];
                        if compacted {
                            row.extend(cleaner_columns(cleaner.get(&p.partition)));
                        }
                        row
                    })
                    .collect();
                let mut header = vec!["PARTITION", "LEADER", "EPOCH", "REPLICAS", "ISR"];
                if compacted {
                    header.extend(["DIRTY", "CLEANED-TO", "LAST-CLEAN"]);
                }
                table(out, &header, &rows)?;
                if !configs.is_empty() {
                    writeln!(out)?;
                    let rows: Vec<Vec<String>> = configs
                        .iter()
                        .map(|c| vec![c.name.clone(), c.value.clone().unwrap_or_default()])
                        .collect();
                    table(out, &["CONFIG", "VALUE"], &rows)?;
                }
            }
        }
        TopicCommand::AlterConfig { name, set, delete } => {
            if set.is_empty() && delete.is_empty() {
                return Err(CliError::Usage(
                    "nothing to change: give --set key=value or --delete key".into(),
                ));
            }
            let set: BTreeMap<String, String> = set.into_iter().collect();
            client.alter_topic_config(&name, &set, &delete).await?;
            if as_json {
                writeln!(
                    out,
                    "{}",
                    json!({ "altered": name, "set": set, "deleted": delete })
                )?;
            } else {
                for (k, v) in &set {
                    writeln!(out, "set {k}={v} on {name}")?;
                }
                for k in &delete {
                    writeln!(out, "removed {k} from {name}")?;
                }
            }
        }
        TopicCommand::Delete { name } => {
            client.delete_topic(&name).await?;
            if as_json {
                writeln!(out, "{}", json!({ "deleted": name }))?;
            } else {
                writeln!(out, "deleted topic {name}")?;
            }
        }
        TopicCommand::Reassign {
            name,
            partition,
            replicas,
            cancel,
        } => {
            let target = (!cancel).then_some(replicas);
            let results = client
                .reassign_partitions(&[(name, partition, target)])
                .await?;
            reassigned(&results, as_json, out)?;
        }
        TopicCommand::Reassignments => {
            let list = client.list_reassignments().await?;
            let ids = |v: &[i32]| v.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
            if as_json {
                let list: Vec<_> = list
                    .iter()
                    .map(|r| {
                        json!({ "topic": r.topic, "partition": r.partition,
                            "replicas": r.replicas, "adding": r.adding, "removing": r.removing })
                    })
                    .collect();
                writeln!(out, "{}", json!(list))?;
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|r| {
                        vec![
                            r.topic.clone(),
                            r.partition.to_string(),
                            ids(&r.replicas),
                            ids(&r.adding),
                            ids(&r.removing),
                        ]
                    })
                    .collect();
                table(
                    out,
                    &["TOPIC", "PARTITION", "REPLICAS", "ADDING", "REMOVING"],
                    &rows,
                )?;
            }
        }
    }
    Ok(())
}

/// Prints each reassigned partition's outcome.
fn reassigned(
    results: &[(String, i32, i16, Option<String>)],
    as_json: bool,
    out: &mut impl Write,
) -> Result<(), CliError> {
    if as_json {
        let list: Vec<_> = results
            .iter()
            .map(|(t, p, code, message)| {
                json!({ "topic": t, "partition": p, "error_code": code, "message": message })
            })
            .collect();
        writeln!(out, "{}", json!(list))?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|(t, p, code, message)| {
            let outcome = match (code, message) {
                (0, _) => "started".to_owned(),
                (c, Some(m)) => format!("{}: {m}", crate::describe_code(*c)),
                (c, None) => crate::describe_code(*c),
            };
            vec![t.clone(), p.to_string(), outcome]
        })
        .collect();
    table(out, &["TOPIC", "PARTITION", "RESULT"], &rows)?;
    Ok(())
}

/// Reassigns every replica on `broker` to the live broker holding fewest replicas that does
/// not hold one of that partition already.
pub(super) async fn decommission(
    client: &Client,
    broker: i32,
    as_json: bool,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let (brokers, _) = client.cluster().await?;
    let mut load: BTreeMap<i32, usize> = brokers
        .iter()
        .filter(|b| b.id != broker)
        .map(|b| (b.id, 0))
        .collect();
    let topics = client.topics().await?;
    for t in &topics {
        for p in &t.partitions {
            for r in &p.replicas {
                if let Some(n) = load.get_mut(r) {
                    *n += 1;
                }
            }
        }
    }
    let mut changes = Vec::new();
    for t in &topics {
        for p in &t.partitions {
            if !p.replicas.contains(&broker) {
                continue;
            }
            let Some((&to, _)) = load
                .iter()
                .filter(|(id, _)| !p.replicas.contains(id))
                .min_by_key(|(id, n)| (**n, **id))
            else {
                return Err(CliError::Usage(format!(
                    "no live broker can take {}-{}'s replica from broker {broker}",
                    t.name, p.partition
                )));
            };
            *load.entry(to).or_default() += 1;
            let target = p
                .replicas
                .iter()
                .map(|r| if *r == broker { to } else { *r })
                .collect();
            changes.push((t.name.clone(), p.partition, Some(target)));
        }
    }
    if changes.is_empty() {
        writeln!(out, "broker {broker} holds no replicas")?;
        return Ok(());
    }
    let results = client.reassign_partitions(&changes).await?;
    reassigned(&results, as_json, out)
}

pub(super) async fn acl(
    client: &Client,
    cmd: AclCommand,
    as_json: bool,
    out: &mut impl Write,
) -> Result<(), CliError> {
    match cmd {
        AclCommand::Add { acl, deny } => {
            let (Some((kind, name)), Some(principal), Some(operation)) =
                (acl.resource(), acl.principal.clone(), acl.operation.clone())
            else {
                return Err(CliError::Usage(
                    "acl add needs a resource (--topic, --group, --transactional-id or \
                     --cluster), --principal and --operation"
                        .into(),
                ));
            };
            let new = crate::acls::Acl {
                resource_type: kind.into(),
                resource_name: name,
                pattern_type: if acl.prefixed { "prefixed" } else { "literal" }.into(),
                principal,
                host: acl.host.clone().unwrap_or_else(|| "*".into()),
                operation,
                permission: if deny { "deny" } else { "allow" }.into(),
            };
            client.create_acls(std::slice::from_ref(&new)).await?;
            writeln!(
                out,
                "{} {} {} on {} {}",
                new.permission, new.principal, new.operation, new.resource_type, new.resource_name
            )?;
        }
        AclCommand::List { acl } => {
            let acls = client.describe_acls(&acl.filter()).await?;
            if as_json {
                let list: Vec<_> = acls
                    .iter()
                    .map(|a| {
                        json!({ "resource_type": a.resource_type, "resource_name": a.resource_name,
                            "pattern_type": a.pattern_type, "principal": a.principal, "host": a.host,
                            "operation": a.operation, "permission": a.permission })
                    })
                    .collect();
                writeln!(out, "{}", json!(list))?;
            } else {
                let rows: Vec<Vec<String>> = acls
                    .iter()
                    .map(|a| {
                        vec![
                            a.principal.clone(),
                            a.permission.clone(),
                            a.operation.clone(),
                            a.resource_type.clone(),
                            a.resource_name.clone(),
                            a.pattern_type.clone(),
                            a.host.clone(),
                        ]
                    })
                    .collect();
                let headers = [
                    "PRINCIPAL",
                    "PERMISSION",
                    "OPERATION",
                    "RESOURCE",
                    "NAME",
                    "PATTERN",
                    "HOST",
                ];
                table(out, &headers, &rows)?;
            }
        }
        AclCommand::Remove { acl } => {
            let removed = client.delete_acls(&acl.filter()).await?;
            writeln!(out, "{removed} ACLs removed")?;
        }
    }
    Ok(())
}

pub(super) async fn user(
    client: &Client,
    cmd: UserCommand,
    as_json: bool,
    out: &mut impl Write,
) -> Result<(), CliError> {
    match cmd {
        UserCommand::Create {
            name,
            password,
            mechanism,
            iterations,
        } => {
            client
                .set_scram_password(&name, &mechanism, &password, iterations)
                .await?;
            writeln!(out, "user {name}: {mechanism} password set")?;
        }
        UserCommand::Delete { name, mechanism } => {
            client.delete_scram(&name, &mechanism).await?;
            writeln!(out, "user {name}: {mechanism} credential removed")?;
        }
        UserCommand::List => {
            let users = client.describe_scram(None).await?;
            if as_json {
                let list: Vec<_> = users
                    .iter()
                    .map(|u| {
                        json!({ "user": u.name, "credentials": u.credentials.iter()
                        .map(|(m, i)| json!({ "mechanism": m, "iterations": i }))
                        .collect::<Vec<_>>() })
                    })
                    .collect();
                writeln!(out, "{}", json!(list))?;
            } else {
                let rows: Vec<Vec<String>> = users
                    .iter()
                    .flat_map(|u| {
                        u.credentials
                            .iter()
                            .map(|(m, i)| vec![u.name.clone(), m.clone(), i.to_string()])
                    })
                    .collect();
                table(out, &["USER", "MECHANISM", "ITERATIONS"], &rows)?;
            }
        }
    }
    Ok(())
}

pub(super) async fn quota(
    client: &Client,
    cmd: QuotaCommand,
    as_json: bool,
    out: &mut impl Write,
) -> Result<(), CliError> {
    use crate::quotas::entity_text;
    let named = |entity: &crate::quotas::QuotaEntity| {
        if entity.is_empty() {
            return Err(CliError::Usage(
                "name the entity: --user/--default-user and/or --client-id/--default-client-id, \
                 or --ip/--default-ip"
                    .into(),
            ));
        }
        Ok(())
    };
    match cmd {
        QuotaCommand::Set { entity, quotas } => {
            let entity = entity.entity();
            named(&entity)?;
            let mut ops = Vec::new();
            for q in &quotas {
                let parsed = q
                    .split_once('=')
                    .and_then(|(k, v)| Some((k.trim().to_owned(), v.trim().parse::<f64>().ok()?)));
                let Some((key, value)) = parsed else {
                    return Err(CliError::Usage(format!(
                        "{q:?} is not name=number (e.g. producer_byte_rate=1048576)"
                    )));
                };
                ops.push((key, Some(value)));
            }
            client.alter_quotas(&entity, &ops).await?;
            writeln!(out, "{}: {} set", entity_text(&entity), quotas.join(", "))?;
        }
        QuotaCommand::Remove { entity, names } => {
            let entity = entity.entity();
            named(&entity)?;
            let ops: Vec<_> = names.iter().map(|n| (n.clone(), None)).collect();
            client.alter_quotas(&entity, &ops).await?;
            writeln!(
                out,
                "{}: {} removed",
                entity_text(&entity),
                names.join(", ")
            )?;
        }
        QuotaCommand::List { entity } => {
            let quotas = client.describe_quotas(&entity.entity()).await?;
            if as_json {
                let list: Vec<_> = quotas
                    .iter()
                    .map(|q| json!({ "entity": q.entity, "quotas": q.values }))
                    .collect();
                writeln!(out, "{}", json!(list))?;
            } else {
                let rows: Vec<Vec<String>> = quotas
                    .iter()
                    .flat_map(|q| {
                        q.values
                            .iter()
                            .map(|(k, v)| vec![entity_text(&q.entity), k.clone(), v.to_string()])
                    })
                    .collect();
                table(out, &["ENTITY", "QUOTA", "VALUE"], &rows)?;
            }
        }
    }
    Ok(())
}

pub(super) async fn cluster(
    client: &Client,
    as_json: bool,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let (brokers, controller) = client.cluster().await?;
    if as_json {
        let list: Vec<_> = brokers
            .iter()
            .map(|b| json!({ "id": b.id, "host": b.host, "port": b.port, "rack": b.rack }))
            .collect();
        writeln!(
            out,
            "{}",
            json!({ "brokers": list, "controller": controller })
        )?;
    } else {
        let rows: Vec<Vec<String>> = brokers
            .iter()
            .map(|b| {
                vec![
                    b.id.to_string(),
                    format!("{}:{}", b.host, b.port),
                    if b.id == controller { "yes" } else { "" }.to_owned(),
                    b.rack.clone().unwrap_or_default(),
                ]
            })
            .collect();
        table(out, &["BROKER", "ADDRESS", "CONTROLLER", "RACK"], &rows)?;
    }
    Ok(())
}

pub(super) async fn elect_leaders(
    client: &Client,
    only: Option<&[(String, i32)]>,
    unclean: bool,
    as_json: bool,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let results = client.elect_leaders(only, unclean).await?;
    let outcome = |code: i16| match code {
        0 => "elected".to_owned(),
        c => crate::describe_code(c),
    };
    if as_json {
        let list: Vec<_> = results
            .iter()
            .map(|(t, p, code)| json!({ "topic": t, "partition": p, "error_code": code }))
            .collect();
        writeln!(out, "{}", json!(list))?;
    } else {
        let rows: Vec<Vec<String>> = results
            .iter()
            .map(|(t, p, code)| vec![t.clone(), p.to_string(), outcome(*code)])
            .collect();
        table(out, &["TOPIC", "PARTITION", "RESULT"], &rows)?;
    }
    Ok(())
}

pub(super) async fn group(
    client: &Client,
    cmd: GroupCommand,
    as_json: bool,
    out: &mut impl Write,
) -> Result<(), CliError> {
    match cmd {
        GroupCommand::List => {
            let groups = client.list_groups().await?;
            if as_json {
                let list: Vec<_> = groups
                    .iter()
                    .map(|g| json!({ "group": g.id, "state": g.state, "protocol_type": g.protocol_type }))
                    .collect();
                writeln!(out, "{}", serde_json::Value::Array(list))?;
            } else {
                let rows: Vec<Vec<String>> = groups
                    .iter()
                    .map(|g| vec![g.id.clone(), g.state.clone(), g.protocol_type.clone()])
                    .collect();
                table(out, &["GROUP", "STATE", "TYPE"], &rows)?;
            }
            Ok(())
        }
        GroupCommand::Describe { group } => describe_group(client, &group, as_json, out).await,
        GroupCommand::ResetOffsets(args) => reset_offsets(client, args, as_json, out).await,
    }
}

pub(super) async fn transaction(
    client: &Client,
    cmd: TransactionCommand,
    as_json: bool,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let described = match cmd {
        TransactionCommand::List => {
            let txns = client.list_transactions().await?;
            if as_json {
                let list: Vec<_> = txns
                    .iter()
                    .map(|t| json!({ "transactional_id": t.id, "producer_id": t.producer_id, "state": t.state }))
                    .collect();
                writeln!(out, "{}", serde_json::Value::Array(list))?;
            } else {
                let rows: Vec<Vec<String>> = txns
                    .iter()
                    .map(|t| vec![t.id.clone(), t.producer_id.to_string(), t.state.clone()])
                    .collect();
                table(out, &["TRANSACTIONAL ID", "PRODUCER ID", "STATE"], &rows)?;
            }
            return Ok(());
        }
        TransactionCommand::Describe { id } => client.describe_transaction(&id).await?,
        TransactionCommand::Abort { id } => {
            client
                .abort_transaction(&id, std::time::Duration::from_secs(30))
                .await?
        }
    };
    let d = described;
    let partitions: Vec<String> = d
        .partitions
        .iter()
        .flat_map(|(t, ps)| ps.iter().map(move |p| format!("{t}-{p}")))
        .collect();
    if as_json {
        let value = json!({
            "transactional_id": d.id,
            "state": d.state,
            "producer_id": d.producer_id,
            "producer_epoch": d.producer_epoch,
            "timeout_ms": d.timeout_ms,
            "start_ms": d.start_ms,
            "partitions": d.partitions,
        });
        writeln!(out, "{value}")?;
    } else {
        let started = if d.start_ms < 0 {
            "-".to_owned()
        } else {
            d.start_ms.to_string()
        };
        let rows = vec![vec![
            d.id.clone(),
            d.state.clone(),
            d.producer_id.to_string(),
            d.producer_epoch.to_string(),
            d.timeout_ms.to_string(),
            started,
            partitions.join(","),
        ]];
        table(
            out,
            &[
                "TRANSACTIONAL ID",
                "STATE",
                "PRODUCER ID",
                "EPOCH",
                "TIMEOUT MS",
                "STARTED MS",
                "PARTITIONS",
            ],
            &rows,
        )?;
    }
    Ok(())
}

/// A partition of a described group: its committed offset and the member it is assigned to.
type Row<'a> = (Option<i64>, Option<&'a str>);

async fn describe_group(
    client: &Client,
    group: &str,
    as_json: bool,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let desc = client.describe_group(group).await?;
    let committed = client.committed_offsets(group).await?;
    // Every partition the group committed for or has assigned, with its owner.
    let mut rows: BTreeMap<(String, i32), Row<'_>> = BTreeMap::new();
    for (tp, offset) in &committed {
        rows.entry(tp.clone()).or_default().0 = Some(*offset);
    }
    for m in &desc.members {
        for (topic, parts) in &m.assignment {
            for p in parts {
                rows.entry((topic.clone(), *p)).or_default().1 = Some(m.id.as_str());
            }
        }
    }
    let mut ends: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in rows.keys() {
        topics.entry(t).or_default().push(*p);
    }
    for (t, parts) in topics {
        for (p, end) in client.list_offsets(t, &parts, -1).await? {
            ends.insert((t.to_owned(), p), end);
        }
    }
    let lag = |tp: &(String, i32), at: Option<i64>| Some(ends.get(tp)? - at?);
    if as_json {
        let members: Vec<_> = desc
            .members
            .iter()
            .map(|m| json!({ "member": m.id, "client_id": m.client_id, "host": m.host, "assignment": m.assignment }))
            .collect();
        let offsets: Vec<_> = rows
            .iter()
            .map(|(tp, (at, owner))| {
                json!({ "topic": tp.0, "partition": tp.1, "committed": at,
                        "log_end": ends.get(tp), "lag": lag(tp, *at), "member": owner })
            })
            .collect();
        writeln!(
            out,
            "{}",
            json!({ "group": desc.id, "type": desc.group_type, "state": desc.state,
                    "protocol_type": desc.protocol_type,
                    "protocol": desc.protocol, "members": members, "offsets": offsets })
        )?;
        return Ok(());
    }
    let protocol = match (desc.protocol_type.as_str(), desc.protocol.as_str()) {
        ("", _) => "-".to_owned(),
        (t, "") => t.to_owned(),
        (t, p) => format!("{t}/{p}"),
    };
    writeln!(
        out,
        "group {}  type {}  state {}  protocol {protocol}  members {}",
        desc.id,
        desc.group_type,
        desc.state,
        desc.members.len()
    )?;
    if !desc.members.is_empty() {
        writeln!(out)?;
        let members: Vec<Vec<String>> = desc
            .members
            .iter()
            .map(|m| {
                let parts: Vec<String> = m
                    .assignment
                    .iter()
                    .map(|(t, ps)| format!("{t}:{}", join(ps)))
                    .collect();
                vec![
                    m.id.clone(),
                    m.client_id.clone(),
                    m.host.clone(),
                    parts.join(" "),
                ]
            })
            .collect();
        table(
            out,
            &["MEMBER", "CLIENT-ID", "HOST", "PARTITIONS"],
            &members,
        )?;
    }
    writeln!(out)?;
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    let offsets: Vec<Vec<String>> = rows
        .iter()
        .map(|(tp, (at, owner))| {
            vec![
                tp.0.clone(),
                tp.1.to_string(),
                dash(at.map(|o| o.to_string())),
                dash(ends.get(tp).map(ToString::to_string)),
                dash(lag(tp, *at).map(|l| l.to_string())),
                dash(owner.map(str::to_owned)),
            ]
        })
        .collect();
    table(
        out,
        &[
            "TOPIC",
            "PARTITION",
            "COMMITTED",
            "LOG-END",
            "LAG",
            "MEMBER",
        ],
        &offsets,
    )?;
    Ok(())
}

fn join(v: &[i32]) -> String {
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

async fn reset_offsets(
    client: &Client,
    args: ResetArgs,
    as_json: bool,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let topic = args.topic.as_str();
    let parts = partitions(client, topic, args.partition).await?;
    let committed = client.committed_offsets(&args.group).await?;
    let earliest = client.list_offsets(topic, &parts, -2).await?;
    let latest = client.list_offsets(topic, &parts, -1).await?;
    let by_time = match args.to.to_datetime {
        Some(t) => Some(client.list_offsets(topic, &parts, t).await?),
        None => None,
    };
    let mut plan = GroupOffsets::new();
    let mut rows = Vec::new();
    for p in parts {
        let (lo, hi) = (earliest[&p], latest[&p]);
        let current = committed.get(&(topic.to_owned(), p)).copied();
        let to = &args.to;
        let target = if to.to_earliest {
            lo
        } else if to.to_latest {
            hi
        } else if let Some(o) = to.to_offset {
            o
        } else if let Some(found) = &by_time {
            match found[&p] {
                -1 => hi,
                o => o,
            }
        } else {
            // --shift-by: from the committed offset; a partition without one starts at its
            // end, as a new consumer of the group would (auto.offset.reset=latest).
            current.unwrap_or(hi) + to.shift_by.unwrap_or(0)
        };
        let target = target.clamp(lo, hi);
        plan.insert((topic.to_owned(), p), target);
        rows.push((p, current, target));
    }
    if args.execute {
        client.commit_offsets(&args.group, &plan).await?;
    }
    if as_json {
        let list: Vec<_> = rows
            .iter()
            .map(|(p, current, new)| json!({ "topic": topic, "partition": p, "committed": current, "new": new }))
            .collect();
        writeln!(
            out,
            "{}",
            json!({ "group": args.group, "executed": args.execute, "offsets": list })
        )?;
        return Ok(());
    }
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|(p, current, new)| {
            vec![
                topic.to_owned(),
                p.to_string(),
                current.map_or_else(|| "-".to_owned(), |c| c.to_string()),
                new.to_string(),
            ]
        })
        .collect();
    table(
        out,
        &["TOPIC", "PARTITION", "COMMITTED", "NEW"],
        &table_rows,
    )?;
    if args.execute {
        writeln!(out, "committed new offsets for group {}", args.group)?;
    } else {
        writeln!(out, "not committed: add --execute to apply")?;
    }
    Ok(())
}

/// The cleaner's columns of a compacted topic's partition: its dirty share, where the
/// cleaned part ends, and how long ago the last pass completed.
fn cleaner_columns(view: Option<&CleanerView>) -> [String; 3] {
    let Some(v) = view else {
        return ["-".into(), "-".into(), "-".into()];
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let last = v.last_clean_ms.map_or_else(
        || "never".to_owned(),
        |t| format!("{}s ago", (now_ms - t).max(0) / 1000),
    );
    [
        format!("{:.1}%", v.dirty_ratio * 100.0),
        v.cleaned_offset.to_string(),
        last,
    ]
}

pub(super) async fn tiering(
    client: &Client,
    topic: &str,
    as_json: bool,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let status = client.tiering_status(topic).await?;
    let mut rows = Vec::new();
    let mut list = Vec::new();
    for p in &status.partitions {
        let range = |a: i64, b: i64| {
            if a < b {
                format!("{a}..{b}")
            } else {
                "-".to_owned()
            }
        };
        rows.push(vec![
            p.partition.to_string(),
            p.remote_end
                .map_or_else(|| "-".to_owned(), |r| range(p.log_start, r)),
            range(p.local_start, p.log_end),
            p.log_end.to_string(),
            p.upload_lag
                .map_or_else(|| "not tiered".to_owned(), |l| l.to_string()),
        ]);
        list.push(json!({ "partition": p.partition, "log_start": p.log_start,
            "local_start": p.local_start, "remote_end": p.remote_end, "log_end": p.log_end,
            "upload_lag": p.upload_lag }));
    }
    let tiered_topic = status.tiered;
    if as_json {
        writeln!(
            out,
            "{}",
            json!({ "topic": topic, "tiered": tiered_topic, "partitions": list })
        )?;
    } else {
        table(
            out,
            &["PARTITION", "REMOTE", "LOCAL", "LOG-END", "UPLOAD-LAG"],
            &rows,
        )?;
    }
    Ok(())
}
