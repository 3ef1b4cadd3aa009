"""Syncs requested by the watch stream: merged, but never lost to a pass under way."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.attacks.kit import Device, make_device


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Device]:
    made = make_device(tmp_path)
    yield made
    made.close()


def test_requests_during_a_pass_add_exactly_one_more(device: Device) -> None:
    """Two changes announced while a pass runs cause one more pass, not two, not none."""
    syncer = device.syncer
    passes: list[bool] = []

    async def slow_pass(forced: bool = False) -> None:
        passes.append(forced)
        await asyncio.sleep(0.05)

    syncer.run_once = slow_pass  # type: ignore[method-assign]

    async def scenario() -> None:
        syncer.request_sync()
        await asyncio.sleep(0.01)  # the first pass is under way
        syncer.request_sync()
        syncer.request_sync()
        assert syncer._requested is not None
        await syncer._requested

    asyncio.run(scenario())
    assert passes == [True, True]
