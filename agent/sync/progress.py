"""Download progress: kept in memory, reported at each sync, saved for `status`."""

from __future__ import annotations

import json
import time
from dataclasses import asdict

from edgefleet.agent.app.database import AgentDatabase
from edgefleet.fleet import DownloadProgress
from edgefleet.trust.metadata import ModelManifest

STATE_KEY = "downloads"
SAVE_EVERY_SECONDS = 2.0
# The rate is measured over windows of at least this long and smoothed across windows:
# chunks arrive in bursts (1 MiB messages, a paced link), a rate per chunk would jump.
RATE_WINDOW_SECONDS = 2.0
RATE_SMOOTHING = 0.5  # weight of the newest window


class _RateMeter:
    """Bytes per second of one download, from the byte counts it reports."""

    def __init__(self, received: int, now: float) -> None:
        self.start, self.start_received = now, received
        self.rate = 0.0

    def update(self, received: int, now: float) -> int:
        elapsed = now - self.start
        if received < self.start_received:  # restarted from a lower offset (a repair)
            self.start, self.start_received, self.rate = now, received, 0.0
        elif elapsed >= RATE_WINDOW_SECONDS:
            window = (received - self.start_received) / elapsed
            self.rate = (
                window
                if not self.rate
                else (RATE_SMOOTHING * window + (1 - RATE_SMOOTHING) * self.rate)
            )
            self.start, self.start_received = now, received
        return round(self.rate)


class ProgressBoard:
    """What each model download is doing, by ``name@version``."""

    def __init__(self, db: AgentDatabase) -> None:
        self.db = db
        self._items: dict[str, DownloadProgress] = {}
        self._rates: dict[str, _RateMeter] = {}
        self._saved_at = 0.0

    def update(
        self, manifest: ModelManifest, received: int, state: str = "downloading", reason: str = ""
    ) -> None:
        """Record progress; saved to the database at most every few seconds while moving."""
        now = time.monotonic()
        rate = 0
        if state == "downloading":
            meter = self._rates.setdefault(manifest.ref, _RateMeter(received, now))
            rate = meter.update(received, now)
        else:  # paused or refused: the next transfer measures afresh
            self._rates.pop(manifest.ref, None)
        self._items[manifest.ref] = DownloadProgress(
            manifest.name, manifest.version, received, manifest.length, state, reason, rate
        )
        if state != "downloading" or time.monotonic() - self._saved_at > SAVE_EVERY_SECONDS:
            self.save()

    def note(self, manifest: ModelManifest, state: str, reason: str) -> None:
        """A pause or refusal, keeping the bytes received so far."""
        known = self._items.get(manifest.ref)
        self.update(manifest, known.received if known else 0, state, reason)

    def done(self, manifest: ModelManifest) -> None:
        """The download finished (installed): forget it."""
        self._rates.pop(manifest.ref, None)
        if self._items.pop(manifest.ref, None) is not None:
            self.save()

    def keep_only(self, refs: set[str]) -> None:
        """Drop entries of models no longer assigned."""
        for ref in set(self._items) - refs:
            del self._items[ref]
            self._rates.pop(ref, None)

    def items(self) -> tuple[DownloadProgress, ...]:
        """Every download known, by name."""
        return tuple(self._items[ref] for ref in sorted(self._items))

    def moving(self) -> bool:
        """Whether a download is under way (its progress is worth reporting)."""
        return any(d.state == "downloading" for d in self._items.values())

    def save(self) -> None:
        """Write the board for `edgefleet-agent status`."""
        self.db.set_state(STATE_KEY, json.dumps([asdict(d) for d in self.items()]))
        self._saved_at = time.monotonic()


def load_board(db: AgentDatabase) -> list[DownloadProgress]:
    """The saved board (for the command line)."""
    try:
        return [DownloadProgress(**d) for d in json.loads(db.get_state(STATE_KEY, "[]"))]
    except (ValueError, TypeError):
        return []
