"""Fixtures shared across test packages."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from edgefleet.bundled import bundled_model_path
from edgefleet.controller.store.database import Database, reset_scratch_database
from tests.harness import Fleet, active_models, wait_for
from tests.integration.fleets import ModelFleet, one_agent_fleet


@pytest.fixture(scope="session")
def smollm2_f16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An F16 GGUF of the bundled Q4_1 SmolLM2-135M, dequantized by llama.cpp's quantizer:
    real weights for the quantization pipeline (DESIGN §5)."""
    from edgefleet.controller.catalog.quantization.pipeline import quantize_file

    path = tmp_path_factory.mktemp("f16") / "smollm2-f16.gguf"
    quantize_file(bundled_model_path(), path, "f16", os.cpu_count() or 1, lambda *_: None)
    return path


# Real controller and agent processes on loopback, for tests/integration and tests/attacks.


@pytest.fixture(scope="session")
def model_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelFleet]:
    """The demo path: controller, bundled model published and rolled out, agent gw1 serving it."""
    fleet = Fleet(tmp_path_factory.mktemp("model-fleet"))
    try:
        fleet.init_controller()
        fleet.start_controller()
        model = str(bundled_model_path())
        fleet.ctl("models", "publish", model, "--name", "smollm2", "--version", "1.0")
        device_id = fleet.enroll("gw1", {"site": "lab"})
        token = fleet.app_token("gw1", "app:tests", "smollm2*")
        fleet.ctl("rollout", "create", "smollm2@1.0", "--selector", "site=lab")
        api = fleet.start_agent("gw1")
        wait_for("smollm2 to become active", lambda: active_models(api, token), 120)
        yield ModelFleet(fleet, device_id, api, token)
    finally:
        fleet.stop_all()


@pytest.fixture
def small_fleet(tmp_path: Path) -> Iterator[tuple[Fleet, str]]:
    """A fresh controller and one running agent (site=lab) with nothing rolled out yet."""
    with one_agent_fleet(tmp_path) as made:
        yield made


# The controller's store tests run against every backend: SQLite and PostgreSQL.
POSTGRES_URL = os.environ.get(
    "EDGEFLEET_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _scratch_postgres() -> Database:
    """The test PostgreSQL database, emptied and migrated; skips visibly when absent."""
    pytest.importorskip("psycopg", reason="psycopg is not installed")
    db = Database(POSTGRES_URL)
    try:
        with db.engine.connect() as connection:
            connection.execute(text("select 1"))
    except Exception as e:  # noqa: BLE001 - any connection failure means: skip, visibly
        db.dispose()
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_URL}: {type(e).__name__}")
    reset_scratch_database(db)
    return db


@pytest.fixture
def postgres() -> str:
    """The URL of an empty, migrated PostgreSQL database for a controller process."""
    _scratch_postgres().dispose()
    return POSTGRES_URL


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh, empty controller database of each backend (PostgreSQL skips if absent)."""
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'controller.db'}")
        reset_scratch_database(db)
    else:
        db = _scratch_postgres()
    yield db
    db.dispose()
