"""GGUF header reading with hard bounds, so a hostile file cannot make us allocate or loop.

Reads the key/value metadata and tensor shapes (never the weights) and reports the facts
a manifest carries: architecture, parameter count, quantization, context length and the
KV cache a token costs. Every fact is checked against a bound before it can reach a
manifest (and so a signature): a negative or absurd value is refused, never carried.

The reader's cost is bounded too, whatever the file's size: at most ``MAX_HEADER_BYTES``
of header are read (in blocks) and at most ``MAX_ITEMS`` keys, tensors and strings of
arrays are looked at one by one (arrays of numbers are stepped over in blocks).
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from edgefleet.errors import MalformedInputError
from edgefleet.memory import kv_bytes_per_token

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_KV = 65_536
MAX_TENSORS = 65_536
MAX_STRING = 1 << 20
MAX_DIMS = 8
# A real header is well under 16 MiB (a 262k-token vocabulary with its scores and
# merges); these bound a hostile one at a few seconds of CPU and one block of memory.
MAX_HEADER_BYTES = 64 << 20
MAX_ITEMS = 1 << 21
READ_BLOCK = 1 << 20

# The header facts a manifest carries, with the largest value they may take (the largest
# real models need a small fraction of each). Absent means 0 (unknown / not attention).
FACT_BOUNDS: Mapping[str, int] = {
    "context_length": 1 << 24,
    "block_count": 1 << 12,
    "embedding_length": 1 << 20,
    "attention.head_count": 1 << 16,
    "attention.head_count_kv": 1 << 16,
    "attention.key_length": 1 << 16,
    "attention.value_length": 1 << 16,
}
MAX_CONTEXT = FACT_BOUNDS["context_length"]
MAX_TENSOR_DIM = 1 << 40
MAX_PARAMETERS = 1 << 48
ARCHITECTURE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
QUANTIZATION_PATTERN = re.compile(r"^[A-Za-z0-9_]{1,16}$")

# llama.cpp's llama_ftype values as stored in general.file_type.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
    16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
    22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
}  # fmt: skip

_SCALARS = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
    10: "<Q", 11: "<q", 12: "<d",
}  # fmt: skip
_STRING, _ARRAY = 8, 9
# ggml tensor types: (values per block, bytes per block), as ggml defines them
# (tests/edgefleet/test_gguf_extent.py compares them with the gguf package's table).
TENSOR_BLOCKS: Mapping[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 40), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176),
    14: (256, 210), 15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98),
    19: (256, 50), 20: (32, 18), 21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1),
    25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2), 34: (256, 54),
    35: (256, 66), 39: (32, 17),
}  # fmt: skip
DEFAULT_ALIGNMENT = 32
MAX_ALIGNMENT = 1 << 16
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class GgufInfo:
    """What the header of a GGUF file says about the model."""

    version: int
    architecture: str
    parameter_count: int
    quantization: str
    context_length: int
    kv_bytes_per_token: int
    tensor_count: int
    # Where the last tensor's data ends: a file shorter than this is truncated.
    data_end: int
    metadata: dict[str, Any] = field(repr=False)


class _Reader:
    """Reads the header through one buffer, counting bytes and items against the bounds."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.buffer = b""
        self.position = 0  # in buffer
        self.before = 0  # header bytes consumed before the buffer's start
        self.items = 0

    def _need(self, size: int) -> None:
        if self.position + size <= len(self.buffer):
            return
        if self.before + self.position + size > MAX_HEADER_BYTES:
            raise MalformedInputError(
                f"GGUF header is larger than the bound of {MAX_HEADER_BYTES >> 20} MiB"
            )
        rest = self.buffer[self.position :]
        more = self.stream.read(max(size - len(rest), READ_BLOCK))
        self.before += self.position
        self.buffer, self.position = rest + more, 0
        if len(self.buffer) < size:
            raise MalformedInputError("GGUF header is truncated")

    def count(self, items: int) -> None:
        self.items += items
        if self.items > MAX_ITEMS:
            raise MalformedInputError(f"GGUF header holds more than {MAX_ITEMS} items")

    def take(self, size: int) -> bytes:
        self._need(size)
        data = self.buffer[self.position : self.position + size]
        self.position += size
        return data

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def _length(self) -> int:
        self._need(8)
        (length,) = _U64.unpack_from(self.buffer, self.position)
        self.position += 8
        if length > MAX_STRING:
            raise MalformedInputError(f"GGUF string of {length} bytes exceeds the bound")
        return int(length)

    @property
    def consumed(self) -> int:
        """Header bytes read so far."""
        return self.before + self.position

    def string(self) -> str:
        try:
            return self.take(self._length()).decode("utf-8")
        except UnicodeDecodeError as e:
            raise MalformedInputError("GGUF string is not UTF-8") from e

    def skip_strings(self, count: int) -> None:
        """Step over ``count`` strings of an array (a vocabulary) without decoding them."""
        unpack = _U64.unpack_from
        for _ in range(count):
            if self.position + 8 > len(self.buffer):
                self._need(8)
            (length,) = unpack(self.buffer, self.position)
            if length > MAX_STRING:
                raise MalformedInputError(f"GGUF string of {length} bytes exceeds the bound")
            self.position += 8
            if self.position + length > len(self.buffer):
                self._need(length)
            self.position += length

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_kind, count = self.scalar("<I"), self.scalar("<Q")
            if item_kind == _ARRAY:
                raise MalformedInputError("GGUF arrays of arrays are not supported")
            if item_kind in _SCALARS:  # fixed-size items: step over them in one bounded take
                size = struct.calcsize(_SCALARS[item_kind]) * count
                while size:
                    step = min(size, READ_BLOCK)
                    self.take(step)
                    size -= step
            elif item_kind == _STRING:
                self.count(count)
                self.skip_strings(count)
            else:
                raise MalformedInputError(f"GGUF array item type {item_kind} is unknown")
            return ("array", count)
        raise MalformedInputError(f"GGUF value type {kind} is unknown")


def read_gguf_header(stream: BinaryIO) -> GgufInfo:
    """Parse the header from a binary stream positioned at the start of the file."""
    reader = _Reader(stream)
    if reader.take(4) != MAGIC:
        raise MalformedInputError("not a GGUF file (bad magic)")
    version = reader.scalar("<I")
    if version not in SUPPORTED_VERSIONS:
        raise MalformedInputError(f"GGUF version {version} is not supported")
    tensor_count, kv_count = reader.scalar("<Q"), reader.scalar("<Q")
    if tensor_count > MAX_TENSORS or kv_count > MAX_KV:
        raise MalformedInputError("GGUF header claims too many tensors or keys")
    reader.count(tensor_count + kv_count)
    metadata: dict[str, Any] = {}
    for _ in range(kv_count):
        key = reader.string()
        metadata[key] = reader.value(reader.scalar("<I"))
    parameters = 0
    tensors_end = 0  # relative to the start of the data section
    for _ in range(tensor_count):
        name = reader.string()
        dims = reader.scalar("<I")
        if dims > MAX_DIMS:
            raise MalformedInputError(f"GGUF tensor has {dims} dimensions")
        count = 1
        for _ in range(dims):
            size = reader.scalar("<Q")
            if size > MAX_TENSOR_DIM:
                raise MalformedInputError(f"GGUF tensor dimension {size} exceeds the bound")
            count *= size
        kind, offset = reader.scalar("<I"), reader.scalar("<Q")
        parameters += count
        if parameters > MAX_PARAMETERS:
            raise MalformedInputError("GGUF tensors hold more parameters than the bound")
        tensors_end = max(tensors_end, offset + _tensor_bytes(name, kind, count))
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if (
        not isinstance(alignment, int)
        or isinstance(alignment, bool)
        or not 0 < alignment <= MAX_ALIGNMENT
        or alignment & (alignment - 1)
    ):
        raise MalformedInputError(f"GGUF general.alignment = {alignment!r} is not a power of 2")
    data_start = -(-reader.consumed // alignment) * alignment
    return _summarize(version, tensor_count, parameters, data_start + tensors_end, metadata)


def _tensor_bytes(name: str, kind: int, count: int) -> int:
    if kind not in TENSOR_BLOCKS:
        raise MalformedInputError(f"GGUF tensor {name[:64]!r} has unknown type {kind}")
    values, size = TENSOR_BLOCKS[kind]
    if count % values:
        raise MalformedInputError(
            f"GGUF tensor {name[:64]!r}: {count} values do not fill blocks of {values}"
        )
    return count // values * size


def header_facts(metadata: Mapping[str, Any], architecture: str) -> dict[str, int]:
    """The bounded integer facts (``FACT_BOUNDS``) of ``architecture``; absent ones are 0.

    Raises MalformedInputError for a fact that is negative, over its bound or not an
    integer. A per-layer array (some models vary heads by layer) counts as absent."""
    facts = {}
    for suffix, bound in FACT_BOUNDS.items():
        key = f"{architecture}.{suffix}"
        value = metadata.get(key, 0)
        if isinstance(value, tuple):  # ("array", n)
            value = 0
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= bound:
            raise MalformedInputError(f"GGUF key {key} = {value!r} is not an integer 0..{bound}")
        facts[suffix] = value
    return facts


def _summarize(
    version: int, tensors: int, parameters: int, data_end: int, metadata: dict[str, Any]
) -> GgufInfo:
    architecture = metadata.get("general.architecture")
    if not isinstance(architecture, str) or not ARCHITECTURE_PATTERN.match(architecture):
        raise MalformedInputError(
            "GGUF general.architecture is missing or not 1-64 chars of a-z, 0-9, '.', '_', '-'"
        )
    facts = header_facts(metadata, architecture)
    file_type = metadata.get("general.file_type")
    quantization = FILE_TYPES.get(file_type, "unknown") if isinstance(file_type, int) else "unknown"
    return GgufInfo(
        version=version,
        architecture=architecture,
        parameter_count=parameters,
        quantization=quantization,
        context_length=facts["context_length"],
        kv_bytes_per_token=kv_bytes_per_token(facts),
        tensor_count=tensors,
        data_end=data_end,
        metadata=metadata,
    )


def read_gguf_file(path: Path) -> GgufInfo:
    """Parse the header of the GGUF file at ``path``; refuse a file that ends before its
    last tensor's data does (truncated: llama.cpp would refuse to load it)."""
    try:
        with path.open("rb") as stream:
            info = read_gguf_header(stream)
            size = os.fstat(stream.fileno()).st_size
    except OSError as e:
        raise MalformedInputError(f"cannot read {path}: {e.strerror}") from e
    if size < info.data_end:
        raise MalformedInputError(
            f"GGUF file is truncated: its tensors end at byte {info.data_end}, "
            f"the file at byte {size}"
        )
    return info
