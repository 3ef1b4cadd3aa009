"""When to try the controller again after it could not be reached."""

from __future__ import annotations

import random
import time


class Backoff:
    """Exponential backoff with full jitter and a cap; reset by any successful contact.

    The first retry waits about ``base`` seconds, then 2×, 4×, … up to ``cap``; each
    wait is drawn between half and all of that, so a fleet that lost its controller at
    the same moment does not come back in lockstep.
    """

    def __init__(self, base: float, cap: float) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0
        self._retry_at = 0.0

    def ready(self) -> bool:
        """May we try now?"""
        return time.monotonic() >= self._retry_at

    def failed(self) -> float:
        """Record a failure; return the seconds until the next try."""
        self.failures += 1
        delay = min(self.cap, self.base * 2 ** (self.failures - 1))
        wait = random.uniform(delay / 2, delay)  # noqa: S311 - jitter, not security
        self._retry_at = time.monotonic() + wait
        return wait

    def succeeded(self) -> None:
        """The controller answered: no waiting."""
        self.failures = 0
        self._retry_at = 0.0
