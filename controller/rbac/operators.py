"""Operators: named holders of a certificate and one role (built in or defined by policy)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from edgefleet.audit import AuditEvent
from edgefleet.controller.audit.log import record_event
from edgefleet.controller.rbac.authorization import BUILTIN_OPERATOR_ROLES
from edgefleet.controller.rbac.views import OperatorView
from edgefleet.controller.store.database import Database
from edgefleet.controller.store.schema import Operator
from edgefleet.controller.trust.ca import OPERATOR_VALIDITY, CertificateAuthority
from edgefleet.errors import (
    ConflictError,
    MalformedInputError,
    NotFoundError,
    PermissionDeniedError,
)
from edgefleet.rbac import Policy
from edgefleet.tls import cert_pem, load_certificate
from edgefleet.trust.metadata import format_time

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def role_permissions(role: str, policy: Policy | None) -> frozenset[str]:
    """Permissions of a built-in role, or of a custom operator role the policy defines."""
    if role in BUILTIN_OPERATOR_ROLES:
        return BUILTIN_OPERATOR_ROLES[role]
    if policy is not None and role in policy.operator_roles:
        return policy.operator_roles[role]
    return frozenset()


def held_role(session: Session, name: str, policy: Policy | None) -> tuple[str, frozenset[str]]:
    """The role operator ``name`` holds and its permissions, as this transaction sees them."""
    operator = session.get(Operator, name)
    if operator is None:
        raise PermissionDeniedError(f"operator:{name} is not a registered operator")
    return operator.role, role_permissions(operator.role, policy)


def require_held(held: frozenset[str], granted: frozenset[str], what: str) -> None:
    """Nobody grants what they do not hold: refuse unless ``granted`` is within ``held``."""
    missing = sorted(granted - held)
    if missing:
        raise PermissionDeniedError(f"{what} grants {', '.join(missing)}, which you do not hold")


def ensure_bootstrap_admin(db: Database, admin_cert_pem: bytes) -> None:
    """On a new controller, register the `admin` credential that `init` wrote."""
    with db.session() as session:
        if session.execute(select(func.count()).select_from(Operator)).scalar_one():
            return
        serial = format(load_certificate(admin_cert_pem).serial_number, "x")
        session.add(
            Operator(
                name="admin",
                role="admin",
                certificate_serial=serial,
                created_by="init",
                created_at=datetime.now(UTC),
            )
        )


def add_operator(
    db: Database,
    ca: CertificateAuthority,
    by: str,
    name: str,
    role: str,
    csr_pem: bytes,
    policy: Policy | None,
) -> bytes:
    """Sign the new operator's CSR with CN ``operator:<name>`` and record their role."""
    if not NAME_PATTERN.match(name):
        raise MalformedInputError(
            f"operator name {name!r} must be 1-64 chars of a-z, 0-9, '.', '_', '-'"
        )
    granted = role_permissions(role, policy)
    if not granted:
        known = sorted(BUILTIN_OPERATOR_ROLES) + sorted(policy.operator_roles if policy else ())
        raise NotFoundError(f"unknown role {role!r}; roles: {', '.join(known)}")
    with db.session() as session:
        _, held = held_role(session, by, policy)
        require_held(held, granted, f"role {role}")
        if session.get(Operator, name) is not None:
            raise ConflictError(f"operator {name} already exists")
        cert = ca.issue_from_csr(csr_pem, f"operator:{name}", OPERATOR_VALIDITY)
        session.add(
            Operator(
                name=name,
                role=role,
                certificate_serial=format(cert.serial_number, "x"),
                created_by=by,
                created_at=datetime.now(UTC),
            )
        )
        record_event(
            session,
            AuditEvent(
                f"operator:{by}", "operator.add", f"operator:{name}", "success", {"role": role}
            ),
        )
    return cert_pem(cert)


def list_operators(db: Database) -> list[OperatorView]:
    """Every registered operator, by name."""
    with db.session() as session:
        rows = session.execute(select(Operator).order_by(Operator.name)).scalars()
        return [
            OperatorView(
                r.name, r.role, r.certificate_serial, r.created_by, format_time(r.created_at)
            )
            for r in rows
        ]


def remove_operator(db: Database, by: str, name: str, policy: Policy | None) -> None:
    """Unregister operator ``name``: their certificate is refused from the next call on
    (admission reads the operator table at every call). Nobody removes themselves, an
    operator holding permissions they do not hold, or the last one who can manage
    operators (the fleet would have nobody left to add one)."""
    if by == name:
        raise ConflictError("you cannot remove yourself: ask another operator")
    with db.session() as session:
        operator = session.get(Operator, name, with_for_update=True)
        if operator is None:
            raise NotFoundError(f"no operator {name}")
        _, held = held_role(session, by, policy)
        require_held(held, role_permissions(operator.role, policy), f"removing {name}")
        managers = [
            o.name
            for o in session.execute(select(Operator).with_for_update()).scalars()
            if "operators.manage" in role_permissions(o.role, policy)
        ]
        if managers == [name]:
            raise ConflictError(f"{name} is the last operator who can manage operators")
        session.delete(operator)
        record_event(
            session,
            AuditEvent(
                f"operator:{by}",
                "operator.remove",
                f"operator:{name}",
                "success",
                {"role": operator.role, "certificate_serial": operator.certificate_serial},
            ),
        )
