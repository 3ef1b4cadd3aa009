"""What agent and controller exchange when syncing, as plain frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field

from edgefleet.trust.envelope import Envelope


@dataclass(frozen=True)
class InstalledModel:
    """A model version present on a device."""

    name: str
    version: str
    sha256: str
    active: bool


@dataclass(frozen=True)
class BenchResult:
    """Prompt-processing and generation speed of one model on one device."""

    model: str
    version: str
    sha256: str
    threads: int
    prompt_tokens: int
    generated_tokens: int
    prompt_tokens_per_second: float
    generation_tokens_per_second: float
    measured_at: str


@dataclass(frozen=True)
class DownloadProgress:
    """A model download in progress, paused or refused, and why."""

    name: str
    version: str
    received: int
    total: int
    state: str  # downloading | paused | refused
    reason: str = ""


@dataclass(frozen=True)
class StatusReport:
    """What a device says about itself at each sync."""

    agent_version: str
    models: tuple[InstalledModel, ...] = ()
    audit_head_seq: int = 0
    last_error: str = ""
    bench: tuple[BenchResult, ...] = ()
    downloads: tuple[DownloadProgress, ...] = ()
    data_used_today: int = 0
    daily_data_budget: int = 0


@dataclass(frozen=True)
class ModelAssignment:
    """The version of a model a device should run."""

    name: str
    version: str


@dataclass(frozen=True)
class DesiredState:
    """What the controller wants a device to run, with the metadata to verify it."""

    root_chain: tuple[Envelope, ...]
    timestamp: Envelope
    targets: Envelope
    assignments: tuple[ModelAssignment, ...] = ()
    audit_acked_seq: int = 0
    policy: Envelope | None = None


@dataclass(frozen=True)
class DeviceView:
    """One row of `edgefleetctl devices list`."""

    device_id: str
    hostname: str
    labels: dict[str, str]
    last_seen: str
    agent_version: str
    models: tuple[InstalledModel, ...] = field(default=())
    audit_stored_seq: int = 0
    last_error: str = ""
    bench: tuple[BenchResult, ...] = ()
    state: str = "active"
    key_fingerprint: str = ""
    audit_alert: str = ""
    downloads: tuple[DownloadProgress, ...] = ()
    data_used_today: int = 0
    daily_data_budget: int = 0
