"""Rollouts as they run: create (first wave assigned at once), advance (judge devices,
halt past the failure threshold, start the next wave after the soak), operator actions,
and devices enrolling while a rollout is under way.

``advance_rollouts`` is the controller's one singleton job: on PostgreSQL each pass runs
under a transaction-scoped advisory lock, so that with several replicas one of them
advances rollouts at a time, and a replica that dies mid-pass releases the lock with its
connection. Each step is one transaction with its audit record: a device is assigned a
step at most once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, or_, select, text, update
from sqlalchemy.orm import Session

from edgefleet.audit import AuditEvent
from edgefleet.controller.audit.log import record_event
from edgefleet.controller.catalog.quantization.family import family_variants
from edgefleet.controller.rollouts.health import active_version, judge, smoke_speed
from edgefleet.controller.rollouts.pins import all_pins, pins_for, selector_matches
from edgefleet.controller.rollouts.plan import pick_for, plan_rollout
from edgefleet.controller.rollouts.strategy import Strategy
from edgefleet.controller.rollouts.views import (
    ACTION_NEEDS,
    Plan,
    RolloutCreated,
    RolloutView,
    TargetView,
)
from edgefleet.controller.store.database import Database
from edgefleet.controller.store.schema import Assignment, Device, Model, Rollout, RolloutTarget
from edgefleet.errors import ConflictError, MalformedInputError, NotFoundError
from edgefleet.trust.metadata import check_model_name, check_model_version

# Rollouts that still move; the others are final.
ACTIVE = ("running", "paused")
# pg_try_advisory_xact_lock key of the pass that advances rollouts.
ADVANCE_LOCK_KEY = 0x6564_6765_0002


def aware(moment: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes for timezone-aware columns: they are UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def is_stale(device: Device, now: datetime, stale_after: timedelta) -> bool:
    """No report within ``stale_after`` (or never)."""
    seen = aware(device.last_seen)
    return seen is None or now - seen > stale_after


def _is_family(session: Session, name: str, version: str) -> bool:
    exact = session.execute(
        select(Model.id).where(Model.name == name, Model.version == version)
    ).first()
    if exact is not None:
        return False
    if family_variants(session, name, version):
        return True
    raise NotFoundError(f"{name}@{version} is not published")


def _audit(session: Session, actor: str, action: str, rollout: Rollout, **details: object) -> None:
    record_event(
        session,
        AuditEvent(
            actor,
            action,
            f"{rollout.name}@{rollout.version}",
            "success",
            {"rollout_id": rollout.id, **details},
        ),
    )


def _assign(session: Session, device: Device, rollout: Rollout, target: RolloutTarget) -> str:
    """Give the device this rollout's version (for a family: the variant that fits best),
    remembering what it had for a rollback and its speed for the health gate."""
    current = session.get(Assignment, (device.device_id, rollout.name))
    target.previous_version = current.version if current is not None else ""
    running = active_version(device, rollout.name)
    target.baseline_tokens_per_second = (
        smoke_speed(device, rollout.name, running) if running else 0.0
    )
    version, family = rollout.version, ""
    if rollout.family:
        row, why = pick_for(session, device, rollout.name, rollout.version)
        version, family, target.reason = row.version, rollout.version, why
    if current is None:
        session.add(
            Assignment(
                device_id=device.device_id,
                model_name=rollout.name,
                version=version,
                rollout_id=rollout.id,
                family=family,
            )
        )
    else:
        current.version, current.rollout_id, current.family = version, rollout.id, family
    target.version = version
    target.state = "assigned"
    target.assigned_at = datetime.now(UTC)
    return version


def _start_wave(session: Session, rollout: Rollout, wave: int) -> dict[str, str]:
    """Assign every pending device of ``wave``; device id -> version given."""
    given = {}
    pins = all_pins(session)
    targets = session.execute(
        select(RolloutTarget)
        .where(
            RolloutTarget.rollout_id == rollout.id,
            RolloutTarget.wave == wave,
            RolloutTarget.state == "pending",
        )
        .order_by(RolloutTarget.device_id)
    ).scalars()
    for target in targets:
        device = session.get(Device, target.device_id)
        if device is None or device.state != "active":
            target.state, target.reason = "skipped", "device is no longer active"
            continue
        pinned = pins_for(session, device, pins).get(rollout.name)
        if pinned is not None:
            target.state, target.reason = "skipped", f"pinned to {rollout.name}@{pinned}"
            continue
        given[device.device_id] = _assign(session, device, rollout, target)
    return given


def _revert(session: Session, rollout: Rollout, target: RolloutTarget) -> None:
    """Put the device back on what it had before this rollout (if this rollout still
    decides its assignment)."""
    assignment = session.get(Assignment, (target.device_id, rollout.name))
    if assignment is None or assignment.rollout_id != rollout.id:
        return
    if target.previous_version:
        assignment.version, assignment.family = target.previous_version, ""
    else:
        session.delete(assignment)


def plan(
    db: Database, name: str, version: str, selector: dict[str, str], strategy: Strategy
) -> Plan:
    """What `create_rollout` would do now, changing nothing."""
    check_model_name(name)
    check_model_version(version)
    with db.session() as session:
        family = _is_family(session, name, version)
        return plan_rollout(session, name, version, selector, strategy, family)


def create_rollout(
    db: Database,
    operator: str,
    name: str,
    version: str,
    selector: dict[str, str],
    strategy: Strategy | None = None,
) -> RolloutCreated:
    """Start rolling ``name@version`` out to matching devices: the first wave is assigned
    now, later waves as the health gates pass. A rollout of the same model still under
    way is superseded (aborted). ``version`` may name a release published as quantized
    variants: each device then gets the best variant that fits it."""
    strategy = strategy or Strategy()
    check_model_name(name)
    check_model_version(version)
    with db.session() as session:
        family = _is_family(session, name, version)
        planned = plan_rollout(session, name, version, selector, strategy, family)
        rollout = Rollout(
            name=name,
            version=version,
            selector=dict(selector),
            created_by=operator,
            created_at=datetime.now(UTC),
            family=family,
            state="running",
            strategy=strategy.to_dict(),
            waves=max(planned.waves, 1),
            current_wave=0,
            reason="",
        )
        session.add(rollout)
        session.flush()
        for earlier in session.execute(
            select(Rollout).where(
                Rollout.name == name, Rollout.state.in_(ACTIVE), Rollout.id != rollout.id
            )
        ).scalars():
            earlier.state, earlier.reason = "aborted", f"superseded by rollout {rollout.id}"
            session.execute(
                update(RolloutTarget)
                .where(RolloutTarget.rollout_id == earlier.id, RolloutTarget.state == "pending")
                .values(state="skipped", reason=earlier.reason)
                .execution_options(synchronize_session=False)
            )
            _audit(session, f"operator:{operator}", "rollout.abort", earlier, reason=earlier.reason)
        for device in planned.included:
            session.add(
                RolloutTarget(
                    rollout_id=rollout.id,
                    device_id=device.device_id,
                    wave=device.wave,
                    version=device.version,
                    state="pending",
                    reason=device.reason,
                )
            )
        session.flush()
        given = _start_wave(session, rollout, 0)
        if not planned.included:
            rollout.state = "completed"
        picked = {}
        for device_id, given_version in given.items():
            target = session.get(RolloutTarget, (rollout.id, device_id))
            why = target.reason if family and target is not None else ""
            picked[device_id] = f"{given_version} ({why})" if why else given_version
        _audit(
            session,
            f"operator:{operator}",
            "rollout.create",
            rollout,
            selector=selector,
            strategy=strategy.to_dict(),
            waves=rollout.waves,
            devices=sorted(given),
            excluded=len(planned.devices) - len(planned.included),
            **({"variants": picked} if family else {}),
        )
        return RolloutCreated(rollout.id, sorted(given), picked, planned)


def _judge_one(
    session: Session,
    rollout: Rollout,
    strategy: Strategy,
    target: RolloutTarget,
    device: Device,
    now: datetime,
) -> bool:
    """Judge one device's latest report; True when it failed (and was put back)."""
    target.judged_at = device.last_seen or now
    verdict = judge(device, rollout.name, target, strategy)
    if verdict.verdict == "failed":
        target.state, target.reason = "failed", verdict.reason
        _revert(session, rollout, target)
        _audit(
            session,
            "controller",
            "rollout.device_failed",
            rollout,
            device=target.device_id,
            version=target.version,
            reason=verdict.reason,
        )
        return True
    target.state, target.reason = verdict_state(verdict.verdict), verdict.reason
    return False


@dataclass(frozen=True)
class Judging:
    """A rollout that judges a device's reports, as far as a judgement needs it (see
    edgefleet.controller.fleet.syncs: the next report may be judged without reading the
    database)."""

    rollout_id: int
    name: str
    strategy: Strategy
    version: str
    baseline_tokens_per_second: float


def judge_report(session: Session, device: Device) -> tuple[Judging, ...]:
    """Judge the device's report for the rollouts under way that it is part of, in the
    transaction that stores the report (so a failed device gets its old version back in
    the same reply, and the advancing pass has nothing left to judge); return the
    rollouts that go on judging it."""
    rows = session.execute(
        select(RolloutTarget, Rollout)
        .join(Rollout, Rollout.id == RolloutTarget.rollout_id)
        .where(
            RolloutTarget.device_id == device.device_id,
            RolloutTarget.state.in_(("assigned", "healthy")),
            Rollout.state.in_(ACTIVE),
        )
    ).all()
    now = datetime.now(UTC)
    judging = []
    for target, rollout in rows:
        strategy = Strategy.from_dict(rollout.strategy)
        if not _judge_one(session, rollout, strategy, target, device, now):
            judging.append(
                Judging(
                    rollout.id,
                    rollout.name,
                    strategy,
                    target.version,
                    target.baseline_tokens_per_second,
                )
            )
    return tuple(judging)


@dataclass(frozen=True)
class Judged:
    """A verdict short of failure (see `write_judgements`)."""

    state: str  # assigned | healthy
    reason: str
    judged_at: datetime


def verdict_state(verdict: str) -> str:
    """A target's state after a verdict other than failed."""
    return "healthy" if verdict == "healthy" else "assigned"


def write_judgements(session: Session, judgements: dict[tuple[int, str], Judged]) -> None:
    """Store verdicts reached outside a transaction ((rollout id, device id) -> verdict):
    only on targets still being judged by a rollout under way, and never over a later
    verdict."""
    if not judgements:
        return
    table = cast(Table, RolloutTarget.__table__)
    # No IN (list): its parameters expand per execution, which executemany cannot do.
    under_way = select(Rollout.id).where(or_(*(Rollout.state == s for s in ACTIVE)))
    statement = (
        update(table)
        .where(
            table.c.rollout_id == bindparam("b_rollout_id"),
            table.c.device_id == bindparam("b_device_id"),
            or_(table.c.state == "assigned", table.c.state == "healthy"),
            table.c.rollout_id.in_(under_way),
            or_(table.c.judged_at.is_(None), table.c.judged_at <= bindparam("b_judged_at")),
        )
        .values(
            state=bindparam("b_state"),
            reason=bindparam("b_reason"),
            judged_at=bindparam("b_judged_at"),
        )
    )
    rows = [
        {
            "b_rollout_id": rollout_id,
            "b_device_id": device_id,
            "b_state": judged.state,
            "b_reason": judged.reason,
            "b_judged_at": judged.judged_at,
        }
        for (rollout_id, device_id), judged in sorted(judgements.items())
    ]
    session.connection().execute(statement, rows)


def _judge_targets(
    session: Session, rollout: Rollout, strategy: Strategy, now: datetime, stale_after: timedelta
) -> bool:
    """Judge the deployed devices that reported since they were last judged (each device
    reports once per sync interval: a pass costs the reports that came in, not the
    fleet); healthy devices that went stale stop counting as healthy."""
    changed = False
    rows = session.execute(
        select(RolloutTarget, Device)
        .join(Device, Device.device_id == RolloutTarget.device_id)
        .where(
            RolloutTarget.rollout_id == rollout.id,
            RolloutTarget.state.in_(("assigned", "healthy")),
            Device.last_seen.is_not(None),  # never reported: nothing to judge yet
            or_(RolloutTarget.judged_at.is_(None), Device.last_seen > RolloutTarget.judged_at),
        )
    ).all()
    for target, device in rows:
        changed = _judge_one(session, rollout, strategy, target, device, now) or changed
    session.flush()
    silent = select(Device.device_id).where(
        or_(Device.last_seen.is_(None), Device.last_seen < now - stale_after)
    )
    session.execute(
        update(RolloutTarget)
        .where(
            RolloutTarget.rollout_id == rollout.id,
            RolloutTarget.state == "healthy",
            RolloutTarget.device_id.in_(silent),
        )
        .values(state="assigned", reason="stale: no recent report")
        .execution_options(synchronize_session=False)
    )
    return changed


def _count(session: Session, rollout: Rollout, *where: Any) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(RolloutTarget)
            .where(RolloutTarget.rollout_id == rollout.id, *where)
        )
        or 0
    )


def _halt(session: Session, rollout: Rollout, targets: list[RolloutTarget], why: str) -> None:
    rollout.state, rollout.reason = "halted", why
    rolled_back = []
    for target in targets:
        if target.state in ("assigned", "healthy"):
            _revert(session, rollout, target)
            target.state, target.reason = "rolled_back", "rolled back: the rollout halted"
            rolled_back.append(target.device_id)
        elif target.state == "pending":
            target.state, target.reason = "skipped", "the rollout halted"
    _audit(session, "controller", "rollout.halt", rollout, reason=why, rolled_back=rolled_back)


def _advance(session: Session, rollout: Rollout, now: datetime, stale_after: timedelta) -> bool:
    """One pass over one rollout; True when an assignment changed."""
    strategy = Strategy.from_dict(rollout.strategy)
    changed = _judge_targets(session, rollout, strategy, now, stale_after)
    failed = _count(session, rollout, RolloutTarget.state == "failed")
    if failed > strategy.max_failures:
        targets = list(
            session.execute(
                select(RolloutTarget)
                .where(RolloutTarget.rollout_id == rollout.id)
                .order_by(RolloutTarget.wave, RolloutTarget.device_id)
            ).scalars()
        )
        first = next(t for t in targets if t.state == "failed")
        _halt(
            session,
            rollout,
            targets,
            f"{failed} device(s) failed, over max_failures {strategy.max_failures}; "
            f"{first.device_id}: {first.reason}",
        )
        return True
    if rollout.state != "running":
        return changed
    waiting = _count(
        session,
        rollout,
        RolloutTarget.wave <= rollout.current_wave,
        RolloutTarget.state == "assigned",
    )
    if waiting:
        rollout.wave_healthy_since = None
        return changed
    if rollout.current_wave >= rollout.waves - 1:
        rollout.state, rollout.wave_healthy_since = "completed", None
        _audit(session, "controller", "rollout.complete", rollout, failed=failed)
        return changed
    since = aware(rollout.wave_healthy_since)
    if since is None:
        rollout.wave_healthy_since = since = now
    if now - since < timedelta(seconds=strategy.soak_seconds):
        return changed
    rollout.current_wave += 1
    rollout.wave_healthy_since = None
    given = _start_wave(session, rollout, rollout.current_wave)
    _audit(
        session,
        "controller",
        "rollout.wave",
        rollout,
        wave=rollout.current_wave,
        devices=sorted(given),
    )
    return True


def advance_rollouts(db: Database, stale_after: timedelta, now: datetime | None = None) -> bool:
    """Judge the devices of every running or paused rollout, halt, complete or start the
    next wave. True when an assignment changed (devices should be told). A replica that
    does not get the lock skips this pass: another one is doing it."""
    now = now or datetime.now(UTC)
    with db.session() as session:
        if db.is_postgresql:
            held = session.execute(
                text("select pg_try_advisory_xact_lock(:key)"), {"key": ADVANCE_LOCK_KEY}
            ).scalar_one()
            if not held:
                return False
        changed = False
        rollouts = session.execute(
            select(Rollout).where(Rollout.state.in_(ACTIVE)).order_by(Rollout.id)
        ).scalars()
        for rollout in list(rollouts):
            changed = _advance(session, rollout, now, stale_after) or changed
        return changed


def change_rollout(db: Database, operator: str, rollout_id: int, action: str) -> None:
    """pause | resume | abort | rollback, by an operator (audited)."""
    if action not in ACTION_NEEDS:
        known = ", ".join(ACTION_NEEDS)
        raise MalformedInputError(f"unknown rollout action {action!r}: one of {known}")
    with db.session() as session:
        rollout = session.execute(
            select(Rollout).where(Rollout.id == rollout_id).with_for_update()
        ).scalar_one_or_none()
        if rollout is None:
            raise NotFoundError(f"rollout {rollout_id} does not exist")
        allowed = ACTION_NEEDS[action]
        if rollout.state not in allowed:
            raise ConflictError(
                f"rollout {rollout_id} is {rollout.state}: {action} needs it {' or '.join(allowed)}"
            )
        targets = list(
            session.execute(
                select(RolloutTarget).where(RolloutTarget.rollout_id == rollout.id)
            ).scalars()
        )
        moved: list[str] = []
        if action == "pause":
            rollout.state = "paused"
        elif action == "resume":
            rollout.state, rollout.wave_healthy_since = "running", None
        elif action == "abort":
            rollout.state = "aborted"
            for target in targets:
                if target.state == "pending":
                    target.state, target.reason = "skipped", "the rollout was aborted"
        else:
            rollout.state = "rolled_back"
            for target in targets:
                if target.state in ("assigned", "healthy", "failed"):
                    _revert(session, rollout, target)
                    if target.state != "failed":
                        target.state = "rolled_back"
                    target.reason = f"rolled back by {operator}"
                    moved.append(target.device_id)
                elif target.state == "pending":
                    target.state, target.reason = "skipped", "the rollout was rolled back"
        rollout.reason = f"{action} by {operator}"
        _audit(
            session,
            f"operator:{operator}",
            f"rollout.{action}",
            rollout,
            **({"devices": sorted(moved)} if action == "rollback" else {}),
        )


def assign_matching_rollouts(
    session: Session, device: Device, reason: str = "enrolled during the rollout"
) -> None:
    """A device enrolling (or labelled into a selector) later joins the newest matching
    rollout of each model that is under way or complete: assigned now if that rollout is
    in (or past) its last wave, otherwise in its last wave."""
    latest: dict[str, Rollout] = {}
    for rollout in session.execute(
        select(Rollout)
        .where(Rollout.state.in_(("running", "paused", "completed")))
        .order_by(Rollout.id)
    ).scalars():
        if selector_matches(rollout.selector, device.labels):
            latest[rollout.name] = rollout
    pinned = pins_for(session, device)
    for rollout in latest.values():
        if rollout.name in pinned:
            continue
        if session.get(RolloutTarget, (rollout.id, device.device_id)) is not None:
            continue  # enrolled again (renewed identity): already part of it
        target = RolloutTarget(
            rollout_id=rollout.id,
            device_id=device.device_id,
            wave=rollout.waves - 1,
            version=rollout.version,
            state="pending",
            reason=reason,
        )
        session.add(target)
        if rollout.state == "completed" or rollout.current_wave >= rollout.waves - 1:
            _assign(session, device, rollout, target)


def repick_variant(session: Session, device: Device, assignment: Assignment) -> None:
    """Re-choose a family assignment's variant from the device's latest report (audited
    when it changes: the device moves to another variant of the same release)."""
    row, why = pick_for(session, device, assignment.model_name, assignment.family)
    if row.version == assignment.version:
        return
    record_event(
        session,
        AuditEvent(
            "controller",
            "rollout.variant",
            f"{assignment.model_name}@{row.version}",
            "success",
            {"device": device.device_id, "previous": assignment.version, "reason": why},
        ),
    )
    assignment.version = row.version
    target = session.get(RolloutTarget, (assignment.rollout_id, device.device_id))
    if target is not None:
        target.version = row.version


def describe_rollouts(
    db: Database, rollout_id: int | None = None, before: int | None = None, limit: int | None = None
) -> list[RolloutView]:
    """Rollouts newest first (older than id ``before``, at most ``limit``) without devices;
    or one rollout with its devices."""
    with db.session() as session:
        query = select(Rollout).order_by(Rollout.id.desc())
        if rollout_id is not None:
            query = query.where(Rollout.id == rollout_id)
        if before is not None:
            query = query.where(Rollout.id < before)
        if limit is not None:
            query = query.limit(limit)
        rows = list(session.execute(query).scalars())
        if rollout_id is not None and not rows:
            raise NotFoundError(f"rollout {rollout_id} does not exist")
        views = []
        for row in rows:
            targets: tuple[TargetView, ...] = ()
            if rollout_id is not None:
                targets = tuple(
                    TargetView(
                        t.device_id, t.wave, t.version, t.previous_version, t.state, t.reason
                    )
                    for t in session.execute(
                        select(RolloutTarget)
                        .where(RolloutTarget.rollout_id == row.id)
                        .order_by(RolloutTarget.wave, RolloutTarget.device_id)
                    ).scalars()
                )
            created = aware(row.created_at)
            views.append(
                RolloutView(
                    id=row.id,
                    name=row.name,
                    version=row.version,
                    selector=dict(row.selector),
                    state=row.state,
                    reason=row.reason,
                    current_wave=row.current_wave,
                    waves=row.waves,
                    strategy=Strategy.from_dict(dict(row.strategy)),
                    created_by=row.created_by,
                    created_at=created.strftime("%Y-%m-%dT%H:%M:%SZ") if created else "",
                    targets=targets,
                )
            )
        return views
