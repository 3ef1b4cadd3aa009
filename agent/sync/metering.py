"""Metered links: when model bytes may flow, how fast, and how many per day.

``transfer_windows`` (device local time, e.g. ``"01:00-05:00,22:00-23:30"``; a window may
cross midnight; empty means always), ``bandwidth_limit_bytes_per_second`` (0: no cap)
and ``daily_data_budget_bytes`` (per UTC day; 0: no budget) apply to model downloads and
repairs, from whatever source. A download that reaches the end of its window or of the
budget pauses after the bytes already paid for, keeps them and resumes when allowed.
Sync, audit shipping and the watch stream are small and are not held back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from edgefleet.agent.app.config import parse_windows
from edgefleet.errors import TransportError

if TYPE_CHECKING:
    from edgefleet.agent.app.database import AgentDatabase

USED_KEY = "data_used"
PERSIST_EVERY = 8 * 1024 * 1024
MIB = 1024 * 1024


class TransferPausedError(TransportError):
    """Model transfer is not allowed right now (window closed, budget used); not a fault."""


def _inside(minute: int, window: tuple[int, int]) -> bool:
    start, end = window
    return start <= minute < end if start < end else minute >= start or minute < end


class Meter:
    """Gatekeeper and pacer of model bytes; usage persists across restarts."""

    def __init__(
        self,
        db: AgentDatabase,
        windows: str,
        bandwidth: int,
        daily_budget: int,
        clock: Callable[[], datetime] = lambda: datetime.now().astimezone(),
    ) -> None:
        self.db = db
        self.windows = parse_windows(windows)
        self.windows_text = windows
        self.bandwidth = bandwidth
        self.daily_budget = daily_budget
        self.clock = clock
        self._day, self._used = self._load()
        self._unsaved = 0
        self._next_free = 0.0  # monotonic time at which the bandwidth cap allows more

    def _load(self) -> tuple[str, int]:
        day, _, used = self.db.get_state(USED_KEY, "").partition(" ")
        return day, int(used) if used.isdigit() else 0

    def _today(self) -> str:
        return self.clock().astimezone(UTC).strftime("%Y-%m-%d")

    def used_today(self) -> int:
        """Model bytes received today (UTC)."""
        return self._used if self._day == self._today() else 0

    def refusal(self) -> str:
        """Why model bytes may not flow now ('' when they may)."""
        if self.windows:
            local = self.clock()
            minute = local.hour * 60 + local.minute
            if not any(_inside(minute, w) for w in self.windows):
                return f"outside the transfer windows {self.windows_text}"
        if self.daily_budget and self.used_today() >= self.daily_budget:
            return (
                f"the daily data budget of {self.daily_budget / MIB:.0f} MiB is used "
                f"({self.used_today() / MIB:.0f} MiB today)"
            )
        return ""

    def check(self) -> None:
        """Raise TransferPausedError with the reason when bytes may not flow now."""
        reason = self.refusal()
        if reason:
            self.flush()
            raise TransferPausedError(reason)

    async def took(self, count: int) -> None:
        """Account for ``count`` bytes just received and pace to the cap."""
        today = self._today()
        if today != self._day:
            self._day, self._used = today, 0
        self._used += count
        self._unsaved += count
        if self._unsaved >= PERSIST_EVERY:
            await asyncio.to_thread(self.flush)
        if self.bandwidth:
            now = time.monotonic()
            self._next_free = max(self._next_free, now) + count / self.bandwidth
            if self._next_free > now:
                await asyncio.sleep(self._next_free - now)

    def flush(self) -> None:
        """Persist today's usage."""
        if self._unsaved:
            self.db.set_state(USED_KEY, f"{self._day} {self._used}")
            self._unsaved = 0
