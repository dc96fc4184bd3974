//! A cluster of `strata` processes on loopback ports, each a controller voter and a broker
//! (`controller.mode = "combined"`), sharing one object store directory, as users run three
//! brokers on three VMs. Processes are killed when the cluster is dropped.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use strata_client::Client;
use tokio::process::{Child, Command};

/// One process of the cluster.
#[derive(Debug)]
struct Node {
    kafka: SocketAddr,
    controller: SocketAddr,
    child: Option<Child>,
}

/// `size` `strata` processes forming one cluster.
#[derive(Debug)]
pub struct ProcessCluster {
    binary: PathBuf,
    /// Extra settings every node gets.
    settings: Vec<String>,
    dir: tempfile::TempDir,
    nodes: BTreeMap<i32, Node>,
}

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
        let mut cluster = Self {
            binary: binary.to_owned(),
            settings: settings.iter().map(|s| (*s).to_owned()).collect(),
            dir: tempfile::tempdir().expect("tempdir"),
            nodes: (1..=size)
                .map(|id| {
                    let node = Node {
                        kafka: reserve_addr(),
                        controller: reserve_addr(),
                        child: None,
                    };
                    (id, node)
                })
                .collect(),
        };
        let ids: Vec<i32> = cluster.nodes.keys().copied().collect();
        for id in &ids {
            cluster.spawn(*id);
        }
        cluster
            .wait_for_brokers(ids.len(), Duration::from_secs(60))
            .await;
        cluster
    }

    /// Where node `id` keeps its data and its log (`node-<id>.log`).
    pub fn data_dir(&self, id: i32) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    fn spawn(&mut self, id: i32) {
        let voters: Vec<String> = self
            .nodes
            .iter()
            .map(|(i, n)| format!("\"{i}@{}\"", n.controller))
            .collect();
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
        let settings = [
            format!("node_id={id}"),
            format!("data_dir=\"{}\"", data.display()),
            format!("kafka.listen=\"{}\"", node.kafka),
            "controller.mode=\"combined\"".to_owned(),
            format!("controller.listen=\"{}\"", node.controller),
            format!("controller.voters=[{}]", voters.join(",")),
            format!("object_store.url=\"file://{}\"", objects.display()),
            // A killed broker is fenced (and its partitions led elsewhere) within seconds.
            "controller.session_timeout_ms=3000".to_owned(),
            "controller.heartbeat_interval_ms=500".to_owned(),
        ];
        let mut command = Command::new(&self.binary);
        for s in settings.iter().chain(&self.settings) {
            command.arg("--set").arg(s);
        }
        let child = command
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start a strata process");
        node.child = Some(child);
    }

    /// Every node's Kafka listener, comma-separated (a client's bootstrap list).
    pub fn bootstrap(&self) -> String {
        self.nodes
            .values()
            .map(|n| n.kafka.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `id`'s Kafka listener.
    pub fn kafka_addr(&self, id: i32) -> SocketAddr {
        self.nodes[&id].kafka
    }

    /// Kills node `id` at once (SIGKILL): no flush, no controlled shutdown.
    pub async fn kill(&mut self, id: i32) {
        if let Some(mut child) = self.nodes.get_mut(&id).and_then(|n| n.child.take()) {
            let _ = child.kill().await;
        }
    }

    /// Stops node `id` the way `docker stop` or systemd does (SIGTERM) and waits for it to
    /// exit; returns its exit status code.
    pub async fn terminate(&mut self, id: i32) -> Option<i32> {
        let mut child = self.nodes.get_mut(&id).and_then(|n| n.child.take())?;
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
            .nodes
            .values()
            .filter(|n| n.child.is_some())
            .map(|n| n.kafka)
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

    /// The tail of every node's log, for a failing test's message.
    pub fn logs(&self) -> String {
        self.nodes
            .keys()
            .map(|id| {
                let text = std::fs::read_to_string(self.dir.path().join(format!("node-{id}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- node {id}\n{}", tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(child) = node.child.as_mut() {
                let _ = child.start_kill();
            }
            release_addr(node.kafka);
            release_addr(node.controller);
        }
    }
}
