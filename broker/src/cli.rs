//! The `strata` command line: with no arguments a single node with an embedded controller,
//! data under `./strata-data`, Kafka on 127.0.0.1:9092.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{BrokerConfig, ConfigSources};
use clap::Parser;

/// A Kafka-compatible event streaming broker.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// TOML config file (see deploy/strata.toml for every key).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Data directory (`data_dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Kafka listener address (`kafka.listen`).
    #[arg(long)]
    listen: Option<String>,
    /// Address clients are told to use (`kafka.advertised`).
    #[arg(long)]
    advertised: Option<String>,
    /// Any key as `key=value`, e.g. `--set topics.default_partitions=3`. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Log lines as plain text, or one JSON object per line (for log collectors).
    #[arg(long, env = "STRATA_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Runs the `strata` command line: parses arguments, environment and config file, runs a
/// broker until SIGTERM or SIGINT. The `strata` binary is this; tests run it as a process.
pub fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,openraft=warn".into());
    match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            // Colours only on a terminal: container and journal logs stay plain text.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .with_env_filter(filter)
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }
    let mut overrides = Vec::new();
    if let Some(d) = &args.data_dir {
        overrides.push(format!(
            "data_dir={}",
            toml_string(&d.display().to_string())
        ));
    }
    if let Some(l) = &args.listen {
        overrides.push(format!("kafka.listen={}", toml_string(l)));
    }
    if let Some(a) = &args.advertised {
        overrides.push(format!("kafka.advertised={}", toml_string(a)));
    }
    overrides.extend(args.overrides);
    let sources = ConfigSources {
        file: args.config,
        env: std::env::vars().collect(),
        overrides,
    };
    let config = match BrokerConfig::load(&sources) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn toml_string(s: &str) -> String {
    format!("{s:?}")
}
