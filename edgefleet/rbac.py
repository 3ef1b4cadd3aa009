"""The RBAC policy model and ``authorize()``, evaluated the same way on controller and device.

A policy names roles (sets of permissions), bindings (a subject gets a role, optionally
limited to model name patterns and a device label selector) and application tokens
(only a token id and the SHA-256 of its secret: a device can check a token offline,
never recover it).
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, ClassVar

from edgefleet.audit import AuditEvent
from edgefleet.canonical import canonical_bytes, parse_object
from edgefleet.errors import MalformedInputError
from edgefleet.trust.metadata import POLICY_TYPE, format_time, parse_time

# What a device's local API checks: the vocabulary of a policy's ``roles``.
DEVICE_PERMISSIONS = frozenset({"inference.invoke", "inference.embed", "models.read"})
# What the controller checks on operator calls: the vocabulary of built-in operator roles
# and of a policy's ``operator_roles``.
OPERATOR_PERMISSIONS = frozenset(
    {
        "models.read",
        "models.publish",
        "rollouts.read",
        "rollouts.manage",
        "devices.read",
        "devices.manage",
        "policy.read",
        "policy.manage",
        "tokens.manage",
        "operators.manage",
        "audit.read",
        "audit.export",
        "audit.manage",
    }
)
# Policy versions signed before the two vocabularies were split could list operator
# permissions under ``roles``; they still parse (a device must keep reading the policy it
# holds), but no device checks them and the controller grants operators nothing from
# ``roles``. A policy applied now may not list them there.
LEGACY_ROLE_PERMISSIONS = OPERATOR_PERMISSIONS | {"models.import"}
TOKEN_PREFIX = "efk_"  # noqa: S105 - a marker, not a secret
SUBJECT_PATTERN = re.compile(r"^[a-z]+:[A-Za-z0-9._@-]{1,64}$")
TOKEN_ID_PATTERN = re.compile(r"^[a-z0-9]{8,32}$")
REDACTABLE = re.compile(r"^(actor|target|details\.[a-z0-9_]{1,64})$")
REDACTED = "[redacted]"


@dataclass(frozen=True)
class Binding:
    """``subject`` holds ``role`` for models matching ``models`` on devices matching ``devices``."""

    subject: str
    role: str
    models: tuple[str, ...] = ("*",)
    devices: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TokenEntry:
    """An application token as a device stores it: id, subject and the secret's hash."""

    token_id: str
    subject: str
    secret_sha256: str


@dataclass(frozen=True)
class Policy:
    """A whole policy version."""

    PAYLOAD_TYPE: ClassVar[str] = POLICY_TYPE

    version: int
    roles: Mapping[str, frozenset[str]]
    bindings: tuple[Binding, ...] = ()
    tokens: tuple[TokenEntry, ...] = ()
    expires: datetime | None = None  # set on signed policies (freeze protection)
    # Audit record fields devices replace with "[redacted]": "actor", "target" or "details.<key>".
    audit_redact: tuple[str, ...] = ()
    # Custom roles the controller may give operators (operator permissions only).
    operator_roles: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def redact(self, event: AuditEvent) -> AuditEvent:
        """The event with the fields this policy redacts replaced by a marker."""
        if not self.audit_redact:
            return event
        details = {
            key: REDACTED if f"details.{key}" in self.audit_redact else value
            for key, value in event.details.items()
        }
        return replace(
            event,
            actor=REDACTED if "actor" in self.audit_redact else event.actor,
            target=REDACTED if "target" in self.audit_redact else event.target,
            details=details,
        )

    def readable(self) -> str:
        """A stable, readable rendering (`edgefleetctl policy diff`)."""
        return json.dumps(json.loads(self.to_payload()), indent=2, sort_keys=True) + "\n"

    def to_payload(self) -> bytes:
        """Canonical bytes (what the policy role signs)."""
        expiry = {"expires": format_time(self.expires)} if self.expires else {}
        redaction = {"audit_redact": list(self.audit_redact)} if self.audit_redact else {}
        operators = (
            {"operator_roles": {n: sorted(p) for n, p in self.operator_roles.items()}}
            if self.operator_roles
            else {}
        )
        return canonical_bytes(
            {
                **expiry,
                **redaction,
                **operators,
                "_type": "policy",
                "version": self.version,
                "roles": {name: sorted(perms) for name, perms in self.roles.items()},
                "bindings": [
                    {
                        "subject": b.subject,
                        "role": b.role,
                        "models": list(b.models),
                        "devices": dict(b.devices),
                    }
                    for b in self.bindings
                ],
                "tokens": [
                    {"id": t.token_id, "subject": t.subject, "sha256": t.secret_sha256}
                    for t in self.tokens
                ],
            }
        )

    @classmethod
    def from_payload(cls, payload: bytes) -> Policy:
        """Parse and check a policy document."""
        doc = parse_object(payload, "policy")
        if doc.get("_type", "policy") != "policy":
            raise MalformedInputError("policy: _type is not 'policy'")
        version = doc.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise MalformedInputError("policy: version must be a non-negative integer")
        roles = _parse_roles(doc.get("roles", {}), DEVICE_PERMISSIONS | LEGACY_ROLE_PERMISSIONS)
        operator_roles = _parse_roles(doc.get("operator_roles", {}), OPERATOR_PERMISSIONS)
        bindings = tuple(_parse_binding(b, roles) for b in _list(doc, "bindings"))
        tokens = tuple(_parse_token(t) for t in _list(doc, "tokens"))
        if len({t.token_id for t in tokens}) != len(tokens):
            raise MalformedInputError("policy: token ids must be unique")
        expires = parse_time(doc["expires"], "policy expires") if "expires" in doc else None
        redact = _list(doc, "audit_redact")
        if not all(isinstance(f, str) and REDACTABLE.match(f) for f in redact):
            raise MalformedInputError("policy: audit_redact names actor, target or details.<key>")
        return cls(version, roles, bindings, tokens, expires, tuple(redact), operator_roles)

    def subject_of_token(self, token: str) -> str | None:
        """The subject a bearer token authenticates as, or None if it is not valid."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        token_id, sep, secret = token[len(TOKEN_PREFIX) :].partition(".")
        if not sep or not secret:
            return None
        digest = hashlib.sha256(secret.encode("utf-8")).hexdigest()
        for entry in self.tokens:
            if entry.token_id == token_id and hmac.compare_digest(entry.secret_sha256, digest):
                return entry.subject
        return None

    def authorize(
        self,
        subject: str,
        permission: str,
        model: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> bool:
        """Tell whether ``subject`` may use ``permission`` on ``model`` on a device so labelled."""
        for binding in self.bindings:
            if binding.subject != subject or permission not in self.roles.get(binding.role, ()):
                continue
            if model and not any(fnmatch.fnmatchcase(model, p) for p in binding.models):
                continue
            if labels is not None and any(labels.get(k) != v for k, v in binding.devices.items()):
                continue
            return True
        return False


def new_token(subject: str) -> tuple[str, TokenEntry]:
    """A fresh bearer token (shown once) and the entry a policy stores for it."""
    check_subject(subject)
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    entry = TokenEntry(token_id, subject, hashlib.sha256(secret.encode("utf-8")).hexdigest())
    return f"{TOKEN_PREFIX}{token_id}.{secret}", entry


def check_subject(subject: str) -> str:
    """Subjects are ``kind:name`` (``app:sensor-hub``, ``user:alice``)."""
    if not SUBJECT_PATTERN.match(subject):
        raise MalformedInputError(
            f"subject {subject!r} must look like kind:name (e.g. app:sensor-hub)"
        )
    return subject


def _list(doc: Mapping[str, Any], key: str) -> list[Any]:
    value = doc.get(key, [])
    if not isinstance(value, list):
        raise MalformedInputError(f"policy: {key} must be a list")
    return value


def _parse_roles(raw: Any, vocabulary: frozenset[str]) -> dict[str, frozenset[str]]:
    if not isinstance(raw, dict):
        raise MalformedInputError("policy: roles must be an object")
    roles = {}
    for name, perms in raw.items():
        if not isinstance(perms, list) or not all(
            isinstance(p, str) and p in vocabulary for p in perms
        ):
            raise MalformedInputError(
                f"policy: role {name} names permissions outside {', '.join(sorted(vocabulary))}"
            )
        roles[name] = frozenset(perms)
    return roles


def _parse_binding(raw: Any, roles: Mapping[str, frozenset[str]]) -> Binding:
    if not isinstance(raw, dict):
        raise MalformedInputError("policy: a binding must be an object")
    subject, role = raw.get("subject"), raw.get("role")
    if not isinstance(subject, str) or not isinstance(role, str) or role not in roles:
        raise MalformedInputError(f"policy: binding {raw!r} needs a subject and a known role")
    models = raw.get("models", ["*"])
    devices = raw.get("devices", {})
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise MalformedInputError("policy: binding models must be a list of patterns")
    if not isinstance(devices, dict) or not all(isinstance(v, str) for v in devices.values()):
        raise MalformedInputError("policy: binding devices must map labels to values")
    return Binding(check_subject(subject), role, tuple(models), dict(devices))


def _parse_token(raw: Any) -> TokenEntry:
    if not isinstance(raw, dict):
        raise MalformedInputError("policy: a token must be an object")
    token_id, subject, digest = raw.get("id"), raw.get("subject"), raw.get("sha256")
    if not (isinstance(token_id, str) and TOKEN_ID_PATTERN.match(token_id)):
        raise MalformedInputError("policy: token id is malformed")
    if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
        raise MalformedInputError("policy: token sha256 is malformed")
    return TokenEntry(token_id, check_subject(str(subject)), digest)
