"""`--since`/`--until` take what journalctl takes and give the audit trail's timestamps."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

import pytest

from edgefleet.cli_support import time_bound

NOW = datetime(2026, 11, 29, 14, 30, 15, 123456, tzinfo=UTC)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("now", "2026-11-29T14:30:15Z"),
        ("today", "2026-11-29T00:00:00Z"),
        ("Yesterday", "2026-11-28T00:00:00Z"),
        ("-90s", "2026-11-29T14:28:45Z"),
        ("-30m", "2026-11-29T14:00:15Z"),
        ("-1h", "2026-11-29T13:30:15Z"),
        ("-2d", "2026-11-27T14:30:15Z"),
        ("-1w", "2026-11-22T14:30:15Z"),
        ("2026-11-01", "2026-11-01T00:00:00Z"),
        ("2026-11-01T08:15", "2026-11-01T08:15:00Z"),
        ("2026-11-01T08:15:30Z", "2026-11-01T08:15:30Z"),
        ("2026-11-01T08:15:30+01:00", "2026-11-01T07:15:30Z"),
        ("2026-11-01 08:15:30", "2026-11-01T08:15:30Z"),
    ],
)
def test_accepted(text: str, expected: str) -> None:
    assert time_bound(text, NOW) == expected


@pytest.mark.parametrize("text", ["", "soon", "-1y", "+1h", "-h", "2026-13-01", "-9999999d"])
def test_refused_with_the_forms_it_takes(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="is not a time as journalctl takes it"):
        time_bound(text, NOW)


def test_a_time_before_the_calendar_is_refused() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="reaches before the year 1"):
        time_bound("-999999w", NOW)
