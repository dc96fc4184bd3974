//! A real S3-compatible HTTP server for tests: `s3s-fs` (buckets are directories under a
//! root) served in-process on a loopback port, with signature checking on. It can be stopped
//! and started again on the same port and root, to test a broker through an outage.
//!
//! GETs send the object's bytes read in pieces of [`GET_PIECE`]: s3s-fs reads them 4 KiB at
//! a time, each read a hop to tokio's blocking pool, so serving a replay at 250 MB/s cost
//! the server a core and 100,000+ thread switches a second, on the machine whose broker the
//! benchmarks measure (a real S3 spends none of that machine's CPU).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use s3s::auth::SimpleAuth;
use s3s::dto::*;
use s3s::service::S3ServiceBuilder;
use s3s::{S3, S3Request, S3Response, S3Result};
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
    let mut b = S3ServiceBuilder::new(Store {
        fs,
        root: std::env::current_dir()?.join(root).canonicalize()?,
    });
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

/// Bytes of an object read (on tokio's blocking pool) for each piece of a GET's body.
const GET_PIECE: usize = 1 << 20;

/// s3s-fs, with GET bodies read in larger pieces.
struct Store {
    fs: s3s_fs::FileSystem,
    /// The root s3s-fs resolves buckets under (canonical, as it keeps it).
    root: PathBuf,
}

impl Store {
    /// The object's file, opened, and the first byte the response sends, if the file's length
    /// and modification time are those of the response s3s-fs made (so an object replaced in
    /// between is not sent under the other's headers); `None` leaves s3s-fs's own body in
    /// place.
    fn same_file(
        &self,
        bucket: &str,
        key: &str,
        out: &GetObjectOutput,
    ) -> Option<(std::fs::File, u64)> {
        // s3s-fs resolves the key virtually under the root; a key with empty, `.` or `..`
        // parts (an absolute one among them, which `join` would not keep under the root) is
        // left to it.
        if key
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return None;
        }
        let file = std::fs::File::open(self.root.join(bucket).join(key)).ok()?;
        let meta = file.metadata().ok()?;
        let (start, total) = span(out)?;
        let modified = s3s::dto::Timestamp::from(meta.modified().ok()?);
        (meta.len() == total && out.last_modified.as_ref() == Some(&modified))
            .then_some((file, start))
    }
}

/// The first byte a GET answers and the object's whole length: from its `Content-Range`
/// ("bytes a-b/n"), or 0 and its `Content-Length` without one.
fn span(out: &GetObjectOutput) -> Option<(u64, u64)> {
    match &out.content_range {
        None => Some((0, u64::try_from(out.content_length?).ok()?)),
        Some(r) => {
            let (range, total) = r.strip_prefix("bytes ")?.split_once('/')?;
            Some((range.split_once('-')?.0.parse().ok()?, total.parse().ok()?))
        }
    }
}

/// `len` bytes of `file` from `start`, [`GET_PIECE`] at a time.
fn pieces(
    file: std::fs::File,
    start: u64,
    len: u64,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + Sync + 'static {
    let file = Arc::new(file);
    futures::stream::try_unfold((start, start + len), move |(at, end)| {
        let file = file.clone();
        async move {
            if at >= end {
                return Ok(None);
            }
            let want = usize::try_from(end - at).map_or(GET_PIECE, |n| n.min(GET_PIECE));
            let piece = tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; want];
                file.read_exact_at(&mut buf, at).map(|()| buf)
            })
            .await
            .map_err(std::io::Error::other)??;
            Ok(Some((bytes::Bytes::from(piece), (at + want as u64, end))))
        }
    })
}

/// Delegates each operation s3s-fs implements to it, but for `get_object`.
macro_rules! delegate_to_fs {
    ($($op:ident($input:ident) -> $output:ident;)*) => {
        #[async_trait::async_trait]
        impl S3 for Store {
            $(
                async fn $op(&self, req: S3Request<$input>) -> S3Result<S3Response<$output>> {
                    self.fs.$op(req).await
                }
            )*

            async fn get_object(
                &self,
                req: S3Request<GetObjectInput>,
            ) -> S3Result<S3Response<GetObjectOutput>> {
                let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
                let mut resp = self.fs.get_object(req).await?;
                let out = &mut resp.output;
                let len = out.content_length.and_then(|n| u64::try_from(n).ok());
                if let (Some((file, start)), Some(len)) = (self.same_file(&bucket, &key, out), len) {
                    out.body = Some(StreamingBlob::wrap(pieces(file, start, len)));
                }
                Ok(resp)
            }
        }
    };
}

delegate_to_fs! {
    create_bucket(CreateBucketInput) -> CreateBucketOutput;
    copy_object(CopyObjectInput) -> CopyObjectOutput;
    delete_bucket(DeleteBucketInput) -> DeleteBucketOutput;
    delete_object(DeleteObjectInput) -> DeleteObjectOutput;
    delete_objects(DeleteObjectsInput) -> DeleteObjectsOutput;
    get_bucket_location(GetBucketLocationInput) -> GetBucketLocationOutput;
    head_bucket(HeadBucketInput) -> HeadBucketOutput;
    head_object(HeadObjectInput) -> HeadObjectOutput;
    list_buckets(ListBucketsInput) -> ListBucketsOutput;
    list_objects(ListObjectsInput) -> ListObjectsOutput;
    list_objects_v2(ListObjectsV2Input) -> ListObjectsV2Output;
    put_object(PutObjectInput) -> PutObjectOutput;
    create_multipart_upload(CreateMultipartUploadInput) -> CreateMultipartUploadOutput;
    upload_part(UploadPartInput) -> UploadPartOutput;
    upload_part_copy(UploadPartCopyInput) -> UploadPartCopyOutput;
    list_parts(ListPartsInput) -> ListPartsOutput;
    complete_multipart_upload(CompleteMultipartUploadInput) -> CompleteMultipartUploadOutput;
    abort_multipart_upload(AbortMultipartUploadInput) -> AbortMultipartUploadOutput;
}

#[cfg(test)]
mod tests {
    use object_store::{GetOptions, GetRange, ObjectStoreExt, PutPayload};

    use super::*;

    #[tokio::test]
    async fn gets_send_the_bytes_asked_for_across_pieces() {
        let s3 = S3Server::start().await;
        s3.create_bucket("pieces").await;
        let store = s3.store("pieces");
        let path = object_store::path::Path::from("dir/object");
        // Two pieces and a little: every range below crosses or ends near a piece boundary.
        let len = 2 * GET_PIECE + 5;
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        store
            .put(&path, PutPayload::from(data.clone()))
            .await
            .expect("put");
        let whole = store.get(&path).await.expect("get").bytes().await;
        assert_eq!(whole.expect("body").as_ref(), data.as_slice());
        let piece = GET_PIECE as u64;
        for range in [
            0..1,
            piece - 3..piece + 3,
            1..2 * piece + 5,
            2 * piece..2 * piece + 5,
        ] {
            let got = store.get_range(&path, range.clone()).await.expect("range");
            let want = &data[range.start as usize..range.end as usize];
            assert_eq!(got.as_ref(), want, "range {range:?}");
        }
        let suffix = GetOptions {
            range: Some(GetRange::Suffix(7)),
            ..GetOptions::default()
        };
        let got = store.get_opts(&path, suffix).await.expect("suffix");
        assert_eq!(got.bytes().await.expect("body").as_ref(), &data[len - 7..]);
        // Replaced by a shorter object: its own bytes, under its own length.
        store
            .put(&path, PutPayload::from_static(b"short"))
            .await
            .expect("put again");
        let got = store.get(&path).await.expect("get").bytes().await;
        assert_eq!(got.expect("body").as_ref(), b"short");
    }

    /// The larger pieces are sent only for the file s3s-fs answered about.
    #[tokio::test]
    async fn only_the_file_answered_about_is_sent_in_pieces() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("b/k")).expect("bucket");
        std::fs::write(dir.path().join("b/k/o"), b"0123456789").expect("object");
        let store = Store {
            fs: s3s_fs::FileSystem::new(dir.path()).expect("fs"),
            root: dir.path().canonicalize().expect("root"),
        };
        let modified = std::fs::metadata(dir.path().join("b/k/o"))
            .and_then(|m| m.modified())
            .expect("mtime");
        let answered = |len: i64, range: Option<&str>| GetObjectOutput {
            content_length: Some(len),
            content_range: range.map(str::to_owned),
            last_modified: Some(Timestamp::from(modified)),
            ..GetObjectOutput::default()
        };
        assert!(store.same_file("b", "k/o", &answered(10, None)).is_some());
        assert!(
            store
                .same_file("b", "k/o", &answered(4, Some("bytes 2-5/10")))
                .is_some()
        );
        assert!(
            store.same_file("b", "k/o", &answered(9, None)).is_none(),
            "another length"
        );
        let older = GetObjectOutput {
            last_modified: Some(Timestamp::from(std::time::SystemTime::UNIX_EPOCH)),
            ..answered(10, None)
        };
        assert!(
            store.same_file("b", "k/o", &older).is_none(),
            "another time"
        );
        for key in ["/k/o", "k//o", "k/./o", "x/../k/o"] {
            assert!(
                store.same_file("b", key, &answered(10, None)).is_none(),
                "{key}"
            );
        }
    }

    #[test]
    fn a_content_range_names_its_first_byte() {
        let out = |r: Option<&str>| GetObjectOutput {
            content_length: Some(100),
            content_range: r.map(str::to_owned),
            ..GetObjectOutput::default()
        };
        assert_eq!(span(&out(None)), Some((0, 100)));
        assert_eq!(span(&out(Some("bytes 10-19/100"))), Some((10, 100)));
        assert_eq!(span(&out(Some("items 10-19/100"))), None);
    }
}
