"""Fixtures shared across test packages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm2_f16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An F16 GGUF of the bundled Q4_1 SmolLM2-135M, dequantized by llama.cpp's quantizer:
    real weights for the quantization pipeline (DESIGN §5)."""
    from controller.quantization.pipeline import quantize_file
    from edgefleet.bundled import bundled_model_path

    path = tmp_path_factory.mktemp("f16") / "smollm2-f16.gguf"
    quantize_file(bundled_model_path(), path, "f16", os.cpu_count() or 1, lambda *_: None)
    return path
