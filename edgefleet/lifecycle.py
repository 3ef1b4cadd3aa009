"""What both services (agent and controller) do to start and stop: listen for HTTP with a
one-line error, wait for a stop signal, cancel a background task without hanging."""

from __future__ import annotations

import asyncio
import os
import signal

from aiohttp import web

from edgefleet.config_files import split_address
from edgefleet.errors import ConfigError

CANCEL_WAIT_SECONDS = 10.0


async def listen_http(app: web.Application, address: str) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on ``address``; return its runner and the address bound (port 0 picks
    one). A taken port is one line naming the address, and nothing is left listening."""
    host, port = split_address(address)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as e:
        await runner.cleanup()
        reason = os.strerror(e.errno) if e.errno else str(e)  # not aiohttp's long wording
        raise ConfigError(f"cannot listen on {address}: {reason}") from e
    bound = runner.addresses[0]
    return runner, f"{bound[0]}:{bound[1]}"


async def until_signalled(*signals: signal.Signals) -> None:
    """Return once one of ``signals`` arrives (on the running loop)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def cancel_and_wait(task: asyncio.Task[None]) -> None:
    """Cancel a background task and give it a few seconds to end: a shutdown never hangs
    on a task that swallows its cancellation."""
    task.cancel()
    await asyncio.wait({task}, timeout=CANCEL_WAIT_SECONDS)
