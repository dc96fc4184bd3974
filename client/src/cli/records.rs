//! `produce` and `consume`.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, Write};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;

use super::{CliError, ConsumeArgs, ProduceArgs, partitions, progress};
use crate::consumer::{Consumer, ConsumerConfig};
use crate::groups::GroupOffsets;
use crate::producer::{Delivery, Producer};
use crate::{Client, FetchedRecord, NewRecord};

/// Deliveries awaited at most at once (older ones are awaited before sending more).
const OUTSTANDING: usize = 10_000;

pub(super) async fn produce(
    client: &Arc<Client>,
    args: ProduceArgs,
    input: &mut dyn BufRead,
    as_json: bool,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let mut opened;
    let lines: &mut dyn BufRead = match &args.file {
        Some(path) => {
            opened =
                std::io::BufReader::new(std::fs::File::open(path).map_err(|e| {
                    CliError::Usage(format!("cannot read {}: {e}", path.display()))
                })?);
            &mut opened
        }
        None => input,
    };
    let topic = args.topic.as_str();
    partitions(client, topic, args.partition).await?;
    let headers: Vec<(String, Option<Bytes>)> = args
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), Some(Bytes::from(v.clone()))))
        .collect();
    let producer = Producer::new(client.clone(), args.send.config()?);
    let mut outstanding: VecDeque<Delivery> = VecDeque::new();
    let mut produced = 0u64;
    let result = async {
        for line in lines.lines() {
            let line = line?;
            let (key, value) = match args
                .key_separator
                .as_deref()
                .and_then(|s| line.split_once(s))
            {
                Some((k, v)) => (Some(Bytes::from(k.to_owned())), v.to_owned()),
                None => (None, line),
            };
            let record = NewRecord {
                key,
                value: Some(Bytes::from(value)),
                headers: headers.clone(),
                timestamp: None,
            };
            outstanding.push_back(producer.send(topic, args.partition, record).await?);
            if outstanding.len() >= OUTSTANDING
                && let Some(d) = outstanding.pop_front()
            {
                d.offset().await?;
                produced += 1;
            }
        }
        producer.flush().await;
        while let Some(d) = outstanding.pop_front() {
            d.offset().await?;
            produced += 1;
        }
        Ok::<_, CliError>(())
    };
    let result = result.await;
    producer.close().await;
    result?;
    if as_json {
        writeln!(out, "{}", json!({ "topic": topic, "produced": produced }))?;
    } else {
        writeln!(out, "produced {produced} records to {topic}")?;
    }
    Ok(())
}

#[derive(Clone, Copy, Debug)]
enum Start {
    Earliest,
    Latest,
    Offset(i64),
    Time(i64),
}

/// Each partition's starting offset for `start`.
async fn start_offsets(
    client: &Client,
    topic: &str,
    parts: &[i32],
    start: Start,
    ends: &BTreeMap<i32, i64>,
) -> Result<BTreeMap<i32, i64>, CliError> {
    Ok(match start {
        Start::Earliest => client.list_offsets(topic, parts, -2).await?,
        Start::Latest => ends.clone(),
        Start::Offset(o) => parts.iter().map(|p| (*p, o)).collect(),
        Start::Time(t) => client
            .list_offsets(topic, parts, t)
            .await?
            .into_iter()
            .map(|(p, o)| (p, if o == -1 { ends[&p] } else { o }))
            .collect(),
    })
}

pub(super) async fn consume(
    client: &Arc<Client>,
    args: ConsumeArgs,
    as_json: bool,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let topic = args.topic.as_str();
    let parts = partitions(client, topic, args.partition).await?;
    let start = match (args.from_beginning, args.offset, args.timestamp) {
        (true, _, _) => Start::Earliest,
        (_, Some(o), _) => Start::Offset(o),
        (_, _, Some(t)) => Start::Time(t),
        _ => Start::Latest,
    };
    let ends = client.list_offsets(topic, &parts, -1).await?;
    let mut next = start_offsets(client, topic, &parts, start, &ends).await?;
    if let Some(group) = &args.group {
        let desc = client.describe_group(group).await?;
        if !desc.members.is_empty() {
            return Err(CliError::Usage(format!(
                "group {group} has {} active members; stratactl reads and commits a group's \
                 offsets only while none is running",
                desc.members.len()
            )));
        }
        for ((t, p), offset) in client.committed_offsets(group).await? {
            if t == topic && next.contains_key(&p) {
                next.insert(p, offset);
            }
        }
    }
    let started = next.clone();
    // Without --count, only partitions with records before their end are read.
    let wanted: BTreeMap<i32, i64> = next
        .iter()
        .filter(|(p, at)| args.count.is_some() || **at < ends[*p])
        .map(|(p, at)| (*p, *at))
        .collect();
    let sep = args.key_separator.replace("\\t", "\t");
    let total = args.count.or_else(|| {
        Some(
            wanted
                .iter()
                .map(|(p, at)| (ends[p] - at).max(0) as u64)
                .sum(),
        )
    });
    let bar = progress(total, &format!("consuming {topic}"));
    let mut printed = 0u64;
    let mut open: Vec<i32> = wanted.keys().copied().collect();
    if !wanted.is_empty() && args.count != Some(0) {
        let mut consumer = Consumer::new(client.clone(), topic, wanted, ConsumerConfig::default());
        'outer: while let Some(fetched) = consumer.next().await {
            let fetched = fetched?;
            let p = fetched.partition;
            for r in &fetched.records {
                if args.count.is_none() && r.offset >= ends[&p] {
                    break;
                }
                print(out, p, r, as_json, args.print_key, &sep)?;
                next.insert(p, r.offset + 1);
                printed += 1;
                bar.inc(1);
                if args.count.is_some_and(|c| printed >= c) {
                    break 'outer;
                }
            }
            if args.count.is_none() {
                next.insert(p, next[&p].max(fetched.next_offset.min(ends[&p])));
                open.retain(|q| next[q] < ends[q]);
                if open.is_empty() {
                    break;
                }
            }
        }
    }
    bar.finish_and_clear();
    if let Some(group) = &args.group {
        let moved: GroupOffsets = next
            .iter()
            .filter(|(p, at)| started.get(p) != Some(at))
            .map(|(p, at)| ((topic.to_owned(), *p), *at))
            .collect();
        if !moved.is_empty() {
            client.commit_offsets(group, &moved).await?;
        }
    }
    Ok(())
}

fn print(
    out: &mut impl Write,
    partition: i32,
    r: &FetchedRecord,
    as_json: bool,
    print_key: bool,
    separator: &str,
) -> std::io::Result<()> {
    let text = |b: &Option<Bytes>| b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
    if as_json {
        let headers: serde_json::Map<String, serde_json::Value> = r
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), json!(text(v))))
            .collect();
        writeln!(
            out,
            "{}",
            json!({ "partition": partition, "offset": r.offset, "timestamp": r.timestamp,
                    "key": text(&r.key), "value": text(&r.value), "headers": headers })
        )
    } else if print_key {
        let key = text(&r.key).unwrap_or_default();
        let value = text(&r.value).unwrap_or_default();
        writeln!(out, "{key}{separator}{value}")
    } else {
        writeln!(out, "{}", text(&r.value).unwrap_or_default())
    }
}
