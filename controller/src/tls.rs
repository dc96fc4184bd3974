//! TLS for the controller's gRPC: the Raft traffic between controllers and the brokers'
//! calls. Mutual: every side presents a certificate the configured CA signed and checks the
//! other's, since whoever reaches this port could otherwise change the cluster's metadata.

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A certificate and key (PEM) this node presents, and the CA (PEM) it trusts.
#[derive(Clone, Debug)]
pub struct GrpcTls {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Vec<u8>,
}

impl GrpcTls {
    /// Reads the three PEM files; an error names the one that cannot be read or holds no PEM.
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<Self, String> {
        let read = |path: &Path, what: &str| {
            let bytes =
                std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
                return Err(format!("{} is not a PEM {what}", path.display()));
            }
            Ok(bytes)
        };
        Ok(Self {
            cert: read(cert, "certificate")?,
            key: read(key, "private key")?,
            ca: read(ca, "CA certificate")?,
        })
    }

    /// The server side: this node's identity, client certificates required from the CA.
    pub(crate) fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert, &self.key))
            .client_ca_root(Certificate::from_pem(&self.ca))
    }

    /// The client side: the CA that signs the controllers' certificates, and this node's
    /// identity for theirs to check.
    pub(crate) fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
    }
}
