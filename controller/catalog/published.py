"""What a publish answers: the version now in signed targets and the facts read from its
GGUF header (a plain dataclass, shared by the server and the operator client)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PublishedVersion:
    """A model version the controller checked, stored and signed into targets."""

    name: str
    version: str
    sha256: str
    length: int
    architecture: str
    parameter_count: int
    quantization: str
    context_length: int
    targets_version: int
