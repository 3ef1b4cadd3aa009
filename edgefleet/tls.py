"""TLS material both sides handle: P-256 keys, PEM encoding, CSRs, certificate digests."""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgefleet.errors import MalformedInputError


def new_tls_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key (gRPC's TLS stack completes mTLS with these, not Ed25519)."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8 PEM of a private key."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    """PEM of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


def load_certificate(pem: bytes) -> x509.Certificate:
    """Parse a PEM certificate, wrapping parse failures."""
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as e:
        raise MalformedInputError("certificate is not valid PEM") from e


def cert_sha256(pem: bytes) -> str:
    """Hex SHA-256 of a certificate's DER encoding."""
    der = load_certificate(pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def common_name(pem: bytes) -> str:
    """The subject common name of a certificate."""
    names = load_certificate(pem).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise MalformedInputError("certificate has no common name")
    return str(names[0].value)


def subject_name(common: str) -> x509.Name:
    """The subject edgefleet gives every certificate it issues."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgefleet"),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )


def make_csr(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A CSR for ``key`` (the CA ignores its subject and sets its own)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject_name("enrollment request"))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def is_issued_by(cert_pem_bytes: bytes, ca_pem: bytes) -> bool:
    """Tell whether ``ca_pem`` directly signed ``cert_pem_bytes``."""
    try:
        load_certificate(cert_pem_bytes).verify_directly_issued_by(load_certificate(ca_pem))
    except (ValueError, TypeError):
        return False
    except Exception:  # cryptography raises InvalidSignature, not a ValueError
        return False
    return True


def key_fingerprint_of_csr(csr_pem: bytes) -> str:
    """Hex SHA-256 of the DER SubjectPublicKeyInfo in a CSR (what preauthorization names)."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as e:
        raise MalformedInputError("certificate signing request is not valid PEM") from e
    return _spki_sha256(csr.public_key())


def key_fingerprint(key: ec.EllipticCurvePrivateKey) -> str:
    """Hex SHA-256 of the DER SubjectPublicKeyInfo of a private key's public half."""
    return _spki_sha256(key.public_key())


def _spki_sha256(public_key: object) -> str:
    der = public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()
