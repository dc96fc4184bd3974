//! One client connection: size-prefixed frames in, responses out in request order.
//!
//! Frames are read through a length-delimited codec that refuses a size above
//! `kafka.max_request_bytes` before allocating. Requests are handled concurrently (pipelining)
//! up to `kafka.max_in_flight_requests`; past that the connection is not read until the oldest
//! answers. Responses are written in request order, as Kafka requires. A connection that sends
//! nothing for `kafka.idle_timeout_ms` is closed. On shutdown the connection stops reading and
//! finishes the requests it has.
//!
//! Kafka processes a connection's requests one at a time, and producers rely on it: batches
//! sent in two pipelined requests must land in the order sent. Here requests overlap, so
//! Produce requests take a ticket in arrival order and append only in ticket order
//! ([`Turnstile`]); the fsync wait of `acks=all` still overlaps.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use kafka_protocol::messages::ApiKey;
use tokio::sync::watch;

use crate::handlers;
use crate::protocol::{FrameError, parse_frame};
use crate::state::BrokerState;

/// Serves `stream` until the client leaves, misbehaves, idles out, or the broker shuts down.
pub(crate) async fn serve(
    state: Arc<BrokerState>,
    stream: TcpStream,
    peer: SocketAddr,
    cancel: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let (rd, mut wr) = stream.into_split();
    let codec = LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(state.config.kafka.max_request_bytes as usize)
        .new_codec();
    let mut frames = FramedRead::new(rd, codec);
    let max_in_flight = state.config.kafka.max_in_flight_requests;
    let idle = state.config.idle_timeout();
    let mut in_flight = FuturesOrdered::new();
    let turnstile = Arc::new(Turnstile::default());
    let mut produce_tickets = 0u64;
    let mut reading = true;
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(idle_timer);
    loop {
        if !reading && in_flight.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            Some(answer) = in_flight.next(), if !in_flight.is_empty() => {
                let answer: Result<Option<Bytes>, FrameError> = answer;
                match answer {
                    Ok(Some(bytes)) => {
                        // A client that stops reading cannot pin the connection: a response
                        // not written within the idle timeout closes it.
                        match tokio::time::timeout(idle, wr.write_all(&bytes)).await {
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
            }
            frame = frames.next(), if reading && in_flight.len() < max_in_flight => {
                match frame {
                    Some(Ok(buf)) => {
                        idle_timer.as_mut().reset(tokio::time::Instant::now() + idle);
                        let state = state.clone();
                        // Peek the api key to hand out produce tickets in arrival order.
                        let turn = (buf.get(..2) == Some(&(ApiKey::Produce as i16).to_be_bytes()[..]))
                            .then(|| {
                                produce_tickets += 1;
                                Turn { turnstile: turnstile.clone(), ticket: produce_tickets - 1 }
                            });
                        in_flight.push_back(async move {
                            let frame = parse_frame(buf.freeze());
                            let frame = match frame {
                                Ok(f) => f,
                                Err(e) => {
                                    drop(turn);
                                    return Err(e);
                                }
                            };
                            let span = tracing::debug_span!(
                                "request",
                                api = ?frame.api,
                                version = frame.version,
                                client = frame.header.client_id.as_deref().unwrap_or(""),
                            );
                            tracing::Instrument::instrument(handlers::handle(&state, frame, turn), span).await
                        });
                    }
                    Some(Err(e)) => {
                        if e.kind() == std::io::ErrorKind::InvalidData {
                            tracing::info!(%peer, error = %e, "bad frame; closing after answering earlier requests");
                        } else {
                            tracing::debug!(%peer, error = %e, "read failed");
                        }
                        reading = false;
                    }
                    None => reading = false,
                }
            }
            () = &mut idle_timer, if reading => {
                tracing::debug!(%peer, "idle; closing");
                reading = false;
            }
            () = cancel.cancelled(), if reading => reading = false,
        }
    }
    let _ = wr.shutdown().await;
}

/// Orders appends of a connection's Produce requests: ticket `n` appends once every earlier
/// ticket is done (appended, failed, or dropped).
#[derive(Debug)]
pub(crate) struct Turnstile {
    /// The lowest ticket not yet done, and done tickets above it.
    state: watch::Sender<(u64, BTreeSet<u64>)>,
}

impl Default for Turnstile {
    fn default() -> Self {
        Self {
            state: watch::channel((0, BTreeSet::new())).0,
        }
    }
}

/// One Produce request's place in its connection's order. Dropping it marks it done.
#[derive(Debug)]
pub(crate) struct Turn {
    turnstile: Arc<Turnstile>,
    ticket: u64,
}

impl Turn {
    /// Waits until every earlier Produce of this connection is done.
    pub(crate) async fn wait(&self) {
        let mut rx = self.turnstile.state.subscribe();
        let _ = rx.wait_for(|(next, _)| *next >= self.ticket).await;
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let ticket = self.ticket;
        self.turnstile.state.send_modify(|(next, done)| {
            done.insert(ticket);
            while done.remove(next) {
                *next += 1;
            }
        });
    }
}
