"""Who may do what, decided per call from the database: device state, operator role, policy."""

from __future__ import annotations

from sqlalchemy import select

from edgefleet.audit import AuditEvent
from edgefleet.controller.audit.log import record_event
from edgefleet.controller.rbac.authorization import Principal, authorize
from edgefleet.controller.rbac.operators import role_permissions
from edgefleet.controller.rbac.policies import latest_policy
from edgefleet.controller.store.database import Database
from edgefleet.controller.store.schema import Device, Operator
from edgefleet.errors import AuthenticationError, EdgefleetError, PermissionDeniedError


class AccessControl:
    """Admits a call or raises (and audits the denial).

    A device admitted once is admitted again without a query while the revision it was
    admitted under holds (edgefleet.controller.fleet.syncs: every change of a device's state or
    certificate moves it, here or on another replica): a device syncing every minute
    costs its admission query once, not at every call.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        # (revision, the device certificates admitted under it); replaced as a whole.
        self._admitted: tuple[object, set[tuple[str, str]]] = (None, set())

    def admitted(self, method: str, principal: Principal, serial: str, revision: object) -> bool:
        """True when this device certificate was admitted under ``revision`` and the
        method is one a device may call; False means: ask `admit` (which also audits a
        denial)."""
        admitted_under, devices = self._admitted
        if principal.kind != "device" or revision != admitted_under:
            return False
        if (principal.name, serial) not in devices:
            return False
        try:
            authorize(method, principal, frozenset())
        except EdgefleetError:
            return False
        return True

    def admit(
        self, method: str, principal: Principal, serial: str, revision: object = None
    ) -> None:
        """Check the principal is current (not revoked, this certificate) and allowed;
        ``revision``, read before this check, lets `admitted` answer for the device later."""
        try:
            permissions = self._current_permissions(principal, serial)
            authorize(method, principal, permissions)
        except EdgefleetError as e:
            self._audit_denial(method, principal, str(e))
            raise
        if principal.kind == "device" and revision is not None:
            self._remember(principal.name, serial, revision)

    def forget(self, device_id: str) -> None:
        """Ask the database again at this device's next call (its certificate changed:
        the one before last is no longer accepted)."""
        _, devices = self._admitted
        for admitted in list(devices):  # a copy: admissions are added from other threads
            if admitted[0] == device_id:
                devices.discard(admitted)

    def _remember(self, device_id: str, serial: str, revision: object) -> None:
        admitted_under, devices = self._admitted
        if revision != admitted_under:
            devices = set()
            self._admitted = (revision, devices)
        devices.add((device_id, serial))

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
