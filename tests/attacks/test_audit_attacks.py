"""Review hole M3, as the review ran it: with the controller's database and audit key, a
device's history was rewritten, re-chained, stripped of its device-signed checkpoints and
exported under a fresh signature, and `audit verify` said "verified". Now every record the
controller holds is covered by a checkpoint its device signed before pushing it, so a
clean verdict needs the device's key, and the rewrite is named."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import delete, select

from edgefleet.audit import record_hash
from edgefleet.canonical import canonical_bytes
from edgefleet.controller.store.schema import AuditCheckpointRow, AuditHead, AuditRecordRow
from tests.harness import BIN, Fleet, wait_for
from tests.integration.fleets import publish_tiny, roll_out_and_wait_active, status

pytestmark = pytest.mark.integration


def _verify(fleet: Fleet, device_id: str, out: Path) -> subprocess.CompletedProcess[str]:
    fleet.ctl("audit", "export", "--device", device_id, "--out", str(out))
    return subprocess.run(
        [
            str(BIN / "edgefleetctl"),
            "audit",
            "verify",
            str(out),
            "--root-fingerprint",
            fleet.fingerprint,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _rewrite_history(fleet: Fleet, device_id: str) -> int:
    """What an attacker holding the controller's database does: edit record #2, re-chain
    everything after it, move the head, drop the device's checkpoints. Returns the count."""
    db = fleet.controller_database()
    try:
        with db.session() as session:
            rows = list(
                session.execute(
                    select(AuditRecordRow)
                    .where(AuditRecordRow.chain == device_id)
                    .order_by(AuditRecordRow.seq)
                ).scalars()
            )
            prev = ""
            for row in rows:
                doc = json.loads(row.canonical)
                if row.seq == 2:
                    doc["outcome"] = "forged"
                if prev:
                    doc["prev"] = prev
                row.canonical = canonical_bytes(doc)
                row.record_sha256 = prev = record_hash(row.canonical)
            head = session.get(AuditHead, device_id)
            assert head is not None
            head.last_sha256 = prev
            session.execute(delete(AuditCheckpointRow).where(AuditCheckpointRow.chain == device_id))
            return len(rows)
    finally:
        db.dispose()


def test_a_history_rewritten_at_the_controller_is_not_attested(
    small_fleet: tuple[Fleet, str],
) -> None:
    fleet, device_id = small_fleet
    publish_tiny(fleet, "1", seed=1)
    roll_out_and_wait_active(fleet, "1")
    head = int(status(fleet, "gw").split("audit:")[1].split()[0])
    wait_for(
        "the device's records at the controller",
        lambda: True if fleet.devices()[0]["audit_stored_seq"] >= head else None,
        30,
    )
    honest = _verify(fleet, device_id, fleet.root / "honest.jsonl")
    assert honest.returncode == 0 and honest.stdout.rstrip().endswith(": verified"), honest.stdout
    key_id = status(fleet, "gw").split("audit key:")[1].split()[0]
    assert f"{device_id}: device audit key {key_id}" in honest.stdout

    fleet.stop("agent-gw")
    fleet.stop("controller")
    count = _rewrite_history(fleet, device_id)
    fleet.start_controller()
    forged = _verify(fleet, device_id, fleet.root / "forged.jsonl")
    assert forged.returncode == 3, forged.stdout
    assert f"NOTE records {device_id} #1..#{count}: not device-attested" in forged.stdout
    assert forged.stdout.rstrip().endswith("verified with 1 note(s)")
