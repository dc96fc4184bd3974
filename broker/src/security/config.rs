//! Listener, TLS and SASL settings (`[[kafka.listeners]]`, `[kafka.tls]`, `[kafka.sasl]`),
//! under Kafka's meanings, and their validation.

use std::path::PathBuf;

use serde::Deserialize;

/// How a listener's connections are secured (Kafka's `security.protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    /// Kafka's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Plaintext => "PLAINTEXT",
            Self::Ssl => "SSL",
            Self::SaslPlaintext => "SASL_PLAINTEXT",
            Self::SaslSsl => "SASL_SSL",
        }
    }

    /// The protocol a listener name stands for when it is one (Kafka's default
    /// `listener.security.protocol.map` maps each protocol name to itself).
    pub fn named(name: &str) -> Option<Self> {
        [
            Self::Plaintext,
            Self::Ssl,
            Self::SaslPlaintext,
            Self::SaslSsl,
        ]
        .into_iter()
        .find(|p| p.name() == name)
    }

    pub fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    pub fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// One more listener, beside the one at `kafka.listen` (which is `PLAINTEXT` and carries
/// the brokers' own traffic).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Listener name (Kafka's `listeners` names), e.g. `EXTERNAL` or `SASL_SSL`.
    pub name: String,
    /// Address to listen on (`ip:port`).
    pub listen: String,
    /// `host:port` clients that came in on this listener are told (Metadata, FindCoordinator);
    /// defaults to `listen`.
    pub advertised: Option<String>,
    /// Its protocol; defaults to the name when the name is a protocol's (Kafka's
    /// `listener.security.protocol.map`).
    pub security_protocol: Option<SecurityProtocol>,
    /// Client certificates on this TLS listener, instead of `kafka.tls.client_auth`
    /// (Kafka's `listener.name.<name>.ssl.client.auth`).
    pub client_auth: Option<ClientAuth>,
}

impl ListenerConfig {
    /// The protocol, as configured or implied by the name.
    pub fn protocol(&self) -> Option<SecurityProtocol> {
        self.security_protocol
            .or_else(|| SecurityProtocol::named(&self.name))
    }
}

/// Whether TLS listeners ask for client certificates (Kafka's `ssl.client.auth`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// No client certificate is asked for.
    #[default]
    None,
    /// Asked for; a client without one connects anonymously, one with a certificate the CA
    /// did not sign is refused.
    Requested,
    /// A client must present a certificate the CA signed.
    Required,
}

/// The TLS listeners' certificate and client authentication (`[kafka.tls]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file with the broker's certificate chain, leaf first.
    pub cert_file: Option<PathBuf>,
    /// PEM file with its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// PEM file with the CA certificates that sign client certificates (mTLS).
    pub client_ca_file: Option<PathBuf>,
    /// `none`, `requested` or `required`.
    pub client_auth: ClientAuth,
    /// How often the files are checked for changes; changed files are loaded for new
    /// connections without a restart.
    pub reload_interval_ms: u64,
    /// A connection that has not finished its TLS handshake by then is closed.
    pub handshake_timeout_ms: u64,
    /// How a client certificate's subject becomes its principal (Kafka's
    /// `ssl.principal.mapping.rules`): `RULE:pattern/replacement/[LU]` or `DEFAULT`, tried
    /// in order; a certificate no rule applies to is refused.
    pub principal_mapping_rules: Vec<String>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            client_auth: ClientAuth::None,
            reload_interval_ms: 10_000,
            handshake_timeout_ms: 10_000,
            principal_mapping_rules: vec!["DEFAULT".into()],
        }
    }
}

/// The SASL mechanisms this broker implements.
pub const MECHANISMS: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"];

/// SASL on the SASL listeners (`[kafka.sasl]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SaslConfig {
    /// Mechanisms clients may use (Kafka's `sasl.enabled.mechanisms`). PLAIN checks the
    /// password against the user's SCRAM credentials; it sends the password as is, so enable
    /// it on TLS listeners only.
    pub mechanisms: Vec<String>,
    /// An authenticated session lasts this long, and the client must re-authenticate on the
    /// same connection before it ends (KIP-368, `connections.max.reauth.ms`); 0: for ever.
    pub max_reauth_ms: u64,
    /// A failed authentication is answered after this delay, then the connection closed
    /// (`connection.failed.authentication.delay.ms`), to slow password guessing.
    pub failed_authentication_delay_ms: u64,
    /// A connection that has not authenticated by then is closed.
    pub authentication_timeout_ms: u64,
    /// OAUTHBEARER's token validation (`[kafka.sasl.oauthbearer]`).
    pub oauthbearer: OAuthBearerConfig,
}

/// How OAUTHBEARER tokens (JWTs) are validated: Kafka's `sasl.oauthbearer.*` broker settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OAuthBearerConfig {
    /// A JSON Web Key Set file holding the public keys tokens are signed with (Kafka's
    /// `sasl.oauthbearer.jwks.endpoint.url` as a file); read again when it changes.
    pub jwks_file: Option<PathBuf>,
    /// The `iss` tokens must carry, if set.
    pub expected_issuer: Option<String>,
    /// Audiences of which a token's `aud` must name one, if any are set.
    pub expected_audience: Vec<String>,
    /// The claim naming the principal (`User:<its value>`).
    pub sub_claim_name: String,
    /// Clock difference tolerated on `exp` and `nbf`, in seconds.
    pub clock_skew_seconds: u64,
}

impl Default for OAuthBearerConfig {
    fn default() -> Self {
        Self {
            jwks_file: None,
            expected_issuer: None,
            expected_audience: Vec::new(),
            sub_claim_name: "sub".into(),
            clock_skew_seconds: 30,
        }
    }
}

impl Default for SaslConfig {
    fn default() -> Self {
        Self {
            mechanisms: vec!["SCRAM-SHA-256".into(), "SCRAM-SHA-512".into()],
            max_reauth_ms: 0,
            failed_authentication_delay_ms: 100,
            authentication_timeout_ms: 30_000,
            oauthbearer: OAuthBearerConfig::default(),
        }
    }
}

/// Authorization (`[kafka.authorization]`: Kafka's `authorizer.class.name`, `super.users`
/// and `allow.everyone.if.no.acl.found`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthorizationConfig {
    /// Whether requests are checked against the ACLs (CreateAcls); off, any client may do
    /// anything.
    pub enable: bool,
    /// Principals that may do everything, e.g. `User:admin`.
    pub super_users: Vec<String>,
    /// Whether a resource no ACL names is open to everyone (Kafka's default: closed).
    pub allow_everyone_if_no_acl_found: bool,
    /// Whether connections on the main listener (`kafka.listen`, which carries the brokers'
    /// own traffic) may do everything, as Kafka's inter-broker principal may. Keep that
    /// listener on loopback or a private network; with `false` its clients are
    /// `User:ANONYMOUS` and the brokers' replica fetches need CLUSTER_ACTION granted to it.
    pub trust_main_listener: bool,
}

impl Default for AuthorizationConfig {
    fn default() -> Self {
        Self {
            enable: false,
            super_users: Vec::new(),
            allow_everyone_if_no_acl_found: false,
            trust_main_listener: true,
        }
    }
}

/// Why the listeners' settings are refused: the key and the reason.
pub type Invalid = (String, String);

/// Checks the extra listeners against each other, the main one (`main_listen` named
/// `main_name`), and the TLS and SASL settings they need.
pub fn validate(
    main_name: &str,
    main_listen: &str,
    listeners: &[ListenerConfig],
    tls: &TlsConfig,
    sasl: &SaslConfig,
    authorization: &AuthorizationConfig,
) -> Result<(), Invalid> {
    let bad = |key: &str, reason: String| Err((key.to_owned(), reason));
    let bad_key = bad;
    let mut names = vec![main_name.to_owned()];
    let mut addresses = vec![main_listen.to_owned()];
    for (i, l) in listeners.iter().enumerate() {
        let key = format!("kafka.listeners[{i}]");
        if l.name.is_empty()
            || !l
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return bad(
                &key,
                format!("name {:?} must be letters, digits, _ or -", l.name),
            );
        }
        if names.contains(&l.name) {
            return bad(&key, format!("listener name {} is used twice", l.name));
        }
        if l.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad(&key, format!("listen {:?} is not ip:port", l.listen));
        }
        if addresses.contains(&l.listen) && !l.listen.ends_with(":0") {
            return bad(&key, format!("address {} is used twice", l.listen));
        }
        if let Some(a) = &l.advertised
            && a.rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return bad(&key, format!("advertised {a:?} is not host:port"));
        }
        let Some(protocol) = l.protocol() else {
            return bad(
                &key,
                format!(
                    "listener {} needs a security_protocol (PLAINTEXT, SSL, SASL_PLAINTEXT or \
                     SASL_SSL): its name is not one",
                    l.name
                ),
            );
        };
        if protocol.tls() && (tls.cert_file.is_none() || tls.key_file.is_none()) {
            return bad(
                "kafka.tls",
                format!(
                    "listener {} is {}: kafka.tls.cert_file and kafka.tls.key_file are needed",
                    l.name,
                    protocol.name()
                ),
            );
        }
        names.push(l.name.clone());
        addresses.push(l.listen.clone());
    }
    let asks = listeners.iter().any(|l| {
        l.protocol().is_some_and(SecurityProtocol::tls)
            && l.client_auth.unwrap_or(tls.client_auth) != ClientAuth::None
    });
    if (asks || tls.client_auth != ClientAuth::None) && tls.client_ca_file.is_none() {
        return bad(
            "kafka.tls.client_ca_file",
            "client_auth asks for client certificates: the CA that signs them is needed".into(),
        );
    }
    if let Err(why) = super::mapping::parse(&tls.principal_mapping_rules) {
        return bad("kafka.tls.principal_mapping_rules", why);
    }
    if tls.reload_interval_ms == 0 || tls.handshake_timeout_ms == 0 {
        return bad(
            "kafka.tls",
            "reload_interval_ms and handshake_timeout_ms must be positive".into(),
        );
    }
    if sasl.mechanisms.is_empty() {
        return bad(
            "kafka.sasl.mechanisms",
            "needs at least one mechanism".into(),
        );
    }
    if let Some(m) = sasl
        .mechanisms
        .iter()
        .find(|m| !MECHANISMS.contains(&m.as_str()))
    {
        return bad(
            "kafka.sasl.mechanisms",
            format!("{m} is not one of {}", MECHANISMS.join(", ")),
        );
    }
    if sasl.mechanisms.iter().any(|m| m == "OAUTHBEARER") {
        if sasl.oauthbearer.jwks_file.is_none() {
            return bad(
                "kafka.sasl.oauthbearer.jwks_file",
                "OAUTHBEARER is enabled: the key set its tokens are checked against is needed"
                    .into(),
            );
        }
        if sasl.oauthbearer.sub_claim_name.is_empty() {
            return bad(
                "kafka.sasl.oauthbearer.sub_claim_name",
                "must name a claim".into(),
            );
        }
    }
    if let Some(bad) = authorization.super_users.iter().find(|u| {
        u.split_once(':')
            .is_none_or(|(t, n)| t.is_empty() || n.is_empty())
    }) {
        return bad_key(
            "kafka.authorization.super_users",
            format!("{bad:?} is not a principal (e.g. User:admin)"),
        );
    }
    if sasl.authentication_timeout_ms == 0 {
        return bad(
            "kafka.sasl.authentication_timeout_ms",
            "must be positive".into(),
        );
    }
    Ok(())
}
