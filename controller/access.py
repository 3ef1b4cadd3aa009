"""Who may do what, decided per call from the database: device state, operator role, policy."""

from __future__ import annotations

from sqlalchemy import select

from controller.auditlog import record_event
from controller.operators import role_permissions
from controller.policies import latest_policy
from controller.rpc.authorization import Principal, authorize
from controller.store.database import Database
from controller.store.schema import Device, Operator
from edgefleet.audit import AuditEvent
from edgefleet.errors import AuthenticationError, EdgefleetError, PermissionDeniedError


class AccessControl:
    """Admits a call or raises (and audits the denial)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def admit(self, method: str, principal: Principal, serial: str) -> None:
        """Check the principal is current (not revoked, this certificate) and allowed."""
        try:
            permissions = self._current_permissions(principal, serial)
            authorize(method, principal, permissions)
        except EdgefleetError as e:
            self._audit_denial(method, principal, str(e))
            raise

    def _current_permissions(self, principal: Principal, serial: str) -> frozenset[str]:
        if principal.kind == "anonymous":
            return frozenset()
        with self.db.session() as session:
            if principal.kind == "device":
                row = session.execute(
                    select(Device.state, Device.certificate_serial, Device.previous_serial).where(
                        Device.device_id == principal.name
                    )
                ).first()
                if row is None or row.state != "active":
                    state = row.state if row else "unknown"
                    raise PermissionDeniedError(f"device {principal.name} is {state}")
                if serial not in (row.certificate_serial, row.previous_serial):
                    raise AuthenticationError("this device certificate was replaced")
                return frozenset()
            operator = session.get(Operator, principal.name)
            if operator is None:
                raise PermissionDeniedError(f"{principal} is not a registered operator")
            if serial != operator.certificate_serial:
                raise AuthenticationError("this operator certificate was replaced")
            policy = latest_policy(session)
            return role_permissions(operator.role, policy[0] if policy else None)

    def _audit_denial(self, method: str, principal: Principal, reason: str) -> None:
        actor = str(principal)
        with self.db.session() as session:
            record_event(
                session,
                AuditEvent(
                    actor, "access.denied", method.rsplit("/", 1)[-1], "denied", {"reason": reason}
                ),
            )
