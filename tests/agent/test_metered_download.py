"""A download on a metered link pauses at the budget or the window, keeps what it
verified, shows why, and resumes from there when allowed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from edgefleet.agent.app.config import parse_windows
from tests.attacks.kit import CHUNK, Device, make_device, newer, now, with_v1_serving


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Device]:
    made = make_device(tmp_path, daily_data_budget_bytes=9 * CHUNK)
    yield made
    made.close()


def test_the_daily_budget_pauses_and_the_next_day_resumes(device: Device) -> None:
    """m@1 uses half the budget; m@2 pauses when the rest is gone and completes the next
    day without fetching again what it already received."""
    with_v1_serving(device)
    controller = device.controller
    v2 = newer(device)
    controller.publish(v2)
    controller.assign("m@2")
    error = device.sync()
    assert "daily data budget" in error
    [progress] = device.syncer.board.items()
    assert progress.state == "paused" and 0 < progress.received < v2.manifest.length
    assert not any(r[0] == "model.install" for r in device.refusals())  # a pause, not a fault
    kept = device.blobs.partial_of(v2.manifest.sha256).stat().st_size
    assert kept == progress.received > 0  # every byte paid for is kept, whole chunk or not

    tomorrow = now() + timedelta(days=1)
    device.syncer.meter.clock = lambda: tomorrow
    assert device.sync() == ""
    assert device.active("m") == "2" and device.syncer.board.items() == ()
    assert controller.reads[-1] == (v2.manifest.sha256, kept, 0)


def test_outside_the_transfer_window_nothing_is_fetched(device: Device) -> None:
    """With a window that is closed now, the device waits and says so."""
    with_v1_serving(device)
    controller = device.controller
    v2 = newer(device)
    controller.publish(v2)
    controller.assign("m@2")
    closed_hour = (now().astimezone().hour + 12) % 24
    device.syncer.meter.windows_text = f"{closed_hour:02d}:00-{closed_hour:02d}:30"
    device.syncer.meter.windows = parse_windows(device.syncer.meter.windows_text)
    reads = len(controller.reads)
    assert "outside the transfer windows" in device.sync()
    assert len(controller.reads) == reads and device.active("m") == "1"
