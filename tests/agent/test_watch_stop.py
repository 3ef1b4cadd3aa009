"""The agent stops on SIGTERM even when cancellation races a failing watch stream: a
quickstart agent once kept reconnecting for minutes after `agent.stopping`."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

from edgefleet.agent.sync.watch import watch_forever
from edgefleet.errors import TransportError


class FailingClient:
    """A watch stream that fails at once, as when the controller is gone."""

    async def watch(self, idle_timeout: float) -> AsyncIterator[str]:
        await asyncio.sleep(0)
        raise TransportError("connection refused")
        yield "never"  # pragma: no cover - makes this an async generator


class SwallowingClient:
    """A library that answers a cancellation with its own failure (what Python 3.11's
    wait_for does when the awaited call fails as the cancel lands)."""

    async def watch(self, idle_timeout: float) -> AsyncIterator[str]:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise TransportError("the call was cancelled") from None
        yield "never"  # pragma: no cover


class Config:
    watch_reconnect_max_seconds = 0.01
    watch_timeout_seconds = 1.0
    watch_jitter_seconds = 0.0


def test_cancelling_the_watch_always_stops_it() -> None:
    async def survivors() -> list[str]:
        rng = random.Random(5)
        for client in [FailingClient(), SwallowingClient()] * 50:
            task = asyncio.create_task(watch_forever(Config(), client, None))  # type: ignore[arg-type]
            await asyncio.sleep(rng.uniform(0, 0.003))
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=2)
            if not done:
                return [type(client).__name__]
        return []

    # Not asyncio.run: on failure it would wait forever for the task that cannot stop.
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(survivors()) == [], "a watch loop survived its cancel"
    finally:
        loop.close()
