"""Wakes devices' watch streams when something they sync may have changed.

One counter per process: operator calls that change what devices are to run or trust
(publish, rollout, policy, tokens, device state) and rollout steps bump it, and every open
watch stream then tells its device to sync now. Devices add a little random delay so
that a change does not make the whole fleet sync in the same instant.

With several replicas on PostgreSQL, ``PostgresRelay`` carries each change to the other
replicas with NOTIFY, and wakes this replica's streams when another one changed something
(LISTEN on a dedicated connection, reconnected with backoff).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable

import structlog
from sqlalchemy import text

from edgefleet.controller.store.database import Database
from edgefleet.errors import EdgefleetError

log = structlog.get_logger("edgefleet.controller.fleet.changes")

CHANNEL = "edgefleet_changes"
MAX_RECONNECT_SECONDS = 30.0


class ChangeFeed:
    """A generation counter with waiters; used on the event loop only."""

    def __init__(self) -> None:
        self.generation = 0
        self.closed = False
        self._changed: asyncio.Event | None = None
        # Tells the other replicas (set by PostgresRelay); called on the event loop.
        self.publish: Callable[[], None] | None = None
        # Called on every change, here or on another replica (e.g. drop cached snapshots).
        self.listeners: list[Callable[[], None]] = []

    def notify(self) -> None:
        """Something changed here: wake every waiter, and the other replicas'."""
        self.wake()
        if self.publish is not None:
            self.publish()

    def wake(self) -> None:
        """Wake every waiter of this replica."""
        for listener in self.listeners:
            listener()
        self.generation += 1
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def close(self) -> None:
        """The server is stopping: end every watch stream now rather than at the grace."""
        self.closed = True
        self.wake()

    async def wait(self, seen: int, timeout: float) -> int:
        """Return the generation once it differs from ``seen``, or after ``timeout``."""
        if self.generation != seen:
            return self.generation
        if self._changed is None:
            self._changed = asyncio.Event()
        event = self._changed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):  # not wait_for: it can swallow a cancel
                await event.wait()
        return self.generation


class PostgresRelay:
    """LISTEN/NOTIFY between controller replicas sharing one PostgreSQL database."""

    def __init__(self, db: Database, feed: ChangeFeed) -> None:
        self.db = db
        self.feed = feed
        self.replica = uuid.uuid4().hex  # our own notifications come back: skip those
        self.dsn = db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.listening = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        feed.publish = self._publish

    def _publish(self) -> None:
        loop = asyncio.get_running_loop()
        loop.run_in_executor(None, self._send)

    def _send(self) -> None:
        try:
            with self.db.session() as session:
                session.execute(
                    text("select pg_notify(:channel, :payload)"),
                    {"channel": CHANNEL, "payload": self.replica},
                )
        except EdgefleetError as e:  # the others catch up at their devices' next poll
            log.warning("changes.notify_failed", reason=str(e))

    def start(self) -> None:
        """Listen in the background until ``stop``."""
        self._task = asyncio.get_running_loop().create_task(self._listen())

    async def stop(self) -> None:
        """Stop listening."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen(self) -> None:
        import psycopg

        wait = 1.0
        while True:
            try:
                connection = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
                async with connection:
                    await connection.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    wait = 1.0
                    self.feed.wake()  # changes made while we were not listening
                    async for note in connection.notifies():
                        if note.payload != self.replica:
                            self.feed.wake()
            except (psycopg.Error, OSError) as e:
                self.listening.clear()
                log.warning("changes.listen_failed", reason=str(e), retry_in_seconds=wait)
                await asyncio.sleep(wait)
                wait = min(wait * 2, MAX_RECONNECT_SECONDS)
