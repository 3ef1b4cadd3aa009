"""The verbs an operator needs beside create (issue 21), through the real CLIs against a
real controller: enrollment tokens listed and revoked, operators listed and removed,
devices labelled into a selector. Every mutation is audited; every refusal is one line."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from tests.harness import Fleet
from tests.integration.fleets import publish_tiny

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path_factory.mktemp("verbs"))
    try:
        fleet.init_controller()
        fleet.start_controller()
        yield fleet
    finally:
        fleet.stop_all()


def _audited(fleet: Fleet, action: str) -> list[dict[str, object]]:
    out = fleet.ctl("audit", "query", "--action", action, "--json").stdout
    return [json.loads(line) for line in out.splitlines()]


def _error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr.strip()


def test_enrollment_tokens_are_listed_and_revoked(fleet: Fleet) -> None:
    created = json.loads(fleet.ctl("token", "create", "--label", "site=x", "-o", "json").stdout)
    token, token_id = created["token"], created["token_id"]
    listed = {t["token_id"]: t for t in json.loads(fleet.ctl("token", "list", "-o", "json").stdout)}
    assert listed[token_id]["state"] == "unused" and listed[token_id]["labels"] == {"site": "x"}
    assert token not in fleet.ctl("token", "list", "-o", "wide").stdout  # no secret kept

    assert f"token {token_id} revoked" in fleet.ctl("token", "revoke", token_id).stdout
    assert _audited(fleet, "token.revoke")[0]["target"] == token_id
    table = fleet.ctl("token", "list").stdout
    assert any(line.startswith(token_id) and "revoked" in line for line in table.splitlines())
    enroll = fleet.run(
        "edgefleet-agent", "--data-dir", str(fleet.root / "late"), "enroll",
        "--controller", fleet.enroll_address, "--token", token,
        "--root-fingerprint", fleet.fingerprint, check=False,
    )  # fmt: skip
    assert "enrollment token was revoked" in _error(enroll)
    again = fleet.ctl("token", "revoke", token_id, check=False)
    assert _error(again).endswith("was already revoked or just used")
    assert "16 hexadecimal digits" in _error(fleet.ctl("token", "revoke", token, check=False))


def test_operators_are_listed_and_removed(fleet: Fleet) -> None:
    credential = fleet.root / "olga"
    fleet.ctl("operator", "add", "olga", "--role", "device-manager", "--out", str(credential))
    config = credential / "edgefleetctl.toml"
    names = {o["name"]: o for o in json.loads(fleet.ctl("operators", "list", "-o", "json").stdout)}
    assert names["olga"]["role"] == "device-manager" and names["olga"]["created_by"] == "admin"
    assert fleet.ctl_as(config, "devices", "list").returncode == 0
    # olga may not manage operators; nobody removes themselves
    assert "lacks operators.manage" in _error(fleet.ctl_as(config, "operator", "list"))
    assert "cannot remove yourself" in _error(fleet.ctl("operator", "remove", "admin", check=False))

    assert "olga removed" in fleet.ctl("operator", "remove", "olga").stdout
    refused = fleet.ctl_as(config, "devices", "list")
    assert "operator:olga is not a registered operator" in _error(refused)
    assert "no operator olga" in _error(fleet.ctl("operator", "remove", "olga", check=False))
    [removal] = _audited(fleet, "operator.remove")
    assert removal["target"] == "operator:olga" and removal["actor"] == "operator:admin"


def test_a_device_accepted_by_approval_is_labelled_into_a_rollout(fleet: Fleet) -> None:
    """A device that enrolled without a token has no labels: `devices label` makes it one
    that a selector reaches, and a rollout under way picks it up."""
    publish_tiny(fleet, "1", seed=1)
    empty = fleet.ctl("rollout", "create", "tiny@1", "--selector", "site=lab", check=False)
    assert _error(empty).endswith(
        "site=lab matches no device: check the labels (`devices list`), or pass --allow-empty "
        "to create a rollout that waits for devices to enroll"
    )
    rollout_id = fleet.ctl(
        "rollout", "create", "tiny@1", "--selector", "site=lab", "--allow-empty", "-o", "name"
    )
    pending = fleet.run(
        "edgefleet-agent", "--data-dir", str(fleet.agent_dir("gw")), "enroll",
        "--controller", fleet.enroll_address, "--root-fingerprint", fleet.fingerprint,
        check=False,
    )  # fmt: skip
    assert pending.returncode == 3  # waits for approval
    [device] = [d for d in fleet.devices() if d["state"] == "pending"]
    device_id = str(device["device_id"])
    fleet.ctl("devices", "accept", device_id)
    assert "site=lab" not in fleet.ctl("devices", "list", "--selector", "site=lab").stdout

    labelled = fleet.ctl("devices", "label", device_id, "site=lab", "row=3").stdout
    assert labelled.strip() == f"{device_id}: row=3,site=lab"
    assert device_id in fleet.ctl("devices", "list", "--selector", "site=lab").stdout
    status = json.loads(
        fleet.ctl("rollout", "status", rollout_id.stdout.strip(), "-o", "json").stdout
    )
    assert [t["device_id"] for t in status["targets"]] == [device_id]
    assert status["targets"][0]["reason"] == "labelled into the rollout's selector"

    fleet.ctl("devices", "label", device_id, "--remove", "row")
    assert json.loads(fleet.ctl("devices", "show", device_id, "-o", "json").stdout)["labels"] == {
        "site": "lab"
    }
    assert "has no label row" in _error(
        fleet.ctl("devices", "label", device_id, "--remove", "row", check=False)
    )
    assert "give labels to set" in _error(fleet.ctl("devices", "label", device_id, check=False))
    [first, second] = _audited(fleet, "device.label")[::-1]
    assert first["details"] == {"before": {}, "after": {"row": "3", "site": "lab"}}
    assert second["details"] == {"before": {"row": "3", "site": "lab"}, "after": {"site": "lab"}}

    # `rollout status --watch` follows to the end: exit 0 when the rollout completed (this
    # one did, holding no device when created), 1 when it halted or was aborted
    done = fleet.ctl("rollout", "status", rollout_id.stdout.strip(), "--watch")
    assert done.stdout.startswith(f"rollout {rollout_id.stdout.strip()} completed")
    publish_tiny(fleet, "2", seed=2)
    rollout = fleet.ctl("rollout", "create", "tiny@2", "--selector", "site=lab", "-o", "name")
    fleet.ctl("rollout", "abort", rollout.stdout.strip())
    watched = fleet.ctl("rollout", "status", rollout.stdout.strip(), "--watch", check=False)
    assert watched.stdout.startswith(f"rollout {rollout.stdout.strip()} aborted, wave 1/1")
    assert _error(watched) == (
        f"edgefleetctl: error: rollout {rollout.stdout.strip()} aborted: abort by admin"
    )


def test_pins_are_listed_and_a_revoked_device_is_removed(fleet: Fleet) -> None:
    """`rollout pins list` shows each pin and the devices it holds; `devices rm` forgets
    a revoked device (and its device pins) but not its audit records."""
    device_id = fleet.enroll("gw2", {"site": "dock"})
    fleet.ctl("rollout", "pin", "tiny@1", "--device", device_id)
    fleet.ctl("rollout", "pin", "tiny@2", "--selector", "site=dock")
    pins = json.loads(fleet.ctl("rollout", "pins", "list", "-o", "json").stdout)
    assert [(p["version"], p["device_id"], p["selector"], p["devices"]) for p in pins] == [
        ("1", device_id, {}, 1),
        ("2", "", {"site": "dock"}, 1),
    ]
    table = fleet.ctl("rollout", "pins", "list").stdout.splitlines()
    assert table[0].split() == ["MODEL", "DEVICE", "SELECTOR", "DEVICES", "BY", "SINCE"]

    refused = fleet.ctl("devices", "rm", device_id, check=False)
    assert _error(refused).endswith(
        f"device {device_id} is active: revoke it first (`devices revoke {device_id}`)"
    )
    fleet.ctl("devices", "revoke", device_id)
    assert "removed" in fleet.ctl("devices", "rm", device_id).stdout
    assert device_id not in fleet.ctl("devices", "list").stdout
    pins = json.loads(fleet.ctl("rollout", "pins", "list", "-o", "json").stdout)
    assert [(p["version"], p["devices"]) for p in pins] == [("2", 0)]
    [removal] = _audited(fleet, "device.remove")
    assert removal["target"] == f"device:{device_id}"
    assert removal["details"]["labels"] == {"site": "dock"}
    enrolled = [r["target"] for r in _audited(fleet, "device.enroll")]
    assert f"device:{device_id}" in enrolled  # the trail of what it was stays


def test_a_role_that_creates_rollouts_without_reading_plans_still_can(fleet: Fleet) -> None:
    """`rollout create` checks a selector against the plan first; an operator whose role
    may create rollouts but not read them (a custom role) is not stopped by that check."""
    policy = fleet.root / "deployer-policy.json"
    roles = {"deployer": ["rollouts.manage"]}
    policy.write_text(json.dumps({"roles": {}, "operator_roles": roles, "bindings": []}))
    fleet.ctl("policy", "apply", str(policy))
    credential = fleet.root / "dora"
    fleet.ctl("operator", "add", "dora", "--role", "deployer", "--out", str(credential))
    config = credential / "edgefleetctl.toml"
    created = fleet.ctl_as(
        config, "rollout", "create", "tiny@1", "--selector", "site=lab", "-o", "name"
    )
    assert created.returncode == 0, created.stderr
    assert int(created.stdout) > 0
