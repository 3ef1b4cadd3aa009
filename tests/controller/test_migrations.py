"""The schema comes from Alembic migrations, the same on SQLite and PostgreSQL, and it is
exactly what the models describe; databases made before migrations existed are adopted."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select, text

from edgefleet.controller.store.database import (
    BASELINE_REVISION,
    MIGRATIONS,
    Database,
)
from edgefleet.controller.store.schema import Base, Operator
from edgefleet.errors import StorageError


def _head() -> str:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def test_migrations_build_exactly_the_models_schema(database: Database) -> None:
    with database.engine.connect() as connection:
        differences = compare_metadata(
            MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata
        )
        revision = connection.execute(text("select version_num from alembic_version")).scalar()
    assert differences == []
    assert revision == _head()


def test_upgrade_is_idempotent_and_keeps_data(database: Database) -> None:
    from datetime import UTC, datetime

    with database.session() as session:
        session.add(
            Operator(
                name="ops",
                role="admin",
                certificate_serial="1",
                created_by="test",
                created_at=datetime.now(UTC),
            )
        )
    assert database.upgrade_schema() == _head()
    with database.session() as session:
        assert session.scalars(select(Operator.name)).all() == ["ops"]


def test_a_database_made_before_migrations_is_adopted(tmp_path: Path) -> None:
    """A controller created with create_all at the baseline schema is stamped, then
    upgraded to head, keeping its rows."""
    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    with db.engine.begin() as connection:
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        command.upgrade(config, BASELINE_REVISION)
        connection.execute(text("drop table alembic_version"))
        connection.execute(
            text(
                "insert into operators values ('old', 'admin', '1', 'test', "
                "'2026-01-01 00:00:00+00:00')"
            )
        )
    assert db.upgrade_schema() == _head()
    with db.session() as session:
        assert session.scalars(select(Operator.name)).all() == ["old"]
    db.dispose()


def test_an_unreadable_database_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not a database" * 100)
    db = Database(f"sqlite:///{path}")
    with pytest.raises(StorageError, match="cannot migrate the database schema"):
        db.upgrade_schema()
    db.dispose()


def test_replicas_starting_together_migrate_once(postgres: str) -> None:
    """Four controllers starting at once on one PostgreSQL: the advisory lock lets one
    create the schema; the others find it at head."""
    first = Database(postgres)
    with first.engine.begin() as connection:
        connection.execute(text("drop schema public cascade"))
        connection.execute(text("create schema public"))
    replicas = [Database(postgres) for _ in range(4)]
    results: list[object] = []

    def start(db: Database) -> None:
        try:
            results.append(db.upgrade_schema())
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            results.append(e)

    threads = [threading.Thread(target=start, args=(db,)) for db in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [_head()] * 4
    assert "devices" in inspect(first.engine).get_table_names()
    for db in (first, *replicas):
        db.dispose()
