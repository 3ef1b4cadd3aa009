"""How a rollout advances: the canary, the waves after it, the soak between waves and the
health gates. Bounded and checked: a strategy comes from an operator's command line."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from edgefleet.errors import MalformedInputError

WAVE_PATTERN = re.compile(r"^(?:(\d{1,3})%|(\d{1,7}))$")
MAX_WAVES = 20
MAX_SOAK_SECONDS = 7 * 24 * 3600


# The strategy's single-valued settings (``waves`` is the one list).
Scalar = Literal[
    "canary", "soak_seconds", "max_failures", "max_error_rate", "min_requests", "min_speed_ratio"
]
STRATEGY_SCALARS: tuple[Scalar, ...] = (
    "canary",
    "soak_seconds",
    "max_failures",
    "max_error_rate",
    "min_requests",
    "min_speed_ratio",
)


@dataclass(frozen=True)
class Strategy:
    """Defaults: every device in one wave, gates on, a failed device halts the rollout."""

    # Devices in the first wave (0: no canary).
    canary: int = 0
    # Cumulative sizes of the waves after the canary ("25%" of the devices, or a count);
    # a last wave always takes every device left.
    waves: tuple[str, ...] = ("100%",)
    # How long every device of a wave must stay healthy before the next wave starts.
    soak_seconds: int = 300
    # Failed devices tolerated; one more halts the rollout and rolls its devices back.
    max_failures: int = 0
    # The share of requests that may fail on a device, judged once it served min_requests.
    max_error_rate: float = 0.05
    min_requests: int = 20
    # Smoke-test tokens/s against the version the device ran before.
    min_speed_ratio: float = 0.5
    # Fields the operator set (shown in status; the rest are defaults).
    given: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if not 0 <= self.canary <= 1_000_000:
            raise MalformedInputError("canary must be between 0 and 1000000 devices")
        if not 1 <= len(self.waves) <= MAX_WAVES:
            raise MalformedInputError(f"waves: between 1 and {MAX_WAVES} waves")
        for wave in self.waves:
            match = WAVE_PATTERN.match(wave)
            if not match or (match.group(1) and not 1 <= int(match.group(1)) <= 100):
                raise MalformedInputError(
                    f"wave {wave!r} is neither a percentage (1%-100%) nor a device count"
                )
            if match.group(2) and int(match.group(2)) == 0:
                raise MalformedInputError("a wave of 0 devices")
        if not 0 <= self.soak_seconds <= MAX_SOAK_SECONDS:
            raise MalformedInputError(f"soak_seconds must be between 0 and {MAX_SOAK_SECONDS}")
        if not 0 <= self.max_failures <= 1_000_000:
            raise MalformedInputError("max_failures must be between 0 and 1000000")
        if not (math.isfinite(self.max_error_rate) and 0 <= self.max_error_rate <= 1):
            raise MalformedInputError("max_error_rate must be between 0 and 1")
        if not 1 <= self.min_requests <= 1_000_000:
            raise MalformedInputError("min_requests must be between 1 and 1000000")
        if not (math.isfinite(self.min_speed_ratio) and 0 <= self.min_speed_ratio <= 1):
            raise MalformedInputError("min_speed_ratio must be between 0 and 1")

    def wave_bounds(self, devices: int) -> list[int]:
        """Cumulative device counts at the end of each wave (no empty wave; the last is
        ``devices``): canary 1, waves 50%,100% of 10 devices -> [1, 5, 10]."""
        if devices <= 0:
            return []
        wanted = [self.canary] if self.canary else []
        for wave in self.waves:
            match = WAVE_PATTERN.match(wave)
            assert match is not None  # checked in __post_init__
            percent, count = match.groups()
            wanted.append(math.ceil(devices * int(percent) / 100) if percent else int(count))
        wanted.append(devices)
        bounds: list[int] = []
        for bound in wanted:
            bound = min(bound, devices)
            if bound > (bounds[-1] if bounds else 0):
                bounds.append(bound)
        return bounds

    def to_dict(self) -> dict[str, Any]:
        """For the rollout row (JSON)."""
        doc = asdict(self)
        doc["waves"] = list(self.waves)
        doc["given"] = list(self.given)
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Strategy:
        """From the rollout row; rows from before waves existed get the defaults."""
        known = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        for key in ("waves", "given"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)


def wave_of(position: int, bounds: list[int]) -> int:
    """The wave of the device at ``position`` (0-based) in the rollout's order."""
    return next(index for index, bound in enumerate(bounds) if position < bound)
