//! The broker's counters and histograms, bumped by the request path and background work as
//! they go (shared handles, a few atomic adds per request). `scrape` adds the gauges read from
//! the broker's state and renders both for `/metrics`.

use std::collections::HashMap;
use std::time::Duration;

use kafka_protocol::messages::ApiKey;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use strata_storage::tier::metered::{HistogramFamily, StoreMetrics};

/// One label.
type L1 = [(&'static str, String); 1];
/// Two labels.
type L2 = [(&'static str, String); 2];

/// Kafka request latency buckets: 100 µs to ~13 s.
fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// One API's name and, once it has been asked for, its request counter and latency
/// histogram: looked up without allocating, and an API nobody calls adds no series.
#[derive(Debug)]
struct ApiHandles {
    name: String,
    counted: std::sync::OnceLock<(Counter, Histogram)>,
}

/// The broker's counters and histograms; cheap to share.
#[derive(Debug)]
pub(crate) struct Metrics {
    requests: Family<L1, Counter>,
    request_latency: HistogramFamily<L1>,
    apis: HashMap<i16, ApiHandles>,
    request_errors: Family<L2, Counter>,
    bytes_in: Family<L1, Counter>,
    records_in: Family<L1, Counter>,
    bytes_out: Family<L1, Counter>,
    records_out: Family<L1, Counter>,
    replication_bytes_out: Counter,
    pub(crate) connections: Gauge,
    connections_accepted: Counter,
    connections_refused: Counter,
    /// The object store's requests (the tiering layer's store is wrapped to count them).
    pub(crate) store: StoreMetrics,
    pub(crate) uploaded_segments: Counter,
    pub(crate) uploaded_bytes: Counter,
    pub(crate) manifest_commits: Counter,
    pub(crate) fenced: Counter,
    /// Bytes of client telemetry pushes received (KIP-714).
    pub(crate) telemetry_bytes: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let requests = Family::<L1, Counter>::default();
        let request_latency: HistogramFamily<L1> = Family::new_with_constructor(request_histogram);
        let apis = crate::protocol::SUPPORTED
            .iter()
            .map(|(api, _, _)| {
                let handles = ApiHandles {
                    // The Debug form of the key is its Kafka name.
                    name: format!("{api:?}"),
                    counted: std::sync::OnceLock::new(),
                };
                (*api as i16, handles)
            })
            .collect();
        Self {
            requests,
            request_latency,
            apis,
            request_errors: Family::default(),
            bytes_in: Family::default(),
            records_in: Family::default(),
            bytes_out: Family::default(),
            records_out: Family::default(),
            replication_bytes_out: Counter::default(),
            connections: Gauge::default(),
            connections_accepted: Counter::default(),
            connections_refused: Counter::default(),
            store: StoreMetrics::default(),
            uploaded_segments: Counter::default(),
            uploaded_bytes: Counter::default(),
            manifest_commits: Counter::default(),
            fenced: Counter::default(),
            telemetry_bytes: Counter::default(),
        }
    }
}

impl Metrics {
    /// Counts one answered request of `api` that took `took`.
    pub(crate) fn request(&self, api: ApiKey, took: Duration) {
        if let Some(h) = self.apis.get(&(api as i16)) {
            let (requests, latency) = h.counted.get_or_init(|| {
                let label = [("api", h.name.clone())];
                (
                    self.requests.get_or_create_owned(&label),
                    self.request_latency.get_or_create_owned(&label),
                )
            });
            requests.inc();
            latency.observe(took.as_secs_f64());
        }
    }

    /// Counts an error answered (or, as `protocol`, a request the connection closed over)
    /// for `api`.
    pub(crate) fn error(&self, api: ApiKey, error: &str) {
        let name = self
            .apis
            .get(&(api as i16))
            .map_or("unknown", |h| h.name.as_str());
        self.request_errors
            .get_or_create(&[("api", name.to_owned()), ("error", error.to_owned())])
            .inc();
    }

    /// Counts a Kafka error code answered for `api` (0 is no error).
    pub(crate) fn error_code(&self, api: ApiKey, code: i16) {
        if code != 0 {
            let name = kafka_protocol::ResponseError::try_from_code(code)
                .map_or_else(|| format!("code_{code}"), |e| format!("{e:?}"));
            self.error(api, &name);
        }
    }

    /// Counts records produced to `topic`.
    pub(crate) fn produced(&self, topic: &str, records: u64, bytes: u64) {
        let label = [("topic", topic.to_owned())];
        self.bytes_in.get_or_create(&label).inc_by(bytes);
        self.records_in.get_or_create(&label).inc_by(records);
    }

    /// Counts records fetched from `topic`: by a consumer, or (`follower`) by a replica.
    pub(crate) fn fetched(&self, topic: &str, records: u64, bytes: u64, follower: bool) {
        if follower {
            self.replication_bytes_out.inc_by(bytes);
            return;
        }
        let label = [("topic", topic.to_owned())];
        self.bytes_out.get_or_create(&label).inc_by(bytes);
        self.records_out.get_or_create(&label).inc_by(records);
    }

    /// Counts a connection accepted (`true`) or refused by the connection limits.
    pub(crate) fn connection(&self, accepted: bool) {
        match accepted {
            true => self.connections_accepted.inc(),
            false => self.connections_refused.inc(),
        };
    }

    pub(crate) fn register(&self, r: &mut Registry) {
        r.register(
            "kafka_requests",
            "Kafka requests answered, by API",
            self.requests.clone(),
        );
        r.register(
            "kafka_request_duration_seconds",
            "Time from a request's arrival to its answer, by API",
            self.request_latency.clone(),
        );
        r.register(
            "kafka_request_errors",
            "Errors answered, by API and Kafka error (per partition where the API answers per partition)",
            self.request_errors.clone(),
        );
        r.register(
            "topic_bytes_in",
            "Record batch bytes produced, by topic",
            self.bytes_in.clone(),
        );
        r.register(
            "topic_records_in",
            "Records produced, by topic",
            self.records_in.clone(),
        );
        r.register(
            "topic_bytes_out",
            "Record batch bytes fetched by consumers, by topic",
            self.bytes_out.clone(),
        );
        r.register(
            "topic_records_out",
            "Records fetched by consumers, by topic",
            self.records_out.clone(),
        );
        r.register(
            "client_telemetry_bytes",
            "Bytes of client telemetry pushed (KIP-714), taken or refused",
            self.telemetry_bytes.clone(),
        );
        r.register(
            "replication_bytes_out",
            "Record batch bytes fetched by follower replicas",
            self.replication_bytes_out.clone(),
        );
        r.register(
            "connections",
            "Kafka client connections open",
            self.connections.clone(),
        );
        r.register(
            "connections_accepted",
            "Kafka client connections accepted",
            self.connections_accepted.clone(),
        );
        r.register(
            "connections_refused",
            "Kafka client connections refused by max_connections or max_connections_per_ip",
            self.connections_refused.clone(),
        );
        r.register(
            "tiering_uploaded_segments",
            "Segments uploaded to the object store",
            self.uploaded_segments.clone(),
        );
        r.register(
            "tiering_uploaded_bytes",
            "Segment log bytes uploaded to the object store",
            self.uploaded_bytes.clone(),
        );
        r.register(
            "tiering_manifest_commits",
            "Partition manifest versions committed",
            self.manifest_commits.clone(),
        );
        r.register(
            "tiering_fenced",
            "Manifest commits refused because a newer leader owns the manifest",
            self.fenced.clone(),
        );
        self.store.register(r);
    }
}
