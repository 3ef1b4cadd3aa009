"""Default-deny authorization: every RPC method names who may call it and what permission it needs.

The principal comes from the verified mTLS peer certificate's common name, which only
the controller's CA sets: ``device:<id>`` or ``operator:<name>``. A call with no
certificate (the enrollment listener) is ``anonymous``. Operators additionally need the
method's permission through their role. A method missing from the table is denied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from edgefleet.errors import AuthenticationError, PermissionDeniedError
from edgefleet.rbac import OPERATOR_PERMISSIONS

Kind = Literal["anonymous", "device", "operator"]

_DEVICE = "/edgefleet.v1.DeviceService/"
_OPERATOR = "/edgefleet.v1.OperatorService/"


@dataclass(frozen=True)
class Rule:
    """Who may call a method, the permission an operator needs for it, and whether its
    success changes what devices sync or may do (``wakes_devices``): then the guard tells
    the change feed after the call, which drops kept sync answers, remembered admissions
    and the cached snapshot, and wakes every watch stream. Each operator method states
    it; a device's own calls never change what other devices are told."""

    kinds: frozenset[Kind]
    permission: str | None = None
    wakes_devices: bool = False


def _operator(permission: str, *, wakes_devices: bool) -> Rule:
    assert permission in OPERATOR_PERMISSIONS, permission
    return Rule(frozenset({"operator"}), permission, wakes_devices)


METHOD_RULES: Mapping[str, Rule] = {
    _DEVICE + "GetTrustBootstrap": Rule(frozenset({"anonymous", "device", "operator"})),
    _DEVICE + "Enroll": Rule(frozenset({"anonymous"})),
    _DEVICE + "Sync": Rule(frozenset({"device"})),
    _DEVICE + "ReadBlob": Rule(frozenset({"device"})),
    _DEVICE + "PushAudit": Rule(frozenset({"device"})),
    _DEVICE + "RenewCertificate": Rule(frozenset({"device"})),
    _DEVICE + "Watch": Rule(frozenset({"device"})),
    _OPERATOR + "CreateEnrollmentToken": _operator("devices.manage", wakes_devices=False),
    _OPERATOR + "PublishModel": _operator("models.publish", wakes_devices=True),
    _OPERATOR + "CreateRollout": _operator("rollouts.manage", wakes_devices=True),
    _OPERATOR + "PlanRollout": _operator("rollouts.read", wakes_devices=False),
    _OPERATOR + "GetRollout": _operator("rollouts.read", wakes_devices=False),
    _OPERATOR + "ListRollouts": _operator("rollouts.read", wakes_devices=False),
    _OPERATOR + "ChangeRollout": _operator("rollouts.manage", wakes_devices=True),
    _OPERATOR + "PinModel": _operator("rollouts.manage", wakes_devices=True),
    _OPERATOR + "UnpinModel": _operator("rollouts.manage", wakes_devices=True),
    _OPERATOR + "ListDevices": _operator("devices.read", wakes_devices=False),
    _OPERATOR + "GetFleetSummary": _operator("devices.read", wakes_devices=False),
    # Any registered operator may ask who it is (its role decides nothing here).
    _OPERATOR + "WhoAmI": Rule(frozenset({"operator"})),
    _OPERATOR + "ExportAudit": _operator("audit.export", wakes_devices=False),
    _OPERATOR + "QueryAudit": _operator("audit.read", wakes_devices=False),
    _OPERATOR + "ClearAuditAlert": _operator("audit.manage", wakes_devices=False),
    _OPERATOR + "AddOperator": _operator("operators.manage", wakes_devices=False),
    _OPERATOR + "ApplyPolicy": _operator("policy.manage", wakes_devices=True),
    _OPERATOR + "GetPolicy": _operator("policy.read", wakes_devices=False),
    _OPERATOR + "CreateAppToken": _operator("tokens.manage", wakes_devices=True),
    _OPERATOR + "RevokeAppToken": _operator("tokens.manage", wakes_devices=True),
    _OPERATOR + "SetDeviceState": _operator("devices.manage", wakes_devices=True),
    _OPERATOR + "PreauthorizeDevice": _operator("devices.manage", wakes_devices=False),
    _OPERATOR + "ExportBundle": _operator("models.publish", wakes_devices=False),
    _OPERATOR + "GetModelReport": _operator("models.read", wakes_devices=False),
    _OPERATOR + "ListEnrollmentTokens": _operator("devices.read", wakes_devices=False),
    _OPERATOR + "RevokeEnrollmentToken": _operator("devices.manage", wakes_devices=False),
    _OPERATOR + "ListOperators": _operator("operators.manage", wakes_devices=False),
    _OPERATOR + "RemoveOperator": _operator("operators.manage", wakes_devices=False),
    # A label decides which rollouts and pins select the device.
    _OPERATOR + "LabelDevice": _operator("devices.manage", wakes_devices=True),
    _OPERATOR + "ListModels": _operator("models.read", wakes_devices=False),
    _OPERATOR + "ListPins": _operator("rollouts.read", wakes_devices=False),
    _OPERATOR + "RemoveDevice": _operator("devices.manage", wakes_devices=False),
    _OPERATOR + "RemoveModel": _operator("models.publish", wakes_devices=True),
}

ALL = OPERATOR_PERMISSIONS
BUILTIN_OPERATOR_ROLES: Mapping[str, frozenset[str]] = {
    "admin": ALL,
    "release-manager": frozenset(
        {
            "models.read",
            "models.publish",
            "rollouts.read",
            "rollouts.manage",
            "devices.read",
        }
    ),
    "device-manager": frozenset({"devices.read", "devices.manage", "models.read", "rollouts.read"}),
    "auditor": frozenset(
        {
            "audit.read",
            "audit.export",
            "devices.read",
            "models.read",
            "policy.read",
            "rollouts.read",
        }
    ),
    "viewer": frozenset({"devices.read", "models.read", "policy.read", "rollouts.read"}),
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


def authorize(method: str, principal: Principal, permissions: frozenset[str] = frozenset()) -> None:
    """Raise unless the table admits ``principal`` (holding ``permissions``) to ``method``."""
    rule = METHOD_RULES.get(method)
    if rule is None:
        raise PermissionDeniedError(f"{method} has no authorization entry")
    if principal.kind not in rule.kinds:
        if principal.kind == "anonymous":
            raise AuthenticationError(f"{method} needs a client certificate")
        raise PermissionDeniedError(f"{principal.kind} may not call {method}")
    if (
        principal.kind == "operator"
        and rule.permission is not None
        and (rule.permission not in permissions)
    ):
        raise PermissionDeniedError(
            f"{principal} lacks {rule.permission} for {method.rsplit('/', 1)[-1]}"
        )
