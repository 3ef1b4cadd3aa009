"""The agent's SQLite database (registry, trust metadata, audit log) via SQLAlchemy."""

from __future__ import annotations

import contextlib
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Integer, LargeBinary, String, create_engine, event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from edgefleet.errors import EdgefleetError, StorageError

FULL_DISK_BYTES = 1 << 20  # less free than this: what a failed write most likely met


class Base(DeclarativeBase):
    """Declarative base of the agent's tables."""


class TrustRow(Base):
    """Verified trust metadata, kept as the exact envelopes received."""

    __tablename__ = "trust"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    envelopes: Mapped[bytes] = mapped_column(LargeBinary)


class InstalledRow(Base):
    """A verified model version whose blob is in the blob store."""

    __tablename__ = "installed"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    length: Mapped[int] = mapped_column(Integer)
    manifest: Mapped[bytes] = mapped_column(LargeBinary)
    installed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ActiveRow(Base):
    """The version of each model that serves requests, and the one before it."""

    __tablename__ = "active"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[str] = mapped_column(String(64))
    previous_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    activated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditRow(Base):
    """One local audit record, stored as the canonical bytes that were hashed."""

    __tablename__ = "audit"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    canonical: Mapped[bytes] = mapped_column(LargeBinary)
    record_sha256: Mapped[str] = mapped_column(String(64))


class CheckpointRow(Base):
    """A checkpoint of the device's chain, signed with its audit key."""

    __tablename__ = "checkpoints"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    envelope: Mapped[bytes] = mapped_column(LargeBinary)


class StateRow(Base):
    """Small named values: acknowledged audit sequence, last sync, last error."""

    __tablename__ = "state"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(4096))


def _pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Transactions are begun explicitly (IMMEDIATE, below) so that a command-line process
    # and the running agent never interleave a read and a write of the same rows.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _cause(error: SQLAlchemyError, folder: Path) -> str:
    """SQLite's own reason, on one line, and whether the disk is full (SQLite says "disk
    I/O error" when it cannot even create its journal)."""
    cause = str(getattr(error, "orig", "") or type(error).__name__).splitlines()[0][:200]
    with contextlib.suppress(OSError):
        if shutil.disk_usage(folder).free < FULL_DISK_BYTES and "full" not in cause:
            cause += f" (no space left in {folder})"
    return cause


def _begin_immediate(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


class AgentDatabase:
    """Sessions that commit or roll back; serialized by one lock here and by SQLite's write
    lock (``BEGIN IMMEDIATE``) against other processes on the same data directory."""

    def __init__(self, path: Path) -> None:
        self.folder = path.parent
        path.parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(f"sqlite:///{path}")
        event.listen(self.engine, "connect", _pragmas)
        event.listen(self.engine, "begin", _begin_immediate)
        try:
            Base.metadata.create_all(self.engine)
        except SQLAlchemyError as e:
            raise StorageError(f"cannot open {path}: {_cause(e, path.parent)}") from e
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.write_lock = threading.Lock()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: commit on success, roll back on any exception."""
        with self.write_lock:
            session = self._sessions()
            try:
                yield session
                session.commit()
            except EdgefleetError:
                session.rollback()
                raise
            except SQLAlchemyError as e:
                session.rollback()
                raise StorageError(f"local database error: {_cause(e, self.folder)}") from e
            except BaseException:
                session.rollback()
                raise
            finally:
                session.close()

    def get_state(self, key: str, default: str = "") -> str:
        """A named value."""
        with self.session() as session:
            row = session.get(StateRow, key)
            return row.value if row is not None else default

    def set_state(self, key: str, value: str) -> None:
        """Store a named value."""
        with self.session() as session:
            session.merge(StateRow(key=key, value=value[:4096]))

    def dispose(self) -> None:
        """Close connections."""
        self.engine.dispose()
