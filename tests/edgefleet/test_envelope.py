"""Signed envelopes bind the payload type and the exact payload bytes."""

from __future__ import annotations

import pytest

from edgefleet.errors import MalformedInputError, SignatureError
from edgefleet.trust.envelope import Envelope, Signature, pae, sign_envelope, verify_envelope
from edgefleet.trust.keys import SigningKey


def _verify(envelope: Envelope, keys: list[SigningKey], threshold: int = 1) -> bytes:
    return verify_envelope(
        envelope, "t", {k.keyid: k.public for k in keys}, [k.keyid for k in keys], threshold, "role"
    )


def test_valid_signature_returns_exact_payload() -> None:
    """A payload signed by an allowed key verifies and comes back byte for byte."""
    key = SigningKey.generate()
    envelope = sign_envelope("t", b'{"a": 1}', [key])
    assert _verify(envelope, [key]) == b'{"a": 1}'


def test_changed_payload_is_refused() -> None:
    """One changed byte of payload invalidates the signature."""
    key = SigningKey.generate()
    envelope = sign_envelope("t", b"payload", [key])
    tampered = Envelope("t", b"paylaod", envelope.signatures)
    with pytest.raises(SignatureError):
        _verify(tampered, [key])


def test_payload_type_is_bound_into_the_signature() -> None:
    """A signature made for one payload type does not verify under another."""
    key = SigningKey.generate()
    envelope = sign_envelope("other", b"payload", [key])
    relabelled = Envelope("t", envelope.payload, envelope.signatures)
    with pytest.raises(SignatureError, match="0 valid"):
        _verify(relabelled, [key])


def test_pae_separates_type_and_payload() -> None:
    """The pre-authentication encoding is unambiguous about where the type ends."""
    assert pae("ab", b"c") != pae("a", b"bc")


def test_signature_by_an_unnamed_key_does_not_count() -> None:
    """A valid signature from a key the role does not name is ignored."""
    allowed, rogue = SigningKey.generate(), SigningKey.generate()
    envelope = sign_envelope("t", b"payload", [rogue])
    with pytest.raises(SignatureError, match="threshold is 1"):
        verify_envelope(envelope, "t", {rogue.keyid: rogue.public}, [allowed.keyid], 1, "targets")


def test_threshold_counts_distinct_keys() -> None:
    """Two signatures by the same key do not meet a threshold of two."""
    a, b = SigningKey.generate(), SigningKey.generate()
    one = sign_envelope("t", b"p", [a])
    doubled = Envelope("t", b"p", one.signatures * 2)
    with pytest.raises(SignatureError):
        _verify(doubled, [a, b], threshold=2)
    assert _verify(sign_envelope("t", b"p", [a, b]), [a, b], threshold=2) == b"p"


def test_json_round_trip_and_malformed_json() -> None:
    """The DSSE JSON form round-trips; garbage is a MalformedInputError, not a crash."""
    key = SigningKey.generate()
    envelope = sign_envelope("t", b"\x00\xffbytes", [key])
    assert Envelope.from_json(envelope.to_json()) == envelope
    for garbage in (
        b"",
        b"[]",
        b'{"payloadType": "t"}',
        b'{"payloadType":"t","payload":"!!","signatures":[]}',
    ):
        with pytest.raises(MalformedInputError):
            Envelope.from_json(garbage)


def test_forged_signature_bytes_are_refused() -> None:
    """Random bytes claiming to be the allowed key's signature do not verify."""
    key = SigningKey.generate()
    forged = Envelope("t", b"p", (Signature(key.keyid, b"\x00" * 64),))
    with pytest.raises(SignatureError):
        _verify(forged, [key])
