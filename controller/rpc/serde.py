"""Operator messages become domain dataclasses here and back (the device messages are in
``edgefleet.serde``): the servicers encode what the controller's services return, the
operator client decodes what it receives, and nothing else touches these protobuf types."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from typing import Any

from edgefleet.controller.catalog.published import CatalogEntry, PublishedVersion, RemovedVersion
from edgefleet.controller.catalog.quantization.views import ClassSpeed, VersionView
from edgefleet.controller.fleet.views import FleetSummary, TokenView
from edgefleet.controller.rbac.views import OperatorView
from edgefleet.controller.rollouts.strategy import STRATEGY_SCALARS, Strategy
from edgefleet.controller.rollouts.views import (
    PinView,
    Plan,
    PlannedDevice,
    RolloutCreated,
    RolloutView,
    TargetView,
)
from edgefleet.v1 import operator_pb2


# --- strategies ---------------------------------------------------------------------
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


def _strategy_view_to_pb(strategy: Strategy) -> operator_pb2.RolloutStrategy:
    """Every field, as the rollout runs with it (status output)."""
    message = operator_pb2.RolloutStrategy(waves=list(strategy.waves))
    for name in STRATEGY_SCALARS:
        setattr(message, name, getattr(strategy, name))
    return message


def _strategy_view_from_pb(message: operator_pb2.RolloutStrategy) -> Strategy:
    """A running rollout's strategy, every field as the controller sent it."""
    values: dict[str, Any] = {name: getattr(message, name) for name in STRATEGY_SCALARS}
    return Strategy(**values, waves=tuple(message.waves), given=tuple(values))


# --- plans and views ----------------------------------------------------------------
def plan_to_pb(plan: Plan) -> operator_pb2.RolloutPlan:
    return operator_pb2.RolloutPlan(
        devices=[
            operator_pb2.PlannedDevice(
                device_id=d.device_id, wave=d.wave, version=d.version, reason=d.reason
            )
            for d in plan.devices
        ],
        waves=plan.waves,
    )


def plan_from_pb(message: operator_pb2.RolloutPlan) -> Plan:
    devices = [PlannedDevice(d.device_id, d.wave, d.version, d.reason) for d in message.devices]
    return Plan(devices=devices, waves=message.waves)


def created_to_pb(created: RolloutCreated) -> operator_pb2.CreateRolloutResponse:
    return operator_pb2.CreateRolloutResponse(
        rollout_id=created.rollout_id,
        device_ids=created.device_ids,
        assigned=created.assigned,
        plan=plan_to_pb(created.plan),
    )


def created_from_pb(message: operator_pb2.CreateRolloutResponse) -> RolloutCreated:
    return RolloutCreated(
        rollout_id=message.rollout_id,
        device_ids=list(message.device_ids),
        assigned=dict(message.assigned),
        plan=plan_from_pb(message.plan),
    )


def view_to_pb(view: RolloutView) -> operator_pb2.RolloutView:
    return operator_pb2.RolloutView(
        id=view.id,
        name=view.name,
        version=view.version,
        selector=view.selector,
        state=view.state,
        reason=view.reason,
        current_wave=view.current_wave,
        waves=view.waves,
        strategy=_strategy_view_to_pb(view.strategy),
        created_by=view.created_by,
        created_at=view.created_at,
        targets=[
            operator_pb2.RolloutTargetView(**{f.name: getattr(t, f.name) for f in fields(t)})
            for t in view.targets
        ],
    )


def view_from_pb(message: operator_pb2.RolloutView) -> RolloutView:
    return RolloutView(
        id=message.id,
        name=message.name,
        version=message.version,
        selector=dict(sorted(message.selector.items())),
        state=message.state,
        reason=message.reason,
        current_wave=message.current_wave,
        waves=message.waves,
        strategy=_strategy_view_from_pb(message.strategy),
        created_by=message.created_by,
        created_at=message.created_at,
        targets=tuple(
            TargetView(t.device_id, t.wave, t.version, t.previous_version, t.state, t.reason)
            for t in message.targets
        ),
    )


# --- publish and the model report ---------------------------------------------------
def published_to_pb(published: PublishedVersion) -> operator_pb2.PublishModelResponse:
    return operator_pb2.PublishModelResponse(
        **{f.name: getattr(published, f.name) for f in fields(published)}
    )


def published_from_pb(message: operator_pb2.PublishModelResponse) -> PublishedVersion:
    return PublishedVersion(**{f.name: getattr(message, f.name) for f in fields(PublishedVersion)})


def report_to_pb(
    name: str, versions: list[VersionView], speeds: list[ClassSpeed]
) -> operator_pb2.GetModelReportResponse:
    return operator_pb2.GetModelReportResponse(
        name=name,
        versions=[
            operator_pb2.ModelVersionView(
                version=v.version,
                sha256=v.sha256,
                length=v.length,
                quantization=v.quantization,
                published_at=v.published_at,
                evaluation_json=json.dumps(v.evaluation) if v.evaluation else "",
            )
            for v in versions
        ],
        speeds=[
            operator_pb2.DeviceClassSpeed(**{f.name: getattr(s, f.name) for f in fields(s)})
            for s in speeds
        ],
    )


def report_from_pb(
    message: operator_pb2.GetModelReportResponse,
) -> tuple[list[VersionView], list[ClassSpeed]]:
    versions = [
        VersionView(
            version=v.version,
            sha256=v.sha256,
            length=v.length,
            quantization=v.quantization,
            published_at=v.published_at,
            evaluation=json.loads(v.evaluation_json) if v.evaluation_json else None,
        )
        for v in message.versions
    ]
    speeds = [
        ClassSpeed(
            s.version,
            s.device_class,
            s.devices,
            s.prompt_tokens_per_second,
            s.generation_tokens_per_second,
        )
        for s in message.speeds
    ]
    return versions, speeds


# --- enrollment tokens and operators ----------------------------------------------
def token_to_pb(view: TokenView) -> operator_pb2.EnrollmentTokenView:
    return operator_pb2.EnrollmentTokenView(**asdict(view))


def token_from_pb(message: operator_pb2.EnrollmentTokenView) -> TokenView:
    return TokenView(
        **{f.name: getattr(message, f.name) for f in fields(TokenView) if f.name != "labels"},
        labels=dict(sorted(message.labels.items())),
    )


def operator_to_pb(view: OperatorView) -> operator_pb2.OperatorView:
    return operator_pb2.OperatorView(**asdict(view))


def operator_from_pb(message: operator_pb2.OperatorView) -> OperatorView:
    return OperatorView(**{f.name: getattr(message, f.name) for f in fields(OperatorView)})


def catalog_to_pb(entry: CatalogEntry) -> operator_pb2.CatalogEntry:
    return operator_pb2.CatalogEntry(**asdict(entry))


def catalog_from_pb(message: operator_pb2.CatalogEntry) -> CatalogEntry:
    values = {f.name: getattr(message, f.name) for f in fields(CatalogEntry)}
    return CatalogEntry(
        **{
            **values,
            "running_on": list(message.running_on),
            "assigned_to": list(message.assigned_to),
        }
    )


def pin_to_pb(view: PinView) -> operator_pb2.PinView:
    return operator_pb2.PinView(**asdict(view))


def pin_from_pb(message: operator_pb2.PinView) -> PinView:
    values = {f.name: getattr(message, f.name) for f in fields(PinView)}
    values["selector"] = dict(sorted(message.selector.items()))
    return PinView(**values)


def removed_to_pb(removed: RemovedVersion) -> operator_pb2.RemoveModelResponse:
    return operator_pb2.RemoveModelResponse(**asdict(removed))


def removed_from_pb(message: operator_pb2.RemoveModelResponse) -> RemovedVersion:
    return RemovedVersion(
        message.name,
        message.version,
        message.targets_version,
        list(message.devices),
        list(message.rollouts),
    )


def summary_to_pb(summary: FleetSummary) -> operator_pb2.FleetSummary:
    return operator_pb2.FleetSummary(
        states=summary.states,
        classes=summary.classes,
        stale=summary.stale,
        tamper_alerts=summary.tamper_alerts,
        downloading=summary.downloading,
        audit_backlog=summary.audit_backlog,
    )


def summary_from_pb(message: operator_pb2.FleetSummary) -> FleetSummary:
    return FleetSummary(
        states=dict(message.states),
        classes=dict(message.classes),
        stale=message.stale,
        tamper_alerts=message.tamper_alerts,
        downloading=message.downloading,
        audit_backlog=message.audit_backlog,
    )
