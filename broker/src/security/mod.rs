//! Who a connection is and how it proved it: the listeners and their security protocols
//! ([`config`]), TLS with optional client certificates ([`tls`]), SASL PLAIN and SCRAM
//! ([`sasl`]), and the principal each request runs as ([`Session`]).
//!
//! A connection on a SASL listener may send only ApiVersions, SaslHandshake and
//! SaslAuthenticate, one at a time, until it has authenticated; anything else closes it, as
//! Kafka does. With `kafka.sasl.max_reauth_ms` its session ends after that long (KIP-368):
//! the client re-authenticates on the same connection (as the same principal) before then,
//! or its next request closes the connection.

pub(crate) mod acl;
pub mod config;
pub(crate) mod mapping;
pub(crate) mod oauth;
pub(crate) mod sasl;
pub(crate) mod tls;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use kafka_protocol::messages::ApiKey;
use tokio::time::Instant;

pub use self::config::SecurityProtocol;
use self::sasl::Exchange;

/// The principal of an unauthenticated connection (Kafka's `User:ANONYMOUS`).
pub(crate) const ANONYMOUS: &str = "User:ANONYMOUS";

/// A listener as its connections see it.
#[derive(Debug)]
pub(crate) struct Listener {
    pub(crate) name: String,
    pub(crate) protocol: SecurityProtocol,
    /// Whether its TLS handshake asks for a client certificate.
    pub(crate) client_auth: config::ClientAuth,
    /// The main listener: it carries the brokers' own traffic.
    pub(crate) inter_broker: bool,
}

/// One connection's security state.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) listener: Arc<Listener>,
    pub(crate) peer: SocketAddr,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    principal: String,
    /// Whether requests other than the SASL ones may be served.
    authenticated: bool,
    /// When the authenticated session ends (KIP-368).
    expires: Option<Instant>,
    exchange: Exchange,
    /// After a SaslHandshake v0 the client sends the exchange's tokens as bare
    /// size-prefixed frames, not SaslAuthenticate requests, until it has authenticated.
    raw_tokens: bool,
    /// The connection is to close once the response in progress is written.
    closing: bool,
    /// Until when the client is throttled by its quotas: no request after the one that
    /// went over is taken before then.
    throttled_until: Option<Instant>,
}

impl Session {
    /// A connection's session: on a SASL listener it starts unauthenticated; otherwise it
    /// runs as the TLS client certificate's subject, or anonymously.
    pub(crate) fn new(
        listener: Arc<Listener>,
        peer: SocketAddr,
        tls_principal: Option<String>,
    ) -> Self {
        let sasl = listener.protocol.sasl();
        Self {
            listener,
            peer,
            state: Mutex::new(State {
                principal: tls_principal
                    .filter(|_| !sasl)
                    .unwrap_or_else(|| ANONYMOUS.to_owned()),
                authenticated: !sasl,
                expires: None,
                exchange: Exchange::Idle,
                raw_tokens: false,
                closing: false,
                throttled_until: None,
            }),
        }
    }

    /// A session for requests that come from no connection (tests, fuzzing).
    pub(crate) fn detached() -> Arc<Self> {
        let listener = Arc::new(Listener {
            name: SecurityProtocol::Plaintext.name().to_owned(),
            protocol: SecurityProtocol::Plaintext,
            client_auth: config::ClientAuth::None,
            inter_broker: true,
        });
        Arc::new(Self::new(
            listener,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            None,
        ))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Who the requests run as, e.g. `User:alice`.
    pub(crate) fn principal(&self) -> String {
        self.lock().principal.clone()
    }

    /// Whether the connection came in on the listener the brokers' own traffic uses.
    pub(crate) fn inter_broker(&self) -> bool {
        self.listener.inter_broker
    }

    /// Runs the session as `principal` (tests).
    #[cfg(test)]
    pub(crate) fn set_principal(&self, principal: &str) {
        self.lock().principal = principal.to_owned();
    }

    /// Whether the connection has authenticated (always, off SASL listeners).
    pub(crate) fn authenticated(&self) -> bool {
        self.lock().authenticated
    }

    /// Whether a request of `api` may be served now; `Err` says why the connection closes.
    pub(crate) fn admit(&self, api: ApiKey, now: Instant) -> Result<(), String> {
        let s = self.lock();
        let sasl_api = matches!(
            api,
            ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
        );
        if !s.authenticated && !sasl_api {
            return Err(format!(
                "unexpected {api:?} request before SASL authentication on listener {}",
                self.listener.name
            ));
        }
        if s.expires.is_some_and(|e| e <= now) && !sasl_api {
            return Err(format!(
                "{api:?} request after the authenticated session of {} ended; the client \
                 did not re-authenticate (kafka.sasl.max_reauth_ms)",
                s.principal
            ));
        }
        Ok(())
    }

    /// Throttles the connection's client until at least `until` (see `crate::quota`).
    pub(crate) fn throttle_until(&self, until: Instant) {
        let mut s = self.lock();
        if s.throttled_until.is_none_or(|t| t < until) {
            s.throttled_until = Some(until);
        }
    }

    /// Until when the client is throttled, if it still is at `now`.
    pub(crate) fn throttled_at(&self, now: Instant) -> Option<Instant> {
        self.lock().throttled_until.filter(|t| *t > now)
    }

    /// Whether the next frame is a bare SASL token (after a SaslHandshake v0).
    pub(crate) fn raw_tokens(&self) -> bool {
        self.lock().raw_tokens
    }

    /// Whether the connection closes once the response being written is out (a failed
    /// authentication).
    pub(crate) fn closing(&self) -> bool {
        self.lock().closing
    }
}
