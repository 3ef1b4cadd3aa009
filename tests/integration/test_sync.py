"""Sync behaviour over real processes: changes pushed at once, backoff and resumption."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Fleet, wait_for
from tests.integration.fleets import active_versions, publish_tiny

pytestmark = pytest.mark.integration


@pytest.fixture
def slow_polling_fleet(tmp_path: Path) -> Iterator[Fleet]:
    """An agent that polls only every 10 minutes: anything sooner came by the watch stream."""
    fleet = Fleet(tmp_path)
    fleet.agent_env["EDGEFLEET_AGENT_SMOKE_TEST"] = "false"
    fleet.init_controller()
    fleet.start_controller()
    fleet.enroll("gw", {"site": "lab"})
    fleet.start_agent("gw", sync_interval=600)
    yield fleet
    fleet.stop_all()


def _active(fleet: Fleet, ref: str) -> bool | None:
    return True if ref in active_versions(fleet, "gw") else None


def test_changes_reach_the_device_at_once_and_after_an_outage(slow_polling_fleet: Fleet) -> None:
    """A rollout arrives within seconds although the device polls every 10 minutes; after
    the controller was down, the device syncs by itself as soon as it is back."""
    fleet = slow_polling_fleet
    publish_tiny(fleet, "1", seed=1)
    started = time.monotonic()
    fleet.ctl("rollout", "create", "tiny@1", "--selector", "site=lab")
    wait_for("tiny@1 pushed to the device", lambda: _active(fleet, "tiny@1"), 30)
    assert time.monotonic() - started < 30

    fleet.stop("controller")
    time.sleep(3)  # the watch stream breaks; reconnecting backs off
    fleet.start_controller()
    publish_tiny(fleet, "2", seed=2)
    fleet.ctl("rollout", "create", "tiny@2", "--selector", "site=lab")
    wait_for("tiny@2 after the outage", lambda: _active(fleet, "tiny@2"), 45)
    log = fleet.log("agent-gw")
    assert "watch.lost" in log and log.count("watch.connected") >= 2
    devices = fleet.devices()
    assert devices[0]["last_error"] == ""
    assert json.dumps(devices[0]["downloads"]) == "[]"  # finished downloads are not shown


def test_a_paused_download_and_the_data_used_show_at_the_controller(
    small_fleet: tuple[Fleet, str],
) -> None:
    """With a daily budget smaller than the model, the download pauses; the controller's
    device view says so, with the reason and the bytes used today."""
    fleet, _device = small_fleet
    fleet.stop("agent-gw")
    budget = 200_000
    fleet.start_agent(
        "gw", sync_interval=1, env={"EDGEFLEET_AGENT_DAILY_DATA_BUDGET_BYTES": str(budget)}
    )
    publish_tiny(fleet, "1", seed=1, rows=100_000)  # about 1.6 MB
    fleet.ctl("rollout", "create", "tiny@1", "--selector", "site=lab")

    def paused() -> dict[str, Any] | None:
        device = fleet.devices()[0]
        downloads = device["downloads"]
        return device if downloads and downloads[0]["state"] == "paused" else None

    device = wait_for("the paused download at the controller", paused, 30)
    [download] = device["downloads"]
    assert download["name"] == "tiny" and "daily data budget" in download["reason"]
    assert 0 < download["received"] < download["total"]
    assert device["daily_data_budget"] == budget and device["data_used_today"] >= budget
    listing = fleet.ctl("devices", "list").stdout
    assert "tiny@1 paused" in listing
    shown = fleet.ctl("devices", "show", device["device_id"]).stdout
    assert "tiny@1 paused" in shown and "data today:" in shown


def test_a_download_moves_at_the_controller_with_its_rate_and_time_left(
    small_fleet: tuple[Fleet, str],
) -> None:
    """While a download runs (paced by a bandwidth cap), the device reports it between
    syncs: the controller's view shows the percent growing, the rate the device measured
    (near the cap) and the time left, in `devices list`, `devices show` and JSON."""
    fleet, _device = small_fleet
    fleet.stop("agent-gw")
    cap = 400_000
    env = {
        "EDGEFLEET_AGENT_BANDWIDTH_LIMIT_BYTES_PER_SECOND": str(cap),
        "EDGEFLEET_AGENT_DOWNLOAD_REPORT_SECONDS": "1",
    }
    fleet.start_agent("gw", sync_interval=600, env=env)  # no sync pass during the download
    publish_tiny(fleet, "1", seed=1, rows=250_000)  # about 4 MB: 10 s at the cap
    fleet.ctl("rollout", "create", "tiny@1", "--selector", "site=lab")

    def measured() -> dict[str, Any] | None:
        downloads = fleet.devices()[0]["downloads"]
        moving = [d for d in downloads if d["state"] == "downloading" and d["bytes_per_second"]]
        return moving[0] if moving else None

    first = wait_for("a download with its measured rate at the controller", measured, 30)
    assert 0.5 * cap <= first["bytes_per_second"] <= 1.5 * cap, first
    assert 0 < first["received"] < first["total"]

    def further() -> dict[str, Any] | None:
        d = measured()
        return d if d is not None and d["received"] > first["received"] else None

    later = wait_for("the download further along", further, 15)
    assert later["received"] < later["total"]
    listing = fleet.ctl("devices", "list").stdout
    assert re.search(r"tiny@1 downloading \d+ %, \d+ KiB/s, ETA \d+s", listing), listing
    shown = fleet.ctl("devices", "show", fleet.devices()[0]["device_id"]).stdout
    assert re.search(r"download: +tiny@1 downloading \d+ %, \d+ KiB/s, ETA \d+s \(\d+/", shown)
    wait_for("tiny@1 active", lambda: "tiny@1" in active_versions(fleet, "gw") or None, 60)
