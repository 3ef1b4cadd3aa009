"""The controller's certificate authority: ECDSA P-256 certificates for mTLS.

Subjects are set by the CA, never copied from a CSR: the common name carries the
principal (``device:<id>``, ``operator:<name>``, ``controller``) that authorization
reads from the verified peer certificate.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from edgefleet.errors import ConfigError, MalformedInputError
from edgefleet.tls import cert_pem, key_pem, load_certificate, new_tls_key, subject_name
from edgefleet.trust.keys import write_private_file

CA_VALIDITY = timedelta(days=3650)
SERVER_VALIDITY = timedelta(days=365)
CLIENT_VALIDITY = timedelta(days=90)
OPERATOR_VALIDITY = timedelta(days=730)
# Certificates are valid from a little before they are issued (clocks differ).
BACKDATE = timedelta(minutes=5)
MAX_CSR_BYTES = 16 * 1024


@dataclass
class CertificateAuthority:
    """A CA certificate and its key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, fleet_name: str) -> CertificateAuthority:
        """Make a new self-signed CA."""
        key = new_tls_key()
        now = datetime.now(UTC)
        name = subject_name(f"edgefleet CA {fleet_name}")
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> CertificateAuthority:
        """Read the CA from its PEM files."""
        try:
            cert = load_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot load the CA from {cert_path}: {e}") from e
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{key_path} is not an EC key")
        return cls(cert, key)

    def save(self, cert_path: Path, key_path: Path) -> None:
        """Write the CA certificate and (0600) key."""
        cert_path.write_bytes(cert_pem(self.cert))
        write_private_file(key_path, key_pem(self.key))

    def _issue(
        self,
        public_key: ec.EllipticCurvePublicKey,
        common_name: str,
        validity: timedelta,
        usage: x509.ObjectIdentifier,
        sans: list[x509.GeneralName],
    ) -> x509.Certificate:
        now = datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(min(now + validity, self.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def issue_server(self, key: ec.EllipticCurvePrivateKey, hosts: list[str]) -> x509.Certificate:
        """A server certificate valid for each host name or IP address in ``hosts``."""
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        return self._issue(
            key.public_key(), "controller", SERVER_VALIDITY, ExtendedKeyUsageOID.SERVER_AUTH, sans
        )

    def issue_client(
        self,
        public_key: ec.EllipticCurvePublicKey,
        principal: str,
        validity: timedelta = CLIENT_VALIDITY,
    ) -> x509.Certificate:
        """A client certificate whose common name is ``principal``."""
        return self._issue(public_key, principal, validity, ExtendedKeyUsageOID.CLIENT_AUTH, [])

    def issue_from_csr(
        self, csr_pem: bytes, principal: str, validity: timedelta = CLIENT_VALIDITY
    ) -> x509.Certificate:
        """Check a CSR's self-signature and key type, then issue for ``principal``."""
        if len(csr_pem) > MAX_CSR_BYTES:
            raise MalformedInputError("certificate signing request is too large")
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as e:
            raise MalformedInputError("certificate signing request is not valid PEM") from e
        if not csr.is_signature_valid:
            raise MalformedInputError("certificate signing request has a bad self-signature")
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
            public_key.curve, ec.SECP256R1
        ):
            raise MalformedInputError("certificate signing request must hold a P-256 key")
        return self.issue_client(public_key, principal, validity)
