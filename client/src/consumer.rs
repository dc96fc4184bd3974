//! A consumer of one topic's partitions with pipelined fetches: a background task keeps one
//! Fetch in flight per leader and decodes answers while the caller handles earlier ones, up
//! to [`ConsumerConfig::prefetch`] answers ahead. Partitions follow their leader when it
//! moves.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::data::{BY_NAME, decode_records};
use crate::{Client, ClientError, FetchedRecord, check, name};

/// How a [`Consumer`] fetches.
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    /// How long a broker may hold a Fetch waiting for data.
    pub max_wait_ms: i32,
    /// Bytes per Fetch response at most (roughly: a first batch is returned whole).
    pub max_bytes: i32,
    /// Bytes per partition per Fetch at most.
    pub partition_max_bytes: i32,
    /// Fetched answers buffered ahead of the caller.
    pub prefetch: usize,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            max_wait_ms: 500,
            max_bytes: 50 << 20,
            partition_max_bytes: 4 << 20,
            prefetch: 4,
        }
    }
}

impl Client {
    /// Records of `topic`/`partition` from `offset`, up to about `max_bytes`, waiting up to
    /// `max_wait_ms` for some; returns them with the partition's high watermark.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: i32,
        max_wait_ms: i32,
    ) -> Result<(Vec<FetchedRecord>, i64), ClientError> {
        let config = ConsumerConfig {
            max_wait_ms,
            max_bytes,
            partition_max_bytes: max_bytes,
            ..Default::default()
        };
        let answer = match self.leader_id(topic, partition).await {
            Ok(leader) => fetch(self, leader, topic, &[(partition, offset)], &config).await,
            Err(e) => Err(e),
        };
        let fetched = answer
            .and_then(|parts| {
                let (_, result) = parts
                    .into_iter()
                    .find(|(p, _)| *p == partition)
                    .ok_or_else(|| ClientError::Decode("Fetch answered nothing".into()))?;
                result.map_err(|code| ClientError::Broker {
                    what: format!("fetching {topic}/{partition} at {offset}"),
                    code,
                })
            })
            .inspect_err(|_| self.forget(topic))?;
        Ok((fetched.records, fetched.high_watermark))
    }
}

/// Records fetched from one partition.
#[derive(Debug)]
pub struct Fetched {
    /// The partition.
    pub partition: i32,
    /// Its records, in offset order.
    pub records: Vec<FetchedRecord>,
    /// The offset to fetch next.
    pub next_offset: i64,
    /// The partition's high watermark when fetched.
    pub high_watermark: i64,
    /// Record-set bytes the broker sent for it.
    pub bytes: usize,
}

/// Consecutive failed fetches to a partition before the consumer gives up.
const MAX_FAILURES: u32 = 20;

/// Consumes a topic from given offsets; see the module docs.
#[derive(Debug)]
pub struct Consumer {
    rx: mpsc::Receiver<Result<Fetched, ClientError>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Consumer {
    /// Starts fetching `topic`'s partitions, each from its offset in `start`.
    pub fn new(
        client: Arc<Client>,
        topic: &str,
        start: BTreeMap<i32, i64>,
        config: ConsumerConfig,
    ) -> Self {
        let (tx, rx) = mpsc::channel(config.prefetch.max(1));
        let task = tokio::spawn(fetch_loop(client, topic.to_owned(), start, config, tx));
        Self { rx, task }
    }

    /// The next records, in fetch order (per partition, in offset order); an error ends the
    /// stream. Answers without records are skipped.
    pub async fn next(&mut self) -> Option<Result<Fetched, ClientError>> {
        self.rx.recv().await
    }
}

/// What one Fetch did for each of its partitions.
pub(crate) type Answer = Result<Vec<(i32, Result<Fetched, i16>)>, ClientError>;

async fn fetch_loop(
    client: Arc<Client>,
    topic: String,
    mut offsets: BTreeMap<i32, i64>,
    config: ConsumerConfig,
    tx: mpsc::Sender<Result<Fetched, ClientError>>,
) {
    let topic: Arc<str> = Arc::from(topic);
    let mut in_flight: JoinSet<(i32, Vec<i32>, Answer)> = JoinSet::new();
    let mut busy_leaders = HashSet::new();
    let mut busy_partitions = HashSet::new();
    let mut failures: HashMap<i32, u32> = HashMap::new();
    loop {
        // Ask every leader not already asked for its idle partitions.
        let leaders = match client.leaders_of(&topic).await {
            Ok(l) => l,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let mut by_leader: HashMap<i32, Vec<(i32, i64)>> = HashMap::new();
        for (&p, &offset) in &offsets {
            match leaders.get(usize::try_from(p).unwrap_or(usize::MAX)) {
                _ if busy_partitions.contains(&p) => {}
                Some(&id) if id >= 0 && !busy_leaders.contains(&id) => {
                    by_leader.entry(id).or_default().push((p, offset));
                }
                Some(_) => {}
                None => {
                    let what = format!("{topic} has {} partitions, not {}", leaders.len(), p + 1);
                    let code = ResponseError::UnknownTopicOrPartition.code();
                    let _ = tx.send(Err(ClientError::Broker { what, code })).await;
                    return;
                }
            }
        }
        for (leader, parts) in by_leader {
            busy_leaders.insert(leader);
            busy_partitions.extend(parts.iter().map(|(p, _)| *p));
            let (client, topic, config) = (client.clone(), topic.clone(), config.clone());
            in_flight.spawn(async move {
                let ids = parts.iter().map(|(p, _)| *p).collect();
                let answer = fetch(&client, leader, &topic, &parts, &config).await;
                (leader, ids, answer)
            });
        }
        let Some(done) = in_flight.join_next().await else {
            // No partition has a leader now: look again shortly.
            client.forget(&topic);
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let Ok((leader, parts, answer)) = done else {
            return; // cancelled: the consumer is gone
        };
        busy_leaders.remove(&leader);
        for p in &parts {
            busy_partitions.remove(p);
        }
        let results = match answer {
            Ok(results) => results,
            Err(e) => parts.iter().map(|p| (*p, Err(code_of(&e)))).collect(),
        };
        for (p, result) in results {
            match result {
                Ok(fetched) => {
                    failures.remove(&p);
                    offsets.insert(p, fetched.next_offset);
                    if !fetched.records.is_empty() && tx.send(Ok(fetched)).await.is_err() {
                        return;
                    }
                }
                Err(code) => {
                    let n = failures.entry(p).or_default();
                    *n += 1;
                    if !retriable(code) || *n >= MAX_FAILURES {
                        let what = format!("fetching {topic}/{p} at {}", offsets[&p]);
                        let _ = tx.send(Err(ClientError::Broker { what, code })).await;
                        return;
                    }
                    client.forget(&topic);
                    tokio::time::sleep(Duration::from_millis(50 << (*n).min(4))).await;
                }
            }
        }
    }
}

/// The error code a failed request counts as for its partitions (a lost connection is
/// retried like a moved leader).
fn code_of(e: &ClientError) -> i16 {
    match e {
        ClientError::Broker { code, .. } => *code,
        ClientError::Closed(_) | ClientError::Unreachable { .. } | ClientError::TimedOut { .. } => {
            ResponseError::NotLeaderOrFollower.code()
        }
        _ => ResponseError::UnknownServerError.code(),
    }
}

/// Errors after which the partition is fetched again once its leader is looked up.
fn retriable(code: i16) -> bool {
    [
        ResponseError::NotLeaderOrFollower,
        ResponseError::LeaderNotAvailable,
        ResponseError::UnknownTopicOrPartition,
        ResponseError::FencedLeaderEpoch,
        ResponseError::UnknownLeaderEpoch,
        ResponseError::KafkaStorageError,
        ResponseError::RequestTimedOut,
    ]
    .iter()
    .any(|e| e.code() == code)
}

/// One Fetch of `parts` (partition, offset) from broker `leader`, decoded.
pub(crate) async fn fetch(
    client: &Client,
    leader: i32,
    topic: &str,
    parts: &[(i32, i64)],
    config: &ConsumerConfig,
) -> Answer {
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(config.max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(config.max_bytes)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(name(topic))
                .with_partitions(
                    parts
                        .iter()
                        .map(|(p, offset)| {
                            FetchPartition::default()
                                .with_partition(*p)
                                .with_fetch_offset(*offset)
                                .with_partition_max_bytes(config.partition_max_bytes)
                        })
                        .collect(),
                ),
        ]);
    let conn = client.broker(leader).await?;
    let resp = conn.send_capped(&req, BY_NAME).await?;
    check(format!("fetching {topic}"), resp.error_code)?;
    let from: HashMap<i32, i64> = parts.iter().copied().collect();
    let mut out = Vec::with_capacity(parts.len());
    for p in resp.responses.into_iter().flat_map(|t| t.partitions) {
        let Some(&offset) = from.get(&p.partition_index) else {
            continue;
        };
        if p.error_code != 0 {
            out.push((p.partition_index, Err(p.error_code)));
            continue;
        }
        let raw = p.records.unwrap_or_default();
        let bytes = raw.len();
        let (records, next) = decode_records(raw, offset)
            .map_err(|e| ClientError::Decode(format!("{topic}/{}: {e}", p.partition_index)))?;
        out.push((
            p.partition_index,
            Ok(Fetched {
                partition: p.partition_index,
                records,
                next_offset: next.unwrap_or(offset).max(offset),
                high_watermark: p.high_watermark,
                bytes,
            }),
        ));
    }
    Ok(out)
}
