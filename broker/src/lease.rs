//! This broker's lease with the controller: how long it may go on acting as a partition
//! leader without hearing from the controller.
//!
//! The controller fences a broker whose heartbeats stop for the session timeout and elects
//! other leaders. The broker counts the same timeout from when it *sent* its last answered
//! heartbeat, which is no later than when the controller received it, so it stops taking
//! writes before the controller can have moved its partitions: a leader cut off from the
//! quorum answers NOT_LEADER_OR_FOLLOWER (and its clients find the new leader) instead of
//! holding acks=all writes until they time out, or taking acks=1 writes a new leader will
//! never have.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The lease; renewed by each answered heartbeat.
#[derive(Debug)]
pub(crate) struct Lease {
    timeout: Duration,
    renewed: Mutex<Option<Instant>>,
}

impl Lease {
    /// A lease that runs `timeout` (the controller's session timeout) from each renewal; not
    /// held until the first one.
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            renewed: Mutex::new(None),
        }
    }

    fn expiry(&self) -> Option<Instant> {
        self.renewed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t + self.timeout)
    }

    /// Renews the lease from `sent`, when the heartbeat the controller answered was sent.
    pub(crate) fn renew(&self, sent: Instant) {
        let mut renewed = self.renewed.lock().unwrap_or_else(|p| p.into_inner());
        if renewed.is_none_or(|r| r < sent) {
            *renewed = Some(sent);
        }
    }

    /// Whether the controller may still count this broker as live.
    pub(crate) fn held(&self) -> bool {
        self.expiry().is_some_and(|e| Instant::now() < e)
    }

    /// Resolves once the lease has run out.
    pub(crate) async fn lost(&self) {
        while let Some(expiry) = self.expiry().filter(|e| Instant::now() < *e) {
            tokio::time::sleep_until(expiry).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_lease_runs_from_the_last_answered_heartbeat_sent() {
        let lease = Lease::new(Duration::from_secs(9));
        assert!(!lease.held(), "not held before the first heartbeat");
        let sent = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;
        lease.renew(sent);
        assert!(lease.held());
        // An older heartbeat answered late does not move it back.
        lease.renew(sent - Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(7)).await;
        assert!(lease.held());
        let lost = tokio::time::timeout(Duration::from_secs(2), lease.lost()).await;
        assert!(lost.is_ok(), "lost at sent + 9 s");
        assert!(!lease.held());
        assert_eq!(Instant::now(), sent + Duration::from_secs(9));
    }
}
