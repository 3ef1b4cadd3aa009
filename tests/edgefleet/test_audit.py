"""Audit records are canonical bytes in a hash chain; any edit is caught and located."""

from __future__ import annotations

import json

import pytest

from edgefleet.audit import (
    GENESIS_HASH,
    AuditEvent,
    ChainVerifier,
    encode_record,
    parse_record,
    record_hash,
    verify_chain,
)
from edgefleet.errors import AuditChainError, MalformedInputError


def _chain(device: str, count: int) -> list[bytes]:
    records, prev = [], GENESIS_HASH
    for seq in range(1, count + 1):
        event = AuditEvent("agent", "inference.chat", "m@1", "success", {"n": seq, "é": "ü"})
        canonical = encode_record(device, seq, "2026-01-01T00:00:00Z", event, prev)
        records.append(canonical)
        prev = record_hash(canonical)
    return records


def test_intact_chain_verifies() -> None:
    """A chain written by encode_record verifies from genesis."""
    assert verify_chain("d1", _chain("d1", 5)) == 5


def test_encoding_is_canonical_json() -> None:
    """Keys are sorted and there is no insignificant whitespace (RFC 8785)."""
    record = _chain("d1", 1)[0]
    assert b" " not in record.replace(b'"inference.chat"', b"")
    assert list(json.loads(record)) == sorted(json.loads(record))


def test_edited_record_is_located() -> None:
    """Changing a field in record 3 is reported at record 4, whose link breaks."""
    records = _chain("d1", 5)
    doc = json.loads(records[2])
    doc["outcome"] = "denied"
    from edgefleet.canonical import canonical_bytes

    records[2] = canonical_bytes(doc)
    with pytest.raises(AuditChainError, match="record 4 does not link to record 3"):
        verify_chain("d1", records)


def test_deleted_record_is_a_gap() -> None:
    """Removing a record is reported as a sequence gap."""
    records = _chain("d1", 5)
    del records[1]
    with pytest.raises(AuditChainError, match="record 3 follows 1"):
        verify_chain("d1", records)


def test_record_of_another_device_is_refused() -> None:
    """A record naming another device cannot be slipped into this chain."""
    verifier = ChainVerifier("d1")
    with pytest.raises(AuditChainError, match="names device 'd2'"):
        verifier.add(_chain("d2", 1)[0])


def test_non_canonical_bytes_are_refused() -> None:
    """Re-serialized (pretty-printed) bytes are not accepted as a record."""
    pretty = json.dumps(json.loads(_chain("d1", 1)[0]), indent=2).encode()
    with pytest.raises(MalformedInputError, match="canonical"):
        parse_record(pretty)


def test_malformed_records_are_refused() -> None:
    """Garbage, missing fields and bad sequence numbers are MalformedInputError."""
    for bad in (
        b"\xff",
        b"[]",
        b'{"seq": 1}',
        json.dumps(
            {
                "seq": 0,
                "device": "d",
                "time": "",
                "actor": "",
                "action": "",
                "target": "",
                "outcome": "",
                "details": {},
                "prev": "",
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode(),
    ):
        with pytest.raises(MalformedInputError):
            parse_record(bad)


def test_receipts_verify_only_with_the_audit_role_and_for_this_device() -> None:
    """A receipt signed by the audit key verifies; another key or another device is refused."""
    from edgefleet.audit import sign_receipt, verify_receipt
    from edgefleet.errors import SignatureError
    from edgefleet.trust.keys import SigningKey

    audit, rogue = SigningKey.generate(), SigningKey.generate()
    keys = {audit.keyid: audit.public, rogue.keyid: rogue.public}
    receipt = sign_receipt("dev-1", 7, "ab" * 32, "2026-01-01T00:00:00Z", audit)
    assert verify_receipt(receipt, keys, [audit.keyid], 1, "dev-1")["seq"] == 7
    with pytest.raises(AuditChainError, match="not for this device"):
        verify_receipt(receipt, keys, [audit.keyid], 1, "dev-2")
    forged = sign_receipt("dev-1", 7, "ab" * 32, "2026-01-01T00:00:00Z", rogue)
    with pytest.raises(SignatureError):
        verify_receipt(forged, keys, [audit.keyid], 1, "dev-1")
