"""Default deny: every RPC has an entry; principals and operator roles are kept apart."""

from __future__ import annotations

import pytest

from edgefleet.controller.rbac.authorization import (
    ANONYMOUS,
    BUILTIN_OPERATOR_ROLES,
    METHOD_RULES,
    Principal,
    authorize,
    principal_from_common_name,
)
from edgefleet.errors import AuthenticationError, PermissionDeniedError
from edgefleet.v1 import device_pb2, operator_pb2

SERVICES = [
    device_pb2.DESCRIPTOR.services_by_name["DeviceService"],
    operator_pb2.DESCRIPTOR.services_by_name["OperatorService"],
]
ALL_METHODS = [f"/{s.full_name}/{m.name}" for s in SERVICES for m in s.methods]
OPERATOR_METHODS = [m.name for m in SERVICES[1].methods]

READ_ROLLOUTS = {"PlanRollout", "GetRollout", "ListRollouts", "ListPins"}
MANAGE_ROLLOUTS = {"CreateRollout", "ChangeRollout", "PinModel", "UnpinModel"}
READ_DEVICES = {"ListDevices", "GetFleetSummary", "ListEnrollmentTokens"}
EVERY_OPERATOR = {"WhoAmI"}  # who am I (a console's question): no permission needed
# What each built-in role may do, written out by hand: the matrix the code must match.
EXPECTED = {
    "admin": set(OPERATOR_METHODS),
    "release-manager": {
        "PublishModel",
        "RemoveModel",
        "ExportBundle",
        *MANAGE_ROLLOUTS,
        *READ_ROLLOUTS,
        *READ_DEVICES,
        "GetModelReport",
        "ListModels",
        *EVERY_OPERATOR,
    },  # no QueryAudit: the audit trail is the auditor's (review hole L14)
    "device-manager": {
        "CreateEnrollmentToken",
        *READ_DEVICES,
        "RevokeEnrollmentToken",
        "LabelDevice",
        "RemoveDevice",
        "SetDeviceState",
        "PreauthorizeDevice",
        "GetModelReport",
        "ListModels",
        *READ_ROLLOUTS,
        *EVERY_OPERATOR,
    },
    "auditor": {
        *READ_DEVICES,
        "ExportAudit",
        "QueryAudit",
        "GetPolicy",
        "GetModelReport",
        "ListModels",
        *READ_ROLLOUTS,
        *EVERY_OPERATOR,
    },
    "viewer": {
        *READ_DEVICES,
        "GetPolicy",
        "GetModelReport",
        "ListModels",
        *READ_ROLLOUTS,
        *EVERY_OPERATOR,
    },
}


def test_every_rpc_method_has_an_entry() -> None:
    """Walking the service descriptors finds no method without an authorization entry."""
    missing = [m for m in ALL_METHODS if m not in METHOD_RULES]
    assert not missing
    assert set(METHOD_RULES) == set(ALL_METHODS), "table names methods that do not exist"


def test_unknown_method_is_denied() -> None:
    """A method missing from the table is denied even to an admin."""
    with pytest.raises(PermissionDeniedError, match="no authorization entry"):
        authorize(
            "/edgefleet.v1.OperatorService/DropDatabase",
            Principal("operator", "a"),
            BUILTIN_OPERATOR_ROLES["admin"],
        )


@pytest.mark.parametrize("role", sorted(EXPECTED))
@pytest.mark.parametrize("method", OPERATOR_METHODS)
def test_builtin_role_matrix(role: str, method: str) -> None:
    """Each built-in role is allowed exactly the operator RPCs the matrix lists."""

    def call() -> None:
        authorize(
            f"/edgefleet.v1.OperatorService/{method}",
            Principal("operator", "x"),
            BUILTIN_OPERATOR_ROLES[role],
        )

    if method in EXPECTED[role]:
        call()
    else:
        with pytest.raises(PermissionDeniedError, match="lacks"):
            call()


@pytest.mark.parametrize("method", ALL_METHODS)
def test_anonymous_callers_reach_only_enrollment(method: str) -> None:
    """Without a certificate only GetTrustBootstrap and Enroll are allowed."""
    if method.endswith(("/GetTrustBootstrap", "/Enroll")):
        authorize(method, ANONYMOUS)
    else:
        with pytest.raises(AuthenticationError):
            authorize(method, ANONYMOUS)


@pytest.mark.parametrize("method", [m for m in ALL_METHODS if "OperatorService" in m])
def test_devices_cannot_call_operator_methods(method: str) -> None:
    """A device certificate never opens the operator API, whatever permissions it claims."""
    with pytest.raises(PermissionDeniedError):
        authorize(method, Principal("device", "dev-1"), BUILTIN_OPERATOR_ROLES["admin"])


@pytest.mark.parametrize("method", ["Sync", "ReadBlob", "PushAudit", "RenewCertificate", "Enroll"])
def test_operators_cannot_impersonate_devices(method: str) -> None:
    """An operator certificate cannot call the device methods."""
    with pytest.raises(PermissionDeniedError):
        authorize(
            f"/edgefleet.v1.DeviceService/{method}",
            Principal("operator", "admin"),
            BUILTIN_OPERATOR_ROLES["admin"],
        )


def test_common_names_map_to_principals() -> None:
    """Only `device:` and `operator:` names become principals; anything else is refused."""
    assert principal_from_common_name("device:dev-1") == Principal("device", "dev-1")
    assert principal_from_common_name("operator:alice") == Principal("operator", "alice")
    assert principal_from_common_name(None) == ANONYMOUS
    for bad in ("controller", "device:", "admin:root"):
        with pytest.raises(AuthenticationError):
            principal_from_common_name(bad)


def test_the_readme_role_table_states_each_builtin_role_exactly() -> None:
    """Review hole L14: the README said less than the release-manager could do. Each row
    of its table now names the role's permissions, and they are the code's."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("| role | permissions (what they allow) |", 1)[1].split("\n\n", 1)[0]
    rows = dict(re.findall(r"^\| ([a-z-]+) \| (.+) \|$", table, re.MULTILINE))
    assert set(rows) == set(BUILTIN_OPERATOR_ROLES)
    for role, text in rows.items():
        named = set(re.findall(r"`([a-z]+\.[a-z]+)`", text))
        expected = BUILTIN_OPERATOR_ROLES[role]
        assert named == (set() if role == "admin" else expected), role
    assert "audit.read" not in BUILTIN_OPERATOR_ROLES["release-manager"]


# The operator methods whose success changes what devices sync or may do, written out by
# hand: a new mutating method must be added here and in the table, or this fails.
WAKES_DEVICES = {
    "PublishModel",
    "CreateRollout",
    "ChangeRollout",
    "PinModel",
    "UnpinModel",
    "ApplyPolicy",
    "CreateAppToken",
    "RevokeAppToken",
    "SetDeviceState",
    "LabelDevice",
    "RemoveModel",
}


def test_the_methods_that_wake_devices_are_the_declared_ones() -> None:
    declared = {m.rsplit("/", 1)[1] for m, rule in METHOD_RULES.items() if rule.wakes_devices}
    assert declared == WAKES_DEVICES
    assert all(
        m.startswith("/edgefleet.v1.OperatorService/")
        for m, rule in METHOD_RULES.items()
        if rule.wakes_devices
    )
