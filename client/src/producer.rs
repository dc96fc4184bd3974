//! A batching producer: records accumulate per partition until a batch is full
//! ([`ProducerConfig::batch_bytes`]) or has waited [`ProducerConfig::linger`]; ready batches
//! go out compressed, one Produce request per leader, with several requests in flight.
//!
//! Records sent to one partition are appended in the order sent: requests to a broker share
//! one connection, and a Kafka broker appends a connection's requests in order. A batch is
//! retried only on errors that mean the broker did not append it (no leader, not the leader,
//! not enough replicas), so a retry cannot duplicate records; it may land after a batch sent
//! later. Other failures reach the batch's [`Delivery`]s.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::ProduceRequest;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
pub use kafka_protocol::records::Compression;
use tokio::sync::{Notify, Semaphore, watch};

use crate::conn::Reply;
use crate::data::{BY_NAME, encode_batch, partition_for_key};
use crate::{Client, ClientError, NewRecord, name};

/// How a [`Producer`] batches and sends.
#[derive(Clone, Debug)]
pub struct ProducerConfig {
    /// Acknowledgements: -1 all in-sync replicas, 1 the leader, 0 none.
    pub acks: i16,
    /// How long a batch waits for more records before it is sent.
    pub linger: Duration,
    /// A batch is sent once it holds this many bytes (before compression).
    pub batch_bytes: usize,
    /// The codec batches are compressed with.
    pub compression: Compression,
    /// Produce requests in flight at once, over all brokers.
    pub max_in_flight: usize,
    /// Bytes buffered (open and in-flight batches) before `send` waits.
    pub buffer_bytes: usize,
    /// Times a batch is resent after an error that means it was not appended.
    pub retries: u32,
    /// How long a broker may take to acknowledge.
    pub request_timeout_ms: i32,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            acks: -1,
            linger: Duration::from_millis(5),
            batch_bytes: 256 << 10,
            compression: Compression::None,
            max_in_flight: 8,
            buffer_bytes: 64 << 20,
            retries: 5,
            request_timeout_ms: 30_000,
        }
    }
}

/// Parses a codec name as Kafka spells it (`none`, `gzip`, `snappy`, `lz4`, `zstd`).
pub fn parse_compression(s: &str) -> Result<Compression, String> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "none" => Compression::None,
        "gzip" => Compression::Gzip,
        "snappy" => Compression::Snappy,
        "lz4" => Compression::Lz4,
        "zstd" => Compression::Zstd,
        _ => {
            return Err(format!(
                "{s:?} is not a codec: none, gzip, snappy, lz4 or zstd"
            ));
        }
    })
}

/// A batch's outcome: the base offset the leader assigned (-1 with acks 0), or why it failed.
type Outcome = Option<Result<i64, Arc<ClientError>>>;

/// Where one sent record ended up; await [`Delivery::offset`].
#[derive(Debug)]
pub struct Delivery {
    outcome: watch::Receiver<Outcome>,
    index: i64,
    partition: i32,
}

impl Delivery {
    /// The partition the record went to.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Waits until the record is acknowledged; its offset (-1 with acks 0).
    pub async fn offset(mut self) -> Result<i64, ClientError> {
        let outcome = self
            .outcome
            .wait_for(Option::is_some)
            .await
            .map_err(|_| ClientError::Closed("the producer stopped before sending".into()))?;
        match outcome.as_ref() {
            Some(Ok(-1)) => Ok(-1),
            Some(Ok(base)) => Ok(base + self.index),
            Some(Err(e)) => Err(ClientError::Delivery(e.clone())),
            None => unreachable!("waited for an outcome"),
        }
    }
}

/// A batch being filled or sent.
#[derive(Debug)]
struct Batch {
    topic: Arc<str>,
    partition: i32,
    records: Vec<NewRecord>,
    /// The records as a record batch, once encoded (`records` is emptied then).
    encoded: Bytes,
    /// Whether the newest record has no key (the sticky partition served it).
    keyless: bool,
    bytes: usize,
    opened: Instant,
    outcome: watch::Sender<Outcome>,
}

#[derive(Debug, Default)]
struct Accumulator {
    /// Batches per partition, oldest first; only the newest is filled, and only the oldest
    /// is sent (one batch per partition per request).
    open: HashMap<(Arc<str>, i32), VecDeque<Batch>>,
    /// Bytes of open and in-flight batches.
    buffered: usize,
    /// Open and in-flight batches.
    unfinished: usize,
    /// Send every open batch now (flush or close).
    drain: bool,
    closed: bool,
    /// Partition counts and the partition keyless records go to, by topic.
    topics: HashMap<Arc<str>, (i32, i32)>,
}

#[derive(Debug)]
struct Shared {
    client: Arc<Client>,
    config: ProducerConfig,
    acc: Mutex<Accumulator>,
    /// A batch became ready, or a flush or close was asked.
    ready: Notify,
    /// Buffer space was freed or a batch finished.
    progress: Notify,
    in_flight: Arc<Semaphore>,
}

impl Shared {
    fn acc(&self) -> std::sync::MutexGuard<'_, Accumulator> {
        self.acc.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A batching producer over a [`Client`]. Call [`Producer::close`] (or `flush`) before
/// dropping it: a dropped producer stops sending.
#[derive(Debug)]
pub struct Producer {
    shared: Arc<Shared>,
    sender: tokio::task::JoinHandle<()>,
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.sender.abort();
    }
}

/// Rough bytes a record takes in a batch.
fn record_size(r: &NewRecord) -> usize {
    let headers: usize = r
        .headers
        .iter()
        .map(|(k, v)| k.len() + v.as_ref().map_or(0, Bytes::len) + 4)
        .sum();
    r.key.as_ref().map_or(0, Bytes::len) + r.value.as_ref().map_or(0, Bytes::len) + headers + 16
}

impl Producer {
    /// A producer sending through `client`.
    pub fn new(client: Arc<Client>, config: ProducerConfig) -> Self {
        let shared = Arc::new(Shared {
            client,
            in_flight: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            config,
            acc: Mutex::default(),
            ready: Notify::new(),
            progress: Notify::new(),
        });
        let sender = tokio::spawn(send_loop(shared.clone()));
        Self { shared, sender }
    }

    /// Queues `record` for `topic`: to `partition`, or by key (Kafka's murmur2 partitioner),
    /// or, without a key, to the partition keyless records currently stick to. Waits while the
    /// buffer is full; the returned [`Delivery`] resolves once the record is acknowledged.
    pub async fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        record: NewRecord,
    ) -> Result<Delivery, ClientError> {
        let count = self.partitions(topic).await?;
        if let Some(p) = partition.filter(|p| !(0..count).contains(p)) {
            return Err(ClientError::Broker {
                what: format!("{topic} has {count} partitions, not {}", p + 1),
                code: ResponseError::UnknownTopicOrPartition.code(),
            });
        }
        let size = record_size(&record);
        let shared = &self.shared;
        loop {
            let space = shared.progress.notified();
            {
                let mut acc = shared.acc();
                if acc.closed {
                    return Err(ClientError::Closed("the producer is closed".into()));
                }
                if acc.buffered == 0 || acc.buffered + size <= shared.config.buffer_bytes {
                    return Ok(self.append(&mut acc, topic, partition, record, size));
                }
            }
            space.await;
        }
    }

    fn append(
        &self,
        acc: &mut Accumulator,
        topic: &str,
        partition: Option<i32>,
        record: NewRecord,
        size: usize,
    ) -> Delivery {
        let (topic, _) = acc
            .topics
            .get_key_value(topic)
            .expect("partitions() cached the topic");
        let topic = topic.clone();
        let (count, sticky) = acc.topics.get_mut(&topic).expect("just found");
        let (count, sticky) = (*count, sticky);
        let p = match (partition, &record.key) {
            (Some(p), _) => p,
            (None, Some(k)) => partition_for_key(k, count),
            (None, None) => *sticky,
        };
        let full_at = self.shared.config.batch_bytes;
        let key = (topic.clone(), p);
        let queue = acc.open.entry(key).or_default();
        let fresh = queue.back().is_none_or(|b| b.bytes >= full_at);
        if fresh {
            queue.push_back(Batch {
                topic,
                partition: p,
                records: Vec::new(),
                encoded: Bytes::new(),
                keyless: false,
                bytes: 0,
                opened: Instant::now(),
                outcome: watch::Sender::new(None),
            });
        }
        let batch = queue.back_mut().expect("a batch is open");
        batch.keyless = record.key.is_none();
        batch.records.push(record);
        batch.bytes += size;
        let delivery = Delivery {
            outcome: batch.outcome.subscribe(),
            index: batch.records.len() as i64 - 1,
            partition: p,
        };
        let full = batch.bytes >= full_at;
        if full && partition.is_none() && batch.keyless {
            // Keyless records move on once their batch fills (Kafka's sticky partitioner).
            *sticky = (p + 1) % count.max(1);
        }
        acc.buffered += size;
        if fresh {
            acc.unfinished += 1;
        }
        // A new batch sets a new linger deadline for the sender; a full one is due now.
        if full || fresh {
            self.shared.ready.notify_one();
        }
        delivery
    }

    /// The partition count of `topic`, cached.
    async fn partitions(&self, topic: &str) -> Result<i32, ClientError> {
        if let Some((count, _)) = self.shared.acc().topics.get(topic) {
            return Ok(*count);
        }
        let count = self.shared.client.partition_count(topic).await?;
        self.shared
            .acc()
            .topics
            .entry(Arc::from(topic))
            .or_insert((count, 0));
        Ok(count)
    }

    /// Sends every buffered record now and waits until all are acknowledged or failed.
    pub async fn flush(&self) {
        let shared = &self.shared;
        shared.acc().drain = true;
        shared.ready.notify_one();
        loop {
            let progress = shared.progress.notified();
            if shared.acc().unfinished == 0 {
                return;
            }
            progress.await;
        }
    }

    /// Flushes, then stops the producer; later sends fail.
    pub async fn close(self) {
        self.flush().await;
        self.shared.acc().closed = true;
        self.shared.ready.notify_one();
    }
}

/// Takes ready batches from the accumulator and sends them, one request per leader.
async fn send_loop(shared: Arc<Shared>) {
    loop {
        let ready = shared.ready.notified();
        let (batches, wake_at) = take_ready(&shared);
        if batches.is_empty() {
            if shared.acc().closed {
                return;
            }
            match wake_at {
                Some(at) => {
                    let _ = tokio::time::timeout_at(at.into(), ready).await;
                }
                None => ready.await,
            }
            continue;
        }
        // Batches are encoded (and compressed) in parallel, then sent in the order taken.
        let compression = shared.config.compression;
        let encoding: Vec<_> = batches
            .into_iter()
            .map(|mut b| {
                let records = std::mem::take(&mut b.records);
                (
                    b,
                    tokio::task::spawn_blocking(move || encode_batch(&records, compression)),
                )
            })
            .collect();
        let mut by_leader: HashMap<i32, Vec<Batch>> = HashMap::new();
        for (mut batch, encoded) in encoding {
            match encoded.await {
                Ok(Ok(bytes)) => batch.encoded = bytes,
                Ok(Err(e)) => {
                    finish(&shared, batch, Err(Arc::new(e)));
                    continue;
                }
                Err(e) => {
                    let e = ClientError::Encode(format!("encoding a batch failed: {e}"));
                    finish(&shared, batch, Err(Arc::new(e)));
                    continue;
                }
            }
            match shared.client.leader_id(&batch.topic, batch.partition).await {
                Ok(id) => by_leader.entry(id).or_default().push(batch),
                Err(e) => finish(&shared, batch, Err(Arc::new(e))),
            }
        }
        for (leader, batches) in by_leader {
            let Ok(permit) = shared.in_flight.clone().acquire_owned().await else {
                return;
            };
            // Written here, in order; only the wait for the answer runs on its own.
            let reply = submit(&shared, leader, &batches).await;
            let shared = shared.clone();
            tokio::spawn(async move {
                let first = settle(&shared, batches, reply).await;
                drop(permit);
                retry(&shared, first).await;
            });
        }
    }
}

/// Batches that are full, lingered long enough, or asked for by a flush; and when the next
/// open batch's linger ends.
fn take_ready(shared: &Shared) -> (Vec<Batch>, Option<Instant>) {
    let mut acc = shared.acc();
    let now = Instant::now();
    let linger = shared.config.linger;
    let full_at = shared.config.batch_bytes;
    let drain = acc.drain;
    let mut ready = Vec::new();
    let mut sticky_moves = Vec::new();
    acc.open.retain(|_, queue| {
        let due = queue
            .front()
            .is_some_and(|b| drain || b.bytes >= full_at || b.opened + linger <= now);
        if let Some(b) = due.then(|| queue.pop_front()).flatten() {
            if b.keyless {
                sticky_moves.push((b.topic.clone(), b.partition));
            }
            ready.push(b);
        }
        !queue.is_empty()
    });
    for (topic, partition) in sticky_moves {
        if let Some((count, sticky)) = acc.topics.get_mut(&topic)
            && *sticky == partition
        {
            *sticky = (partition + 1) % (*count).max(1);
        }
    }
    if acc.open.is_empty() {
        acc.drain = false;
    }
    let wake_at = acc
        .open
        .values()
        .filter_map(VecDeque::front)
        .map(|b| b.opened + linger)
        .min();
    (ready, wake_at)
}

/// Resolves a batch's deliveries and releases its buffer space.
fn finish(shared: &Shared, batch: Batch, outcome: Result<i64, Arc<ClientError>>) {
    batch.outcome.send_replace(Some(outcome));
    let mut acc = shared.acc();
    acc.buffered = acc.buffered.saturating_sub(batch.bytes);
    acc.unfinished = acc.unfinished.saturating_sub(1);
    drop(acc);
    shared.progress.notify_waiters();
}

/// Kafka error codes meaning the broker did not append the batch, so it can be resent.
fn not_appended(code: i16) -> bool {
    [
        ResponseError::UnknownTopicOrPartition,
        ResponseError::LeaderNotAvailable,
        ResponseError::NotLeaderOrFollower,
        ResponseError::NotEnoughReplicas,
    ]
    .iter()
    .any(|e| e.code() == code)
}

/// The batches to resend, by their leader now; the rest are finished.
type Resend = HashMap<i32, Vec<Batch>>;

/// Resends what the broker did not append, each batch to its current leader, up to the
/// configured retries; the last failure reaches the deliveries.
async fn retry(shared: &Shared, mut again: Resend) {
    let mut attempt = 1;
    while !again.is_empty() {
        tokio::time::sleep(Duration::from_millis(100 << attempt.min(4))).await;
        let mut next = Resend::new();
        for (leader, batches) in again {
            let reply = submit(shared, leader, &batches).await;
            let last = attempt >= shared.config.retries;
            for (id, more) in settle_round(shared, batches, reply, last).await {
                next.entry(id).or_default().extend(more);
            }
        }
        again = next;
        attempt += 1;
    }
}

/// The pending answer to one Produce request (none with acks 0).
type Submitted = Result<Option<Reply<ProduceRequest>>, Arc<ClientError>>;

/// Writes one request carrying `batches` to broker `leader`.
async fn submit(shared: &Shared, leader: i32, batches: &[Batch]) -> Submitted {
    let sent = async {
        let req = build_request(&shared.config, batches);
        let conn = shared.client.broker(leader).await?;
        if shared.config.acks == 0 {
            conn.send_only(&req, BY_NAME).await.map(|()| None)
        } else {
            conn.submit(&req, BY_NAME).await.map(Some)
        }
    };
    sent.await.map_err(Arc::new)
}

/// Waits for the answer to a first attempt; finishes batches, returns those to resend.
async fn settle(shared: &Shared, batches: Vec<Batch>, reply: Submitted) -> Resend {
    settle_round(shared, batches, reply, shared.config.retries == 0).await
}

/// Waits for `reply` and finishes each batch with its base offset or error, except those
/// the broker did not append (unless this was the `last` attempt): those come back by their
/// current leader. A request that failed as a whole is not resent: it may have been appended.
async fn settle_round(
    shared: &Shared,
    batches: Vec<Batch>,
    reply: Submitted,
    last: bool,
) -> Resend {
    let answers = match reply {
        Ok(Some(reply)) => reply.response().await.map(Some).map_err(Arc::new),
        Ok(None) => Ok(None),
        Err(e) => Err(e),
    };
    let mut again = Resend::new();
    let Some(topic) = batches.first().map(|b| b.topic.clone()) else {
        return again;
    };
    let answers = match answers {
        Err(e) => {
            shared.client.forget(&topic);
            for b in batches {
                finish(shared, b, Err(e.clone()));
            }
            return again;
        }
        Ok(None) => {
            for b in batches {
                finish(shared, b, Ok(-1));
            }
            return again;
        }
        Ok(Some(resp)) => resp,
    };
    let mut by_partition = HashMap::new();
    for t in &answers.responses {
        for p in &t.partition_responses {
            by_partition.insert(
                (t.name.0.to_string(), p.index),
                (p.error_code, p.base_offset),
            );
        }
    }
    for b in batches {
        match by_partition.get(&(b.topic.to_string(), b.partition)) {
            Some((0, base)) => finish(shared, b, Ok(*base)),
            Some((code, _)) if !last && not_appended(*code) => {
                shared.client.forget(&b.topic);
                match shared.client.leader_id(&b.topic, b.partition).await {
                    Ok(id) => again.entry(id).or_default().push(b),
                    Err(e) => finish(shared, b, Err(Arc::new(e))),
                }
            }
            Some((code, _)) => {
                let what = format!("producing to {}/{}", b.topic, b.partition);
                let e = ClientError::Broker { what, code: *code };
                finish(shared, b, Err(Arc::new(e)));
            }
            None => {
                let what = format!("Produce did not answer for {}/{}", b.topic, b.partition);
                finish(shared, b, Err(Arc::new(ClientError::Decode(what))));
            }
        }
    }
    again
}

fn build_request(config: &ProducerConfig, batches: &[Batch]) -> ProduceRequest {
    let mut topics: Vec<TopicProduceData> = Vec::new();
    for b in batches {
        let data = PartitionProduceData::default()
            .with_index(b.partition)
            .with_records(Some(b.encoded.clone()));
        match topics.iter_mut().find(|t| *t.name.0 == *b.topic) {
            Some(t) => t.partition_data.push(data),
            None => topics.push(
                TopicProduceData::default()
                    .with_name(name(&b.topic))
                    .with_partition_data(vec![data]),
            ),
        }
    }
    ProduceRequest::default()
        .with_acks(config.acks)
        .with_timeout_ms(config.request_timeout_ms)
        .with_topic_data(topics)
}
