"""`edgefleetctl models rm` (issue 21) through the real CLI, with a real agent: a version
nothing uses leaves the catalog and, at the device's next sync, its disk; one in use is
refused by name unless --force, which unassigns it and says so in the audit trail."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Fleet, wait_for
from tests.integration.fleets import (
    active_versions,
    one_agent_fleet,
    publish_tiny,
    roll_out_and_wait_active,
)

pytestmark = pytest.mark.integration


def _installed(fleet: Fleet) -> list[str]:
    listed = json.loads(fleet.agent("gw", "models", "list", "-o", "json").stdout)
    return sorted(f"{m['name']}@{m['version']}" for m in listed)


@pytest.fixture
def removal_fleet(tmp_path: Path) -> Iterator[tuple[Fleet, str]]:
    """A controller whose rollouts do not advance by themselves (a long tick): a rollout
    under way stays so while the test looks at it. One agent (site=lab)."""
    with one_agent_fleet(tmp_path, EDGEFLEET_CONTROLLER_ROLLOUT_TICK_SECONDS="3600") as made:
        yield made


def test_a_removed_version_leaves_the_catalog_and_the_device(
    removal_fleet: tuple[Fleet, str],
) -> None:
    fleet, device_id = removal_fleet
    publish_tiny(fleet, "1", seed=1, rows=4000)
    publish_tiny(fleet, "2", seed=2, rows=4000)
    roll_out_and_wait_active(fleet, "1")
    roll_out_and_wait_active(fleet, "2")
    assert _installed(fleet) == ["tiny@1", "tiny@2"]  # 1 kept as the version to fall back to
    blob = json.loads(fleet.ctl("models", "show", "tiny@1", "-o", "json").stdout)["sha256"]
    assert (fleet.agent_dir("gw") / "blobs" / "sha256" / blob).exists()

    removed = fleet.ctl("models", "rm", "tiny@1").stdout  # nothing uses it now
    assert removed.startswith("tiny@1 removed: targets v")
    assert "tiny@1" not in fleet.ctl("models", "list").stdout
    wait_for("tiny@1 off the device", lambda: True if _installed(fleet) == ["tiny@2"] else None, 30)
    assert not (fleet.agent_dir("gw") / "blobs" / "sha256" / blob).exists()
    assert active_versions(fleet, "gw") == {"tiny@2"}

    refused = fleet.ctl("models", "rm", "tiny@2", check=False)
    assert refused.returncode == 1
    rollout = json.loads(fleet.ctl("rollout", "list", "-o", "json").stdout)[0]["id"]
    assert refused.stderr.strip() == (
        f"edgefleetctl: error: tiny@2 is in use (assigned to 1 device(s): {device_id}; "
        f"rollout {rollout} names it): pass --force to remove it anyway (devices stop "
        "running it at their next sync)"
    )
    forced = fleet.ctl("models", "rm", "tiny@2", "--force")
    assert "unassigned from 1 device(s)" in forced.stderr
    assert f"rollout(s) aborted: {rollout}" in forced.stderr
    status = json.loads(fleet.ctl("rollout", "status", str(rollout), "-o", "json").stdout)
    assert status["state"] == "aborted"
    assert status["reason"] == "tiny@2 was removed from the catalog by admin"
    wait_for("tiny@2 off the device", lambda: True if _installed(fleet) == [] else None, 30)
    records = fleet.ctl(
        "audit", "query", "--device", "controller", "--action", "model.remove", "--json"
    ).stdout
    latest = json.loads(records.splitlines()[0])
    assert latest["target"] == "tiny@2" and latest["details"]["forced"] is True
    assert latest["details"]["devices"] == [device_id]

    def device_records() -> list[str] | None:
        out = fleet.ctl(
            "audit", "query", "--device", device_id, "--action", "model.remove", "--json"
        ).stdout.splitlines()
        return out if len(out) == 2 else None

    shipped = wait_for("the device's own removal records", device_records, 30)
    assert {json.loads(r)["target"] for r in shipped} == {"tiny@1", "tiny@2"}
    missing = fleet.ctl("models", "rm", "tiny@9", check=False)
    assert missing.stderr.strip() == "edgefleetctl: error: tiny@9 is not published"
