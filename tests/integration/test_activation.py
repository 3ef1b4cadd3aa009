"""Activation with a smoke test, on the real model: a version that cannot generate never
replaces the one serving, and the controller learns why."""

from __future__ import annotations

import pytest

from tests.ggufkit import write_tiny_gguf
from tests.harness import wait_for
from tests.integration.fleets import ModelFleet, agent_actions

pytestmark = [pytest.mark.integration, pytest.mark.model]


def test_a_version_failing_its_smoke_test_is_not_activated(model_fleet: ModelFleet) -> None:
    """smollm2@9.0 is a valid, signed GGUF file without a vocabulary: it installs, fails to
    load in llama.cpp, and smollm2@1.0 keeps answering; the reason reaches the controller,
    whose rollout halts and puts the device back on 1.0."""
    fleet = model_fleet.fleet
    broken = write_tiny_gguf(fleet.root / "no-vocabulary.gguf", seed=9)
    fleet.ctl("models", "publish", str(broken), "--name", "smollm2", "--version", "9.0")
    created = fleet.ctl("rollout", "create", "smollm2@9.0", "--selector", "site=lab").stdout
    rollout_id = created.split()[1].rstrip(":")
    status = wait_for(
        "the rollout to halt",
        lambda: (
            out if "halted" in (out := fleet.ctl("rollout", "status", rollout_id).stdout) else None
        ),
        60,
    )
    assert "smoke test failed" in status and "cannot load" in status
    (device,) = fleet.devices()
    assert [(a["name"], a["version"]) for a in device["assignments"]] == [("smollm2", "1.0")]
    health = {h["version"]: h for h in device["health"]}
    assert health["9.0"]["smoke"] == "failed" and health["1.0"]["smoke"] in ("passed", "")
    body = {"model": "smollm2", "prompt": "The capital of France is", "max_tokens": 2}
    answer = model_fleet.post("/v1/completions", body)
    assert answer["choices"][0]["text"] and answer["model"] == "smollm2"
    assert ("model.activate", "smollm2@9.0", "smoke_failed") in agent_actions(fleet, "gw1")
