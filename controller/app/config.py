"""Controller configuration: a frozen dataclass loaded once (file, environment, flags)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.config_files import load_layered, split_address
from edgefleet.errors import ConfigError

ENV_PREFIX = "EDGEFLEET_CONTROLLER"
CONFIG_FILE = "controller.toml"


@dataclass(frozen=True)
class ControllerConfig:
    """Everything `edgefleetctl serve` needs, with bounded defaults."""

    data_dir: Path
    listen: str = "127.0.0.1:7443"
    enroll_listen: str = "127.0.0.1:7444"
    database_url: str = ""
    max_model_bytes: int = 16 * 1024**3
    max_message_bytes: int = 4 * 1024 * 1024
    blob_chunk_bytes: int = 1024 * 1024
    targets_expiry_days: int = 365
    timestamp_expiry_days: int = 7
    token_ttl_seconds: int = 3600
    device_certificate_seconds: int = 30 * 24 * 3600
    policy_expiry_days: int = 365
    max_audit_batch: int = 1000
    # Watch streams send a heartbeat this often, so that both ends notice a dead link.
    watch_heartbeat_seconds: int = 20
    # gRPC health checking without TLS (Kubernetes probes, load balancers); "" disables.
    health_listen: str = "127.0.0.1:7445"
    # Prometheus /metrics over HTTP; "" disables.
    metrics_listen: str = "127.0.0.1:9464"
    # On SIGTERM: report NOT_SERVING, then let calls in flight finish for this long.
    shutdown_grace_seconds: int = 10
    # A device that has not reported for this long is shown (and counted) as stale.
    stale_after_seconds: int = 300
    # How often rollouts are judged and advanced (one replica at a time on PostgreSQL).
    rollout_tick_seconds: int = 5
    # Enrollment from one network address: failures a minute before it gets "too many"
    # (only the first failure of each minute is audited), devices waiting for approval at
    # once, and how long a device waits before its request expires.
    enroll_failures_per_minute: int = 20
    # Which blobs a device may download: "assigned" (the files and chunk indexes of model
    # versions it is or was assigned) or "any" published model's.
    blob_access: str = "assigned"
    max_pending_per_source: int = 20
    pending_expiry_hours: int = 72

    def __post_init__(self) -> None:
        listeners = {"listen": self.listen, "enroll_listen": self.enroll_listen}
        for name in ("health_listen", "metrics_listen"):
            if getattr(self, name):  # "" disables it
                listeners[name] = getattr(self, name)
        by_port: dict[int, str] = {}
        for name, address in listeners.items():
            _, port = split_address(address)
            if port and port in by_port:
                raise ConfigError(f"{by_port[port]} and {name} both use port {port}")
            by_port[port] = name
        if self.blob_access not in ("assigned", "any"):
            raise ConfigError('blob_access must be "assigned" or "any"')
        if not 64 * 1024 <= self.blob_chunk_bytes <= self.max_message_bytes - 1024:
            raise ConfigError("blob_chunk_bytes must be >= 64 KiB and below max_message_bytes")
        for name in (
            "max_model_bytes",
            "targets_expiry_days",
            "timestamp_expiry_days",
            "token_ttl_seconds",
            "device_certificate_seconds",
            "policy_expiry_days",
            "watch_heartbeat_seconds",
            "shutdown_grace_seconds",
            "stale_after_seconds",
            "rollout_tick_seconds",
            "enroll_failures_per_minute",
            "max_pending_per_source",
            "pending_expiry_hours",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to SQLite in the data directory."""
        return self.database_url or f"sqlite:///{self.data_dir / 'controller.db'}"


def load_controller_config(data_dir: Path, **flags: Any) -> ControllerConfig:
    """Load ``<data_dir>/controller.toml``, then environment, then non-None flags."""
    return load_layered(ControllerConfig, data_dir, CONFIG_FILE, ENV_PREFIX, flags)
