"""Staged rollouts on the controller's store (SQLite and PostgreSQL): waves, health gates,
halting with rollback, operator actions, plans with reasons, pins, never moving back."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from edgefleet.controller.fleet.devices import desired_assignments
from edgefleet.controller.rollouts.engine import (
    advance_rollouts,
    assign_matching_rollouts,
    change_rollout,
    create_rollout,
    describe_rollouts,
    plan,
)
from edgefleet.controller.rollouts.pins import pin_model, unpin_model
from edgefleet.controller.rollouts.strategy import Strategy
from edgefleet.controller.rollouts.views import EXCLUDED
from edgefleet.controller.store.database import Database
from edgefleet.controller.store.schema import Assignment, AuditRecordRow, Device, Model, Rollout
from edgefleet.errors import ConflictError, MalformedInputError, NotFoundError
from edgefleet.fleet import DeviceResources, InstalledModel, ModelHealth

MIB = 1024 * 1024
STALE_AFTER = timedelta(minutes=5)
DEVICES = [f"gw{i:02d}" for i in range(10)]


def _manifest(version: str, length: int = 90 * MIB) -> dict[str, object]:
    return {
        "name": "m",
        "version": version,
        "sha256": f"{abs(hash(version)):064x}"[:64],
        "length": length,
        "architecture": "llama",
        "parameter_count": 1,
        "quantization": "Q4_0",
        "context_length": 2048,
        "kv_bytes_per_token": 1024,
        "chunk_size": 1 << 20,
        "chunks_sha256": "f" * 64,
    }


def _resources(budget_mib: int = 4000, disk_mib: int = 10_000) -> DeviceResources:
    return DeviceResources(
        machine="aarch64",
        cpu_count=4,
        memory_total=4096 * MIB,
        memory_budget=budget_mib * MIB,
        context=512,
        slots=1,
        disk_free=disk_mib * MIB,
        max_model_bytes=16 * 1024 * MIB,
    )


@pytest.fixture
def db(database: Database) -> Database:
    """m@1.0 and m@2.0 published; ten active devices on site=lab assigned 1.0 by an earlier
    rollout and running it at 40 tok/s in the smoke test."""
    now = datetime.now(UTC)
    with database.session() as session:
        earlier = Rollout(
            name="m",
            version="1.0",
            selector={"site": "lab"},
            created_by="alice",
            created_at=now,
            state="completed",
        )
        session.add(earlier)
        for version in ("1.0", "2.0"):
            manifest = _manifest(version)
            session.add(
                Model(
                    name="m",
                    version=version,
                    sha256=str(manifest["sha256"]),
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
                    last_seen=now,
                    resources=_resources(),
                    installed=(InstalledModel("m", "1.0", "x", True),),
                    health=(ModelHealth("m", "1.0", "passed", "", 40.0, 100, 0),),
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


def report(db: Database, device_id: str, version: str, **health: object) -> None:
    """The device now serves ``version`` with this health (as its Sync would store it)."""
    values = {"smoke": "passed", "smoke_tokens_per_second": 40.0, **health}
    with db.session() as session:
        device = session.get(Device, device_id)
        assert device is not None
        active = values.pop("active", True)
        device.installed = (
            InstalledModel("m", "1.0", "x", not active),
            InstalledModel("m", version, "y", bool(active)),
        )
        device.health = (ModelHealth("m", version, **values),)  # type: ignore[arg-type]
        device.last_seen = datetime.now(UTC)


def assigned(db: Database) -> dict[str, str]:
    with db.session() as session:
        return {a.device_id: a.version for a in session.scalars(select(Assignment))}


def on(db: Database, version: str) -> set[str]:
    """The devices assigned ``version``."""
    return {d for d, v in assigned(db).items() if v == version}


def actions(db: Database, action: str) -> list[dict[str, Any]]:
    with db.session() as session:
        rows = session.scalars(select(AuditRecordRow).where(AuditRecordRow.action == action))
        return [json.loads(r.canonical)["details"] for r in rows]


def test_waves_advance_only_on_healthy_reports_and_after_the_soak(db: Database) -> None:
    strategy = Strategy(canary=1, waves=("50%",), soak_seconds=60)
    created = create_rollout(db, "alice", "m", "2.0", {"site": "lab"}, strategy)
    assert created.plan.waves == 3
    (canary,) = created.device_ids
    assert on(db, "2.0") == {canary}

    now = datetime.now(UTC)
    assert not advance_rollouts(db, STALE_AFTER, now)  # not serving it yet
    report(db, canary, "2.0")
    assert not advance_rollouts(db, STALE_AFTER, now)  # healthy: the soak starts
    assert not advance_rollouts(db, STALE_AFTER, now + timedelta(seconds=59))
    assert advance_rollouts(db, STALE_AFTER, now + timedelta(seconds=61))
    second = on(db, "2.0") - {canary}
    assert len(second) == 4  # 50 % of ten is five, the canary included

    later = now + timedelta(seconds=200)
    for device_id in second:
        report(db, device_id, "2.0")
    advance_rollouts(db, STALE_AFTER, later)  # wave 2 healthy: soak starts
    assert advance_rollouts(db, STALE_AFTER, later + timedelta(seconds=61))
    assert on(db, "2.0") == set(DEVICES)
    for device_id in DEVICES:
        report(db, device_id, "2.0")
    advance_rollouts(db, STALE_AFTER, later + timedelta(seconds=62))
    (view,) = describe_rollouts(db, created.rollout_id)
    assert view.state == "completed"
    assert {t.state for t in view.targets} == {"healthy"}
    assert [d["wave"] for d in actions(db, "rollout.wave")] == [1, 2]


@pytest.mark.parametrize(
    ("health", "why"),
    [
        ({"smoke": "failed", "smoke_reason": "cannot load m.gguf"}, "smoke test failed"),
        ({"requests": 40, "errors": 9}, "9 of 40 requests failed"),
        ({"smoke_tokens_per_second": 12.0}, "0.30x the 40.0 of the version before"),
    ],
)
def test_a_failing_canary_halts_the_rollout_and_is_rolled_back(
    db: Database, health: dict[str, object], why: str
) -> None:
    strategy = Strategy(canary=1, waves=("100%",), soak_seconds=0)
    created = create_rollout(db, "alice", "m", "2.0", {"site": "lab"}, strategy)
    (canary,) = created.device_ids
    report(db, canary, "2.0", active="smoke" not in health, **health)
    assert advance_rollouts(db, STALE_AFTER)
    (view,) = describe_rollouts(db, created.rollout_id)
    assert view.state == "halted"
    assert why in view.reason and canary in view.reason
    assert on(db, "1.0") == set(DEVICES)  # the canary went back; nobody else was touched
    (failed,) = actions(db, "rollout.device_failed")
    assert failed["device"] == canary and why in str(failed["reason"])
    assert len(actions(db, "rollout.halt")) == 1
    assert not advance_rollouts(db, STALE_AFTER)  # halted rollouts stay halted


def test_failures_within_the_threshold_do_not_halt(db: Database) -> None:
    strategy = Strategy(waves=("100%",), max_failures=1)
    created = create_rollout(db, "alice", "m", "2.0", {"site": "lab"}, strategy)
    report(db, DEVICES[0], "2.0", smoke="failed", smoke_reason="boom", active=False)
    for device_id in DEVICES[1:]:
        report(db, device_id, "2.0")
    advance_rollouts(db, STALE_AFTER)
    (view,) = describe_rollouts(db, created.rollout_id)
    assert view.state == "completed"
    assert on(db, "1.0") == {DEVICES[0]}  # the failed one went back


def test_a_stale_device_never_counts_as_healthy(db: Database) -> None:
    created = create_rollout(db, "alice", "m", "2.0", {"site": "lab"}, Strategy(canary=1))
    (canary,) = created.device_ids
    report(db, canary, "2.0")
    advance_rollouts(db, STALE_AFTER, datetime.now(UTC) + timedelta(minutes=10))
    (view,) = describe_rollouts(db, created.rollout_id)
    assert view.state == "running" and view.current_wave == 0
    assert "stale" in view.targets[0].reason


def test_pause_resume_abort_rollback(db: Database) -> None:
    created = create_rollout(
        db, "alice", "m", "2.0", {"site": "lab"}, Strategy(canary=2, soak_seconds=0)
    )
    for device_id in created.device_ids:
        report(db, device_id, "2.0")
    change_rollout(db, "bob", created.rollout_id, "pause")
    advance_rollouts(db, STALE_AFTER)
    assert len(on(db, "2.0")) == 2  # paused: no new wave
    with pytest.raises(ConflictError, match="is paused"):
        change_rollout(db, "bob", created.rollout_id, "pause")
    change_rollout(db, "bob", created.rollout_id, "resume")
    advance_rollouts(db, STALE_AFTER)
    assert on(db, "2.0") == set(DEVICES)
    change_rollout(db, "bob", created.rollout_id, "rollback")
    assert on(db, "1.0") == set(DEVICES)
    (view,) = describe_rollouts(db, created.rollout_id)
    assert view.state == "rolled_back" and view.reason == "rollback by bob"
    assert sorted(actions(db, "rollout.rollback")[0]["devices"]) == DEVICES
    with pytest.raises(MalformedInputError, match="unknown rollout action"):
        change_rollout(db, "bob", created.rollout_id, "explode")
    with pytest.raises(NotFoundError):
        change_rollout(db, "bob", 999, "pause")

    again = create_rollout(db, "alice", "m", "2.0", {"site": "lab"}, Strategy(canary=1))
    change_rollout(db, "bob", again.rollout_id, "abort")
    advance_rollouts(db, STALE_AFTER)
    assert len(on(db, "2.0")) == 1  # aborted: the canary keeps it, nobody else gets it


def test_plan_names_every_excluded_device_and_why(db: Database) -> None:
    with db.session() as session:
        devices = {d.device_id: d for d in session.scalars(select(Device))}
        devices["gw01"].labels = {"site": "other"}
        devices["gw02"].resources = _resources(budget_mib=60)
        devices["gw03"].resources = _resources(disk_mib=200)
        devices["gw04"].state = "revoked"
    pin_model(db, "alice", "m", "1.0", device_id="gw05")
    planned = plan(db, "m", "2.0", {"site": "lab"}, Strategy(canary=1, waves=("50%",)))
    excluded = {d.device_id: d.reason for d in planned.devices if d.wave == EXCLUDED}
    assert excluded["gw01"] == "labels do not match site=lab"
    assert "over the memory budget of 60 MiB" in excluded["gw02"]
    assert "MiB more disk, 200 MiB free" in excluded["gw03"]
    assert excluded["gw04"] == "device is revoked"
    assert excluded["gw05"] == "pinned to m@1.0"
    assert len(excluded) == 5
    assert [sum(d.wave == w for d in planned.devices) for w in range(3)] == [1, 2, 2]
    assert on(db, "1.0") == set(DEVICES)  # a plan changes nothing


def test_a_rollout_never_moves_a_device_back(db: Database) -> None:
    create_rollout(db, "alice", "m", "2.0", {"site": "lab"})
    planned = plan(db, "m", "1.0", {"site": "lab"}, Strategy())
    assert all(d.wave == EXCLUDED for d in planned.devices)
    assert "newer than 1.0" in planned.devices[0].reason
    assert "rollout rollback" in planned.devices[0].reason


def test_a_new_rollout_supersedes_one_under_way(db: Database) -> None:
    first = create_rollout(db, "alice", "m", "2.0", {"site": "lab"}, Strategy(canary=1))
    with db.session() as session:
        manifest = _manifest("3.0")
        session.add(
            Model(
                name="m",
                version="3.0",
                sha256=str(manifest["sha256"]),
                manifest=manifest,
                published_at=datetime.now(UTC),
            )
        )
    create_rollout(db, "alice", "m", "3.0", {"site": "lab"})
    views = {v.id: v for v in describe_rollouts(db)}
    assert views[first.rollout_id].state == "aborted"
    assert "superseded by rollout" in views[first.rollout_id].reason
    (superseded,) = describe_rollouts(db, first.rollout_id)
    assert {t.state for t in superseded.targets if t.wave > 0} == {"skipped"}


def test_pins_hold_devices_and_rollouts_leave_them_alone(db: Database) -> None:
    held = pin_model(db, "alice", "m", "1.0", selector={"site": "lab"})
    assert held == DEVICES
    created = create_rollout(db, "alice", "m", "2.0", {"site": "lab"})
    assert created.device_ids == []
    with db.session() as session:
        device = session.get(Device, "gw00")
        assert device is not None
        assert [(a.name, a.version) for a in desired_assignments(session, device)] == [("m", "1.0")]
    with pytest.raises(MalformedInputError, match="either one device or a label selector"):
        pin_model(db, "alice", "m", "1.0")
    with pytest.raises(NotFoundError, match="is not published"):
        pin_model(db, "alice", "m", "9.9", device_id="gw00")
    assert unpin_model(db, "alice", "m", selector={"site": "lab"}) == DEVICES
    with pytest.raises(NotFoundError, match="is not pinned"):
        unpin_model(db, "alice", "m", selector={"site": "lab"})
    assert [d["devices"] for d in actions(db, "model.unpin")] == [DEVICES]


def test_a_device_enrolling_mid_rollout_joins_its_last_wave(db: Database) -> None:
    created = create_rollout(db, "alice", "m", "2.0", {"site": "lab"}, Strategy(canary=1))
    with db.session() as session:
        device = Device(
            device_id="late",
            hostname="late",
            labels={"site": "lab"},
            key_fingerprint="0" * 64,
            certificate_serial="1",
            audit_public_key="a" * 64,
            enrolled_at=datetime.now(UTC),
        )
        session.add(device)
        session.flush()
        assign_matching_rollouts(session, device)
    assert "late" not in assigned(db)  # not yet: the canary is still being judged
    (view,) = describe_rollouts(db, created.rollout_id)
    late = next(t for t in view.targets if t.device_id == "late")
    assert (late.wave, late.state) == (view.waves - 1, "pending")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"waves": ("0%",)}, "neither a percentage"),
        ({"waves": ("abc",)}, "neither a percentage"),
        ({"waves": ("0",)}, "a wave of 0 devices"),
        ({"max_error_rate": 2.0}, "max_error_rate"),
        ({"min_speed_ratio": float("nan")}, "min_speed_ratio"),
        ({"soak_seconds": -1}, "soak_seconds"),
    ],
)
def test_a_bad_strategy_is_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(MalformedInputError, match=message):
        Strategy(**fields)  # type: ignore[arg-type]


def test_wave_bounds() -> None:
    assert Strategy(canary=1, waves=("50%",)).wave_bounds(10) == [1, 5, 10]
    assert Strategy(canary=3, waves=("10%", "100%")).wave_bounds(10) == [3, 10]
    assert Strategy(waves=("2", "5")).wave_bounds(3) == [2, 3]
    assert Strategy().wave_bounds(0) == []


def test_a_failing_report_is_judged_as_it_arrives(db: Database) -> None:
    """The sync that carries a smoke-test failure already answers with the old version."""
    from edgefleet.controller.fleet.devices import sync_device
    from edgefleet.controller.trust.snapshots import Snapshot
    from edgefleet.fleet import InstalledModel, StatusReport
    from edgefleet.trust.envelope import Envelope

    created = create_rollout(db, "alice", "m", "2.0", {"site": "lab"}, Strategy(canary=1))
    (canary,) = created.device_ids
    report_ = StatusReport(
        agent_version="0.1.0",
        models=(InstalledModel("m", "1.0", "x", True), InstalledModel("m", "2.0", "y", False)),
        health=(ModelHealth("m", "2.0", "failed", "cannot load m.gguf"),),
    )
    nothing = Envelope("t", b"{}", ())
    synced = sync_device(db, canary, report_, Snapshot((), nothing, nothing, None))
    assert [(a.name, a.version) for a in synced.state.assignments] == [("m", "1.0")]
    assert synced.judging == ()  # failed: this rollout judges its reports no more
    (view,) = describe_rollouts(db, created.rollout_id)
    assert view.targets[0].state == "failed" and "cannot load" in view.targets[0].reason
    advance_rollouts(db, STALE_AFTER)
    (view,) = describe_rollouts(db, created.rollout_id)
    assert view.state == "halted"
