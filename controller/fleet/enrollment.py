"""Device enrollment and identity: tokens, approval, preauthorization, renewal, revocation.

A device proves possession of its TLS key with a CSR. It enrolls with a one-time token
(labels and expiry come from the token), or without one: a key preauthorized by its
fingerprint is accepted at once, any other becomes a pending device that an operator
accepts or rejects. Certificates are short-lived and renewed over the device's mTLS
channel; a revoked device is refused on every call.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Update, delete, func, select, update
from sqlalchemy.orm import Session

from edgefleet.audit import AuditEvent
from edgefleet.controller.audit.log import record_event
from edgefleet.controller.fleet.views import TokenView
from edgefleet.controller.rollouts.engine import assign_matching_rollouts
from edgefleet.controller.store.database import Database
from edgefleet.controller.store.schema import (
    Assignment,
    Device,
    EnrollmentToken,
    Pin,
    Preauthorization,
    RolloutTarget,
)
from edgefleet.controller.trust.ca import BACKDATE, CertificateAuthority
from edgefleet.denials import DenialWindow
from edgefleet.errors import (
    ConflictError,
    EnrollmentError,
    MalformedInputError,
    NotFoundError,
    ResourceError,
)
from edgefleet.tls import cert_pem, key_fingerprint_of_csr
from edgefleet.trust.keys import PublicKey
from edgefleet.trust.metadata import SHA256_PATTERN, format_time

LABEL_KEY = re.compile(r"^[a-z0-9]([a-z0-9._/-]{0,62})$")
LABEL_VALUE = re.compile(r"^[A-Za-z0-9._-]{0,63}$")
MAX_LABELS = 32
MAX_TOKEN_TTL = timedelta(days=30)
MAX_PENDING = 1000
TRANSITIONS = {
    "accept": ("pending", "active"),
    "reject": ("pending", "rejected"),
    "revoke": ("active", "revoked"),
}


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    """Refuse label keys and values outside a conservative character set."""
    if len(labels) > MAX_LABELS:
        raise MalformedInputError(f"at most {MAX_LABELS} labels")
    for key, value in labels.items():
        if not LABEL_KEY.match(key) or not LABEL_VALUE.match(value):
            raise MalformedInputError(f"label {key}={value} has characters outside [a-z0-9._/-]")
    return dict(labels)


def spend(session: Session, statement: Update) -> bool:
    """Run a conditional UPDATE of one row; True if this transaction changed it.

    One-time things (tokens, preauthorizations, state transitions) are spent this way and
    never by reading then writing: the database decides which of concurrent callers wins,
    on SQLite (the UPDATE waits for the write lock and sees the last commit) and on
    PostgreSQL (the row lock makes a loser re-check the condition) alike."""
    result = session.execute(statement.execution_options(synchronize_session=False))
    return bool(getattr(result, "rowcount", 0) == 1)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


TOKEN_ID = re.compile(r"^[0-9a-f]{16}$")


def token_id(token: str) -> str:
    """What names a token in `token list`, `token revoke` and the audit trail."""
    return _token_hash(token)[:16]


def _token_view(row: EnrollmentToken, now: datetime) -> TokenView:
    if row.revoked_at is not None:
        state = "revoked"
    elif row.used_at is not None:
        state = "used"
    elif row.expires_at.replace(tzinfo=UTC) <= now:
        state = "expired"
    else:
        state = "unused"
    return TokenView(
        token_id=row.token_sha256[:16],
        labels=dict(sorted(row.labels.items())),
        created_at=format_time(row.created_at),
        expires_at=format_time(row.expires_at),
        state=state,
        device_id=row.device_id or "",
    )


@dataclass(frozen=True)
class Enrolled:
    """The outcome of an enrollment request."""

    device_id: str
    status: str  # "enrolled" or "pending"
    certificate_pem: bytes = b""
    labels: dict[str, str] | None = None


@dataclass(frozen=True)
class EnrollmentLimits:
    """What one source may do (anonymous callers are counted by network address)."""

    failures_per_minute: int = 20
    pending_per_source: int = 20
    pending_expiry: timedelta = timedelta(hours=72)


@dataclass(frozen=True)
class EnrollmentRequest:
    """What a device sends to enroll."""

    token: str
    csr_pem: bytes
    hostname: str
    agent_version: str
    audit_key: str
    source: str = ""  # the network address it came from (limits are per source)


class Enrollment:
    """Creates tokens, enrolls devices, and changes their state, each step audited."""

    def __init__(
        self,
        db: Database,
        ca: CertificateAuthority,
        certificate_lifetime: timedelta,
        limits: EnrollmentLimits | None = None,
    ) -> None:
        self.db = db
        self.ca = ca
        self.lifetime = certificate_lifetime
        self.limits = limits or EnrollmentLimits()
        self.failures = DenialWindow(60, self.limits.failures_per_minute)

    def list_tokens(self) -> list[TokenView]:
        """Every enrollment token, newest first (ids and states; no secret is stored)."""
        now = datetime.now(UTC)
        with self.db.session() as session:
            rows = session.execute(
                select(EnrollmentToken).order_by(EnrollmentToken.created_at.desc())
            ).scalars()
            return [_token_view(row, now) for row in rows]

    def revoke_token(self, operator: str, token_id: str) -> TokenView:
        """Revoke the unused token whose id (16 hex digits of its hash) is ``token_id``."""
        if not TOKEN_ID.match(token_id):
            raise MalformedInputError("a token id is 16 hexadecimal digits (`token list`)")
        with self.db.session() as session:
            row = session.execute(
                select(EnrollmentToken).where(EnrollmentToken.token_sha256.startswith(token_id))
            ).scalar_one_or_none()
            if row is None:
                raise NotFoundError(f"no enrollment token {token_id}")
            if row.used_at is not None:
                raise ConflictError(
                    f"token {token_id} was used by {row.device_id}: revoke the device instead"
                )
            if not spend(
                session,
                update(EnrollmentToken)
                .where(
                    EnrollmentToken.token_sha256 == row.token_sha256,
                    EnrollmentToken.used_at.is_(None),
                    EnrollmentToken.revoked_at.is_(None),
                )
                .values(revoked_at=datetime.now(UTC)),
            ):
                raise ConflictError(f"token {token_id} was already revoked or just used")
            record_event(
                session,
                AuditEvent(f"operator:{operator}", "token.revoke", token_id, "success", {}),
            )
            session.refresh(row)
            return _token_view(row, datetime.now(UTC))

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

    def enroll(self, request: EnrollmentRequest) -> Enrolled:
        """Enroll with a token, a preauthorized key, or as a pending device.

        A refusal is audited once per source and minute (the gRPC call metrics count every
        one); a source past ``failures_per_minute`` is refused before any database work."""
        if self.failures.limited(request.source):
            raise ResourceError(
                f"too many failed enrollments from {request.source}; retry in a minute"
            )
        if len(request.hostname) > 255 or len(request.agent_version) > 64:
            raise MalformedInputError("hostname or agent version is too long")
        PublicKey.from_hex(request.audit_key)
        fingerprint = key_fingerprint_of_csr(request.csr_pem)
        try:
            with self.db.session() as session:
                if request.token:
                    return self._with_token(session, request, fingerprint)
                return self._without_token(session, request, fingerprint)
        except EnrollmentError as e:
            denial = self.failures.deny(request.source)
            if denial.record:
                details: dict[str, object] = {
                    "reason": str(e),
                    "hostname": request.hostname[:64],
                    "source": request.source[:64],
                }
                if denial.earlier:
                    details["unrecorded_before"] = denial.earlier
                with self.db.session() as session:
                    record_event(
                        session,
                        AuditEvent(
                            "anonymous",
                            "device.enroll",
                            f"key:{fingerprint[:16]}",
                            "denied",
                            details,
                        ),
                    )
            raise

    def _issue(self, session: Session, device: Device, csr_pem: bytes, actor: str) -> Enrolled:
        cert = self.ca.issue_from_csr(csr_pem, f"device:{device.device_id}", self.lifetime)
        device.previous_serial = device.certificate_serial
        device.certificate_serial = format(cert.serial_number, "x")
        device.certificate_issued_at = datetime.now(UTC)
        session.flush()
        assign_matching_rollouts(session, device)
        record_event(
            session,
            AuditEvent(
                actor,
                "device.enroll",
                f"device:{device.device_id}",
                "success",
                {"hostname": device.hostname, "labels": device.labels},
            ),
        )
        return Enrolled(device.device_id, "enrolled", cert_pem(cert), dict(device.labels))

    def _new_device(
        self, request: EnrollmentRequest, fingerprint: str, labels: dict[str, str], state: str
    ) -> Device:
        return Device(
            device_id="dev-" + secrets.token_hex(8),
            hostname=request.hostname,
            labels=labels,
            state=state,
            key_fingerprint=fingerprint,
            certificate_serial="",
            previous_serial="",
            audit_public_key=request.audit_key,
            enrolled_at=datetime.now(UTC),
            agent_version=request.agent_version,
            installed=[],
            last_error="",
            bench=[],
            enrolled_from=request.source[:64],
        )

    def _with_token(
        self, session: Session, request: EnrollmentRequest, fingerprint: str
    ) -> Enrolled:
        token_hash = _token_hash(request.token)
        device = self._new_device(request, fingerprint, {}, "active")
        if not spend(
            session,
            update(EnrollmentToken)
            .where(
                EnrollmentToken.token_sha256 == token_hash,
                EnrollmentToken.used_at.is_(None),
                EnrollmentToken.revoked_at.is_(None),
            )
            .values(used_at=datetime.now(UTC), device_id=device.device_id),
        ):
            row = session.get(EnrollmentToken, token_hash)
            if row is None:
                raise EnrollmentError("unknown enrollment token")
            if row.revoked_at is not None:
                raise EnrollmentError("enrollment token was revoked")
            raise EnrollmentError("enrollment token was already used")
        row = session.get(EnrollmentToken, token_hash)
        assert row is not None  # just spent in this transaction
        if row.expires_at.replace(tzinfo=UTC) <= datetime.now(UTC):
            raise EnrollmentError("enrollment token has expired")  # rolls the spend back
        device.labels = dict(row.labels)
        session.add(device)
        return self._issue(session, device, request.csr_pem, f"token:{token_hash[:16]}")

    def _without_token(
        self, session: Session, request: EnrollmentRequest, fingerprint: str
    ) -> Enrolled:
        self.db.hold(session, f"enroll-key:{fingerprint}")  # PostgreSQL: one key at a time
        device = session.execute(
            select(Device)
            .where(Device.key_fingerprint == fingerprint)
            .order_by(Device.enrolled_at.desc())
            .limit(1)
        ).scalar_one_or_none()
        if device is None:
            return self._new_key(session, request, fingerprint)
        if device.state == "pending":
            return Enrolled(device.device_id, "pending")
        if device.state != "active" or device.certificate_serial:
            raise EnrollmentError(
                f"device {device.device_id} is {device.state} and cannot enroll again"
            )
        if not spend(  # an accepted device gets one certificate, whoever asks at once
            session,
            update(Device)
            .where(Device.device_id == device.device_id, Device.certificate_serial == "")
            .values(certificate_serial="-"),
        ):
            raise EnrollmentError(f"device {device.device_id} has enrolled already")
        return self._issue(session, device, request.csr_pem, "approved")

    def _new_key(self, session: Session, request: EnrollmentRequest, fingerprint: str) -> Enrolled:
        """A key never seen: preauthorized (spent once) or a new pending device."""
        device = self._new_device(request, fingerprint, {}, "active")
        if spend(
            session,
            update(Preauthorization)
            .where(Preauthorization.key_fingerprint == fingerprint, Preauthorization.used_by == "")
            .values(used_by=device.device_id),
        ):
            preauthorized = session.get(Preauthorization, fingerprint)
            assert preauthorized is not None  # just spent in this transaction
            device.labels = dict(preauthorized.labels)
            session.add(device)
            return self._issue(
                session, device, request.csr_pem, f"preauthorized:{fingerprint[:16]}"
            )
        if session.get(Preauthorization, fingerprint) is not None:
            raise EnrollmentError("this key's preauthorization was already used")
        self._expire_pending(session)
        pending = session.execute(
            select(func.count()).select_from(Device).where(Device.state == "pending")
        ).scalar_one()
        if pending >= MAX_PENDING:
            raise ResourceError("too many devices are waiting for approval")
        from_source = session.execute(
            select(func.count())
            .select_from(Device)
            .where(Device.state == "pending", Device.enrolled_from == request.source[:64])
        ).scalar_one()
        if from_source >= self.limits.pending_per_source:
            raise ResourceError(
                f"{from_source} devices from {request.source} are already waiting for approval"
            )
        device.state = "pending"
        session.add(device)
        session.flush()  # SQLite: holds the write lock from here, so it sees every commit
        earlier = session.execute(
            select(Device.device_id)
            .where(Device.key_fingerprint == fingerprint, Device.device_id != device.device_id)
            .limit(1)
        ).scalar_one_or_none()
        if earlier is not None:  # the same key asked at the same moment: one device
            session.delete(device)
            return Enrolled(earlier, "pending")
        record_event(
            session,
            AuditEvent(
                "anonymous",
                "device.enroll",
                f"device:{device.device_id}",
                "pending",
                {"hostname": request.hostname, "key_fingerprint": fingerprint},
            ),
        )
        return Enrolled(device.device_id, "pending")

    def _expire_pending(self, session: Session) -> None:
        """Drop requests that waited longer than ``pending_expiry`` (audited as one record)."""
        cutoff = datetime.now(UTC) - self.limits.pending_expiry
        expired = (
            session.execute(
                delete(Device)
                .where(Device.state == "pending", Device.enrolled_at < cutoff)
                .returning(Device.device_id)
                .execution_options(synchronize_session=False)
            )
            .scalars()
            .all()
        )
        if expired:
            record_event(
                session,
                AuditEvent(
                    "controller",
                    "device.expire",
                    "pending",
                    "success",
                    {"devices": len(expired), "first": expired[0]},
                ),
            )

    def reject_pending(self, operator: str, source: str = "") -> int:
        """Reject every device waiting for approval (those from ``source`` only, if given)."""
        with self.db.session() as session:
            query = update(Device).where(Device.state == "pending")
            if source:
                query = query.where(Device.enrolled_from == source)
            rejected = (
                session.execute(
                    query.values(state="rejected")
                    .returning(Device.device_id)
                    .execution_options(synchronize_session=False)
                )
                .scalars()
                .all()
            )
            if rejected:
                record_event(
                    session,
                    AuditEvent(
                        f"operator:{operator}",
                        "device.reject",
                        f"pending:{source or 'all'}",
                        "success",
                        {"devices": len(rejected)},
                    ),
                )
        return len(rejected)

    def set_state(self, operator: str, device_id: str, action: str) -> str:
        """accept | reject a pending device, revoke an active one; return the new state."""
        if action not in TRANSITIONS:
            raise MalformedInputError(f"action must be one of {', '.join(TRANSITIONS)}")
        before, after = TRANSITIONS[action]
        with self.db.session() as session:
            if not spend(
                session,
                update(Device)
                .where(Device.device_id == device_id, Device.state == before)
                .values(state=after),
            ):
                device = session.get(Device, device_id)
                if device is None:
                    raise NotFoundError(f"no device {device_id}")
                raise MalformedInputError(
                    f"cannot {action} device {device_id}: it is {device.state}"
                )
            record_event(
                session,
                AuditEvent(
                    f"operator:{operator}", f"device.{action}", f"device:{device_id}", "success", {}
                ),
            )
        return after

    def remove(self, operator: str, device_id: str) -> None:
        """Forget a rejected or revoked device: its row, assignments, rollout places and
        device pins go (audited with what it was); its audit chain stays, for exports."""
        with self.db.session() as session:
            device = session.get(Device, device_id, with_for_update=True)
            if device is None:
                raise NotFoundError(f"no device {device_id}")
            if device.state not in ("rejected", "revoked"):
                raise ConflictError(
                    f"device {device_id} is {device.state}: revoke it first "
                    f"(`devices revoke {device_id}`)"
                )
            details = {
                "state": device.state,
                "hostname": device.hostname,
                "labels": dict(device.labels),
                "key_fingerprint": device.key_fingerprint,
            }
            for table in (Assignment, RolloutTarget):
                session.execute(delete(table).where(table.device_id == device_id))
            session.execute(delete(Pin).where(Pin.device_id == device_id))
            session.delete(device)
            record_event(
                session,
                AuditEvent(
                    f"operator:{operator}",
                    "device.remove",
                    f"device:{device_id}",
                    "success",
                    details,
                ),
            )

    def label(
        self, operator: str, device_id: str, labels: dict[str, str], remove: list[str]
    ) -> dict[str, str]:
        """Set ``labels`` and remove the keys ``remove`` of a device; return its labels.
        A device now matching a rollout under way joins it, as an enrolling one would;
        one that no longer matches keeps what it was given (unpin or roll back to change
        that)."""
        if set(labels) & set(remove):
            raise MalformedInputError("a label cannot be both set and removed")
        with self.db.session() as session:
            device = session.get(Device, device_id, with_for_update=True)
            if device is None:
                raise NotFoundError(f"no device {device_id}")
            if device.state in ("rejected", "revoked"):
                raise ConflictError(f"device {device_id} is {device.state}")
            missing = sorted(set(remove) - set(device.labels))
            if missing:
                raise NotFoundError(f"device {device_id} has no label {', '.join(missing)}")
            before = dict(device.labels)
            after = {k: v for k, v in before.items() if k not in remove}
            device.labels = check_labels({**after, **labels})
            if device.state == "active":
                assign_matching_rollouts(session, device, "labelled into the rollout's selector")
            record_event(
                session,
                AuditEvent(
                    f"operator:{operator}",
                    "device.label",
                    f"device:{device_id}",
                    "success",
                    {"before": before, "after": device.labels},
                ),
            )
            return dict(sorted(device.labels.items()))

    def preauthorize(self, operator: str, fingerprint: str, labels: dict[str, str]) -> None:
        """Let the TLS key with ``fingerprint`` enroll without a token, with ``labels``."""
        if not SHA256_PATTERN.match(fingerprint):
            raise MalformedInputError("a key fingerprint is 64 lowercase hex characters")
        with self.db.session() as session:
            session.merge(
                Preauthorization(
                    key_fingerprint=fingerprint,
                    labels=check_labels(labels),
                    created_at=datetime.now(UTC),
                    used_by="",
                )
            )
            record_event(
                session,
                AuditEvent(
                    f"operator:{operator}",
                    "device.preauthorize",
                    f"key:{fingerprint[:16]}",
                    "success",
                    {"labels": labels},
                ),
            )

    def renew(self, device_id: str, csr_pem: bytes) -> bytes:
        """A fresh certificate for an active device's enrolled key; the previous one is still
        accepted too. Refused for another key (a stolen certificate cannot move the identity
        to a key of its own) and while more than half of the current certificate's lifetime
        is left (renewals cannot be cycled to push the real device's certificate out)."""
        fingerprint = key_fingerprint_of_csr(csr_pem)
        now = datetime.now(UTC)
        with self.db.session() as session:
            device = session.get(Device, device_id)
            if device is None or device.state != "active":
                raise EnrollmentError(f"device {device_id} may not renew its certificate")
            if fingerprint != device.key_fingerprint:
                raise EnrollmentError(
                    "a certificate is renewed for the enrolled key only; enroll again for a new one"
                )
            issued = device.certificate_issued_at
            if issued is not None:
                left = issued.replace(tzinfo=UTC) + self.lifetime - now
                if left > (self.lifetime + BACKDATE) / 2:  # agents renew at a third left
                    raise ResourceError(
                        "the current certificate is new: renew once less than half its "
                        "lifetime is left"
                    )
            cert = self.ca.issue_from_csr(csr_pem, f"device:{device_id}", self.lifetime)
            serial = format(cert.serial_number, "x")
            if not spend(
                session,
                update(Device)
                .where(
                    Device.device_id == device_id,
                    Device.certificate_serial == device.certificate_serial,
                )
                .values(
                    previous_serial=device.certificate_serial,
                    certificate_serial=serial,
                    certificate_issued_at=now,
                ),
            ):
                raise ResourceError("another renewal of this device is under way")
            record_event(
                session,
                AuditEvent(
                    f"device:{device_id}",
                    "device.renew",
                    f"device:{device_id}",
                    "success",
                    {"expires": cert.not_valid_after_utc.isoformat()},
                ),
            )
        return cert_pem(cert)
