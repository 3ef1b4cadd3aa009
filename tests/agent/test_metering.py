"""Metered links: transfer windows, a bandwidth cap and a daily data budget."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from edgefleet.agent.app.config import parse_windows
from edgefleet.agent.app.database import AgentDatabase
from edgefleet.agent.sync.metering import Meter, TransferPausedError
from edgefleet.errors import ConfigError

MIB = 1024 * 1024
LOCAL = timezone(timedelta(hours=2))


def _meter(tmp_path: Path, at: datetime, **limits: object) -> Meter:
    settings: dict[str, object] = {"windows": "", "bandwidth": 0, "daily_budget": 0}
    settings.update(limits)
    return Meter(AgentDatabase(tmp_path / "agent.db"), clock=lambda: at, **settings)  # type: ignore[arg-type]


def test_windows_parse_and_refuse_nonsense() -> None:
    """HH:MM-HH:MM lists, crossing midnight allowed; anything else is a config error."""
    assert parse_windows("01:00-05:00, 22:30-02:00") == [(60, 300), (1350, 120)]
    for bad in ("1:00-5:00", "01:00-24:00", "01:00", "03:00-03:00"):
        with pytest.raises(ConfigError):
            parse_windows(bad)


@pytest.mark.parametrize(
    "hour, minute, allowed",
    [(0, 59, False), (1, 0, True), (4, 59, True), (5, 0, False), (23, 0, True), (1, 30, True)],
)
def test_transfers_happen_only_inside_a_window(
    tmp_path: Path, hour: int, minute: int, allowed: bool
) -> None:
    """Windows are in the device's local time; 22:30-00:30 crosses midnight."""
    at = datetime(2026, 6, 1, hour, minute, tzinfo=LOCAL)
    meter = _meter(tmp_path, at, windows="01:00-05:00,22:30-00:30")
    assert (meter.refusal() == "") is allowed


def test_the_daily_budget_pauses_a_transfer_and_resets_the_next_day(tmp_path: Path) -> None:
    """Bytes are counted per UTC day and survive a restart; the budget pauses mid-transfer."""
    now = [datetime(2026, 6, 1, 12, 0, tzinfo=UTC)]
    db = AgentDatabase(tmp_path / "agent.db")
    meter = Meter(db, "", 0, 10 * MIB, clock=lambda: now[0])

    async def receive(megabytes: int) -> None:
        for _ in range(megabytes):  # as the fetcher does: count, keep, then check
            await meter.took(MIB)
            meter.check()

    with pytest.raises(TransferPausedError, match="daily data budget of 10 MiB is used"):
        asyncio.run(receive(20))
    assert meter.used_today() == 10 * MIB
    restarted = Meter(db, "", 0, 10 * MIB, clock=lambda: now[0])
    assert restarted.used_today() == 10 * MIB and restarted.refusal()
    now[0] += timedelta(days=1)
    assert restarted.used_today() == 0 and restarted.refusal() == ""


def test_the_bandwidth_cap_paces_transfers(tmp_path: Path) -> None:
    """4 MiB at a 8 MiB/s cap take about half a second (not instantly)."""
    meter = _meter(tmp_path, datetime.now(UTC), bandwidth=8 * MIB)

    async def receive() -> float:
        started = time.monotonic()
        for _ in range(16):
            await meter.took(MIB // 4)
        return time.monotonic() - started

    elapsed = asyncio.run(receive())
    assert 0.4 <= elapsed < 1.5
