//! One connection to one broker: size-prefixed frames, correlation ids, pipelined requests
//! (responses come back in request order on a Kafka connection), and the API versions the
//! broker announced, so each request goes out at the newest version both sides speak.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::ClientError;
use crate::scram::{ScramClient, ScramHash};
use crate::security::{Sasl, Security, Stream};

/// Largest response accepted; checked before allocating.
pub const MAX_RESPONSE_BYTES: usize = 256 << 20;

/// How long connecting, and then each request, may wait for an answer before the connection
/// is given up (Kafka's `request.timeout.ms`, with room for a broker's own 30 s waits).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

type Waiter = oneshot::Sender<Result<Bytes, ClientError>>;

/// Requests awaiting responses, oldest first; once the connection failed, why.
#[derive(Debug, Default)]
struct Pending {
    waiters: VecDeque<(i32, Waiter)>,
    failed: Option<String>,
}

/// A connection with requests in flight.
#[derive(Debug)]
pub struct Connection {
    addr: String,
    write: tokio::sync::Mutex<(WriteHalf<Box<dyn Stream>>, i32)>,
    pending: Arc<Mutex<Pending>>,
    versions: HashMap<i16, (i16, i16)>,
    reader: tokio::task::JoinHandle<()>,
    timeout: Duration,
    /// The SASL login and client id, kept to re-authenticate on this connection before the
    /// session the broker granted ends (KIP-368).
    login: Option<(Sasl, String)>,
    /// The client id every request carries (the one it connected with).
    client_id: String,
    /// When to re-authenticate (nine tenths into the session), if the session ends.
    reauth_at: Mutex<Option<tokio::time::Instant>>,
    /// Held by the one re-authentication running.
    reauth: tokio::sync::Mutex<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Connection {
    /// Connects to `addr` (`host:port`) and negotiates API versions, with the
    /// [`DEFAULT_REQUEST_TIMEOUT`].
    pub async fn connect(addr: &str, client_id: &str) -> Result<Self, ClientError> {
        Self::connect_with_timeout(addr, client_id, DEFAULT_REQUEST_TIMEOUT).await
    }

    /// Like [`connect`](Self::connect): connecting and every request answered within
    /// `timeout`, or the connection is given up ([`ClientError::TimedOut`]).
    pub async fn connect_with_timeout(
        addr: &str,
        client_id: &str,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        Self::connect_secured(addr, client_id, timeout, &Security::default()).await
    }

    /// Like [`connect_with_timeout`](Self::connect_with_timeout), over TLS and authenticated
    /// with SASL as `security` says.
    pub async fn connect_secured(
        addr: &str,
        client_id: &str,
        timeout: Duration,
        security: &Security,
    ) -> Result<Self, ClientError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::TimedOut {
                what: format!("connecting to {addr}"),
                after: timeout,
            })?
            .map_err(|source| ClientError::Unreachable {
                addr: addr.to_owned(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let stream = tokio::time::timeout(timeout, security.open(stream, addr))
            .await
            .map_err(|_| ClientError::TimedOut {
                what: format!("TLS handshake with {addr}"),
                after: timeout,
            })??;
        let (read, write) = tokio::io::split(stream);
        let pending: Arc<Mutex<Pending>> = Arc::default();
        let reader = tokio::spawn(read_loop(read, pending.clone(), addr.to_owned()));
        let mut conn = Self {
            addr: addr.to_owned(),
            write: tokio::sync::Mutex::new((write, 0)),
            pending,
            versions: HashMap::new(),
            reader,
            timeout,
            login: security
                .sasl
                .as_ref()
                .map(|sasl| (sasl.clone(), client_id.to_owned())),
            client_id: client_id.to_owned(),
            reauth_at: Mutex::new(None),
            reauth: tokio::sync::Mutex::new(()),
        };
        // ApiVersions v3 is what current clients open with; a broker that cannot answer it
        // answers v0 with UNSUPPORTED_VERSION and its range, which decodes the same way.
        let req = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("strata-client"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let resp: ApiVersionsResponse = conn.send_at(&req, 3, client_id).await?;
        if resp.error_code != 0 {
            return Err(ClientError::Broker {
                what: "ApiVersions".into(),
                code: resp.error_code,
            });
        }
        conn.versions = resp
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        if let Some(sasl) = &security.sasl {
            conn.authenticate(sasl, client_id).await?;
        }
        Ok(conn)
    }

    /// Re-authenticates when the session is nine tenths through (KIP-368), before the
    /// request about to go: a broker ends a session that is not renewed, and takes nothing
    /// but the SASL requests after it.
    async fn keep_session(&self) -> Result<(), ClientError> {
        let due = || {
            self.reauth_at
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some_and(|at| tokio::time::Instant::now() >= at)
        };
        if !due() {
            return Ok(());
        }
        let _one = self.reauth.lock().await;
        if !due() {
            return Ok(());
        }
        let Some((sasl, client_id)) = &self.login else {
            return Ok(());
        };
        self.authenticate(sasl, client_id).await
    }

    /// SaslHandshake, then the mechanism's SaslAuthenticate exchange; notes when to
    /// re-authenticate if the broker gave the session a lifetime.
    async fn authenticate(&self, sasl: &Sasl, client_id: &str) -> Result<(), ClientError> {
        let started = tokio::time::Instant::now();
        let lifetime_ms = self.exchange(sasl, client_id).await?;
        let at = (lifetime_ms > 0).then(|| {
            started + Duration::from_millis(u64::try_from(lifetime_ms).unwrap_or(0) * 9 / 10)
        });
        *self
            .reauth_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = at;
        Ok(())
    }

    /// The SASL exchange; the session lifetime the broker answered (0: for ever).
    async fn exchange(&self, sasl: &Sasl, client_id: &str) -> Result<i64, ClientError> {
        let refused = |reason: String| ClientError::Authentication {
            broker: self.addr.clone(),
            reason,
        };
        let hs = SaslHandshakeRequest::default()
            .with_mechanism(StrBytes::from_string(sasl.mechanism.clone()));
        let answer: SaslHandshakeResponse = self.send_at(&hs, 1, client_id).await?;
        if answer.error_code != 0 {
            let offered: Vec<&str> = answer.mechanisms.iter().map(|m| m.as_str()).collect();
            return Err(refused(format!(
                "mechanism {} refused ({}); the listener offers {}",
                sasl.mechanism,
                crate::describe_code(answer.error_code),
                offered.join(", ")
            )));
        }
        let version = self.version_for::<SaslAuthenticateRequest>()?;
        let step = |token: Vec<u8>| async move {
            let req = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(token));
            let resp: SaslAuthenticateResponse = self.send_at(&req, version, client_id).await?;
            match resp.error_code {
                0 => Ok((resp.auth_bytes, resp.session_lifetime_ms)),
                code => Err(ClientError::Authentication {
                    broker: self.addr.clone(),
                    reason: resp
                        .error_message
                        .map(|m| m.to_string())
                        .unwrap_or_else(|| crate::describe_code(code)),
                }),
            }
        };
        match ScramHash::of_mechanism(&sasl.mechanism) {
            None => {
                let token = format!("\0{}\0{}", sasl.username, sasl.password);
                step(token.into_bytes()).await.map(|(_, lifetime)| lifetime)
            }
            Some(hash) => {
                let mut scram = ScramClient::new(hash, &sasl.username, &sasl.password);
                let (first, _) = step(scram.first().into_bytes()).await?;
                let first = std::str::from_utf8(&first)
                    .map_err(|_| refused("the server's first SCRAM message is not UTF-8".into()))?;
                let last = scram.last(first).map_err(refused)?;
                let (done, lifetime) = step(last.into_bytes()).await?;
                let done = std::str::from_utf8(&done)
                    .map_err(|_| refused("the server's final SCRAM message is not UTF-8".into()))?;
                scram.verify(done).map_err(refused)?;
                Ok(lifetime)
            }
        }
    }

    /// The broker's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether the connection broke (a new one is needed).
    pub fn is_closed(&self) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .failed
            .is_some()
    }

    /// The version `R` goes out at: the newest both this client and the broker support.
    pub fn version_for<R: Request>(&self) -> Result<i16, ClientError> {
        let ours = R::VERSIONS;
        let api = api_name(R::KEY);
        let Some(&(min, max)) = self.versions.get(&R::KEY) else {
            return Err(ClientError::Unsupported {
                api,
                reason: format!("{} does not offer it", self.addr),
            });
        };
        let v = max.min(ours.max);
        if v < min.max(ours.min) {
            return Err(ClientError::Unsupported {
                api,
                reason: format!(
                    "{} speaks v{min}–v{max}, this client v{}–v{}",
                    self.addr, ours.min, ours.max
                ),
            });
        }
        Ok(v)
    }

    /// Sends `req` at the negotiated version and waits for its response.
    pub async fn send<R: Request>(&self, req: &R) -> Result<R::Response, ClientError> {
        let v = self.version_for::<R>()?;
        self.keep_session().await?;
        self.send_at(req, v, &self.client_id).await
    }

    /// Like [`send`](Self::send), at no newer version than `max` (for requests whose newer
    /// versions change shape, such as Produce and Fetch naming topics by id from v13).
    pub async fn send_capped<R: Request>(
        &self,
        req: &R,
        max: i16,
    ) -> Result<R::Response, ClientError> {
        self.submit(req, max).await?.response().await
    }

    /// Writes `req` (at most at version `max`) and returns at once; the response is awaited
    /// through the [`Reply`]. Requests submitted one after another reach the broker in that
    /// order, which is what keeps a partition's batches in order.
    pub async fn submit<R: Request>(&self, req: &R, max: i16) -> Result<Reply<R>, ClientError> {
        let v = self.version_for::<R>()?;
        if v.min(max) < self.versions.get(&R::KEY).map_or(0, |r| r.0) {
            return Err(ClientError::Unsupported {
                api: api_name(R::KEY),
                reason: format!("{} needs a version above v{max}", self.addr),
            });
        }
        self.keep_session().await?;
        self.submit_at(req, v.min(max), &self.client_id).await
    }

    /// Writes `req` (at most at version `max`) without waiting for a response: for Produce
    /// with acks=0, which the broker does not answer.
    pub async fn send_only<R: Request>(&self, req: &R, max: i16) -> Result<(), ClientError> {
        let v = self.version_for::<R>()?.min(max);
        self.keep_session().await?;
        self.write(req, v, &self.client_id, false).await.map(drop)
    }

    async fn send_at<R: Request>(
        &self,
        req: &R,
        version: i16,
        client_id: &str,
    ) -> Result<R::Response, ClientError> {
        self.submit_at(req, version, client_id)
            .await?
            .response()
            .await
    }

    async fn submit_at<R: Request>(
        &self,
        req: &R,
        version: i16,
        client_id: &str,
    ) -> Result<Reply<R>, ClientError> {
        let key = api_key::<R>()?;
        let rx = self
            .write(req, version, client_id, true)
            .await?
            .ok_or_else(|| ClientError::Closed(self.addr.clone()))?;
        Ok(Reply {
            rx,
            pending: self.pending.clone(),
            timeout: self.timeout,
            version,
            header_version: if key == ApiKey::ApiVersions {
                0
            } else {
                R::Response::header_version(version)
            },
            addr: self.addr.clone(),
            request: std::marker::PhantomData,
        })
    }

    /// Frames and writes a request; with `answered`, registers a waiter for its response.
    async fn write<R: Request>(
        &self,
        req: &R,
        version: i16,
        client_id: &str,
        answered: bool,
    ) -> Result<Option<oneshot::Receiver<Result<Bytes, ClientError>>>, ClientError> {
        let key = api_key::<R>()?;
        let rx = {
            let mut w = self.write.lock().await;
            w.1 = w.1.wrapping_add(1);
            let correlation = w.1;
            let header = RequestHeader::default()
                .with_request_api_key(R::KEY)
                .with_request_api_version(version)
                .with_correlation_id(correlation)
                .with_client_id(Some(StrBytes::from_string(client_id.to_owned())));
            let mut body = BytesMut::with_capacity(64);
            body.put_u32(0);
            header
                .encode(&mut body, key.request_header_version(version))
                .map_err(|e| ClientError::Encode(e.to_string()))?;
            req.encode(&mut body, version)
                .map_err(|e| ClientError::Encode(e.to_string()))?;
            let len = (body.len() - 4) as u32;
            body[..4].copy_from_slice(&len.to_be_bytes());
            let rx = {
                let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(why) = &p.failed {
                    return Err(ClientError::Closed(why.clone()));
                }
                answered.then(|| {
                    let (tx, rx) = oneshot::channel();
                    p.waiters.push_back((correlation, tx));
                    rx
                })
            };
            // Flushed: TLS holds back what the socket did not take yet.
            let written = match w.0.write_all(&body).await {
                Ok(()) => w.0.flush().await,
                Err(e) => Err(e),
            };
            written.map_err(|e| ClientError::Closed(format!("{}: {e}", self.addr)))?;
            rx
        };
        Ok(rx)
    }
}

/// The response to a submitted request, awaited with [`Reply::response`].
#[derive(Debug)]
pub struct Reply<R> {
    rx: oneshot::Receiver<Result<Bytes, ClientError>>,
    /// The connection's requests, failed as a whole when this one times out.
    pending: Arc<Mutex<Pending>>,
    timeout: Duration,
    version: i16,
    header_version: i16,
    addr: String,
    request: std::marker::PhantomData<fn() -> R>,
}

impl<R: Request> Reply<R> {
    /// Waits for the response and decodes it. A response that does not come within the
    /// connection's timeout gives the connection up: responses come in request order, so
    /// every later request on it would wait too.
    pub async fn response(self) -> Result<R::Response, ClientError> {
        let answer = match tokio::time::timeout(self.timeout, self.rx).await {
            Ok(answer) => answer,
            Err(_) => {
                let what = format!("{} ({})", self.addr, api_name(R::KEY));
                fail(
                    &self.pending,
                    format!("{what}: no answer within {:?}", self.timeout),
                );
                return Err(ClientError::TimedOut {
                    what,
                    after: self.timeout,
                });
            }
        };
        let mut frame = answer.map_err(|_| ClientError::Closed(self.addr.clone()))??;
        ResponseHeader::decode(&mut frame, self.header_version)
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        R::Response::decode(&mut frame, self.version)
            .map_err(|e| ClientError::Decode(e.to_string()))
    }
}

/// Reads frames and hands each to the oldest waiting request; on any error every waiter
/// learns the connection is gone.
async fn read_loop(
    mut read: ReadHalf<Box<dyn Stream>>,
    pending: Arc<Mutex<Pending>>,
    addr: String,
) {
    let failure = loop {
        let mut len = [0u8; 4];
        if let Err(e) = read.read_exact(&mut len).await {
            break format!("{addr}: {e}");
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_RESPONSE_BYTES {
            break format!("{addr}: response of {len} bytes exceeds {MAX_RESPONSE_BYTES}");
        }
        let mut buf = vec![0u8; len];
        if let Err(e) = read.read_exact(&mut buf).await {
            break format!("{addr}: {e}");
        }
        let correlation = buf
            .get(..4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        let waiter = pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .waiters
            .pop_front();
        match waiter {
            Some((expected, tx)) if Some(expected) == correlation => {
                let _ = tx.send(Ok(Bytes::from(buf)));
            }
            Some((expected, tx)) => {
                let msg =
                    format!("{addr}: response {correlation:?} out of order, expected {expected}");
                let _ = tx.send(Err(ClientError::Closed(msg.clone())));
                break msg;
            }
            None => break format!("{addr}: a response nobody asked for"),
        }
    };
    fail(&pending, failure);
}

/// Marks the connection broken for `why` (the first reason stays) and fails every request
/// still waiting on it.
fn fail(pending: &Mutex<Pending>, why: String) {
    let (waiters, why) = {
        let mut p = pending.lock().unwrap_or_else(PoisonError::into_inner);
        let why = p.failed.get_or_insert(why).clone();
        (std::mem::take(&mut p.waiters), why)
    };
    for (_, tx) in waiters {
        let _ = tx.send(Err(ClientError::Closed(why.clone())));
    }
}

fn api_key<R: Request>() -> Result<ApiKey, ClientError> {
    ApiKey::try_from(R::KEY).map_err(|_| ClientError::Unsupported {
        api: api_name(R::KEY),
        reason: "unknown API key".into(),
    })
}

fn api_name(key: i16) -> String {
    ApiKey::try_from(key).map_or_else(|_| format!("API {key}"), |k| format!("{k:?}"))
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::MetadataRequest;
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use tokio::net::TcpListener;

    use super::*;

    /// A one-connection fake broker: answers the first request with `reply(correlation)`,
    /// and no other.
    async fn fake(reply: impl FnOnce(i32) -> Vec<u8> + Send + 'static) -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            let mut len = [0u8; 4];
            s.read_exact(&mut len).await.expect("len");
            let mut req = vec![0u8; u32::from_be_bytes(len) as usize];
            s.read_exact(&mut req).await.expect("request");
            let correlation = i32::from_be_bytes([req[4], req[5], req[6], req[7]]);
            s.write_all(&reply(correlation)).await.expect("reply");
            // Hold the connection open, answering nothing more, until the client is done.
            let mut rest = [0u8; 1024];
            while s.read(&mut rest).await.is_ok_and(|n| n > 0) {}
        });
        addr
    }

    /// An ApiVersions v3 response frame answering request `correlation`.
    fn versions_frame(correlation: i32, resp: &ApiVersionsResponse) -> Vec<u8> {
        let mut body = BytesMut::new();
        body.put_u32(0);
        body.put_i32(correlation);
        resp.encode(&mut body, 3).expect("encode");
        let len = (body.len() - 4) as u32;
        body[..4].copy_from_slice(&len.to_be_bytes());
        body.to_vec()
    }

    #[tokio::test]
    async fn an_api_the_broker_does_not_offer_is_declined_before_sending() {
        let addr = fake(|correlation| {
            let resp = ApiVersionsResponse::default().with_api_keys(vec![
                ApiVersion::default()
                    .with_api_key(ApiKey::ApiVersions as i16)
                    .with_min_version(0)
                    .with_max_version(3),
            ]);
            versions_frame(correlation, &resp)
        })
        .await;
        let conn = Connection::connect(&addr, "test").await.expect("connect");
        let e = conn
            .send(&MetadataRequest::default())
            .await
            .expect_err("no Metadata");
        assert!(
            matches!(&e, ClientError::Unsupported { api, .. } if api == "Metadata"),
            "{e}"
        );
    }

    /// A broker that accepts but never answers: connecting gives up after the timeout, and
    /// a request on a connection whose broker stops answering fails, as do the requests
    /// behind it, and the connection reports itself closed.
    #[tokio::test]
    async fn a_silent_broker_times_requests_out_and_the_connection_is_given_up() {
        let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = silent.local_addr().expect("addr").to_string();
        let held = tokio::spawn(async move {
            let accepted = silent.accept().await;
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(accepted);
        });
        let started = std::time::Instant::now();
        let e = Connection::connect_with_timeout(&addr, "test", Duration::from_millis(300))
            .await
            .expect_err("no answer");
        assert!(matches!(e, ClientError::TimedOut { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        held.abort();

        // Answers ApiVersions, then nothing.
        let addr = fake(|correlation| {
            let resp = ApiVersionsResponse::default().with_api_keys(vec![
                ApiVersion::default()
                    .with_api_key(ApiKey::Metadata as i16)
                    .with_min_version(0)
                    .with_max_version(12),
            ]);
            versions_frame(correlation, &resp)
        })
        .await;
        let conn = Connection::connect_with_timeout(&addr, "test", Duration::from_millis(300))
            .await
            .expect("connect");
        let first = conn
            .submit(&MetadataRequest::default(), 12)
            .await
            .expect("sent");
        let second = conn
            .submit(&MetadataRequest::default(), 12)
            .await
            .expect("sent");
        let e = first.response().await.expect_err("timed out");
        assert!(matches!(e, ClientError::TimedOut { .. }), "{e}");
        assert!(conn.is_closed());
        let e = second.response().await.expect_err("given up with it");
        assert!(matches!(e, ClientError::Closed(_)), "{e}");
    }

    #[tokio::test]
    async fn an_oversized_response_is_refused_before_allocating() {
        let addr = fake(|_| (u32::MAX).to_be_bytes().to_vec()).await;
        let e = Connection::connect(&addr, "test")
            .await
            .expect_err("refused");
        assert!(e.to_string().contains("exceeds"), "{e}");
    }
}
