"""The controller stores each (device, seq) once, checks links, and flags tampering."""

from __future__ import annotations

import json

import pytest

from edgefleet.audit import GENESIS_HASH, AuditEvent, encode_record, record_hash, verify_chain
from edgefleet.canonical import canonical_bytes
from edgefleet.controller.audit.log import ExportFilter, export_page, ingest
from edgefleet.controller.store.database import Database


def _chain(count: int, device: str = "dev-1") -> list[tuple[int, bytes]]:
    records, prev = [], GENESIS_HASH
    for seq in range(1, count + 1):
        event = AuditEvent("agent", "inference.chat", "m@1", "success", {})
        canonical = encode_record(device, seq, "2026-01-01T00:00:00Z", event, prev)
        records.append((seq, canonical))
        prev = record_hash(canonical)
    return records


@pytest.fixture
def db(database: Database) -> Database:
    return database


def _stored(db: Database, chain: str) -> list[bytes]:
    return [c for _chain, _seq, c in export_page(db, ExportFilter(chain), None)]


def test_batches_and_resends_store_each_record_once(db: Database) -> None:
    """Records pushed twice (a retry after a lost ack) are stored once, verbatim."""
    records = _chain(6)
    assert ingest(db, "dev-1", records[:4]).acked_seq == 4
    again = ingest(db, "dev-1", records[2:] + records[2:3])
    assert (again.acked_seq, again.stored, again.tamper_reason) == (6, 2, "")
    assert _stored(db, "dev-1") == [c for _s, c in records]


def test_gap_stops_the_ack_where_records_are_missing(db: Database) -> None:
    """With record 3 missing, the controller acknowledges 2 and stores nothing past it."""
    records = _chain(5)
    result = ingest(db, "dev-1", records[:2] + records[3:])
    assert (result.acked_seq, result.tamper_reason) == (2, "")
    assert ingest(db, "dev-1", records[2:]).acked_seq == 5


def test_broken_link_raises_a_tamper_alert_that_is_itself_audited(db: Database) -> None:
    """An edited record stops ingest, marks the chain and adds a controller audit record."""
    records = _chain(3)
    doc = json.loads(records[1][1])
    doc["outcome"] = "denied"
    records[1] = (2, canonical_bytes(doc))
    ingest(db, "dev-1", records[:2])
    result = ingest(db, "dev-1", _chain(3)[2:])
    assert result.acked_seq == 2 and "does not link" in result.tamper_reason
    controller = _stored(db, "controller")
    assert verify_chain("controller", controller) == 1
    assert b"audit.tamper_detected" in controller[0]


def test_rewriting_a_stored_record_is_tampering(db: Database) -> None:
    """Re-sending an already stored seq with other bytes is detected, not silently ignored."""
    ingest(db, "dev-1", _chain(2))
    other = _chain(2, device="dev-1")[0]
    doc = json.loads(other[1])
    doc["actor"] = "someone-else"
    result = ingest(db, "dev-1", [(1, canonical_bytes(doc))])
    assert "differs from the copy already stored" in result.tamper_reason


def test_records_of_another_device_are_refused(db: Database) -> None:
    """A device cannot push records that name another device."""
    result = ingest(db, "dev-1", _chain(1, device="dev-2"))
    assert result.acked_seq == 0 and "names device" in result.tamper_reason


def test_device_checkpoints_are_checked_against_stored_records(db: Database) -> None:
    """A matching device-signed checkpoint is kept; a forged one is tampering."""
    from datetime import UTC, datetime

    from edgefleet.audit import Checkpoint, sign_checkpoint
    from edgefleet.controller.audit.log import checkpoints_between
    from edgefleet.controller.store.schema import Device
    from edgefleet.trust.keys import SigningKey

    key = SigningKey.generate()
    with db.session() as session:
        session.add(
            Device(
                device_id="dev-1",
                hostname="h",
                labels={},
                state="active",
                key_fingerprint="f",
                certificate_serial="1",
                previous_serial="",
                audit_public_key=key.public.hex,
                enrolled_at=datetime.now(UTC),
                agent_version="",
                installed=[],
                last_error="",
                bench=[],
            )
        )
    records = _chain(3)
    good = sign_checkpoint(Checkpoint("dev-1", 2, record_hash(records[1][1]), "t"), key)
    ahead = sign_checkpoint(Checkpoint("dev-1", 9, "ab" * 32, "t"), key)
    assert ingest(db, "dev-1", records, [good, ahead]).tamper_reason == ""
    assert len(checkpoints_between(db, "dev-1", 1, 3)) == 1  # the one ahead of the records waits
    forged = sign_checkpoint(Checkpoint("dev-1", 3, "cd" * 32, "t"), SigningKey.generate())
    assert "checkpoint refused" in ingest(db, "dev-1", [], [forged]).tamper_reason


def _device(db: Database, key: object) -> None:
    from datetime import UTC, datetime

    from edgefleet.controller.store.schema import Device

    with db.session() as session:
        session.add(
            Device(
                device_id="dev-1",
                hostname="h",
                labels={},
                state="active",
                key_fingerprint="f",
                certificate_serial="1",
                previous_serial="",
                audit_public_key=key.public.hex,  # type: ignore[attr-defined]
                enrolled_at=datetime.now(UTC),
                agent_version="",
                installed=[],
                last_error="",
                bench=[],
            )
        )


def test_a_tampered_range_is_flagged_travels_in_exports_and_can_be_cleared(db: Database) -> None:
    """Review hole M5: records altered before they were pushed (re-chained, so the links
    hold) no longer pass as genuine: the range since the last matching checkpoint is an
    alert; the chain takes nothing more until an operator clears it, with a reason; the
    cleared alert stays on record for exports."""
    from edgefleet.audit import Checkpoint, sign_checkpoint
    from edgefleet.controller.audit.log import alerts_of, clear_alert
    from edgefleet.errors import MalformedInputError, NotFoundError
    from edgefleet.trust.keys import SigningKey

    key = SigningKey.generate()
    _device(db, key)
    genuine = _chain(6)
    first = sign_checkpoint(Checkpoint("dev-1", 2, record_hash(genuine[1][1]), "t"), key)
    assert ingest(db, "dev-1", genuine[:2], [first]).tamper_reason == ""
    # Records 3..6 rewritten on the device after its checkpoint of #6 was signed.
    signed = sign_checkpoint(Checkpoint("dev-1", 6, record_hash(genuine[5][1]), "t"), key)
    altered, prev = [], record_hash(genuine[1][1])
    for seq in range(3, 7):
        event = AuditEvent("agent", "inference.chat", "m@1", "denied", {})
        canonical = encode_record("dev-1", seq, "2026-01-01T00:00:00Z", event, prev)
        altered.append((seq, canonical))
        prev = record_hash(canonical)
    result = ingest(db, "dev-1", altered, [signed])
    assert "does not match the device-signed checkpoint" in result.tamper_reason
    assert [
        (a["first_seq"], a["last_seq"], a["cleared_by"]) for a in alerts_of(db, ["dev-1"])["dev-1"]
    ] == [(3, 6, "")]
    assert ingest(db, "dev-1", _chain(7)[6:]).stored == 0  # blocked while the alert stands
    with pytest.raises(MalformedInputError, match="say why"):
        clear_alert(db, "alice", "dev-1", "")
    assert clear_alert(db, "alice", "dev-1", "device reimaged; records 3-6 lost") == 1
    (alert,) = alerts_of(db, ["dev-1"])["dev-1"]
    assert alert["cleared_by"] == "operator:alice" and "reimaged" in alert["cleared_reason"]
    with pytest.raises(NotFoundError):
        clear_alert(db, "alice", "dev-1", "again")
    controller = [json.loads(r) for r in _stored(db, "controller")]
    assert [r["action"] for r in controller][-2:] == [
        "audit.tamper_detected",
        "audit.alert_cleared",
    ]
