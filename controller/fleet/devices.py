"""Devices as the controller sees them: status reports in, desired state out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

from sqlalchemy import (
    JSON,
    ColumnElement,
    Table,
    bindparam,
    case,
    func,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy.orm import Session

from edgefleet.controller.audit.log import acked_seq, tamper_reason
from edgefleet.controller.catalog.quantization.family import DEVICE_CLASS_LABEL
from edgefleet.controller.fleet.views import FleetSummary
from edgefleet.controller.rollouts.engine import (
    Judged,
    Judging,
    is_stale,
    judge_report,
    repick_variant,
    write_judgements,
)
from edgefleet.controller.rollouts.pins import all_pins, pins_for
from edgefleet.controller.store.database import Database
from edgefleet.controller.store.schema import (
    Assignment,
    AuditHead,
    Device,
    Model,
    Pin,
    Rollout,
    RolloutTarget,
)
from edgefleet.controller.trust.snapshots import Snapshot
from edgefleet.errors import NotFoundError
from edgefleet.fleet import (
    DesiredState,
    DeviceResources,
    DeviceView,
    ModelAssignment,
    StatusReport,
)

# What a status report sets on its device's row (see ``report_values``).
REPORT_COLUMNS = (
    "last_seen",
    "agent_version",
    "installed",
    "last_error",
    "bench",
    "downloads",
    "data_used_today",
    "daily_data_budget",
    "resources",
    "health",
    "audit_head_seq",
)


def desired_assignments(
    session: Session,
    device: Device,
    assignments: list[Assignment] | None = None,
    pins: list[Pin] | None = None,
) -> tuple[ModelAssignment, ...]:
    """What the device is to run: its rollouts' assignments, pinned models where pinned
    (assignments and pins are read here unless given)."""
    if assignments is None:
        assignments = list(
            session.execute(
                select(Assignment).where(Assignment.device_id == device.device_id)
            ).scalars()
        )
    desired = {a.model_name: a.version for a in assignments}
    desired.update(pins_for(session, device, pins))
    return tuple(ModelAssignment(n, v) for n, v in sorted(desired.items()))


def may_read_blob(db: Database, device_id: str, sha256: str) -> bool:
    """Whether ``sha256`` is the file or chunk index of a model version the device is
    assigned now or was assigned by a rollout (the version it runs, or keeps for rollback)."""
    with db.session() as session:
        device = session.get(Device, device_id)
        if device is None:
            return False
        refs = set(desired_assignments(session, device))
        for name, version, previous in session.execute(
            select(Rollout.name, RolloutTarget.version, RolloutTarget.previous_version)
            .join(Rollout, Rollout.id == RolloutTarget.rollout_id)
            .where(RolloutTarget.device_id == device_id)
        ):
            refs.update(ModelAssignment(name, v) for v in (version, previous) if v)
        names = {r.name for r in refs}
        for model in session.execute(select(Model).where(Model.name.in_(names))).scalars():
            if ModelAssignment(model.name, model.version) in refs and sha256 in (
                model.sha256,
                model.manifest.get("chunks_sha256"),
            ):
                return True
    return False


def report_values(report: StatusReport, seen: datetime) -> dict[str, object]:
    """The device columns a status report sets (received at ``seen``; serde bounded it)."""
    return {
        "last_seen": seen,
        "agent_version": report.agent_version,
        "installed": report.models,
        "last_error": report.last_error,
        "bench": report.bench,
        "downloads": report.downloads,
        "data_used_today": report.data_used_today,
        "daily_data_budget": report.daily_data_budget,
        "resources": report.resources,
        "health": report.health,
        "audit_head_seq": report.audit_head_seq,
    }


def desired_state(
    snapshot: Snapshot, assignments: tuple[ModelAssignment, ...], audit_acked_seq: int
) -> DesiredState:
    """A device's answer: the snapshot every device gets, and its own part."""
    return DesiredState(
        root_chain=snapshot.root_chain,
        timestamp=snapshot.timestamp,
        targets=snapshot.targets,
        assignments=assignments,
        audit_acked_seq=audit_acked_seq,
        policy=snapshot.policy,
    )


@dataclass(frozen=True)
class Synced:
    """A stored report's answer; whether the next one may reuse it (see
    edgefleet.controller.fleet.syncs:
    not when a family's variant is re-picked from each report), and the rollouts that
    judge the device's next report."""

    state: DesiredState
    reusable: bool
    judging: tuple[Judging, ...]


def sync_device(db: Database, device_id: str, report: StatusReport, snapshot: Snapshot) -> Synced:
    """Store the device's report (judging it for rollouts under way) and return its
    desired state, in one transaction."""
    with db.session() as session:
        device = session.get(Device, device_id)
        if device is None:
            raise NotFoundError(f"device {device_id} is not enrolled")
        for column, value in report_values(report, datetime.now(UTC)).items():
            setattr(device, column, value)
        judging = judge_report(session, device)  # before reading assignments: a failure reverts one
        assignments = list(
            session.execute(
                select(Assignment)
                .where(Assignment.device_id == device_id)
                .order_by(Assignment.model_name)
            ).scalars()
        )
        for assignment in assignments:
            if assignment.family:
                repick_variant(session, device, assignment)
        state = desired_state(
            snapshot,
            desired_assignments(session, device, assignments),
            acked_seq(session, device_id),
        )
        return Synced(state, not any(a.family for a in assignments), judging)


def write_reports(
    db: Database,
    reports: dict[str, dict[str, object]],
    judgements: dict[tuple[int, str], Judged],
) -> None:
    """Store reports received earlier (device id -> ``report_values``) and the verdicts on
    them (edgefleet.controller.rollouts.engine.write_judgements) in one transaction; a row that
    already holds a later report keeps it (last_seen only moves forward, also when
    another replica stored that one)."""
    if not reports and not judgements:
        return
    table = cast(Table, Device.__table__)
    statement = (
        update(table)
        .where(
            table.c.device_id == bindparam("b_device_id"),
            or_(table.c.last_seen.is_(None), table.c.last_seen <= bindparam("b_last_seen")),
        )
        .values({column: bindparam(f"b_{column}") for column in REPORT_COLUMNS})
    )
    rows = [
        {"b_device_id": device_id, **{f"b_{k}": v for k, v in values.items()}}
        for device_id, values in sorted(reports.items())  # one lock order for every writer
    ]
    with db.session() as session:
        if rows:
            session.connection().execute(statement, rows)
        write_judgements(session, judgements)


def _carrying(selector: dict[str, str] | None) -> list[ColumnElement[bool]]:
    """SQL conditions: the device carries every label of ``selector`` (JSON lookups that
    SQLite and PostgreSQL both run)."""
    labels = type_coerce(Device.labels, JSON)
    return [labels[key].as_string() == value for key, value in (selector or {}).items()]


def fleet_summary(
    db: Database, stale_after: timedelta, selector: dict[str, str] | None = None
) -> FleetSummary:
    """Counts over the devices carrying the ``selector``'s labels (every device: None),
    counted by the database: a few aggregate queries whatever the fleet's size."""
    matched = _carrying(selector)
    active = [*matched, Device.state == "active"]
    cutoff = datetime.now(UTC) - stale_after
    resources = type_coerce(Device.resources, JSON)
    head = AuditHead.__table__
    with db.session() as session:
        states = {
            state: count
            for state, count in session.execute(
                select(Device.state, func.count()).where(*matched).group_by(Device.state)
            )
        }
        classes: dict[str, int] = {}
        kinds = (
            type_coerce(Device.labels, JSON)[DEVICE_CLASS_LABEL].as_string(),
            resources["machine"].as_string(),
            resources["cpu_count"].as_string(),
            resources["memory_total"].as_string(),
        )
        for label, machine, cpus, memory, count in session.execute(
            select(*kinds, func.count()).where(*active).group_by(*kinds)
        ):
            kind = (
                label
                or DeviceResources(
                    machine=machine or "", cpu_count=_whole(cpus), memory_total=_whole(memory)
                ).device_class
            )
            classes[kind] = classes.get(kind, 0) + count
        stale, downloading, backlog = session.execute(
            select(
                func.count().filter(or_(Device.last_seen.is_(None), Device.last_seen < cutoff)),
                func.count().filter(func.json_array_length(Device.downloads) > 0),  # SQLite, PG
                func.coalesce(
                    func.sum(
                        case(
                            (
                                Device.audit_head_seq > func.coalesce(head.c.last_seq, 0),
                                Device.audit_head_seq - func.coalesce(head.c.last_seq, 0),
                            ),
                            else_=0,
                        )
                    ),
                    0,
                ),
            )
            .select_from(Device)
            .outerjoin(head, head.c.chain == Device.device_id)
            .where(*active)
        ).one()
        alerts = session.scalar(
            select(func.count())
            .select_from(Device)
            .join(head, head.c.chain == Device.device_id)
            .where(*matched, head.c.tamper_alert.is_(True))
        )
    return FleetSummary(states, classes, stale, alerts or 0, downloading, int(backlog))


def _whole(value: object) -> int:
    """A JSON number as the database handed it back (text, int or float)."""
    try:
        return int(float(str(value)))
    except (ValueError, OverflowError):
        return 0


def list_devices(
    db: Database,
    stale_after: timedelta,
    after: str = "",
    limit: int | None = None,
    device_id: str = "",
    selector: dict[str, str] | None = None,
) -> list[DeviceView]:
    """Enrolled devices by id (those after ``after`` carrying the ``selector``'s labels, at
    most ``limit``; or only ``device_id``) with their last reports; silent past
    ``stale_after``: stale."""
    now = datetime.now(UTC)
    query = select(Device).where(Device.device_id > after).order_by(Device.device_id)
    if device_id:
        query = query.where(Device.device_id == device_id)
    query = query.where(*_carrying(selector))
    if limit is not None:
        query = query.limit(limit)
    with db.session() as session:
        views = []
        pins = all_pins(session)
        for device in session.execute(query).scalars():
            views.append(
                DeviceView(
                    device_id=device.device_id,
                    hostname=device.hostname,
                    labels=dict(device.labels),
                    last_seen=device.last_seen.isoformat() if device.last_seen else "",
                    agent_version=device.agent_version,
                    models=device.installed,
                    audit_stored_seq=acked_seq(session, device.device_id),
                    last_error=device.last_error,
                    state=device.state,
                    key_fingerprint=device.key_fingerprint,
                    audit_alert=tamper_reason(session, device.device_id),
                    bench=device.bench,
                    downloads=device.downloads,
                    data_used_today=device.data_used_today or 0,
                    daily_data_budget=device.daily_data_budget or 0,
                    resources=device.resources,
                    health=device.health,
                    stale=device.state == "active" and is_stale(device, now, stale_after),
                    audit_head_seq=device.audit_head_seq or 0,
                    assignments=desired_assignments(session, device, pins=pins),
                    enrolled_from=device.enrolled_from,
                )
            )
        return views
