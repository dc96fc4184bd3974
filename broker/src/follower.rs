//! The follower side of replication: this broker copies each partition it follows from the
//! partition's leader with Fetch requests carrying its broker id, as Kafka's replica fetchers
//! do. One task per leader broker fetches all the partitions followed from it over one
//! connection (`strata-client`'s). A partition newly followed first asks the leader where its
//! own latest leader epoch ended (OffsetForLeaderEpoch) and cuts its copy back to that, so a
//! former leader's unreplicated tail never survives (Kafka's KIP-101 rule). Copied batches are
//! fsynced before the next fetch, whose offset tells the leader what this copy holds: below
//! the leader's high watermark, every in-sync replica has the data on disk.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{BrokerId, FetchRequest, OffsetForLeaderEpochRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use strata_client::Connection;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metadata::MetadataView;
use crate::partition::Partition;
use crate::partition::registry::RoleEvents;
use crate::partition::role::{Change, Role};
use crate::peers::Link;

/// How long the leader may hold a follower's fetch waiting for data.
const FETCH_WAIT_MS: i32 = 500;
/// Bytes per partition and per fetch a follower asks for.
const PARTITION_BYTES: i32 = 4 << 20;
const FETCH_BYTES: i32 = 32 << 20;
/// How long a fetch or epoch request may take before the connection is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Wait after a failure before trying the leader again.
const RETRY: Duration = Duration::from_millis(200);

/// A partition this broker follows.
#[derive(Clone, Debug)]
struct Followed {
    part: Arc<Partition>,
    leader: i32,
    epoch: i32,
    /// Whether its copy has been cut back to what this leader holds.
    truncated: bool,
}

impl Followed {
    /// The role this broker copies the partition under.
    fn copying(&self) -> Role {
        Role::Follower {
            leader: Some(self.leader),
            epoch: self.epoch,
        }
    }
}

type Key = (Uuid, i32);
type Shared = Arc<Mutex<HashMap<Key, Followed>>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, HashMap<Key, Followed>> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// Follows `roles` until cancelled: partitions this broker becomes a follower of (with a
/// leader) are copied from that leader; a role change or stop ends that.
pub(crate) async fn run(
    me: i32,
    (metadata, link): (Arc<MetadataView>, Arc<Link>),
    mut roles: RoleEvents,
    cancel: CancellationToken,
) {
    let shared: Shared = Arc::default();
    let mut fetchers: HashMap<i32, JoinHandle<()>> = HashMap::new();
    loop {
        let changes = tokio::select! {
            () = cancel.cancelled() => break,
            c = roles.recv() => match c {
                Some(c) => c,
                None => break,
            },
        };
        {
            let mut followed = lock(&shared);
            for c in changes.iter() {
                let key = (c.partition.topic_id, c.partition.index);
                match c.change {
                    Change::BecomeFollower {
                        leader: Some(leader),
                        epoch,
                    } if leader != me => {
                        followed.insert(
                            key,
                            Followed {
                                part: c.partition.clone(),
                                leader,
                                epoch,
                                truncated: false,
                            },
                        );
                    }
                    _ => {
                        followed.remove(&key);
                    }
                }
            }
        }
        let leaders: Vec<i32> = lock(&shared).values().map(|f| f.leader).collect();
        fetchers.retain(|_, task| !task.is_finished());
        for leader in leaders {
            fetchers.entry(leader).or_insert_with(|| {
                tokio::spawn(fetch_from(
                    me,
                    leader,
                    shared.clone(),
                    (metadata.clone(), link.clone()),
                    cancel.clone(),
                ))
            });
        }
    }
    for (_, task) in fetchers {
        task.abort();
    }
}

/// The partitions followed from `leader`.
fn from(shared: &Shared, leader: i32) -> Vec<(Key, Followed)> {
    lock(shared)
        .iter()
        .filter(|(_, f)| f.leader == leader)
        .map(|(k, f)| (*k, f.clone()))
        .collect()
}

/// Copies every partition followed from `leader` until none is left or cancelled.
async fn fetch_from(
    me: i32,
    leader: i32,
    shared: Shared,
    (metadata, link): (Arc<MetadataView>, Arc<Link>),
    cancel: CancellationToken,
) {
    let mut conn: Option<Connection> = None;
    while !cancel.is_cancelled() {
        let parts = from(&shared, leader);
        if parts.is_empty() {
            return;
        }
        let result = match &conn {
            Some(c) => round(me, c, &shared, parts).await,
            None => match connect(&link, me, leader, &metadata).await {
                Ok(c) => {
                    conn = Some(c);
                    continue;
                }
                Err(e) => Err(e),
            },
        };
        if let Err(error) = result {
            tracing::debug!(leader, %error, "fetching from the leader failed; retrying");
            conn = None;
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(RETRY) => {}
            }
        }
    }
}

async fn connect(
    link: &Link,
    me: i32,
    leader: i32,
    metadata: &MetadataView,
) -> Result<Connection, String> {
    let client_id = format!("strata-replica-{me}");
    tokio::time::timeout(REQUEST_TIMEOUT, link.connect(metadata, leader, &client_id))
        .await
        .map_err(|_| format!("connecting to broker {leader} timed out"))?
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}

/// One round: cut back partitions newly followed, then one Fetch for all of them.
async fn round(
    me: i32,
    conn: &Connection,
    shared: &Shared,
    parts: Vec<(Key, Followed)>,
) -> Result<(), String> {
    for (key, f) in parts.iter().filter(|(_, f)| !f.truncated) {
        if truncate(conn, f).await?
            && let Some(current) = lock(shared).get_mut(key)
            && current.epoch == f.epoch
        {
            current.truncated = true;
        }
    }
    // A tiered copy reads its manifest first (an empty disk starts at the remote end).
    let ready: Vec<&Followed> = parts
        .iter()
        .map(|(_, f)| f)
        .filter(|f| f.truncated && !f.part.recovering())
        .collect();
    if ready.is_empty() {
        tokio::time::sleep(RETRY).await;
        return Ok(());
    }
    let mut by_topic: HashMap<&str, Vec<FetchPartition>> = HashMap::new();
    for f in &ready {
        by_topic.entry(f.part.topic.as_str()).or_default().push(
            FetchPartition::default()
                .with_partition(f.part.index)
                .with_current_leader_epoch(f.epoch)
                .with_fetch_offset(f.part.log.log_end_offset() as i64)
                .with_log_start_offset(f.part.log.log_start_offset() as i64)
                .with_partition_max_bytes(PARTITION_BYTES),
        );
    }
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(me))
        .with_max_wait_ms(FETCH_WAIT_MS)
        .with_min_bytes(1)
        .with_max_bytes(FETCH_BYTES)
        .with_topics(
            by_topic
                .into_iter()
                .map(|(t, ps)| {
                    FetchTopic::default()
                        .with_topic(topic_name(t))
                        .with_partitions(ps)
                })
                .collect(),
        );
    // v12: topics by name, replica id in the request (v15 moves it into replica_state).
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, conn.send_capped(&req, 12))
        .await
        .map_err(|_| "fetch timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    for t in resp.responses {
        for p in t.partitions {
            let Some(f) = ready
                .iter()
                .find(|f| f.part.topic == t.topic.0.as_str() && f.part.index == p.partition_index)
            else {
                continue;
            };
            let part = f.part.clone();
            match ResponseError::try_from_code(p.error_code) {
                None => {
                    let records = p.records.unwrap_or_default();
                    let hw = u64::try_from(p.high_watermark).unwrap_or(0);
                    let copy = part.clone();
                    let copying = f.copying();
                    tokio::task::spawn_blocking(move || copy.append_copied(&records, copying))
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| e.to_string())?;
                    if part.role() == copying {
                        part.follow_high_watermark(hw);
                    }
                }
                Some(ResponseError::OffsetOutOfRange) => {
                    // Behind the leader's log start (it deleted what this copy lacks): start
                    // over where the leader's log starts.
                    let start = u64::try_from(p.log_start_offset).unwrap_or(0);
                    if part.log.log_end_offset() < start {
                        let copy = part.clone();
                        let copying = f.copying();
                        tokio::task::spawn_blocking(move || copy.restart_copy_at(start, copying))
                            .await
                            .map_err(|e| e.to_string())?
                            .map_err(|e| e.to_string())?;
                    } else {
                        // Ahead of it: the epochs were not enough to tell; cut back again.
                        if let Some(cur) = lock(shared).get_mut(&(part.topic_id, part.index)) {
                            cur.truncated = false;
                        }
                    }
                }
                // Leadership moved or the metadata here lags: the role change sorts it out.
                Some(e) => {
                    tracing::debug!(topic = %part.topic, partition = part.index, error = ?e,
                        "the leader refused a replica fetch");
                }
            }
        }
    }
    Ok(())
}

/// Asks the leader where this copy's latest epoch ended there and cuts the copy back to it;
/// whether the copy is now consistent with the leader (false: ask again later).
async fn truncate(conn: &Connection, f: &Followed) -> Result<bool, String> {
    let part = &f.part;
    let latest = part
        .epochs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .latest();
    let Some(latest) = latest else {
        // Nothing written under any epoch: nothing to cut.
        return Ok(true);
    };
    let req = OffsetForLeaderEpochRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![
            OffsetForLeaderTopic::default()
                .with_topic(topic_name(&part.topic))
                .with_partitions(vec![
                    OffsetForLeaderPartition::default()
                        .with_partition(part.index)
                        .with_current_leader_epoch(f.epoch)
                        .with_leader_epoch(latest),
                ]),
        ]);
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, conn.send(&req))
        .await
        .map_err(|_| "epoch request timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let Some(answer) = resp.topics.first().and_then(|t| t.partitions.first()) else {
        return Err("OffsetForLeaderEpoch answered nothing".into());
    };
    if answer.error_code != 0 {
        return Ok(false);
    }
    let end = part.log.log_end_offset();
    let (cut, settled) = cut_point(
        &part.epochs.lock().unwrap_or_else(|p| p.into_inner()),
        latest,
        (answer.leader_epoch, answer.end_offset),
        part.log.log_start_offset(),
        end,
    );
    if cut < end {
        tracing::info!(topic = %part.topic, partition = part.index, from = end, to = cut,
            "cutting the copy back to the leader's");
        let copy = part.clone();
        let copying = f.copying();
        tokio::task::spawn_blocking(move || copy.truncate_copy(cut, copying))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    }
    Ok(settled)
}

/// Where a copy whose latest epoch is `latest` is cut back to, given the leader's answer
/// `(epoch, end)` for it (Kafka's KIP-101/KIP-279 rules), and whether that settles it:
/// - `(-1, -1)`: the leader has nothing of that epoch or earlier: keep nothing above this
///   copy's log start (the fetch then says where the leader's starts);
/// - the same epoch: cut at the leader's end of it;
/// - an older epoch (the leader never had ours): cut at the end of that epoch here or there,
///   whichever is lower, and ask again with what is left, as this copy's history of that
///   epoch may differ too.
fn cut_point(
    epochs: &crate::epochs::EpochCache,
    latest: i32,
    (epoch, leader_end): (i32, i64),
    log_start: u64,
    end: u64,
) -> (u64, bool) {
    let Ok(leader_end) = u64::try_from(leader_end) else {
        return (log_start, true);
    };
    if epoch >= latest {
        return (leader_end.min(end), true);
    }
    let (ours, our_end) = epochs.end_offset_for(epoch, latest, end);
    let our_end = u64::try_from(our_end).unwrap_or(log_start);
    (leader_end.min(our_end), ours == epoch)
}

#[cfg(test)]
mod tests {
    use super::cut_point;
    use crate::epochs::EpochCache;

    #[test]
    fn a_copy_is_cut_where_its_history_and_the_leaders_part() {
        // Ours: epoch 1 from 0, epoch 3 from 100, log end 150.
        let ours = EpochCache::in_memory(vec![(1, 0), (3, 100)]);
        // The leader has epoch 3 up to 120: cut there, settled.
        assert_eq!(cut_point(&ours, 3, (3, 120), 0, 150), (120, true));
        // The leader has it all and more: nothing to cut.
        assert_eq!(cut_point(&ours, 3, (3, 400), 0, 150), (150, true));
        // The leader never had epoch 3; its epoch 2 ends at 120. Our epoch 1 ends at 100, and
        // 90..100 may be epoch 2 there: cut at 100 and ask again about epoch 1.
        assert_eq!(cut_point(&ours, 3, (2, 120), 0, 150), (100, false));
        // The leader's epoch 1 ends at 90: below ours, settled.
        let cut = EpochCache::in_memory(vec![(1, 0)]);
        assert_eq!(cut_point(&cut, 1, (1, 90), 0, 100), (90, true));
        // The leader has nothing of epoch 1 or before: keep nothing above the log start.
        assert_eq!(cut_point(&cut, 1, (-1, -1), 40, 100), (40, true));
        // Nothing of ours at or below the leader's epoch: down to the log start, ask again.
        let late = EpochCache::in_memory(vec![(4, 50)]);
        assert_eq!(cut_point(&late, 4, (2, 70), 50, 80), (50, false));
    }
}
