//! The `strata` binary run as a user runs it (a single node, a local directory as object
//! store), for benchmarks that measure the process: its memory, descriptors, CPU time and
//! restarts. `STRATA_BENCH_BINARY` runs another build (say, an older commit's) instead.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use strata_client::Client;
use tokio::process::{Child, Command};

use super::BenchResult;

/// The broker process under test.
pub struct BrokerProcess {
    pub binary: PathBuf,
    pub dir: PathBuf,
    pub addr: String,
    /// `--set` overrides beyond the data directory and listeners.
    settings: Vec<String>,
    child: Option<Child>,
}

impl BrokerProcess {
    /// A broker in `dir` (not started) on a free loopback port, the build
    /// `STRATA_BENCH_BINARY` names or this workspace's, with `settings` (`key=value` in the
    /// config file's syntax) on top of the defaults.
    pub fn new(dir: &Path, settings: &[&str]) -> BenchResult<Self> {
        let binary = std::env::var_os("STRATA_BENCH_BINARY").map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_strata-node")),
            PathBuf::from,
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        Ok(Self {
            binary,
            dir: dir.to_owned(),
            addr: format!("127.0.0.1:{port}"),
            settings: settings.iter().map(|s| (*s).to_owned()).collect(),
            child: None,
        })
    }

    pub fn spawn(&mut self) -> BenchResult<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("broker.log"))?;
        let mut command = Command::new(&self.binary);
        command
            .args([
                "--set",
                &format!("data_dir=\"{}\"", self.dir.join("data").display()),
            ])
            .args(["--set", &format!("kafka.listen=\"{}\"", self.addr)])
            .args(["--set", "http.listen=\"127.0.0.1:0\""]);
        for s in &self.settings {
            command.args(["--set", s]);
        }
        let child = command
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> BenchResult<u32> {
        self.child
            .as_ref()
            .and_then(Child::id)
            .ok_or_else(|| "the broker is not running".into())
    }

    /// Resident bytes and open descriptors of the broker process.
    pub fn footprint(&self) -> BenchResult<(u64, usize)> {
        let pid = self.pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or("no VmRSS")?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
        Ok((rss_kib * 1024, fds))
    }

    /// CPU seconds the broker process has used (user and system).
    pub fn cpu_seconds(&self) -> BenchResult<f64> {
        cpu_seconds(self.pid()?)
    }

    /// Stops the broker with `signal`; returns how long it took to exit.
    pub async fn stop(&mut self, signal: &str) -> BenchResult<Duration> {
        let pid = self.pid()?;
        let started = Instant::now();
        std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()?;
        if let Some(mut child) = self.child.take() {
            tokio::time::timeout(Duration::from_secs(120), child.wait()).await??;
        }
        Ok(started.elapsed())
    }

    /// The last line of the broker's log that contains `containing`.
    pub fn log_line(&self, containing: &str) -> Option<String> {
        let log = std::fs::read_to_string(self.dir.join("broker.log")).ok()?;
        log.lines()
            .rfind(|l| l.contains(containing))
            .map(str::to_owned)
    }

    /// A client of the broker, once it answers (within `within`).
    pub async fn connect(&self, within: Duration) -> BenchResult<Client> {
        let deadline = Instant::now() + within;
        loop {
            match Client::connect(&self.addr).await {
                Ok(c) if c.cluster().await.is_ok() => return Ok(c),
                _ if Instant::now() > deadline => {
                    return Err(format!("{} never answered", self.addr).into());
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

/// CPU seconds process `pid` has used (user and system).
pub fn cpu_seconds(pid: u32) -> BenchResult<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after its ')'.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    Ok((ticks(11) + ticks(12)) / 100.0)
}

/// The `strata-s3` program (s3s-fs) in a process of its own on a free loopback port, so the
/// object store's CPU is not the broker's: what a broker next to MinIO or S3 sees.
pub struct S3Process {
    pub server: strata_tests::s3::S3Server,
    child: Child,
}

impl S3Process {
    /// Starts it with `buckets` (directories under `root`) already there.
    pub async fn spawn(root: &Path, buckets: &[&str]) -> BenchResult<Self> {
        for b in buckets {
            std::fs::create_dir_all(root.join(b))?;
        }
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let server = env!("CARGO_BIN_EXE_strata-s3");
        // Its threads inherit the nice value `nice` starts it with.
        let mut command = match super::env_or("STRATA_BENCH_S3_NICE", 0u32) {
            0 => Command::new(server),
            n => {
                let mut c = Command::new("nice");
                c.args(["-n", &n.to_string(), server]);
                c
            }
        };
        let mut child = command
            .args(["--listen", &addr.to_string()])
            .arg("--root")
            .arg(root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await??;
        if !ready.is_some_and(|l| l.contains("serving")) {
            return Err("strata-s3 did not start".into());
        }
        Ok(Self {
            server: strata_tests::s3::S3Server::elsewhere(addr, root),
            child,
        })
    }

    /// The server's process id (`nice` execs it, keeping its own).
    pub fn pid(&self) -> BenchResult<u32> {
        Ok(self.child.id().ok_or("strata-s3 exited")?)
    }
}
