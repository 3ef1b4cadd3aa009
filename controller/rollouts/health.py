"""Judging one device of a rollout from what it reported: still converging, healthy, or
failed (and why, with the numbers)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from edgefleet.controller.rollouts.strategy import Strategy
from edgefleet.fleet import DownloadProgress, InstalledModel, ModelHealth

Verdict = Literal["waiting", "healthy", "failed"]


class Reported(Protocol):
    """What a device last reported (a Device row, or a report not yet written)."""

    @property
    def installed(self) -> tuple[InstalledModel, ...]: ...
    @property
    def health(self) -> tuple[ModelHealth, ...]: ...
    @property
    def downloads(self) -> tuple[DownloadProgress, ...]: ...


class Targeted(Protocol):
    """What a rollout gives a device (a RolloutTarget row, or one remembered)."""

    @property
    def version(self) -> str: ...
    @property
    def baseline_tokens_per_second(self) -> float: ...


@dataclass(frozen=True)
class Judgement:
    """A verdict on one device, with the reason shown in `rollout status`."""

    verdict: Verdict
    reason: str


def health_of(device: Reported, name: str, version: str) -> ModelHealth | None:
    """The device's last reported health of ``name@version``, if it reported one."""
    return next((h for h in device.health if h.name == name and h.version == version), None)


def active_version(device: Reported, name: str) -> str:
    """The version of ``name`` the device last reported active ("" when none)."""
    return next((m.version for m in device.installed if m.name == name and m.active), "")


def smoke_speed(device: Reported, name: str, version: str) -> float:
    """Smoke-test tokens/s of ``name@version`` on the device (0.0: unknown)."""
    health = health_of(device, name, version)
    return health.smoke_tokens_per_second if health else 0.0


def judge(device: Reported, name: str, target: Targeted, strategy: Strategy) -> Judgement:
    """Has the device taken ``target.version`` and does it serve it well?"""
    version = target.version
    refused = next(
        (
            d
            for d in device.downloads
            if d.name == name and d.version == version and d.state == "refused"
        ),
        None,
    )
    if refused is not None:
        return Judgement("failed", f"refused to download: {refused.reason}")
    health = health_of(device, name, version)
    if health is not None and health.smoke == "failed":
        return Judgement("failed", f"smoke test failed: {health.smoke_reason}")
    active = any(m.name == name and m.version == version and m.active for m in device.installed)
    if not active or health is None:
        return Judgement("waiting", "not serving it yet")
    requests, errors = health.requests, health.errors
    if requests >= strategy.min_requests and errors / requests > strategy.max_error_rate:
        return Judgement(
            "failed",
            f"{errors} of {requests} requests failed ({errors / requests:.1%}), over "
            f"max_error_rate {strategy.max_error_rate:.1%}",
        )
    speed = health.smoke_tokens_per_second
    baseline = target.baseline_tokens_per_second
    if baseline > 0 and speed > 0 and speed / baseline < strategy.min_speed_ratio:
        return Judgement(
            "failed",
            f"{speed:.1f} tokens/s in the smoke test, {speed / baseline:.2f}x the "
            f"{baseline:.1f} of the version before (min_speed_ratio {strategy.min_speed_ratio})",
        )
    served = f"{requests} requests, {errors} failed" if requests else "no requests yet"
    measured = f", {speed:.1f} tokens/s" if speed else ""
    return Judgement("healthy", f"serving ({served}{measured})")
