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
//!
//! A lease that ran out and is renewed again (a broker paused or cut off for longer than
//! the session timeout, fenced meanwhile and unfenced by the heartbeat that renews it) is
//! not current until this broker has applied the metadata version that heartbeat answered:
//! until then its image may still show it leading what the controller moved elsewhere while
//! it was away, and answers from its coordinators' caches would be stale.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The lease; renewed by each answered heartbeat.
#[derive(Debug)]
pub(crate) struct Lease {
    timeout: Duration,
    renewed: Mutex<Renewed>,
}

#[derive(Debug, Default)]
struct Renewed {
    /// When the last answered heartbeat was sent.
    sent: Option<Instant>,
    /// The metadata version to have applied before acting on the lease: that of the renewal
    /// that followed a lapse.
    need_version: u64,
}

impl Lease {
    /// A lease that runs `timeout` (the controller's session timeout) from each renewal; not
    /// held until the first one.
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            renewed: Mutex::new(Renewed::default()),
        }
    }

    fn renewed(&self) -> std::sync::MutexGuard<'_, Renewed> {
        self.renewed.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expiry(&self) -> Option<Instant> {
        self.renewed().sent.map(|t| t + self.timeout)
    }

    /// Renews the lease from `sent`, when the heartbeat the controller answered (at
    /// metadata `version`) was sent.
    pub(crate) fn renew(&self, sent: Instant, version: u64) {
        let mut renewed = self.renewed();
        let lapsed = renewed
            .sent
            .is_none_or(|r| r + self.timeout <= Instant::now());
        if lapsed {
            renewed.need_version = renewed.need_version.max(version);
        }
        if renewed.sent.is_none_or(|r| r < sent) {
            renewed.sent = Some(sent);
        }
    }

    /// Whether the controller may still count this broker as live.
    pub(crate) fn held(&self) -> bool {
        self.expiry().is_some_and(|e| Instant::now() < e)
    }

    /// Whether the lease is held and this broker's metadata, at `applied_version`, is as
    /// new as the controller's was when the lease was renewed after a lapse: what this
    /// broker's image says it leads, it leads.
    pub(crate) fn current(&self, applied_version: u64) -> bool {
        let renewed = self.renewed();
        renewed
            .sent
            .is_some_and(|t| Instant::now() < t + self.timeout)
            && applied_version >= renewed.need_version
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
        lease.renew(sent, 1);
        assert!(lease.held());
        // An older heartbeat answered late does not move it back.
        lease.renew(sent - Duration::from_secs(5), 2);
        tokio::time::advance(Duration::from_secs(7)).await;
        assert!(lease.held());
        let lost = tokio::time::timeout(Duration::from_secs(2), lease.lost()).await;
        assert!(lost.is_ok(), "lost at sent + 9 s");
        assert!(!lease.held());
        assert_eq!(Instant::now(), sent + Duration::from_secs(9));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_renewed_after_a_lapse_is_current_once_the_metadata_caught_up() {
        let lease = Lease::new(Duration::from_secs(9));
        lease.renew(Instant::now(), 5);
        assert!(lease.current(5));
        assert!(
            !lease.current(4),
            "the first renewal needs its metadata too"
        );
        // Renewals while held ask for nothing more.
        tokio::time::advance(Duration::from_secs(3)).await;
        lease.renew(Instant::now(), 9);
        assert!(lease.current(5));
        // A pause past the timeout: not held, then renewed at version 20 (the controller
        // fenced and unfenced this broker meanwhile), and current only from version 20.
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(!lease.current(5));
        lease.renew(Instant::now(), 20);
        assert!(lease.held());
        assert!(!lease.current(19));
        assert!(lease.current(20));
    }
}
