//! `stratactl`: the command line over [`Client`](crate::Client). [`run`] takes the arguments
//! and writes what a command prints, so tests drive it in-process and check the output.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use bytes::Bytes;

use clap::{Parser, Subcommand};
use serde_json::json;

use crate::data::partition_for_key;
use crate::{Client, ClientError, NewRecord};

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
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// The cluster: brokers and the controller.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Produce one record per input line (stdin, or --file).
    Produce {
        /// The topic.
        topic: String,
        /// Write every record to this partition (default: by key, Kafka's murmur2
        /// partitioner; records without a key spread batch by batch).
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
        /// Acknowledgements: -1 (all), 1 (leader) or 0 (none).
        #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
        acks: i16,
    },
    /// Print records. Without --count it stops at the end offsets it found on starting;
    /// with --count it waits until that many arrived.
    Consume {
        /// The topic.
        topic: String,
        /// Only this partition (default: all).
        #[arg(long, short)]
        partition: Option<i32>,
        /// Start at each partition's earliest offset (default: its end).
        #[arg(long, conflicts_with_all = ["offset", "timestamp"])]
        from_beginning: bool,
        /// Start at this offset.
        #[arg(long, conflicts_with = "timestamp")]
        offset: Option<i64>,
        /// Start at the first record at or after this time (ms since the epoch).
        #[arg(long)]
        timestamp: Option<i64>,
        /// Stop after this many records.
        #[arg(long, short = 'n')]
        count: Option<u64>,
        /// Print keys before values, separated by --key-separator.
        #[arg(long)]
        print_key: bool,
        /// Between key and value with --print-key.
        #[arg(long, short = 'k', default_value = "\t")]
        key_separator: String,
    },
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
    /// Delete a topic and its data.
    Delete {
        /// Its name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Brokers and the controller.
    Info,
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
    let client = Client::connect(&cli.bootstrap).await?;
    match cli.command {
        Command::Topic(t) => topic(&client, t, cli.json, out).await,
        Command::Cluster(ClusterCommand::Info) => cluster(&client, cli.json, out).await,
        Command::Produce {
            topic,
            partition,
            key_separator,
            headers,
            file,
            acks,
        } => {
            let mut opened;
            let lines: &mut dyn BufRead = match file {
                Some(path) => {
                    opened = std::io::BufReader::new(std::fs::File::open(&path).map_err(|e| {
                        CliError::Usage(format!("cannot read {}: {e}", path.display()))
                    })?);
                    &mut opened
                }
                None => input,
            };
            let spec = ProduceSpec {
                topic: &topic,
                partition,
                key_separator: key_separator.as_deref(),
                headers: &headers,
                acks,
            };
            let n = produce(&client, &spec, lines).await?;
            if cli.json {
                writeln!(out, "{}", json!({ "topic": topic, "produced": n }))?;
            } else {
                writeln!(out, "produced {n} records to {topic}")?;
            }
            Ok(())
        }
        Command::Consume {
            topic,
            partition,
            from_beginning,
            offset,
            timestamp,
            count,
            print_key,
            key_separator,
        } => {
            let start = match (from_beginning, offset, timestamp) {
                (true, _, _) => Start::Earliest,
                (_, Some(o), _) => Start::Offset(o),
                (_, _, Some(t)) => Start::Time(t),
                _ => Start::Latest,
            };
            let sep = key_separator.replace("\\t", "\t");
            let format = Format {
                json: cli.json,
                print_key,
                separator: &sep,
            };
            consume(&client, &topic, partition, start, count, &format, out).await
        }
    }
}

struct ProduceSpec<'a> {
    topic: &'a str,
    partition: Option<i32>,
    key_separator: Option<&'a str>,
    headers: &'a [(String, String)],
    acks: i16,
}

/// Records per produce request at most.
const BATCH_RECORDS: usize = 1_000;
/// Bytes per produce request at most (roughly).
const BATCH_BYTES: usize = 1 << 20;

async fn produce(
    client: &Client,
    spec: &ProduceSpec<'_>,
    lines: &mut dyn BufRead,
) -> Result<u64, CliError> {
    let partitions = client.partition_count(spec.topic).await?;
    if let Some(p) = spec.partition.filter(|p| *p < 0 || *p >= partitions) {
        return Err(CliError::Usage(format!(
            "partition {p} does not exist: {} has {partitions}",
            spec.topic
        )));
    }
    let headers: Vec<(String, Option<Bytes>)> = spec
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), Some(Bytes::from(v.clone()))))
        .collect();
    let mut pending: BTreeMap<i32, (Vec<NewRecord>, usize)> = BTreeMap::new();
    let mut sticky = 0i32;
    let mut produced = 0u64;
    for line in lines.lines() {
        let line = line?;
        let (key, value) = match spec.key_separator.and_then(|s| line.split_once(s)) {
            Some((k, v)) => (Some(Bytes::from(k.to_owned())), v.to_owned()),
            None => (None, line),
        };
        let p = match (spec.partition, &key) {
            (Some(p), _) => p,
            (None, Some(k)) => partition_for_key(k, partitions),
            (None, None) => sticky,
        };
        let size = value.len() + key.as_ref().map_or(0, Bytes::len);
        let (batch, bytes) = pending.entry(p).or_default();
        batch.push(NewRecord {
            key,
            value: Some(Bytes::from(value)),
            headers: headers.clone(),
        });
        *bytes += size;
        if batch.len() >= BATCH_RECORDS || *bytes >= BATCH_BYTES {
            let batch = std::mem::take(batch);
            *bytes = 0;
            client.produce(spec.topic, p, &batch, spec.acks).await?;
            produced += batch.len() as u64;
            // Records without a key move to the next partition batch by batch.
            sticky = (sticky + 1) % partitions.max(1);
        }
    }
    for (p, (batch, _)) in pending {
        if !batch.is_empty() {
            client.produce(spec.topic, p, &batch, spec.acks).await?;
            produced += batch.len() as u64;
        }
    }
    Ok(produced)
}

#[derive(Clone, Copy, Debug)]
enum Start {
    Earliest,
    Latest,
    Offset(i64),
    Time(i64),
}

struct Format<'a> {
    json: bool,
    print_key: bool,
    separator: &'a str,
}

async fn consume(
    client: &Client,
    topic: &str,
    only: Option<i32>,
    start: Start,
    count: Option<u64>,
    format: &Format<'_>,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let partitions: Vec<i32> = match only {
        Some(p) => vec![p],
        None => (0..client.partition_count(topic).await?).collect(),
    };
    let mut next = Vec::with_capacity(partitions.len());
    let mut ends = Vec::with_capacity(partitions.len());
    for &p in &partitions {
        let end = client.list_offset(topic, p, -1).await?;
        next.push(match start {
            Start::Earliest => client.list_offset(topic, p, -2).await?,
            Start::Latest => end,
            Start::Offset(o) => o,
            Start::Time(t) => match client.list_offset(topic, p, t).await? {
                -1 => end,
                o => o,
            },
        });
        ends.push(end);
    }
    let text = |b: &Option<Bytes>| b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
    let mut printed = 0u64;
    loop {
        let caught_up = next.iter().zip(&ends).all(|(n, e)| n >= e);
        if count.map_or(caught_up, |c| printed >= c) {
            return Ok(());
        }
        for (i, &p) in partitions.iter().enumerate() {
            if count.is_none() && next[i] >= ends[i] {
                continue;
            }
            let wait = if count.is_some() { 500 } else { 0 };
            let (records, _) = client.fetch(topic, p, next[i], 1 << 20, wait).await?;
            for r in records {
                if count.is_some_and(|c| printed >= c) || (count.is_none() && r.offset >= ends[i]) {
                    break;
                }
                next[i] = r.offset + 1;
                printed += 1;
                if format.json {
                    let headers: serde_json::Map<String, serde_json::Value> = r
                        .headers
                        .iter()
                        .map(|(k, v)| (k.clone(), json!(text(v))))
                        .collect();
                    writeln!(
                        out,
                        "{}",
                        json!({ "partition": p, "offset": r.offset, "timestamp": r.timestamp,
                                "key": text(&r.key), "value": text(&r.value), "headers": headers })
                    )?;
                } else if format.print_key {
                    let key = text(&r.key).unwrap_or_default();
                    let value = text(&r.value).unwrap_or_default();
                    writeln!(out, "{key}{}{value}", format.separator)?;
                } else {
                    writeln!(out, "{}", text(&r.value).unwrap_or_default())?;
                }
            }
        }
    }
}

async fn topic(
    client: &Client,
    cmd: TopicCommand,
    as_json: bool,
    out: &mut impl Write,
) -> Result<(), CliError> {
    match cmd {
        TopicCommand::Create {
            name,
            partitions,
            replication,
            configs,
        } => {
            let configs: BTreeMap<String, String> = configs.into_iter().collect();
            client
                .create_topic(&name, partitions, replication, &configs)
                .await?;
            if as_json {
                writeln!(out, "{}", json!({ "created": name }))?;
            } else {
                writeln!(out, "created topic {name}")?;
            }
        }
        TopicCommand::List { internal } => {
            let topics: Vec<_> = client
                .topics()
                .await?
                .into_iter()
                .filter(|t| internal || !t.internal)
                .collect();
            if as_json {
                let list: Vec<_> = topics
                    .iter()
                    .map(|t| json!({ "name": t.name, "id": t.id, "partitions": t.partitions.len(), "internal": t.internal }))
                    .collect();
                writeln!(out, "{}", serde_json::Value::Array(list))?;
            } else {
                let rows: Vec<Vec<String>> = topics
                    .iter()
                    .map(|t| vec![t.name.clone(), t.partitions.len().to_string(), t.id.clone()])
                    .collect();
                table(out, &["TOPIC", "PARTITIONS", "ID"], &rows)?;
            }
        }
        TopicCommand::Describe { name, all_configs } => {
            let (info, configs) = client.describe_topic(&name).await?;
            let configs: Vec<_> = configs
                .into_iter()
                .filter(|c| all_configs || c.explicit)
                .collect();
            if as_json {
                let parts: Vec<_> = info
                    .partitions
                    .iter()
                    .map(|p| json!({ "partition": p.partition, "leader": p.leader, "leader_epoch": p.leader_epoch, "replicas": p.replicas, "isr": p.isr }))
                    .collect();
                let cfg: serde_json::Map<String, serde_json::Value> = configs
                    .iter()
                    .map(|c| (c.name.clone(), json!(c.value)))
                    .collect();
                writeln!(
                    out,
                    "{}",
                    json!({ "name": info.name, "id": info.id, "internal": info.internal, "partitions": parts, "configs": cfg })
                )?;
            } else {
                writeln!(out, "topic {}  id {}", info.name, info.id)?;
                let ids = |v: &[i32]| {
                    v.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                };
                let rows: Vec<Vec<String>> = info
                    .partitions
                    .iter()
                    .map(|p| {
                        vec![
                            p.partition.to_string(),
                            p.leader.to_string(),
                            p.leader_epoch.to_string(),
                            ids(&p.replicas),
                            ids(&p.isr),
                        ]
                    })
                    .collect();
                table(
                    out,
                    &["PARTITION", "LEADER", "EPOCH", "REPLICAS", "ISR"],
                    &rows,
                )?;
                if !configs.is_empty() {
                    writeln!(out)?;
                    let rows: Vec<Vec<String>> = configs
                        .iter()
                        .map(|c| vec![c.name.clone(), c.value.clone().unwrap_or_default()])
                        .collect();
                    table(out, &["CONFIG", "VALUE"], &rows)?;
                }
            }
        }
        TopicCommand::Delete { name } => {
            client.delete_topic(&name).await?;
            if as_json {
                writeln!(out, "{}", json!({ "deleted": name }))?;
            } else {
                writeln!(out, "deleted topic {name}")?;
            }
        }
    }
    Ok(())
}

async fn cluster(client: &Client, as_json: bool, out: &mut impl Write) -> Result<(), CliError> {
    let (brokers, controller) = client.cluster().await?;
    if as_json {
        let list: Vec<_> = brokers
            .iter()
            .map(|b| json!({ "id": b.id, "host": b.host, "port": b.port }))
            .collect();
        writeln!(
            out,
            "{}",
            json!({ "brokers": list, "controller": controller })
        )?;
    } else {
        let rows: Vec<Vec<String>> = brokers
            .iter()
            .map(|b| {
                vec![
                    b.id.to_string(),
                    format!("{}:{}", b.host, b.port),
                    if b.id == controller { "yes" } else { "" }.to_owned(),
                ]
            })
            .collect();
        table(out, &["BROKER", "ADDRESS", "CONTROLLER"], &rows)?;
    }
    Ok(())
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
