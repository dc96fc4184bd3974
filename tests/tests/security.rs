//! Listeners with TLS and SASL, as clients meet them: SCRAM-SHA-512 and PLAIN over
//! SASL_SSL, mutual TLS, the refusals (wrong password, unknown user, a certificate from
//! another CA, no certificate, a plaintext client on the TLS port, requests before
//! authenticating, an ended session), hostile input on the authentication path, and SCRAM
//! users managed with stratactl's calls. After each refusal the broker serves on.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiVersionsRequest, MetadataRequest, SaslAuthenticateRequest, SaslHandshakeRequest,
};
use kafka_protocol::protocol::StrBytes;
use rcgen::DnType;
use strata_broker::config::{ClientAuth, ListenerConfig, SecurityProtocol};
use strata_client::security::{Sasl, Security, tls_config};
use strata_client::{Client, ClientError, NewRecord};
use strata_tests::pki::{Authority, Issued};
use strata_tests::{RawClient, TestBroker};

const TIMEOUT: Duration = Duration::from_secs(10);

struct Setup {
    broker: TestBroker,
    ca: Authority,
    _dir: tempfile::TempDir,
}

fn listener(name: &str, protocol: SecurityProtocol, auth: Option<ClientAuth>) -> ListenerConfig {
    ListenerConfig {
        name: name.into(),
        listen: "127.0.0.1:0".into(),
        advertised: None,
        security_protocol: Some(protocol),
        client_auth: auth,
    }
}

/// A broker with a SASL_SSL listener (`SECURE`), an mTLS one (`MTLS`, client certificates
/// required) and a SASL_PLAINTEXT one (`INTERNAL`), beside its plaintext one; user `alice`
/// with a SCRAM-SHA-512 password.
async fn setup(
    tweak: impl Fn(&mut strata_broker::config::BrokerConfig) + Send + Sync + 'static,
) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Authority::new(dir.path(), "test-ca");
    let Issued { cert, key } = ca.broker("broker");
    let ca_file = ca.cert.clone();
    let broker = TestBroker::start_with(move |c| {
        c.kafka.listeners = vec![
            listener("SECURE", SecurityProtocol::SaslSsl, None),
            listener("MTLS", SecurityProtocol::Ssl, Some(ClientAuth::Required)),
            listener("INTERNAL", SecurityProtocol::SaslPlaintext, None),
        ];
        c.kafka.tls.cert_file = Some(cert.clone());
        c.kafka.tls.key_file = Some(key.clone());
        c.kafka.tls.client_ca_file = Some(ca_file.clone());
        c.kafka.tls.handshake_timeout_ms = 1000;
        c.kafka.sasl.mechanisms = vec!["SCRAM-SHA-512".into(), "PLAIN".into()];
        c.kafka.sasl.failed_authentication_delay_ms = 10;
        tweak(c);
    })
    .await;
    let admin = Client::connect(&broker.bootstrap())
        .await
        .expect("plaintext");
    admin
        .set_scram_password("alice", "SCRAM-SHA-512", "alice-secret", 4096)
        .await
        .expect("create alice");
    Setup {
        broker,
        ca,
        _dir: dir,
    }
}

fn sasl(ca: &Authority, mechanism: &str, user: &str, password: &str) -> Security {
    Security {
        tls: Some(std::sync::Arc::new(
            tls_config(Some(&ca.cert), None, None).expect("tls"),
        )),
        sasl: Some(Sasl {
            mechanism: mechanism.into(),
            username: user.into(),
            password: password.into(),
        }),
    }
}

async fn connect(addr: std::net::SocketAddr, security: Security) -> Result<Client, ClientError> {
    Client::connect_secured(&addr.to_string(), TIMEOUT, security).await
}

/// The broker serves a plaintext client: it survived whatever came before.
async fn healthy(broker: &TestBroker) {
    let c = Client::connect(&broker.bootstrap())
        .await
        .expect("plaintext client");
    c.cluster().await.expect("metadata");
}

fn refused_for_credentials(e: &ClientError) -> bool {
    matches!(e, ClientError::Authentication { reason, .. } if reason.contains("invalid credentials"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_and_plain_over_sasl_ssl_produce_and_consume_and_bad_credentials_are_refused() {
    let s = setup(|_| {}).await;
    let secure = s.broker.listener("SECURE");
    let client = connect(
        secure,
        sasl(&s.ca, "SCRAM-SHA-512", "alice", "alice-secret"),
    )
    .await
    .expect("alice over SASL_SSL");
    // Clients on this listener are told its address, not the plaintext one's.
    let (brokers, _) = client.cluster().await.expect("metadata");
    assert_eq!(
        brokers.iter().map(|b| b.port).collect::<Vec<_>>(),
        vec![i32::from(secure.port())]
    );
    client
        .create_topic("secured", 1, -1, &Default::default())
        .await
        .expect("create");
    let record = NewRecord {
        key: Some(Bytes::from_static(b"k")),
        value: Some(Bytes::from_static(b"over TLS")),
        ..NewRecord::default()
    };
    client
        .produce("secured", 0, &[record], -1)
        .await
        .expect("produce");
    // PLAIN, checked against the same SCRAM credential.
    let plain = connect(secure, sasl(&s.ca, "PLAIN", "alice", "alice-secret"))
        .await
        .expect("alice with PLAIN");
    let (records, _) = plain
        .fetch("secured", 0, 0, 1 << 20, 1000)
        .await
        .expect("fetch");
    assert_eq!(
        records.first().and_then(|r| r.value.clone()),
        Some(Bytes::from_static(b"over TLS"))
    );
    // A large answer over TLS arrives whole (rustls holds back what the socket has not
    // taken until the writer flushes).
    let big = NewRecord {
        value: Some(Bytes::from(vec![b'x'; 64 << 10])),
        ..NewRecord::default()
    };
    for _ in 0..400 {
        client
            .produce("secured", 0, std::slice::from_ref(&big), -1)
            .await
            .expect("produce 64 KiB");
    }
    let (records, _) = plain
        .fetch("secured", 0, 0, 40 << 20, 1000)
        .await
        .expect("fetch 25 MB over TLS");
    assert_eq!(records.len(), 401);
    // Wrong password, unknown user, a mechanism not enabled: refused, the broker serves on.
    for (mechanism, user, password) in [
        ("SCRAM-SHA-512", "alice", "wrong"),
        ("SCRAM-SHA-512", "mallory", "alice-secret"),
        ("PLAIN", "alice", "wrong"),
    ] {
        let e = connect(secure, sasl(&s.ca, mechanism, user, password))
            .await
            .expect_err("refused");
        assert!(refused_for_credentials(&e), "{mechanism} {user}: {e}");
    }
    let e = connect(
        secure,
        sasl(&s.ca, "SCRAM-SHA-256", "alice", "alice-secret"),
    )
    .await
    .expect_err("mechanism not enabled");
    assert!(
        e.to_string().contains("refused") && e.to_string().contains("SCRAM-SHA-512"),
        "{e}"
    );
    // SASL over plaintext TCP works the same way.
    let internal = Security {
        tls: None,
        ..sasl(&s.ca, "SCRAM-SHA-512", "alice", "alice-secret")
    };
    connect(s.broker.listener("INTERNAL"), internal)
        .await
        .expect("SASL_PLAINTEXT");
    healthy(&s.broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_certificates_of_the_ca_only() {
    let s = setup(|_| {}).await;
    let mtls = s.broker.listener("MTLS");
    let writer = s.ca.issue(
        "writer",
        &[
            (DnType::OrganizationName, "Example"),
            (DnType::CommonName, "writer"),
        ],
        &[],
    );
    let with_cert = |ca: &Authority, issued: &Issued| Security {
        tls: Some(std::sync::Arc::new(
            tls_config(Some(&ca.cert), Some(&issued.cert), Some(&issued.key)).expect("tls"),
        )),
        sasl: None,
    };
    let client = connect(mtls, with_cert(&s.ca, &writer))
        .await
        .expect("a certificate of the CA");
    client.cluster().await.expect("metadata over mTLS");
    // A certificate another CA signed, and none at all: the handshake fails.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = Authority::new(other_dir.path(), "other-ca");
    let stranger = other.issue("stranger", &[(DnType::CommonName, "writer")], &[]);
    let mut mixed = with_cert(&s.ca, &stranger);
    mixed.tls = Some(std::sync::Arc::new(
        tls_config(Some(&s.ca.cert), Some(&stranger.cert), Some(&stranger.key)).expect("tls"),
    ));
    assert!(
        connect(mtls, mixed).await.is_err(),
        "a stranger's certificate"
    );
    let anonymous = Security {
        tls: Some(std::sync::Arc::new(
            tls_config(Some(&s.ca.cert), None, None).expect("tls"),
        )),
        sasl: None,
    };
    assert!(connect(mtls, anonymous).await.is_err(), "no certificate");
    // A client that trusts another CA does not trust the broker either.
    let wrong_trust = Security {
        tls: Some(std::sync::Arc::new(
            tls_config(Some(&other.cert), None, None).expect("tls"),
        )),
        sasl: None,
    };
    assert!(
        connect(s.broker.listener("SECURE"), wrong_trust)
            .await
            .is_err()
    );
    healthy(&s.broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_on_the_authentication_path_are_closed_and_the_broker_serves_on() {
    let s = setup(|c| c.kafka.sasl.authentication_timeout_ms = 1000).await;
    // A plaintext Kafka client on the TLS port gets no answer: the connection closes.
    let mut raw = RawClient::connect(s.broker.listener("SECURE")).await;
    raw.send_frame(&api_versions_frame()).await;
    assert!(raw.closed_within(Duration::from_secs(5)).await);
    // Handshakes never finished: closed after kafka.tls.handshake_timeout_ms.
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(RawClient::connect(s.broker.listener("MTLS")).await);
    }
    healthy(&s.broker).await;
    for c in &mut idle {
        assert!(c.closed_within(Duration::from_secs(5)).await);
    }
    // On a SASL listener, a request before authenticating closes the connection.
    let internal = s.broker.listener("INTERNAL");
    let mut raw = RawClient::connect(internal).await;
    let _: kafka_protocol::messages::ApiVersionsResponse =
        raw.call(3, &ApiVersionsRequest::default()).await;
    raw.send_frame(&metadata_frame()).await;
    assert!(raw.closed_within(Duration::from_secs(5)).await);
    // Authenticating without a handshake, and malformed SCRAM messages: refused, closed.
    let mut raw = RawClient::connect(internal).await;
    let r = raw
        .call(
            2,
            &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from_static(b"x")),
        )
        .await;
    assert_eq!(r.error_code, 34, "ILLEGAL_SASL_STATE");
    assert!(raw.closed_within(Duration::from_secs(5)).await);
    for token in [
        &b"garbage"[..],
        b"n,,",
        b"p=tls-unique,,n=alice,r=abc",
        &[0xff; 100],
    ] {
        let mut raw = RawClient::connect(internal).await;
        let hs = raw
            .call(
                1,
                &SaslHandshakeRequest::default()
                    .with_mechanism(StrBytes::from_static_str("SCRAM-SHA-512")),
            )
            .await;
        assert_eq!(hs.error_code, 0);
        let r = raw
            .call(
                2,
                &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::copy_from_slice(token)),
            )
            .await;
        assert_eq!(r.error_code, 58, "SASL_AUTHENTICATION_FAILED for {token:?}");
        assert!(raw.closed_within(Duration::from_secs(5)).await);
    }
    // An oversized token is a frame over kafka.max_request_bytes: closed before it is read.
    let mut raw = RawClient::connect(internal).await;
    raw.send_raw(&(u32::MAX).to_be_bytes()).await;
    assert!(raw.closed_within(Duration::from_secs(5)).await);
    // A connection that never authenticates is closed after the authentication timeout.
    let mut raw = RawClient::connect(internal).await;
    assert!(raw.closed_within(Duration::from_secs(5)).await);
    healthy(&s.broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_session_closes_the_connection_and_users_are_managed() {
    let s = setup(|c| c.kafka.sasl.max_reauth_ms = 1500).await;
    let internal = s.broker.listener("INTERNAL");
    let security = Security {
        tls: None,
        ..sasl(&s.ca, "SCRAM-SHA-512", "alice", "alice-secret")
    };
    // A client that does not re-authenticate (KIP-368): its next request after the session
    // ends closes the connection.
    let mut raw = RawClient::connect(internal).await;
    let handshake =
        SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN"));
    assert_eq!(raw.call(1, &handshake).await.error_code, 0);
    let login = SaslAuthenticateRequest::default()
        .with_auth_bytes(Bytes::from_static(b"\0alice\0alice-secret"));
    let answer = raw.call(2, &login).await;
    assert_eq!(answer.error_code, 0);
    assert_eq!(answer.session_lifetime_ms, 1500);
    raw.send_frame(&metadata_frame()).await;
    assert!(
        raw.read_frame().await.is_some(),
        "served within the session"
    );
    tokio::time::sleep(Duration::from_millis(1700)).await;
    raw.send_frame(&metadata_frame()).await;
    assert!(
        raw.read_frame().await.is_none(),
        "closed after the session ended"
    );
    // strata-client re-authenticates on the same connection before its session ends, and
    // goes on past it.
    let client = connect(internal, security.clone()).await.expect("alice");
    for _ in 0..4 {
        client
            .connection()
            .send(&MetadataRequest::default())
            .await
            .expect("served across sessions");
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    connect(internal, security).await.expect("a new session");
    // Users: listed, a second mechanism added, then removed; a removed user cannot log in.
    let admin = Client::connect(&s.broker.bootstrap()).await.expect("admin");
    admin
        .set_scram_password("bob", "SCRAM-SHA-512", "bob-secret", 8192)
        .await
        .expect("bob");
    let users = admin.describe_scram(None).await.expect("describe");
    let names: Vec<(&str, &[(String, i32)])> = users
        .iter()
        .map(|u| (u.name.as_str(), u.credentials.as_slice()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("alice", &[("SCRAM-SHA-512".to_owned(), 4096)][..]),
            ("bob", &[("SCRAM-SHA-512".to_owned(), 8192)][..]),
        ]
    );
    let bob = Security {
        tls: None,
        ..sasl(&s.ca, "SCRAM-SHA-512", "bob", "bob-secret")
    };
    connect(internal, bob.clone()).await.expect("bob logs in");
    admin
        .delete_scram("bob", "SCRAM-SHA-512")
        .await
        .expect("delete bob");
    let e = connect(internal, bob).await.expect_err("bob is gone");
    assert!(refused_for_credentials(&e), "{e}");
    // Kafka's checks: too few iterations, a credential that is not there, an unknown user.
    let few = admin
        .set_scram_password("carol", "SCRAM-SHA-512", "x", 100)
        .await
        .expect_err("too few iterations");
    assert!(few.to_string().contains("iterations"), "{few}");
    let missing = admin
        .delete_scram("carol", "SCRAM-SHA-256")
        .await
        .expect_err("nothing to delete");
    assert!(missing.to_string().contains("does not exist"), "{missing}");
    assert!(
        admin
            .describe_scram(Some(&["nobody".into()]))
            .await
            .is_err()
    );
}

fn frame(api: i16, version: i16, header_tail: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&api.to_be_bytes());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&7i32.to_be_bytes());
    out.extend_from_slice(header_tail);
    out.extend_from_slice(body);
    out
}

/// ApiVersions v0: header v1 (client id null), empty body.
fn api_versions_frame() -> Vec<u8> {
    frame(18, 0, &(-1i16).to_be_bytes(), &[])
}

/// Metadata v1 for all topics: header v1, a null topic array.
fn metadata_frame() -> Vec<u8> {
    frame(3, 1, &(-1i16).to_be_bytes(), &(-1i32).to_be_bytes())
}

/// SaslHandshake v0 (which librdkafka looks for before it uses v1): the exchange's tokens
/// follow as bare size-prefixed frames, then Kafka requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v0_handshake_takes_bare_tokens() {
    use strata_client::scram::{ScramClient, ScramHash};

    let s = setup(|_| {}).await;
    let mut raw = RawClient::connect(s.broker.listener("INTERNAL")).await;
    let hs = raw
        .call(
            0,
            &SaslHandshakeRequest::default()
                .with_mechanism(StrBytes::from_static_str("SCRAM-SHA-512")),
        )
        .await;
    assert_eq!(hs.error_code, 0);
    let mut scram = ScramClient::new(ScramHash::Sha512, "alice", "alice-secret");
    raw.send_frame(scram.first().as_bytes()).await;
    let first = raw.read_frame().await.expect("server-first");
    let last = scram
        .last(std::str::from_utf8(&first).expect("utf-8"))
        .expect("client-final");
    raw.send_frame(last.as_bytes()).await;
    let done = raw.read_frame().await.expect("server-final");
    scram
        .verify(std::str::from_utf8(&done).expect("utf-8"))
        .expect("the broker holds alice's credential");
    let m: kafka_protocol::messages::MetadataResponse =
        raw.call(1, &MetadataRequest::default()).await;
    assert_eq!(m.brokers.len(), 1);
    // A wrong password over bare tokens: the connection closes (v0 has no error answer).
    let mut raw = RawClient::connect(s.broker.listener("INTERNAL")).await;
    let _ = raw
        .call(
            0,
            &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
        )
        .await;
    raw.send_frame(b"\0alice\0wrong").await;
    assert!(raw.closed_within(Duration::from_secs(5)).await);
}

/// The controller's gRPC over mutual TLS (`[controller.tls]`): the broker registers and
/// serves through it; a plaintext client and one whose certificate another CA signed get
/// nothing from it, one with the right certificate is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controllers_grpc_runs_over_mutual_tls() {
    use strata_controller::ControllerClient;
    use strata_controller::tls::GrpcTls;

    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Authority::new(dir.path(), "controller-ca");
    let Issued { cert, key } = ca.broker("controller");
    let ca_file = ca.cert.clone();
    let (c, k, a) = (cert.clone(), key.clone(), ca_file.clone());
    let broker = TestBroker::start_with(move |conf| {
        conf.controller.tls.cert_file = Some(c.clone());
        conf.controller.tls.key_file = Some(k.clone());
        conf.controller.tls.ca_file = Some(a.clone());
    })
    .await;
    let client = Client::connect(&broker.bootstrap()).await.expect("connect");
    client
        .create_topic("over-tls", 1, 1, &Default::default())
        .await
        .expect("a topic, through the controller");
    client
        .produce(
            "over-tls",
            0,
            &[NewRecord {
                value: Some(Bytes::from_static(b"v")),
                ..NewRecord::default()
            }],
            -1,
        )
        .await
        .expect("produced");

    let addr = broker
        .controller_addr()
        .expect("an embedded controller")
        .to_string();
    let call = |tls: Option<GrpcTls>| {
        let addr = addr.clone();
        async move {
            ControllerClient::new([addr])
                .with_tls(tls)
                .with_deadline(Duration::from_secs(2))
                .heartbeat(99, 0, false)
                .await
        }
    };
    assert!(
        call(None).await.is_err(),
        "a plaintext client is not served"
    );
    let other = Authority::new(dir.path(), "other-ca");
    let stranger = other.broker("stranger");
    let stranger_tls = GrpcTls::load(&stranger.cert, &stranger.key, &ca_file).expect("pem");
    assert!(
        call(Some(stranger_tls)).await.is_err(),
        "a certificate of another CA is refused"
    );
    let good = GrpcTls::load(&cert, &key, &ca_file).expect("pem");
    assert!(
        call(Some(good)).await.is_ok(),
        "the right certificate is answered (broker 99 is unknown to it)"
    );
    broker.stop().await;
}

/// `kafka.tls.principal_mapping_rules` (Kafka's `ssl.principal.mapping.rules`): a client
/// certificate's subject is mapped by the first rule that applies, and one no rule applies
/// to is refused. Here `CN=writer,O=Example` becomes `User:writer`, a super user, so it may
/// describe the cluster with ACLs on; `O=Elsewhere` matches no rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_subjects_are_mapped_to_principals() {
    use kafka_protocol::messages::DescribeClusterRequest;

    let s = setup(|c| {
        c.kafka.tls.principal_mapping_rules = vec![r"RULE:^CN=([^,]*),O=Example$/$1/L".into()];
        c.kafka.authorization.enable = true;
        c.kafka.authorization.super_users = vec!["User:writer".into()];
    })
    .await;
    let mtls = s.broker.listener("MTLS");
    let with_cert = |issued: &Issued| Security {
        tls: Some(std::sync::Arc::new(
            tls_config(Some(&s.ca.cert), Some(&issued.cert), Some(&issued.key)).expect("tls"),
        )),
        sasl: None,
    };
    let writer = s.ca.issue(
        "writer",
        &[
            (DnType::OrganizationName, "Example"),
            (DnType::CommonName, "Writer"),
        ],
        &[],
    );
    let client = connect(mtls, with_cert(&writer))
        .await
        .expect("a mapped certificate");
    let described = client
        .connection()
        .send(&DescribeClusterRequest::default())
        .await
        .expect("describe cluster");
    assert_eq!(described.error_code, 0, "User:writer is a super user");
    let elsewhere = s.ca.issue(
        "elsewhere",
        &[
            (DnType::OrganizationName, "Elsewhere"),
            (DnType::CommonName, "writer"),
        ],
        &[],
    );
    let refused = match connect(mtls, with_cert(&elsewhere)).await {
        Err(_) => true,
        Ok(c) => c.cluster().await.is_err(),
    };
    assert!(refused, "no rule applies to O=Elsewhere");
    healthy(&s.broker).await;
}
