"""Where a stuck process waits: on SIGUSR1, every thread's stack and every asyncio task's
chain of awaits, written to stderr (the journal under systemd).

Thread stacks alone do not show an asyncio service that waits: its loop sits idle in
``select`` while the coroutine that should finish awaits something that never comes.
Each task is printed as its await chain (coroutine → awaited coroutine → …), innermost
last, which is what ``Task.print_stack`` does not show for a suspended coroutine.
"""

from __future__ import annotations

import asyncio
import faulthandler
import signal
import sys
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TextIO


def _await_chain(awaitable: object) -> Iterator[FrameType]:
    """The frames of a suspended coroutine and of everything it awaits, outermost first."""
    seen = 0
    while awaitable is not None and seen < 200:  # a cycle is impossible, but stay bounded
        seen += 1
        frame = (
            getattr(awaitable, "cr_frame", None)
            or getattr(awaitable, "ag_frame", None)
            or getattr(awaitable, "gi_frame", None)
        )
        if frame is not None:
            yield frame
        awaitable = (
            getattr(awaitable, "cr_await", None)
            or getattr(awaitable, "ag_await", None)
            or getattr(awaitable, "gi_yieldfrom", None)
        )


def dump_tasks(out: TextIO = sys.stderr) -> None:
    """Every task of the running loop: its name and await chain."""
    tasks = asyncio.all_tasks()
    print(f"--- {len(tasks)} asyncio tasks (most recent await last) ---", file=out)
    for task in sorted(tasks, key=lambda t: t.get_name()):
        print(f"Task {task.get_name()}:", file=out)
        for frame in _await_chain(task.get_coro()):
            code = frame.f_code
            print(f'  File "{code.co_filename}", line {frame.f_lineno} in {code.co_name}', file=out)
    loop = asyncio.get_running_loop()
    timers = sorted(getattr(loop, "_scheduled", ()), key=lambda handle: handle.when())
    print(f"--- {len(timers)} timers of the loop ---", file=out)
    for timer in timers:
        print(f"  in {timer.when() - loop.time():.1f} s: {timer!r}", file=out)
    out.flush()


def dump_on_sigusr1(loop: asyncio.AbstractEventLoop, *more: Callable[[TextIO], None]) -> None:
    """Install the SIGUSR1 dump: threads at once from C (works with the loop blocked), then
    the loop's tasks and timers, then whatever ``more`` writes (a scheduler's jobs), all
    from the loop (which is the case this is for: a loop idle while nothing progresses)."""

    def dump() -> None:
        dump_tasks(sys.stderr)
        for write in more:
            write(sys.stderr)
        sys.stderr.flush()

    loop.add_signal_handler(signal.SIGUSR1, dump)
    faulthandler.register(signal.SIGUSR1, all_threads=True, chain=True)
