"""Device syncs that reuse their last answer (SQLite and PostgreSQL): no query while nothing
changed, reports and rollout verdicts written behind and never over later ones, kept
answers and admissions ended by every change (announced or not), every report judged."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from sqlalchemy import event
from sqlalchemy.dialects import sqlite
from sqlalchemy.types import TypeDecorator

from edgefleet.controller.app.metrics import ControllerMetrics
from edgefleet.controller.fleet.changes import ChangeFeed
from edgefleet.controller.fleet.devices import report_values, write_reports
from edgefleet.controller.fleet.syncs import DeviceSyncs
from edgefleet.controller.rbac.access import AccessControl
from edgefleet.controller.rbac.authorization import Principal
from edgefleet.controller.rollouts.engine import Judged, create_rollout
from edgefleet.controller.rollouts.pins import pin_model
from edgefleet.controller.rollouts.strategy import Strategy
from edgefleet.controller.store.database import Database
from edgefleet.controller.store.schema import Assignment, Device, Model, Rollout, RolloutTarget
from edgefleet.controller.trust.snapshots import Snapshot
from edgefleet.errors import PermissionDeniedError, StorageError
from edgefleet.fleet import (
    BenchResult,
    DeviceResources,
    DownloadProgress,
    InstalledModel,
    ModelAssignment,
    ModelHealth,
    StatusReport,
)
from edgefleet.trust.envelope import Envelope

NOTHING = Envelope("t", b"{}", ())
SNAPSHOT = Snapshot((), NOTHING, NOTHING, None)
DEVICES = ("gw0", "gw1", "gw2")
SYNC = "/edgefleet.v1.DeviceService/Sync"


def _report(version: str = "0.1.0", model: str = "1.0", smoke: str = "passed") -> StatusReport:
    return StatusReport(
        agent_version=version,
        models=(InstalledModel("m", model, "x", True),),
        health=(ModelHealth("m", model, smoke, "" if smoke == "passed" else "cannot load"),),
    )


@pytest.fixture
def db(database: Database) -> Database:
    """m@1.0 and m@2.0 published; three active devices running 1.0 (a completed rollout)."""
    now = datetime.now(UTC)
    with database.session() as session:
        earlier = Rollout(
            name="m",
            version="1.0",
            selector={},
            created_by="alice",
            created_at=now,
            state="completed",
        )
        session.add(earlier)
        for version in ("1.0", "2.0"):
            manifest = {"name": "m", "version": version, "length": 1, "sha256": version * 16}
            session.add(
                Model(
                    name="m",
                    version=version,
                    sha256=version * 16,
                    manifest=manifest,
                    published_at=now,
                )
            )
        for device_id in DEVICES:
            session.add(
                Device(
                    device_id=device_id,
                    hostname=device_id,
                    labels={"site": "lab"},
                    key_fingerprint="0" * 64,
                    certificate_serial="1",
                    audit_public_key="a" * 64,
                    enrolled_at=now,
                )
            )
        session.flush()
        for device_id in DEVICES:
            session.add(
                Assignment(
                    device_id=device_id, model_name="m", version="1.0", rollout_id=earlier.id
                )
            )
    return database


@contextmanager
def _statements(db: Database) -> Iterator[list[str]]:
    """The SQL statements sent to the database inside the block."""
    sent: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        yield sent
    finally:
        event.remove(db.engine, "before_cursor_execute", count)


def _stored(db: Database, device_id: str) -> Device:
    with db.session() as session:
        device = session.get(Device, device_id)
        assert device is not None
        session.expunge(device)
        return device


def test_a_repeated_sync_needs_no_query_and_its_report_is_written_behind(db: Database) -> None:
    metrics = ControllerMetrics()

    async def scenario() -> None:
        syncs = DeviceSyncs(db, ChangeFeed(), metrics)
        await syncs.recheck()
        first = await syncs.sync("gw0", _report("0.1.0"), SNAPSHOT)
        assert first.assignments == (ModelAssignment("m", "1.0"),)
        assert _stored(db, "gw0").agent_version == "0.1.0"  # the first sync stores at once
        with _statements(db) as sent:
            again = await syncs.sync("gw0", _report("0.2.0"), SNAPSHOT)
            other = await syncs.sync("gw1", _report("0.3.0"), SNAPSHOT)  # first: full path
            assert other.assignments == again.assignments == first.assignments
            full_path = len(sent)
            assert full_path > 0
            again = await syncs.sync("gw1", _report("0.4.0"), SNAPSHOT)
            assert len(sent) == full_path  # no query
            await syncs.flush()
            assert len(sent) == full_path + 1  # both queued reports in one statement
        assert _stored(db, "gw0").agent_version == "0.2.0"
        assert _stored(db, "gw1").agent_version == "0.4.0"

    asyncio.run(scenario())
    exposition = metrics.exposition().decode()
    assert 'edgefleet_syncs_total{answer="kept"} 2.0' in exposition
    assert 'edgefleet_syncs_total{answer="full"} 2.0' in exposition


def test_a_change_ends_kept_answers_even_when_its_notification_is_lost(db: Database) -> None:
    async def scenario() -> None:
        changes = ChangeFeed()
        syncs = DeviceSyncs(db, changes, ControllerMetrics())
        await syncs.recheck()
        for device_id in DEVICES:
            await syncs.sync(device_id, _report(), SNAPSHOT)
        pin_model(db, "alice", "m", "2.0", device_id="gw0")
        changes.notify()  # as the operator call does
        pinned = await syncs.sync("gw0", _report(), SNAPSHOT)
        assert pinned.assignments == (ModelAssignment("m", "2.0"),)

        await syncs.sync("gw1", _report(), SNAPSHOT)  # kept under the new revision
        # Pinned on another replica whose NOTIFY never arrived: the audit head moved.
        pin_model(db, "alice", "m", "2.0", selector={"site": "lab"})
        kept = await syncs.sync("gw1", _report(), SNAPSHOT)
        assert kept.assignments == (ModelAssignment("m", "1.0"),)  # not noticed yet
        await syncs.recheck()
        noticed = await syncs.sync("gw1", _report(), SNAPSHOT)
        assert noticed.assignments == (ModelAssignment("m", "2.0"),)

    asyncio.run(scenario())


def _target(db: Database, rollout_id: int, device_id: str) -> RolloutTarget:
    with db.session() as session:
        target = session.get(RolloutTarget, (rollout_id, device_id))
        assert target is not None
        session.expunge(target)
        return target


def test_a_rollout_judges_each_report_as_it_arrives(db: Database) -> None:
    """A canary's healthy reports are judged without a query and the verdicts written
    behind; the failing one is judged in a transaction and already answers with the old
    version; a verdict written late never replaces the failure."""

    async def scenario() -> None:
        changes = ChangeFeed()
        syncs = DeviceSyncs(db, changes, ControllerMetrics())
        await syncs.recheck()
        created = create_rollout(db, "alice", "m", "2.0", {}, Strategy(canary=2))
        changes.notify()
        canary, other = created.device_ids
        rollout_id = created.rollout_id
        first = await syncs.sync(canary, _report(model="2.0"), SNAPSHOT)  # full path
        await syncs.sync(other, _report(model="1.0"), SNAPSHOT)
        assert first.assignments == (ModelAssignment("m", "2.0"),)
        judged_first = _target(db, rollout_id, canary)
        assert judged_first.state == "healthy"
        with _statements(db) as sent:
            again = await syncs.sync(canary, _report("0.2.0", model="2.0"), SNAPSHOT)
            await syncs.sync(other, _report("0.2.0", model="2.0"), SNAPSHOT)
            assert again.assignments == first.assignments and sent == []
            await syncs.flush()  # two reports and two verdicts at once
            assert len(sent) == 2
        judged_again = _target(db, rollout_id, canary)
        assert judged_again.state == "healthy"
        assert judged_again.judged_at == _stored(db, canary).last_seen
        assert judged_again.judged_at is not None and judged_first.judged_at is not None
        assert judged_again.judged_at > judged_first.judged_at
        assert _target(db, rollout_id, other).state == "healthy"

        waiting = await syncs.sync(canary, _report(model="1.0"), SNAPSHOT)  # not serving 2.0
        assert waiting.assignments == first.assignments
        await syncs.flush()
        assert _target(db, rollout_id, canary).state == "assigned"

        late = await syncs.sync(canary, _report(model="2.0"), SNAPSHOT)  # queued, healthy
        assert late.assignments == first.assignments
        failing = await syncs.sync(canary, _report(model="2.0", smoke="failed"), SNAPSHOT)
        assert failing.assignments == (ModelAssignment("m", "1.0"),)
        await syncs.flush()  # the queued healthy verdict came before the failure
        target = _target(db, rollout_id, canary)
        assert target.state == "failed" and "cannot load" in target.reason

    asyncio.run(scenario())


def test_a_verdict_written_late_never_replaces_a_later_one(db: Database) -> None:
    created = create_rollout(db, "alice", "m", "2.0", {}, Strategy(canary=2))
    canary, other = created.device_ids
    now = datetime.now(UTC)
    key = (created.rollout_id, canary)
    write_reports(
        db,
        {},
        {key: Judged("healthy", "serving", now), (key[0], other): Judged("assigned", "-", now)},
    )
    write_reports(db, {}, {key: Judged("assigned", "older", now - timedelta(seconds=1))})
    assert _target(db, created.rollout_id, canary).reason == "serving"
    with db.session() as session:
        target = session.get(RolloutTarget, key)
        assert target is not None
        target.state = "failed"
    write_reports(db, {}, {key: Judged("healthy", "later", now + timedelta(seconds=1))})
    assert _target(db, created.rollout_id, canary).state == "failed"


def test_a_report_never_overwrites_a_later_one(db: Database) -> None:
    """Two replicas (or a slow flush) writing the same device: the later report stays."""
    now = datetime.now(UTC)
    newer = report_values(_report("0.9.0"), now)
    older = report_values(_report("0.1.0"), now - timedelta(seconds=1))
    write_reports(db, {"gw0": newer, "gw1": older}, {})
    write_reports(db, {"gw0": older, "gw1": newer}, {})
    assert _stored(db, "gw0").agent_version == "0.9.0"
    assert _stored(db, "gw1").agent_version == "0.9.0"


def test_reports_kept_through_a_failed_write_are_written_later(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        syncs = DeviceSyncs(db, ChangeFeed(), ControllerMetrics())
        await syncs.recheck()
        await syncs.sync("gw0", _report("0.1.0"), SNAPSHOT)
        await syncs.sync("gw0", _report("0.2.0"), SNAPSHOT)
        await syncs.sync("gw1", _report("0.1.0"), SNAPSHOT)
        await syncs.sync("gw1", _report("0.2.0"), SNAPSHOT)
        real = write_reports

        def unreachable(*args: object) -> None:
            raise StorageError("database error: OperationalError")

        monkeypatch.setattr("edgefleet.controller.fleet.syncs.write_reports", unreachable)
        await syncs.flush()
        await syncs.sync("gw1", _report("0.3.0"), SNAPSHOT)  # newer than the kept one
        monkeypatch.setattr("edgefleet.controller.fleet.syncs.write_reports", real)
        await syncs.flush()
        assert _stored(db, "gw0").agent_version == "0.2.0"
        assert _stored(db, "gw1").agent_version == "0.3.0"

    asyncio.run(scenario())


def test_an_admission_is_remembered_only_while_the_revision_holds(db: Database) -> None:
    access = AccessControl(db)
    device = Principal("device", "gw0")
    access.admit(SYNC, device, "1", revision=(0, 0))
    assert access.admitted(SYNC, device, "1", (0, 0))
    assert not access.admitted(SYNC, device, "2", (0, 0))  # another certificate: ask
    operator_call = "/edgefleet.v1.OperatorService/ListDevices"
    assert not access.admitted(operator_call, device, "1", (0, 0))  # denied by admit, audited
    with pytest.raises(PermissionDeniedError):
        access.admit(operator_call, device, "1", revision=(0, 0))
    access.forget("gw0")  # renewed
    assert not access.admitted(SYNC, device, "1", (0, 0))
    access.admit(SYNC, device, "1", revision=(0, 0))
    with db.session() as session:
        stored = session.get(Device, "gw0")
        assert stored is not None
        stored.state = "revoked"  # set_state also notifies: the revision moves
    assert not access.admitted(SYNC, device, "1", (1, 0))
    with pytest.raises(PermissionDeniedError, match="revoked"):
        access.admit(SYNC, device, "1", revision=(1, 0))
    assert not access.admitted(SYNC, device, "1", (1, 0))


def test_report_values_are_what_asdict_gives() -> None:
    """Every reported record is a flat dataclass: the shallow copy the store writes
    equals ``asdict``."""
    report = StatusReport(
        agent_version="0.1.0",
        models=(InstalledModel("m", "1.0", "x", True),),
        bench=(BenchResult("m", "1.0", "x", 4, 64, 32, 100.0, 20.0, "2026-11-28T00:00:00Z"),),
        downloads=(DownloadProgress("m", "2.0", 5, 10, "paused", "r" * 512),),
        resources=DeviceResources("aarch64", 4, 1, 2, 512, 1, 3, 4),
        health=(ModelHealth("m", "1.0", "passed", "", 40.0, 10, 1),),
    )
    now = datetime.now(UTC)
    columns = Device.__table__.c  # the store writes them through its record types
    sqlite_dialect = sqlite.dialect()
    values = {
        key: cast(TypeDecorator[Any], columns[key].type).process_bind_param(value, sqlite_dialect)
        for key, value in report_values(report, now).items()
        if key in ("installed", "bench", "downloads", "resources", "health")
    }
    assert values["installed"] == [asdict(m) for m in report.models]
    assert values["bench"] == [asdict(b) for b in report.bench]
    assert values["downloads"] == [asdict(d) for d in report.downloads]
    assert values["resources"] == asdict(report.resources)
    assert values["health"] == [asdict(h) for h in report.health]
