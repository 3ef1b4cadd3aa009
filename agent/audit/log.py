"""Append-only local audit chain: each record hashed once, stored verbatim, shipped later."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from concurrent.futures import Future
from datetime import UTC, datetime

import structlog

from edgefleet.agent.app.database import AgentDatabase
from edgefleet.audit import (
    GENESIS_HASH,
    AuditEvent,
    Checkpoint,
    encode_record,
    record_hash,
    sign_checkpoint,
)
from edgefleet.errors import MalformedInputError, StorageError
from edgefleet.trust.envelope import Envelope
from edgefleet.trust.keys import SigningKey
from edgefleet.trust.metadata import format_time, parse_time

ACKED_KEY = "audit_acked_seq"
RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS = 0.5, 5.0
log = structlog.get_logger("edgefleet.agent.audit")
INSERT_RECORD = "INSERT INTO audit (seq, canonical, record_sha256) VALUES (?, ?, ?)"
HEAD = "SELECT seq, record_sha256 FROM audit ORDER BY seq DESC LIMIT 1"
MAX_SEQ = (1 << 63) - 1  # SQLite's largest integer: "no upper bound"


Outcome = int | BaseException


def _settle(waiter: asyncio.Future[int] | Future[int], outcome: Outcome) -> None:
    if waiter.done():
        return
    if isinstance(outcome, BaseException):
        waiter.set_exception(outcome)
    else:
        waiter.set_result(outcome)


def _settle_all(settled: list[tuple[asyncio.Future[int], Outcome]]) -> None:
    for waiter, outcome in settled:
        _settle(waiter, outcome)


class AuditLog:
    """The device's chain, written by one thread with group commit.

    Callers hand events to :meth:`record` (async), :meth:`submit` or :meth:`append`
    (threads); the writer thread numbers and chains whatever has queued up, stores it in
    one transaction (WAL, synchronous=FULL: one fsync for the batch) and only then tells
    each caller its sequence number. A record is never acknowledged before it is durable.
    Async callers of one event loop are woken with one hand-off per batch.
    """

    def __init__(self, db: AgentDatabase, device_id: str, max_batch: int = 2048) -> None:
        self.db = db
        self.device_id = device_id
        self.max_batch = max_batch
        self._queue: list[
            tuple[AuditEvent | None, asyncio.Future[int] | Future[int]]
        ] = []  # (None = flush marker)
        self._wakeup = threading.Condition()
        self._writer: threading.Thread | None = None
        # Why the last write failed ("" while records are written): storage is full or broken.
        self.failure = ""

    def _enqueue(self, event: AuditEvent | None, waiter: asyncio.Future[int] | Future[int]) -> None:
        with self._wakeup:
            self._queue.append((event, waiter))
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_loop, name="audit-writer", daemon=True
                )
                self._writer.start()
            self._wakeup.notify()

    async def record(self, event: AuditEvent) -> int:
        """Store one event durably from the event loop; return its sequence number."""
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._enqueue(event, waiter)
        return await waiter

    def submit(self, event: AuditEvent) -> Future[int]:
        """Queue an event; the future gives its sequence number once it is durable."""
        future: Future[int] = Future()
        self._enqueue(event, future)
        return future

    def append(self, event: AuditEvent) -> int:
        """Number, chain and durably store one event; return its sequence number."""
        return self.submit(event).result()

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything queued before this call is durable (at shutdown)."""
        marker: Future[int] = Future()
        self._enqueue(None, marker)
        marker.result(timeout)

    def _write_loop(self) -> None:
        delay = RETRY_FIRST_SECONDS
        while True:
            with self._wakeup:
                while not self._queue:
                    self._wakeup.wait()
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            try:
                outcomes = self._store(batch)
            except StorageError as e:
                # The disk is full or failing: no record is dropped. The batch goes back to
                # the front and is written, in order, once storage works again; meanwhile
                # `failure` says why, and the local API refuses inference (fail closed).
                self.failure = str(e)
                log.error("audit.write_failed", reason=self.failure, waiting=len(batch))
                with self._wakeup:
                    self._queue[:0] = batch
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            except Exception as e:  # noqa: BLE001 - every waiting caller learns of the failure
                outcomes = [e] * len(batch)
            if self.failure:
                log.info("audit.write_resumed")
            self.failure, delay = "", RETRY_FIRST_SECONDS
            self._notify(
                [(waiter, outcome) for (_, waiter), outcome in zip(batch, outcomes, strict=True)]
            )

    @staticmethod
    def _notify(settled: list[tuple[asyncio.Future[int] | Future[int], Outcome]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[int], Outcome]]] = {}
        for waiter, outcome in settled:
            if isinstance(waiter, asyncio.Future):
                by_loop.setdefault(waiter.get_loop(), []).append((waiter, outcome))
            else:
                _settle(waiter, outcome)
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop has closed: nobody is waiting
                loop.call_soon_threadsafe(_settle_all, items)

    def _store(
        self, batch: list[tuple[AuditEvent | None, asyncio.Future[int] | Future[int]]]
    ) -> list[Outcome]:
        with self.db.session() as session:
            # Read the head inside the write transaction every batch: a command-line process
            # (`models import`, `tokens create`) may have appended since the last one.
            last = session.execute(HEAD).fetchone()
            seq, prev = (int(last[0]), str(last[1])) if last else (0, GENESIS_HASH)
            now = format_time(datetime.now(UTC))
            rows: list[tuple[int, bytes, str]] = []
            outcomes: list[Outcome] = []
            for event, _ in batch:
                if event is None:  # a flush marker: resolved once this batch is durable
                    outcomes.append(0)
                    continue
                try:
                    canonical = encode_record(self.device_id, seq + 1, now, event, prev)
                except MalformedInputError as e:  # this event only; the chain goes on
                    outcomes.append(e)
                    continue
                seq, prev = seq + 1, record_hash(canonical)
                rows.append((seq, canonical, prev))
                outcomes.append(seq)
            if rows:  # one executemany: this is the hot path of every request
                session.executemany(INSERT_RECORD, rows)
        return outcomes

    def head_seq(self) -> int:
        """The highest sequence number written."""
        with self.db.session() as session:
            return int(session.execute("SELECT coalesce(max(seq), 0) FROM audit").fetchone()[0])

    def acked_seq(self) -> int:
        """The highest sequence number the controller has acknowledged."""
        return int(self.db.get_state(ACKED_KEY, "0"))

    def set_acked(self, seq: int) -> None:
        """Remember the controller's acknowledgement (never backwards, never past our head)."""
        seq = min(seq, self.head_seq())
        if seq > self.acked_seq():
            self.db.set_state(ACKED_KEY, str(seq))

    def pending(
        self, limit: int, max_bytes: int, through: int | None = None
    ) -> list[tuple[int, bytes]]:
        """Records after the acknowledged one (up to ``through``), oldest first: at most
        ``limit`` of them and, beyond the first, at most ``max_bytes`` in all (a push must
        fit one gRPC message)."""
        after = self.acked_seq()
        batch: list[tuple[int, bytes]] = []
        size = 0
        with self.db.session() as session:
            rows = session.execute(
                "SELECT seq, canonical FROM audit WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                (after, through if through is not None else MAX_SEQ, limit),
            )
            for seq, canonical in rows:
                size += len(canonical)
                if batch and size > max_bytes:
                    break
                batch.append((seq, canonical))
        return batch

    def all_records(self) -> list[bytes]:
        """Every record, verbatim, oldest first."""
        with self.db.session() as session:
            rows = session.execute("SELECT canonical FROM audit ORDER BY seq").fetchall()
            return [bytes(canonical) for (canonical,) in rows]

    # --- retention --------------------------------------------------------------------
    def prune_acknowledged(self, keep: int) -> int:
        """Delete acknowledged records beyond the newest ``keep`` of them; never the head."""
        acked = self.acked_seq()
        cutoff = min(acked - keep, self.head_seq() - 1)
        if cutoff < 1:
            return 0
        with self.db.session() as session:
            return session.execute("DELETE FROM audit WHERE seq <= ?", (cutoff,)).rowcount

    def record_hash_at(self, seq: int) -> str | None:
        """The stored hash of record ``seq`` (None if absent — also for a number no record
        can have: the controller's acknowledgement is a uint64, SQLite's integers int64)."""
        if not 1 <= seq <= MAX_SEQ:
            return None
        with self.db.session() as session:
            row = session.execute(
                "SELECT record_sha256 FROM audit WHERE seq = ?", (seq,)
            ).fetchone()
            return str(row[0]) if row is not None else None

    def unacknowledged(self) -> int:
        """Records written but not yet acknowledged by the controller."""
        return max(0, self.head_seq() - self.acked_seq())

    # --- checkpoints ------------------------------------------------------------------
    def checkpoint_if_due(
        self, key: SigningKey, every: int, interval_seconds: float
    ) -> Envelope | None:
        """Sign the chain's head when ``every`` records or ``interval_seconds`` have passed."""
        with self.db.session() as session:
            head = session.execute(HEAD).fetchone()
            last = session.execute(
                "SELECT seq, envelope FROM checkpoints ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            if head is None or (last is not None and last[0] >= head[0]):
                return None
            head_seq, head_hash = int(head[0]), str(head[1])
            last_time = _checkpoint_time(last[1]) if last is not None else None
            elapsed = (datetime.now(UTC) - last_time).total_seconds() if last_time else None
            if (
                last is not None
                and head_seq - last[0] < every
                and (elapsed or 0) < interval_seconds
            ):
                return None
            checkpoint = Checkpoint(
                self.device_id, head_seq, head_hash, format_time(datetime.now(UTC))
            )
            envelope = sign_checkpoint(checkpoint, key)
            session.execute(
                "INSERT INTO checkpoints (seq, envelope) VALUES (?, ?)",
                (head_seq, envelope.to_json()),
            )
            return envelope

    def last_checkpoint_seq(self) -> int:
        """The record the newest checkpoint covers (0 before the first)."""
        with self.db.session() as session:
            return int(session.execute("SELECT max(seq) FROM checkpoints").fetchone()[0] or 0)

    def checkpoints_after(self, seq: int) -> list[Envelope]:
        """Signed checkpoints of records after ``seq`` (not yet acknowledged), oldest first."""
        with self.db.session() as session:
            rows = session.execute(
                "SELECT envelope FROM checkpoints WHERE seq > ? ORDER BY seq", (seq,)
            ).fetchall()
            return [Envelope.from_json(envelope) for (envelope,) in rows]


def _checkpoint_time(envelope: bytes) -> datetime:
    payload = Envelope.from_json(envelope).payload
    return parse_time(Checkpoint.from_payload(payload).time, "checkpoint time")
