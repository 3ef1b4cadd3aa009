"""Downloads are bounded by the manifest's length and checked against its SHA-256."""

from __future__ import annotations

import hashlib

import pytest

from edgefleet.errors import HashMismatchError
from edgefleet.trust.digest import BoundedDigest

DATA = b"x" * 1000
SHA = hashlib.sha256(DATA).hexdigest()


def test_exact_bytes_pass() -> None:
    """The right bytes in any chunking verify."""
    digest = BoundedDigest(SHA, len(DATA))
    for i in range(0, len(DATA), 333):
        digest.update(DATA[i : i + 333])
    digest.finish()


def test_bytes_past_the_length_are_refused_before_hashing() -> None:
    """A peer that sends more than the manifest says is cut off at once."""
    digest = BoundedDigest(SHA, len(DATA))
    digest.update(DATA)
    with pytest.raises(HashMismatchError, match="longer"):
        digest.update(b"y")


def test_short_or_wrong_bytes_fail_at_finish() -> None:
    """Too few bytes, or the right length with a changed byte, fail verification."""
    short = BoundedDigest(SHA, len(DATA))
    short.update(DATA[:-1])
    with pytest.raises(HashMismatchError, match="999 bytes"):
        short.finish()
    changed = BoundedDigest(SHA, len(DATA))
    changed.update(DATA[:-1] + b"y")
    with pytest.raises(HashMismatchError, match="does not match"):
        changed.finish()
