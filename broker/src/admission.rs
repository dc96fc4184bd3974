//! What the broker lets in: connections, in total and per client address, and the bytes of
//! requests and Fetch responses held in memory across connections.
//!
//! A connection beyond `kafka.max_connections` (by default a quarter of the open-file limit,
//! so the logs always have descriptors; see `budget`) or `kafka.max_connections_per_ip` is closed at once. Every
//! request body is read only after its bytes are reserved from `kafka.max_queued_bytes`, and
//! a Fetch reserves what it reads; both are released once the response is written. So however
//! many clients send or fail to read, the memory they pin stays within that budget.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::KafkaConfig;

/// The broker's admission limits.
#[derive(Debug)]
pub(crate) struct Admission {
    max_connections: usize,
    max_per_ip: usize,
    open: Mutex<Open>,
    memory: Arc<Semaphore>,
    memory_total: usize,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// A connection's place; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    admission: Arc<Admission>,
    ip: IpAddr,
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    Broker(usize),
    Address(usize),
}

impl Admission {
    /// The limits `config` asks for, with `max_connections` as the broker's budget has it.
    pub(crate) fn new(config: &KafkaConfig, max_connections: usize) -> Self {
        let memory_total = usize::try_from(config.max_queued_bytes)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Self {
            max_connections,
            max_per_ip: config.max_connections_per_ip,
            open: Mutex::new(Open::default()),
            memory: Arc::new(Semaphore::new(memory_total)),
            memory_total,
        }
    }

    /// Takes a place for a connection from `ip`, if there is one.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, Full> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.total >= self.max_connections {
            return Err(Full::Broker(self.max_connections));
        }
        let from_ip = open.by_ip.entry(ip).or_default();
        if self.max_per_ip > 0 && *from_ip >= self.max_per_ip {
            return Err(Full::Address(self.max_per_ip));
        }
        *from_ip += 1;
        open.total += 1;
        Ok(ConnectionSlot {
            admission: self.clone(),
            ip,
        })
    }

    /// Reserves `bytes` of the memory budget, waiting until they are free. A request larger
    /// than the whole budget reserves all of it (configuration keeps the budget at least as
    /// large as the largest request or response). `None` only if the budget were closed,
    /// which it never is.
    pub(crate) async fn reserve(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(bytes.clamp(1, self.memory_total)).unwrap_or(u32::MAX);
        self.memory.clone().acquire_many_owned(n).await.ok()
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self
            .admission
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.by_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max: usize, per_ip: usize) -> Arc<Admission> {
        Arc::new(Admission::new(
            &KafkaConfig {
                max_connections_per_ip: per_ip,
                ..KafkaConfig::default()
            },
            max,
        ))
    }

    #[test]
    fn connections_are_bounded_in_total_and_per_address_and_freed_on_drop() {
        let a = admission(3, 2);
        let one: IpAddr = "10.0.0.1".parse().expect("ip");
        let two: IpAddr = "10.0.0.2".parse().expect("ip");
        let first = a.admit(one).expect("first");
        let _second = a.admit(one).expect("second");
        assert_eq!(a.admit(one).err(), Some(Full::Address(2)));
        let _third = a.admit(two).expect("another address");
        assert_eq!(a.admit(two).err(), Some(Full::Broker(3)));
        drop(first);
        a.admit(one).expect("a freed place is taken again");
    }

    #[tokio::test]
    async fn memory_is_reserved_until_released() {
        let a = Admission::new(
            &KafkaConfig {
                max_queued_bytes: 1000,
                ..KafkaConfig::default()
            },
            10,
        );
        let held = a.reserve(600).await;
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), a.reserve(600));
        assert!(waiting.await.is_err(), "over budget waits");
        drop(held);
        let _both = (a.reserve(600).await, a.reserve(400).await);
    }
}
