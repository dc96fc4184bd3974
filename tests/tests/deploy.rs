//! The cluster files in `deploy/`.
//!
//! `compose.cluster.yaml` as a user starts it, without Docker Compose (these machines have
//! none): its services, with `compose.local.yaml` laid over them as the file says for
//! machines without a registry, run as containers on a network of their own with the images,
//! environment, commands and names the files give. `stratactl` inside a broker's container
//! (as the file's comment shows) then checks that the three brokers form one cluster,
//! replicate, and lose nothing acknowledged when the partition's leader is killed.
//!
//! `kubernetes/strata.yaml` cannot run here (no Kubernetes); its parts are checked against
//! each other instead: each pod's start command, run by `sh` as the pod runs it, gives the
//! node id the ConfigMap's voters expect for that pod's name, and the broker accepts the
//! ConfigMap's config with it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use yaml_serde::Value;

fn deploy() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

const FILES: [&str; 2] = ["compose.cluster.yaml", "compose.local.yaml"];
const BOOTSTRAP: &str = "strata-1:9092,strata-2:9192,strata-3:9292";
const TOPIC: &str = "orders";

/// What a compose service says about how its container runs (what these files use).
#[derive(Debug, Default)]
struct Service {
    image: String,
    entrypoint: Vec<String>,
    command: Vec<String>,
    environment: BTreeMap<String, String>,
    restart: bool,
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Sequence(items) => items.iter().filter_map(scalar).collect(),
        other => scalar(other).into_iter().collect(),
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `${NAME:-default}` as Compose interpolates it when `NAME` is unset.
fn interpolate(s: &str) -> String {
    match s.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
        Some(inner) => match inner.split_once(":-") {
            Some((name, default)) => std::env::var(name).unwrap_or_else(|_| default.to_owned()),
            None => std::env::var(inner).unwrap_or_default(),
        },
        None => s.to_owned(),
    }
}

/// The services of `files` in `deploy/`, later files overriding earlier ones as Compose
/// merges them (scalars and sequences replaced, environments merged).
fn services(files: &[&str]) -> BTreeMap<String, Service> {
    let deploy = deploy();
    let mut out: BTreeMap<String, Service> = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(deploy.join(file)).expect("compose file");
        let mut doc: Value = yaml_serde::from_str(&text).expect("compose YAML");
        doc.apply_merge().expect("merge keys");
        let Some(Value::Mapping(list)) = doc.get("services") else {
            panic!("{file} has no services");
        };
        for (name, def) in list {
            let name = scalar(name).expect("service name");
            let s = out.entry(name).or_default();
            if let Some(image) = def.get("image").and_then(scalar) {
                s.image = interpolate(&image);
            }
            if let Some(e) = def.get("entrypoint") {
                s.entrypoint = strings(e);
            }
            if let Some(c) = def.get("command") {
                s.command = strings(c);
            }
            if let Some(r) = def.get("restart").and_then(scalar) {
                s.restart = r != "no";
            }
            if let Some(Value::Mapping(env)) = def.get("environment") {
                for (k, v) in env {
                    let (Some(k), Some(v)) = (scalar(k), scalar(v)) else {
                        panic!("{file}: environment entries are name: value");
                    };
                    s.environment.insert(k, v);
                }
            }
        }
    }
    out
}

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("docker runs")
}

/// The containers and network of one run, removed when dropped.
struct Project {
    name: String,
    containers: Vec<String>,
}

impl Project {
    fn container(&self, service: &str) -> String {
        format!("{}-{service}", self.name)
    }

    /// Starts `service` as Compose would: on the project's network under its service name.
    fn run(&mut self, service: &str, def: &Service) {
        let name = self.container(service);
        let mut args: Vec<String> = [
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            &self.name,
            "--network-alias",
            service,
            "--hostname",
            service,
        ]
        .map(str::to_owned)
        .to_vec();
        if def.restart {
            args.extend(["--restart".into(), "unless-stopped".into()]);
        }
        let mut command = def.command.clone();
        if let Some((first, rest)) = def.entrypoint.split_first() {
            args.extend(["--entrypoint".into(), first.clone()]);
            command.splice(0..0, rest.iter().cloned());
        }
        for (k, v) in &def.environment {
            args.extend(["-e".into(), format!("{k}={v}")]);
        }
        args.push(def.image.clone());
        args.extend(command);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = docker(&args);
        assert!(
            out.status.success(),
            "docker run {service}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.containers.push(name);
    }

    /// `stratactl --json <args>` inside `service`'s container, with stdin `input`; its
    /// output as JSON lines, or its error.
    fn stratactl(&self, service: &str, args: &[&str], input: &str) -> Result<Vec<Json>, String> {
        let container = self.container(service);
        let mut full = vec!["exec", "-i", &container, "stratactl", "--json"];
        full.extend(["--bootstrap", BOOTSTRAP]);
        full.extend(args);
        let mut child = Command::new("docker")
            .args(&full)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        if let Some(mut stdin) = child.stdin.take() {
            std::io::Write::write_all(&mut stdin, input.as_bytes()).map_err(|e| e.to_string())?;
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).map_err(|e| format!("{e}: {l}")))
            .collect()
    }

    /// Runs `stratactl` until it succeeds and `done` holds for its output; panics with the
    /// last answer after `within`.
    fn until(
        &self,
        service: &str,
        args: &[&str],
        within: Duration,
        done: impl Fn(&[Json]) -> bool,
    ) -> Vec<Json> {
        let deadline = Instant::now() + within;
        loop {
            let answer = self.stratactl(service, args, "");
            if let Ok(out) = &answer
                && done(out)
            {
                return out.clone();
            }
            assert!(
                Instant::now() < deadline,
                "stratactl {args:?} within {within:?}: {answer:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn logs(&self) -> String {
        self.containers
            .iter()
            .map(|c| {
                let out = docker(&["logs", "--tail", "30", c]);
                format!(
                    "--- {c}\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for c in &self.containers {
            docker(&["rm", "-f", "-v", c]);
        }
        docker(&["network", "rm", &self.name]);
    }
}

/// Produces `values` with acks=all through `service`'s stratactl.
fn produce(project: &Project, service: &str, values: std::ops::Range<u32>) {
    let lines: String = values.map(|v| format!("value-{v}\n")).collect();
    let out = project
        .stratactl(service, &["produce", TOPIC, "--acks", "-1"], &lines)
        .expect("produce");
    assert_eq!(out.len(), 1, "{out:?}");
}

fn partition(described: &[Json]) -> &Json {
    &described[0]["partitions"][0]
}

#[test]
fn the_cluster_compose_file_runs_three_brokers_that_lose_nothing() {
    let all = services(&FILES);
    let images: BTreeSet<&str> = all.values().map(|s| s.image.as_str()).collect();
    let images: Vec<&str> = images.into_iter().collect();
    if !strata_testcontainers::images_ready(&images) {
        return;
    }
    let brokers = ["strata-1", "strata-2", "strata-3"];
    assert_eq!(
        all.keys().map(String::as_str).collect::<Vec<_>>(),
        ["minio", "strata-1", "strata-2", "strata-3"]
    );
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    let mut project = Project {
        name: format!("strata-compose-{}-{nanos}", std::process::id()),
        containers: Vec::new(),
    };
    let created = docker(&["network", "create", &project.name]);
    assert!(created.status.success(), "network create");
    for (service, def) in &all {
        project.run(service, def);
    }

    // Every broker sees all three.
    for b in brokers {
        project.until(b, &["cluster", "info"], Duration::from_secs(90), |out| {
            out[0]["brokers"].as_array().is_some_and(|l| l.len() == 3)
        });
    }
    // A topic without a replication factor gets three copies.
    project
        .stratactl(
            "strata-1",
            &[
                "topic",
                "create",
                TOPIC,
                "-p",
                "1",
                "-c",
                "min.insync.replicas=2",
            ],
            "",
        )
        .expect("create");
    let described = project.until(
        "strata-1",
        &["topic", "describe", TOPIC],
        Duration::from_secs(30),
        |out| {
            partition(out)["isr"]
                .as_array()
                .is_some_and(|l| l.len() == 3)
        },
    );
    assert_eq!(
        partition(&described)["replicas"].as_array().map(Vec::len),
        Some(3)
    );
    produce(&project, "strata-1", 0..500);

    // Kill the leader's container: another broker leads, nothing acknowledged is lost.
    let leader = partition(&described)["leader"].as_i64().expect("a leader");
    let killed = format!("strata-{leader}");
    let survivor = brokers
        .iter()
        .find(|b| **b != killed)
        .expect("another broker");
    let out = docker(&["kill", &project.container(&killed)]);
    assert!(out.status.success(), "docker kill");
    project.until(
        survivor,
        &["topic", "describe", TOPIC],
        Duration::from_secs(60),
        |out| {
            let p = partition(out);
            p["leader"].as_i64().is_some_and(|l| l >= 0 && l != leader)
        },
    );
    produce(&project, survivor, 500..1000);
    let records = project
        .stratactl(survivor, &["consume", TOPIC, "--from-beginning"], "")
        .expect("consume");
    let values: BTreeSet<&str> = records.iter().filter_map(|r| r["value"].as_str()).collect();
    let missing: Vec<u32> = (0..1000)
        .filter(|v| !values.contains(format!("value-{v}").as_str()))
        .collect();
    assert!(missing.is_empty(), "acknowledged but missing: {missing:?}");
}

#[test]
fn the_kubernetes_statefulset_gives_each_pod_the_node_id_its_voters_name() {
    let text = std::fs::read_to_string(deploy().join("kubernetes/strata.yaml")).expect("manifest");
    let docs: Vec<Value> = yaml_serde::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("a YAML document"))
        .collect();
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d.get("kind").and_then(scalar).as_deref() == Some(k))
            .unwrap_or_else(|| panic!("a {k}"))
    };
    let set = kind("StatefulSet");
    let name = set["metadata"]["name"].as_str().expect("name");
    let service = set["spec"]["serviceName"].as_str().expect("serviceName");
    let replicas = set["spec"]["replicas"].as_u64().expect("replicas");
    assert_eq!(replicas, 3);
    let headless = kind("Service");
    assert_eq!(headless["spec"]["clusterIP"].as_str(), Some("None"));
    assert_eq!(
        headless["spec"]["publishNotReadyAddresses"].as_bool(),
        Some(true),
        "voters must find each other before any pod is ready"
    );
    let container = &set["spec"]["template"]["spec"]["containers"][0];
    // Probes ask the broker itself: ready by /readyz, alive by /healthz, on the HTTP port
    // its config listens on.
    let http = container["ports"]
        .as_sequence()
        .and_then(|ports| ports.iter().find(|p| p["name"].as_str() == Some("http")))
        .and_then(|p| p["containerPort"].as_u64())
        .expect("an http port");
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(get["port"].as_str(), Some("http"), "{probe}");
    }
    let annotations = &set["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(http.to_string().as_str())
    );
    let command = strings(&container["command"]);
    let args = strings(&container["args"]);
    assert_eq!(command[..2], ["/bin/sh", "-c"]);
    let config = kind("ConfigMap")["data"]["strata.toml"]
        .as_str()
        .expect("strata.toml");
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = dir.path().join("strata.toml");
    std::fs::write(&toml, config).expect("write config");
    // A stand-in `strata` that prints the node id it was started with.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("bin dir");
    let fake = bin.join("strata");
    std::fs::write(&fake, "#!/bin/sh\necho \"$STRATA_NODE_ID\"\n").expect("fake strata");
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for ordinal in 0..replicas {
        let pod = format!("{name}-{ordinal}");
        let out = Command::new("sh")
            .arg("-c")
            .args(&args)
            .env("PATH", &path)
            .env("POD_NAME", &pod)
            .output()
            .expect("sh runs");
        let id: i32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{pod}'s node id: {e}: {out:?}"));
        let loaded = strata_broker::BrokerConfig::load(&strata_broker::config::ConfigSources {
            file: Some(toml.clone()),
            env: vec![("STRATA_NODE_ID".to_owned(), id.to_string())],
            overrides: Vec::new(),
        })
        .unwrap_or_else(|e| panic!("{pod} (node {id}): {e}"));
        assert_eq!(loaded.http.listen, format!("0.0.0.0:{http}"), "{pod}");
        let voters = loaded.voters().expect("voters");
        assert_eq!(voters.len() as u64, replicas, "one voter per pod");
        let own = &voters[&(id as u64)];
        assert!(
            own.starts_with(&format!("{pod}.{service}:")),
            "{pod} is node {id}, whose voter address is {own}"
        );
    }
}
