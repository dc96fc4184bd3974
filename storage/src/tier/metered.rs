//! A measuring [`ObjectStore`] layer: counts every request the broker makes of its store by
//! operation, with its errors, its latency and the bytes it moved, for the broker's
//! `/metrics`. It changes nothing about the requests.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The label set of one operation (`put`, `get`, `delete`, `list`, `copy`, `multipart`).
type Op = [(&'static str, &'static str); 1];

/// A [`Family`] of histograms, each made with the same buckets.
pub type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Request latency buckets, 1 ms to ~16 s: an object store's requests take milliseconds
/// to seconds.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// What the layer counts; cheap to clone (the metrics are shared).
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    requests: Family<Op, Counter>,
    errors: Family<Op, Counter>,
    latency: HistogramFamily<Op>,
    bytes: Family<Op, Counter>,
    health: Arc<Mutex<Health>>,
}

/// When the store last answered, and its last failure.
#[derive(Debug, Default)]
struct Health {
    answered: Option<Instant>,
    failed: Option<(Instant, String)>,
}

/// The operations counted, so each has its series from the start (a rate over a series
/// that appears only with the first error misses that error).
const OPS: [&str; 6] = ["put", "get", "delete", "list", "copy", "multipart"];

impl Default for StoreMetrics {
    fn default() -> Self {
        let m = Self {
            requests: Family::default(),
            errors: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            bytes: Family::default(),
            health: Arc::default(),
        };
        for op in OPS {
            let label = [("op", op)];
            m.requests.get_or_create_owned(&label);
            m.errors.get_or_create_owned(&label);
        }
        m
    }
}

/// Whether `e` is the store's answer (a missing key, a lost create-only race, a failed
/// condition) rather than a failure to get one.
fn is_answer(e: &object_store::Error) -> bool {
    matches!(
        e,
        object_store::Error::NotFound { .. }
            | object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. }
            | object_store::Error::NotModified { .. }
    )
}

impl StoreMetrics {
    /// Adds the metrics to `registry` (which scrapes read them).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "object_store_requests",
            "Requests made of the object store, by operation",
            self.requests.clone(),
        );
        registry.register(
            "object_store_errors",
            "Object store requests that got no answer (a missing key or a failed condition is an answer), by operation",
            self.errors.clone(),
        );
        registry.register(
            "object_store_request_duration_seconds",
            "Object store request latency (to the response headers for gets), by operation",
            self.latency.clone(),
        );
        registry.register(
            "object_store_bytes",
            "Bytes put to (put, multipart) and answered by (get) the object store",
            self.bytes.clone(),
        );
    }

    /// The requests counted so far for `op` (tests read it).
    pub fn requests(&self, op: &'static str) -> u64 {
        self.requests.get_or_create(&[("op", op)]).get()
    }

    /// The bytes counted so far for `op` (put, multipart: sent; get: answered).
    pub fn bytes(&self, op: &'static str) -> u64 {
        self.bytes.get_or_create(&[("op", op)]).get()
    }

    /// How long ago the store last answered a request (None: never).
    pub fn since_answer(&self) -> Option<std::time::Duration> {
        self.health().answered.map(|t| t.elapsed())
    }

    /// Whether the last request that got no answer came after the last answer.
    pub fn failing(&self) -> bool {
        let h = self.health();
        match (&h.failed, h.answered) {
            (Some((failed, _)), Some(answered)) => *failed > answered,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// The last failure's message.
    pub fn last_error(&self) -> Option<String> {
        self.health().failed.as_ref().map(|(_, e)| e.clone())
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records one finished request of `op`.
    fn record<T>(&self, op: &'static str, started: Instant, result: &Result<T>) {
        let label = [("op", op)];
        self.requests.get_or_create(&label).inc();
        let now = Instant::now();
        match result {
            Err(e) if !is_answer(e) => {
                self.errors.get_or_create(&label).inc();
                self.health().failed = Some((now, e.to_string()));
            }
            _ => self.health().answered = Some(now),
        }
        self.latency
            .get_or_create(&label)
            .observe(now.duration_since(started).as_secs_f64());
    }

    fn add_bytes(&self, op: &'static str, n: u64) {
        self.bytes.get_or_create(&[("op", op)]).inc_by(n);
    }
}

/// The measuring layer.
pub struct MeteredStore {
    inner: Arc<dyn ObjectStore>,
    metrics: StoreMetrics,
}

impl MeteredStore {
    /// Wraps `inner`, counting into `metrics`.
    pub fn new(inner: Arc<dyn ObjectStore>, metrics: StoreMetrics) -> Self {
        Self { inner, metrics }
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        request: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let started = Instant::now();
        let result = request.await;
        self.metrics.record(op, started, &result);
        result
    }
}

impl fmt::Debug for MeteredStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MeteredStore({:?})", self.inner)
    }
}

impl fmt::Display for MeteredStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner)
    }
}

#[async_trait]
impl ObjectStore for MeteredStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let len = payload.content_length() as u64;
        let result = self
            .timed("put", self.inner.put_opts(location, payload, opts))
            .await;
        if result.is_ok() {
            self.metrics.add_bytes("put", len);
        }
        result
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.timed("multipart", self.inner.put_multipart_opts(location, opts))
            .await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let head = options.head;
        let result = self
            .timed("get", self.inner.get_opts(location, options))
            .await;
        if let Ok(r) = &result
            && !head
        {
            self.metrics.add_bytes("get", r.range.end - r.range.start);
        }
        result
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let metrics = self.metrics.clone();
        self.inner
            .delete_stream(locations)
            .map(move |deleted| {
                // One result per object: a deletion is counted when it answers.
                metrics.record("delete", Instant::now(), &deleted);
                deleted
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let mut first = true;
        self.inner
            .list(prefix)
            .map(move |item| {
                // A listing is one request as far as latency goes: to its first answer.
                if std::mem::take(&mut first) || item.is_err() {
                    metrics.record("list", started, &item);
                }
                item
            })
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.timed("list", self.inner.list_with_delimiter(prefix))
            .await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.timed("copy", self.inner.copy_opts(from, to, options))
            .await
    }
}

#[cfg(test)]
mod tests {
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    use super::*;

    #[tokio::test]
    async fn requests_bytes_and_errors_are_counted_by_operation() {
        let metrics = StoreMetrics::default();
        let store = MeteredStore::new(Arc::new(InMemory::new()), metrics.clone());
        let path = Path::from("a/b");
        store
            .put(&path, PutPayload::from_static(b"hello"))
            .await
            .expect("put");
        let got = store.get(&path).await.expect("get");
        assert_eq!(got.bytes().await.expect("body").len(), 5);
        assert!(store.get(&Path::from("a/missing")).await.is_err());
        let listed: Vec<_> = store.list(None).collect().await;
        assert_eq!(listed.len(), 1);
        assert_eq!(metrics.requests("put"), 1);
        assert_eq!(metrics.requests("get"), 2);
        assert_eq!(metrics.requests("list"), 1);
        // A missing key is the store's answer, not its failure.
        assert!(!metrics.failing());
        assert!(metrics.since_answer().is_some());
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains(r#"object_store_errors_total{op="get"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"object_store_bytes_total{op="put"} 5"#),
            "{text}"
        );
        assert!(
            text.contains(r#"object_store_bytes_total{op="get"} 5"#),
            "{text}"
        );
    }
}
