"""Small valid GGUF files for tests, written with the reference `gguf` package."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np


def write_tiny_gguf(
    path: Path,
    arch: str = "llama",
    file_type: int = 2,
    context: int = 512,
    seed: int = 0,
    rows: int = 8,
) -> Path:
    """A tiny GGUF file; ``seed`` changes the weights, ``rows`` its size (16 bytes a row)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(context)
    writer.add_file_type(file_type)
    rng = np.random.default_rng(seed)
    writer.add_tensor("token_embd.weight", rng.standard_normal((rows, 4)).astype(np.float32))
    writer.add_tensor("output.weight", rng.standard_normal((3, 4)).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_gguf_with_facts(path: Path, facts: Mapping[str, object], arch: str = "llama") -> Path:
    """A tiny GGUF whose header says ``facts`` (``{arch}.KEY`` → value), written as int32
    for ints (so negative values can be said), as strings and floats otherwise: the shape
    of the hostile file of the first adversarial review."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in facts.items():
        name = f"{arch}.{key}"
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise TypeError(f"unsupported fact {key}={value!r}")
        if isinstance(value, str):
            writer.add_string(name, value)
        elif isinstance(value, float):
            writer.add_float32(name, value)
        elif -(2**31) <= value < 2**31:
            writer.add_int32(name, value)
        else:
            writer.add_uint64(name, value)
    writer.add_file_type(2)
    writer.add_tensor("output.weight", np.zeros((3, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
