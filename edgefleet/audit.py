"""Audit records: canonical bytes written once, hash-chained, verified by re-hashing bytes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgefleet.canonical import canonical_bytes, parse_object
from edgefleet.errors import AuditChainError, MalformedInputError
from edgefleet.trust.envelope import Envelope, sign_envelope, verify_envelope
from edgefleet.trust.keys import PublicKey, SigningKey
from edgefleet.trust.metadata import AUDIT_KEY_TYPE, CHECKPOINT_TYPE, RECEIPT_TYPE

GENESIS_HASH = "0" * 64
MAX_RECORD_BYTES = 64 * 1024
RECORD_KEYS = frozenset(
    {"seq", "device", "time", "actor", "action", "target", "outcome", "details", "prev"}
)


# The controller's own chain (its state changes), stored beside the devices' chains.
CONTROLLER_CHAIN = "controller"


@dataclass(frozen=True)
class AuditEvent:
    """What happened, before it is numbered and chained."""

    actor: str
    action: str
    target: str
    outcome: str
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One stored record: its exact canonical bytes, the fields read from them, and ``hash``,
    the hex SHA-256 of the bytes (the next record's ``prev``)."""

    seq: int
    device: str
    prev: str
    canonical: bytes
    fields: Mapping[str, Any]
    hash: str


def record_hash(canonical: bytes) -> str:
    """Hash of a record's exact bytes."""
    return hashlib.sha256(canonical).hexdigest()


def _record_fields(
    device: str, seq: int, time: str, event: AuditEvent, prev: str
) -> dict[str, Any]:
    return {
        "seq": seq,
        "device": device,
        "time": time,
        "actor": event.actor,
        "action": event.action,
        "target": event.target,
        "outcome": event.outcome,
        "details": dict(event.details),
        "prev": prev,
    }


def encode_record(device: str, seq: int, time: str, event: AuditEvent, prev: str) -> bytes:
    """Encode a new record once; these bytes are stored, shipped and exported verbatim."""
    return canonical_bytes(_record_fields(device, seq, time, event, prev))


def parse_record(canonical: bytes) -> AuditRecord:
    """Read a record's fields, refusing bytes that are not its canonical encoding."""
    if len(canonical) > MAX_RECORD_BYTES:
        raise MalformedInputError(f"audit record is larger than {MAX_RECORD_BYTES} bytes")
    doc = parse_object(canonical, "audit record")
    if set(doc) != RECORD_KEYS:
        raise MalformedInputError("audit record has missing or unknown fields")
    seq, device, prev = doc["seq"], doc["device"], doc["prev"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise MalformedInputError("audit record seq must be a positive integer")
    if not isinstance(device, str) or not isinstance(prev, str):
        raise MalformedInputError("audit record device and prev must be strings")
    details = doc["details"]
    if not isinstance(details, dict):
        raise MalformedInputError(f"audit record {seq} details must be an object")
    # Equal bytes prove the input was canonical (and so hashes to what every party hashes).
    if canonical_bytes(doc) != canonical:
        raise MalformedInputError(f"audit record {seq} is not in canonical form")
    return AuditRecord(seq, device, prev, canonical, doc, record_hash(canonical))


class ChainVerifier:
    """Check records of one device arrive in sequence and each links to its predecessor."""

    def __init__(self, device: str, last_seq: int = 0, last_hash: str = GENESIS_HASH) -> None:
        self.device = device
        self.last_seq = last_seq
        self.last_hash = last_hash

    def add(self, canonical: bytes) -> AuditRecord:
        """Verify the next record and advance; raise AuditChainError naming the record."""
        record = parse_record(canonical)
        if record.device != self.device:
            raise AuditChainError(f"record {record.seq} names device {record.device!r}")
        if record.seq != self.last_seq + 1:
            raise AuditChainError(f"record {record.seq} follows {self.last_seq}: sequence gap")
        if record.prev != self.last_hash:
            raise AuditChainError(f"record {record.seq} does not link to record {self.last_seq}")
        self.last_seq, self.last_hash = record.seq, record.hash
        return record


def verify_chain(device: str, records: Iterable[bytes]) -> int:
    """Verify a whole chain from genesis; return the number of records."""
    verifier = ChainVerifier(device)
    for canonical in records:
        verifier.add(canonical)
    return verifier.last_seq


@dataclass(frozen=True)
class Checkpoint:
    """A device's signed statement: "my chain's record ``seq`` has hash ``sha256``"."""

    device: str
    seq: int
    sha256: str
    time: str

    def to_payload(self) -> bytes:
        return canonical_bytes(
            {
                "_type": "audit-checkpoint",
                "device": self.device,
                "seq": self.seq,
                "sha256": self.sha256,
                "time": self.time,
            }
        )

    @classmethod
    def from_payload(cls, payload: bytes) -> Checkpoint:
        doc = parse_object(payload, "audit checkpoint")
        try:
            checkpoint = cls(
                str(doc["device"]), int(doc["seq"]), str(doc["sha256"]), str(doc["time"])
            )
        except (KeyError, TypeError, ValueError) as e:
            raise MalformedInputError("audit checkpoint is malformed") from e
        if doc.get("_type") != "audit-checkpoint" or checkpoint.seq < 1:
            raise MalformedInputError("audit checkpoint is malformed")
        return checkpoint


def sign_checkpoint(checkpoint: Checkpoint, key: SigningKey) -> Envelope:
    """Sign a checkpoint with the device's audit key."""
    return sign_envelope(CHECKPOINT_TYPE, checkpoint.to_payload(), [key])


def verify_checkpoint(envelope: Envelope, public_key_hex: str, device: str) -> Checkpoint:
    """The checkpoint, if ``public_key_hex`` signed it and it names ``device``."""
    key = PublicKey.from_hex(public_key_hex)
    payload = verify_envelope(
        envelope, CHECKPOINT_TYPE, {key.keyid: key}, [key.keyid], 1, "checkpoint"
    )
    checkpoint = Checkpoint.from_payload(payload)
    if checkpoint.device != device:
        raise AuditChainError(f"checkpoint names device {checkpoint.device!r}, not {device!r}")
    return checkpoint


def sign_receipt(device: str, seq: int, sha256: str, time: str, key: SigningKey) -> Envelope:
    """The controller's countersignature: it holds ``device``'s chain up to ``seq``/``sha256``."""
    payload = canonical_bytes(
        {"_type": "audit-receipt", "device": device, "seq": seq, "sha256": sha256, "time": time}
    )
    return sign_envelope(RECEIPT_TYPE, payload, [key])


def verify_receipt(
    envelope: Envelope,
    keys: Mapping[str, PublicKey],
    keyids: Sequence[str],
    threshold: int,
    device: str,
) -> dict[str, Any]:
    """A receipt's fields, if the fleet's audit role signed it for ``device``."""
    payload = verify_envelope(envelope, RECEIPT_TYPE, keys, keyids, threshold, "audit receipt")
    doc = parse_object(payload, "audit receipt")
    if doc.get("_type") != "audit-receipt" or doc.get("device") != device:
        raise AuditChainError("the receipt is not for this device")
    return doc


def sign_key_attestation(device: str, public_key_hex: str, key: SigningKey) -> Envelope:
    """The fleet's audit key vouching that ``public_key_hex`` is ``device``'s audit key."""
    PublicKey.from_hex(public_key_hex)
    payload = canonical_bytes(
        {"_type": "audit-key", "device": device, "public_key": public_key_hex}
    )
    return sign_envelope(AUDIT_KEY_TYPE, payload, [key])


def verify_key_attestation(
    envelope: Envelope, keys: Mapping[str, PublicKey], keyids: Sequence[str], threshold: int
) -> tuple[str, str]:
    """(device, audit public key hex) if the fleet's audit role signed the attestation."""
    payload = verify_envelope(
        envelope, AUDIT_KEY_TYPE, keys, keyids, threshold, "audit key attestation"
    )
    doc = parse_object(payload, "audit key attestation")
    device, public_key = doc.get("device"), doc.get("public_key")
    if (
        doc.get("_type") != "audit-key"
        or not isinstance(device, str)
        or not isinstance(public_key, str)
    ):
        raise MalformedInputError("audit key attestation is malformed")
    return device, public_key
