//! Certificates for the TLS tests, made at test time: a certificate authority, a broker
//! certificate for `127.0.0.1` and `localhost`, and client certificates, as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A certificate and its key, as files.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate authority writing what it issues under `dir`.
#[derive(Debug)]
pub struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
    /// Its own certificate (what verifiers trust).
    pub cert: PathBuf,
}

fn name(pairs: &[(DnType, &str)]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for (t, v) in pairs {
        dn.push(t.clone(), *v);
    }
    dn
}

impl Authority {
    /// A new authority named `CN=<cn>`, its certificate written to `<dir>/<cn>.pem`.
    pub fn new(dir: &Path, cn: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name = name(&[(DnType::CommonName, cn)]);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        let cert = dir.join(format!("{cn}.pem"));
        std::fs::write(&cert, issuer.pem()).expect("write CA certificate");
        Self {
            issuer,
            dir: dir.to_owned(),
            cert,
        }
    }

    /// Issues a certificate for `subject` (`(type, value)` pairs, in DER order) valid for
    /// `hosts`, written to `<dir>/<stem>.pem` and `<dir>/<stem>.key`.
    pub fn issue(&self, stem: &str, subject: &[(DnType, &str)], hosts: &[&str]) -> Issued {
        let sans: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("params");
        params.distinguished_name = name(subject);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        let issued = Issued {
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}.key")),
        };
        std::fs::write(&issued.cert, cert.pem()).expect("write certificate");
        std::fs::write(&issued.key, key.serialize_pem()).expect("write key");
        issued
    }

    /// A broker certificate for this machine's loopback names.
    pub fn broker(&self, stem: &str) -> Issued {
        self.issue(
            stem,
            &[(DnType::CommonName, "strata-broker")],
            &["127.0.0.1", "localhost"],
        )
    }
}
