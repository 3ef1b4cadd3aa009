"""ReadBlob's hand-written BlobChunk codec agrees with protobuf's, and refuses what it refuses."""

from __future__ import annotations

import random

import pytest
from google.protobuf.message import DecodeError

from edgefleet.errors import MalformedInputError
from edgefleet.serde import blob_chunk_from_wire, blob_chunk_to_wire
from edgefleet.v1 import device_pb2


def _protobuf(message: bytes) -> tuple[int, bytes] | None:
    try:
        chunk = device_pb2.BlobChunk.FromString(message)
    except DecodeError:
        return None
    return chunk.offset, chunk.data


def _ours(message: bytes) -> tuple[int, bytes] | None:
    try:
        offset, data = blob_chunk_from_wire(message)
    except MalformedInputError:
        return None
    return offset, bytes(data)


def test_encoding_is_what_protobuf_reads() -> None:
    """Offsets from 0 to 2**64-1 and data from empty to 1 MiB round-trip through protobuf."""
    rng = random.Random(1)
    for offset in (0, 1, 127, 128, 2**32, 2**63, 2**64 - 1):
        for data in (b"", b"x", rng.randbytes(300), rng.randbytes(1 << 20)):
            wire = blob_chunk_to_wire(offset, data)
            assert _protobuf(wire) == (offset, data)
            assert _ours(wire) == (offset, data)
            if offset:  # protobuf leaves out a zero offset; both forms read the same
                standard = device_pb2.BlobChunk(offset=offset, data=data).SerializeToString()
                assert _ours(standard) == (offset, data)


def _random_message(rng: random.Random) -> bytes:
    """A BlobChunk with extra, repeated and mistyped fields, in any order."""
    parts = []
    for _ in range(rng.randrange(6)):
        kind = rng.randrange(6)
        if kind == 0:
            parts.append(device_pb2.BlobChunk(offset=rng.randrange(2**64)).SerializeToString())
        elif kind == 1:
            parts.append(
                device_pb2.BlobChunk(data=rng.randbytes(rng.randrange(40))).SerializeToString()
            )
        elif kind == 2:  # an unknown varint, fixed64, fixed32 or length-delimited field
            number = rng.choice([3, 15, 16, 2047, 2**29 - 1])
            wire = rng.choice([0, 1, 2, 5])
            body = {0: b"\x96\x01", 1: bytes(8), 2: b"\x03abc", 5: bytes(4)}[wire]
            parts.append(_key(number, wire) + body)
        elif kind == 3:  # a known field with the wrong wire type
            wire = rng.choice([1, 5])
            parts.append(_key(rng.choice([1, 2]), wire) + bytes(8 if wire == 1 else 4))
        else:
            parts.append(blob_chunk_to_wire(rng.randrange(2**40), rng.randbytes(rng.randrange(20))))
    rng.shuffle(parts)
    return b"".join(parts)


def _key(number: int, wire: int) -> bytes:
    value, out = number << 3 | wire, bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def test_random_and_damaged_messages_read_as_protobuf_reads_them() -> None:
    """Whatever protobuf refuses is refused; whatever both read, both read alike."""
    rng = random.Random(7)
    accepted = refused = 0
    for _ in range(20_000):
        message = bytearray(_random_message(rng))
        damage = rng.randrange(4)
        if damage == 1 and message:
            del message[rng.randrange(len(message)) :]  # truncated
        elif damage == 2 and message:
            message[rng.randrange(len(message))] = rng.randrange(256)  # one byte flipped
        elif damage == 3:
            message += rng.randbytes(rng.randrange(1, 12))  # garbage after it
        theirs, ours = _protobuf(bytes(message)), _ours(bytes(message))
        if theirs is None:
            assert ours is None, bytes(message)
            refused += 1
        elif ours is not None:
            assert ours == theirs, bytes(message)
            accepted += 1
    assert accepted > 10_000 and refused > 1_000


@pytest.mark.parametrize(
    "message",
    [b"\x08", b"\x08\xff", b"\x12\x05abc", b"\x08" + b"\xff" * 10 + b"\x01", b"\x00\x00", b"\x0b"],
)
def test_malformed_messages_are_refused(message: bytes) -> None:
    """Truncation, an overlong varint, field number 0 and groups are malformed input."""
    with pytest.raises(MalformedInputError):
        blob_chunk_from_wire(message)
