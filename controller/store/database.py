"""Engine creation (SQLite pragmas on connect), schema migrations (Alembic) and the
transactional session scope."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.util.exc import CommandError
from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from edgefleet.errors import EdgefleetError, StorageError

MIGRATIONS = Path(__file__).with_name("migrations")
# The schema databases had before migrations existed (made by create_all): stamped as this.
BASELINE_REVISION = "0001"
# pg_advisory_xact_lock key: replicas starting together migrate one after the other.
MIGRATION_LOCK_KEY = 0x6564_6765_0001


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


class Database:
    """Owns the engine and hands out sessions that commit or roll back as a unit."""

    def __init__(self, url: str) -> None:
        try:
            self.engine: Engine = create_engine(url, pool_pre_ping=True)
        except (SQLAlchemyError, ValueError) as e:
            raise StorageError(f"cannot open database {url!r}: {e}") from e
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_postgresql(self) -> bool:
        """True on PostgreSQL (advisory locks, LISTEN/NOTIFY), False on SQLite."""
        return self.engine.dialect.name == "postgresql"

    def upgrade_schema(self) -> str:
        """Bring the schema to the newest migration (creating it on an empty database);
        return the revision. On PostgreSQL replicas take turns under an advisory lock."""
        config = AlembicConfig()
        config.set_main_option("script_location", str(MIGRATIONS))
        try:
            with self.engine.begin() as connection:
                if self.is_postgresql:
                    connection.execute(
                        text("select pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                    )
                config.attributes["connection"] = connection
                tables = set(inspect(connection).get_table_names())
                if "alembic_version" not in tables and "devices" in tables:
                    command.stamp(config, BASELINE_REVISION)
                command.upgrade(config, "head")
                revision = connection.execute(
                    text("select version_num from alembic_version")
                ).scalar_one()
        except (SQLAlchemyError, CommandError) as e:
            raise StorageError(f"cannot migrate the database schema: {e}") from e
        return str(revision)

    @contextmanager
    def session(self, exclusive: str = "") -> Iterator[Session]:
        """A unit of work: commit on success, roll back on any exception.

        ``exclusive`` names what the unit of work reads and then writes a new version of
        (targets, policy, timestamp): on PostgreSQL it first takes a transaction-scoped
        advisory lock of that name, so that controller replicas take turns instead of
        colliding on the version number. (SQLite has one writer at a time anyway.)"""
        session = self._sessions()
        try:
            if exclusive:
                self.hold(session, exclusive)
            yield session
            session.commit()
        except EdgefleetError:
            session.rollback()
            raise
        except SQLAlchemyError as e:
            session.rollback()
            raise StorageError(f"database error: {type(e).__name__}") from e
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def hold(self, session: Session, name: str) -> None:
        """On PostgreSQL, wait for the transaction-scoped advisory lock ``name`` (held until
        the session's transaction ends); nothing on SQLite."""
        if self.is_postgresql:
            session.execute(
                text("select pg_advisory_xact_lock(hashtext(:name))"), {"name": f"edgefleet:{name}"}
            )

    def dispose(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()


def reset_scratch_database(db: Database) -> None:
    """Drop every table (PostgreSQL: the whole ``public`` schema) and migrate afresh.

    For test suites and benchmarks on a scratch database only: it destroys all data."""
    if db.is_postgresql:
        with db.engine.begin() as connection:
            connection.execute(text("drop schema public cascade"))
            connection.execute(text("create schema public"))
    else:
        with db.engine.begin() as connection:
            for table in inspect(connection).get_table_names():
                connection.execute(text(f'drop table "{table}"'))
    db.upgrade_schema()
