"""Small valid GGUF files for tests, written with the reference `gguf` package."""

from __future__ import annotations

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
