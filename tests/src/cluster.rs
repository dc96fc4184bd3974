//! A cluster of `strata` processes on loopback ports sharing one object store, as users run
//! three brokers on three VMs: each a controller voter and a broker (`controller.mode =
//! "combined"`), or brokers in `remote` mode beside a quorum of `dedicated` controllers.
//! Processes are killed when the cluster is dropped.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use strata_client::Client;
use tokio::process::{Child, Command};

use crate::proxy::{Cut, Peer, Pids, Proxy};

/// What a process of the cluster is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// A controller voter and a broker.
    Combined,
    /// A broker only (`remote` mode).
    Broker,
    /// A controller voter only (`dedicated` mode).
    Controller,
}

impl Role {
    fn brokers(self) -> bool {
        self != Role::Controller
    }

    fn votes(self) -> bool {
        self != Role::Broker
    }
}

/// One process of the cluster.
#[derive(Debug)]
struct Node {
    role: Role,
    kafka: SocketAddr,
    controller: SocketAddr,
    child: Option<Child>,
}

/// Proxies on every link of a cluster (see [`crate::proxy`]): one in front of each broker's
/// Kafka listener (the address it advertises, so clients and other brokers both come through
/// it), one in front of each voter's controller listener (other nodes' voter lists name it),
/// and one in front of the object store when it is an S3 server.
#[derive(Debug)]
struct Links {
    kafka: BTreeMap<i32, Proxy>,
    controller: BTreeMap<i32, Proxy>,
    store: Option<Proxy>,
}

/// How a cluster is started.
#[derive(Debug, Default)]
pub struct Options<'a> {
    /// Extra `key=value` settings for every node.
    pub settings: &'a [&'a str],
    /// Put every link behind a proxy, so [`ProcessCluster::cut`] can partition the network.
    pub proxied: bool,
    /// Keep the object store in bucket `strata` of this S3 server (created beforehand)
    /// rather than in a shared directory.
    pub s3: Option<SocketAddr>,
    /// Spread the nodes over this many racks (`rack-0`, `rack-1`, ... in turn by id); 0: no
    /// racks.
    pub racks: i32,
    /// Run this many dedicated controllers (ids after the brokers') as the quorum, and the
    /// brokers in `remote` mode; 0: every node is both (`combined`).
    pub controllers: i32,
}

/// `size` brokers (and any dedicated controllers), `strata` processes forming one cluster.
#[derive(Debug)]
pub struct ProcessCluster {
    binary: PathBuf,
    /// Extra settings every node gets.
    settings: Vec<String>,
    /// Racks the nodes are spread over (0: none).
    racks: i32,
    dir: tempfile::TempDir,
    nodes: BTreeMap<i32, Node>,
    pids: Pids,
    links: Option<Links>,
    /// This test process's turn to run a cluster (see [`TURN`]).
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

/// One process cluster at a time in a test process: under `cargo test` the tests of one
/// binary run on parallel threads, and their timing assertions (fencing after the session
/// timeout, ISR changes within the lag time) are about the cluster, not a neighbour sharing
/// the two cores. (nextest runs them one at a time by its `process-clusters` test group.)
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A loopback address for one of the cluster's listeners, kept for the cluster's life (a
/// restarted node binds it again). Ports come from below Linux's ephemeral range
/// (32768–60999), so no outgoing connection takes one while its node is down, and a marker
/// file naming this test process reserves each against other tests running at the same
/// time (ports released by `bind(0)` were handed to two clusters at once); markers of
/// processes that are gone are taken over.
fn reserve_addr() -> SocketAddr {
    let dir = std::env::temp_dir().join("strata-test-ports");
    std::fs::create_dir_all(&dir).expect("port markers dir");
    let me = std::process::id();
    let start = 20_000 + (me as usize * 7_919) % 12_000;
    for port in (start..32_000).chain(20_000..start) {
        let port = port as u16;
        let marker = dir.join(port.to_string());
        let claimed = |marker: &Path| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(marker)
                .and_then(|mut f| std::io::Write::write_all(&mut f, me.to_string().as_bytes()))
                .is_ok()
        };
        let owner_gone = || {
            std::fs::read_to_string(&marker)
                .ok()
                .and_then(|pid| pid.trim().parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        };
        let ours = claimed(&marker)
            || (owner_gone() && std::fs::remove_file(&marker).is_ok() && claimed(&marker));
        if !ours {
            continue;
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if TcpListener::bind(addr).is_ok() {
            return addr;
        }
        let _ = std::fs::remove_file(&marker);
    }
    panic!("no free port below the ephemeral range")
}

/// Gives a port reserved by [`reserve_addr`] back.
fn release_addr(addr: SocketAddr) {
    let marker = std::env::temp_dir()
        .join("strata-test-ports")
        .join(addr.port().to_string());
    let _ = std::fs::remove_file(marker);
}

impl ProcessCluster {
    /// Starts `size` nodes of `binary` (the `strata` command line) with ids 1..=size and waits
    /// until every one serves Kafka clients and sees all the others.
    pub async fn start(binary: &Path, size: i32) -> Self {
        Self::start_with(binary, size, &[]).await
    }

    /// Like [`ProcessCluster::start`], with extra `key=value` settings for every node.
    pub async fn start_with(binary: &Path, size: i32, settings: &[&str]) -> Self {
        Self::start_opts(
            binary,
            size,
            Options {
                settings,
                ..Options::default()
            },
        )
        .await
    }

    /// Starts `size` brokers as `options` say.
    pub async fn start_opts(binary: &Path, size: i32, options: Options<'_>) -> Self {
        let turn = TURN.lock().await;
        let mut settings: Vec<String> = options.settings.iter().map(|s| (*s).to_owned()).collect();
        let broker_role = if options.controllers > 0 {
            Role::Broker
        } else {
            Role::Combined
        };
        let nodes: BTreeMap<i32, Node> = (1..=size + options.controllers)
            .map(|id| {
                let node = Node {
                    role: if id <= size {
                        broker_role
                    } else {
                        Role::Controller
                    },
                    kafka: reserve_addr(),
                    controller: reserve_addr(),
                    child: None,
                };
                (id, node)
            })
            .collect();
        let pids = Pids::default();
        let mut links = None;
        if options.proxied {
            let mut kafka = BTreeMap::new();
            let mut controller = BTreeMap::new();
            for (id, n) in &nodes {
                if n.role.brokers() {
                    let k = Proxy::start(reserve_addr(), n.kafka, pids.clone()).await;
                    kafka.insert(*id, k);
                }
                if n.role.votes() {
                    let c = Proxy::start(reserve_addr(), n.controller, pids.clone()).await;
                    controller.insert(*id, c);
                }
            }
            links = Some(Links {
                kafka,
                controller,
                store: None,
            });
        }
        if let Some(s3) = options.s3 {
            let endpoint = match links.as_mut() {
                Some(links) => {
                    let proxy = Proxy::start(reserve_addr(), s3, pids.clone()).await;
                    let addr = proxy.addr();
                    links.store = Some(proxy);
                    addr
                }
                None => s3,
            };
            settings.extend([
                "object_store.url=\"s3://strata/cluster\"".to_owned(),
                format!("object_store.endpoint=\"http://{endpoint}\""),
                format!("object_store.region=\"{}\"", crate::s3::REGION),
                format!("object_store.access_key_id=\"{}\"", crate::s3::ACCESS_KEY),
                format!(
                    "object_store.secret_access_key=\"{}\"",
                    crate::s3::SECRET_KEY
                ),
                "object_store.path_style=true".to_owned(),
                "object_store.allow_http=true".to_owned(),
            ]);
        }
        let mut cluster = Self {
            binary: binary.to_owned(),
            settings,
            racks: options.racks,
            dir: tempfile::tempdir().expect("tempdir"),
            nodes,
            pids,
            links,
            _turn: turn,
        };
        for id in cluster.processes() {
            cluster.spawn(id);
        }
        cluster
            .wait_for_brokers(size as usize, Duration::from_secs(60))
            .await;
        cluster
    }

    /// Where node `id` keeps its data and its log (`node-<id>.log`).
    pub fn data_dir(&self, id: i32) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    fn spawn(&mut self, id: i32) {
        // Other voters through their proxies; this node's own listener as it is.
        let voters: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.role.votes())
            .map(|(i, n)| {
                let addr = match &self.links {
                    Some(links) if *i != id => links.controller[i].addr(),
                    _ => n.controller,
                };
                format!("\"{i}@{addr}\"")
            })
            .collect();
        let advertised = self.kafka_addr(id);
        let objects = self.dir.path().join("objects");
        std::fs::create_dir_all(&objects).expect("objects dir");
        let data = self.data_dir(id);
        std::fs::create_dir_all(&data).expect("data dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("node-{id}.log")))
            .expect("log file");
        let node = self.nodes.get_mut(&id).expect("known node");
        let mode = match node.role {
            Role::Combined => "combined",
            Role::Broker => "remote",
            Role::Controller => "dedicated",
        };
        let settings = [
            format!("node_id={id}"),
            format!("data_dir=\"{}\"", data.display()),
            format!("kafka.listen=\"{}\"", node.kafka),
            format!("controller.mode=\"{mode}\""),
            format!("controller.listen=\"{}\"", node.controller),
            format!("controller.voters=[{}]", voters.join(",")),
            format!("kafka.advertised=\"{advertised}\""),
            format!("object_store.url=\"file://{}\"", objects.display()),
            // A killed broker is fenced (and its partitions led elsewhere) within seconds.
            "controller.session_timeout_ms=3000".to_owned(),
            // Metrics and probes on a port of its own (nodes share the host).
            "http.listen=\"127.0.0.1:0\"".to_owned(),
            "controller.heartbeat_interval_ms=500".to_owned(),
            // Retention (and followers learning of uploads) promptly, not every 5 minutes.
            "topics.retention_check_interval_ms=500".to_owned(),
        ];
        let mut command = Command::new(&self.binary);
        if self.racks > 0 && node.role.brokers() {
            command
                .arg("--set")
                .arg(format!("rack=\"{}\"", Self::rack_of(id, self.racks)));
        }
        for s in settings.iter().chain(&self.settings) {
            command.arg("--set").arg(s);
        }
        // The replica fetcher's refusals and retries too: a replica that does not come back
        // into the ISR is explained by them.
        let child = command
            .env(
                "RUST_LOG",
                "info,openraft=warn,strata_broker::follower=debug,strata_broker::group=debug,strata_broker::handlers::groups=debug",
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start a strata process");
        if let Some(pid) = child.id() {
            self.pids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(pid, id);
        }
        node.child = Some(child);
    }

    /// Every broker's Kafka address, comma-separated (a client's bootstrap list).
    pub fn bootstrap(&self) -> String {
        self.ids()
            .into_iter()
            .map(|id| self.kafka_addr(id).to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `id`'s Kafka address as it advertises it (its proxy's when proxied).
    pub fn kafka_addr(&self, id: i32) -> SocketAddr {
        match self.links.as_ref().and_then(|l| l.kafka.get(&id)) {
            Some(proxy) => proxy.addr(),
            // A dedicated controller's is never listened on.
            None => self.nodes[&id].kafka,
        }
    }

    /// The controller's Raft leader as the running nodes see it (asked on their own
    /// controller listeners, past any proxy): the id most of them name, if any names one.
    /// Kafka's DescribeCluster cannot tell: like KRaft, it names a broker, not the quorum's
    /// leader.
    pub async fn controller_leader(&self) -> Option<i32> {
        let mut votes: BTreeMap<i32, usize> = BTreeMap::new();
        for (id, node) in &self.nodes {
            if !self.is_running(*id) || !node.role.votes() {
                continue;
            }
            let addr = node.controller.to_string();
            let client = strata_controller::ControllerClient::new([addr.clone()]);
            let status = tokio::time::timeout(Duration::from_secs(2), client.status(&addr)).await;
            if let Ok(Ok(s)) = status
                && let Some(leader) = s.leader_id.and_then(|l| i32::try_from(l).ok())
            {
                *votes.entry(leader).or_default() += 1;
            }
        }
        votes.into_iter().max_by_key(|(_, n)| *n).map(|(id, _)| id)
    }

    /// The rack node `id` runs in when the nodes are spread over `racks` racks.
    pub fn rack_of(id: i32, racks: i32) -> String {
        format!("rack-{}", (id - 1).rem_euclid(racks.max(1)))
    }

    /// The ids of the brokers, running or not.
    pub fn ids(&self) -> Vec<i32> {
        self.ids_where(|r| r.brokers())
    }

    /// The ids of the dedicated controllers (none unless started with
    /// [`Options::controllers`]).
    pub fn controller_ids(&self) -> Vec<i32> {
        self.ids_where(|r| r == Role::Controller)
    }

    /// The ids of every process: brokers and dedicated controllers.
    pub fn processes(&self) -> Vec<i32> {
        self.ids_where(|_| true)
    }

    fn ids_where(&self, keep: impl Fn(Role) -> bool) -> Vec<i32> {
        self.nodes
            .iter()
            .filter(|(_, n)| keep(n.role))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Whether node `id`'s process is running (not killed or terminated).
    pub fn is_running(&self, id: i32) -> bool {
        self.nodes[&id].child.is_some()
    }

    /// Cuts the links between `peer` and node `id`, both ways (Kafka and controller
    /// traffic): `Peer::Client` cuts the test's clients off `id`. Panics unless the cluster
    /// was started `proxied`.
    pub fn cut(&self, peer: Peer, id: i32, how: Cut) {
        let links = self.links.as_ref().expect("a proxied cluster");
        let listeners = |id: i32| {
            links
                .kafka
                .get(&id)
                .into_iter()
                .chain(links.controller.get(&id))
        };
        for proxy in listeners(id) {
            proxy.cut(peer, how);
        }
        if let Peer::Node(other) = peer {
            for proxy in listeners(other) {
                proxy.cut(Peer::Node(id), how);
            }
        }
    }

    /// Cuts node `id` off the object store. Panics unless the cluster was started `proxied`
    /// on an S3 server.
    pub fn cut_store(&self, id: i32, how: Cut) {
        let links = self.links.as_ref().expect("a proxied cluster");
        links
            .store
            .as_ref()
            .expect("an S3 store")
            .cut(Peer::Node(id), how);
    }

    /// Heals every cut link.
    pub fn heal(&self) {
        if let Some(links) = &self.links {
            for p in links.kafka.values().chain(links.controller.values()) {
                p.heal();
            }
            if let Some(store) = &links.store {
                store.heal();
            }
        }
    }

    fn forget_pid(&self, child: &Child) {
        if let Some(pid) = child.id() {
            self.pids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&pid);
        }
    }

    /// Kills node `id` at once (SIGKILL): no flush, no controlled shutdown.
    pub async fn kill(&mut self, id: i32) {
        if let Some(mut child) = self.nodes.get_mut(&id).and_then(|n| n.child.take()) {
            self.forget_pid(&child);
            let _ = child.kill().await;
        }
    }

    /// Stops node `id` the way `docker stop` or systemd does (SIGTERM) and waits for it to
    /// exit; returns its exit status code.
    pub async fn terminate(&mut self, id: i32) -> Option<i32> {
        let mut child = self.nodes.get_mut(&id).and_then(|n| n.child.take())?;
        self.forget_pid(&child);
        let pid = child.id().and_then(|p| Pid::from_raw(p as i32))?;
        kill_process(pid, Signal::TERM).expect("SIGTERM");
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("exits within 30 s of SIGTERM")
            .expect("exit status");
        status.code()
    }

    /// Freezes node `id` (SIGSTOP): it holds its connections but answers nothing, as a
    /// stalled VM or a long GC pause does.
    pub fn pause(&self, id: i32) {
        self.signal(id, Signal::STOP);
    }

    /// Lets a paused node run again (SIGCONT).
    pub fn resume(&self, id: i32) {
        self.signal(id, Signal::CONT);
    }

    fn signal(&self, id: i32, signal: Signal) {
        let pid = self.nodes[&id]
            .child
            .as_ref()
            .and_then(Child::id)
            .and_then(|p| Pid::from_raw(p as i32))
            .expect("node runs");
        kill_process(pid, signal).expect("signal");
    }

    /// Starts node `id` again on its ports and data.
    pub fn restart(&mut self, id: i32) {
        assert!(self.nodes[&id].child.is_none(), "node {id} still runs");
        self.spawn(id);
    }

    /// Waits until every running node's own metadata lists `count` live brokers; panics with
    /// the nodes' logs after `timeout`.
    pub async fn wait_for_brokers(&self, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let running: Vec<SocketAddr> = self
            .ids()
            .into_iter()
            .filter(|id| self.is_running(*id))
            .map(|id| self.kafka_addr(id))
            .collect();
        for addr in running {
            loop {
                if let Ok(client) = Client::connect(&addr.to_string()).await
                    && let Ok((brokers, _)) = client.cluster().await
                    && brokers.len() == count
                {
                    break;
                }
                if Instant::now() > deadline {
                    panic!(
                        "{addr} does not see {count} brokers within {timeout:?}; logs:\n{}",
                        self.logs()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Copies every node's whole log into `to` (`node-<id>.log`), to read after the cluster
    /// and its directory are gone.
    pub fn save_logs(&self, to: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(to)?;
        for id in self.nodes.keys() {
            let name = format!("node-{id}.log");
            std::fs::copy(self.dir.path().join(&name), to.join(&name))?;
        }
        Ok(())
    }

    /// The tail of every node's log, for a failing test's message.
    pub fn logs(&self) -> String {
        self.nodes
            .keys()
            .map(|id| {
                let text = std::fs::read_to_string(self.dir.path().join(format!("node-{id}.log")))
                    .unwrap_or_default();
                // Raft's retry noise would fill the tail of a node cut off from the others.
                let tail: Vec<&str> = text
                    .lines()
                    .rev()
                    .filter(|l| !l.contains("openraft::"))
                    .take(40)
                    .collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- node {id}\n{}", tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        // A failing test keeps the nodes' logs and shows their tails, so a failure seen once
        // (in CI, say) explains itself.
        if std::thread::panicking() {
            let unique = self.dir.path().file_name().unwrap_or_default();
            let to = std::env::temp_dir()
                .join(format!("strata-cluster-logs{}", unique.to_string_lossy()));
            match self.save_logs(&to) {
                Ok(()) => eprintln!("the nodes' logs are in {}", to.display()),
                Err(e) => eprintln!("the nodes' logs could not be saved: {e}"),
            }
            eprintln!("{}", self.logs());
        }
        for node in self.nodes.values_mut() {
            if let Some(child) = node.child.as_mut() {
                let _ = child.start_kill();
            }
            release_addr(node.kafka);
            release_addr(node.controller);
        }
        if let Some(links) = &self.links {
            let proxies = links.kafka.values().chain(links.controller.values());
            for p in proxies.chain(links.store.as_ref()) {
                release_addr(p.addr());
            }
        }
    }
}
