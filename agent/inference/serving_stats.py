"""Requests each model version served since the agent started, and those that failed on
the device's side: reported with status so that rollout health gates can judge a version."""

from __future__ import annotations

import threading

# Outcomes that say something about the model version, and which of them are its failures.
# (Not found, denied and queue-full say something about the caller or the load instead.)
COUNTED = frozenset({"success", "cancelled", "error", "refused"})
FAILED = frozenset({"error", "refused"})


class ServingStats:
    """Thread-safe counters per (model, version)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], tuple[int, int]] = {}

    def record(self, name: str, version: str, outcome: str) -> None:
        """Count one finished request of ``name@version`` with its outcome label."""
        if outcome not in COUNTED:
            return
        with self._lock:
            requests, errors = self._counts.get((name, version), (0, 0))
            self._counts[(name, version)] = (requests + 1, errors + (outcome in FAILED))

    def counts(self, name: str, version: str) -> tuple[int, int]:
        """(requests, errors) of one version so far."""
        with self._lock:
            return self._counts.get((name, version), (0, 0))
