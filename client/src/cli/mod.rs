//! `stratactl`: the command line over [`crate::Client`]. [`run`] takes the arguments
//! and writes what a command prints, so tests drive it in-process and check the output.
//! Progress bars go to standard error, and only when it is a terminal.

mod admin;
mod perf;
mod records;

use std::io::{BufRead, Write};
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use crate::producer::{Compression, parse_compression};
use crate::{Client, ClientError};

/// Operate a Strata (or any Kafka-compatible) cluster.
#[derive(Debug, Parser)]
#[command(name = "stratactl", version)]
pub struct Cli {
    /// Brokers to start from, `host:port[,host:port…]`.
    #[arg(
        long,
        short,
        global = true,
        env = "STRATA_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    pub bootstrap: String,
    /// Print JSON instead of tables (for scripts).
    #[arg(long, global = true)]
    pub json: bool,
    /// How long connecting and each request may wait for the broker (ms) before stratactl
    /// gives up on it (Kafka's `request.timeout.ms`).
    #[arg(long, global = true, default_value_t = 60_000)]
    pub timeout_ms: u64,
    /// Client properties for TLS and SASL, Kafka's way: `security.protocol`,
    /// `sasl.mechanism`, `sasl.username`, `sasl.password` (or `sasl.jaas.config`),
    /// `ssl.ca.location`, `ssl.certificate.location`, `ssl.key.location`.
    #[arg(long, global = true, env = "STRATA_COMMAND_CONFIG")]
    pub command_config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, list, describe, alter and delete topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// The cluster: brokers and the controller.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Consumer groups: list, describe (with lag), reset offsets.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Transactions: list transactional ids, describe one, abort an open transaction.
    #[command(subcommand)]
    Transaction(TransactionCommand),
    /// Tiered storage: what each partition holds locally and in object storage.
    #[command(subcommand)]
    Tiering(TieringCommand),
    /// Produce one record per input line (stdin, or --file).
    Produce(ProduceArgs),
    /// Print records. Without --count it stops at the end offsets it found on starting;
    /// with --count it waits until that many arrived.
    Consume(ConsumeArgs),
    /// Measure throughput and latency (works against any Kafka-compatible broker).
    #[command(subcommand)]
    Perf(perf::PerfCommand),
    /// SCRAM users for SASL: set a password, delete, list.
    #[command(subcommand)]
    User(UserCommand),
    /// ACLs: who may do what (with `kafka.authorization.enable`).
    #[command(subcommand)]
    Acl(AclCommand),
    /// Client quotas: byte rates and request time per user and client id, connection
    /// rates per IP.
    #[command(subcommand)]
    Quota(QuotaCommand),
}

/// The entity a quota command names: a user, a client id, both, or an IP.
#[derive(Debug, Args)]
struct QuotaEntityArgs {
    /// A user: its principal's name (`alice` for `User:alice`, `ANONYMOUS` unauthenticated).
    #[arg(long, conflicts_with = "default_user")]
    user: Option<String>,
    /// The default user: every user without a quota of its own, each measured on its own.
    #[arg(long)]
    default_user: bool,
    /// A client id.
    #[arg(long, conflicts_with = "default_client_id")]
    client_id: Option<String>,
    /// The default client id.
    #[arg(long)]
    default_client_id: bool,
    /// A client address (for `connection_creation_rate`).
    #[arg(long, conflicts_with_all = ["default_ip", "user", "default_user", "client_id", "default_client_id"])]
    ip: Option<String>,
    /// The default IP.
    #[arg(long, conflicts_with_all = ["user", "default_user", "client_id", "default_client_id"])]
    default_ip: bool,
}

impl QuotaEntityArgs {
    fn entity(&self) -> crate::quotas::QuotaEntity {
        let mut entity = crate::quotas::QuotaEntity::new();
        let mut add = |kind: &str, name: &Option<String>, default: bool| {
            if name.is_some() || default {
                entity.insert(kind.to_owned(), name.clone());
            }
        };
        add("user", &self.user, self.default_user);
        add("client-id", &self.client_id, self.default_client_id);
        add("ip", &self.ip, self.default_ip);
        entity
    }
}

#[derive(Debug, Subcommand)]
enum QuotaCommand {
    /// Sets quotas on an entity: `producer_byte_rate=1048576`, `consumer_byte_rate=...`,
    /// `request_percentage=25`, or for an IP `connection_creation_rate=10`.
    Set {
        #[command(flatten)]
        entity: QuotaEntityArgs,
        /// `name=value` pairs.
        #[arg(required = true)]
        quotas: Vec<String>,
    },
    /// Removes quotas from an entity, by name.
    Remove {
        #[command(flatten)]
        entity: QuotaEntityArgs,
        /// Quota names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Lists the quotas of the entities matching the flags given (all, with none).
    List {
        #[command(flatten)]
        entity: QuotaEntityArgs,
    },
}

/// The resource and principal an ACL command names.
#[derive(Debug, Args)]
struct AclArgs {
    /// A topic (or, with --prefixed, a prefix; `*` for every topic).
    #[arg(long, group = "resource")]
    topic: Option<String>,
    /// A consumer group.
    #[arg(long, group = "resource")]
    group: Option<String>,
    /// A transactional id.
    #[arg(long, group = "resource")]
    transactional_id: Option<String>,
    /// The cluster.
    #[arg(long, group = "resource")]
    cluster: bool,
    /// The name is a prefix.
    #[arg(long)]
    prefixed: bool,
    /// `User:alice`, or `User:*` for everyone.
    #[arg(long)]
    principal: Option<String>,
    /// The client address, or `*`.
    #[arg(long)]
    host: Option<String>,
    /// read, write, create, delete, alter, describe, cluster-action, describe-configs,
    /// alter-configs, idempotent-write or all.
    #[arg(long)]
    operation: Option<String>,
}

impl AclArgs {
    /// (resource type, name).
    fn resource(&self) -> Option<(&'static str, String)> {
        match (
            &self.topic,
            &self.group,
            &self.transactional_id,
            self.cluster,
        ) {
            (Some(t), _, _, _) => Some(("topic", t.clone())),
            (_, Some(g), _, _) => Some(("group", g.clone())),
            (_, _, Some(t), _) => Some(("transactional-id", t.clone())),
            (_, _, _, true) => Some(("cluster", "kafka-cluster".into())),
            _ => None,
        }
    }

    fn filter(&self) -> crate::acls::AclFilter {
        let resource = self.resource();
        crate::acls::AclFilter {
            resource_type: resource.as_ref().map(|(t, _)| (*t).to_owned()),
            resource_name: resource.map(|(_, n)| n),
            pattern_type: Some(if self.prefixed { "prefixed" } else { "any" }.into()),
            principal: self.principal.clone(),
            host: self.host.clone(),
            operation: self.operation.clone(),
            permission: None,
        }
    }
}

#[derive(Debug, Subcommand)]
enum AclCommand {
    /// Allows (or with --deny, denies) a principal an operation on a resource.
    Add {
        #[command(flatten)]
        acl: AclArgs,
        /// Deny instead of allow (a deny wins over every allow).
        #[arg(long)]
        deny: bool,
    },
    /// Lists the ACLs matching the flags given (all, with none).
    List {
        #[command(flatten)]
        acl: AclArgs,
    },
    /// Removes the ACLs matching the flags given.
    Remove {
        #[command(flatten)]
        acl: AclArgs,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Sets a user's password for a mechanism, creating the user.
    Create {
        /// The user name.
        name: String,
        /// The password (or set STRATA_USER_PASSWORD, which keeps it out of the shell's
        /// history).
        #[arg(long, env = "STRATA_USER_PASSWORD", hide_env_values = true)]
        password: String,
        /// `SCRAM-SHA-256` or `SCRAM-SHA-512`.
        #[arg(long, default_value = "SCRAM-SHA-512")]
        mechanism: String,
        /// Rounds of the password's derivation (4096 to 16384).
        #[arg(long, default_value_t = 8192)]
        iterations: u32,
    },
    /// Removes a user's credential for a mechanism (the user, with its last one).
    Delete {
        /// The user name.
        name: String,
        #[arg(long, default_value = "SCRAM-SHA-512")]
        mechanism: String,
    },
    /// Lists the users and their mechanisms.
    List,
}

#[derive(Debug, Args)]
struct ProduceArgs {
    /// The topic.
    topic: String,
    /// Write every record to this partition (default: by key, Kafka's murmur2
    /// partitioner; records without a key stick to one partition per batch).
    #[arg(long, short)]
    partition: Option<i32>,
    /// Split each line into key and value at the first occurrence of this.
    #[arg(long, short = 'k')]
    key_separator: Option<String>,
    /// A header on every record, `key=value`; repeatable.
    #[arg(long = "header", short = 'H', value_parser = key_value)]
    headers: Vec<(String, String)>,
    /// Read lines from this file instead of stdin.
    #[arg(long, short)]
    file: Option<std::path::PathBuf>,
    #[command(flatten)]
    send: SendArgs,
}

/// How records are batched and acknowledged (produce and perf).
#[derive(Clone, Debug, Args)]
struct SendArgs {
    /// Acknowledgements: -1 (all), 1 (leader) or 0 (none).
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    acks: i16,
    /// Compression: none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none", value_parser = parse_compression)]
    compression: Compression,
    /// How long a batch waits for more records (ms).
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// Bytes a batch holds before it is sent.
    #[arg(long, default_value_t = 256 << 10)]
    batch_size: usize,
}

impl SendArgs {
    fn config(&self) -> Result<crate::producer::ProducerConfig, CliError> {
        if ![-1, 0, 1].contains(&self.acks) {
            return Err(CliError::Usage(format!(
                "--acks {} is not one of -1, 0, 1",
                self.acks
            )));
        }
        Ok(crate::producer::ProducerConfig {
            acks: self.acks,
            compression: self.compression,
            linger: std::time::Duration::from_millis(self.linger_ms),
            batch_bytes: self.batch_size.max(1),
            ..Default::default()
        })
    }
}

#[derive(Debug, Args)]
struct ConsumeArgs {
    /// The topic.
    topic: String,
    /// Only this partition (default: all).
    #[arg(long, short)]
    partition: Option<i32>,
    /// Start at each partition's earliest offset (default: its end). With --group, only
    /// where the group committed nothing.
    #[arg(long, conflicts_with_all = ["offset", "timestamp"])]
    from_beginning: bool,
    /// Start at this offset.
    #[arg(long, conflicts_with = "timestamp")]
    offset: Option<i64>,
    /// Start at the first record at or after this time (ms since the epoch).
    #[arg(long)]
    timestamp: Option<i64>,
    /// Start where this consumer group left off, and commit the new positions at the end.
    /// The group must have no active members.
    #[arg(long, short)]
    group: Option<String>,
    /// Stop after this many records.
    #[arg(long, short = 'n')]
    count: Option<u64>,
    /// Print keys before values, separated by --key-separator.
    #[arg(long)]
    print_key: bool,
    /// Between key and value with --print-key.
    #[arg(long, short = 'k', default_value = "\t")]
    key_separator: String,
}

#[derive(Debug, Subcommand)]
enum TopicCommand {
    /// Create a topic.
    Create {
        /// Its name.
        name: String,
        /// Partitions (default: the broker's).
        #[arg(long, short, default_value_t = -1)]
        partitions: i32,
        /// Replication factor (default: the broker's).
        #[arg(long, short, default_value_t = -1)]
        replication: i16,
        /// A topic config, `key=value` (Kafka's names); repeatable.
        #[arg(long = "config", short = 'c', value_parser = key_value)]
        configs: Vec<(String, String)>,
    },
    /// List topics.
    List {
        /// Include internal topics (`__consumer_offsets`).
        #[arg(long)]
        internal: bool,
    },
    /// A topic's partitions, leaders and configs.
    Describe {
        /// Its name.
        name: String,
        /// Show every config, not only those set on the topic.
        #[arg(long)]
        all_configs: bool,
    },
    /// Set or remove topic configs.
    AlterConfig {
        /// The topic.
        name: String,
        /// A config to set, `key=value`; repeatable.
        #[arg(long = "set", short = 's', value_parser = key_value)]
        set: Vec<(String, String)>,
        /// A config to remove (back to the broker's default); repeatable.
        #[arg(long = "delete", short = 'd')]
        delete: Vec<String>,
    },
    /// Delete a topic and its data.
    Delete {
        /// Its name.
        name: String,
    },
    /// Move a partition to other brokers: the new replicas copy it (a tiered topic's only
    /// from the end of what object storage holds), then the old ones leave.
    Reassign {
        /// The topic.
        name: String,
        /// The partition.
        #[arg(long, short)]
        partition: i32,
        /// The new replicas, comma-separated broker ids, the preferred leader first.
        #[arg(long, short, value_delimiter = ',', required_unless_present = "cancel")]
        replicas: Vec<i32>,
        /// Cancel the reassignment in progress instead.
        #[arg(long, conflicts_with = "replicas")]
        cancel: bool,
    },
    /// Reassignments in progress.
    Reassignments,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Brokers and the controller.
    Info,
    /// Move every replica off a broker (to the live brokers holding fewest), so it can be
    /// shut down for good.
    Decommission {
        /// The broker id.
        broker: i32,
    },
    /// Move leadership back to each partition's preferred replica (its first), where that
    /// replica is live and in sync: of one topic or partition, or of every partition.
    ElectLeaders {
        /// Only this topic's partitions.
        #[arg(long, short)]
        topic: Option<String>,
        /// Only this partition of --topic.
        #[arg(long, short, requires = "topic")]
        partition: Option<i32>,
        /// Unclean election instead: a leaderless partition whose in-sync replicas are all
        /// gone takes a live replica from outside the ISR. Acknowledged records that replica
        /// lacks are lost unless the object store holds them (a tiered partition's new leader
        /// continues from there). To re-home a partition whose replicas are all gone for good,
        /// first `topic reassign` it to live brokers, then elect with --unclean.
        #[arg(long)]
        unclean: bool,
    },
}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    /// List consumer groups.
    List,
    /// A group's state, members, and per partition its committed offset and lag.
    Describe {
        /// The group.
        group: String,
    },
    /// Move a group's committed offsets (the group must have no active members). Prints
    /// the plan; --execute applies it.
    ResetOffsets(ResetArgs),
}

#[derive(Debug, Args)]
struct ResetArgs {
    /// The group.
    group: String,
    /// The topic whose offsets move.
    #[arg(long, short)]
    topic: String,
    /// Only this partition (default: all).
    #[arg(long, short)]
    partition: Option<i32>,
    #[command(flatten)]
    to: ResetTo,
    /// Commit the new offsets (without it, only show them).
    #[arg(long)]
    execute: bool,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct ResetTo {
    /// To each partition's earliest offset.
    #[arg(long)]
    to_earliest: bool,
    /// To each partition's end.
    #[arg(long)]
    to_latest: bool,
    /// To this offset (clamped to what the partition holds).
    #[arg(long)]
    to_offset: Option<i64>,
    /// To the first record at or after this time (ms since the epoch).
    #[arg(long)]
    to_datetime: Option<i64>,
    /// By this many records from the committed offset (negative: back).
    #[arg(long, allow_hyphen_values = true)]
    shift_by: Option<i64>,
}

#[derive(Debug, Subcommand)]
enum TransactionCommand {
    /// Transactional ids on every broker, with their producer id and state.
    List,
    /// A transactional id's state, producer, timeout and open partitions.
    Describe {
        /// The transactional id.
        id: String,
    },
    /// Abort the id's open transaction, as its timeout would: its producer is fenced (it
    /// may initialise again) and read_committed consumers move past its records.
    Abort {
        /// The transactional id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum TieringCommand {
    /// Per partition: the offsets in object storage and on the leader's disk, and how far
    /// uploads lag the log's end.
    Status {
        /// The topic.
        topic: String,
    },
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
        _ => Err(format!("{s:?} is not key=value")),
    }
}

/// Why a command failed: bad arguments (with clap's message) or a failed call.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The arguments do not parse; the text is clap's (also for `--help`/`--version`).
    #[error("{0}")]
    Usage(String),
    /// The call failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Writing the output failed.
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

impl CliError {
    /// The process exit code: 2 for usage, 1 for failures.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// Runs `stratactl` with `args` (the program name first), reading records from `input`
/// (`produce`) and writing its output to `out`.
pub async fn run<I, T>(
    args: I,
    input: &mut dyn BufRead,
    out: &mut impl Write,
) -> Result<(), CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version: their text is the output.
            write!(out, "{}", e.render())?;
            return Ok(());
        }
        Err(e) => return Err(CliError::Usage(e.render().to_string())),
    };
    let timeout = std::time::Duration::from_millis(cli.timeout_ms.max(1));
    let security = match &cli.command_config {
        Some(path) => crate::security::Security::from_file(path)?,
        None => crate::security::Security::default(),
    };
    let client = Arc::new(Client::connect_secured(&cli.bootstrap, timeout, security).await?);
    let json = cli.json;
    match cli.command {
        Command::Topic(t) => admin::topic(&client, t, json, out).await,
        Command::User(u) => admin::user(&client, u, json, out).await,
        Command::Acl(a) => admin::acl(&client, a, json, out).await,
        Command::Quota(q) => admin::quota(&client, q, json, out).await,
        Command::Cluster(ClusterCommand::Info) => admin::cluster(&client, json, out).await,
        Command::Cluster(ClusterCommand::Decommission { broker }) => {
            admin::decommission(&client, broker, json, out).await
        }
        Command::Cluster(ClusterCommand::ElectLeaders {
            topic,
            partition,
            unclean,
        }) => {
            let only = match &topic {
                Some(t) => Some(
                    partitions(&client, t, partition)
                        .await?
                        .into_iter()
                        .map(|p| (t.clone(), p))
                        .collect::<Vec<_>>(),
                ),
                None => None,
            };
            admin::elect_leaders(&client, only.as_deref(), unclean, json, out).await
        }
        Command::Group(g) => admin::group(&client, g, json, out).await,
        Command::Transaction(t) => admin::transaction(&client, t, json, out).await,
        Command::Tiering(TieringCommand::Status { topic }) => {
            admin::tiering(&client, &topic, json, out).await
        }
        Command::Produce(args) => records::produce(&client, args, input, json, out).await,
        Command::Consume(args) => records::consume(&client, args, json, out).await,
        Command::Perf(p) => perf::run(&client, p, json, out).await,
    }
}

/// `topic`'s partitions, or only `only` after checking it exists.
async fn partitions(client: &Client, topic: &str, only: Option<i32>) -> Result<Vec<i32>, CliError> {
    let count = client.partition_count(topic).await?;
    match only {
        Some(p) if !(0..count).contains(&p) => Err(CliError::Usage(format!(
            "partition {p} does not exist: {topic} has {count}"
        ))),
        Some(p) => Ok(vec![p]),
        None => Ok((0..count).collect()),
    }
}

/// Left-aligned columns, two spaces apart, headers first.
fn table(out: &mut impl Write, headers: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: &mut dyn Iterator<Item = &str>| {
        let text: Vec<String> = cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        writeln!(out, "{}", text.join("  ").trim_end())
    };
    line(out, &mut headers.iter().copied())?;
    for row in rows {
        line(out, &mut row.iter().map(String::as_str))?;
    }
    Ok(())
}

/// A progress bar on standard error, drawn only when it is a terminal.
fn progress(total: Option<u64>, what: &str) -> indicatif::ProgressBar {
    let bar = match total {
        Some(n) => indicatif::ProgressBar::with_draw_target(
            Some(n),
            indicatif::ProgressDrawTarget::stderr(),
        ),
        None => {
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr())
        }
    };
    let template = if total.is_some() {
        "{msg} [{bar:30}] {human_pos}/{human_len} ({per_sec}, eta {eta})"
    } else {
        "{msg} {human_pos} ({per_sec})"
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}
