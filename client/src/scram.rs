//! SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677) as Kafka uses them: the key
//! derivations a broker's credentials are made of, and the client's side of an exchange.
//! The broker's side is in the broker; both use these primitives. The cryptography is
//! aws-lc-rs's (the provider rustls runs on).

use aws_lc_rs::{constant_time, digest, hmac, pbkdf2, rand};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

/// The fewest and most iterations Kafka accepts for a SCRAM credential.
pub const MIN_ITERATIONS: u32 = 4096;
pub const MAX_ITERATIONS: u32 = 16384;

/// The hash a SCRAM mechanism is named after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScramHash {
    Sha256,
    Sha512,
}

impl ScramHash {
    /// The mechanism's name, e.g. `SCRAM-SHA-512`.
    pub fn mechanism(self) -> &'static str {
        match self {
            Self::Sha256 => "SCRAM-SHA-256",
            Self::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// The hash of a mechanism name.
    pub fn of_mechanism(name: &str) -> Option<Self> {
        match name {
            "SCRAM-SHA-256" => Some(Self::Sha256),
            "SCRAM-SHA-512" => Some(Self::Sha512),
            _ => None,
        }
    }

    /// Kafka's numeric mechanism (DescribeUserScramCredentials, AlterUserScramCredentials).
    pub fn kafka_type(self) -> i8 {
        match self {
            Self::Sha256 => 1,
            Self::Sha512 => 2,
        }
    }

    /// The hash of Kafka's numeric mechanism.
    pub fn of_kafka_type(t: i8) -> Option<Self> {
        match t {
            1 => Some(Self::Sha256),
            2 => Some(Self::Sha512),
            _ => None,
        }
    }

    fn hmac(self) -> hmac::Algorithm {
        match self {
            Self::Sha256 => hmac::HMAC_SHA256,
            Self::Sha512 => hmac::HMAC_SHA512,
        }
    }

    fn pbkdf2(self) -> pbkdf2::Algorithm {
        match self {
            Self::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
            Self::Sha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        }
    }

    fn digest(self) -> &'static digest::Algorithm {
        match self {
            Self::Sha256 => &digest::SHA256,
            Self::Sha512 => &digest::SHA512,
        }
    }

    /// Length of its digests.
    pub fn digest_len(self) -> usize {
        self.digest().output_len()
    }

    /// Hi(password, salt, i): the salted password.
    pub fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0; self.digest_len()];
        let rounds =
            std::num::NonZeroU32::new(iterations.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
        pbkdf2::derive(self.pbkdf2(), rounds, salt, password, &mut out);
        out
    }

    /// HMAC(key, data).
    pub fn hmac_of(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        hmac::sign(&hmac::Key::new(self.hmac(), key), data)
            .as_ref()
            .to_vec()
    }

    /// H(data).
    pub fn hash(self, data: &[u8]) -> Vec<u8> {
        digest::digest(self.digest(), data).as_ref().to_vec()
    }

    /// ClientProof := ClientKey XOR HMAC(StoredKey, AuthMessage).
    pub fn client_proof(self, salted_password: &[u8], auth_message: &[u8]) -> Vec<u8> {
        let client_key = self.hmac_of(salted_password, b"Client Key");
        let signature = self.hmac_of(&self.hash(&client_key), auth_message);
        xor(&client_key, &signature)
    }

    /// (StoredKey, ServerKey) of a salted password: what a broker keeps.
    pub fn keys(self, salted_password: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let client_key = self.hmac_of(salted_password, b"Client Key");
        let server_key = self.hmac_of(salted_password, b"Server Key");
        (self.hash(&client_key), server_key)
    }
}

/// `a XOR b`, byte by byte (as long as the shorter).
pub fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// Whether two secrets are equal, in time that does not depend on where they differ.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// `n` random bytes (salts, nonces).
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut out = vec![0; n];
    // The system's random source does not fail on the platforms Strata runs on; if it ever
    // did, a zero nonce would still not authenticate anyone by itself.
    let _ = rand::fill(&mut out);
    out
}

/// A fresh nonce: printable, without commas.
pub fn nonce() -> String {
    B64.encode(random_bytes(24))
}

pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

pub fn unb64(text: &str) -> Option<Vec<u8>> {
    B64.decode(text).ok()
}

/// A user name as SCRAM writes it (`,` and `=` escaped).
pub fn escape_name(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

/// A user name as SCRAM wrote it, or `None` when an escape is malformed.
pub fn unescape_name(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return None,
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// `key=value` attributes of a SCRAM message, in order.
pub fn attributes(message: &str) -> Vec<(char, &str)> {
    message
        .split(',')
        .filter_map(|a| {
            let mut chars = a.chars();
            let key = chars.next()?;
            a.get(1..)?.strip_prefix('=').map(|v| (key, v))
        })
        .collect()
}

/// The client's side of one SCRAM exchange.
#[derive(Debug)]
pub struct ScramClient {
    hash: ScramHash,
    password: String,
    nonce: String,
    first_bare: String,
    /// The ServerSignature the server must prove itself with, once the final message is sent.
    expected: Option<Vec<u8>>,
}

impl ScramClient {
    /// Starts an exchange for `user`.
    pub fn new(hash: ScramHash, user: &str, password: &str) -> Self {
        let nonce = nonce();
        let first_bare = format!("n={},r={nonce}", escape_name(user));
        Self {
            hash,
            password: password.to_owned(),
            nonce,
            first_bare,
            expected: None,
        }
    }

    /// The client-first message.
    pub fn first(&self) -> String {
        format!("n,,{}", self.first_bare)
    }

    /// The client-final message answering `server_first`, or why it cannot be answered.
    pub fn last(&mut self, server_first: &str) -> Result<String, String> {
        let attrs = attributes(server_first);
        let get = |k| attrs.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        if let Some(e) = get('e') {
            return Err(format!("the broker refused: {e}"));
        }
        let nonce = get('r').ok_or("no nonce in the server's first message")?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err("the server's nonce does not extend ours".into());
        }
        let salt = get('s')
            .and_then(unb64)
            .ok_or("no salt in the server's first message")?;
        let iterations: u32 = get('i')
            .and_then(|i| i.parse().ok())
            .ok_or("no iteration count in the server's first message")?;
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(format!("{iterations} iterations are out of range"));
        }
        let salted = self
            .hash
            .salted_password(self.password.as_bytes(), &salt, iterations);
        let without_proof = format!("c={},r={nonce}", b64(b"n,,"));
        let auth = format!("{},{server_first},{without_proof}", self.first_bare);
        let proof = self.hash.client_proof(&salted, auth.as_bytes());
        let server_key = self.hash.hmac_of(&salted, b"Server Key");
        self.expected = Some(self.hash.hmac_of(&server_key, auth.as_bytes()));
        Ok(format!("{without_proof},p={}", b64(&proof)))
    }

    /// Checks the server-final message: the server knew the credential.
    pub fn verify(&self, server_final: &str) -> Result<(), String> {
        let attrs = attributes(server_final);
        if let Some((_, e)) = attrs.iter().find(|(k, _)| *k == 'e') {
            return Err(format!("the broker refused: {e}"));
        }
        let given = attrs
            .iter()
            .find(|(k, _)| *k == 'v')
            .and_then(|(_, v)| unb64(v))
            .ok_or("no server signature in the server's final message")?;
        match &self.expected {
            Some(expected) if same_secret(expected, &given) => Ok(()),
            _ => Err("the broker's signature is wrong: it does not hold our credential".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's SCRAM-SHA-256 example: salted password and keys as the RFC computes them.
    #[test]
    fn the_rfc_example_derives_the_same_proof() {
        let hash = ScramHash::Sha256;
        let salt = unb64("W22ZaJ0SNY7soEsUEjb6gQ==").expect("salt");
        let salted = hash.salted_password(b"pencil", &salt, 4096);
        let first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO";
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let without_proof = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let auth = format!("{first_bare},{server_first},{without_proof}");
        let proof = hash.client_proof(&salted, auth.as_bytes());
        assert_eq!(b64(&proof), "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
        let (_, server_key) = hash.keys(&salted);
        let server_signature = hash.hmac_of(&server_key, auth.as_bytes());
        assert_eq!(
            b64(&server_signature),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn names_are_escaped_and_unescaped() {
        assert_eq!(escape_name("a,b=c"), "a=2Cb=3Dc");
        assert_eq!(unescape_name("a=2Cb=3Dc").as_deref(), Some("a,b=c"));
        assert_eq!(unescape_name("a=2"), None);
        assert_eq!(unescape_name("a=XYb"), None);
    }
}
