//! The HTTP listener (`http.listen`): `/metrics` for Prometheus, `/healthz` and `/readyz`
//! for probes, and the web console (`console`) at `/`.
//!
//! `/healthz` answers 200 while the process serves HTTP at all. `/readyz` answers 200 only
//! when every check passes and 503 otherwise, with a JSON body naming each check and what is
//! wrong: the Kafka listener accepts; the metadata is current (the controller answered a
//! heartbeat within the session timeout and this broker has applied what it answered); the
//! object store answered within `STORE_FRESH` (an idle store is probed, see
//! [`probe_store`]); and no partition this broker leads is still reading its manifest.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use object_store::ObjectStoreExt;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::console::{self, Console};
use crate::error::BrokerError;
use crate::partition::role::Role;
use crate::scrape::QuorumMember;
use crate::state::BrokerState;

/// How recently the object store must have answered for the broker to be ready.
pub(crate) const STORE_FRESH: Duration = Duration::from_secs(15);

/// How often an otherwise idle store is asked something, and how long that may take.
const PROBE_EVERY: Duration = Duration::from_secs(5);

/// How long `/readyz` waits for the metadata to reach what the controller reported.
const METADATA_WAIT: Duration = Duration::from_secs(1);

/// What the handlers read.
#[derive(Clone)]
struct Shared {
    state: Arc<BrokerState>,
    quorum: Option<QuorumMember>,
}

/// Binds `http.listen`; None when it is empty (the listener is off).
pub(crate) async fn bind(listen: &str) -> Result<Option<TcpListener>, BrokerError> {
    if listen.is_empty() {
        return Ok(None);
    }
    TcpListener::bind(listen)
        .await
        .map(Some)
        .map_err(|e| BrokerError::Config {
            key: "http.listen".into(),
            reason: format!("cannot listen on {listen}: {e}"),
        })
}

/// Serves the routes on `listener` until `cancel`; the console reads the cluster through
/// the Kafka listener at `kafka`.
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<BrokerState>,
    quorum: Option<QuorumMember>,
    kafka: SocketAddr,
    cancel: CancellationToken,
) {
    let console = Router::new()
        .route("/", get(console::overview))
        .route("/topics", get(console::topics))
        .route("/topics/{name}", get(console::topic))
        .route("/topics/{name}/records", get(console::records))
        .route("/groups", get(console::groups))
        .route("/groups/{id}", get(console::group))
        .with_state(Console::new(kafka));
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Shared { state, quorum })
        .merge(console);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await;
    if let Err(e) = served {
        tracing::warn!(error = %e, "the HTTP listener stopped");
    }
}

async fn metrics(State(s): State<Shared>) -> Response {
    // Scrapes read every hosted partition's state: off the async threads.
    let text =
        tokio::task::spawn_blocking(move || crate::scrape::render(&s.state, s.quorum.as_ref()))
            .await
            .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        text,
    )
        .into_response()
}

async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(s): State<Shared>) -> Response {
    let state = &s.state;
    let mut checks = serde_json::Map::new();
    let mut ready = true;
    let mut check = |name: &str, problem: Option<String>| {
        ready &= problem.is_none();
        let value = match problem {
            None => json!({"ok": true}),
            Some(p) => json!({"ok": false, "problem": p}),
        };
        checks.insert(name.to_owned(), value);
    };
    check(
        "kafka_listener",
        (!state.serving()).then(|| "the Kafka listener is not accepting connections".into()),
    );
    check("metadata", metadata_problem(state).await);
    check("object_store", store_problem(state));
    check("partitions", recovering_problem(state));
    let code = match ready {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    };
    (code, axum::Json(json!({"ready": ready, "checks": checks}))).into_response()
}

async fn metadata_problem(state: &BrokerState) -> Option<String> {
    let reported = state
        .leader_version
        .load(std::sync::atomic::Ordering::SeqCst);
    if !state.wait_for_version(reported, METADATA_WAIT).await {
        return Some(format!(
            "metadata at version {} behind the controller's {reported}",
            state.image().version
        ));
    }
    (!state.lease.current(state.image().version))
        .then(|| "no heartbeat answered by the controller within the session timeout".into())
}

fn store_problem(state: &BrokerState) -> Option<String> {
    let store = &state.metrics.store;
    let since = store.since_answer();
    match since {
        Some(age) if age <= STORE_FRESH && !store.failing() => None,
        Some(age) if age <= STORE_FRESH => Some(format!(
            "the object store fails: {}",
            store.last_error().unwrap_or_default()
        )),
        Some(age) => Some(format!(
            "the object store has not answered for {:.1}s{}",
            age.as_secs_f64(),
            store
                .last_error()
                .map_or_else(String::new, |e| format!("; last error: {e}"))
        )),
        None => Some("the object store has not answered yet".into()),
    }
}

fn recovering_problem(state: &BrokerState) -> Option<String> {
    let recovering: Vec<String> = state
        .partitions
        .hosted()
        .into_iter()
        .filter(|p| matches!(p.role(), Role::Leader { .. }) && p.recovering())
        .map(|p| format!("{}-{}", p.topic, p.index))
        .collect();
    match recovering.len() {
        0 => None,
        n => Some(format!(
            "{n} led partitions still reading their manifests: {}",
            recovering
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Asks the object store something cheap (a HEAD of a key that need not exist) whenever it
/// has not answered anything else for [`PROBE_EVERY`], so `/readyz` knows it is there even
/// when nothing is uploaded or read. A busy store is never probed.
pub(crate) async fn probe_store(state: Arc<BrokerState>, cancel: CancellationToken) {
    let key = state.tiering.prefix().clone().join("strata-probe");
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if state
            .metrics
            .store
            .since_answer()
            .is_some_and(|age| age < PROBE_EVERY)
        {
            continue;
        }
        // The layer records the answer (or its absence); the outcome itself is not needed.
        let _ = tokio::time::timeout(PROBE_EVERY, state.tiering.store().head(&key)).await;
    }
}

/// The address the HTTP listener is bound to, if any.
pub(crate) fn local_addr(listener: &Option<TcpListener>) -> Option<SocketAddr> {
    listener.as_ref().and_then(|l| l.local_addr().ok())
}
