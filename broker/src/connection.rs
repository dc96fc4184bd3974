//! One client connection: size-prefixed frames in, responses out in request order.
//!
//! A frame's size is checked against `kafka.max_request_bytes`, and its bytes are reserved
//! from the broker's memory budget ([`Admission`]), before its body is read or allocated.
//! Requests are handled concurrently (pipelining) up to `kafka.max_in_flight_requests`; past
//! that the connection is not read until the oldest answers. Responses are written in request
//! order, as Kafka requires, and release their reservations once written. A connection that
//! sends nothing for `kafka.idle_timeout_ms` is closed. On shutdown the connection stops
//! reading and finishes the requests it has.
//!
//! A client over one of its quotas (see [`crate::quota`]) is told its throttle time in the
//! response, and the connection is then not read until that time has passed.
//!
//! Kafka processes a connection's requests one at a time, and producers rely on it: batches
//! sent in two pipelined requests must land in the order sent. Here requests overlap, so
//! Produce requests take a ticket in arrival order and append only in ticket order
//! ([`Turnstile`]); the fsync wait of `acks=all` still overlaps.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use kafka_protocol::messages::ApiKey;

use crate::admission::{Admission, ConnectionSlot};
use crate::handlers::{self, Reply};
use crate::protocol::{FrameError, parse_frame};
use crate::response::Sink;
use crate::security::Session;
use crate::state::BrokerState;
use crate::turnstile::Turnstile;

/// A request's bytes and their reservation in the memory budget.
type Received = (Bytes, Option<OwnedSemaphorePermit>);

/// A connection's stream, split into the half requests are read from and the half answers
/// are written to.
pub(crate) trait Transport: Send + 'static {
    type Reader: AsyncRead + Unpin + Send + 'static;
    type Writer: Sink + 'static;

    fn halves(self) -> (Self::Reader, Self::Writer);
}

impl Transport for TcpStream {
    type Reader = tokio::net::tcp::OwnedReadHalf;
    type Writer = tokio::net::tcp::OwnedWriteHalf;

    fn halves(self) -> (Self::Reader, Self::Writer) {
        self.into_split()
    }
}

impl Transport for tokio_rustls::server::TlsStream<TcpStream> {
    type Reader = tokio::io::ReadHalf<Self>;
    type Writer = tokio::io::WriteHalf<Self>;

    fn halves(self) -> (Self::Reader, Self::Writer) {
        tokio::io::split(self)
    }
}

/// Serves `stream` (TCP, or TLS over it) until the client leaves, misbehaves, idles out,
/// fails to authenticate, or the broker shuts down. Until the session has authenticated
/// (SASL listeners), requests are served one at a time and only the SASL ones are admitted.
pub(crate) async fn serve(
    state: Arc<BrokerState>,
    stream: impl Transport,
    session: Arc<Session>,
    slot: ConnectionSlot,
    cancel: CancellationToken,
) {
    let _slot = slot;
    let _open = OpenConnection::new(&state.metrics.connections);
    let peer = session.peer;
    let (rd, mut wr) = stream.halves();
    let max_in_flight = state.config.kafka.max_in_flight_requests;
    let (frames_tx, mut frames) = mpsc::channel::<Received>(1);
    let reader = read_frames(
        rd,
        state.config.kafka.max_request_bytes,
        state.admission.clone(),
        frames_tx,
    );
    tokio::pin!(reader);
    let mut reader_running = true;
    let idle = state.config.idle_timeout();
    let mut in_flight = FuturesOrdered::new();
    let requests = Requests::default();
    let mut reading = true;
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(idle_timer);
    let authentication = Duration::from_millis(state.config.kafka.sasl.authentication_timeout_ms);
    let auth_timer = tokio::time::sleep(authentication);
    tokio::pin!(auth_timer);
    // A client over a quota: the request after the one that went over waits here, and
    // the connection is not read further, until its throttle time has passed.
    let mut stashed: Option<Received> = None;
    let unmute = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(unmute);
    loop {
        if !reading && in_flight.is_empty() && stashed.is_none() {
            break;
        }
        let limit = match session.authenticated() {
            true => max_in_flight,
            false => 1,
        };
        tokio::select! {
            biased;
            Some((answer, request_held, fetch_turn)) = in_flight.next(), if !in_flight.is_empty() => {
                let answer: Result<Option<Reply>, FrameError> = answer;
                match answer {
                    Ok(Some(Reply { response, held })) => {
                        // A client that stops reading cannot pin the connection: a response
                        // not written within the idle timeout closes it.
                        // Flushed: TLS holds back what the socket did not take yet.
                        let write = async {
                            response.write_to(&mut wr).await?;
                            wr.flush().await
                        };
                        let written = tokio::time::timeout(idle, write).await;
                        drop(held);
                        match written {
                            Ok(Ok(())) if session.closing() => {
                                tracing::debug!(%peer, "closing after a refused authentication");
                                break;
                            }
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "write failed; closing");
                                return;
                            }
                            Err(_) => {
                                tracing::info!(%peer, "client not reading responses; closing");
                                return;
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::info!(%peer, error = %e, "closing connection");
                        break;
                    }
                }
                drop((request_held, fetch_turn));
            }
            () = &mut unmute, if stashed.is_some() && in_flight.len() < limit => {
                let now = tokio::time::Instant::now();
                if let Some(until) = session.throttled_at(now) {
                    unmute.as_mut().reset(until);
                    continue;
                }
                idle_timer.as_mut().reset(now + idle);
                if let Some(received) = stashed.take() {
                    in_flight.push_back(request(&state, &session, &requests, received));
                }
            }
            received = frames.recv(), if reading && stashed.is_none() && in_flight.len() < limit => {
                let Some(received) = received else {
                    reading = false;
                    continue;
                };
                let now = tokio::time::Instant::now();
                idle_timer.as_mut().reset(now + idle);
                if let Some(until) = session.throttled_at(now) {
                    stashed = Some(received);
                    unmute.as_mut().reset(until);
                    continue;
                }
                in_flight.push_back(request(&state, &session, &requests, received));
            }
            ended = &mut reader, if reader_running => {
                reader_running = false;
                match ended {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                        tracing::info!(%peer, error = %e, "bad frame; closing after answering earlier requests");
                    }
                    Err(e) => tracing::debug!(%peer, error = %e, "read failed"),
                }
            }
            () = &mut idle_timer, if reading => {
                tracing::debug!(%peer, "idle; closing");
                reading = false;
            }
            () = &mut auth_timer, if !session.authenticated() => {
                tracing::info!(%peer, listener = %session.listener.name,
                    "not authenticated within kafka.sasl.authentication_timeout_ms; closing");
                break;
            }
            () = cancel.cancelled(), if reading => {
                reading = false;
                // Not taken yet: the client retries it elsewhere.
                stashed = None;
            }
        }
    }
    let _ = wr.shutdown().await;
}

/// What a connection's requests share to keep their order.
struct Requests {
    turnstile: Arc<Turnstile>,
    /// One Fetch at a time per connection, its answer written before the next reads:
    /// clients keep one Fetch in flight per broker anyway, and a client that pipelines many
    /// and reads none pins one response, not dozens.
    fetch_gate: Arc<Semaphore>,
    produce_tickets: std::cell::Cell<u64>,
}

impl Default for Requests {
    fn default() -> Self {
        Self {
            turnstile: Arc::new(Turnstile::default()),
            fetch_gate: Arc::new(Semaphore::new(1)),
            produce_tickets: std::cell::Cell::new(0),
        }
    }
}

/// Handles one received request: its answer, its reservations, and its Fetch turn.
fn request(
    state: &Arc<BrokerState>,
    session: &Arc<Session>,
    requests: &Requests,
    (buf, held): Received,
) -> impl std::future::Future<
    Output = (
        Result<Option<Reply>, FrameError>,
        Option<OwnedSemaphorePermit>,
        Option<OwnedSemaphorePermit>,
    ),
> + Send
+ 'static {
    let state = state.clone();
    let session = session.clone();
    // Peek the api key to hand out produce tickets in arrival order.
    let api = buf.get(..2).map(|k| i16::from_be_bytes([k[0], k[1]]));
    let turn = (api == Some(ApiKey::Produce as i16)).then(|| {
        let ticket = requests.produce_tickets.get();
        requests.produce_tickets.set(ticket + 1);
        requests.turnstile.turn(ticket)
    });
    let fetch_gate = (api == Some(ApiKey::Fetch as i16)).then(|| requests.fetch_gate.clone());
    async move {
        let fetch_turn = match fetch_gate {
            Some(gate) => gate.acquire_owned().await.ok(),
            None => None,
        };
        if session.raw_tokens() {
            drop(turn);
            let answer = handlers::sasl_token(&state, &session, buf).await;
            return (answer, held, fetch_turn);
        }
        let admitted = parse_frame(buf, session).and_then(|f| {
            f.session
                .admit(f.api, tokio::time::Instant::now())
                .map_err(FrameError::NotAdmitted)?;
            Ok(f)
        });
        let frame = match admitted {
            Ok(f) => f,
            Err(e) => {
                drop(turn);
                return (Err(e), held, fetch_turn);
            }
        };
        let span = tracing::debug_span!(
            "request",
            api = ?frame.api,
            version = frame.version,
            client = frame.header.client_id.as_deref().unwrap_or(""),
        );
        let (api, started) = (frame.api, std::time::Instant::now());
        let answer =
            tracing::Instrument::instrument(handlers::handle(&state, &frame, turn), span).await;
        match &answer {
            Ok(_) => state.metrics.request(api, started.elapsed()),
            Err(_) => state.metrics.error(api, "protocol"),
        }
        (answer, held, fetch_turn)
    }
}

/// Counts a connection in the open-connections gauge while it lives.
struct OpenConnection(prometheus_client::metrics::gauge::Gauge);

impl OpenConnection {
    fn new(gauge: &prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Reads size-prefixed frames into `frames` until the client closes or sends a frame that
/// is too large (`InvalidData`). Each body is allocated only after its size was checked and
/// its bytes reserved in the memory budget.
async fn read_frames(
    mut rd: impl AsyncRead + Unpin,
    max_request_bytes: u32,
    admission: Arc<Admission>,
    frames: mpsc::Sender<Received>,
) -> std::io::Result<()> {
    loop {
        let mut size = [0u8; 4];
        match rd.read_exact(&mut size).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let size = u32::from_be_bytes(size);
        if size > max_request_bytes {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "a frame of {size} bytes is over kafka.max_request_bytes ({max_request_bytes})"
                ),
            ));
        }
        let size = size as usize;
        let held = admission.reserve(size).await;
        // Read into the buffer's spare capacity: zeroing a megabyte-sized produce first costs
        // a pass over it for nothing.
        let mut body = BytesMut::with_capacity(size);
        while body.len() < size {
            let left = (size - body.len()) as u64;
            if (&mut rd).take(left).read_buf(&mut body).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        if frames.send((body.freeze(), held)).await.is_err() {
            return Ok(());
        }
    }
}
