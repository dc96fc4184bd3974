//! Broker leases, kept by the Raft leader in memory.
//!
//! Heartbeats are not written to the Raft log: the leader notes when each broker last
//! heartbeated, and proposes `FenceBrokers` for unfenced brokers whose lease ran out. A new
//! leader does not know when brokers last heartbeated, so it starts every lease afresh.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::model::{BrokerId, MetadataImage};

/// Lease deadlines by broker.
#[derive(Debug)]
pub(crate) struct Leases {
    timeout: Duration,
    deadlines: Mutex<HashMap<BrokerId, Instant>>,
}

impl Leases {
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            deadlines: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BrokerId, Instant>> {
        self.deadlines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Extends `broker`'s lease from `now`.
    pub(crate) fn renew(&self, broker: BrokerId, now: Instant) {
        self.lock().insert(broker, now + self.timeout);
    }

    /// Forgets every deadline: called when this controller becomes leader.
    pub(crate) fn reset(&self) {
        self.lock().clear();
    }

    /// Unfenced brokers whose lease has run out. A broker seen for the first time gets a full
    /// lease from `now`.
    pub(crate) fn expired(&self, image: &MetadataImage, now: Instant) -> Vec<BrokerId> {
        let mut deadlines = self.lock();
        deadlines.retain(|id, _| image.brokers.contains_key(id));
        image
            .brokers
            .values()
            .filter(|b| !b.fenced)
            .filter(|b| *deadlines.entry(b.id).or_insert(now + self.timeout) <= now)
            .map(|b| b.id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::state::MetadataState;

    #[test]
    fn only_unfenced_brokers_without_heartbeats_expire() {
        let mut state = MetadataState::default();
        for id in 1..=3 {
            let epoch = state.image().version + 1;
            state
                .apply(&Command::RegisterBroker {
                    id,
                    endpoints: Vec::new(),
                    rack: None,
                    incarnation: uuid::Uuid::nil(),
                })
                .expect("register");
            if id != 3 {
                state
                    .apply(&Command::UnfenceBroker { id, epoch })
                    .expect("unfence");
            }
        }
        let leases = Leases::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(
            leases.expired(state.image(), t0).is_empty(),
            "first sight grants a lease"
        );
        leases.renew(1, t0 + Duration::from_secs(5));
        let later = t0 + Duration::from_secs(11);
        assert_eq!(leases.expired(state.image(), later), vec![2]);
        leases.reset();
        assert!(leases.expired(state.image(), later).is_empty());
    }
}
