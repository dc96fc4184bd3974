//! Requests to other brokers of the cluster over their Kafka listener (`strata-client`'s
//! connections, one per broker, reopened when broken): the transaction coordinator's
//! WriteTxnMarkers and the partition leaders' AddPartitionsToTxn verifications.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_protocol::protocol::Request;
use strata_client::Connection;
use strata_client::security::{Security, tls_config};

use crate::config::BrokerConfig;
use crate::error::BrokerError;
use crate::metadata::MetadataView;
use crate::security::SecurityProtocol;

/// How long a request to another broker may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How brokers reach each other: the listener whose endpoints they connect to
/// (`kafka.inter_broker_listener`, else the main one) and the security of those
/// connections (mutual TLS with this broker's certificate on an SSL listener).
#[derive(Debug)]
pub(crate) struct Link {
    listener: String,
    security: Security,
}

impl Link {
    /// The link `config` asks for; an error names the TLS file that cannot be used.
    pub(crate) fn of(config: &BrokerConfig) -> Result<Self, BrokerError> {
        let kafka = &config.kafka;
        let listener = kafka
            .inter_broker_listener
            .clone()
            .unwrap_or_else(|| kafka.listener_name.clone());
        let tls = kafka
            .listeners
            .iter()
            .find(|l| l.name == listener)
            .is_some_and(|l| l.protocol().is_some_and(SecurityProtocol::tls));
        let security = match tls {
            false => Security::default(),
            true => {
                let t = &kafka.tls;
                let config = tls_config(
                    t.client_ca_file.as_deref(),
                    t.cert_file.as_deref(),
                    t.key_file.as_deref(),
                )
                .map_err(|e| BrokerError::Config {
                    key: "kafka.inter_broker_listener".into(),
                    reason: format!("this broker's TLS client settings: {e}"),
                })?;
                Security {
                    tls: Some(Arc::new(config)),
                    sasl: None,
                }
            }
        };
        Ok(Self { listener, security })
    }

    /// Connects to broker `broker` on the link's listener as `client_id`.
    pub(crate) async fn connect(
        &self,
        metadata: &MetadataView,
        broker: i32,
        client_id: &str,
    ) -> Result<Connection, String> {
        let image = metadata.image();
        let endpoint = image
            .brokers
            .get(&broker)
            .and_then(|b| b.endpoints.iter().find(|e| e.listener == self.listener))
            .ok_or_else(|| {
                format!(
                    "broker {broker} has no {} endpoint in the metadata",
                    self.listener
                )
            })?;
        let addr = format!("{}:{}", endpoint.host, endpoint.port);
        Connection::connect_secured(&addr, client_id, REQUEST_TIMEOUT, &self.security)
            .await
            .map_err(|e| e.to_string())
    }
}

#[derive(Debug)]
pub(crate) struct Peers {
    me: i32,
    metadata: Arc<MetadataView>,
    link: Arc<Link>,
    connections: Mutex<HashMap<i32, Arc<Connection>>>,
}

impl Peers {
    pub(crate) fn new(me: i32, metadata: Arc<MetadataView>, link: Link) -> Self {
        Self {
            me,
            metadata,
            link: Arc::new(link),
            connections: Mutex::new(HashMap::new()),
        }
    }

    /// How this broker reaches the others.
    pub(crate) fn link(&self) -> Arc<Link> {
        self.link.clone()
    }

    async fn connection(&self, broker: i32) -> Result<Arc<Connection>, String> {
        let open = self
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&broker)
            .filter(|c| !c.is_closed())
            .cloned();
        if let Some(c) = open {
            return Ok(c);
        }
        let client_id = format!("strata-broker-{}", self.me);
        let conn = self
            .link
            .connect(&self.metadata, broker, &client_id)
            .await?;
        let conn = Arc::new(conn);
        self.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(broker, conn.clone());
        Ok(conn)
    }

    /// Sends `req` to `broker` and waits for its answer.
    pub(crate) async fn send<R>(&self, broker: i32, req: &R) -> Result<R::Response, String>
    where
        R: Request,
    {
        let conn = self.connection(broker).await?;
        conn.send(req)
            .await
            .map_err(|e| format!("{} (broker {broker} at {})", e, conn.addr()))
    }
}
