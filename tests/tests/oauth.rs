//! SASL/OAUTHBEARER on the wire: a token signed by a key of the broker's JSON Web Key Set
//! authenticates as the token's subject (whom ACLs then see); a token signed by another key,
//! expired, for another audience or naming an unknown key is refused, and the broker serves
//! on. The protocol's error exchange (RFC 7628: an error challenge, the client's separator,
//! then the failure) is checked step by step. (The compatibility suite runs kafka-python's
//! OAUTHBEARER against the broker as well: the librdkafka built into these tests has no
//! OAUTHBEARER without OpenSSL.)

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
use kafka_protocol::protocol::StrBytes;
use serde_json::json;
use strata_broker::config::{ListenerConfig, SecurityProtocol};
use strata_client::Client;
use strata_client::acls::Acl;
use strata_tests::{RawClient, TestBroker};

const ISSUER: &str = "https://login.example";
const AUDIENCE: &str = "strata";

/// An ECDSA P-256 signing key and its public JWK named `kid`.
fn key_pair(kid: &str) -> (Arc<EncodingKey>, serde_json::Value) {
    let pair = rcgen::KeyPair::generate().expect("key");
    let raw = pair.public_key_raw();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
        "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
    });
    (
        Arc::new(EncodingKey::from_ec_der(&pair.serialize_der())),
        jwk,
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// What a client's token says and what signs it.
#[derive(Clone)]
struct Tokens {
    key: Arc<EncodingKey>,
    kid: String,
    subject: String,
    audience: String,
    /// Seconds from now; negative: already expired.
    expires_in: i64,
}

impl Tokens {
    fn token(&self) -> (String, i64) {
        let exp = now() as i64 + self.expires_in;
        let claims = json!({
            "sub": self.subject, "iss": ISSUER, "aud": self.audience,
            "iat": now(), "exp": exp,
        });
        let header = Header {
            kid: Some(self.kid.clone()),
            ..Header::new(Algorithm::ES256)
        };
        let token = jsonwebtoken::encode(&header, &claims, &self.key).expect("signed");
        (token, exp)
    }
}

struct Setup {
    broker: TestBroker,
    key: Arc<EncodingKey>,
    _dir: tempfile::TempDir,
}

/// A broker with an OAUTHBEARER listener (`OAUTH`) trusting one key (`k1`).
async fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, jwk) = key_pair("k1");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({ "keys": [jwk] }).to_string()).expect("jwks");
    let broker = TestBroker::start_with(move |c| {
        c.kafka.listeners = vec![ListenerConfig {
            name: "OAUTH".into(),
            listen: "127.0.0.1:0".into(),
            advertised: None,
            security_protocol: Some(SecurityProtocol::SaslPlaintext),
            client_auth: None,
        }];
        c.kafka.sasl.mechanisms = vec!["OAUTHBEARER".into()];
        c.kafka.sasl.failed_authentication_delay_ms = 10;
        c.kafka.sasl.oauthbearer.jwks_file = Some(jwks.clone());
        c.kafka.sasl.oauthbearer.expected_issuer = Some(ISSUER.into());
        c.kafka.sasl.oauthbearer.expected_audience = vec![AUDIENCE.into()];
        c.kafka.authorization.enable = true;
    })
    .await;
    Setup {
        broker,
        key,
        _dir: dir,
    }
}

/// A connection to the OAUTHBEARER listener that authenticated with `tokens`' token, or the
/// refusal's message (after RFC 7628's error challenge).
async fn authenticate(broker: &TestBroker, tokens: &Tokens) -> Result<RawClient, String> {
    let mut raw = RawClient::connect(broker.listener("OAUTH")).await;
    let handshake =
        SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("OAUTHBEARER"));
    assert_eq!(raw.call(1, &handshake).await.error_code, 0);
    let (token, _) = tokens.token();
    let message = Bytes::from(format!("n,,\u{1}auth=Bearer {token}\u{1}\u{1}"));
    let answer = raw
        .call(
            2,
            &SaslAuthenticateRequest::default().with_auth_bytes(message),
        )
        .await;
    if answer.error_code == 0 && answer.auth_bytes.is_empty() {
        return Ok(raw);
    }
    let failed = raw
        .call(
            2,
            &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from_static(b"\x01")),
        )
        .await;
    assert_eq!(failed.error_code, 58, "SASL_AUTHENTICATION_FAILED");
    Err(failed
        .error_message
        .map(|m| m.to_string())
        .unwrap_or_default())
}

/// Produces one record on an authenticated connection; the partition's error code.
async fn produce(raw: &mut RawClient) -> i16 {
    let batch = strata_storage::BatchBuilder::new()
        .value(None, b"v", 1)
        .build();
    let r = raw
        .call(9, &strata_tests::produce_request("tokens", 0, batch))
        .await;
    r.responses[0].partition_responses[0].error_code
}

/// A token signed by a key of the set authenticates as its subject, whom ACLs then see;
/// tokens signed by another key, expired, for another audience or from another issuer are
/// refused, and the broker serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_token_authenticates_its_subject_and_bad_tokens_are_refused() {
    let s = setup().await;
    let admin = Client::connect(&s.broker.bootstrap())
        .await
        .expect("main listener");
    admin
        .create_topic("tokens", 1, 1, &Default::default())
        .await
        .expect("topic");
    admin
        .create_acls(&[Acl {
            resource_type: "topic".into(),
            resource_name: "tokens".into(),
            pattern_type: "literal".into(),
            principal: "User:svc-orders".into(),
            host: "*".into(),
            operation: "write".into(),
            permission: "allow".into(),
        }])
        .await
        .expect("ACL");
    let good = Tokens {
        key: s.key.clone(),
        kid: "k1".into(),
        subject: "svc-orders".into(),
        audience: AUDIENCE.into(),
        expires_in: 600,
    };
    let mut orders = authenticate(&s.broker, &good).await.expect("authenticated");
    assert_eq!(produce(&mut orders).await, 0, "svc-orders may write");
    let intruder = Tokens {
        subject: "intruder".into(),
        ..good.clone()
    };
    let mut other = authenticate(&s.broker, &intruder)
        .await
        .expect("authenticated");
    assert_eq!(
        produce(&mut other).await,
        29,
        "TOPIC_AUTHORIZATION_FAILED for a subject without ACLs"
    );

    let (stranger, _) = key_pair("k1");
    let refused = [
        (
            Tokens {
                key: stranger,
                ..good.clone()
            },
            "InvalidSignature",
        ),
        (
            Tokens {
                expires_in: -3600,
                ..good.clone()
            },
            "ExpiredSignature",
        ),
        (
            Tokens {
                audience: "elsewhere".into(),
                ..good.clone()
            },
            "InvalidAudience",
        ),
        (
            Tokens {
                kid: "k9".into(),
                ..good.clone()
            },
            "no key",
        ),
    ];
    for (tokens, why) in refused {
        let message = authenticate(&s.broker, &tokens)
            .await
            .err()
            .unwrap_or_else(|| panic!("accepted a token that should fail with {why}"));
        assert!(message.contains(why), "{why}: {message}");
    }
    admin.cluster().await.expect("still serving");
    s.broker.stop().await;
}

/// On the wire: a valid token authenticates with an empty server message and a session as
/// long as the token lives; an invalid one gets RFC 7628's error challenge, and the client's
/// separator then the failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_error_exchange_follows_rfc_7628() {
    let s = setup().await;
    let tokens = Tokens {
        key: s.key.clone(),
        kid: "k1".into(),
        subject: "alice".into(),
        audience: AUDIENCE.into(),
        expires_in: 120,
    };
    let message = |token: &str| Bytes::from(format!("n,,\u{1}auth=Bearer {token}\u{1}\u{1}"));
    let handshake =
        SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("OAUTHBEARER"));

    let mut raw = RawClient::connect(s.broker.listener("OAUTH")).await;
    assert_eq!(raw.call(1, &handshake).await.error_code, 0);
    let (token, _) = tokens.token();
    let done = raw
        .call(
            2,
            &SaslAuthenticateRequest::default().with_auth_bytes(message(&token)),
        )
        .await;
    assert_eq!(done.error_code, 0, "{:?}", done.error_message);
    assert!(done.auth_bytes.is_empty());
    assert!(
        (100_000..=120_000).contains(&done.session_lifetime_ms),
        "the session ends with the token: {} ms",
        done.session_lifetime_ms
    );

    let mut raw = RawClient::connect(s.broker.listener("OAUTH")).await;
    assert_eq!(raw.call(1, &handshake).await.error_code, 0);
    let (expired, _) = Tokens {
        expires_in: -3600,
        ..tokens
    }
    .token();
    let challenge = raw
        .call(
            2,
            &SaslAuthenticateRequest::default().with_auth_bytes(message(&expired)),
        )
        .await;
    assert_eq!(challenge.error_code, 0);
    let error: serde_json::Value =
        serde_json::from_slice(&challenge.auth_bytes).expect("a JSON error challenge");
    assert_eq!(error["status"], "invalid_token");
    let failed = raw
        .call(
            2,
            &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from_static(b"\x01")),
        )
        .await;
    assert_eq!(failed.error_code, 58, "SASL_AUTHENTICATION_FAILED");
    assert!(
        failed
            .error_message
            .as_ref()
            .is_some_and(|m| m.contains("xpired")),
        "{:?}",
        failed.error_message
    );
    assert!(raw.closed_within(Duration::from_secs(5)).await);
    s.broker.stop().await;
}
