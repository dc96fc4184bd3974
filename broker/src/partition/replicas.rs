//! What a partition's leader knows of its followers (Kafka's replica manager, per partition):
//! each follower's log end as its fetches report it, when it was last caught up, and from
//! those the high watermark and the in-sync replica set the leader should ask for.
//!
//! Pure: times come in as arguments, so the rules are tested without a cluster. A follower's
//! fetch offset is its log end, and followers fetch only what they have made durable, so an
//! offset below the high watermark is on disk on every in-sync replica.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One follower as the leader sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Follower {
    /// Its log end: the offset it fetched from last.
    pub(crate) log_end: u64,
    /// When its log end last reached the leader's (Kafka's `lastCaughtUpTimeMs`).
    pub(crate) caught_up_at: Instant,
    /// When it last fetched, and the leader's log end then.
    fetched_at: Instant,
    leader_end_at_fetch: u64,
}

/// The leader's view of a partition's followers.
#[derive(Debug, Default)]
pub(crate) struct Replicas {
    followers: BTreeMap<i32, Follower>,
    /// When this broker became leader: a follower that has not fetched since counts as
    /// caught up then (Kafka starts every follower's clock at the leader change).
    since: Option<Instant>,
}

impl Replicas {
    /// Records that `follower` fetched from `offset` at `now`, when the leader's log ended at
    /// `leader_end`. Caught up when it asked for the leader's end, or for at least what the
    /// leader had when it fetched before (Kafka's rule: a follower that keeps pace with a busy
    /// leader is never exactly at its end).
    pub(crate) fn fetched(&mut self, follower: i32, offset: u64, leader_end: u64, now: Instant) {
        let previous = self.followers.get(&follower).copied();
        let caught_up_at = if offset >= leader_end {
            now
        } else {
            match previous {
                Some(p) if offset >= p.leader_end_at_fetch => p.fetched_at,
                Some(p) => p.caught_up_at,
                // A follower seen for the first time and behind has never been caught up;
                // it counts from now, as Kafka starts a new replica's clock.
                None => now,
            }
        };
        self.followers.insert(
            follower,
            Follower {
                log_end: offset,
                caught_up_at,
                fetched_at: now,
                leader_end_at_fetch: leader_end,
            },
        );
    }

    /// The follower's state, if it has fetched since this broker became leader.
    pub(crate) fn get(&self, follower: i32) -> Option<Follower> {
        self.followers.get(&follower).copied()
    }

    /// The high watermark: the smallest log end among the in-sync replicas (the leader's own
    /// is `leader_end`, and `leader` is skipped in `isr`). An in-sync follower that has not
    /// fetched yet holds it where it is (`current`): the watermark never moves back.
    pub(crate) fn high_watermark(
        &self,
        leader: i32,
        isr: &[i32],
        leader_end: u64,
        current: u64,
    ) -> u64 {
        let mut hw = leader_end;
        for id in isr.iter().filter(|id| **id != leader) {
            match self.followers.get(id) {
                Some(f) => hw = hw.min(f.log_end),
                None => hw = hw.min(current),
            }
        }
        hw.max(current).min(leader_end)
    }

    /// In-sync followers that have not caught up within `max_lag` (Kafka's
    /// `replica.lag.time.max.ms`): the leader asks the controller to drop them from the ISR.
    pub(crate) fn lagging(
        &self,
        leader: i32,
        isr: &[i32],
        max_lag: Duration,
        now: Instant,
    ) -> Vec<i32> {
        isr.iter()
            .copied()
            .filter(|id| *id != leader)
            .filter(|id| {
                let caught_up_at = self
                    .followers
                    .get(id)
                    .map(|f| f.caught_up_at)
                    .or(self.since)
                    .unwrap_or(now);
                now.saturating_duration_since(caught_up_at) > max_lag
            })
            .collect()
    }

    /// Replicas outside the ISR that have caught up to the high watermark and still fetch
    /// (they fetched within `max_lag` of `now`; a follower's last fetch from before it was cut
    /// off says nothing of it now): the leader asks the controller to add them back.
    pub(crate) fn caught_up(
        &self,
        replicas: &[i32],
        isr: &[i32],
        high_watermark: u64,
        max_lag: Duration,
        now: Instant,
    ) -> Vec<i32> {
        replicas
            .iter()
            .copied()
            .filter(|id| !isr.contains(id))
            .filter(|id| {
                self.followers.get(id).is_some_and(|f| {
                    f.log_end >= high_watermark
                        && now.saturating_duration_since(f.fetched_at) <= max_lag
                })
            })
            .collect()
    }

    /// Starts a new term at `now`: followers are judged on what they fetch from now on.
    pub(crate) fn restart(&mut self, now: Instant) {
        self.followers.clear();
        self.since = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEADER: i32 = 1;

    #[test]
    fn the_high_watermark_is_the_slowest_in_sync_log_end_and_never_goes_back() {
        let t = Instant::now();
        let mut r = Replicas::default();
        // Alone in the ISR: the leader's end.
        assert_eq!(r.high_watermark(LEADER, &[1], 100, 0), 100);
        // A follower in the ISR that has not fetched yet holds it.
        assert_eq!(r.high_watermark(LEADER, &[1, 2], 100, 40), 40);
        r.fetched(2, 60, 100, t);
        r.fetched(3, 90, 100, t);
        assert_eq!(r.high_watermark(LEADER, &[1, 2, 3], 100, 40), 60);
        // A follower outside the ISR does not hold it back.
        assert_eq!(r.high_watermark(LEADER, &[1, 3], 100, 40), 90);
        // Never backwards, never past the leader's end.
        r.fetched(2, 30, 100, t);
        assert_eq!(r.high_watermark(LEADER, &[1, 2], 100, 60), 60);
        assert_eq!(r.high_watermark(LEADER, &[1], 50, 40), 50);
    }

    #[test]
    fn a_follower_that_does_not_catch_up_within_the_lag_leaves_the_isr_and_comes_back() {
        let t = Instant::now();
        let lag = Duration::from_secs(30);
        let mut r = Replicas::default();
        r.restart(t);
        // Followers get the lag time from the leader change before they count as lagging.
        assert!(r.lagging(LEADER, &[1, 2, 3], lag, t + lag).is_empty());
        r.fetched(2, 100, 100, t);
        r.fetched(3, 100, 100, t);
        // Busy leader: follower 2 keeps fetching what the leader had at its previous fetch.
        let mut end = 100;
        for s in 1..=40 {
            end += 10;
            let now = t + Duration::from_secs(s);
            r.fetched(2, end - 10, end, now);
            // Follower 3 is stuck at 100.
            r.fetched(3, 100, end, now);
        }
        let now = t + Duration::from_secs(40);
        assert_eq!(r.lagging(LEADER, &[1, 2, 3], lag, now), vec![3]);
        assert_eq!(
            r.get(2).map(|f| f.caught_up_at),
            Some(t + Duration::from_secs(39))
        );
        // An in-sync follower never seen since this broker took over is lagging after the
        // lag time too (it may be dead).
        assert_eq!(r.lagging(LEADER, &[1, 4], lag, now), vec![4]);
        // Follower 3 catches up to the high watermark: it may rejoin.
        let hw = r.high_watermark(LEADER, &[1, 2], end, 0);
        assert!(r.caught_up(&[1, 2, 3], &[1, 2], hw, lag, now).is_empty());
        r.fetched(3, hw, end, now);
        assert_eq!(r.caught_up(&[1, 2, 3], &[1, 2], hw, lag, now), vec![3]);
        // Caught up once but silent since (cut off, or gone): not back in.
        let later = now + lag + Duration::from_secs(1);
        assert!(r.caught_up(&[1, 2, 3], &[1, 2], hw, lag, later).is_empty());
        r.restart(now);
        assert_eq!(r.get(2), None);
    }
}
