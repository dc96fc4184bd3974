//! Requests to other brokers of the cluster over their Kafka listener (`strata-client`'s
//! connections, one per broker, reopened when broken): the transaction coordinator's
//! WriteTxnMarkers and the partition leaders' AddPartitionsToTxn verifications.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_protocol::protocol::Request;
use strata_client::Connection;

use crate::metadata::MetadataView;

/// How long a request to another broker may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(crate) struct Peers {
    me: i32,
    metadata: Arc<MetadataView>,
    connections: Mutex<HashMap<i32, Arc<Connection>>>,
}

impl Peers {
    pub(crate) fn new(me: i32, metadata: Arc<MetadataView>) -> Self {
        Self {
            me,
            metadata,
            connections: Mutex::new(HashMap::new()),
        }
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
        let image = self.metadata.image();
        let endpoint = image
            .brokers
            .get(&broker)
            .and_then(|b| b.endpoints.first())
            .ok_or_else(|| format!("broker {broker} has no endpoint in the metadata"))?;
        let addr = format!("{}:{}", endpoint.host, endpoint.port);
        let conn = Connection::connect_with_timeout(
            &addr,
            &format!("strata-broker-{}", self.me),
            REQUEST_TIMEOUT,
        )
        .await
        .map_err(|e| e.to_string())?;
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
