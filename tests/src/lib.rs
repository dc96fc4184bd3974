//! strata-tests: black-box integration tests of Strata — in-process brokers, raw Kafka wire
//! traffic, real Kafka clients (librdkafka through the rdkafka crate), and later
//! testcontainers deployments and fault injection.
//!
//! The tests live under `tests/tests/`; this library holds the helpers they share.

pub mod cluster;
pub mod faults;
pub mod pki;
pub mod proxy;
pub mod s3;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use object_store::ObjectStore;
use strata_broker::Broker;
use strata_broker::config::BrokerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A broker with an embedded controller in this process, on loopback ports, in a temporary
/// directory that outlives restarts.
pub struct TestBroker {
    broker: Option<Broker>,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    http: Option<SocketAddr>,
    tweak: Box<dyn Fn(&mut BrokerConfig) + Send + Sync>,
    store: Option<Arc<dyn ObjectStore>>,
}

impl std::fmt::Debug for TestBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestBroker")
            .field("addr", &self.addr)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl TestBroker {
    /// Starts a broker with default settings.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a broker with settings changed by `tweak`.
    pub async fn start_with(tweak: impl Fn(&mut BrokerConfig) + Send + Sync + 'static) -> Self {
        Self::start_on_store(None, tweak).await
    }

    /// Starts a broker whose tiered storage goes to `store` (when given) instead of its
    /// data directory's `objects/`.
    pub async fn start_on_store(
        store: Option<Arc<dyn ObjectStore>>,
        tweak: impl Fn(&mut BrokerConfig) + Send + Sync + 'static,
    ) -> Self {
        // `RUST_LOG=strata_broker=debug cargo nextest run …` shows the broker's log.
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = Self {
            broker: None,
            dir,
            addr: "127.0.0.1:0".parse().expect("addr"),
            http: None,
            tweak: Box::new(tweak),
            store,
        };
        b.boot().await;
        b
    }

    fn config(&self) -> BrokerConfig {
        let mut c = BrokerConfig {
            data_dir: self.dir.path().to_owned(),
            ..Default::default()
        };
        c.kafka.listen = self.addr.to_string();
        c.controller.listen = "127.0.0.1:0".into();
        c.http.listen = "127.0.0.1:0".into();
        // Retention is checked every half second rather than Kafka's five minutes, so tests
        // see it take effect promptly.
        c.topics.retention_check_interval_ms = 500;
        (self.tweak)(&mut c);
        c
    }

    async fn boot(&mut self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("bind kafka listener");
        let broker = Broker::start_with_store(self.config(), listener, self.store.clone())
            .await
            .expect("broker starts");
        self.addr = broker.local_addr();
        self.http = broker.http_addr();
        self.broker = Some(broker);
    }

    /// The HTTP listener (`/metrics`, `/healthz`, `/readyz`), unless a tweak turned it off.
    /// It moves to a new port at each restart.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
    }

    /// The Kafka listener, as `host:port`.
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    /// The broker's data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The Kafka listener.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the embedded controller's gRPC, when this broker runs one.
    pub fn controller_addr(&self) -> Option<SocketAddr> {
        self.broker.as_ref()?.controller_addr()
    }

    /// The bound address of the listener named `name` (see `kafka.listeners`).
    pub fn listener(&self, name: &str) -> SocketAddr {
        self.broker
            .as_ref()
            .and_then(|b| b.listener_addr(name))
            .unwrap_or_else(|| panic!("no listener {name}"))
    }

    /// Shuts the broker down gracefully and starts it again on the same port and data.
    pub async fn restart(&mut self) {
        self.restart_after(|_| {}).await;
    }

    /// Shuts the broker down, runs `between` on its data directory (to wipe it, say), and
    /// starts it again on the same port.
    pub async fn restart_after(&mut self, between: impl FnOnce(&std::path::Path)) {
        if let Some(b) = self.broker.take() {
            b.shutdown().await;
        }
        between(self.dir.path());
        self.boot().await;
    }

    /// Shuts the broker down gracefully.
    pub async fn stop(mut self) {
        if let Some(b) = self.broker.take() {
            b.shutdown().await;
        }
    }
}

/// A raw Kafka protocol connection: one request at a time, checked correlation ids.
#[derive(Debug)]
pub struct RawClient {
    stream: TcpStream,
    correlation: i32,
}

impl RawClient {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> Self {
        Self {
            stream: TcpStream::connect(addr).await.expect("connect"),
            correlation: 0,
        }
    }

    /// Sends `req` at `version` and decodes the response.
    pub async fn call<R: Request>(&mut self, version: i16, req: &R) -> R::Response {
        self.correlation += 1;
        let api = ApiKey::try_from(R::KEY).expect("known api");
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str("strata-tests")));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, api.request_header_version(version))
            .expect("encode header");
        req.encode(&mut body, version).expect("encode request");
        self.send_frame(&body).await;
        let mut frame = self.read_frame().await.expect("a response");
        let header_version = if api == ApiKey::ApiVersions {
            0
        } else {
            R::Response::header_version(version)
        };
        let header = ResponseHeader::decode(&mut frame, header_version).expect("response header");
        assert_eq!(
            header.correlation_id, self.correlation,
            "responses in request order"
        );
        R::Response::decode(&mut frame, version).expect("decode response")
    }

    /// Writes `body` with a size prefix.
    pub async fn send_frame(&mut self, body: &[u8]) {
        let mut out = BytesMut::with_capacity(body.len() + 4);
        out.put_u32(body.len() as u32);
        out.put_slice(body);
        self.stream.write_all(&out).await.expect("write");
    }

    /// Writes raw bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Closes the write side.
    pub async fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// Reads one size-prefixed frame; `None` when the broker closed the connection.
    pub async fn read_frame(&mut self) -> Option<Bytes> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).await.ok()?;
        let len = u32::from_be_bytes(len) as usize;
        let mut buf = vec![0u8; len];
        self.stream.read_exact(&mut buf).await.ok()?;
        Some(Bytes::from(buf))
    }

    /// Waits up to `within` for the broker to close the connection (reading and discarding
    /// anything it sends first). True if it closed.
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        let mut sink = [0u8; 4096];
        tokio::time::timeout(within, async {
            loop {
                match self.stream.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }
}

/// A broker whose controller runs beside it as its own one-node quorum (`controller.mode =
/// "remote"`), so a test can read and change the metadata while the broker runs and after it
/// stops. Brokers are fenced after `session_timeout` without heartbeats.
#[derive(Debug)]
pub struct BrokerWithQuorum {
    pub broker: TestBroker,
    pub quorum: strata_controller::ControllerNode,
    pub controller: strata_controller::ControllerClient,
    _dir: tempfile::TempDir,
}

impl BrokerWithQuorum {
    pub async fn start(session_timeout: Duration) -> Self {
        Self::start_with(session_timeout, |_| {}).await
    }

    /// As [`Self::start`], with `tweak` applied to the broker's settings.
    pub async fn start_with(
        session_timeout: Duration,
        tweak: impl Fn(&mut BrokerConfig) + Send + Sync + 'static,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config =
            strata_controller::ControllerConfig::single_node(dir.path(), "127.0.0.1:0");
        config.session_timeout = session_timeout;
        let quorum = strata_controller::ControllerNode::start(config)
            .await
            .expect("controller");
        let addr = quorum.local_addr().to_string();
        let voter = format!("1@{addr}");
        let broker = TestBroker::start_with(move |c| {
            c.controller.mode = strata_broker::config::ControllerMode::Remote;
            c.controller.voters = vec![voter.clone()];
            tweak(c);
        })
        .await;
        Self {
            broker,
            quorum,
            controller: strata_controller::ControllerClient::new([addr]),
            _dir: dir,
        }
    }
}

/// One HTTP/1.1 GET of `path` from `addr` (the broker's `/metrics` and probes): the status
/// code and the body. Enough HTTP for these tests; not a general client.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = unchunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok((status, String::from_utf8_lossy(&body).to_string()))
}

/// The body of a chunked transfer.
fn unchunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

/// A new idempotent producer id (InitProducerId without a transactional id), epoch 0.
pub async fn new_producer_id(c: &mut RawClient) -> i64 {
    let init = c
        .call(
            4,
            &kafka_protocol::messages::InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_transaction_timeout_ms(60_000)
                .with_producer_id(kafka_protocol::messages::ProducerId(-1))
                .with_producer_epoch(-1),
        )
        .await;
    assert_eq!(init.error_code, 0);
    assert!(init.producer_id.0 >= 0);
    init.producer_id.0
}

/// An acks=all Produce of one record batch (raw bytes) to `topic`/`partition`, for tests that
/// speak the protocol directly (`.with_acks` changes the acks).
pub fn produce_request(
    topic: &str,
    partition: i32,
    batch: Vec<u8>,
) -> kafka_protocol::messages::ProduceRequest {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    kafka_protocol::messages::ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(kafka_protocol::messages::TopicName(StrBytes::from_string(
                    topic.to_owned(),
                )))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(partition)
                        .with_records(Some(Bytes::from(batch))),
                ]),
        ])
}

/// Produces values `from..to` to `topic` with librdkafka (acks=all), record `i` keyed `k{i}`
/// with value `i`, so they spread over the partitions; every one acknowledged.
pub async fn produce_numbered(bootstrap: &str, topic: &str, from: usize, to: usize) {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .create()
        .expect("producer");
    let futures: Vec<_> = (from..to)
        .map(|i| {
            let (key, value) = (format!("k{i}"), format!("{i}"));
            p.send_result(FutureRecord::to(topic).key(&key).payload(&value))
                .map_err(|(e, _)| e)
                .expect("enqueue")
        })
        .collect();
    for f in futures {
        f.await
            .expect("delivered")
            .map_err(|(e, _)| e)
            .expect("acked");
    }
}
