//! A [testcontainers](https://docs.rs/testcontainers) module for Strata: a single-node broker
//! (embedded controller) in a container, for tests of services that talk Kafka.
//!
//! The image is `strata:local`, built by `deploy/build-images.sh` from this repository (no
//! registry needed). [`Strata::start_on_localhost`] maps the Kafka port to a free port on
//! 127.0.0.1 and advertises it, so any Kafka client in the test process can use
//! [`RunningStrata::bootstrap_servers`]:
//!
//! ```
//! use strata_testcontainers::Strata;
//!
//! # #[tokio::main(flavor = "multi_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # if !strata_testcontainers::images_ready(&[strata_testcontainers::IMAGE]) { return Ok(()); }
//! let strata = Strata::default().start_on_localhost().await?;
//! let client = strata_client::Client::connect(strata.bootstrap_servers()).await?;
//! client.create_topic("orders", 3, 1, &Default::default()).await?;
//! let record = strata_client::NewRecord {
//!     value: Some("first order".into()),
//!     ..Default::default()
//! };
//! let offset = client.produce("orders", 0, &[record], -1).await?;
//! let (records, _) = client.fetch("orders", 0, offset, 1 << 20, 1000).await?;
//! assert_eq!(records[0].value.as_deref(), Some(&b"first order"[..]));
//! # Ok(())
//! # }
//! ```
//!
//! For clients in other containers, put Strata on their Docker network
//! (`ImageExt::with_network`, `with_container_name`) and advertise the name they reach it by
//! with [`Strata::with_advertised`]. [`Strata::with_object_store`] points it at S3 or MinIO;
//! any other setting goes through [`Strata::with_config`].

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use testcontainers::core::{ContainerPort, IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, Image, ImageExt, TestcontainersError};

/// The image this module runs, as `deploy/build-images.sh` tags it.
pub const IMAGE: &str = "strata:local";
/// The Kafka port inside the container.
pub const KAFKA_PORT: u16 = 9092;

/// What the broker prints once it serves Kafka clients.
const READY: &str = "strata broker serving Kafka clients";

/// A Strata broker container. The defaults: Kafka on 9092, data in `/data` (the container's
/// own filesystem unless a volume is mounted there), topics created on first use, the local
/// directory `/data/objects` as object store.
#[derive(Clone, Debug)]
pub struct Strata {
    name: String,
    tag: String,
    env: BTreeMap<String, String>,
}

impl Default for Strata {
    fn default() -> Self {
        let (name, tag) = IMAGE.split_once(':').expect("IMAGE is name:tag");
        Self {
            name: name.to_owned(),
            tag: tag.to_owned(),
            env: BTreeMap::from([
                (
                    "STRATA_KAFKA__LISTEN".to_owned(),
                    format!("0.0.0.0:{KAFKA_PORT}"),
                ),
                ("STRATA_DATA_DIR".to_owned(), "/data".to_owned()),
            ]),
        }
    }
}

impl Strata {
    /// Sets a broker setting by its dotted key (`topics.default_partitions`,
    /// `object_store.upload_interval_ms`, …; see deploy/strata.toml).
    pub fn with_config(mut self, key: &str, value: impl Into<String>) -> Self {
        let var = format!("STRATA_{}", key.replace('.', "__").to_ascii_uppercase());
        self.env.insert(var, value.into());
        self
    }

    /// The `host:port` Kafka clients are told to connect to.
    pub fn with_advertised(self, host_port: impl Into<String>) -> Self {
        self.with_config("kafka.advertised", host_port)
    }

    /// Sealed segments go to `url` (`s3://bucket/prefix`) at an S3-compatible `endpoint`
    /// (`http://minio:9000`) with these credentials; the bucket is created if missing.
    pub fn with_object_store(
        self,
        url: &str,
        endpoint: &str,
        access_key_id: &str,
        secret_access_key: &str,
    ) -> Self {
        self.with_config("object_store.url", url)
            .with_config("object_store.endpoint", endpoint)
            .with_config("object_store.access_key_id", access_key_id)
            .with_config("object_store.secret_access_key", secret_access_key)
            .with_config("object_store.region", "us-east-1")
            .with_config(
                "object_store.allow_http",
                endpoint.starts_with("http://").to_string(),
            )
            .with_config("object_store.create_bucket", "true")
    }

    /// Another image (`name:tag`) of Strata, e.g. a release you tagged yourself.
    pub fn with_image(mut self, image: &str) -> Self {
        let (name, tag) = image.split_once(':').unwrap_or((image, "latest"));
        self.name = name.to_owned();
        self.tag = tag.to_owned();
        self
    }

    /// Starts the container with its Kafka port on a free port of 127.0.0.1, advertised as
    /// such, and waits until it serves.
    pub async fn start_on_localhost(self) -> Result<RunningStrata, TestcontainersError> {
        self.start_on_localhost_with(|r| r).await
    }

    /// Like [`start_on_localhost`](Self::start_on_localhost), with the request adjusted
    /// first (a network, a container name, a mounted volume).
    pub async fn start_on_localhost_with(
        self,
        adjust: impl FnOnce(
            testcontainers::ContainerRequest<Strata>,
        ) -> testcontainers::ContainerRequest<Strata>,
    ) -> Result<RunningStrata, TestcontainersError> {
        let port = free_port()?;
        let bootstrap = format!("127.0.0.1:{port}");
        let request = self
            .with_advertised(bootstrap.clone())
            .with_mapped_port(port, KAFKA_PORT.tcp())
            .with_startup_timeout(Duration::from_secs(120));
        let container = adjust(request).start().await?;
        Ok(RunningStrata {
            container,
            bootstrap,
        })
    }
}

impl Image for Strata {
    fn name(&self) -> &str {
        &self.name
    }

    fn tag(&self) -> &str {
        &self.tag
    }

    fn ready_conditions(&self) -> Vec<WaitFor> {
        vec![WaitFor::message_on_stdout(READY)]
    }

    fn env_vars(
        &self,
    ) -> impl IntoIterator<Item = (impl Into<Cow<'_, str>>, impl Into<Cow<'_, str>>)> {
        self.env.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    fn expose_ports(&self) -> &[ContainerPort] {
        &[ContainerPort::Tcp(KAFKA_PORT)]
    }
}

/// A started Strata container; dropping it removes the container.
#[derive(Debug)]
pub struct RunningStrata {
    /// The container.
    pub container: ContainerAsync<Strata>,
    bootstrap: String,
}

impl RunningStrata {
    /// `127.0.0.1:<port>`, for `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }
}

/// A port free on 127.0.0.1 now (the container publishes it moments later).
fn free_port() -> Result<u16, TestcontainersError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| TestcontainersError::other(format!("no free port: {e}")))
}

/// Whether Docker runs and has every image in `images`, for tests that need them. Images
/// missing from a checkout of this repository are built first, once for every test process
/// at a time, with `deploy/build-images.sh` (debug binaries), and then reused. When they are
/// still missing: with `STRATA_REQUIRE_DOCKER=1` (CI sets it) this panics; otherwise it says
/// loudly on stderr that the test is skipped and returns false.
pub fn images_ready(images: &[&str]) -> bool {
    let required = std::env::var("STRATA_REQUIRE_DOCKER").is_ok_and(|v| v == "1");
    let missing = match docker_runs() {
        true => match absent(images) {
            gone if gone.is_empty() => Vec::new(),
            gone => match build_images(images) {
                Ok(()) => absent_as_missing(&absent(images)),
                Err(e) => vec![format!("{} ({e})", absent_as_missing(&gone).join(", "))],
            },
        },
        false => vec!["a running Docker engine".to_owned()],
    };
    if missing.is_empty() {
        return true;
    }
    let what = missing.join(", ");
    assert!(!required, "STRATA_REQUIRE_DOCKER=1 but missing: {what}");
    eprintln!(
        "\n*** SKIPPED: this test needs {what}. Set STRATA_REQUIRE_DOCKER=1 to make that a \
         failure. ***\n"
    );
    false
}

fn docker_runs() -> bool {
    std::process::Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|out| out.status.success())
}

/// The images of `images` Docker does not have.
fn absent<'a>(images: &[&'a str]) -> Vec<&'a str> {
    images
        .iter()
        .copied()
        .filter(|image| {
            !std::process::Command::new("docker")
                .args(["image", "inspect", image])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect()
}

fn absent_as_missing(images: &[&str]) -> Vec<String> {
    images
        .iter()
        .map(|image| format!("image {image} (build it with deploy/build-images.sh)"))
        .collect()
}

/// Runs this repository's `deploy/build-images.sh` (debug binaries) unless another test
/// process built `images` while this one waited for the lock.
fn build_images(images: &[&str]) -> Result<(), String> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/build-images.sh");
    if !script.is_file() {
        return Err("not a checkout of the Strata repository, so not built here".to_owned());
    }
    let lock_path = std::env::temp_dir().join("strata-build-images.lock");
    let lock = std::fs::File::create(&lock_path)
        .map_err(|e| format!("creating {}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("locking {}: {e}", lock_path.display()))?;
    if absent(images).is_empty() {
        return Ok(());
    }
    eprintln!(
        "*** building the missing images {images:?} with {} (PROFILE=debug); later runs reuse \
         them, so rebuild them after changing the broker ***",
        script.display()
    );
    let status = std::process::Command::new("bash")
        .arg(&script)
        .env("PROFILE", "debug")
        .status()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    match status.success() {
        true => Ok(()),
        false => Err(format!("{} failed: {status}", script.display())),
    }
}
