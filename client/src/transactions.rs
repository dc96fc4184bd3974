//! Transactions as an operator sees them: the transactional ids each broker coordinates
//! (ListTransactions), one id's state (DescribeTransactions), and aborting an open
//! transaction through its coordinator.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kafka_protocol::messages::{
    DescribeTransactionsRequest, InitProducerIdRequest, ListTransactionsRequest, ProducerId,
    TransactionalId,
};
use kafka_protocol::protocol::StrBytes;

use crate::{Client, ClientError, check};

/// FindCoordinator's key type for transactional ids.
const TRANSACTIONAL_ID: i8 = 1;
/// CONCURRENT_TRANSACTIONS: the coordinator is ending the transaction.
const CONCURRENT_TRANSACTIONS: i16 = 51;

/// A transactional id as ListTransactions reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransactionListing {
    /// The transactional id.
    pub id: String,
    /// Its current producer id.
    pub producer_id: i64,
    /// Its state (`Ongoing`, `CompleteCommit`, …).
    pub state: String,
}

/// A transactional id as DescribeTransactions reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransactionDescription {
    /// The transactional id.
    pub id: String,
    /// Its state.
    pub state: String,
    /// Its producer id and epoch.
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// Its `transaction.timeout.ms`.
    pub timeout_ms: i32,
    /// When the open transaction started (ms since the epoch; -1 when none is open).
    pub start_ms: i64,
    /// The partitions in the open transaction, by topic.
    pub partitions: BTreeMap<String, Vec<i32>>,
}

impl Client {
    /// Transactional ids on every broker, sorted by id.
    pub async fn list_transactions(&self) -> Result<Vec<TransactionListing>, ClientError> {
        let (brokers, _) = self.cluster().await?;
        let mut out = Vec::new();
        for b in brokers {
            let conn = self.node(b.id, &format!("{}:{}", b.host, b.port)).await?;
            let resp = conn
                .send(&ListTransactionsRequest::default().with_duration_filter(-1))
                .await?;
            check(
                format!("listing transactions on broker {}", b.id),
                resp.error_code,
            )?;
            out.extend(resp.transaction_states.iter().map(|t| TransactionListing {
                id: t.transactional_id.0.to_string(),
                producer_id: t.producer_id.0,
                state: t.transaction_state.to_string(),
            }));
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out.dedup_by(|a, b| a.id == b.id);
        Ok(out)
    }

    /// Transactional id `id`'s state, from its coordinator.
    pub async fn describe_transaction(
        &self,
        id: &str,
    ) -> Result<TransactionDescription, ClientError> {
        self.at_coordinator_of(id, TRANSACTIONAL_ID, |conn| async move {
            let req = DescribeTransactionsRequest::default().with_transactional_ids(vec![
                TransactionalId(StrBytes::from_string(id.to_owned())),
            ]);
            let resp = conn.send(&req).await?;
            let t = resp.transaction_states.first().ok_or_else(|| {
                ClientError::Decode("DescribeTransactions answered nothing".into())
            })?;
            check(format!("describing transactional id {id}"), t.error_code)?;
            let mut partitions = BTreeMap::new();
            for topic in &t.topics {
                partitions.insert(topic.topic.0.to_string(), topic.partitions.clone());
            }
            Ok(TransactionDescription {
                id: id.to_owned(),
                state: t.transaction_state.to_string(),
                producer_id: t.producer_id.0,
                producer_epoch: t.producer_epoch,
                timeout_ms: t.transaction_timeout_ms,
                start_ms: t.transaction_start_time_ms,
                partitions,
            })
        })
        .await
    }

    /// Aborts `id`'s open transaction through its coordinator, as a timeout would: the
    /// producer's epoch is bumped (its next request is refused, and it may recover by
    /// initialising again), the partitions get abort markers, and read_committed consumers
    /// move past its records. Waits up to `wait` for the abort to complete; returns the
    /// state it ended in. Refused when the id has no open transaction.
    pub async fn abort_transaction(
        &self,
        id: &str,
        wait: Duration,
    ) -> Result<TransactionDescription, ClientError> {
        let before = self.describe_transaction(id).await?;
        if before.state != "Ongoing" {
            return Err(ClientError::NotApplicable(format!(
                "transactional id {id} has no open transaction (it is {})",
                before.state
            )));
        }
        // KIP-360's InitProducerId with the current producer id and epoch: the coordinator
        // fences that epoch and aborts the open transaction, answering CONCURRENT_TRANSACTIONS
        // while it does. Answered at once with no error only if the transaction ended
        // meanwhile (then it bumped the epoch of an idle producer, which harms nothing).
        self.at_coordinator_of(id, TRANSACTIONAL_ID, |conn| {
            let before = &before;
            async move {
                let req = InitProducerIdRequest::default()
                    .with_transactional_id(Some(TransactionalId(StrBytes::from_string(
                        id.to_owned(),
                    ))))
                    .with_transaction_timeout_ms(before.timeout_ms)
                    .with_producer_id(ProducerId(before.producer_id))
                    .with_producer_epoch(before.producer_epoch);
                let resp = conn.send(&req).await?;
                if resp.error_code == CONCURRENT_TRANSACTIONS {
                    return Ok(());
                }
                check(format!("aborting transactional id {id}"), resp.error_code)
            }
        })
        .await?;
        let deadline = Instant::now() + wait;
        loop {
            let now = self.describe_transaction(id).await?;
            if now.state == "CompleteAbort" || Instant::now() >= deadline {
                return Ok(now);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
