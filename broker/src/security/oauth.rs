//! SASL/OAUTHBEARER (RFC 7628; Kafka's KIP-255 and KIP-768): the client's first message
//! carries a bearer token, a JWT, which is checked against the public keys of a JSON Web Key
//! Set file (`kafka.sasl.oauthbearer.jwks_file`, what Kafka's
//! `sasl.oauthbearer.jwks.endpoint.url` names): signature (RSA, ECDSA or EdDSA; `none` and
//! shared-secret HMAC are refused), expiry and not-before with the configured clock skew,
//! and the expected issuer and audience when they are set. The principal is the token's
//! subject claim (`sub`, or `sub_claim_name`), and the session ends when the token expires
//! (KIP-368: the client logs in again with a fresh token on the same connection).
//!
//! The key set is read again when the file changes (looked at no more than once a second,
//! and only when a token names a key not in it or fails its signature check), so keys can
//! rotate without a restart, under new ids or the same.

use std::path::Path;
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::config::OAuthBearerConfig;

/// The key set and the file's modification time it was read at.
#[derive(Debug)]
struct Keys {
    set: JwkSet,
    stamp: Option<SystemTime>,
    looked: Instant,
}

/// Validates OAUTHBEARER tokens (see the module documentation).
#[derive(Debug)]
pub(crate) struct Jwt {
    config: OAuthBearerConfig,
    keys: RwLock<Keys>,
}

/// A validated token: whose it is and when it expires (seconds since the epoch).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Validated {
    pub(crate) principal_name: String,
    pub(crate) expires: u64,
}

fn read_set(path: &Path) -> Result<(JwkSet, Option<SystemTime>), String> {
    let stamp = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let text = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let set: JwkSet = serde_json::from_slice(&text)
        .map_err(|e| format!("{} is not a JSON Web Key Set: {e}", path.display()))?;
    if set.keys.is_empty() {
        return Err(format!("{} holds no keys", path.display()));
    }
    for key in &set.keys {
        DecodingKey::from_jwk(key).map_err(|e| {
            format!(
                "{}: key {:?} cannot verify tokens: {e}",
                path.display(),
                key.common.key_id
            )
        })?;
    }
    Ok((set, stamp))
}

impl Jwt {
    /// Reads the key set; an error names what is wrong with it.
    pub(crate) fn load(config: &OAuthBearerConfig) -> Result<Self, String> {
        let path = config
            .jwks_file
            .as_deref()
            .ok_or("OAUTHBEARER needs kafka.sasl.oauthbearer.jwks_file")?;
        let (set, stamp) = read_set(path)?;
        Ok(Self {
            config: config.clone(),
            keys: RwLock::new(Keys {
                set,
                stamp,
                looked: Instant::now(),
            }),
        })
    }

    /// Reads the key set again if the file changed (at most once a second); a file that no
    /// longer reads keeps the keys in force. Whether new keys were read.
    fn refresh(&self) -> bool {
        let Some(path) = self.config.jwks_file.as_deref() else {
            return false;
        };
        {
            let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
            if keys.looked.elapsed() < Duration::from_secs(1) {
                return false;
            }
        }
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        keys.looked = Instant::now();
        let stamp = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if stamp == keys.stamp {
            return false;
        }
        match read_set(path) {
            Ok((set, stamp)) => {
                tracing::info!(path = %path.display(), keys = set.keys.len(), "OAUTHBEARER keys reloaded");
                keys.set = set;
                keys.stamp = stamp;
                true
            }
            Err(error) => {
                tracing::warn!(%error, "OAUTHBEARER keys not reloaded; the ones in force stay");
                false
            }
        }
    }

    /// The key a token signed with `alg` and naming `kid` is checked with.
    fn key(&self, kid: Option<&str>) -> Result<DecodingKey, String> {
        let find = |keys: &Keys| match kid {
            Some(kid) => keys.set.find(kid).cloned(),
            None if keys.set.keys.len() == 1 => keys.set.keys.first().cloned(),
            None => None,
        };
        let found = find(&self.keys.read().unwrap_or_else(|p| p.into_inner()));
        let jwk = match found {
            Some(jwk) => jwk,
            None => {
                let _ = self.refresh();
                find(&self.keys.read().unwrap_or_else(|p| p.into_inner())).ok_or_else(
                    || match kid {
                        Some(kid) => format!("no key {kid:?} in the key set"),
                        None => "the token names no key (kid) and the key set has several".into(),
                    },
                )?
            }
        };
        DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())
    }

    /// Checks `token` (see the module documentation). A token that fails its signature
    /// check is checked once more if the key set file changed meanwhile (a key replaced
    /// under the same id).
    pub(crate) fn validate(&self, token: &str) -> Result<Validated, String> {
        match self.check(token) {
            Err(e) if e.contains("InvalidSignature") && self.refresh() => self.check(token),
            checked => checked,
        }
    }

    fn check(&self, token: &str) -> Result<Validated, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("not a JWT: {e}"))?;
        if matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            return Err(format!(
                "{:?} tokens are not accepted: sign with a public-key algorithm",
                header.alg
            ));
        }
        let key = self.key(header.kid.as_deref())?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.config.clock_skew_seconds;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        match &self.config.expected_issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        if self.config.expected_audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.config.expected_audience);
        }
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .map_err(|e| format!("the token is not valid: {e}"))?;
        let claim = &self.config.sub_claim_name;
        let principal_name = data
            .claims
            .get(claim)
            .and_then(|v| v.as_str())
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| format!("the token has no {claim:?} claim naming its principal"))?
            .to_owned();
        let expires = data
            .claims
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .ok_or("the token's exp is not a number of seconds")?;
        Ok(Validated {
            principal_name,
            expires,
        })
    }
}

/// The client's first message (RFC 7628 section 3.1): a GS2 header (`n,` then an optional
/// `a=authzid`, then `,`), then `\x01`-separated `key=value` pairs ending in `\x01\x01`, one
/// of them `auth=Bearer <token>`. Returns the token and the authorization id, if any.
pub(crate) fn client_first(message: &[u8]) -> Result<(&str, Option<&str>), String> {
    let text = std::str::from_utf8(message).map_err(|_| "the message is not UTF-8")?;
    let (gs2, rest) = text
        .split_once('\u{1}')
        .ok_or("the message has no key-value pairs")?;
    let authzid = match gs2.strip_prefix("n,").and_then(|r| r.strip_suffix(',')) {
        Some("") => None,
        Some(a) => Some(
            a.strip_prefix("a=")
                .filter(|a| !a.is_empty())
                .ok_or("the GS2 header's authorization id is malformed")?,
        ),
        None => return Err("the GS2 header must be n,[a=authzid],".into()),
    };
    if !rest.ends_with("\u{1}\u{1}") && rest != "\u{1}" {
        return Err("the message does not end with two separators".into());
    }
    let token = rest
        .split('\u{1}')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "auth")
        .map(|(_, v)| v)
        .ok_or("the message has no auth pair")?;
    let token = token
        .strip_prefix("Bearer ")
        .or_else(|| token.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or("the auth pair is not a Bearer token")?;
    Ok((token, authzid))
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    use super::*;

    /// An ECDSA P-256 key pair: the signing key and its public JWK named `kid`.
    fn key_pair(kid: &str) -> (EncodingKey, serde_json::Value) {
        use base64::Engine;
        let pair = rcgen::KeyPair::generate().expect("key");
        let raw = pair.public_key_raw();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
        });
        (EncodingKey::from_ec_der(&pair.serialize_der()), jwk)
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn token(key: &EncodingKey, kid: &str, claims: serde_json::Value) -> String {
        let header = Header {
            kid: Some(kid.into()),
            ..Header::new(Algorithm::ES256)
        };
        encode(&header, &claims, key).expect("signed")
    }

    fn validator(dir: &Path, keys: &[serde_json::Value]) -> Jwt {
        let path = dir.join("jwks.json");
        std::fs::write(&path, json!({ "keys": keys }).to_string()).expect("written");
        Jwt::load(&OAuthBearerConfig {
            jwks_file: Some(path),
            expected_issuer: Some("https://issuer.example".into()),
            expected_audience: vec!["strata".into()],
            ..OAuthBearerConfig::default()
        })
        .expect("loaded")
    }

    #[test]
    fn tokens_are_checked_against_the_key_set_and_the_claims() {
        let dir = tempfile::tempdir().expect("dir");
        let (key, jwk) = key_pair("k1");
        let (other, _) = key_pair("k1");
        let jwt = validator(dir.path(), &[jwk]);
        let good = json!({
            "sub": "alice", "iss": "https://issuer.example", "aud": "strata",
            "exp": now() + 600, "iat": now(),
        });
        assert_eq!(
            jwt.validate(&token(&key, "k1", good.clone())),
            Ok(Validated {
                principal_name: "alice".into(),
                expires: now() + 600
            })
        );
        let refused = |claims: serde_json::Value, signer: &EncodingKey, kid: &str| {
            jwt.validate(&token(signer, kid, claims))
                .expect_err("refused")
        };
        let with = |k: &str, v: serde_json::Value| {
            let mut c = good.clone();
            c[k] = v;
            c
        };
        assert!(refused(good.clone(), &other, "k1").contains("not valid"));
        assert!(refused(good.clone(), &key, "k2").contains("no key"));
        assert!(refused(with("exp", json!(now() - 3600)), &key, "k1").contains("xpired"));
        assert!(refused(with("nbf", json!(now() + 3600)), &key, "k1").contains("not valid"));
        assert!(refused(with("iss", json!("elsewhere")), &key, "k1").contains("ssuer"));
        assert!(refused(with("aud", json!("kafka")), &key, "k1").contains("udience"));
        assert!(refused(with("sub", json!("")), &key, "k1").contains("sub"));
        let no_exp = json!({ "sub": "alice", "iss": "https://issuer.example", "aud": "strata" });
        assert!(refused(no_exp, &key, "k1").contains("exp"));
        // Shared-secret and unsigned tokens are not accepted.
        let hs = encode(
            &Header::new(Algorithm::HS256),
            &good,
            &EncodingKey::from_secret(b"secret").expect("a secret"),
        )
        .expect("hs256");
        assert!(jwt.validate(&hs).expect_err("HS256").contains("HS256"));
        let unsigned = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.";
        assert!(jwt.validate(unsigned).is_err());
        assert!(jwt.validate("not a token").is_err());
    }

    #[test]
    fn a_rotated_key_set_is_read_again() {
        let dir = tempfile::tempdir().expect("dir");
        let (old, old_jwk) = key_pair("old");
        let (new, new_jwk) = key_pair("new");
        let jwt = validator(dir.path(), &[old_jwk]);
        let claims = json!({
            "sub": "bob", "iss": "https://issuer.example", "aud": "strata", "exp": now() + 60,
        });
        assert!(jwt.validate(&token(&new, "new", claims.clone())).is_err());
        std::thread::sleep(Duration::from_millis(1100));
        std::fs::write(
            dir.path().join("jwks.json"),
            json!({ "keys": [new_jwk] }).to_string(),
        )
        .expect("rotated");
        assert!(jwt.validate(&token(&new, "new", claims.clone())).is_ok());
        assert!(jwt.validate(&token(&old, "old", claims.clone())).is_err());
        // A key replaced under the same id.
        let (newer, newer_jwk) = key_pair("new");
        std::thread::sleep(Duration::from_millis(1100));
        std::fs::write(
            dir.path().join("jwks.json"),
            json!({ "keys": [newer_jwk] }).to_string(),
        )
        .expect("replaced");
        assert!(jwt.validate(&token(&newer, "new", claims.clone())).is_ok());
        assert!(jwt.validate(&token(&new, "new", claims)).is_err());
    }

    #[test]
    fn the_client_message_is_parsed_as_rfc_7628_says() {
        assert_eq!(
            client_first(b"n,,\x01auth=Bearer abc.def.ghi\x01\x01"),
            Ok(("abc.def.ghi", None))
        );
        assert_eq!(
            client_first(b"n,a=alice,\x01host=h\x01auth=Bearer t\x01\x01"),
            Ok(("t", Some("alice")))
        );
        for bad in [
            &b"y,,\x01auth=Bearer t\x01\x01"[..],
            b"n,,\x01auth=Bearer t\x01",
            b"n,,\x01auth=Basic t\x01\x01",
            b"n,,\x01host=h\x01\x01",
            b"n,a=,\x01auth=Bearer t\x01\x01",
            b"n,,",
            b"\xff\xfe",
            b"",
        ] {
            assert!(client_first(bad).is_err(), "{bad:?}");
        }
    }
}
