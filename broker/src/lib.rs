//! strata-broker: the Kafka protocol server over Strata's partition logs, and the `strata`
//! server binary.
//!
//! - [`config`]: the layered, validated configuration.
//! - `server`: [`Broker`] — start, serve, shut down gracefully.
//! - `connection`: framing, pipelining and limits for one client connection.
//! - `protocol` and `handlers`: API versions, decoding, and one handler per Kafka API.
//! - `state`: the metadata this broker follows and the partitions it hosts.

mod catalog;
pub mod config;

mod connection;
mod epochs;
mod error;
mod group;
mod handlers;
mod producer;
mod protocol;
mod server;
mod state;
mod tiering;

pub use config::BrokerConfig;
pub use error::BrokerError;
pub use server::Broker;

/// Runs a broker until SIGINT or SIGTERM, then shuts it down gracefully.
pub async fn run(config: BrokerConfig) -> Result<(), BrokerError> {
    let broker = Broker::start(config).await?;
    shutdown_signal().await;
    tracing::info!("shutdown requested");
    broker.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
