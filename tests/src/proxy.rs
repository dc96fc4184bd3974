//! TCP proxies that stand in for network links, so a test can cut one link of a cluster (a
//! broker from another broker, clients from a broker, a broker from the object store) while
//! the rest carries on.
//!
//! Every process of a test cluster runs on loopback, so a proxy tells who connected by the
//! process that owns the other end of the socket (`/proc/net/tcp` and `/proc/<pid>/fd`): one
//! proxy per listener is enough to cut any pair. A cut either resets (connections close at
//! once and new ones are closed on arrival, as a refused or reset link) or hangs (bytes stop
//! flowing both ways and new connections are held without an answer, as a dropped route),
//! until it is healed; connections that were hung are then closed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Who is at the other end of a proxied connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Peer {
    /// A node of the cluster (its id).
    Node(i32),
    /// Anything else: the test's own clients.
    Client,
}

/// What a cut link does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Connections are closed; new ones close on arrival.
    Reset,
    /// Nothing flows and nothing is closed until the cut heals.
    Hang,
}

/// Which node each running process is (pid → node id), kept by the cluster as it starts
/// and stops processes.
pub type Pids = Arc<Mutex<BTreeMap<u32, i32>>>;

#[derive(Debug)]
struct Rules {
    cuts: Mutex<BTreeMap<Peer, Cut>>,
    changed: watch::Sender<u64>,
}

impl Rules {
    fn cut_for(&self, peer: Peer) -> Option<Cut> {
        self.cuts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer)
            .copied()
    }

    /// Resolves once `peer`'s link is cut (now or later); returns how.
    async fn until_cut(&self, peer: Peer) -> Cut {
        let mut changed = self.changed.subscribe();
        loop {
            if let Some(cut) = self.cut_for(peer) {
                return cut;
            }
            if changed.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Resolves once `peer`'s link is no longer cut.
    async fn until_healed(&self, peer: Peer) {
        let mut changed = self.changed.subscribe();
        while self.cut_for(peer).is_some() {
            if changed.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// A proxy in front of one listener.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    rules: Arc<Rules>,
    serving: JoinHandle<()>,
}

impl Proxy {
    /// Listens on `listen` and forwards every connection to `target`.
    pub async fn start(listen: SocketAddr, target: SocketAddr, pids: Pids) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("reuseaddr");
        socket.bind(listen).expect("bind a proxy port");
        let listener = socket.listen(1024).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let rules = Arc::new(Rules {
            cuts: Mutex::new(BTreeMap::new()),
            changed: watch::channel(0).0,
        });
        let serving = tokio::spawn(serve(listener, target, pids, rules.clone()));
        Self {
            addr,
            rules,
            serving,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts the link from `peer` through this proxy.
    pub fn cut(&self, peer: Peer, how: Cut) {
        self.rules
            .cuts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer, how);
        self.rules.changed.send_modify(|v| *v += 1);
    }

    /// Heals every cut of this proxy.
    pub fn heal(&self) {
        self.rules
            .cuts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.rules.changed.send_modify(|v| *v += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

async fn serve(listener: TcpListener, target: SocketAddr, pids: Pids, rules: Arc<Rules>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((socket, from)) = accepted else { continue };
                let (pids, rules) = (pids.clone(), rules.clone());
                connections.spawn(async move {
                    let peer = identify(from, &pids).await;
                    forward(socket, target, peer, rules).await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn forward(mut socket: TcpStream, target: SocketAddr, peer: Peer, rules: Arc<Rules>) {
    let _ = socket.set_nodelay(true);
    let cut = tokio::select! {
        biased;
        cut = rules.until_cut(peer) => cut,
        () = async {
            if let Ok(mut upstream) = TcpStream::connect(target).await {
                let _ = upstream.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut socket, &mut upstream).await;
            }
        } => return,
    };
    if cut == Cut::Hang {
        rules.until_healed(peer).await;
    }
}

/// The node whose process owns the local end `from` of a loopback connection, if any.
///
/// `/proc/net/tcp` is read a page at a time and a line can be skipped when the table changes
/// between reads, so a socket that is not found (nor found in this process, the test's own
/// clients) is looked for again: a node's connection taken for a client's would be out of
/// reach of every cut.
async fn identify(from: SocketAddr, pids: &Pids) -> Peer {
    const ATTEMPTS: u32 = 20;
    for _ in 0..ATTEMPTS {
        let pids = pids.clone();
        let found = tokio::task::spawn_blocking(move || {
            let inode = socket_inode(from)?;
            owner(inode, &pids)
        })
        .await
        .ok()
        .flatten();
        if let Some(peer) = found {
            return peer;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    Peer::Client
}

/// Who owns the socket with `inode`: a node, or this process (a client); `None` when no
/// process we know of does.
fn owner(inode: u64, pids: &Pids) -> Option<Peer> {
    let wanted = format!("socket:[{inode}]");
    let owns = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.filter_map(Result::ok).any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == wanted.as_str())
            })
        })
    };
    let nodes: Vec<(u32, i32)> = pids
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(p, n)| (*p, *n))
        .collect();
    if let Some((_, node)) = nodes.into_iter().find(|(pid, _)| owns(*pid)) {
        return Some(Peer::Node(node));
    }
    owns(std::process::id()).then_some(Peer::Client)
}

/// The inode of the IPv4 TCP socket whose local address is `addr`.
fn socket_inode(addr: SocketAddr) -> Option<u64> {
    let SocketAddr::V4(v4) = addr else {
        return None;
    };
    // /proc/net/tcp writes the address as the in-memory u32 in hex (little-endian here),
    // then the port in hex.
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    // An earlier connection from the same port may linger in TIME_WAIT; such sockets have no
    // owner (inode 0), so they are skipped rather than taken for a client.
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&local.as_str()))
            .then(|| fields.get(9)?.parse().ok())
            .flatten()
            .filter(|inode| *inode != 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream) -> std::io::Result<u8> {
        s.write_all(b"x").await?;
        let mut b = [0u8; 1];
        tokio::time::timeout(std::time::Duration::from_millis(500), s.read_exact(&mut b))
            .await
            .map_err(|_| std::io::Error::other("timed out"))??;
        Ok(b[0])
    }

    #[tokio::test]
    async fn a_cut_link_resets_or_hangs_until_healed_and_only_for_its_peer() {
        let pids: Pids = Arc::default();
        // This process plays node 7.
        pids.lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(std::process::id(), 7);
        let proxy = Proxy::start("127.0.0.1:0".parse().expect("addr"), echo().await, pids).await;
        let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(round_trip(&mut s).await.expect("forwarded"), b'x');

        // Another peer's cut leaves this link alone.
        proxy.cut(Peer::Client, Cut::Reset);
        assert_eq!(round_trip(&mut s).await.expect("still forwarded"), b'x');

        proxy.cut(Peer::Node(7), Cut::Reset);
        assert!(round_trip(&mut s).await.is_err(), "reset");
        let mut fresh = TcpStream::connect(proxy.addr()).await.expect("accepted");
        assert!(round_trip(&mut fresh).await.is_err(), "closed on arrival");

        proxy.cut(Peer::Node(7), Cut::Hang);
        let mut hung = TcpStream::connect(proxy.addr()).await.expect("accepted");
        let err = round_trip(&mut hung).await.expect_err("no answer");
        assert_eq!(err.to_string(), "timed out", "held open, not closed");

        proxy.heal();
        let mut healed = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(round_trip(&mut healed).await.expect("forwarded"), b'x');
    }
}
