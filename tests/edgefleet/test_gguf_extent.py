"""A GGUF file must hold all its tensors' data: a truncated copy is refused by the header
reader (at publish on the controller, after download on the device), not by llama.cpp."""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf.constants import GGML_QUANT_SIZES

from edgefleet.bundled import bundled_model_path
from edgefleet.errors import MalformedInputError
from edgefleet.gguf import TENSOR_BLOCKS, read_gguf_file
from tests.ggufkit import write_tiny_gguf


def test_block_sizes_are_ggmls() -> None:
    theirs = {int(kind): sizes for kind, sizes in GGML_QUANT_SIZES.items()}
    assert {kind: theirs[kind] for kind in TENSOR_BLOCKS} == dict(TENSOR_BLOCKS)


def test_the_bundled_model_ends_where_its_last_tensor_does() -> None:
    path = bundled_model_path()
    assert read_gguf_file(path).data_end == path.stat().st_size


@pytest.mark.parametrize("cut", [1, 4096, 5 << 20])
def test_a_truncated_copy_is_refused(tmp_path: Path, cut: int) -> None:
    source = bundled_model_path()
    copy = tmp_path / "cut.gguf"
    with source.open("rb") as whole:
        copy.write_bytes(whole.read(source.stat().st_size - cut))
    with pytest.raises(MalformedInputError, match="GGUF file is truncated"):
        read_gguf_file(copy)


def test_a_small_model_with_its_data_and_trailing_bytes_is_accepted(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    info = read_gguf_file(path)
    assert 0 <= path.stat().st_size - info.data_end < 32  # the writer pads to the alignment
    with path.open("ab") as extra:  # padding after the data is harmless
        extra.write(b"\0" * 64)
    read_gguf_file(path)
    path.write_bytes(path.read_bytes()[: info.data_end - 1])
    with pytest.raises(MalformedInputError, match="truncated"):
        read_gguf_file(path)
