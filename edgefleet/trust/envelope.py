"""DSSE-style signed envelopes: signatures bind the payload type and the exact payload bytes."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol, Self

from edgefleet.errors import MalformedInputError, SignatureError

if TYPE_CHECKING:  # annotations only: cryptography loads where keys are used
    from edgefleet.trust.keys import PublicKey, SigningKey

MAX_SIGNATURES = 32


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding of type and payload."""
    encoded_type = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(encoded_type), encoded_type, len(payload), payload)


@dataclass(frozen=True)
class Signature:
    """One signature and the id of the key that made it."""

    keyid: str
    sig: bytes


@dataclass(frozen=True)
class Envelope:
    """Payload bytes with their type and signatures."""

    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...]

    def to_json(self) -> bytes:
        """Encode in the DSSE JSON form (base64 payload and signatures)."""
        doc = {
            "payloadType": self.payload_type,
            "payload": base64.b64encode(self.payload).decode("ascii"),
            "signatures": [
                {"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode("ascii")}
                for s in self.signatures
            ],
        }
        return json.dumps(doc, sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> Envelope:
        """Decode the DSSE JSON form, refusing anything malformed."""
        try:
            doc = json.loads(data)
            signatures = tuple(
                Signature(str(s["keyid"]), base64.b64decode(s["sig"], validate=True))
                for s in doc["signatures"]
            )
            return cls(
                str(doc["payloadType"]),
                base64.b64decode(doc["payload"], validate=True),
                signatures,
            )
        except (ValueError, KeyError, TypeError, binascii.Error) as e:
            raise MalformedInputError(f"envelope is malformed: {e}") from e


def sign_envelope(payload_type: str, payload: bytes, keys: Iterable[SigningKey]) -> Envelope:
    """Sign ``payload`` with every key given."""
    message = pae(payload_type, payload)
    signatures = tuple(Signature(k.keyid, k.sign(message)) for k in keys)
    return Envelope(payload_type, payload, signatures)


class SignedDocument(Protocol):
    """Metadata a role signs (root, targets, timestamp, policy): canonical bytes out, and
    the validating parser every verifier uses to read them back."""

    PAYLOAD_TYPE: ClassVar[str]

    def to_payload(self) -> bytes: ...

    @classmethod
    def from_payload(cls, payload: bytes) -> Self: ...


def sign_document(document: SignedDocument, keys: Iterable[SigningKey]) -> Envelope:
    """Sign ``document`` once its bytes parse back, with the parser a verifier uses, to an
    equal document: nothing is signed that a device would refuse to read."""
    payload = document.to_payload()
    if type(document).from_payload(payload) != document:
        raise MalformedInputError(f"{type(document).__name__} does not survive its own encoding")
    return sign_envelope(document.PAYLOAD_TYPE, payload, keys)


def verify_envelope(
    envelope: Envelope,
    expected_type: str,
    keys: Mapping[str, PublicKey],
    allowed_keyids: Iterable[str],
    threshold: int,
    role: str,
) -> bytes:
    """Return the payload if at least ``threshold`` distinct allowed keys signed it."""
    if envelope.payload_type != expected_type:
        raise SignatureError(
            f"{role}: payload type {envelope.payload_type!r}, expected {expected_type!r}"
        )
    if len(envelope.signatures) > MAX_SIGNATURES:
        raise SignatureError(f"{role}: too many signatures")
    if threshold < 1:
        raise SignatureError(f"{role}: threshold must be at least 1")
    allowed = set(allowed_keyids)
    message = pae(envelope.payload_type, envelope.payload)
    valid: set[str] = set()
    for signature in envelope.signatures:
        key = keys.get(signature.keyid)
        if signature.keyid in allowed and key is not None and key.verifies(signature.sig, message):
            valid.add(signature.keyid)
    if len(valid) < threshold:
        raise SignatureError(
            f"{role}: {len(valid)} valid signature(s) from its keys, threshold is {threshold}"
        )
    return envelope.payload
