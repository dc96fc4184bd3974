//! `/metrics`: the counters of [`Metrics`] plus gauges read from the broker's state when a
//! scrape asks: partitions, per-partition offsets and upload lag, group lag, the controller's
//! role, the process. Each scrape builds a fresh registry over both, so nothing holds the
//! broker's state but the scrape itself.
//!
//! Per-partition series (offsets, upload lag, group lag) are bounded by
//! `http.partition_metrics_limit`; past it they are left out and
//! `strata_partition_series_omitted` says how many.

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::partition::role::Role;
use crate::state::BrokerState;

/// One label.
type L1 = [(&'static str, String); 1];
/// Two labels.
type L2 = [(&'static str, String); 2];
/// Three labels.
type L3 = [(&'static str, String); 3];
/// Four labels.
type L4 = [(&'static str, String); 4];
/// A gauge of a client's pushed value.
type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// The controller's Raft state as this process sees it, when it runs a quorum member.
pub(crate) type RaftWatch = tokio::sync::watch::Receiver<
    openraft::RaftMetrics<strata_controller::NodeId, openraft::BasicNode>,
>;

/// The quorum member running in this process, if any: its Raft state and commit latency.
#[derive(Clone)]
pub(crate) struct QuorumMember {
    pub(crate) raft: RaftWatch,
    pub(crate) commit_latency: prometheus_client::metrics::histogram::Histogram,
}

/// Gauges of one scrape, registered fresh each time.
#[derive(Default)]
struct Snapshot {
    partitions: Family<L1, Gauge>,
    offsets: Family<L3, Gauge>,
    upload_lag_records: Family<L2, Gauge>,
    upload_lag_bytes: Family<L2, Gauge>,
    upload_lag_total_records: Gauge,
    upload_lag_total_bytes: Gauge,
    group_lag: Family<L3, Gauge>,
    omitted: Gauge,
    client_metrics: Family<L4, FloatGauge>,
}

/// The whole exposition: counters plus what the broker's state says now.
pub(crate) fn render(state: &BrokerState, quorum: Option<&QuorumMember>) -> String {
    // The process's own metrics keep the names Prometheus' clients give them; Strata's are
    // prefixed.
    let mut registry = Registry::default();
    crate::process::register(&mut registry);
    let r = registry.sub_registry_with_prefix("strata");
    state.metrics.register(r);
    state.tiering.reader.metrics().register(r);
    let snap = snapshot(state);
    r.register(
        "partitions",
        "Hosted partitions by state: leader, follower, offline (no live leader), \
         under_replicated (led here, ISR smaller than the replicas), at_min_isr (led here, \
         ISR at min.insync.replicas), recovering (reading their manifest)",
        snap.partitions,
    );
    r.register(
        "partition_offset",
        "Per hosted partition: log_end, high_watermark, log_start, local_start and \
         remote_end offsets",
        snap.offsets,
    );
    r.register(
        "tiering_upload_lag_records",
        "Per led tiered partition: records below the high watermark not yet in the manifest",
        snap.upload_lag_records,
    );
    r.register(
        "tiering_upload_lag_bytes",
        "Per led tiered partition: local segment bytes past the manifest's end",
        snap.upload_lag_bytes,
    );
    r.register(
        "tiering_upload_lag_total_records",
        "All led tiered partitions' upload lag in records",
        snap.upload_lag_total_records,
    );
    r.register(
        "tiering_upload_lag_total_bytes",
        "All led tiered partitions' upload lag in bytes",
        snap.upload_lag_total_bytes,
    );
    r.register(
        "group_lag",
        "Per group and partition this broker coordinates and hosts: high watermark minus \
         committed offset",
        snap.group_lag,
    );
    r.register(
        "client_metric",
        "The latest value of each metric clients push (KIP-714 telemetry, as \
         telemetry.metrics asks), by client instance, client id, metric name and the data \
         point's attributes",
        snap.client_metrics,
    );
    r.register(
        "partition_series_omitted",
        "Partitions left out of per-partition series (http.partition_metrics_limit)",
        snap.omitted,
    );
    if let Some(q) = quorum {
        register_raft(r, &q.raft);
        r.register(
            "controller_commit_duration_seconds",
            "Time this quorum member took to commit metadata commands while leading",
            q.commit_latency.clone(),
        );
    }
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_text::encode(&mut text, &registry);
    text
}

fn snapshot(state: &BrokerState) -> Snapshot {
    let snap = Snapshot::default();
    for (key, client_id, value) in state.telemetry.series() {
        let labels = [
            ("client_instance_id", key.client_instance_id.to_string()),
            ("client_id", client_id),
            ("name", key.name),
            ("attributes", key.attributes),
        ];
        snap.client_metrics.get_or_create(&labels).set(value);
    }
    let image = state.image();
    let limit = match state.config.http.partition_metrics {
        true => state.config.http.partition_metrics_limit,
        false => 0,
    };
    let mut series = 0usize;
    let mut omitted = 0i64;
    let count = |s: &str| {
        snap.partitions
            .get_or_create(&[("state", s.to_owned())])
            .inc();
    };
    for s in [
        "leader",
        "follower",
        "offline",
        "under_replicated",
        "at_min_isr",
        "recovering",
    ] {
        let _ = snap.partitions.get_or_create(&[("state", s.to_owned())]);
    }
    for part in state.partitions.hosted() {
        let meta = image.topics.get(&part.topic).and_then(|t| {
            usize::try_from(part.index)
                .ok()
                .and_then(|i| t.partitions.get(i))
        });
        let settings = part.settings();
        let leads = matches!(part.role(), Role::Leader { .. });
        match part.role() {
            Role::Leader { .. } => count("leader"),
            Role::Follower { .. } => count("follower"),
            Role::Offline => {}
        }
        if meta.is_none_or(|m| m.leader.is_none()) {
            count("offline");
        }
        if let Some(m) = meta.filter(|_| leads) {
            if m.isr.len() < m.replicas.len() {
                count("under_replicated");
            }
            if m.isr.len() as i64 == settings.min_insync_replicas {
                count("at_min_isr");
            }
        }
        if part.recovering() {
            count("recovering");
        }
        if series >= limit {
            omitted += 1;
            continue;
        }
        series += 1;
        let hw = *part.high_watermark.borrow();
        let manifest = part.remote.manifest();
        let remote_end = manifest.as_ref().map(|m| m.end_offset());
        let offsets = [
            ("log_end", Some(part.log.log_end_offset())),
            ("high_watermark", Some(hw)),
            ("log_start", Some(part.log_start_offset())),
            ("local_start", Some(part.log.log_start_offset())),
            ("remote_end", remote_end),
        ];
        for (kind, value) in offsets {
            if let Some(v) = value {
                snap.offsets
                    .get_or_create(&[
                        ("topic", part.topic.clone()),
                        ("partition", part.index.to_string()),
                        ("offset", kind.to_owned()),
                    ])
                    .set(i64::try_from(v).unwrap_or(i64::MAX));
            }
        }
        if leads && settings.remote {
            let uploaded = remote_end.unwrap_or(0);
            let records = hw.saturating_sub(uploaded);
            let bytes: u64 = part
                .log
                .segments()
                .iter()
                .filter(|s| s.next_offset > uploaded)
                .map(|s| s.size_bytes)
                .sum();
            let label = [
                ("topic", part.topic.clone()),
                ("partition", part.index.to_string()),
            ];
            let (records, bytes) = (to_i64(records), to_i64(bytes));
            snap.upload_lag_records.get_or_create(&label).set(records);
            snap.upload_lag_bytes.get_or_create(&label).set(bytes);
            snap.upload_lag_total_records.inc_by(records);
            snap.upload_lag_total_bytes.inc_by(bytes);
        }
    }
    for (group, offsets) in state.groups.committed() {
        for ((topic, index), committed) in offsets {
            if series >= limit {
                omitted += 1;
                continue;
            }
            let Some(part) = image
                .topics
                .get(&topic)
                .and_then(|t| state.partitions.get(t.id, index))
            else {
                continue;
            };
            series += 1;
            let hw = to_i64(*part.high_watermark.borrow());
            snap.group_lag
                .get_or_create(&[
                    ("group", group.clone()),
                    ("topic", topic),
                    ("partition", index.to_string()),
                ])
                .set((hw - committed).max(0));
        }
    }
    snap.omitted.set(omitted);
    snap
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn register_raft(r: &mut Registry, raft: &RaftWatch) {
    let m = raft.borrow().clone();
    let role = Family::<L1, Gauge>::default();
    for s in ["leader", "follower", "candidate", "learner", "shutdown"] {
        let _ = role.get_or_create(&[("role", s.to_owned())]);
    }
    let current = match m.state {
        openraft::ServerState::Leader => "leader",
        openraft::ServerState::Follower => "follower",
        openraft::ServerState::Candidate => "candidate",
        openraft::ServerState::Learner => "learner",
        openraft::ServerState::Shutdown => "shutdown",
    };
    role.get_or_create(&[("role", current.to_owned())]).set(1);
    r.register(
        "controller_role",
        "This quorum member's Raft role (1 for the current one)",
        role,
    );
    let gauges: [(&str, &str, Option<u64>); 4] = [
        (
            "controller_term",
            "The controller quorum's current Raft term",
            Some(m.current_term),
        ),
        (
            "controller_last_log_index",
            "The last Raft log index this member holds",
            m.last_log_index,
        ),
        (
            "controller_last_applied_index",
            "The last Raft log index applied to the metadata here",
            m.last_applied.map(|l| l.index),
        ),
        (
            "controller_millis_since_quorum_ack",
            "As leader: milliseconds since a quorum last acknowledged it (commit latency bound)",
            m.millis_since_quorum_ack,
        ),
    ];
    for (name, help, value) in gauges {
        if let Some(v) = value {
            let g = Gauge::<i64>::default();
            g.set(to_i64(v));
            r.register(name, help, g);
        }
    }
}
