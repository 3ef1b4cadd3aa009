"""What the agent tells the controller about each installed model version: its smoke test
(outcome, reason, speed; kept in the local database across restarts) and the requests it
served. Rollout health gates judge a new version by it."""

from __future__ import annotations

import json
from collections.abc import Callable

from edgefleet.agent.app.database import AgentDatabase
from edgefleet.agent.inference.serving_stats import ServingStats
from edgefleet.agent.registry.registry import Registry
from edgefleet.audit import AuditEvent
from edgefleet.errors import InferenceError
from edgefleet.fleet import InstalledModel, ModelHealth
from edgefleet.trust.metadata import ModelManifest

SMOKE_KEY_PREFIX = "smoke:"


def save_smoke_result(
    db: AgentDatabase, manifest: ModelManifest, outcome: str, reason: str, tokens_per_second: float
) -> None:
    """Remember a smoke test's outcome (passed | failed) for the version's reports."""
    value = {"outcome": outcome, "reason": reason[:512], "tokens_per_second": tokens_per_second}
    db.set_state(SMOKE_KEY_PREFIX + manifest.ref, json.dumps(value))


def smoke_or_refuse(
    test: Callable[[ModelManifest], float], registry: Registry, manifest: ModelManifest
) -> float:
    """Run the smoke test a version passes before it is activated (by sync or by a bundle
    import); remember and report the outcome. On failure it is audited, and InferenceError
    says what keeps serving."""
    try:
        speed = test(manifest)
    except InferenceError as e:
        serving = registry.active_version(manifest.name)
        reason = (
            f"{manifest.ref} failed its smoke test ({e}); "
            f"{f'{manifest.name}@{serving}' if serving else 'nothing'} keeps serving"
        )
        save_smoke_result(registry.db, manifest, "failed", str(e), 0.0)
        registry.audit.append(
            AuditEvent("agent", "model.activate", manifest.ref, "smoke_failed", {"reason": str(e)})
        )
        raise InferenceError(reason) from e
    save_smoke_result(registry.db, manifest, "passed", "", speed)
    return speed


def model_health(
    db: AgentDatabase, installed: tuple[InstalledModel, ...], serving: ServingStats | None
) -> tuple[ModelHealth, ...]:
    """Health of every installed version."""
    health = []
    for model in installed:
        smoke = json.loads(db.get_state(f"{SMOKE_KEY_PREFIX}{model.name}@{model.version}", "{}"))
        requests, errors = serving.counts(model.name, model.version) if serving else (0, 0)
        health.append(
            ModelHealth(
                name=model.name,
                version=model.version,
                smoke=str(smoke.get("outcome", "")),
                smoke_reason=str(smoke.get("reason", "")),
                smoke_tokens_per_second=float(smoke.get("tokens_per_second", 0.0)),
                requests=requests,
                errors=errors,
            )
        )
    return tuple(health)
