"""The agent's SQLite database (registry, trust metadata, audit log) on the standard
library's `sqlite3`.

The controller keeps SQLAlchemy (SQLite or PostgreSQL, Alembic migrations); a gateway's
database is always one local SQLite file with six small tables, and SQLAlchemy's Core and
ORM held 18 MiB of the agent's resident memory all day (idle 96 → 78 MiB without it,
``benchmarks/footprint.py``). The conventions are the same: a ``session()`` that commits
or rolls back, the pragmas set on connect, every transaction ``BEGIN IMMEDIATE``. The
tables are the ones SQLAlchemy created before (same names, columns and types), so a data
directory written by an earlier agent opens unchanged.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from edgefleet.errors import EdgefleetError, StorageError

FULL_DISK_BYTES = 1 << 20  # less free than this: what a failed write most likely met

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS trust (
    name VARCHAR(32) NOT NULL,
    envelopes BLOB NOT NULL,
    PRIMARY KEY (name))""",
    """CREATE TABLE IF NOT EXISTS installed (
    name VARCHAR(64) NOT NULL,
    version VARCHAR(64) NOT NULL,
    sha256 VARCHAR(64) NOT NULL,
    length INTEGER NOT NULL,
    manifest BLOB NOT NULL,
    installed_at DATETIME NOT NULL,
    PRIMARY KEY (name, version))""",
    """CREATE TABLE IF NOT EXISTS active (
    name VARCHAR(64) NOT NULL,
    version VARCHAR(64) NOT NULL,
    previous_version VARCHAR(64),
    activated_at DATETIME NOT NULL,
    PRIMARY KEY (name))""",
    """CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER NOT NULL,
    canonical BLOB NOT NULL,
    record_sha256 VARCHAR(64) NOT NULL,
    PRIMARY KEY (seq))""",
    """CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER NOT NULL,
    envelope BLOB NOT NULL,
    PRIMARY KEY (seq))""",
    """CREATE TABLE IF NOT EXISTS state (
    "key" VARCHAR(64) NOT NULL,
    value VARCHAR(4096) NOT NULL,
    PRIMARY KEY ("key"))""",
)
PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=5000",
)
MAX_STATE_VALUE = 4096


def timestamp(moment: datetime) -> str:
    """A DATETIME column's text, as SQLAlchemy wrote it in SQLite (UTC, no offset)."""
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def _cause(error: BaseException, folder: Path) -> str:
    """SQLite's own reason, on one line, and whether the disk is full (SQLite says "disk
    I/O error" when it cannot even create its journal)."""
    cause = (str(error) or type(error).__name__).splitlines()[0][:200]
    with contextlib.suppress(OSError):
        if shutil.disk_usage(folder).free < FULL_DISK_BYTES and "full" not in cause:
            cause += f" (no space left in {folder})"
    return cause


class AgentDatabase:
    """One connection, used by one session at a time: serialized by a lock here and by
    SQLite's write lock (``BEGIN IMMEDIATE``) against other processes on the same data
    directory (a command-line process and the running agent never interleave a read and
    a write of the same rows)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.folder = path.parent
        path.parent.mkdir(parents=True, exist_ok=True)
        self.write_lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        with self.write_lock:
            self._connect()

    def _connect(self) -> sqlite3.Connection:
        """Open the file, set the pragmas and create missing tables (also after
        ``dispose()``, as a pool would reconnect). Called with the lock held."""
        connection = None
        try:
            # Transactions are begun explicitly (isolation_level=None: no implicit ones).
            connection = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=5.0
            )
            for pragma in PRAGMAS:
                connection.execute(pragma)
            connection.execute("BEGIN IMMEDIATE")
            for statement in SCHEMA:
                connection.execute(statement)
            connection.execute("COMMIT")
        except sqlite3.Error as e:
            if connection is not None:
                connection.close()
            raise StorageError(f"cannot open {self.path}: {_cause(e, self.folder)}") from e
        self._connection = connection
        return connection

    @contextmanager
    def session(self) -> Iterator[sqlite3.Connection]:
        """A unit of work on the connection: commit on success, roll back on any
        exception."""
        with self.write_lock:
            connection = self._connection or self._connect()
            try:
                connection.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise StorageError(f"local database error: {_cause(e, self.folder)}") from e
            try:
                yield connection
                connection.execute("COMMIT")
            except EdgefleetError:
                _rollback(connection)
                raise
            except sqlite3.Error as e:
                _rollback(connection)
                raise StorageError(f"local database error: {_cause(e, self.folder)}") from e
            except BaseException:
                _rollback(connection)
                raise

    def get_state(self, key: str, default: str = "") -> str:
        """A named value."""
        with self.session() as session:
            row = session.execute('SELECT value FROM state WHERE "key" = ?', (key,)).fetchone()
            return str(row[0]) if row is not None else default

    def set_state(self, key: str, value: str) -> None:
        """Store a named value."""
        with self.session() as session:
            session.execute(
                'INSERT OR REPLACE INTO state ("key", value) VALUES (?, ?)',
                (key, value[:MAX_STATE_VALUE]),
            )

    def dispose(self) -> None:
        """Close the connection (a later session opens it again)."""
        with self.write_lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None


def _rollback(connection: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already
        connection.execute("ROLLBACK")
