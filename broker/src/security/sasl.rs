//! SASL on a connection: the mechanism SaslHandshake chose, and the exchange
//! SaslAuthenticate's tokens carry. PLAIN and SCRAM-SHA-256/512 both check against the
//! SCRAM credentials in the cluster metadata (AlterUserScramCredentials), so no password is
//! stored anywhere: PLAIN derives the salted password from the one it was sent.

use std::time::Duration;

use strata_client::scram::{self, ScramHash};
use strata_controller::model::ScramCredential;
use tokio::time::Instant;

use super::Session;
use super::oauth::{self, Jwt};

/// Kafka's error codes of the SASL APIs.
pub(crate) mod code {
    pub(crate) const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
    pub(crate) const ILLEGAL_SASL_STATE: i16 = 34;
    pub(crate) const SASL_AUTHENTICATION_FAILED: i16 = 58;
}

/// A SASL mechanism this broker implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mechanism {
    Plain,
    Scram(ScramHash),
    OAuthBearer,
}

impl Mechanism {
    pub(crate) fn of_name(name: &str) -> Option<Self> {
        match name {
            "PLAIN" => Some(Self::Plain),
            "OAUTHBEARER" => Some(Self::OAuthBearer),
            other => ScramHash::of_mechanism(other).map(Self::Scram),
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::Scram(h) => h.mechanism(),
            Self::OAuthBearer => "OAUTHBEARER",
        }
    }
}

/// Where a connection's SASL exchange is.
#[derive(Debug)]
pub(crate) enum Exchange {
    /// No exchange under way.
    Idle,
    /// SaslHandshake chose the mechanism; the first token comes next.
    Chosen(Mechanism),
    /// A SCRAM exchange waits for the client's final message.
    Scram(Box<ScramServer>),
    /// An OAUTHBEARER token was refused and the error challenge sent: the client's
    /// separator comes next, and the exchange fails with this message (RFC 7628 3.2.2).
    OAuthRefused(String),
}

/// What a SaslAuthenticate answers.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// The next challenge; the exchange goes on.
    Continue(Vec<u8>),
    /// Authenticated: the last token, and how long the session lasts (0: for ever).
    Done { token: Vec<u8>, lifetime_ms: i64 },
}

/// A refused step: the error code and message answered, after which the connection closes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) code: i16,
    pub(crate) message: String,
}

/// Finds a user's credential for a mechanism.
pub(crate) type Credentials<'a> = &'a dyn Fn(&str, ScramHash) -> Option<ScramCredential>;

/// What the exchanges check against: SCRAM credentials, and OAUTHBEARER's key set when
/// that mechanism is enabled.
pub(crate) struct Verifiers<'a> {
    pub(crate) scram: Credentials<'a>,
    pub(crate) jwt: Option<&'a Jwt>,
}

impl<'a> Verifiers<'a> {
    /// SCRAM credentials only.
    #[cfg(test)]
    pub(crate) fn scram(scram: Credentials<'a>) -> Self {
        Self { scram, jwt: None }
    }
}

fn invalid(mechanism: Mechanism) -> String {
    format!(
        "Authentication failed during authentication due to invalid credentials with SASL \
         mechanism {}",
        mechanism.name()
    )
}

impl Session {
    /// SaslHandshake chose `mechanism`; with `raw`, its tokens come as bare frames (v0).
    pub(crate) fn choose(&self, mechanism: Mechanism, raw: bool) -> Result<(), Failure> {
        let mut s = self.lock();
        if !matches!(s.exchange, Exchange::Idle) {
            s.closing = true;
            return Err(Failure {
                code: code::ILLEGAL_SASL_STATE,
                message: "a SASL exchange is already under way".into(),
            });
        }
        s.exchange = Exchange::Chosen(mechanism);
        s.raw_tokens = raw;
        Ok(())
    }

    /// Marks the connection to close after this answer (a refused handshake).
    pub(crate) fn close_after_reply(&self) {
        self.lock().closing = true;
    }

    /// One SaslAuthenticate token. Sessions last `lifetime` (zero: for ever). A failure
    /// ends the connection once it is answered; re-authentication must keep the principal.
    pub(crate) fn step(
        &self,
        token: &[u8],
        verifiers: &Verifiers<'_>,
        lifetime: Duration,
        now: Instant,
    ) -> Result<Step, Failure> {
        let credentials = verifiers.scram;
        let exchange = std::mem::replace(&mut self.lock().exchange, Exchange::Idle);
        // A token's expiry bounds the session it opens.
        let mut expires_in: Option<Duration> = None;
        // The next challenge (the exchange goes on), or the user and the last token.
        let outcome: Result<Result<(String, Vec<u8>), String>, Failure> = match exchange {
            Exchange::Idle => Err(Failure {
                code: code::ILLEGAL_SASL_STATE,
                message: "SaslAuthenticate before SaslHandshake".into(),
            }),
            Exchange::Chosen(Mechanism::Plain) => plain(token, credentials).map(Ok),
            Exchange::Chosen(Mechanism::Scram(hash)) => {
                let first = std::str::from_utf8(token).map_err(|_| Failure {
                    code: code::SASL_AUTHENTICATION_FAILED,
                    message: "the client's first SCRAM message is not UTF-8".into(),
                });
                first.and_then(|first| {
                    ScramServer::start(hash, first, credentials).map(|(server, challenge)| {
                        self.lock().exchange = Exchange::Scram(Box::new(server));
                        Err(challenge)
                    })
                })
            }
            Exchange::Scram(server) => server.finish(token).map(Ok),
            Exchange::Chosen(Mechanism::OAuthBearer) => match oauth_bearer(token, verifiers.jwt) {
                Ok((user, expires)) => {
                    expires_in = Some(expires);
                    Ok(Ok((user, Vec::new())))
                }
                Err(OAuthRefusal::Malformed(message)) => Err(Failure {
                    code: code::SASL_AUTHENTICATION_FAILED,
                    message,
                }),
                Err(OAuthRefusal::Invalid(message)) => {
                    let challenge = serde_json::json!({ "status": "invalid_token" }).to_string();
                    self.lock().exchange = Exchange::OAuthRefused(message);
                    Ok(Err(challenge))
                }
            },
            Exchange::OAuthRefused(message) => Err(Failure {
                code: code::SASL_AUTHENTICATION_FAILED,
                message: format!("OAUTHBEARER authentication failed: {message}"),
            }),
        };
        let lifetime = match expires_in {
            None => lifetime,
            // Zero means "for ever": a token's end is at least a millisecond away.
            Some(e) if lifetime.is_zero() => e.max(Duration::from_millis(1)),
            Some(e) => lifetime.min(e).max(Duration::from_millis(1)),
        };
        let mut s = self.lock();
        match outcome {
            Ok(Err(challenge)) => Ok(Step::Continue(challenge.into_bytes())),
            Ok(Ok((user, token))) => {
                let principal = format!("User:{user}");
                if s.authenticated && s.principal != principal {
                    s.closing = true;
                    return Err(Failure {
                        code: code::SASL_AUTHENTICATION_FAILED,
                        message: format!(
                            "re-authentication as {principal} on a connection of {}: a \
                             connection keeps its principal",
                            s.principal
                        ),
                    });
                }
                s.principal = principal;
                s.authenticated = true;
                s.raw_tokens = false;
                s.expires = (!lifetime.is_zero()).then(|| now + lifetime);
                Ok(Step::Done {
                    token,
                    lifetime_ms: lifetime.as_millis().min(i64::MAX as u128) as i64,
                })
            }
            Err(failure) => {
                s.closing = true;
                Err(failure)
            }
        }
    }
}

/// Why an OAUTHBEARER message is refused: malformed (refused at once) or an invalid token
/// (answered with the error challenge first).
enum OAuthRefusal {
    Malformed(String),
    Invalid(String),
}

/// OAUTHBEARER: the client's first message, its token validated; the user and how long the
/// token has left.
fn oauth_bearer(token: &[u8], jwt: Option<&Jwt>) -> Result<(String, Duration), OAuthRefusal> {
    let (bearer, authzid) = oauth::client_first(token)
        .map_err(|e| OAuthRefusal::Malformed(format!("invalid OAUTHBEARER message: {e}")))?;
    let jwt = jwt.ok_or_else(|| OAuthRefusal::Invalid("no key set is configured".into()))?;
    let valid = jwt.validate(bearer).map_err(OAuthRefusal::Invalid)?;
    if authzid.is_some_and(|a| a != valid.principal_name) {
        return Err(OAuthRefusal::Invalid(format!(
            "the authorization id {authzid:?} is not the token's principal {}",
            valid.principal_name
        )));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let left = Duration::from_secs(valid.expires.saturating_sub(now));
    Ok((valid.principal_name, left))
}

/// PLAIN: `authzid NUL user NUL password`, checked against the user's SCRAM credential.
fn plain(token: &[u8], credentials: Credentials<'_>) -> Result<(String, Vec<u8>), Failure> {
    let fail = |message: String| Failure {
        code: code::SASL_AUTHENTICATION_FAILED,
        message,
    };
    let parts: Vec<&[u8]> = token.split(|b| *b == 0).collect();
    let [authzid, user, password] = parts.as_slice() else {
        return Err(fail(
            "a PLAIN token is authzid NUL user NUL password".into(),
        ));
    };
    let (Ok(authzid), Ok(user)) = (std::str::from_utf8(authzid), std::str::from_utf8(user)) else {
        return Err(fail("PLAIN user names are UTF-8".into()));
    };
    if !authzid.is_empty() && authzid != user {
        return Err(fail(
            "Authentication failed: Client requested an authorization id that is different \
             from username"
                .into(),
        ));
    }
    let matches = [ScramHash::Sha512, ScramHash::Sha256]
        .into_iter()
        .find_map(|h| credentials(user, h).map(|c| (h, c)))
        .is_some_and(|(hash, c)| {
            let iterations = u32::try_from(c.iterations).unwrap_or(0);
            let salted = hash.salted_password(password, &c.salt, iterations);
            scram::same_secret(&hash.keys(&salted).0, &c.stored_key)
        });
    match matches {
        true => Ok((user.to_owned(), Vec::new())),
        false => Err(fail(invalid(Mechanism::Plain))),
    }
}

/// The broker's side of one SCRAM exchange, between the client's first and final messages.
#[derive(Debug)]
pub(crate) struct ScramServer {
    hash: ScramHash,
    user: String,
    /// `None` for a user without a credential: the exchange runs to its end and fails there,
    /// as a wrong password does, so the answers do not tell which users exist.
    credential: Option<ScramCredential>,
    gs2_header: String,
    /// The client's part of the nonce, and the whole (the client's then the server's).
    client_nonce: String,
    nonce: String,
    first_bare: String,
    server_first: String,
}

impl ScramServer {
    /// Reads the client's first message; answers the server's first.
    fn start(
        hash: ScramHash,
        first: &str,
        credentials: Credentials<'_>,
    ) -> Result<(Self, String), Failure> {
        let fail = |message: &str| Failure {
            code: code::SASL_AUTHENTICATION_FAILED,
            message: format!("invalid SCRAM client-first message: {message}"),
        };
        // gs2-header: a channel-binding flag and an optional authzid, then the bare message.
        let mut parts = first.splitn(3, ',');
        let (Some(flag), Some(authzid), Some(bare)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(fail("no gs2 header"));
        };
        if flag != "n" && flag != "y" {
            return Err(fail("channel binding is not supported"));
        }
        let attrs = scram::attributes(bare);
        let user = match attrs.first() {
            Some(('n', name)) => scram::unescape_name(name).ok_or_else(|| fail("bad user name"))?,
            _ => return Err(fail("no user name")),
        };
        let client_nonce = match attrs.get(1) {
            Some(('r', nonce)) if !nonce.is_empty() => *nonce,
            _ => return Err(fail("no nonce")),
        };
        if attrs.iter().any(|(k, _)| *k == 'm') {
            return Err(fail("mandatory extensions are not supported"));
        }
        // Kafka's delegation-token extension: there are no delegation tokens here.
        if bare.contains("tokenauth=true") {
            return Err(fail("delegation tokens are not supported"));
        }
        if let Some(a) = authzid.strip_prefix("a=")
            && scram::unescape_name(a).as_deref() != Some(user.as_str())
        {
            return Err(fail("the authorization id is not the user name"));
        }
        let credential = credentials(&user, hash);
        let (salt, iterations) = match &credential {
            Some(c) => (c.salt.clone(), c.iterations),
            None => (scram::random_bytes(16), scram::MIN_ITERATIONS as i32),
        };
        let nonce = format!("{client_nonce}{}", scram::nonce());
        let server_first = format!("r={nonce},s={},i={iterations}", scram::b64(&salt));
        let server = Self {
            hash,
            user,
            credential,
            gs2_header: format!("{flag},{authzid},"),
            client_nonce: client_nonce.to_owned(),
            nonce,
            first_bare: bare.to_owned(),
            server_first: server_first.clone(),
        };
        Ok((server, server_first))
    }

    /// Checks the client's final message: answers the user and the server's final message.
    fn finish(&self, token: &[u8]) -> Result<(String, Vec<u8>), Failure> {
        let fail = |message: String| Failure {
            code: code::SASL_AUTHENTICATION_FAILED,
            message,
        };
        let last = std::str::from_utf8(token)
            .map_err(|_| fail("the client's final SCRAM message is not UTF-8".into()))?;
        let (without_proof, proof) = last
            .rsplit_once(",p=")
            .ok_or_else(|| fail("the client's final SCRAM message has no proof".into()))?;
        let attrs = scram::attributes(without_proof);
        let binding = attrs.iter().find(|(k, _)| *k == 'c').map(|(_, v)| *v);
        let nonce = attrs.iter().find(|(k, _)| *k == 'r').map(|(_, v)| *v);
        // RFC 5802: the nonce is the server's. librdkafka before 2.6.1 (still what Debian
        // 12 and many images ship) sends the client's part once more in front of it, and
        // Kafka 3.8.1 to 3.9 accept that; so does Strata, and nothing else (the fresh server
        // nonce must be in it either way, so a replayed exchange still fails).
        let legacy = format!("{}{}", self.client_nonce, self.nonce);
        let nonce_ok = nonce == Some(self.nonce.as_str()) || nonce == Some(legacy.as_str());
        if binding != Some(scram::b64(self.gs2_header.as_bytes()).as_str()) || !nonce_ok {
            return Err(fail(
                "the client's final SCRAM message does not match its first".into(),
            ));
        }
        let proof = scram::unb64(proof).unwrap_or_default();
        let auth = format!("{},{},{without_proof}", self.first_bare, self.server_first);
        let Some(c) = &self.credential else {
            return Err(fail(invalid(Mechanism::Scram(self.hash))));
        };
        let signature = self.hash.hmac_of(&c.stored_key, auth.as_bytes());
        if proof.len() != signature.len() {
            return Err(fail(invalid(Mechanism::Scram(self.hash))));
        }
        let client_key = scram::xor(&proof, &signature);
        if !scram::same_secret(&self.hash.hash(&client_key), &c.stored_key) {
            return Err(fail(invalid(Mechanism::Scram(self.hash))));
        }
        let verifier = self.hash.hmac_of(&c.server_key, auth.as_bytes());
        let server_final = format!("v={}", scram::b64(&verifier));
        Ok((self.user.clone(), server_final.into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use strata_client::scram::ScramClient;

    use super::*;

    fn credential(hash: ScramHash, password: &str) -> ScramCredential {
        let salt = scram::random_bytes(16);
        let salted = hash.salted_password(password.as_bytes(), &salt, 4096);
        let (stored_key, server_key) = hash.keys(&salted);
        ScramCredential {
            salt,
            stored_key,
            server_key,
            iterations: 4096,
        }
    }

    fn users() -> BTreeMap<(String, &'static str), ScramCredential> {
        let mut m = BTreeMap::new();
        m.insert(
            ("alice".to_owned(), "SCRAM-SHA-512"),
            credential(ScramHash::Sha512, "secret"),
        );
        m
    }

    fn sasl_session() -> Session {
        let listener = std::sync::Arc::new(super::super::Listener {
            name: "SASL_PLAINTEXT".into(),
            protocol: super::super::SecurityProtocol::SaslPlaintext,
            client_auth: super::super::config::ClientAuth::None,
            inter_broker: false,
        });
        Session::new(
            listener,
            std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
            None,
        )
    }

    /// Runs a SCRAM exchange as `user` with `password`; the client's verdict on the server.
    fn scram_exchange(session: &Session, user: &str, password: &str) -> Result<(), Failure> {
        let known = users();
        let lookup = |u: &str, h: ScramHash| known.get(&(u.to_owned(), h.mechanism())).cloned();
        session.choose(Mechanism::Scram(ScramHash::Sha512), false)?;
        let mut client = ScramClient::new(ScramHash::Sha512, user, password);
        let now = Instant::now();
        let life = Duration::from_secs(60);
        let Step::Continue(first) = session.step(
            client.first().as_bytes(),
            &Verifiers::scram(&lookup),
            life,
            now,
        )?
        else {
            panic!("SCRAM takes two steps");
        };
        let last = client
            .last(std::str::from_utf8(&first).expect("utf-8"))
            .expect("client final");
        match session.step(last.as_bytes(), &Verifiers::scram(&lookup), life, now)? {
            Step::Done { token, lifetime_ms } => {
                assert_eq!(lifetime_ms, 60_000);
                client
                    .verify(std::str::from_utf8(&token).expect("utf-8"))
                    .expect("the broker proves it knows the credential");
                Ok(())
            }
            Step::Continue(_) => panic!("SCRAM ends after two steps"),
        }
    }

    #[test]
    fn scram_authenticates_the_right_password_only() {
        let s = sasl_session();
        assert!(!s.authenticated());
        scram_exchange(&s, "alice", "secret").expect("authenticated");
        assert_eq!(
            (s.principal().as_str(), s.authenticated()),
            ("User:alice", true)
        );
        for (user, password) in [("alice", "wrong"), ("mallory", "secret")] {
            let s = sasl_session();
            let refused = scram_exchange(&s, user, password).expect_err("refused");
            assert_eq!(refused.code, code::SASL_AUTHENTICATION_FAILED);
            assert!(
                refused.message.contains("invalid credentials"),
                "{}",
                refused.message
            );
            assert!(s.closing() && !s.authenticated());
        }
    }

    /// librdkafka before 2.6.1 repeats its nonce in the final message: accepted, as Kafka
    /// 3.8.1 to 3.9 do; any other nonce is not.
    #[test]
    fn the_nonce_librdkafka_repeated_is_accepted_and_no_other() {
        let known = users();
        let lookup = |u: &str, h: ScramHash| known.get(&(u.to_owned(), h.mechanism())).cloned();
        let hash = ScramHash::Sha512;
        let now = Instant::now();
        for (doubled, accepted) in [(true, true), (false, false)] {
            let s = sasl_session();
            s.choose(Mechanism::Scram(hash), false).expect("chosen");
            let first = "n,,n=alice,r=cnonce";
            let Ok(Step::Continue(server_first)) = s.step(
                first.as_bytes(),
                &Verifiers::scram(&lookup),
                Duration::ZERO,
                now,
            ) else {
                panic!("first step");
            };
            let server_first = String::from_utf8(server_first).expect("utf-8");
            let full = server_first
                .strip_prefix("r=")
                .and_then(|r| r.split(',').next())
                .expect("nonce");
            let sent = match doubled {
                true => format!("cnonce{full}"),
                false => format!("other{full}"),
            };
            let c = &known[&("alice".to_owned(), "SCRAM-SHA-512")];
            let salted = hash.salted_password(b"secret", &c.salt, 4096);
            let without_proof = format!("c=biws,r={sent}");
            let auth = format!("n=alice,r=cnonce,{server_first},{without_proof}");
            let proof = hash.client_proof(&salted, auth.as_bytes());
            let last = format!("{without_proof},p={}", scram::b64(&proof));
            let result = s.step(
                last.as_bytes(),
                &Verifiers::scram(&lookup),
                Duration::ZERO,
                now,
            );
            assert_eq!(result.is_ok(), accepted, "{sent}: {result:?}");
        }
    }

    #[test]
    fn plain_checks_the_password_against_the_scram_credential() {
        let known = users();
        let lookup = |u: &str, h: ScramHash| known.get(&(u.to_owned(), h.mechanism())).cloned();
        let now = Instant::now();
        let s = sasl_session();
        s.choose(Mechanism::Plain, false).expect("chosen");
        let done = s.step(
            b"\0alice\0secret",
            &Verifiers::scram(&lookup),
            Duration::ZERO,
            now,
        );
        assert_eq!(
            done,
            Ok(Step::Done {
                token: Vec::new(),
                lifetime_ms: 0
            })
        );
        for token in [&b"\0alice\0nope"[..], b"bob\0alice\0secret", b"garbage"] {
            let s = sasl_session();
            s.choose(Mechanism::Plain, false).expect("chosen");
            let refused = s
                .step(token, &Verifiers::scram(&lookup), Duration::ZERO, now)
                .expect_err("refused");
            assert_eq!(refused.code, code::SASL_AUTHENTICATION_FAILED);
        }
    }

    #[test]
    fn requests_wait_for_authentication_and_sessions_end() {
        use kafka_protocol::messages::ApiKey;
        let s = sasl_session();
        let now = Instant::now();
        assert!(s.admit(ApiKey::Metadata, now).is_err());
        assert!(s.admit(ApiKey::SaslHandshake, now).is_ok());
        // Authenticate without a handshake: refused, and the state is illegal.
        let nobody = |_: &str, _: ScramHash| None;
        let refused = s
            .step(b"x", &Verifiers::scram(&nobody), Duration::ZERO, now)
            .expect_err("no handshake");
        assert_eq!(refused.code, code::ILLEGAL_SASL_STATE);
        let s = sasl_session();
        scram_exchange(&s, "alice", "secret").expect("authenticated");
        assert!(s.admit(ApiKey::Metadata, now).is_ok());
        let later = now + Duration::from_secs(61);
        assert!(
            s.admit(ApiKey::Metadata, later).is_err(),
            "the session ended"
        );
        assert!(s.admit(ApiKey::SaslHandshake, later).is_ok());
        // Re-authentication as the same principal renews it.
        scram_exchange(&s, "alice", "secret").expect("re-authenticated");
    }
}
