//! One client connection: size-prefixed frames in, responses out in request order.
//!
//! Frames are read through a length-delimited codec that refuses a size above
//! `kafka.max_request_bytes` before allocating. Requests are handled concurrently (pipelining)
//! up to `kafka.max_in_flight_requests`; past that the connection is not read until the oldest
//! answers. Responses are written in request order, as Kafka requires. A connection that sends
//! nothing for `kafka.idle_timeout_ms` is closed. On shutdown the connection stops reading and
//! finishes the requests it has.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

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
                        if let Err(e) = wr.write_all(&bytes).await {
                            tracing::debug!(%peer, error = %e, "write failed; closing");
                            return;
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
                        in_flight.push_back(async move {
                            let frame = parse_frame(buf.freeze())?;
                            let span = tracing::debug_span!(
                                "request",
                                api = ?frame.api,
                                version = frame.version,
                                client = frame.header.client_id.as_deref().unwrap_or(""),
                            );
                            tracing::Instrument::instrument(handlers::handle(&state, frame), span).await
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
