"""Agent configuration: a frozen dataclass loaded once (file, environment, flags)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.config_files import is_loopback, load_layered, split_address
from edgefleet.errors import ConfigError

ENV_PREFIX = "EDGEFLEET_AGENT"
CONFIG_FILE = "agent.toml"


VERIFY_MODES = ("size", "sample", "full")
OFFLINE_MODES = ("serve", "strict")


# The controller streams blobs in 1 MiB messages by default; an audit record may be 64 KiB.
MIN_MESSAGE_BYTES = 2 * 1024 * 1024


WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


def parse_windows(text: str) -> list[tuple[int, int]]:
    """``"HH:MM-HH:MM,…"`` → [(start minute, end minute)]; ConfigError on anything else."""
    windows = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = WINDOW.match(part)
        if match is None:
            raise ConfigError(f"transfer window {part!r} is not HH:MM-HH:MM")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if (h1, m1) == (h2, m2):
            raise ConfigError(f"transfer window {part!r} is empty")
        windows.append((h1 * 60 + m1, h2 * 60 + m2))
    return windows


def parse_sources(text: str) -> list[str]:
    """``"https://a/blobs/,http://peer:8081/blobs/"`` → base URLs (each ending in /)."""
    urls = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if not part.startswith(("http://", "https://")):
            raise ConfigError(f"blob source {part!r} is not an http(s) URL")
        urls.append(part if part.endswith("/") else part + "/")
    return urls


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent needs, with bounded defaults sized for a Raspberry Pi."""

    data_dir: Path
    api_listen: str = "127.0.0.1:8080"
    # HOST:PORT of the controller's sync listener when it is not the one enrollment
    # learned (a port forward, a proxy); empty: the enrolled address.
    controller_sync_address: str = ""
    sync_interval_seconds: int = 30
    sync_jitter_seconds: int = 5
    rpc_timeout_seconds: int = 30
    max_model_bytes: int = 16 * 1024**3
    max_message_bytes: int = 4 * 1024 * 1024
    audit_batch: int = 1000
    n_ctx: int = 2048
    n_threads: int = max(1, (os.cpu_count() or 2) - 1)
    max_tokens_limit: int = 1024
    max_request_bytes: int = 1024 * 1024
    # Memory for loaded models; 0 means 80% of this machine's physical memory.
    memory_budget_bytes: int = 0
    n_parallel: int = 1
    keep_alive_seconds: int = 300
    max_queued_requests: int = 16
    # A model runner with requests in flight that sends nothing for this long (a decode
    # that never returns: a hostile model, a wedged llama.cpp) is killed and its requests
    # fail; the next request starts a new one. Longer than the slowest legitimate step
    # (a 512-token prompt chunk of the largest model on the slowest board).
    runner_stall_seconds: int = 300
    # Bearer tokens and RBAC on the local API; off is allowed on loopback only.
    api_auth: bool = True
    # With api_auth off, browser pages may call the API only from these origins
    # ("http://localhost:3000,https://ui.example"); any other Origin is refused (403).
    api_allowed_origins: str = ""
    # A source (IP address) whose requests fail authentication more than this many times a
    # minute gets 429 without a check; only its first failure of each minute is audited.
    api_auth_failures_per_minute: int = 30
    # Store SHA-256 hashes of prompts and completions in inference audit records.
    audit_content_hashes: bool = False
    # Sign a checkpoint of the audit chain every N records or T seconds.
    audit_checkpoint_every: int = 100
    audit_checkpoint_seconds: int = 600
    # Acknowledged records kept on the device (older ones are pruned); unacknowledged
    # records are never pruned, and a warning is raised when this many are waiting.
    audit_keep_acknowledged: int = 100_000
    audit_warn_unacknowledged: int = 250_000
    # While the controller is unreachable, wait up to this long between attempts.
    max_backoff_seconds: int = 300
    # The watch stream (changes pushed at once) is deemed dead after this long without
    # even a heartbeat; a change makes the device sync after up to watch_jitter_seconds.
    watch_timeout_seconds: int = 75
    watch_reconnect_max_seconds: int = 30
    watch_jitter_seconds: int = 2
    # Metered links (model downloads and repairs only): allowed local-time windows such as
    # "01:00-05:00,22:00-23:30" (empty: always), a bandwidth cap and a daily (UTC) budget
    # in bytes (0: none).
    transfer_windows: str = ""
    bandwidth_limit_bytes_per_second: int = 0
    daily_data_budget_bytes: int = 0
    # Other blob sources, tried in order before the controller: HTTP(S) mirrors or CDNs
    # and LAN peers, as base URLs ("https://cdn.example/blobs/,http://10.0.0.5:8081/blobs/");
    # what they send is verified like the controller's bytes. mirror_ca_file: a private CA.
    mirrors: str = ""
    mirror_ca_file: str = ""
    # Opt-in: serve this device's verified blobs to LAN peers on HOST:PORT (plain HTTP,
    # Range requests; anyone who can reach it can read the model files).
    peer_listen: str = ""
    # Load a new version and generate a few tokens before it replaces the serving one.
    smoke_test: bool = True
    # A download that receives nothing for this long is abandoned (resumed at the next sync).
    download_stall_seconds: int = 60
    # While a download runs, report its progress (percent, rate) this often (0: only at
    # syncs). Each report is a sync call: a wave of N devices downloading at once adds
    # N / download_report_seconds calls a second to the controller's load.
    download_report_seconds: int = 10
    # Before a model is loaded: "size" checks the file's length, "sample" also hashes
    # verify_sample_chunks random chunks, "full" hashes the whole file.
    verify_before_load: str = "sample"
    verify_sample_chunks: int = 8
    # A full hash of every installed blob this often (0 turns the scrub off).
    scrub_interval_hours: int = 24
    # Trust metadata older than this (no fresh timestamp from the controller or a bundle):
    # "serve" keeps serving and warns, "strict" refuses inference until fresh metadata.
    max_offline_days: int = 30
    offline_mode: str = "serve"

    @property
    def resolved_memory_budget(self) -> int:
        """The memory budget in bytes."""
        if self.memory_budget_bytes:
            return self.memory_budget_bytes
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.8)

    def __post_init__(self) -> None:
        split_address(self.api_listen)
        if self.controller_sync_address:
            split_address(self.controller_sync_address)
        for name in (
            "sync_interval_seconds",
            "rpc_timeout_seconds",
            "n_ctx",
            "n_threads",
            "max_tokens_limit",
            "audit_batch",
            "max_request_bytes",
            "n_parallel",
            "keep_alive_seconds",
            "max_queued_requests",
            "runner_stall_seconds",
            "audit_checkpoint_every",
            "audit_checkpoint_seconds",
            "audit_keep_acknowledged",
            "audit_warn_unacknowledged",
            "download_stall_seconds",
            "max_backoff_seconds",
            "watch_timeout_seconds",
            "watch_reconnect_max_seconds",
            "verify_sample_chunks",
            "max_offline_days",
            "api_auth_failures_per_minute",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.max_message_bytes < MIN_MESSAGE_BYTES:
            raise ConfigError(
                f"max_message_bytes must be at least {MIN_MESSAGE_BYTES} (a 1 MiB blob chunk "
                "with its framing, and audit pushes of whole records)"
            )
        if self.sync_jitter_seconds < 0 or self.memory_budget_bytes < 0:
            raise ConfigError("sync_jitter_seconds and memory_budget_bytes must not be negative")
        if self.bandwidth_limit_bytes_per_second < 0 or self.daily_data_budget_bytes < 0:
            raise ConfigError("bandwidth and data budget limits must not be negative")
        parse_windows(self.transfer_windows)
        parse_sources(self.mirrors)
        if self.peer_listen:
            split_address(self.peer_listen)
        if self.watch_jitter_seconds < 0 or self.download_report_seconds < 0:
            raise ConfigError(
                "watch_jitter_seconds and download_report_seconds must not be negative"
            )
        if self.scrub_interval_hours < 0:
            raise ConfigError("scrub_interval_hours must not be negative")
        if self.verify_before_load not in VERIFY_MODES:
            raise ConfigError(f"verify_before_load must be one of {', '.join(VERIFY_MODES)}")
        if self.offline_mode not in OFFLINE_MODES:
            raise ConfigError(f"offline_mode must be one of {', '.join(OFFLINE_MODES)}")
        host, _ = split_address(self.api_listen)
        if not self.api_auth and not is_loopback(host):
            raise ConfigError(
                f"api_listen {self.api_listen} is not a loopback address: "
                "turn api_auth on before exposing the local API"
            )


def load_agent_config(data_dir: Path, **flags: Any) -> AgentConfig:
    """Load ``<data_dir>/agent.toml``, then environment, then non-None flags."""
    return load_layered(AgentConfig, data_dir, CONFIG_FILE, ENV_PREFIX, flags)
