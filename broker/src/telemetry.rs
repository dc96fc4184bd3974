//! KIP-714 client telemetry: a client asks which metrics to push (GetTelemetrySubscriptions),
//! then pushes them every interval as OTLP (PushTelemetry). Which metrics, and how often,
//! come from `[telemetry]` (Kafka keeps them in client-metrics config resources; one broker
//! setting for every client is what Strata offers). The latest value of each pushed number
//! is exported on `/metrics` as `strata_client_metric`, labelled by the client and the
//! metric's name, bounded by `telemetry.max_series`; clients that stop pushing are dropped
//! after three intervals.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prost::Message;
use uuid::Uuid;

use crate::config::TelemetrySettings;

/// Kafka's error codes of the telemetry APIs.
pub(crate) mod code {
    pub(crate) const UNSUPPORTED_COMPRESSION_TYPE: i16 = 76;
    pub(crate) const THROTTLING_QUOTA_EXCEEDED: i16 = 89;
    pub(crate) const INVALID_REQUEST: i16 = 42;
    pub(crate) const UNKNOWN_SUBSCRIPTION_ID: i16 = 117;
    pub(crate) const TELEMETRY_TOO_LARGE: i16 = 118;
    pub(crate) const INVALID_RECORD: i16 = 87;
}

/// Record-batch codecs pushes may use (none, gzip, snappy, lz4, zstd), best first.
const ACCEPTED_COMPRESSION: [i8; 4] = [4, 3, 1, 2];

/// What GetTelemetrySubscriptions answers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Subscription {
    pub(crate) client_instance_id: Uuid,
    pub(crate) subscription_id: i32,
    pub(crate) accepted_compression: Vec<i8>,
    pub(crate) push_interval_ms: i32,
    pub(crate) max_bytes: i32,
    pub(crate) requested: Vec<String>,
}

/// One pushed series: a metric of one client, with the data point's attributes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct SeriesKey {
    pub(crate) client_instance_id: Uuid,
    pub(crate) name: String,
    /// The data point's attributes, `k=v` joined by commas, sorted.
    pub(crate) attributes: String,
}

#[derive(Debug)]
struct Client {
    /// When it last subscribed or pushed here.
    seen: Instant,
    last_push: Option<Instant>,
    /// From the push's request header, else the resource's `client_id` attribute.
    client_id: String,
    series: BTreeMap<(String, String), f64>,
}

/// The subscriptions handed out and the latest pushed values.
#[derive(Debug)]
pub(crate) struct Telemetry {
    settings: TelemetrySettings,
    subscription_id: i32,
    clients: Mutex<HashMap<Uuid, Client>>,
}

impl Telemetry {
    pub(crate) fn new(settings: TelemetrySettings) -> Self {
        // The same settings give the same id on every broker: a client that moves to
        // another broker keeps pushing under it.
        let described = format!("{:?}|{}", settings.metrics, settings.push_interval_ms);
        let subscription_id = crc32c::crc32c(described.as_bytes()) as i32;
        Self {
            settings,
            subscription_id,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Client>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(self.settings.push_interval_ms)
    }

    /// GetTelemetrySubscriptions of `client_instance_id` (nil: a new client, given an id).
    pub(crate) fn subscribe(&self, client_instance_id: Uuid, now: Instant) -> Subscription {
        let id = match client_instance_id.is_nil() {
            true => Uuid::new_v4(),
            false => client_instance_id,
        };
        if !self.settings.metrics.is_empty() {
            let mut clients = self.lock();
            self.expire(&mut clients, now);
            if let Some(client) = self.remember(&mut clients, id, now) {
                client.seen = now;
            }
        }
        Subscription {
            client_instance_id: id,
            subscription_id: self.subscription_id,
            accepted_compression: ACCEPTED_COMPRESSION.to_vec(),
            push_interval_ms: self.settings.push_interval_ms.min(i32::MAX as u64) as i32,
            max_bytes: self.settings.max_bytes.min(i32::MAX as u32) as i32,
            requested: self.settings.metrics.clone(),
        }
    }

    /// PushTelemetry: the error code Kafka answers, 0 when the metrics were taken.
    pub(crate) fn push(&self, push: &Push<'_>, now: Instant) -> i16 {
        if push.client_instance_id.is_nil() {
            return code::INVALID_REQUEST;
        }
        if push.subscription_id != self.subscription_id || self.settings.metrics.is_empty() {
            return code::UNKNOWN_SUBSCRIPTION_ID;
        }
        if push.metrics.len() > self.settings.max_bytes as usize {
            return code::TELEMETRY_TOO_LARGE;
        }
        if push.compression != 0 && !ACCEPTED_COMPRESSION.contains(&push.compression) {
            return code::UNSUPPORTED_COMPRESSION_TYPE;
        }
        {
            let mut clients = self.lock();
            self.expire(&mut clients, now);
            // A client may have subscribed at another broker (the subscription is the same
            // on every broker); with no room for it, it is told to subscribe again later.
            let Some(client) = self.remember(&mut clients, push.client_instance_id, now) else {
                return code::UNKNOWN_SUBSCRIPTION_ID;
            };
            // Pushes faster than the interval are refused, as Kafka does, but for the last.
            let early = self.interval().mul_f64(0.5);
            if !push.terminating
                && client
                    .last_push
                    .is_some_and(|t| now.duration_since(t) < early)
            {
                return code::THROTTLING_QUOTA_EXCEEDED;
            }
        }
        // Decoded without the lock: other pushes and scrapes do not wait for it.
        let decoded = decompress(push.compression, push.metrics, self.settings.max_bytes)
            .and_then(|bytes| MetricsData::decode(bytes.as_slice()).map_err(|e| e.to_string()));
        let data = match decoded {
            Ok(data) => data,
            Err(reason) => {
                tracing::debug!(client = %push.client_instance_id, %reason,
                    "a telemetry push that does not decode was refused");
                return code::INVALID_RECORD;
            }
        };
        let mut clients = self.lock();
        let room = self.room(&clients, push.client_instance_id);
        let Some(client) = self.remember(&mut clients, push.client_instance_id, now) else {
            return code::UNKNOWN_SUBSCRIPTION_ID;
        };
        client.last_push = Some(now);
        client.seen = now;
        if !push.client_id.is_empty() {
            client.client_id = push.client_id.to_owned();
        }
        client.absorb(&data, &self.settings.metrics, room);
        if push.terminating {
            clients.remove(&push.client_instance_id);
        }
        0
    }

    /// The entry of client `id`, made unless `max_series` clients are already known.
    fn remember<'a>(
        &self,
        clients: &'a mut HashMap<Uuid, Client>,
        id: Uuid,
        now: Instant,
    ) -> Option<&'a mut Client> {
        if !clients.contains_key(&id) && clients.len() >= self.settings.max_series {
            return None;
        }
        Some(clients.entry(id).or_insert_with(|| Client {
            seen: now,
            last_push: None,
            client_id: String::new(),
            series: BTreeMap::new(),
        }))
    }

    /// How many series `client` may hold within `max_series`.
    fn room(&self, clients: &HashMap<Uuid, Client>, client: Uuid) -> usize {
        let others: usize = clients
            .iter()
            .filter(|(id, _)| **id != client)
            .map(|(_, c)| c.series.len())
            .sum();
        self.settings.max_series.saturating_sub(others)
    }

    /// Forgets clients that have not pushed or subscribed for three intervals.
    fn expire(&self, clients: &mut HashMap<Uuid, Client>, now: Instant) {
        let horizon = self.interval() * 3;
        clients.retain(|_, c| now.saturating_duration_since(c.seen) < horizon);
    }

    /// Every exported series with its client id and value, for `/metrics`.
    pub(crate) fn series(&self) -> Vec<(SeriesKey, String, f64)> {
        let clients = self.lock();
        let mut out = Vec::new();
        for (id, c) in clients.iter() {
            for ((name, attributes), value) in &c.series {
                let key = SeriesKey {
                    client_instance_id: *id,
                    name: name.clone(),
                    attributes: attributes.clone(),
                };
                out.push((key, c.client_id.clone(), *value));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// A PushTelemetry request's fields.
#[derive(Debug)]
pub(crate) struct Push<'a> {
    pub(crate) client_instance_id: Uuid,
    /// The request header's client id (empty when it sent none).
    pub(crate) client_id: &'a str,
    pub(crate) subscription_id: i32,
    pub(crate) terminating: bool,
    pub(crate) compression: i8,
    pub(crate) metrics: &'a [u8],
}

impl Client {
    /// Takes the numbers of `data` whose names `requested` covers, adding series only
    /// while fewer than `room` are held.
    fn absorb(&mut self, data: &MetricsData, requested: &[String], room: usize) {
        for resource in &data.resource_metrics {
            if self.client_id.is_empty()
                && let Some(client_id) = resource
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|a| a.key == "client_id")
                    .and_then(|a| a.value.as_ref())
                    .and_then(AnyValue::text)
            {
                self.client_id = client_id;
            }
            let metrics = resource.scope_metrics.iter().flat_map(|s| &s.metrics);
            for metric in metrics.filter(|m| wanted(requested, &m.name)) {
                let points = match &metric.data {
                    Some(Data::Gauge(g)) => &g.data_points,
                    Some(Data::Sum(s)) => &s.data_points,
                    None => continue,
                };
                for point in points {
                    let Some(value) = point.number() else {
                        continue;
                    };
                    let key = (metric.name.clone(), point.attributes_label());
                    if self.series.len() >= room && !self.series.contains_key(&key) {
                        continue;
                    }
                    self.series.insert(key, value);
                }
            }
        }
    }
}

/// Whether `name` is one of the requested metrics (prefixes; `*` for all).
fn wanted(requested: &[String], name: &str) -> bool {
    requested
        .iter()
        .any(|p| p == "*" || name.starts_with(p.as_str()))
}

fn decompress(codec: i8, bytes: &[u8], budget: u32) -> Result<Vec<u8>, String> {
    match codec {
        0 => Ok(bytes.to_vec()),
        c => strata_storage::decompress_all(i16::from(c), bytes, u64::from(budget) * 8)
            .map_err(|e| e.to_string()),
    }
}

// The OTLP metrics messages (opentelemetry/proto/metrics/v1), only the fields read here:
// prost skips the rest. Histograms and summaries are not exported.

#[derive(Clone, PartialEq, Message)]
pub(crate) struct MetricsData {
    #[prost(message, repeated, tag = "1")]
    pub(crate) resource_metrics: Vec<ResourceMetrics>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct ResourceMetrics {
    #[prost(message, optional, tag = "1")]
    pub(crate) resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub(crate) scope_metrics: Vec<ScopeMetrics>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct Resource {
    #[prost(message, repeated, tag = "1")]
    pub(crate) attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct ScopeMetrics {
    #[prost(message, repeated, tag = "2")]
    pub(crate) metrics: Vec<Metric>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct Metric {
    #[prost(string, tag = "1")]
    pub(crate) name: String,
    #[prost(oneof = "Data", tags = "5, 7")]
    pub(crate) data: Option<Data>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub(crate) enum Data {
    #[prost(message, tag = "5")]
    Gauge(Gauge),
    #[prost(message, tag = "7")]
    Sum(Sum),
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct Gauge {
    #[prost(message, repeated, tag = "1")]
    pub(crate) data_points: Vec<NumberDataPoint>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct Sum {
    #[prost(message, repeated, tag = "1")]
    pub(crate) data_points: Vec<NumberDataPoint>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct NumberDataPoint {
    #[prost(message, repeated, tag = "7")]
    pub(crate) attributes: Vec<KeyValue>,
    #[prost(oneof = "Number", tags = "4, 6")]
    pub(crate) value: Option<Number>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub(crate) enum Number {
    #[prost(double, tag = "4")]
    Double(f64),
    #[prost(sfixed64, tag = "6")]
    Int(i64),
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct KeyValue {
    #[prost(string, tag = "1")]
    pub(crate) key: String,
    #[prost(message, optional, tag = "2")]
    pub(crate) value: Option<AnyValue>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct AnyValue {
    #[prost(oneof = "Value", tags = "1, 2, 3, 4")]
    pub(crate) value: Option<Value>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub(crate) enum Value {
    #[prost(string, tag = "1")]
    String(String),
    #[prost(bool, tag = "2")]
    Bool(bool),
    #[prost(int64, tag = "3")]
    Int(i64),
    #[prost(double, tag = "4")]
    Double(f64),
}

impl AnyValue {
    fn text(&self) -> Option<String> {
        Some(match self.value.as_ref()? {
            Value::String(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Double(d) => d.to_string(),
        })
    }
}

impl NumberDataPoint {
    fn number(&self) -> Option<f64> {
        match self.value.as_ref()? {
            Number::Double(d) => Some(*d),
            Number::Int(i) => Some(*i as f64),
        }
    }

    fn attributes_label(&self) -> String {
        let mut pairs: Vec<String> = self
            .attributes
            .iter()
            .map(|a| {
                let v = a
                    .value
                    .as_ref()
                    .and_then(AnyValue::text)
                    .unwrap_or_default();
                format!("{}={v}", a.key)
            })
            .collect();
        pairs.sort();
        pairs.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(metrics: &[&str]) -> TelemetrySettings {
        TelemetrySettings {
            metrics: metrics.iter().map(|m| (*m).to_owned()).collect(),
            push_interval_ms: 1000,
            max_bytes: 1 << 16,
            max_series: 3,
        }
    }

    fn attribute(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue {
                value: Some(Value::String(value.to_owned())),
            }),
        }
    }

    fn point(value: Number, attributes: Vec<KeyValue>) -> NumberDataPoint {
        NumberDataPoint {
            attributes,
            value: Some(value),
        }
    }

    /// Two metrics of a producer, and one the subscription does not ask for.
    fn pushed() -> Vec<u8> {
        let metric = |name: &str, data| Metric {
            name: name.to_owned(),
            data: Some(data),
        };
        MetricsData {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![attribute("client_id", "orders-app")],
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![
                        metric(
                            "org.apache.kafka.producer.node.request.latency.avg",
                            Data::Gauge(Gauge {
                                data_points: vec![point(
                                    Number::Double(1.5),
                                    vec![attribute("node_id", "1")],
                                )],
                            }),
                        ),
                        metric(
                            "org.apache.kafka.producer.record.queue.time.max",
                            Data::Sum(Sum {
                                data_points: vec![point(Number::Int(7), Vec::new())],
                            }),
                        ),
                        metric(
                            "org.apache.kafka.consumer.poll.idle.ratio.avg",
                            Data::Gauge(Gauge {
                                data_points: vec![point(Number::Double(0.5), Vec::new())],
                            }),
                        ),
                    ],
                }],
            }],
        }
        .encode_to_vec()
    }

    fn push<'a>(sub: &Subscription, metrics: &'a [u8], compression: i8) -> Push<'a> {
        Push {
            client_instance_id: sub.client_instance_id,
            client_id: "",
            subscription_id: sub.subscription_id,
            terminating: false,
            compression,
            metrics,
        }
    }

    #[test]
    fn a_subscribed_client_pushes_what_was_asked_and_it_is_exported() {
        let t = Telemetry::new(settings(&["org.apache.kafka.producer."]));
        let now = Instant::now();
        let sub = t.subscribe(Uuid::nil(), now);
        assert!(
            !sub.client_instance_id.is_nil(),
            "a new client is given an id"
        );
        assert_eq!(sub.requested, ["org.apache.kafka.producer."]);
        assert_eq!(t.subscribe(sub.client_instance_id, now), sub, "stable");
        let bytes = pushed();
        assert_eq!(t.push(&push(&sub, &bytes, 0), now), 0);
        let series = t.series();
        let got: Vec<(&str, &str, &str, f64)> = series
            .iter()
            .map(|(k, client, v)| (k.name.as_str(), k.attributes.as_str(), client.as_str(), *v))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "org.apache.kafka.producer.node.request.latency.avg",
                    "node_id=1",
                    "orders-app",
                    1.5
                ),
                (
                    "org.apache.kafka.producer.record.queue.time.max",
                    "",
                    "orders-app",
                    7.0
                ),
            ]
        );
        // Too soon after the last push: throttled; the terminating push is taken and the
        // client forgotten.
        assert_eq!(
            t.push(&push(&sub, &bytes, 0), now),
            code::THROTTLING_QUOTA_EXCEEDED
        );
        let mut last = push(&sub, &bytes, 0);
        last.terminating = true;
        assert_eq!(t.push(&last, now), 0);
        assert!(t.series().is_empty());
    }

    #[test]
    fn pushes_are_checked_before_anything_is_kept() {
        let t = Telemetry::new(settings(&["*"]));
        let now = Instant::now();
        let sub = t.subscribe(Uuid::nil(), now);
        let bytes = pushed();
        let mut wrong = push(&sub, &bytes, 0);
        wrong.subscription_id ^= 1;
        assert_eq!(t.push(&wrong, now), code::UNKNOWN_SUBSCRIPTION_ID);
        assert_eq!(
            t.push(&push(&sub, &bytes, 9), now),
            code::UNSUPPORTED_COMPRESSION_TYPE
        );
        let huge = vec![0u8; (1 << 16) + 1];
        assert_eq!(
            t.push(&push(&sub, &huge, 0), now),
            code::TELEMETRY_TOO_LARGE
        );
        assert_eq!(
            t.push(&push(&sub, b"\xff\xff\xff", 0), now),
            code::INVALID_RECORD
        );
        assert!(t.series().is_empty());
        // Compressed as a record batch would be: taken; `*` takes all three, up to the
        // bound of three series.
        let zstd = strata_storage::compress(4, &bytes).expect("zstd");
        assert_eq!(t.push(&push(&sub, &zstd, 4), now), 0);
        assert_eq!(t.series().len(), 3);
        // A client that subscribed at another broker pushes here, and finds no room left.
        let mut stranger = push(&sub, &bytes, 0);
        stranger.client_instance_id = Uuid::new_v4();
        assert_eq!(t.push(&stranger, now), 0);
        assert_eq!(t.series().len(), 3);
        // At most `max_series` clients are remembered.
        for _ in 0..3 {
            t.subscribe(Uuid::nil(), now);
        }
        assert_eq!(t.lock().len(), 3);
        // Three intervals without a push: forgotten.
        let later = now + Duration::from_secs(4);
        t.subscribe(Uuid::nil(), later);
        assert!(t.series().is_empty());
    }

    #[test]
    fn with_nothing_requested_clients_are_told_so_and_not_remembered() {
        let t = Telemetry::new(settings(&[]));
        let now = Instant::now();
        let sub = t.subscribe(Uuid::nil(), now);
        assert!(sub.requested.is_empty());
        assert_eq!(
            t.push(&push(&sub, &pushed(), 0), now),
            code::UNKNOWN_SUBSCRIPTION_ID
        );
        assert!(t.lock().is_empty());
    }
}
