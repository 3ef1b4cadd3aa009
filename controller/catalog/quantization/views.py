"""What `models report` shows: each published version and the speeds devices measured.
Plain dataclasses without the store, shared by the server and the operator client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class VersionView:
    """One published version of a model, with its evaluation when it is a variant."""

    version: str
    sha256: str
    length: int
    quantization: str
    published_at: str
    evaluation: dict[str, Any] | None


@dataclass(frozen=True)
class ClassSpeed:
    """Median `edgefleet-agent bench` figures of one version on one class of device."""

    version: str
    device_class: str
    devices: int
    prompt_tokens_per_second: float
    generation_tokens_per_second: float
