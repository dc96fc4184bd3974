"""Certificates for the compatibility suite's secured listeners, made at run time with the
`cryptography` package: a CA, the broker's certificate (127.0.0.1, localhost), a client
certificate the CA signed (for mutual TLS), and a stranger: a client certificate another
CA signed. Written as PEM files into the directory given. Also a token-signing key
(`token.key`) and the JSON Web Key Set the broker checks OAUTHBEARER tokens against
(`jwks.json`), and a key it does not know (`stranger-token.key`).

    python tests/compat/pki.py DIR
"""

import base64
import datetime
import json
import ipaddress
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def name(cn):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Strata compat"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def write(directory, stem, cert, key):
    (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        (directory / f"{stem}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ))


def build(subject, issuer, public_key, signing_key, ca=False, sans=(), usage=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder()
         .subject_name(subject)
         .issuer_name(issuer)
         .public_key(public_key)
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=2))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if usage:
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return b.sign(signing_key, hashes.SHA256())


def authority(cn):
    key = ec.generate_private_key(ec.SECP256R1())
    return key, build(name(cn), name(cn), key.public_key(), key, ca=True)


def issue(ca_key, ca_cert, cn, sans=(), usage=None):
    key = ec.generate_private_key(ec.SECP256R1())
    return key, build(name(cn), ca_cert.subject, key.public_key(), ca_key, sans=sans, usage=usage)


def main():
    directory = Path(sys.argv[1])
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = authority("compat-ca")
    write(directory, "ca", ca, None)
    sans = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    key, cert = issue(ca_key, ca, "strata-broker", sans, ExtendedKeyUsageOID.SERVER_AUTH)
    write(directory, "broker", cert, key)
    key, cert = issue(ca_key, ca, "compat-client", usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    write(directory, "client", cert, key)
    other_key, other = authority("other-ca")
    write(directory, "other-ca", other, None)
    key, cert = issue(other_key, other, "compat-client", usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    write(directory, "stranger", cert, key)
    jwks = []
    for stem, known in (("token", True), ("stranger-token", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        (directory / f"{stem}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ))
        if known:
            numbers = key.public_key().public_numbers()
            b64 = lambda n: base64.urlsafe_b64encode(n.to_bytes(32, "big")).rstrip(b"=").decode()
            jwks.append({"kty": "EC", "crv": "P-256", "kid": "compat", "alg": "ES256",
                         "use": "sig", "x": b64(numbers.x), "y": b64(numbers.y)})
    (directory / "jwks.json").write_text(json.dumps({"keys": jwks}))


if __name__ == "__main__":
    main()
