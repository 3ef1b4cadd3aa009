"""GGUF header reading with hard bounds, so a hostile file cannot make us allocate or loop.

Reads the key/value metadata and tensor shapes (never the weights) and reports the facts
a manifest carries: architecture, parameter count, quantization and context length.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from edgefleet.errors import MalformedInputError
from edgefleet.memory import kv_bytes_per_token

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_KV = 100_000
MAX_TENSORS = 1_000_000
MAX_STRING = 1 << 20
MAX_ARRAY = 1 << 24
MAX_DIMS = 8

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
    metadata: dict[str, Any] = field(repr=False)


class _Reader:
    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream

    def take(self, size: int) -> bytes:
        data = self.stream.read(size)
        if len(data) != size:
            raise MalformedInputError("GGUF header is truncated")
        return data

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        length = self.scalar("<Q")
        if length > MAX_STRING:
            raise MalformedInputError(f"GGUF string of {length} bytes exceeds the bound")
        try:
            return self.take(length).decode("utf-8")
        except UnicodeDecodeError as e:
            raise MalformedInputError("GGUF string is not UTF-8") from e

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_kind, count = self.scalar("<I"), self.scalar("<Q")
            if count > MAX_ARRAY or item_kind == _ARRAY:
                raise MalformedInputError("GGUF array is too long or nested")
            if item_kind in _SCALARS:  # skip fixed-size items without decoding them
                self.take(struct.calcsize(_SCALARS[item_kind]) * count)
            else:
                for _ in range(count):
                    self.value(item_kind)
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
    metadata: dict[str, Any] = {}
    for _ in range(kv_count):
        key = reader.string()
        metadata[key] = reader.value(reader.scalar("<I"))
    parameters = 0
    for _ in range(tensor_count):
        reader.string()
        dims = reader.scalar("<I")
        if dims > MAX_DIMS:
            raise MalformedInputError(f"GGUF tensor has {dims} dimensions")
        count = 1
        for _ in range(dims):
            count *= reader.scalar("<Q")
        reader.take(4 + 8)  # tensor type and data offset
        parameters += count
    return _summarize(version, tensor_count, parameters, metadata)


def _summarize(version: int, tensors: int, parameters: int, metadata: dict[str, Any]) -> GgufInfo:
    architecture = metadata.get("general.architecture")
    if not isinstance(architecture, str) or not architecture:
        raise MalformedInputError("GGUF header has no general.architecture")
    context_length = metadata.get(f"{architecture}.context_length", 0)
    file_type = metadata.get("general.file_type")
    quantization = FILE_TYPES.get(file_type, "unknown") if isinstance(file_type, int) else "unknown"
    return GgufInfo(
        version=version,
        architecture=architecture,
        parameter_count=parameters,
        quantization=quantization,
        context_length=int(context_length) if isinstance(context_length, int) else 0,
        kv_bytes_per_token=kv_bytes_per_token(metadata, architecture),
        tensor_count=tensors,
        metadata=metadata,
    )


def read_gguf_file(path: Path) -> GgufInfo:
    """Parse the header of the GGUF file at ``path``."""
    try:
        with path.open("rb") as stream:
            return read_gguf_header(stream)
    except OSError as e:
        raise MalformedInputError(f"cannot read {path}: {e.strerror}") from e
