//! `stratactl`: the command line over [`Client`](crate::Client). [`run`] takes the arguments
//! and writes what a command prints, so tests drive it in-process and check the output.

use std::collections::BTreeMap;
use std::io::Write;

use clap::{Parser, Subcommand};
use serde_json::json;

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

/// Runs `stratactl` with `args` (the program name first), writing its output to `out`.
pub async fn run<I, T>(args: I, out: &mut impl Write) -> Result<(), CliError>
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
