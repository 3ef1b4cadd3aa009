"""Counting refused requests per source without letting a flood reach the disk.

A denial must be visible (a metric, and an audit record) but an unauthenticated flood
must not turn into fsynced records: ``DenialWindow`` tells, per source, whether a denial
is the first of its window (record it, with how many the source's previous window had
beyond its first) and whether the source is past its limit (refuse it before any further
work). Memory is bounded: at most ``max_sources`` sources are tracked, the least recently
seen forgotten first.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Denial:
    """What to do with one denial of one source."""

    record: bool  # the first of the source's window: write an audit record
    earlier: int  # denials of the source's previous window not recorded (for that record)
    limited: bool  # past the limit: answer "too many" and do no more work


class DenialWindow:
    """Fixed windows of ``seconds`` per source; thread-safe."""

    def __init__(
        self,
        seconds: float,
        limit: int,
        max_sources: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seconds, self.limit, self.max_sources, self.clock = seconds, limit, max_sources, clock
        self._lock = threading.Lock()
        # source -> (window start, denials in it, unrecorded denials of the one before)
        self._sources: OrderedDict[str, tuple[float, int, int]] = OrderedDict()

    def deny(self, source: str) -> Denial:
        """Count one denial of ``source``."""
        now = self.clock()
        with self._lock:
            start, count, earlier = self._sources.pop(source, (now, 0, 0))
            if now - start >= self.seconds:
                start, earlier, count = now, max(count - 1, 0), 0
            count += 1
            self._sources[source] = (start, count, earlier)
            while len(self._sources) > self.max_sources:
                self._sources.popitem(last=False)
        return Denial(
            record=count == 1, earlier=earlier if count == 1 else 0, limited=count > self.limit
        )

    def limited(self, source: str) -> bool:
        """True while ``source`` is past its limit in its current window."""
        with self._lock:
            found = self._sources.get(source)
        return (
            found is not None and self.clock() - found[0] < self.seconds and found[1] >= self.limit
        )
