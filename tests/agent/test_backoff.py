"""Backoff while the controller is unreachable: exponential, jittered, capped, reset."""

from __future__ import annotations

from edgefleet.agent.sync.backoff import Backoff


def test_waits_grow_exponentially_with_jitter_up_to_the_cap() -> None:
    """Each wait lies in [delay/2, delay] with delay = base·2^(n−1), never over the cap."""
    backoff = Backoff(base=10, cap=300)
    waits = [backoff.failed() for _ in range(8)]
    for n, wait in enumerate(waits, start=1):
        delay = min(300, 10 * 2 ** (n - 1))
        assert delay / 2 <= wait <= delay
    assert not backoff.ready()
    backoff.succeeded()
    assert backoff.ready() and backoff.failures == 0
