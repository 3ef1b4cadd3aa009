"""Canonical JSON (RFC 8785) so that every party hashes and signs the same bytes."""

from __future__ import annotations

import json
from typing import Any

import rfc8785

from edgefleet.errors import MalformedInputError

MAX_DOCUMENT_BYTES = 16 * 1024 * 1024


def canonical_bytes(value: Any) -> bytes:
    """Encode a JSON-compatible value to RFC 8785 canonical bytes."""
    try:
        return bytes(rfc8785.dumps(value))
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as e:
        raise MalformedInputError(f"value cannot be canonicalized: {e}") from e


def parse_object(data: bytes, what: str) -> dict[str, Any]:
    """Parse bytes that must hold one JSON object, naming ``what`` in any error."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise MalformedInputError(f"{what} is larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MalformedInputError(f"{what} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise MalformedInputError(f"{what} is not a JSON object")
    return value
