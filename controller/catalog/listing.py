"""The catalog as operators list it: every published version and where it is in use."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import select

from edgefleet.controller.catalog.published import CatalogEntry
from edgefleet.controller.store.database import Database
from edgefleet.controller.store.schema import Assignment, Device, Model
from edgefleet.errors import NotFoundError
from edgefleet.trust.metadata import check_model_name, format_time


def list_catalog(db: Database, name: str = "", version: str = "") -> list[CatalogEntry]:
    """Every published version (of ``name``), newest release first within a model, with
    the devices running it (active in their last report) and assigned it; the devices'
    ids when one ``version`` is asked for."""
    if name:
        check_model_name(name)
    with db.session() as session:
        query = select(Model).order_by(Model.name, Model.published_at.desc(), Model.id.desc())
        if name:
            query = query.where(Model.name == name)
        if version:
            query = query.where(Model.version == version)
        rows = list(session.execute(query).scalars())
        if (name or version) and not rows:
            what = f"{name}@{version}" if version else name
            raise NotFoundError(f"{what} is not published")
        running: dict[tuple[str, str], list[str]] = defaultdict(list)
        for device in session.execute(select(Device).where(Device.state == "active")).scalars():
            for model in device.installed:
                if model.active:
                    running[(model.name, model.version)].append(device.device_id)
        assigned: dict[tuple[str, str], list[str]] = defaultdict(list)
        for assignment in session.execute(select(Assignment)).scalars():
            key = (assignment.model_name, assignment.version)
            assigned[key].append(assignment.device_id)
    entries = []
    for row in rows:
        key = (row.name, row.version)
        entries.append(
            CatalogEntry(
                name=row.name,
                version=row.version,
                sha256=row.sha256,
                length=int(str(row.manifest["length"])),
                quantization=str(row.manifest.get("quantization", "")),
                published_at=format_time(row.published_at),
                running=len(running[key]),
                assigned=len(assigned[key]),
                running_on=sorted(running[key]) if version else [],
                assigned_to=sorted(assigned[key]) if version else [],
            )
        )
    return entries
