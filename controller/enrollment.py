"""Device enrollment: one-time tokens with labels and expiry, exchanged for a certificate."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from controller.auditlog import record_event
from controller.ca import CertificateAuthority
from controller.rollouts import assign_matching_rollouts
from controller.store.database import Database
from controller.store.schema import Device, EnrollmentToken
from edgefleet.audit import AuditEvent
from edgefleet.errors import EnrollmentError, MalformedInputError
from edgefleet.tls import cert_pem
from edgefleet.trust.keys import PublicKey

LABEL_KEY = re.compile(r"^[a-z0-9]([a-z0-9._/-]{0,62})$")
LABEL_VALUE = re.compile(r"^[A-Za-z0-9._-]{0,63}$")
MAX_LABELS = 32
MAX_TOKEN_TTL = timedelta(days=30)


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    """Refuse label keys and values outside a conservative character set."""
    if len(labels) > MAX_LABELS:
        raise MalformedInputError(f"at most {MAX_LABELS} labels")
    for key, value in labels.items():
        if not LABEL_KEY.match(key) or not LABEL_VALUE.match(value):
            raise MalformedInputError(f"label {key}={value} has characters outside [a-z0-9._/-]")
    return dict(labels)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Enrolled:
    """A new device's identity and certificate."""

    device_id: str
    certificate_pem: bytes
    labels: dict[str, str]


class Enrollment:
    """Creates tokens and enrolls devices with them, each step audited."""

    def __init__(self, db: Database, ca: CertificateAuthority) -> None:
        self.db = db
        self.ca = ca

    def create_token(
        self, operator: str, labels: dict[str, str], ttl: timedelta
    ) -> tuple[str, datetime]:
        """A new single-use token; only its hash is stored."""
        if not timedelta(seconds=1) <= ttl <= MAX_TOKEN_TTL:
            raise MalformedInputError(f"token lifetime must be between 1 s and {MAX_TOKEN_TTL}")
        token = "eft_" + secrets.token_urlsafe(24)
        now = datetime.now(UTC)
        expires = now + ttl
        with self.db.session() as session:
            session.add(
                EnrollmentToken(
                    token_sha256=_token_hash(token),
                    labels=check_labels(labels),
                    created_at=now,
                    expires_at=expires,
                )
            )
            record_event(
                session,
                AuditEvent(
                    f"operator:{operator}",
                    "token.create",
                    _token_hash(token)[:16],
                    "success",
                    {"labels": labels, "expires": expires.isoformat()},
                ),
            )
        return token, expires

    def enroll(
        self, token: str, csr_pem: bytes, hostname: str, agent_version: str, audit_key: str
    ) -> Enrolled:
        """Spend a valid token: issue a certificate and register the device, atomically."""
        try:
            return self._enroll(token, csr_pem, hostname, agent_version, audit_key)
        except EnrollmentError as e:
            with self.db.session() as session:
                record_event(
                    session,
                    AuditEvent(
                        "anonymous",
                        "device.enroll",
                        f"host:{hostname[:64]}",
                        "denied",
                        {"reason": str(e)},
                    ),
                )
            raise

    def _enroll(
        self, token: str, csr_pem: bytes, hostname: str, agent_version: str, audit_key: str
    ) -> Enrolled:
        if len(hostname) > 255 or len(agent_version) > 64:
            raise MalformedInputError("hostname or agent version is too long")
        PublicKey.from_hex(audit_key)
        now = datetime.now(UTC)
        with self.db.session() as session:
            row = session.get(EnrollmentToken, _token_hash(token), with_for_update=True)
            reason = ""
            if row is None:
                reason = "unknown enrollment token"
            elif row.used_at is not None:
                reason = "enrollment token was already used"
            elif row.expires_at.replace(tzinfo=UTC) <= now:
                reason = "enrollment token has expired"
            if reason or row is None:
                raise EnrollmentError(reason)
            device_id = "dev-" + secrets.token_hex(8)
            cert = self.ca.issue_from_csr(csr_pem, f"device:{device_id}")
            row.used_at, row.device_id = now, device_id
            labels = dict(row.labels)
            session.add(
                Device(
                    device_id=device_id,
                    hostname=hostname,
                    labels=labels,
                    certificate_serial=format(cert.serial_number, "x"),
                    audit_public_key=audit_key,
                    enrolled_at=now,
                    agent_version=agent_version,
                    installed=[],
                    last_error="",
                    bench=[],
                )
            )
            session.flush()
            assign_matching_rollouts(session, device_id, labels)
            record_event(
                session,
                AuditEvent(
                    f"token:{row.token_sha256[:16]}",
                    "device.enroll",
                    f"device:{device_id}",
                    "success",
                    {"hostname": hostname, "labels": labels},
                ),
            )
        return Enrolled(device_id, cert_pem(cert), labels)
