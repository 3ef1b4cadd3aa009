"""Rollout strategies, plans and views as protobuf messages, and back (controller and
edgefleetctl both use this)."""

from __future__ import annotations

from typing import Any, Literal

from controller.rollouts.engine import RolloutView
from controller.rollouts.plan import Plan
from controller.rollouts.strategy import Strategy
from edgefleet.v1 import operator_pb2

Optional = Literal[
    "canary", "soak_seconds", "max_failures", "max_error_rate", "min_requests", "min_speed_ratio"
]
STRATEGY_SCALARS: tuple[Optional, ...] = (
    "canary",
    "soak_seconds",
    "max_failures",
    "max_error_rate",
    "min_requests",
    "min_speed_ratio",
)


def strategy_to_pb(strategy: Strategy) -> operator_pb2.RolloutStrategy:
    """Only the fields the operator gave are set; the controller's defaults fill the rest."""
    message = operator_pb2.RolloutStrategy()
    for name in strategy.given:
        if name == "waves":
            message.waves.extend(strategy.waves)
        elif name in STRATEGY_SCALARS:
            setattr(message, name, getattr(strategy, name))
    return message


def strategy_from_pb(message: operator_pb2.RolloutStrategy) -> Strategy:
    """Set fields over the defaults; a value out of range is a MalformedInputError."""
    given: dict[str, Any] = {
        name: getattr(message, name) for name in STRATEGY_SCALARS if message.HasField(name)
    }
    if message.waves:
        given["waves"] = tuple(str(w)[:16] for w in message.waves)
    return Strategy(**given, given=tuple(given))


def strategy_view_to_pb(strategy: Strategy) -> operator_pb2.RolloutStrategy:
    """Every field, as the rollout runs with it (status output)."""
    message = operator_pb2.RolloutStrategy(waves=list(strategy.waves))
    for name in STRATEGY_SCALARS:
        setattr(message, name, getattr(strategy, name))
    return message


def plan_to_pb(plan: Plan) -> operator_pb2.RolloutPlan:
    """Plan → message."""
    return operator_pb2.RolloutPlan(
        devices=[
            operator_pb2.PlannedDevice(
                device_id=d.device_id, wave=d.wave, version=d.version, reason=d.reason
            )
            for d in plan.devices
        ],
        waves=plan.waves,
    )


def view_to_pb(view: RolloutView) -> operator_pb2.RolloutView:
    """RolloutView → message."""
    return operator_pb2.RolloutView(
        id=view.id,
        name=view.name,
        version=view.version,
        selector=view.selector,
        state=view.state,
        reason=view.reason,
        current_wave=view.current_wave,
        waves=view.waves,
        strategy=strategy_view_to_pb(view.strategy),
        created_by=view.created_by,
        created_at=view.created_at,
        targets=[
            operator_pb2.RolloutTargetView(
                device_id=t.device_id,
                wave=t.wave,
                version=t.version,
                previous_version=t.previous_version,
                state=t.state,
                reason=t.reason,
            )
            for t in view.targets
        ],
    )
