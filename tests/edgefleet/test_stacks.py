"""The SIGUSR1 dump names every task and the innermost await it is stuck on."""

from __future__ import annotations

import asyncio
import io

from edgefleet.stacks import dump_tasks


async def _inner(gate: asyncio.Event) -> None:
    await gate.wait()


async def _outer(gate: asyncio.Event) -> None:
    await _inner(gate)


def test_a_waiting_task_is_shown_down_to_what_it_awaits() -> None:
    async def main() -> str:
        gate = asyncio.Event()
        task = asyncio.create_task(_outer(gate), name="stuck-pass")
        await asyncio.sleep(0)
        out = io.StringIO()
        dump_tasks(out)
        gate.set()
        await task
        return out.getvalue()

    text = asyncio.run(main())
    stuck = text[text.index("Task stuck-pass:") :]
    lines = stuck.splitlines()
    assert "in _outer" in lines[1] and "in _inner" in lines[2]
    assert "in wait" in lines[3]  # asyncio.Event.wait: the innermost await
    assert "asyncio tasks" in text.splitlines()[0]
