"""The device's identity on disk: TLS key and certificate, audit key, pinned trust."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgefleet.errors import ConfigError
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
    def enrollment(self) -> Path:
        return self.root / "enrollment.json"

    def exists(self) -> bool:
        return self.enrollment.exists()

    def save(
        self,
        enrollment: Enrollment,
        tls_key_pem: bytes,
        cert_pem: bytes,
        ca_pem: bytes,
        audit_key: SigningKey,
    ) -> None:
        """Write every file; the enrollment record last, so a half-done enroll is not taken."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private_file(self.tls_key, tls_key_pem)
        self.certificate.write_bytes(cert_pem)
        self.ca.write_bytes(ca_pem)
        audit_key.save(self.audit_key)
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
