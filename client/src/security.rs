//! How a client secures its connections: TLS (rustls, optionally with a client certificate)
//! and SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512), configured with the client properties
//! Kafka users know (`security.protocol`, `sasl.mechanism`, `sasl.username`,
//! `sasl.password` or `sasl.jaas.config`, `ssl.ca.location`, `ssl.certificate.location`,
//! `ssl.key.location`), as `--command-config` files give them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::ClientError;

/// SASL credentials.
#[derive(Clone)]
pub struct Sasl {
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Sasl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sasl")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A connection's security: none (PLAINTEXT) by default.
#[derive(Clone, Debug, Default)]
pub struct Security {
    /// Set for SSL and SASL_SSL.
    pub tls: Option<Arc<ClientConfig>>,
    /// Set for SASL_PLAINTEXT and SASL_SSL.
    pub sasl: Option<Sasl>,
}

fn bad(key: &str, reason: impl std::fmt::Display) -> ClientError {
    ClientError::NotApplicable(format!("client property {key}: {reason}"))
}

fn certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|c| c.collect())
        .map_err(|e| bad(key, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(bad(
            key,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

/// A value of `sasl.jaas.config` (`... username="u" password="p";`).
fn jaas(config: &str, field: &str) -> Option<String> {
    let start = config.find(&format!("{field}=\""))? + field.len() + 2;
    let end = config[start..].find('"')? + start;
    Some(config[start..end].to_owned())
}

impl Security {
    /// From Kafka client properties; unknown keys are refused, so a typo is not silently a
    /// plaintext connection.
    pub fn from_properties(props: &BTreeMap<String, String>) -> Result<Self, ClientError> {
        const KNOWN: &[&str] = &[
            "security.protocol",
            "sasl.mechanism",
            "sasl.mechanisms",
            "sasl.username",
            "sasl.password",
            "sasl.jaas.config",
            "ssl.ca.location",
            "ssl.certificate.location",
            "ssl.key.location",
            "ssl.endpoint.identification.algorithm",
        ];
        if let Some(k) = props.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(bad(k, format!("not one of {}", KNOWN.join(", "))));
        }
        let get = |k: &str| props.get(k).map(String::as_str);
        let protocol = get("security.protocol")
            .unwrap_or("PLAINTEXT")
            .to_ascii_uppercase();
        let (tls, sasl) = match protocol.as_str() {
            "PLAINTEXT" => (false, false),
            "SSL" => (true, false),
            "SASL_PLAINTEXT" => (false, true),
            "SASL_SSL" => (true, true),
            other => return Err(bad("security.protocol", format!("{other} is unknown"))),
        };
        let tls = match tls {
            false => None,
            true => Some(Arc::new(tls_config(
                get("ssl.ca.location").map(Path::new),
                get("ssl.certificate.location").map(Path::new),
                get("ssl.key.location").map(Path::new),
            )?)),
        };
        let sasl = match sasl {
            false => None,
            true => {
                let mechanism = get("sasl.mechanism")
                    .or(get("sasl.mechanisms"))
                    .unwrap_or("PLAIN")
                    .to_owned();
                if !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"].contains(&mechanism.as_str()) {
                    return Err(bad(
                        "sasl.mechanism",
                        format!("{mechanism} is not supported"),
                    ));
                }
                let jaas_config = get("sasl.jaas.config").unwrap_or("");
                let username = get("sasl.username")
                    .map(str::to_owned)
                    .or_else(|| jaas(jaas_config, "username"))
                    .ok_or_else(|| bad("sasl.username", "needed for SASL"))?;
                let password = get("sasl.password")
                    .map(str::to_owned)
                    .or_else(|| jaas(jaas_config, "password"))
                    .ok_or_else(|| bad("sasl.password", "needed for SASL"))?;
                Some(Sasl {
                    mechanism,
                    username,
                    password,
                })
            }
        };
        Ok(Self { tls, sasl })
    }

    /// Reads a properties file (`key=value` lines, `#` comments).
    pub fn from_file(path: &Path) -> Result<Self, ClientError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ClientError::NotApplicable(format!("{}: {e}", path.display())))?;
        let props = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Self::from_properties(&props)
    }

    /// Opens a connection to `addr` (`host:port`) with TLS when configured.
    pub(crate) async fn open(
        &self,
        tcp: TcpStream,
        addr: &str,
    ) -> Result<Box<dyn Stream>, ClientError> {
        let Some(config) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let host = addr
            .rsplit_once(':')
            .map_or(addr, |(h, _)| h)
            .trim_matches(['[', ']']);
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| ClientError::NotApplicable(format!("server name {host}: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| ClientError::Authentication {
                broker: addr.to_owned(),
                reason: format!("TLS handshake failed: {e}"),
            })?;
        Ok(Box::new(stream))
    }
}

/// A byte stream a connection runs over: TCP, or TLS over TCP.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + std::fmt::Debug {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + std::fmt::Debug> Stream for T {}

/// A TLS client configuration: the CA that signs the brokers' certificates, and a client
/// certificate and key for mTLS.
pub fn tls_config(
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<ClientConfig, ClientError> {
    let Some(ca) = ca else {
        return Err(bad(
            "ssl.ca.location",
            "the CA that signs the brokers' certificates is needed",
        ));
    };
    let mut roots = RootCertStore::empty();
    for c in certificates("ssl.ca.location", ca)? {
        roots.add(c).map_err(|e| bad("ssl.ca.location", e))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("security.protocol", e))?
        .with_root_certificates(roots);
    match (cert, key) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert), Some(key)) => {
            let certs = certificates("ssl.certificate.location", cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| bad("ssl.key.location", format!("{}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| bad("ssl.certificate.location", e))
        }
        _ => Err(bad(
            "ssl.certificate.location",
            "a client certificate needs its key (ssl.key.location), and the other way round",
        )),
    }
}
