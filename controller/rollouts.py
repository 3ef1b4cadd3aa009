"""Rollouts: assign a published model version, or the best fitting variant of a model
family, to the devices a label selector matches."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from controller.auditlog import record_event
from controller.quantization.family import family_variants, pick_variant, stored_resources
from controller.store.database import Database
from controller.store.schema import Assignment, Device, Model, Rollout
from edgefleet.audit import AuditEvent
from edgefleet.errors import NotFoundError
from edgefleet.trust.metadata import check_model_name, check_model_version


def selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Every key=value of the selector is among the labels (an empty selector matches all)."""
    return all(labels.get(key) == value for key, value in selector.items())


def _on_disk(device: Device, variants: list[Model]) -> dict[str, int]:
    """sha256 -> bytes of each variant the device holds installed or part-downloaded."""
    installed = {str(m.get("sha256")) for m in device.installed or []}
    received = {
        (str(d.get("name")), str(d.get("version"))): int(d.get("received") or 0)  # type: ignore[call-overload]
        for d in device.downloads or []
    }
    have = {}
    for row in variants:
        length = int(row.manifest["length"])  # type: ignore[call-overload]
        if row.sha256 in installed:
            have[row.sha256] = length
        elif (row.name, row.version) in received:
            have[row.sha256] = min(length, received[(row.name, row.version)])
    return have


def _pick(session: Session, device: Device, name: str, release: str) -> tuple[str, str]:
    variants = family_variants(session, name, release)
    row, why = pick_variant(variants, stored_resources(device), _on_disk(device, variants))
    return row.version, why


def repick_variant(session: Session, device: Device, assignment: Assignment) -> None:
    """Re-choose a family assignment's variant from the device's latest report (audited
    when it changes: the device moves to another variant of the same release)."""
    version, why = _pick(session, device, assignment.model_name, assignment.family)
    if version == assignment.version:
        return
    record_event(
        session,
        AuditEvent(
            "controller",
            "rollout.variant",
            f"{assignment.model_name}@{version}",
            "success",
            {"device": device.device_id, "previous": assignment.version, "reason": why},
        ),
    )
    assignment.version = version


def _assign(session: Session, device: Device, rollout: Rollout) -> str:
    """Assign the rollout's version (or, for a family, the variant that fits best); return
    what was assigned and, for a family, why: ``1.0.0+q4_0 (best quality that fits)``."""
    version, family, picked = rollout.version, "", rollout.version
    if rollout.family:
        family = rollout.version
        version, why = _pick(session, device, rollout.name, family)
        picked = f"{version} ({why})"
    current = session.get(Assignment, (device.device_id, rollout.name))
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
    return picked


@dataclass(frozen=True)
class RolloutCreated:
    """The new rollout and the devices it assigned."""

    rollout_id: int
    device_ids: list[str]
    # device id -> what it was given, e.g. "1.0.0+q4_0 (best quality that fits)".
    assigned: dict[str, str]


def create_rollout(
    db: Database, operator: str, name: str, version: str, selector: dict[str, str]
) -> RolloutCreated:
    """Assign ``name@version`` to matching devices now (and to matching ones enrolling later).

    ``version`` may name a release published as quantized variants (``models quantize``):
    each device then gets the best variant that fits it, chosen again as it reports."""
    check_model_name(name)
    check_model_version(version)
    with db.session() as session:
        exists = session.execute(
            select(Model.id).where(Model.name == name, Model.version == version)
        ).first()
        family = exists is None and bool(family_variants(session, name, version))
        if exists is None and not family:
            raise NotFoundError(f"{name}@{version} is not published")
        rollout = Rollout(
            name=name,
            version=version,
            selector=dict(selector),
            created_by=operator,
            created_at=datetime.now(UTC),
            family=family,
        )
        session.add(rollout)
        session.flush()
        matched, picked = [], {}
        for device in session.execute(select(Device).order_by(Device.device_id)).scalars():
            if selector_matches(selector, device.labels):
                picked[device.device_id] = _assign(session, device, rollout)
                matched.append(device.device_id)
        record_event(
            session,
            AuditEvent(
                f"operator:{operator}",
                "rollout.create",
                f"{name}@{version}",
                "success",
                {
                    "rollout_id": rollout.id,
                    "selector": selector,
                    "devices": matched,
                    **({"variants": picked} if family else {}),
                },
            ),
        )
        return RolloutCreated(rollout.id, matched, picked)


def assign_matching_rollouts(session: Session, device: Device) -> None:
    """Give a newly enrolled device the latest matching rollout of each model."""
    latest: dict[str, Rollout] = {}
    for rollout in session.execute(select(Rollout).order_by(Rollout.id)).scalars():
        if selector_matches(rollout.selector, device.labels):
            latest[rollout.name] = rollout
    for rollout in latest.values():
        _assign(session, device, rollout)
