"""The review's attacks on a device's local API, against the real agent serving the real
model with the official `openai` client (the unit tests in tests/agent hold the rest)."""

from __future__ import annotations

import time

import openai
import pytest

from tests.harness import wait_for
from tests.integration.fleets import ModelFleet

pytestmark = [pytest.mark.integration, pytest.mark.model]


def _health(model_fleet: ModelFleet) -> dict[str, int]:
    """smollm2's health as the controller last heard it (it arrives with the sync after the
    model became active: wait for it, the CLI reads faster than the device reports)."""

    def reported() -> dict[str, int] | None:
        devices = model_fleet.fleet.devices()
        device = next(d for d in devices if d["device_id"] == model_fleet.device_id)
        found = next((h for h in device["health"] if h["name"] == "smollm2"), None)
        return {"requests": found["requests"], "errors": found["errors"]} if found else None

    return wait_for("smollm2's health at the controller", reported, 30)


def test_prompts_over_the_context_are_400s_that_spare_the_models_health(
    model_fleet: ModelFleet,
) -> None:
    """Review hole M1: six prompts longer than the context were 500s counted as model
    failures (they halted a healthy rollout). Each is now a 400 context_length_exceeded
    from llama.cpp's own count, and the health the device reports gains no error."""
    client = openai.OpenAI(base_url=f"http://{model_fleet.api}/v1", api_key=model_fleet.token)
    before = _health(model_fleet)
    for _ in range(6):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(
                model="smollm2", messages=[{"role": "user", "content": "hello " * 3000}]
            )
        assert refused.value.code == "context_length_exceeded"
        assert "more than the model's context of 2048 tokens" in refused.value.message
    served = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    assert served.choices[0].finish_reason in ("length", "stop")
    time.sleep(3)  # a sync or two: the device reports its counts
    after = wait_for(
        "the served request in the device's report",
        lambda: h if (h := _health(model_fleet))["requests"] > before["requests"] else None,
        30,
    )
    assert after["errors"] == before["errors"]
    assert after["requests"] == before["requests"] + 1  # the 400s are not the model's requests
