"""The fast canonical encoder produces exactly the RFC 8785 reference bytes."""

from __future__ import annotations

import random
from typing import Any

import pytest
import rfc8785

from edgefleet.canonical import canonical_bytes
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


def test_floats_and_non_ascii_keys_use_the_reference() -> None:
    """Values outside the fast path still come out canonical."""
    for value in ({"é": 1, "e": 2, "\ue000": 3, "😀": 4}, {"f": 1.5, "g": 1e21}, [0.1, -0.0]):
        assert canonical_bytes(value) == bytes(rfc8785.dumps(value))


def test_unencodable_values_are_malformed_input() -> None:
    """Lone surrogates, huge integers and foreign types are refused cleanly."""
    for bad in ("\ud800", 2**60, {"k": object()}, float("nan")):
        with pytest.raises(MalformedInputError):
            canonical_bytes(bad)
