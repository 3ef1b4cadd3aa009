"""Exports verify offline from the root fingerprint; each kind of tampering names the record."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edgefleet.audit import GENESIS_HASH, AuditEvent, encode_record, record_hash
from edgefleet.audit_export import build_export, verify_export
from edgefleet.canonical import canonical_bytes
from edgefleet.errors import MalformedInputError, SignatureError
from edgefleet.trust.keys import SigningKey
from edgefleet.trust.verifier import root_fingerprint
from tests.edgefleet.trustkit import Fleet


def _chain(device: str, count: int, start: int = 1, prev: str = GENESIS_HASH) -> list[bytes]:
    records = []
    for seq in range(start, start + count):
        event = AuditEvent("app:x", "inference.chat", "m@1", "success", {"n": seq})
        canonical = encode_record(device, seq, f"2026-01-01T00:00:{seq:02d}Z", event, prev)
        records.append(canonical)
        prev = record_hash(canonical)
    return records


@pytest.fixture
def fleet() -> Fleet:
    return Fleet()


def _export(fleet: Fleet, records: list[bytes], fmt: str = "jsonl") -> tuple[bytes, str]:
    root = fleet.sign_root(fleet.root())
    data = build_export(
        records, [root], fleet.keys["audit"], {"dev-a": "ab" * 32}, {"device": ""}, fmt
    )
    return data, root_fingerprint(root)


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def _verify_lines(lines: list[bytes], fingerprint: str) -> list[str]:
    return verify_export(b"\n".join(lines), fingerprint).problems


RECORDS = _chain("dev-a", 6) + _chain("dev-b", 3)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_intact_export_verifies(fleet: Fleet, fmt: str) -> None:
    """An untouched export verifies, in both formats, with the records byte for byte."""
    data, fingerprint = _export(fleet, RECORDS, fmt)
    report = verify_export(data, fingerprint)
    assert report.ok, report.problems
    assert report.records == 9 and report.chains == {"dev-a": 6, "dev-b": 3}
    if fmt == "jsonl":
        assert _lines(data)[1:10] == RECORDS


def test_edited_record_is_named(fleet: Fleet) -> None:
    """Changing a field of dev-a #3 is reported as dev-a #3 altered."""
    data, fingerprint = _export(fleet, RECORDS)
    lines = _lines(data)
    doc = json.loads(lines[3])
    doc["outcome"] = "denied"
    lines[3] = canonical_bytes(doc)
    assert _verify_lines(lines, fingerprint) == [
        "record dev-a #3: altered (its bytes no longer hash to what the chain recorded)"
    ]


def test_rewritten_link_is_named(fleet: Fleet) -> None:
    """Rewriting dev-a #4's prev (to hide an edit of #3) still names #4."""
    data, fingerprint = _export(fleet, RECORDS)
    lines = _lines(data)
    doc = json.loads(lines[4])
    doc["prev"] = "f" * 64
    lines[4] = canonical_bytes(doc)
    assert _verify_lines(lines, fingerprint) == [
        "record dev-a #4: altered (its bytes no longer hash to what the chain recorded)"
    ]


def test_last_record_edit_is_caught_by_the_manifest(fleet: Fleet) -> None:
    """The last record has no successor; the signed manifest holds its hash."""
    data, fingerprint = _export(fleet, RECORDS)
    lines = _lines(data)
    doc = json.loads(lines[9])
    doc["actor"] = "someone"
    lines[9] = canonical_bytes(doc)
    assert _verify_lines(lines, fingerprint) == [
        "record dev-b #3: altered (its bytes no longer hash to what the chain recorded)"
    ]


def test_deleted_record_is_named(fleet: Fleet) -> None:
    """Deleting dev-a #2 reports it missing."""
    data, fingerprint = _export(fleet, RECORDS)
    lines = _lines(data)
    del lines[2]
    problems = _verify_lines(lines, fingerprint)
    assert "record dev-a #2: missing" in problems


def test_reordered_records_are_named(fleet: Fleet) -> None:
    """Swapping dev-a #4 and #5 reports #4 out of order."""
    data, fingerprint = _export(fleet, RECORDS)
    lines = _lines(data)
    lines[4], lines[5] = lines[5], lines[4]
    assert (
        _verify_lines(lines, fingerprint)[0] == "record dev-a #4 (line 6): out of order, after #5"
    )


def test_inserted_records_are_named(fleet: Fleet) -> None:
    """A duplicated sequence number, an extra record and a foreign chain are each named."""
    data, fingerprint = _export(fleet, RECORDS)
    lines = _lines(data)
    duplicate = [*lines[:3], lines[2], *lines[3:]]
    assert (
        "record dev-a #2 (line 4): sequence number appears twice"
        in _verify_lines(duplicate, fingerprint)[0]
    )
    extra = _chain("dev-b", 1, start=4, prev=json.loads(lines[9])["prev"])
    appended = [*lines[:10], *extra, b""]
    assert any(
        "dev-b #4" in p and "beyond the signed last record #3" in p
        for p in _verify_lines(appended, fingerprint)
    )
    foreign = [*lines[:10], *_chain("dev-z", 1), b""]
    assert "chain dev-z: not in the signed manifest (records were inserted)" in _verify_lines(
        foreign, fingerprint
    )


def test_truncated_export_is_named(fleet: Fleet) -> None:
    """Cutting the file after dev-b #1 names the missing tail; a cut mid-line names the line."""
    data, fingerprint = _export(fleet, RECORDS)
    lines = _lines(data)
    assert "record dev-b #2..#3: missing (the export was cut)" in _verify_lines(
        lines[:8], fingerprint
    )
    cut = b"\n".join(lines[:8]) + b"\n" + lines[8][:20]
    assert any(
        p.startswith("line 9: not a valid record") for p in verify_export(cut, fingerprint).problems
    )


def test_wrong_fleet_or_forged_manifest_is_refused(fleet: Fleet) -> None:
    """Another fleet's fingerprint, or a manifest signed by a key the root does not name, fails."""
    data, fingerprint = _export(fleet, RECORDS)
    other = Fleet()
    with pytest.raises(SignatureError, match="pinned root fingerprint"):
        verify_export(data, root_fingerprint(other.sign_root(other.root())))
    root = fleet.sign_root(fleet.root())
    forged = build_export(RECORDS, [root], SigningKey.generate(), {}, {})
    with pytest.raises(SignatureError, match="audit export manifest: 0 valid"):
        verify_export(forged, fingerprint)
    with pytest.raises(MalformedInputError):
        verify_export(b"not an export\n", fingerprint)


def test_device_checkpoints_catch_a_rewritten_chain(fleet: Fleet) -> None:
    """Even a consistent rewrite signed with the audit key fails against the device's checkpoint."""
    from edgefleet.audit import Checkpoint, sign_checkpoint

    device_key = SigningKey.generate()
    original = _chain("dev-a", 4)
    checkpoint = sign_checkpoint(
        Checkpoint("dev-a", 4, record_hash(original[-1]), "2026-01-01T00:00:09Z"), device_key
    )
    root = fleet.sign_root(fleet.root())
    fingerprint = root_fingerprint(root)

    def export(records: list[bytes]) -> bytes:
        from edgefleet.audit_export import ExportBuilder, render

        builder = ExportBuilder()
        for r in records:
            builder.add(r)
        header = builder.header(
            [root],
            fleet.keys["audit"],
            {"dev-a": device_key.public.hex},
            {},
            {"dev-a": [checkpoint]},
        )
        return b"".join(render(header, records, "jsonl"))

    assert verify_export(export(original), fingerprint).ok
    forged, prev = [], GENESIS_HASH  # history rewritten from record 2 on, links recomputed
    for seq, raw in enumerate(original, start=1):
        doc = json.loads(raw)
        doc["prev"] = prev
        if seq == 2:
            doc["outcome"] = "denied"
        forged.append(canonical_bytes(doc))
        prev = record_hash(forged[-1])
    assert verify_export(export(forged), fingerprint).problems == [
        "record dev-a #4: does not match the device-signed checkpoint"
    ]


def test_device_signed_export_verifies_through_the_fleet_attestation(fleet: Fleet) -> None:
    """A device's own export verifies via the fleet's attestation of its key, for its chain only."""
    from edgefleet.audit import sign_key_attestation
    from edgefleet.audit_export import ExportBuilder, render

    device_key = SigningKey.generate()
    root = fleet.sign_root(fleet.root())
    fingerprint = root_fingerprint(root)

    def export(records: list[bytes], attested_by: SigningKey, signer: SigningKey) -> bytes:
        builder = ExportBuilder()
        for r in records:
            builder.add(r)
        attestation = sign_key_attestation("dev-a", device_key.public.hex, attested_by)
        header = builder.header([root], signer, {}, {}, None, attestation)
        return b"".join(render(header, records, "jsonl"))

    own = _chain("dev-a", 5)
    assert verify_export(export(own, fleet.keys["audit"], device_key), fingerprint).ok
    with pytest.raises(SignatureError, match="audit key attestation"):
        verify_export(export(own, SigningKey.generate(), device_key), fingerprint)
    with pytest.raises(SignatureError, match="signed by dev-a"):
        verify_export(export(own, fleet.keys["audit"], SigningKey.generate()), fingerprint)
    with pytest.raises(SignatureError, match="only hold dev-a's own chain"):
        verify_export(
            export(own + _chain("dev-b", 1), fleet.keys["audit"], device_key), fingerprint
        )


def _covered_export(
    fleet: Fleet, records: list[bytes], key: SigningKey, alerts: dict[str, Any] | None = None
) -> tuple[bytes, str]:
    """An export of one device chain with a device-signed checkpoint of its last record."""
    from edgefleet.audit import Checkpoint, parse_record, sign_checkpoint
    from edgefleet.audit_export import ExportBuilder, render

    root = fleet.sign_root(fleet.root())
    builder = ExportBuilder()
    for record in records:
        builder.add(record)
    last = parse_record(records[-1])
    checkpoint = sign_checkpoint(Checkpoint(last.device, last.seq, last.hash, "t"), key)
    header = builder.header(
        [root],
        fleet.keys["audit"],
        {last.device: key.public.hex},
        {},
        {last.device: [checkpoint]},
        alerts=alerts,
    )
    return b"".join(render(header, records, "jsonl")), root_fingerprint(root)


def test_records_covered_by_a_device_checkpoint_are_attested(fleet: Fleet) -> None:
    """A device chain whose last record the device signed verifies without a note."""
    key = SigningKey.generate()
    data, fingerprint = _covered_export(fleet, _chain("dev-a", 6), key)
    report = verify_export(data, fingerprint)
    assert report.attested, (report.problems, report.qualifications)
    assert report.device_keys == {"dev-a": key.public.keyid}


def test_a_history_rewritten_with_the_audit_key_alone_is_not_attested(fleet: Fleet) -> None:
    """Review hole M3: rewriting a device's records, re-chaining them, dropping its
    checkpoints and re-signing with the audit key no longer yields a clean verdict: the
    records are named as vouched for by the controller's key alone."""
    rewritten = [r.replace(b'"success"', b'"denied"') for r in _chain("dev-a", 6)]
    rechained, prev = [], GENESIS_HASH
    for raw in rewritten:
        doc = json.loads(raw)
        doc["prev"] = prev
        canonical = canonical_bytes(doc)
        rechained.append(canonical)
        prev = record_hash(canonical)
    data, fingerprint = _export(fleet, rechained)
    report = verify_export(data, fingerprint)
    assert report.ok and not report.attested
    assert report.qualifications == [
        "records dev-a #1..#6: not device-attested (no checkpoint signed by the device covers "
        "them; only the controller's audit key vouches for them)"
    ]


def test_the_csv_columns_must_say_what_the_records_say(fleet: Fleet) -> None:
    """Review hole M4: editing a readable CSV column (the record left intact) fails."""
    data, fingerprint = _export(fleet, RECORDS, "csv")
    edited = data.replace(
        b"\ndev-a,3,2026-01-01T00:00:03Z,app:x,", b"\ndev-a,3,2026-01-01T00:00:03Z,app:other,", 1
    )
    assert edited != data
    problems = verify_export(edited, fingerprint).problems
    assert problems == ["line 5: column actor says 'app:other', the record says 'app:x'"]


@pytest.mark.parametrize("cleared", [False, True])
def test_a_flagged_range_fails_or_stays_noted(fleet: Fleet, cleared: bool) -> None:
    """Review hole M5: an export of a chain the controller flagged fails while the alert
    stands; once cleared after an investigation, the range is still noted."""
    key = SigningKey.generate()
    alert = {
        "first_seq": 3,
        "last_seq": 4,
        "reason": "record 4 does not match",
        "detected": "t",
        "cleared_by": "operator:alice" if cleared else "",
        "cleared_reason": "reimaged",
    }
    data, fingerprint = _covered_export(fleet, _chain("dev-a", 6), key, {"dev-a": [alert]})
    report = verify_export(data, fingerprint)
    flagged = (
        "records dev-a #3..#4: flagged as tampered by the controller (record 4 does not match)"
    )
    if cleared:
        assert report.ok and report.qualifications == [
            f"{flagged}; cleared by operator:alice: reimaged"
        ]
    else:
        assert report.problems == [flagged]
