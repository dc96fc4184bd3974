//! The broker's configuration: defaults, then a TOML file, then `STRATA_*` environment
//! variables, then command-line overrides; validated once at start with errors that name the
//! bad key. Every setting has a default that works on a laptop, so `strata` runs with none.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::BrokerError;
pub use crate::security::config::{
    AuthorizationConfig, ClientAuth, ListenerConfig, SaslConfig, SecurityProtocol, TlsConfig,
};

/// The whole configuration of a `strata` process.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// This broker's id (`node.id`); also the controller's id when it runs embedded.
    pub node_id: i32,
    /// The rack or zone this broker runs in (Kafka's `broker.rack`): replicas of a partition
    /// go to different racks where there are enough of them. None: no rack.
    pub rack: Option<String>,
    /// Where partition logs and the embedded controller's Raft state live.
    pub data_dir: PathBuf,
    /// The Kafka listener.
    pub kafka: KafkaConfig,
    /// Where the controller quorum is.
    pub controller: ControllerSection,
    /// Defaults for topics.
    pub topics: TopicDefaults,
    /// Consumer group coordination.
    pub groups: GroupSettings,
    /// Transaction coordination.
    pub transactions: TransactionSettings,
    /// The log cleaner of compacted topics.
    pub cleaner: CleanerSettings,
    /// Where sealed segments are uploaded.
    pub object_store: ObjectStoreSettings,
    /// The cache remote reads go through.
    pub cache: CacheSettings,
    /// The HTTP listener: metrics and probes.
    pub http: HttpSettings,
    /// What clients are asked to push as telemetry (KIP-714).
    pub telemetry: TelemetrySettings,
}

/// KIP-714 client telemetry, the same for every client (Kafka keeps it per client-metrics
/// config resource). Pushed numbers are exported on `/metrics` as `strata_client_metric`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// Names (prefixes) of the metrics clients are asked to push, as Kafka's client-metrics
    /// `metrics`: `["*"]` for all; empty (the default) asks for none, and clients push
    /// nothing.
    pub metrics: Vec<String>,
    /// How often clients push (Kafka's client-metrics `interval.ms`).
    pub push_interval_ms: u64,
    /// The largest push taken (Kafka's `telemetry.max.bytes`).
    pub max_bytes: u32,
    /// At most this many clients are remembered and this many series exported; past it,
    /// values of new series are dropped.
    pub max_series: usize,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            metrics: Vec::new(),
            push_interval_ms: 300_000,
            max_bytes: 1 << 20,
            max_series: 10_000,
        }
    }
}

/// The HTTP listener serving `/metrics`, `/healthz` and `/readyz`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Address to listen on; empty turns the listener off.
    pub listen: String,
    /// Per-partition series (offsets, upload lag, group lag) in `/metrics`.
    pub partition_metrics: bool,
    /// At most this many per-partition series; the rest are counted in
    /// `strata_partition_series_omitted` instead, so a broker with many partitions keeps
    /// its scrapes small.
    pub partition_metrics_limit: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9644".into(),
            partition_metrics: true,
            partition_metrics_limit: 2000,
        }
    }
}

/// The foyer cache of remote segment chunks.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    /// Bytes of chunks kept in memory.
    pub memory_bytes: u64,
    /// Bytes of chunks kept on local disk (0: memory only).
    pub disk_bytes: u64,
    /// Directory of the disk cache; empty means `<data_dir>/cache`.
    pub dir: Option<PathBuf>,
    /// Size and alignment of one ranged GET of a segment object.
    pub chunk_bytes: u64,
    /// Chunks fetched ahead of a consumer reading remote data in order.
    pub readahead_chunks: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            memory_bytes: 256 << 20,
            disk_bytes: 0,
            dir: None,
            chunk_bytes: 4 << 20,
            readahead_chunks: 4,
        }
    }
}

/// The object store sealed segments go to (tiered storage).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectStoreSettings {
    /// `file:///abs/dir`, `s3://bucket/prefix` or `memory://prefix`; empty means
    /// `file://<data_dir>/objects`.
    pub url: String,
    /// S3-compatible endpoint (MinIO, s3s), e.g. `http://minio:9000`.
    pub endpoint: Option<String>,
    /// S3 region.
    pub region: Option<String>,
    /// Static S3 credentials; otherwise the AWS_* environment.
    pub access_key_id: Option<String>,
    /// Static S3 credentials.
    pub secret_access_key: Option<String>,
    /// Path-style S3 requests, as MinIO wants.
    pub path_style: bool,
    /// Allow an `http://` endpoint.
    pub allow_http: bool,
    /// How often each led partition's sealed segments are checked for upload.
    pub upload_interval_ms: u64,
    /// Partitions uploading at once.
    pub max_concurrent_uploads: usize,
    /// GETs of remote data in flight at once (reads and read-ahead).
    pub max_concurrent_gets: usize,
    /// Threads of the runtime that does the object-store work that may wait (GETs and
    /// read-ahead, uploads, retention, their HTTP connections).
    pub background_threads: usize,
    /// How many nice steps below the broker's other threads that runtime's threads run (0
    /// to 19; 0: the same priority), so produce and tail fetches go first when the CPUs
    /// are busy with a replay from the object store.
    pub background_nice: i32,
    /// Longest one partition's upload, retention or recovery step may take before it is
    /// abandoned and retried with backoff.
    pub operation_timeout_ms: u64,
    /// Longest wait between retries of a failing partition (the backoff doubles up to it).
    pub max_backoff_ms: u64,
    /// Segment objects no manifest names are deleted once this old (crash leftovers).
    pub orphan_grace_ms: u64,
    /// Create the bucket at start when it does not exist (S3/MinIO, with aws-sdk-s3).
    pub create_bucket: bool,
    /// When the cluster metadata holds no topics (a new or wiped controller), create the
    /// topics the bucket's catalog lists, under their old ids, so their data is found again.
    pub recover_topics: bool,
    /// Tier `__consumer_offsets` and `__transaction_state` when this broker creates them
    /// (their `remote.storage.enable`), so a broker with an empty disk restores committed
    /// offsets and transaction state from the bucket. Off by default for now: one fault
    /// checker run with it saw a committed offset go back after a leader was killed, not yet
    /// explained.
    pub tier_internal_topics: bool,
    /// At start, check that the store refuses a second create-only put of one key (manifest
    /// fencing depends on it) and refuse to start when it does not.
    pub verify_create_only: bool,
}

impl Default for ObjectStoreSettings {
    fn default() -> Self {
        Self {
            url: String::new(),
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            path_style: true,
            allow_http: false,
            upload_interval_ms: 5_000,
            max_concurrent_uploads: 4,
            max_concurrent_gets: 16,
            background_threads: 2,
            background_nice: 10,
            operation_timeout_ms: 300_000,
            max_backoff_ms: 60_000,
            orphan_grace_ms: 3_600_000,
            create_bucket: false,
            recover_topics: true,
            tier_internal_topics: false,
            verify_create_only: true,
        }
    }
}

/// The Kafka protocol listener.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Address to listen on.
    pub listen: String,
    /// `host:port` clients are told to connect to; defaults to `listen`. Set it when clients
    /// reach the broker through another address (containers, NAT).
    pub advertised: Option<String>,
    /// Largest request accepted (`socket.request.max.bytes`); checked before allocating.
    pub max_request_bytes: u32,
    /// Requests one connection may have in flight before the broker stops reading from it.
    pub max_in_flight_requests: usize,
    /// A connection with no request for this long is closed (`connections.max.idle.ms`).
    pub idle_timeout_ms: u64,
    /// Largest Fetch response (`fetch.max.bytes`); a client asking for more gets this much
    /// (still at least one whole batch, as Kafka does).
    pub fetch_max_bytes: u32,
    /// Send the local records of Fetch answers on plaintext listeners from the segment files
    /// with `sendfile`, not copied through the broker's memory. Off by default: over
    /// loopback it measured the same CPU per GB and ~10% less consumer throughput
    /// (docs/performance.md); a NIC that sends from the page cache is what it is for.
    pub sendfile: bool,
    /// Bytes of requests and Fetch responses held in memory across all connections
    /// (`queued.max.request.bytes`). A request's body is read only once its bytes fit;
    /// until then that connection waits.
    pub max_queued_bytes: u64,
    /// Connections open at once (`max.connections`); 0 means a quarter of the process's
    /// open-file limit, so clients can never take the descriptors the logs need.
    pub max_connections: usize,
    /// Connections open at once from one client address (`max.connections.per.ip`); 0 means
    /// no limit of its own.
    pub max_connections_per_ip: usize,
    /// Name of the listener at `listen`, which is PLAINTEXT and carries the brokers' own
    /// traffic (followers' fetches); clients that come in on it are told its addresses.
    pub listener_name: String,
    /// More listeners, each with its address, advertised address and security protocol
    /// (`[[kafka.listeners]]`, Kafka's `listeners`, `advertised.listeners` and
    /// `listener.security.protocol.map`).
    pub listeners: Vec<ListenerConfig>,
    /// Certificates of the SSL and SASL_SSL listeners.
    pub tls: TlsConfig,
    /// SASL of the SASL_PLAINTEXT and SASL_SSL listeners.
    pub sasl: SaslConfig,
    /// Whether and how requests are checked against ACLs.
    pub authorization: AuthorizationConfig,
    /// The listener brokers reach each other on (Kafka's `inter.broker.listener.name`):
    /// replication and the brokers' own requests. Unset: the main listener (plaintext,
    /// trusted). An SSL listener with required client certificates runs that traffic over
    /// mutual TLS: each broker presents `kafka.tls`'s certificate and checks the others'
    /// against `kafka.tls.client_ca_file`; with authorization on, the brokers' principals
    /// (their certificates' subjects) need to be super users.
    pub inter_broker_listener: Option<String>,
}

/// How the controller runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControllerMode {
    /// A one-node quorum in this process (the default).
    Embedded,
    /// This process is a member of the quorum listed in `voters` and also a broker.
    Combined,
    /// The quorum runs elsewhere; this process is only a broker.
    Remote,
    /// This process is only a member of the quorum listed in `voters` (Kafka's
    /// `process.roles=controller`): it serves no Kafka clients and holds no partitions, so
    /// brokers in `remote` mode can come and go beside a quorum of its own.
    Dedicated,
}

/// Where the controller quorum is.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerSection {
    /// Embedded, combined, remote or dedicated.
    pub mode: ControllerMode,
    /// Controller gRPC address of this process (embedded, combined and dedicated modes).
    pub listen: String,
    /// Quorum voters as `id@host:port` (Kafka's `controller.quorum.voters`); combined,
    /// remote and dedicated modes.
    pub voters: Vec<String>,
    /// A broker without heartbeats for this long is fenced (`broker.session.timeout.ms`).
    pub session_timeout_ms: u64,
    /// How often the broker heartbeats (`broker.heartbeat.interval.ms`).
    pub heartbeat_interval_ms: u64,
    /// How often the controller leader moves partition leadership back to each partition's
    /// preferred replica (`leader.imbalance.check.interval.seconds`, in ms); 0 turns it off
    /// (`auto.leader.rebalance.enable=false`).
    pub leader_imbalance_check_interval_ms: u64,
    /// Share of a broker's preferred partitions led elsewhere, in percent, that triggers it
    /// (`leader.imbalance.per.broker.percentage`).
    pub leader_imbalance_per_broker_percentage: u32,
    /// TLS for the controller's gRPC (`[controller.tls]`).
    pub tls: ControllerTls,
}

/// Mutual TLS on the controllers' gRPC, between controllers and from brokers: each presents
/// `cert_file` (with `key_file`) and accepts only certificates `ca_file` signed. All three,
/// or none (plaintext, for a private network).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerTls {
    /// This process's certificate (PEM), for its controller and its calls to the quorum.
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub key_file: Option<PathBuf>,
    /// The CA (PEM) that signs every controller's and broker's certificate.
    pub ca_file: Option<PathBuf>,
}

impl ControllerTls {
    /// The files read, when TLS is configured.
    pub fn load(&self) -> Result<Option<strata_controller::tls::GrpcTls>, BrokerError> {
        let (Some(cert), Some(key), Some(ca)) = (&self.cert_file, &self.key_file, &self.ca_file)
        else {
            return Ok(None);
        };
        strata_controller::tls::GrpcTls::load(cert, key, ca)
            .map(Some)
            .map_err(|reason| BrokerError::Config {
                key: "controller.tls".into(),
                reason,
            })
    }
}

/// Topic defaults.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicDefaults {
    /// `auto.create.topics.enable`: Metadata and Produce for an unknown topic create it.
    pub auto_create: bool,
    /// `num.partitions` for auto-created topics and CreateTopics with -1.
    pub default_partitions: i32,
    /// `default.replication.factor` for auto-created topics, CreateTopics with -1 and
    /// `__consumer_offsets`. Unset: 3 once the cluster has three live brokers, else as many
    /// as are live (1 for a single node).
    pub default_replication_factor: Option<i16>,
    /// `log.flush.scheduler.interval.ms`: how often hosted logs are checked for data to
    /// fsync: sealed segments (so they can be uploaded and need no recovery after a crash)
    /// and logs whose `flush.ms` has passed.
    pub flush_check_interval_ms: u64,
    /// `producer.id.expiration.ms`: an idempotent producer that has not written to a partition
    /// for this long is forgotten there (checked every `flush_check_interval_ms`).
    pub producer_id_expiration_ms: u64,
    /// `replica.lag.time.max.ms`: a follower that has not caught up with its leader for this
    /// long leaves the partition's in-sync replicas until it does.
    pub replica_lag_time_max_ms: u64,
    /// Partition replicas a broker may host: CreateTopics and CreatePartitions that would
    /// put more on the live brokers on average are refused (POLICY_VIOLATION), and a broker
    /// opens no more than this many. 0 derives it from the open-file limit (each hosted
    /// partition keeps its active segment's log open, twice with `direct_writes`; see
    /// `budget`) and memory; a value
    /// those cannot serve stops start-up.
    pub max_partitions_per_broker: usize,
    /// `log.retention.check.interval.ms`: how often a partition nothing happened to is
    /// checked for time-based retention (local, remote and the local tail of tiered topics)
    /// and a follower learns what its leader uploaded. A partition that changed (a segment
    /// sealed, data replicated, leadership moved) is passed every
    /// `object_store.upload_interval_ms`.
    pub retention_check_interval_ms: u64,
    /// Sealed segments' log files kept open at once across all partitions (a cache; a file
    /// it closed is opened again when read). 0: an eighth of the open-file limit, at most
    /// 1024.
    pub open_sealed_segment_files: usize,
    /// Append to the active segments, and read them for fetches, with direct I/O
    /// (`O_DIRECT`), not through the page cache: less and steadier CPU per GB produced, but
    /// every fetch of the active segment reads the disk (a tail consumer waits a little
    /// longer, several consumers of the same records each read them there), and each
    /// partition keeps a second descriptor (docs/performance.md). The log directory's
    /// filesystem must take direct I/O: start-up checks and refuses otherwise.
    pub direct_writes: bool,
}

/// Consumer group coordination (Kafka's `group.*` and `offsets.*` settings).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupSettings {
    /// Partitions of `__consumer_offsets` (`offsets.topic.num.partitions`), fixed once created.
    pub offsets_topic_partitions: i32,
    /// `group.min.session.timeout.ms`.
    pub min_session_timeout_ms: u64,
    /// `group.max.session.timeout.ms`.
    pub max_session_timeout_ms: u64,
    /// `group.initial.rebalance.delay.ms`: an empty group's first rebalance waits this long
    /// for more members.
    pub initial_rebalance_delay_ms: u64,
    /// `group.max.size`.
    pub max_size: usize,
    /// `offsets.retention.minutes`: offsets of a group empty this long are deleted.
    pub offsets_retention_minutes: u64,
    /// `offsets.topic.segment.bytes`: segments of `__consumer_offsets` (set when this
    /// broker creates it). Smaller segments are sealed, cleaned and uploaded sooner.
    pub offsets_topic_segment_bytes: u64,
    /// `group.consumer.session.timeout.ms`: a KIP-848 consumer group member that does not
    /// heartbeat for this long is removed.
    pub consumer_session_timeout_ms: u64,
    /// `group.consumer.heartbeat.interval.ms`: how often KIP-848 members heartbeat.
    pub consumer_heartbeat_interval_ms: u64,
    /// `group.consumer.assignors`: the server-side assignors members may name (`uniform`,
    /// `range`); the first is the default. A list, or Kafka's comma-separated string.
    #[serde(deserialize_with = "names")]
    pub consumer_assignors: Vec<String>,
}

/// A list of names given as a list or as one comma-separated string.
fn names<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Names {
        List(Vec<String>),
        Joined(String),
    }
    Ok(match Names::deserialize(d)? {
        Names::List(v) => v,
        Names::Joined(s) => s
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// Transaction coordination (Kafka's `transaction.*` settings).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransactionSettings {
    /// Partitions of `__transaction_state` (`transaction.state.log.num.partitions`), fixed
    /// once created (at the first transactional producer).
    pub state_topic_partitions: i32,
    /// `transaction.max.timeout.ms`: the longest `transaction.timeout.ms` a producer may ask.
    pub max_timeout_ms: u64,
    /// `transactional.id.expiration.ms`: a transactional id unused this long is forgotten.
    pub id_expiration_ms: u64,
    /// `transaction.state.log.segment.bytes`: segments of `__transaction_state`.
    pub state_topic_segment_bytes: u64,
}

/// The log cleaner (Kafka's `log.cleaner.*` settings).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CleanerSettings {
    /// `log.cleaner.enable`: without it, compacted topics keep every record.
    pub enable: bool,
    /// `log.cleaner.threads`: partitions cleaned at once.
    pub threads: usize,
    /// `log.cleaner.dedupe.buffer.size`: memory for the key maps, shared by the threads.
    pub dedupe_buffer_bytes: u64,
    /// `log.cleaner.io.max.bytes.per.second`: what the cleaner reads and writes, all threads
    /// together; 0 for no limit.
    pub io_max_bytes_per_second: u64,
    /// `log.cleaner.backoff.ms`: how often partitions are checked for cleaning.
    pub backoff_ms: u64,
}

impl Default for CleanerSettings {
    fn default() -> Self {
        Self {
            enable: true,
            threads: 1,
            dedupe_buffer_bytes: 128 << 20,
            io_max_bytes_per_second: 0,
            backoff_ms: 15_000,
        }
    }
}

impl Default for TransactionSettings {
    fn default() -> Self {
        Self {
            state_topic_partitions: 16,
            max_timeout_ms: 900_000,
            id_expiration_ms: 7 * 24 * 3_600_000,
            state_topic_segment_bytes: 100 << 20,
        }
    }
}

impl Default for GroupSettings {
    fn default() -> Self {
        Self {
            offsets_topic_partitions: 16,
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            initial_rebalance_delay_ms: 3_000,
            max_size: 10_000,
            offsets_retention_minutes: 7 * 24 * 60,
            offsets_topic_segment_bytes: 100 << 20,
            consumer_session_timeout_ms: 45_000,
            consumer_heartbeat_interval_ms: 5_000,
            consumer_assignors: crate::group::assignor::ASSIGNORS
                .iter()
                .map(|a| a.to_string())
                .collect(),
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            rack: None,
            data_dir: PathBuf::from("./strata-data"),
            kafka: KafkaConfig::default(),
            controller: ControllerSection::default(),
            topics: TopicDefaults::default(),
            groups: GroupSettings::default(),
            transactions: TransactionSettings::default(),
            cleaner: CleanerSettings::default(),
            object_store: ObjectStoreSettings::default(),
            cache: CacheSettings::default(),
            http: HttpSettings::default(),
            telemetry: TelemetrySettings::default(),
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9092".into(),
            advertised: None,
            max_request_bytes: 100 * 1024 * 1024,
            max_in_flight_requests: 64,
            idle_timeout_ms: 10 * 60 * 1000,
            fetch_max_bytes: 55 * 1024 * 1024,
            sendfile: false,
            max_queued_bytes: 1 << 30,
            max_connections: 0,
            max_connections_per_ip: 0,
            listener_name: "PLAINTEXT".into(),
            listeners: Vec::new(),
            tls: TlsConfig::default(),
            sasl: SaslConfig::default(),
            authorization: AuthorizationConfig::default(),
            inter_broker_listener: None,
        }
    }
}

impl Default for ControllerSection {
    fn default() -> Self {
        Self {
            mode: ControllerMode::Embedded,
            listen: "127.0.0.1:9093".into(),
            voters: Vec::new(),
            session_timeout_ms: 9_000,
            heartbeat_interval_ms: 2_000,
            leader_imbalance_check_interval_ms: 300_000,
            leader_imbalance_per_broker_percentage: 10,
            tls: ControllerTls::default(),
        }
    }
}

impl Default for TopicDefaults {
    fn default() -> Self {
        Self {
            auto_create: true,
            default_partitions: 1,
            default_replication_factor: None,
            flush_check_interval_ms: 1_000,
            producer_id_expiration_ms: 86_400_000,
            replica_lag_time_max_ms: 30_000,
            max_partitions_per_broker: 0,
            open_sealed_segment_files: 0,
            retention_check_interval_ms: 300_000,
            direct_writes: false,
        }
    }
}

/// The top-level keys of [`BrokerConfig`]: an environment variable with [`ENV_PREFIX`] sets
/// a setting only when its name starts with one of them.
const CONFIG_KEYS: [&str; 13] = [
    "node_id",
    "rack",
    "data_dir",
    "kafka",
    "controller",
    "topics",
    "groups",
    "transactions",
    "cleaner",
    "object_store",
    "cache",
    "http",
    "telemetry",
];

/// Prefix of environment variables that set config keys: `STRATA_KAFKA__LISTEN` sets
/// `kafka.listen` (a double underscore separates sections).
pub const ENV_PREFIX: &str = "STRATA_";

/// Where the settings come from, lowest precedence first after the defaults.
#[derive(Debug, Default)]
pub struct ConfigSources {
    /// A TOML file.
    pub file: Option<PathBuf>,
    /// Environment variables (all of them; those without [`ENV_PREFIX`] are ignored).
    pub env: Vec<(String, String)>,
    /// `key=value` overrides with dotted keys, e.g. `kafka.listen=0.0.0.0:9092`.
    pub overrides: Vec<String>,
}

impl BrokerConfig {
    /// Layers the sources over the defaults, then validates.
    pub fn load(sources: &ConfigSources) -> Result<Self, BrokerError> {
        let mut table = toml::Table::new();
        if let Some(path) = &sources.file {
            let text = std::fs::read_to_string(path).map_err(|source| BrokerError::Io {
                op: "reading config file",
                path: path.clone(),
                source,
            })?;
            table = text
                .parse()
                .map_err(|e: toml::de::Error| BrokerError::Config {
                    key: path.display().to_string(),
                    reason: e.to_string(),
                })?;
        }
        for (name, value) in &sources.env {
            if let Some(key) = name.strip_prefix(ENV_PREFIX) {
                let key = key.to_ascii_lowercase().replace("__", ".");
                let top = key.split('.').next().unwrap_or_default();
                // Other tools share the prefix (`STRATA_BOOTSTRAP` for stratactl,
                // `STRATA_REQUIRE_DOCKER` for the tests): only names of a section or key
                // of this file count; the rest are named in a warning, not an error.
                // The command line's own variables.
                if name == "STRATA_LOG_FORMAT" {
                    continue;
                }
                if !CONFIG_KEYS.contains(&top) {
                    tracing::warn!(variable = %name, "not a broker setting; ignored");
                    continue;
                }
                set_path(&mut table, &key, value)?;
            }
        }
        for item in &sources.overrides {
            let (key, value) = item.split_once('=').ok_or_else(|| BrokerError::Config {
                key: item.clone(),
                reason: "expected key=value".into(),
            })?;
            set_path(&mut table, key.trim(), value.trim())?;
        }
        let config: Self =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                BrokerError::Config {
                    key: e.path().to_string(),
                    reason: e.inner().to_string(),
                }
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), BrokerError> {
        let bad = |key: &str, reason: String| {
            Err(BrokerError::Config {
                key: key.into(),
                reason,
            })
        };
        if self.node_id < 0 {
            return bad("node_id", "must not be negative".into());
        }
        if let Some(rack) = &self.rack
            && (rack.trim().is_empty() || rack.len() > 255)
        {
            return bad("rack", format!("{rack:?} must be 1 to 255 characters"));
        }
        if self.kafka.listen.parse::<SocketAddr>().is_err() {
            return bad(
                "kafka.listen",
                format!("{:?} is not ip:port", self.kafka.listen),
            );
        }
        if !self.http.listen.is_empty() && self.http.listen.parse::<SocketAddr>().is_err() {
            return bad(
                "http.listen",
                format!(
                    "{:?} is not ip:port (or empty, for no listener)",
                    self.http.listen
                ),
            );
        }
        if let Some(a) = &self.kafka.advertised
            && split_host_port(a).is_none()
        {
            return bad("kafka.advertised", format!("{a:?} is not host:port"));
        }
        if let Err((key, reason)) = crate::security::config::validate(
            &self.kafka.listener_name,
            &self.kafka.listen,
            &self.kafka.listeners,
            &self.kafka.tls,
            &self.kafka.sasl,
            &self.kafka.authorization,
        ) {
            return bad(&key, reason);
        }
        if let Some(name) = &self.kafka.inter_broker_listener
            && *name != self.kafka.listener_name
        {
            let key = "kafka.inter_broker_listener";
            let Some(l) = self.kafka.listeners.iter().find(|l| l.name == *name) else {
                return bad(key, format!("no listener is named {name}"));
            };
            let auth = l.client_auth.unwrap_or(self.kafka.tls.client_auth);
            match l.protocol() {
                Some(SecurityProtocol::Plaintext) => {}
                Some(SecurityProtocol::Ssl) if auth == ClientAuth::Required => {}
                Some(SecurityProtocol::Ssl) => {
                    return bad(
                        key,
                        format!(
                            "listener {name} must require client certificates \
                             (client_auth = \"required\"): brokers know each other by them"
                        ),
                    );
                }
                _ => {
                    return bad(
                        key,
                        format!(
                            "listener {name} is SASL: brokers authenticate to each other with \
                             certificates, on an SSL listener (or PLAINTEXT)"
                        ),
                    );
                }
            }
        }
        if !(1024..=1 << 30).contains(&self.kafka.max_request_bytes) {
            return bad(
                "kafka.max_request_bytes",
                "must be between 1 KiB and 1 GiB".into(),
            );
        }
        if !(1..=1024).contains(&self.kafka.max_in_flight_requests) {
            return bad(
                "kafka.max_in_flight_requests",
                "must be between 1 and 1024".into(),
            );
        }
        if self.kafka.idle_timeout_ms == 0 {
            return bad("kafka.idle_timeout_ms", "must be positive".into());
        }
        if !(1024..=1 << 30).contains(&self.kafka.fetch_max_bytes) {
            return bad(
                "kafka.fetch_max_bytes",
                "must be between 1 KiB and 1 GiB".into(),
            );
        }
        let largest = u64::from(self.kafka.max_request_bytes.max(self.kafka.fetch_max_bytes));
        if self.kafka.max_queued_bytes < largest {
            return bad(
                "kafka.max_queued_bytes",
                format!(
                    "must hold at least one largest request or response ({largest} bytes: \
                     kafka.max_request_bytes / kafka.fetch_max_bytes)"
                ),
            );
        }
        let t = &self.telemetry;
        if !(100..=3_600_000).contains(&t.push_interval_ms) {
            return bad(
                "telemetry.push_interval_ms",
                "must be between 100 ms and one hour".into(),
            );
        }
        if !(1024..=64 << 20).contains(&t.max_bytes) {
            return bad(
                "telemetry.max_bytes",
                "must be between 1 KiB and 64 MiB".into(),
            );
        }
        if let Some(m) = t.metrics.iter().find(|m| m.trim().is_empty()) {
            return bad(
                "telemetry.metrics",
                format!("{m:?}: a name prefix, or \"*\" for all"),
            );
        }
        if self.topics.default_partitions < 1 {
            return bad("topics.default_partitions", "must be at least 1".into());
        }
        if self
            .topics
            .default_replication_factor
            .is_some_and(|rf| rf < 1)
        {
            return bad(
                "topics.default_replication_factor",
                "must be at least 1".into(),
            );
        }
        if self.topics.replica_lag_time_max_ms < 100 {
            return bad(
                "topics.replica_lag_time_max_ms",
                "must be at least 100 ms".into(),
            );
        }
        let g = &self.groups;
        if !(1..=1000).contains(&g.offsets_topic_partitions) {
            return bad(
                "groups.offsets_topic_partitions",
                "must be between 1 and 1000".into(),
            );
        }
        if g.min_session_timeout_ms == 0 || g.min_session_timeout_ms > g.max_session_timeout_ms {
            return bad(
                "groups.min_session_timeout_ms",
                "must be positive and at most groups.max_session_timeout_ms".into(),
            );
        }
        if g.max_size == 0 {
            return bad("groups.max_size", "must be positive".into());
        }
        if g.consumer_heartbeat_interval_ms == 0
            || g.consumer_heartbeat_interval_ms >= g.consumer_session_timeout_ms
            || g.consumer_session_timeout_ms > i32::MAX as u64
        {
            return bad(
                "groups.consumer_heartbeat_interval_ms",
                "must be positive and below groups.consumer_session_timeout_ms".into(),
            );
        }
        let known = crate::group::assignor::ASSIGNORS;
        if g.consumer_assignors.is_empty()
            || g.consumer_assignors
                .iter()
                .any(|a| !known.contains(&a.as_str()))
        {
            return bad(
                "groups.consumer_assignors",
                format!("must name one or more of {}", known.join(", ")),
            );
        }
        if g.offsets_retention_minutes == 0 {
            return bad(
                "groups.offsets_retention_minutes",
                "must be positive".into(),
            );
        }
        let t = &self.transactions;
        if !(1..=1000).contains(&t.state_topic_partitions) {
            return bad(
                "transactions.state_topic_partitions",
                "must be between 1 and 1000".into(),
            );
        }
        if !(1..=i32::MAX as u64).contains(&t.max_timeout_ms) {
            return bad(
                "transactions.max_timeout_ms",
                format!("must be between 1 and {}", i32::MAX),
            );
        }
        if t.id_expiration_ms == 0 {
            return bad("transactions.id_expiration_ms", "must be positive".into());
        }
        for (key, v) in [
            (
                "groups.offsets_topic_segment_bytes",
                g.offsets_topic_segment_bytes,
            ),
            (
                "transactions.state_topic_segment_bytes",
                t.state_topic_segment_bytes,
            ),
        ] {
            if !(1024..=strata_storage::MAX_SEGMENT_BYTES).contains(&v) {
                return bad(
                    key,
                    format!(
                        "must be between 1024 and {}",
                        strata_storage::MAX_SEGMENT_BYTES
                    ),
                );
            }
        }
        let c = &self.cleaner;
        if !(1..=64).contains(&c.threads) {
            return bad("cleaner.threads", "must be between 1 and 64".into());
        }
        // Each thread's map needs room for a useful number of keys (Kafka's floor is 1 MiB).
        if c.dedupe_buffer_bytes < (c.threads as u64) << 20 {
            return bad(
                "cleaner.dedupe_buffer_bytes",
                "must give each cleaner thread at least 1 MiB".into(),
            );
        }
        if c.backoff_ms == 0 {
            return bad("cleaner.backoff_ms", "must be positive".into());
        }
        let o = &self.object_store;
        for (key, v) in [
            (
                "topics.flush_check_interval_ms",
                self.topics.flush_check_interval_ms,
            ),
            (
                "topics.producer_id_expiration_ms",
                self.topics.producer_id_expiration_ms,
            ),
            (
                "topics.retention_check_interval_ms",
                self.topics.retention_check_interval_ms,
            ),
            ("object_store.upload_interval_ms", o.upload_interval_ms),
            (
                "object_store.max_concurrent_uploads",
                o.max_concurrent_uploads as u64,
            ),
            (
                "object_store.max_concurrent_gets",
                o.max_concurrent_gets as u64,
            ),
            (
                "object_store.background_threads",
                o.background_threads as u64,
            ),
            ("object_store.operation_timeout_ms", o.operation_timeout_ms),
            ("object_store.max_backoff_ms", o.max_backoff_ms),
        ] {
            if v == 0 {
                return bad(key, "must be positive".into());
            }
        }
        if !(0..=19).contains(&o.background_nice) {
            return bad(
                "object_store.background_nice",
                format!("{} is not between 0 and 19", o.background_nice),
            );
        }
        let c = &self.cache;
        if c.chunk_bytes < 4096 || c.chunk_bytes > 256 << 20 {
            return bad(
                "cache.chunk_bytes",
                "must be between 4 KiB and 256 MiB".into(),
            );
        }
        if c.memory_bytes < c.chunk_bytes * (c.readahead_chunks + 1) {
            return bad(
                "cache.memory_bytes",
                "must hold at least readahead_chunks + 1 chunks".into(),
            );
        }
        if self.controller.heartbeat_interval_ms == 0
            || self.controller.heartbeat_interval_ms >= self.controller.session_timeout_ms
        {
            return bad(
                "controller.heartbeat_interval_ms",
                "must be positive and below controller.session_timeout_ms".into(),
            );
        }
        let tls = &self.controller.tls;
        let given = [&tls.cert_file, &tls.key_file, &tls.ca_file]
            .iter()
            .filter(|f| f.is_some())
            .count();
        if given != 0 && given != 3 {
            return bad(
                "controller.tls",
                "cert_file, key_file and ca_file go together (mutual TLS)".into(),
            );
        }
        if self.controller.mode != ControllerMode::Embedded {
            let voters = self.voters()?;
            let member = matches!(
                self.controller.mode,
                ControllerMode::Combined | ControllerMode::Dedicated
            );
            let listed = u64::try_from(self.node_id).is_ok_and(|id| voters.contains_key(&id));
            if member && !listed {
                let mode = format!("{:?}", self.controller.mode).to_lowercase();
                return bad(
                    "controller.voters",
                    format!(
                        "must list this node (node_id {}) in {mode} mode",
                        self.node_id
                    ),
                );
            }
        }
        if self.controller.leader_imbalance_per_broker_percentage > 100 {
            return bad(
                "controller.leader_imbalance_per_broker_percentage",
                "must be at most 100".into(),
            );
        }
        Ok(())
    }

    /// `controller.voters` parsed into ids and addresses.
    pub fn voters(&self) -> Result<BTreeMap<u64, String>, BrokerError> {
        let mut voters = BTreeMap::new();
        for v in &self.controller.voters {
            let parsed = v
                .split_once('@')
                .and_then(|(id, addr)| Some((id.parse::<u64>().ok()?, addr)))
                .filter(|(_, addr)| split_host_port(addr).is_some());
            let Some((id, addr)) = parsed else {
                return Err(BrokerError::Config {
                    key: "controller.voters".into(),
                    reason: format!("{v:?} is not id@host:port"),
                });
            };
            voters.insert(id, addr.to_owned());
        }
        if voters.is_empty() {
            return Err(BrokerError::Config {
                key: "controller.voters".into(),
                reason: "needs at least one voter outside embedded mode".into(),
            });
        }
        Ok(voters)
    }

    /// Every listener's advertised address, the main one first (what the broker registers).
    pub fn endpoints(&self) -> Vec<strata_controller::model::Endpoint> {
        let (host, port) = self.advertised();
        let main = strata_controller::model::Endpoint {
            listener: self.kafka.listener_name.clone(),
            host,
            port,
        };
        let extra = self.kafka.listeners.iter().filter_map(|l| {
            let (host, port) = split_host_port(l.advertised.as_deref().unwrap_or(&l.listen))?;
            Some(strata_controller::model::Endpoint {
                listener: l.name.clone(),
                host,
                port,
            })
        });
        std::iter::once(main).chain(extra).collect()
    }

    /// The advertised `host:port` of the main listener.
    pub fn advertised(&self) -> (String, u16) {
        let a = self
            .kafka
            .advertised
            .as_deref()
            .unwrap_or(&self.kafka.listen);
        split_host_port(a).unwrap_or_else(|| ("127.0.0.1".into(), 9092))
    }

    /// The idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.kafka.idle_timeout_ms)
    }

    /// Directory of partition logs.
    pub fn log_dir(&self) -> PathBuf {
        self.data_dir.join("logs")
    }

    /// The remote read cache's settings, with the default directory resolved.
    pub fn cache_config(&self) -> strata_storage::tier::read::CacheConfig {
        let c = &self.cache;
        strata_storage::tier::read::CacheConfig {
            memory_bytes: usize::try_from(c.memory_bytes).unwrap_or(usize::MAX),
            disk_bytes: usize::try_from(c.disk_bytes).unwrap_or(usize::MAX),
            disk_dir: Some(c.dir.clone().unwrap_or_else(|| self.data_dir.join("cache"))),
            chunk_bytes: c.chunk_bytes,
            readahead_chunks: c.readahead_chunks,
            max_concurrent_gets: self.object_store.max_concurrent_gets,
        }
    }

    /// Directory of the embedded controller.
    pub fn controller_dir(&self) -> PathBuf {
        self.data_dir.join("controller")
    }

    /// The object store settings for the tiering layer, with the default URL resolved.
    pub fn store_config(&self) -> Result<strata_storage::tier::store::StoreConfig, BrokerError> {
        let o = &self.object_store;
        let url = if o.url.is_empty() {
            let dir = self.data_dir.join("objects");
            std::fs::create_dir_all(&dir).map_err(|source| BrokerError::Io {
                op: "creating",
                path: dir.clone(),
                source,
            })?;
            let abs = dir.canonicalize().map_err(|source| BrokerError::Io {
                op: "resolving",
                path: dir.clone(),
                source,
            })?;
            format!("file://{}", abs.display())
        } else {
            o.url.clone()
        };
        Ok(strata_storage::tier::store::StoreConfig {
            url,
            endpoint: o.endpoint.clone(),
            region: o.region.clone(),
            access_key_id: o.access_key_id.clone(),
            secret_access_key: o.secret_access_key.clone(),
            path_style: o.path_style,
            allow_http: o.allow_http,
        })
    }
}

fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse().ok()?;
    (!host.is_empty()).then(|| (host.trim_matches(['[', ']']).to_owned(), port))
}

/// Sets dotted `key` in `table` to `value`, read as a TOML value when it is one (numbers,
/// booleans, arrays) and as a string otherwise.
fn set_path(table: &mut toml::Table, key: &str, value: &str) -> Result<(), BrokerError> {
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts
        .pop()
        .filter(|l| !l.is_empty())
        .ok_or_else(|| BrokerError::Config {
            key: key.into(),
            reason: "empty key".into(),
        })?;
    let mut t = table;
    for p in parts {
        let entry = t
            .entry(p.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry.as_table_mut().ok_or_else(|| BrokerError::Config {
            key: key.into(),
            reason: format!("{p} is not a section"),
        })?;
    }
    t.insert(last.to_owned(), parsed);
    Ok(())
}

/// Reads the reference config shipped in `deploy/`, for its test.
pub fn parse_file(path: &Path) -> Result<BrokerConfig, BrokerError> {
    BrokerConfig::load(&ConfigSources {
        file: Some(path.to_owned()),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(overrides: &[&str]) -> Result<BrokerConfig, BrokerError> {
        BrokerConfig::load(&ConfigSources {
            overrides: overrides.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
    }

    #[test]
    fn consumer_assignors_are_a_list_or_kafkas_comma_separated_string_of_known_names() {
        let c = with(&["groups.consumer_assignors=range, uniform"]).expect("config");
        assert_eq!(c.groups.consumer_assignors, ["range", "uniform"]);
        let c = with(&[r#"groups.consumer_assignors=["range"]"#]).expect("config");
        assert_eq!(c.groups.consumer_assignors, ["range"]);
        for bad in [
            "groups.consumer_assignors=sticky",
            "groups.consumer_assignors=",
        ] {
            let e = with(&[bad]).expect_err(bad).to_string();
            assert!(e.contains("groups.consumer_assignors"), "{e}");
        }
        let e = with(&["groups.consumer_heartbeat_interval_ms=60000"])
            .expect_err("heartbeat above the session")
            .to_string();
        assert!(e.contains("groups.consumer_heartbeat_interval_ms"), "{e}");
    }

    #[test]
    fn the_background_runtime_settings_are_checked() {
        let c = with(&[
            "object_store.background_nice=0",
            "object_store.background_threads=1",
        ])
        .expect("config");
        assert_eq!(c.object_store.background_nice, 0);
        for (bad, key) in [
            (
                "object_store.background_nice=20",
                "object_store.background_nice",
            ),
            (
                "object_store.background_nice=-1",
                "object_store.background_nice",
            ),
            (
                "object_store.background_threads=0",
                "object_store.background_threads",
            ),
        ] {
            let e = with(&[bad]).expect_err(bad).to_string();
            assert!(e.contains(key), "{e}");
        }
    }

    /// The documented configuration and the examples load and validate.
    #[test]
    fn the_deploy_files_load() {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let mut files = vec![deploy.join("strata.toml")];
        for entry in std::fs::read_dir(deploy.join("examples")).expect("examples") {
            files.push(entry.expect("entry").path());
        }
        for file in files {
            let loaded = BrokerConfig::load(&ConfigSources {
                file: Some(file.clone()),
                ..Default::default()
            });
            let config = loaded.unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            config
                .validate()
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        }
    }

    #[test]
    fn listeners_are_checked_as_kafka_checks_them() {
        let ok = with(&[
            r#"kafka.listeners=[{name="SASL_SSL",listen="127.0.0.1:9094"}]"#,
            r#"kafka.tls.cert_file="c.pem""#,
            r#"kafka.tls.key_file="k.pem""#,
        ])
        .expect("a SASL_SSL listener");
        ok.validate().expect("valid");
        assert_eq!(
            ok.endpoints()
                .iter()
                .map(|e| e.listener.as_str())
                .collect::<Vec<_>>(),
            ["PLAINTEXT", "SASL_SSL"]
        );
        for (bad, key) in [
            (
                r#"kafka.listeners=[{name="SSL",listen="127.0.0.1:9094"}]"#,
                "kafka.tls",
            ),
            (
                r#"kafka.listeners=[{name="EXTERNAL",listen="127.0.0.1:9094"}]"#,
                "kafka.listeners[0]",
            ),
            (
                r#"kafka.listeners=[{name="PLAINTEXT",listen="127.0.0.1:9094"}]"#,
                "kafka.listeners[0]",
            ),
            (
                r#"kafka.listeners=[{name="X",listen="127.0.0.1:9092",security_protocol="PLAINTEXT"}]"#,
                "kafka.listeners[0]",
            ),
            (
                r#"kafka.sasl.mechanisms=["GSSAPI"]"#,
                "kafka.sasl.mechanisms",
            ),
            (
                r#"kafka.tls.client_auth="required""#,
                "kafka.tls.client_ca_file",
            ),
            (
                r#"kafka.inter_broker_listener="NOWHERE""#,
                "kafka.inter_broker_listener",
            ),
            (r#"controller.tls.cert_file="c.pem""#, "controller.tls"),
        ] {
            let e = with(&[bad])
                .and_then(|c| c.validate().map(|()| c))
                .expect_err(bad)
                .to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
        // Brokers reach each other with certificates: an SSL listener that requires them,
        // never a SASL one.
        let tls = [
            r#"kafka.tls.cert_file="c.pem""#,
            r#"kafka.tls.key_file="k.pem""#,
            r#"kafka.tls.client_ca_file="ca.pem""#,
            r#"kafka.inter_broker_listener="INTERNAL""#,
        ];
        for (listener, accepted) in [
            (
                r#"{name="INTERNAL",listen="127.0.0.1:9095",security_protocol="SSL",client_auth="required"}"#,
                true,
            ),
            (
                r#"{name="INTERNAL",listen="127.0.0.1:9095",security_protocol="SSL"}"#,
                false,
            ),
            (
                r#"{name="INTERNAL",listen="127.0.0.1:9095",security_protocol="SASL_SSL"}"#,
                false,
            ),
        ] {
            let listeners = format!("kafka.listeners=[{listener}]");
            let settings: Vec<&str> = tls.iter().copied().chain([listeners.as_str()]).collect();
            let checked = with(&settings).and_then(|c| c.validate());
            assert_eq!(checked.is_ok(), accepted, "{listener}: {checked:?}");
        }
    }
}
