//! Kafka processes a connection's requests one at a time, and producers rely on it: batches
//! sent in two pipelined requests must land in the order sent. The connection overlaps
//! requests, so each Produce takes a ticket in arrival order and appends only in ticket
//! order; the fsync wait of `acks=all` still overlaps.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::watch;

/// Orders appends of a connection's Produce requests: ticket `n` appends once every earlier
/// ticket is done (appended, failed, or dropped).
#[derive(Debug)]
pub(crate) struct Turnstile {
    /// The lowest ticket not yet done, and done tickets above it.
    state: watch::Sender<(u64, BTreeSet<u64>)>,
}

impl Default for Turnstile {
    fn default() -> Self {
        Self {
            state: watch::channel((0, BTreeSet::new())).0,
        }
    }
}

/// One Produce request's place in its connection's order. Dropping it marks it done.
#[derive(Debug)]
pub(crate) struct Turn {
    turnstile: Arc<Turnstile>,
    ticket: u64,
}

impl Turnstile {
    /// Ticket `ticket` (handed out in arrival order, from 0).
    pub(crate) fn turn(self: &Arc<Self>, ticket: u64) -> Turn {
        Turn {
            turnstile: self.clone(),
            ticket,
        }
    }
}

impl Turn {
    /// Waits until every earlier Produce of this connection is done.
    pub(crate) async fn wait(&self) {
        let mut rx = self.turnstile.state.subscribe();
        let _ = rx.wait_for(|(next, _)| *next >= self.ticket).await;
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let ticket = self.ticket;
        self.turnstile.state.send_modify(|(next, done)| {
            done.insert(ticket);
            while done.remove(next) {
                *next += 1;
            }
        });
    }
}
