"""Model families: which variant each device gets, and what a variant's upload must carry."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from edgefleet.controller.catalog.quantization.family import (
    family_variants,
    model_report,
    parse_evaluation,
    pick_variant,
)
from edgefleet.controller.rollouts.engine import create_rollout, repick_variant
from edgefleet.controller.store.database import Database
from edgefleet.controller.store.schema import Assignment, AuditRecordRow, Device, Model
from edgefleet.errors import MalformedInputError, NotFoundError
from edgefleet.fleet import DeviceResources

MIB = 1024 * 1024
# (variant, file size, perplexity): quality improves with size, as quantization makes it.
VARIANTS = (("q4_0", 80 * MIB, 20.0), ("q5_1", 100 * MIB, 19.0), ("q8_0", 140 * MIB, 18.5))
SHA = {name: f"{i + 1:064x}" for i, (name, _, _) in enumerate(VARIANTS)}


def resources(budget_mib: int, disk_mib: int = 10_000) -> DeviceResources:
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


def manifest(version: str, length: int, sha256: str) -> dict[str, object]:
    return {
        "name": "smollm2",
        "version": version,
        "sha256": sha256,
        "length": length,
        "architecture": "llama",
        "parameter_count": 134_515_008,
        "quantization": version.rsplit("+", 1)[-1].upper(),
        "context_length": 8192,
        "kv_bytes_per_token": 61_440,
        "chunk_size": 1 << 20,
        "chunks_sha256": "f" * 64,
    }


@pytest.fixture
def db(database: Database) -> Database:
    """smollm2 1.0.0 as three evaluated variants, 0.9 as a plain publish, and two devices."""
    now = datetime.now(UTC)
    with database.session() as session:
        session.add(
            Model(
                name="smollm2",
                version="0.9",
                sha256="e" * 64,
                manifest=manifest("0.9", 90 * MIB, "e" * 64),
                published_at=now,
            )
        )
        for variant, length, perplexity in VARIANTS:
            version = f"1.0.0+{variant}"
            session.add(
                Model(
                    name="smollm2",
                    version=version,
                    sha256=SHA[variant],
                    manifest=manifest(version, length, SHA[variant]),
                    published_at=now,
                    evaluation={"variant": variant, "perplexity": perplexity, "passed": True},
                )
            )
        for device_id, budget, machine in (("big", 4000, "x86_64"), ("small", 220, "aarch64")):
            session.add(
                Device(
                    device_id=device_id,
                    hostname=device_id,
                    labels={"site": "lab"},
                    key_fingerprint="0" * 64,
                    certificate_serial="1",
                    audit_public_key="a" * 64,
                    enrolled_at=now,
                    resources={**vars(resources(budget)), "machine": machine},
                    bench=[
                        {
                            "model": "smollm2",
                            "version": "1.0.0+q4_0",
                            "sha256": SHA["q4_0"],
                            "threads": 4,
                            "prompt_tokens": 128,
                            "generated_tokens": 32,
                            "prompt_tokens_per_second": 300.0 if device_id == "big" else 60.0,
                            "generation_tokens_per_second": 90.0 if device_id == "big" else 20.0,
                            "measured_at": "2026-11-28T00:00:00Z",
                        }
                    ],
                )
            )
    return database


def test_variants_are_ordered_best_quality_first(db: Database) -> None:
    with db.session() as session:
        assert [m.version for m in family_variants(session, "smollm2", "1.0.0")] == [
            "1.0.0+q8_0",
            "1.0.0+q5_1",
            "1.0.0+q4_0",
        ]
        assert family_variants(session, "smollm2", "0.9") == []


@pytest.mark.parametrize(
    ("budget_mib", "disk_mib", "expected", "why"),
    [
        (4000, 10_000, "1.0.0+q8_0", "best quality that fits"),
        # q8_0 needs 140 + 30 (KV) + 64 (compute) + 40 (its runner) MiB: 270 leaves it out.
        (270, 10_000, "1.0.0+q5_1", "best quality that fits"),
        (230, 10_000, "1.0.0+q4_0", "best quality that fits"),
        # Nothing fits: the smallest goes, and the device's pre-flight names the reason.
        (100, 10_000, "1.0.0+q4_0", "no variant fits"),
        # Memory is ample but the disk is not: 140 MiB + 256 MiB reserve > 380 MiB free.
        (4000, 380, "1.0.0+q5_1", "best quality that fits"),
    ],
)
def test_each_device_gets_the_best_variant_that_fits(
    db: Database, budget_mib: int, disk_mib: int, expected: str, why: str
) -> None:
    with db.session() as session:
        variants = family_variants(session, "smollm2", "1.0.0")
        picked, reason = pick_variant(variants, resources(budget_mib, disk_mib), {})
    assert picked.version == expected and reason.startswith(why), reason


def test_a_variant_already_on_disk_keeps_fitting(db: Database) -> None:
    """Disk that q8_0 itself occupies counts as available for q8_0: no flapping after a download."""
    with db.session() as session:
        variants = family_variants(session, "smollm2", "1.0.0")
        picked, _ = pick_variant(variants, resources(4000, 300), {SHA["q8_0"]: 140 * MIB})
    assert picked.version == "1.0.0+q8_0"


def test_a_device_that_has_not_reported_gets_the_smallest(db: Database) -> None:
    with db.session() as session:
        variants = family_variants(session, "smollm2", "1.0.0")
        picked, reason = pick_variant(variants, DeviceResources(), {})
    assert picked.version == "1.0.0+q4_0" and "has not reported" in reason


def test_a_family_rollout_assigns_each_device_its_variant(db: Database) -> None:
    created = create_rollout(db, "alice", "smollm2", "1.0.0", {"site": "lab"})
    assert created.device_ids == ["big", "small"]
    with db.session() as session:
        picked = {a.device_id: (a.version, a.family) for a in session.query(Assignment).all()}
    assert picked == {"big": ("1.0.0+q8_0", "1.0.0"), "small": ("1.0.0+q4_0", "1.0.0")}
    assert created.assigned["big"] == "1.0.0+q8_0 (best quality that fits)"
    with pytest.raises(NotFoundError):
        create_rollout(db, "alice", "smollm2", "2.0.0", {})


def test_a_device_whose_budget_shrinks_moves_to_a_smaller_variant(db: Database) -> None:
    """The choice is made again from each report; the move is audited with its reason."""
    create_rollout(db, "alice", "smollm2", "1.0.0", {"site": "lab"})
    with db.session() as session:
        device = session.get(Device, "big")
        assert device is not None
        device.resources = resources(230)
        assignment = session.get(Assignment, ("big", "smollm2"))
        assert assignment is not None
        repick_variant(session, device, assignment)
        repick_variant(session, device, assignment)  # unchanged: not audited again
        assert assignment.version == "1.0.0+q4_0"
        moves = session.query(AuditRecordRow).filter_by(action="rollout.variant").all()
    assert len(moves) == 1
    record = json.loads(moves[0].canonical)
    assert record["target"] == "smollm2@1.0.0+q4_0"
    assert record["details"]["previous"] == "1.0.0+q8_0"


def test_an_exact_version_rollout_is_not_a_family(db: Database) -> None:
    create_rollout(db, "alice", "smollm2", "1.0.0+q5_1", {"site": "lab"})
    with db.session() as session:
        rows = session.query(Assignment).all()
    assert {(a.version, a.family) for a in rows} == {("1.0.0+q5_1", "")}


def test_model_report_aggregates_device_speed_by_class(db: Database) -> None:
    versions, speeds = model_report(db, "smollm2")
    assert [v.version for v in versions][0] == "0.9"
    assert {(s.device_class, s.devices, s.generation_tokens_per_second) for s in speeds} == {
        ("x86_64 4 cpu 4 GiB", 1, 90.0),
        ("aarch64 4 cpu 4 GiB", 1, 20.0),
    }
    with pytest.raises(NotFoundError):
        model_report(db, "nothing")


def evaluation(**changes: object) -> str:
    doc = {
        "variant": "q4_0",
        "perplexity": 20.0,
        "perplexity_increase_percent": 3.5,
        "size_bytes": 80 * MIB,
        "passed": True,
    }
    return json.dumps({**doc, **changes})


def test_a_variant_upload_carries_sound_measurements() -> None:
    assert parse_evaluation("", "1.0.0") is None
    assert parse_evaluation(evaluation(), "1.0.0+q4_0")["perplexity"] == 20.0
    for text, version, reason in (
        (evaluation(), "1.0.0", r"RELEASE\+q4_0"),
        (evaluation(variant="q8_0"), "1.0.0+q4_0", r"RELEASE\+q8_0"),
        (evaluation(perplexity="low"), "1.0.0+q4_0", "perplexity is missing"),
        (evaluation(perplexity=float("nan")), "1.0.0+q4_0", "not a number"),
        (evaluation(passed=False), "1.0.0+q4_0", "did not pass its quality gate"),
        ("[1, 2]", "1.0.0+q4_0", "not a JSON object"),
        ("{", "1.0.0+q4_0", "not JSON"),
        ("x" * 20_000, "1.0.0+q4_0", "over 16384 bytes"),
    ):
        with pytest.raises(MalformedInputError, match=reason):
            parse_evaluation(text, version)
