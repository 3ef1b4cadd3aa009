"""Who a rollout would give what, in which wave, and why the others are left out."""

from __future__ import annotations

import hashlib

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.controller.catalog.quantization.family import family_variants, pick_variant
from edgefleet.controller.catalog.quantization.variants import split_variant_version
from edgefleet.controller.rollouts.health import active_version
from edgefleet.controller.rollouts.pins import all_pins, pins_for, selector_matches
from edgefleet.controller.rollouts.strategy import Strategy, wave_of
from edgefleet.controller.rollouts.views import EXCLUDED, Plan, PlannedDevice
from edgefleet.controller.store.schema import Assignment, Device, Model
from edgefleet.errors import NotFoundError
from edgefleet.fit import why_not_fit
from edgefleet.trust.metadata import ModelManifest


def release_ranks(session: Session, name: str) -> dict[str, int]:
    """Release -> rank by first publication (variants share their release's rank): what
    "newer" means when a rollout must never move a device back."""
    ranks: dict[str, int] = {}
    rows = session.execute(select(Model.id, Model.version).where(Model.name == name))
    for row_id, version in sorted(rows):
        ranks.setdefault(split_variant_version(version)[0], row_id)
    return ranks


def current_version(session: Session, device: Device, name: str) -> str:
    """What the device is to run now (its assignment), else what it reports active."""
    assignment = session.get(Assignment, (device.device_id, name))
    return assignment.version if assignment is not None else active_version(device, name)


def on_disk(device: Device, variants: list[Model]) -> dict[str, int]:
    """sha256 -> bytes of each version the device holds installed or part-downloaded."""
    installed = {m.sha256 for m in device.installed}
    received = {(d.name, d.version): d.received for d in device.downloads}
    have = {}
    for row in variants:
        length = int(row.manifest["length"])  # type: ignore[call-overload]
        if row.sha256 in installed:
            have[row.sha256] = length
        elif (row.name, row.version) in received:
            have[row.sha256] = min(length, received[(row.name, row.version)])
    return have


def pick_for(session: Session, device: Device, name: str, release: str) -> tuple[Model, str]:
    """The variant of a release that fits the device best, and why."""
    variants = family_variants(session, name, release)
    return pick_variant(variants, device.resources, on_disk(device, variants))


class Planner:
    """Decides, device by device, whether a rollout of ``name@version`` includes it."""

    def __init__(self, session: Session, name: str, version: str, family: bool) -> None:
        self.session = session
        self.name = name
        self.version = version
        self.family = family
        self.ranks = release_ranks(session, name)
        self.pins = all_pins(session)
        self.rank = self.ranks.get(split_variant_version(version)[0], 0)
        self.exact: Model | None = None
        if not family:
            self.exact = session.execute(
                select(Model).where(Model.name == name, Model.version == version)
            ).scalar_one_or_none()
            if self.exact is None:
                raise NotFoundError(f"{name}@{version} is not published")

    def consider(self, device: Device) -> tuple[str, str, bool]:
        """(version the device would get, why, whether it is included)."""
        if device.state != "active":
            return self.version, f"device is {device.state}", False
        pinned = pins_for(self.session, device, self.pins).get(self.name)
        if pinned is not None:
            return self.version, f"pinned to {self.name}@{pinned}", False
        current = current_version(self.session, device, self.name)
        if current:
            current_release = split_variant_version(current)[0]
            if self.ranks.get(current_release, 0) > self.rank:
                return (
                    self.version,
                    f"runs {self.name}@{current}, newer than {self.version} (a rollout never "
                    "moves a device back: `rollout rollback` does)",
                    False,
                )
            if current_release == split_variant_version(self.version)[0] and (
                self.family or current == self.version
            ):
                return current, f"already has {self.name}@{current}", False
        resources = device.resources
        if self.exact is not None:
            if resources.known:
                manifest = ModelManifest.from_dict(self.exact.manifest)
                have = on_disk(device, [self.exact]).get(self.exact.sha256, 0)
                reason = why_not_fit(manifest, resources, have)
                if reason is not None:
                    return self.version, reason, False
            return self.version, "", True
        row, why = pick_for(self.session, device, self.name, self.version)
        return row.version, why, not (resources.known and why.startswith("no variant fits"))


def rollout_order(name: str, version: str, device_id: str) -> str:
    """A stable spread of devices over waves (the same for `plan` and `create`)."""
    return hashlib.sha256(f"{name}@{version}/{device_id}".encode()).hexdigest()


def plan_rollout(
    session: Session,
    name: str,
    version: str,
    selector: dict[str, str],
    strategy: Strategy,
    family: bool,
) -> Plan:
    """Which matching devices get what in which wave; every other device and why not."""
    planner = Planner(session, name, version, family)
    included: list[tuple[str, Device, str, str]] = []
    excluded: list[PlannedDevice] = []
    wanted = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
    for device in session.execute(select(Device).order_by(Device.device_id)).scalars():
        if not selector_matches(selector, device.labels):
            excluded.append(
                PlannedDevice(device.device_id, EXCLUDED, "", f"labels do not match {wanted}")
            )
            continue
        given, why, include = planner.consider(device)
        if include:
            included.append((rollout_order(name, version, device.device_id), device, given, why))
        else:
            excluded.append(PlannedDevice(device.device_id, EXCLUDED, given, why))
    included.sort(key=lambda item: item[0])
    bounds = strategy.wave_bounds(len(included))
    planned = [
        PlannedDevice(device.device_id, wave_of(position, bounds), given, why)
        for position, (_, device, given, why) in enumerate(included)
    ]
    return Plan(planned + excluded, len(bounds))
