"""Pins: a model held at one version on one device or on the devices a selector matches.
A pinned device runs the pinned version whatever rollouts assign, and rollouts leave it
out until it is unpinned. A device pin wins over selector pins; among selector pins, the
newest."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.audit import AuditEvent
from edgefleet.controller.audit.log import record_event
from edgefleet.controller.rollouts.views import PinView
from edgefleet.controller.store.database import Database
from edgefleet.controller.store.schema import Device, Model, Pin
from edgefleet.errors import MalformedInputError, NotFoundError
from edgefleet.trust.metadata import check_model_name, check_model_version, format_time


def selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Every key=value of the selector is among the labels (an empty selector matches all)."""
    return all(labels.get(key) == value for key, value in selector.items())


def _selector_key(selector: dict[str, str]) -> str:
    return json.dumps(selector, sort_keys=True, separators=(",", ":"))


def all_pins(session: Session) -> list[Pin]:
    """Every pin, oldest first (a small table: read once per pass over many devices)."""
    return list(session.execute(select(Pin).order_by(Pin.id)).scalars())


def pins_for(session: Session, device: Device, pins: list[Pin] | None = None) -> dict[str, str]:
    """Model name -> pinned version for ``device`` (from ``pins`` when already read)."""
    held: dict[str, tuple[int, str]] = {}
    for pin in all_pins(session) if pins is None else pins:
        if pin.device_id:
            if pin.device_id == device.device_id:
                held[pin.model_name] = (1, pin.version)
        elif (
            selector_matches(pin.selector, device.labels)
            and held.get(pin.model_name, (0, ""))[0] == 0
        ):
            held[pin.model_name] = (0, pin.version)
    return {name: version for name, (_, version) in held.items()}


def _target(device_id: str, selector: dict[str, str]) -> None:
    if bool(device_id) == bool(selector):
        raise MalformedInputError("name either one device or a label selector")


def _held_devices(session: Session, device_id: str, selector: dict[str, str]) -> list[str]:
    if device_id:
        if session.get(Device, device_id) is None:
            raise NotFoundError(f"device {device_id} is not enrolled")
        return [device_id]
    return [
        d.device_id
        for d in session.execute(select(Device).order_by(Device.device_id)).scalars()
        if selector_matches(selector, d.labels)
    ]


def pin_model(
    db: Database,
    operator: str,
    name: str,
    version: str,
    device_id: str = "",
    selector: dict[str, str] | None = None,
) -> list[str]:
    """Hold ``name`` at ``version`` (replacing an earlier pin of the same target); return
    the devices held now. Pinning an older version is an operator's explicit choice."""
    selector = dict(selector or {})
    _target(device_id, selector)
    check_model_name(name)
    check_model_version(version)
    with db.session() as session:
        published = session.execute(
            select(Model.id).where(Model.name == name, Model.version == version)
        ).first()
        if published is None:
            raise NotFoundError(f"{name}@{version} is not published")
        held = _held_devices(session, device_id, selector)
        key = _selector_key(selector)
        pin = session.execute(
            select(Pin).where(
                Pin.model_name == name, Pin.device_id == device_id, Pin.selector_key == key
            )
        ).scalar_one_or_none()
        if pin is None:
            pin = Pin(
                model_name=name,
                device_id=device_id,
                selector=selector,
                selector_key=key,
                created_by=operator,
                created_at=datetime.now(UTC),
            )
            session.add(pin)
        pin.version = version
        record_event(
            session,
            AuditEvent(
                f"operator:{operator}",
                "model.pin",
                f"{name}@{version}",
                "success",
                {"device": device_id, "selector": selector, "devices": held},
            ),
        )
        return held


def unpin_model(
    db: Database,
    operator: str,
    name: str,
    device_id: str = "",
    selector: dict[str, str] | None = None,
) -> list[str]:
    """Remove the pin of ``name`` on that device or selector; return the devices it held."""
    selector = dict(selector or {})
    _target(device_id, selector)
    check_model_name(name)
    with db.session() as session:
        pin = session.execute(
            select(Pin).where(
                Pin.model_name == name,
                Pin.device_id == device_id,
                Pin.selector_key == _selector_key(selector),
            )
        ).scalar_one_or_none()
        if pin is None:
            where = f"device {device_id}" if device_id else f"selector {selector}"
            raise NotFoundError(f"{name} is not pinned on {where}")
        released = _held_devices(session, device_id, selector)
        session.delete(pin)
        record_event(
            session,
            AuditEvent(
                f"operator:{operator}",
                "model.unpin",
                f"{name}@{pin.version}",
                "success",
                {"device": device_id, "selector": selector, "devices": released},
            ),
        )
        return released


def list_pins(db: Database) -> list[PinView]:
    """Every pin, by model then age, with how many devices it holds now (a device pin
    holds its device; a selector pin the active devices it matches)."""
    with db.session() as session:
        devices = list(session.execute(select(Device).where(Device.state == "active")).scalars())
        views = []
        for pin in sorted(all_pins(session), key=lambda p: (p.model_name, p.id)):
            if pin.device_id:
                held = sum(d.device_id == pin.device_id for d in devices)
            else:
                held = sum(selector_matches(pin.selector, d.labels) for d in devices)
            views.append(
                PinView(
                    model=pin.model_name,
                    version=pin.version,
                    device_id=pin.device_id,
                    selector=dict(sorted(pin.selector.items())),
                    created_by=pin.created_by,
                    created_at=format_time(pin.created_at),
                    devices=held,
                )
            )
        return views
