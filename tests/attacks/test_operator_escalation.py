"""Review hole H3: `policy.manage` was a path to admin. Now nobody grants a permission they
do not hold, nobody changes the role they hold, operator and device permissions are
separate vocabularies, and issuing app tokens is its own permission (`tokens.manage`).
Each attack runs as the review ran it: `edgefleetctl` against a real controller."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from tests.harness import BIN, Fleet

pytestmark = pytest.mark.integration

ROLES = {
    "policy-editor": ["policy.manage", "policy.read"],
    "ops-lead": ["operators.manage", "devices.read"],
    "token-issuer": ["tokens.manage", "policy.read"],
}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A controller whose policy defines three narrow operator roles, one operator each."""
    fleet = Fleet(tmp_path_factory.mktemp("escalation"))
    try:
        fleet.init_controller()
        fleet.start_controller()
        _apply(fleet, None, operator_roles=ROLES)
        for name, role in (("eve", "policy-editor"), ("olga", "ops-lead"), ("tim", "token-issuer")):
            fleet.ctl("operator", "add", name, "--role", role, "--out", str(fleet.root / name))
        yield fleet
    finally:
        fleet.stop_all()


def _as(fleet: Fleet, name: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    config = fleet.operator_config if name is None else fleet.root / name / "edgefleetctl.toml"
    command = [str(BIN / "edgefleetctl"), "--config", str(config)]
    return subprocess.run(
        [*command, "--controller", fleet.sync_address, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _apply(fleet: Fleet, name: str | None, **document: object) -> subprocess.CompletedProcess[str]:
    path = fleet.root / f"policy-{len(list(fleet.root.glob('policy-*')))}.json"
    path.write_text(json.dumps({"roles": {"inference": ["inference.invoke"]}, **document}))
    return _as(fleet, name, "policy", "apply", str(path))


def _refused(result: subprocess.CompletedProcess[str], reason: str) -> None:
    assert result.returncode != 0, result.stdout
    assert reason in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_operator_cannot_rewrite_the_role_it_holds(fleet: Fleet) -> None:
    """The review's attack: policy-editor adds operators.manage to its own role."""
    roles = {**ROLES, "policy-editor": ["policy.manage", "policy.read", "operators.manage"]}
    _refused(_apply(fleet, "eve", operator_roles=roles), "is the role you hold")


def test_an_operator_cannot_define_a_role_beyond_its_own(fleet: Fleet) -> None:
    """policy-editor cannot create (nor widen, nor remove) a role granting what it lacks."""
    boss = {**ROLES, "boss": ["operators.manage", "policy.manage"]}
    _refused(_apply(fleet, "eve", operator_roles=boss), "grants operators.manage, which you")
    fewer = {k: v for k, v in ROLES.items() if k != "ops-lead"}
    _refused(_apply(fleet, "eve", operator_roles=fewer), "operator role ops-lead grants")
    # What it holds, it may still do: device roles and bindings are its job.
    roles = {"inference": ["inference.invoke"], "reader": ["models.read"]}
    kept = _apply(fleet, "eve", operator_roles=ROLES, roles=roles)
    assert kept.returncode == 0, kept.stderr


def test_an_operator_cannot_issue_a_credential_above_its_own(fleet: Fleet) -> None:
    """ops-lead may add operators, but only with roles whose permissions it holds."""
    out = str(fleet.root / "mal")
    _refused(
        _as(fleet, "olga", "operator", "add", "mal", "--role", "admin", "--out", out),
        "role admin grants",
    )
    _refused(
        _as(fleet, "eve", "operator", "add", "mal", "--role", "viewer", "--out", out),
        "lacks operators.manage",
    )
    assert not (fleet.root / "mal").exists()  # nothing written for a refused credential
    peer = str(fleet.root / "peer")
    added = _as(fleet, "olga", "operator", "add", "peer", "--role", "ops-lead", "--out", peer)
    assert added.returncode == 0, added.stderr


def test_issuing_app_tokens_is_its_own_permission(fleet: Fleet) -> None:
    """policy.manage no longer issues tokens; tokens.manage does, and cannot apply policy."""
    create = ("tokens", "create", "app:sensor", "--role", "inference")
    _refused(_as(fleet, "eve", *create), "lacks tokens.manage")
    issued = _as(fleet, "tim", *create)
    assert issued.returncode == 0 and issued.stdout.startswith("efk_"), issued.stderr
    _refused(_apply(fleet, "tim", operator_roles=ROLES), "lacks policy.manage")


def test_operator_permissions_are_refused_in_device_roles(fleet: Fleet) -> None:
    """A device role listing an operator permission is refused, with where it belongs."""
    _refused(
        _apply(fleet, None, operator_roles=ROLES, roles={"ops": ["devices.manage"]}),
        "put operator roles under operator_roles",
    )
    _refused(
        _apply(fleet, None, operator_roles={**ROLES, "admin": ["devices.read"]}),
        "operator role admin is a built-in role",
    )
