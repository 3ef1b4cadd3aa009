"""What operators see of rollouts: plans, views and the answer to a create. Plain
dataclasses without the store, shared by the server (which builds them) and the operator
client (which gets them back from edgefleet.controller.rpc.serde)."""

from __future__ import annotations

from dataclasses import dataclass

from edgefleet.controller.rollouts.strategy import Strategy

EXCLUDED = -1

# What an operator may do to a rollout, and the states each action needs.
ACTION_NEEDS: dict[str, tuple[str, ...]] = {
    "pause": ("running",),
    "resume": ("paused",),
    "abort": ("running", "paused", "halted"),
    "rollback": ("running", "paused", "halted", "completed", "aborted"),
}


@dataclass(frozen=True)
class PlannedDevice:
    """One device's place in a rollout: its wave (``EXCLUDED``: none) and why."""

    device_id: str
    wave: int
    version: str
    reason: str


@dataclass(frozen=True)
class Plan:
    """Every device, in wave order, the excluded ones last."""

    devices: list[PlannedDevice]
    waves: int

    @property
    def included(self) -> list[PlannedDevice]:
        """The devices that get the rollout."""
        return [d for d in self.devices if d.wave != EXCLUDED]


@dataclass(frozen=True)
class RolloutCreated:
    """The new rollout, the devices its first wave assigned, and the whole plan."""

    rollout_id: int
    device_ids: list[str]
    # device id -> what it was given, e.g. "1.0.0+q4_0 (best quality that fits)".
    assigned: dict[str, str]
    plan: Plan


@dataclass(frozen=True)
class TargetView:
    """One device of a rollout, for `rollout status`."""

    device_id: str
    wave: int
    version: str
    previous_version: str
    state: str
    reason: str


@dataclass(frozen=True)
class RolloutView:
    """A rollout and (for one rollout) its devices."""

    id: int
    name: str
    version: str
    selector: dict[str, str]
    state: str
    reason: str
    current_wave: int
    waves: int
    strategy: Strategy
    created_by: str
    created_at: str
    targets: tuple[TargetView, ...]

    @property
    def actions(self) -> tuple[str, ...]:
        """The actions its state allows."""
        return tuple(a for a, states in ACTION_NEEDS.items() if self.state in states)


@dataclass(frozen=True)
class PinView:
    """A pin as `edgefleetctl rollout pins list` shows it, with the devices it holds now."""

    model: str
    version: str
    device_id: str
    selector: dict[str, str]
    created_by: str
    created_at: str
    devices: int
