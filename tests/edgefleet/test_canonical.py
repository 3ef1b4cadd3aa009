"""The fast canonical encoder produces exactly the RFC 8785 reference bytes."""

from __future__ import annotations

import random
from typing import Any

import pytest
import rfc8785

from edgefleet.canonical import canonical_bytes, parse_object
from edgefleet.errors import MalformedInputError

ALPHABET = [
    "a",
    "Z",
    "0",
    " ",
    '"',
    "\\",
    "/",
    "\n",
    "\t",
    "\x00",
    "\x1f",
    "\x7f",
    "é",
    "ß",
    "€",
    "\u2028",
    "😀",
    "\ufeff",
]


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(7 if depth < 3 else 4)
    if kind == 0:
        return "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(6)))
    if kind == 1:
        return rng.choice([0, -1, 1, 2**53 - 1, -(2**53 - 1), 42, 10**15])
    if kind == 2:
        return rng.choice([True, False, None])
    if kind == 3:
        return rng.choice(["", "x"])
    if kind == 4:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["a", "B", "_type", "seq", "device", "zz", "a1", "A", "details", ""]
    return {rng.choice(keys): _value(rng, depth + 1) for _ in range(rng.randrange(5))}


def test_matches_the_reference_on_random_values() -> None:
    """Five thousand random values (escapes, non-ASCII, nesting) encode identically."""
    rng = random.Random(8785)
    for _ in range(5000):
        value = _value(rng)
        assert canonical_bytes(value) == bytes(rfc8785.dumps(value)), value


def test_every_character_of_the_first_planes_encodes_like_the_reference() -> None:
    """Each character up to U+2FFFF (surrogates aside), in strings and in values, as RFC 8785."""
    characters = [chr(c) for c in range(0x30000) if not 0xD800 <= c <= 0xDFFF]
    for start in range(0, len(characters), 256):
        run = characters[start : start + 256]
        value = {"s": "".join(run), "l": run}
        assert canonical_bytes(value) == bytes(rfc8785.dumps(value)), run[0]


def test_parsing_refuses_what_no_canonical_document_holds() -> None:
    """NaN, Infinity, a lone surrogate escape, a byte-order mark and bad UTF-8 are malformed."""
    for bad in (
        b'{"a":NaN}',
        b'{"a":Infinity}',
        b'{"a":"\\ud800"}',
        b"\xef\xbb\xbf{}",
        b'{"a":"\xff"}',
    ):
        with pytest.raises(MalformedInputError):
            parse_object(bad, "test document")
    assert parse_object(b'{"a":[1,"\\u00e9"]}', "test document") == {"a": [1, "é"]}


def test_floats_and_non_ascii_keys_use_the_reference() -> None:
    """Values outside the fast path still come out canonical."""
    for value in ({"é": 1, "e": 2, "\ue000": 3, "😀": 4}, {"f": 1.5, "g": 1e21}, [0.1, -0.0]):
        assert canonical_bytes(value) == bytes(rfc8785.dumps(value))


def test_unencodable_values_are_malformed_input() -> None:
    """Lone surrogates, huge integers and foreign types are refused cleanly."""
    for bad in ("\ud800", 2**60, {"k": object()}, float("nan")):
        with pytest.raises(MalformedInputError):
            canonical_bytes(bad)


def test_audit_record_encoder_matches_the_reference() -> None:
    """The assembled audit record bytes equal RFC 8785 of the whole record, for odd strings too."""
    from edgefleet.audit import AuditEvent, encode_record

    rng = random.Random(6)
    for _ in range(2000):
        words = ["".join(rng.choice(ALPHABET) for _ in range(rng.randrange(5))) for _ in range(6)]
        details = _value(rng) if rng.random() < 0.5 else {"n": rng.randrange(10**6)}
        event = AuditEvent(
            words[0], words[1], words[2], words[3], details if isinstance(details, dict) else {}
        )
        seq = rng.randrange(1, 2**53)
        encoded = encode_record(words[4], seq, words[5], event, "ab" * 32)
        reference = rfc8785.dumps(
            {
                "seq": seq,
                "device": words[4],
                "time": words[5],
                "actor": words[0],
                "action": words[1],
                "target": words[2],
                "outcome": words[3],
                "details": dict(event.details),
                "prev": "ab" * 32,
            }
        )
        assert encoded == bytes(reference)
