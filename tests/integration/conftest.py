"""Fixtures that run a real controller and real agents as processes on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from demo import Fleet, active_models, wait_for
from edgefleet.bundled import bundled_model_path
from tests.integration.fleets import ModelFleet


@pytest.fixture(scope="session")
def model_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelFleet]:
    """The demo path: controller, bundled model published and rolled out, agent gw1 serving it."""
    fleet = Fleet(tmp_path_factory.mktemp("model-fleet"))
    try:
        fleet.init_controller()
        fleet.start_controller()
        model = str(bundled_model_path())
        fleet.ctl("models", "publish", model, "--name", "smollm2", "--version", "1.0")
        device_id = fleet.enroll("gw1", {"site": "lab"})
        token = fleet.app_token("gw1", "app:tests", "smollm2*")
        fleet.ctl("rollout", "create", "smollm2@1.0", "--selector", "site=lab")
        api = fleet.start_agent("gw1")
        wait_for("smollm2 to become active", lambda: active_models(api, token), 120)
        yield ModelFleet(fleet, device_id, api, token)
    finally:
        fleet.stop_all()


@pytest.fixture
def small_fleet(tmp_path: Path) -> Iterator[tuple[Fleet, str]]:
    """A fresh controller and one running agent (site=lab) with nothing rolled out yet."""
    fleet = Fleet(tmp_path)
    # Tiny test models have weights but no vocabulary: llama.cpp cannot load them.
    fleet.agent_env["EDGEFLEET_AGENT_SMOKE_TEST"] = "false"
    try:
        fleet.init_controller()
        fleet.start_controller()
        device_id = fleet.enroll("gw", {"site": "lab"})
        fleet.start_agent("gw", sync_interval=1)
        yield fleet, device_id
    finally:
        fleet.stop_all()
