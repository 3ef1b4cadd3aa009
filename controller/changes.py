"""Wakes devices' watch streams when something they sync may have changed.

One counter per process: operator calls that change what devices are to run or trust
(publish, rollout, policy, tokens, device state) bump it, and every open watch stream
then tells its device to sync now. Devices add a little random delay so that a change
does not make the whole fleet sync in the same instant.
"""

from __future__ import annotations

import asyncio
import contextlib


class ChangeFeed:
    """A generation counter with waiters; used on the event loop only."""

    def __init__(self) -> None:
        self.generation = 0
        self.closed = False
        self._changed: asyncio.Event | None = None

    def notify(self) -> None:
        """Something changed: wake every waiter."""
        self.generation += 1
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def close(self) -> None:
        """The server is stopping: end every watch stream now rather than at the grace."""
        self.closed = True
        self.notify()

    async def wait(self, seen: int, timeout: float) -> int:
        """Return the generation once it differs from ``seen``, or after ``timeout``."""
        if self.generation != seen:
            return self.generation
        if self._changed is None:
            self._changed = asyncio.Event()
        event = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
        return self.generation
