"""Canonical JSON (RFC 8785) so that every party hashes and signs the same bytes."""

from __future__ import annotations

from typing import Any

import orjson
import rfc8785

from edgefleet.errors import MalformedInputError

MAX_DOCUMENT_BYTES = 16 * 1024 * 1024


MAX_SAFE_INTEGER = 2**53 - 1


def _plain(value: Any) -> bool:
    """True for values whose RFC 8785 form equals ``orjson.dumps`` with sorted keys.

    That holds for strings, booleans, null, integers within JavaScript's safe range, and
    lists and objects of those whose keys are ASCII (RFC 8785 sorts keys by UTF-16 code
    units, orjson by UTF-8 bytes; they agree on ASCII). Floats always take the slow path.
    Written as a loop over exact types: it runs on every audit record.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str or kind is bool or item is None:
            continue
        if kind is int:
            if -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                continue
            return False
        if kind is dict:
            for key, child in item.items():
                if type(key) is not str or not key.isascii():
                    return False
                stack.append(child)
            continue
        if kind is list:
            stack.extend(item)
            continue
        return False
    return True


def canonical_bytes(value: Any) -> bytes:
    """Encode a JSON-compatible value to RFC 8785 canonical bytes.

    Audit records are encoded on every inference request and checked on every ingest, so
    the common case (no floats, ASCII keys) uses orjson, which produces the same bytes (the
    tests compare it with the reference on every character of the first planes); everything
    else goes through the `rfc8785` reference implementation.
    """
    try:
        if _plain(value):
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        return bytes(rfc8785.dumps(value))
    except (
        rfc8785.CanonicalizationError,
        orjson.JSONEncodeError,
        TypeError,
        ValueError,
        UnicodeEncodeError,
    ) as e:
        raise MalformedInputError(f"value cannot be canonicalized: {e}") from e


def parse_object(data: bytes, what: str) -> dict[str, Any]:
    """Parse bytes that must hold one JSON object, naming ``what`` in any error.

    orjson is strict where the standard library is lenient: it refuses NaN, Infinity,
    lone surrogates and a byte-order mark, none of which a canonical document holds.
    """
    if len(data) > MAX_DOCUMENT_BYTES:
        raise MalformedInputError(f"{what} is larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise MalformedInputError(f"{what} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise MalformedInputError(f"{what} is not a JSON object")
    return value
