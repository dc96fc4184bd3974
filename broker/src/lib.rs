//! strata-broker: the Kafka protocol server over Strata's partition logs, and the `strata`
//! server binary.
//!
//! - [`config`]: the layered, validated configuration.
//! - `server`: [`Broker`] — start, serve, shut down gracefully.
//! - `connection`: framing, pipelining and limits for one client connection.
//! - `protocol` and `handlers`: API versions, decoding, and one handler per Kafka API.
//! - `state`: what the handlers reach: metadata, partitions, coordinator, tiering.
//! - `partition`: a hosted partition (log, epochs, producers, remote view, role), the registry
//!   that follows metadata and publishes role changes, and reads local or remote.
//! - `metadata`, `topic`: the image this broker follows; topic configs as typed settings.
//! - `group`: the consumer group coordinator. `producer`, `epochs`: idempotence, leader epochs.
//! - `tiering`, `catalog`: uploads and retention in object storage; the bucket's topic catalog.
//! - `lease`: how long this broker may lead without hearing from the controller.
//! - `http`, `metrics`, `scrape`, `process`, `console`: the HTTP listener with `/metrics`, the
//!   probes and the web console.
//! - `supervisor`, `flusher`: background work; `admission`, `turnstile`: connection limits and
//!   Produce ordering.
//!
//! `docs/architecture.md` has the module map and the data paths.

mod admission;
mod budget;
mod catalog;
mod cleaner;
pub mod cli;
pub mod config;
mod console;

mod connection;
mod epochs;
mod error;
mod flusher;
mod follower;
#[doc(hidden)]
pub mod fuzzing;
mod group;
mod handlers;
mod http;
mod isr;
mod lease;
mod metadata;
mod metrics;
mod partition;
mod peers;
mod process;
mod producer;
mod protocol;
mod quota;
mod response;
mod scrape;
pub mod security;
mod server;
mod state;
mod statelog;
mod supervisor;
mod telemetry;
mod tiering;
mod topic;
mod turnstile;
mod txn;

pub use config::BrokerConfig;
pub use error::BrokerError;
pub use server::Broker;

/// Runs a broker until SIGINT or SIGTERM, then shuts it down gracefully.
pub async fn run(config: BrokerConfig) -> Result<(), BrokerError> {
    // Listening starts before the broker does: a SIGTERM during start-up (a `docker stop`
    // right after `docker run`) is then kept for later instead of killing the process.
    let stop = ShutdownSignal::listen();
    if config.controller.mode == config::ControllerMode::Dedicated {
        let controller = server::start_controller(&config).await?;
        tracing::info!(node = config.node_id, "serving as a dedicated controller");
        stop.wait().await;
        tracing::info!("shutdown requested");
        if let Some(c) = controller {
            c.shutdown().await;
        }
        return Ok(());
    }
    let broker = Broker::start(config).await?;
    stop.wait().await;
    tracing::info!("shutdown requested");
    broker.shutdown().await;
    Ok(())
}

/// SIGTERM or SIGINT (Ctrl-C), registered when created.
struct ShutdownSignal {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignal {
    fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    async fn wait(self) {
        #[cfg(unix)]
        {
            async fn next(s: Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = next(self.term) => {}
                () = next(self.int) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
