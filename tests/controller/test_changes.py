"""The change feed that wakes watch streams."""

from __future__ import annotations

import asyncio

from edgefleet.controller.fleet.changes import ChangeFeed


def test_waiters_wake_on_a_change_and_time_out_otherwise() -> None:
    """A waiter sees the new generation at once; without a change it returns at the timeout."""

    async def scenario() -> tuple[int, int, bool]:
        feed = ChangeFeed()
        quiet = await feed.wait(feed.generation, 0.05)
        waiter = asyncio.create_task(feed.wait(feed.generation, 10))
        await asyncio.sleep(0)
        feed.notify()
        woken = await asyncio.wait_for(waiter, 1)
        feed.close()
        return quiet, woken, feed.closed

    assert asyncio.run(scenario()) == (0, 1, True)
