"""RBAC policy on the controller: validate, version, sign with the policy role, serve to devices.

Operators apply a JSON document with roles, bindings (subject, role, model patterns,
device label selector) and, optionally, tokens; the controller sets the version and the
expiry and signs it. Application tokens are created here (the secret is returned once
and only its SHA-256 is signed into the policy) and revoked by a new version without them.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.audit import AuditEvent
from edgefleet.canonical import parse_object
from edgefleet.controller.audit.log import record_event
from edgefleet.controller.rbac.authorization import BUILTIN_OPERATOR_ROLES
from edgefleet.controller.rbac.operators import held_role, require_held
from edgefleet.controller.store.database import Database
from edgefleet.controller.store.schema import PolicyVersion
from edgefleet.controller.trust.keyring import Keyring, TrustMaterial
from edgefleet.errors import MalformedInputError, NotFoundError, PermissionDeniedError
from edgefleet.rbac import DEVICE_PERMISSIONS, Binding, Policy, check_subject, new_token
from edgefleet.trust.envelope import Envelope

MAX_POLICY_BYTES = 1024 * 1024
ROLE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def latest_policy(session: Session) -> tuple[Policy, Envelope] | None:
    """The newest signed policy and its envelope."""
    row = session.execute(
        select(PolicyVersion).order_by(PolicyVersion.version.desc()).limit(1)
    ).scalar_one_or_none()
    if row is None:
        return None
    envelope = Envelope.from_json(row.envelope)
    return Policy.from_payload(envelope.payload), envelope


def parse_document(document: bytes, current: Policy | None) -> Policy:
    """An operator's policy file as the policy it would become (tokens kept if omitted).

    Stricter than reading a signed version: ``roles`` may hold device permissions only
    (operator roles go under ``operator_roles``) and no custom role takes a built-in
    role's name."""
    if len(document) > MAX_POLICY_BYTES:
        raise MalformedInputError(f"a policy document is limited to {MAX_POLICY_BYTES} bytes")
    doc = parse_object(document, "policy document")
    unknown = set(doc) - {"roles", "operator_roles", "bindings", "tokens", "audit_redact"}
    if unknown:
        raise MalformedInputError(f"policy document: unknown keys {sorted(unknown)}")
    if "tokens" not in doc and current is not None:
        doc["tokens"] = json.loads(current.to_payload())["tokens"]
    doc["version"] = current.version if current else 0
    policy = Policy.from_payload(json.dumps(doc).encode("utf-8"))
    for name in (*policy.roles, *policy.operator_roles):
        if not ROLE_NAME.match(name):
            raise MalformedInputError(f"policy: role name {name[:64]!r} is not 1-64 of a-z0-9._-")
    for name, permissions in policy.roles.items():
        if outside := sorted(permissions - DEVICE_PERMISSIONS):
            raise MalformedInputError(
                f"policy: role {name} lists {', '.join(outside)}: roles hold device "
                f"permissions ({', '.join(sorted(DEVICE_PERMISSIONS))}); put operator roles "
                "under operator_roles"
            )
    if shadowed := sorted(set(policy.operator_roles) & set(BUILTIN_OPERATOR_ROLES)):
        raise MalformedInputError(f"policy: operator role {shadowed[0]} is a built-in role")
    return policy


def check_operator_roles(
    session: Session, operator: str, current: Policy | None, proposed: Policy
) -> None:
    """Nobody changes the operator role they hold, nor a role granting what they lack."""
    role, held = held_role(session, operator, current)
    before = current.operator_roles if current else {}
    after = proposed.operator_roles
    for name in sorted(before.keys() | after.keys()):
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if name == role:
            raise PermissionDeniedError(
                f"operator role {name} is the role you hold: another operator must change it"
            )
        require_held(held, (old or frozenset()) | (new or frozenset()), f"operator role {name}")


class PolicyService:
    """Signs every policy change; one change at a time so versions never collide."""

    def __init__(self, db: Database, keyring: Keyring, expiry: timedelta) -> None:
        self.db = db
        self.keyring = keyring
        self.expiry = expiry
        self._lock = threading.Lock()

    def current(self) -> Policy | None:
        """The policy in force, if any."""
        with self.db.session() as session:
            found = latest_policy(session)
        return found[0] if found else None

    def _sign(
        self, session: Session, policy: Policy, actor: str, action: str, target: str
    ) -> Policy:
        """Sign ``policy`` as the next version; ``actor`` is ``operator:NAME`` or ``controller``."""
        current = latest_policy(session)
        version = (current[0].version if current else 0) + 1
        expires = datetime.now(UTC).replace(microsecond=0) + self.expiry
        signed = replace(policy, version=version, expires=expires)
        envelope = self.keyring.current().sign("policy", signed)
        session.add(
            PolicyVersion(
                version=version,
                envelope=envelope.to_json(),
                created_by=actor,
                created_at=datetime.now(UTC),
            )
        )
        record_event(
            session,
            AuditEvent(actor, action, target, "success", {"policy_version": version}),
        )
        return signed

    def resign(self, material: TrustMaterial) -> None:
        """After a policy key rotation: the same policy as a new version under the new keys."""
        with self._lock, self.db.session(exclusive="policy") as session:
            found = latest_policy(session)
            if found is not None and not material.vouches("policy", found[1]):
                self._sign(session, found[0], "controller", "policy.resign", "policy")

    def apply(self, operator: str, document: bytes) -> Policy:
        """Validate, version and sign an operator's policy document."""
        with self._lock, self.db.session(exclusive="policy") as session:
            found = latest_policy(session)
            current = found[0] if found else None
            policy = parse_document(document, current)
            check_operator_roles(session, operator, current, policy)
            return self._sign(session, policy, f"operator:{operator}", "policy.apply", "policy")

    def create_token(
        self,
        operator: str,
        subject: str,
        role: str,
        models: tuple[str, ...],
        devices: dict[str, str],
    ) -> tuple[str, str, Policy]:
        """A new token bound to ``role``; returns (token shown once, token id, new policy)."""
        check_subject(subject)
        with self._lock, self.db.session(exclusive="policy") as session:
            found = latest_policy(session)
            if found is None or role not in found[0].roles:
                raise NotFoundError(f"role {role!r} is not defined by the policy: apply one first")
            policy = found[0]
            token, entry = new_token(subject)
            binding = Binding(subject, role, models or ("*",), devices)
            bindings = (
                policy.bindings if binding in policy.bindings else (*policy.bindings, binding)
            )
            updated = replace(policy, bindings=bindings, tokens=(*policy.tokens, entry))
            signed = self._sign(
                session, updated, f"operator:{operator}", "token.create", entry.token_id
            )
        return token, entry.token_id, signed

    def revoke_token(self, operator: str, token_id: str) -> Policy:
        """A new version without the token; devices refuse the token from their next sync."""
        with self._lock, self.db.session(exclusive="policy") as session:
            found = latest_policy(session)
            policy = found[0] if found else None
            if policy is None or all(t.token_id != token_id for t in policy.tokens):
                raise NotFoundError(f"no token with id {token_id}")
            kept = tuple(t for t in policy.tokens if t.token_id != token_id)
            return self._sign(
                session,
                replace(policy, tokens=kept),
                f"operator:{operator}",
                "token.revoke",
                token_id,
            )
