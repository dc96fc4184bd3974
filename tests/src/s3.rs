//! A real S3-compatible HTTP server for tests: `s3s-fs` (buckets are directories under a
//! root) served in-process on a loopback port, with signature checking on. It can be stopped
//! and started again on the same port and root, to test a broker through an outage.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::{JoinHandle, JoinSet};

/// The access key the server accepts.
pub const ACCESS_KEY: &str = "strata-test";
/// The secret key the server accepts.
pub const SECRET_KEY: &str = "strata-test-secret";
/// The region clients sign for.
pub const REGION: &str = "us-east-1";

/// An s3s-fs server on `127.0.0.1`.
#[derive(Debug)]
pub struct S3Server {
    addr: SocketAddr,
    root: PathBuf,
    _dir: Option<tempfile::TempDir>,
    serving: Option<JoinHandle<()>>,
}

impl S3Server {
    /// Starts a server on a free port with an empty root in a temporary directory.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Self {
            addr: "127.0.0.1:0".parse().expect("addr"),
            root: dir.path().to_owned(),
            _dir: Some(dir),
            serving: None,
        };
        s.resume().await;
        s
    }

    /// A server some other process runs on `addr` with its buckets under `root` (the
    /// `strata-s3` program): its endpoint, stores and client, but not
    /// [`stop`](Self::stop)/[`resume`](Self::resume).
    pub fn elsewhere(addr: SocketAddr, root: &Path) -> Self {
        Self {
            addr,
            root: root.to_owned(),
            _dir: None,
            serving: None,
        }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The directory buckets live in (bucket `b`'s objects are files under `root/b/`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Stops accepting and drops every open connection: clients see refused connections and
    /// reset requests until [`resume`](Self::resume).
    pub async fn stop(&mut self) {
        if let Some(task) = self.serving.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Serves again on the same port and root.
    pub async fn resume(&mut self) {
        assert!(self.serving.is_none(), "already serving");
        // SO_REUSEADDR: the port's old connections may still be in TIME_WAIT.
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("reuseaddr");
        socket.bind(self.addr).expect("bind the S3 port");
        let listener = socket.listen(128).expect("listen");
        self.addr = listener.local_addr().expect("addr");
        let serving = serve(listener, &self.root, ACCESS_KEY, SECRET_KEY).expect("s3s-fs root");
        self.serving = Some(tokio::spawn(serving));
    }

    /// An aws-sdk-s3 client for this server: an independent view of what the broker stored.
    pub fn client(&self) -> aws_sdk_s3::Client {
        use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(self.endpoint())
            .force_path_style(true)
            .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// Creates `bucket`.
    pub async fn create_bucket(&self, bucket: &str) {
        self.client()
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .expect("create bucket");
    }

    /// object_store's S3 client for `bucket` on this server (as the broker builds it).
    pub fn store(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        Arc::new(
            AmazonS3Builder::new()
                .with_bucket_name(bucket)
                .with_region(REGION)
                .with_endpoint(self.endpoint())
                .with_allow_http(true)
                .with_virtual_hosted_style_request(false)
                .with_access_key_id(ACCESS_KEY)
                .with_secret_access_key(SECRET_KEY)
                .build()
                .expect("s3 store"),
        )
    }

    /// Broker settings for `s3://<bucket>/<prefix>` on the server at `endpoint`.
    pub fn configure(
        endpoint: &str,
        c: &mut strata_broker::config::BrokerConfig,
        bucket: &str,
        prefix: &str,
    ) {
        let o = &mut c.object_store;
        o.url = format!("s3://{bucket}/{prefix}");
        o.endpoint = Some(endpoint.to_owned());
        o.region = Some(REGION.into());
        o.access_key_id = Some(ACCESS_KEY.into());
        o.secret_access_key = Some(SECRET_KEY.into());
        o.path_style = true;
        o.allow_http = true;
    }
}

/// Serves s3s-fs with buckets under `root` on `listener`, accepting one key pair; the
/// returned future runs until dropped or aborted (its connections go with it).
pub fn serve(
    listener: TcpListener,
    root: &Path,
    access_key: &str,
    secret_key: &str,
) -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    let fs = s3s_fs::FileSystem::new(root).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    let mut b = S3ServiceBuilder::new(fs);
    b.set_auth(SimpleAuth::from_single(access_key, secret_key));
    let s3 = b.build();
    // s3s-fs checks a conditional put and then writes, so concurrent conditional puts of one
    // key can all succeed (NOTES.md); S3 makes them atomic, and the brokers' manifest commits
    // rely on that. Serialising the conditional requests gives them S3's semantics.
    let conditional = Arc::new(tokio::sync::Mutex::new(()));
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let (s3, conditional) = (s3.clone(), conditional.clone());
        async move {
            let headers = req.headers();
            let _serial =
                if headers.contains_key("if-none-match") || headers.contains_key("if-match") {
                    Some(conditional.lock_owned().await)
                } else {
                    None
                };
            s3.call(req.map(s3s::Body::from)).await
        }
    });
    Ok(async move {
        let http = ConnBuilder::new(TokioExecutor::new());
        // Owned here, so dropping this future drops every connection with it.
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((socket, _)) = accepted else { continue };
                    let conn = http
                        .serve_connection(TokioIo::new(socket), service.clone())
                        .into_owned();
                    connections.spawn(async move {
                        let _ = conn.await;
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    })
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(task) = self.serving.take() {
            task.abort();
        }
    }
}
