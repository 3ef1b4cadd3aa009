"""The bounded GGUF header reader: real files, files written by `gguf`, and hostile input."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest

from edgefleet.bundled import bundled_model_path
from edgefleet.errors import MalformedInputError
from edgefleet.gguf import read_gguf_file, read_gguf_header
from tests.ggufkit import write_tiny_gguf


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
