"""Staged rollouts with real agents on the real model: the canary goes first and the next
wave starts only once its health report is good; a version that fails its smoke test on
the canary halts the rollout and puts the canary back, and no other device ever fetches
it; `rollout plan` names the devices left out and why."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from edgefleet.bundled import bundled_model_path
from tests.ggufkit import write_tiny_gguf
from tests.harness import Fleet, wait_for
from tests.integration.fleets import active_versions, agent_actions, models, serving

pytestmark = [pytest.mark.integration, pytest.mark.model]

LAB = ("gw1", "gw2", "gw3")


def _status(fleet: Fleet, rollout_id: int) -> dict[str, Any]:
    return dict(json.loads(fleet.ctl("rollout", "status", str(rollout_id), "--json").stdout))


def _rollout_id(created: str) -> int:
    return int(created.split()[1].rstrip(":"))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fleet, dict[str, str]]]:
    """Three lab agents and one elsewhere, all serving smollm2@1.0."""
    fleet = Fleet(tmp_path_factory.mktemp("staged"))
    fleet.controller_env["EDGEFLEET_CONTROLLER_ROLLOUT_TICK_SECONDS"] = "1"
    try:
        fleet.init_controller()
        fleet.start_controller()
        model = str(bundled_model_path())
        fleet.ctl("models", "publish", model, "--name", "smollm2", "--version", "1.0")
        ids = {name: fleet.enroll(name, {"site": "lab"}) for name in LAB}
        ids["gw4"] = fleet.enroll("gw4", {"site": "depot"})
        fleet.ctl("rollout", "create", "smollm2@1.0")
        for name in ids:
            fleet.start_agent(name, sync_interval=2)
        for name in ids:
            wait_for(
                f"{name} to serve smollm2@1.0",
                serving(fleet, name, "smollm2@1.0"),
                120,
            )
        yield fleet, ids
    finally:
        fleet.stop_all()


def test_the_canary_goes_first_and_the_wave_follows_its_healthy_report(
    fleet: tuple[Fleet, dict[str, str]],
) -> None:
    fleet_, ids = fleet
    fleet_.ctl(
        "models", "publish", str(bundled_model_path()), "--name", "smollm2", "--version", "2.0"
    )
    created = fleet_.ctl(
        "rollout", "create", "smollm2@2.0", "--selector", "site=lab",
        "--canary", "1", "--soak", "3",
    ).stdout  # fmt: skip
    assert "assigned to 1 device(s) now, 3 in all in 2 waves" in created
    rollout_id = _rollout_id(created)
    status = _status(fleet_, rollout_id)
    targets = {t["device_id"]: t for t in status["targets"]}
    (canary,) = [d for d, t in targets.items() if t["wave"] == 0]
    assert {t["state"] for d, t in targets.items() if d != canary} == {"pending"}

    final = wait_for(
        "the rollout to complete",
        lambda: s if (s := _status(fleet_, rollout_id))["state"] == "completed" else None,
        180,
    )
    assert {t["state"] for t in final["targets"]} == {"healthy"}
    # Each was judged on its own report: its smoke test's speed is in the reason.
    assert all("tokens/s" in t["reason"] for t in final["targets"])
    for name in LAB:
        wait_for(
            f"{name} to serve smollm2@2.0",
            serving(fleet_, name, "smollm2@2.0"),
            60,
        )
    assert "smollm2@2.0" not in models(fleet_, "gw4")  # not selected
    # The wave started only after the canary's report: the audit trail says so in order.
    records = [
        json.loads(line)
        for line in fleet_.ctl(
            "audit", "query", "--device", "controller", "--json", "--oldest-first", quiet=True
        ).stdout.splitlines()
        if line.strip()
    ]
    order = [r["action"] for r in records if r["details"].get("rollout_id") == rollout_id]
    assert order == ["rollout.create", "rollout.wave", "rollout.complete"]
    canary_name = next(n for n, i in ids.items() if i == canary)
    activated = [
        a for a in agent_actions(fleet_, canary_name) if a[:2] == ("model.activate", "smollm2@2.0")
    ]
    assert activated == [("model.activate", "smollm2@2.0", "success")]  # applied once


def test_a_smoke_test_failure_halts_and_rolls_the_canary_back(
    fleet: tuple[Fleet, dict[str, str]],
) -> None:
    fleet_, ids = fleet
    broken = write_tiny_gguf(fleet_.root / "no-vocabulary.gguf", seed=9)
    fleet_.ctl("models", "publish", str(broken), "--name", "smollm2", "--version", "3.0")
    created = fleet_.ctl(
        "rollout", "create", "smollm2@3.0", "--selector", "site=lab", "--canary", "1"
    ).stdout
    rollout_id = _rollout_id(created)
    halted = wait_for(
        "the rollout to halt",
        lambda: s if (s := _status(fleet_, rollout_id))["state"] == "halted" else None,
        120,
    )
    assert "smoke test failed" in str(halted["reason"])
    targets = {t["device_id"]: t for t in halted["targets"]}
    (canary,) = [d for d, t in targets.items() if t["wave"] == 0]
    assert targets[canary]["state"] == "failed"
    assert {t["state"] for d, t in targets.items() if d != canary} == {"skipped"}
    canary_name = next(n for n, i in ids.items() if i == canary)
    devices = {d["device_id"]: d for d in fleet_.devices()}
    assert {(a["name"], a["version"]) for a in devices[canary]["assignments"]} == {
        ("smollm2", "2.0")
    }  # back on the version before
    assert ("model.activate", "smollm2@3.0", "smoke_failed") in agent_actions(fleet_, canary_name)
    for name in LAB:
        if ids[name] != canary:
            assert "smollm2@3.0" not in models(fleet_, name)  # never fetched
        assert "smollm2@2.0" in active_versions(fleet_, name)  # kept serving throughout


def test_plan_names_the_devices_left_out_and_why(fleet: tuple[Fleet, dict[str, str]]) -> None:
    fleet_, ids = fleet
    fleet_.ctl("rollout", "pin", "smollm2@2.0", "--device", ids["gw3"])
    plan = json.loads(
        fleet_.ctl("rollout", "plan", "smollm2@1.0", "--selector", "site=lab", "--json").stdout
    )
    reasons = {d["device_id"]: d["reason"] for d in plan["devices"] if d["wave"] == -1}
    assert reasons[ids["gw4"]] == "labels do not match site=lab"
    assert reasons[ids["gw3"]] == "pinned to smollm2@2.0"
    assert "newer than 1.0" in reasons[ids["gw1"]]
    text = fleet_.ctl("rollout", "plan", "smollm2@1.0", "--selector", "site=lab").stdout
    assert f"{ids['gw3']}: pinned to smollm2@2.0" in text
    fleet_.ctl("rollout", "unpin", "smollm2", "--device", ids["gw3"])
    show = fleet_.ctl("devices", "show", ids["gw1"]).stdout
    assert "smollm2@2.0: smoke passed" in show
