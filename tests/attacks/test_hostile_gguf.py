"""Review hole H1: one hostile GGUF bricked the fleet. Now it is refused before anything is
signed, and a controller holding targets an earlier release signed with such an entry
starts, signs the next version without it, and devices sync again."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from edgefleet.canonical import canonical_bytes
from edgefleet.controller.app.datadir import DataDir
from edgefleet.controller.store.schema import AuditRecordRow, Model, TargetsVersion
from edgefleet.controller.trust.keyring import Keyring
from edgefleet.trust.envelope import Envelope, sign_envelope
from edgefleet.trust.metadata import TARGETS_TYPE, Targets
from tests.ggufkit import write_gguf_with_facts
from tests.harness import Fleet
from tests.integration.fleets import active_versions, publish_tiny, roll_out_and_wait_active

pytestmark = pytest.mark.integration

HOSTILE_FACTS = {"context_length": -5, "block_count": -30, "attention.head_count": -9}


def _targets(fleet: Fleet) -> tuple[int, Targets]:
    db = fleet.controller_database()
    try:
        with db.session() as session:
            row = session.execute(
                select(TargetsVersion).order_by(TargetsVersion.version.desc()).limit(1)
            ).scalar_one()
            return row.version, Targets.from_payload(Envelope.from_json(row.envelope).payload)
    finally:
        db.dispose()


def test_a_hostile_gguf_is_refused_and_the_fleet_keeps_working(
    small_fleet: tuple[Fleet, str],
) -> None:
    """Publishing the review's file fails with one line naming the bad key; nothing is
    signed; publishing, rolling out and restarting the controller all still work."""
    fleet, _device = small_fleet
    hostile = write_gguf_with_facts(fleet.root / "hostile.gguf", HOSTILE_FACTS)
    before = _targets(fleet)
    refused = fleet.ctl(
        "models", "publish", str(hostile), "--name", "evil", "--version", "1", check=False
    )
    assert refused.returncode != 0
    assert "llama.context_length = -5 is not an integer" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert _targets(fleet) == before
    publish_tiny(fleet, "1", seed=1)
    roll_out_and_wait_active(fleet, "1")
    fleet.stop("controller")
    fleet.start_controller()
    publish_tiny(fleet, "2", seed=2)
    roll_out_and_wait_active(fleet, "2")


def test_targets_with_an_unreadable_entry_are_repaired_at_start(
    small_fleet: tuple[Fleet, str],
) -> None:
    """An entry signed by a release without today's checks no longer stops the controller
    nor every device: the next version leaves it out, audited with the version it came
    from, and the device takes the next rollout."""
    fleet, _device = small_fleet
    publish_tiny(fleet, "1", seed=1)
    roll_out_and_wait_active(fleet, "1")
    fleet.stop("controller")
    version, targets = _targets(fleet)
    doc = json.loads(targets.to_payload())
    bad = {**doc["models"]["tiny@1"], "name": "evil", "version": "1", "kv_bytes_per_token": -5}
    doc["models"]["evil@1"] = bad
    doc["version"] = version + 1
    data = DataDir(fleet.controller_dir)
    signers = Keyring(data).current().signers("targets")
    envelope = sign_envelope(TARGETS_TYPE, canonical_bytes(doc), signers)
    db = fleet.controller_database()
    now = datetime.now(UTC)
    with db.session() as session:
        session.add(
            TargetsVersion(version=version + 1, envelope=envelope.to_json(), created_at=now)
        )
        session.add(
            Model(name="evil", version="1", sha256=bad["sha256"], manifest=bad, published_at=now)
        )
    fleet.start_controller()  # it used to exit: "targets metadata: kv_bytes_per_token …"
    repaired_version, repaired = _targets(fleet)
    assert repaired_version == version + 2
    assert set(repaired.models) == {"tiny@1"}
    with db.session() as session:
        assert session.execute(select(Model).where(Model.name == "evil")).first() is None
        record = session.execute(
            select(AuditRecordRow.canonical).where(AuditRecordRow.action == "targets.repair")
        ).scalar_one()
    db.dispose()
    details = json.loads(record)["details"]
    assert details["unreadable_version"] == version + 1 and details["dropped"] == ["evil@1"]
    publish_tiny(fleet, "2", seed=2)
    roll_out_and_wait_active(fleet, "2")
    assert "targets.repaired" in fleet.log("controller")
    assert "tiny@2" in active_versions(fleet, "gw")
