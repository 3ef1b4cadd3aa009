"""The controller's store tests run against every backend: SQLite and PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from controller.store.database import Database, reset_scratch_database

POSTGRES_URL = os.environ.get(
    "EDGEFLEET_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh, empty controller database of each backend (PostgreSQL skips if absent)."""
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'controller.db'}")
    else:
        pytest.importorskip("psycopg", reason="psycopg is not installed")
        db = Database(POSTGRES_URL)
        try:
            with db.engine.connect() as connection:
                connection.execute(text("select 1"))
        except Exception as e:  # noqa: BLE001 - any connection failure means: skip, visibly
            pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_URL}: {type(e).__name__}")
    reset_scratch_database(db)
    yield db
    db.dispose()
