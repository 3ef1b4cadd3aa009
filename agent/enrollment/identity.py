"""The device's identity on disk: TLS key and certificate, audit key, pinned trust."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgefleet.errors import ConfigError
from edgefleet.files import write_atomically
from edgefleet.tls import key_pem, new_tls_key
from edgefleet.trust.keys import SigningKey, write_private_file


@dataclass(frozen=True)
class Enrollment:
    """What enrollment established, saved as ``identity/enrollment.json``."""

    device_id: str
    controller_host: str
    sync_port: int
    root_fingerprint: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class IdentityFiles:
    """Paths of the identity directory."""

    root: Path

    @property
    def tls_key(self) -> Path:
        return self.root / "device.key"

    @property
    def certificate(self) -> Path:
        return self.root / "device.pem"

    @property
    def ca(self) -> Path:
        return self.root / "ca.pem"

    @property
    def audit_key(self) -> Path:
        return self.root / "audit.key"

    @property
    def audit_attestation(self) -> Path:
        """The fleet's signed statement that our audit key is this device's."""
        return self.root / "audit-key-attestation.json"

    @property
    def enrollment(self) -> Path:
        return self.root / "enrollment.json"

    def exists(self) -> bool:
        return self.enrollment.exists()

    def keys(self) -> tuple[ec.EllipticCurvePrivateKey, SigningKey]:
        """The device's TLS and audit keys, created (0600) on first use and kept afterwards.

        Keeping them across attempts lets a device waiting for approval, or preauthorized by
        its key fingerprint, come back with the same key.
        """
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.tls_key.exists():
            write_private_file(self.tls_key, key_pem(new_tls_key()))
        if not self.audit_key.exists():
            SigningKey.generate().save(self.audit_key)
        key = serialization.load_pem_private_key(self.read(self.tls_key), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{self.tls_key} is not an EC key")
        return key, SigningKey.load(self.audit_key)

    def replace_certificate(self, cert_pem: bytes) -> None:
        """Install a renewed certificate atomically."""
        write_atomically(self.certificate, cert_pem)

    def save(self, enrollment: Enrollment, cert_pem: bytes, ca_pem: bytes) -> None:
        """Write certificate, CA and, last, the enrollment record that marks the device enrolled."""
        write_atomically(self.certificate, cert_pem)
        write_atomically(self.ca, ca_pem)
        temporary = self.enrollment.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(enrollment), indent=2))
        temporary.replace(self.enrollment)

    def load(self) -> Enrollment:
        """Read the enrollment record, or explain that the device is not enrolled."""
        try:
            doc = json.loads(self.enrollment.read_text())
            return Enrollment(**doc)
        except FileNotFoundError as e:
            raise ConfigError("this device is not enrolled: run `edgefleet-agent enroll`") from e
        except (OSError, ValueError, TypeError) as e:
            raise ConfigError(f"{self.enrollment} is unreadable: {e}") from e

    def read(self, path: Path) -> bytes:
        """Read one identity file with a one-line error."""
        try:
            return path.read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}") from e
