"""Model families on the controller: the quantized variants of one release, published with
their measurements, and the choice of the best variant that fits each device."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.controller.catalog.quantization.variants import split_variant_version
from edgefleet.controller.catalog.quantization.views import ClassSpeed, VersionView
from edgefleet.controller.store.database import Database
from edgefleet.controller.store.schema import Device, Model
from edgefleet.errors import MalformedInputError, NotFoundError
from edgefleet.fit import why_not_fit
from edgefleet.fleet import DeviceResources
from edgefleet.trust.metadata import ModelManifest, check_model_name, format_time

MAX_EVALUATION_BYTES = 16 * 1024
_NUMBERS = ("perplexity", "perplexity_increase_percent", "size_bytes")


def parse_evaluation(text: str, version: str) -> dict[str, Any] | None:
    """Check the measurements sent with a variant's upload; None for a plain publish."""
    if not text:
        return None
    if len(text) > MAX_EVALUATION_BYTES:
        raise MalformedInputError(f"evaluation is over {MAX_EVALUATION_BYTES} bytes")
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise MalformedInputError(f"evaluation is not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise MalformedInputError("evaluation is not a JSON object")
    release, variant = split_variant_version(version)
    if variant is None or doc.get("variant") != variant:
        raise MalformedInputError(
            f"an evaluated variant's version must be RELEASE+{doc.get('variant')!s}, not {version}"
        )
    for key in _NUMBERS:
        value = doc.get(key)
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
        ):
            raise MalformedInputError(f"evaluation: {key} is missing or not a number")
    if doc.get("passed") is not True:
        raise MalformedInputError(f"{release}+{variant} did not pass its quality gate")
    return doc


def family_variants(session: Session, name: str, release: str) -> list[Model]:
    """The evaluated variants of ``name`` ``release``, best quality (lowest perplexity) first."""
    rows = session.execute(
        select(Model).where(
            Model.name == name, Model.version.startswith(release + "+", autoescape=True)
        )
    ).scalars()
    variants = [
        row
        for row in rows
        if row.evaluation is not None and split_variant_version(row.version)[0] == release
    ]
    return sorted(
        variants,
        key=lambda row: (row.evaluation["perplexity"], -row.manifest["length"]),  # type: ignore[index, operator]
    )


def pick_variant(
    variants: Sequence[Model], resources: DeviceResources, have: dict[str, int]
) -> tuple[Model, str]:
    """The best variant that fits the device, and why; when none fits (or the device has
    not reported what it can hold), the smallest, whose pre-flight check on the device
    then reports the reason instead of downloading. ``have``: sha256 -> bytes on disk."""
    if not variants:
        raise ValueError("a family without variants")
    smallest = min(variants, key=lambda row: int(row.manifest["length"]))  # type: ignore[call-overload]
    if not resources.known:
        return smallest, "the device has not reported its memory and disk: smallest variant"
    reasons = []
    for row in variants:
        manifest = ModelManifest.from_dict(row.manifest)
        reason = why_not_fit(manifest, resources, have.get(manifest.sha256, 0))
        if reason is None:
            return row, "best quality that fits"
        reasons.append(reason)
    return smallest, "no variant fits: " + "; ".join(reasons)


DEVICE_CLASS_LABEL = "device-class"


def device_class(labels: dict[str, str], resources: DeviceResources) -> str:
    """The operator's ``device-class`` label, else machine, cores and memory."""
    return labels.get(DEVICE_CLASS_LABEL) or resources.device_class


def model_report(db: Database, name: str) -> tuple[list[VersionView], list[ClassSpeed]]:
    """Every version of ``name`` and the speed devices measured, per version and class."""
    check_model_name(name)
    with db.session() as session:
        rows = session.execute(
            select(Model).where(Model.name == name).order_by(Model.published_at, Model.id)
        ).scalars()
        versions = [
            VersionView(
                version=row.version,
                sha256=row.sha256,
                length=int(row.manifest["length"]),  # type: ignore[call-overload]
                quantization=str(row.manifest["quantization"]),
                published_at=format_time(row.published_at),
                evaluation=row.evaluation,
            )
            for row in rows
        ]
        if not versions:
            raise NotFoundError(f"no model named {name} is published")
        version_of = {v.sha256: v.version for v in versions}
        measured: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
        for device in session.execute(select(Device)).scalars():
            kind = device_class(dict(device.labels), device.resources)
            for bench in device.bench:
                version = version_of.get(bench.sha256)
                if bench.model == name and version is not None:
                    measured[(version, kind)].append(
                        (bench.prompt_tokens_per_second, bench.generation_tokens_per_second)
                    )
    speeds = [
        ClassSpeed(
            version=version,
            device_class=kind,
            devices=len(figures),
            prompt_tokens_per_second=round(statistics.median(f[0] for f in figures), 2),
            generation_tokens_per_second=round(statistics.median(f[1] for f in figures), 2),
        )
        for (version, kind), figures in sorted(measured.items())
    ]
    return versions, speeds
