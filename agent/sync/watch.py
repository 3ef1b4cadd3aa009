"""Keep a watch stream open to the controller: sync the moment something changes.

On connect the controller says "hello" and the agent syncs (this is also the "it came
back" signal after an outage); on "changed" it syncs too — both after a random delay of
up to ``watch_jitter_seconds`` so a fleet does not arrive at once. Heartbeats prove the
link is alive. When the stream breaks, reconnecting backs off from 1 s up to
``watch_reconnect_max_seconds``, and scheduled polling (with its own backoff) goes on
meanwhile as the fallback.
"""

from __future__ import annotations

import asyncio
import random

import structlog

from edgefleet.agent.app.config import AgentConfig
from edgefleet.agent.sync.backoff import Backoff
from edgefleet.agent.sync.client import SyncClient
from edgefleet.agent.sync.worker import Syncer
from edgefleet.errors import EdgefleetError

log = structlog.get_logger("agent.watch")
RECONNECT_BASE_SECONDS = 1.0


async def watch_forever(config: AgentConfig, client: SyncClient, syncer: Syncer) -> None:
    """Run until cancelled."""
    reconnect = Backoff(RECONNECT_BASE_SECONDS, config.watch_reconnect_max_seconds)
    while True:
        try:
            async for kind in client.watch(config.watch_timeout_seconds):
                if kind == "hello":
                    reconnect.succeeded()
                    log.info("watch.connected")
                if kind in ("hello", "changed"):
                    syncer.request_sync(random.uniform(0, config.watch_jitter_seconds))  # noqa: S311
        except EdgefleetError as e:
            if _stopping():
                raise asyncio.CancelledError from e
            log.info("watch.lost", reason=str(e))
        await asyncio.sleep(reconnect.failed())


def _stopping() -> bool:
    """True once this task was asked to stop, even if a library swallowed the
    CancelledError and handed back its own failure instead."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
