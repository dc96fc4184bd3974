//! Transaction state in the `__transaction_state` topic: one record per transactional id,
//! key `{"txn":"<id>"}`, value the id's [`TxnMeta`] as JSON, or null when the id expired.
//! The newest record per key wins. Written and replayed through [`crate::statelog`].

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use strata_storage::{Log, StorageError};

use super::machine::TxnMeta;
use crate::statelog::{self, Replayed, StateRecord};

/// The internal topic.
pub(crate) const TXN_TOPIC: &str = "__transaction_state";

#[derive(Serialize, Deserialize)]
struct Key {
    txn: String,
}

/// The record for `id`'s new state (None: forget the id).
pub(crate) fn record(id: &str, meta: Option<&TxnMeta>) -> StateRecord {
    // Plain data: serializing cannot fail.
    let key = serde_json::to_vec(&Key { txn: id.to_owned() }).unwrap_or_default();
    let value = meta.map(|m| serde_json::to_vec(m).unwrap_or_default());
    (key, value)
}

/// Replays a partition of the transaction state topic: every id's latest state.
pub(crate) fn load(log: &Log) -> Result<HashMap<String, TxnMeta>, StorageError> {
    let mut txns = HashMap::new();
    statelog::replay(log, |r| apply(&mut txns, r))?;
    Ok(txns)
}

/// Replays raw batches (the fuzz target's entry).
pub(crate) fn load_bytes(bytes: &[u8]) -> HashMap<String, TxnMeta> {
    let mut txns = HashMap::new();
    statelog::replay_bytes(bytes, |r| apply(&mut txns, r));
    txns
}

fn apply(txns: &mut HashMap<String, TxnMeta>, replayed: Replayed) {
    let Replayed::Records { records, .. } = replayed else {
        return;
    };
    for r in records {
        let Some(Key { txn }) = r.key.as_ref().and_then(|k| serde_json::from_slice(k).ok()) else {
            continue;
        };
        match r
            .value
            .as_ref()
            .map(|v| serde_json::from_slice::<TxnMeta>(v))
        {
            Some(Ok(meta)) => {
                txns.insert(txn, meta);
            }
            Some(Err(e)) => {
                tracing::warn!(transactional_id = %txn, error = %e, "skipping an unreadable transaction state record");
            }
            None => {
                txns.remove(&txn);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::machine::{Init, init};

    #[test]
    fn the_newest_state_per_id_wins_and_null_forgets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Log::open(dir.path(), strata_storage::LogConfig::default()).expect("open");
        let Ok(Init::Write(a)) = init(None, 1000, None, Some(1), 0) else {
            panic!("init");
        };
        let Ok(Init::Write(a2)) = init(Some(&a), 1000, None, None, 1) else {
            panic!("bump");
        };
        let Ok(Init::Write(b)) = init(None, 1000, None, Some(2), 0) else {
            panic!("init");
        };
        for records in [
            vec![record("a", Some(&a)), record("b", Some(&b))],
            vec![record("a", Some(&a2)), record("b", None)],
        ] {
            let bytes = statelog::batch(&records, 5, None);
            log.append(&bytes, 0).expect("append");
        }
        let txns = load(&log).expect("load");
        assert_eq!(txns.len(), 1);
        assert_eq!(txns["a"].epoch, 1);
    }
}
