"""What agent and controller exchange when syncing, as plain frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: cryptography loads where keys are used
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
    bytes_per_second: int = 0  # measured by the device while downloading; 0 otherwise

    @property
    def seconds_left(self) -> float | None:
        """Time to finish at the measured rate; None when not moving."""
        if self.state != "downloading" or self.bytes_per_second <= 0:
            return None
        return max(0, self.total - self.received) / self.bytes_per_second


GIB = 1024**3


@dataclass(frozen=True)
class DeviceResources:
    """What a device can hold, sent with its status: the controller picks the variant of a
    model family that fits by the same rule (``edgefleet.fit``) the device checks again."""

    machine: str = ""
    cpu_count: int = 0
    memory_total: int = 0
    memory_budget: int = 0
    context: int = 0
    slots: int = 0
    disk_free: int = 0
    max_model_bytes: int = 0

    @property
    def known(self) -> bool:
        """False for a device that has not reported them (an older agent)."""
        return self.memory_budget > 0 and self.max_model_bytes > 0

    @property
    def device_class(self) -> str:
        """Devices that should run a model at the same speed: ``aarch64 4 cpu 8 GiB``."""
        if not self.machine:
            return "unknown"
        return f"{self.machine} {self.cpu_count} cpu {round(self.memory_total / GIB)} GiB"


@dataclass(frozen=True)
class ModelHealth:
    """How one model version does on a device: what rollout health gates judge."""

    name: str
    version: str
    smoke: str = ""  # passed | failed | "" (not smoke-tested)
    smoke_reason: str = ""
    # Smoke-test generation speed: same prompt and length for every version.
    smoke_tokens_per_second: float = 0.0
    # Requests served by this version since the agent started; those failed on the device.
    requests: int = 0
    errors: int = 0


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
    resources: DeviceResources = DeviceResources()
    health: tuple[ModelHealth, ...] = ()


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
    resources: DeviceResources = DeviceResources()
    health: tuple[ModelHealth, ...] = ()
    stale: bool = False
    audit_head_seq: int = 0
    assignments: tuple[ModelAssignment, ...] = ()
    enrolled_from: str = ""
