"""Rollouts: assign a published model version to the devices a label selector matches."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.auditlog import record_event
from controller.store.database import Database
from controller.store.schema import Assignment, Device, Model, Rollout
from edgefleet.audit import AuditEvent
from edgefleet.errors import NotFoundError
from edgefleet.trust.metadata import check_model_name, check_model_version


def selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Every key=value of the selector is among the labels (an empty selector matches all)."""
    return all(labels.get(key) == value for key, value in selector.items())


def _assign(session: Session, device_id: str, rollout: Rollout) -> None:
    current = session.get(Assignment, (device_id, rollout.name))
    if current is None:
        session.add(
            Assignment(
                device_id=device_id,
                model_name=rollout.name,
                version=rollout.version,
                rollout_id=rollout.id,
            )
        )
    else:
        current.version, current.rollout_id = rollout.version, rollout.id


@dataclass(frozen=True)
class RolloutCreated:
    """The new rollout and the devices it assigned."""

    rollout_id: int
    device_ids: list[str]


def create_rollout(
    db: Database, operator: str, name: str, version: str, selector: dict[str, str]
) -> RolloutCreated:
    """Assign ``name@version`` to matching devices now (and to matching ones enrolling later)."""
    check_model_name(name)
    check_model_version(version)
    with db.session() as session:
        exists = session.execute(
            select(Model.id).where(Model.name == name, Model.version == version)
        ).first()
        if exists is None:
            raise NotFoundError(f"{name}@{version} is not published")
        rollout = Rollout(
            name=name,
            version=version,
            selector=dict(selector),
            created_by=operator,
            created_at=datetime.now(UTC),
        )
        session.add(rollout)
        session.flush()
        matched = []
        for device in session.execute(select(Device).order_by(Device.device_id)).scalars():
            if selector_matches(selector, device.labels):
                _assign(session, device.device_id, rollout)
                matched.append(device.device_id)
        record_event(
            session,
            AuditEvent(
                f"operator:{operator}",
                "rollout.create",
                f"{name}@{version}",
                "success",
                {"rollout_id": rollout.id, "selector": selector, "devices": matched},
            ),
        )
        return RolloutCreated(rollout.id, matched)


def assign_matching_rollouts(session: Session, device_id: str, labels: dict[str, str]) -> None:
    """Give a newly enrolled device the latest matching rollout of each model."""
    latest: dict[str, Rollout] = {}
    for rollout in session.execute(select(Rollout).order_by(Rollout.id)).scalars():
        if selector_matches(rollout.selector, labels):
            latest[rollout.name] = rollout
    for rollout in latest.values():
        _assign(session, device_id, rollout)
