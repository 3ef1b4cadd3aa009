"""The bounded GGUF header reader: real files, files written by `gguf`, and hostile input."""

from __future__ import annotations

import io
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.bundled import bundled_model_path
from edgefleet.errors import MalformedInputError
from edgefleet.gguf import (
    MAX_HEADER_BYTES,
    MAX_ITEMS,
    READ_BLOCK,
    read_gguf_file,
    read_gguf_header,
)
from tests.ggufkit import write_gguf_with_facts, write_tiny_gguf


def test_tiny_gguf_written_by_reference_writer(tmp_path: Path) -> None:
    """Architecture, context length, quant type and parameter count are read correctly."""
    info = read_gguf_file(write_tiny_gguf(tmp_path / "t.gguf"))
    assert (info.architecture, info.context_length, info.quantization) == ("llama", 512, "Q4_0")
    assert info.parameter_count == 8 * 4 + 3 * 4
    assert info.tensor_count == 2


def test_bundled_model_header_matches_reference_reader() -> None:
    """On the real SmolLM2 file our reader agrees with `gguf.GGUFReader`."""
    import gguf

    path = bundled_model_path()
    info = read_gguf_file(path)
    reference = gguf.GGUFReader(str(path))
    expected_params = sum(int(np.prod(t.shape)) for t in reference.tensors)
    assert info.architecture == "llama"
    assert info.quantization == "Q4_1"
    assert info.context_length == 8192
    assert info.parameter_count == expected_params
    assert 130_000_000 < info.parameter_count < 140_000_000


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "truncated"),
        (b"PK\x03\x04 this is a zip", "bad magic"),
        (b"GGUF" + struct.pack("<I", 99), "version 99"),
        (b"GGUF" + struct.pack("<IQQ", 3, 2**40, 0), "too many"),
        (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**40), "exceeds the bound"),
    ],
)
def test_hostile_headers_are_refused(data: bytes, reason: str) -> None:
    """Non-GGUF, unsupported and absurd headers raise MalformedInputError without allocating."""
    with pytest.raises(MalformedInputError, match=reason):
        read_gguf_header(io.BytesIO(data))


def test_truncated_real_header_is_refused(tmp_path: Path) -> None:
    """The first 4 KiB of a real model is refused as truncated, not misread."""
    with bundled_model_path().open("rb") as f:
        head = f.read(4096)
    with pytest.raises(MalformedInputError, match="truncated"):
        read_gguf_header(io.BytesIO(head))


def test_text_file_is_not_gguf(tmp_path: Path) -> None:
    """A text file is refused with a clear reason."""
    path = tmp_path / "notes.gguf"
    path.write_text("hello")
    with pytest.raises(MalformedInputError, match="not a GGUF file"):
        read_gguf_file(path)


REVIEW_H1_FACTS = {"context_length": -5, "block_count": -30, "attention.head_count": -9}


@pytest.mark.parametrize(
    "facts, key",
    [
        (REVIEW_H1_FACTS, "llama.context_length"),
        ({"block_count": -1, "embedding_length": 64, "attention.head_count": 4}, "block_count"),
        ({"attention.head_count_kv": -2}, "head_count_kv"),
        ({"context_length": 2**40}, "context_length"),
        ({"block_count": 1_000_000}, "block_count"),
        ({"embedding_length": "wide"}, "embedding_length"),
        ({"attention.key_length": 1.5}, "key_length"),
    ],
)
def test_negative_absurd_or_mistyped_facts_are_refused(
    tmp_path: Path, facts: dict[str, object], key: str
) -> None:
    """Review hole H1: a header fact that is negative, past its bound or not an integer is
    refused by name, so it can never reach a manifest (nor a signature)."""
    path = write_gguf_with_facts(tmp_path / "hostile.gguf", facts)
    with pytest.raises(MalformedInputError, match=key):
        read_gguf_file(path)


def test_the_review_file_is_small_and_refused(tmp_path: Path) -> None:
    """The review's file: a few hundred bytes whose negative facts bricked the fleet."""
    path = write_gguf_with_facts(tmp_path / "h1.gguf", REVIEW_H1_FACTS)
    assert path.stat().st_size < 512
    with pytest.raises(MalformedInputError, match="is not an integer 0..16777216"):
        read_gguf_file(path)


def test_architecture_names_are_bounded(tmp_path: Path) -> None:
    """An architecture name that is long or holds control characters is refused."""
    path = write_tiny_gguf(tmp_path / "a.gguf", arch="llama\x1b[2J" + "x" * 80)
    with pytest.raises(MalformedInputError, match="general.architecture"):
        read_gguf_file(path)


class _EmptyStrings(io.RawIOBase):
    """A GGUF header with one string array of ``count`` empty strings, made up on the fly
    (never held in memory), that counts how many bytes were read from it."""

    def __init__(self, count: int) -> None:
        kv = struct.pack("<Q", 20) + b"general.architecture" + struct.pack("<IQ", 8, 5) + b"llama"
        array = struct.pack("<Q", 3) + b"voc" + struct.pack("<IIQ", 9, 8, count)
        self.head = b"GGUF" + struct.pack("<IQQ", 3, 0, 2) + kv + array
        self.size = len(self.head) + 8 * count
        self.position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        size = min(len(view), self.size - self.position)
        for i in range(size):  # only the head is not zeros
            at = self.position + i
            view[i] = self.head[at] if at < len(self.head) else 0
            if at >= len(self.head):
                view[i:size] = bytes(size - i)
                break
        self.position += size
        return size


def test_a_huge_string_array_is_refused_at_once() -> None:
    """Review hole L13: an array claiming more strings than the bound is refused before
    one is read (the review's 32 MB array cost the controller 11 s)."""
    stream = _EmptyStrings(MAX_ITEMS + 1)
    started = time.process_time()
    with pytest.raises(MalformedInputError, match="more than"):
        read_gguf_header(io.BufferedReader(stream))
    assert stream.position < READ_BLOCK + 4096
    assert time.process_time() - started < 1


def test_header_bytes_read_are_bounded_whatever_the_file_size() -> None:
    """A header of 1 KiB strings running past the header bound: reading stops there."""
    string = struct.pack("<Q", 1016) + b"a" * 1016
    count = MAX_HEADER_BYTES // len(string) + 8
    kv = struct.pack("<Q", 20) + b"general.architecture" + struct.pack("<IQ", 8, 5) + b"llama"
    array = struct.pack("<Q", 3) + b"voc" + struct.pack("<IIQ", 9, 8, count)
    stream = io.BytesIO(b"GGUF" + struct.pack("<IQQ", 3, 0, 2) + kv + array + string * count)
    with pytest.raises(MalformedInputError, match="larger than the bound of 64 MiB"):
        read_gguf_header(stream)
    assert stream.tell() <= MAX_HEADER_BYTES + READ_BLOCK
