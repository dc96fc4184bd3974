//! In-process controller quorums over real gRPC on loopback. Every link between two
//! controllers runs through a TCP proxy the test can cut, to partition the quorum.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use strata_controller::command::{Command, CommandError, Outcome};
use strata_controller::model::{BrokerId, Endpoint, MetadataImage, MetadataUpdate};
use strata_controller::tls::GrpcTls;
use strata_controller::{ControllerClient, ControllerConfig, ControllerNode, NodeId};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use uuid::Uuid;

const ELECTION_MAX: Duration = Duration::from_millis(500);

/// A loopback listener for a controller node, on a port below the kernel's ephemeral range
/// that no other node of this process gets: a stopped node's port must still be free for its
/// restart. (With ports from `:0`, another test's node was once given a stopped node's port
/// meanwhile and joined this test's quorum: AddrInUse here, 77 brokers instead of 50 there.)
async fn node_listener() -> TcpListener {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 1_000) as u16 * 10;
    for _ in 0..1_000 {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 2_000;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)).await {
            return l;
        }
    }
    panic!("no free port from {base}");
}

/// A TCP forwarder from a local port to `target` that can drop all traffic.
struct Proxy {
    addr: SocketAddr,
    blocked: Arc<AtomicBool>,
    conns: Arc<Mutex<JoinSet<()>>>,
    _accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let blocked = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(JoinSet::new()));
        let (b, c) = (blocked.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if b.load(Ordering::SeqCst) {
                    continue;
                }
                c.lock().expect("lock").spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self {
            addr,
            blocked,
            conns,
            _accept: accept,
        }
    }

    fn cut(&self) {
        self.blocked.store(true, Ordering::SeqCst);
        self.conns.lock().expect("lock").abort_all();
    }

    fn heal(&self) {
        self.blocked.store(false, Ordering::SeqCst);
    }
}

struct Cluster {
    dirs: BTreeMap<NodeId, tempfile::TempDir>,
    addrs: BTreeMap<NodeId, SocketAddr>,
    /// `links[(from, to)]` carries `from`'s Raft traffic to `to`.
    links: BTreeMap<(NodeId, NodeId), Proxy>,
    nodes: BTreeMap<NodeId, Option<ControllerNode>>,
    snapshot_every: u64,
    keep_log_entries: u64,
    /// Mutual TLS on every node's gRPC and on the test's client, when set.
    tls: Option<GrpcTls>,
}

impl Cluster {
    async fn start(n: NodeId) -> Self {
        Self::start_with_snapshots(n, 10_000, 1_000).await
    }

    async fn start_with_snapshots(n: NodeId, snapshot_every: u64, keep_log_entries: u64) -> Self {
        Self::start_full(n, snapshot_every, keep_log_entries, None).await
    }

    async fn start_full(
        n: NodeId,
        snapshot_every: u64,
        keep_log_entries: u64,
        tls: Option<GrpcTls>,
    ) -> Self {
        let mut listeners = BTreeMap::new();
        let mut addrs = BTreeMap::new();
        for id in 1..=n {
            let l = node_listener().await;
            addrs.insert(id, l.local_addr().expect("addr"));
            listeners.insert(id, l);
        }
        let mut links = BTreeMap::new();
        for from in 1..=n {
            for to in (1..=n).filter(|to| *to != from) {
                links.insert((from, to), Proxy::start(addrs[&to]).await);
            }
        }
        let mut cluster = Self {
            dirs: (1..=n)
                .map(|id| (id, tempfile::tempdir().expect("tempdir")))
                .collect(),
            addrs,
            links,
            nodes: BTreeMap::new(),
            snapshot_every,
            keep_log_entries,
            tls,
        };
        for (id, l) in listeners {
            let node = ControllerNode::start_with_listener(cluster.config(id), l)
                .await
                .expect("start controller");
            cluster.nodes.insert(id, Some(node));
        }
        cluster
    }

    fn config(&self, id: NodeId) -> ControllerConfig {
        let mut c =
            ControllerConfig::single_node(self.dirs[&id].path(), self.addrs[&id].to_string());
        c.node_id = id;
        c.voters = self
            .addrs
            .iter()
            .map(|(peer, addr)| {
                let via = if *peer == id {
                    *addr
                } else {
                    self.links[&(id, *peer)].addr
                };
                (*peer, via.to_string())
            })
            .collect();
        c.heartbeat_interval = Duration::from_millis(50);
        c.election_timeout = (Duration::from_millis(250), ELECTION_MAX);
        c.session_timeout = Duration::from_millis(1000);
        c.snapshot_every = self.snapshot_every;
        c.keep_log_entries = self.keep_log_entries;
        c.tls = self.tls.clone();
        c
    }

    fn node(&self, id: NodeId) -> &ControllerNode {
        self.nodes[&id].as_ref().expect("node is running")
    }

    fn client(&self) -> ControllerClient {
        ControllerClient::new(self.addrs.values().map(ToString::to_string))
            .with_deadline(Duration::from_secs(10))
            .with_tls(self.tls.clone())
    }

    fn client_of(&self, id: NodeId, deadline: Duration) -> ControllerClient {
        ControllerClient::new([self.addrs[&id].to_string()]).with_deadline(deadline)
    }

    async fn stop(&mut self, id: NodeId) {
        if let Some(node) = self.nodes.get_mut(&id).and_then(Option::take) {
            node.shutdown().await;
        }
    }

    async fn restart(&mut self, id: NodeId) {
        let l = TcpListener::bind(self.addrs[&id]).await.expect("rebind");
        let node = ControllerNode::start_with_listener(self.config(id), l)
            .await
            .expect("restart controller");
        self.nodes.insert(id, Some(node));
    }

    /// Waits until the running nodes in `among` agree on a leader from `among`.
    async fn leader(&self, among: &[NodeId], within: Duration) -> NodeId {
        let deadline = Instant::now() + within;
        loop {
            let views: Vec<Option<NodeId>> =
                among.iter().map(|id| self.node(*id).leader()).collect();
            if let Some(Some(l)) = views.first()
                && among.contains(l)
                && views.iter().all(|v| *v == Some(*l))
            {
                return *l;
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader among {among:?}: {views:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until node `id` has applied metadata `version`.
    async fn caught_up(&self, id: NodeId, version: u64, within: Duration) -> MetadataImage {
        let deadline = Instant::now() + within;
        loop {
            let image = self.node(id).image();
            if image.version >= version {
                return image;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} stuck at version {} < {version}",
                image.version
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn isolate(&self, id: NodeId) {
        for ((from, to), p) in &self.links {
            if *from == id || *to == id {
                p.cut();
            }
        }
    }

    fn heal(&self) {
        self.links.values().for_each(Proxy::heal);
    }
}

fn register(id: BrokerId) -> Command {
    Command::RegisterBroker {
        id,
        endpoints: vec![Endpoint {
            listener: "PLAINTEXT".into(),
            host: "127.0.0.1".into(),
            port: 9092 + id as u16,
        }],
        rack: None,
        incarnation: Uuid::new_v4(),
    }
}

async fn submit_ok(client: &ControllerClient, command: &Command) -> strata_controller::Applied {
    client
        .submit(command)
        .await
        .expect("controller reachable")
        .expect("command applied")
}

/// Reads the metadata once the first leader has set the cluster id.
async fn with_cluster_id(client: &ControllerClient) -> MetadataImage {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let image = client.read_metadata().await.expect("read");
        if image.cluster_id.is_some() {
            return image;
        }
        assert!(Instant::now() < deadline, "no cluster id");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Registers and unfences a broker, returning its epoch.
async fn live_broker(client: &ControllerClient, id: BrokerId) -> u64 {
    let Outcome::BrokerRegistered { epoch } = submit_ok(client, &register(id)).await.outcome else {
        panic!("unexpected outcome")
    };
    let ack = client
        .heartbeat(id, epoch, true)
        .await
        .expect("reachable")
        .expect("heartbeat accepted");
    assert!(!ack.fenced);
    epoch
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_is_elected_and_followers_point_to_it() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader(&[1, 2, 3], Duration::from_secs(10)).await;
    let client = cluster.client();
    let applied = submit_ok(&client, &register(1)).await;
    for id in 1..=3 {
        let image = cluster
            .caught_up(id, applied.version, Duration::from_secs(5))
            .await;
        assert!(image.brokers.contains_key(&1));
    }
    // The first leader sets the cluster id, once, and every node applies the same one.
    let image = with_cluster_id(&client).await;
    for id in 1..=3 {
        let seen = cluster
            .caught_up(id, image.version, Duration::from_secs(5))
            .await;
        assert_eq!(seen.cluster_id, image.cluster_id);
    }
    // A follower answers a leader-only call with the leader's address.
    let follower = (1..=3).find(|id| *id != leader).expect("follower");
    let mut raw = strata_controller::proto::metadata_client::MetadataClient::connect(format!(
        "http://{}",
        cluster.addrs[&follower]
    ))
    .await
    .expect("connect");
    let status = raw
        .read_metadata(strata_controller::proto::ReadRequest {})
        .await
        .expect_err("a follower does not serve linearizable reads");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let hint = status
        .metadata()
        .get(strata_controller::LEADER_ID_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert_eq!(hint, Some(leader.to_string()));
    // And a client that only knows the follower still reaches the leader.
    let via_follower = cluster.client_of(follower, Duration::from_secs(5));
    let image = via_follower
        .read_metadata()
        .await
        .expect("read through hint");
    assert!(image.version >= applied.version);
    let status = via_follower
        .status(&cluster.addrs[&follower].to_string())
        .await
        .expect("status");
    assert_eq!(status.leader_id, Some(leader));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_commands_survive_killing_the_leader() {
    let mut cluster = Cluster::start(3).await;
    let old = cluster.leader(&[1, 2, 3], Duration::from_secs(10)).await;
    let client = cluster.client();
    let mut last = 0;
    for id in 1..=20 {
        last = submit_ok(&client, &register(id)).await.version;
    }
    let killed_at = Instant::now();
    cluster.stop(old).await;
    let rest: Vec<NodeId> = (1..=3).filter(|id| *id != old).collect();
    let new = cluster.leader(&rest, Duration::from_secs(10)).await;
    let took = killed_at.elapsed();
    assert_ne!(new, old);
    assert!(
        took < ELECTION_MAX * 6,
        "new leader after {took:?}, more than a few election timeouts"
    );
    let image = client
        .read_metadata()
        .await
        .expect("read from the new leader");
    assert!(image.version >= last);
    assert_eq!(
        image.brokers.keys().copied().collect::<Vec<_>>(),
        (1..=20).collect::<Vec<_>>()
    );
    // The survivors keep committing, and the old leader catches up when it returns.
    let more = submit_ok(&client, &register(21)).await;
    cluster.restart(old).await;
    let image = cluster
        .caught_up(old, more.version, Duration::from_secs(10))
        .await;
    assert_eq!(image.brokers.len(), 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_catches_up_from_the_log() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader(&[1, 2, 3], Duration::from_secs(10)).await;
    let follower = (1..=3).find(|id| *id != leader).expect("follower");
    let client = cluster.client();
    submit_ok(&client, &register(1)).await;
    cluster.stop(follower).await;
    let mut last = 0;
    for id in 2..=50 {
        last = submit_ok(&client, &register(id)).await.version;
    }
    cluster.restart(follower).await;
    let image = cluster
        .caught_up(follower, last, Duration::from_secs(10))
        .await;
    assert_eq!(image.brokers.len(), 50);
    let m = cluster.node(follower).raft_metrics().borrow().clone();
    assert_eq!(
        m.snapshot, None,
        "caught up by log replication, not a snapshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_catches_up_from_a_snapshot() {
    // Snapshot every 20 entries and keep none behind it, so the leader purges what the
    // stopped follower misses and must send a snapshot.
    let mut cluster = Cluster::start_with_snapshots(3, 20, 0).await;
    let leader = cluster.leader(&[1, 2, 3], Duration::from_secs(10)).await;
    let follower = (1..=3).find(|id| *id != leader).expect("follower");
    let client = cluster.client();
    submit_ok(&client, &register(1)).await;
    cluster.stop(follower).await;
    let mut last = 0;
    for id in 2..=100 {
        last = submit_ok(&client, &register(id)).await.version;
    }
    let purged = cluster.node(leader).raft_metrics().borrow().purged;
    assert!(
        purged.is_some_and(|p| p.index > 20),
        "leader purged {purged:?}"
    );
    cluster.restart(follower).await;
    let image = cluster
        .caught_up(follower, last, Duration::from_secs(10))
        .await;
    assert_eq!(image.brokers.len(), 100);
    let m = cluster.node(follower).raft_metrics().borrow().clone();
    assert!(m.snapshot.is_some(), "follower installed a snapshot");
    // The installed snapshot and the log after it survive another restart.
    cluster.stop(follower).await;
    cluster.restart(follower).await;
    let image = cluster
        .caught_up(follower, last, Duration::from_secs(10))
        .await;
    assert_eq!(image.brokers.len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_side_of_a_partition_cannot_commit() {
    let cluster = Cluster::start(3).await;
    let old = cluster.leader(&[1, 2, 3], Duration::from_secs(10)).await;
    let client = cluster.client();
    submit_ok(&client, &register(1)).await;
    cluster.isolate(old);
    // The isolated leader cannot commit.
    let minority = cluster.client_of(old, Duration::from_secs(2));
    let lost = minority.submit(&register(666)).await;
    assert!(lost.is_err(), "minority committed: {lost:?}");
    // The majority elects a new leader and commits.
    let rest: Vec<NodeId> = (1..=3).filter(|id| *id != old).collect();
    let new = cluster.leader(&rest, Duration::from_secs(10)).await;
    let majority = cluster.client_of(new, Duration::from_secs(5));
    let applied = submit_ok(&majority, &register(2)).await;
    // After healing, the old leader follows and the unacknowledged command is gone everywhere.
    cluster.heal();
    for id in 1..=3 {
        let image = cluster
            .caught_up(id, applied.version, Duration::from_secs(10))
            .await;
        assert!(image.brokers.contains_key(&2));
        assert!(
            !image.brokers.contains_key(&666),
            "node {id} kept an uncommitted entry"
        );
    }
    assert_eq!(
        cluster.leader(&[1, 2, 3], Duration::from_secs(10)).await,
        new
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_stops_heartbeating_is_fenced_and_loses_leadership() {
    let cluster = Cluster::start(3).await;
    cluster.leader(&[1, 2, 3], Duration::from_secs(10)).await;
    let client = Arc::new(cluster.client());
    let mut epochs = BTreeMap::new();
    for id in 1..=3 {
        epochs.insert(id, live_broker(&client, id).await);
    }
    let created = submit_ok(
        &client,
        &Command::CreateTopic {
            name: "events".into(),
            id: Uuid::new_v4(),
            partitions: 6,
            replication_factor: 2,
            configs: BTreeMap::new(),
            first_leader_epoch: 0,
        },
    )
    .await;
    let Outcome::TopicCreated {
        partitions: before, ..
    } = created.outcome
    else {
        panic!("unexpected outcome")
    };
    assert!(before.iter().any(|p| p.leader == Some(1)));
    // Brokers 2 and 3 keep heartbeating; broker 1 goes silent.
    let stop = Arc::new(AtomicBool::new(false));
    let beats = {
        let (client, stop, epochs) = (client.clone(), stop.clone(), epochs.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                for id in [2, 3] {
                    let _ = client.heartbeat(id, epochs[&id], true).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let image = loop {
        let image = client.read_metadata().await.expect("read");
        if image.brokers[&1].fenced {
            break image;
        }
        assert!(Instant::now() < deadline, "broker 1 never fenced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!image.brokers[&2].fenced && !image.brokers[&3].fenced);
    let after = &image.topics["events"].partitions;
    for (old, new) in before.iter().zip(after) {
        assert_ne!(new.leader, Some(1));
        if old.leader == Some(1) {
            assert!(new.leader.is_some(), "a live in-sync replica took over");
            assert!(new.leader_epoch > old.leader_epoch);
        }
    }
    // Broker 1's ISR change, prepared while it led, is refused now.
    let (i, p) = before
        .iter()
        .enumerate()
        .find(|(_, p)| p.leader == Some(1))
        .expect("a partition broker 1 led");
    let stale = client
        .submit(&Command::AlterIsr {
            topic: "events".into(),
            partition: i as i32,
            broker_id: 1,
            broker_epoch: epochs[&1],
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            isr: vec![1],
        })
        .await
        .expect("reachable");
    assert_eq!(stale, Err(CommandError::BrokerFenced { id: 1 }));
    stop.store(true, Ordering::SeqCst);
    beats.await.expect("heartbeat task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_stream_rebuilds_the_leaders_image() {
    let cluster = Cluster::start(3).await;
    cluster.leader(&[1, 2, 3], Duration::from_secs(10)).await;
    let client = cluster.client();
    for id in 1..=3 {
        live_broker(&client, id).await;
    }
    let mut stream = Box::pin(client.watch(0).await.expect("watch"));
    let mut last = 0;
    for i in 0..5 {
        last = submit_ok(
            &client,
            &Command::CreateTopic {
                name: format!("t{i}"),
                id: Uuid::new_v4(),
                partitions: 3,
                replication_factor: 3,
                configs: BTreeMap::new(),
                first_leader_epoch: 0,
            },
        )
        .await
        .version;
    }
    let mut image = MetadataImage::default();
    while image.version < last {
        let update = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("update in time")
            .expect("stream open")
            .expect("update decodes");
        match update {
            MetadataUpdate::Image(i) => image = i,
            MetadataUpdate::Delta(d) => {
                assert_eq!(d.version, image.version + 1, "deltas arrive in order");
                image.apply_delta(&d);
            }
        }
    }
    assert_eq!(image, client.read_metadata().await.expect("read"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_quorum_keeps_its_metadata_across_restarts() {
    let mut cluster = Cluster::start(1).await;
    cluster.leader(&[1], Duration::from_secs(10)).await;
    let client = cluster.client();
    let epoch = live_broker(&client, 1).await;
    let created = submit_ok(
        &client,
        &Command::CreateTopic {
            name: "kept".into(),
            id: Uuid::new_v4(),
            partitions: 2,
            replication_factor: 1,
            configs: BTreeMap::from([("retention.ms".to_string(), "-1".to_string())]),
            first_leader_epoch: 0,
        },
    )
    .await;
    let before = with_cluster_id(&client).await;
    cluster.stop(1).await;
    cluster.restart(1).await;
    cluster.leader(&[1], Duration::from_secs(10)).await;
    let after = client.read_metadata().await.expect("read after restart");
    assert!(after.version >= created.version);
    assert_eq!(after.topics, before.topics);
    assert_eq!(after.cluster_id, before.cluster_id);
    assert_eq!(after.brokers[&1].epoch, epoch);
}

/// A certificate for 127.0.0.1 signed by a fresh CA, as PEM files in `dir`: (cert, key, ca).
fn issue(dir: &std::path::Path, ca_name: &str) -> GrpcTls {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("certificate");
    let write = |name: &str, pem: String| {
        let path = dir.join(format!("{ca_name}-{name}.pem"));
        std::fs::write(&path, pem).expect("write");
        path
    };
    let (c, k, a) = (
        write("cert", cert.pem()),
        write("key", key.serialize_pem()),
        write("ca", ca.pem()),
    );
    GrpcTls::load(&c, &k, &a).expect("pem")
}

/// With `tls` set, Raft between the controllers and the clients' calls run over mutual TLS:
/// the quorum elects a leader and replicates commands; a client without a certificate, or
/// with one from another CA, gets no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_over_mutual_tls_elects_replicates_and_refuses_strangers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = issue(dir.path(), "quorum");
    let cluster = Cluster::start_full(3, 10_000, 1_000, Some(tls)).await;
    cluster.leader(&[1, 2, 3], Duration::from_secs(10)).await;
    let applied = submit_ok(&cluster.client(), &register(1)).await;
    for id in 1..=3 {
        let image = cluster
            .caught_up(id, applied.version, Duration::from_secs(5))
            .await;
        assert!(image.brokers.contains_key(&1));
    }
    let stranger = issue(dir.path(), "stranger");
    for tls in [None, Some(stranger)] {
        let refused = ControllerClient::new(cluster.addrs.values().map(ToString::to_string))
            .with_deadline(Duration::from_secs(2))
            .with_tls(tls)
            .read_metadata()
            .await;
        assert!(refused.is_err(), "served without the CA's certificate");
    }
}
