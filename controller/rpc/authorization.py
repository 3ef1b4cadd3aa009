"""Default-deny authorization: every RPC method names the principal kinds it admits.

The principal comes from the verified mTLS peer certificate's common name, which only
the controller's CA sets: ``device:<id>`` or ``operator:<name>``. A call with no
certificate (the enrollment listener) is ``anonymous``. A method missing from the
table is denied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from edgefleet.errors import AuthenticationError, PermissionDeniedError

Kind = Literal["anonymous", "device", "operator"]

_DEVICE = "/edgefleet.v1.DeviceService/"
_OPERATOR = "/edgefleet.v1.OperatorService/"

METHOD_ACCESS: Mapping[str, frozenset[Kind]] = {
    _DEVICE + "GetTrustBootstrap": frozenset({"anonymous", "device", "operator"}),
    _DEVICE + "Enroll": frozenset({"anonymous"}),
    _DEVICE + "Sync": frozenset({"device"}),
    _DEVICE + "ReadBlob": frozenset({"device"}),
    _DEVICE + "PushAudit": frozenset({"device"}),
    _OPERATOR + "CreateEnrollmentToken": frozenset({"operator"}),
    _OPERATOR + "PublishModel": frozenset({"operator"}),
    _OPERATOR + "CreateRollout": frozenset({"operator"}),
    _OPERATOR + "ListDevices": frozenset({"operator"}),
    _OPERATOR + "ExportAudit": frozenset({"operator"}),
}


@dataclass(frozen=True)
class Principal:
    """Who is calling."""

    kind: Kind
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}" if self.name else self.kind


ANONYMOUS = Principal("anonymous", "")


def principal_from_common_name(common_name: str | None) -> Principal:
    """Map a verified certificate's common name to a principal."""
    if common_name is None:
        return ANONYMOUS
    kind, sep, name = common_name.partition(":")
    if sep and name and kind == "device":
        return Principal("device", name)
    if sep and name and kind == "operator":
        return Principal("operator", name)
    raise AuthenticationError(f"certificate common name {common_name!r} names no principal")


def authorize(method: str, principal: Principal) -> None:
    """Raise unless the table admits ``principal`` to ``method``."""
    allowed = METHOD_ACCESS.get(method)
    if allowed is None:
        raise PermissionDeniedError(f"{method} has no authorization entry")
    if principal.kind in allowed:
        return
    if principal.kind == "anonymous":
        raise AuthenticationError(f"{method} needs a client certificate")
    raise PermissionDeniedError(f"{principal.kind} may not call {method}")
