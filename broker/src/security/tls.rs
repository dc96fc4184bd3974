//! TLS for the SSL and SASL_SSL listeners (rustls on the aws-lc-rs provider): the broker's
//! certificate from PEM files, optional client certificates (mTLS) checked against a CA,
//! whose subject becomes the connection's principal, and reloading the files when they
//! change, for new connections, without a restart.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_util::sync::CancellationToken;

use super::config::{ClientAuth, TlsConfig};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The certificates in a PEM file.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect())
        .map_err(|e| format!("reading certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// rustls's server configurations for `c`, by how they ask for client certificates (those
/// that ask only when a client CA is configured).
fn server_configs(c: &TlsConfig) -> Result<BTreeMap<ClientAuth, Arc<ServerConfig>>, String> {
    let mut out = BTreeMap::new();
    for auth in [
        ClientAuth::None,
        ClientAuth::Requested,
        ClientAuth::Required,
    ] {
        if auth == ClientAuth::None || c.client_ca_file.is_some() {
            out.insert(auth, Arc::new(server_config(c, auth)?));
        }
    }
    Ok(out)
}

/// rustls's server configuration for `c`, asking for client certificates as `auth` says.
fn server_config(c: &TlsConfig, auth: ClientAuth) -> Result<ServerConfig, String> {
    let (Some(cert_file), Some(key_file)) = (&c.cert_file, &c.key_file) else {
        return Err("kafka.tls.cert_file and kafka.tls.key_file are needed".into());
    };
    let certs = certificates(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("reading the private key from {}: {e}", key_file.display()))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match (auth, &c.client_ca_file) {
        (ClientAuth::None, _) | (_, None) => builder.with_no_client_auth(),
        (auth, Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("a CA certificate in {}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier = match auth {
                ClientAuth::Requested => verifier.allow_unauthenticated(),
                _ => verifier,
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| e.to_string())?)
        }
    };
    builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("the certificate and key do not make a TLS identity: {e}"))
}

/// When each file was last modified, to notice changes.
fn stamps(c: &TlsConfig) -> Vec<Option<SystemTime>> {
    [&c.cert_file, &c.key_file, &c.client_ca_file]
        .into_iter()
        .map(|p| {
            p.as_ref()
                .and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        })
        .collect()
}

/// The TLS settings in force and the files they were loaded from.
#[derive(Debug)]
pub(crate) struct Tls {
    config: TlsConfig,
    current: RwLock<Loaded>,
    /// `principal_mapping_rules`, parsed.
    rules: Vec<super::mapping::Rule>,
}

/// Server configurations by client authentication, and the files' stamps they came from.
type Loaded = (
    BTreeMap<ClientAuth, Arc<ServerConfig>>,
    Vec<Option<SystemTime>>,
);

impl Tls {
    /// Loads the certificate, key and client CA; refused with the reason when they do not
    /// make a TLS identity.
    pub(crate) fn load(config: &TlsConfig) -> Result<Self, String> {
        let stamps = stamps(config);
        let servers = server_configs(config)?;
        Ok(Self {
            config: config.clone(),
            current: RwLock::new((servers, stamps)),
            rules: super::mapping::parse(&config.principal_mapping_rules)?,
        })
    }

    /// The principal of a client certificate: its subject as [`principal`] writes it, mapped
    /// by `principal_mapping_rules`; an error when no rule applies (the client is refused).
    pub(crate) fn principal_of(&self, certificate: &CertificateDer<'_>) -> Result<String, String> {
        let subject = principal(certificate).ok_or("the certificate cannot be read")?;
        let dn = subject.strip_prefix("User:").unwrap_or(&subject);
        super::mapping::map(&self.rules, dn)
            .map(|name| format!("User:{name}"))
            .ok_or_else(|| format!("no principal mapping rule applies to {dn:?}"))
    }

    /// An acceptor with the settings in force now, asking for client certificates as
    /// `auth` says (none when no client CA is configured: validation refuses that).
    pub(crate) fn acceptor(&self, auth: ClientAuth) -> Option<tokio_rustls::TlsAcceptor> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        let server = current.0.get(&auth)?;
        Some(tokio_rustls::TlsAcceptor::from(server.clone()))
    }

    /// How long a handshake may take.
    pub(crate) fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.config.handshake_timeout_ms)
    }

    /// Loads the files again if any changed since they were loaded: `Some` with the outcome
    /// then (a failed load keeps the settings in force), `None` when nothing changed.
    pub(crate) fn reload_if_changed(&self) -> Option<Result<(), String>> {
        let now = stamps(&self.config);
        if self.current.read().unwrap_or_else(|p| p.into_inner()).1 == now {
            return None;
        }
        let loaded = server_configs(&self.config).map(|servers| {
            *self.current.write().unwrap_or_else(|p| p.into_inner()) = (servers, now);
        });
        Some(loaded)
    }

    /// Checks the files every `kafka.tls.reload_interval_ms` until cancelled.
    pub(crate) async fn watch(self: Arc<Self>, cancel: CancellationToken) {
        let mut every =
            tokio::time::interval(Duration::from_millis(self.config.reload_interval_ms));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = every.tick() => match self.reload_if_changed() {
                    Some(Ok(())) => tracing::info!("TLS certificate files changed; new connections use them"),
                    Some(Err(e)) => tracing::error!(error = %e,
                        "TLS certificate files changed but do not load; keeping the ones in force"),
                    None => {}
                },
            }
        }
    }
}

/// The principal of a client certificate: `User:` and its subject as RFC 2253 writes it
/// (most specific first, e.g. `User:CN=writer,OU=eng,O=Example`), as Kafka's default
/// principal builder does.
pub(crate) fn principal(certificate: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(certificate.as_ref()).ok()?;
    let registry = x509_parser::objects::oid_registry();
    let rdns: Vec<String> = cert
        .subject()
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(|attr| {
                    let key = x509_parser::objects::oid2abbrev(attr.attr_type(), registry)
                        .map(str::to_owned)
                        .unwrap_or_else(|_| attr.attr_type().to_id_string());
                    let value = attr
                        .as_str()
                        .map(rfc2253_escape)
                        .unwrap_or_else(|_| format!("#{}", hex(attr.attr_value().data)));
                    format!("{key}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    let name: Vec<String> = rdns.into_iter().rev().collect();
    Some(format!("User:{}", name.join(",")))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A value escaped as RFC 2253 requires.
fn rfc2253_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Changed certificate files serve new connections without a restart; files that do
    /// not load keep the settings in force; unchanged files are not read again.
    #[test]
    fn changed_files_are_loaded_and_broken_ones_keep_what_is_in_force() {
        let dir = tempfile::tempdir().expect("dir");
        let (cert_file, key_file) = (dir.path().join("b.pem"), dir.path().join("b.key"));
        let write = |cn: &str| {
            let key = rcgen::KeyPair::generate().expect("key");
            let params = rcgen::CertificateParams::new(vec![cn.to_owned()]).expect("params");
            let cert = params.self_signed(&key).expect("cert");
            std::fs::write(&cert_file, cert.pem()).expect("cert file");
            std::fs::write(&key_file, key.serialize_pem()).expect("key file");
        };
        write("one.example");
        let config = TlsConfig {
            cert_file: Some(cert_file.clone()),
            key_file: Some(key_file.clone()),
            ..TlsConfig::default()
        };
        let tls = Tls::load(&config).expect("load");
        let in_force = || {
            let current = tls.current.read().unwrap_or_else(|p| p.into_inner());
            Arc::as_ptr(&current.0[&ClientAuth::None])
        };
        let first = in_force();
        assert!(tls.reload_if_changed().is_none(), "nothing changed");
        // File times have a coarse grain on some filesystems: wait past it.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        write("two.example");
        assert_eq!(tls.reload_if_changed(), Some(Ok(())));
        let second = in_force();
        assert_ne!(first, second, "the new certificate serves new connections");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        std::fs::write(&key_file, "not a key").expect("broken key");
        assert!(matches!(tls.reload_if_changed(), Some(Err(_))));
        assert_eq!(
            in_force(),
            second,
            "a broken file keeps the settings in force"
        );
        assert!(tls.acceptor(ClientAuth::None).is_some());
        assert!(
            tls.acceptor(ClientAuth::Required).is_none(),
            "no client CA configured"
        );
    }

    #[test]
    fn a_certificate_subject_becomes_a_kafka_principal() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        // Issued to O=..., CN=... in that order: RFC 2253 writes the last first.
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example, Inc");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "writer");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(
            principal(cert.der()).as_deref(),
            Some("User:CN=writer,O=Example\\, Inc")
        );
    }
}
