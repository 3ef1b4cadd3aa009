"""What a publish answers (the version now in signed targets and the facts read from its
GGUF header) and what the catalog lists: plain dataclasses, shared by the server and the
operator client."""

from __future__ import annotations

from dataclasses import dataclass, field


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


@dataclass(frozen=True)
class CatalogEntry:
    """One published model version and where it is in use (`edgefleetctl models list`)."""

    name: str
    version: str
    sha256: str
    length: int
    quantization: str
    published_at: str
    # Devices whose last report has this version active, and devices assigned it.
    running: int = 0
    assigned: int = 0
    # Which devices (`models show NAME@VERSION` only).
    running_on: list[str] = field(default_factory=list)
    assigned_to: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RemovedVersion:
    """What `edgefleetctl models rm` did: the targets version that no longer lists it, and
    what a forced removal released."""

    name: str
    version: str
    targets_version: int
    devices: list[str] = field(default_factory=list)
    rollouts: list[int] = field(default_factory=list)
